"""``seewhy inside``: look inside a network (filters, feature maps, top patches, embeddings, dissection), each as a
self-contained HTML report.

::

    seewhy inside filters --model M [--layer L] [--max-filters N] --out DIR
    seewhy inside maps IMAGE... --model M [--layer L] [--top N | --channels 1,2,3] --out DIR
    seewhy inside patches DATA... --model M [--layer L] [--units 0,1,5 | --top-units N] [--k K] --out DIR
    seewhy inside embed DATA... --model M [--layer L] [--method umap|tsne|pca] [--grid] [--seed N] --out DIR
    seewhy inside dissect DATA... --model M [--layer L] [--concepts colours|FOLDER] [--quantile Q]
                          [--iou-threshold T] [--top-patches K] --out DIR

Every subcommand also takes ``--weights FILE``, ``--overwrite``, ``--device``, ``--batch-size N`` and ``-v``/``-q``.
DATA is one folder (flat, or one sub-folder per class) or image files. Before a pass over the data the cost is logged:
one batch forward to the layer is timed (after a warm-up) and scaled to the images and passes. stdout gets only the
path of the report's ``index.html``; exit codes as for ``seewhy`` (0 ok, 1 no readable image, 2 usage error, 3 the
report lists unreadable files under Failures).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .. import command, zoo
from ..argtypes import count, positive_int
from ..command import EXIT_NOTHING
from ..progress import format_seconds

log = logging.getLogger("seewhy")

__all__ = ["DEFAULT_UNITS", "MAX_DETECTORS", "LayerRun", "add_parser", "run"]

#: units shown by ``patches`` without --units / --top-units
DEFAULT_UNITS = 16
#: detectors shown with their top patches by ``dissect``
MAX_DETECTORS = 32
_FORMAT = {"epilog": command.EPILOG, "formatter_class": argparse.RawDescriptionHelpFormatter}


def _ints(text: str) -> list[int]:
    """``0,1,5`` -> [0, 1, 5] (distinct integers >= 0)."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 0,1,5, got {text!r}") from None
    if not values or min(values) < 0 or len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(f"expected distinct integers >= 0 such as 0,1,5, got {text!r}")
    return values


