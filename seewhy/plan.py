"""What a run will do, checked before any work: the methods by name (``all``), their hyperparameters (a command's
defaults, then ``--seed``, then ``--set``), the layer for the methods that take one, the metrics and their
parameters, and the target. Every check raises ValueError naming the bad value and the valid ones."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from .argtypes import setting
from .core import METHODS, get_method, seeded
from .layers import resolve_layer
from .targets import make_target, parse_topk

log = logging.getLogger("seewhy")

__all__ = ["check_target", "give_layer", "plan_methods", "plan_metrics", "select_methods"]


def select_methods(values: Sequence[str] | None) -> list[str]:
    """The named methods (comma-separated or repeated); "all" (the default) stands for every method whose ``in_all``
    is set (not the controls, not the model-specific methods such as protopnet: name those)."""
    names = [n.strip() for v in values or ["all"] for n in v.split(",") if n.strip()] or ["all"]
    out: list[str] = []
    for n in names:
        if n == "all":
            out.extend(m for m, cls in METHODS.items() if cls.in_all and m not in out)
            continue
        if n not in METHODS:
            get_method(n)  # raises ValueError: unknown method, did you mean ..., registered: ...
        if n not in out:
            out.append(n)
    return out


def plan_methods(values: Sequence[str] | None, sets: Sequence[str], seed: int,
                 defaults: Mapping[str, Mapping[str, Any]] | None = None,
                 skip: Sequence[str] = ()) -> tuple[list[str], dict[str, dict[str, Any]]]:
    """Selected methods (all but ``skip`` by default) and their hyperparameters (``defaults`` where the method has
    the parameter, then ``seed``, then the ``METHOD.PARAM=VALUE`` items of ``sets``), validated."""
    methods = [m for m in select_methods(values) if m not in skip]
    params: dict[str, dict[str, Any]] = {}
    for m in methods:
        fields = {f.name for f in dataclasses.fields(METHODS[m])}
        params[m] = seeded(m, {k: v for k, v in (defaults or {}).get(m, {}).items() if k in fields}, seed)
    for item in sets:
        m, key, value = setting(item)
        if m not in METHODS:
            get_method(m)  # raises: unknown method, with the registered names
        if m not in params:
            raise ValueError(f"--set {item}: {m!r} is not among the methods of this run "
                             f"({', '.join(methods)}); add it with --method")
        params[m][key] = value
    for m in methods:
        get_method(m, **params[m])  # raises on an unknown parameter, listing the valid ones
    return methods, params


def plan_metrics(values: Sequence[str] | None, sets: Sequence[str], defaults: Sequence[str], *,
                 have_masks: bool) -> tuple[list[str], dict[str, dict[str, Any]]]:
    """Selected metrics (``defaults`` unless named; "all": every one the inputs allow) and their parameters from the
    ``METRIC.PARAM=VALUE`` items of ``sets``, validated; the mask metrics need ``have_masks``."""
    from .evaluate import check_metric_params
    from .metrics import get_metric, list_metrics

    names = [n.strip() for v in values or [",".join(defaults)] for n in v.split(",") if n.strip()]
    if "all" in names:
        names = [m for m in list_metrics() if have_masks or "mask" not in get_metric(m).needs]
    metrics = list(dict.fromkeys(names))
    for m in metrics:
        get_metric(m)  # unknown metric: the registered names
    need_masks = [m for m in metrics if "mask" in get_metric(m).needs]
    if need_masks and not have_masks:
        raise ValueError(f"metrics {', '.join(need_masks)} need object masks: give --masks or --boxes")
    params: dict[str, dict[str, Any]] = {}
    for item in sets:
        m, key, value = setting(item)
        if m not in metrics:
            raise ValueError(f"--set {item}: {m!r} is not among the metrics of this run ({', '.join(metrics)})")
        params.setdefault(m, {})[key] = value
    for m, p in params.items():
        check_metric_params(m, p)  # unknown parameter: the valid ones
    return metrics, params


def give_layer(model: nn.Module, methods: Sequence[str], params: dict[str, dict[str, Any]], layer: str | None,
               default: str | None) -> None:
    """Give ``layer`` (else ``default``, the model's CAM layer) to the methods that take a layer and were not given
    one; a named ``layer`` must exist in ``model``."""
    takes = [m for m in methods if "layer" in {f.name for f in dataclasses.fields(METHODS[m])}]
    if layer is not None:
        resolve_layer(model, layer)  # raises: unknown layer, with the closest names
        if not takes:
            log.warning("--layer %s is ignored: none of the methods (%s) takes a layer", layer, ", ".join(methods))
    chosen = layer or default
    for m in takes:
        if chosen is not None and "layer" not in params[m]:
            params[m]["layer"] = chosen


def check_target(target: str, class_names: Sequence[str] | None) -> int:
    """Check a --target before any work; returns the number of classes explained per image (k of topk, else 1)."""
    k = parse_topk(target)
    if k is not None:
        return k
    make_target(target, 1, class_names)
    return 1
