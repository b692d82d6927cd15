"""Concept masks for network dissection: where each concept is in each image of a dataset.

Three sources, turned into one interface by :func:`as_concepts` (used by :func:`seewhy.inside.dissect.dissect`):

- a folder ``CONCEPT/IMAGE_STEM.png`` of binary masks (nonzero = the concept is there), matched to the data's image
  files by stem; a missing file means the concept is absent from that image;
- a dict ``{concept: bool (N,1,H,W) tensor}`` aligned with the data by index;
- a callable ``f(picture) -> {concept: (H,W) or (1,H,W) bool mask}`` run on each picture ((3,H,W) in [0, 1]),
  e.g. :func:`colour_concepts`, the 11 basic colour terms of Broden (Bau et al., CVPR 2017).

Masks are compared with the model input as it is (after the data's preprocessing): a mask of another size is resized
to the input's H,W (nearest), which is right when the preprocessing only resizes; give masks of the preprocessed
images otherwise.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from ..data import Batch, ImageData

log = logging.getLogger("seewhy")

__all__ = ["COLOUR_NAMES", "ConceptSource", "as_concepts", "colour_concepts", "rgb_to_lab"]

#: the 11 basic colour terms of English (Berlin & Kay 1969), Broden's colour concepts
COLOUR_NAMES: tuple[str, ...] = ("black", "blue", "brown", "green", "grey", "orange", "pink", "purple", "red",
                                 "white", "yellow")
_HEAD_ALIASES = {"gray": "grey", "violet": "purple"}
# sRGB (D65) linear RGB -> CIE XYZ, and the D65 white point (IEC 61966-2-1; the values skimage.color uses)
_RGB_TO_XYZ = ((0.412453, 0.357580, 0.180423), (0.212671, 0.715160, 0.072169), (0.019334, 0.119193, 0.950227))
_D65 = (0.95047, 1.0, 1.08883)
_PIXELS_PER_CHUNK = 2048  # (2048, 566) distances: 4.6 MB
#: levels per channel of the colour lookup table (6 bits: a pixel is named by the nearest of 64^3 colours)
_LEVELS = 64


def rgb_to_lab(rgb: Tensor) -> Tensor:
    """sRGB in [0, 1] (..., 3) -> CIELAB (..., 3) under D65 (the CIE 1976 formulas), on the input's device."""
    c = rgb.clamp(0, 1)
    linear = torch.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    m = torch.tensor(_RGB_TO_XYZ, dtype=c.dtype, device=c.device)
    xyz = (linear @ m.T) / torch.tensor(_D65, dtype=c.dtype, device=c.device)
    delta = 6 / 29
    f = torch.where(xyz > delta**3, xyz.clamp(min=0) ** (1 / 3), xyz / (3 * delta**2) + 4 / 29)
    return torch.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], -1)


@lru_cache(maxsize=1)
def _prototypes() -> tuple[Tensor, Tensor]:
    """CIELAB prototypes (P,3) and their colour-term index (P,).

    Source: the xkcd colour survey (R. Munroe, "Color survey results", 2010, https://blog.xkcd.com/2010/05/03/
    color-survey-results/; the 954 most common colour names with the mean sRGB each was given, CC0), as shipped in
    ``matplotlib.colors.XKCD_COLORS``. A name is a prototype of the basic term that is its last word ('sky blue',
    'dark brown', 'light grey'; 'gray' counts as grey and 'violet' as purple): 566 prototypes, 2 to 171 per term.
    """
    from matplotlib.colors import XKCD_COLORS, to_rgb

    rgb, term = [], []
    for key, value in XKCD_COLORS.items():
        head = key.removeprefix("xkcd:").split()[-1]
        head = _HEAD_ALIASES.get(head, head)
        if head in COLOUR_NAMES:
            rgb.append(to_rgb(value))
            term.append(COLOUR_NAMES.index(head))
    return rgb_to_lab(torch.tensor(rgb, dtype=torch.float64)).float(), torch.tensor(term)


