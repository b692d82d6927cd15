"""The adversarial patch (Brown et al. 2017): a universal patch trained with expectation over transformation."""

from __future__ import annotations

import logging
import math
import numbers
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..hooks import model_state
from ..progress import format_seconds
from ..progress import progress as progress_bar
from ..zoo import Normalize, resolve_normalize
from .attacks import _check_images, _check_model, _check_range, _classes, _int, _Logits, _number, _seed

log = logging.getLogger("seewhy")

__all__ = ["DEFAULT_EOT", "Patch", "patch"]

#: EOT defaults of :func:`patch`: scale of the patch side, rotation in degrees, location
DEFAULT_EOT: dict[str, Any] = {"scale": (0.8, 1.2), "rotation": (-20.0, 20.0), "location": "random"}


def _range(value: Any, what: str, low: float, high: float) -> tuple[float, float]:
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        value = (value, value)
    try:
        a, b = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"eot {what} must be a number or a (low, high) pair, got {value!r}") from None
    if not (low <= a <= b <= high):
        raise ValueError(f"eot {what} must be a (low, high) pair with {low:g} <= low <= high <= {high:g}, got "
                         f"{value!r}")
    return a, b


def _eot(eot: Mapping[str, Any] | None) -> dict[str, Any]:
    if eot is None:
        eot = {}
    if not isinstance(eot, Mapping):
        raise TypeError(f"eot must be a dict (scale=, rotation=, location=), got {type(eot).__name__}")
    unknown = set(eot) - set(DEFAULT_EOT)
    if unknown:
        raise ValueError(f"unknown eot keys {sorted(unknown)}; use {', '.join(DEFAULT_EOT)}")
    out = {**DEFAULT_EOT, **eot}
    out["scale"] = _range(out["scale"], "scale", 1e-3, 100.0)
    out["rotation"] = _range(out["rotation"], "rotation", -360.0, 360.0)
    loc = out["location"]
    if loc not in ("random", "center"):
        raise ValueError(f"eot location must be 'random' or 'center', got {loc!r}")
    return out


def _uniform(n: int, bounds: tuple[float, float], generator: torch.Generator) -> Tensor:
    lo, hi = bounds
    return lo + (hi - lo) * torch.rand(n, generator=generator, dtype=torch.float64)


