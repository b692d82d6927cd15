"""The local engine of ``seewhy explain-dataset``: streams a dataset through the methods and metrics on one machine.

:func:`resolve_data` turns DATA (a folder, flat or one sub-folder per class; a text file of paths; a glob) into an
:class:`~seewhy.data.ImageData` and the root its paths are keyed from. :func:`run_local` walks the images the store
does not hold yet with a ``torch.utils.data.DataLoader`` whose ``workers`` decode images in parallel with the model,
computes their rows (:func:`seewhy.dataset.work.batch_rows`) and writes one part per ``chunk_size`` images: memory
holds one chunk of rows and the batches in flight, never all images or maps (with ``save_attributions``, the maps of
one chunk until its part is written). Progress says images/s and the time left; the cost per image is logged up
front.
"""

from __future__ import annotations

import glob as _glob
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data import IMAGE_SUFFIXES, ImageData, as_data
from ..progress import format_seconds, progress
from .store import Store
from .work import Annotations, Item, Plan, batch_rows

log = logging.getLogger("seewhy")

__all__ = ["RunSummary", "resolve_data", "run_local"]


@dataclass(frozen=True)
class RunSummary:
    """What a run did: images in the data, images already in the store (skipped), images done now, images of this
    run with an error row, the parts written, and the wall time."""

    images: int
    skipped: int
    done: int
    errors: int
    parts: Sequence[Path]
    seconds: float


def resolve_data(data: str | os.PathLike | Sequence[str], model: nn.Module | None = None, *,
                 labels: Sequence[int] | None = None, transform: Any = None) -> tuple[ImageData, str]:
    """DATA as ``(ImageData, root)``: a folder (flat, or one sub-folder per class: labels), a text file with one
    image path per line (relative paths are relative to the file's folder; ``#`` starts a comment), a glob pattern
    (``**`` recursive) or a list of paths. ``root``: what the store's seed keys are relative to.

    Raises:
        ValueError: nothing found, or a path that is neither a folder, a list file nor a glob.
    """
    if not isinstance(data, (str, os.PathLike)):
        paths = [os.fspath(p) for p in data]
        return as_data(paths, model, labels=labels, transform=transform), _common_root(paths)
    text = os.fspath(data)
    p = Path(text)
    if p.is_dir():
        return as_data(text, model, labels=labels, transform=transform), text
    if p.is_file() and p.suffix.lower() not in IMAGE_SUFFIXES:
        base = p.parent
        paths = []
        for line in p.read_text().splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                paths.append(line if os.path.isabs(line) else str(base / line))
        if not paths:
            raise ValueError(f"{text}: the list of image paths is empty")
        return as_data(paths, model, labels=labels, transform=transform), str(base)
    if _glob.has_magic(text):
        paths = sorted(q for q in _glob.glob(text, recursive=True) if os.path.isfile(q))
        if not paths:
            raise ValueError(f"no file matches {text!r}")
        return as_data(paths, model, labels=labels, transform=transform), _common_root(paths)
    raise ValueError(f"{text!r} is neither a folder, a text file of image paths nor a glob pattern")


def _common_root(paths: Sequence[str]) -> str:
    if not paths:
        raise ValueError("the list of image paths is empty")
    return os.path.commonpath([os.path.dirname(os.path.abspath(q)) for q in paths])


class _Pending(torch.utils.data.Dataset):
    """The images still to do, as :class:`~seewhy.dataset.work.Item` (an unreadable file gives an item with its
    error, never an exception): read in the DataLoader's workers."""

    def __init__(self, data: ImageData, indices: Sequence[int], root: str, annotations: Annotations | None = None
                 ) -> None:
        self.data, self.indices, self.root, self.annotations = data, list(indices), root, annotations

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int) -> Item:
        i = self.indices[k]
        path = os.path.abspath(self.data.name(i))
        key = os.path.relpath(path, os.path.abspath(self.root)).replace(os.sep, "/")
        label = None if self.data.labels is None else int(self.data.labels[i])
        try:
            x, read = self.data.load([i])
        except Exception as err:  # e.g. an image of another size than the others: this image's error row
            return Item(path, key, label, error=f"{type(err).__name__}: {err}")
        if not read:
            reason = self.data.skipped[-1][1] if self.data.skipped else "could not be read"
            return Item(path, key, label, error=reason)
        if self.annotations is None:
            return Item(path, key, label, x=x[0])
        try:
            mask = self.annotations.mask(path, key, tuple(x.shape[-2:]))
        except Exception as err:  # an unreadable mask: null mask metrics for this image, saying why
            return Item(path, key, label, x=x[0], mask_error=f"mask: {type(err).__name__}: {err}")
        return Item(path, key, label, x=x[0], mask=mask)


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # decoding workers must not compete with the model for the cores


def run_local(model: nn.Module, data: ImageData, plan: Plan, store: Store, *, root: str, batch_size: int = 16,
              workers: int = 0, chunk_size: int = 256, show_progress: bool | None = None) -> RunSummary:
    """Compute the rows of every image of ``data`` the store does not hold yet (by absolute path, the store's
    ``path`` column) and write them to ``store``, one part per ``chunk_size`` images (rounded up to whole batches).
    ``workers``: DataLoader processes decoding images (0: in this process). The store must be open
    (:meth:`Store.open`)."""
    if data.paths is None:
        raise ValueError("explain-dataset needs image files (a folder, a list of paths or a glob)")
    t0 = time.perf_counter()
    done_before = store.done_paths()
    pending, seen = [], set(done_before)
    for i in range(len(data)):  # in data order; a path listed twice is done once
        path = os.path.abspath(data.name(i))
        if path not in seen:
            seen.add(path)
            pending.append(i)
    del seen
    skipped = len(data) - len(pending)
    if skipped:
        log.info("resuming: %d of %d image(s) are in the store already; %d to do", skipped, len(data), len(pending))
    loader = torch.utils.data.DataLoader(_Pending(data, pending, root, plan.annotations), batch_size=batch_size,
                                         shuffle=False, num_workers=workers, collate_fn=list,
                                         worker_init_fn=_worker_init if workers else None)
    per_chunk = max(1, -(-chunk_size // batch_size)) * batch_size
    parts: list[Path] = []
    rows: list[dict[str, Any]] = []
    in_chunk = done = errors = 0
    with progress(len(pending), "explaining the dataset", "images", enabled=show_progress is not False,
                  delay=0) as bar:
        for items in loader:
            got = batch_rows(model, items, plan)
            errors += len({r["path"] for r in got if r.get("error")})
            rows.extend(got)
            in_chunk += len(items)
            done += len(items)
            bar.update(len(items))
            if in_chunk >= per_chunk:
                parts.append(flush_part(store, rows, bar, done, len(pending)))
                rows, in_chunk = [], 0
        if rows:
            parts.append(flush_part(store, rows, bar, done, len(pending)))
    return RunSummary(len(data), skipped, done, errors, parts, time.perf_counter() - t0)


def flush_part(store: Store, rows: list[dict[str, Any]], bar: Any, done: int, total: int) -> Path:
    """Write a finished chunk's rows as one part and say the progress (images/s, time left); every engine's."""
    path = store.write(rows)
    assert path is not None
    rate = done / max(bar.elapsed, 1e-9)
    left = (total - done) / rate if rate else 0.0
    bar.done("%s: %d/%d image(s), %.3g images/s, about %s left", path.name, done, total, rate, format_seconds(left))
    return path
