"""The ``seewhy`` command: subcommands built from the registries, wired to explain(), viz and report.

::

    seewhy explain IMAGE... --model NAME|SPEC [--weights FILE] [--method m1,m2] [--target top1|N|name]
                   [--layer NAME] [--batch-size N] [--set METHOD.PARAM=VALUE ...] [--seed N]
                   --out DIR [--overwrite] [--device cpu|cuda[:i]]
    seewhy demo --out DIR [--overwrite] [--method ...]     # bundled photos, efficientnet_lite0
    seewhy methods                                         # registered methods
    seewhy models                                          # zoo models

Exit codes: 0 success (some inputs may have been skipped, see stderr and the report), 1 nothing to
report (no image could be loaded, or every method failed), 2 usage error (unknown method, model, layer
or parameter, bad target, non-empty output folder without ``--overwrite``). Diagnostics go to stderr
through :mod:`logging`; stdout gets only the path of the written report.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import logging
import sys
import time
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from . import __version__, images, report, zoo
from .core import METHODS, explain, get_method
from .layers import resolve_layer
from .targets import make_target

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


class UsageError(ValueError):
    """A bad command line: printed as one line, exit code 2."""


# -- parser --------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (subcommands explain, demo, methods, models)."""
    parser = argparse.ArgumentParser(
        prog="seewhy", description="See why a computer-vision model made a decision."
    )
    parser.add_argument("--version", action="version", version=f"seewhy {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    common = argparse.ArgumentParser(add_help=False)
    verbosity = common.add_mutually_exclusive_group()
    verbosity.add_argument("-v", "--verbose", action="store_true", help="debug logging, tracebacks on errors")
    verbosity.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")

    methods = ", ".join(METHODS)
    run = argparse.ArgumentParser(add_help=False, parents=[common])
    run.add_argument("--method", action="append", metavar="M1,M2",
                     help=f"methods to run, comma-separated or repeated (default: all). Registered: {methods}")
    run.add_argument("--target", default="top1", metavar="top1|N|NAME",
                     help="what to explain: the predicted class (top1, default), a class index or a class name")
    run.add_argument("--layer", metavar="NAME",
                     help="layer for the methods that take one (a name from model.named_modules(); "
                          "default: the model's CAM layer)")
    run.add_argument("--batch-size", type=_positive_int, default=16, metavar="N",
                     help="images per explain() call (default: 16)")
    run.add_argument("--set", action="append", default=[], metavar="METHOD.PARAM=VALUE", dest="sets",
                     help="a method hyperparameter, e.g. integrated_gradients.n_steps=20 (repeatable; "
                          "values are Python/JSON literals, anything else is a string)")
    run.add_argument("--seed", type=int, default=0, metavar="N",
                     help="seed for the methods that draw random numbers (default: 0)")
    run.add_argument("--out", required=True, metavar="DIR", help="output folder for the report")
    run.add_argument("--overwrite", action="store_true", help="write into a non-empty output folder")
    run.add_argument("--device", default="cpu", help="torch device: cpu (default), cuda, cuda:1, mps")

    p = sub.add_parser("explain", parents=[run], help="explain a model's decisions on image files",
                       description="Explain a model's decisions on image files and write an HTML report.")
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
                                       f"{m}.{k}={v}" for m, kv in DEMO_SETTINGS.items() for k, v in kv.items()))
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("methods", parents=[common], help="list the registered attribution methods")
    p.set_defaults(func=_cmd_methods)
    p = sub.add_parser("models", parents=[common], help="list the zoo models")
    p.set_defaults(func=_cmd_models)
    return parser


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


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
    handler.setFormatter(logging.Formatter("seewhy: %(message)s"))
    saved = log.level, log.propagate
    log.addHandler(handler)
    log.propagate = False
    log.setLevel(logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO)
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _log_warning
            return args.func(args)
    except (ValueError, TypeError, OSError, ImportError) as err:  # bad input: one line, no traceback
        if args.verbose:
            log.exception("error")
        print(f"seewhy: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("seewhy: interrupted; no report was written", file=sys.stderr)
        return 130
    finally:
        log.removeHandler(handler)
        log.setLevel(saved[0])
        log.propagate = saved[1]


def _log_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                 file: Any = None, line: str | None = None) -> None:
    log.warning("warning: %s", message)


# -- subcommands ---------------------------------------------------------------------------------------


def _cmd_methods(args: argparse.Namespace) -> int:
    width = max(map(len, METHODS), default=0)
    for name, cls in METHODS.items():
        print(f"{name:<{width}}  {_summary(cls)}")
    return 0


def _summary(cls: type, limit: int = 100) -> str:
    """The first paragraph of a docstring on one line (the summary often wraps), shortened to ``limit``."""
    doc = inspect.getdoc(cls) or ""
    text = " ".join(doc.split("\n\n", 1)[0].split())
    return text if len(text) <= limit else text[: limit - 3].rstrip() + "..."


def _cmd_models(args: argparse.Namespace) -> int:
    width = max(map(len, zoo.MODELS), default=0)
    for name, spec in zoo.MODELS.items():
        weights = "pretrained" if spec.has_weights else "no weights"
        print(f"{name:<{width}}  {weights:<10}  {spec.description}")
    return 0


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


# -- wiring --------------------------------------------------------------------------------------------


