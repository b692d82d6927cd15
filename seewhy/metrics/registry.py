"""The metric registry: what the CLI (`seewhy evaluate`), the report and the tests read."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

METRICS: dict[str, MetricSpec] = {}


@dataclass(frozen=True)
class MetricSpec:
    """One registered metric.

    name: registry key (snake_case); fn: the metric function; family: "faithfulness" | "robustness" |
    "localization" | "complexity" | "sanity"; higher_is_better: the direction a leaderboard sorts by (None when
    there is no better direction); needs: extra inputs beyond (model, inputs, attributions, target), e.g.
    ("mask",) for localization or ("method",) for robustness; cost: a function (params) -> number of model
    forward passes per image (0 for attribution-only metrics), printed before a run; summary: one line.
    """

    name: str
    fn: Callable[..., Any]
    family: str
    higher_is_better: bool | None
    needs: tuple[str, ...] = ()
    cost: Callable[[dict[str, Any]], int] = field(default=lambda params: 0)
    summary: str = ""


def register_metric(
    name: str,
    *,
    family: str,
    higher_is_better: bool | None,
    needs: tuple[str, ...] = (),
    cost: Callable[[dict[str, Any]], int] | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator that registers a metric function under `name`."""

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        if name in METRICS:
            raise ValueError(f"metric {name!r} is already registered")
        summary = (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else ""
        METRICS[name] = MetricSpec(
            name, fn, family, higher_is_better, tuple(needs), cost or (lambda params: 0), summary
        )
        return fn

    return wrap


def list_metrics(family: str | None = None) -> list[str]:
    """Registered metric names, optionally of one family."""
    return sorted(n for n, s in METRICS.items() if family is None or s.family == family)


def get_metric(name: str) -> MetricSpec:
    """The spec of a registered metric; a clear error lists the known names."""
    try:
        return METRICS[name]
    except KeyError:
        raise ValueError(f"unknown metric {name!r}; known metrics: {', '.join(list_metrics())}") from None
