"""The ``seewhy`` command: subcommands built from the registries, wired to explain(), viz and report.

::

    seewhy explain IMAGE... --model NAME|SPEC [--weights FILE] [--method m1,m2] [--target top1|top3|N|name]
                   [--layer NAME] [--batch-size N] [--set METHOD.PARAM=VALUE ...] [--seed N]
                   --out DIR [--overwrite] [--save-attributions] [--device cpu|cuda[:i]]
    seewhy demo --out DIR [--overwrite] [--method ...]     # bundled photos, efficientnet_lite0
    seewhy evaluate IMAGE... --model NAME|SPEC [--method m1,m2] [--metric x,y] [--masks PNG... | --boxes FILE]
                   [--labels FILE] [--no-controls] [--grid-images N] [--set NAME.PARAM=VALUE ...] --out DIR
    seewhy protopnet train DATA_DIR --out RUN_DIR [--backbone NAME] [--epochs N] ...
    seewhy protopnet explain RUN_DIR IMAGE... --out DIR [--target top1|N|NAME] [--top-k K]
    seewhy protopnet prototypes RUN_DIR --out DIR [--k K]
    seewhy methods [-v]                                    # registered methods (-v: parameters, cost)
    seewhy metrics [-v]                                    # registered metrics (cost, what they need)
    seewhy models                                          # zoo models

Exit codes (:data:`EXIT_CODES`): 0 success; 1 nothing to report (no image could be loaded, or every method
failed); 2 usage error (unknown method, model, layer or parameter, bad target, non-empty output folder without
``--overwrite``); 3 the report was written but some inputs, methods or metrics failed (its Failures section says
which); 130 interrupted. Before a run, ``explain``, ``demo`` and ``evaluate`` say what each method and metric will
cost; during it, a bar on a terminal or one log line per finished step otherwise (``-q``: neither). Diagnostics go to
stderr through :mod:`logging`; stdout gets only the path of the written report.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from . import __version__, estimate, images, report, zoo
from .argtypes import device as _device
from .argtypes import positive_int, setting
from .core import METHODS, get_method, seeded
from .hooks import model_state
from .layers import resolve_layer
from .progress import format_seconds, set_progress
from .runner import MethodRun, explain_batches
from .targets import make_target, parse_topk

log = logging.getLogger("seewhy")

DEMO_MODEL = "efficientnet_lite0"
# Lighter than the defaults, so that the demo runs in about a minute on two CPU cores. Applied to the
# methods of the run, for the parameters they have; --set overrides them.
DEMO_SETTINGS: dict[str, dict[str, Any]] = {
    "integrated_gradients": {"n_steps": 16},
    "smoothgrad": {"n_samples": 16},
    "occlusion": {"window": 56, "stride": 28},  # 7 x 7 windows: 49 forwards per image
    "occlusion_map": {"window": 56, "stride": 28},
    "rise": {"n_masks": 300},
    "lime": {"n_samples": 150},
    "kernel_shap": {"n_samples": 150},
}
# Left out of the demo unless asked for (--method all, or by name): one forward pass per channel of the
# CAM layer (1280 on efficientnet_lite0), about half a minute per image on two CPU cores.
DEMO_SKIP = ("scorecam",)


EXIT_OK, EXIT_NOTHING, EXIT_USAGE, EXIT_PARTIAL, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
EXIT_CODES = {
    EXIT_OK: "success",
    EXIT_NOTHING: "nothing to report: no input could be used, or every method failed",
    EXIT_USAGE: "usage error: unknown method, model, layer, parameter or class; bad target; output folder not empty",
    EXIT_PARTIAL: "the report was written, but some inputs, methods or metrics failed (see its Failures section)",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C); no report was written",
}
EPILOG = "exit codes:\n" + "\n".join(f"  {code:<4} {text}" for code, text in EXIT_CODES.items())


class UsageError(ValueError):
    """A bad command line: printed as one line, exit code 2."""


# -- parser --------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (subcommands explain, demo, methods, models)."""
    parser = argparse.ArgumentParser(
        prog="seewhy", description="See why a computer-vision model made a decision.", epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"seewhy {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    common = argparse.ArgumentParser(add_help=False)
    verbosity = common.add_mutually_exclusive_group()
    verbosity.add_argument("-v", "--verbose", action="store_true",
                           help="debug logging, tracebacks on errors; full details in listings")
    verbosity.add_argument("-q", "--quiet", action="store_true",
                           help="warnings and errors only: no cost estimate, no progress bar or progress lines")

    methods = ", ".join(METHODS)
    run = argparse.ArgumentParser(add_help=False, parents=[common])
    run.add_argument("--method", action="append", metavar="M1,M2",
                     help="methods to run, comma-separated or repeated (default: all, which leaves out the controls "
                          f"and model-specific methods such as protopnet: name those). Registered: {methods}")
    run.add_argument("--target", default="top1", metavar="top1|topK|N|NAME",
                     help="what to explain: the predicted class (top1, default), the K best classes of each image "
                          "(top3: three maps per method and image), a class index or a class name")
    run.add_argument("--layer", metavar="NAME",
                     help="layer for the methods that take one (a name from model.named_modules(); "
                          "default: the model's CAM layer)")
    run.add_argument("--batch-size", type=positive_int, default=16, metavar="N",
                     help="images per explain() call (default: 16)")
    run.add_argument("--set", action="append", default=[], metavar="METHOD.PARAM=VALUE", dest="sets",
                     help="a method hyperparameter, e.g. integrated_gradients.n_steps=20 (repeatable; "
                          "values are Python/JSON literals, anything else is a string)")
    run.add_argument("--seed", type=int, default=0, metavar="N",
                     help="seed for the methods that draw random numbers (default: 0)")
    run.add_argument("--out", required=True, metavar="DIR", help="output folder for the report")
    run.add_argument("--overwrite", action="store_true", help="write into a non-empty output folder")
    run.add_argument("--save-attributions", action="store_true",
                     help="also write the raw signed attributions as attributions.npz (default: not written)")
    run.add_argument("--device", default="cpu", help="torch device: cpu (default), cuda, cuda:1, mps")
    epilog = {"epilog": EPILOG, "formatter_class": argparse.RawDescriptionHelpFormatter}

    p = sub.add_parser("explain", parents=[run], help="explain a model's decisions on image files",
                       description="Explain a model's decisions on image files and write an HTML report.", **epilog)
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (PNG, JPEG, ...)")
    p.add_argument("--model", required=True, metavar="NAME|SPEC",
                   help=f"a zoo model ({', '.join(zoo.MODELS)}), path/file.py:factory, "
                        "package.module:factory or a TorchScript file")
    p.add_argument("--weights", metavar="FILE", help="a state-dict file to load into the model")
    p.set_defaults(func=_cmd_explain)

    p = sub.add_parser("demo", parents=[run], help=f"explain {DEMO_MODEL} on the bundled photos",
                       description=f"Explain {DEMO_MODEL} on the bundled photos "
                                   f"({', '.join(images.BUNDLED)}) with every registered method but the "
                                   f"slowest ({', '.join(DEMO_SKIP)}; add them with --method all), with "
                                   "lighter settings (see --set): " + ", ".join(
                                       f"{m}.{k}={v}" for m, kv in DEMO_SETTINGS.items() for k, v in kv.items()),
                       **epilog)
    p.set_defaults(func=_cmd_demo)

    from .evaluate import DEFAULT_METRICS
    from .metrics import list_metrics

    p = sub.add_parser("evaluate", parents=[run], help="score explanation methods with evaluation metrics",
                       description="Explain image files with each method (and two controls that ignore the "
                                   "model), score every explanation with the metrics, and write an HTML report "
                                   "with a leaderboard, curves, the cascading-randomization grid, and the numbers "
                                   "as results.csv / results.json. --set takes METHOD.PARAM or METRIC.PARAM.",
                       **epilog)
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (PNG, JPEG, ...)")
    p.add_argument("--model", required=True, metavar="NAME|SPEC", help="as for seewhy explain")
    p.add_argument("--weights", metavar="FILE", help="a state-dict file to load into the model")
    p.add_argument("--metric", action="append", metavar="M1,M2",
                   help=f"metrics, comma-separated or repeated (default: {','.join(DEFAULT_METRICS)}; 'all' for "
                        f"every one that the inputs allow). Registered: {', '.join(list_metrics())}")
    masks = p.add_mutually_exclusive_group()
    masks.add_argument("--masks", nargs="+", metavar="PNG",
                       help="object masks for the localization metrics, one PNG per image in the same order")
    masks.add_argument("--boxes", metavar="FILE",
                       help="object boxes for the localization metrics: JSON or CSV keyed by image file name")
    p.add_argument("--labels", metavar="FILE",
                   help="true classes (JSON {file name: class index or name}, or CSV with columns image,label): "
                        "misclassified images get the maps of the predicted and the true class side by side")
    p.add_argument("--no-controls", action="store_true",
                   help="leave out the random and edge-detector controls")
    p.add_argument("--grid-images", type=positive_int, default=1, metavar="N",
                   help="images shown in the randomization grid (default: 1)")
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("methods", parents=[common], help="list the registered attribution methods",
                       description="The registered methods by family, with their cost per image; -v adds the full "
                                   "description and every parameter with its default.")
    p.set_defaults(func=_cmd_list)
    p = sub.add_parser("metrics", parents=[common], help="list the registered evaluation metrics",
                       description="The registered metrics: family, direction, cost per image and method, and what "
                                   "they need besides the image and the map; -v adds the description and parameters.")
    p.set_defaults(func=_cmd_list)
    p = sub.add_parser("models", parents=[common], help="list the zoo models")
    p.set_defaults(func=_cmd_list)

    from .protopnet import cli as protopnet_cli

    protopnet_cli.add_parser(sub, common)
    return parser


# -- entry point ---------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """Run the ``seewhy`` command line; returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help, --version, argparse usage errors (code 2)
        return exit_.code if isinstance(exit_.code, int) else 2
    args.argv = list(sys.argv[1:] if argv is None else argv)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter())
    saved = log.level, log.propagate
    log.addHandler(handler)
    log.propagate = False
    log.setLevel(logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO)
    shown = set_progress(False) if args.quiet else None
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _log_warning
            return args.func(args)
    except BrokenPipeError:  # `seewhy methods | head`: the reader has gone; nothing to say
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115  (Python would report the pipe again at exit)
        return EXIT_OK
    except (ValueError, TypeError, OSError, ImportError) as err:  # bad input: one line, no traceback
        if args.verbose:
            log.exception("error")
        print(f"seewhy: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("seewhy: interrupted; no report was written", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        if args.quiet:
            set_progress(shown)
        log.removeHandler(handler)
        log.setLevel(saved[0])
        log.propagate = saved[1]


class _Formatter(logging.Formatter):
    """``seewhy: message``, with ``warning:`` / ``error:`` before warnings and errors."""

    def format(self, record: logging.LogRecord) -> str:
        level = {logging.WARNING: "warning: ", logging.ERROR: "error: ", logging.CRITICAL: "error: "}
        return f"seewhy: {level.get(record.levelno, '')}{super().format(record)}"


def _log_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                 file: Any = None, line: str | None = None) -> None:
    log.warning("%s", message)


