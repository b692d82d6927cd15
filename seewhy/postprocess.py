"""Turning raw attributions into heatmaps: the only place maps are reduced, rectified, resized and scaled.

``heatmap(attr, size, reduce=..., sign=..., normalize=...)`` runs four steps in this order:

1. ``reduce`` channels to one: ``"sum"`` (signed sum), ``"mean"``, ``"max_abs"`` (max over channels of
   |a|, Simonyan et al. 2013), ``"l2"`` (norm over channels), ``"none"`` (input must have one channel);
2. ``sign``: ``"abs"``, ``"positive"`` (ReLU), ``"negative"`` (ReLU of -a), ``"all"`` (keep the sign);
3. resize to ``size`` with ``upsample`` (``"bilinear"``, ``"nearest"``, ``"bicubic"``), unless already there;
4. ``normalize`` per image to [0, 1]: ``"minmax"``, ``"max"`` (divide by the max, zero stays zero), or
   ``"percentile"`` (divide by the ``percentile``-th percentile of the values and clip, robust to the
   few very large gradients that would wash a map out). With ``sign="all"`` the map is scaled by its
   largest |value| and shifted so that 0.5 means zero.

Every method declares its convention (``Method.heatmap_convention``); the steps used are recorded with
each explanation (``Explanation.heatmap_steps``).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

Reduce = Literal["sum", "mean", "max_abs", "l2", "none"]
Sign = Literal["abs", "positive", "negative", "all"]
Normalize = Literal["minmax", "max", "percentile"]
_EPS = 1e-12


def reduce_channels(attr: Tensor, how: Reduce = "sum") -> Tensor:
    """(B,C,H,W) -> (B,1,H,W)."""
    if attr.ndim != 4:
        raise ValueError(f"expected attributions of shape (B,C,H,W), got {tuple(attr.shape)}")
    if how == "sum":
        return attr.sum(1, keepdim=True)
    if how == "mean":
        return attr.mean(1, keepdim=True)
    if how == "max_abs":
        return attr.abs().amax(1, keepdim=True)
    if how == "l2":
        return attr.norm(dim=1, keepdim=True)
    if how == "none":
        if attr.shape[1] != 1:
            raise ValueError(f"reduce='none' needs one channel, got {attr.shape[1]}")
        return attr
    raise ValueError(f"unknown reduce {how!r}; use sum, mean, max_abs, l2 or none")


def apply_sign(x: Tensor, sign: Sign = "abs") -> Tensor:
    if sign == "abs":
        return x.abs()
    if sign == "positive":
        return x.clamp(min=0)
    if sign == "negative":
        return (-x).clamp(min=0)
    if sign == "all":
        return x
    raise ValueError(f"unknown sign {sign!r}; use abs, positive, negative or all")


def resize(x: Tensor, size: tuple[int, int] | None, mode: str = "bilinear") -> Tensor:
    """Resize (B,1,h,w) to ``size`` (H, W); identity when the size already matches."""
    if size is None or tuple(x.shape[-2:]) == tuple(size):
        return x
    kw = {} if mode == "nearest" else {"align_corners": False}
    return F.interpolate(x, size=tuple(size), mode=mode, **kw)


def normalize_map(x: Tensor, how: Normalize = "minmax", *, signed: bool = False, percentile: float = 99.0) -> Tensor:
    """Scale each image of (B,1,H,W) to [0, 1] (signed maps: 0.5 is zero)."""
    flat = x.flatten(1)
    if signed:
        scale = _scale(flat.abs(), "max" if how == "minmax" else how, percentile)
        return ((flat / scale).clamp(-1, 1) * 0.5 + 0.5).view_as(x)
    if how == "minmax":
        lo = flat.amin(1, keepdim=True)
        hi = flat.amax(1, keepdim=True)
        return ((flat - lo) / (hi - lo).clamp(min=_EPS)).view_as(x)
    return (flat / _scale(flat, how, percentile)).clamp(0, 1).view_as(x)


def _scale(flat: Tensor, how: str, percentile: float) -> Tensor:
    if how == "max":
        s = flat.amax(1, keepdim=True)
    elif how == "percentile":
        s = torch.quantile(flat.float(), percentile / 100.0, dim=1, keepdim=True).to(flat.dtype)
        s = torch.where(s > _EPS, s, flat.amax(1, keepdim=True))  # a mostly-zero map: fall back to the max
    else:
        raise ValueError(f"unknown normalize {how!r}; use minmax, max or percentile")
    return s.clamp(min=_EPS)


def positive_share(attr: Tensor, reduce: Reduce = "sum") -> Tensor:
    """(B,) share of each map's mass that a ReLU keeps: sum(relu(m)) / sum(|m|) of the channel-reduced map (0 for an
    all-zero map). Near 0, a rectified heatmap (``sign="positive"``) shows nothing or a few specks."""
    m = reduce_channels(attr.detach(), reduce).flatten(1).double()
    total = m.abs().sum(1)
    return torch.where(total > 0, m.clamp(min=0).sum(1) / total.clamp(min=1e-300), torch.zeros_like(total))


def heatmap(
    attr: Tensor,
    size: tuple[int, int] | None = None,
    *,
    reduce: Reduce = "sum",
    sign: Sign = "abs",
    upsample: str = "bilinear",
    normalize: Normalize = "minmax",
    percentile: float = 99.0,
) -> Tensor:
    """Raw attributions (B,C,h,w) -> heatmap (B,1,H,W) in [0, 1] (see the module docstring)."""
    x = apply_sign(reduce_channels(attr.detach(), reduce), sign)
    x = resize(x.float() if not x.is_floating_point() else x, size, upsample)
    return normalize_map(x, normalize, signed=sign == "all", percentile=percentile)
