"""Image data for ProtoPNet without torchvision: ImageFolder-style directories, in-memory tensors, a
stratified train/validation split and augmentation in torch.

Images are kept as uint8 (3, S, S) (resized on the shorter side and centre-cropped to S, like
:func:`seewhy.images.preprocess`) and served as float32 in [0, 1]; normalisation happens at the model's
input, after augmentation.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from .. import images

__all__ = [
    "IMAGE_SUFFIXES",
    "Augment",
    "FolderImages",
    "ImageSet",
    "TensorImages",
    "median_short_side",
    "scan_folder",
    "stratified_split",
]

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"})


class ImageSet:
    """Labelled images of one size: ``len()``, ``labels`` (N,), ``classes``, ``names`` and
    ``load(indices) -> float32 (B, 3, S, S)`` in [0, 1] on the CPU."""

    classes: list[str]
    labels: Tensor
    names: list[str]
    image_size: int

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def load(self, indices: Tensor | Sequence[int]) -> Tensor:
        raise NotImplementedError

    def image(self, index: int) -> np.ndarray:
        """One image as uint8 (S, S, 3), for pictures."""
        x = self.load([int(index)])[0]
        return (x * 255).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()


class TensorImages(ImageSet):
    """Images already in memory: ``images`` uint8 or float in [0, 1], (N, 3, S, S) or (N, 1, S, S) (gray is
    repeated to RGB); ``labels`` (N,) ints in 0..K-1."""

    def __init__(self, images: Tensor, labels: Tensor | Sequence[int], classes: Sequence[str] | None = None,
                 names: Sequence[str] | None = None) -> None:
        if not isinstance(images, Tensor) or images.ndim != 4 or images.shape[1] not in (1, 3):
            got = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
            raise ValueError(f"images must be a (N, 3, S, S) or (N, 1, S, S) tensor, got {got}")
        if images.shape[-1] != images.shape[-2]:
            raise ValueError(f"images must be square (N, C, S, S), got {tuple(images.shape)}; crop them first")
        labels = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
        if labels.shape[0] != images.shape[0]:
            raise ValueError(f"got {labels.shape[0]} labels for {images.shape[0]} images")
        if images.dtype != torch.uint8:
            if not images.is_floating_point():
                raise TypeError(f"images must be uint8 or float in [0, 1], got {images.dtype}")
            if images.numel() and (float(images.min()) < 0 or float(images.max()) > 1):
                raise ValueError("float images must be in [0, 1] (not normalised); normalisation is the model's")
        k = int(labels.max()) + 1 if labels.numel() else 0
        if labels.numel() and int(labels.min()) < 0:
            raise ValueError("labels must be class indices >= 0")
        self.classes = [str(c) for c in classes] if classes is not None else [str(i) for i in range(k)]
        if k > len(self.classes):
            raise ValueError(f"label {k - 1} is out of range for {len(self.classes)} classes")
        self._images = images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images
        self.labels = labels
        self.names = [str(n) for n in names] if names is not None else [f"image {i}" for i in range(len(labels))]
        self.image_size = int(images.shape[-1])

    def load(self, indices: Tensor | Sequence[int]) -> Tensor:
        x = self._images[torch.as_tensor(indices, dtype=torch.long)]
        return x.float() / 255.0 if x.dtype == torch.uint8 else x.float()

    def subset(self, indices: Tensor | Sequence[int]) -> TensorImages:
        idx = torch.as_tensor(indices, dtype=torch.long)
        return TensorImages(self._images[idx], self.labels[idx], self.classes, [self.names[i] for i in idx.tolist()])


def _hidden(path: Path) -> bool:
    """Whether any component of the relative ``path`` is hidden (starts with '.')."""
    return any(part.startswith(".") for part in path.parts)


def scan_folder(root: str | os.PathLike) -> tuple[list[str], list[str], list[int]]:
    """An ImageFolder-style directory: one sub-folder per class holding image files.

    Returns ``(classes sorted by name, file paths relative to root, labels)``. Hidden files and folders
    (a name starting with '.', e.g. ``.ipynb_checkpoints/``) and files whose suffix is not an image's
    (``IMAGE_SUFFIXES``) are ignored; nested folders are searched.

    Raises:
        ValueError: no such directory, no class folder, a class folder without images.
    """
    path = Path(root)
    if not path.is_dir():
        raise ValueError(f"data directory {str(path)!r} does not exist or is not a directory; pass a folder "
                         "with one sub-folder of images per class")
    classes = sorted(p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(classes) < 2:
        raise ValueError(f"data directory {str(path)!r} has {len(classes)} class folder(s); ProtoPNet needs one "
                         "sub-folder per class and at least two classes")
    files: list[str] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        folder = path / name
        found = sorted(
            p for p in folder.rglob("*")
            if p.suffix.lower() in IMAGE_SUFFIXES and not _hidden(p.relative_to(folder)) and p.is_file()
        )
        if not found:
            raise ValueError(f"class folder {str(path / name)!r} holds no image file "
                             f"({', '.join(sorted(IMAGE_SUFFIXES))}); add images or remove the folder")
        files += [p.relative_to(path).as_posix() for p in found]
        labels += [label] * len(found)
    return classes, files, labels


def median_short_side(root: str | os.PathLike, files: Sequence[str], *, limit: int = 500) -> int | None:
    """The median shorter side, in pixels, of the image files ``files`` (relative to ``root``), read from the
    headers of at most ``limit`` of them (evenly spaced); None when no header can be read."""
    if not files:
        return None
    step = max(1, -(-len(files) // max(1, int(limit))))
    sides = []
    for name in list(files)[::step]:
        try:
            with Image.open(Path(root) / name) as img:  # lazy: reads the header only
                sides.append(min(img.size))
        except (OSError, ValueError, Image.DecompressionBombError):  # unreadable: FolderImages names it later
            continue
    return int(np.median(sides)) if sides else None


class FolderImages(ImageSet):
    """Image files under ``root``, loaded with :func:`seewhy.images.load_image`, resized on the shorter side
    and centre-cropped to ``image_size``; cached as uint8 (all at once with ``preload``, else on first use).

    Raises:
        ValueError: (with ``preload``) files that cannot be loaded, listed by name.
    """

    def __init__(self, root: str | os.PathLike, files: Sequence[str], labels: Sequence[int], classes: Sequence[str],
                 image_size: int, *, preload: bool = True, progress: bool = False) -> None:
        if len(files) != len(labels):
            raise ValueError(f"got {len(labels)} labels for {len(files)} files")
        self.root = Path(root)
        self.files = list(files)
        self.labels = torch.as_tensor(list(labels), dtype=torch.long)
        self.classes = [str(c) for c in classes]
        self.names = list(self.files)
        self.image_size = int(image_size)
        self._cache: dict[int, Tensor] = {}
        if preload:
            self._preload(progress)

    def _preload(self, progress: bool) -> None:
        from ..progress import track

        bad: list[str] = []
        for i in track(range(len(self.files)), len(self.files), "loading images", "images", enabled=progress):
            try:
                self._get(i)
            except images.ImageError as err:
                bad.append(str(err))
        if bad:
            more = f" (and {len(bad) - 5} more)" if len(bad) > 5 else ""
            raise ValueError(f"{len(bad)} file(s) under {str(self.root)!r} cannot be used as images: "
                             + "; ".join(bad[:5]) + more + ". Remove or replace them")

    def _get(self, i: int) -> Tensor:
        if i not in self._cache:
            img = images.load_image(self.root / self.files[i])
            img = images.resize_crop(img, self.image_size, self.image_size)
            arr = np.asarray(img, dtype=np.uint8)
            self._cache[i] = torch.from_numpy(arr.transpose(2, 0, 1).copy())
        return self._cache[i]

    def load(self, indices: Tensor | Sequence[int]) -> Tensor:
        idx = torch.as_tensor(indices, dtype=torch.long).reshape(-1).tolist()
        if not idx:
            return torch.zeros(0, 3, self.image_size, self.image_size)
        return torch.stack([self._get(i) for i in idx]).float() / 255.0

    def subset(self, indices: Tensor | Sequence[int]) -> FolderImages:
        idx = torch.as_tensor(indices, dtype=torch.long).reshape(-1).tolist()
        out = FolderImages(self.root, [self.files[i] for i in idx], [int(self.labels[i]) for i in idx],
                           self.classes, self.image_size, preload=False)
        out._cache = {j: self._cache[i] for j, i in enumerate(idx) if i in self._cache}
        return out


def stratified_split(labels: Tensor | Sequence[int], fraction: float, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Indices ``(keep, held_out)``: ``round(fraction * n_c)`` images of each class held out (at least one
    when ``fraction > 0`` and the class has two or more), chosen with a seeded permutation; both sorted.

    Raises:
        ValueError: ``fraction`` outside [0, 1).
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"the held-out fraction must be in [0, 1), got {fraction!r}")
    labels = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
    g = torch.Generator().manual_seed(int(seed))
    keep, held = [], []
    for c in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(idx.numel(), generator=g)]
        n = round(fraction * idx.numel())
        if fraction > 0 and idx.numel() >= 2:
            n = min(max(n, 1), idx.numel() - 1)
        held.append(idx[:n])
        keep.append(idx[n:])
    return torch.cat(keep).sort().values, torch.cat(held).sort().values


@dataclass(frozen=True)
class Augment:
    """Random flips and affine transforms of a batch in [0, 1], drawn from a ``torch.Generator``.

    The reference augments offline with rotation +-15 deg, skew/shear +-10 deg and left-right flips; here
    the same kinds, on the fly: ``flip`` probability of a left-right flip, ``rotate`` and ``shear`` maximum
    angles in degrees, ``translate`` maximum shift as a fraction of the size, ``scale`` a (min, max) zoom.
    Pixels outside the image repeat the border.
    """

    flip: float = 0.5
    rotate: float = 15.0
    shear: float = 10.0
    translate: float = 0.0
    scale: tuple[float, float] = (1.0, 1.0)

    def __post_init__(self) -> None:
        if not 0.0 <= self.flip <= 1.0:
            raise ValueError(f"flip is a probability in [0, 1], got {self.flip!r}")
        if self.rotate < 0 or self.shear < 0 or self.translate < 0:
            raise ValueError("rotate, shear and translate are maximum magnitudes: use values >= 0")
        if len(self.scale) != 2 or not 0 < self.scale[0] <= self.scale[1]:
            raise ValueError(f"scale must be (min, max) with 0 < min <= max, got {self.scale!r}")

    @property
    def identity(self) -> bool:
        return self.flip == 0 and self.rotate == 0 and self.shear == 0 and self.translate == 0 and \
            self.scale == (1.0, 1.0)

    def __call__(self, x: Tensor, generator: torch.Generator) -> Tensor:
        """Augment (B, C, H, W); random numbers come from ``generator`` (a CPU generator) only."""
        if self.identity or x.shape[0] == 0:
            return x
        b = x.shape[0]

        def uniform(lo: float, hi: float) -> Tensor:
            return lo + (hi - lo) * torch.rand(b, generator=generator, dtype=torch.float64)

        flip = torch.rand(b, generator=generator, dtype=torch.float64) < self.flip
        angle = uniform(-self.rotate, self.rotate) * math.pi / 180
        shear = uniform(-self.shear, self.shear) * math.pi / 180
        zoom = uniform(*self.scale)
        tx, ty = uniform(-self.translate, self.translate) * 2, uniform(-self.translate, self.translate) * 2
        cos, sin, sh = torch.cos(angle), torch.sin(angle), torch.tan(shear)
        # output->input map: rotation @ shear, divided by the zoom; a flip negates the x column
        a = torch.stack([torch.stack([cos, cos * sh - sin], -1), torch.stack([sin, sin * sh + cos], -1)], 1)
        a = a / zoom.view(-1, 1, 1)
        a[:, :, 0] = torch.where(flip.view(-1, 1), -a[:, :, 0], a[:, :, 0])
        theta = torch.cat([a, torch.stack([tx, ty], -1).unsqueeze(-1)], 2).to(x.device, x.dtype)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
