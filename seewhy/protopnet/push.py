"""Prototype projection ("push"): each prototype becomes its nearest latent patch among training images of
its own class (Chen et al., NeurIPS 2019, section 2.2).

    p_j <- argmin_{z in patches(x_i), y_i = class(j)} ||z - p_j||^2

The running minimum stays on the model's device; the source image index, latent cell and
high-similarity box are written into the model's buffers (``prototype_image``, ``prototype_location``,
``prototype_box``), so they travel with its state dict.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..hooks import model_state
from .data import ImageSet
from .explain import batches, normalize, prototype_boxes
from .model import Preprocessing, ProtoPNet

__all__ = ["PushResult", "push_prototypes"]


@dataclass(frozen=True)
class PushResult:
    """What a push did: per prototype the source image (index in the push set), its latent cell (h, w), the
    box in the image, and how far the prototype moved (its squared distance to the chosen patch)."""

    image: Tensor  # (P,)
    location: Tensor  # (P, 2)
    box: Tensor  # (P, 4) y0, y1, x0, x1
    moved: Tensor  # (P,)


def push_prototypes(model: ProtoPNet, data: ImageSet, prep: Preprocessing, *, batch_size: int = 75,
                    percentile: float = 95.0, progress: bool = False) -> PushResult:
    """Project every prototype of ``model`` onto the closest latent patch of a ``data`` image of its class.

    ``data`` is the push set: the training images without augmentation, in [0, 1] (normalised here with
    ``prep``). The model runs in eval mode (BatchNorm statistics frozen) and its flags are restored.
    Ties keep the first image, then the first cell in row-major order.

    Raises:
        TypeError: ``model`` is not a ProtoPNet.
        ValueError: a class of the model has no image in ``data``.
    """
    from ..progress import track

    if not isinstance(model, ProtoPNet):
        raise TypeError(f"push_prototypes needs a ProtoPNet, got {type(model).__name__}")
    if len(data) == 0:
        raise ValueError("the push set is empty; pass the training images")
    missing = sorted(set(range(model.num_classes)) - set(data.labels.tolist()))
    if missing:
        names = [model.class_names[c] if model.class_names else str(c) for c in missing]
        raise ValueError(f"class(es) {', '.join(names)} have no image in the push set, so their prototypes "
                         "cannot be projected; every class needs at least one training image")
    device = model.prototype_vectors.device
    p, dim = model.num_prototypes, model.prototype_dim
    classes = model.prototype_classes.to(device)
    best = torch.full((p,), float("inf"), device=device)
    patch = torch.zeros(p, dim, device=device, dtype=model.prototype_vectors.dtype)
    image = torch.full((p,), -1, dtype=torch.long, device=device)
    cell = torch.zeros(p, 2, dtype=torch.long, device=device)
    with torch.inference_mode(False), model_state(model, freeze=False), torch.no_grad():
        for idx, x in track(batches(data, None, batch_size), -(-len(data) // batch_size), "push", "batches",
                            enabled=progress):
            z, d = model.prototype_distances(normalize(x.to(device, patch.dtype), prep))
            h, w = d.shape[-2:]
            labels = data.labels[idx].to(device)
            own = labels[:, None] == classes[None, :]  # (B, P)
            d = d.masked_fill(~own[:, :, None, None], float("inf"))
            val, arg = d.transpose(0, 1).reshape(p, -1).min(1)  # over (image, h, w), row-major
            better = val < best
            if not bool(better.any()):
                continue
            b, rem = arg // (h * w), arg % (h * w)
            hh, ww = rem // w, rem % w
            best = torch.where(better, val, best)
            patch[better] = z[b, :, hh, ww][better]
            image[better] = idx.to(device)[b][better]
            cell[better] = torch.stack([hh, ww], 1)[better]
        model.prototype_vectors.copy_(patch.view(p, dim, 1, 1))
        model.prototype_image.copy_(image)
        model.prototype_location.copy_(cell)
    pairs = [(j, int(i)) for j, i in enumerate(image.tolist())]
    boxes = prototype_boxes(model, data, prep, pairs, percentile=percentile, batch_size=batch_size)
    box = torch.tensor([boxes[pair] for pair in pairs], dtype=torch.long)
    model.prototype_box.copy_(box.to(model.prototype_box.device))
    return PushResult(image=image.cpu(), location=cell.cpu(), box=box, moved=best.cpu())