# -- subcommands ---------------------------------------------------------------------------------------


def _cmd_list(args: argparse.Namespace) -> int:
    """``seewhy methods | metrics | models``: the registry as text (seewhy.listings)."""
    from . import listings

    print({"methods": lambda: listings.methods_listing(verbose=args.verbose),
           "metrics": lambda: listings.metrics_listing(verbose=args.verbose),
           "models": listings.models_listing}[args.command]())
    return EXIT_OK


def _cmd_explain(args: argparse.Namespace) -> int:
    methods, params = _plan(args)
    report.prepare_out_dir(args.out, overwrite=args.overwrite, create=False)
    device = _device(args.device)
    model, spec = zoo.load_model(args.model, args.weights)
    loaded, failures = images.load_images(args.images)
    for path, reason in failures:
        log.warning("skipping: %s", reason if path in reason else f"{path}: {reason}")
    named = [(images.image_name(path), path, img) for path, img in loaded]
    model_info = {"name": spec.name, "description": spec.description, "spec": args.model,
                  "weights": args.weights or ("pretrained" if spec.has_weights else "none (random init)")}
    return _run(args, model, spec, model_info, named, failures, methods, params, device,
                n_inputs=len(args.images))


def _cmd_demo(args: argparse.Namespace) -> int:
    skipped = [m for m in DEMO_SKIP if m in METHODS] if args.method is None else []
    methods, params = _plan(args, defaults=DEMO_SETTINGS, skip=skipped)
    if skipped:
        log.info("demo skips %s (one forward pass per channel of the CAM layer: about half a minute per image); "
                 "add them with --method all or by name", ", ".join(skipped))
    report.prepare_out_dir(args.out, overwrite=args.overwrite, create=False)
    device = _device(args.device)
    shown = [f"{m}.{k}={v!r}" for m in methods for k, v in DEMO_SETTINGS.get(m, {}).items()
             if k in params[m] and params[m][k] == v]
    if shown:
        log.info("demo settings (lighter than the defaults; change with --set): %s", ", ".join(shown))
    model, spec = zoo.load_model(DEMO_MODEL)
    named = [(name, f"scikit-image data: {name}", images.bundled_image(name)) for name in images.BUNDLED]
    model_info = {"name": spec.name, "description": spec.description, "spec": DEMO_MODEL,
                  "weights": "pretrained"}
    notes = {"demo_skipped_methods": skipped} if skipped else {}
    return _run(args, model, spec, model_info, named, [], methods, params, device, n_inputs=len(named),
                notes=notes)


