"""The reports of ``seewhy inside``: one self-contained ``index.html`` (images embedded, CSS inline) and a
``manifest.json`` with every number shown, plus a CSV for embeddings and dissections.

Each ``write_*`` function takes the results of :mod:`seewhy.inside` and a header (model, layer, settings, the cost
estimate and the command, from :mod:`seewhy.inside.cli`), and returns the path of ``index.html``. Files are written
as :func:`seewhy.report_files.write_report_files` does: atomically, ``index.html`` last.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from .. import images, viz
from ..progress import format_seconds
from ..report_files import write_page_report
from ..report_layout import csv_bytes, enlarge, jpeg_uri, plural, png_uri

__all__ = ["DetectorPatch", "MapRow", "write_dissect", "write_embed", "write_filters", "write_maps",
           "write_patches"]

BOX_COLOUR = (255, 32, 32)
#: translucent fill of a concept's mask, and the outline of a unit's thresholded activation
CONCEPT_FILL = (0, 150, 255)
UNIT_OUTLINE = (255, 221, 0)
FILL_ALPHA = 0.5


@dataclass(frozen=True)
class MapRow:
    """One image of ``seewhy inside maps``: the input as the model sees it, the grid of the channels shown (with
    their mean activations) and the layer's output shape (K, h, w)."""

    name: str
    path: str
    picture: np.ndarray
    grid: np.ndarray
    channels: list[int]
    means: list[float]
    shape: tuple[int, ...]


@dataclass(frozen=True)
class DetectorPatch:
    """One top patch of a detector: its :class:`~seewhy.inside.patches.PatchRecord`, the picture (H,W,3) uint8, and
    the concept's and the unit's masks (H,W) bool over the whole picture."""

    record: Any
    picture: np.ndarray
    concept_mask: np.ndarray
    unit_mask: np.ndarray


# -- pictures ------------------------------------------------------------------------------------------


def _boxed(picture: np.ndarray, box: Sequence[int], min_side: int = 128) -> np.ndarray:
    """The picture (enlarged when small) with the box (top, left, bottom, right; exclusive) drawn on it."""
    big, f = enlarge(picture, min_side)
    return viz.draw_box(big, [int(v) * f for v in box], colour=BOX_COLOUR, width=max(1, min(3, f)))


def _crop(picture: np.ndarray, box: Sequence[int], min_side: int = 64) -> np.ndarray:
    t, left, b, r = (int(v) for v in box)
    return enlarge(np.ascontiguousarray(picture[t:max(b, t + 1), left:max(r, left + 1)]), min_side)[0]


def _outline(mask: np.ndarray) -> np.ndarray:
    """The pixels of ``mask`` with a 4-neighbour outside it (the picture's border does not count), thickened by
    one pixel outwards."""
    p = np.pad(mask, 1, mode="edge")
    inner = p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
    edge = mask & ~inner
    q = np.pad(edge, 1)
    return edge | q[:-2, 1:-1] | q[2:, 1:-1] | q[1:-1, :-2] | q[1:-1, 2:]


def mask_view(patch: DetectorPatch, *, whole: bool = False, min_side: int = 96) -> np.ndarray:
    """The patch's receptive field (``whole``: the whole picture, the field boxed in red), enlarged, with the
    concept's mask filled in translucent blue and the unit's thresholded activation outlined in yellow."""
    t, left, b, r = (int(v) for v in patch.record.box)
    region = (slice(None), slice(None)) if whole else (slice(t, max(b, t + 1)), slice(left, max(r, left + 1)))
    big, f = enlarge(np.ascontiguousarray(patch.picture[region]), min_side)

    def up(m: np.ndarray) -> np.ndarray:
        return np.repeat(np.repeat(np.asarray(m, dtype=bool)[region], f, 0), f, 1)

    out = big.astype(np.float32)
    concept = up(patch.concept_mask)
    out[concept] = (1 - FILL_ALPHA) * out[concept] + FILL_ALPHA * np.array(CONCEPT_FILL, np.float32)
    out[_outline(up(patch.unit_mask))] = UNIT_OUTLINE
    out = out.round().clip(0, 255).astype(np.uint8)
    if not whole:
        return out
    return viz.draw_box(out, [v * f for v in (t, left, b, r)], colour=BOX_COLOUR, width=max(1, min(2, f)))