@lru_cache(maxsize=4)
def _colour_table(device: str) -> Tensor:
    """The colour term (long) of each of the ``_LEVELS**3`` quantised sRGB colours (index ``(r*L + g)*L + b``), on
    ``device``: the nearest prototype in CIELAB, computed once (0.26 M colours x 566 prototypes)."""
    lab_p, term = _prototypes()
    axis = torch.linspace(0, 1, _LEVELS)
    rgb = torch.cartesian_prod(axis, axis, axis)  # r slowest, b fastest: the index above
    pixels = rgb_to_lab(rgb)
    label = torch.empty(pixels.shape[0], dtype=torch.long)
    sq_p = (lab_p**2).sum(1)
    for start in range(0, pixels.shape[0], _PIXELS_PER_CHUNK):
        x = pixels[start:start + _PIXELS_PER_CHUNK]
        d = torch.addmm(sq_p, x, lab_p.T, alpha=-2)  # |x - p|^2 - |x|^2: the same argmin
        label[start:start + len(x)] = term[d.argmin(1)]
    return label.to(device)


def colour_concepts(image: Tensor) -> dict[str, Tensor]:
    """The 11 basic colour terms (:data:`COLOUR_NAMES`) of a picture: each pixel gets the term of its nearest
    prototype in CIELAB (Euclidean, CIE 1976 ΔE), the prototypes being the colours people named with that term in the
    xkcd colour survey (see :func:`_prototypes`). Pixels are quantised to 64 levels per channel first (a lookup table
    of the 64^3 colours, computed once): every pixel is in exactly one mask.

    Args:
        image: (3,H,W) float picture in [0, 1] (any device).

    Returns:
        ``{term: (1,H,W) bool mask}`` for every term, in :data:`COLOUR_NAMES` order, on the image's device.
    """
    if not isinstance(image, Tensor) or image.ndim != 3 or image.shape[0] != 3 or not image.is_floating_point():
        raise ValueError(f"image must be a (3,H,W) float tensor in [0, 1], got "
                         f"{tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__}")
    q = (image.detach().float().clamp(0, 1) * (_LEVELS - 1)).round_().long()  # (3,H,W) levels
    label = _colour_table(str(image.device))[(q[0] * _LEVELS + q[1]) * _LEVELS + q[2]]
    terms = torch.arange(len(COLOUR_NAMES), device=image.device).view(-1, 1, 1, 1)
    masks = label.unsqueeze(0).unsqueeze(0) == terms  # one (11,1,H,W) allocation, viewed per term
    return {name: masks[i] for i, name in enumerate(COLOUR_NAMES)}


# ------------------------------------------------------------------------------------------- concept sources


class ConceptSource:
    """Concept masks batch by batch: :attr:`names` (may grow while a callable finds new concepts) and
    :meth:`masks`."""

    names: list[str]
    #: True when new names can appear batch after batch (a callable)
    growing: bool = False

    def masks(self, batch: Batch, size: tuple[int, int]) -> tuple[Tensor, Tensor]:
        """``(present, masks)`` for a batch: the indices (c,) of the concepts in at least one of its images and
        their bool masks (b, c, H, W) at ``size`` on the batch's device."""
        raise NotImplementedError


def _as_mask(mask: Any, what: str) -> Tensor:
    """A bool tensor from a bool (or 0/1) tensor or array."""
    t = torch.as_tensor(mask) if not isinstance(mask, Tensor) else mask
    if t.dtype != torch.bool:
        if not bool(((t == 0) | (t == 1)).all()):
            raise ValueError(f"{what} must be a bool (or 0/1) mask, got values other than 0 and 1 ({t.dtype})")
        t = t != 0
    return t


