"""Self-contained HTML reports of explain runs, with a JSON manifest and the raw attributions.

:func:`write_explain_report` writes three files into ``out_dir``:

- ``index.html``: one row per image, one column per method. The input as the model saw it (the
  preprocessed crop), its top-5 predictions (softmax of the model output), and per method the heatmap
  overlay with the explained target, its score, and extras such as the integrated-gradients completeness
  gap. Column headers give each method's parameters and wall time per image. Every image is an embedded
  base64 PNG and the CSS is inline: the file opens offline, alone, in any browser.
- ``manifest.json``: everything needed to reproduce and audit the run: model and preprocessing, target,
  methods with their parameters, layer, heatmap steps, seeds and timings, images with their predictions
  and per-image results, failures, versions of seewhy/torch/numpy/python, the command line.
- ``attributions.npz``: the raw, signed attributions, one array per (method, image) under the key
  ``"<method>/<image key>"`` (e.g. ``"saliency/chelsea"``), shape (C,h,w) as the method returned it for
  that image and in its dtype (bfloat16/float16 are stored as float32). Image keys are the image names
  made unique (``cat``, ``cat-2``); ``manifest["images"][i]["key"]`` maps them back. Per-image arrays,
  not one stack per method, so images of different sizes fit and one map loads without the others:
  ``np.load(path)["integrated_gradients/chelsea"]``.

Each file is written to a temporary name in ``out_dir`` and moved into place with ``os.replace``. A
previous ``index.html`` is removed first and the new one is written last, so an interrupted run never
leaves a report that looks complete. The data passed in is plain (uint8 images, model outputs,
:class:`~seewhy.core.Explanation` objects, dicts); the rendering happens here and in :mod:`seewhy.viz`.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import math
import os
import platform
import re
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from torch import Tensor

from .core import Explanation

__all__ = [
    "FILES",
    "ImageRow",
    "MethodRun",
    "Table",
    "prepare_out_dir",
    "top_predictions",
    "write_explain_report",
]

FILES = ("index.html", "manifest.json", "attributions.npz")
MANIFEST_VERSION = 1


@dataclass(frozen=True)
class ImageRow:
    """One input image: ``image`` is uint8 (H,W,3), the preprocessed crop as the model saw it;
    ``output`` the model's raw output (K,) for it (logits, for the top-5 table), or None."""

    name: str
    image: np.ndarray
    source: str = ""
    output: Tensor | np.ndarray | None = None


@dataclass(frozen=True)
class MethodRun:
    """One method over all images: its explanations, one per batch and in image order, and the wall time
    of each batch in seconds. A method that failed has no explanations and an ``error`` message."""

    name: str
    explanations: Sequence[Explanation] = ()
    seconds: Sequence[float] = ()
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and bool(self.explanations)


@dataclass(frozen=True)
class Table:
    """A plain table for the report (metrics, for instance): cells are numbers or strings."""

    title: str
    columns: Sequence[str]
    rows: Sequence[Sequence[Any]]
    note: str = ""


@dataclass(frozen=True)
class Figure:
    """A picture for the report (a plot, a grid of maps): uint8 (H,W,3), embedded as PNG with a caption."""

    title: str
    image: np.ndarray
    caption: str = ""


@dataclass
class _Prediction:
    index: int
    label: str
    prob: float


@dataclass
class _Cell:
    uri: str
    label: str
    score: float
    prob: float | None
    notes: list[tuple[str, str]] = field(default_factory=list)