EVALUATE_METHODS = ("saliency", "integrated_gradients", "guided_backprop", "gradcam", "lrp")
# lighter than the defaults for the metrics that cost many forwards per image (override with --set)
EVALUATE_SETTINGS: dict[str, dict[str, Any]] = {"integrated_gradients": {"n_steps": 16}}


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from .evaluate import DEFAULT_METRICS, check_metric_params, evaluate
    from .evaluation_report import write_evaluation_report
    from .labels import load_labels, table_entry
    from .metrics import METRICS, get_metric, list_metrics
    from .metrics.localization import boxes_to_masks, load_boxes, load_masks

    metric_sets = [item for item in args.sets if setting(item)[0] in METRICS]
    args.sets = [item for item in args.sets if item not in metric_sets]
    if args.method is None:
        args.method = [",".join(m for m in EVALUATE_METHODS if m in METHODS)]
    methods, params = _plan(args, defaults=EVALUATE_SETTINGS)
    have_masks = bool(args.masks or args.boxes)
    names = [n.strip() for v in args.metric or [",".join(DEFAULT_METRICS)] for n in v.split(",") if n.strip()]
    if "all" in names:
        names = [m for m in list_metrics() if have_masks or "mask" not in get_metric(m).needs]
    metrics = list(dict.fromkeys(names))
    for m in metrics:
        get_metric(m)  # unknown metric: the registered names
    need_masks = [m for m in metrics if "mask" in get_metric(m).needs]
    if need_masks and not have_masks:
        raise UsageError(f"metrics {', '.join(need_masks)} need object masks: give --masks or --boxes")
    metric_params: dict[str, dict[str, Any]] = {}
    for item in metric_sets:
        m, key, value = setting(item)
        if m not in metrics:
            raise UsageError(f"--set {item}: {m!r} is not among the metrics of this run ({', '.join(metrics)})")
        metric_params.setdefault(m, {})[key] = value
    for m, p in metric_params.items():
        check_metric_params(m, p)  # unknown parameter: the valid ones
    if args.masks and len(args.masks) != len(args.images):
        raise UsageError(f"got {len(args.masks)} masks for {len(args.images)} images; give one mask per image")

    report.prepare_out_dir(args.out, overwrite=args.overwrite, create=False)
    device = _device(args.device)
    model, spec = zoo.load_model(args.model, args.weights)
    model = model.to(device)
    class_names = getattr(model, "class_names", None)
    if _check_target(args.target, class_names) > 1:
        raise UsageError(f"--target {args.target}: evaluate scores one explanation per image; use top1, a class index "
                         "or a class name (seewhy explain takes topK)")
    _layers(args, model, spec, methods, params)
    loaded, failures = images.load_images(args.images)
    for path, reason in failures:
        log.warning("skipping: %s", reason if path in reason else f"{path}: {reason}")
    named = [(images.image_name(path), path, img) for path, img in loaded]
    rows, inputs, failed = _prepare(named, spec)
    failures = [*failures, *failed]
    if not rows:
        log.error("none of the %d input(s) could be used; nothing to evaluate", len(args.images))
        return EXIT_NOTHING
    used = {r.source for r in rows}
    kept = [(path, img) for path, img in loaded if str(path) in used]
    x = torch.stack(inputs).to(device)
    size = tuple(x.shape[-2:])
    masks = None
    if args.masks:  # paired with the images by position (an image may be given twice)
        given = [str(p) for p in args.images]
        ok = [i for i, p in enumerate(given) if p in used]
        masks = load_masks([args.masks[i] for i in ok], size, resize=spec.resize)
    elif args.boxes:
        boxes = load_boxes(args.boxes)
        missing = [str(p) for p, _ in kept if table_entry(p, boxes) is None]
        if missing:
            raise UsageError(f"{args.boxes} has no boxes for {', '.join(missing)} (its keys: "
                             f"{', '.join(sorted(boxes)[:10])}{', ...' if len(boxes) > 10 else ''}); give boxes for "
                             "every image, keyed by its path or file name (an empty list for an image without objects)")
        found = [boxes[table_entry(p, boxes)] for p, _ in kept]
        masks = boxes_to_masks(found, size, image_size=[img.size for _, img in kept], resize=spec.resize)
    labels = load_labels(args.labels, [p for p, _ in kept], class_names) if args.labels else None

    output = _predict(model, _batches(inputs, args.batch_size, device), args.target, class_names)
    if output is not None:
        rows = [dataclasses.replace(r, output=output[i]) for i, r in enumerate(rows)]
    if labels is not None:
        with model_state(model), torch.no_grad():
            n_classes = int(model(x[:1]).shape[1])
        bad = [(str(p), v) for (p, _), v in zip(kept, labels, strict=True) if not 0 <= v < n_classes]
        if bad:
            raise UsageError(f"{args.labels}: labels out of range for a model with {n_classes} classes: "
                             + ", ".join(f"{p}: {v}" for p, v in bad[:5]))
    result = evaluate(model, x, methods, metrics, target=args.target,
                      method_params=params, metric_params=metric_params, masks=masks, labels=labels,
                      controls=not args.no_controls, batch_size=args.batch_size, seed=args.seed)
    if not result.explanations:
        log.error("every method failed; no report written")
        return EXIT_NOTHING
    path = write_evaluation_report(
        args.out, rows, result, model={"name": spec.name, "description": spec.description, "spec": args.model,
                                       "weights": args.weights or ("pretrained" if spec.has_weights else "none")},
        target=args.target, class_names=class_names, grid_images=args.grid_images,
        preprocessing={"resize": spec.resize, "crop": spec.crop, "mean": list(spec.mean), "std": list(spec.std)},
        failures=failures, settings={"device": str(device), "batch_size": args.batch_size, "seed": args.seed,
                                     "metric_settings": metric_params},
        command=["seewhy", *args.argv], overwrite=args.overwrite, save_attributions=args.save_attributions,
    )
    log.info("%d image(s) x %d method(s) x %d metric(s); %d input(s) skipped", len(rows), len(result.explanations),
             len(metrics), len(failures))
    print(path)
    return _exit_code(failures, list(result.errors))


