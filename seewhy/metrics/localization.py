"""Localization metrics: does the evidence sit on the object? They need a ground-truth mask per image.

Masks are (B,H,W) or (B,1,H,W) bool at the input size (True = object); build them from boxes with
:func:`boxes_to_masks`, from files with :func:`load_masks` (PNG) and :func:`load_boxes` (JSON/CSV). Attributions are
summed over channels and upsampled bilinearly to the input size. An empty mask scores NaN (never a hit or a miss);
aggregate with ``torch.nanmean`` or :func:`pointing_accuracy`. No model forward is needed (``model``, ``target``,
``batch_size`` and ``seed`` are accepted for the common metric signature and unused).
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor, nn

from ..core import check_inputs
from ..images import resize_crop
from ..targets import TargetSpec
from .common import pixel_map, ranks
from .registry import preset, register_metric

Box = Sequence[float]
Size = int | tuple[int, int]


def _check_masks(mask: Tensor, inputs: Tensor) -> Tensor:
    """(B,H,W) bool on the inputs' device, from (B,H,W) / (B,1,H,W) bool (or 0/1 numbers)."""
    if not isinstance(mask, Tensor):
        raise TypeError(f"mask must be a bool tensor (B,H,W), got {type(mask).__name__}; see load_masks/boxes_to_masks")
    if mask.ndim == 4 and mask.shape[1] == 1:
        mask = mask[:, 0]
    b, (h, w) = inputs.shape[0], inputs.shape[-2:]
    if mask.ndim != 3 or mask.shape[0] != b:
        raise ValueError(f"mask of shape {tuple(mask.shape)} does not fit {b} inputs; give ({b}, {h}, {w}) bool")
    if tuple(mask.shape[-2:]) != (h, w):
        raise ValueError(
            f"masks are {tuple(mask.shape[-2:])} but the inputs are {(h, w)}; build them at the input size: "
            f"load_masks(paths, size=({h}, {w})) or boxes_to_masks(boxes, size=({h}, {w}))"
        )
    if mask.dtype != torch.bool:
        if not bool(((mask == 0) | (mask == 1)).all()):
            raise ValueError("a non-bool mask must hold only 0 and 1; pass mask > threshold")
        mask = mask != 0
    return mask.to(inputs.device)


