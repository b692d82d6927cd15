"""``seewhy protopnet``: train a ProtoPNet on an image folder, explain images with it, show its prototypes.

::

    seewhy protopnet train DATA_DIR --out RUN_DIR [--backbone NAME] [--epochs N] [--warm-epochs N]
                           [--push-start N] [--push-every N] [--last-layer-epochs N] [--batch-size N]
                           [--prototypes-per-class N] [--prototype-dim D] [--image-size S] [--val-fraction F]
                           [--seed N] [--no-augment | --no-flip] [--resume | --overwrite] [--device cpu]
    seewhy protopnet explain RUN_DIR IMAGE... --out DIR [--target top1|N|NAME] [--top-k K]
                             [--checkpoint best|last] [--data DATA_DIR] [--overwrite] [--device cpu]
    seewhy protopnet prototypes RUN_DIR --out DIR [--k K] [--checkpoint best|last] [--data DATA_DIR]
                                [--overwrite] [--device cpu]

``train`` prints the run directory, ``explain`` and ``prototypes`` the report's ``index.html``, on stdout;
diagnostics go to stderr. ``train`` without ``--backbone`` chooses it from the images (small_cnn at 32 px when
their median shorter side is at most 64 px, else efficientnet_lite0 at 224 px) and logs the backbone, input
size, parameter count and an estimate of the time before the first epoch.

Exit codes (the same scheme as ``seewhy``):

- 0 (``EXIT_OK``): success.
- 1 (``EXIT_NOTHING``): nothing to report: no input could be used (no report is written).
- 2 (``EXIT_USAGE``): usage error or bad input (unknown option value, missing run or data, non-empty output
  folder without ``--overwrite``...).
- 3 (``EXIT_PARTIAL``): the report was written, but some inputs failed (e.g. ``explain`` with unreadable
  images: the report lists them under Failures).
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

import numpy as np
import torch

from .. import command, images, zoo
from ..argtypes import count, fraction, positive_int
from ..argtypes import device as _device
from ..command import EXIT_NOTHING, EXIT_OK, EXIT_PARTIAL, EXIT_USAGE
from ..inputs import load_inputs
from ..report_files import prepare_out_dir
from .train import TrainConfig

log = logging.getLogger("seewhy")

__all__ = ["EXIT_NOTHING", "EXIT_OK", "EXIT_PARTIAL", "EXIT_USAGE", "add_parser", "main", "run"]

EXPLAIN_BATCH = 32  # images per forward in ``seewhy protopnet explain``
#: the schedule and optimiser options of ``train``: (flag, TrainConfig field, type, metavar, help); the defaults
#: are TrainConfig's
_TRAIN_OPTIONS: tuple[tuple[str, str, Any, str, str], ...] = (
    ("--epochs", "epochs", positive_int, "N", "warm-up + joint epochs"),
    ("--warm-epochs", "warm_epochs", count, "N",
     "first epochs training only the add-on layers and prototypes"),
    ("--push-start", "push_start", count, "N", "first epoch followed by a push and last-layer epochs"),
    ("--push-every", "push_every", positive_int, "N", "epochs between pushes; the last epoch is always pushed"),
    ("--last-layer-epochs", "last_layer_epochs", count, "N", "last-layer epochs after each push"),
    ("--batch-size", "batch_size", positive_int, "N", "training images per step"),
    ("--lr-features", "lr_features", float, "LR", "learning rate of the backbone in joint epochs"),
    ("--lr-add-on", "lr_add_on", float, "LR", "learning rate of the add-on layers in joint epochs"),
    ("--lr-prototypes", "lr_prototypes", float, "LR", "learning rate of the prototypes in joint epochs"),
    ("--lr-last-layer", "lr_last_layer", float, "LR", "learning rate of the last layer after a push"),
    ("--seed", "seed", int, "N", "seed of the split, initialisation, shuffling and augmentation"),
)


def add_parser(subparsers: Any, common: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """Add ``protopnet {train,explain,prototypes}`` to ``subparsers`` (from ``parser.add_subparsers()``);
    ``common`` is a parent parser for shared options (``-v``/``-q``). Sets ``func=run``."""
    parents = [common] if common is not None else []
    top = subparsers.add_parser(
        "protopnet", help="interpretable prototype networks: train, explain, prototypes",
        description="ProtoPNet (Chen et al., NeurIPS 2019): a classifier that explains itself with "
                    "'this part looks like that prototypical part of a training image'.")
    sub = top.add_subparsers(dest="protopnet_command", metavar="COMMAND", required=True)
    device = argparse.ArgumentParser(add_help=False)
    device.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:1, mps (default: %(default)s)")
    _add_train(sub, [*parents, device])
    _add_reports(sub, [*parents, device])
    top.set_defaults(func=run)
    return top


def _add_train(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    from .model import AUTO, BACKBONES, SMALL_IMAGE_SIDE

    p = sub.add_parser("train", parents=parents, help="train a ProtoPNet on an image folder",
                       description="Train a ProtoPNet on DATA_DIR (one sub-folder of images per class). A "
                                   "validation split chooses the best checkpoint; the run can be resumed. The "
                                   "backbone, input size, parameter count and an estimate of the time are logged "
                                   "first, then one line per stage.")
    p.add_argument("data_dir", metavar="DATA_DIR", help="image folder: one sub-folder per class")
    p.add_argument("--out", required=True, metavar="RUN_DIR",
                   help="run directory for checkpoints and configs (required; no default)")
    p.add_argument("--backbone", default=AUTO, metavar="NAME",
                   help=f"trunk: auto, {', '.join([*BACKBONES, *zoo.MODELS])} or a model spec 'file.py:factory'. "
                        f"auto chooses from the images: small_cnn at 32 px when their median shorter side is <= "
                        f"{SMALL_IMAGE_SIDE} px, else efficientnet_lite0 (pretrained) at 224 px (default: %(default)s)")
    p.add_argument("--trunk-layer", metavar="LAYER",
                   help="cut the backbone after this layer (a name from model.named_modules()); needs --backbone "
                        "(default: the backbone's forward_features or CAM layer)")
    p.add_argument("--no-pretrained", action="store_true",
                   help="random initial backbone weights (default: off, pretrained weights when the backbone has them)")
    p.add_argument("--image-size", type=positive_int, metavar="S",
                   help="input size S x S (default: the backbone's: 32 for small_cnn, 224 for efficientnet_lite0)")
    p.add_argument("--prototypes-per-class", type=positive_int, default=10, metavar="N",
                   help="prototypes of each class (default: %(default)s)")
    p.add_argument("--prototype-dim", type=positive_int, default=128, metavar="D",
                   help="channels of the add-on layers and of each prototype (default: %(default)s)")
    p.add_argument("--val-fraction", type=fraction, default=0.1, metavar="F",
                   help="fraction of each class held out for validation (default: %(default)s)")
    for flag, field, kind, metavar, what in _TRAIN_OPTIONS:
        p.add_argument(flag, type=kind, default=getattr(TrainConfig, field), metavar=metavar,
                       help=f"{what} (default: %(default)s)")
    aug = p.add_mutually_exclusive_group()
    aug.add_argument("--no-augment", action="store_true",
                     help="no augmentation (default: off: random flips, rotations up to 15 deg, shears up to 10 deg)")
    aug.add_argument("--no-flip", action="store_true",
                     help="no left-right flips, for digits and text (default: off, flips on)")
    again = p.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true",
                       help="continue the run in RUN_DIR with its saved settings and backbone (default: off)")
    again.add_argument("--overwrite", action="store_true", help="start over in a non-empty RUN_DIR (default: off)")


def _add_reports(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    """``explain`` and ``prototypes``: a run, an output folder, and what each shows."""
    q = sub.add_parser("explain", parents=parents, help="explain images with a trained ProtoPNet",
                       description="Explain images: the prototypes that gave each class its points. Exit code 3 "
                                   "when the report was written but some images could not be used.")
    _report_options(q)
    q.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    q.add_argument("--target", default="top1", metavar="top1|N|NAME",
                   help="the class to explain: the predicted one (top1), an index or a class name "
                        "(default: %(default)s)")
    q.add_argument("--top-k", type=positive_int, default=10, metavar="K",
                   help="prototypes shown per image (default: %(default)s)")

    q = sub.add_parser("prototypes", parents=parents, help="every prototype and its nearest patches",
                       description="The global explanation: each prototype, its source and nearest training patches.")
    _report_options(q)
    q.add_argument("--k", type=positive_int, default=5, metavar="K",
                   help="nearest training patches (default: %(default)s)")


def _report_options(q: argparse.ArgumentParser) -> None:
    q.add_argument("run_dir", metavar="RUN_DIR", help="a run directory written by `seewhy protopnet train`")
    q.add_argument("--out", required=True, metavar="DIR", help="output folder for the report (required)")
    q.add_argument("--checkpoint", choices=("best", "last"), default="best",
                   help="best (on validation) or last (default: %(default)s)")
    q.add_argument("--data", metavar="DATA_DIR",
                   help="the training image folder, if it moved since training (default: the folder recorded "
                        "in the run)")
    q.add_argument("--overwrite", action="store_true", help="write into a non-empty output folder (default: off)")


def run(args: argparse.Namespace) -> int:
    """Run a parsed ``seewhy protopnet ...`` command; returns the exit code."""
    command = args.protopnet_command
    return {"train": _train, "explain": _explain, "prototypes": _prototypes}[command](args)


def _quiet(args: argparse.Namespace) -> bool:
    """``-q``: no progress bars either (bars show only on a terminal anyway)."""
    return bool(getattr(args, "quiet", False))


def _command(args: argparse.Namespace) -> list[str]:
    return ["seewhy", *getattr(args, "argv", sys.argv[1:])]


def _train(args: argparse.Namespace) -> int:
    from .data import Augment
    from .runs import train_folder

    device = _device(args.device)
    augment = Augment(0.0, 0.0, 0.0) if args.no_augment else Augment(flip=0.0) if args.no_flip else Augment()
    config = TrainConfig(
        epochs=args.epochs, warm_epochs=args.warm_epochs, push_start=args.push_start, push_every=args.push_every,
        last_layer_epochs=args.last_layer_epochs, batch_size=args.batch_size, lr_features=args.lr_features,
        lr_add_on=args.lr_add_on, lr_prototypes=args.lr_prototypes, lr_last_layer=args.lr_last_layer,
        seed=args.seed, augment=augment,
    )
    result = train_folder(
        args.data_dir, args.out, backbone=args.backbone, pretrained=not args.no_pretrained,
        trunk_layer=args.trunk_layer, image_size=args.image_size, prototypes_per_class=args.prototypes_per_class,
        prototype_dim=args.prototype_dim, val_fraction=args.val_fraction, config=config, resume=args.resume,
        overwrite=args.overwrite, device=device, progress=not _quiet(args),
    )
    if result.best is not None:
        b = result.best
        log.info("best pushed model: validation accuracy %.4f (epoch %d, %s) in %.1f s; saved as best.pt",
                 b["val_accuracy"], b["epoch"], b["phase"], result.seconds)
    print(args.out)  # noqa: T201
    return EXIT_OK


def _pictures(run_: Any, data_dir: str | None) -> Any:
    try:
        return run_.train_set(data_dir)
    except ValueError as err:
        log.warning("no pictures of the prototypes' training images: %s", err)
        return None


def _info(run_: Any) -> dict[str, Any]:
    cfg = run_.config
    info: dict[str, Any] = {"run": str(run_.run_dir), "checkpoint": f"{run_.checkpoint}.pt"}
    if cfg.get("backbone"):
        info["backbone"] = cfg["backbone"].get("name")
    info["classes"] = ", ".join(run_.model.class_names or map(str, range(run_.model.num_classes)))
    info["input"] = f"{run_.prep.image_size}x{run_.prep.image_size}, mean {list(run_.prep.mean)}, " \
                    f"std {list(run_.prep.std)}"
    if run_.best is not None and run_.checkpoint == "best":
        info["validation accuracy"] = f"{run_.best['val_accuracy']:.4f} (epoch {run_.best['epoch']}, " \
                                      f"{run_.best['phase']})"
    return info


def _explain(args: argparse.Namespace) -> int:
    from .explain import explain_local
    from .report import LocalRow, write_protopnet_report
    from .runs import load_run

    device = _device(args.device)
    run_ = load_run(args.run_dir, args.checkpoint, device=device)
    prepare_out_dir(args.out, overwrite=args.overwrite, create=False)
    loaded, failures = load_inputs(args.images)
    if not loaded:
        log.error("none of the %d input(s) could be used; nothing to explain", len(args.images))
        return EXIT_NOTHING
    s = run_.prep.image_size
    rows = []
    for start in range(0, len(loaded), EXPLAIN_BATCH):  # batched forwards
        chunk = loaded[start : start + EXPLAIN_BATCH]
        x = torch.stack([run_.preprocess(img) for _, img in chunk]).to(device)
        exps = explain_local(run_.model, x, args.target, top_k=args.top_k, percentile=run_.percentile)
        rows += [LocalRow(images.image_name(path), np.asarray(images.resize_crop(img, s, s), dtype=np.uint8), exp,
                          source=path) for (path, img), exp in zip(chunk, exps, strict=True)]
    path = write_protopnet_report(
        args.out, run_.model, local=rows, train_data=_pictures(run_, args.data), info=_info(run_),
        failures=failures, title="seewhy protopnet explain", command=_command(args), overwrite=args.overwrite,
        percentile=run_.percentile,
    )
    print(path)  # noqa: T201
    if failures:
        log.warning("%d of %d input(s) could not be used (listed in the report); exit code %d", len(failures),
                    len(args.images), EXIT_PARTIAL)
        return EXIT_PARTIAL
    return EXIT_OK


def _prototypes(args: argparse.Namespace) -> int:
    from .explain import explain_global
    from .report import write_protopnet_report
    from .runs import load_run

    device = _device(args.device)
    run_ = load_run(args.run_dir, args.checkpoint, device=device)
    prepare_out_dir(args.out, overwrite=args.overwrite, create=False)
    data = run_.train_set(args.data)
    if not run_.model.pushed:
        log.warning("the prototypes of this checkpoint were never pushed: they are not training patches")
    summaries = explain_global(run_.model, data, run_.prep, args.k, percentile=run_.percentile,
                               progress=not _quiet(args))
    path = write_protopnet_report(
        args.out, run_.model, prototypes=summaries, train_data=data, info=_info(run_),
        title="seewhy protopnet prototypes", command=_command(args), overwrite=args.overwrite,
        percentile=run_.percentile,
    )
    print(path)  # noqa: T201
    return EXIT_OK


# -- entry point ---------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """``seewhy protopnet ...`` with ``argv`` the arguments after ``protopnet``; returns the exit code."""
    parser = argparse.ArgumentParser(prog="seewhy", epilog=command.EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_parser(parser.add_subparsers(dest="command", metavar="COMMAND", required=True), command.common_options())
    return command.run(parser, ["protopnet", *(sys.argv[1:] if argv is None else argv)])
