"""Linear classifiers seen whole: each class's weight row as an image (a "template"), and the weight norms per class
against the samples per class.

A linear score ``s_k(x) = w_k . x + b_k`` is a match of the input against the template ``w_k``; on pixels the
templates look like blurred class averages (the linear-classifier lecture of CS231n). Rarer classes get smaller
weight norms under cross-entropy training (B. Kang et al., "Decoupling Representation and Classifier for Long-Tailed
Recognition", ICLR 2020; the reason low-shot methods normalise the weights, H. Qi, M. Brown, D. Lowe, "Low-Shot
Learning with Imprinted Weights", CVPR 2018).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["ClassWeightNorms", "class_weight_norms", "linear_templates", "linear_weight", "symmetric_unit"]


def linear_weight(model_or_weight: Any) -> Tensor:
    """The (K, D) weight of a linear classifier: an ``nn.Linear``, a model whose last module is one, or a (K, D)
    tensor/array (detached, not copied).

    Raises:
        TypeError: a model whose last module is not ``nn.Linear``, or anything else.
        ValueError: a weight that is not 2-D.
    """
    if isinstance(model_or_weight, nn.Module):
        last = list(model_or_weight.modules())[-1]
        if not isinstance(last, nn.Linear):
            raise TypeError(f"the last module of {type(model_or_weight).__name__} is {type(last).__name__}, not "
                            "nn.Linear; pass the classifier layer itself (e.g. model.fc) or its (K, D) weight")
        w = last.weight
    elif isinstance(model_or_weight, Tensor):
        w = model_or_weight
    elif hasattr(model_or_weight, "__array__"):
        w = torch.as_tensor(model_or_weight)
    else:
        raise TypeError(f"expected an nn.Linear, a model ending in nn.Linear or a (K, D) weight, got "
                        f"{type(model_or_weight).__name__}")
    w = w.detach()
    if w.ndim != 2:
        raise ValueError(f"a linear classifier's weight must be (K classes, D inputs), got shape {tuple(w.shape)}")
    return w if w.is_floating_point() else w.float()


def linear_templates(model_or_weight: Any, image_shape: Sequence[int]) -> Tensor:
    """Each class's weight row reshaped to an image: (K, D) -> (K, *image_shape), raw signed values (a copy).

    Show them with :func:`symmetric_unit` (0.5 is zero) and e.g. :func:`seewhy.viz.heat_to_image` with
    ``signed=True``, or :func:`seewhy.viz.tensor_to_image`.

    Args:
        model_or_weight: an ``nn.Linear``, a model whose last module is ``nn.Linear`` (e.g. ``Sequential(Flatten(),
            Linear(64, 10))``), or a (K, D) weight tensor/array (e.g. scikit-learn's ``coef_``).
        image_shape: the input image shape with prod(image_shape) = D, e.g. ``(1, 8, 8)`` for the digits.

    Raises:
        ValueError: prod(image_shape) != D, or a non-positive size; TypeError: see :func:`linear_weight`.
    """
    w = linear_weight(model_or_weight)
    shape = tuple(int(s) for s in image_shape)
    if not shape or any(s < 1 for s in shape):
        raise ValueError(f"image_shape must be positive sizes, e.g. (1, 8, 8), got {tuple(image_shape)!r}")
    if math.prod(shape) != w.shape[1]:
        raise ValueError(f"image_shape {shape} holds {math.prod(shape)} values but the weight rows have "
                         f"{w.shape[1]}; pass the shape of the flattened input (e.g. (C, H, W))")
    return w.clone().reshape(w.shape[0], *shape)


def symmetric_unit(templates: Tensor, *, shared: bool = True) -> Tensor:
    """Signed values to [0, 1] with 0 at 0.5: ``t / (2 max|t|) + 0.5``, the scale ``max|t|`` over all templates
    (``shared=True``, so their strengths compare) or per template."""
    t = templates.detach().float()
    if shared:
        scale = t.abs().amax().clamp_min(1e-12)
    else:
        scale = t.flatten(1).abs().amax(1).clamp_min(1e-12).view(-1, *([1] * (t.ndim - 1)))
    return t / (2 * scale) + 0.5


@dataclass(frozen=True)
class ClassWeightNorms:
    """Per-class weight norms against the samples per class (:func:`class_weight_norms`).

    Attributes:
        norms: (K,) float, ||w_k||_2 of each class's weight row.
        counts: (K,) float, training samples per class.
        pearson: the Pearson correlation of norms and counts; spearman: the Spearman rank correlation (average ranks
            for ties). NaN when either is constant.
    """

    norms: Tensor
    counts: Tensor
    pearson: float
    spearman: float


def _pearson(a: Tensor, b: Tensor) -> float:
    a, b = a - a.mean(), b - b.mean()
    den = float(a.norm() * b.norm())
    return float((a * b).sum()) / den if den > 0 else math.nan


def _ranks(v: Tensor) -> Tensor:
    """1-based ranks, ties averaged."""
    less = (v[None, :] < v[:, None]).sum(1).double()
    equal = (v[None, :] == v[:, None]).sum(1).double()
    return less + (equal + 1) / 2


def class_weight_norms(linear_layer: Any, counts: Any) -> ClassWeightNorms:
    """||w_k||_2 per class against the training samples per class, with their Pearson and Spearman correlations.

    Under cross-entropy training a rarer class gets a smaller weight norm (a positive correlation), which biases
    the classifier towards frequent classes.

    Args:
        linear_layer: an ``nn.Linear``, a model ending in one, or a (K, D) weight (see :func:`linear_weight`).
        counts: (K,) samples per class (e.g. ``torch.bincount(train_labels, minlength=K)``).

    Raises:
        ValueError: counts not K non-negative numbers.
    """
    w = linear_weight(linear_layer).double()
    n = torch.as_tensor(counts.detach().cpu() if isinstance(counts, Tensor) else counts).double().reshape(-1)
    if len(n) != w.shape[0]:
        raise ValueError(f"got {len(n)} counts for {w.shape[0]} classes (weight rows); pass one count per class, "
                         "e.g. torch.bincount(labels, minlength=K)")
    if not bool(torch.isfinite(n).all()) or bool((n < 0).any()):
        raise ValueError("counts must be finite, non-negative numbers of samples")
    norms = w.norm(dim=1).cpu()
    pearson, spearman = _pearson(norms, n), _pearson(_ranks(norms), _ranks(n))
    if math.isnan(pearson):
        warnings.warn("the weight norms or the counts are constant: their correlation is undefined (NaN)",
                      stacklevel=2)
    return ClassWeightNorms(norms.float(), n.float(), pearson, spearman)
