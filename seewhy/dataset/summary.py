"""``STORE/summary.html``: what a dataset run found, on one self-contained page (issue 20).

:func:`write_summary` reads the store (``results.parquet`` and ``run.json``) and writes:

- per-method and per-class x method tables: the mean and the count (non-null values) of each metric, over the rows of
  rank 0 (the best class of a ``topK`` run; the only rank otherwise) and the error rows; the class of a row is its
  label when known, else the model's prediction;
- the worst cases of each metric with a known direction, per method (the lowest values of a higher-is-better metric
  such as ``insertion_auc``, the highest of a lower-is-better one such as ``deletion_auc``), with their maps;
- the most surprising cases: labelled images predicted wrong, with the highest score of the predicted class;
- a confusion matrix (labels x predictions, counted in images) with the top off-diagonal cells highlighted and maps
  of their images;
- the error rows.

The aggregations run in Arrow (``group_by``): memory holds the aggregates and the few rows shown, not the store.
The store keeps no attributions, so the maps are recomputed for the shown images only: at most ``max_maps`` (image,
method) pairs (said in the log before the work), each with the run's method settings and the image's own seed (the
``seed`` column), the model loaded from ``run.json`` (``model``/``weights``, as the CLI records them) unless one is
given. Rebuild the page with ``seewhy explain-dataset --summary-only --out STORE`` or :func:`write_summary`.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from .store import BASE_COLUMNS, RUN_FILE, read_results, require_pyarrow

log = logging.getLogger("seewhy")

__all__ = ["MAX_MAPS", "SUMMARY", "write_summary"]

SUMMARY = "summary.html"
#: at most this many (image, method) maps are recomputed for a summary
MAX_MAPS = 24
#: off-diagonal cells of the confusion matrix highlighted (and shown with maps)
TOP_CONFUSIONS = 3
#: classes shown in the confusion matrix (those most involved in confusions, when there are more)
MAX_MATRIX = 40
#: error rows listed on the page (all of them are in the store)
MAX_ERROR_ROWS = 200


def write_summary(store: str | os.PathLike, *, model: nn.Module | None = None, max_cases: int = 8,
                  overwrite: bool = True, max_maps: int = MAX_MAPS) -> Path:
    """Write ``STORE/summary.html`` (see the module docstring) and return its path.

    Args:
        store: a store folder written by :func:`seewhy.dataset.explain_dataset`.
        model: the run's model, to draw the maps; default: loaded from ``run.json`` (``seewhy.zoo.load_model`` of
            its ``model`` and ``weights``). Without one (a run started from Python), the cases are listed without maps.
        max_cases: cases per list (worst of a metric and method, surprising); ``max_maps``: maps recomputed in all.
        overwrite: replace an existing summary (else FileExistsError).

    Raises:
        ValueError: the store holds no results; FileExistsError: a summary exists and ``overwrite`` is False.
    """
    require_pyarrow()
    import pyarrow.compute as pc

    root = Path(store)
    out = root / SUMMARY
    if out.exists() and not overwrite:
        raise FileExistsError(f"{str(out)!r} exists; pass overwrite=True to replace it")
    if not isinstance(max_cases, int) or max_cases < 0:
        raise ValueError(f"max_cases must be an int >= 0, got {max_cases!r}")
    run_path = root / RUN_FILE
    run: dict[str, Any] = json.loads(run_path.read_text()) if run_path.is_file() else {}
    table = read_results(root)
    base = dict(BASE_COLUMNS)
    metrics = [c for c in table.column_names if c not in base]
    methods = sorted(set(table.column("method").drop_null().to_pylist()))
    ranks = table.column("rank").drop_null()
    several_ranks = len(ranks) > 0 and pc.max(ranks).as_py() > 0
    top = table.filter(pc.or_kleene(pc.is_null(table.column("rank")), pc.equal(table.column("rank"), 0)))
    klass = pc.coalesce(top.column("label"), top.column("prediction"))
    top = top.append_column("class", klass)

    directions = _directions(metrics)
    method_table = _aggregate(top, ["method"], metrics)
    class_table = _aggregate(top.filter(pc.is_valid(top.column("class"))), ["class", "method"], metrics)
    label_names = _label_names(table, run)
    model, model_note = _model(model, run)
    class_names = list(getattr(model, "class_names", None) or []) if model is not None else []

    worst = []
    for method in methods:
        for metric in metrics:
            higher = directions.get(metric)
            if higher is None:
                continue
            t = top.filter(pc.and_(pc.equal(top.column("method"), method), pc.is_valid(top.column(metric))))
            t = t.sort_by([(metric, "ascending" if higher else "descending"), ("path", "ascending")])
            cases = t.slice(0, max_cases).to_pylist()
            if cases:
                worst.append({"method": method, "metric": metric, "higher": higher, "cases": cases})

    wrong = top.filter(pc.and_(pc.and_(pc.is_valid(top.column("label")), pc.is_valid(top.column("prediction"))),
                               pc.not_equal(top.column("label"), top.column("prediction"))))
    scored = wrong.filter(pc.equal(wrong.column("target"), wrong.column("prediction")))
    scored = scored.sort_by([("score", "descending"), ("path", "ascending"), ("method", "ascending")])
    surprising = _distinct_images(scored.select(["path", "label", "prediction", "score"]), max_cases)

    confusion = _confusion(top, pc)
    top_pairs = [c for c in sorted(confusion["cells"].items(), key=lambda kv: (-kv[1], kv[0]))
                 if c[0][0] != c[0][1]][:TOP_CONFUSIONS]
    per_pair = max(1, min(max_cases, 4))
    confusions = []
    for (lab, pred), count in top_pairs:
        t = scored.filter(pc.and_(pc.equal(scored.column("label"), lab), pc.equal(scored.column("prediction"), pred)))
        confusions.append({"label": lab, "prediction": pred, "count": count,
                           "cases": _distinct_images(t.select(["path", "label", "prediction", "score"]), per_pair)})

    errors = table.filter(pc.is_valid(table.column("error")))
    error_rows = errors.select(["path", "method", "error"]).slice(0, MAX_ERROR_ROWS).to_pylist()

    # the maps: asked in order of priority (surprising, confusions, worst cases), computed within the budget
    seeds = _seeds(top, pc, [c["path"] for c in surprising] + [c["path"] for p in confusions for c in p["cases"]])
    maps = _Maps(model, run, max_maps, seeds)
    for case in surprising:
        case["maps"] = [maps.ask(case["path"], m, case["prediction"]) for m in methods]
    for pair in confusions:
        for case in pair["cases"]:
            case["maps"] = [maps.ask(case["path"], m, case["prediction"]) for m in methods]
    for group in worst:
        for case in group["cases"]:
            maps.seeds.setdefault(case["path"], case["seed"])
            case["maps"] = [maps.ask(case["path"], group["method"], case["target"])]
    maps.compute(_method_seconds(method_table))

    def name(i: int | None, names: Sequence[str] | Mapping[int, str]) -> str:
        if i is None:
            return "-"
        n = names.get(i) if isinstance(names, Mapping) else (names[i] if 0 <= i < len(names) else None)
        return f"{i} ({n})" if n else str(i)

    def label_name(i: int | None) -> str:
        return name(i, label_names or class_names)

    def class_name(i: int | None) -> str:
        return name(i, class_names)

    env = _env(maps, label_name, class_name)
    created = dt.datetime.now(dt.timezone.utc).astimezone().isoformat(timespec="seconds")
    from ..report_files import versions

    n_images = pc.count_distinct(table.column("path")).as_py()
    n_errors = pc.count_distinct(errors.column("path")).as_py() if errors.num_rows else 0
    summary = [f"{n_images} image(s)", f"{table.num_rows} row(s)",
               f"{len(methods)} method(s)", f"{len(metrics)} metric(s)", f"{n_errors} image(s) with error rows"]
    settings = []
    for key in ("data", "model", "weights", "methods", "method_params", "metrics", "metric_params", "target", "seed",
                "engine"):
        value = run.get(key)
        if isinstance(value, Mapping):
            value = {k: v for k, v in value.items() if v not in (None, {}, [], "")}
        if value not in (None, "", [], {}):
            settings.append((key, value))
    html = env.get_template("summary.html").render(
        title=f"seewhy explain-dataset summary: {root.name}", created=created, versions=versions(), summary=summary,
        settings=settings, store=str(root.resolve()), metrics=metrics, directions=directions, methods=methods,
        several_ranks=several_ranks, method_table=method_table, class_table=class_table, worst=worst,
        surprising=surprising, confusion=confusion, top_pairs=[p for p, _ in top_pairs], confusions=confusions,
        error_rows=error_rows, n_error_rows=errors.num_rows, labelled=confusion["labels"] != [],
        max_cases=max_cases, drawn=model is not None, model_note=model_note, maps_note=maps.note(),
        scored_wrong=scored.num_rows, wrong=wrong.num_rows)
    from ..fileio import atomic_write

    with atomic_write(out) as f:
        f.write(html.encode("utf-8"))
    return out


def _directions(metrics: Sequence[str]) -> dict[str, bool | None]:
    from ..metrics import METRICS

    return {m: (METRICS[m].higher_is_better if m in METRICS else None) for m in metrics}


def _aggregate(table: Any, keys: list[str], metrics: Sequence[str]) -> list[dict[str, Any]]:
    """Rows of ``{key..., rows, errors, seconds, <metric>_mean, <metric>_count}`` sorted by the keys."""
    aggs = [("path", "count"), ("error", "count"), ("seconds", "mean")]
    for m in metrics:
        aggs += [(m, "mean"), (m, "count")]
    if table.num_rows == 0:
        return []
    got = table.group_by(keys).aggregate(aggs).sort_by([(k, "ascending") for k in keys]).to_pylist()
    return [{**{k: r[k] for k in keys}, "rows": r["path_count"], "errors": r["error_count"],
             "seconds": r["seconds_mean"], **{f"{m}_mean": r[f"{m}_mean"] for m in metrics},
             **{f"{m}_count": r[f"{m}_count"] for m in metrics}} for r in got]


def _distinct_images(table: Any, n: int) -> list[dict[str, Any]]:
    """The first ``n`` rows of distinct paths, in the table's order."""
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    for batch in table.to_batches(max_chunksize=4096):
        for r in batch.to_pylist():
            if len(out) >= n:
                return out
            if r["path"] not in seen:
                seen.add(r["path"])
                out.append(r)
    return out


