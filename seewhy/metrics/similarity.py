"""Similarity of two batches of maps, as used by the sanity checks (Adebayo et al. 2018, arXiv:1810.03292).

Every function compares row ``i`` of ``a`` with row ``i`` of ``b`` and returns one value per row, shape (B,):

- :func:`pearson`, :func:`spearman` (average ranks for ties, as ``scipy.stats.spearmanr``), batched in torch;
- :func:`ssim` (Wang et al. 2004), equal to ``skimage.metrics.structural_similarity`` for the documented
  parameters (uniform 7x7 window by default, or the 11-tap Gaussian with ``gaussian_weights=True``);
- :func:`hog_similarity`: correlation of ``skimage.feature.hog`` descriptors (computed on the CPU with
  scikit-image, one map at a time: a small cost next to the explanations being compared);
- :func:`compare_maps`: the sanity-check protocol of Adebayo et al. -- raw attributions are turned into
  the paper's normalised maps (:func:`grayscale_map`, :func:`diverging_map`) and compared with the
  measures in :data:`MEASURES`.

A correlation with a constant map is undefined and returned as NaN (as scipy does).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

MEASURES: tuple[str, ...] = ("spearman_abs", "spearman", "ssim", "hog")
"""The measures of Adebayo et al.: Spearman rank correlation of the absolute-value maps and of the signed
maps, SSIM and HOG similarity (see :func:`compare_maps`)."""


def _pair(a: Tensor, b: Tensor, what: str) -> tuple[Tensor, Tensor]:
    if not isinstance(a, Tensor) or not isinstance(b, Tensor):
        raise TypeError(f"{what} compares two tensors, got {type(a).__name__} and {type(b).__name__}")
    if a.shape != b.shape:
        raise ValueError(f"{what}: the maps have different shapes {tuple(a.shape)} and {tuple(b.shape)}")
    if a.ndim < 2:
        raise ValueError(f"{what}: expected a batch of maps (B, ...), got shape {tuple(a.shape)}; add a batch dim")
    a, b = a.detach().to(torch.float64), b.detach().to(a.device, torch.float64)
    if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
        raise ValueError(f"{what}: the maps contain NaN or inf values")
    return a, b


def rank(x: Tensor) -> Tensor:
    """Ranks 1..N along the last dimension, ties sharing their average rank (scipy's ``rankdata`` "average").

    Returns float64 of the shape of ``x``.
    """
    flat = x.detach().reshape(-1, x.shape[-1]).to(torch.float64)
    rows, n = flat.shape
    if n == 0:
        return flat.reshape(x.shape)
    srt, order = flat.sort(dim=1, stable=True)
    new = torch.ones_like(srt, dtype=torch.bool)
    new[:, 1:] = srt[:, 1:] != srt[:, :-1]
    group = new.long().cumsum(1) - 1 + torch.arange(rows, device=flat.device)[:, None] * n  # unique over rows
    pos = torch.arange(n, device=flat.device, dtype=torch.float64).expand(rows, n).reshape(-1)
    g = group.reshape(-1)
    first = torch.full((rows * n,), float(n), dtype=torch.float64, device=flat.device).scatter_reduce(0, g, pos, "amin")
    last = torch.zeros(rows * n, dtype=torch.float64, device=flat.device).scatter_reduce(0, g, pos, "amax")
    avg = ((first + last) / 2 + 1)[g].reshape(rows, n)
    ranks = torch.empty_like(avg).scatter_(1, order, avg)
    return ranks.reshape(x.shape)


def _corr(a: Tensor, b: Tensor) -> Tensor:
    a = a - a.mean(1, keepdim=True)
    b = b - b.mean(1, keepdim=True)
    den = a.norm(dim=1) * b.norm(dim=1)
    r = (a * b).sum(1) / den
    r = torch.where(den > 0, r, torch.full_like(r, float("nan")))
    return r.clamp(-1.0, 1.0)


def pearson(a: Tensor, b: Tensor) -> Tensor:
    """Pearson correlation of each pair of flattened maps: r = cov(a, b) / (std(a) std(b)).

    Args:
        a, b: (B, ...) maps of the same shape.
    Returns:
        (B,) float64, NaN where a map is constant.
    """
    a, b = _pair(a, b, "pearson")
    return _corr(a.flatten(1), b.flatten(1))


def spearman(a: Tensor, b: Tensor) -> Tensor:
    """Spearman rank correlation of each pair of flattened maps (Spearman 1904): the Pearson correlation of
    the ranks, ties given their average rank -- ``scipy.stats.spearmanr(a[i].ravel(), b[i].ravel())``.

    Args:
        a, b: (B, ...) maps of the same shape.
    Returns:
        (B,) float64, NaN where a map is constant.
    """
    a, b = _pair(a, b, "spearman")
    return _corr(rank(a.flatten(1)), rank(b.flatten(1)))


def _as_planes(x: Tensor, what: str) -> Tensor:
    """(B,H,W) or (B,C,H,W) -> (B,C,H,W)."""
    if x.ndim == 3:
        return x[:, None]
    if x.ndim == 4:
        return x
    raise ValueError(f"{what}: expected maps of shape (B,H,W) or (B,C,H,W), got {tuple(x.shape)}")


def _gaussian_kernel(sigma: float, truncate: float, dtype: torch.dtype, device: torch.device) -> Tensor:
    radius = int(truncate * sigma + 0.5)  # as scipy.ndimage
    x = torch.arange(-radius, radius + 1, dtype=dtype, device=device)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def ssim(
    a: Tensor,
    b: Tensor,
    *,
    data_range: float,
    win_size: int | None = None,
    gaussian_weights: bool = False,
    sigma: float = 1.5,
    K1: float = 0.01,
    K2: float = 0.03,
    use_sample_covariance: bool = True,
) -> Tensor:
    """Mean structural similarity (Wang et al. 2004, IEEE TIP 13(4)) of each pair of maps:
    SSIM = (2 mu_a mu_b + C1)(2 s_ab + C2) / ((mu_a^2 + mu_b^2 + C1)(s_a^2 + s_b^2 + C2)), C_i = (K_i R)^2,
    with local statistics over a sliding window, averaged over the positions whose window fits in the map.

    Equal to ``skimage.metrics.structural_similarity(a[i], b[i], data_range=R, ...)`` with the same
    ``win_size``, ``gaussian_weights``, ``sigma``, ``K1``, ``K2``, ``use_sample_covariance`` (scikit-image's
    defaults: a uniform 7x7 window; ``gaussian_weights=True`` is the 11-tap Gaussian, sigma 1.5, of the paper);
    several channels are averaged, as scikit-image's ``channel_axis``.

    Args:
        a, b: (B,H,W) or (B,C,H,W) maps of the same shape.
        data_range: R, the value range of the maps (max - min possible value); 1.0 for maps scaled to [0, 1].
            It is explicit because a per-map range would make the score depend on each map's extremes.
    Returns:
        (B,) float64 in [-1, 1]; 1 for identical maps.
    """
    a, b = _pair(a, b, "ssim")
    a, b = _as_planes(a, "ssim"), _as_planes(b, "ssim")
    if not data_range > 0:
        raise ValueError(f"ssim: data_range must be > 0, got {data_range!r} (1.0 for maps in [0, 1])")
    if win_size is None:
        win_size = 2 * int(3.5 * sigma + 0.5) + 1 if gaussian_weights else 7
    if win_size % 2 != 1 or win_size < 3:
        raise ValueError(f"ssim: win_size must be odd and >= 3, got {win_size}")
    h, w = a.shape[-2:]
    if min(h, w) < win_size:
        raise ValueError(
            f"ssim: the {win_size}x{win_size} window does not fit in {h}x{w} maps; upsample the maps or pass "
            f"an odd win_size <= {min(h, w)}"
        )
    B, C = a.shape[:2]
    x = torch.cat([a, b, a * a, b * b, a * b], dim=1).reshape(B * C * 5, 1, h, w)
    if gaussian_weights:
        # skimage filters with truncate=3.5 whatever win_size is; only the crop uses win_size
        k = _gaussian_kernel(sigma, 3.5, x.dtype, x.device)
        r = (k.numel() - 1) // 2
        pad = (win_size - 1) // 2
        if r > pad:
            raise ValueError(
                f"ssim: with gaussian_weights, win_size must be at least the filter size {2 * r + 1}, got {win_size}"
            )
        x = F.conv2d(x, k.view(1, 1, -1, 1))
        x = F.conv2d(x, k.view(1, 1, 1, -1))
        extra = pad - r
        if extra:
            x = x[..., extra:-extra, extra:-extra]
    else:
        x = F.avg_pool2d(x, win_size, stride=1)
    ux, uy, uxx, uyy, uxy = x.reshape(B, 5 * C, *x.shape[-2:]).split(C, dim=1)
    cov_norm = win_size**2 / (win_size**2 - 1) if use_sample_covariance else 1.0
    vx = cov_norm * (uxx - ux * ux)
    vy = cov_norm * (uyy - uy * uy)
    vxy = cov_norm * (uxy - ux * uy)
    c1, c2 = (K1 * data_range) ** 2, (K2 * data_range) ** 2
    s = (2 * ux * uy + c1) * (2 * vxy + c2) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return s.mean(dim=(2, 3)).mean(1)


def hog_features(maps: Tensor, *, pixels_per_cell: int = 16, orientations: int = 9, cells_per_block: int = 3) -> Tensor:
    """HOG descriptors (Dalal & Triggs 2005) of (B,H,W) or (B,1,H,W) maps with ``skimage.feature.hog``
    (L2-Hys block normalisation), computed on the CPU; returns (B, D) float64 on the maps' device."""
    from skimage.feature import hog

    x = maps.detach()
    if x.ndim == 4:
        if x.shape[1] != 1:
            raise ValueError(f"hog: expected one-channel maps, got {x.shape[1]} channels; reduce them first")
        x = x[:, 0]
    if x.ndim != 3:
        raise ValueError(f"hog: expected maps of shape (B,H,W) or (B,1,H,W), got {tuple(maps.shape)}")
    h, w = x.shape[-2:]
    need = pixels_per_cell * cells_per_block
    if min(h, w) < need:
        raise ValueError(
            f"hog: {h}x{w} maps hold fewer than {cells_per_block}x{cells_per_block} cells of {pixels_per_cell} px; "
            f"pass pixels_per_cell <= {min(h, w) // cells_per_block} or upsample the maps"
        )
    arr = x.to("cpu", torch.float64).numpy()
    feats = [
        hog(
            m,
            orientations=orientations,
            pixels_per_cell=(pixels_per_cell, pixels_per_cell),
            cells_per_block=(cells_per_block, cells_per_block),
            feature_vector=True,
        )
        for m in arr
    ]
    return torch.from_numpy(np.stack(feats)).to(maps.device)


def hog_similarity(
    a: Tensor,
    b: Tensor,
    *,
    pixels_per_cell: int = 16,
    orientations: int = 9,
    cells_per_block: int = 3,
    correlation: str = "pearson",
) -> Tensor:
    """HOG similarity (Adebayo et al. 2018): corr(HOG(a), HOG(b)), the correlation of the two maps'
    histogram-of-oriented-gradients descriptors (:func:`hog_features`).

    The paper states the Pearson correlation (the default); its notebooks use Spearman (``correlation=
    "spearman"``). Adebayo et al. use ``pixels_per_cell=16`` on 299 px maps.

    Args:
        a, b: (B,H,W) or (B,1,H,W) maps of the same shape, at least ``pixels_per_cell * cells_per_block`` px.
    Returns:
        (B,) float64; NaN where a descriptor is constant (a constant map).
    """
    a, b = _pair(a, b, "hog_similarity")
    if correlation not in ("pearson", "spearman"):
        raise ValueError(f"unknown correlation {correlation!r}; use 'pearson' or 'spearman'")
    kw = {"pixels_per_cell": pixels_per_cell, "orientations": orientations, "cells_per_block": cells_per_block}
    fa, fb = hog_features(a, **kw), hog_features(b, **kw)
    return pearson(fa, fb) if correlation == "pearson" else spearman(fa, fb)


def _check_attr(attr: Tensor) -> Tensor:
    if not isinstance(attr, Tensor) or attr.ndim != 4:
        shape = tuple(attr.shape) if isinstance(attr, Tensor) else type(attr).__name__
        raise ValueError(f"expected attributions of shape (B,C,H,W), got {shape}")
    return attr.detach().to(torch.float64)


def grayscale_map(attr: Tensor, percentile: float = 99.0) -> Tensor:
    """The absolute-value map of Adebayo et al. (``saliency.VisualizeImageGrayscale``): m = sum_c |a_c|, then
    (m - min m) / (P_p(m) - min m) clipped to [0, 1], P_p the ``percentile``-th percentile of the map.

    Args:
        attr: (B,C,H,W) raw attributions.
    Returns:
        (B,1,H,W) float64 in [0, 1].
    """
    m = _check_attr(attr).abs().sum(1, keepdim=True)
    flat = m.flatten(1)
    lo = flat.amin(1, keepdim=True)
    hi = torch.quantile(flat, percentile / 100.0, dim=1, keepdim=True)
    span = hi - lo
    span = torch.where(span > 0, span, (flat.amax(1, keepdim=True) - lo).clamp(min=1e-300))
    return ((flat - lo) / span).clamp(0, 1).view_as(m)


def diverging_map(attr: Tensor, percentile: float = 99.0) -> Tensor:
    """The signed map of Adebayo et al.: m = sum_c a_c divided by P_p(|m|), the ``percentile``-th percentile of
    its absolute values, clipped to [-1, 1].

    Args:
        attr: (B,C,H,W) raw attributions.
    Returns:
        (B,1,H,W) float64 in [-1, 1].
    """
    m = _check_attr(attr).sum(1, keepdim=True)
    flat = m.flatten(1)
    scale = torch.quantile(flat.abs(), percentile / 100.0, dim=1, keepdim=True)
    scale = torch.where(scale > 0, scale, flat.abs().amax(1, keepdim=True).clamp(min=1e-300))
    return (flat / scale).clamp(-1, 1).view_as(m)


def _resize(attr: Tensor, size: tuple[int, int] | None) -> Tensor:
    if size is None or tuple(attr.shape[-2:]) == tuple(size):
        return attr
    return F.interpolate(attr, size=tuple(size), mode="bilinear", align_corners=False)


def compare_maps(
    a: Tensor,
    b: Tensor,
    measures: Sequence[str] = MEASURES,
    *,
    size: tuple[int, int] | None = None,
    percentile: float = 99.0,
    ssim_gaussian: bool = True,
    hog_pixels_per_cell: int | None = 16,
    hog_correlation: str = "pearson",
) -> dict[str, Tensor]:
    """Compare two batches of raw attributions with the measures of Adebayo et al. (2018), per image.

    ``"spearman_abs"``: Spearman of the :func:`grayscale_map` s; ``"spearman"``: Spearman of the
    :func:`diverging_map` s (signed); ``"ssim"``: :func:`ssim` of the grayscale maps (in [0, 1], so
    ``data_range=1``), 11-tap Gaussian window as in the paper's code unless ``ssim_gaussian=False`` (7x7 uniform);
    ``"hog"``: :func:`hog_similarity` of the grayscale maps. Each map is reduced over its channels first, then
    resized (bilinear) to ``size`` when given -- layer-resolution maps (Grad-CAM) at the input size, as in the paper.

    Args:
        a, b: (B,C,H,W) raw attributions (the same shape, or different ``C`` / resolutions when ``size`` is given).
        measures: names from :data:`MEASURES`.
        hog_pixels_per_cell: HOG cell size; None picks ``min(H, W) // 3`` (three cells a side, the fewest a
            3x3 block needs) -- for small maps where the paper's 16 px do not fit.
    Returns:
        {measure: (B,) float64}.
    """
    unknown = [m for m in measures if m not in MEASURES]
    if unknown:
        raise ValueError(f"unknown similarity measure(s) {unknown}; use some of {', '.join(MEASURES)}")
    a, b = _check_attr(a), _check_attr(b)
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"compare_maps: {a.shape[0]} maps against {b.shape[0]}")
    out: dict[str, Tensor] = {}
    gray: tuple[Tensor, Tensor] | None = None
    if any(m != "spearman" for m in measures):
        gray = (_resize(grayscale_map(a, percentile), size), _resize(grayscale_map(b, percentile), size))
        gray = (gray[0].clamp(0, 1), gray[1].clamp(0, 1))
    for m in measures:
        if m == "spearman_abs":
            out[m] = spearman(*gray)
        elif m == "spearman":
            out[m] = spearman(_resize(diverging_map(a, percentile), size), _resize(diverging_map(b, percentile), size))
        elif m == "ssim":
            out[m] = ssim(*gray, data_range=1.0, gaussian_weights=ssim_gaussian)
        elif m == "hog":
            ppc = hog_pixels_per_cell or max(1, min(gray[0].shape[-2:]) // 3)
            out[m] = hog_similarity(*gray, pixels_per_cell=ppc, correlation=hog_correlation)
    return out
