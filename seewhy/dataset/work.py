"""The work on one batch of images, shared by every engine: rows of the store from decoded images.

:func:`batch_rows` runs each method over a batch through :func:`seewhy.runner.explain_batches` (the loop of
``seewhy explain`` and ``seewhy evaluate``), scores the explanations with each metric spec as
:mod:`seewhy.evaluate` does, and returns one row per image x method x class rank. Every image has its own seed,
:func:`image_seed` of (run seed, its path relative to the data root): methods and metrics that draw random numbers are
called one image at a time with it; the others on the whole batch (their results do not depend on the batch). So a
row depends only on its image, never on the batch, the worker or the engine.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..core import METHODS
from ..hooks import model_state
from ..metrics import get_metric
from ..progress import progress
from ..runner import explain_batches

log = logging.getLogger("seewhy")

__all__ = ["Item", "Plan", "batch_rows", "error_rows", "image_seed"]


def image_seed(key: str, seed: int) -> int:
    """A stable seed in [0, 2**63) from the run ``seed`` and an image's ``key`` (its path relative to the data)."""
    h = hashlib.blake2b(key.replace("\\", "/").encode("utf-8"), digest_size=8, key=str(int(seed)).encode())
    return int.from_bytes(h.digest(), "little") >> 1


@dataclass(frozen=True)
class Item:
    """One image of the data: its absolute ``path`` (the store's key), ``key`` (path relative to the data root:
    the seed's), ``label`` (None without), and ``x`` the (C,H,W) model input or ``error`` why it could not be
    read."""

    path: str
    key: str
    label: int | None = None
    x: Tensor | None = None
    error: str | None = None


@dataclass(frozen=True)
class Plan:
    """What to compute per image: methods with their hyperparameters, metrics with their keywords, the target spec
    (``"top1"``, ``"topK"``, a class index or name), and the run seed."""

    methods: Sequence[str]
    params: Mapping[str, Mapping[str, Any]]
    metrics: Sequence[str] = ()
    metric_params: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
    target: Any = "top1"
    seed: int = 0


def _takes_seed_method(name: str) -> bool:
    return "seed" in {f.name for f in dataclasses.fields(METHODS[name])}


def _takes_seed_metric(name: str) -> bool:
    return "seed" in get_metric(name).parameters()


def error_rows(item: Item, plan: Plan, error: str) -> list[dict[str, Any]]:
    """One row per method saying why ``item`` has no result."""
    return [{"path": item.path, "label": item.label, "method": m, "seed": image_seed(item.key, plan.seed),
             "error": error} for m in plan.methods]


def batch_rows(model: nn.Module, items: Sequence[Item], plan: Plan) -> list[dict[str, Any]]:
    """The store rows of ``items`` (image by image, each with its rows per method then class rank): error rows for
    the items that could not be read and for the methods that failed on them, result rows for the others. The
    inputs go to the device of the model's first parameter."""
    good = [it for it in items if it.error is None and it.x is not None]
    ok = {id(it) for it in good}
    by_path: dict[str, list[dict[str, Any]]] = {}
    for it in items:
        by_path[it.path] = [] if id(it) in ok else error_rows(it, plan, it.error or "no input")
    if good:
        param = next(model.parameters(), None)
        x = torch.stack([it.x for it in good])  # type: ignore[misc]
        x = x.to(param.device) if param is not None else x
        seeds = [image_seed(it.key, plan.seed) for it in good]
        try:
            with model_state(model), torch.no_grad():
                prediction = model(x).argmax(1).tolist()
        except Exception as err:  # the model fails on this batch: its images get error rows, the job goes on
            log.error("the model failed on a batch of %d image(s): %s: %s", len(good), type(err).__name__, err)
            for it in good:
                by_path[it.path] = error_rows(it, plan, f"model: {type(err).__name__}: {err}")
            return [r for it in items for r in by_path[it.path]]
        with progress(0, "", enabled=False) as bar:  # the engine reports images; the runner's bar stays quiet
            for m in plan.methods:
                for j, image_rows in enumerate(_method_rows(model, x, seeds, m, plan, bar)):
                    it = good[j]
                    for r in image_rows:
                        r.update(path=it.path, label=it.label, prediction=prediction[j], seed=seeds[j])
                    by_path[it.path].extend(image_rows)
    return [r for it in items for r in by_path[it.path]]


def _method_rows(model: nn.Module, x: Tensor, seeds: list[int], method: str, plan: Plan, bar: Any
                 ) -> list[list[dict[str, Any]]]:
    """One method (and every metric on its explanations) over the batch ``x``: per image, its rows (one per rank).
    A seeded method runs image by image with each image's seed, the others on the whole batch."""
    params = dict(plan.params.get(method, {}))
    n = x.shape[0]
    if _takes_seed_method(method):
        groups = [(slice(j, j + 1), {**params, "seed": seeds[j]}) for j in range(n)]
    else:
        groups = [(slice(0, n), params)]
    out: list[list[dict[str, Any]]] = []
    for sl, p in groups:
        xs = x[sl]
        run = next(explain_batches(model, [xs], [method], {method: p}, plan.target, bar=bar))
        if not run.ok:
            out.extend([[{"method": method, "error": run.error}] for _ in range(xs.shape[0])])
            continue
        exps = run.batches()[0]
        per_image = run.seconds[0] / xs.shape[0]
        rows = [[{"method": method, "rank": r, "score": float(e.scores[j]),
                  "target": None if e.targets is None else int(e.targets[j]), "seconds": per_image}
                 for r, e in enumerate(exps)] for j in range(xs.shape[0])]
        for metric in plan.metrics:
            _score(model, xs, seeds[sl], exps, method, p, metric, plan, rows)
        out.extend(rows)
    return out


def _score(model: nn.Module, x: Tensor, seeds: list[int], exps: Sequence[Any], method: str,
           method_params: Mapping[str, Any], metric: str, plan: Plan, rows: list[list[dict[str, Any]]]) -> None:
    """Score every rank's explanations of ``x`` with ``metric`` into ``rows`` (image by image with each image's seed
    for a seeded metric); a failure leaves the metric null and says why in the rows' ``error``."""
    spec = get_metric(metric)
    kw: dict[str, Any] = dict(plan.metric_params.get(metric, {}))
    if "method" in spec.needs:
        kw.setdefault("method", method)
        kw.setdefault("method_params", dict(method_params))
    seeded = _takes_seed_metric(metric)
    groups = [slice(j, j + 1) for j in range(x.shape[0])] if seeded else [slice(0, x.shape[0])]
    for r, e in enumerate(exps):
        for sl in groups:
            t0 = time.perf_counter()
            target = None if e.targets is None else e.targets[sl]
            extra = {"seed": seeds[sl.start]} if seeded else {}
            try:
                scores = spec(model, x[sl], e.attributions[sl], target, **kw, **extra).scores.tolist()
            except Exception as err:  # one metric failing must not lose the rows
                log.debug("metric %s on %s failed", metric, method, exc_info=True)
                msg = f"metric {metric}: {type(err).__name__}: {err}"
                scores = [None] * (sl.stop - sl.start)
                for j in range(sl.start, sl.stop):
                    rows[j][r]["error"] = "; ".join(filter(None, [rows[j][r].get("error"), msg]))
            share = (time.perf_counter() - t0) / (sl.stop - sl.start)
            for j, v in zip(range(sl.start, sl.stop), scores, strict=True):
                rows[j][r][metric] = None if v is None or v != v else float(v)
                rows[j][r]["seconds"] += share