def _setup(inputs: Tensor, attributions: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    inputs = check_inputs(inputs)
    return pixel_map(attributions, inputs), _check_masks(mask, inputs), inputs


def _signed(pmap: Tensor, sign: str) -> Tensor:
    if sign == "positive":
        return pmap.clamp(min=0)
    if sign == "abs":
        return pmap.abs()
    if sign == "all":
        return pmap
    raise ValueError(f"unknown sign {sign!r}; use 'positive' (negative relevance dropped), 'abs' or 'all'")


_NAN = float("nan")


@register_metric("pointing_game", family="localization", higher_is_better=True, needs=("mask",))
def pointing_game(
    model: nn.Module | None,
    inputs: Tensor,
    attributions: Tensor,
    target: TargetSpec = None,
    *,
    mask: Tensor,
    tolerance: float = 15,
    batch_size: int | None = None,
    seed: int | None = None,
) -> Tensor:
    """Pointing game (Zhang et al. 2016/2018): is the map's maximum on the object, up to ``tolerance`` pixels?

    hit = exists p in mask with ||p - argmax(map)||_2 < tolerance, or argmax in the mask (TorchRay's test: squared
    distance < 15^2 at the input size; ``tolerance=0`` asks for the exact point). Ties of the maximum: the first in
    raster order. Aggregate with :func:`pointing_accuracy` (per-class mean, as the paper's benchmark).

    Returns:
        (B,) 1.0 (hit), 0.0 (miss) or NaN (empty mask: excluded).
    """
    if not isinstance(tolerance, (int, float)) or isinstance(tolerance, bool) or tolerance < 0:
        raise ValueError(f"tolerance must be a number of pixels >= 0, got {tolerance!r}")
    pmap, masks, _ = _setup(inputs, attributions, mask)
    b, h, w = pmap.shape
    flat = pmap.flatten(1).argmax(1)
    py, px = (flat // w).double(), (flat % w).double()
    yy = torch.arange(h, device=pmap.device, dtype=torch.float64).view(1, h, 1)
    xx = torch.arange(w, device=pmap.device, dtype=torch.float64).view(1, 1, w)
    d2 = (yy - py.view(b, 1, 1)) ** 2 + (xx - px.view(b, 1, 1)) ** 2
    hit = (masks & (d2 < float(tolerance) ** 2)).flatten(1).any(1) | masks.flatten(1).gather(1, flat[:, None])[:, 0]
    out = hit.to(torch.float32)
    return torch.where(masks.flatten(1).any(1), out, _NAN)


def pointing_accuracy(hits: Tensor, classes: Tensor | Sequence[int] | None = None) -> float:
    """Pointing-game accuracy: hits / (hits + misses), NaN entries (empty masks) skipped.

    With ``classes`` (one class per entry), the mean over classes of the per-class accuracy (the protocol of
    Zhang et al. and TorchRay). NaN when no entry counts."""
    hits = torch.as_tensor(hits, dtype=torch.float64).flatten()
    valid = ~torch.isnan(hits)
    if classes is None:
        return float(hits[valid].mean()) if bool(valid.any()) else _NAN
    classes = torch.as_tensor(classes).flatten()
    if classes.shape != hits.shape:
        raise ValueError(f"got {classes.numel()} classes for {hits.numel()} pointing results; give one per result")
    accs = [hits[valid & (classes == c)].mean() for c in torch.unique(classes[valid])]
    return float(torch.stack(accs).mean()) if accs else _NAN


_MASS = "Relevance mass accuracy (Arras et al. 2022, CLEVR-XAI): R_within / R_total."
_RANK = "Relevance rank accuracy (Arras et al. 2022, CLEVR-XAI): |top-K pixels of R in the mask| / K, K = |mask|."
_ENERGY = ("Energy-based pointing game (Wang et al. 2020, Score-CAM): share of the positive energy inside the "
           "mask/box, sum_{p in mask} max(L_p, 0) / sum_p max(L_p, 0).")


@register_metric("relevance_mass_accuracy", family="localization", higher_is_better=True, needs=("mask",),
                 params={"measure": "mass"}, summary=_MASS)
@register_metric("relevance_rank_accuracy", family="localization", higher_is_better=True, needs=("mask",),
                 params={"measure": "rank"}, summary=_RANK)
@register_metric("energy_pointing_game", family="localization", higher_is_better=True, needs=("mask",),
                 params={"measure": "mass", "sign": "positive"}, summary=_ENERGY)
def relevance_accuracy(model: nn.Module | None, inputs: Tensor, attributions: Tensor, target: TargetSpec = None, *,
                       mask: Tensor, measure: str = "mass", sign: str = "positive", batch_size: int | None = None,
                       seed: int | None = None) -> Tensor:
    """Relevance mass or rank accuracy (Arras et al. 2022, CLEVR-XAI): how much of the relevance R is on the object?

    R is the channel-summed map with ``sign`` applied: "positive" (negative relevance set to 0, so the score is in
    [0, 1]), "abs" or "all" (raw; negative relevance can push the mass outside [0, 1], as in Quantus).
    ``measure="mass"``: R_within / R_total (NaN for R_total = 0; with "positive" this is the energy-based pointing
    game of Wang et al. 2020). ``measure="rank"``: |top-K pixels of R in the mask| / K with K = |mask|, ties in raster
    order. NaN for an empty mask. Registered as ``relevance_mass_accuracy``, ``relevance_rank_accuracy`` and
    ``energy_pointing_game``.

    Returns:
        (B,) accuracies.
    """
    if measure not in ("mass", "rank"):
        raise ValueError(f"unknown measure {measure!r}; use 'mass' or 'rank'")
    pmap, masks, _ = _setup(inputs, attributions, mask)
    r, flat = _signed(pmap, sign), masks.flatten(1)
    if measure == "rank":
        k = flat.sum(1)
        hits = ((ranks(r).flatten(1) < k[:, None]) & flat).sum(1).double()
        return torch.where(k > 0, hits / k.clamp(min=1), _NAN).to(pmap.dtype)
    r = r.flatten(1).double()
    inside, total = (r * flat).sum(1), r.sum(1)
    ok = flat.any(1) & (total != 0)
    return torch.where(ok, inside / torch.where(total != 0, total, 1.0), _NAN).to(pmap.dtype)


relevance_mass_accuracy = preset("relevance_mass_accuracy")
relevance_rank_accuracy = preset("relevance_rank_accuracy")
energy_pointing_game = preset("energy_pointing_game")


# ---------------------------------------------------------------------------------------------------------------
# masks and boxes from files


def _size(size: Size) -> tuple[int, int]:
    hw = (size, size) if isinstance(size, int) and not isinstance(size, bool) else tuple(size)
    if len(hw) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in hw):
        raise ValueError(f"size must be a positive int or (height, width), got {size!r}")
    return hw  # type: ignore[return-value]


def _geometry(image_size: tuple[int, int], size: tuple[int, int], resize: int | None) -> tuple[float, float, int, int]:
    """(scale x, scale y, left, top) taking image pixel coordinates to input coordinates: a plain resize to ``size``,
    or with ``resize`` the shorter side resized to it and a centre crop of ``size`` (as seewhy.images.resize_crop)."""
    w, h = image_size
    if resize is None:
        return size[1] / w, size[0] / h, 0, 0
    s = resize / min(w, h)
    nw, nh = max(1, round(w * s)), max(1, round(h * s))
    if size[1] > nw or size[0] > nh:
        raise ValueError(f"cannot centre-crop {size[1]}x{size[0]} from {w}x{h} resized to {nw}x{nh}; check resize")
    return nw / w, nh / h, int(round((nw - size[1]) / 2.0)), int(round((nh - size[0]) / 2.0))


def boxes_to_masks(
    boxes: Sequence[Box | Sequence[Box]] | Tensor,
    size: Size,
    *,
    image_size: tuple[int, int] | Sequence[tuple[int, int]] | None = None,
    resize: int | None = None,
) -> Tensor:
    """(B,H,W) bool masks from boxes (x0, y0, x1, y1) in pixels, one box or a list of boxes (union) per image.

    A pixel is inside when its centre (x + 0.5, y + 0.5) lies in [x0, x1) x [y0, y1) (integer boxes cover columns
    x0 ... x1 - 1). Boxes are in input coordinates, or with ``image_size`` ((width, height) of the original image, one
    or one per image) in original-image pixels mapped the way images were preprocessed: a plain resize to ``size``, or
    with ``resize`` the shorter side resized and a centre crop (``seewhy.images.preprocess``). An empty list gives an
    empty mask (scored NaN).
    """
    h, w = _size(size)
    if isinstance(boxes, Tensor):
        boxes = boxes.detach().cpu().tolist()
    if isinstance(boxes, (str, bytes)) or not isinstance(boxes, Sequence):
        raise TypeError(f"boxes must be a list with one box (x0, y0, x1, y1) or a list of boxes per image, "
                        f"got {type(boxes).__name__}")
    sizes: list = [image_size] * len(boxes) if image_size is None or isinstance(image_size[0], (int, float)) \
        else list(image_size)
    if len(sizes) != len(boxes):
        raise ValueError(f"got {len(sizes)} image sizes for {len(boxes)} images")
    xs = torch.arange(w, dtype=torch.float64) + 0.5
    ys = torch.arange(h, dtype=torch.float64) + 0.5
    out = torch.zeros(len(boxes), h, w, dtype=torch.bool)
    for i, (item, isz) in enumerate(zip(boxes, sizes, strict=True)):
        group = [item] if len(item) == 4 and all(isinstance(v, (int, float)) for v in item) else list(item)
        sx, sy, left, top = (1.0, 1.0, 0, 0) if isz is None else _geometry(tuple(isz), (h, w), resize)
        for box in group:
            if len(box) != 4 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in box):
                raise ValueError(f"image {i}: a box must be 4 numbers (x0, y0, x1, y1), got {box!r}")
            x0, y0, x1, y1 = box
            if not (x1 > x0 and y1 > y0):
                raise ValueError(
                    f"image {i}: box {box!r} is empty or reversed; use (x0, y0, x1, y1) with x1 > x0 and y1 > y0"
                )
            x0, x1 = x0 * sx - left, x1 * sx - left
            y0, y1 = y0 * sy - top, y1 * sy - top
            out[i] |= ((ys >= y0) & (ys < y1))[:, None] & ((xs >= x0) & (xs < x1))[None, :]
    return out


