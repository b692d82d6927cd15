"""``seewhy featvis`` and ``seewhy atlas``: feature visualizations and activation atlases as self-contained HTML
reports.

::

    seewhy featvis --model M --objective SPEC [--objective SPEC ...] [--size 128] [--steps 512] [--lr 0.05]
                   [--param fft|pixel] [--no-decorrelate] [--transforms standard|none] [--batch N] [--diversity W]
                   [--regularizer tv:0.05 ...] [--seed N] [--input-size PX] --out DIR
    seewhy atlas DATA... --model M [--layer L] [--grid 20] [--min-count 3] [--icon-size 80] [--steps 256]
                 [--class K|NAME] [--samples-per-image N] [--seed N] [--batch-size N] --out DIR

Both also take ``--weights FILE``, ``--overwrite``, ``--device`` and ``-v``/``-q``. An objective SPEC is
``channel:LAYER:C``, ``neuron:LAYER:C[:Y:X]``, ``layer_l2:LAYER``, ``class:K`` or ``probability:K`` (K an index, or
a class name for a model with class names, such as the pretrained zoo model: ``class:espresso``). The cost is said
up front (visualize logs its own estimate after its first step; with several objectives one timed step gives the
total first); progress bars show during the work. stdout gets only the path of the report's ``index.html``; exit
codes as for ``seewhy`` (0 ok, 1 no readable image, 2 usage error, 3 the report lists unreadable files).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from typing import Any

from torch import nn

from .. import command, zoo
from ..argtypes import positive_int
from ..command import EXIT_NOTHING
from ..progress import format_seconds
from ..targets import parse_class

log = logging.getLogger("seewhy")

__all__ = ["REGULARIZER_HELP", "add_parser", "parse_regularizer"]

_FORMAT = {"epilog": command.EPILOG, "formatter_class": argparse.RawDescriptionHelpFormatter}
REGULARIZER_HELP = ("tv:W[:BETA], l1:W[:CONSTANT], l2:W[:CONSTANT], blur:SIGMA[:EVERY], decay:RATE, "
                    "clip_norm:PERCENTILE, clip_contribution:PERCENTILE, yosinski:1..4")


# -- values --------------------------------------------------------------------------------------------


def parse_regularizer(text: str) -> tuple[Any, ...]:
    """A ``--regularizer`` value -> regularisers: ``tv:0.05`` (:class:`TotalVariation`), ``l1:0.01``, ``l2:0.01``,
    ``blur:0.5:4`` (sigma, every n steps), ``decay:0.01``, ``clip_norm:20``, ``clip_contribution:90``, ``yosinski:3``
    (Yosinski et al. 2015's Table 1 row). ArgumentTypeError naming the forms for anything else."""
    from . import regularizers as R

    kind, _, rest = text.strip().partition(":")
    kind = kind.strip().lower().replace("-", "_")
    args = [a.strip() for a in rest.split(":")] if rest.strip() else []
    forms: dict[str, tuple[Any, tuple[type, ...], int]] = {  # kind -> (build, argument types, required)
        "tv": (R.TotalVariation, (float, float), 1), "total_variation": (R.TotalVariation, (float, float), 1),
        "l1": (R.L1, (float, float), 1), "l2": (R.L2, (float, float), 1),
        "blur": (R.Blur, (float, int), 1), "decay": (R.Decay, (float,), 1),
        "clip_norm": (R.ClipNorm, (float,), 1), "clip_contribution": (R.ClipContribution, (float,), 1),
        "yosinski": (R.yosinski_preset, (int,), 1),
    }
    if kind not in forms:
        raise argparse.ArgumentTypeError(f"unknown regularizer {text!r}; write one of {REGULARIZER_HELP}")
    build, types, required = forms[kind]
    if not required <= len(args) <= len(types):
        raise argparse.ArgumentTypeError(f"regularizer {text!r} takes {required}"
                                         f"{f' to {len(types)}' if len(types) > required else ''} number(s); write "
                                         f"one of {REGULARIZER_HELP}")
    try:
        values = [t(a) for t, a in zip(types, args, strict=False)]
        made = build(*values)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"regularizer {text!r}: {err}; write one of {REGULARIZER_HELP}") from None
    return tuple(made) if isinstance(made, tuple) else (made,)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {value}")
    return value