def _unit_interval(text: str) -> float:
    """A number in (0, 1)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got {text!r}") from None
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got {value}")
    return value


# -- parser --------------------------------------------------------------------------------------------


def add_parser(subparsers: Any, common: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """Add ``inside {filters,maps,patches,embed,dissect}`` to ``subparsers``; ``common`` is the parent parser of
    ``-v``/``-q``. Sets ``func=run``."""
    top = subparsers.add_parser(
        "inside", help="look inside a network: filters, feature maps, top patches, embeddings, dissection",
        description="Look inside a network, layer by layer; each subcommand writes a self-contained HTML report "
                    "(index.html, images embedded) and manifest.json with the numbers.", **_FORMAT)
    sub = top.add_subparsers(dest="inside_command", metavar="COMMAND", required=True)
    options = _options([common] if common is not None else [])
    data_help = "one folder of images (flat, or one sub-folder per class) or image files"

    p = sub.add_parser("filters", parents=[options], help="the convolution filters of a layer",
                       description="The filters of a convolution (default: the first one) as one picture: mid-grey "
                                   "is zero, brighter positive, darker negative.", **_FORMAT)
    p.add_argument("--max-filters", type=positive_int, default=64, metavar="N",
                   help="filters drawn (default: %(default)s)")

    p = sub.add_parser("maps", parents=[options], help="feature maps of a layer on images",
                       description="Per image: the input as the model sees it and the feature maps of the channels "
                                   "with the highest mean activation (or the given channels), on one scale.",
                       **_FORMAT)
    p.add_argument("data", nargs="+", metavar="IMAGE", help="image files (or one folder)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--top", type=positive_int, default=16, metavar="N",
                       help="channels shown: the N highest by mean activation (default: %(default)s)")
    which.add_argument("--channels", type=_ints, metavar="1,2,3", help="these channels instead")

    p = sub.add_parser("patches", parents=[options], help="the image patches that excite each unit most",
                       description="Per unit (channel) of the layer: the k images whose activation maximum is "
                                   "highest, with the receptive field of that maximum boxed and cropped.", **_FORMAT)
    p.add_argument("data", nargs="+", metavar="DATA", help=data_help)
    which = p.add_mutually_exclusive_group()
    which.add_argument("--units", type=_ints, metavar="0,1,5",
                       help=f"units shown (default: the first {DEFAULT_UNITS})")
    which.add_argument("--top-units", type=positive_int, metavar="N",
                       help="search every unit and show the N whose best activation is highest")
    p.add_argument("--k", type=positive_int, default=9, metavar="K", help="patches per unit (default: %(default)s)")

    p = sub.add_parser("embed", parents=[options], help="a 2-D map of a dataset as a layer sees it",
                       description="The layer's output, pooled to one vector per image, projected to 2-D and drawn "
                                   "as thumbnails (borders coloured by class for a folder of class folders).",
                       **_FORMAT)
    p.add_argument("data", nargs="+", metavar="DATA", help=data_help)
    p.add_argument("--method", choices=("umap", "tsne", "pca"),
                   help="projection (default: umap when umap-learn is installed, else tsne)")
    p.add_argument("--grid", action="store_true", help="also snap the thumbnails to a grid (no overlap)")
    p.add_argument("--seed", type=int, default=0, metavar="N", help="seed of the projection (default: %(default)s)")

    p = sub.add_parser("dissect", parents=[options], help="network dissection: units that detect concepts",
                       description="Network dissection (Bau et al. 2017): each unit's activation map, thresholded at "
                                   "its top quantile, is compared with concept masks by IoU; units above the IoU "
                                   "threshold are detectors, shown with their top patches.", **_FORMAT)
    p.add_argument("data", nargs="+", metavar="DATA", help=data_help)
    p.add_argument("--concepts", default="colours", metavar="colours|FOLDER",
                   help="concept masks: the built-in colour concepts (default), or a folder CONCEPT/IMAGE_STEM.png")
    p.add_argument("--quantile", type=_unit_interval, default=0.005, metavar="Q",
                   help="top quantile of each unit's activations kept as its mask (default: %(default)s)")
    p.add_argument("--iou-threshold", type=_unit_interval, default=0.04, metavar="T",
                   help="IoU above which a unit is a detector (default: %(default)s)")
    p.add_argument("--top-patches", type=count, default=4, metavar="K",
                   help=f"top patches shown per detector, at most {MAX_DETECTORS} detectors (0: none; "
                        "default: %(default)s)")
    top.set_defaults(func=run)
    return top


def _options(parents: list[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    """The options of every ``inside`` subcommand: model, layer, output, device, batch size."""
    p = argparse.ArgumentParser(add_help=False, parents=parents)
    p.add_argument("--model", required=True, metavar="NAME|SPEC",
                   help=f"a zoo model ({', '.join(zoo.MODELS)}), path/file.py:factory, package.module:factory or a "
                        "TorchScript file")
    p.add_argument("--weights", metavar="FILE", help="a state-dict file to load into the model")
    p.add_argument("--layer", metavar="NAME",
                   help="a name from model.named_modules() (default: the first convolution for filters; otherwise "
                        "the zoo model's CAM layer, else the last layer with a spatial output)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder for the report")
    p.add_argument("--overwrite", action="store_true", help="write into a non-empty output folder")
    p.add_argument("--device", default="cpu", help="torch device: cpu (default), cuda, cuda:1, mps")
    p.add_argument("--batch-size", type=positive_int, metavar="N",
                   help="images per forward (default: the engine's, measured fastest on this model)")
    return p


def run(args: argparse.Namespace) -> int:
    """Run a parsed ``seewhy inside ...`` command; returns the exit code."""
    return {"filters": _filters, "maps": _maps, "patches": _patches, "embed": _embed,
            "dissect": _dissect}[args.inside_command](args)


# -- shared steps --------------------------------------------------------------------------------------


class LayerRun:
    """What every subcommand sets up first: the output folder checked (before any work), the model on its device,
    the data, the layer, and the report's header."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.model, self.spec, self.device = command.open_model(args)
        self.data: Any = None
        self.first = torch.empty(0)  # the data's first input (1,C,H,W), set by open_data
        self.layer = ""
        self.estimate: dict[str, Any] = {}

    def open_data(self) -> bool:
        """The data of ``args.data``; False (logged) when no image is readable."""
        from ..data import as_data

        items = list(self.args.data)
        source: Any = items
        if len(items) == 1 and Path(items[0]).is_dir():
            source = items[0]
        elif len(items) == 1 and not Path(items[0]).exists():
            raise ValueError(f"{items[0]!r} does not exist; pass a folder of images or image files")
        spec = self.spec
        self.data = as_data(source, self.model, transform=spec.preprocess, mean=spec.mean, std=spec.std)
        try:
            self.first = self.data.first()
        except ValueError:
            log.error("none of the %d image(s) could be read; nothing to report", len(self.data))
            return False
        return True

    def start(self, passes: int = 1, note: str = "") -> tuple[int, ...] | None:
        """Open the data, pick the layer and log the cost: the layer's output shape per image, or None (logged) when
        no image is readable."""
        if not self.open_data():
            return None
        self.pick_layer()
        return self.time_layer(passes=passes, note=note)

    def pick_layer(self) -> None:
        from ..layers import default_layer, resolve_layer

        if self.args.layer is not None:
            self.layer = resolve_layer(self.model, self.args.layer)[0]
        elif self.spec.cam_layer is not None:
            self.layer = resolve_layer(self.model, self.spec.cam_layer)[0]
        else:
            self.layer = default_layer(self.model, self.first.to(self.device))

    def time_layer(self, passes: int = 1, note: str = "") -> tuple[int, ...]:
        """Log the cost (a batch forward to the layer, the faster of two after a warm-up, scaled to the data and
        ``passes``); returns the layer's output shape per image. ValueError for a layer the forward does not reach."""
        from .stream import layer_activations, pick_batch_size

        size, first = pick_batch_size(self.model, self.data, self.args.batch_size)
        size = max(1, min(size, len(self.data)))  # a run never holds more in one batch
        x = first.to(self.device).expand(size, *first.shape[1:]).contiguous()
        shape = tuple(layer_activations(self.model, x, self.layer).shape[1:])  # the warm-up
        if not log.isEnabledFor(logging.INFO):
            return shape
        seconds = []
        for _ in range(2):  # the faster of two timed calls
            start = time.perf_counter()
            layer_activations(self.model, x, self.layer)
            seconds.append(time.perf_counter() - start)
        per_image = min(seconds) / size
        total = per_image * len(self.data) * passes
        h, w = first.shape[-2:]
        log.info("cost: one forward to %s takes %s per image (batch of %d at %dx%d)", self.layer,
                 format_seconds(per_image), size, h, w)
        log.info("about %s for %d image%s%s%s", format_seconds(total), len(self.data), "s"[:len(self.data) != 1],
                 f" ({passes} passes)" if passes > 1 else "", f"; {note}" if note else "")
        self.estimate = {"seconds_per_image": per_image, "batch_size": size, "passes": passes,
                         "images": len(self.data), "seconds": total}
        return shape

    def header(self, **settings: Any) -> dict[str, Any]:
        spec, args = self.spec, self.args
        weights = args.weights or ("pretrained" if spec.has_weights else "none (random init)")
        return {"kind": args.inside_command, "layer": self.layer, "estimate": self.estimate,
                "model": {"name": spec.name, "spec": args.model, "description": spec.description,
                          "weights": weights},
                "settings": {"device": str(self.device), "batch_size": args.batch_size, **settings},
                "command": ["seewhy", *getattr(args, "argv", sys.argv[1:])]}