def _place(images: Tensor, patch_image: Tensor, side: Tensor, angle: Tensor, center: Tensor) -> Tensor:
    """Paste ``patch_image`` (3,s,s) on each image: side ``side`` (B,) pixels, rotated by ``angle`` (B,) degrees,
    centred at ``center`` (B, 2) = (x, y) in grid_sample's normalised coordinates. Differentiable in the patch and
    the images: ``x' = (1 - m) * x + warp(p)``, ``m = warp(1)`` (bilinear, zero outside the patch)."""
    b, _, h, w = images.shape
    dev, dt = images.device, images.dtype
    t = torch.deg2rad(angle.to(torch.float64))
    cos, sin = torch.cos(t), torch.sin(t)
    L = side.to(torch.float64)
    cx, cy = center[:, 0].to(torch.float64), center[:, 1].to(torch.float64)
    # image point p (normalised) -> patch point u: u = R(-angle) (pixels(p - c)) / (L / 2)
    a11, a12 = w * cos / L, h * sin / L
    a21, a22 = -w * sin / L, h * cos / L
    theta = torch.stack([torch.stack([a11, a12, -a11 * cx - a12 * cy], 1),
                         torch.stack([a21, a22, -a21 * cx - a22 * cy], 1)], 1).to(dev, dt)
    grid = F.affine_grid(theta, [b, 3, h, w], align_corners=False)
    p = patch_image.to(dev, dt)
    src = torch.cat([p, torch.ones_like(p[:1])]).unsqueeze(0).expand(b, -1, -1, -1)
    warped = F.grid_sample(src, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    mask = warped[:, 3:]
    return images * (1.0 - mask) + warped[:, :3]


def _draw_placement(n: int, h: int, w: int, s: int, eot: Mapping[str, Any], generator: torch.Generator
                    ) -> tuple[Tensor, Tensor, Tensor]:
    """Random (side (n,), angle (n,), centre (n, 2)) with the rotated patch inside the image where it fits."""
    side = s * _uniform(n, eot["scale"], generator)
    angle = _uniform(n, eot["rotation"], generator)
    t = torch.deg2rad(angle)
    half = side / 2 * (t.cos().abs() + t.sin().abs())  # half extent of the rotated square, in pixels
    if eot["location"] == "center":
        return side, angle, torch.zeros(n, 2, dtype=torch.float64)
    u = torch.rand(n, 2, generator=generator, dtype=torch.float64)
    room_x = (1.0 - 2.0 * half / w).clamp(min=0.0)  # centre range in normalised coordinates: [-room, room]
    room_y = (1.0 - 2.0 * half / h).clamp(min=0.0)
    center = torch.stack([(2 * u[:, 0] - 1) * room_x, (2 * u[:, 1] - 1) * room_y], 1)
    return side, angle, center


@dataclass
class Patch:
    """The result of :func:`patch`: ``image`` (3,s,s) in [0, 1]; ``success_rate`` the share of held-out
    placements (images x ``eval_placements`` random places) classified as ``target_class``;
    ``initial_success_rate`` the same for the random starting patch, ``clean_rate`` for the images without a
    patch; ``losses`` (steps,) the mean cross-entropy to the target per step; ``params``; ``eot``."""

    image: Tensor
    target_class: int
    success_rate: float
    initial_success_rate: float
    clean_rate: float
    losses: Tensor
    params: dict[str, Any]
    eot: dict[str, Any]
    train_indices: list[int] = field(default_factory=list)
    eval_indices: list[int] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def side(self) -> int:
        return int(self.image.shape[-1])

    def apply(self, images: Tensor, generator: torch.Generator | None = None, *,
              location: tuple[int, int] | None = None, scale: float | None = None,
              rotation: float | None = None) -> Tensor:
        """``images`` (B,3,H,W) in [0, 1] with the patch pasted: at random (scale, rotation, location from the EOT
        ranges, drawn from ``generator``; None: one seeded by the patch's seed) or at ``location`` = (row, col) of
        the patch's top-left corner in pixels (then scale 1 and no rotation unless given)."""
        images = _check_images(images)
        b, _, h, w = images.shape
        if generator is None:
            generator = torch.Generator().manual_seed(int(self.params.get("seed", 0)))
        eot = dict(self.eot)
        if location is not None:
            eot["scale"] = (1.0, 1.0) if scale is None else _range(scale, "scale", 1e-3, 100.0)
            eot["rotation"] = (0.0, 0.0) if rotation is None else _range(rotation, "rotation", -360.0, 360.0)
        else:
            if scale is not None:
                eot["scale"] = _range(scale, "scale", 1e-3, 100.0)
            if rotation is not None:
                eot["rotation"] = _range(rotation, "rotation", -360.0, 360.0)
        side, angle, center = _draw_placement(b, h, w, self.side, eot, generator)
        if location is not None:
            row, col = (float(v) for v in location)
            cx = (col + side / 2) / w * 2 - 1
            cy = (row + side / 2) / h * 2 - 1
            center = torch.stack([cx, cy], 1)
        with torch.no_grad():
            return _place(images, self.image, side, angle, center)


def _patch_images(data: Any, model: nn.Module) -> tuple[Tensor, list[tuple[str, str]]]:
    """The pictures of ``data`` in [0, 1] on the CPU: a tensor is taken as pictures; anything else is read with
    :func:`seewhy.data.as_data` and turned back from model inputs with the data's mean/std."""
    if isinstance(data, Tensor):
        return _check_images(data).cpu(), []
    from ..data import as_data

    d = as_data(data, model)
    chunks = [d.pictures(batch.inputs) for batch in d.batches(32, desc="patch images", progress=False)]
    if not chunks:
        raise ValueError("none of the images in data could be read")
    return torch.cat(chunks).clamp(0.0, 1.0), list(d.skipped)


def patch(model: nn.Module, data: Any, target_class: int | str, size: float = 0.1, steps: int = 200,
          eot: Mapping[str, Any] | None = None, seed: int = 0, normalize: Normalize = None, *,
          holdout: float = 0.25, lr: float = 0.05, batch_size: int = 8, eval_placements: int = 4,
          progress: bool = True) -> Patch:
    """A universal adversarial patch (Brown et al. 2017): ``max_p E_{x~train, t~EOT} log P(target | A(p, x, t))``.

    The square patch (side ``sqrt(size * H * W)`` pixels, ``size`` the share of the image area) starts uniform
    random and is trained with Adam (``lr``) on its pixels, clipped to [0, 1] after each step; each step draws
    ``batch_size`` training images and a scale (of the side), rotation (degrees) and location per image from
    ``eot`` (default ``scale=(0.8, 1.2), rotation=(-20, 20), location="random"``; location ``"center"`` fixes it).

    Args:
        data: anything :func:`seewhy.data.as_data` takes (a tensor is taken as pictures (N,3,H,W) in [0, 1]; files
            and folders are read with the model's preprocessing); a share ``holdout`` is held out for evaluation.
        target_class: an index, or a class name for models with class names.
        eval_placements: random placements per held-out image for ``success_rate``.

    The patch and the images live on the model's device, in its dtype; training draws and the evaluation's
    placements (a generator seeded by ``seed + 1``, the same for the trained and the initial patch) are seeded.
    """
    _check_model(model)
    size = _number(size, "size", 0.0, 1.0, open_low=True)
    steps = _int(steps, "steps", 0)
    holdout = _number(holdout, "holdout", 0.0, 0.95)
    lr = _number(lr, "lr", 0.0, open_low=True)
    batch_size = _int(batch_size, "batch_size", 1)
    eval_placements = _int(eval_placements, "eval_placements", 1)
    seed = _seed(seed)
    eot_cfg = _eot(eot)
    target = int(_classes(target_class, 1, model, "target_class")[0])  # type: ignore[index]
    pictures, skipped = _patch_images(data, model)
    n, _, h, w = pictures.shape
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(n, generator=generator).tolist()
    n_eval = min(n - 1, max(1, round(holdout * n))) if holdout > 0 and n > 1 else 0
    eval_idx, train_idx = sorted(order[:n_eval]), sorted(order[n_eval:])
    if not eval_idx:
        log.warning("patch: no image held out (holdout=%g, %d image(s)); the success rate is measured on the "
                    "training images", holdout, n)
        eval_idx = train_idx
    side = max(1, round(math.sqrt(size * h * w)))
    if side > min(h, w):
        raise ValueError(f"size={size} gives a {side} px patch, larger than the {h}x{w} images; lower size")
    norm_fn = resolve_normalize(model, normalize)
    logits_of = _Logits(model, norm_fn)
    device, dtype = _device_of(model)
    pictures = pictures.to(device, dtype)
    start_image = torch.rand(3, side, side, generator=generator, dtype=torch.float64).to(device, dtype)
    p = start_image.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([p], lr=lr)
    losses = torch.empty(steps, dtype=torch.float64)
    goal = torch.full((min(batch_size, len(train_idx)),), target, dtype=torch.long, device=device)
    train = torch.tensor(train_idx, dtype=torch.long)
    start = time.perf_counter()
    with torch.inference_mode(False), model_state(model):
        with torch.no_grad():
            _check_range(torch.tensor([target]), logits_of(pictures[:1]).shape[1], "target_class")
        with progress_bar(steps, "adversarial patch", enabled=progress) as bar:
            for step in range(steps):
                pick = train[torch.randperm(len(train), generator=generator)[:goal.shape[0]]]
                x = pictures[pick.to(device)]
                sides, angles, centers = _draw_placement(x.shape[0], h, w, side, eot_cfg, generator)
                with torch.enable_grad():
                    loss = F.cross_entropy(logits_of(_place(x, p, sides, angles, centers)), goal)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                optimizer.step()
                with torch.no_grad():
                    p.clamp_(0.0, 1.0)
                losses[step] = float(loss.detach())
                if step == 0 and steps > 1 and progress:
                    log.info("adversarial patch: %d steps of %d images at %dx%d (patch %d px): about %s", steps,
                             x.shape[0], h, w, side, format_seconds((time.perf_counter() - start) * steps))
                bar.update()
        image = p.detach().clone()
        with torch.no_grad():
            rates = _rates(logits_of, pictures[torch.tensor(eval_idx).to(device)], [image, start_image], side,
                           eot_cfg, target, eval_placements, seed, batch_size)
    params = {"target_class": target, "size": size, "side": side, "steps": steps, "lr": lr,
              "batch_size": int(goal.shape[0]), "holdout": holdout, "eval_placements": eval_placements, "seed": seed,
              "images": n, "train_images": len(train_idx), "eval_images": len(eval_idx), "skipped": len(skipped)}
    return Patch(image=image, target_class=target, success_rate=rates[0], initial_success_rate=rates[1],
                 clean_rate=rates[2], losses=losses.float(), params=params, eot=eot_cfg, train_indices=train_idx,
                 eval_indices=eval_idx, seconds=time.perf_counter() - start)


def _device_of(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    for t in list(model.parameters()) + list(model.buffers()):
        if t.is_floating_point():
            return t.device, t.dtype
    return torch.device("cpu"), torch.float32


def _rates(logits_of: _Logits, images: Tensor, patches: Sequence[Tensor], side: int, eot: Mapping[str, Any],
           target: int, placements: int, seed: int, batch_size: int) -> list[float]:
    """The share classified as ``target`` with each patch at the same random placements (a generator seeded by
    ``seed + 1``), and without a patch."""
    n, _, h, w = images.shape
    generator = torch.Generator().manual_seed(seed + 1)
    draws = [_draw_placement(n, h, w, side, eot, generator) for _ in range(placements)]
    hits = [0] * (len(patches) + 1)
    chunk = max(1, batch_size)
    for i in range(0, n, chunk):
        x = images[i:i + chunk]
        hits[-1] += int((logits_of(x).argmax(1) == target).sum()) * placements
        for side_, angle, center in draws:
            sl = slice(i, i + x.shape[0])
            for j, pimg in enumerate(patches):
                hits[j] += int((logits_of(_place(x, pimg, side_[sl], angle[sl], center[sl])).argmax(1)
                                == target).sum())
    return [hit / (n * placements) for hit in hits]
