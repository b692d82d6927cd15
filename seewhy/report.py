"""Self-contained HTML reports of explain runs, with a JSON manifest and (optionally) the raw attributions.

:func:`write_explain_report` writes into ``out_dir``:

- ``index.html``: a header (model, target, settings, versions, command, colour scales), a contents list, then
  one section per image: the input as the model saw it (the preprocessed crop), its top-5 predictions (softmax
  of the model output), and one card per method, grouped by method family (:data:`seewhy.core.FAMILIES`) in a
  grid that wraps. A card shows the heatmap overlay with the explained target, its score and probability,
  extras such as the integrated-gradients completeness gap (or, in the evaluate report, the image's metric
  scores), the time per image, and an "empty map" warning where the rectified heatmap is (nearly) zero. With
  several class ranks (``target="top3"``) a card shows one overlay per class. Then the methods with their
  parameters, the tables, the figures, the warnings and the failures. Overlays and inputs are embedded as JPEG,
  colour scales and figures as PNG, the CSS is inline: the file opens offline, alone, in any browser.
- ``manifest.json``: everything needed to reproduce and audit the run: model and preprocessing, target,
  methods with their parameters, layer, heatmap steps, seeds, timings and warnings, images with their
  predictions and per-image results (a list per class rank when there are several), failures, versions of
  seewhy/torch/numpy/python, the command line.
- ``attributions.npz`` (only with ``save_attributions=True``; ``manifest["attributions"]`` is null without it):
  the raw, signed attributions, one array per (method, image) under the key ``"<method>/<image key>"`` (e.g.
  ``"saliency/chelsea"``), or ``"<method>/<image key>/<rank>"`` for a method with several class ranks; shape
  (C,h,w) as the method returned it for that image and in its dtype (bfloat16/float16 are stored as float32).
  Image keys are the image names made unique (``cat``, ``cat-2``); ``manifest["images"][i]["key"]`` maps them
  back. Per-image arrays, not one stack per method, so images of different sizes fit and one map loads without
  the others: ``np.load(path)["integrated_gradients/chelsea"]``.

Each file is written to a temporary name in ``out_dir`` and moved into place with ``os.replace``. A
previous ``index.html`` is removed first and the new one is written last, so an interrupted run never
leaves a report that looks complete. The data passed in is plain (uint8 images, model outputs,
:class:`~seewhy.core.Explanation` objects, dicts); the page is laid out in :mod:`seewhy.report_layout`.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import re
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from torch import Tensor

from . import report_layout as layout
from . import viz
from .core import METHODS, Explanation, get_method
from .fileio import jsonable
from .report_files import prepare_out_dir, versions, write_report_files
from .report_layout import template_env
from .runner import Figure, MethodRun, Table

__all__ = [
    "FILES",
    "Figure",
    "ImageRow",
    "MethodRun",
    "Table",
    "prepare_out_dir",
    "top_predictions",
    "template_env",
    "write_explain_report",
    "write_report_files",
]

FILES = ("index.html", "manifest.json", "attributions.npz")
MANIFEST_VERSION = 1
#: extras that are not per-image numbers nor batch records: shown as warnings or recorded apart
_RESERVED_EXTRAS = ("seed", "warnings", "empty_heatmap")


@dataclass(frozen=True)
class ImageRow:
    """One input image: ``image`` is uint8 (H,W,3), the preprocessed crop as the model saw it;
    ``output`` the model's raw output (K,) for it (logits, for the top-5 table), or None."""

    name: str
    image: np.ndarray
    source: str = ""
    output: Tensor | np.ndarray | None = None


@dataclass
class _Prediction:
    index: int
    label: str
    prob: float


def top_predictions(
    output: Tensor | np.ndarray, class_names: Sequence[str] | None = None, k: int = 5
) -> list[tuple[int, str, float]]:
    """The ``k`` most probable classes of one output row (K,) as ``(index, label, softmax probability)``."""
    probs = _softmax(output)
    values, idx = probs.topk(min(k, probs.numel()))
    return [(int(i), _class_label(int(i), class_names), float(v)) for v, i in zip(values, idx, strict=True)]