# -- wiring --------------------------------------------------------------------------------------------


def _plan(args: argparse.Namespace, defaults: dict[str, dict[str, Any]] | None = None,
          skip: Sequence[str] = ()) -> tuple[list[str], dict[str, dict[str, Any]]]:
    """Selected methods (all but ``skip`` by default) and their hyperparameters (``defaults``, then
    --seed, then --set), validated."""
    methods = [m for m in _methods(args.method) if m not in skip]
    params: dict[str, dict[str, Any]] = {m: {} for m in methods}
    for m in methods:
        fields = {f.name for f in dataclasses.fields(METHODS[m])}
        params[m] = seeded(m, {k: v for k, v in (defaults or {}).get(m, {}).items() if k in fields}, args.seed)
    for item in args.sets:
        m, key, value = setting(item)
        if m not in METHODS:
            get_method(m)  # raises: unknown method, with the registered names
        if m not in params:
            raise UsageError(f"--set {item}: {m!r} is not among the methods of this run "
                             f"({', '.join(methods)}); add it with --method")
        params[m][key] = value
    for m in methods:
        get_method(m, **params[m])  # raises on an unknown parameter, listing the valid ones
    return methods, params


def _methods(values: Sequence[str] | None) -> list[str]:
    """The named methods; "all" (the default) stands for every method whose ``in_all`` is set (not the
    controls, not the model-specific methods such as protopnet: name those)."""
    names = [n.strip() for v in values or ["all"] for n in v.split(",") if n.strip()] or ["all"]
    out: list[str] = []
    for n in names:
        if n == "all":
            out.extend(m for m, cls in METHODS.items() if cls.in_all and m not in out)
            continue
        if n not in METHODS:
            get_method(n)  # raises ValueError: unknown method, did you mean ..., registered: ...
        if n not in out:
            out.append(n)
    return out


