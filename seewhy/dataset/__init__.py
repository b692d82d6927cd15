"""Explain and evaluate a whole dataset into a resumable Parquet store (issue 20): ``seewhy explain-dataset``.

:func:`explain_dataset` checks the request, opens the store (:mod:`.store`: layout, resume), says the cost up front
and runs an engine: ``"local"`` (:mod:`.local`, streaming on one machine) or ``"ray"`` (:mod:`.ray_engine`, an actor
pool on a laptop or a cluster, ``pip install "seewhy[ray]"``). Every engine computes its rows with
:func:`.work.batch_rows`, whose rows depend only on the image (its seed comes from its path relative to the data), so
engines, batch sizes and interruptions give the same rows. The store needs pyarrow (``pip install
"seewhy[dataset]"``); importing this package does not.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from .local import RunSummary, resolve_data, run_local
from .store import RESULTS, Store, read_attributions, read_results
from .work import Annotations, Plan, batch_rows, image_seed

log = logging.getLogger("seewhy")

__all__ = ["ENGINES", "RESULTS", "Plan", "RunSummary", "Store", "batch_rows", "explain_dataset", "image_seed",
           "read_attributions", "read_results", "resolve_data"]

ENGINES = ("local", "ray")


def explain_dataset(
    data: str | os.PathLike | Sequence[str],
    model: nn.Module,
    methods: Sequence[str],
    metrics: Sequence[str] = (),
    *,
    out: str | os.PathLike,
    target: Any = "top1",
    method_params: Mapping[str, Mapping[str, Any]] | None = None,
    metric_params: Mapping[str, Mapping[str, Any]] | None = None,
    labels: Sequence[int] | str | os.PathLike | None = None,
    seed: int = 0,
    engine: str = "local",
    address: str | None = None,
    ray_options: Mapping[str, Any] | None = None,
    batch_size: int = 16,
    workers: int = 0,
    chunk_size: int = 256,
    resume: bool = False,
    overwrite: bool = False,
    estimate: bool = True,
    progress: bool | None = None,
    run_info: Mapping[str, Any] | None = None,
    html_summary: bool = True,
    save_attributions: bool = False,
    attributions_dtype: str = "float16",
    masks: str | os.PathLike | None = None,
    boxes: str | os.PathLike | None = None,
) -> RunSummary:
    """Explain every image of ``data`` with each method, score each explanation with each metric, and write one row
    per image x method x class rank to the store ``out`` (see :mod:`seewhy.dataset.store`).

    Args:
        data: a folder (flat, or one sub-folder per class: labels), a text file of image paths, a glob, or a list
            of paths.
        model: the classifier; its zoo spec (if any) picks the preprocessing.
        methods, metrics: registered names; ``method_params`` / ``metric_params``: ``{name: {param: value}}``. A
            method or metric that takes a ``seed`` gets each image's own (:func:`image_seed` of ``seed`` and the
            image's path relative to the data), whatever ``method_params`` say.
        target: ``"top1"``, ``"topK"`` (K rows per image and method), a class index or a class name.
        labels: one true class per image, or a file of them (JSON ``{image: class}`` or CSV ``image,label``, a
            class by index or name; see :func:`seewhy.annotations.load_labels`); default: the class sub-folders.
        engine: ``"local"`` or ``"ray"``; address: the Ray cluster (``"auto"``, ``"HOST:PORT"``; None: a local Ray);
            ray_options: ``num_cpus`` / ``num_gpus`` per actor and the number of ``actors`` (see
            :mod:`seewhy.dataset.ray_engine`; the spec string of ``run_info["model"]``, if any, builds the actors'
            models, which get ``model``'s state dict); batch_size: images per model call; workers: DataLoader
            processes decoding images (local engine);
            chunk_size: images per part file (the unit of resume).
        resume: continue the run in a non-empty store (the same settings); overwrite: start it again.
        estimate: log the cost per image before any work (when the ``seewhy`` logger shows INFO).
        run_info: more settings to record in ``run.json`` (the CLI records the model spec).
        html_summary: write ``STORE/summary.html`` at the end (:func:`seewhy.dataset.summary.write_summary`); a
            failure to write it is a warning, never an error: the results stay in the store.
        save_attributions: also write every result row's raw signed map to ``STORE/attributions/`` (one npz per
            part, see :mod:`seewhy.dataset.store`; read one with :func:`read_attributions`) as
            ``attributions_dtype`` (``"float16"`` or ``"float32"``).
        masks, boxes: object masks for the metrics that need one (localization: pointing game, relevance mass, ...):
            a folder of mask files (one per image, named by the image's path relative to the data or its file name,
            with the image's suffix or ``.png``; see :func:`seewhy.metrics.localization.load_masks`), or a box file
            (JSON or CSV, see :func:`seewhy.metrics.localization.load_boxes`; keyed by the image's relative path,
            path or file name). An image without an annotation gets null for those metrics (an unreadable mask file
            also says why in ``error``).

    Raises:
        ValueError: an unknown method, metric, parameter or engine; a metric that needs masks without masks or
            boxes; resume on another run.
        FileExistsError: a non-empty store without ``resume`` or ``overwrite``.
        ImportError: pyarrow is missing, or Ray for ``engine="ray"``.
    """
    from ..core import get_method
    from ..evaluate import check_metric_params, metric_costs
    from ..metrics import get_metric

    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; choose one of: {', '.join(ENGINES)}")
    for name, value in (("batch_size", batch_size), ("chunk_size", chunk_size)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if not isinstance(workers, int) or workers < 0:
        raise ValueError(f"workers must be an int >= 0, got {workers!r}")
    methods, metrics = list(dict.fromkeys(methods)), list(dict.fromkeys(metrics))
    if not methods:
        raise ValueError("give at least one method")
    params = {m: dict((method_params or {}).get(m, {})) for m in methods}
    for m in methods:
        get_method(m, **params[m])  # unknown method or parameter: fail before any work
    m_params = {m: dict((metric_params or {}).get(m, {})) for m in metrics}
    if masks is not None and boxes is not None:
        raise ValueError("give masks or boxes, not both")
    for m in metrics:
        spec = get_metric(m)
        if "mask" in spec.needs and masks is None and boxes is None:
            raise ValueError(f"metric {m} needs object masks: give masks= (a folder of mask files) or boxes= (a box "
                             "file), --masks / --boxes on the command line; or leave it out")
        check_metric_params(m, m_params[m])
    annotations = None
    if any("mask" in get_metric(m).needs for m in metrics):
        annotations = _annotations(model, masks, boxes)
    if attributions_dtype not in ("float16", "float32"):
        raise ValueError(f"attributions_dtype must be float16 or float32, got {attributions_dtype!r}")
    store = Store(out, metrics)  # ImportError without pyarrow, before any work
    if engine == "ray":
        from .ray_engine import require_ray

        require_ray()  # ImportError naming the extra, before any work
    if isinstance(labels, (str, os.PathLike)):
        from ..annotations import load_labels

        imagedata, root = resolve_data(data, model)
        found = load_labels(os.fspath(labels), imagedata.paths or [], getattr(model, "class_names", None))
        imagedata.labels = torch.tensor(found, dtype=torch.long)
    else:
        imagedata, root = resolve_data(data, model, labels=labels)
    run = {"data": os.path.abspath(os.fspath(data)) if isinstance(data, (str, os.PathLike)) else "paths",
           "methods": methods, "method_params": params, "metrics": metrics, "metric_params": m_params,
           "target": target if isinstance(target, (str, int)) else repr(target), "seed": seed, "engine": engine,
           "batch_size": batch_size, "workers": workers, "chunk_size": chunk_size, "store_version": 1,
           **({"attributions": attributions_dtype} if save_attributions else {}),
           **({"masks": os.path.abspath(os.fspath(masks))} if masks is not None else {}),
           **({"boxes": os.path.abspath(os.fspath(boxes))} if boxes is not None else {}),
           **dict(run_info or {})}
    store.open(run, resume=resume, overwrite=overwrite)
    store.save_attributions = save_attributions
    plan = Plan(methods, params, metrics, m_params, target, seed,
                attributions_dtype=attributions_dtype if save_attributions else None, annotations=annotations)
    if estimate and log.isEnabledFor(logging.INFO):
        from ..estimate import log_run
        from ..targets import parse_topk

        param = next(model.parameters(), None)
        first = imagedata.first().to(param.device if param is not None else "cpu")
        k = parse_topk(target) if isinstance(target, str) else None
        log_run(model, first, methods, params, len(imagedata), classes=k or 1, metrics=metrics,
                metric_costs=metric_costs(model, first, metrics, m_params))
    if engine == "ray":
        from .ray_engine import run_ray

        summary = run_ray(model, imagedata, plan, store, root=root, batch_size=batch_size, chunk_size=chunk_size,
                          address=address, model_spec=(run_info or {}).get("model"), ray_options=ray_options,
                          show_progress=progress)
    else:
        summary = run_local(model, imagedata, plan, store, root=root, batch_size=batch_size, workers=workers,
                            chunk_size=chunk_size, show_progress=progress)
    log.info("%d image(s) in %s (%.3g images/s); %d already in the store; %d with errors; store: %s",
             summary.done, f"{summary.seconds:.1f} s", summary.done / max(summary.seconds, 1e-9), summary.skipped,
             summary.errors, store.results)
    if html_summary:
        _write_summary(out, model)
    return summary


def _annotations(model: nn.Module, masks: str | os.PathLike | None, boxes: str | os.PathLike | None) -> Annotations:
    """The object masks of a run; ``resize``: as :func:`seewhy.data.as_data` preprocesses files for ``model``."""
    from ..zoo import spec_of

    spec = spec_of(model)
    resize = spec.resize if spec is not None else 256
    if masks is not None:
        if not os.path.isdir(masks):
            raise ValueError(f"masks: {os.fspath(masks)!r} is not a folder of mask files")
        return Annotations(masks=os.path.abspath(os.fspath(masks)), resize=resize)
    from ..metrics.localization import load_boxes

    assert boxes is not None
    return Annotations(boxes=load_boxes(boxes), resize=resize)


def _write_summary(out: str | os.PathLike, model: nn.Module) -> None:
    """``STORE/summary.html``; a failure is logged as a warning (the results are safe in the store)."""
    try:
        from .summary import write_summary

        path = write_summary(out, model=model)
        log.info("summary: %s", path)
    except Exception as err:
        log.debug("the summary failed", exc_info=True)
        log.warning("the summary could not be written (%s: %s); the results are in %s; rebuild it with "
                    "seewhy explain-dataset --summary-only --out %s", type(err).__name__, err, out, out)