def write_explain_report(
    out_dir: str | os.PathLike,
    images: Sequence[ImageRow],
    runs: Sequence[MethodRun],
    *,
    model: Mapping[str, Any],
    target: str = "top1",
    preprocessing: Mapping[str, Any] | None = None,
    failures: Sequence[tuple[str, str]] = (),
    class_names: Sequence[str] | None = None,
    settings: Mapping[str, Any] | None = None,
    tables: Sequence[Table] = (),
    figures: Sequence[Figure] = (),
    files: Mapping[str, bytes] | None = None,
    command: Sequence[str] | None = None,
    title: str = "seewhy report",
    overwrite: bool = False,
    save_attributions: bool = True,
) -> Path:
    """Write ``index.html``, ``manifest.json`` and ``attributions.npz`` into ``out_dir``; return the HTML path.

    Args:
        images: the images that were explained, in batch order.
        runs: one :class:`MethodRun` per method; the batches of each cover ``images`` in order.
        model: shown in the header and stored in the manifest; ``model["name"]`` is required, other keys
            (spec, weights, description, preprocessing, ...) are recorded as given.
        target: the target spec as the user gave it ("top1", "top3", "207", "tabby").
        preprocessing: how the images were turned into inputs (resize, crop, mean, std, ...).
        failures: ``(path, reason)`` for the inputs that could not be loaded.
        class_names: labels for the model's classes (default: those carried by the explanations).
        settings: other run settings for the record (device, batch size, seed, ...).
        tables: extra tables (metrics) shown after the methods and stored in the manifest; each registered method
            of a successful run adds its own after them (:meth:`seewhy.core.Method.report_tables`).
        figures: pictures (plots, grids of maps) shown after the tables.
        files: more files to write next to the report, ``{name: content}`` (e.g. ``results.csv``), atomically
            and before ``index.html``; listed in the manifest.
        command: the command line (default ``sys.argv``).
        overwrite: replace a report in a non-empty ``out_dir``.
        save_attributions: write the raw attributions to ``attributions.npz`` (the manifest's ``attributions``
            is null without them).

    Raises:
        FileExistsError: ``out_dir`` is not empty and ``overwrite`` is False.
        ValueError: the explanations do not match the images (count, batch sizes, class ranks).
    """
    if "name" not in model:
        raise ValueError("model must hold at least a 'name' entry, e.g. {'name': 'efficientnet_lite0'}")
    batches = _check_runs(images, runs)
    for name in files or {}:
        if Path(name).name != name or name in FILES:
            raise ValueError(f"extra file name {name!r} must be a plain file name other than the report's own")
    out = prepare_out_dir(out_dir, overwrite=overwrite, create=False)
    keys = _unique_keys([im.name for im in images])
    names = class_names if class_names is not None else _class_names(batches.values())
    tables = [*tables, *_method_tables(runs, batches, keys)]
    probs = [_softmax(im.output) if im.output is not None else None for im in images]

    views, cards, manifest_methods, arrays = _render_methods(runs, batches, images, keys, probs, names)
    predictions = [
        [_Prediction(*p) for p in top_predictions(im.output, names)] if im.output is not None else []
        for im in images
    ]
    header = {"title": title, "created": _dt.datetime.now(_dt.timezone.utc).astimezone().isoformat(timespec="seconds"),
              "versions": versions(), "cmd": list(command) if command is not None else list(sys.argv)}
    manifest = _manifest(header, images, keys, predictions, manifest_methods, views, arrays, model=model,
                         target=target, preprocessing=preprocessing, settings=settings, failures=failures,
                         tables=tables, figures=figures, files=files, save_attributions=save_attributions)
    html = layout.render_page(
        **header, model=dict(model), target=target,
        settings={**({"preprocessing": preprocessing} if preprocessing else {}), **(settings or {})},
        images=[{"name": im.name, "key": key, "source": im.source, "image": im.image, "predictions": preds}
                for im, key, preds in zip(images, keys, predictions, strict=True)],
        cards=cards, methods=views, failures=[(str(p), str(r)) for p, r in failures],
        method_failures=[(r.name, r.error or "no result") for r in runs if not r.ok], tables=list(tables),
        figures=list(figures), attributions_file="attributions.npz" if save_attributions else None,
    )
    return _write(out, manifest, html, files, arrays if save_attributions else None)


def _write(out: Path, manifest: Mapping[str, Any], html: str, files: Mapping[str, bytes] | None,
           arrays: Mapping[str, np.ndarray] | None) -> Path:
    """The extra files, ``attributions.npz`` (unless ``arrays`` is None), the manifest, then ``index.html``."""
    manifest_bytes = json.dumps(manifest, indent=2, allow_nan=False).encode()  # fails before anything is written
    contents: dict[str, bytes | Callable[[BinaryIO], Any]] = dict(files or {})
    if arrays is not None:
        contents["attributions.npz"] = lambda f: np.savez(f, **arrays)
    contents["manifest.json"] = manifest_bytes
    if arrays is None:
        (out / "attributions.npz").unlink(missing_ok=True)  # an old one would not match the new manifest
    return write_report_files(out, contents, html)


