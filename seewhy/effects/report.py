"""The ``seewhy effects`` report: per transformation the ICE curves (thin) with their average (thick) and the identity
value marked, a strip of the first image transformed at each value, and a table per image; ``manifest.json`` and
``effects.csv`` hold every number."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..progress import format_seconds
from ..report_files import write_page_report
from ..report_layout import csv_bytes, enlarge, fmt_num, jpeg_uri, png_uri
from . import TRANSFORMS, TransformEffects

__all__ = ["EffectsRun", "effects_plot", "write_effects_report"]

#: ICE curves drawn with a legend up to this many images
LEGEND_MAX = 8
#: strip thumbnails are enlarged (nearest neighbour) to at least this side, or shrunk to at most twice it
THUMB_SIDE = 96


@dataclass(frozen=True)
class EffectsRun:
    """One transformation's result for the report: the curves, the first image transformed at each value (uint8
    (H,W,3) each) and the seconds it took."""

    result: TransformEffects
    strip: list[np.ndarray]
    seconds: float = 0.0


def _meaning(name: str) -> str:
    spec = TRANSFORMS.get(name)
    return spec.meaning if spec is not None else "the value passed to the transform"


def effects_plot(result: TransformEffects, image_names: Sequence[str], *, size: tuple[float, float] = (5.6, 3.6),
                 dpi: int = 110) -> np.ndarray:
    """ICE curves (one thin line per image), their average (thick) and the identity value (dashed) as a uint8
    (H,W,3) image, drawn with matplotlib's Agg canvas (no global pyplot state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=dpi)
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    x = np.asarray(result.values, dtype=float)
    order = np.argsort(x, kind="stable")
    curves = result.curves.detach().double().cpu().numpy()
    few = len(curves) <= LEGEND_MAX
    for i, y in enumerate(curves):
        ax.plot(x[order], y[order], linewidth=0.9, alpha=0.75 if few else 0.35,
                label=image_names[i] if few and i < len(image_names) else None)
    ax.plot(x[order], result.average.detach().double().cpu().numpy()[order], color="black", linewidth=2.6,
            label=f"average of {len(curves)}")
    if result.identity is not None:
        ax.axvline(result.identity, color="#666666", linestyle="--", linewidth=1.0, label="unchanged")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel(f"{result.transform}", fontsize=9)
    ax.set_ylabel("probability of the target class", fontsize=9)
    ax.tick_params(labelsize=8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, frameon=False, loc="best")
    fig.tight_layout()
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def _thumb(img: np.ndarray) -> str:
    h, w = img.shape[:2]
    if min(h, w) < THUMB_SIDE:
        return png_uri(enlarge(img, THUMB_SIDE)[0])
    if max(h, w) > 2 * THUMB_SIDE:
        from PIL import Image

        f = 2 * THUMB_SIDE / max(h, w)
        img = np.asarray(Image.fromarray(img).resize((max(1, round(w * f)), max(1, round(h * f))),
                                                     Image.Resampling.LANCZOS))
    return jpeg_uri(img)


def _class(i: int, names: Sequence[str] | None) -> str:
    return f"{i} ({names[i]})" if names and 0 <= i < len(names) else str(i)


def write_effects_report(out_dir: str | os.PathLike, header: Mapping[str, Any], image_names: Sequence[str],
                         runs: Sequence[EffectsRun], *, class_names: Sequence[str] | None = None,
                         failures: Sequence[tuple[str, str]] = (), overwrite: bool = False) -> Path:
    """``index.html`` (``effects.html``), ``manifest.json`` and ``effects.csv`` (transform, value, image, target,
    probability) for the runs; returns the index's path."""
    sections, record, rows = [], [], []
    for k, run in enumerate(runs):
        r = run.result
        curves = r.curves.detach().double().cpu().numpy()
        clean = r.clean.detach().double().cpu().numpy()
        targets = [int(t) for t in r.target.tolist()]
        table = []
        for i, name in enumerate(image_names):
            lo, hi = int(np.argmin(curves[i])), int(np.argmax(curves[i]))
            table.append({"name": name, "target": _class(targets[i], class_names), "clean": fmt_num(clean[i]),
                          "low": f"{fmt_num(curves[i, lo])} at {r.values[lo]:g}",
                          "high": f"{fmt_num(curves[i, hi])} at {r.values[hi]:g}"})
            rows += [(r.transform, f"{v:g}", name, targets[i], f"{curves[i, j]:.6g}") for j, v in enumerate(r.values)]
        strip = [{"uri": _thumb(img), "value": f"{v:g}", "identity": r.identity is not None and v == r.identity}
                 for img, v in zip(run.strip, r.values, strict=False)]
        sections.append({"id": f"t{k}-{r.transform}", "name": r.transform, "meaning": _meaning(r.transform),
                         "identity": None if r.identity is None else f"{r.identity:g}",
                         "plot": png_uri(effects_plot(r, image_names)), "strip": strip, "table": table,
                         "seconds": run.seconds, "first": image_names[0] if image_names else ""})
        record.append({"transform": r.transform, "meaning": _meaning(r.transform), "identity": r.identity,
                       "values": list(r.values), "average": r.average.detach().double().cpu().tolist(),
                       "seconds": run.seconds,
                       "images": [{"name": name, "target": targets[i],
                                   "target_name": class_names[targets[i]] if class_names and
                                   targets[i] < len(class_names) else None,
                                   "clean": float(clean[i]), "curve": curves[i].tolist()}
                                  for i, name in enumerate(image_names)]})
    total = sum(run.seconds for run in runs)
    summary = [f"{len(image_names)} image(s)", f"{len(runs)} transform(s)", format_seconds(total)]
    files = {"effects.csv": csv_bytes(("transform", "value", "image", "target", "probability"), rows)}
    settings = {k: v for k, v in header["settings"].items() if v is not None and v is not False and v != []}
    return write_page_report(out_dir, "effects.html", "seewhy effects", header, summary,
                             {"images": list(image_names), "effects": record}, {"sections": sections},
                             settings=settings, failures=list(failures), overwrite=overwrite, files=files,
                             filters={"secs": format_seconds})
