"""Datasets streamed in batches: a folder of images (flat, or one sub-folder per class), a list of paths, a tensor,
or a DataLoader, behind one small interface, :class:`ImageData`.

Everything that looks at a whole dataset (:mod:`seewhy.inside`: top patches, embeddings, dissection) walks it with
:meth:`ImageData.batches`, which holds at most two batches in memory (for files, the next batch is decoded and resized
in a background thread while the model runs), reports unreadable files once (logged, listed in
:attr:`ImageData.skipped`) and never fails because of one file. Files are preprocessed for the model: by its zoo
spec's preprocessing when :func:`seewhy.zoo.spec_of` knows it, else ImageNet's (shorter side 256, centre crop 224,
ImageNet mean/std), or by the ``transform`` given.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from . import images
from .exemplars import exemplars, prototypes_criticisms  # re-exported: they need nothing from here
from .progress import progress as _progress

log = logging.getLogger("seewhy")

__all__ = ["Batch", "ImageData", "as_data", "exemplars", "prototypes_criticisms", "scan_images"]

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"})
Transform = Callable[[Image.Image], Tensor]


@dataclass(frozen=True)
class Batch:
    """Consecutive readable images of a dataset: ``inputs`` (b,C,H,W) on the device, their dataset ``indices`` (b,)
    and ``labels`` (b,) (None when the data has none)."""

    inputs: Tensor
    indices: Tensor
    labels: Tensor | None


class ImageData:
    """``len()`` images with optional ``paths``, ``labels`` (N,) and ``classes``, streamed by :meth:`batches`.

    ``mean``/``std`` (when known) turn model inputs back into pictures (:meth:`pictures`); without them each image is
    min-max scaled. Build one with :func:`as_data`.
    """

    def __init__(self, n: int, load: Callable[[Sequence[int]], tuple[Tensor, list[int], list[tuple[int, str]]]],
                 *, paths: Sequence[str] | None = None, labels: Tensor | None = None,
                 classes: Sequence[str] | None = None, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None, stream: Callable[[], Iterator[tuple[Tensor, Tensor | None]]]
                 | None = None, random_access: bool = True, prefetch: Callable[[list[int]], Any] | None = None,
                 finish: Callable[[Any], tuple[Tensor, list[int], list[tuple[int, str]]]] | None = None) -> None:
        self._n = int(n)
        self._load = load
        self._prefetch, self._finish = prefetch, finish
        self._stream = stream
        self.random_access = random_access
        self.paths = list(paths) if paths is not None else None
        self.labels = labels
        self.classes = list(classes) if classes is not None else None
        self.mean = tuple(float(v) for v in mean) if mean is not None else None
        self.std = tuple(float(v) for v in std) if std is not None else None
        #: ``(path or "image i", reason)`` of every image the last pass could not read
        self.skipped: list[tuple[str, str]] = []
        self._warned: set[int] = set()  # each unreadable image is logged once, however many passes
        self._first: Tensor | None = None

    def __len__(self) -> int:
        return self._n

    def name(self, index: int) -> str:
        """The image's path, or ``"image i"``."""
        return self.paths[index] if self.paths is not None else f"image {index}"

    def load(self, indices: Sequence[int]) -> tuple[Tensor, list[int]]:
        """The readable images among ``indices`` as a CPU batch and the indices that were read."""
        if not self.random_access:
            raise ValueError("this data gives no random access to its images (an iterable DataLoader); pass a "
                             "folder, a list of paths, a tensor or a DataLoader over a map-style dataset")
        x, read, failed = self._load([int(i) for i in indices])
        for i, reason in failed:
            self._skip(i, reason)
        return x, read

    def batches(self, batch_size: int, device: torch.device | str | None = None, *, desc: str = "images",
                progress: bool | None = None) -> Iterator[Batch]:
        """The dataset in order, ``batch_size`` readable images at a time, on ``device``; for files the next batch is
        decoded in a background thread while the caller works on this one."""
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        self.skipped = []
        with _progress(self._n, desc, "images", enabled=progress is not False) as bar:
            for x, idx, labels in self._chunks(batch_size):
                yield Batch(x.to(device) if device is not None else x, idx, labels)
                bar.update(len(idx))

    def _chunks(self, size: int) -> Iterator[tuple[Tensor, Tensor, Tensor | None]]:
        if self._stream is not None:  # a DataLoader: its own batches, re-cut to ``size``
            yield from _recut(self._stream(), size)
            return
        starts = range(0, self._n, size)
        if self._prefetch is None or self._finish is None:  # in memory: nothing to overlap
            for start in starts:
                yield from self._batch(self._read(start, size))
            return
        # files: the next batch is decoded (PIL only, no torch op: a torch op on a second thread would start a second
        # OpenMP team next to the model's) while the model runs on this one
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="seewhy-data") as pool:
            pending: Future | None = None
            for k, start in enumerate(starts):
                rows = list(range(start, min(start + size, self._n)))
                fetched = pending.result() if pending is not None else self._prefetch(rows)
                if k + 1 < len(starts):
                    nxt = list(range(start + size, min(start + 2 * size, self._n)))
                    pending = pool.submit(self._prefetch, nxt)
                yield from self._batch(self._finish(fetched))

    def _batch(self, got: tuple[Tensor, list[int], list[tuple[int, str]]]
               ) -> Iterator[tuple[Tensor, Tensor, Tensor | None]]:
        x, read, failed = got
        for i, reason in failed:
            self._skip(i, reason)
        if read:
            idx = torch.tensor(read, dtype=torch.long)
            yield x, idx, (self.labels[idx] if self.labels is not None else None)

    def _read(self, start: int, size: int) -> tuple[Tensor, list[int], list[tuple[int, str]]]:
        return self._load(list(range(start, min(start + size, self._n))))

    def _skip(self, index: int, reason: str) -> None:
        name = self.name(index)
        if index not in self._warned:
            self._warned.add(index)
            log.warning("skipping %s: %s", name, reason)
        self.skipped.append((name, reason))

    def first(self) -> Tensor:
        """The first readable image as a (1,C,H,W) CPU input (to size batches and layers); read once."""
        if self._first is None:
            self._first = self._read_first()
        return self._first

    def _read_first(self) -> Tensor:
        if self._stream is not None:
            for x, _ in self._stream():
                if len(x):
                    return x[:1]
        for start in range(0, self._n, 8):
            x, read, _ = self._read(start, 8)
            if read:
                return x[:1]
        raise ValueError("no readable image in the data")

    def pictures(self, inputs: Tensor) -> Tensor:
        """Model inputs (B,C,H,W) back to pictures in [0, 1]: denormalised by ``mean``/``std`` when known, else
        min-max scaled per image."""
        x = inputs.detach().float()
        if self.mean is not None and self.std is not None and len(self.mean) == x.shape[1]:
            m = torch.tensor(self.mean, device=x.device).view(1, -1, 1, 1)
            s = torch.tensor(self.std, device=x.device).view(1, -1, 1, 1)
            return (x * s + m).clamp(0, 1)
        lo = x.flatten(1).amin(1).view(-1, 1, 1, 1)
        hi = x.flatten(1).amax(1).view(-1, 1, 1, 1)
        return (x - lo) / (hi - lo).clamp(min=1e-12)

    def images(self, inputs: Tensor) -> list[np.ndarray]:
        """Model inputs (B,C,H,W) as uint8 (H,W,3) pictures (:func:`seewhy.viz.tensor_to_image` with the data's
        ``mean``/``std``; min-max per image without them)."""
        from .viz import tensor_to_image  # viz imports matplotlib: only when pictures are drawn

        known = self.mean is not None and self.std is not None and len(self.mean) == inputs.shape[1]
        return list(tensor_to_image(inputs, *((self.mean, self.std) if known else (None, None))))

    def picture(self, index: int) -> np.ndarray:
        """Image ``index`` as the model sees it (after resizing and cropping), uint8 (H,W,3)."""
        x, read = self.load([index])
        if not read:
            raise ValueError(f"{self.name(index)} could not be read (see ImageData.skipped)")
        return self.images(x)[0]