def _mask_array(img: Image.Image) -> np.ndarray:
    """True where a PNG marks the object: palette images by index (0 background, 255 the VOC "void" border, both
    False), grey by value > 0, RGBA by alpha > 0 when it has transparency, other colour images by any channel > 0."""
    if img.mode == "P":
        a = np.asarray(img)
        return (a > 0) & (a != 255)
    if img.mode in ("RGBA", "LA"):
        alpha = np.asarray(img.getchannel("A"))
        if alpha.min() < 255:
            return alpha > 0
        img = img.convert("RGB" if img.mode == "RGBA" else "L")
    a = np.asarray(img)
    return a.any(axis=-1) if a.ndim == 3 else a > 0


def load_masks(
    paths: Sequence[str | os.PathLike] | str | os.PathLike, size: Size, *, resize: int | None = None
) -> Tensor:
    """(B,H,W) bool masks from PNG files (nonzero = object, see below), at the input ``size``.

    Each mask is resized with nearest neighbour the way the images were preprocessed: to ``size`` directly, or with
    ``resize`` (e.g. 256 for ``seewhy.images.preprocess``) the shorter side to ``resize`` and a centre crop of
    ``size``. Palette PNGs (PASCAL VOC) count indices other than 0 and 255 (the void border); grey by value > 0; RGBA
    by alpha when transparent.
    """
    h, w = _size(size)
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    out = []
    for path in paths:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"mask file not found: {p}")
        try:
            with Image.open(p) as img:
                img.load()
                arr = _mask_array(img)
        except (UnidentifiedImageError, OSError) as err:
            raise ValueError(f"cannot read mask {p} as an image ({err}); give PNG masks") from None
        m = Image.fromarray(arr.astype(np.uint8) * 255)
        if resize is None:
            m = m.resize((w, h), Image.Resampling.NEAREST)
        else:  # the images' own preprocessing, with nearest-neighbour sampling
            m = resize_crop(m, resize, (h, w), interpolation="nearest").convert("L")
        out.append(torch.from_numpy(np.asarray(m) > 127))
    if not out:
        raise ValueError("give at least one mask path")
    return torch.stack(out)