def _manifest(
    header: Mapping[str, Any],
    images: Sequence[ImageRow],
    keys: Sequence[str],
    predictions: Sequence[Sequence[_Prediction]],
    methods: Sequence[Mapping[str, Any]],
    views: Sequence[layout.MethodView],
    arrays: Mapping[str, np.ndarray],
    *,
    model: Mapping[str, Any],
    target: str,
    preprocessing: Mapping[str, Any] | None,
    settings: Mapping[str, Any] | None,
    failures: Sequence[tuple[str, str]],
    tables: Sequence[Table],
    figures: Sequence[Figure],
    files: Mapping[str, bytes] | None,
    save_attributions: bool,
) -> dict[str, Any]:
    """The content of ``manifest.json`` (see the module docstring)."""
    ranked = any(v.ranks > 1 for v in views)
    return {
        "seewhy_report": MANIFEST_VERSION,
        "title": header["title"],
        "created": header["created"],
        "command": header["cmd"],
        "versions": header["versions"],
        "model": jsonable(dict(model)),
        "target": target,
        "preprocessing": jsonable(dict(preprocessing or {})),
        "settings": jsonable(dict(settings or {})),
        "images": [
            {
                "name": im.name,
                "key": key,
                "source": im.source,
                "size": list(np.asarray(im.image).shape[:2]),
                "top5": [{"index": p.index, "label": p.label, "prob": p.prob} for p in preds],
            }
            for im, key, preds in zip(images, keys, predictions, strict=True)
        ],
        "methods": list(methods),
        "warnings": [{"method": v.name, "message": w} for v in views for w in v.warnings],
        "failures": [{"path": str(p), "reason": str(r)} for p, r in failures],
        "tables": [jsonable({"title": t.title, "columns": t.columns, "rows": t.rows, "note": t.note})
                   for t in tables],
        "figures": [{"title": f.title, "caption": f.caption} for f in figures],
        "files": sorted(files or {}),
        "attributions": {
            "file": "attributions.npz",
            "key": "<method>/<image key>" + ("[/<rank> for the methods with several class ranks]" if ranked else ""),
            "arrays": {k: {"shape": list(a.shape), "dtype": str(a.dtype)} for k, a in arrays.items()},
        } if save_attributions else None,
    }


def _method_tables(runs: Sequence[MethodRun], batches: Mapping[str, Sequence[tuple[Explanation, ...]]],
                   keys: Sequence[str]) -> list[Table]:
    """The tables each registered method of a successful run adds (:meth:`seewhy.core.Method.report_tables`)."""
    return [t for run in runs if run.ok and run.name in METHODS
            for t in get_method(run.name).report_tables(batches[run.name], keys)]


# -- per method ----------------------------------------------------------------------------------------


def _render_methods(
    runs: Sequence[MethodRun],
    batches: Mapping[str, Sequence[tuple[Explanation, ...]]],
    images: Sequence[ImageRow],
    keys: Sequence[str],
    probs: Sequence[Tensor | None],
    names: Sequence[str] | None,
) -> tuple[list[layout.MethodView], dict[str, list[layout.Card]], list[dict[str, Any]], dict[str, np.ndarray]]:
    """The methods table's rows, each image's cards, the manifest's method records, and the raw arrays."""
    arrays: dict[str, np.ndarray] = {}
    views: list[layout.MethodView] = []
    cards: dict[str, list[layout.Card]] = {key: [] for key in keys}
    records: list[dict[str, Any]] = []
    for run in runs:
        if not run.ok:
            records.append({"name": run.name, "error": run.error or "no result"})
            continue
        view, method_cards, record = _render_method(run, batches[run.name], images, keys, probs, names, arrays)
        views.append(view)
        for key, card in zip(keys, method_cards, strict=True):
            cards[key].append(card)
        records.append(record)
    return views, cards, records, arrays


