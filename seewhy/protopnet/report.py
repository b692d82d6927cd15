"""A self-contained HTML report of ProtoPNet explanations ("this looks like that"), plus the same as tables.

:func:`write_protopnet_report` writes into ``out_dir``:

- ``index.html``: local explanations (per input: the class totals, then one row per top prototype: the
  input with a box around the most similar part, the similarity overlay, the prototype's patch, the
  training image it comes from with its box, similarity x weight = points) and/or the global view
  (every prototype: source image, patch, nearest training patches). Images are embedded PNGs, CSS inline.
- ``explanations.json``: every number shown, plus versions and the run information.

A prototype whose source patch is nearly constant (the largest per-channel standard deviation of its pixels, in
[0, 1], below ``constant_std``, 0.02 by default: a background patch, most likely) is flagged in the page
("nearly constant patch (background?)"), in the JSON (``patch_std``, ``nearly_constant``) and the CSVs.
- ``local.csv`` / ``prototypes.csv``: one row per (input, prototype) / per (prototype, neighbour).

Files go to temporary names and are moved into place (``os.replace``); ``index.html`` is removed first and
written last, so an interrupted run never leaves a report that looks complete.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import viz
from ..fileio import jsonable
from ..report_files import prepare_out_dir, versions, write_report_files
from ..report_layout import csv_bytes, enlarge, plural, template_env
from .data import ImageSet
from .explain import Box, LocalExplanation, PrototypeSummary
from .model import ProtoPNet

__all__ = ["CONSTANT_PATCH_STD", "LocalRow", "write_protopnet_report", "REPORT_FILES"]

log = logging.getLogger("seewhy")
REPORT_FILES = ("index.html", "explanations.json", "local.csv", "prototypes.csv")
BOX_COLOUR = (255, 221, 0)
#: A source patch whose pixels (in [0, 1]) vary less than this (largest per-channel std) is "nearly constant".
CONSTANT_PATCH_STD = 0.02


@dataclass(frozen=True)
class LocalRow:
    """One explained input: ``image`` uint8 (S, S, 3) as the model saw it (resized and cropped)."""

    name: str
    image: np.ndarray
    explanation: LocalExplanation
    source: str = ""


def _boxed(img: np.ndarray, box: Box, min_side: int = 160) -> np.ndarray:
    """The image (enlarged for small inputs) with a rectangle around ``box`` = (y0, y1, x0, x1)."""
    big, f = enlarge(np.ascontiguousarray(img), min_side)
    out = big.copy()
    y0, y1, x0, x1 = (int(v) * f for v in box)
    if y1 <= y0 or x1 <= x0:
        return out
    t = max(1, round(min(out.shape[:2]) / 80))
    y1, x1 = min(y1, out.shape[0]), min(x1, out.shape[1])
    out[y0:min(y0 + t, y1), x0:x1] = BOX_COLOUR
    out[max(y1 - t, y0):y1, x0:x1] = BOX_COLOUR
    out[y0:y1, x0:min(x0 + t, x1)] = BOX_COLOUR
    out[y0:y1, max(x1 - t, x0):x1] = BOX_COLOUR
    return out


def _crop(img: np.ndarray, box: Box, min_side: int = 96) -> np.ndarray:
    y0, y1, x0, x1 = (int(v) for v in box)
    patch = img[max(0, y0):max(y0 + 1, y1), max(0, x0):max(x0 + 1, x1)]
    return enlarge(np.ascontiguousarray(patch), min_side)[0]


def _patch_std(img: np.ndarray, box: Box) -> float:
    """The largest per-channel standard deviation, in [0, 1] units, of the pixels of ``img`` (uint8) in ``box``
    (the region :func:`_crop` shows)."""
    y0, y1, x0, x1 = (int(v) for v in box)
    patch = np.asarray(img[max(0, y0):max(y0 + 1, y1), max(0, x0):max(x0 + 1, x1)], dtype=np.float64) / 255.0
    return float(patch.reshape(-1, patch.shape[-1]).std(0).max()) if patch.size else 0.0


def _overlay(img: np.ndarray, heat: torch.Tensor, min_side: int = 160) -> np.ndarray:
    big, _ = enlarge(np.ascontiguousarray(img), min_side)
    h = heat.detach().double()
    h = (h - h.min()) / (h.max() - h.min()).clamp(min=1e-12)
    return viz.overlay(big, h.numpy(), cmap="jet", alpha=0.45)


class _Pictures:
    """Data URIs of the pictures of prototypes' sources, cached (a prototype appears in many rows)."""

    def __init__(self, model: ProtoPNet, data: ImageSet | None) -> None:
        self.model = model
        self.data = data
        self._images: dict[int, np.ndarray] = {}
        self._uris: dict[tuple[str, int], str | None] = {}
        self._stds: dict[int, float | None] = {}

    def image(self, i: int) -> np.ndarray | None:
        if self.data is None or not 0 <= i < len(self.data):
            return None
        if i not in self._images:
            self._images[i] = self.data.image(i)
        return self._images[i]

    def source(self, j: int) -> tuple[str | None, str | None]:
        """(source image with box, prototype patch) of prototype j, or None when unknown."""
        key = ("src", j)
        if key not in self._uris:
            i = int(self.model.prototype_image[j])
            img = self.image(i)
            box = tuple(int(v) for v in self.model.prototype_box[j])
            if img is None or min(box) < 0:
                self._uris[key] = self._uris[("patch", j)] = None
            else:
                self._uris[key] = viz.data_uri(_boxed(img, box))
                self._uris[("patch", j)] = viz.data_uri(_crop(img, box))
        return self._uris[key], self._uris[("patch", j)]

    def patch_std(self, j: int) -> float | None:
        """The pixel standard deviation of prototype j's source patch (None when unknown)."""
        if j not in self._stds:
            img = self.image(int(self.model.prototype_image[j]))
            box = tuple(int(v) for v in self.model.prototype_box[j])
            self._stds[j] = None if img is None or min(box) < 0 else _patch_std(img, box)
        return self._stds[j]

    def name(self, i: int) -> str:
        if self.data is None or not 0 <= i < len(self.data):
            return "unknown" if i < 0 else f"image {i}"
        return self.data.names[i]


