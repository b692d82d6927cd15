"""The image patches that excite each unit most (Zeiler & Fergus 2014; Girshick et al. 2014): over a dataset, for
every unit (channel) of a layer, the k images whose activation maximum ``max_{y,x} A_k(image)[y, x]`` is highest,
with the location of that maximum and its receptive field in the input.

One streamed pass at forward throughput (:func:`seewhy.inside.stream.stream_layer`: inference mode, the forward stops
after the layer, the engine's batch size): memory holds one batch and a running top-k per unit, whatever the dataset
size. Ties keep the lower image index, so the result does not depend on the batch size.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..data import ImageData, as_data
from ..layers import LayerSpec, resolve_layer
from .receptive import ReceptiveField, receptive_field
from .stream import pick_batch_size, stream_layer

log = logging.getLogger("seewhy")

__all__ = ["PatchRecord", "TopPatches", "top_patches"]


@dataclass(frozen=True)
class PatchRecord:
    """One top activation of a unit: dataset ``index`` (and ``path`` for files), the location ``(y, x)`` on the
    layer's map, the activation ``value`` and the receptive field ``box`` = (top, left, bottom, right) in input pixels
    (bottom/right exclusive, clipped to the image)."""

    index: int
    path: str | None
    y: int
    x: int
    value: float
    box: tuple[int, int, int, int]


@dataclass
class TopPatches:
    """The top ``k`` activations of each unit of ``layer``: ``values``, ``indices``, ``ys``, ``xs`` are (U, k) tensors
    for the units ``units`` (rows in that order; -1 / -inf where fewer than k images were read)."""

    layer: str
    units: list[int]
    k: int
    values: Tensor
    indices: Tensor
    ys: Tensor
    xs: Tensor
    field: ReceptiveField
    data: ImageData = field(repr=False)
    images: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def _row(self, unit: int) -> int:
        try:
            return self.units.index(int(unit))
        except ValueError:
            raise ValueError(f"unit {unit} was not searched; units: {_span(self.units)}") from None

    def records(self, unit: int) -> list[PatchRecord]:
        """The unit's top activations, highest first."""
        r = self._row(unit)
        out = []
        for j in range(self.k):
            idx = int(self.indices[r, j])
            if idx < 0:
                break
            y, x = int(self.ys[r, j]), int(self.xs[r, j])
            path = self.data.paths[idx] if self.data.paths is not None else None
            out.append(PatchRecord(idx, path, y, x, float(self.values[r, j]), self.field.box(y, x)))
        return out

    def patches(self, unit: int) -> list[Tensor]:
        """The receptive-field crops of the unit's top activations as model inputs (C, h, w), highest first (crops at
        the border are smaller: the field is clipped to the image)."""
        recs = self.records(unit)
        x, read = self.data.load([r.index for r in recs]) if recs else (None, [])
        by_index = {i: x[n] for n, i in enumerate(read)} if x is not None else {}
        crops = []
        for r in recs:
            if r.index not in by_index:
                raise ValueError(f"{self.data.name(r.index)} could not be read again for its patch")
            t, left, b, right = r.box
            crops.append(by_index[r.index][:, t:b, left:right])
        return crops

    def pictures(self, unit: int) -> list[np.ndarray]:
        """:meth:`patches` as uint8 (h, w, 3) pictures (denormalised as the data's pictures are)."""
        return [self.data.images(crop.unsqueeze(0))[0] for crop in self.patches(unit)]


def _span(units: Sequence[int]) -> str:
    return f"{units[0]}..{units[-1]} ({len(units)} units)" if len(units) > 6 else ", ".join(map(str, units))


def _units(units: Any, k_units: int) -> list[int]:
    if units is None:
        return list(range(k_units))
    if isinstance(units, int):
        units = [units]
    out = [int(u) for u in units]
    bad = [u for u in out if not 0 <= u < k_units]
    if bad:
        raise ValueError(f"units {bad} are out of range: the layer has {k_units} units (0..{k_units - 1})")
    if len(set(out)) != len(out):
        raise ValueError("units must not repeat")
    return out


def _merge(best: tuple[Tensor, ...], new: tuple[Tensor, ...], k: int) -> tuple[Tensor, ...]:
    """Keep the k highest of the running (U, k) and this batch's (U, b) values, with their index/y/x: earlier
    (lower-index) entries first among equal values (a stable sort of entries kept in dataset order)."""
    cat = [torch.cat([a, b], dim=1) for a, b in zip(best, new, strict=True)]
    order = torch.sort(cat[0], dim=1, descending=True, stable=True).indices[:, :k]
    return tuple(t.gather(1, order) for t in cat)


def top_patches(model: nn.Module, data: Any, layer: LayerSpec, units: int | Sequence[int] | None = None, k: int = 9,
                batch_size: int | None = None) -> TopPatches:
    """The k highest activations of each unit of ``layer`` over ``data``, with where they are and their receptive
    fields.

    Args:
        model: any ``nn.Module`` (left as it was).
        data: a folder of images (flat or one sub-folder per class), a list of paths, a (N,C,H,W) tensor or a
            DataLoader (see :func:`seewhy.data.as_data`); unreadable files are logged and skipped.
        layer: a module whose output is (B,K,h,w).
        units: the channels to search (default: all).
        k: activations kept per unit.
        batch_size: images per forward (default: the engine's, measured fastest on this model for long runs).

    Returns:
        :class:`TopPatches`: ``.records(unit)`` (:class:`PatchRecord`, highest first), ``.patches(unit)`` (crops).
    """
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    data = as_data(data, model)
    name, _ = resolve_layer(model, layer)
    size, first = pick_batch_size(model, data, batch_size)
    log.info("top patches of %s: %d images, %d per forward, k=%d", name, len(data), size, k)
    best: tuple[Tensor, ...] | None = None
    chosen: list[int] = []
    seen = 0
    for batch, acts in stream_layer(model, data, name, batch_size=size, desc=f"top patches {name}"):
        if acts.ndim != 4:
            raise ValueError(f"layer {name!r} outputs shape {tuple(acts.shape)}, not (B,K,h,w); top patches need a "
                             "convolutional layer")
        if best is None:
            chosen = _units(units, acts.shape[1])
            u = len(chosen)
            best = (torch.full((u, 0), float("-inf")), *(torch.zeros((u, 0), dtype=torch.long) for _ in range(3)))
            w = acts.shape[-1]
            pick = torch.tensor(chosen, device=acts.device)
        a = acts.index_select(1, pick).flatten(2).float()  # (b, U, h*w)
        values, where = a.nan_to_num(nan=float("-inf")).max(dim=2)  # first maximum on ties
        idx = batch.indices.view(-1, 1).expand(-1, len(chosen))
        new = (values.t().cpu(), idx.t(), (where // w).t().cpu(), (where % w).t().cpu())
        best = _merge(best, new, k)
        seen += len(batch.indices)
    if best is None:
        raise ValueError("no readable image in the data")
    field_ = receptive_field(model, name, input_size=tuple(first.shape[-2:]))
    values, indices, ys, xs = (_pad(t, k, fill) for t, fill in zip(best, (float("-inf"), -1, -1, -1), strict=True))
    return TopPatches(name, chosen, k, values, indices, ys, xs, field_, data, seen, list(data.skipped))


def _pad(t: Tensor, k: int, fill: float) -> Tensor:
    if t.shape[1] >= k:
        return t
    pad = torch.full((t.shape[0], k - t.shape[1]), fill, dtype=t.dtype)
    return torch.cat([t, pad], dim=1)