def _confusion(top: Any, pc: Any) -> dict[str, Any]:
    """``{"labels": [...], "predictions": [...], "cells": {(label, prediction): images}}`` over the labelled images
    with a prediction (each image once)."""
    t = top.filter(pc.and_(pc.is_valid(top.column("label")), pc.is_valid(top.column("prediction"))))
    if t.num_rows == 0:
        return {"labels": [], "predictions": [], "cells": {}, "total": 0, "hidden": 0}
    got = t.group_by(["label", "prediction"]).aggregate([("path", "count_distinct")]).to_pylist()
    cells = {(r["label"], r["prediction"]): r["path_count_distinct"] for r in got}
    classes = sorted({a for a, _ in cells} | {b for _, b in cells})
    hidden = 0
    if len(classes) > MAX_MATRIX:  # keep the classes most involved in confusions (then the largest)
        involved: dict[int, int] = {}
        for (a, b), v in cells.items():
            for c in (a, b):
                involved[c] = involved.get(c, 0) + (v if a != b else 0)
        size = {c: sum(v for (a, b), v in cells.items() if c in (a, b)) for c in classes}
        keep = sorted(classes, key=lambda c: (-involved.get(c, 0), -size[c], c))[:MAX_MATRIX]
        hidden = len(classes) - len(keep)
        classes = sorted(keep)
    labels = [c for c in classes if any(a == c for a, _ in cells)]
    return {"labels": labels, "predictions": classes, "cells": cells, "total": sum(cells.values()),
            "row_totals": {a: sum(v for (x, _), v in cells.items() if x == a) for a in labels},
            "col_totals": {b: sum(v for (_, y), v in cells.items() if y == b) for b in classes},
            "correct": sum(v for (a, b), v in cells.items() if a == b), "hidden": hidden}