def _plan(args: argparse.Namespace, defaults: dict[str, dict[str, Any]] | None = None,
          skip: Sequence[str] = ()) -> tuple[list[str], dict[str, dict[str, Any]]]:
    """Selected methods (all but ``skip`` by default) and their hyperparameters (``defaults``, then
    --seed, then --set), validated."""
    methods = [m for m in _methods(args.method) if m not in skip]
    params: dict[str, dict[str, Any]] = {m: {} for m in methods}
    for m in methods:
        fields = {f.name for f in dataclasses.fields(METHODS[m])}
        params[m].update({k: v for k, v in (defaults or {}).get(m, {}).items() if k in fields})
        if "seed" in fields:
            params[m]["seed"] = args.seed
    for item in args.sets:
        m, key, value = _parse_set(item)
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
    names = [n.strip() for v in values or ["all"] for n in v.split(",") if n.strip()]
    if not names or "all" in names:
        return list(METHODS)
    out: list[str] = []
    for n in names:
        if n not in METHODS:
            get_method(n)  # raises ValueError: unknown method, did you mean ..., registered: ...
        if n not in out:
            out.append(n)
    return out


def _parse_set(item: str) -> tuple[str, str, Any]:
    name, eq, text = item.partition("=")
    method, dot, key = name.strip().partition(".")
    if not eq or not dot or not method or not key:
        raise UsageError(f"--set expects METHOD.PARAM=VALUE (e.g. integrated_gradients.n_steps=20), got {item!r}")
    return method, key.strip(), _literal(text.strip())


def _literal(text: str) -> Any:
    """A Python/JSON literal (20, 0.1, 'x', [1, 2], true, null), else the text itself."""
    lowered = {"true": True, "false": False, "null": None, "none": None}
    if text.lower() in lowered:
        return lowered[text.lower()]
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return text


def _device(name: str) -> torch.device:
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise UsageError(f"unknown device {name!r}; use cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"device {name!r}: CUDA is not available here; use --device cpu")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError(f"device {name!r}: MPS is not available here; use --device cpu")
    return device


def _run(args: argparse.Namespace, model: torch.nn.Module, spec: zoo.ModelSpec, model_info: dict[str, Any],
         named: list[tuple[str, str, Any]], failures: list[tuple[str, str]], methods: list[str],
         params: dict[str, dict[str, Any]], device: torch.device, *, n_inputs: int,
         notes: dict[str, Any] | None = None) -> int:
    """Preprocess, predict, explain each method over the image batches (timed), write the report."""
    model = model.to(device)
    class_names = getattr(model, "class_names", None)
    make_target(args.target, 1, class_names)  # a bad class name fails here, before any work
    _layers(args, model, spec, methods, params)

    rows, inputs, failed = _prepare(named, spec)
    failures = [*failures, *failed]
    if not rows:
        log.error("none of the %d input(s) could be used; nothing to explain (see the messages above)",
                  n_inputs)
        return 1
    batches = _batches(inputs, args.batch_size, device)
    output = _predict(model, batches, args.target, class_names)
    if output is not None:
        rows = [dataclasses.replace(r, output=output[i]) for i, r in enumerate(rows)]

    runs = _explain_all(model, batches, methods, params, args.target)
    if not any(r.ok for r in runs):
        log.error("every method failed; no report written")
        return 1

    path = report.write_explain_report(
        args.out, rows, runs, model=model_info, target=args.target,
        preprocessing={"resize": spec.resize, "crop": spec.crop, "interpolation": spec.interpolation,
                       "mean": list(spec.mean), "std": list(spec.std)},
        failures=failures, class_names=class_names,
        settings={"device": str(device), "batch_size": args.batch_size, "seed": args.seed, **(notes or {})},
        command=["seewhy", *args.argv], title=f"seewhy {args.command}", overwrite=args.overwrite,
    )
    ok = sum(r.ok for r in runs)
    log.info("%d image(s) x %d method(s) in %.1f s; %d input(s) skipped%s", len(rows), ok,
             sum(sum(r.seconds) for r in runs), len(failures),
             f"; {len(runs) - ok} method(s) failed" if ok < len(runs) else "")
    print(path)
    return 0


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
    outputs = []
    with torch.no_grad():
        for x in batches:
            out = model(x)
            make_target(target, x.shape[0], class_names).resolve(out).score(out)  # e.g. index out of range
            outputs.append(out.detach().cpu())
    return torch.cat(outputs) if all(o.ndim == 2 for o in outputs) else None


def _explain_all(model: torch.nn.Module, batches: list[Tensor], methods: list[str],
                 params: dict[str, dict[str, Any]], target: str) -> list[report.MethodRun]:
    """Run every method over every batch, timing each call; a method that fails is recorded and skipped."""
    from tqdm import tqdm

    runs: list[report.MethodRun] = []
    with tqdm(total=len(methods) * len(batches), desc="explaining", unit="batch", file=sys.stderr,
              disable=None, dynamic_ncols=True) as bar:
        for m in methods:
            bar.set_postfix_str(m)
            exps, seconds = [], []
            try:
                for x in batches:
                    t0 = time.perf_counter()
                    exps.append(explain(model, x, m, target=target, **params[m]))
                    seconds.append(time.perf_counter() - t0)
                    bar.update()
            except Exception as err:  # one broken method must not lose the others' results
                log.debug("method %s failed", m, exc_info=True)
                log.error("method %s failed: %s: %s", m, type(err).__name__, err)
                runs.append(report.MethodRun(m, error=f"{type(err).__name__}: {err}"))
                bar.update(len(batches) - len(exps))
                continue
            runs.append(report.MethodRun(m, exps, seconds))
            log.debug("%s: %.2f s", m, sum(seconds))
    return runs


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


