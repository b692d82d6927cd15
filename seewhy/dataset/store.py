"""The result store of ``seewhy explain-dataset``: Parquet part files written as work completes, resumable.

Layout of a store folder ``STORE``::

    STORE/run.json                        what was run: data, model, methods, metrics, target, seed (checked on resume)
    STORE/results.parquet/part-00000.parquet   one part per finished chunk of images, written atomically
    STORE/results.parquet/part-00001.parquet   (temporary name, then renamed: a part that exists is complete)
    ...

``STORE/results.parquet`` is a Parquet *dataset directory*: ``pyarrow.parquet.read_table(STORE/results.parquet)``
or ``pandas.read_parquet`` reads all parts as one table (:func:`read_results` does, sorted). One row per image x
method x target (class rank), columns :data:`BASE_COLUMNS` then one float64 column per metric: ``path`` (absolute),
``label`` (the true class, null without), ``prediction`` (the model's top class), ``method``, ``rank`` (0 for the
best class of ``topK``; the only one otherwise), ``target`` (the class explained), ``score`` (the model's score for
it), ``seconds`` (this image's share of the method's and metrics' time), ``seed`` (the image's own, from its path),
``error`` (null, or why the row has no result); a metric that is undefined for an image is null. A part holds every
row of its images (all methods, all ranks), so an image is either wholly in the store or not at all: resume skips
the paths found in the parts (:meth:`Store.done_paths`) and nothing is duplicated or lost. A bad image or a method
that fails on a batch gives rows whose ``error`` says why (one per method), and never stops the job.

Parts are named by a running number from the parts already there; an engine that writes from several processes
(Ray) passes its own ``prefix`` so that names never clash.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..fileio import atomic_write, jsonable

__all__ = ["BASE_COLUMNS", "RESULTS", "Store", "read_results", "require_pyarrow", "schema"]

RESULTS = "results.parquet"
RUN_FILE = "run.json"
#: (name, arrow type name) of the columns before the metric columns
BASE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("path", "string"), ("label", "int64"), ("prediction", "int64"), ("method", "string"), ("rank", "int64"),
    ("target", "int64"), ("score", "float64"), ("seconds", "float64"), ("seed", "int64"), ("error", "string"),
)
_PART = re.compile(r"^(?P<prefix>[A-Za-z0-9_-]*?)-?(?P<n>\d+)\.parquet$")


def require_pyarrow() -> Any:
    """The ``pyarrow`` module, or an ImportError that says how to install it."""
    try:
        import pyarrow  # noqa: F401
        import pyarrow.parquet  # noqa: F401
    except ImportError as err:
        raise ImportError('the dataset store needs pyarrow: pip install "seewhy[dataset]"') from err
    return pyarrow


def schema(metrics: Sequence[str]) -> Any:
    """The Arrow schema of a store's rows: :data:`BASE_COLUMNS` then one float64 column per metric."""
    pa = require_pyarrow()
    fields = [pa.field(name, getattr(pa, kind)()) for name, kind in BASE_COLUMNS]
    fields += [pa.field(m, pa.float64()) for m in metrics]
    return pa.schema(fields)