def scan_images(root: str | os.PathLike) -> tuple[list[str], list[int] | None, list[str] | None]:
    """The image files of a folder, sorted: ``(paths, labels, classes)``. A folder with image files directly in it
    is flat (no labels; sub-folders are ignored); otherwise each sub-folder is a class (files at any depth inside it),
    classes sorted by name. Hidden files and folders are skipped.

    Raises:
        ValueError: not a folder, or no image file in it.
    """
    path = Path(root)
    if not path.is_dir():
        raise ValueError(f"{str(path)!r} is not a folder; pass a folder of images, a list of paths or a tensor")

    def files(folder: Path, recursive: bool) -> list[Path]:
        found = folder.rglob("*") if recursive else folder.iterdir()
        return sorted(p for p in found if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                      and not any(part.startswith(".") for part in p.relative_to(path).parts))

    flat = files(path, recursive=False)
    if flat:
        return [str(p) for p in flat], None, None
    classes = sorted(p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    paths: list[str] = []
    labels: list[int] = []
    kept: list[str] = []
    for c in classes:
        found = files(path / c, recursive=True)
        if found:
            labels += [len(kept)] * len(found)
            kept.append(c)
            paths += [str(p) for p in found]
    if not paths:
        raise ValueError(f"no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) in {str(path)!r} or its sub-folders")
    return paths, labels, kept


def as_data(data: Any, model: nn.Module | None = None, *, transform: Transform | None = None,
            labels: Sequence[int] | Tensor | None = None, mean: Sequence[float] | None = None,
            std: Sequence[float] | None = None) -> ImageData:
    """Any supported data as :class:`ImageData`.

    Args:
        data: an :class:`ImageData`; a folder (flat, or one sub-folder per class, which gives labels); a list of
            image paths; a (N,C,H,W) tensor of model inputs; or a ``torch.utils.data.DataLoader`` (or any iterable of
            batches) yielding inputs or ``(inputs, labels, ...)``.
        model: used to pick the preprocessing of files (its zoo spec's, see :func:`seewhy.zoo.spec_of`).
        transform: PIL image -> (C,H,W) model input, replacing the default preprocessing of files (give ``mean`` and
            ``std`` too, to show pictures in true colour).
        labels: (N,) class indices for a tensor or a list of paths.
        mean, std: the normalisation of the inputs (default: the zoo spec's, or ImageNet's for files).
    """
    if isinstance(data, ImageData):
        return data
    if isinstance(data, Tensor):
        return _tensor_data(data, labels, mean, std)
    if isinstance(data, (str, os.PathLike)):
        paths, folder_labels, classes = scan_images(data)
        return _file_data(paths, folder_labels if labels is None else labels, classes, model, transform, mean, std)
    if isinstance(data, (list, tuple)) and all(isinstance(p, (str, os.PathLike)) for p in data):
        if not data:
            raise ValueError("the list of image paths is empty")
        return _file_data([os.fspath(p) for p in data], labels, None, model, transform, mean, std)
    if hasattr(data, "__iter__") and not isinstance(data, (bytes, dict)):
        return _loader_data(data, mean, std)
    raise TypeError(f"data must be a folder, a list of image paths, a (N,C,H,W) tensor or a DataLoader, got "
                    f"{type(data).__name__}")


def _labels(labels: Sequence[int] | Tensor | None, n: int) -> Tensor | None:
    if labels is None:
        return None
    t = torch.as_tensor(labels, dtype=torch.long).reshape(-1).cpu()
    if t.shape[0] != n:
        raise ValueError(f"got {t.shape[0]} labels for {n} images")
    return t


def _tensor_data(x: Tensor, labels: Any, mean: Any, std: Any) -> ImageData:
    if x.ndim != 4:
        raise ValueError(f"a tensor of images must be (N,C,H,W), got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"a tensor of images must hold float model inputs, got {x.dtype}; convert uint8 images "
                        "with x.float() / 255 and normalise them as the model expects")

    def load(indices: Sequence[int]) -> tuple[Tensor, list[int], list[tuple[int, str]]]:
        return x[list(indices)], list(indices), []

    return ImageData(x.shape[0], load, labels=_labels(labels, x.shape[0]), mean=mean, std=std)


def _file_data(paths: list[str], labels: Any, classes: list[str] | None, model: nn.Module | None,
               transform: Transform | None, mean: Any, std: Any) -> ImageData:
    if transform is None:
        from .zoo import IMAGENET_MEAN, IMAGENET_STD, spec_of

        spec = spec_of(model) if model is not None else None
        if spec is not None:
            geometry = (spec.resize, spec.crop, spec.interpolation)
            mean, std = (spec.mean, spec.std) if mean is None else (mean, std)
            norm = (spec.mean, spec.std)
        else:
            geometry = (256, 224, "bicubic")
            mean, std = (IMAGENET_MEAN, IMAGENET_STD) if mean is None else (mean, std)
            norm = (mean, std)
        pre = lambda img: images.resize_crop(img, *geometry)  # noqa: E731  (PIL only: runs in the prefetch thread)
        post = lambda img: images.normalize(images.to_tensor(img), *norm)  # noqa: E731
    elif not callable(transform):
        raise TypeError(f"transform must be a callable PIL image -> (C,H,W) tensor, got {type(transform).__name__}")
    else:
        pre, post = (lambda img: img), transform
    shape: dict[str, tuple[int, ...]] = {}

    def fetch(indices: Sequence[int]) -> tuple[list[tuple[int, Any]], list[tuple[int, str]]]:
        got, failed = [], []
        for i in indices:
            try:
                got.append((i, pre(images.load_image(paths[i]))))
            except (ValueError, OSError) as err:  # ImageError is a ValueError
                failed.append((i, str(err)))
        return got, failed

    def finish(fetched: tuple[list[tuple[int, Any]], list[tuple[int, str]]]
               ) -> tuple[Tensor, list[int], list[tuple[int, str]]]:
        got, failed = fetched
        xs, read = [], []
        for i, img in got:
            try:
                x = post(img)
            except (ValueError, OSError) as err:
                failed.append((i, str(err)))
                continue
            if not isinstance(x, Tensor) or x.ndim != 3:
                raise TypeError(f"transform must return a (C,H,W) tensor, got {getattr(x, 'shape', type(x))}")
            if shape.setdefault("s", tuple(x.shape)) != tuple(x.shape):
                raise ValueError(f"{paths[i]} gives an input of shape {tuple(x.shape)}, the first image "
                                 f"{shape['s']}: all inputs must share one size; make the transform crop or resize "
                                 "to a fixed size")
            xs.append(x)
            read.append(i)
        return (torch.stack(xs) if xs else torch.empty(0)), read, sorted(failed)

    def load(indices: Sequence[int]) -> tuple[Tensor, list[int], list[tuple[int, str]]]:
        return finish(fetch(indices))

    return ImageData(len(paths), load, paths=paths, labels=_labels(labels, len(paths)), classes=classes,
                     mean=mean, std=std, prefetch=fetch, finish=finish)


def _split(item: Any) -> tuple[Tensor, Tensor | None]:
    if isinstance(item, Tensor):
        return item, None
    if isinstance(item, (list, tuple)) and item and isinstance(item[0], Tensor):
        y = item[1] if len(item) > 1 and isinstance(item[1], Tensor) else None
        return item[0], y
    raise TypeError(f"a DataLoader must yield input tensors or (inputs, labels, ...) tuples, got {type(item).__name__}")


def _loader_data(loader: Any, mean: Any, std: Any) -> ImageData:
    dataset = getattr(loader, "dataset", None)
    try:
        n = len(dataset) if dataset is not None else len(loader)
    except TypeError:
        raise ValueError("the DataLoader's dataset has no len(); seewhy needs the number of images up front "
                         "(pass a map-style dataset, a folder or a tensor)") from None
    if dataset is None:
        n = sum(_split(item)[0].shape[0] for item in loader)
    from torch.utils.data import IterableDataset

    random = dataset is not None and hasattr(dataset, "__getitem__") and not isinstance(dataset, IterableDataset)

    def stream() -> Iterator[tuple[Tensor, Tensor | None]]:
        for item in loader:
            yield _split(item)

    def load(indices: Sequence[int]) -> tuple[Tensor, list[int], list[tuple[int, str]]]:
        items = [_split(dataset[i]) for i in indices]
        return torch.stack([x for x, _ in items]), list(indices), []

    return ImageData(n, load, mean=mean, std=std, stream=stream, random_access=random)


def _recut(stream: Iterator[tuple[Tensor, Tensor | None]], size: int
           ) -> Iterator[tuple[Tensor, Tensor, Tensor | None]]:
    """Batches of exactly ``size`` (the last shorter) from a stream of any batch sizes, with running indices and the
    stream's labels (None unless every item has them)."""
    xs: list[Tensor] = []
    ys: list[Tensor | None] = []
    held = start = 0

    def cut(k: int) -> tuple[Tensor, Tensor, Tensor | None]:
        nonlocal xs, ys, held, start
        x = torch.cat(xs)
        y = torch.cat(ys) if all(t is not None for t in ys) else None  # type: ignore[arg-type]
        out = (x[:k], torch.arange(start, start + k), None if y is None else y[:k])
        xs, ys = [x[k:]], [None if y is None else y[k:]]
        held, start = held - k, start + k
        return out

    for x, y in stream:
        if x.ndim == 3:
            x, y = x.unsqueeze(0), (None if y is None else torch.as_tensor(y).reshape(1))
        xs.append(x)
        ys.append(None if y is None else torch.as_tensor(y).reshape(-1).long().cpu())
        held += x.shape[0]
        while held >= size:
            yield cut(size)
    if held:
        yield cut(held)
