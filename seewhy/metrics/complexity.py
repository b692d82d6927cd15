"""Complexity metrics: is the explanation concise? Both reward peaky maps whatever their faithfulness, so report them
next to a faithfulness score, never alone.

They work on |map|, the channel-summed attribution upsampled to the input size (so pixel methods and layer maps are
compared on the same H*W pixels; ``at_input_size=False`` keeps the map's own resolution). No model forward is needed
(``model``, ``target``, ``batch_size`` and ``seed`` are accepted for the common metric signature and unused).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..core import check_inputs
from ..targets import TargetSpec
from .common import pixel_map
from .registry import register_metric


def _magnitudes(inputs: Tensor, attributions: Tensor, at_input_size: bool) -> Tensor:
    """(B, n) float64 |map| values."""
    return pixel_map(attributions, check_inputs(inputs), upsample=at_input_size).flatten(1).abs().double()


@register_metric("sparseness", family="complexity", higher_is_better=True)
def sparseness(model: nn.Module | None, inputs: Tensor, attributions: Tensor, target: TargetSpec = None, *,
               at_input_size: bool = True, batch_size: int | None = None, seed: int | None = None) -> Tensor:
    """Sparseness (Chalasani et al. 2020): the Gini index of |map|; 0 for a uniform map, (n-1)/n for a single pixel.

    G = sum_i (2i - n - 1) a_(i) / (n sum_i a_(i)), a_(1) <= ... <= a_(n) the sorted |values|. NaN for an all-zero map.

    Returns:
        (B,) Gini indices in [0, 1); higher is sparser.
    """
    a = torch.sort(_magnitudes(inputs, attributions, at_input_size), dim=1).values
    n = a.shape[1]
    i = torch.arange(1, n + 1, dtype=a.dtype, device=a.device)
    total = a.sum(1)
    g = ((2 * i - n - 1) * a).sum(1) / (n * total.clamp(min=1e-300))
    return torch.where(total > 0, g, float("nan")).float()


@register_metric("entropy_complexity", family="complexity", higher_is_better=False)
def entropy_complexity(model: nn.Module | None, inputs: Tensor, attributions: Tensor, target: TargetSpec = None, *,
                       normalized: bool = False, at_input_size: bool = True, batch_size: int | None = None,
                       seed: int | None = None) -> Tensor:
    """Complexity (Bhatt et al. 2020): the entropy of the attribution distribution p_i = |a_i| / sum_j |a_j|.

    H = -sum_i p_i ln p_i (0 ln 0 = 0), in [0, ln n]: 0 for a single pixel, ln n for a uniform map; ``normalized``
    divides by ln n (comparable across sizes). NaN for an all-zero map.

    Returns:
        (B,) entropies (nats); lower is simpler.
    """
    a = _magnitudes(inputs, attributions, at_input_size)
    total = a.sum(1, keepdim=True)
    p = a / total.clamp(min=1e-300)
    h = -torch.where(p > 0, p * torch.log(p.clamp(min=1e-300)), 0.0).sum(1)
    if normalized:
        h = h / math.log(a.shape[1]) if a.shape[1] > 1 else torch.zeros_like(h)
    return torch.where(total[:, 0] > 0, h, float("nan")).float()