def _render_method(
    run: MethodRun,
    batches: Sequence[tuple[Explanation, ...]],
    images: Sequence[ImageRow],
    keys: Sequence[str],
    probs: Sequence[Tensor | None],
    names: Sequence[str] | None,
    arrays: dict[str, np.ndarray],
) -> tuple[layout.MethodView, list[layout.Card], dict[str, Any]]:
    """A method's row of the methods table, its card on each image, and its manifest record; fills ``arrays``."""
    k = len(batches[0])
    steps: dict[str, Any] | None = None
    cards: list[layout.Card] = []
    per_image: dict[str, Any] = {}
    records: list[dict[str, Any]] = []
    warnings: list[str] = []
    empties: list[str] = []
    i = 0
    for b, ranks in enumerate(batches):
        n = ranks[0].attributions.shape[0]
        seconds = float(run.seconds[b]) if b < len(run.seconds) else None
        batch_warnings = list(dict.fromkeys(str(w) for e in ranks for w in e.extras.get("warnings") or ()))
        warnings += [w for w in batch_warnings if w not in warnings]
        maps: list[list[layout.MapView]] = [[] for _ in range(n)]
        entries: list[list[dict[str, Any]]] = [[] for _ in range(n)]
        batch_extras = []
        for r, exp in enumerate(ranks):
            rank = _render_rank(run.name, exp, r, k, images[i : i + n], keys[i : i + n], probs[i : i + n], names,
                                arrays)
            steps = steps or rank.steps
            for j in range(n):
                maps[j].append(rank.maps[j])
                entries[j].append(rank.entries[j])
            batch_extras.append(rank.extras)
            empties += rank.empties
        for j in range(n):
            per_image[keys[i + j]] = entries[j] if k > 1 else entries[j][0]
            cards.append(layout.Card(run.name, keys[i + j], maps[j], None if seconds is None else seconds / n,
                                     batch_warnings))
        records.append({
            "images": list(keys[i : i + n]),
            "seconds": seconds,
            "seed": jsonable(ranks[0].extras.get("seed")),
            **({"extras": batch_extras[0] if k == 1 else batch_extras} if any(batch_extras) else {}),
        })
        i += n
    view, record = _method_record(run, batches[0][0], k, len(images), steps, warnings, empties, records)
    return view, cards, {**record, "per_image": per_image}


@dataclass
class _Rank:
    """One class rank of one batch, rendered: the heatmap steps, a map and a manifest entry per image, the
    batch-level extras, and the keys of the images whose map is empty."""

    steps: dict[str, Any]
    maps: list[layout.MapView]
    entries: list[dict[str, Any]]
    extras: dict[str, Any]
    empties: list[str]


def _render_rank(method: str, exp: Explanation, r: int, k: int, images: Sequence[ImageRow], keys: Sequence[str],
                 probs: Sequence[Tensor | None], names: Sequence[str] | None, arrays: dict[str, np.ndarray]) -> _Rank:
    """Class rank ``r`` (of ``k``) of one batch of ``images``: overlays, manifest entries; its raw maps into
    ``arrays``."""
    n = len(images)
    size = tuple(np.asarray(images[0].image).shape[:2])
    steps = exp.heatmap_steps(size)
    signed = steps.get("sign") == "all"
    heat = exp.heatmap(size).detach().float().cpu().numpy()[:, 0]
    attr = exp.attributions.detach().cpu()
    attr = (attr.float() if attr.dtype in (torch.bfloat16, torch.float16) else attr).numpy()
    empty = _empty_flags(method, exp, n)
    suffix = f"/{r}" if k > 1 else ""
    out = _Rank(steps, [], [], {key: jsonable(v) for key, v in exp.extras.items()
                                if key not in _RESERVED_EXTRAS and not _per_sample(v, n)}, [])
    for j in range(n):
        arrays[f"{method}/{keys[j]}{suffix}"] = attr[j]
        extras = {x: float(v.reshape(-1)[j]) for x, v in exp.extras.items()
                  if x not in _RESERVED_EXTRAS and _per_sample(v, n)}
        score = float(exp.scores[j])
        target = int(exp.targets[j]) if exp.targets is not None else None
        p = probs[j]
        prob = float(p[target]) if p is not None and target is not None and 0 <= target < p.numel() else None
        label = _target_label(exp, j, names)
        overlay = viz.overlay(images[j].image, heat[j], signed=signed)
        out.maps.append(layout.MapView(layout.jpeg_uri(overlay), label, score, prob, r, bool(empty[j]),
                                       layout.notes(extras, score)))
        out.entries.append({**({"rank": r} if k > 1 else {}), "target": target, "label": label,
                            "score": score, "prob": prob,
                            **{x: None if math.isnan(v) else v for x, v in extras.items()},
                            **({"empty_heatmap": bool(empty[j])} if "empty_heatmap" in exp.extras else {})})
        if empty[j]:
            out.empties.append(keys[j] + suffix)
    return out