def _box_from(value: object, where: str) -> tuple[float, float, float, float]:
    if isinstance(value, dict):
        try:
            value = [value[k] for k in ("x0", "y0", "x1", "y1")]
        except KeyError:
            raise ValueError(f"{where}: a box object needs keys x0, y0, x1, y1, got {sorted(value)}") from None
    if not isinstance(value, (list, tuple)) or len(value) != 4:
        raise ValueError(f"{where}: a box must be [x0, y0, x1, y1], got {value!r}")
    try:
        box = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: box coordinates must be numbers, got {value!r}") from None
    if not (box[2] > box[0] and box[3] > box[1]):
        raise ValueError(f"{where}: box {value!r} is empty or reversed; need x1 > x0 and y1 > y0")
    return box  # type: ignore[return-value]


def _boxes_from(value: object, where: str) -> list[tuple[float, float, float, float]]:
    """One box or a list of boxes (an empty list: no object)."""
    if isinstance(value, dict) or (isinstance(value, (list, tuple)) and len(value) == 4
                                   and all(isinstance(v, (int, float)) for v in value)):
        return [_box_from(value, where)]
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"{where}: expected a box [x0, y0, x1, y1] or a list of boxes, got {value!r}")
    return [_box_from(v, f"{where}, box {j}") for j, v in enumerate(value)]


def load_boxes(path: str | os.PathLike) -> dict[str, list[tuple[float, float, float, float]]]:
    """Boxes per image from a JSON or CSV file: {image name: [(x0, y0, x1, y1), ...]} (pixels; several = union).

    JSON: ``{"cat.jpg": [x0, y0, x1, y1], "dog.jpg": [[...], [...]]}`` or ``[{"image": "cat.jpg", "box": [...]}, ...]``
    ("boxes" for a list; a box may also be ``{"x0": .., "y0": .., "x1": .., "y1": ..}``). CSV: a header with columns
    ``image,x0,y0,x1,y1`` (others ignored), one row per box. Turn them into masks with :func:`boxes_to_masks`.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"box file not found: {p}")
    out: dict[str, list[tuple[float, float, float, float]]] = {}
    suffix = p.suffix.lower()
    if suffix == ".json":
        try:
            data = json.loads(p.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{p} is not valid JSON: {err}") from None
        if isinstance(data, dict):
            for name, value in data.items():
                out[str(name)] = _boxes_from(value, f"{p}: {name!r}")
        elif isinstance(data, list):
            for j, entry in enumerate(data):
                if not isinstance(entry, dict) or "image" not in entry or not ({"box", "boxes"} & set(entry)):
                    raise ValueError(f"{p}: entry {j} must be an object with 'image' and 'box' (or 'boxes')")
                value = entry["box"] if "box" in entry else entry["boxes"]
                out.setdefault(str(entry["image"]), []).extend(_boxes_from(value, f"{p}: entry {j}"))
        else:
            raise ValueError(f"{p}: expected a JSON object {{image: boxes}} or a list of {{image, box}} entries")
    elif suffix == ".csv":
        with p.open(newline="") as f:
            reader = csv.DictReader(f)
            need = {"image", "x0", "y0", "x1", "y1"}
            if reader.fieldnames is None or not need <= {c.strip() for c in reader.fieldnames}:
                raise ValueError(f"{p}: the CSV needs a header with columns image,x0,y0,x1,y1; got {reader.fieldnames}")
            for line, row in enumerate(reader, start=2):
                row = {k.strip(): v for k, v in row.items() if k is not None}
                box = _box_from([row[k] for k in ("x0", "y0", "x1", "y1")], f"{p}, line {line}")
                out.setdefault(row["image"].strip(), []).append(box)
    else:
        raise ValueError(f"unsupported box file {p}: use .json or .csv")
    return out
