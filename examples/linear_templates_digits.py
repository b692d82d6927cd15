"""A linear classifier's templates on scikit-learn's bundled digits (no download), and the weight norms of an
imbalanced training.

1. An ``nn.Linear(64, 10)`` trained by full-batch SGD (seeded) on all 1,797 8x8 digits; its 10 weight rows shown as
   images (blue negative, red positive, one shared symmetric scale) in ``templates.png``, with the correlation of each
   template with its class mean image and with the centred class mean (class mean - overall mean).
2. The same layer trained on a subsample where class c keeps a different number of images (10 to 170), and the
   per-class weight norms against those counts (Pearson and Spearman correlations: rarer classes, smaller norms)::

    OMP_NUM_THREADS=2 python examples/linear_templates_digits.py [--out DIR]

Writes into DIR (default: a new temporary folder) and prints the path. A few seconds on two CPU cores.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from seewhy.inside import class_weight_norms, linear_templates
from seewhy.inside.linear import symmetric_unit
from seewhy.viz import grid, heat_to_image, save_png


def train(x: torch.Tensor, y: torch.Tensor, steps: int = 300, seed: int = 0) -> nn.Sequential:
    """Flatten + Linear(64, 10) trained by full-batch SGD (lr 0.5) on cross-entropy from a seeded start."""
    g = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    with torch.no_grad():
        model[1].weight.copy_(torch.randn(10, 64, generator=g) * 0.01)
        model[1].bias.zero_()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return model


def corr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(np.corrcoef(a.flatten().numpy(), b.flatten().numpy())[0, 1])


def main() -> None:
    from sklearn.datasets import load_digits

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: a new temporary folder)")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="seewhy-linear-"))
    out.mkdir(parents=True, exist_ok=True)

    data = load_digits()
    x = torch.tensor(data.data / 16.0, dtype=torch.float32).reshape(-1, 1, 8, 8)
    y = torch.tensor(data.target)
    model = train(x, y)
    accuracy = float((model(x).argmax(1) == y).float().mean())
    templates = linear_templates(model, (1, 8, 8))
    shown = symmetric_unit(templates)
    cells = [[heat_to_image(shown[k], signed=True).repeat(12, 0).repeat(12, 1) for k in range(10)]]  # 96x96 pixels
    save_png(grid(cells, col_labels=[str(k) for k in range(10)]), out / "templates.png")

    mean = x.mean(0)
    print(f"linear classifier on all digits: training accuracy {accuracy:.3f}")  # noqa: T201
    print("class  corr(template, class mean)  corr(template, class mean - overall mean)")  # noqa: T201
    for k in range(10):
        m = x[y == k].mean(0)
        print(f"{k:5d}  {corr(templates[k], m):26.2f}  {corr(templates[k], m - mean):42.2f}")  # noqa: T201

    sizes = [170, 150, 120, 90, 70, 50, 35, 25, 15, 10]
    rng = np.random.default_rng(0)
    keep = np.concatenate([rng.choice(np.flatnonzero(data.target == c), sizes[c], replace=False) for c in range(10)])
    imbalanced = train(x[keep], y[keep], steps=200)
    r = class_weight_norms(imbalanced, torch.bincount(y[keep], minlength=10))
    print("\nimbalanced training: class, samples, weight norm")  # noqa: T201
    for k in range(10):
        print(f"{k:5d}  {int(r.counts[k]):7d}  {float(r.norms[k]):11.3f}")  # noqa: T201
    print(f"norms vs counts: Pearson {r.pearson:.2f}, Spearman {r.spearman:.2f}")  # noqa: T201
    print(f"\ntemplates: {out / 'templates.png'}")  # noqa: T201


if __name__ == "__main__":
    main()
