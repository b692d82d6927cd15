"""Per-image annotations given on the command line (``seewhy evaluate``): object masks (PNG files paired with the
images by position) or boxes (a JSON/CSV table) for the localization metrics, and true classes (a JSON/CSV table);
tables are keyed by image path or file name. The mask and box files are read by :mod:`seewhy.metrics.localization`."""

from __future__ import annotations

import csv
import json
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

from PIL import Image
from torch import Tensor

from .targets import make_target

__all__ = ["check_labels", "load_labels", "object_masks", "table_entry"]


def table_entry(path: Any, table: dict[str, Any]) -> str | None:
    """The key of a per-image table (boxes, labels) for an image file: the path as given, else its file name."""
    for k in (str(path), Path(path).name):
        if k in table:
            return k
    return None


def load_labels(file: str, paths: Sequence[Any], class_names: Sequence[str] | None) -> list[int]:
    """True classes for ``paths`` from a JSON ``{image: class}`` or a CSV with columns ``image,label``; a class is an
    index or a class name.

    Raises:
        ValueError: a missing or malformed file, an image without a label, a label that is no class.
    """
    p = Path(file)
    if not p.is_file():
        raise ValueError(f"labels file not found: {p}")
    if p.suffix.lower() == ".json":
        try:
            table = json.loads(p.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{p} is not valid JSON: {err}") from None
        if not isinstance(table, dict):
            raise ValueError(f"{p}: expected a JSON object {{image file name: class}}")
    elif p.suffix.lower() == ".csv":
        with p.open(newline="") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames is None or not {"image", "label"} <= set(reader.fieldnames):
                raise ValueError(f"{p}: the CSV needs a header with columns image,label")
            table = {row["image"].strip(): row["label"].strip() for row in reader}
    else:
        raise ValueError(f"unsupported labels file {p}: use .json or .csv")
    out = []
    for path in paths:
        k = table_entry(path, table)
        if k is None:
            raise ValueError(f"{p} has no label for {path}; give a label for every image")
        value = table[k]
        try:
            out.append(int(value))
        except (TypeError, ValueError):
            t = make_target(str(value), 1, class_names)
            if t.indices is None:
                raise ValueError(f"{p}: label {value!r} of {path} is not a class index or name") from None
            out.append(int(t.indices[0]))
    return out


def check_labels(labels: Sequence[int], paths: Sequence[Any], n_classes: int, file: str) -> None:
    """Raise ValueError for the labels (read from ``file``) that are no class of a model with ``n_classes``."""
    bad = [(str(p), v) for p, v in zip(paths, labels, strict=True) if not 0 <= v < n_classes]
    if bad:
        raise ValueError(f"{file}: labels out of range for a model with {n_classes} classes: "
                         + ", ".join(f"{p}: {v}" for p, v in bad[:5]))


def object_masks(images: Sequence[Any], used: Collection[str], kept: Sequence[tuple[str, Image.Image]],
                 size: tuple[int, int], resize: int | None, *, masks: Sequence[str] | None = None,
                 boxes: str | None = None) -> Tensor | None:
    """Object masks (N,1,H,W) for the ``kept`` images ``(path, image)`` at the model's input ``size``: from
    ``masks``, one file per given image in ``images`` (by position: an image may be given twice; those whose path is
    not in ``used`` are dropped), or from the ``boxes`` table. None when neither is given.

    Raises:
        ValueError: a mask file that cannot be read, an image without boxes in the table.
    """
    from .metrics.localization import boxes_to_masks, load_boxes, load_masks

    if masks:
        ok = [i for i, p in enumerate(str(p) for p in images) if p in used]
        return load_masks([masks[i] for i in ok], size, resize=resize)
    if not boxes:
        return None
    table = load_boxes(boxes)
    missing = [str(p) for p, _ in kept if table_entry(p, table) is None]
    if missing:
        raise ValueError(f"{boxes} has no boxes for {', '.join(missing)} (its keys: "
                         f"{', '.join(sorted(table)[:10])}{', ...' if len(table) > 10 else ''}); give boxes for "
                         "every image, keyed by its path or file name (an empty list for an image without objects)")
    found = [table[table_entry(p, table)] for p, _ in kept]
    return boxes_to_masks(found, size, image_size=[img.size for _, img in kept], resize=resize)
