"""``seewhy explain-dataset``: explain and evaluate a whole dataset into a resumable Parquet store.

::

    seewhy explain-dataset DATA --model M [--method gradcam,integrated_gradients] [--metric deletion_auc,insertion_auc]
                           [--labels FILE] [--masks DIR | --boxes FILE] --out STORE
                           [--engine local|ray] [--address auto|HOST:PORT]
                           [--resume | --overwrite] [--batch-size N] [--workers N] [--chunk-size N]
                           [--save-attributions [--attributions-dtype float16|float32]]
                           [--target top1|topK|N|NAME] [--layer L] [--set M.P=V]
                           [--seed N] [--weights FILE] [--device D]

DATA: a folder (flat, or one sub-folder per class, which gives labels), a text file of image paths or a glob. The
store's layout: :mod:`seewhy.dataset.store`. stdout gets only the path of ``STORE/results.parquet``. Exit codes: 0
ok, 2 usage error (including a non-empty store without --resume/--overwrite), 3 the store has error rows (bad
images, failed methods or metrics), 130 interrupted (the finished parts stay: continue with --resume).

``--save-attributions`` also writes every raw signed map next to its part (``STORE/attributions/part-N.npz``,
float16 unless ``--attributions-dtype float32``); ``--masks DIR`` / ``--boxes FILE`` give the localization metrics
(pointing_game, ...) their object masks; an image without one gets null for them.

``--engine ray`` runs the work on a Ray actor pool (``pip install "seewhy[ray]"``): a local Ray, or the cluster at
``--address`` (``auto`` or ``HOST:PORT``); one GPU per actor with ``--device cuda``.

``STORE/summary.html`` (:mod:`seewhy.dataset.summary`) is written at the end unless ``--no-summary``;
``seewhy explain-dataset --summary-only --out STORE [--model M]`` rewrites it from the store alone.

This module imports without pyarrow; running the command without it is a usage error naming the extra to install.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from .. import command
from ..argtypes import positive_int

log = logging.getLogger("seewhy")

__all__ = ["DEFAULT_METHODS", "DEFAULT_METRICS", "add_parser", "run"]

DEFAULT_METHODS = ("gradcam",)
DEFAULT_METRICS = ("deletion_auc", "insertion_auc")
_FORMAT = {"epilog": command.EPILOG, "formatter_class": argparse.RawDescriptionHelpFormatter}


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def add_parser(subparsers: Any, common: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """Add ``explain-dataset`` to ``subparsers``; ``common`` is the parent parser of ``-v``/``-q``. Sets ``func``."""
    from .. import zoo

    p = subparsers.add_parser(
        "explain-dataset", parents=[common] if common is not None else [],
        help="explain and evaluate a whole dataset into a resumable Parquet store",
        description="Explain every image of DATA with each method and score each explanation with each metric; "
                    "write one row per image x method x class to STORE/results.parquet (a folder of Parquet parts "
                    "written as work completes). A bad image becomes an error row; --resume continues an "
                    "interrupted run.", **_FORMAT)
    p.add_argument("data", metavar="DATA", nargs="?",
                   help="a folder of images (flat or one sub-folder per class), a text file of image paths (one per "
                        "line) or a glob such as 'imgs/**/*.jpg'")
    p.add_argument("--model", metavar="NAME|SPEC",
                   help=f"a zoo model ({', '.join(zoo.MODELS)}), path/file.py:factory, package.module:factory or a "
                        "TorchScript file")
    p.add_argument("--weights", metavar="FILE", help="a state-dict file to load into the model")
    p.add_argument("--method", action="append", metavar="M1,M2",
                   help=f"attribution methods, comma-separated or repeated (default: {','.join(DEFAULT_METHODS)})")
    p.add_argument("--metric", action="append", metavar="M1,M2",
                   help=f"evaluation metrics (default: {','.join(DEFAULT_METRICS)}); 'none' for no metric")
    p.add_argument("--labels", metavar="FILE", help="true classes: JSON {image: class} or CSV image,label "
                                                     "(default: the class sub-folders of DATA, if any)")
    annotated = p.add_mutually_exclusive_group()
    annotated.add_argument("--masks", metavar="DIR",
                           help="object masks for the localization metrics (pointing_game, ...): a folder with one "
                                "mask file per image, named like the image (relative path or file name; .png or the "
                                "image's suffix); images without one get null for those metrics")
    annotated.add_argument("--boxes", metavar="FILE",
                           help="object boxes for the localization metrics: JSON or CSV (image,x0,y0,x1,y1), keyed "
                                "by the image's relative path, path or file name; images without get null")
    p.add_argument("--target", default="top1", metavar="top1|topK|N|NAME",
                   help="what to explain: the predicted class (top1, default), the K best (topK: K rows), a class")
    p.add_argument("--layer", metavar="NAME", help="layer for the CAM methods (default: the model's)")
    p.add_argument("--set", action="append", default=[], metavar="NAME.PARAM=VALUE", dest="sets",
                   help="a method's or metric's parameter, e.g. integrated_gradients.steps=16 (repeatable)")
    p.add_argument("--seed", type=int, default=0, metavar="N",
                   help="run seed; each image's seed is derived from it and the image's path (default 0)")
    p.add_argument("--out", required=True, metavar="STORE", help="the store folder")
    again = p.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true",
                       help="continue the run in a non-empty store: the images it holds are skipped")
    again.add_argument("--overwrite", action="store_true", help="start again in a non-empty store (its rows go)")
    p.add_argument("--engine", choices=["local", "ray"], default="local",
                   help='where the work runs: local (default) or ray (pip install "seewhy[ray]")')
    p.add_argument("--address", metavar="auto|HOST:PORT",
                   help="--engine ray: the Ray cluster to join (default: start a local Ray for the run)")
    p.add_argument("--batch-size", type=positive_int, default=16, metavar="N", help="images per model call (16)")
    p.add_argument("--workers", type=_count, default=1, metavar="N",
                   help="processes decoding images in parallel with the model (default 1; 0: in the main process)")
    p.add_argument("--chunk-size", type=positive_int, default=256, metavar="N",
                   help="images per Parquet part, the unit of resume (default 256)")
    p.add_argument("--save-attributions", action="store_true",
                   help="also save every raw signed map to STORE/attributions/part-N.npz (next to each part; read "
                        "one with seewhy.dataset.read_attributions); off by default")
    p.add_argument("--attributions-dtype", choices=["float16", "float32"], default="float16",
                   help="the dtype of the saved maps (default float16)")
    p.add_argument("--device", default="cpu", help="torch device: cpu (default), cuda, cuda:1, mps")
    p.add_argument("--no-summary", action="store_true",
                   help="do not write STORE/summary.html (metric tables, worst and surprising cases with their maps, "
                        "confusion matrix) at the end")
    p.add_argument("--summary-only", action="store_true",
                   help="only (re)write STORE/summary.html from the store's results: no DATA needed; the model comes "
                        "from the store's run.json unless --model is given")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Run a parsed ``seewhy explain-dataset`` command; returns the exit code."""
    from .. import zoo
    from ..argtypes import device as parse_device
    from ..argtypes import setting
    from ..metrics import METRICS
    from ..plan import check_target, give_layer, plan_methods, plan_metrics
    from . import explain_dataset
    from .store import Store, require_pyarrow

    require_pyarrow()  # ImportError naming the extra: exit code 2, before any work
    if args.summary_only:
        return _summary_only(args)
    if args.data is None or args.model is None:
        raise ValueError("give DATA and --model (or --summary-only --out STORE to rewrite the store's summary.html)")
    if args.engine == "ray":
        from .ray_engine import require_ray

        require_ray()
    elif args.address:
        raise ValueError("--address is for --engine ray")
    metric_sets = [item for item in args.sets if setting(item)[0] in METRICS]
    method_sets = [item for item in args.sets if item not in metric_sets]
    methods, params = plan_methods(args.method or [",".join(DEFAULT_METHODS)], method_sets, args.seed)
    no_metrics = args.metric is not None and [v.strip().lower() for v in args.metric] == ["none"]
    metrics, metric_params = ([], {}) if no_metrics else plan_metrics(args.metric, metric_sets, DEFAULT_METRICS,
                                                                       have_masks=bool(args.masks or args.boxes))
    out = Path(args.out)
    if out.exists() and not args.resume and not args.overwrite and not Store(out, []).is_empty():
        raise FileExistsError(f"store {str(out)!r} is not empty; pass --resume to continue the run in it, "
                              "--overwrite to start again, or choose another folder")
    device = parse_device(args.device)
    model, spec = zoo.load_model(args.model, args.weights)
    model = model.to(device)
    class_names = getattr(model, "class_names", None)
    check_target(args.target, class_names)
    give_layer(model, methods, params, args.layer, spec.cam_layer)
    target: Any = int(args.target) if args.target.strip().lstrip("-").isdigit() else args.target
    try:
        explain_dataset(
            args.data, model, methods, metrics, out=out, target=target, method_params=params,
            metric_params=metric_params, labels=args.labels, seed=args.seed, engine=args.engine,
            address=args.address, batch_size=args.batch_size, workers=args.workers, chunk_size=args.chunk_size,
            resume=args.resume, overwrite=args.overwrite, run_info={"model": args.model, "weights": args.weights},
            html_summary=not args.no_summary, save_attributions=args.save_attributions,
            attributions_dtype=args.attributions_dtype, masks=args.masks, boxes=args.boxes,
        )
    except KeyboardInterrupt:
        log.error("interrupted: the finished parts stay in %s; run the same command with --resume to continue", out)
        raise
    sys.stdout.write(f"{out / 'results.parquet'}\n")
    errors = _error_images(Store(out, metrics))
    if errors:
        log.warning("%d image(s) have error rows (column 'error' of the store): exit code %d", errors,
                    command.EXIT_PARTIAL)
        return command.EXIT_PARTIAL
    return command.EXIT_OK


def _error_images(store: Any) -> int:
    """How many images of the store have an error row."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    paths: set[str] = set()
    for part in store.parts():
        t = pq.read_table(part, columns=["path", "error"])
        paths.update(t.filter(pc.is_valid(t.column("error"))).column("path").to_pylist())
    return len(paths)


def _summary_only(args: argparse.Namespace) -> int:
    """``--summary-only``: rewrite ``STORE/summary.html``; stdout gets its path."""
    from .. import zoo
    from ..argtypes import device as parse_device
    from .summary import write_summary

    model = None
    if args.model is not None:
        model = zoo.load_model(args.model, args.weights)[0].to(parse_device(args.device))
    path = write_summary(args.out, model=model)
    sys.stdout.write(f"{path}\n")
    return command.EXIT_OK
