"""The Ray engine of ``seewhy explain-dataset`` (``--engine ray``, ``pip install "seewhy[ray]"``).

:func:`run_ray` finds the images the store does not hold yet (by absolute path, as the local engine does), hands them
to Ray Data (blocks of whole batches, a few per actor) and runs ``map_batches`` on an actor pool: each actor builds the
model once (from its spec string and the driver's state dict, or from the pickled model when there is no spec), reads
its images with the same preprocessing and error handling as the local engine (an unreadable file gives the same
error rows) and computes rows with :func:`seewhy.dataset.work.batch_rows`. Each image's seed comes from its path, so
the rows equal the local engine's whatever actor computes them.

The driver collects the rows as they complete (``iter_batches``) and writes one part per ``chunk_size`` images with
the same :class:`~seewhy.dataset.store.Store`, cutting only between images: an image is either wholly in the store or
not at all, and an interrupted run continues with ``resume``. With ``save_attributions`` the maps travel with the
rows (a column of ``.npy`` bytes that is no store column) and the driver writes them next to the parts, as the local
engine does; the object masks of ``--masks`` / ``--boxes`` are read by the actors, as the local engine reads them.

It runs on a laptop (``address=None``: a local Ray started for the run and stopped after it, unless Ray is already
running) or on a cluster (``address="auto"`` or ``"HOST:PORT"``; the workers need seewhy installed and the image
paths, and any mask files, readable).

Actors: ``num_cpus`` each (default 1; torch uses that many threads), ``num_gpus`` each (default 1 when the model is
on a CUDA device, else 0), ``actors`` of them (default: as many as the cluster's CPUs, or GPUs, allow).
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

from ..data import ImageData
from ..progress import progress
from .local import RunSummary, flush_part
from .store import Store, schema
from .work import MAP_KEY, Plan

log = logging.getLogger("seewhy")

__all__ = ["RAY_OPTIONS", "require_ray", "run_ray"]

#: the keys of ``ray_options``
RAY_OPTIONS = ("num_cpus", "num_gpus", "actors")


def require_ray() -> Any:
    """The ``ray`` module (with Ray Data), or an ImportError that says how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as err:
        raise ImportError('the Ray engine needs Ray Data: pip install "seewhy[ray]"') from err
    return ray


class _Worker:
    """A Ray actor holding the model: rows of the store from a batch of pending images (columns path, label)."""

    def __init__(self, model_ref: Any, spec: str | None, plan: Plan, root: str, metrics: list[str], device: str,
                 threads: int) -> None:
        import ray
        import torch

        torch.set_num_threads(max(1, threads))
        got = ray.get(model_ref) if isinstance(model_ref, ray.ObjectRef) else model_ref
        if spec is None:
            model = got
        else:
            model = _build(spec)
            model.load_state_dict(got)
        self.model = model.to(device).eval()
        self.plan, self.root, self.schema = plan, root, schema(metrics)

    def __call__(self, batch: Any) -> Any:
        import pyarrow as pa

        from ..data import as_data
        from .local import _Pending
        from .work import batch_rows

        paths = batch.column("path").to_pylist()
        labels = batch.column("label").to_pylist()
        data = as_data(paths, self.model, labels=None if any(v is None for v in labels) else labels)
        # the local engine's reading: same items, same errors, same masks
        pending = _Pending(data, range(len(paths)), self.root, self.plan.annotations)
        rows = batch_rows(self.model, [pending[k] for k in range(len(paths))], self.plan)
        table = pa.Table.from_pydict({n: [r.get(n) for r in rows] for n in self.schema.names}, schema=self.schema)
        if self.plan.attributions_dtype is not None:  # the maps ride along as .npy bytes (not a store column)
            table = table.append_column(pa.field(MAP_KEY, pa.binary()),
                                        pa.array([_pack(r.get(MAP_KEY)) for r in rows], pa.binary()))
        return table


def _pack(a: Any) -> bytes | None:
    """A map as ``.npy`` bytes (None for none)."""
    if a is None:
        return None
    import io

    import numpy as np

    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


def _unpack(b: bytes | None) -> Any:
    if b is None:
        return None
    import io

    import numpy as np

    return np.load(io.BytesIO(b), allow_pickle=False)


def _build(spec: str) -> nn.Module:
    """The architecture of ``spec`` (its weights come from the driver's state dict)."""
    from .. import zoo

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a zoo model without shipped weights: the driver's state dict replaces them
        if spec in zoo.MODELS:
            return zoo.MODELS[spec].build(False)
        return zoo.load_model(spec)[0]