def _conv_shape(shape: tuple[int, ...], layer: str, what: str) -> int:
    """The channel count of a (K, h, w) layer output; ValueError for any other."""
    if len(shape) != 3:
        raise ValueError(f"layer {layer!r} outputs shape {shape} per image, not (K,h,w) maps; {what} needs a "
                         "convolutional layer")
    return shape[0]


def _check_range(values: Sequence[int] | None, k: int, what: str, layer: str) -> None:
    bad = [v for v in values or () if v >= k]
    if bad:
        raise ValueError(f"{what} {bad} out of range: layer {layer!r} has {k} (0..{k - 1})")


def _done(path: Path, failures: Sequence[tuple[str, str]]) -> int:
    sys.stdout.write(f"{path}\n")
    return command.exit_code(failures, [])


# -- subcommands ---------------------------------------------------------------------------------------


def _filters(args: argparse.Namespace) -> int:
    from ..layers import resolve_layer
    from . import report
    from .filters import filters, first_conv

    r = LayerRun(args)
    r.layer = resolve_layer(r.model, args.layer)[0] if args.layer is not None else first_conv(r.model)
    weights = filters(r.model, r.layer).cpu()
    return _done(report.write_filters(args.out, r.header(max_filters=args.max_filters), weights,
                                      max_filters=args.max_filters, overwrite=args.overwrite), [])


