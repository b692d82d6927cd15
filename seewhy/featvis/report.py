"""The reports of ``seewhy featvis`` and ``seewhy atlas``: one self-contained ``index.html`` (images embedded, CSS
inline) and a ``manifest.json`` with every number shown, plus the images as PNG files (and ``atlas.csv``).

Each ``write_*`` function takes the results of :mod:`seewhy.featvis` and a header (model, settings, the cost
estimate and the command, from :mod:`seewhy.featvis.cli`) and returns the path of ``index.html``. Files are written
as :func:`seewhy.report_files.write_report_files` does: atomically, ``index.html`` last.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from .. import viz
from ..progress import format_seconds
from ..report_files import write_page_report
from ..report_layout import csv_bytes, enlarge, fmt_setting, jpeg_uri, plural, png_uri

__all__ = ["write_atlas", "write_featvis"]

#: shorter side (px) of a feature visualization as shown in the report (nearest-neighbour, integer factor)
DISPLAY_SIDE = 224
#: size (inches) of a loss curve
CURVE_SIZE = (4.8, 2.8)


def picture(image: Tensor) -> np.ndarray:
    """A (3, H, W) image in [0, 1] -> uint8 (H, W, 3) (clipped to [0, 1])."""
    return viz.tensor_to_image(image.detach().float().cpu(), mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))


def _slug(text: str, limit: int = 48) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-")[:limit] or "objective"


def _curve(losses: Tensor, label: str = "loss") -> np.ndarray:
    y = losses.detach().double().cpu().numpy()
    return viz.line_plot(np.arange(1, len(y) + 1), {label: y}, xlabel="step",
                         ylabel="loss (-objective + penalties)", size=CURVE_SIZE)


def _settings_rows(params: Mapping[str, Any]) -> list[tuple[str, str]]:
    return [(str(k), "-" if v is None else fmt_setting(v)) for k, v in params.items()]


# -- the reports ---------------------------------------------------------------------------------------


def write_featvis(out_dir: str | os.PathLike, header: Mapping[str, Any], results: Sequence[tuple[str, Any]], *,
                  overwrite: bool = False) -> Path:
    """Per objective (its spec as given and its :class:`~seewhy.featvis.render.FeatVis`): the images (also as PNG
    files), the final objective value of each, the loss curve and the settings."""
    files: dict[str, bytes] = {}
    sections, recorded = [], []
    for i, (spec, r) in enumerate(results):
        values = [float(v) for v in r.objective_values.reshape(-1)]
        losses = [float(v) for v in r.losses.reshape(-1)]
        shown = []
        names = []
        for b in range(r.images.shape[0]):
            pic = picture(r.images[b])
            name = f"{i + 1:02d}_{_slug(spec)}_{b}.png"
            files[name] = viz.png_bytes(pic)
            names.append(name)
            shown.append({"uri": png_uri(enlarge(pic, DISPLAY_SIDE)[0]), "file": name,
                          "value": values[b] if b < len(values) else None})
        sections.append({"id": f"objective-{i + 1}", "spec": spec, "name": str(r.params.get("objective", spec)),
                         "images": shown, "seconds": float(r.seconds), "steps": len(losses),
                         "final_loss": losses[-1] if losses else None, "curve": png_uri(_curve(r.losses))
                         if losses else None, "settings": _settings_rows(r.params)})
        recorded.append({"spec": spec, "name": str(r.params.get("objective", spec)), "layers": list(r.layers),
                         "params": r.params, "seconds": float(r.seconds), "objective_values": values,
                         "losses": losses, "files": names})
    total = sum(s["seconds"] for s in sections)
    first = results[0][1].params if results else {}
    summary = [plural(len(results), "objective"), f"{first.get('size', '?')} px",
               plural(int(first.get("steps", 0)), "step"), f"batch {first.get('batch', 1)}",
               f"{format_seconds(total)} in all"]
    return _write(out_dir, header, summary, {"objectives": recorded}, {"objectives": sections}, files=files,
                  overwrite=overwrite)


def write_atlas(out_dir: str | os.PathLike, header: Mapping[str, Any], atlas: Any, data: Any = None, *,
                failures: Sequence[tuple[str, str]] = (), overwrite: bool = False) -> Path:
    """The atlas (also ``atlas.png``), the layout's scatter with the grid, the icons' loss curve, the cells (also
    ``atlas.csv``), the settings and the cost; ``samples.csv`` says where each sampled vector comes from (the image's
    name from ``data``, when given)."""
    a = atlas
    g = int(a.counts.shape[0])
    counts = a.counts.long().cpu()
    scores = None if a.scores is None else a.scores.double().cpu()
    values = {tuple(rc): float(v) for rc, v in zip(a.cells.tolist(), a.objective_values.reshape(-1).tolist(),
                                                   strict=True)}
    cells = []
    for row, col in zip(*np.nonzero(counts.numpy()), strict=True):
        score = None if scores is None else float(scores[row, col])
        cells.append({"row": int(row), "col": int(col), "count": int(counts[row, col]),
                      "score": score if score is None or np.isfinite(score) else None,
                      "drawn": (int(row), int(col)) in values, "objective": values.get((int(row), int(col)))})
    cells.sort(key=lambda c: (-c["count"], c["row"], c["col"]))
    pic = picture(a.image)
    files = {"atlas.png": viz.png_bytes(pic)}
    files["atlas.csv"] = csv_bytes(["row", "col", "count", "score", "drawn", "objective"],
                                   ([c["row"], c["col"], c["count"], "" if c["score"] is None else c["score"],
                                     int(c["drawn"]), "" if c["objective"] is None else c["objective"]]
                                    for c in cells))
    files["samples.csv"] = _samples_csv(a, data)
    n = int(a.layout.shape[0])
    k = a.params.get("class_filter")
    drawn = int(a.cells.shape[0])
    big = enlarge(pic, 480)[0]
    caption = (f"{drawn} icons on a {g} x {g} grid, each the feature visualization of its cell's mean activation "
               f"vector ({a.params.get('icon_size')} px); empty cells white"
               + (f"; only the cells whose mean attribution to class {k} is positive" if k is not None else "")
               + ". The exact pixels are in atlas.png.")
    view = {
        "uri": jpeg_uri(big) if max(big.shape[:2]) > 800 else png_uri(big), "caption": caption,
        "scatter": png_uri(_scatter(a)), "curve": png_uri(_icon_curve(a.losses)) if a.losses.numel() else None,
        "scatter_caption": f"The {n} sampled activation vectors at their UMAP positions (each axis clipped to its "
                           f"1st-99th percentile and scaled to [0, 1]), the {g} x {g} grid over them; cells with an "
                           "icon shaded" + (f", points coloured by their attribution to class {k}" if k is not None
                                            else "") + ".",
        "cells": cells, "min_count": a.params.get("min_count"), "scored": scores is not None,
        "settings": _settings_rows(a.params), "seconds": {key: float(v) for key, v in a.seconds.items()},
    }
    record = {"params": a.params, "seconds": view["seconds"], "samples": n, "channels": int(a.directions.shape[1])
              if a.directions.ndim == 2 else None, "cells": cells, "counts": counts.tolist(),
              "scores": None if scores is None else [[None if not np.isfinite(v) else v for v in row]
                                                      for row in scores.tolist()],
              "losses": a.losses.double().cpu().tolist(), "files": sorted(files)}
    summary = [f"{n} activation vectors", f"{g} x {g} grid", plural(drawn, "icon"),
               *([f"class {k}"] if k is not None else []),
               f"{format_seconds(sum(view['seconds'].values()))} in all",
               *([f"{len(failures)} could not be read"] if failures else [])]
    return _write(out_dir, header, summary, record, {"atlas": view}, failures=failures, files=files,
                  overwrite=overwrite)


def _samples_csv(a: Any, data: Any) -> bytes:
    """One row per sampled vector: its image, (y, x) on the layer's grid, layout (x, y), cell, attribution."""
    sources = a.sources.long().cpu().tolist()
    layout = a.layout.double().cpu().tolist()
    bins = a.bins.long().cpu().tolist()
    g = int(a.counts.shape[0])
    attributions = None if a.attributions is None else a.attributions.double().cpu().tolist()
    names: dict[int, str] = {}

    def name(i: int) -> str:
        if i not in names:
            names[i] = str(data.name(i)) if data is not None else f"image {i}"
        return names[i]

    header = ["image", "index", "y", "x", "layout_x", "layout_y", "row", "col"]
    rows = ([name(s[0]), s[0], s[1], s[2], xy[0], xy[1], b // g, b % g] for s, xy, b in zip(sources, layout, bins,
                                                                                         strict=True))
    if attributions is not None:
        header.append("attribution")
        rows = ([*row, v] for row, v in zip(rows, attributions, strict=True))
    return csv_bytes(header, rows)