class _Pictures:
    """``data.picture(i)`` cached (a picture may show for many units); None for a file that cannot be read again."""

    def __init__(self, data: Any) -> None:
        self.data = data
        self._cache: dict[int, np.ndarray | None] = {}

    def __call__(self, index: int) -> np.ndarray | None:
        if index not in self._cache:
            try:
                self._cache[index] = self.data.picture(index)
            except ValueError:
                self._cache[index] = None
        return self._cache[index]


# -- the reports ---------------------------------------------------------------------------------------


def write_filters(out_dir: str | os.PathLike, header: Mapping[str, Any], weights: Tensor, *, max_filters: int = 64,
                  overwrite: bool = False) -> Path:
    """The filter grid of a convolution (K, C, kh, kw), with each filter's norm, minimum and maximum."""
    w = weights.detach().cpu().double()
    shown = min(max_filters, w.shape[0])
    flat = w.flatten(1)
    stats = [{"filter": i, "norm": float(flat[i].norm()), "min": float(flat[i].min()), "max": float(flat[i].max())}
             for i in range(w.shape[0])]
    k, c, kh, kw = w.shape
    figure = {"id": "filters", "title": f"Filters of {header['layer']}",
              "caption": f"{shown} of {k} filters, {c} input channel(s) each, {kh}x{kw}. One scale for the layer: "
                         "mid-grey is zero, brighter positive, darker negative"
                         + (" (an RGB tile per filter)." if c == 3 else "; a row of tiles per filter, one per input "
                            "channel (the first 8)."),
              "uri": png_uri(viz.filter_grid(w, max_filters=max_filters))}
    record = {"filters": {"shape": [k, c, kh, kw], "shown": shown, "stats": stats}}
    summary = [f"{k} filters of {c}x{kh}x{kw}", f"{shown} shown"]
    return _write(out_dir, header, summary, record, {"figures": [figure]}, overwrite=overwrite)


def write_maps(out_dir: str | os.PathLike, header: Mapping[str, Any], rows: Sequence[MapRow], *,
               failures: Sequence[tuple[str, str]] = (), overwrite: bool = False) -> Path:
    """Per image: the input and the grid of its feature maps."""
    maps = [{"name": r.name, "path": r.path, "input": jpeg_uri(enlarge(r.picture, 128)[0]), "grid": png_uri(r.grid),
             "channels": ", ".join(map(str, r.channels))} for r in rows]
    record = {"images": [{"name": r.name, "path": r.path, "shape": list(r.shape),
                          "channels": [{"channel": c, "mean": m} for c, m in zip(r.channels, r.means, strict=True)]}
                         for r in rows]}
    summary = [plural(len(rows), "image"), *([f"{len(failures)} could not be read"] if failures else [])]
    return _write(out_dir, header, summary, record, {"maps": maps}, failures=failures, overwrite=overwrite)


