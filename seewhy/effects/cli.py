"""``seewhy effects``: how a classifier's probability for the target class changes as images are transformed (ICE
curves over brightness, contrast, blur, rotation, scale and a central grey square), as a self-contained HTML report.

::

    seewhy effects IMAGE... --model M [--transform brightness,contrast,...] [--values V1 V2 ... | NAME=V1,V2,...]
                   [--target top1|K|NAME] [--weights FILE] [--batch-size N] [--device D] --out DIR [--overwrite]

Images are resized and centre-cropped as the model expects, transformed in [0, 1] and normalised inside. stdout gets
only the path of the report's ``index.html``; exit codes as for ``seewhy`` (0 ok, 1 no readable image, 2 usage
error, 3 the report lists unreadable files under Failures).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from typing import Any

import torch

from .. import command, zoo
from ..argtypes import positive_int
from ..command import EXIT_NOTHING, UsageError

log = logging.getLogger("seewhy")

__all__ = ["add_parser", "parse_values", "run"]

_FORMAT = {"epilog": command.EPILOG, "formatter_class": argparse.RawDescriptionHelpFormatter}


def _transforms(text: str) -> list[str]:
    """``brightness,blur`` -> the transform names (checked), or every built-in for ``all``."""
    from . import TRANSFORMS

    names = [t.strip().lower().replace("-", "_") for t in text.split(",") if t.strip()]
    if names == ["all"]:
        return list(TRANSFORMS)
    bad = [t for t in names if t not in TRANSFORMS]
    if not names or bad:
        raise argparse.ArgumentTypeError(f"unknown transform(s) {', '.join(bad) or repr(text)}; use a comma-separated "
                                         f"list of {', '.join(TRANSFORMS)} (or all)")
    if len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"transform listed twice in {text!r}")
    return names


def parse_values(items: list[str] | None, transforms: list[str]) -> dict[str, tuple[float, ...]]:
    """``--values`` items -> {transform: values}: numbers or ``V1,V2,...`` (for a single --transform) or
    ``NAME=V1,V2,...``;
    each checked against the transform's range. UsageError naming the fix."""
    from . import transform_values

    groups: dict[str, list[str]] = {}
    for item in items or []:
        name, eq, text = item.rpartition("=")
        name = name.strip().lower().replace("-", "_")
        if not eq:
            if len(transforms) != 1:
                raise UsageError(f"--values {item}: with several transforms write NAME=V1,V2,... (e.g. "
                                 f"--values {transforms[0]}=...)")
            name = transforms[0]
        if name not in transforms:
            raise UsageError(f"--values {item}: {name!r} is not one of the transforms asked for "
                             f"({', '.join(transforms)})")
        groups.setdefault(name, []).append(text)
    out: dict[str, tuple[float, ...]] = {}
    for name, texts in groups.items():
        try:
            numbers = [float(v) for text in texts for v in text.split(",") if v.strip()]
        except ValueError:
            raise UsageError(f"--values {' '.join(texts)}: expected numbers such as -0.2,0,0.2") from None
        try:
            out[name] = transform_values(numbers, name, _spec(name))
        except (ValueError, TypeError) as err:
            raise UsageError(f"--values: {err}") from None
    return out


def _spec(name: str) -> Any:
    from . import TRANSFORMS

    return TRANSFORMS[name]