def _ordinal(p: float) -> str:
    """95 -> '95th', 1 -> '1st', 99.5 -> '99.5th'."""
    text = f"{p:g}"
    if float(p) != int(p) or 11 <= int(p) % 100 <= 13:
        return f"{text}th"
    return text + {1: "st", 2: "nd", 3: "rd"}.get(int(p) % 10, "th")


def _label(names: Sequence[str] | None, c: int) -> str:
    return str(names[c]) if names and 0 <= c < len(names) else f"class {c}"


def _constancy(pics: _Pictures, j: int, threshold: float) -> dict[str, Any]:
    std = pics.patch_std(j)
    return {"patch_std": std, "nearly_constant": None if std is None else std < threshold}


def _local_context(rows: Sequence[LocalRow], model: ProtoPNet, pics: _Pictures,
                   threshold: float = CONSTANT_PATCH_STD) -> list[dict[str, Any]]:
    out = []
    names = model.class_names
    for r in rows:
        e = r.explanation
        evidence = []
        for ev in e.evidence:
            src, patch = pics.source(ev.prototype)
            i = int(model.prototype_image[ev.prototype])
            evidence.append({
                "prototype": ev.prototype, "label": _label(names, ev.prototype_class),
                "prototype_class": ev.prototype_class,
                "boxed": viz.data_uri(_boxed(r.image, ev.box)), "overlay": viz.data_uri(_overlay(r.image, ev.heat)),
                "patch": patch, "source": src, "source_name": pics.name(i), "similarity": ev.similarity,
                "distance": ev.distance, "weight": ev.weight, "points": ev.points, "box": list(ev.box),
                "location": list(ev.location), **_constancy(pics, ev.prototype, threshold),
            })
        out.append({
            "name": r.name, "source": r.source, "uri": viz.data_uri(enlarge(r.image, 160)[0]),
            "target": e.target, "target_label": _label(names, e.target), "predicted": e.predicted,
            "predicted_label": _label(names, e.predicted), "total": e.total,
            "shown_points": float(sum(ev.points for ev in e.evidence)),
            "other_points": e.total - float(sum(ev.points for ev in e.evidence)),  # shown + other = total
            "others": int(e.points.numel()) - len(e.evidence),
            "probability": float(torch.softmax(e.logits.double(), 0)[e.target]),
            "totals": [{"class": c, "label": lab, "points": v} for c, lab, v in e.class_totals(5)],
            "evidence": evidence,
        })
    return out