def write_patches(out_dir: str | os.PathLike, header: Mapping[str, Any], top: Any, units: Sequence[int], *,
                  overwrite: bool = False) -> Path:
    """Per unit: its top patches, each the whole image with the receptive field boxed and the crop."""
    picture = _Pictures(top.data)
    shown, recorded = [], []
    for unit in units:
        recs = top.records(unit)
        patches = []
        for rec in recs:
            pic = picture(rec.index)
            patches.append({"value": rec.value, "name": images.image_name(top.data.name(rec.index)),
                            "y": rec.y, "x": rec.x, "box": list(rec.box),
                            "boxed": None if pic is None else jpeg_uri(_boxed(pic, rec.box)),
                            "crop": None if pic is None else jpeg_uri(_crop(pic, rec.box))})
        shown.append({"unit": unit, "patches": patches})
        recorded.append({"unit": unit, "records": [_record(r) for r in recs]})
    f = top.field
    field = {"size": list(f.size), "stride": list(f.stride), "offset": list(f.offset),
             "input_size": list(f.input_size), "map_size": list(f.map_size)}
    record = {"field": field, "k": top.k, "images": top.images, "units": recorded}
    summary = [f"{top.images} images read", plural(len(units), "unit") + " shown", f"k = {top.k}",
               *([f"{len(top.skipped)} could not be read"] if top.skipped else [])]
    field_text = {key: " x ".join(f"{v:g}" for v in value) for key, value in field.items()}
    return _write(out_dir, header, summary, record, {"units": shown, "field": field_text}, failures=top.skipped,
                  overwrite=overwrite)


def write_embed(out_dir: str | os.PathLike, header: Mapping[str, Any], embedding: Any,
                pictures: Mapping[str, np.ndarray], *, overwrite: bool = False) -> Path:
    """The scatter (and grid) pictures, the cost split into features and projection, the coordinates."""
    e = embedding
    names = e.classes or []
    labels = e.labels.tolist() if e.labels is not None else [None] * len(e.indices)
    paths = e.paths or [f"image {i}" for i in e.indices.tolist()]
    coords = e.coords.double().tolist()
    label_text = [("" if v is None else names[v] if 0 <= v < len(names) else str(v)) for v in labels]
    points = [{"index": i, "path": p, "label": lab, "x": c[0], "y": c[1]}
              for i, p, lab, c in zip(e.indices.tolist(), paths, label_text, coords, strict=True)]
    n, k = e.features.shape
    titles = {"scatter": f"{e.method} of {n} images", "grid": f"{e.method} snapped to a grid"}
    figures = [{"id": key, "title": titles.get(key, key), "uri": jpeg_uri(img),
                "caption": "Thumbnails at their projected coordinates (each axis scaled on its own)"
                if key == "scatter" else "Every image in its own cell, nearest to its projected place"}
               for key, img in pictures.items()]
    seconds = {key: float(v) for key, v in e.seconds.items()}
    record = {"method": e.method, "seed": e.seed, "features": [n, k], "seconds": seconds, "classes": e.classes,
              "points": points}
    summary = [f"{n} images x {k} features", f"{e.method} (seed {e.seed})",
               f"features {format_seconds(seconds['features'])}, projection {format_seconds(seconds['projection'])}",
               *([f"{len(e.skipped)} could not be read"] if e.skipped else [])]
    context = {"figures": figures, "embedding": {"n": n, "k": k, "method": e.method, "seconds": seconds}}
    return _write(out_dir, header, summary, record, context, failures=e.skipped, overwrite=overwrite,
                  files={"embedding.csv": csv_bytes(["path", "label", "x", "y"],
                                                      ([p["path"], p["label"], p["x"], p["y"]] for p in points))})


