"""Per-image tables given on the command line: true classes from a JSON or CSV file, keyed by image path or name."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .targets import make_target


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