def _resize(masks: Tensor, size: tuple[int, int]) -> Tensor:
    """(..., h, w) bool -> (..., H, W) bool by nearest-neighbour resizing (unchanged when the size matches)."""
    if tuple(masks.shape[-2:]) == tuple(size):
        return masks
    lead = masks.shape[:-2]
    flat = masks.reshape(-1, 1, *masks.shape[-2:]).float()
    return (F.interpolate(flat, size=size, mode="nearest") > 0.5).reshape(*lead, *size)


class _DictConcepts(ConceptSource):
    def __init__(self, concepts: Mapping[str, Any], n: int) -> None:
        if not concepts:
            raise ValueError("the concepts dict is empty; give {concept name: (N,1,H,W) bool masks}")
        self.names = []
        self._masks: list[Tensor] = []
        for name, value in concepts.items():
            if not isinstance(name, str):
                raise ValueError(f"concept names must be strings, got {name!r}")
            t = _as_mask(value, f"the masks of concept {name!r}")
            if t.ndim == 3:
                t = t.unsqueeze(1)
            if t.ndim != 4 or t.shape[1] != 1:
                raise ValueError(f"the masks of concept {name!r} must be (N,1,H,W) (one per image), got "
                                 f"{tuple(t.shape)}")
            if t.shape[0] != n:
                raise ValueError(f"concept {name!r} has masks for {t.shape[0]} images, the data has {n}: the masks "
                                 "must be aligned with the data (mask i for image i)")
            self.names.append(name)
            self._masks.append(t[:, 0])

    def masks(self, batch: Batch, size: tuple[int, int]) -> tuple[Tensor, Tensor]:
        device = batch.inputs.device
        per = [_resize(m[batch.indices.to(m.device)].to(device), size) for m in self._masks]  # C x (b, H, W)
        present = [i for i, m in enumerate(per) if bool(m.any())]
        stacked = torch.stack([per[i] for i in present], 1) if present else _empty(len(batch.indices), size, device)
        return torch.tensor(present, dtype=torch.long), stacked


def _empty(b: int, size: tuple[int, int], device: torch.device) -> Tensor:
    return torch.zeros(b, 0, *size, dtype=torch.bool, device=device)


class _FolderConcepts(ConceptSource):
    def __init__(self, root: Path, data: ImageData) -> None:
        if data.paths is None:
            raise ValueError("a folder of concept masks is matched to the images by file name: give the data as "
                             "image files (a folder or a list of paths), or give the masks as a dict of tensors")
        folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not folders:
            raise ValueError(f"{str(root)!r} has no concept sub-folders; expected CONCEPT_NAME/IMAGE_STEM.png masks")
        stems: dict[str, int] = {}
        for i, path in enumerate(data.paths):
            stem = Path(path).stem
            if stem in stems:
                raise ValueError(f"two images share the file name stem {stem!r} ({data.paths[stems[stem]]} and "
                                 f"{path}): concept masks are matched by stem, so stems must be unique")
            stems[stem] = i
        self.names = [f.name for f in folders]
        self._files: dict[int, list[tuple[int, Path]]] = {}  # image index -> [(concept, mask file)]
        for c, folder in enumerate(folders):
            for f in sorted(folder.iterdir()):
                if f.suffix.lower() == ".png" and f.stem in stems and not f.name.startswith("."):
                    self._files.setdefault(stems[f.stem], []).append((c, f))
        if not self._files:
            raise ValueError(f"no mask in {str(root)!r} matches an image of the data: masks must be named "
                             "CONCEPT_NAME/IMAGE_STEM.png after the image files")

    def masks(self, batch: Batch, size: tuple[int, int]) -> tuple[Tensor, Tensor]:
        rows = [self._files.get(int(i), []) for i in batch.indices]
        present = sorted({c for row in rows for c, _ in row})
        column = {c: j for j, c in enumerate(present)}
        out = torch.zeros(len(rows), len(present), *size, dtype=torch.bool)
        for r, row in enumerate(rows):
            for c, path in row:
                mask = _read_mask(path)
                if mask is not None:
                    out[r, column[c]] = _resize(mask, size)
        return torch.tensor(present, dtype=torch.long), out.to(batch.inputs.device)