class Store:
    """A store folder (see the module docstring). ``metrics``: the metric columns of its rows."""

    def __init__(self, root: str | os.PathLike, metrics: Sequence[str]) -> None:
        require_pyarrow()
        self.root = Path(root)
        self.metrics = list(metrics)
        self.schema = schema(self.metrics)
        bad = [m for m in self.metrics if m in dict(BASE_COLUMNS)]
        if bad:
            raise ValueError(f"metric name(s) {', '.join(bad)} clash with the store's columns")

    @property
    def results(self) -> Path:
        return self.root / RESULTS

    def parts(self) -> list[Path]:
        """The finished part files, sorted by name (temporary files are not parts)."""
        if not self.results.is_dir():
            return []
        return sorted(p for p in self.results.iterdir() if p.is_file() and _PART.match(p.name))

    def is_empty(self) -> bool:
        return not self.root.exists() or (self.root.is_dir() and not any(self.root.iterdir()))

    def open(self, run: Mapping[str, Any], *, resume: bool = False, overwrite: bool = False) -> None:
        """Make the store ready for ``run`` (a JSON-able record of the settings): a new or empty folder is created;
        a non-empty one is refused unless ``resume`` (its run.json must match ``run``, apart from the engine and
        the batch settings) or ``overwrite`` (its parts and run.json are removed).

        Raises:
            FileExistsError: the folder is not empty and neither ``resume`` nor ``overwrite`` is given, or it is a file.
            ValueError: ``resume`` on a store of another run.
        """
        if self.root.exists() and not self.root.is_dir():
            raise FileExistsError(f"store {str(self.root)!r} is a file; choose a folder name")
        run = jsonable(dict(run))
        if not self.is_empty():
            if resume:
                self._check_same(run)
            elif overwrite:
                for p in self.parts():
                    p.unlink()
                (self.root / RUN_FILE).unlink(missing_ok=True)
            else:
                raise FileExistsError(f"store {str(self.root)!r} is not empty; pass --resume to continue the run in "
                                      "it, --overwrite to start again, or choose another folder")
        self.results.mkdir(parents=True, exist_ok=True)
        if not (self.root / RUN_FILE).exists():
            with atomic_write(self.root / RUN_FILE) as f:
                f.write(json.dumps(run, indent=2, sort_keys=True).encode())

    def _check_same(self, run: dict[str, Any]) -> None:
        path = self.root / RUN_FILE
        if not path.is_file():
            raise ValueError(f"{str(self.root)!r} has no {RUN_FILE}: it is not a seewhy dataset store; "
                             "choose another folder or pass --overwrite")
        old = json.loads(path.read_text())
        keys = sorted(set(old) | set(run))
        differ = [k for k in keys if k not in _FREE and old.get(k) != run.get(k)]
        if differ:
            what = "; ".join(f"{k}: {old.get(k)!r} in the store, {run.get(k)!r} now" for k in differ)
            raise ValueError(f"--resume: the store {str(self.root)!r} holds another run ({what}); resume with the "
                             "same settings, or pass --overwrite to start again")

    def done_paths(self) -> set[str]:
        """The paths of the images that have rows in the store (finished: a part holds all rows of its images)."""
        import pyarrow.parquet as pq

        done: set[str] = set()
        for p in self.parts():
            done.update(pq.read_table(p, columns=["path"]).column("path").to_pylist())
        return done

    def next_part(self, prefix: str = "part") -> Path:
        """The name of the next part: ``{prefix}-{n:05d}.parquet``, n after the highest of that prefix."""
        ns = [int(m["n"]) for p in self.parts() if (m := _PART.match(p.name)) and m["prefix"] == prefix]
        return self.results / f"{prefix}-{max(ns, default=-1) + 1:05d}.parquet"

    def write(self, rows: Iterable[Mapping[str, Any]], prefix: str = "part") -> Path | None:
        """Write ``rows`` (dicts by column name; missing columns are null) as the next part, atomically; returns
        its path (None for no rows)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        rows = list(rows)
        if not rows:
            return None
        names = self.schema.names
        table = pa.Table.from_pydict({n: [r.get(n) for r in rows] for n in names}, schema=self.schema)
        path = self.next_part(prefix)
        with atomic_write(path) as f:
            pq.write_table(table, f)
        return path


#: run settings that may change between a run and its resume (they do not change the rows)
_FREE = frozenset({"engine", "batch_size", "workers", "chunk_size", "device"})


def read_results(store: str | os.PathLike) -> Any:
    """All rows of a store as one Arrow table, sorted by (path, method, rank): the same table whatever the engine,
    the batching and the interruptions."""
    pa = require_pyarrow()
    import pyarrow.parquet as pq

    parts = Store(store, []).parts()
    if not parts:
        raise ValueError(f"{str(store)!r} holds no results ({RESULTS}/part-*.parquet)")
    table = pa.concat_tables([pq.read_table(p) for p in parts])
    return table.sort_by([("path", "ascending"), ("method", "ascending"), ("rank", "ascending")])
