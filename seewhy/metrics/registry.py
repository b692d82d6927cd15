"""The metric registry (what ``seewhy evaluate``, the report and the tests read) and the one result type.

A metric is a function ``(model, inputs, attributions, target, *, seed=None, ...) -> Tensor (B,) | MetricResult``.
:func:`register_metric` records it as a :class:`MetricSpec`; registering the same function again with ``params``
makes a preset (``road_morf`` is ``road`` with ``order="morf"``). Calling a spec applies its preset and returns a
:class:`MetricResult` with float64 scores, whatever the function returns.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from torch import Tensor

METRICS: dict[str, MetricSpec] = {}


@dataclass(frozen=True)
class MetricResult:
    """What every metric gives: ``scores`` (B,) one number per image (NaN where undefined); for curve metrics
    ``curves`` (B, S+1) and their x-axis ``fractions`` (S+1,); ``protocol``: the settings that decide the numbers;
    ``details``: the full record of metrics that make one (e.g. a
    :class:`~seewhy.metrics.sanity.RandomizationResult` with the maps for the report), else None."""

    scores: Tensor
    curves: Tensor | None = None
    fractions: Tensor | None = None
    protocol: dict[str, Any] = field(default_factory=dict)
    details: Any = None


def as_result(out: Tensor | MetricResult) -> MetricResult:
    """``out`` as a :class:`MetricResult` with detached float64 scores (a plain tensor becomes its scores)."""
    if isinstance(out, Tensor):
        return MetricResult(out.detach().double())
    if isinstance(out, MetricResult):
        return replace(out, scores=out.scores.detach().double())
    raise TypeError(f"a metric must return a (B,) tensor or a MetricResult, got {type(out).__name__}")


class Preset(functools.partial):
    """A registered metric function with preset parameters bound (callable like the function itself)."""

    def __repr__(self) -> str:
        return f"<metric preset {self.__name__}: {self.func.__name__} with {self.keywords}>"


@dataclass(frozen=True)
class MetricSpec:
    """One registered metric.

    name: registry key (snake_case); fn: the metric function, with the preset ``params`` bound when there are any;
    family: "faithfulness" | "robustness" | "localization" | "complexity" | "sanity"; higher_is_better: the
    direction a leaderboard sorts by (None when there is none); needs: extra inputs beyond (model, inputs,
    attributions, target): ("mask",) for localization, ("method",) for metrics that re-run the explanation method;
    cost: (params) -> forward passes (or, with "method" in needs, explanation calls) per image, params holding the
    metric's keywords, ``input_size`` and ``model``; summary: one line; params: the preset; per_batch: the metric
    re-explains all its images at once, so a caller hands it one batch of explanations at a time (its results do
    not depend on the batch); forwards: the function that a ``**kwargs`` metric passes its keywords on to;
    detailed: the same metric returning a :class:`MetricResult` with ``details`` (used by ``details=True``).
    """

    name: str
    fn: Callable[..., Any]
    family: str
    higher_is_better: bool | None
    needs: tuple[str, ...] = ()
    cost: Callable[[dict[str, Any]], int] = field(default=lambda params: 0)
    summary: str = ""
    params: Mapping[str, Any] = field(default_factory=dict)
    per_batch: bool = False
    forwards: Callable[..., Any] | None = None
    detailed: Callable[..., MetricResult] | None = None

    def __call__(self, model: Any, inputs: Tensor, attributions: Tensor | None, target: Any = None, *,
                 details: bool = False, **params: Any) -> MetricResult:
        """Run the metric with its preset (``params`` override it); ``details``: keep the full record, if any."""
        if details and self.detailed is not None:
            return as_result(self.detailed(model, inputs, attributions, target, **{**self.params, **params}))
        return as_result(self.fn(model, inputs, attributions, target, **params))

    def parameters(self) -> set[str]:
        """The keyword names the metric takes (those of ``forwards`` too, for a metric that passes ``**kwargs``)."""
        sig = inspect.signature(self.fn).parameters
        names = {n for n, p in sig.items() if p.kind is not inspect.Parameter.VAR_KEYWORD}
        if self.forwards is not None and any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.values()):
            names |= set(inspect.signature(self.forwards).parameters)
        return names


def register_metric(
    name: str,
    *,
    family: str,
    higher_is_better: bool | None,
    needs: tuple[str, ...] = (),
    cost: Callable[[dict[str, Any]], int] | None = None,
    params: Mapping[str, Any] | None = None,
    summary: str | None = None,
    per_batch: bool = False,
    forwards: Callable[..., Any] | None = None,
    detailed: Callable[..., MetricResult] | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator that registers a metric function under ``name`` and returns the function unchanged.

    ``params`` makes a preset: the registered callable is the function with them bound (a :class:`Preset`, also
    ``METRICS[name].fn``), and ``cost`` sees them. ``summary`` defaults to the docstring's first line. See
    :class:`MetricSpec` for the other fields."""

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        if name in METRICS:
            raise ValueError(f"metric {name!r} is already registered")
        preset = dict(params or {})
        line = summary or ((fn.__doc__ or "").strip().splitlines() or [""])[0]
        bound: Callable[..., Any] = fn
        base_cost = cost or (lambda p: 0)
        if preset:
            bound = Preset(fn, **preset)
            bound.__name__ = name
            settings = ", ".join(f"{k}={v!r}" for k, v in preset.items())
            bound.__doc__ = f"{line}\n\n:func:`{fn.__name__}` with {settings}."

            def preset_cost(p: dict[str, Any]) -> int:
                return base_cost({**preset, **p})

        METRICS[name] = MetricSpec(name, bound, family, higher_is_better, tuple(needs),
                                   preset_cost if preset else base_cost, line, preset, per_batch, forwards, detailed)
        return fn

    return wrap


def preset(name: str) -> Callable[..., Any]:
    """The callable registered as ``name`` (a :class:`Preset` for presets): the public name of a preset metric."""
    return METRICS[name].fn


def list_metrics(family: str | None = None) -> list[str]:
    """Registered metric names, optionally of one family."""
    return sorted(n for n, s in METRICS.items() if family is None or s.family == family)


def get_metric(name: str) -> MetricSpec:
    """The spec of a registered metric; a clear error lists the known names."""
    try:
        return METRICS[name]
    except KeyError:
        raise ValueError(f"unknown metric {name!r}; known metrics: {', '.join(list_metrics())}") from None
