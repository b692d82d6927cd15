"""Differentiable random transforms applied to the image at every optimisation step (transformation robustness).

Olah, Mordvintsev & Schubert 2017 ("Feature Visualization", Distill), with Lucid's numbers: a visualization that
still activates the unit after small random jitter, scaling and rotation has less high-frequency noise.

A transform is a callable ``t(x, generator) -> Tensor``: x (B,C,H,W) -> (B,C,H',W'), differentiable in x, with one
random draw per call shared by the whole batch. Draws come from the passed CPU ``torch.Generator`` (never the global
RNG) and are applied on ``x.device`` in ``x.dtype``. Each transform has a readable ``repr`` (written into reports).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "Transform",
    "compose",
    "jitter",
    "pad",
    "random_rotate",
    "random_scale",
    "resolve_transforms",
    "standard_transforms",
]

Transform = Callable[[Tensor, torch.Generator], Tensor]

_PAD_MODES = ("constant", "reflect", "replicate", "circular")


def _check_input(x: Tensor, what: str) -> None:
    if not isinstance(x, Tensor) or x.ndim != 4:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"{what} takes an image batch of shape (B,C,H,W), got {shape}")


def _draw(n: int, generator: torch.Generator | None, what: str) -> int:
    """One index uniform in 0..n-1 from the CPU generator."""
    if not isinstance(generator, torch.Generator):
        raise TypeError(
            f"{what} needs a torch.Generator (e.g. torch.Generator().manual_seed(0)), got {type(generator).__name__}; "
            "the global RNG is never used"
        )
    if generator.device.type != "cpu":
        raise ValueError(f"{what} draws on a CPU generator, got one on {generator.device}; use torch.Generator()")
    return int(torch.randint(n, (1,), generator=generator).item())


def _check_int(value: object, what: str, minimum: int = 0) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{what} must be an int >= {minimum} (pixels), got {value!r}")
    return value


def _check_values(values: Sequence[float], what: str, positive: bool) -> tuple[float, ...]:
    if isinstance(values, (str, bytes)):
        raise ValueError(f"{what} takes a non-empty sequence of numbers, got {values!r}")
    try:
        out = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise ValueError(f"{what} takes a non-empty sequence of numbers, got {values!r}") from None
    if not out:
        raise ValueError(f"{what} needs at least one value, got an empty sequence")
    bad = [v for v in out if not math.isfinite(v) or (positive and v <= 0)]
    if bad:
        need = "finite and > 0" if positive else "finite"
        raise ValueError(f"{what} values must be {need}, got {bad[0]!r}")
    return out


def _format_values(values: Sequence[float]) -> str:
    return "[" + ", ".join(f"{v:g}" for v in values) + "]"


class _Transform:
    """Base: a named transform; ``name`` and ``repr`` are what reports record."""

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        raise NotImplementedError

    @property
    def name(self) -> str:
        return repr(self)


class _Identity(_Transform):
    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return x

    def __repr__(self) -> str:
        return "identity"


class _Pad(_Transform):
    def __init__(self, width: int, mode: str, value: float) -> None:
        self.width, self.mode, self.value = width, mode, value

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        _check_input(x, "pad")
        w = self.width
        if w == 0:
            return x
        if self.mode == "reflect" and w >= min(x.shape[-2:]):
            raise ValueError(f"pad({w}, reflect) needs an image larger than {w} px, got {tuple(x.shape[-2:])}")
        if self.mode == "constant":
            return F.pad(x, (w, w, w, w), mode="constant", value=self.value)
        return F.pad(x, (w, w, w, w), mode=self.mode)

    def __repr__(self) -> str:
        if self.mode == "constant":
            return f"pad({self.width}, constant {self.value:g})"
        return f"pad({self.width}, {self.mode})"


class _Jitter(_Transform):
    def __init__(self, d: int) -> None:
        self.d = d

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        _check_input(x, "jitter")
        d = self.d
        if d == 0:
            return x
        h, w = x.shape[-2:]
        if d >= h or d >= w:
            raise ValueError(f"jitter({d}) needs an image larger than {d} px, got {h}x{w}; use a smaller d")
        oy = _draw(d + 1, generator, "jitter")
        ox = _draw(d + 1, generator, "jitter")
        return x[..., oy : oy + h - d, ox : ox + w - d]

    def __repr__(self) -> str:
        return f"jitter({self.d})"


class _RandomScale(_Transform):
    def __init__(self, scales: tuple[float, ...]) -> None:
        self.scales = scales

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        _check_input(x, "random_scale")
        s = self.scales[_draw(len(self.scales), generator, "random_scale")]
        if s == 1.0:
            return x
        h, w = x.shape[-2:]
        size = (max(1, round(h * s)), max(1, round(w * s)))
        if size == (h, w):
            return x
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)

    def __repr__(self) -> str:
        return f"random_scale({_format_values(self.scales)})"


class _RandomRotate(_Transform):
    def __init__(self, angles: tuple[float, ...]) -> None:
        self.angles = angles

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        _check_input(x, "random_rotate")
        angle = self.angles[_draw(len(self.angles), generator, "random_rotate")]
        if angle % 360 == 0:
            return x
        b, _, h, w = x.shape
        t = math.radians(angle)
        c, s = math.cos(t), math.sin(t)
        # affine_grid maps output coordinates (x right, y down, normalised per axis) to input coordinates; a rotation
        # counter-clockwise on screen by t samples the input at [[c, -s], [s, c]] @ p in pixel units, conjugated
        # with diag(W/2, H/2) so non-square images are not sheared.
        theta = torch.tensor([[c, -s * h / w, 0.0], [s * w / h, c, 0.0]], dtype=x.dtype, device=x.device)
        grid = F.affine_grid(theta.expand(b, 2, 3), [b, 1, h, w], align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)

    def __repr__(self) -> str:
        return f"random_rotate({_format_values(self.angles)})"


class _Compose(_Transform):
    def __init__(self, transforms: tuple[Transform, ...]) -> None:
        self.transforms = transforms

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        for t in self.transforms:
            x = t(x, generator)
        return x

    def __repr__(self) -> str:
        return "compose([" + ", ".join(repr(t) for t in self.transforms) + "])"


def pad(width: int, mode: str = "constant", value: float = 0.5) -> Transform:
    """Pad every side by ``width`` px (Lucid: 12 px of constant 0.5, i.e. mid-grey, before jittering).

    Args: width (px, >= 0); mode "constant" | "reflect" | "replicate" | "circular"; value (constant mode only).
    """
    width = _check_int(width, "pad width")
    if mode not in _PAD_MODES:
        raise ValueError(f"unknown pad mode {mode!r}; use one of {', '.join(_PAD_MODES)}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"pad value must be finite, got {value}")
    return _Pad(width, mode, value)


def jitter(d: int) -> Transform:
    """Lucid's jitter: a random crop shrinking each side length by ``d`` px, offsets uniform in 0..d (H -> H - d)."""
    return _Jitter(_check_int(d, "jitter d"))


