"""What a run will cost, said before it starts: model evaluations and seconds per image for each method and metric.

The seconds come from the user's model on the user's input size: a timed forward through the engine's fast path
(inference mode, the engine's batch size and memory layout) and a timed input-only forward+backward (parameters
frozen, as the methods run), each after one untimed warm-up (the faster of two timed calls). A method's
:meth:`~seewhy.core.Method.cost` says how many of each it needs (and, for Score-CAM and Ablation-CAM, how many per
channel of its layer, counted here by one dry forward). The figures are estimates: they leave out the work besides
the model (segmentation, fitting, imputation).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from . import engine
from .core import get_method
from .hooks import model_state
from .metrics import get_metric
from .progress import format_seconds

log = logging.getLogger("seewhy")

#: a method estimated above this many seconds per image gets a warning with the setting that lowers it
SLOW_SECONDS = 60.0


@dataclass(frozen=True)
class Timing:
    """Seconds per image of one ``forward`` (engine fast path, at the batch size it measures fastest) and one input-only
    ``forward_backward`` (one image), measured on ``input_size`` (H, W)."""

    forward: float
    forward_backward: float
    batch_size: int
    input_size: tuple[int, int]


@dataclass(frozen=True)
class Estimate:
    """One method's or metric's cost per image: ``evaluations`` (None when unknown), ``seconds`` (None when unknown),
    ``text`` (what is counted) and, for a slow method, ``lighter`` (settings that bring it near a minute)."""

    name: str
    evaluations: float | None
    seconds: float | None
    text: str
    lighter: dict[str, Any] = field(default_factory=dict)


def time_model(model: nn.Module, inputs: Tensor) -> Timing:
    """Time a forward and an input-only forward+backward of ``model`` on the first image of ``inputs`` (after one
    warm-up call each, the faster of two timed calls)."""
    from .methods.gradient import input_gradient
    from .targets import make_target

    x = inputs[:1].detach()
    with model_state(model):
        size = engine.batch_size_for(model, x, engine.MEASURE_MIN_ROWS, engine.prefers_channels_last(model, x))
        rows = x.expand(size, *x.shape[1:])
        seconds = []
        for _ in range(3):  # the first call warms up (allocations, kernel selection); the fastest of the others
            t0 = time.perf_counter()
            out = engine.forward(model, rows, batch_size=size)
            seconds.append(time.perf_counter() - t0)
        forward = min(seconds[1:]) / size
        if out.ndim == 2:
            target = make_target(int(out[0].argmax()), 1)
        else:  # any output: the sum of the first row's values (a stand-in for the timing only)
            target = make_target(lambda o: o.reshape(o.shape[0], -1).sum(1), 1)
        seconds = []
        for _ in range(3):
            t0 = time.perf_counter()
            try:
                input_gradient(model, x, target)
            except RuntimeError:  # the output does not depend on the input through autograd: no backward to time
                seconds = [3 * forward] * 3
                break
            seconds.append(time.perf_counter() - t0)
    return Timing(forward, min(seconds[1:]), size, (int(x.shape[-2]), int(x.shape[-1])))


def layer_channels(model: nn.Module, inputs: Tensor, layer: Any, reshape: Any = None) -> tuple[str, int]:
    """(name, channel count) of a method's layer (``None``: the default CAM layer), by one dry forward of one image."""
    from .layers import default_layer, resolve_layer
    from .methods.cam import forward_layers, to_grid

    x = inputs[:1]
    name, module = resolve_layer(model, default_layer(model, x) if layer is None else layer)
    with model_state(model), torch.no_grad():
        acts, _ = forward_layers(model, x, [(name, module)], grad=False)
    return name, int(to_grid(acts[name], reshape, name, tuple(x.shape[-2:])).shape[1])


def estimate_methods(
    model: nn.Module,
    inputs: Tensor,
    methods: Sequence[str],
    params: Mapping[str, Mapping[str, Any]] | None = None,
    timing: Timing | None = None,
) -> list[Estimate]:
    """Per-image cost of each method (configured by ``params``) on ``model`` at the input size of ``inputs``."""
    timing = timing or time_model(model, inputs)
    params = params or {}
    x = inputs[:1]
    channels: dict[tuple[str, str], int] = {}
    out = []
    for name in methods:
        method = get_method(name, **dict(params.get(name, {})))
        cost = method.cost(model, x)
        k = None
        if cost.per_channel:
            layer = getattr(method, "layer", None)
            key = (repr(layer), repr(getattr(method, "reshape", None)))
            if key not in channels:
                channels[key] = layer_channels(model, x, layer, getattr(method, "reshape", None))[1]
            k = channels[key]
        seconds = cost.seconds(timing.forward, timing.forward_backward, k)
        lighter = {}
        if seconds is not None and seconds > SLOW_SECONDS:
            lighter = method.lighter(0.5 * SLOW_SECONDS / seconds)
        text = cost.describe(k)
        if k is not None and "K:" not in text:
            text += f" (K = {k} channels)"
        out.append(Estimate(name, cost.evaluations(k), seconds, text, lighter))
    return out


