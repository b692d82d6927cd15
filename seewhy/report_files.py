"""Writing a report's files: the output folder, atomic writes (index.html last), JSON-safe values, versions.

Shared by the explain, evaluate and ProtoPNet reports (:mod:`seewhy.report`, :mod:`seewhy.protopnet.report`).
"""

from __future__ import annotations

import contextlib
import math
import os
import platform
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from torch import Tensor

__all__ = ["prepare_out_dir", "write_report_files"]


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
