"""Faithfulness metrics: do the pixels an attribution ranks high drive the model's score?

- :func:`deletion_auc` / :func:`insertion_auc` (Petsiuk et al. 2018, RISE) and :func:`pixel_flipping` (MoRF/LeRF,
  Bach et al. 2015; Samek et al. 2016) share one curve engine: every step image of every input is built chunk by chunk
  into one buffer by :func:`seewhy.engine.evaluate_masks` and scored in shared batches (n steps cost n + 1 forwards
  per image, the model's throughput limit);
- :func:`road` (Rong et al. 2022): the same MoRF/LeRF removal, with removed pixels filled by noisy linear imputation
  (:func:`noisy_linear_imputation`) so that the removed set's shape leaks less;
- :func:`faithfulness_correlation` (Bhatt et al. 2020) and :func:`infidelity` (Yeh et al. 2019).

Conventions shared by the module (and the other metric modules):

- the unit of removal is a pixel (all channels together); attributions (B,C,H,W) are summed over channels and maps
  (B,1,h,w) are upsampled bilinearly to the input size (:func:`_pixel_map`);
- pixels are ranked with a stable sort: ties go in raster order (row-major, top-left first), deterministically
  (official ROAD breaks ties with 1e-4 noise instead; a constant map deletes the image from the top down);
- ``target`` is anything :func:`seewhy.targets.make_target` accepts ("top1"/None: the prediction on the clean input);
- ``score``: ``"probability"`` (softmax of the target class, the RISE protocol) or ``"logit"`` (raw output);
- randomness comes from ``seed``: each (image, draw) pair has its own generator derived from (seed, the image's
  position in ``inputs``, the draw), so results do not depend on ``batch_size`` (rows per forward) nor on the images
  that follow; ``seed=None`` draws a seed;
- the model runs in eval mode under ``torch.inference_mode()``; its flags are restored afterwards.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core import check_inputs
from ..engine import (
    evaluate,
    evaluate_masks,
    forward,
    generator,
    make_baseline,
    resolve_score,
    row_generator,
    score_rows,
)
from ..hooks import model_state
from ..targets import Target, TargetSpec, make_target
from .registry import register_metric
from .similarity import pearson

Substitute = float | str | Tensor

# ---------------------------------------------------------------------------------------------------------------
# shared helpers (imported by robustness, localization and complexity)


def _pixel_map(attributions: Tensor, inputs: Tensor, upsample: bool = True) -> Tensor:
    """(B,H,W) float map at the input size: channels summed (signed), maps upsampled bilinearly (unless not
    ``upsample``: then (B,h,w)). Accepts (B,C,h,w) or (B,h,w) attributions for (B,C,H,W) inputs."""
    if not isinstance(attributions, Tensor):
        raise TypeError(f"attributions must be a torch.Tensor, got {type(attributions).__name__}")
    a = attributions.detach()
    if a.ndim == 3:
        a = a.unsqueeze(1)
    if a.ndim != 4 or a.shape[0] != inputs.shape[0]:
        raise ValueError(
            f"attributions of shape {tuple(attributions.shape)} do not fit inputs {tuple(inputs.shape)}; "
            f"give ({inputs.shape[0]}, C, h, w) or ({inputs.shape[0]}, h, w), one map per input"
        )
    if not a.is_floating_point():
        a = a.float()
    if not bool(torch.isfinite(a).all()):
        raise ValueError("attributions contain NaN or inf; fix the explanation (or replace them with torch.nan_to_num)")
    a = a.to(inputs.device).sum(1, keepdim=True)
    if upsample and tuple(a.shape[-2:]) != tuple(inputs.shape[-2:]):
        a = F.interpolate(a, size=tuple(inputs.shape[-2:]), mode="bilinear", align_corners=False)
    return a[:, 0]


def _ranks(pmap: Tensor, descending: bool = True) -> Tensor:
    """(B,H,W) map -> (B,1,H,W) int32 rank of each pixel (0 = first in the order); ties in raster order."""
    flat = pmap.flatten(1)
    order = torch.sort(-flat if descending else flat, dim=1, stable=True).indices
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(flat.shape[1], device=flat.device).expand_as(order))
    return ranks.to(torch.int32).view(pmap.shape[0], 1, *pmap.shape[1:])


def _prepare(
    model: nn.Module, inputs: Tensor, target: TargetSpec, batch_size: int | None, clean: bool = False
) -> tuple[Tensor, Target, Tensor | None]:
    """Checked inputs, the resolved target and (when needed or ``clean``) the model's output on the inputs."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    inputs = check_inputs(inputs)
    if batch_size is not None:
        _positive_int(batch_size, "batch_size")
    t = make_target(target, inputs.shape[0], getattr(model, "class_names", None))
    output = None
    if t.pending or clean:
        output = forward(model, inputs, batch_size=batch_size)
        t = t.resolve(output)
    return inputs, t, output