def _global_context(protos: Sequence[PrototypeSummary], model: ProtoPNet, pics: _Pictures,
                    threshold: float = CONSTANT_PATCH_STD) -> list[dict[str, Any]]:
    out = []
    names = model.class_names
    for s in protos:
        src, patch = pics.source(s.prototype)
        neighbours = []
        for n in s.neighbours:
            img = pics.image(n.image)
            neighbours.append({
                "image": n.image, "name": pics.name(n.image), "label": _label(names, n.label), "class": n.label,
                "distance": n.distance, "similarity": float(model.similarity(torch.tensor(n.distance))),
                "location": list(n.location), "box": list(n.box),
                "patch": viz.data_uri(_crop(img, n.box)) if img is not None else None,
            })
        out.append({
            "prototype": s.prototype, "class": s.prototype_class, "label": _label(names, s.prototype_class),
            "weight": s.weight, "image": s.image, "image_name": pics.name(s.image), "location": list(s.location),
            "box": list(s.box), "source": src, "patch": patch, "neighbours": neighbours,
            "own_class_neighbours": sum(n.label == s.prototype_class for n in s.neighbours),
            **_constancy(pics, s.prototype, threshold),
        })
    return out


def _strip(items: list[dict[str, Any]], keys: tuple[str, ...]) -> list[dict[str, Any]]:
    """A JSON copy without the embedded pictures."""
    out = []
    for item in items:
        d = {k: v for k, v in item.items() if k not in keys}
        for key in ("evidence", "neighbours"):
            if key in d:
                d[key] = [{k: v for k, v in x.items() if k not in keys} for x in d[key]]
        out.append(d)
    return out


def write_protopnet_report(
    out_dir: str | os.PathLike,
    model: ProtoPNet,
    *,
    local: Sequence[LocalRow] = (),
    prototypes: Sequence[PrototypeSummary] = (),
    train_data: ImageSet | None = None,
    info: Mapping[str, Any] | None = None,
    failures: Sequence[tuple[str, str]] = (),
    title: str = "seewhy ProtoPNet report",
    command: Sequence[str] | None = None,
    overwrite: bool = False,
    percentile: float = 95.0,
    constant_std: float = CONSTANT_PATCH_STD,
) -> Path:
    """Write the report (see the module docstring); returns the path of ``index.html``.

    Args:
        model: the ProtoPNet explained (prototype sources, class names).
        local: explained inputs (:func:`seewhy.protopnet.explain_local` results with their pictures).
        prototypes: the global view (:func:`seewhy.protopnet.explain_global`).
        train_data: the push set, for the pictures of prototypes' sources and neighbours (None: no pictures).
        info: run information shown in the header and stored in the JSON (backbone, checkpoint, accuracy...).
        failures: ``(path, reason)`` of inputs that could not be used.
        percentile: the percentile of the similarity maps the boxes were drawn at (``percentile`` of
            ``explain_local`` / ``explain_global``; a run's is ``Run.percentile``), stated in the report.
        constant_std: a prototype whose source patch has a pixel standard deviation (in [0, 1], the largest
            over channels) below this is flagged "nearly constant patch (background?)"; needs ``train_data``.

    Raises:
        FileExistsError: ``out_dir`` is not empty and ``overwrite`` is False.
        ValueError: nothing to report, or a picture that is not uint8 (S, S, 3).
    """
    _check_arguments(model, local, prototypes, percentile, constant_std)
    out = prepare_out_dir(out_dir, overwrite=overwrite, create=False)
    pics = _Pictures(model, train_data)
    local_ctx = _local_context(local, model, pics, float(constant_std))
    global_ctx = _global_context(prototypes, model, pics, float(constant_std))
    shown = sorted({e["prototype"] for r in local_ctx for e in r["evidence"]} | {p["prototype"] for p in global_ctx})
    constant = [j for j in shown if pics.patch_std(j) is not None and pics.patch_std(j) < constant_std]
    if constant:
        log.warning("%d of the %d prototypes shown sit on a nearly constant patch (pixel std < %g; background?): "
                    "%s", len(constant), len(shown), constant_std, ", ".join(map(str, constant)))
    created = _dt.datetime.now(_dt.timezone.utc).astimezone().isoformat(timespec="seconds")
    version_info = versions()
    cmd = list(command) if command is not None else list(sys.argv)
    info = dict(info or {})
    pictures = ("uri", "boxed", "overlay", "patch", "source")
    record = {
        "title": title, "created": created, "command": cmd, "versions": version_info, "info": jsonable(info),
        "model": jsonable(model.config()), "box_percentile": float(percentile),
        "prototypes_shown": shown, "constant_patch_std": float(constant_std), "nearly_constant_prototypes": constant,
        "local": jsonable(_strip(local_ctx, pictures)),
        "prototypes": jsonable(_strip(global_ctx, pictures)),
        "failures": [{"path": str(p), "reason": str(r)} for p, r in failures],
    }
    html = _render(title=title, created=created, versions=version_info, info=info, cmd=cmd, local=local_ctx,
                   prototypes=global_ctx, failures=[(str(p), str(r)) for p, r in failures],
                   n_prototypes=model.num_prototypes, pushed=model.pushed, has_pictures=train_data is not None,
                   percentile=_ordinal(float(percentile)), constant_std=f"{constant_std:g}", constant=constant,
                   summary=_summary(local_ctx, failures, shown, constant, model.num_prototypes))
    files = {"explanations.json": json.dumps(record, indent=2, allow_nan=False).encode("utf-8"),
             **_csv_files(local_ctx, global_ctx)}
    return write_report_files(out, files, html)


