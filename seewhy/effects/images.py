"""ICE curves over image transformations: the target's probability per image as brightness, contrast, blur,
rotation, scale or a central grey square varies (or any ``f(images, value)``).
"""


from __future__ import annotations

import logging
import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import zoo
from ..hooks import model_state
from ..progress import progress as _progress

log = logging.getLogger("seewhy")

Transform = Callable[[Tensor, float], Tensor]
GREY = 0.5


def _brightness(x: Tensor, v: float) -> Tensor:
    return (x + v).clamp(0.0, 1.0)


def _contrast(x: Tensor, v: float) -> Tensor:
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (mean + v * (x - mean)).clamp(0.0, 1.0)


def _blur(x: Tensor, v: float) -> Tensor:
    from ..engine import gaussian_blur

    return gaussian_blur(x, float(v))


def _affine(x: Tensor, theta: Tensor) -> Tensor:
    """Resample ``x`` at ``theta`` @ (output coordinates), bilinear; outside the image: grey."""
    grid = F.affine_grid(theta.to(x).expand(x.shape[0], 2, 3), list(x.shape), align_corners=False)
    return F.grid_sample(x - GREY, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + GREY


def _rotation(x: Tensor, v: float) -> Tensor:
    h, w = x.shape[-2:]
    a = math.radians(v)
    c, s = math.cos(a), math.sin(a)
    # rotate counter-clockwise by v degrees about the centre, in pixel units (normalised axes scaled by w/h)
    theta = torch.tensor([[c, -s * h / w, 0.0], [s * w / h, c, 0.0]], dtype=torch.float64)
    return _affine(x, theta[None])


def _scale(x: Tensor, v: float) -> Tensor:
    theta = torch.tensor([[1.0 / v, 0.0, 0.0], [0.0, 1.0 / v, 0.0]], dtype=torch.float64)
    return _affine(x, theta[None])


def _occlusion(x: Tensor, v: float) -> Tensor:
    h, w = x.shape[-2:]
    sh, sw = int(round(v * h)), int(round(v * w))
    out = x.clone()
    if sh and sw:
        top, left = (h - sh) // 2, (w - sw) // 2
        out[..., top:top + sh, left:left + sw] = GREY
    return out


@dataclass(frozen=True)
class TransformSpec:
    """A built-in transformation: ``fn(images, value)``, its identity value, default values, the valid range
    (inclusive bounds; ``low_open`` excludes the lower one) and what a value means."""

    fn: Transform
    identity: float
    defaults: tuple[float, ...]
    low: float
    high: float
    meaning: str
    low_open: bool = False


TRANSFORMS: dict[str, TransformSpec] = {
    "brightness": TransformSpec(_brightness, 0.0, tuple(round(-0.5 + 0.1 * i, 6) for i in range(11)), -1.0, 1.0,
                                "additive shift of every pixel, in [0, 1] units (clamped to [0, 1])"),
    "contrast": TransformSpec(_contrast, 1.0, (0.0, 0.2, 0.4, 0.6, 0.8, 1.0, 1.25, 1.5, 2.0, 3.0), 0.0, math.inf,
                              "factor on the difference from the image's mean (0: flat mean colour; clamped)"),
    "blur": TransformSpec(_blur, 0.0, (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0), 0.0, math.inf,
                          "Gaussian blur, sigma in pixels"),
    "rotation": TransformSpec(_rotation, 0.0, (-45.0, -30.0, -15.0, -10.0, -5.0, 0.0, 5.0, 10.0, 15.0, 30.0, 45.0),
                              -360.0, 360.0, "rotation about the centre in degrees, counter-clockwise (grey fill)"),
    "scale": TransformSpec(_scale, 1.0, (0.5, 0.625, 0.75, 0.875, 1.0, 1.25, 1.5, 1.75, 2.0), 0.0, math.inf,
                           "zoom about the centre: > 1 crops in, < 1 shrinks with a grey border", low_open=True),
    "occlusion_size": TransformSpec(_occlusion, 0.0, tuple(round(0.1 * i, 6) for i in range(11)), 0.0, 1.0,
                                    "side of a grey (0.5) square at the centre, as a fraction of the image side"),
}


def _transform(transform: Any) -> tuple[str, Transform, TransformSpec | None]:
    if isinstance(transform, str):
        key = transform.strip().lower().replace("-", "_")
        key = {"occlusion": "occlusion_size", "rotate": "rotation", "zoom": "scale"}.get(key, key)
        if key not in TRANSFORMS:
            raise ValueError(f"unknown transform {transform!r}; use one of {', '.join(TRANSFORMS)} or a callable "
                             "f(images, value) -> images")
        return key, TRANSFORMS[key].fn, TRANSFORMS[key]
    if callable(transform):
        return getattr(transform, "__name__", type(transform).__name__), transform, None
    raise TypeError(f"transform must be a name ({', '.join(TRANSFORMS)}) or a callable f(images, value) -> images, "
                    f"got {type(transform).__name__}")


def transform_values(values: Any, name: str, spec: TransformSpec | None) -> tuple[float, ...]:
    """The values to evaluate transform ``name`` at: ``values`` checked against its valid range, or its defaults."""
    if values is None:
        if spec is None:
            raise ValueError(f"transform {name!r} is a callable: pass values=[...] (the values to call it with)")
        return spec.defaults
    if isinstance(values, Tensor):
        values = values.detach().cpu().reshape(-1).tolist()
    elif isinstance(values, (numbers.Real, np.number)):
        values = [values]
    try:
        out = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise TypeError(f"values must be numbers, got {values!r}") from None
    if not out:
        raise ValueError(f"values for {name!r} are empty; pass at least one number")
    bad = [v for v in out if not math.isfinite(v)]
    if spec is not None:
        bad += [v for v in out if v < spec.low or v > spec.high or (spec.low_open and v == spec.low)]
    if bad:
        if spec is None:
            raise ValueError(f"{name} values {bad} are not finite; pass finite numbers")
        rng = f"{'(' if spec.low_open else '['}{spec.low:g}, {spec.high:g}]"
        raise ValueError(f"{name} values {bad} are out of range; {name} takes numbers in {rng} ({spec.meaning})")
    return out


def apply_transform(images: Tensor, transform: Any, value: float) -> Tensor:
    """``images`` (B,C,H,W) in [0, 1] transformed by a built-in transform (see :data:`TRANSFORMS`) or a callable at
    ``value``; the identity value returns an unchanged copy."""
    name, fn, spec = _transform(transform)
    (v,) = transform_values([value], name, spec)
    if spec is not None and v == spec.identity:
        return images.clone()
    out = fn(images, v)
    if not isinstance(out, Tensor) or out.shape != images.shape:
        raise ValueError(f"transform {name!r} at {v:g} returned {getattr(out, 'shape', type(out).__name__)}; it must "
                         f"return images of shape {tuple(images.shape)}")
    return out


@dataclass(frozen=True)
class TransformEffects:
    """ICE curves over an image transformation.

    ``values`` (V,); ``curves`` (B, V): the target's probability per image at each value; ``average`` (V,);
    ``target`` (B,) class indices; ``clean`` (B,): the probability on the unchanged images; ``identity``: the value
    that leaves images unchanged (None for a callable); ``transform``: its name."""

    values: tuple[float, ...]
    curves: Tensor
    average: Tensor
    target: Tensor
    transform: str
    clean: Tensor
    identity: float | None


def _resolve_target(target: Any, clean_logits: Tensor, model: nn.Module) -> Tensor:
    from ..targets import make_target

    b, k = clean_logits.shape
    if isinstance(target, str) and not target.strip().lstrip("-").isdigit() \
            and target.strip().lower() not in ("top1", "pred", "predicted"):
        names = zoo.class_names(model)
        spec: Any = target
    elif isinstance(target, (list, tuple)) and any(isinstance(t, str) for t in target):
        names, spec = zoo.class_names(model), list(target)
    else:
        names, spec = None, target
    if callable(spec) and not isinstance(spec, (Tensor, str)):
        raise TypeError("transform_effects needs class indices: pass None (the prediction), an int, a class name or "
                        "one per image, not a callable")
    t = make_target(spec, b, names)
    idx = clean_logits.argmax(1) if t.indices is None else t.indices.to(clean_logits.device)
    bad = [int(i) for i in idx.tolist() if not 0 <= i < k]
    if bad:
        raise ValueError(f"target class(es) {bad} out of range: the model has {k} classes (0..{k - 1})")
    return idx


def transform_effects(model: nn.Module, images: Tensor, transform: Any = "brightness", values: Any = None,
                      target: Any = None, normalize: Any = None, batch_size: int | None = None) -> TransformEffects:
    """ICE curves (Goldstein et al. 2015) of a classifier over an image transformation.

    curve_i(v) = softmax(model(normalize(T(x_i, v))))[t_i] for each value v; average(v) = mean_i curve_i(v). The
    target t_i is the prediction on the clean image by default (or an int, one per image, or a class name). The
    identity value (e.g. brightness 0) gives the clean probability exactly (its forward is the clean one).

    Args:
        model: a classifier returning (B, K) scores; evaluated in eval mode under inference mode, then restored.
        images: (B, 3, H, W) in [0, 1], on the model's device.
        transform: a name in :data:`TRANSFORMS` (brightness: additive shift; contrast: factor about the mean; blur:
            sigma px; rotation: degrees; scale: zoom factor; occlusion_size: side of a central grey square as a
            fraction) or ``f(images, value) -> images``.
        values: the values (default: the transform's, including its identity); required for a callable.
        normalize: (mean, std), a callable, False or None (the zoo model's) as in :func:`seewhy.featvis.visualize`.
        batch_size: images per forward (default: the engine's for this image size); all values x images are run
            in chunks of this many.
    """
    from ..engine import default_batch_size
    from ..zoo import resolve_normalize

    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(images, Tensor) or images.ndim != 4 or not images.is_floating_point():
        raise ValueError(f"images must be a float tensor (B, C, H, W) in [0, 1], got "
                         f"{tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__}")
    lo, hi = float(images.min()), float(images.max())
    if lo < 0.0 or hi > 1.0:
        raise ValueError(f"images must be in [0, 1] (got {lo:.3g}..{hi:.3g}); pass unnormalised images, the model's "
                         "normalisation is applied inside (normalize=...)")
    name, fn, spec = _transform(transform)
    vals = transform_values(values, name, spec)
    norm = resolve_normalize(model, normalize)
    size = default_batch_size(images) if batch_size is None else batch_size
    if isinstance(size, bool) or not isinstance(size, numbers.Integral) or size < 1:
        raise ValueError(f"batch_size must be a positive int or None, got {batch_size!r}")
    b, n_vals = images.shape[0], len(vals)
    identity = spec.identity if spec is not None else None
    x = images.detach()

    def forward(batch: Tensor) -> Tensor:
        out = model(norm(batch))
        if not isinstance(out, Tensor) or out.ndim != 2:
            raise ValueError(f"transform_effects needs class scores (B, K) from the model, got "
                             f"{getattr(out, 'shape', type(out).__name__)}")
        return out.float().softmax(dim=1)

    with model_state(model), torch.inference_mode():
        clean_probs = torch.cat([forward(x[s:s + size]) for s in range(0, b, size)])
        tgt = _resolve_target(target, clean_probs, model)
        rows = torch.arange(b, device=x.device)
        clean = clean_probs[rows, tgt]
        curves = torch.empty(b, n_vals, dtype=clean.dtype, device=x.device)
        todo = [(j, s) for j, v in enumerate(vals) if v != identity for s in range(0, b, size)]
        for j, v in enumerate(vals):
            if v == identity:
                curves[:, j] = clean
        total = sum(min(size, b - s) for _, s in todo)
        with _progress(total, f"transform_effects {name}", "image") as bar:
            pending: list[tuple[int, int, Tensor]] = []

            def flush() -> None:
                if not pending:
                    return
                probs = forward(torch.cat([t for _, _, t in pending]))
                at = 0
                for j, s, t in pending:
                    m = t.shape[0]
                    curves[s:s + m, j] = probs[at:at + m].gather(1, tgt[s:s + m, None])[:, 0]
                    at += m
                bar.update(at)
                pending.clear()

            for j, s in todo:
                chunk = x[s:s + size]
                t = fn(chunk, vals[j])
                if not isinstance(t, Tensor) or t.shape != chunk.shape:
                    raise ValueError(f"transform {name!r} at {vals[j]:g} returned "
                                     f"{getattr(t, 'shape', type(t).__name__)}; it must return images of shape "
                                     f"{tuple(chunk.shape)}")
                if sum(p[2].shape[0] for p in pending) + t.shape[0] > size:
                    flush()
                pending.append((j, s, t))
            flush()
    return TransformEffects(values=vals, curves=curves, average=curves.mean(0), target=tgt, transform=name,
                            clean=clean, identity=identity)
