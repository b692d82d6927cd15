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
    seewhy inside filters --model NAME|SPEC [--layer L] [--max-filters N] --out DIR
    seewhy inside maps IMAGE... --model NAME|SPEC [--layer L] [--top N | --channels 1,2,3] --out DIR
    seewhy inside patches DATA... --model NAME|SPEC [--layer L] [--units 0,1,5 | --top-units N] [--k K] --out DIR
    seewhy inside embed DATA... --model NAME|SPEC [--layer L] [--method umap|tsne|pca] [--grid] [--seed N] --out DIR
    seewhy inside dissect DATA... --model NAME|SPEC [--layer L] [--concepts colours|FOLDER] [--quantile Q]
                  [--iou-threshold T] [--top-patches K] --out DIR
    seewhy featvis --model NAME|SPEC --objective channel:LAYER:C|neuron:...|class:K|class:NAME [--objective ...]
                   [--size PX] [--steps N] [--lr LR] [--param fft|pixel] [--no-decorrelate] [--transforms standard|none]
                   [--batch N] [--diversity W] [--regularizer tv:0.05 ...] [--seed N] [--input-size PX] --out DIR
    seewhy atlas DATA... --model NAME|SPEC [--layer L] [--grid N] [--min-count N] [--icon-size PX] [--steps N]
                 [--class K|NAME] [--samples-per-image N] [--seed N] [--batch-size N] --out DIR
    seewhy prototypes DATA... --model NAME|SPEC [--layer L] [--prototypes P] [--criticisms C] --out DIR
    seewhy effects IMAGE... --model NAME|SPEC [--transform brightness,contrast,...] [--values ...] [--target K|NAME]
                   --out DIR
    seewhy attack IMAGE... --model NAME|SPEC [--eps 2/255] [--attack pgd|fgsm] [--norm linf|l2] [--target K|NAME]
                  [--method saliency,gradcam] [--curve 0,1/255,2/255] --out DIR
    seewhy serve [--model M ...] [--host 127.0.0.1] [--port 8765] [--workers 1] [--max-upload-mb 20]
    seewhy explain-dataset DATA --model NAME|SPEC [--method gradcam,...] [--metric deletion_auc,...] --out STORE
                   [--resume | --overwrite] [--engine local] [--batch-size N] [--workers N]
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
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from . import estimate, images, report, zoo
from .adversarial.cli import add_parser as add_attack_parser
from .annotations import check_labels, load_labels, object_masks
from .argtypes import device as _device
from .argtypes import positive_int, setting
from .command import (  # noqa: F401  (the exit codes and UsageError are part of this module's interface)
    EPILOG,
    EXIT_CODES,
    EXIT_INTERRUPTED,
    EXIT_NOTHING,
    EXIT_OK,
    EXIT_PARTIAL,
    EXIT_USAGE,
    UsageError,
    common_options,
    exit_code,
    run,
)
from .core import METHODS
from .dataset.cli import add_parser as add_dataset_parser
from .effects.cli import add_parser as add_effects_parser
from .featvis.cli import add_parser as add_featvis_parser
from .hooks import model_state
from .inputs import load_inputs, predict, prepare, stack_batches
from .inside.cli import add_parser as add_inside_parser
from .inside.prototypes_cli import add_parser as add_prototypes_parser
from .plan import check_target, give_layer, plan_methods, plan_metrics
from .plan import select_methods as _methods  # noqa: F401  (tests read cli._methods)
from .progress import format_seconds
from .protopnet.cli import add_parser as add_protopnet_parser
from .report_files import prepare_out_dir
from .runner import explain_batches
from .serve.cli import add_parser as add_serve_parser
from .targets import parse_topk
from .version import __version__

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


EVALUATE_METHODS = ("saliency", "integrated_gradients", "guided_backprop", "gradcam", "lrp")
# lighter than the defaults for the metrics that cost many forwards per image (override with --set)
EVALUATE_SETTINGS: dict[str, dict[str, Any]] = {"integrated_gradients": {"n_steps": 16}}
_FORMAT = {"epilog": EPILOG, "formatter_class": argparse.RawDescriptionHelpFormatter}


