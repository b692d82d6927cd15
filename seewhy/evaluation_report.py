"""The ``seewhy evaluate`` report: the explain report (maps per image and method, with each image's metric scores
in the captions) plus a leaderboard, the deletion/insertion curves, the cascading-randomization grid in the style
of Adebayo et al. (2018), the failure-mode maps, and the same numbers as ``results.csv`` / ``results.json``."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import viz
from .evaluate import Evaluation, cost_unit
from .metrics import get_metric
from .report import Figure, ImageRow, MethodRun, Table, _unique_keys, write_explain_report

#: at most this many misclassified images in the failure-mode figure (all of them are in results.json)
MAX_FAILURE_ROWS = 12


def write_evaluation_report(
    out_dir: str | os.PathLike,
    images: Sequence[ImageRow],
    evaluation: Evaluation,
    *,
    model: Mapping[str, Any],
    target: str = "top1",
    class_names: Sequence[str] | None = None,
    grid_images: int = 1,
    **kwargs: Any,
) -> Path:
    """Write ``index.html``, ``manifest.json``, ``results.csv``, ``results.json`` (and ``attributions.npz`` with
    ``save_attributions=True``).

    ``images`` are the evaluated images in order; ``grid_images``: how many of them the randomization grid shows;
    other keyword arguments go to :func:`seewhy.report.write_explain_report` (preprocessing, failures, settings,
    command, overwrite, title, save_attributions). ``results.csv`` and ``results.json`` name the images by file
    name (see :func:`image_records`) next to their index.
    """
    runs = _runs(evaluation)
    columns, rows = evaluation.leaderboard()
    n = len(images)
    tables = [
        Table("Leaderboard", columns, rows,
              f"mean ± standard deviation over the {n} image{'s' if n != 1 else ''} (NaN scores, e.g. empty masks, "
              "left out); ↑ higher is better, ↓ lower is better. The controls ignore the model: a method should "
              "beat them on faithfulness and change more than they do under randomization."),
        _cost_table(evaluation),
    ]
    figures = [*_curve_figures(evaluation), *_randomization_figures(evaluation, images, grid_images),
               *_failure_figures(evaluation, images, class_names)]
    files = {"results.csv": _csv(evaluation, images).encode("utf-8"),
             "results.json": json.dumps(_results(evaluation, images), indent=2, allow_nan=False).encode("utf-8")}
    kwargs.setdefault("title", "seewhy evaluate")
    return write_explain_report(out_dir, images, runs, model=model, target=target, class_names=class_names,
                                tables=tables, figures=figures, files=files, **kwargs)


def _runs(evaluation: Evaluation) -> list[MethodRun]:
    """One report column per method, each image's metric scores added to its caption."""
    runs = []
    for method in [*evaluation.methods, *evaluation.controls]:
        if method not in evaluation.explanations:
            runs.append(MethodRun(method, error=evaluation.errors.get(method, "no result")))
            continue
        exps, start = [], 0
        for exp in evaluation.explanations[method]:
            b = exp.attributions.shape[0]
            extras = dict(exp.extras)
            for metric in evaluation.metrics:
                res = evaluation.results.get((method, metric))
                if res is not None:
                    extras[metric] = res.scores[start : start + b]
            exps.append(dataclasses.replace(exp, extras=extras))
            start += b
        runs.append(MethodRun(method, exps, evaluation.explain_seconds[method]))
    return runs


def _cost_table(evaluation: Evaluation) -> Table:
    rows = []
    for metric in evaluation.metrics:
        spec = get_metric(metric)
        secs = [r.seconds for (_, m), r in evaluation.results.items() if m == metric]
        rows.append([metric, spec.family, f"{evaluation.costs.get(metric, 0)} {cost_unit(metric)}",
                     sum(secs) / max(1, len(secs)), spec.summary])
    return Table("Metrics", ["metric", "family", "cost per image and method", "seconds per method", "what"], rows)


def _curve_figures(evaluation: Evaluation) -> list[Figure]:
    figures = []
    for metric in evaluation.metrics:
        series, bands, fractions = {}, {}, None
        for method in [*evaluation.methods, *evaluation.controls]:
            res = evaluation.results.get((method, metric))
            if res is None or res.curves is None:
                continue
            fractions = res.fractions
            label = method + (" (control)" if method in evaluation.controls else "")
            series[label] = res.curves.mean(0)
            bands[label] = res.curves.std(0) if res.curves.shape[0] > 1 else torch.zeros_like(res.curves[0])
        if fractions is None:
            continue
        score = next(iter(r.protocol.get("score", "") for (_, m), r in evaluation.results.items() if m == metric), "")
        image = viz.line_plot(fractions, series, bands=bands, title=f"{metric}: mean curve", ylabel=str(score or
                              "score"), xlabel="fraction of pixels")
        figures.append(Figure(f"Curves: {metric}", image, "mean over the images, shaded ± one standard deviation; "
                              "the area under each curve is the score in the leaderboard"))
    return figures