def estimate_metrics(
    metrics: Sequence[str],
    costs: Mapping[str, int],
    method_seconds: Mapping[str, float | None],
    timing: Timing,
) -> list[Estimate]:
    """Per-image cost of each metric for one method: ``costs[m]`` forwards (or explanation calls, for the metrics that
    re-run the method: then seconds from ``method_seconds``, the mean over the methods of the run)."""
    known = [s for s in method_seconds.values() if s is not None]
    per_call = sum(known) / len(known) if known else None
    out = []
    for m in metrics:
        n = costs.get(m, 0)
        unit = cost_unit(m)
        if unit == "explanations":
            seconds = None if per_call is None else n * per_call
        else:
            seconds = n * timing.forward
        text = f"{n} {unit}" if n else "no model evaluation"
        out.append(Estimate(m, n, seconds, text))
    return out


def cost_unit(metric: str) -> str:
    """What a metric's cost counts: explanation calls for the metrics that re-run the method, else forward passes."""
    return "explanations" if "method" in get_metric(metric).needs else "forward passes"


def describe_timing(timing: Timing) -> str:
    h, w = timing.input_size
    return (f"one forward {format_seconds(timing.forward)}, one forward+backward "
            f"{format_seconds(timing.forward_backward)} per image, measured on this model at {h}x{w}")


def log_estimates(estimates: Sequence[Estimate], images: int, what: str = "method", *, repeat: int = 1) -> float:
    """Log each estimate (one line each) and a warning for each method over :data:`SLOW_SECONDS` per image, with the
    ``--set`` that lowers it; returns the estimated seconds in all (``images`` images, ``repeat`` times each)."""
    width = max((len(e.name) for e in estimates), default=0)
    total = 0.0
    for e in estimates:
        sec = "unknown" if e.seconds is None else f"~{format_seconds(e.seconds)}"
        log.info("  %-*s  %s per image: %s", width, e.name, e.text, sec)
        if e.seconds is not None:
            total += e.seconds * images * repeat
    for e in estimates:
        if what == "method" and e.seconds is not None and e.seconds > SLOW_SECONDS:
            hint = " ".join(f"--set {e.name}.{k}={_literal(v)}" for k, v in e.lighter.items())
            log.warning("%s is estimated at %s per image (over %s)%s", e.name, format_seconds(e.seconds),
                        format_seconds(SLOW_SECONDS), f"; lower it with {hint}" if hint else
                        "; nothing in its settings lowers it: leave it out or choose a smaller layer")
    return total


def _literal(v: Any) -> str:
    if isinstance(v, tuple):
        return "[" + ",".join(map(str, v)) + "]"
    return repr(v) if isinstance(v, str) else str(v)


def log_run(model: nn.Module, inputs: Tensor, methods: Sequence[str], params: Mapping[str, Mapping[str, Any]],
            images: int, *, classes: int = 1, metrics: Sequence[str] = (),
            metric_costs: Mapping[str, int] | None = None) -> Timing | None:
    """Before a run: log what each method (and metric) will cost per image, the warnings for slow methods, and the
    time in all for ``images`` images (``classes`` explained per image). Nothing (and no timing) unless the
    ``seewhy`` logger shows INFO. Returns the timing."""
    if not log.isEnabledFor(logging.INFO):
        return None
    timing = time_model(model, inputs)
    log.info("cost per image (%s):", describe_timing(timing))
    found = estimate_methods(model, inputs, methods, params, timing)
    total = log_estimates(found, images, repeat=classes)
    if metrics:
        log.info("metrics, per image and method:")
        per_call = {e.name: e.seconds for e in found}
        found_metrics = estimate_metrics(metrics, metric_costs or {}, per_call, timing)
        total += len(methods) * log_estimates(found_metrics, images, what="metric")
    what = f"{images} image(s)" + (f", {classes} classes each" if classes > 1 else "")
    if metrics:
        what += f", {len(methods)} method(s) and {len(metrics)} metric(s)"
    log.info("about %s in all for %s", format_seconds(total), what)
    return timing