def prepare_out_dir(out_dir: str | os.PathLike, *, overwrite: bool = False, create: bool = True) -> Path:
    """Check that a report may be written to ``out_dir`` and create it (unless ``create`` is False).

    An existing non-empty folder is refused unless ``overwrite``; the CLI checks this before any work.

    Raises:
        FileExistsError: ``out_dir`` is not empty and ``overwrite`` is False, or it is a file.
    """
    path = Path(out_dir)
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"output path {str(path)!r} is a file; choose a folder name")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise FileExistsError(
            f"output folder {str(path)!r} exists and is not empty; pass --overwrite (overwrite=True in Python) "
            "to replace the report in it, or choose another folder"
        )
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return path


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
) -> Path:
    """Write ``index.html``, ``manifest.json`` and ``attributions.npz`` into ``out_dir``; return the HTML path.

    Args:
        images: the images that were explained, in batch order.
        runs: one :class:`MethodRun` per method; the batches of each cover ``images`` in order.
        model: shown in the header and stored in the manifest; ``model["name"]`` is required, other keys
            (spec, weights, description, preprocessing, ...) are recorded as given.
        target: the target spec as the user gave it ("top1", "207", "tabby").
        preprocessing: how the images were turned into inputs (resize, crop, mean, std, ...).
        failures: ``(path, reason)`` for the inputs that could not be loaded.
        class_names: labels for the model's classes (default: those carried by the explanations).
        settings: other run settings for the record (device, batch size, seed, ...).
        tables: extra tables (metrics) shown below the images and stored in the manifest.
        figures: pictures (plots, grids of maps) shown after the tables.
        files: more files to write next to the report, ``{name: content}`` (e.g. ``results.csv``), atomically
            and before ``index.html``; listed in the manifest.
        command: the command line (default ``sys.argv``).
        overwrite: replace a report in a non-empty ``out_dir``.

    Raises:
        FileExistsError: ``out_dir`` is not empty and ``overwrite`` is False.
        ValueError: the explanations do not match the images (count, batch sizes).
    """
    if "name" not in model:
        raise ValueError("model must hold at least a 'name' entry, e.g. {'name': 'efficientnet_lite0'}")
    _check_runs(images, runs)
    for name in files or {}:
        if Path(name).name != name or name in ("index.html", "manifest.json", "attributions.npz"):
            raise ValueError(f"extra file name {name!r} must be a plain file name other than the report's own")
    out = prepare_out_dir(out_dir, overwrite=overwrite, create=False)
    keys = _unique_keys([im.name for im in images])
    names = class_names if class_names is not None else _class_names(runs)
    tables = [*tables, *(t for run in runs if run.ok for t in _ledger_tables(run, keys))]
    probs = [_softmax(im.output) if im.output is not None else None for im in images]

    arrays: dict[str, np.ndarray] = {}
    columns: list[dict[str, Any]] = []
    cells: dict[str, list[_Cell]] = {}
    manifest_methods: list[dict[str, Any]] = []
    for run in runs:
        if not run.ok:
            manifest_methods.append({"name": run.name, "error": run.error or "no result"})
            continue
        column, method_cells, record = _render_method(run, images, keys, probs, names, arrays)
        columns.append(column)
        cells[run.name] = method_cells
        manifest_methods.append(record)

    predictions = [
        [_Prediction(*p) for p in top_predictions(im.output, names)] if im.output is not None else []
        for im in images
    ]
    created = _dt.datetime.now(_dt.timezone.utc).astimezone().isoformat(timespec="seconds")
    versions = _versions()
    cmd = list(command) if command is not None else list(sys.argv)
    manifest = {
        "seewhy_report": MANIFEST_VERSION,
        "title": title,
        "created": created,
        "command": cmd,
        "versions": versions,
        "model": _jsonable(dict(model)),
        "target": target,
        "preprocessing": _jsonable(dict(preprocessing or {})),
        "settings": _jsonable(dict(settings or {})),
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
        "methods": manifest_methods,
        "failures": [{"path": str(p), "reason": str(r)} for p, r in failures],
        "tables": [_jsonable({"title": t.title, "columns": t.columns, "rows": t.rows, "note": t.note})
                   for t in tables],
        "figures": [{"title": f.title, "caption": f.caption} for f in figures],
        "files": sorted(files or {}),
        "attributions": {
            "file": "attributions.npz",
            "key": "<method>/<image key>",
            "arrays": {k: {"shape": list(a.shape), "dtype": str(a.dtype)} for k, a in arrays.items()},
        },
    }

    html = _render_html(
        title=title,
        created=created,
        versions=versions,
        model=dict(model),
        target=target,
        settings={**({"preprocessing": preprocessing} if preprocessing else {}), **(settings or {})},
        cmd=cmd,
        columns=columns,
        rows=[
            {"name": im.name, "key": key, "source": im.source, "uri": _data_uri(im.image), "predictions": preds,
             "cells": [cells[c["name"]][i] for c in columns]}
            for i, (im, key, preds) in enumerate(zip(images, keys, predictions, strict=True))
        ],
        failures=[(str(p), str(r)) for p, r in failures],
        method_failures=[(r.name, r.error or "no result") for r in runs if not r.ok],
        tables=list(tables),
        figures=[{"title": f.title, "caption": f.caption, "uri": _data_uri(f.image)} for f in figures],
        legends=_legends(columns),
    )

    manifest_bytes = json.dumps(manifest, indent=2, allow_nan=False).encode()  # fails before anything is written
    contents: dict[str, bytes | Callable[[BinaryIO], Any]] = {
        **(files or {}), "attributions.npz": lambda f: np.savez(f, **arrays), "manifest.json": manifest_bytes,
    }
    index = write_report_files(out, contents, html)
    return index