def _run(args: argparse.Namespace, model: torch.nn.Module, spec: zoo.ModelSpec, model_info: dict[str, Any],
         named: list[tuple[str, str, Any]], failures: list[tuple[str, str]], methods: list[str],
         params: dict[str, dict[str, Any]], device: torch.device, *, n_inputs: int,
         notes: dict[str, Any] | None = None) -> int:
    """Preprocess, predict, estimate the cost, explain each method over the image batches (timed, with progress),
    write the report; the exit code says whether anything failed."""
    model = model.to(device)
    class_names = getattr(model, "class_names", None)
    _check_target(args.target, class_names)  # a bad class name fails here, before any work
    _layers(args, model, spec, methods, params)

    rows, inputs, failed = _prepare(named, spec)
    failures = [*failures, *failed]
    if not rows:
        log.error("none of the %d input(s) could be used; nothing to explain (see the messages above)",
                  n_inputs)
        return EXIT_NOTHING
    batches = _batches(inputs, args.batch_size, device)
    output = _predict(model, batches, args.target, class_names)
    if output is not None:
        rows = [dataclasses.replace(r, output=output[i]) for i, r in enumerate(rows)]
    estimate.log_run(model, batches[0], methods, params, len(rows), classes=parse_topk(args.target) or 1)

    runs = _explain_all(model, batches, methods, params, args.target)
    if not any(r.ok for r in runs):
        log.error("every method failed; no report written")
        return EXIT_NOTHING

    path = report.write_explain_report(
        args.out, rows, runs, model=model_info, target=args.target,
        preprocessing={"resize": spec.resize, "crop": spec.crop, "interpolation": spec.interpolation,
                       "mean": list(spec.mean), "std": list(spec.std)},
        failures=failures, class_names=class_names,
        settings={"device": str(device), "batch_size": args.batch_size, "seed": args.seed, **(notes or {})},
        command=["seewhy", *args.argv], title=f"seewhy {args.command}", overwrite=args.overwrite,
        save_attributions=args.save_attributions,
    )
    ok = sum(r.ok for r in runs)
    log.info("%d image(s) x %d method(s) in %s; %d input(s) skipped%s", len(rows), ok,
             format_seconds(sum(sum(r.seconds) for r in runs)), len(failures),
             f"; {len(runs) - ok} method(s) failed" if ok < len(runs) else "")
    print(path)
    return _exit_code(failures, [r.name for r in runs if not r.ok])


