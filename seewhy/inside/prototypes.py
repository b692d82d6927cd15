"""Prototypes and criticisms of an image dataset as a model layer sees it.

:func:`layer_features` streams a layer over the data (:func:`seewhy.inside.stream.stream_layer`) and pools its output
to one vector per image (:func:`seewhy.inside.embedding.pool`); :func:`image_prototypes_criticisms` runs MMD-critic
(:func:`seewhy.exemplars.prototypes_criticisms`, Kim, Khanna & Koyejo 2016) on those vectors; :func:`tiles` draws
the chosen images (``seewhy prototypes`` in :mod:`seewhy.inside.prototypes_cli`). These live in ``inside``, not in
:mod:`seewhy.exemplars`, because :mod:`seewhy.data` re-exports that module and the streaming imports
:mod:`seewhy.data` (an import loop otherwise).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..exemplars import PrototypesCriticisms, prototypes_criticisms
from ..layers import LayerSpec

log = logging.getLogger("seewhy")

__all__ = ["ImagePrototypesCriticisms", "LayerFeatures", "image_prototypes_criticisms", "layer_features", "tiles"]


@dataclass(frozen=True, repr=False)
class LayerFeatures:
    """A layer's pooled output per readable image (:func:`layer_features`).

    Attributes:
        features: (N, K) float32 CPU; indices: (N,) long dataset index of each row; labels: (N,) long or None;
        classes, paths: the data's class names and the rows' files (or None); layer: the layer's name;
        skipped: ``(path, reason)`` of unreadable images.
    """

    features: Tensor
    indices: Tensor
    labels: Tensor | None
    classes: list[str] | None
    paths: list[str] | None
    layer: str
    skipped: list[tuple[str, str]]

    def __repr__(self) -> str:
        n, k = self.features.shape
        return f"LayerFeatures({n} images x {k} features at {self.layer!r}, {len(self.skipped)} skipped)"


def layer_features(model: nn.Module, data: Any, layer: LayerSpec, *, batch_size: int | None = None,
                   device: torch.device | str | None = None) -> LayerFeatures:
    """The output of ``layer`` for every readable image of ``data``, pooled to one vector per image
    (:func:`seewhy.inside.embedding.pool`: global average over space or tokens), as float32 on the CPU.

    The model runs in inference mode and is left as it was (``.training`` restored, no hooks). ``data`` is anything
    :func:`seewhy.data.as_data` takes.

    Raises:
        ValueError: an unknown layer, a layer output that is not (B,K,h,w), (B,D) or (B,N,D), no readable image.
    """
    from ..data import as_data
    from ..layers import resolve_layer
    from .embedding import pool
    from .stream import stream_layer

    data = as_data(data, model)
    name, _ = resolve_layer(model, layer)
    feats, idx, labs = [], [], []
    for batch, acts in stream_layer(model, data, name, batch_size=batch_size, device=device,
                                    desc=f"features {name}"):
        feats.append(pool(acts).cpu())
        idx.append(batch.indices.cpu())
        labs.append(batch.labels)
    if not idx:
        raise ValueError("no readable image in the data")
    indices = torch.cat(idx).long()
    labels = torch.cat(labs).long() if all(t is not None for t in labs) else None
    paths = [data.paths[i] for i in indices.tolist()] if data.paths is not None else None
    return LayerFeatures(torch.cat(feats).float().contiguous(), indices, labels, data.classes, paths, name,
                         list(data.skipped))


@dataclass(frozen=True, repr=False)
class ImagePrototypesCriticisms:
    """MMD-critic on a layer's pooled features (:func:`image_prototypes_criticisms`).

    Attributes:
        found: the :class:`~seewhy.exemplars.PrototypesCriticisms` over the rows of ``features``.
        features: the :class:`LayerFeatures` it was computed on (rows -> dataset indices, paths, labels).
        seconds: ``{"features": s, "selection": s}``.
    """

    found: PrototypesCriticisms
    features: LayerFeatures
    seconds: dict[str, float]

    @property
    def prototypes(self) -> Tensor:
        """(P,) dataset indices of the prototype images."""
        return self.features.indices[self.found.prototypes.cpu()]

    @property
    def criticisms(self) -> Tensor:
        """(C,) dataset indices of the criticism images."""
        return self.features.indices[self.found.criticisms.cpu()]

    def __repr__(self) -> str:
        return f"ImagePrototypesCriticisms({self.found!r} at {self.features.layer!r})"


def image_prototypes_criticisms(model: nn.Module, data: Any, layer: LayerSpec, n_prototypes: int,
                                n_criticisms: int = 0, *, batch_size: int | None = None,
                                device: torch.device | str | None = None, **options: Any
                                ) -> ImagePrototypesCriticisms:
    """MMD-critic prototypes and criticisms of an image dataset in a layer's pooled feature space:
    :func:`layer_features` then :func:`seewhy.exemplars.prototypes_criticisms` (``options``: ``kernel``, ``gamma``,
    ``regularizer``, ``witness_sign``). The features are not standardised (a channel's scale is the layer's)."""
    start = time.perf_counter()
    feats = layer_features(model, data, layer, batch_size=batch_size, device=device)
    middle = time.perf_counter()
    found = prototypes_criticisms(feats.features, n_prototypes, n_criticisms, **options)
    return ImagePrototypesCriticisms(found, feats, {"features": middle - start,
                                                    "selection": time.perf_counter() - middle})


def tiles(result: ImagePrototypesCriticisms, data: Any, *, size: int = 96, columns: int = 10
          ) -> dict[str, np.ndarray]:
    """The prototypes and the criticisms as grids of image tiles (uint8 (H,W,3)), each labelled with its class (when
    known) and witness value: ``{"prototypes": grid, "criticisms": grid}`` (a grid only when there are images).

    ``data`` is the :class:`~seewhy.data.ImageData` (or what :func:`seewhy.data.as_data` takes) the result came from.
    """
    from PIL import Image

    from ..data import as_data
    from ..viz import grid

    data = as_data(data)
    if not isinstance(size, int) or size < 8 or not isinstance(columns, int) or columns < 1:
        raise ValueError(f"size must be an int >= 8 and columns >= 1, got size={size!r}, columns={columns!r}")
    f, feats = result.found, result.features
    out: dict[str, np.ndarray] = {}
    for what, rows in (("prototypes", f.prototypes), ("criticisms", f.criticisms)):
        cells, labels = [], []
        for r in rows.cpu().tolist():
            i = int(feats.indices[r])
            try:
                picture = data.picture(i)
            except ValueError:
                picture = np.full((size, size, 3), 255, np.uint8)
            img = Image.fromarray(picture)
            scale = size / max(img.size)
            resample = Image.Resampling.NEAREST if scale >= 2 else Image.Resampling.LANCZOS
            img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), resample)
            cells.append(np.asarray(img.convert("RGB")))
            name = ""
            if feats.labels is not None:
                c = int(feats.labels[r])
                name = feats.classes[c] if feats.classes is not None and c < len(feats.classes) else str(c)
            labels.append(f"{name}\nw={float(f.witness[r]):+.3f}".lstrip("\n"))
        if not cells:
            continue
        rows_cells = [cells[k:k + columns] for k in range(0, len(cells), columns)]
        rows_labels = [labels[k:k + columns] for k in range(0, len(labels), columns)]
        out[what] = _labelled_grid(rows_cells, rows_labels, grid)
    return out


def _labelled_grid(cells: list[list[np.ndarray]], labels: list[list[str]], grid: Any) -> np.ndarray:
    """A grid whose every cell has its own caption (a grid of one-cell grids with a column label)."""
    captioned = [[grid([[c]], col_labels=[lab], pad=2) for c, lab in zip(row, labs, strict=True)]
                 for row, labs in zip(cells, labels, strict=True)]
    return grid(captioned, pad=2)
