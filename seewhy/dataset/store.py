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

With ``--save-attributions`` (off by default) each part has its maps next to it, written just before it::

    STORE/attributions/part-00000.npz      np.savez of the raw signed maps of part-00000's result rows, atomic
    STORE/summary.html                     the report (:mod:`seewhy.dataset.summary`), written at the end

An attributions file holds the index arrays ``path`` (str), ``method`` (str) and ``rank`` (int64), one entry per
result row of its part that has a map (error rows have none; a part of error rows only gets empty arrays), and
``map_00000``, ``map_00001``, ... the map of entry k as the method returns it, raw and signed: (C,H,W) for pixel
methods, (1,h,w) for CAM methods, float16 (default) or float32 (``--attributions-dtype``). :func:`read_attributions`
reads one. The attributions file is written first, then its part; a crash between the two leaves an attributions
file without its part, which readers ignore and the resumed run overwrites (its part gets the same name); a part
without its attributions file does not happen (a resume must keep the setting: it is in run.json).

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

__all__ = ["ATTRIBUTIONS", "BASE_COLUMNS", "RESULTS", "Store", "read_attributions", "read_results",
           "require_pyarrow", "schema"]

RESULTS = "results.parquet"
ATTRIBUTIONS = "attributions"
MAP_KEY = "_map"  # the key of a row's map (seewhy.dataset.work.MAP_KEY)
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
        #: write an attributions file with every part, even one whose rows carry no map (all error rows)
        self.save_attributions = False
        bad = [m for m in self.metrics if m in dict(BASE_COLUMNS)]
        if bad:
            raise ValueError(f"metric name(s) {', '.join(bad)} clash with the store's columns")

    @property
    def results(self) -> Path:
        return self.root / RESULTS

    @property
    def attributions(self) -> Path:
        return self.root / ATTRIBUTIONS

    def attributions_of(self, part: Path) -> Path:
        """The attributions file of ``part`` (which may not exist)."""
        return self.attributions / (Path(part).name[: -len(".parquet")] + ".npz")

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
                if self.attributions.is_dir():
                    for p in self.attributions.glob("*.npz"):
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
        maps = [r for r in rows if r.get(MAP_KEY) is not None]
        if maps or self.save_attributions:  # first the maps, then the part: a part never lacks its maps
            import numpy as np

            self.attributions.mkdir(parents=True, exist_ok=True)
            arrays = {"path": np.array([r["path"] for r in maps], dtype=str),
                      "method": np.array([r["method"] for r in maps], dtype=str),
                      "rank": np.array([int(r.get("rank") or 0) for r in maps], dtype=np.int64)}
            arrays.update({f"map_{k:05d}": np.asarray(r[MAP_KEY]) for k, r in enumerate(maps)})
            with atomic_write(self.attributions_of(path)) as f:
                np.savez(f, **arrays)
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


def read_attributions(store: str | os.PathLike, path: str | os.PathLike, method: str, rank: int = 0) -> Any:
    """The saved map (a numpy array, (C,H,W) or (1,h,w), as the method returned it) of image ``path`` (absolute, or
    relative to the current folder), ``method`` and class ``rank`` in a store written with ``--save-attributions``.

    Raises:
        KeyError: the store has no map for them (not saved, an error row, or another image).
    """
    import numpy as np

    s = Store(store, [])
    key = os.path.abspath(os.fspath(path))
    for part in s.parts():
        file = s.attributions_of(part)
        if not file.is_file():
            continue
        with np.load(file) as z:
            hit = np.flatnonzero((z["path"] == key) & (z["method"] == method) & (z["rank"] == int(rank)))
            if hit.size:
                return z[f"map_{int(hit[0]):05d}"]
    raise KeyError(f"{str(store)!r} has no saved attributions for {key} x {method} x rank {rank} (run with "
                   "--save-attributions?)")
