"""What the metric modules share (package-internal): checked inputs and targets, attribution maps at the input size,
pixel ranks, removal substitutes, argument checks, and the explanation method a metric re-runs.

Conventions: the unit of removal is a pixel (all channels together); attributions (B,C,H,W) are summed over
channels and maps (B,1,h,w) upsampled bilinearly to the input size (:func:`pixel_map`); pixels are ranked with a
stable sort, ties in raster order (:func:`ranks`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core import Method, check_inputs, get_method, seeded
from ..engine import forward, make_baseline, resolve_score, score_rows
from ..hooks import model_state
from ..targets import Target, TargetSpec, make_target

Substitute = float | str | Tensor
Explainer = str | Method | Callable[[nn.Module, Tensor, TargetSpec], Tensor]


def pixel_map(attributions: Tensor, inputs: Tensor, upsample: bool = True) -> Tensor:
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


def ranks(pmap: Tensor, descending: bool = True) -> Tensor:
    """(B,H,W) map -> (B,1,H,W) int32 rank of each pixel (0 = first in the order); ties in raster order."""
    flat = pmap.flatten(1)
    order = torch.sort(-flat if descending else flat, dim=1, stable=True).indices
    out = torch.empty_like(order)
    out.scatter_(1, order, torch.arange(flat.shape[1], device=flat.device).expand_as(order))
    return out.to(torch.int32).view(pmap.shape[0], 1, *pmap.shape[1:])


def prepare(
    model: nn.Module, inputs: Tensor, target: TargetSpec, batch_size: int | None, clean: bool = False
) -> tuple[Tensor, Target, Tensor | None]:
    """Checked inputs, the resolved target and (when needed or ``clean``) the model's output on the inputs."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    inputs = check_inputs(inputs)
    if batch_size is not None:
        positive_int(batch_size, "batch_size")
    t = make_target(target, inputs.shape[0], getattr(model, "class_names", None))
    output = None
    if t.pending or clean:
        output = forward(model, inputs, batch_size=batch_size)
        t = t.resolve(output)
    return inputs, t, output


def clean_scores(
    model: nn.Module, inputs: Tensor, target: TargetSpec, batch_size: int | None, score: str
) -> tuple[Tensor, Target, str, Tensor]:
    """Checked inputs, the resolved target, the score mode ("probability" / "logit") and the target's (B,) score on
    the clean inputs."""
    inputs, t, output = prepare(model, inputs, target, batch_size, clean=True)
    mode = resolve_score(score, t)
    return inputs, t, mode, score_rows(output, t, mode)


def grid(b: int, n: int) -> tuple[Tensor, Tensor]:
    """(image, draw) of each of the b * n rows of a run, image-major: row r is draw r % n of image r // n."""
    return torch.arange(b).repeat_interleave(n), torch.arange(n).repeat(b)


def rise_blur(inputs: Tensor, klen: int = 11, sigma: float = 5.0) -> Tensor:
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


def substitute_values(inputs: Tensor, substitute: Substitute) -> Tensor:
    """The values removed pixels take: a number (0.0 = the dataset mean for normalised inputs), "zero", "mean" (each
    image's mean colour), "blur" (the RISE blur: 11x11 Gaussian, sigma 5, zero padding) or a tensor."""
    if isinstance(substitute, str) and substitute not in ("zero", "zeros", "mean", "blur"):
        raise ValueError(f"unknown substitute {substitute!r}; use 'zero', 'blur', 'mean', a number or a tensor")
    if isinstance(substitute, str) and substitute == "blur":
        return rise_blur(inputs)
    return make_baseline(inputs, substitute)


def fraction(value: float, name: str, *, closed_right: bool = True) -> float:
    """``value`` checked to be a fraction in [0, 1] (or [0, 1))."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value and (
        value <= 1 if closed_right else value < 1
    )
    if not ok:
        bound = "[0, 1]" if closed_right else "[0, 1)"
        raise ValueError(f"{name} must be a fraction in {bound} (10% is 0.1), got {value!r}")
    return float(value)


def positive_int(value: Any, name: str) -> int:
    """``value`` checked to be an int >= 1."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def explainer(method: Explainer, params: dict[str, Any] | None,
              seed: int | None = None) -> tuple[Callable, str, dict[str, Any]]:
    """(callable, name, heatmap convention) for a registered name, a Method or a callable. A registered method that
    draws random numbers gets the metric's ``seed`` unless ``params`` sets its own, so the metric is reproducible."""
    params = dict(params or {})
    if isinstance(method, str):
        m = get_method(method, **seeded(method, params, seed))
        return m, m.name, dict(m.heatmap_convention)
    if params:
        raise ValueError(
            f"method_params {sorted(params)} only go with a registered method name; configure the "
            "Method object (or your callable) instead"
        )
    if isinstance(method, Method):
        return method, method.name, dict(method.heatmap_convention)
    if callable(method):
        return method, getattr(method, "__name__", type(method).__name__), {}
    raise TypeError(
        f"method must be a registered method name, a seewhy Method or a callable (model, inputs, target) -> "
        f"attributions; got {type(method).__name__}"
    )


def run_explainer(explain: Callable, model: nn.Module, inputs: Tensor, target: TargetSpec) -> Tensor:
    """Detached (B,C,h,w) attributions of ``explain`` on ``model``, run in eval mode with frozen parameters (as
    explain() runs a model): a callable cannot update BatchNorm statistics or leave .grad behind, and every
    .training flag and requires_grad comes back as it was."""
    with model_state(model):
        attr = explain(model, inputs, target)
    if not isinstance(attr, Tensor) or attr.ndim != 4 or attr.shape[0] != inputs.shape[0]:
        shape = tuple(attr.shape) if isinstance(attr, Tensor) else type(attr).__name__
        raise ValueError(f"the explanation method returned {shape}; expected ({inputs.shape[0]}, C, H, W)")
    return attr.detach()


def need_method(method: Explainer | None, metric: str) -> Explainer:
    """``method``, or a clear error for a metric that re-runs the explanation method."""
    if method is None:
        raise ValueError(f"{metric} re-runs the explanation method: pass method= (a name, a Method or a callable)")
    return method