def _seeds(top: Any, pc: Any, paths: Sequence[str]) -> dict[str, int]:
    if not paths:
        return {}
    import pyarrow as pa

    t = top.filter(pc.is_in(top.column("path"), value_set=pa.array(sorted(set(paths)), pa.string())))
    return {r["path"]: r["seed"] for r in t.select(["path", "seed"]).to_pylist() if r["seed"] is not None}


def _label_names(table: Any, run: Mapping[str, Any]) -> dict[int, str]:
    """Class names of the labels from the class folders (``DATA/<class>/...``) when the data is a folder and the
    mapping is one-to-one; else empty (the labels index the model's classes)."""
    data = run.get("data")
    if not isinstance(data, str) or not os.path.isdir(data):
        return {}
    import pyarrow.compute as pc

    t = table.filter(pc.is_valid(table.column("label"))).select(["label", "path"])
    if t.num_rows == 0:
        return {}
    got = t.group_by("label").aggregate([("path", "min"), ("path", "max")]).to_pylist()
    names: dict[int, str] = {}
    for r in got:
        first = [os.path.relpath(r[k], data).replace(os.sep, "/").split("/") for k in ("path_min", "path_max")]
        if any(len(p) < 2 or p[0] == ".." for p in first) or first[0][0] != first[1][0]:
            return {}
        names[r["label"]] = first[0][0]
    return names if len(set(names.values())) == len(names) else {}