def _method_record(run: MethodRun, first: Explanation, k: int, n_images: int, steps: dict[str, Any] | None,
                   warnings: list[str], empties: list[str], records: list[dict[str, Any]]
                   ) -> tuple[layout.MethodView, dict[str, Any]]:
    """A method's row of the methods table and its manifest record (but its per-image entries)."""
    total = float(sum(run.seconds))
    view = layout.MethodView(
        name=run.name, family=layout.family_of(run.name), params=layout.short_params(first.params),
        layer=first.layer, per_image=total / max(1, n_images), signed=(steps or {}).get("sign") == "all",
        steps=steps or {}, ranks=k, warnings=warnings,
    )
    record = {
        "name": run.name,
        "kind": first.kind,
        "params": jsonable(first.params),
        "layer": first.layer,
        "heatmap_steps": jsonable(steps),
        "seconds": total,
        "seconds_per_image": total / max(1, n_images),
        "seeds": [bt["seed"] for bt in records],
        "batches": records,
        **({"ranks": k} if k > 1 else {}),
        **({"warnings": warnings} if warnings else {}),
        **({"empty_heatmaps": empties} if empties else {}),
    }
    return view, record


def _empty_flags(method: str, exp: Explanation, n: int) -> list[bool]:
    """``exp.extras["empty_heatmap"]`` as n booleans (all False when absent)."""
    flags = exp.extras.get("empty_heatmap")
    if flags is None:
        return [False] * n
    arr = flags.detach().cpu().numpy() if isinstance(flags, Tensor) else np.asarray(flags)
    if arr.shape != (n,) or arr.dtype.kind not in "bui":
        raise ValueError(f"method {method!r}: extras['empty_heatmap'] must be a bool tensor of shape ({n},), one flag "
                         f"per image of the batch; got {arr.dtype} {arr.shape}")
    return [bool(x) for x in arr]


# -- helpers -------------------------------------------------------------------------------------------


def _check_runs(images: Sequence[ImageRow], runs: Sequence[MethodRun]) -> dict[str, list[tuple[Explanation, ...]]]:
    """The batches of each successful run, checked against the images."""
    if not images:
        raise ValueError("no image to report; at least one image must have been explained")
    for im in images:
        arr = np.asarray(im.image)
        if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
            raise ValueError(f"image {im.name!r} must be uint8 (H,W,3), got {arr.dtype} {arr.shape}")
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        raise ValueError(f"each method may appear once in a report; got {names}")
    out = {}
    for run in runs:
        if not run.ok:
            continue
        batches = run.batches()
        n = sum(int(ranks[0].attributions.shape[0]) for ranks in batches)
        if n != len(images):
            raise ValueError(f"method {run.name!r} explains {n} images, the report has {len(images)}")
        if run.seconds and len(run.seconds) != len(batches):
            raise ValueError(f"method {run.name!r}: {len(run.seconds)} timings for {len(batches)} batches")
        out[run.name] = batches
    return out


def _unique_keys(names: Sequence[str]) -> list[str]:
    """File- and key-safe, unique image keys: ``cat``, ``cat-2``, ..."""
    seen: dict[str, int] = {}
    keys = []
    for name in names:
        base = re.sub(r"[^A-Za-z0-9._-]+", "_", str(name)).strip("._") or "image"
        key = base
        while key in seen:
            seen[base] += 1
            key = f"{base}-{seen[base]}"
        seen.setdefault(key, 1)
        keys.append(key)
    return keys


def _softmax(output: Tensor | np.ndarray) -> Tensor:
    """Softmax of one output row, float64 on the CPU."""
    logits = output.detach() if isinstance(output, Tensor) else torch.as_tensor(np.asarray(output))
    return torch.softmax(logits.cpu().double().flatten(), dim=0)


def _class_names(batches: Iterable[Sequence[tuple[Explanation, ...]]]) -> Sequence[str] | None:
    for run in batches:
        for ranks in run:
            for exp in ranks:
                if exp.class_names:
                    return exp.class_names
    return None


def _class_label(i: int, class_names: Sequence[str] | None) -> str:
    return str(class_names[i]) if class_names and 0 <= i < len(class_names) else f"class {i}"


def _target_label(exp: Explanation, j: int, names: Sequence[str] | None) -> str:
    if exp.targets is None:
        return "custom target"
    t = int(exp.targets[j])
    return f"{_class_label(t, names)} ({t})" if names else f"class {t}"


def _per_sample(v: Any, n: int) -> bool:
    return isinstance(v, Tensor) and v.ndim >= 1 and v.shape[0] == n and v.numel() == n and v.is_floating_point()