# -- parser --------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (subcommands explain, demo, evaluate, methods, metrics, models, protopnet, inside, featvis,
    atlas, prototypes, effects,
    attack, serve, explain-dataset)."""
    parser = argparse.ArgumentParser(prog="seewhy", description="See why a computer-vision model made a decision.",
                                     **_FORMAT)
    parser.add_argument("--version", action="version", version=f"seewhy {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    common = common_options()
    run_options = _run_options(common)
    _add_explain(sub, run_options)
    _add_demo(sub, run_options)
    _add_evaluate(sub, run_options)
    _add_listings(sub, common)
    add_protopnet_parser(sub, common)
    add_inside_parser(sub, common)
    add_featvis_parser(sub, common)
    add_prototypes_parser(sub, common)
    add_effects_parser(sub, common)
    add_attack_parser(sub, common)
    add_serve_parser(sub, common)
    add_dataset_parser(sub, common)
    return parser


def _run_options(common: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of every run (explain, demo, evaluate): methods, target, layer, settings, output."""
    run_ = argparse.ArgumentParser(add_help=False, parents=[common])
    methods = ", ".join(METHODS)
    run_.add_argument("--method", action="append", metavar="M1,M2",
                      help="methods to run, comma-separated or repeated (default: all, which leaves out the controls "
                           f"and model-specific methods such as protopnet: name those). Registered: {methods}")
    run_.add_argument("--target", default="top1", metavar="top1|topK|N|NAME",
                      help="what to explain: the predicted class (top1, default), the K best classes of each image "
                           "(top3: three maps per method and image), a class index or a class name")
    run_.add_argument("--layer", metavar="NAME",
                      help="layer for the methods that take one (a name from model.named_modules(); "
                           "default: the model's CAM layer)")
    run_.add_argument("--batch-size", type=positive_int, default=16, metavar="N",
                      help="images per explain() call (default: 16)")
    run_.add_argument("--set", action="append", default=[], metavar="METHOD.PARAM=VALUE", dest="sets",
                      help="a method hyperparameter, e.g. integrated_gradients.n_steps=20 (repeatable; "
                           "values are Python/JSON literals, anything else is a string)")
    run_.add_argument("--seed", type=int, default=0, metavar="N",
                      help="seed for the methods that draw random numbers (default: 0)")
    run_.add_argument("--out", required=True, metavar="DIR", help="output folder for the report")
    run_.add_argument("--overwrite", action="store_true", help="write into a non-empty output folder")
    run_.add_argument("--save-attributions", action="store_true",
                      help="also write the raw signed attributions as attributions.npz (default: not written)")
    run_.add_argument("--device", default="cpu", help="torch device: cpu (default), cuda, cuda:1, mps")
    return run_


def _model_options(p: argparse.ArgumentParser, model_help: str) -> None:
    """The image files and the model of ``explain`` and ``evaluate``."""
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (PNG, JPEG, ...)")
    p.add_argument("--model", required=True, metavar="NAME|SPEC", help=model_help)
    p.add_argument("--weights", metavar="FILE", help="a state-dict file to load into the model")


def _add_explain(sub: Any, run_options: argparse.ArgumentParser) -> None:
    p = sub.add_parser("explain", parents=[run_options], help="explain a model's decisions on image files",
                       description="Explain a model's decisions on image files and write an HTML report.", **_FORMAT)
    _model_options(p, f"a zoo model ({', '.join(zoo.MODELS)}), path/file.py:factory, package.module:factory or a "
                      "TorchScript file")
    p.set_defaults(func=_cmd_explain)