def write_dissect(out_dir: str | os.PathLike, header: Mapping[str, Any], result: Any,
                  views: Mapping[int, Sequence[DetectorPatch]], *, failures: Sequence[tuple[str, str]] = (),
                  overwrite: bool = False) -> Path:
    """The dissection table (best concept of every unit, by IoU), detectors per concept, and the shown detectors'
    top patches with the concept and unit masks."""
    concepts = [str(c) for c in result.concepts]
    thresholds = [float(t) for t in result.thresholds]
    detectors = [(int(d.unit), _name(concepts, d.concept), float(d.iou)) for d in result.detectors()]
    is_detector = {(u, c) for u, c, _ in detectors}
    best = sorted(((int(b.unit), _name(concepts, b.concept), float(b.iou)) for b in result.best()),
                  key=lambda t: (-_sortable(t[2]), t[0]))
    rows = [{"unit": u, "concept": c, "iou": iou, "threshold": thresholds[u], "detector": (u, c) in is_detector}
            for u, c, iou in best]
    counts = {c: sum(d[1] == c for d in detectors) for c in concepts}
    counts = dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
    shown = []
    for u, c, iou in detectors:
        if u not in views:
            continue
        patches = [{"uri": jpeg_uri(mask_view(p)), "whole": jpeg_uri(mask_view(p, whole=True, min_side=128)),
                    "value": p.record.value, "y": p.record.y, "x": p.record.x,
                    "name": images.image_name(p.record.path or f"image {p.record.index}"), "record": p.record}
                   for p in views[u]]
        shown.append({"unit": u, "concept": c, "iou": iou, "threshold": thresholds[u], "patches": patches})
    record = {
        "quantile": header["settings"].get("quantile"), "iou_threshold": header["settings"].get("iou_threshold"),
        "concepts": concepts, "thresholds": thresholds, "units": rows, "counts": counts, "images": result.images,
        "detectors": [{"unit": u, "concept": c, "iou": iou} for u, c, iou in detectors],
        "iou": result.iou.double().tolist(),
        "shown": [{**{k: v for k, v in d.items() if k != "patches"},
                   "records": [_record(p["record"]) for p in d["patches"]]} for d in shown],
    }
    summary = [f"{result.images} images", plural(len(thresholds), "unit"), plural(len(concepts), "concept"),
               plural(len(detectors), "detector"), *([f"{len(failures)} could not be read"] if failures else [])]
    context = {"dissection": {"rows": rows, "counts": counts, "detectors": shown, "total": len(detectors),
                              "colours": {"fill": f"rgb{CONCEPT_FILL}", "outline": f"rgb{UNIT_OUTLINE}"}}}
    return _write(out_dir, header, summary, record, context, failures=failures, overwrite=overwrite,
                  files={"dissection.csv": csv_bytes(["unit", "concept", "iou", "threshold"],
                                                       ([r["unit"], r["concept"], r["iou"], r["threshold"]]
                                                        for r in rows))})


# -- shared --------------------------------------------------------------------------------------------


def _record(r: Any) -> dict[str, Any]:
    return {"index": r.index, "path": r.path, "y": r.y, "x": r.x, "value": r.value, "box": list(r.box)}


def _name(concepts: Sequence[str], c: Any) -> str:
    return concepts[c] if isinstance(c, int) and not isinstance(c, bool) and 0 <= c < len(concepts) else str(c)


def _sortable(x: float) -> float:
    return x if x == x else float("-inf")  # NaN last


def _write(out_dir: str | os.PathLike, header: Mapping[str, Any], summary: Sequence[str], record: Mapping[str, Any],
           context: Mapping[str, Any], *, failures: Sequence[tuple[str, str]] = (), overwrite: bool = False,
           files: Mapping[str, bytes] | None = None) -> Path:
    """``inside.html`` with the header and ``context``, ``manifest.json`` and ``files``
    (:func:`~seewhy.report_files.write_page_report`)."""
    estimate = header.get("estimate") or {}
    cost = (f"about {format_seconds(estimate['seconds'])} for {estimate['images']} images (one forward to the layer: "
            f"{format_seconds(estimate['seconds_per_image'])} per image)") if estimate else ""
    page = {"figures": [], "maps": [], "units": [], "field": None, "embedding": None, "dissection": None, **context}
    settings = {k: v for k, v in header["settings"].items() if v is not None and v is not False}
    return write_page_report(out_dir, "inside.html", f"seewhy inside {header['kind']}", header, list(summary),
                             record, page, cost=cost, settings=settings, failures=list(failures),
                             overwrite=overwrite, files=files,
                             filters={"setting": lambda v: ",".join(map(str, v)) if isinstance(v, (list, tuple))
                                      else str(v)})
