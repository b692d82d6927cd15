"""ROAD's noisy linear imputation (Rong et al. 2022): removed pixels filled from their neighbours, plus noise.

A removed pixel p takes v_p = sum_q w_pq v_q / sum_q w_pq over its 8 neighbours (w = 1/6 side, 1/12 diagonal): one
sparse symmetric positive definite system per image and channel, solved here with preconditioned conjugate gradients
(a multigrid V-cycle for large holes, Jacobi for scattered ones) in torch, on the inputs' device.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..core import check_inputs
from ..engine import generator, row_generator
from ..methods.controls import image_seeds

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
    (seed, its content: :func:`~seewhy.methods.controls.image_seeds`).
    """
    inputs = check_inputs(inputs)
    keep = _check_keep(keep, inputs)
    gens = [row_generator(k) for k in image_seeds(inputs, generator(seed)[1])]
    return impute(inputs, keep, noise, gens, tol, max_iter)


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


def impute(
    x: Tensor, keep: Tensor, noise: float, gens: Sequence[torch.Generator], tol: float, max_iter: int
) -> Tensor:
    """x (k,C,H,W) with the pixels where ``keep`` (k,1,H,W) is False imputed to ``tol``, plus N(0, noise^2) drawn
    from ``gens`` (one generator per row)."""
    filled = _harmonic_fill(x.float() if x.dtype in (torch.float16, torch.bfloat16) else x, keep, tol, max_iter)
    if noise:
        eps = torch.stack([torch.randn(x.shape[1:], generator=g, dtype=torch.float32) for g in gens])
        filled = filled + (~keep) * (noise * eps.to(filled))
    return filled.to(x.dtype)