def _model(model: nn.Module | None, run: Mapping[str, Any]) -> tuple[nn.Module | None, str]:
    if model is not None:
        return model, "the model given to write_summary"
    spec = run.get("model")
    if not spec:
        return None, ("no maps: run.json names no model (a run started from Python); pass model= to "
                      "seewhy.dataset.summary.write_summary to draw them")
    from .. import zoo

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "ships no weights": said when the run started
            loaded, _ = zoo.load_model(spec, run.get("weights"))
    except Exception as err:
        log.warning("summary: no maps: the model %s could not be loaded: %s", spec, err)
        return None, f"no maps: the model {spec} could not be loaded ({type(err).__name__}: {err})"
    return loaded, f"{spec} loaded from run.json"


def _method_seconds(method_table: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    return {r["method"]: float(r["seconds"] or 0.0) for r in method_table}


class _Maps:
    """The maps of the shown cases: asked first (:meth:`ask`, in order of priority), then computed together within
    the budget (:meth:`compute`); a map is an overlay data URI, or None with a reason."""

    def __init__(self, model: nn.Module | None, run: Mapping[str, Any], budget: int, seeds: dict[str, int]) -> None:
        self.model, self.run, self.budget, self.seeds = model, run, max(0, int(budget)), dict(seeds)
        self.asked: dict[tuple[str, str, int | None], dict[str, Any]] = {}
        self.pictures: dict[str, str | None] = {}
        self.over = 0
        self.failed = 0

    def ask(self, path: str, method: str, target: int | None) -> dict[str, Any]:
        key = (path, method, target)
        if key not in self.asked:
            self.asked[key] = {"method": method, "target": target, "uri": None, "note": "",
                               "within": self.model is not None and len(self.asked) < self.budget}
            if self.model is not None and not self.asked[key]["within"]:
                self.asked[key]["note"] = f"no map: beyond the budget of {self.budget} maps"
                self.over += 1
        return self.asked[key]

    def picture(self, path: str) -> str | None:
        return self.pictures.get(path)

    def note(self) -> str:
        done = sum(1 for v in self.asked.values() if v["uri"])
        text = f"{done} map(s) recomputed for the shown cases"
        if self.over:
            text += f"; {self.over} more beyond the budget of {self.budget}"
        if self.failed:
            text += f"; {self.failed} failed"
        return text

    def compute(self, seconds: Mapping[str, float]) -> None:
        todo = [k for k, v in self.asked.items() if v["within"]]
        if self.model is None or not todo:
            return
        from ..progress import format_seconds

        cost = sum(seconds.get(m, 0.0) for _, m, _ in todo)
        log.info("summary: re-explaining %d shown image(s) (%d map(s), at most %d): about %s at most, from the "
                 "store's seconds per image", len({p for p, _, _ in todo}), len(todo), self.budget,
                 format_seconds(cost))
        from .. import viz
        from ..core import explain
        from ..data import as_data
        from ..report_layout import jpeg_uri
        from .work import _takes_seed_method

        param = next(self.model.parameters(), None)
        device = param.device if param is not None else "cpu"
        params_of = self.run.get("method_params") or {}
        inputs: dict[str, Any] = {}
        for path, method, target in todo:
            entry = self.asked[(path, method, target)]
            try:
                if path not in inputs:
                    data = as_data([path], self.model)
                    x, read = data.load([0])
                    if not read:
                        raise ValueError("the image could not be read again")
                    inputs[path] = (x, data.images(x)[0])
                    self.pictures[path] = jpeg_uri(inputs[path][1])
                x, picture = inputs[path]
                params = dict(params_of.get(method, {}))
                if _takes_seed_method(method) and path in self.seeds:
                    params["seed"] = int(self.seeds[path])
                exp = explain(self.model, x.to(device), method, target=None if target is None else int(target),
                              **params)
                size = tuple(picture.shape[:2])
                signed = exp.heatmap_steps(size).get("sign") == "all"
                heat = exp.heatmap(size).detach().float().cpu().numpy()[0, 0]
                entry["uri"] = jpeg_uri(viz.overlay(picture, heat, signed=signed))
            except Exception as err:  # one map failing must not lose the page
                log.debug("summary: map of %s by %s failed", path, method, exc_info=True)
                entry["note"] = f"no map: {type(err).__name__}: {err}"
                self.failed += 1


def _env(maps: _Maps, label_name: Any, class_name: Any) -> Any:
    from ..report_layout import template_env

    env = template_env()
    env.globals.update(picture=maps.picture, label_name=label_name, class_name=class_name, isnan=_isnan)
    return env


def _isnan(x: Any) -> bool:
    return isinstance(x, float) and math.isnan(x)