def _randomization_figures(evaluation: Evaluation, images: Sequence[ImageRow], grid_images: int) -> list[Figure]:
    """Rows: method (x image); columns: the trained model's map, then the map after each cascading step."""
    if not evaluation.randomization:
        return []
    cells, row_labels, col_labels = [], [], None
    for method, res in evaluation.randomization.items():
        if not res.maps:
            continue
        k = min(grid_images, res.original.shape[0])
        size = tuple(np.asarray(images[0].image).shape[:2])
        heat = res.heatmaps(size)  # (L+1, B, 1, H, W)
        signed = res.heatmap_convention.get("sign") == "all"
        sim = res.scores.get("spearman_abs")
        for i in range(k):
            row = [_cell(viz.overlay(images[i].image, heat[s, i, 0].numpy(), signed=signed))
                   for s in range(heat.shape[0])]
            if sim is not None:  # this method's and this image's rho, on each randomized map
                row[1:] = [_caption(c, f"rho={float(sim[j, i]):.2f}") for j, c in enumerate(row[1:])]
            cells.append(row)
            row_labels.append(method + (f"\n{images[i].name}" if k > 1 else ""))
        if col_labels is None:
            col_labels = ["trained", *map(str, res.layers)]
    if not cells:
        return []
    width = max(len(r) for r in cells)
    col_labels = (col_labels or [])[:width] + [""] * (width - len(col_labels or []))
    image = viz.grid(cells, row_labels=row_labels, col_labels=col_labels, max_label_width=140)
    caption = ("cascading model-parameter randomization (Adebayo et al. 2018): left, the trained model's map; then "
               "the map after re-initialising the layers from the top down to the one named (cumulative). A faithful "
               "method's map should fall apart; rho on each map: Spearman rank correlation of its absolute values with "
               "the trained model's map")
    return [Figure("Sanity check: cascading randomization", image, caption)]


def _failure_figures(evaluation: Evaluation, images: Sequence[ImageRow],
                     class_names: Sequence[str] | None) -> list[Figure]:
    if not evaluation.failure_cases:
        return []

    def name(c: int) -> str:
        return str(class_names[c]) if class_names and 0 <= c < len(class_names) else f"class {c}"

    methods = [m for m in evaluation.methods if any(m in c.maps for c in evaluation.failure_cases)]
    if not methods:
        return []
    cells, row_labels = [], []
    shown = evaluation.failure_cases[:MAX_FAILURE_ROWS]
    for case in shown:
        img = images[case.index].image
        size = tuple(np.asarray(img).shape[:2])
        row = [_cell(img)]
        for m in methods:
            for exp in case.maps.get(m, (None, None)):
                if exp is None:
                    row.append(None)
                    continue
                signed = exp.heatmap_steps(size).get("sign") == "all"
                row.append(_cell(viz.overlay(img, exp.heatmap(size)[0, 0].numpy(), signed=signed)))
        cells.append(row)
        row_labels.append(f"{images[case.index].name}\npredicted {name(case.predicted)}\ntrue {name(case.true)}")
    col_labels = ["input", *(f"{m}\n{which}" for m in methods for which in ("predicted class", "true class"))]
    image = viz.grid(cells, row_labels=row_labels, col_labels=col_labels, max_label_width=160)
    more = len(evaluation.failure_cases) - len(shown)
    return [Figure("Failure modes: misclassified images", image,
                   "each method's map for the class the model predicted and for the true class, side by side"
                   + (f"; the first {len(shown)} of {len(evaluation.failure_cases)} misclassified images (all are "
                      "listed in results.json)" if more > 0 else ""))]


def _caption(image: np.ndarray, text: str) -> np.ndarray:
    """``image`` with ``text`` in a white band along its bottom edge."""
    from PIL import Image, ImageDraw

    im = Image.fromarray(np.ascontiguousarray(image))
    draw = ImageDraw.Draw(im)
    box = draw.textbbox((0, 0), text)
    draw.rectangle((0, im.height - box[3] - 4, box[2] + 4, im.height), fill=(255, 255, 255))
    draw.text((2, im.height - box[3] - 2), text, fill=(0, 0, 0))
    return np.asarray(im)


def _cell(image: np.ndarray, side: int = 128) -> np.ndarray:
    """A grid cell at ``side`` pixels on its longer edge (small inputs scaled up, large ones down)."""
    from PIL import Image

    h, w = image.shape[:2]
    scale = side / max(h, w)
    if abs(scale - 1) < 1e-9:
        return image
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BILINEAR))


def image_records(images: Sequence[ImageRow]) -> list[dict[str, Any]]:
    """How results.csv / results.json name the images: ``{"index", "image", "name", "key", "source"}``, where
    ``image`` is the file name (``photos/cat.jpg`` -> ``cat.jpg``; the name when there is no source file) and
    ``key`` the image's unique key in the report (its section, ``#image-<key>``, and its manifest entry)."""
    keys = _unique_keys([im.name for im in images])
    return [{"index": i, "image": Path(im.source).name if im.source else im.name, "name": im.name, "key": key,
             "source": im.source} for i, (im, key) in enumerate(zip(images, keys, strict=True))]


def _results(evaluation: Evaluation, images: Sequence[ImageRow]) -> dict[str, Any]:
    """``evaluation.to_dict()`` with the images named: an ``images`` list (scores are listed in its order) and the
    file name of each failure case."""
    data = evaluation.to_dict()
    named = image_records(images)
    data["images"] = named
    for case in data.get("failure_cases", []):
        i = case.get("image")
        if isinstance(i, int) and 0 <= i < len(named):
            case["name"] = named[i]["image"]
    return data


def _csv(evaluation: Evaluation, images: Sequence[ImageRow]) -> str:
    """One row per (method, metric, image); the image by its index and its file name."""
    named = image_records(images)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["method", "control", "metric", "index", "image", "score"],
                            lineterminator="\n")
    writer.writeheader()
    for rec in evaluation.records():
        i = rec["image"]
        writer.writerow({**rec, "index": i, "image": named[i]["image"] if 0 <= i < len(named) else "",
                         "score": "" if rec["score"] is None else repr(rec["score"])})
    return buf.getvalue()