def _read_mask(path: Path) -> Tensor | None:
    try:
        with Image.open(path) as img:
            return torch.from_numpy(np.asarray(img.convert("L")) > 0)
    except (OSError, ValueError) as err:
        log.warning("skipping concept mask %s (the concept counts as absent): %s", path, err)
        return None


class _CallableConcepts(ConceptSource):
    growing = True

    def __init__(self, fn: Callable[[Tensor], Mapping[str, Any]], data: ImageData) -> None:
        self._fn = fn
        self._data = data
        self.names = []
        self._index: dict[str, int] = {}

    def call(self, picture: Tensor) -> dict[int, Tensor]:
        """Run the callable on one (3,H,W) picture: {concept index: (H,W) bool mask}, new names appended."""
        found = self._fn(picture)
        if not isinstance(found, Mapping):
            raise ValueError(f"the concepts callable must return a dict {{concept: mask}}, got {type(found).__name__}")
        out = {}
        for name, mask in found.items():
            if not isinstance(name, str):
                raise ValueError(f"concept names must be strings, got {name!r}")
            t = _as_mask(mask, f"the mask of concept {name!r}")
            if t.ndim == 3 and t.shape[0] == 1:
                t = t[0]
            if tuple(t.shape) != tuple(picture.shape[1:]):
                raise ValueError(f"the mask of concept {name!r} must be (H,W) or (1,H,W) with the picture's size "
                                 f"{tuple(picture.shape[1:])}, got {tuple(t.shape)}")
            if name not in self._index:
                self._index[name] = len(self.names)
                self.names.append(name)
            out[self._index[name]] = t
        return out

    def masks(self, batch: Batch, size: tuple[int, int]) -> tuple[Tensor, Tensor]:
        rows = []
        for x in batch.inputs.split(1):  # picture by picture: no float copy of the whole batch
            picture = self._data.pictures(x)[0]
            rows.append(self.call(picture.expand(3, -1, -1) if picture.shape[0] == 1 else picture))
        present = sorted({c for row in rows for c, m in row.items() if bool(m.any())})
        if not present:
            return torch.tensor([], dtype=torch.long), _empty(len(rows), size, batch.inputs.device)
        out = torch.zeros(len(rows), len(present), *batch.inputs.shape[-2:], dtype=torch.bool,
                          device=batch.inputs.device)
        for r, row in enumerate(rows):
            for j, c in enumerate(present):
                if c in row:
                    out[r, j] = row[c].to(out.device)
        return torch.tensor(present, dtype=torch.long), _resize(out, size).to(batch.inputs.device)


def as_concepts(concepts: Any, data: ImageData, first: Tensor) -> ConceptSource:
    """The concept source for a folder, a dict of mask tensors or a callable (see the module docstring), checked
    against ``data`` (``first``: its first input, (1,C,H,W), on which a callable is tried once so that its errors and
    concept names come before the passes over the data).

    Raises:
        ValueError: a folder without concept sub-folders or whose masks match no image, masks not (N,1,H,W) or not
            as many as the images, a callable that does not return ``{name: (H,W) mask}``.
    """
    if isinstance(concepts, (str, Path)) or hasattr(concepts, "__fspath__"):
        root = Path(concepts)
        if not root.is_dir():
            raise ValueError(f"{str(root)!r} is not a folder of concept masks (CONCEPT_NAME/IMAGE_STEM.png)")
        return _FolderConcepts(root, data)
    if isinstance(concepts, Mapping):
        return _DictConcepts(concepts, len(data))
    if callable(concepts):
        source = _CallableConcepts(concepts, data)
        picture = data.pictures(first)[0]
        source.call(picture.expand(3, -1, -1) if picture.shape[0] == 1 else picture)
        return source
    raise TypeError(f"concepts must be a folder of masks, a dict {{name: (N,1,H,W) bool tensor}} or a callable "
                    f"picture -> {{name: mask}}, got {type(concepts).__name__}")