def write_report_files(out: Path, files: Mapping[str, bytes | Callable[[BinaryIO], Any]], html: str) -> Path:
    """Write a report's files into ``out`` and its ``index.html`` last; returns the index's path.

    Each value is the content or a function that writes it to a binary file. Every file is written atomically;
    an old ``index.html`` is removed first (an old report must not look complete next to new data), and when
    a write fails (disk full, interrupted) the files written so far, and ``out`` if this call created it, are
    removed again: no partial report is left behind.
    """
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    index = out / "index.html"
    index.unlink(missing_ok=True)
    written: list[Path] = []
    try:
        for name, content in {**files, "index.html": html.encode("utf-8")}.items():
            with _atomic(out / name) as f:
                if callable(content):
                    content(f)
                else:
                    f.write(content)
            written.append(out / name)
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        if created:
            with contextlib.suppress(OSError):
                out.rmdir()
        raise
    return index


# -- rendering -----------------------------------------------------------------------------------------


def _render_method(
    run: MethodRun,
    images: Sequence[ImageRow],
    keys: Sequence[str],
    probs: Sequence[Tensor | None],
    names: Sequence[str] | None,
    arrays: dict[str, np.ndarray],
) -> tuple[dict[str, Any], list[_Cell], dict[str, Any]]:
    """One column of the table, its cells, and its manifest record; fills ``arrays``."""
    from . import viz

    first = run.explanations[0]
    steps: dict[str, Any] | None = None
    method_cells: list[_Cell] = []
    per_image: dict[str, dict[str, Any]] = {}
    batches: list[dict[str, Any]] = []
    i = 0
    for b, exp in enumerate(run.explanations):
        n = exp.attributions.shape[0]
        size = tuple(np.asarray(images[i].image).shape[:2])
        batch_steps = exp.heatmap_steps(size)
        steps = steps or batch_steps
        signed = batch_steps.get("sign") == "all"
        heat = exp.heatmap(size).detach().float().cpu().numpy()[:, 0]
        attr = exp.attributions.detach().cpu()
        if attr.dtype in (torch.bfloat16, torch.float16):
            attr = attr.float()
        attr = attr.numpy()
        batch_extras = {k: _jsonable(v) for k, v in exp.extras.items() if k != "seed" and not _per_sample(v, n)}
        batches.append(
            {
                "images": list(keys[i : i + n]),
                "seconds": float(run.seconds[b]) if b < len(run.seconds) else None,
                "seed": _jsonable(exp.extras.get("seed")),
                **({"extras": batch_extras} if batch_extras else {}),
            }
        )
        for j in range(n):
            key = keys[i + j]
            arrays[f"{run.name}/{key}"] = attr[j]
            extras = {k: float(v.reshape(-1)[j]) for k, v in exp.extras.items() if _per_sample(v, n)}
            score = float(exp.scores[j])
            target = int(exp.targets[j]) if exp.targets is not None else None
            p = probs[i + j]
            prob = float(p[target]) if p is not None and target is not None and 0 <= target < p.numel() else None
            label = _target_label(exp, j, names)
            overlay = viz.overlay(images[i + j].image, heat[j], signed=signed)
            method_cells.append(_Cell(_data_uri(overlay), label, score, prob, _notes(extras, score)))
            per_image[key] = {"target": target, "label": label, "score": score, "prob": prob,
                              **{k: None if math.isnan(v) else v for k, v in extras.items()}}
        i += n
    total = float(sum(run.seconds))
    column = {
        "name": run.name,
        "params": _short_params(first.params),
        "layer": first.layer,
        "per_image": total / max(1, len(images)),
        "signed": (steps or {}).get("sign") == "all",
        "steps": steps or {},
    }
    record = {
        "name": run.name,
        "kind": first.kind,
        "params": _jsonable(first.params),
        "layer": first.layer,
        "heatmap_steps": _jsonable(steps),
        "seconds": total,
        "seconds_per_image": total / max(1, len(images)),
        "seeds": [bt["seed"] for bt in batches],
        "batches": batches,
        "per_image": per_image,
    }
    return column, method_cells, record