def _add_demo(sub: Any, run_options: argparse.ArgumentParser) -> None:
    settings = ", ".join(f"{m}.{k}={v}" for m, kv in DEMO_SETTINGS.items() for k, v in kv.items())
    p = sub.add_parser("demo", parents=[run_options], help=f"explain {DEMO_MODEL} on the bundled photos",
                       description=f"Explain {DEMO_MODEL} on the bundled photos ({', '.join(images.BUNDLED)}) with "
                                   f"every registered method but the slowest ({', '.join(DEMO_SKIP)}; add them with "
                                   f"--method all), with lighter settings (see --set): {settings}", **_FORMAT)
    p.set_defaults(func=_cmd_demo)


def _add_evaluate(sub: Any, run_options: argparse.ArgumentParser) -> None:
    from .evaluate import DEFAULT_METRICS
    from .metrics import list_metrics

    p = sub.add_parser("evaluate", parents=[run_options], help="score explanation methods with evaluation metrics",
                       description="Explain image files with each method (and two controls that ignore the "
                                   "model), score every explanation with the metrics, and write an HTML report "
                                   "with a leaderboard, curves, the cascading-randomization grid, and the numbers "
                                   "as results.csv / results.json. --set takes METHOD.PARAM or METRIC.PARAM.",
                       **_FORMAT)
    _model_options(p, "as for seewhy explain")
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
    p.add_argument("--no-controls", action="store_true", help="leave out the random and edge-detector controls")
    p.add_argument("--grid-images", type=positive_int, default=1, metavar="N",
                   help="images shown in the randomization grid (default: 1)")
    p.set_defaults(func=_cmd_evaluate)


def _add_listings(sub: Any, common: argparse.ArgumentParser) -> None:
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


def main(argv: list[str] | None = None) -> int:
    """Run the ``seewhy`` command line; returns the exit code (:data:`EXIT_CODES`)."""
    return run(build_parser(), argv)


# -- subcommands ---------------------------------------------------------------------------------------


def _cmd_list(args: argparse.Namespace) -> int:
    """``seewhy methods | metrics | models``: the registry as text (seewhy.listings)."""
    from . import listings

    print({"methods": lambda: listings.methods_listing(verbose=args.verbose),
           "metrics": lambda: listings.metrics_listing(verbose=args.verbose),
           "models": listings.models_listing}[args.command]())
    return EXIT_OK


def _cmd_explain(args: argparse.Namespace) -> int:
    methods, params = plan_methods(args.method, args.sets, args.seed)
    prepare_out_dir(args.out, overwrite=args.overwrite, create=False)
    device = _device(args.device)
    model, spec = zoo.load_model(args.model, args.weights)
    loaded, failures = load_inputs(args.images)
    named = [(images.image_name(path), path, img) for path, img in loaded]
    model_info = {"name": spec.name, "description": spec.description, "spec": args.model,
                  "weights": args.weights or ("pretrained" if spec.has_weights else "none (random init)")}
    return _run(args, model, spec, model_info, named, failures, methods, params, device,
                n_inputs=len(args.images))


def _cmd_demo(args: argparse.Namespace) -> int:
    skipped = [m for m in DEMO_SKIP if m in METHODS] if args.method is None else []
    methods, params = plan_methods(args.method, args.sets, args.seed, defaults=DEMO_SETTINGS, skip=skipped)
    if skipped:
        log.info("demo skips %s (one forward pass per channel of the CAM layer: about half a minute per image); "
                 "add them with --method all or by name", ", ".join(skipped))
    prepare_out_dir(args.out, overwrite=args.overwrite, create=False)
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