def _exit_code(failed_inputs: Sequence[Any], failed_steps: Sequence[str]) -> int:
    """0 when everything worked, else 3 (the report is written; its Failures section lists what failed)."""
    if not failed_inputs and not failed_steps:
        return EXIT_OK
    what = [f"{len(failed_inputs)} input(s)" if failed_inputs else "", ", ".join(failed_steps)]
    log.warning("finished with failures (%s): exit code %d", "; ".join(w for w in what if w), EXIT_PARTIAL)
    return EXIT_PARTIAL


def _check_target(target: str, class_names: Sequence[str] | None) -> int:
    """Check a --target before any work; returns the number of classes explained per image (k of topk, else 1)."""
    k = parse_topk(target)
    if k is not None:
        return k
    make_target(target, 1, class_names)
    return 1


def _prepare(named: list[tuple[str, str, Any]], spec: zoo.ModelSpec
             ) -> tuple[list[report.ImageRow], list[Tensor], list[tuple[str, str]]]:
    """Report rows (the crop as the model sees it), model inputs, and the images that failed."""
    rows, inputs, failures = [], [], []
    for name, source, img in named:
        try:
            crop = images.resize_crop(img, spec.resize, spec.crop, spec.interpolation)
            x = spec.preprocess(img)
        except (ValueError, TypeError, OSError) as err:
            log.warning("skipping %s: %s", source, err)
            failures.append((source, f"preprocessing failed: {err}"))
            continue
        rows.append(report.ImageRow(name=name, image=np.asarray(crop.convert("RGB"), dtype=np.uint8),
                                    source=source))
        inputs.append(x)
    return rows, inputs, failures