def _ledger_tables(run: MethodRun, keys: Sequence[str]) -> list[Table]:
    """The relevance ledger of an LRP run as a table: the relevance sum entering each layer, output to input,
    per image, and its ratio to the output relevance (1 where relevance is conserved)."""
    from .methods.lrp import ledger_table

    per_batch = [ledger_table(exp) for exp in run.explanations if exp.extras.get("relevance_ledger")]
    if len(per_batch) != len(run.explanations):
        return []
    layers = [row["layer"] for row in per_batch[0]]
    if any([row["layer"] for row in rows] != layers for rows in per_batch):
        return []
    columns = ["layer"]
    for key in keys:
        columns += [f"{key}: relevance", f"{key}: / output"]
    body = []
    for i, layer in enumerate(layers):
        cells: list[Any] = [layer]
        for rows in per_batch:
            for rel, ratio in zip(rows[i]["relevance"], rows[i]["ratio"], strict=True):
                cells += [rel, ratio]
        body.append(cells)
    note = ("sum of relevance entering each layer, from the output (the explained score) to the input; "
            "a ratio of 1 means relevance is conserved down to that layer")
    return [Table(f"Relevance ledger: {run.name}", columns, body, note)]


def _notes(extras: Mapping[str, float], score: float) -> list[tuple[str, str]]:
    """Per-image extras as caption lines; the IG completeness gap also relative to f(x) - f(baseline)."""
    notes = []
    for key, value in extras.items():
        text = _fmt_num(value)
        if key == "completeness_gap" and "baseline_scores" in extras:
            delta = score - extras["baseline_scores"]
            if abs(delta) > 1e-12:
                text += f" ({100 * abs(value) / abs(delta):.1f}% of f(x) - f(x'))"
        label = {"baseline_scores": "baseline score"}.get(key, key.replace("_", " "))
        notes.append((label, text))
    return notes


