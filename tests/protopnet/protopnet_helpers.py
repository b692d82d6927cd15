"""Shared data and a trained model for the ProtoPNet tests (cached: trained once per session).

The synthetic task: 32x32 gray-noise images with one 7x7 bright shape at a random place, the class being
the shape (plus, ring, X): the classes differ only by a local part.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from seewhy.protopnet import (
    Augment,
    Preprocessing,
    ProtoPNet,
    SmallCNNTrunk,
    TensorImages,
    TrainConfig,
    TrainResult,
    train,
)

CLASSES = ("plus", "ring", "x")
PREP = Preprocessing(32, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
# one warm-up epoch: the trunk is random and stays in eval mode (BatchNorm at its initial statistics) while warming
CONFIG = TrainConfig(epochs=12, warm_epochs=1, push_start=12, push_every=10, last_layer_epochs=5, batch_size=25,
                     lr_features=3e-3, lr_last_layer=1e-2, lr_step=100, augment=Augment(rotate=0, shear=0))


def _shapes() -> list[torch.Tensor]:
    plus = torch.zeros(7, 7)
    plus[3, :] = 1
    plus[:, 3] = 1
    ring = torch.zeros(7, 7)
    ring[0, :] = ring[-1, :] = ring[:, 0] = ring[:, -1] = 1
    eye = torch.eye(7)
    x = ((eye + eye.flip(1)) > 0).float()
    return [plus, ring, x]


def synthetic(n_per_class: int, seed: int, size: int = 32) -> tuple[TensorImages, torch.Tensor]:
    """The images and, per image, the top-left corner (y, x) of its shape."""
    g = torch.Generator().manual_seed(seed)
    xs, ys, corners = [], [], []
    for k, shape in enumerate(_shapes()):
        for _ in range(n_per_class):
            img = (0.35 + 0.1 * torch.rand(1, size, size, generator=g)).expand(3, -1, -1).clone()
            y0, x0 = torch.randint(0, size - 7, (2,), generator=g).tolist()
            img[:, y0:y0 + 7, x0:x0 + 7] = torch.maximum(img[:, y0:y0 + 7, x0:x0 + 7], shape)
            xs.append(img)
            ys.append(k)
            corners.append((y0, x0))
    return TensorImages(torch.stack(xs), torch.tensor(ys), list(CLASSES)), torch.tensor(corners)


def new_model(seed: int = 0, per_class: int = 2) -> ProtoPNet:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return ProtoPNet(SmallCNNTrunk(width=8), len(CLASSES), prototypes_per_class=per_class, prototype_dim=16,
                         class_names=list(CLASSES))


@dataclass
class Trained:
    model: ProtoPNet
    train_data: TensorImages
    val_data: TensorImages
    test_data: TensorImages
    test_corners: torch.Tensor
    result: TrainResult
    seconds: float


@functools.lru_cache(maxsize=1)
def trained() -> Trained:
    """The synthetic task trained once (about 3 s on one core); the model holds the best pushed state."""
    train_data, _ = synthetic(50, seed=0)
    val_data, _ = synthetic(20, seed=1)
    test_data, corners = synthetic(30, seed=2)
    model = new_model()
    t0 = time.perf_counter()
    result = train(model, train_data, val_data, PREP, CONFIG, progress=False)
    seconds = time.perf_counter() - t0
    model.load_state_dict(result.best_state)
    model.eval()
    return Trained(model, train_data, val_data, test_data, corners, result, seconds)


def write_folder(root: Path, n_per_class: int = 12, seed: int = 0, size: int = 32) -> Path:
    """The synthetic images (``size`` x ``size``) as an ImageFolder of PNGs: root/<class>/<i>.png."""
    data, _ = synthetic(n_per_class, seed, size)
    for i in range(len(data)):
        folder = root / data.classes[int(data.labels[i])]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.ascontiguousarray(data.image(i))).save(folder / f"{i:03d}.png")
    return root