def run_ray(model: nn.Module, data: ImageData, plan: Plan, store: Store, *, root: str, batch_size: int = 16,
            chunk_size: int = 256, address: str | None = None, model_spec: str | None = None,
            ray_options: Mapping[str, Any] | None = None, show_progress: bool | None = None) -> RunSummary:
    """Compute the rows of every image of ``data`` the store does not hold yet on a Ray actor pool and write them to
    ``store`` from this process, one part per ``chunk_size`` images (see the module docstring). ``model_spec``: the
    model's spec string (the actors build it and load ``model``'s state dict), or None (the actors get ``model``
    pickled). The store must be open.

    Raises:
        ImportError: Ray is not installed (the message names ``pip install "seewhy[ray]"``).
        ValueError: an unknown key of ``ray_options``, or data without image files.
    """
    ray = require_ray()
    opts = dict(ray_options or {})
    unknown = sorted(set(opts) - set(RAY_OPTIONS))
    if unknown:
        raise ValueError(f"unknown ray option(s) {', '.join(unknown)}; choose among: {', '.join(RAY_OPTIONS)}")
    if data.paths is None:
        raise ValueError("explain-dataset needs image files (a folder, a list of paths or a glob)")
    t0 = time.perf_counter()
    done_before = store.done_paths()
    paths: list[str] = []
    labels: list[int | None] = []
    seen = set(done_before)
    for i in range(len(data)):  # in data order; a path listed twice is done once
        path = os.path.abspath(data.name(i))
        if path not in seen:
            seen.add(path)
            paths.append(path)
            labels.append(None if data.labels is None else int(data.labels[i]))
    del seen
    skipped = len(data) - len(paths)
    if skipped:
        log.info("resuming: %d of %d image(s) are in the store already; %d to do", skipped, len(data), len(paths))
    if not paths:
        return RunSummary(len(data), skipped, 0, 0, [], time.perf_counter() - t0)

    param = next(model.parameters(), None)
    on_gpu = param is not None and param.device.type == "cuda"
    num_cpus = float(opts.get("num_cpus", 1))
    num_gpus = float(opts.get("num_gpus", 1 if on_gpu else 0))
    started = False
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
        started = True
    try:
        return _run(ray, model, paths, labels, plan, store, root, batch_size, chunk_size, model_spec, num_cpus,
                    num_gpus, opts.get("actors"), skipped, len(data), t0, show_progress)
    finally:
        if started:
            ray.shutdown()


def _run(ray: Any, model: nn.Module, paths: list[str], labels: list[int | None], plan: Plan, store: Store,
         root: str, batch_size: int, chunk_size: int, model_spec: str | None, num_cpus: float, num_gpus: float,
         actors: int | None, skipped: int, n_data: int, t0: float, show_progress: bool | None) -> RunSummary:
    import pyarrow as pa

    if actors is None:
        res = ray.cluster_resources()
        actors = int(res.get("GPU", 0) // num_gpus) if num_gpus else int(res.get("CPU", 1) // max(num_cpus, 1e-9))
    actors = max(1, min(int(actors), -(-len(paths) // batch_size)))
    # the model once in the object store: its state dict (the actors build the spec's architecture) or itself
    if model_spec is not None:
        model_ref = ray.put({k: v.detach().cpu() for k, v in model.state_dict().items()})
    else:
        model_ref = ray.put(model)
    # blocks of whole batches: at most a chunk, and small enough to give every actor a few
    per_block = batch_size * max(1, min(chunk_size // batch_size, -(-len(paths) // (4 * actors * batch_size))))
    table = pa.table({"path": pa.array(paths, pa.string()), "label": pa.array(labels, pa.int64())})
    blocks = [table.slice(s, per_block) for s in range(0, len(paths), per_block)]
    ds = ray.data.from_arrow(blocks).map_batches(
        _Worker, batch_size=batch_size, batch_format="pyarrow", zero_copy_batch=True,
        compute=ray.data.ActorPoolStrategy(size=actors), num_cpus=num_cpus, num_gpus=num_gpus,
        fn_constructor_kwargs={"model_ref": model_ref, "spec": model_spec, "plan": plan,
                               "root": os.path.abspath(root), "metrics": store.metrics,
                               "device": "cuda" if num_gpus else "cpu", "threads": max(1, int(num_cpus))})
    log.info("Ray: %d actor(s) of %g CPU / %g GPU each; %d image(s) in blocks of %d", actors, num_cpus, num_gpus,
             len(paths), per_block)
    parts: list[Path] = []
    rows: list[dict[str, Any]] = []
    images: set[str] = set()
    done = errors = 0
    last = last_bad = None
    ctx = ray.data.DataContext.get_current()
    bars, ctx.enable_progress_bars = ctx.enable_progress_bars, False  # seewhy's own bar says images/s and ETA
    try:
        with progress(len(paths), "explaining the dataset (Ray)", "images", enabled=show_progress is not False,
                      delay=0) as bar:
            # the rows of an image are contiguous in the stream (one actor call returns all of them in one small
            # table, far below Ray's block size): a part is cut only where a new image starts, so an image is
            # either wholly in the store or not at all
            for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
                for r in batch.to_pylist():
                    if r["path"] != last:
                        if len(images) >= chunk_size:
                            parts.append(flush_part(store, rows, bar, done, len(paths)))
                            rows, images = [], set()
                        last = r["path"]
                        images.add(last)
                        done += 1
                        bar.update(1)
                    if r.get("error") and last != last_bad:
                        errors, last_bad = errors + 1, last
                    if MAP_KEY in r:
                        r[MAP_KEY] = _unpack(r[MAP_KEY])
                    rows.append(r)
            if rows:
                parts.append(flush_part(store, rows, bar, done, len(paths)))
    finally:
        ctx.enable_progress_bars = bars
    return RunSummary(n_data, skipped, done, errors, parts, time.perf_counter() - t0)