def _weight(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {value}")
    return value


def _pixels(low: int) -> Any:
    def convert(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low} (pixels), got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low} (pixels), got {value}")
        return value

    return convert


_size = _pixels(2)
_icon_size = _pixels(8)  # atlas's smallest icon


# -- parser --------------------------------------------------------------------------------------------


def add_parser(subparsers: Any, common: argparse.ArgumentParser | None = None) -> None:
    """Add ``featvis`` and ``atlas`` to ``subparsers``; ``common`` is the parent parser of ``-v``/``-q``. Sets
    ``func``."""
    parents = [common] if common is not None else []
    model = _model_options(parents)

    p = subparsers.add_parser(
        "featvis", parents=[model], help="feature visualization: images that maximise a unit, channel or class",
        description="Optimise images so that each objective (a channel, a neuron, a layer or a class of the model) "
                    "is as large as possible (Olah et al. 2017: a 1/f spectrum with decorrelated colours, random "
                    "transforms); writes a self-contained HTML report with the images, the loss curves and the "
                    "settings, the images as PNG files and manifest.json.", **_FORMAT)
    p.add_argument("--objective", action="append", required=True, metavar="SPEC",
                   help="what to maximise (repeatable, one report section each): channel:LAYER:C, "
                        "neuron:LAYER:C[:Y:X], layer_l2:LAYER, class:K or class:NAME, probability:K")
    p.add_argument("--size", type=_size, default=128, metavar="PX", help="image side in pixels (default: %(default)s)")
    p.add_argument("--steps", type=positive_int, default=512, metavar="N",
                   help="optimisation steps per objective (default: %(default)s)")
    p.add_argument("--lr", type=_positive_float, default=0.05, help="Adam's learning rate (default: %(default)s)")
    p.add_argument("--param", choices=("fft", "pixel"), default="fft",
                   help="image parameterisation: a 1/f-scaled spectrum (fft, default) or plain pixels")
    p.add_argument("--no-decorrelate", dest="decorrelate", action="store_false",
                   help="optimise RGB directly, without Lucid's colour decorrelation")
    p.add_argument("--transforms", choices=("standard", "none"), default="standard",
                   help="random pad/jitter/scale/rotate at each step (standard, default) or none")
    p.add_argument("--batch", type=positive_int, default=1, metavar="N",
                   help="images per objective, optimised together (default: %(default)s)")
    p.add_argument("--diversity", type=_weight, default=0.0, metavar="W",
                   help="with --batch > 1: subtract W * diversity(LAYER) from each objective on a layer, to spread "
                        "the batch over the unit's facets (Olah et al. 2017 use 10; default: 0)")
    p.add_argument("--regularizer", action="append", type=parse_regularizer, default=[], metavar="KIND:VALUES",
                   help=f"a regulariser (repeatable): {REGULARIZER_HELP}")
    p.add_argument("--seed", type=int, default=0, metavar="N", help="seed of the start and the transforms "
                                                                    "(default: %(default)s)")
    p.add_argument("--input-size", type=_size, metavar="PX",
                   help="side the images are resized to before the model (default: the zoo model's crop when "
                        "--size is smaller, else none)")
    p.set_defaults(func=_featvis)

    p = subparsers.add_parser(
        "atlas", parents=[model], help="activation atlas of a layer over a dataset",
        description="Activation atlas (Carter et al. 2019): the layer's activations at sampled positions of the "
                    "images, laid out in 2-D by UMAP, averaged per cell of a grid, and each cell's mean direction "
                    "rendered as an icon; writes a self-contained HTML report, atlas.png and atlas.csv.",
        **_FORMAT)
    p.add_argument("data", nargs="+", metavar="DATA",
                   help="one folder of images (flat, or one sub-folder per class) or image files")
    p.add_argument("--layer", metavar="NAME",
                   help="a name from model.named_modules() (default: the zoo model's CAM layer, else the last layer "
                        "with a spatial output)")
    p.add_argument("--grid", type=positive_int, default=20, metavar="N", help="cells a side (default: %(default)s)")
    p.add_argument("--min-count", type=positive_int, default=3, metavar="N",
                   help="samples a cell needs to get an icon (default: %(default)s)")
    p.add_argument("--icon-size", type=_icon_size, default=80, metavar="PX",
                   help="icon side (default: %(default)s)")
    p.add_argument("--steps", type=positive_int, default=256, metavar="N",
                   help="optimisation steps of the icons (default: %(default)s)")
    p.add_argument("--class", dest="class_filter", metavar="K|NAME",
                   help="class activation atlas: the same layout, but only the cells whose activations support this "
                        "class (mean attribution to its logit, activation x gradient, above 0) get an icon; a "
                        "backward per batch on top")
    p.add_argument("--samples-per-image", type=positive_int, metavar="N",
                   help="positions sampled per image (default: atlas's)")
    p.add_argument("--seed", type=int, default=0, metavar="N", help="seed of the sampling, the layout and the icons "
                                                                    "(default: %(default)s)")
    p.add_argument("--batch-size", type=positive_int, metavar="N",
                   help="images per forward (default: the engine's, measured fastest on this model)")
    p.set_defaults(func=_atlas)


