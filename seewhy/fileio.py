"""Files written whole or not at all: atomic writes, JSON (safe copies of tensors and arrays), torch checkpoints.

Used by the reports (:mod:`seewhy.report_files`), :func:`seewhy.viz.save_png` and the ProtoPNet runs
(:mod:`seewhy.protopnet.train`, :mod:`seewhy.protopnet.runs`).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from torch import Tensor

__all__ = ["atomic_write", "jsonable", "load_checkpoint", "read_json", "save_checkpoint", "write_json"]


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """A binary file written to a temporary name next to ``path``, then moved into place with ``os.replace``:
    readers never see a half-written file, and a failed write leaves the old file (if any) as it was."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; these are ordinary files
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def jsonable(v: Any) -> Any:
    """JSON-safe copy: tensors/arrays become lists (large ones a shape summary), NaN becomes None."""
    if v is None or isinstance(v, (bool, int, str)):
        return v
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, (np.generic,)):
        return jsonable(v.item())
    if isinstance(v, (Tensor, np.ndarray)):
        arr = v.detach().cpu() if isinstance(v, Tensor) else v
        if arr.ndim == 0:
            return jsonable(arr.item())
        size = arr.numel() if isinstance(arr, Tensor) else arr.size
        if size <= 64:
            return jsonable(arr.tolist())
        return {"shape": list(arr.shape), "dtype": str(arr.dtype)}
    if isinstance(v, Mapping):
        return {str(k): jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple, set, frozenset)):
        return [jsonable(x) for x in v]
    if isinstance(v, os.PathLike):
        return os.fspath(v)
    if callable(v):
        return f"{getattr(v, '__module__', '?')}.{getattr(v, '__qualname__', repr(v))}"
    return repr(v)


def write_json(obj: Any, path: str | os.PathLike) -> None:
    """``obj`` as indented JSON, written atomically."""
    with atomic_write(path) as f:
        f.write(json.dumps(obj, indent=2, allow_nan=True).encode("utf-8"))


def read_json(path: str | os.PathLike) -> Any:
    """A JSON file's content.

    Raises:
        ValueError: the file cannot be read or is not JSON (the message names it).
    """
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"cannot read {str(path)!r}: {err}") from err


def save_checkpoint(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save(obj)``, written atomically (a state dict, loadable with ``weights_only=True``)."""
    with atomic_write(path) as f:
        torch.save(obj, f)


def load_checkpoint(path: str | os.PathLike, device: torch.device | str) -> Any:
    """A checkpoint written by :func:`save_checkpoint`, loaded with ``weights_only=True`` onto ``device``.

    Raises:
        ValueError: no such file, or it is not a readable state dict.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"no checkpoint {str(path)!r}")
    try:
        return torch.load(str(path), map_location=device, weights_only=True)
    except Exception as err:  # corrupt or not a state dict
        raise ValueError(f"checkpoint {str(path)!r} cannot be read ({type(err).__name__}: {err})") from err