def _check_arguments(model: ProtoPNet, local: Sequence[LocalRow], prototypes: Sequence[PrototypeSummary],
                     percentile: float, constant_std: float) -> None:
    """Raise on what :func:`write_protopnet_report` cannot report (before anything is written)."""
    if not isinstance(model, ProtoPNet):
        raise TypeError(f"model must be a ProtoPNet, got {type(model).__name__}")
    if not local and not prototypes:
        raise ValueError("nothing to report: pass local explanations, prototypes, or both")
    if isinstance(percentile, bool) or not isinstance(percentile, (int, float)) or not 0 <= percentile <= 100:
        raise ValueError(f"percentile must be a number in [0, 100], got {percentile!r}")
    if isinstance(constant_std, bool) or not isinstance(constant_std, (int, float)) or not constant_std >= 0:
        raise ValueError(f"constant_std must be a number >= 0 (a pixel std in [0, 1]), got {constant_std!r}")
    for r in local:
        arr = np.asarray(r.image)
        if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
            raise ValueError(f"image {r.name!r} must be uint8 (H, W, 3), got {arr.dtype} {arr.shape}")


def _csv_files(local_ctx: Sequence[Mapping[str, Any]], global_ctx: Sequence[Mapping[str, Any]]) -> dict[str, bytes]:
    """``local.csv`` (a row per input and prototype) and ``prototypes.csv`` (a row per prototype and neighbour)."""
    local_csv = csv_bytes(
        ["image", "target", "target_label", "rank", "prototype", "prototype_class", "similarity", "distance",
         "weight", "points", "y0", "y1", "x0", "x1", "total", "nearly_constant"],
        [[r["name"], r["target"], r["target_label"], k + 1, e["prototype"], e["prototype_class"], e["similarity"],
          e["distance"], e["weight"], e["points"], *e["box"], r["total"], _flag(e["nearly_constant"])]
         for r in local_ctx for k, e in enumerate(r["evidence"])],
    )
    protos_csv = csv_bytes(
        ["prototype", "class", "label", "weight", "source_image", "source_name", "h", "w", "y0", "y1", "x0", "x1",
         "rank", "neighbour_image", "neighbour_name", "neighbour_class", "distance", "patch_std", "nearly_constant"],
        [[p["prototype"], p["class"], p["label"], p["weight"], p["image"], p["image_name"], *p["location"],
          *p["box"], k + 1, n["image"], n["name"], n["class"], n["distance"],
          "" if p["patch_std"] is None else p["patch_std"], _flag(p["nearly_constant"])]
         for p in global_ctx for k, n in enumerate(p["neighbours"])],
    )
    return {"local.csv": local_csv, "prototypes.csv": protos_csv}


def _flag(value: bool | None) -> str:
    return "" if value is None else str(bool(value)).lower()


def _summary(local: Sequence[Mapping[str, Any]], failures: Sequence[Any], shown: Sequence[int],
             constant: Sequence[int], n_prototypes: int) -> list[str]:
    """The header's counts, only those that apply: inputs explained (and failed), prototypes shown, flagged."""
    out = []
    if local or failures:
        out.append(f"{plural(len(local), 'input')} explained")
    if failures:
        out.append(f"{plural(len(failures), 'input')} could not be used")
    out.append(f"{len(shown)} of {plural(n_prototypes, 'prototype')} shown")
    if constant:
        out.append(f"{len(constant)} on a nearly constant patch (background?)")
    return out


def _signed(x: float) -> str:
    """'+33.09' / '-12.71' (4 significant digits, the sign always written)."""
    return f"{x:+.4g}"


def _render(**context: Any) -> str:
    env = template_env()
    env.filters["signed"] = _signed
    return env.get_template("protopnet.html").render(**context)