def _model_options(parents: list[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    """The options of both commands: model, weights, output, device."""
    p = argparse.ArgumentParser(add_help=False, parents=parents)
    p.add_argument("--model", required=True, metavar="NAME|SPEC",
                   help=f"a zoo model ({', '.join(zoo.MODELS)}), path/file.py:factory, package.module:factory or a "
                        "TorchScript file")
    p.add_argument("--weights", metavar="FILE", help="a state-dict file to load into the model")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder for the report")
    p.add_argument("--overwrite", action="store_true", help="write into a non-empty output folder")
    p.add_argument("--device", default="cpu", help="torch device: cpu (default), cuda, cuda:1, mps")
    return p


# -- shared --------------------------------------------------------------------------------------------


def _header(kind: str, args: argparse.Namespace, spec: zoo.ModelSpec, device: Any, settings: dict[str, Any],
            layer: str | None = None, estimate: dict[str, Any] | None = None) -> dict[str, Any]:
    weights = args.weights or ("pretrained" if spec.has_weights else "none (random init)")
    return {"kind": kind, "layer": layer, "estimate": estimate or {},
            "model": {"name": spec.name, "spec": args.model, "description": spec.description, "weights": weights},
            "settings": {"device": str(device), **settings},
            "command": ["seewhy", *getattr(args, "argv", sys.argv[1:])]}


def _done(path: Any, failures: Sequence[tuple[str, str]] = ()) -> int:
    sys.stdout.write(f"{path}\n")
    return command.exit_code(failures, [])


# -- featvis -------------------------------------------------------------------------------------------


def _objectives(specs: Sequence[str], model: nn.Module) -> list[Any]:
    """The objectives of ``--objective``: parsed (class names through the model's names, with suggestions), their
    layers checked to exist. ValueError naming the fix."""
    from ..layers import resolve_layer
    from .objectives import INPUT, LOGITS, SPEC_HELP, as_objective

    names = zoo.class_names(model)
    out = []
    for spec in specs:
        kind, _, rest = spec.strip().partition(":")
        if kind.strip().lower() in ("class", "class_logit", "logit", "probability", "class_probability"):
            if not rest.strip():
                raise ValueError(f"objective {spec!r} names no class; write {kind}:K or {kind}:NAME")
            spec = f"{kind}:{parse_class(rest, names, f'objective {spec!r}')}"
        try:
            obj = as_objective(spec, names)
        except ValueError as err:
            raise ValueError(f"--objective: {err}") from None
        for layer in obj.layers:
            if layer not in (LOGITS, INPUT):
                try:
                    resolve_layer(model, layer)
                except ValueError as err:
                    raise ValueError(f"objective {spec!r}: {err}; the forms are {SPEC_HELP}") from None
        out.append(obj)
    return out


def _with_diversity(objectives: list[Any], weight: float, batch: int) -> list[Any]:
    """Each objective on a layer minus ``weight * diversity(layer)`` (its first layer), for ``batch`` > 1."""
    from .objectives import INPUT, LOGITS, diversity

    if not weight:
        return objectives
    if batch < 2:
        log.warning("--diversity %g does nothing with --batch 1 (it compares the images of a batch); ignored", weight)
        return objectives
    out = []
    for obj in objectives:
        layers = [name for name in obj.layers if name not in (LOGITS, INPUT)]
        if not layers:
            log.warning("--diversity: %s reads no layer (only the model's output); kept without diversity",
                        obj.name)
            out.append(obj)
        else:
            out.append(obj - weight * diversity(layers[0]))
    return out


def _featvis(args: argparse.Namespace) -> int:
    from . import report
    from .render import visualize

    regularizers = tuple(r for group in args.regularizer for r in group)
    model, spec, device = command.open_model(args)
    objectives = _with_diversity(_objectives(args.objective, model), args.diversity, args.batch)
    options = {"size": args.size, "lr": args.lr, "param": args.param, "decorrelate": args.decorrelate,
               "transforms": args.transforms, "regularizers": regularizers, "batch": args.batch,
               "normalize": (spec.mean, spec.std), "seed": args.seed, "input_size": args.input_size}
    estimate = _check_and_time(model, objectives, args.steps, options)
    results = []
    for i, obj in enumerate(objectives):
        if len(objectives) > 1:
            log.info("objective %d/%d: %s", i + 1, len(objectives), obj.name)
        try:
            results.append(visualize(model, obj, steps=args.steps, progress=True, **options))
        except FloatingPointError as err:  # a diverging loss: the settings are at fault (exit code 2)
            raise ValueError(str(err)) from None
    total = sum(r.seconds for r in results)
    log.info("%d objective(s) x %d step(s) in %s", len(results), args.steps, format_seconds(total))
    settings = {"objectives": list(args.objective), "size": args.size, "steps": args.steps, "lr": args.lr,
                "param": args.param, "decorrelate": args.decorrelate, "transforms": args.transforms,
                "batch": args.batch, "diversity": args.diversity, "regularizers": [repr(r) for r in regularizers],
                "seed": args.seed, "input_size": args.input_size}
    header = _header("featvis", args, spec, device, settings, estimate=estimate)
    return _done(report.write_featvis(args.out, header, list(zip(args.objective, results, strict=True)),
                                      overwrite=args.overwrite))


def _check_and_time(model: nn.Module, objectives: Sequence[Any], steps: int, options: dict[str, Any]
                    ) -> dict[str, Any]:
    """With several objectives: each one evaluated once on its start image (a bad channel, class or layer fails
    here, before any work), then one step of the first timed after a warm-up and the total logged; returns the
    estimate ({} for one objective, whose cost visualize logs after its first step, and when not logging)."""
    from .render import visualize

    if len(objectives) < 2:
        return {}
    quiet = {**options, "progress": False}
    for obj in objectives:
        visualize(model, obj, steps=0, **quiet)  # the first is also the warm-up
    if not log.isEnabledFor(logging.INFO):
        return {}
    visualize(model, objectives[0], steps=1, **quiet)  # the first backward pass is slow: warm it up too
    start = time.perf_counter()
    visualize(model, objectives[0], steps=0, **quiet)
    setup = time.perf_counter() - start
    start = time.perf_counter()
    visualize(model, objectives[0], steps=1, **quiet)
    per_step = max(time.perf_counter() - start - setup, 0.0) or setup
    total = per_step * steps * len(objectives)
    log.info("cost: one step of %s takes %s (batch of %d, %d px images); about %s for %d objectives x %d steps",
             objectives[0].name, format_seconds(per_step), options["batch"], options["size"],
             format_seconds(total), len(objectives), steps)
    return {"seconds_per_step": per_step, "steps": steps, "objectives": len(objectives), "seconds": total}


# -- atlas ---------------------------------------------------------------------------------------------


def _atlas(args: argparse.Namespace) -> int:
    from ..inside.cli import LayerRun
    from . import report
    from .atlas import atlas

    r = LayerRun(args)  # the output folder checked first, the model on its device
    class_filter = None
    if args.class_filter is not None:
        class_filter = parse_class(args.class_filter, zoo.class_names(r.model), "--class")
    note = "then the UMAP layout and the icons" if class_filter is None else \
        "about 3x that with --class (a backward per batch), then the UMAP layout and the icons"
    if (shape := r.start(note=note)) is None:
        return EXIT_NOTHING
    if len(shape) != 3:
        raise ValueError(f"layer {r.layer!r} outputs shape {shape} per image, not (C,h,w) maps; an atlas needs a "
                         "convolutional layer or block (--layer)")
    estimate = dict(r.estimate)
    estimate.update(_time_icons(r, shape, class_filter))
    result = atlas(r.model, r.data, r.layer, grid=args.grid, min_count=args.min_count, icon_size=args.icon_size,
                   steps=args.steps, class_filter=class_filter, seed=args.seed,
                   samples_per_image=args.samples_per_image, batch_size=args.batch_size, progress=True)
    settings = {"grid": args.grid, "min_count": args.min_count, "icon_size": args.icon_size, "steps": args.steps,
                "class": args.class_filter, "class_index": class_filter, "samples_per_image": args.samples_per_image,
                "seed": args.seed, "batch_size": args.batch_size}
    header = _header("atlas", args, r.spec, r.device, settings, layer=r.layer, estimate=estimate)
    failures = list(r.data.skipped)
    return _done(report.write_atlas(args.out, header, result, r.data, failures=failures, overwrite=args.overwrite),
                 failures)


def _time_icons(r: Any, shape: tuple[int, ...], class_filter: int | None) -> dict[str, Any]:
    """Log the icons' cost at most (as if every cell that can reach --min-count got one): one render step of a chunk
    of icons, timed after a warm-up, times the chunks and steps; and the total with the data pass. Returns the
    estimate's entries ({} when not logging)."""
    import inspect
    import math

    import torch

    from .atlas import atlas as atlas_fn
    from .objectives import direction
    from .render import visualize

    if not log.isEnabledFor(logging.INFO):
        return {}
    args = r.args
    c, h, w = shape
    per_image = min(args.samples_per_image or h * w, h * w)
    samples = len(r.data) * per_image
    defaults = {k: p.default for k, p in inspect.signature(atlas_fn).parameters.items()}
    cap = defaults.get("max_samples")
    if cap is not None:
        samples = min(samples, cap)
    icons = min(args.grid * args.grid, samples // args.min_count)
    if icons == 0:
        return {}
    chunk = min(int(defaults.get("icon_batch", 32)), icons)
    objective = direction(r.layer, torch.randn(chunk, c, generator=torch.Generator().manual_seed(0)))
    options = {"size": args.icon_size, "batch": chunk, "seed": args.seed, "progress": False,
               "normalize": (r.spec.mean, r.spec.std), "input_size": args.icon_size}  # as atlas renders icons
    visualize(r.model, objective, steps=1, **options)  # warm-up (the first backward pass is slow)
    start = time.perf_counter()
    visualize(r.model, objective, steps=0, **options)
    setup = time.perf_counter() - start
    start = time.perf_counter()
    visualize(r.model, objective, steps=1, **options)
    per_step = max(time.perf_counter() - start - setup, 0.0) or setup
    seconds = per_step * args.steps * math.ceil(icons / chunk)
    data_pass = r.estimate.get("seconds", 0.0) * (1 if class_filter is None else 3)
    log.info("icons: at most %d (the cells that can reach %d samples) of %d px, %d steps, in chunks of %d: about %s "
             "at most; about %s in all with the pass over the data (the UMAP adds seconds, ~10 s more on its first "
             "use)", icons, args.min_count, args.icon_size, args.steps, chunk, format_seconds(seconds),
             format_seconds(seconds + data_pass))
    return {"icons_at_most": icons, "icon_seconds_per_step": per_step, "icon_seconds": seconds,
            "seconds": seconds + data_pass}