def _rise_blur(inputs: Tensor, klen: int = 11, sigma: float = 5.0) -> Tensor:
    """RISE's insertion substrate: ``gkern(11, 5)`` (scipy's gaussian_filter of a centred delta on a klen x klen grid,
    reflect mode, truncate 4) as a per-channel conv2d with zero padding klen // 2."""
    radius = int(4 * sigma + 0.5)
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    g = torch.exp(-0.5 * (t / sigma) ** 2)
    g = g / g.sum()
    k1 = torch.zeros(klen, dtype=torch.float64)
    centre = klen // 2
    for off, w in zip(t.tolist(), g.tolist(), strict=True):  # scipy "reflect": d c b a | a b c d | d c b a
        j = int(centre + off) % (2 * klen)
        k1[j if j < klen else 2 * klen - 1 - j] += w
    k = (k1[:, None] * k1[None, :]).to(inputs)
    c = inputs.shape[1]
    return F.conv2d(inputs, k.expand(c, 1, klen, klen), padding=klen // 2, groups=c)


def _substitute(inputs: Tensor, substitute: Substitute) -> Tensor:
    """The values removed pixels take: a number (0.0 = the dataset mean for normalised inputs), "zero", "mean" (each
    image's mean colour), "blur" (the RISE blur: 11x11 Gaussian, sigma 5, zero padding) or a tensor."""
    if isinstance(substitute, str) and substitute not in ("zero", "zeros", "mean", "blur"):
        raise ValueError(f"unknown substitute {substitute!r}; use 'zero', 'blur', 'mean', a number or a tensor")
    if isinstance(substitute, str) and substitute == "blur":
        return _rise_blur(inputs)
    return make_baseline(inputs, substitute)


def _fraction(value: float, name: str, *, closed_right: bool = True) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value and (
        value <= 1 if closed_right else value < 1
    )
    if not ok:
        bound = "[0, 1]" if closed_right else "[0, 1)"
        raise ValueError(f"{name} must be a fraction in {bound} (10% is 0.1), got {value!r}")
    return float(value)


def _positive_int(value: Any, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


# ---------------------------------------------------------------------------------------------------------------
# curves: deletion, insertion, pixel flipping


@dataclass(frozen=True)
class Curves:
    """Deletion / insertion / pixel-flipping curves, kept for plotting.

    ``fractions`` (S+1,): share of pixels moved at each step (0 ... 1); ``curves`` (B, S+1): the target's score at
    each step; ``auc`` (B,): trapezoidal area under each curve over ``fractions``; ``protocol``: the settings.
    ``scores`` is ``auc`` (the per-image number a leaderboard shows).
    """

    fractions: Tensor
    curves: Tensor
    auc: Tensor
    protocol: dict[str, Any] = field(default_factory=dict)

    @property
    def scores(self) -> Tensor:
        return self.auc

    @property
    def aopc(self) -> Tensor:
        """Area over the perturbation curve (Samek et al. 2016): mean over steps k of f(x^(0)) - f(x^(k)), (B,)."""
        return (self.curves[:, :1] - self.curves).mean(1)


def _counts(n_pixels: int, width: int, pixels_per_step: int | None, n_steps: int | None) -> tuple[Tensor, int]:
    """Pixels moved after each step, (S+1,) from 0 to n_pixels, and the pixels per step (for the record)."""
    if pixels_per_step is not None and n_steps is not None:
        raise ValueError("give pixels_per_step or n_steps, not both")
    if n_steps is not None:
        n_steps = _positive_int(n_steps, "n_steps")
        if n_steps > n_pixels:
            raise ValueError(f"n_steps={n_steps} exceeds the {n_pixels} pixels of the input; use at most {n_pixels}")
        counts = torch.div(torch.arange(n_steps + 1) * n_pixels + n_steps // 2, n_steps, rounding_mode="floor")
        return counts, math.ceil(n_pixels / n_steps)
    step = width if pixels_per_step is None else _positive_int(pixels_per_step, "pixels_per_step")
    n = math.ceil(n_pixels / step)
    return (torch.arange(n + 1) * step).clamp(max=n_pixels), step


def _curve_rows(
    model: nn.Module, start: Tensor, end: Tensor, ranks: Tensor, counts: Tensor, target: Target, score: str,
    batch_size: int | None, desc: str,
) -> Tensor:
    """(B, S+1) scores of the images that take pixel p from ``end`` when rank(p) < counts[k], else from ``start``."""
    b, s = start.shape[0], counts.shape[0]
    sample = torch.arange(b).repeat_interleave(s)
    step = torch.arange(s).repeat(b)
    counts_d = counts.to(device=start.device, dtype=torch.int32)

    def masks(idx: Tensor) -> Tensor:
        return ranks[sample[idx].to(ranks.device)] < counts_d[step[idx].to(ranks.device)].view(-1, 1, 1, 1)

    out = evaluate_masks(model, end, start, masks, sample, target, batch_size=batch_size, score=score, desc=desc)
    return out.view(b, s)


def _curves(
    model: nn.Module, inputs: Tensor, attributions: Tensor, target: TargetSpec, *, mode: str, order: str,
    pixels_per_step: int | None, n_steps: int | None, substitute: Substitute, score: str, batch_size: int | None,
) -> Curves:
    if order not in ("morf", "lerf"):
        raise ValueError(f"unknown order {order!r}; use 'morf' (most relevant first) or 'lerf' (least relevant first)")
    with model_state(model):
        inputs, t, _ = _prepare(model, inputs, target, batch_size)
        mode_score = resolve_score(score, t)
        pmap = _pixel_map(attributions, inputs)
        h, w = inputs.shape[-2:]
        counts, step = _counts(h * w, w, pixels_per_step, n_steps)
        ranks = _ranks(pmap, descending=order == "morf")
        sub = _substitute(inputs, substitute)
        start, end = (inputs, sub) if mode == "deletion" else (sub, inputs)
        curves = _curve_rows(model, start, end, ranks, counts, t, mode_score, batch_size, mode)
    fractions = counts.to(device=curves.device, dtype=curves.dtype) / (h * w)
    auc = torch.trapezoid(curves, fractions, dim=1)
    shown = substitute if not isinstance(substitute, Tensor) else "tensor"
    protocol = {"mode": mode, "order": order, "pixels_per_step": step, "n_steps": counts.shape[0] - 1,
                "substitute": shown, "score": mode_score, "ties": "raster order"}
    return Curves(fractions, curves, auc, protocol)


def _curve_cost(params: dict[str, Any], default_steps: int | None = None) -> int:
    """Forwards per image of a curve: n_steps + 1 (the size comes from ``params["input_size"]``, default 224x224)."""
    h, w = params.get("input_size", (224, 224))
    if params.get("n_steps") is not None:
        return int(params["n_steps"]) + 1
    if params.get("pixels_per_step") is None and default_steps is not None:
        return default_steps + 1
    return math.ceil(h * w / int(params.get("pixels_per_step") or w)) + 1


@register_metric("deletion_auc", family="faithfulness", higher_is_better=False, cost=_curve_cost)
def deletion_auc(
    model: nn.Module,
    inputs: Tensor,
    attributions: Tensor,
    target: TargetSpec = None,
    *,
    pixels_per_step: int | None = None,
    n_steps: int | None = None,
    substitute: Substitute = "zero",
    score: str = "probability",
    batch_size: int | None = None,
    seed: int | None = None,
) -> Curves:
    """Deletion AUC (Petsiuk et al. 2018, RISE): remove pixels most relevant first; lower is better.

    AUC = integral over t in [0, 1] of f_c(x with the top t of pixels set to the substitute) dt (trapezoid rule).
    Defaults are RISE's protocol: ``pixels_per_step`` = the input width (224 at 224 px: 224 steps), substitute 0
    (the mean colour for normalised inputs), softmax probability of the target (the prediction by default).
    ``n_steps`` instead spreads the pixels evenly over that many steps. ``seed`` is unused (deterministic).

    Returns:
        :class:`Curves` with ``fractions``, ``curves`` (B, S+1), ``auc`` = ``scores`` (B,).
    """
    return _curves(model, inputs, attributions, target, mode="deletion", order="morf", pixels_per_step=pixels_per_step,
                   n_steps=n_steps, substitute=substitute, score=score, batch_size=batch_size)


@register_metric("insertion_auc", family="faithfulness", higher_is_better=True, cost=_curve_cost)
def insertion_auc(
    model: nn.Module,
    inputs: Tensor,
    attributions: Tensor,
    target: TargetSpec = None,
    *,
    pixels_per_step: int | None = None,
    n_steps: int | None = None,
    substitute: Substitute = "blur",
    score: str = "probability",
    batch_size: int | None = None,
    seed: int | None = None,
) -> Curves:
    """Insertion AUC (Petsiuk et al. 2018, RISE): restore pixels most relevant first into a substrate; higher is better.

    AUC = integral over t in [0, 1] of f_c(substrate with the top t of pixels of x put back) dt (trapezoid rule).
    Defaults are RISE's protocol: the substrate is the image blurred with an 11x11 Gaussian of sigma 5 (zero padding),
    ``pixels_per_step`` = the input width, softmax probability of the target. ``seed`` is unused (deterministic).

    Returns:
        :class:`Curves` with ``fractions``, ``curves`` (B, S+1), ``auc`` = ``scores`` (B,).
    """
    return _curves(model, inputs, attributions, target, mode="insertion", order="morf",
                   pixels_per_step=pixels_per_step, n_steps=n_steps, substitute=substitute, score=score,
                   batch_size=batch_size)


def pixel_flipping(
    model: nn.Module,
    inputs: Tensor,
    attributions: Tensor,
    target: TargetSpec = None,
    *,
    order: str = "morf",
    n_steps: int | None = 100,
    pixels_per_step: int | None = None,
    substitute: Substitute = "zero",
    score: str = "probability",
    batch_size: int | None = None,
    seed: int | None = None,
) -> Curves:
    """Pixel flipping (Bach et al. 2015; MoRF/LeRF as in Samek et al. 2016): replace pixels in order of relevance.

    Curve f_c(x^(k)), x^(k) = x with the k-th share of pixels in ``order`` ("morf": most relevant first, a faithful
    map drops fast, lower AUC is better; "lerf": least relevant first, higher is better) set to ``substitute``.
    ``n_steps`` (default 100) even steps, or ``pixels_per_step``. The result also gives AOPC (``Curves.aopc``).
    """
    if pixels_per_step is not None:
        n_steps = None
    return _curves(model, inputs, attributions, target, mode="deletion", order=order, pixels_per_step=pixels_per_step,
                   n_steps=n_steps, substitute=substitute, score=score, batch_size=batch_size)


@register_metric("pixel_flipping_morf", family="faithfulness", higher_is_better=False,
                 cost=lambda p: _curve_cost(p, default_steps=100))
def pixel_flipping_morf(model: nn.Module, inputs: Tensor, attributions: Tensor, target: TargetSpec = None,
                        **params: Any) -> Curves:
    """Pixel flipping, most relevant first (AUC; lower is better): :func:`pixel_flipping` with order="morf"."""
    return pixel_flipping(model, inputs, attributions, target, order="morf", **params)


@register_metric("pixel_flipping_lerf", family="faithfulness", higher_is_better=True,
                 cost=lambda p: _curve_cost(p, default_steps=100))
def pixel_flipping_lerf(model: nn.Module, inputs: Tensor, attributions: Tensor, target: TargetSpec = None,
                        **params: Any) -> Curves:
    """Pixel flipping, least relevant first (AUC; higher is better): :func:`pixel_flipping` with order="lerf"."""
    return pixel_flipping(model, inputs, attributions, target, order="lerf", **params)


# ---------------------------------------------------------------------------------------------------------------
# ROAD: noisy linear imputation

# ROAD's imputer: a removed pixel is the weighted mean of its 8 neighbours (1/6 for the 4-neighbours, 1/12 diagonal)
_NEIGHBOURS = ((-1, -1, 1 / 12), (-1, 0, 1 / 6), (-1, 1, 1 / 12), (0, -1, 1 / 6), (0, 1, 1 / 6), (1, -1, 1 / 12),
               (1, 0, 1 / 6), (1, 1, 1 / 12))


def _neighbour_sum(v: Tensor) -> Tensor:
    """sum_q w_pq v_q over the 8 in-image neighbours q of each pixel p (outside the image counts as absent).

    The weights are separable: [1 2 1]^T [1 2 1] / 12 minus the centre (4/12), so two 3-tap passes do it."""
    h, w = v.shape[-2:]
    p = F.pad(v, (1, 1, 0, 0))
    rows = p[..., :, : w] + p[..., :, 2 : w + 2] + 2 * v
    p = F.pad(rows, (0, 0, 1, 1))
    return (p[..., : h, :] + p[..., 2 : h + 2, :] + 2 * rows - 4 * v) / 12


def _bilinear_kernel(like: Tensor) -> Tensor:
    k1 = torch.tensor([0.25, 0.75, 0.75, 0.25], dtype=like.dtype, device=like.device)
    return (k1[:, None] * k1[None, :]).view(1, 1, 4, 4)


def _prolong(e: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear 2x interpolation of (k,C,h,w) to (k,C,H,W) (zero beyond the border)."""
    k, c = e.shape[:2]
    up = F.conv_transpose2d(e.reshape(k * c, 1, *e.shape[-2:]), _bilinear_kernel(e), stride=2, padding=1)
    return up[..., : size[0], : size[1]].reshape(k, c, *size)


def _restrict(r: Tensor, size: tuple[int, int]) -> Tensor:
    """The transpose of :func:`_prolong`: (k,C,H,W) to (k,C,h,w)."""
    k, c, h, w = r.shape
    r = F.pad(r.reshape(k * c, 1, h, w), (0, 2 * size[1] - w, 0, 2 * size[0] - h))
    return F.conv2d(r, _bilinear_kernel(r), stride=2, padding=1).reshape(k, c, *size)


class _Level:
    """One grid of the multigrid preconditioner: the unknowns (1.0 on removed pixels) and the stencil operator."""

    def __init__(self, hole: Tensor) -> None:
        self.hole = hole
        self.deg = _neighbour_sum(torch.ones_like(hole[:1]))

    def apply(self, u: Tensor) -> Tensor:
        return (self.deg * u - _neighbour_sum(u)) * self.hole

    def jacobi(self, e: Tensor, r: Tensor) -> Tensor:
        return e + (r - self.apply(e)) / self.deg


def _levels(hole: Tensor) -> list[_Level]:
    """Grids down to 4 px; a coarse cell is unknown when at least 3 of its 4 children are."""
    levels = [_Level(hole)]
    while min(hole.shape[-2:]) > 4:
        hole = (F.avg_pool2d(hole, 2, ceil_mode=True) >= 0.75).to(hole.dtype)
        levels.append(_Level(hole))
    return levels


def _vcycle(levels: list[_Level], r: Tensor, level: int = 0) -> Tensor:
    """One symmetric V-cycle (1 Jacobi sweep before and after, bilinear transfer, the same stencil on every grid,
    30 sweeps on the coarsest): a fixed SPD approximation of A^-1 r, usable as a CG preconditioner."""
    g = levels[level]
    e = r / g.deg
    if level == len(levels) - 1:
        for _ in range(29):
            e = g.jacobi(e, r)
        return e
    coarse = levels[level + 1]
    rc = _restrict(r - g.apply(e), tuple(coarse.hole.shape[-2:])) * coarse.hole
    e = e + _prolong(_vcycle(levels, rc, level + 1), tuple(g.hole.shape[-2:])) * g.hole
    return g.jacobi(e, r)


def _deep_holes(keep: Tensor) -> Tensor:
    """(k,) True when most removed pixels are more than 3 px (chessboard) from any kept pixel: large holes, where
    the multigrid preconditioner pays (scattered holes converge fast with the Jacobi one)."""
    hole = (~keep).to(torch.float32)
    deep = -F.max_pool2d(-hole, 7, stride=1, padding=3)
    return deep.flatten(1).sum(1) > 0.5 * hole.flatten(1).sum(1)


def _harmonic_fill(x: Tensor, keep: Tensor, tol: float, max_iter: int) -> Tensor:
    """Solve ROAD's linear system for the removed pixels (keep == False) of x (k,C,H,W), per image and channel.

    For every removed p: deg_p v_p - sum_{q removed} w_pq v_q = sum_{q kept} w_pq x_q (deg_p = sum of the in-image
    neighbour weights), i.e. v_p = the weighted mean of its neighbours. The matrix is symmetric positive definite when
    some pixel is kept: preconditioned conjugate gradients, each (image, channel) system stopping on its own when
    ||r|| <= tol ||b||. The preconditioner is a multigrid V-cycle for images with large holes, Jacobi otherwise
    (decided per image from its mask). The start is the same problem solved at half the resolution (a 2x2 block is
    known when any of its pixels is), upsampled."""
    if bool(keep.all()):
        return x
    hole = (~keep).to(x.dtype)
    known = x * keep
    h, w = x.shape[-2:]
    if min(h, w) >= 32:
        m = F.avg_pool2d(keep.to(x.dtype), 2, ceil_mode=True)
        xc = F.avg_pool2d(known, 2, ceil_mode=True) / m.clamp(min=1e-12)
        coarse = _harmonic_fill(xc, m > 0, tol, max_iter)
        v = F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False) * hole
    else:
        v = torch.zeros_like(x)
    fine = _Level(hole)
    multi = _deep_holes(keep).to(x.device)
    rows = multi.nonzero()[:, 0]
    levels = _levels(hole[rows]) if len(rows) else []

    def precondition(r: Tensor) -> Tensor:
        z = r / fine.deg
        if len(rows):
            z = z.index_copy(0, rows, _vcycle(levels, r[rows]))
        return z

    def dot(u: Tensor, t: Tensor) -> Tensor:
        return (u * t).sum(dim=(-2, -1), keepdim=True)

    b = _neighbour_sum(known) * hole
    r = b - fine.apply(v)
    z = precondition(r)
    p = z.clone()
    rz = dot(r, z)
    limit = (tol * dot(b, b).sqrt()).clamp(min=1e-30)
    tiny = torch.finfo(x.dtype).tiny
    for _ in range(max_iter):
        active = dot(r, r).sqrt() > limit
        if not bool(active.any()):
            break
        ap = fine.apply(p)
        alpha = torch.where(active, rz / dot(p, ap).clamp(min=tiny), 0.0)
        v.addcmul_(alpha.expand_as(p), p)
        r.addcmul_(alpha.expand_as(ap), ap, value=-1.0)
        z = precondition(r)
        rz_new = dot(r, z)
        beta = torch.where(active, rz_new / rz.clamp(min=tiny), 0.0)
        p = torch.where(active, z + beta * p, p)
        rz = torch.where(active, rz_new, rz)
    return torch.where(keep, x, v)


def noisy_linear_imputation(
    inputs: Tensor, keep: Tensor, *, noise: float = 0.01, tol: float = 1e-4, max_iter: int = 1000,
    seed: int | None = None,
) -> Tensor:
    """ROAD's noisy linear imputation (Rong et al. 2022): fill removed pixels from their neighbours, plus noise.

    v_p = sum_q w_pq v_q / sum_q w_pq over the 8 neighbours (w = 1/6 side, 1/12 diagonal), one linear system per
    image and channel (official code: scipy ``spsolve`` on the CPU; here preconditioned conjugate gradients in torch,
    on the inputs' device, to relative residual ``tol``: at 224 px against scipy's exact solve, for inputs of unit
    standard deviation, the default leaves a mean error of about 3e-4 and a largest error of about 1e-3 with half the
    pixels removed, 5e-3 (half the default noise) with 90% removed; lower ``tol`` for a closer solve), then
    v_p += N(0, noise^2). ``keep`` (B,H,W) or (B,1,H,W) bool: True keeps the pixel. Each image's noise comes from
    (seed, its index).
    """
    inputs = check_inputs(inputs)
    keep = _check_keep(keep, inputs)
    gen_seed = generator(seed)[1]
    gens = [row_generator(gen_seed, i) for i in range(inputs.shape[0])]
    return _impute(inputs, keep, noise, gens, tol, max_iter)


def _check_keep(keep: Tensor, inputs: Tensor) -> Tensor:
    if not isinstance(keep, Tensor) or keep.dtype != torch.bool:
        raise TypeError("keep must be a bool tensor (True = keep the pixel)")
    if keep.ndim == 3:
        keep = keep.unsqueeze(1)
    if keep.shape != (inputs.shape[0], 1, *inputs.shape[-2:]):
        raise ValueError(f"keep of shape {tuple(keep.shape)} does not fit inputs {tuple(inputs.shape)}; give (B,H,W)")
    if not bool(keep.flatten(1).any(1).all()):
        raise ValueError("every image must keep at least one pixel (an all-removed image has no neighbours to use)")
    return keep.to(inputs.device)


def _impute(
    x: Tensor, keep: Tensor, noise: float, gens: Sequence[torch.Generator], tol: float, max_iter: int
) -> Tensor:
    filled = _harmonic_fill(x.float() if x.dtype in (torch.float16, torch.bfloat16) else x, keep, tol, max_iter)
    if noise:
        eps = torch.stack([torch.randn(x.shape[1:], generator=g, dtype=torch.float32) for g in gens])
        filled = filled + (~keep) * (noise * eps.to(filled))
    return filled.to(x.dtype)


@dataclass(frozen=True)
class RoadResult:
    """ROAD curves and scores.

    ``fractions`` (P,): shares of pixels removed; ``morf`` / ``lerf`` (B, P): the target's score with the most /
    least relevant share removed and imputed (None when that order was not run); ``clean`` (B,): the score on the
    inputs; ``scores`` (B,): mean of the MoRF curve ("morf", lower is better), of the LeRF curve ("lerf", higher is
    better) or (mean LeRF - mean MoRF) / 2 ("combined", higher is better, as pytorch-grad-cam's ROADCombined).
    """

    fractions: Tensor
    morf: Tensor | None
    lerf: Tensor | None
    clean: Tensor
    scores: Tensor
    protocol: dict[str, Any] = field(default_factory=dict)


_ROAD_FRACTIONS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.7, 0.9)


def _road_cost(params: dict[str, Any]) -> int:
    n = len(params.get("fractions", _ROAD_FRACTIONS))
    return n * (2 if params.get("order", "combined") == "combined" else 1) + 1


@register_metric("road", family="faithfulness", higher_is_better=True, cost=_road_cost)
def road(
    model: nn.Module,
    inputs: Tensor,
    attributions: Tensor,
    target: TargetSpec = None,
    *,
    fractions: Sequence[float] = _ROAD_FRACTIONS,
    order: str = "combined",
    noise: float = 0.01,
    score: str = "probability",
    tol: float = 1e-4,
    max_iter: int = 1000,
    batch_size: int | None = None,
    seed: int | None = None,
) -> RoadResult:
    """ROAD, Remove And Debias (Rong et al. 2022): MoRF/LeRF removal with noisy linear imputation, no retraining.

    For each fraction p: f_c(x with the p most ("morf") or least ("lerf") relevant pixels imputed from their
    neighbours + N(0, noise^2)); both orders remove a share p (x-axis = fraction removed; the official code's LeRF at
    p keeps the top p, i.e. removes 1 - p). ``order``: "morf", "lerf" or "combined" (both; score (mean LeRF - mean
    MoRF) / 2). Defaults: the paper's fractions 0.1 ... 0.9, noise 0.01,
    softmax probability of the target. The imputation is solved to relative residual ``tol`` (see
    :func:`noisy_linear_imputation`); the noise of each (image, order, fraction) comes from ``seed``.

    Returns:
        :class:`RoadResult` (``scores`` (B,), the curves, the clean scores).
    """
    if order not in ("morf", "lerf", "combined"):
        raise ValueError(f"unknown order {order!r}; use 'morf', 'lerf' or 'combined'")
    fr = [_fraction(p, "each ROAD fraction", closed_right=False) for p in fractions]
    if not fr:
        raise ValueError("give at least one fraction, e.g. fractions=(0.1, 0.5, 0.9)")
    orders = ("morf", "lerf") if order == "combined" else (order,)
    with model_state(model):
        inputs, t, output = _prepare(model, inputs, target, batch_size, clean=True)
        mode = resolve_score(score, t)
        clean = score_rows(output, t, mode)
        ranks = _ranks(_pixel_map(attributions, inputs))
        b, n = inputs.shape[0], inputs.shape[-2] * inputs.shape[-1]
        counts = torch.tensor([round(p * n) for p in fr], dtype=torch.int32, device=inputs.device)
        n_o, n_p = len(orders), len(fr)
        sample = torch.arange(b).repeat_interleave(n_o * n_p)
        which = torch.arange(n_o * n_p).repeat(b)
        gen_seed = generator(seed)[1]
        lerf_flag = torch.tensor([o == "lerf" for o in orders], device=inputs.device)

        def rows(idx: Tensor) -> Tensor:
            s, k = sample[idx], which[idx]
            o, p = k // n_p, k % n_p
            r = ranks[s.to(ranks.device)]
            c = counts[p.to(counts.device)].view(-1, 1, 1, 1)
            removed = torch.where(lerf_flag[o.to(lerf_flag.device)].view(-1, 1, 1, 1), r >= n - c, r < c)
            gens = [row_generator(gen_seed, int(i), int(orders[oi] == "lerf"), int(pi))
                    for i, oi, pi in zip(s.tolist(), o.tolist(), p.tolist(), strict=True)]
            return _impute(inputs[s.to(inputs.device)], ~removed, noise, gens, tol, max_iter)

        out = evaluate(model, rows, sample, t, like=inputs, batch_size=batch_size, score=mode, desc="road")
    curves = out.view(b, n_o, n_p)
    morf = curves[:, orders.index("morf")] if "morf" in orders else None
    lerf = curves[:, orders.index("lerf")] if "lerf" in orders else None
    if order == "combined":
        scores = (lerf.mean(1) - morf.mean(1)) / 2
    else:
        scores = curves[:, 0].mean(1)
    protocol = {"order": order, "noise": noise, "score": mode, "seed": gen_seed, "imputation": "noisy linear, 8-nbr",
                "ties": "raster order"}
    fractions_t = torch.tensor(fr, dtype=curves.dtype, device=curves.device)
    return RoadResult(fractions_t, morf, lerf, clean, scores, protocol)


@register_metric("road_morf", family="faithfulness", higher_is_better=False,
                 cost=lambda p: _road_cost({**p, "order": "morf"}))
def road_morf(model: nn.Module, inputs: Tensor, attributions: Tensor, target: TargetSpec = None,
              **params: Any) -> RoadResult:
    """ROAD, most relevant first (mean score over the fractions; lower is better): :func:`road` with order="morf"."""
    return road(model, inputs, attributions, target, order="morf", **params)


@register_metric("road_lerf", family="faithfulness", higher_is_better=True,
                 cost=lambda p: _road_cost({**p, "order": "lerf"}))
def road_lerf(model: nn.Module, inputs: Tensor, attributions: Tensor, target: TargetSpec = None,
              **params: Any) -> RoadResult:
    """ROAD, least relevant first (mean score over the fractions; higher is better): :func:`road` with order="lerf"."""
    return road(model, inputs, attributions, target, order="lerf", **params)


#: published protocols as (registered metric, params) -- the metrics' defaults, spelled out for reports and the CLI.
#: The target is the model's top-1 prediction on the clean image in both papers.
PRESETS: dict[str, tuple[str, dict[str, Any]]] = {
    "rise_deletion": ("deletion_auc", {"pixels_per_step": 224, "substitute": "zero", "score": "probability"}),
    "rise_insertion": ("insertion_auc", {"pixels_per_step": 224, "substitute": "blur", "score": "probability"}),
    "road": ("road", {"fractions": _ROAD_FRACTIONS, "order": "combined", "noise": 0.01, "score": "probability"}),
}


# ---------------------------------------------------------------------------------------------------------------
# faithfulness correlation, infidelity


@register_metric("faithfulness_correlation", family="faithfulness", higher_is_better=True,
                 cost=lambda p: int(p.get("n_runs", 100)) + 1)
def faithfulness_correlation(
    model: nn.Module,
    inputs: Tensor,
    attributions: Tensor,
    target: TargetSpec = None,
    *,
    n_runs: int = 100,
    subset_size: int | float = 0.1,
    baseline: Substitute = 0.0,
    score: str = "logit",
    batch_size: int | None = None,
    seed: int | None = None,
) -> Tensor:
    """Faithfulness correlation (Bhatt et al. 2020): do attribution sums predict the score drops?

    mu_F = Pearson over ``n_runs`` random pixel subsets S of (sum_{i in S} a_i, f(x) - f(x with x_S <- baseline)).
    ``subset_size``: pixels per subset, an int or a fraction of the H*W pixels (default 0.1: Quantus' 224
    channel-values barely move an ImageNet model). Subsets are drawn per image and run from ``seed``; pixels of all
    channels are replaced together. NaN when the drops or sums are constant. Higher is better, in [-1, 1].

    Returns:
        (B,) correlations.
    """
    n_runs = _positive_int(n_runs, "n_runs")
    if n_runs < 2:
        raise ValueError("n_runs must be >= 2 to compute a correlation")
    with model_state(model):
        inputs, t, output = _prepare(model, inputs, target, batch_size, clean=True)
        mode = resolve_score(score, t)
        clean = score_rows(output, t, mode)
        pmap = _pixel_map(attributions, inputs).flatten(1)
        b, n = pmap.shape
        k = _subset_count(subset_size, n)
        base = _substitute(inputs, baseline)
        gen_seed = generator(seed)[1]
        sample = torch.arange(b).repeat_interleave(n_runs)
        run = torch.arange(n_runs).repeat(b)
        sums = torch.zeros(b * n_runs, dtype=torch.float64, device=inputs.device)

        def masks(idx: Tensor) -> Tensor:
            keep = torch.ones(len(idx), n, dtype=torch.bool)
            for j, (i, r) in enumerate(zip(sample[idx].tolist(), run[idx].tolist(), strict=True)):
                keep[j, torch.randperm(n, generator=row_generator(gen_seed, i, r))[:k]] = False
            keep = keep.to(inputs.device)
            sums[idx.to(sums.device)] = (pmap[sample[idx].to(pmap.device)] * ~keep).sum(1, dtype=torch.float64)
            return keep.view(len(idx), 1, *inputs.shape[-2:])

        perturbed = evaluate_masks(model, inputs, base, masks, sample, t, batch_size=batch_size, score=mode,
                                   desc="faithfulness_correlation")
    drops = clean.repeat_interleave(n_runs) - perturbed
    return pearson(sums.view(b, n_runs), drops.view(b, n_runs)).to(clean.dtype)


def _subset_count(size: int | float, n: int) -> int:
    if isinstance(size, float):
        if not 0 < size < 1:
            raise ValueError(f"subset_size as a fraction must be in (0, 1), got {size!r}")
        return min(max(1, round(size * n)), n - 1)  # at least one pixel kept: a full subset has no variance
    if not isinstance(size, int) or isinstance(size, bool) or not 1 <= size < n:
        raise ValueError(f"subset_size must be an int in [1, {n - 1}] pixels or a fraction in (0, 1), got {size!r}")
    return size


def _infidelity_cost(params: dict[str, Any]) -> int:
    deterministic = params.get("perturbation", "gaussian") == "baseline" and not params.get("noise_std", 0.1)
    return (1 if deterministic else int(params.get("n_samples", 32))) + 1


@register_metric("infidelity", family="faithfulness", higher_is_better=False, cost=_infidelity_cost)
def infidelity(
    model: nn.Module,
    inputs: Tensor,
    attributions: Tensor,
    target: TargetSpec = None,
    *,
    perturbation: str = "gaussian",
    n_samples: int = 32,
    noise_std: float = 0.1,
    baseline: Substitute = 0.0,
    multiply_by_inputs: bool = False,
    optimal_scale: bool = True,
    score: str = "logit",
    batch_size: int | None = None,
    seed: int | None = None,
) -> Tensor:
    """Infidelity (Yeh et al. 2019): does I^T Phi predict f(x) - f(x - I) for random perturbations I? Lower is better.

    INFD = E_I[(beta I^T Phi - (f(x) - f(x - I)))^2], Monte Carlo over ``n_samples`` draws of I per image (from
    ``seed``), with the perturbation distribution ``perturbation``:

    - "gaussian": I ~ N(0, noise_std^2) on every input value (input units);
    - "baseline": I = x - (x0 + eps), eps ~ N(0, noise_std^2) ("noisy baseline"; ``noise_std=0`` is the deterministic
      difference to the baseline x0, evaluated once).

    ``optimal_scale`` (the paper's scale-invariant form, always used by the official code): beta = E[I^T Phi dF] /
    E[(I^T Phi)^2] per image, else beta = 1. ``multiply_by_inputs``: the attributions are of the form (x - x0) * g
    (integrated gradients, input x gradient), so Phi = a / (x - x0) (0 where x = x0), as Captum's decorator.
    Attributions shaped like the inputs are used per value; maps are summed over channels, upsampled and shared
    equally by the channels of a pixel.

    Returns:
        (B,) infidelity.
    """
    if perturbation not in ("gaussian", "baseline"):
        raise ValueError(f"unknown perturbation {perturbation!r}; use 'gaussian' or 'baseline'")
    n_samples = _positive_int(n_samples, "n_samples")
    if not isinstance(noise_std, (int, float)) or noise_std < 0:
        raise ValueError(f"noise_std must be a number >= 0, got {noise_std!r}")
    if perturbation == "gaussian" and noise_std == 0:
        raise ValueError("noise_std=0 with the gaussian perturbation perturbs nothing (infidelity would be 0 for any "
                         "map); use noise_std > 0, or perturbation='baseline' for the deterministic baseline")
    if perturbation == "baseline" and noise_std == 0:
        n_samples = 1
    with model_state(model):
        inputs, t, output = _prepare(model, inputs, target, batch_size, clean=True)
        mode = resolve_score(score, t)
        clean = score_rows(output, t, mode)
        if isinstance(attributions, Tensor) and attributions.shape == inputs.shape:
            if not bool(torch.isfinite(attributions).all()):
                raise ValueError("attributions contain NaN or inf")
            phi = attributions.detach().to(inputs)
        else:
            phi = (_pixel_map(attributions, inputs) / inputs.shape[1]).unsqueeze(1).expand_as(inputs).to(inputs)
        base = _substitute(inputs, baseline)
        if multiply_by_inputs:
            diff = inputs - base
            phi = torch.where(diff.abs() > 1e-12, phi / torch.where(diff == 0, 1.0, diff), 0.0)
        b = inputs.shape[0]
        gen_seed = generator(seed)[1]
        sample = torch.arange(b).repeat_interleave(n_samples)
        draw = torch.arange(n_samples).repeat(b)
        proj = torch.zeros(b * n_samples, dtype=torch.float64, device=inputs.device)

        def rows(idx: Tensor) -> Tensor:
            s = sample[idx].to(inputs.device)
            eps = torch.stack([
                torch.randn(inputs.shape[1:], generator=row_generator(gen_seed, i, d), dtype=torch.float32)
                for i, d in zip(sample[idx].tolist(), draw[idx].tolist(), strict=True)
            ]).to(inputs) * noise_std
            pert = eps if perturbation == "gaussian" else inputs[s] - base[s] - eps
            proj[idx.to(proj.device)] = (pert * phi[s]).sum(dim=(1, 2, 3), dtype=torch.float64)
            return inputs[s] - pert

        perturbed = evaluate(model, rows, sample, t, like=inputs, batch_size=batch_size, score=mode, desc="infidelity")
    dy = (clean.repeat_interleave(n_samples) - perturbed).double().view(b, n_samples)
    ip = proj.view(b, n_samples)
    if optimal_scale:
        den = ip.square().mean(1)
        beta = torch.where(den > 0, (ip * dy).mean(1) / den.clamp(min=1e-300), 0.0)
        ip = ip * beta[:, None]
    return (ip - dy).square().mean(1).to(clean.dtype)