def _run(args: argparse.Namespace, model: nn.Module, spec: zoo.ModelSpec, model_info: dict[str, Any],
         named: list[tuple[str, str, Any]], failures: list[tuple[str, str]], methods: list[str],
         params: dict[str, dict[str, Any]], device: torch.device, *, n_inputs: int,
         notes: dict[str, Any] | None = None) -> int:
    """Preprocess, predict, estimate the cost, explain each method over the image batches (timed, with progress),
    write the report; the exit code says whether anything failed."""
    model = model.to(device)
    class_names = getattr(model, "class_names", None)
    check_target(args.target, class_names)  # a bad class name fails here, before any work
    give_layer(model, methods, params, args.layer, spec.cam_layer)

    rows, inputs, failed = prepare(named, spec)
    failures = [*failures, *failed]
    if not rows:
        log.error("none of the %d input(s) could be used; nothing to explain (see the messages above)",
                  n_inputs)
        return EXIT_NOTHING
    batches = stack_batches(inputs, args.batch_size, device)
    output = predict(model, batches, args.target, class_names)
    if output is not None:
        rows = [dataclasses.replace(r, output=output[i]) for i, r in enumerate(rows)]
    estimate.log_run(model, batches[0], methods, params, len(rows), classes=parse_topk(args.target) or 1)

    runs = list(explain_batches(model, batches, methods, params, args.target))
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
    return exit_code(failures, [r.name for r in runs if not r.ok])


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from .evaluate import DEFAULT_METRICS, evaluate
    from .evaluation_report import write_evaluation_report
    from .metrics import METRICS

    metric_sets = [item for item in args.sets if setting(item)[0] in METRICS]
    method_sets = [item for item in args.sets if item not in metric_sets]
    values = args.method if args.method is not None else [",".join(m for m in EVALUATE_METHODS if m in METHODS)]
    methods, params = plan_methods(values, method_sets, args.seed, defaults=EVALUATE_SETTINGS)
    metrics, metric_params = plan_metrics(args.metric, metric_sets, DEFAULT_METRICS,
                                          have_masks=bool(args.masks or args.boxes))
    if args.masks and len(args.masks) != len(args.images):
        raise UsageError(f"got {len(args.masks)} masks for {len(args.images)} images; give one mask per image")

    prepare_out_dir(args.out, overwrite=args.overwrite, create=False)
    device = _device(args.device)
    model, spec = zoo.load_model(args.model, args.weights)
    model = model.to(device)
    class_names = getattr(model, "class_names", None)
    if check_target(args.target, class_names) > 1:
        raise UsageError(f"--target {args.target}: evaluate scores one explanation per image; use top1, a class index "
                         "or a class name (seewhy explain takes topK)")
    give_layer(model, methods, params, args.layer, spec.cam_layer)
    data = _evaluation_inputs(args, model, spec, device, class_names)
    if data is None:
        return EXIT_NOTHING
    rows, x, masks, labels, failures = data
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
    return exit_code(failures, list(result.errors))


def _evaluation_inputs(args: argparse.Namespace, model: nn.Module, spec: zoo.ModelSpec, device: torch.device,
                       class_names: Sequence[str] | None) -> tuple[list[report.ImageRow], torch.Tensor, Any, Any,
                                                                   list[tuple[str, str]]] | None:
    """The images of ``seewhy evaluate`` as report rows (with the model's outputs) and one input tensor, their object
    masks and true labels (None without), and the inputs that failed; None when no image could be used."""
    loaded, failures = load_inputs(args.images)
    named = [(images.image_name(path), path, img) for path, img in loaded]
    rows, inputs, failed = prepare(named, spec)
    failures = [*failures, *failed]
    if not rows:
        log.error("none of the %d input(s) could be used; nothing to evaluate", len(args.images))
        return None
    used = {r.source for r in rows}
    kept = [(path, img) for path, img in loaded if str(path) in used]
    x = torch.stack(inputs).to(device)
    masks = object_masks(args.images, used, kept, tuple(x.shape[-2:]), spec.resize, masks=args.masks,
                         boxes=args.boxes)
    labels = load_labels(args.labels, [p for p, _ in kept], class_names) if args.labels else None
    output = predict(model, stack_batches(inputs, args.batch_size, device), args.target, class_names)
    if output is not None:
        rows = [dataclasses.replace(r, output=output[i]) for i, r in enumerate(rows)]
    if labels is not None:
        with model_state(model), torch.no_grad():
            n_classes = int(model(x[:1]).shape[1])
        check_labels(labels, [p for p, _ in kept], n_classes, args.labels)
    return rows, x, masks, labels, failures
