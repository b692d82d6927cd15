"""Writing a report's files: the output folder, the files (atomically, index.html last), the versions.

Shared by the explain, evaluate and ProtoPNet reports (:mod:`seewhy.report`, :mod:`seewhy.protopnet.report`).
"""

from __future__ import annotations

import contextlib
import os
import platform
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from .fileio import atomic_write
from .version import __version__

__all__ = ["prepare_out_dir", "versions", "write_report_files"]


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
            with atomic_write(out / name) as f:
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


def versions() -> dict[str, str]:
    """The versions of seewhy, torch, numpy, python and the platform, for a report's record."""
    return {
        "seewhy": __version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
    }


def write_page_report(out_dir: str | os.PathLike, template: str, title: str, header: Mapping[str, Any],
                      summary: list[str], record: Mapping[str, Any], page: Mapping[str, Any], *, cost: str = "",
                      settings: Mapping[str, Any] | None = None, filters: Mapping[str, Callable] | None = None,
                      failures: list[tuple[str, str]] | tuple = (), overwrite: bool = False,
                      files: Mapping[str, bytes] | None = None) -> Path:
    """One command's report (``seewhy inside ...``, ``seewhy featvis``, ``seewhy atlas``): ``template`` rendered with
    the header (model, layer, settings, command), ``summary``, ``cost`` and ``page``; ``manifest.json`` with the
    header, ``record`` and the failures; ``files`` beside them. Written atomically, ``index.html`` last."""
    import datetime as dt
    import json

    from .fileio import jsonable
    from .report_layout import template_env

    out = prepare_out_dir(out_dir, overwrite=overwrite, create=False)
    kind = str(header["kind"])
    created = dt.datetime.now(dt.timezone.utc).astimezone().isoformat(timespec="seconds")
    version_info = versions()
    failed = [(str(p), str(r)) for p, r in failures]
    manifest = {"title": title, "kind": kind, "created": created, "command": list(header["command"]),
                "versions": version_info, "model": header["model"], "layer": header.get("layer"),
                "settings": header["settings"], "estimate": header.get("estimate") or None, **record,
                "failures": [{"path": p, "reason": r} for p, r in failed]}
    env = template_env()
    env.filters.update(filters or {})
    shown = settings if settings is not None else header["settings"]
    html = env.get_template(template).render(
        title=title, kind=kind, created=created, versions=version_info, summary=list(summary),
        model=header["model"], layer=header.get("layer"), settings=shown, cost=cost,
        cmd=list(header["command"]), failures=failed, **page)
    data = {"manifest.json": json.dumps(jsonable(manifest), indent=2, allow_nan=False).encode("utf-8"),
            **(files or {})}
    return write_report_files(out, data, html)