def _scatter(a: Any, size: tuple[float, float] = (5.6, 5.6), dpi: int = 110) -> np.ndarray:
    """The layout's points in the unit square with the grid drawn and the drawn cells shaded, as uint8 (H, W, 3):
    matplotlib's Agg canvas (no display, no pyplot state), as :func:`seewhy.viz.line_plot` draws."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    g = int(a.counts.shape[0])
    xy = a.layout.double().cpu().numpy()
    fig = Figure(figsize=size, dpi=dpi)
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for row, col in a.cells.tolist():  # row 0 at the top: y from 1 - (row + 1) / g
        ax.add_patch(Rectangle((col / g, 1 - (row + 1) / g), 1 / g, 1 / g, facecolor="#2f5fb3", alpha=0.12,
                               linewidth=0))
    marker = max(0.5, min(8.0, 2000.0 / max(1, len(xy))))
    if a.attributions is not None:
        v = a.attributions.double().cpu().numpy()
        m = float(np.abs(v).max()) or 1.0
        points = ax.scatter(xy[:, 0], xy[:, 1], c=v, cmap="bwr", vmin=-m, vmax=m, s=marker, linewidths=0,
                            rasterized=True)
        bar = fig.colorbar(points, ax=ax, fraction=0.046, pad=0.03)
        bar.set_label(f"attribution to class {a.params.get('class_filter')}", fontsize=8)
        bar.ax.tick_params(labelsize=7)
    else:
        ax.scatter(xy[:, 0], xy[:, 1], s=marker, color="#1d2330", alpha=0.6, linewidths=0, rasterized=True)
    for t in np.linspace(0, 1, g + 1):
        ax.axhline(t, color="#9aa3b2", linewidth=0.5)
        ax.axvline(t, color="#9aa3b2", linewidth=0.5)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_aspect("equal")
    ax.set_xlabel("layout x", fontsize=9)
    ax.set_ylabel("layout y", fontsize=9)
    ax.tick_params(labelsize=8)
    fig.tight_layout()
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def _icon_curve(losses: Tensor) -> np.ndarray:
    """The icons' loss per step: one line per chunk of icons rendered together (the mean, with the spread between
    chunks, above six)."""
    y = losses.detach().double().cpu().reshape(losses.shape[0], -1).numpy()
    x = np.arange(1, y.shape[1] + 1)
    if y.shape[0] == 1:
        series, bands = {"icons": y[0]}, None
    elif y.shape[0] <= 6:
        series, bands = {f"icon batch {j + 1}": row for j, row in enumerate(y)}, None
    else:
        series, bands = {f"mean of {y.shape[0]} icon batches": y.mean(0)}, None
        bands = {next(iter(series)): y.std(0)}
    return viz.line_plot(x, series, bands=bands, xlabel="step", ylabel="loss (-objective + penalties)",
                         size=CURVE_SIZE)


def _write(out_dir: str | os.PathLike, header: Mapping[str, Any], summary: Sequence[str], record: Mapping[str, Any],
           context: Mapping[str, Any], *, failures: Sequence[tuple[str, str]] = (), overwrite: bool = False,
           files: Mapping[str, bytes] | None = None) -> Path:
    """``featvis.html`` with the header and ``context``, ``manifest.json`` and ``files``
    (:func:`~seewhy.report_files.write_page_report`)."""
    estimate = header.get("estimate") or {}
    cost = ""
    if estimate.get("seconds") is not None:
        cost = f"about {format_seconds(estimate['seconds'])}"
        if "seconds_per_step" in estimate:
            cost += (f" for {estimate['objectives']} objectives x {estimate['steps']} steps (one step: "
                     f"{format_seconds(estimate['seconds_per_step'])})")
        elif "icon_seconds" in estimate:
            cost += (f": the pass over {estimate['images']} images and at most {estimate['icons_at_most']} icons "
                     f"({format_seconds(estimate['icon_seconds'])})")
        elif "images" in estimate:
            cost += f" for one pass over {estimate['images']} images"
    page = {"objectives": [], "atlas": None, **context}
    settings = {k: v for k, v in header["settings"].items() if v is not None and v is not False and v != []}
    return write_page_report(out_dir, "featvis.html", f"seewhy {header['kind']}", header, list(summary), record,
                             page, cost=cost, settings=settings, failures=list(failures), overwrite=overwrite,
                             files=files, filters={"secs": format_seconds})