def random_scale(scales: Sequence[float]) -> Transform:
    """Resize by one factor s drawn from ``scales``: bilinear (align_corners=False) to (round(H s), round(W s))."""
    return _RandomScale(_check_values(scales, "random_scale", positive=True))


def random_rotate(angles: Sequence[float]) -> Transform:
    """Rotate about the centre by one angle (degrees, positive = counter-clockwise on screen) drawn from ``angles``.

    Bilinear ``grid_sample`` with ``padding_mode="border"``; the size is kept.
    """
    return _RandomRotate(_check_values(angles, "random_rotate", positive=False))


def compose(transforms: Sequence[Transform]) -> Transform:
    """Apply ``transforms`` in order, passing each the same generator."""
    if isinstance(transforms, (str, bytes)) or not isinstance(transforms, Sequence):
        raise ValueError(f"compose takes a sequence of transforms, got {transforms!r}")
    bad = [t for t in transforms if not callable(t)]
    if bad:
        raise ValueError(f"compose takes callables t(x, generator), got {bad[0]!r}")
    return _Compose(tuple(transforms))


def standard_transforms(size: int = 128) -> list[Transform]:
    """Olah et al. 2017 / Lucid's standard transforms, pixel amounts scaled by ``size / 128`` (rounded, >= 1).

    pad(12, constant 0.5), jitter(8), random_scale(1 + (i-5)/50 for i in 0..10),
    random_rotate(-10..10 degrees plus five extra 0), jitter(4).
    """
    size = _check_int(size, "size", minimum=1)

    def px(n: int) -> int:
        return max(1, round(n * size / 128))

    return [
        pad(px(12), "constant", 0.5),
        jitter(px(8)),
        random_scale([1 + (i - 5) / 50 for i in range(11)]),
        random_rotate(list(range(-10, 11)) + 5 * [0]),
        jitter(px(4)),
    ]


def resolve_transforms(spec: str | Sequence[Transform] | Transform | None, size: int) -> Transform:
    """One transform from a spec: "standard" -> compose(standard_transforms(size)); "none", None or () -> identity;
    a sequence of callables -> compose; a single callable is returned as it is."""
    choices = '"standard", "none", None, a sequence of transforms t(x, generator) or one such callable'
    if spec is None:
        return _Identity()
    if isinstance(spec, str):
        key = spec.strip().lower()
        if key == "standard":
            return compose(standard_transforms(size))
        if key == "none":
            return _Identity()
        raise ValueError(f"unknown transforms {spec!r}; use {choices}")
    if callable(spec):
        return spec
    if isinstance(spec, Sequence):
        if len(spec) == 0:
            return _Identity()
        if all(callable(t) for t in spec):
            return compose(spec)
    raise ValueError(f"cannot use {spec!r} as transforms; use {choices}")