def _predict(model: torch.nn.Module, batches: list[Tensor], target: str,
             class_names: Sequence[str] | None) -> Tensor | None:
    """The model's outputs (N,K) on the CPU (None if not class scores); checks the target against them."""
    k = parse_topk(target)
    outputs = []
    with model_state(model), torch.no_grad():
        for x in batches:
            out = model(x)
            if k is None:
                make_target(target, x.shape[0], class_names).resolve(out).score(out)  # e.g. index out of range
            elif out.ndim != 2 or out.shape[1] < k:
                raise UsageError(f"--target {target} needs at least {k} class scores per image; the model returns "
                                 f"{tuple(out.shape)}")
            outputs.append(out.detach().cpu())
    return torch.cat(outputs) if all(o.ndim == 2 for o in outputs) else None


def _explain_all(model: torch.nn.Module, batches: list[Tensor], methods: list[str],
                 params: dict[str, dict[str, Any]], target: str) -> list[MethodRun]:
    """Every method over every batch (:func:`seewhy.runner.explain_batches`)."""
    return list(explain_batches(model, batches, methods, params, target))


def _layers(args: argparse.Namespace, model: torch.nn.Module, spec: zoo.ModelSpec, methods: list[str],
            params: dict[str, dict[str, Any]]) -> None:
    """Give --layer (or the model's CAM layer) to the methods that take a layer; validate the name."""
    takes = [m for m in methods if "layer" in {f.name for f in dataclasses.fields(METHODS[m])}]
    if args.layer is not None:
        resolve_layer(model, args.layer)  # raises: unknown layer, with the closest names
        if not takes:
            log.warning("--layer %s is ignored: none of the methods (%s) takes a layer",
                        args.layer, ", ".join(methods))
    layer = args.layer or spec.cam_layer
    for m in takes:
        if layer is not None and "layer" not in params[m]:
            params[m]["layer"] = layer


def _batches(inputs: list[Tensor], size: int, device: torch.device) -> list[Tensor]:
    """Stack consecutive inputs of the same shape into batches of at most ``size`` images."""
    out: list[list[Tensor]] = []
    for x in inputs:
        if out and len(out[-1]) < size and out[-1][0].shape == x.shape:
            out[-1].append(x)
        else:
            out.append([x])
    return [torch.stack(b).to(device) for b in out]