def _maps(args: argparse.Namespace) -> int:
    from .. import images, viz
    from . import report
    from .filters import feature_maps, top_channels
    from .stream import pick_batch_size

    r = LayerRun(args)
    if (shape := r.start()) is None:
        return EXIT_NOTHING
    k = _conv_shape(shape, r.layer, "maps")
    _check_range(args.channels, k, "channels", r.layer)
    rows = []
    size, _ = pick_batch_size(r.model, r.data, args.batch_size)
    for batch in r.data.batches(size, r.device, desc=f"feature maps {r.layer}"):
        maps = feature_maps(r.model, batch.inputs, r.layer).cpu()
        for j, (i, picture) in enumerate(zip(batch.indices.tolist(), r.data.images(batch.inputs),
                                             strict=True)):
            chans = list(args.channels) if args.channels else top_channels(maps[j], args.top)
            rows.append(report.MapRow(images.image_name(r.data.name(i)), r.data.name(i), picture,
                                      viz.feature_map_grid(maps[j], channels=chans), chans,
                                      [float(maps[j, c].mean()) for c in chans], tuple(maps.shape[1:])))
    failures = list(r.data.skipped)
    settings = {"channels": args.channels} if args.channels else {"top": args.top}
    return _done(report.write_maps(args.out, r.header(**settings), rows, failures=failures,
                                   overwrite=args.overwrite), failures)


def _patches(args: argparse.Namespace) -> int:
    from . import report
    from .patches import top_patches

    r = LayerRun(args)
    if (shape := r.start()) is None:
        return EXIT_NOTHING
    k = _conv_shape(shape, r.layer, "patches")
    _check_range(args.units, k, "units", r.layer)
    units = args.units or (None if args.top_units else list(range(min(DEFAULT_UNITS, k))))
    top = top_patches(r.model, r.data, r.layer, units=units, k=args.k, batch_size=args.batch_size)
    if units is None:  # --top-units N: the units with the highest best activation
        order = torch.sort(-top.values[:, 0], stable=True).indices[:args.top_units].tolist()
        units = [top.units[i] for i in order]
    settings = {"k": args.k, "units": args.units, "top_units": args.top_units}
    return _done(report.write_patches(args.out, r.header(**settings), top, units, overwrite=args.overwrite),
                 top.skipped)


def _embed(args: argparse.Namespace) -> int:
    from . import report
    from .embedding import embed, scatter

    method = args.method or _default_projection()
    if method == "umap":
        from .embedding import import_umap

        import_umap()  # a missing umap-learn is a usage error before any work
    r = LayerRun(args)
    if r.start(note=f"the {method} projection comes on top") is None:
        return EXIT_NOTHING
    emb = embed(r.model, r.data, r.layer, method=method, seed=args.seed, batch_size=args.batch_size)
    pictures = {"scatter": scatter(emb, r.data)}
    if args.grid:
        pictures["grid"] = scatter(emb, r.data, grid=True)
    return _done(report.write_embed(args.out, r.header(method=method, seed=args.seed, grid=args.grid), emb,
                                    pictures, overwrite=args.overwrite), emb.skipped)


def _default_projection() -> str:
    import importlib.util

    if importlib.util.find_spec("umap") is not None:
        return "umap"
    log.info("umap-learn is not installed: projecting with t-SNE (pip install umap-learn for UMAP)")
    return "tsne"