def add_parser(subparsers: Any, common: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """Add ``effects`` to ``subparsers``; ``common`` is the parent parser of ``-v``/``-q``. Sets ``func=run``."""
    from . import TRANSFORMS

    meanings = "; ".join(f"{name}: {spec.meaning} (unchanged at {spec.identity:g})"
                         for name, spec in TRANSFORMS.items())
    p = subparsers.add_parser(
        "effects", parents=[common] if common is not None else [],
        help="how the prediction changes as images are transformed (ICE curves)",
        description="For each transformation and value, the probability of each image's target class (ICE curves, "
                    "Goldstein et al. 2015) and their average; writes a self-contained HTML report with a plot per "
                    f"transformation, a strip of the first image transformed, manifest.json and effects.csv. "
                    f"Transforms: {meanings}.", **_FORMAT)
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (PNG, JPEG, ...)")
    p.add_argument("--model", required=True, metavar="NAME|SPEC",
                   help=f"a zoo model ({', '.join(zoo.MODELS)}), path/file.py:factory, package.module:factory or a "
                        "TorchScript file")
    p.add_argument("--weights", metavar="FILE", help="a state-dict file to load into the model")
    p.add_argument("--transform", type=_transforms, default=list(TRANSFORMS), metavar="T1,T2",
                   help=f"transformations, comma-separated: {', '.join(TRANSFORMS)} (default: all)")
    p.add_argument("--values", action="extend", nargs="+", metavar="V|NAME=V1,V2",
                   help="the values of a transformation (default: its own range, including the unchanged value): "
                        "numbers, space- or comma-separated (a list that starts with a negative number as "
                        "--values=-0.2,0,0.2 or --values -0.2 0 0.2); NAME=V1,V2,... with several transforms")
    p.add_argument("--target", default="top1", metavar="top1|K|NAME",
                   help="class whose probability is followed: top1 (each image's prediction, default), an index or "
                        "a class name")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder for the report")
    p.add_argument("--overwrite", action="store_true", help="write into a non-empty output folder")
    p.add_argument("--device", default="cpu", help="torch device: cpu (default), cuda, cuda:1, mps")
    p.add_argument("--batch-size", type=positive_int, metavar="N",
                   help="images per forward (default: the engine's for the image size)")
    p.set_defaults(func=run)
    return p


def _target(text: str, names: list[str] | None) -> int | None:
    """``top1`` -> None (each image's prediction), else a class index from ``K`` or a class name."""
    from ..targets import parse_class

    if text.strip().lower() in ("top1", "pred", "predicted"):
        return None
    return parse_class(text, names, "--target")


def run(args: argparse.Namespace) -> int:
    """Run a parsed ``seewhy effects`` command; returns the exit code."""
    from .. import images
    from ..inputs import load_inputs
    from ..viz import tensor_to_image
    from . import apply_transform, transform_effects
    from .report import EffectsRun, write_effects_report

    transforms: list[str] = args.transform
    values = parse_values(args.values, transforms)
    model, spec, device = command.open_model(args)
    names = zoo.class_names(model)
    target = _target(args.target, names)

    loaded, failures = load_inputs(args.images)
    tensors, shown = [], []
    for path, img in loaded:
        try:
            tensors.append(images.to_tensor(images.resize_crop(img, spec.resize, spec.crop, spec.interpolation)))
        except (ValueError, TypeError, OSError) as err:
            log.warning("skipping %s: %s", path, err)
            failures.append((str(path), f"preprocessing failed: {err}"))
            continue
        shown.append(images.image_name(path))
    if not tensors:
        log.error("none of the %d image(s) could be read; nothing to report", len(args.images))
        return EXIT_NOTHING
    if len({tuple(t.shape) for t in tensors}) > 1:
        sizes = sorted({tuple(t.shape[-2:]) for t in tensors})
        raise ValueError(f"the images have different sizes after preprocessing ({sizes}); use a model spec with a "
                         "fixed crop")
    x = torch.stack(tensors).to(device)
    forwards = sum(len(values.get(t, _spec(t).defaults)) - 1 for t in transforms) * len(tensors) + len(tensors)
    log.info("%d image(s) x %d transform(s): about %d forward(s) at %dx%d", len(tensors), len(transforms), forwards,
             x.shape[-2], x.shape[-1])

    runs = []
    for name in transforms:
        start = time.perf_counter()
        result = transform_effects(model, x, name, values=values.get(name), target=target,
                                   normalize=(spec.mean, spec.std), batch_size=args.batch_size)
        seconds = time.perf_counter() - start
        strip = [tensor_to_image(apply_transform(x[:1], name, v)[0], mean=(0.0,), std=(1.0,)) for v in result.values]
        runs.append(EffectsRun(result=result, strip=strip, seconds=seconds))
        log.info("%s: average probability %.3g..%.3g over %d value(s)", name, float(result.average.min()),
                 float(result.average.max()), len(result.values))

    weights = args.weights or ("pretrained" if spec.has_weights else "none (random init)")
    header = {"kind": "effects", "layer": None, "estimate": {"forwards": forwards},
              "model": {"name": spec.name, "spec": args.model, "description": spec.description, "weights": weights},
              "settings": {"device": str(device), "target": args.target, "transforms": transforms,
                           "values": {k: list(v) for k, v in values.items()} or None, "batch_size": args.batch_size,
                           "preprocessing": {"resize": spec.resize, "crop": spec.crop, "mean": list(spec.mean),
                                             "std": list(spec.std)}},
              "command": ["seewhy", *getattr(args, "argv", sys.argv[1:])]}
    path = write_effects_report(args.out, header, shown, runs, class_names=names, failures=failures,
                                overwrite=args.overwrite)
    sys.stdout.write(f"{path}\n")
    return command.exit_code(failures, [])