def template_env() -> Any:
    """The jinja2 environment of seewhy's report templates (autoescaped, strict), with the ``num`` (4
    significant digits, "-" for None, "n/a" for NaN) and ``pct`` filters."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("seewhy", "templates"),
        autoescape=jinja2.select_autoescape(["html"]),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["num"] = _fmt_num
    env.filters["pct"] = lambda p: f"{100 * p:.1f}%"
    return env


def _render_html(**context: Any) -> str:
    env = template_env()
    env.filters["value"] = _fmt_value
    env.filters["setting"] = _fmt_setting
    env.filters["secs"] = lambda x: f"{x:.3f}" if x < 0.1 else f"{x:.2f}" if x < 10 else f"{x:.1f}"
    return env.get_template("report.html").render(**context)


def _legends(columns: Sequence[Mapping[str, Any]]) -> list[dict[str, str]]:
    """Colour scales used by the columns: unsigned (0 -> 1) and, if any, signed (-max -> 0 -> +max)."""
    from . import viz

    ramp = np.tile(np.linspace(0.0, 1.0, 256, dtype=np.float32), (12, 1))
    out = [{"title": "attribution", "low": "low", "high": "high",
            "uri": _data_uri(viz.heat_to_image(ramp))}]
    if any(c["signed"] for c in columns):
        out.append({"title": "signed attribution", "low": "negative", "high": "positive",
                    "uri": _data_uri(viz.heat_to_image(ramp, signed=True))})
    return out


def _data_uri(image: np.ndarray) -> str:
    from . import viz

    return viz.data_uri(np.ascontiguousarray(image))


def _short_params(params: Mapping[str, Any]) -> list[tuple[str, str]]:
    return [(k, _fmt_value(v)) for k, v in params.items()]


def _fmt_value(v: Any) -> str:
    if isinstance(v, Tensor):
        return f"tensor{tuple(v.shape)}"
    if isinstance(v, float):
        return f"{v:g}"
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def _fmt_setting(v: Any) -> str:
    """A header value: text as is, mappings as ``k=v, ...``, sequences comma-separated."""
    if isinstance(v, str):
        return v
    if isinstance(v, Mapping):
        return ", ".join(f"{k}={_fmt_setting(x)}" for k, x in v.items())
    if isinstance(v, (list, tuple)):
        return "(" + ", ".join(_fmt_setting(x) for x in v) + ")"
    return _fmt_value(v)


def _fmt_num(x: float | None) -> str:
    return "-" if x is None else "n/a" if isinstance(x, float) and math.isnan(x) else f"{x:.4g}"


# -- helpers -------------------------------------------------------------------------------------------


def _check_runs(images: Sequence[ImageRow], runs: Sequence[MethodRun]) -> None:
    if not images:
        raise ValueError("no image to report; at least one image must have been explained")
    for im in images:
        arr = np.asarray(im.image)
        if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
            raise ValueError(f"image {im.name!r} must be uint8 (H,W,3), got {arr.dtype} {arr.shape}")
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        raise ValueError(f"each method may appear once in a report; got {names}")
    for run in runs:
        if not run.ok:
            continue
        n = sum(int(e.attributions.shape[0]) for e in run.explanations)
        if n != len(images):
            raise ValueError(f"method {run.name!r} explains {n} images, the report has {len(images)}")
        if run.seconds and len(run.seconds) != len(run.explanations):
            raise ValueError(
                f"method {run.name!r}: {len(run.seconds)} timings for {len(run.explanations)} batches"
            )


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


def _class_names(runs: Sequence[MethodRun]) -> Sequence[str] | None:
    for run in runs:
        for exp in run.explanations:
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


def _jsonable(v: Any) -> Any:
    """JSON-safe copy: tensors/arrays become lists (large ones a shape summary), NaN becomes None."""
    if v is None or isinstance(v, (bool, int, str)):
        return v
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, (np.generic,)):
        return _jsonable(v.item())
    if isinstance(v, (Tensor, np.ndarray)):
        arr = v.detach().cpu() if isinstance(v, Tensor) else v
        if arr.ndim == 0:
            return _jsonable(arr.item())
        size = arr.numel() if isinstance(arr, Tensor) else arr.size
        if size <= 64:
            return _jsonable(arr.tolist())
        return {"shape": list(arr.shape), "dtype": str(arr.dtype)}
    if isinstance(v, Mapping):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple, set, frozenset)):
        return [_jsonable(x) for x in v]
    if isinstance(v, os.PathLike):
        return os.fspath(v)
    if callable(v):
        return f"{getattr(v, '__module__', '?')}.{getattr(v, '__qualname__', repr(v))}"
    return repr(v)


def _versions() -> dict[str, str]:
    from . import __version__

    return {
        "seewhy": __version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
    }


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def _atomic(path: Path) -> Iterator[Any]:
    """Write a binary file to a temporary name next to ``path``, then ``os.replace`` it into place."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a report is an ordinary file
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