def _dissect(args: argparse.Namespace) -> int:
    from . import report
    from .dissect import dissect

    concepts = _concepts(args.concepts)
    r = LayerRun(args)
    note = "the detectors' top patches take one more pass" if args.top_patches else ""
    if (shape := r.start(passes=2, note=note)) is None:
        return EXIT_NOTHING
    _conv_shape(shape, r.layer, "dissect")
    result = dissect(r.model, r.data, concepts, r.layer, quantile=args.quantile,
                     iou_threshold=args.iou_threshold, batch_size=args.batch_size)
    shown = result.detectors()[:MAX_DETECTORS]
    views: dict[int, list[report.DetectorPatch]] = {}
    failures = list(result.skipped)
    if shown and args.top_patches:
        views, more = _detector_patches(r, result, shown, concepts, args.top_patches)
        failures += [f for f in more if f[0] not in {p for p, _ in failures}]
    settings = {"concepts": args.concepts, "quantile": args.quantile, "iou_threshold": args.iou_threshold,
                "top_patches": args.top_patches}
    return _done(report.write_dissect(args.out, r.header(**settings), result, views, failures=failures,
                                      overwrite=args.overwrite), failures)


def _concepts(value: str) -> Any:
    """``colours`` -> the built-in colour concepts; otherwise a folder CONCEPT/IMAGE_STEM.png (checked here)."""
    if value == "colours":
        from .concepts import colour_concepts

        return colour_concepts
    if not Path(value).is_dir():
        raise ValueError(f"--concepts {value!r} is neither 'colours' nor a folder of concept masks "
                         "(CONCEPT/IMAGE_STEM.png)")
    return value


def _detector_patches(r: LayerRun, result: Any, shown: Sequence[Any], concepts: Any, k: int
                      ) -> tuple[dict[int, list[Any]], list[tuple[str, str]]]:
    """The top patches of each shown detector with its concept's mask (as dissect reads it) and its own thresholded
    activation mask (the unit's map upsampled bilinearly to the input, above the unit's threshold, as in dissect),
    and the files skipped."""
    import torch.nn.functional as F

    from ..data import Batch
    from . import report
    from .concepts import as_concepts
    from .filters import feature_maps
    from .patches import top_patches
    from .stream import pick_batch_size

    units = list(dict.fromkeys(int(d.unit) for d in shown))
    top = top_patches(r.model, r.data, r.layer, units=units, k=k, batch_size=r.args.batch_size)
    source = as_concepts(concepts, r.data, r.first)
    wanted = sorted({rec.index for u in units for rec in top.records(u)})
    needed = {d.concept for d in shown}  # only the shown detectors' concepts are kept per image
    found: dict[int, tuple[Tensor, np.ndarray, dict[str, np.ndarray]]] = {}  # maps, picture, concept masks
    size = pick_batch_size(r.model, r.data, r.args.batch_size)[0]
    for chunk in (wanted[i:i + size] for i in range(0, len(wanted), size)):  # batched, as the passes are
        x, read = r.data.load(chunk)
        if not read:
            continue
        x = x.to(r.device)
        present, masks = source.masks(Batch(x, torch.tensor(read), None), tuple(x.shape[-2:]))
        maps = feature_maps(r.model, x, r.layer).cpu()
        for j, (i, picture) in enumerate(zip(read, r.data.images(x), strict=True)):
            found[i] = (maps[j], picture, {source.names[int(c)]: masks[j, m].cpu().numpy()
                                          for m, c in enumerate(present) if source.names[int(c)] in needed})
    views: dict[int, list[Any]] = {}
    for d in shown:
        unit = int(d.unit)
        out = views.setdefault(unit, [])
        for rec in top.records(unit):
            if rec.index not in found:
                continue
            maps_i, picture, concept_masks = found[rec.index]
            act = F.interpolate(maps_i[unit][None, None].float(), size=picture.shape[:2], mode="bilinear",
                                align_corners=False)[0, 0]
            unit_mask = (act > float(result.thresholds[unit])).numpy()
            concept_mask = concept_masks.get(d.concept, np.zeros(picture.shape[:2], dtype=bool))
            out.append(report.DetectorPatch(rec, picture, concept_mask, unit_mask))
    return views, list(top.skipped)
