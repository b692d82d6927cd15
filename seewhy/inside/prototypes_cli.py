"""``seewhy prototypes``: MMD-critic prototypes and criticisms of an image dataset at a layer, as a report.

::

    seewhy prototypes DATA... --model M [--layer L] [--prototypes P] [--criticisms C] [--gamma G]
                      [--regularizer logdet] [--witness-sign abs|positive] --out DIR

writes ``index.html`` (the prototypes and criticisms as image tiles) and ``manifest.json`` (their dataset indices,
paths, labels, witness and density values).
"""

from __future__ import annotations

import argparse
from typing import Any

from torch import Tensor

from .prototypes import image_prototypes_criticisms, tiles

__all__ = ["add_parser", "run"]


# -- the command ---------------------------------------------------------------------------------------


def add_parser(subparsers: Any, common: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """Add ``prototypes`` to ``subparsers`` (``common``: the parent parser of ``-v``/``-q``); sets ``func=run``."""
    from .. import command
    from ..argtypes import count, positive_int
    from .cli import _options

    p = subparsers.add_parser(
        "prototypes", parents=[_options([common] if common is not None else [])],
        help="MMD-critic prototypes and criticisms of a dataset at a layer",
        description="MMD-critic (Kim, Khanna & Koyejo 2016) on a layer's output pooled to one vector per image: "
                    "prototypes that summarise the data, criticisms it leaves out, drawn as image tiles.",
        epilog=command.EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data", nargs="+", metavar="DATA",
                   help="one folder of images (flat, or one sub-folder per class) or image files")
    p.add_argument("--prototypes", type=positive_int, default=20, metavar="P", help="prototypes (default: %(default)s)")
    p.add_argument("--criticisms", type=count, default=10, metavar="C", help="criticisms (default: %(default)s)")
    p.add_argument("--gamma", type=_gamma, default=None, metavar="G|scale|median",
                   help="RBF kernel width: a positive number, scale = 1/(D var X) (default) or median = "
                        "1/median squared distance")
    p.add_argument("--regularizer", choices=("logdet",), default=None,
                   help="diversity of the criticisms (the paper's log-determinant term)")
    p.add_argument("--witness-sign", choices=("abs", "positive"), default="abs",
                   help="criticisms by |witness| (the paper, default) or only under-represented images (positive)")
    p.set_defaults(func=run, inside_command="prototypes")  # inside_command: the report's kind (LayerRun.header)
    return p


def _gamma(text: str) -> float | str:
    if text in ("scale", "median"):
        return text
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, 'scale' or 'median', got {text!r}")
    return value


def run(args: argparse.Namespace) -> int:
    """Run a parsed ``seewhy prototypes ...``; returns the exit code."""
    from ..command import EXIT_NOTHING
    from ..report_files import write_page_report
    from ..report_layout import png_uri
    from .cli import LayerRun, _done

    r = LayerRun(args)
    if r.start(note="the kernel matrix comes on top") is None:
        return EXIT_NOTHING
    n = len(r.data)
    if args.prototypes + args.criticisms > n:
        raise ValueError(f"--prototypes + --criticisms = {args.prototypes + args.criticisms} exceeds the {n} "
                         "images; ask for fewer")
    result = image_prototypes_criticisms(r.model, r.data, r.layer, args.prototypes, args.criticisms,
                                         batch_size=args.batch_size, gamma=args.gamma, regularizer=args.regularizer,
                                         witness_sign=args.witness_sign)
    f, feats = result.found, result.features
    grids = tiles(result, r.data)
    figures = [{"id": what, "title": f"{what.capitalize()} at {feats.layer}", "uri": png_uri(img),
                "caption": caption}
               for what, img, caption in (
                   ("prototypes", grids.get("prototypes"), "In the order the greedy search picked them (each "
                    "maximises J(S) = 2/(n|S|) sum k(x_i, z_j) - 1/|S|^2 sum k(z_i, z_j)); w is the witness."),
                   ("criticisms", grids.get("criticisms"), "The images the prototypes explain worst: largest "
                    "|witness(x)| = |mean k(x, X) - mean k(x, S)|" + (" with the log-det diversity term"
                                                                     if f.regularizer else "") + "."))
               if img is not None]

    def rows(which: Tensor) -> list[dict[str, Any]]:
        return [{"row": int(i), "index": int(feats.indices[i]),
                 "path": feats.paths[i] if feats.paths is not None else None,
                 "label": int(feats.labels[i]) if feats.labels is not None else None,
                 "witness": float(f.witness[i]), "density": float(f.density[i])} for i in which.cpu().tolist()]

    record = {"prototypes": rows(f.prototypes), "criticisms": rows(f.criticisms),
              "objective": f.objective.tolist(), "kernel": {"kernel": f.kernel, "gamma": f.gamma,
                                                            "gamma_rule": f.gamma_rule},
              "features": list(feats.features.shape), "seconds": result.seconds}
    header = r.header(prototypes=args.prototypes, criticisms=args.criticisms, gamma=f.gamma_rule,
                      regularizer=args.regularizer, witness_sign=args.witness_sign)
    summary = [f"{len(feats.indices)} images x {feats.features.shape[1]} features", f"{len(f.prototypes)} prototypes",
               f"{len(f.criticisms)} criticisms", f"gamma {f.gamma:.3g} ({f.gamma_rule})" if f.gamma else ""]
    page = {"figures": figures, "maps": [], "units": [], "field": None, "embedding": None, "dissection": None}
    settings = {k: v for k, v in header["settings"].items() if v is not None and v is not False}
    path = write_page_report(args.out, "inside.html", "seewhy prototypes", header, [s for s in summary if s], record,
                             page, settings=settings, failures=list(feats.skipped), overwrite=args.overwrite)
    return _done(path, feats.skipped)
