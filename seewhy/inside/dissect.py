"""Network Dissection (Bau, Zhou, Khosla, Oliva & Torralba, "Network Dissection: Quantifying Interpretability of
Deep Visual Representations", CVPR 2017): which units of a layer detect which concepts.

For unit ``k`` (a channel of the layer's (B,K,h,w) output) and concept ``c``:

- ``T_k``: the top-``quantile`` activation of the unit over the whole dataset (every location of every image, at the
  layer's resolution), from a streaming histogram (:class:`~seewhy.inside.quantiles.RunningQuantile`: memory flat in
  the dataset size, within one bin width of the exact quantile);
- ``M_k(x) = upsample(A_k(x)) > T_k``: the unit's mask on image ``x``, its activation map upsampled (bilinear,
  ``align_corners=False``) to the concept masks' resolution (the model input's);
- ``IoU_{k,c} = sum_x |M_k(x) & L_c(x)| / sum_x |M_k(x) | L_c(x)|`` over the dataset, ``L_c(x)`` the concept's mask.

A unit is a detector of its best concept when that IoU exceeds ``iou_threshold`` (0.04 in the paper). Two passes over
the data, both stopped at the layer (:func:`~seewhy.inside.stream.stream_layer`): the thresholds, then the overlaps,
counted for all (unit, concept) pairs at once as a matrix product of the flattened masks.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data import as_data
from ..layers import LayerSpec, resolve_layer
from .concepts import ConceptSource, as_concepts
from .quantiles import RunningQuantile
from .stream import layer_activations, stream_layer

log = logging.getLogger("seewhy")

__all__ = ["Dissection", "UnitConcept", "dissect"]

#: histogram bins per unit of the streaming quantile (error at most one bin, about range / 1000)
BINS = 2048
#: float elements per block of the overlap pass (4 MB): images, units and concepts are chunked to stay under it
BUDGET = 1 << 20


@dataclass(frozen=True)
class UnitConcept:
    """Unit ``unit`` of the layer and a concept with their dataset-level IoU."""

    unit: int
    concept: str
    iou: float


@dataclass(repr=False)
class Dissection:
    """The result of :func:`dissect`: ``iou`` (K, n_concepts) float64, ``thresholds`` (K,) the per-unit activation
    thresholds ``T_k``, ``concepts`` their names (the columns of ``iou``), ``images`` the number of images used and
    ``skipped`` the ``(path, reason)`` of the unreadable ones."""

    layer: str
    concepts: list[str]
    iou: Tensor
    thresholds: Tensor
    quantile: float
    iou_threshold: float
    images: int
    skipped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def units(self) -> int:
        return self.iou.shape[0]

    def best(self) -> list[UnitConcept]:
        """One entry per unit, in unit order: the concept with the highest IoU (ties: the first in concept order)."""
        if not self.concepts:
            return []
        index = self.iou.argmax(1)  # the first maximal value on ties
        return [UnitConcept(k, self.concepts[int(c)], float(self.iou[k, c])) for k, c in enumerate(index.tolist())]

    def detectors(self) -> list[UnitConcept]:
        """The units whose best concept has ``iou > iou_threshold``, sorted by IoU, highest first (ties: unit
        order)."""
        found = [u for u in self.best() if u.iou > self.iou_threshold]
        return sorted(found, key=lambda u: -u.iou)

    def __repr__(self) -> str:
        return (f"Dissection(layer={self.layer!r}, units={self.units}, concepts={len(self.concepts)}, "
                f"images={self.images}, detectors={len(self.detectors())})")


def dissect(model: nn.Module, data: Any, concepts: Any, layer: LayerSpec, quantile: float = 0.005,
            iou_threshold: float = 0.04, *, batch_size: int | None = None) -> Dissection:
    """Network Dissection of ``layer`` (Bau et al., CVPR 2017): the IoU of every unit's top-``quantile`` mask with
    every concept's mask over ``data``; see the module docstring for the formulas.

    Args:
        model: the network (left as it was: mode, device, gradients).
        data: images, as :func:`seewhy.data.as_data` takes them (folder, paths, (N,C,H,W) tensor, DataLoader).
        concepts: a folder ``CONCEPT/IMAGE_STEM.png`` of masks, a dict ``{name: (N,1,H,W) bool tensor}`` aligned with
            the data, or a callable ``picture (3,H,W) in [0,1] -> {name: (H,W) bool mask}`` such as
            :func:`~seewhy.inside.concepts.colour_concepts` (see :mod:`seewhy.inside.concepts`).
        layer: a module of ``model`` or its dotted name, with a (B,K,h,w) output.
        quantile: the fraction of each unit's activations above its threshold, in (0, 1) (0.005 in the paper).
        iou_threshold: the IoU above which a unit counts as a detector, in [0, 1].
        batch_size: images per forward (default: the engine's for this model); results do not depend on it.

    Raises:
        ValueError: quantile or iou_threshold out of range, a layer whose output is not 4-D, no readable image,
            concepts that do not fit the data (see :func:`~seewhy.inside.concepts.as_concepts`).
    """
    if isinstance(quantile, bool) or not isinstance(quantile, (int, float)) or not 0 < quantile < 1:
        raise ValueError(f"quantile must be in (0, 1), got {quantile!r} (the paper uses 0.005: the top 0.5%)")
    if isinstance(iou_threshold, bool) or not isinstance(iou_threshold, (int, float)) or not 0 <= iou_threshold <= 1:
        raise ValueError(f"iou_threshold must be in [0, 1], got {iou_threshold!r} (the paper uses 0.04)")
    data = as_data(data, model)
    name, _ = resolve_layer(model, layer)
    first = data.first()  # raises when no image is readable
    param = next(model.parameters(), None)
    first = first.to(param.device if param is not None else first.device)
    units = _check_4d(layer_activations(model, first, name), name).shape[1]
    source = as_concepts(concepts, data, first)
    log.info("dissect %s: %d images, %d units, %d concepts%s", name, len(data), units, len(source.names),
             " (so far: the callable may name more)" if source.growing else "")
    thresholds = _thresholds(model, data, name, units, quantile, batch_size)
    counts, images = _overlaps(model, data, name, source, thresholds, batch_size)
    if images == 0:
        raise ValueError("no readable image in the data (see data.skipped)")
    if not source.names:
        raise ValueError("the concepts callable returned no concept for any image")
    return Dissection(name, list(source.names), counts.iou(), thresholds, float(quantile), float(iou_threshold),
                      images, list(data.skipped))


def _check_4d(acts: Tensor, name: str) -> Tensor:
    if acts.ndim != 4:
        raise ValueError(f"layer {name!r} gives a {acts.ndim}-D output {tuple(acts.shape)}; dissection needs a "
                         "(B,K,h,w) map: choose a convolutional layer")
    return acts


def _thresholds(model: nn.Module, data: Any, name: str, units: int, quantile: float, batch_size: int | None
                ) -> Tensor:
    """Pass 1: per-unit top-``quantile`` activation (K,) float32 on the CPU, streamed."""
    running = RunningQuantile(units, BINS)
    for _, acts in stream_layer(model, data, name, batch_size=batch_size, desc="dissect: thresholds"):
        _check_4d(acts, name)
        for a in acts:  # image by image: (K, h*w), never a copy of the whole batch
            running.update(a.reshape(units, -1))
    return running.quantile(quantile).float().cpu()


def _overlaps(model: nn.Module, data: Any, name: str, source: ConceptSource, thresholds: Tensor,
              batch_size: int | None) -> tuple[_Counts, int]:
    """Pass 2: intersections and areas of every unit's and concept's masks; the number of images read."""
    counts = _Counts(thresholds.shape[0])
    images = 0
    for batch, acts in stream_layer(model, data, name, batch_size=batch_size, desc="dissect: IoU"):
        _check_4d(acts, name)
        present, masks = source.masks(batch, tuple(batch.inputs.shape[-2:]))
        counts.grow(len(source.names))
        counts.add(acts, thresholds.to(acts.device), present, masks)
        images += len(batch.indices)
    return counts, images


class _Counts:
    """Running sums over the dataset: ``inter`` (K, C) = sum_x |M_k & L_c|, ``unit_area`` (K,) = sum_x |M_k|,
    ``concept_area`` (C,) = sum_x |L_c| (float64, CPU); the union is ``unit_area + concept_area - inter``."""

    def __init__(self, units: int) -> None:
        self.inter = torch.zeros(units, 0, dtype=torch.float64)
        self.unit_area = torch.zeros(units, dtype=torch.float64)
        self.concept_area = torch.zeros(0, dtype=torch.float64)

    def grow(self, n: int) -> None:
        """Room for ``n`` concepts (a callable may name new ones on later images: absent before)."""
        extra = n - self.concept_area.shape[0]
        if extra > 0:
            self.inter = torch.cat([self.inter, self.inter.new_zeros(self.inter.shape[0], extra)], 1)
            self.concept_area = torch.cat([self.concept_area, self.concept_area.new_zeros(extra)])

    def add(self, acts: Tensor, thresholds: Tensor, present: Tensor, masks: Tensor) -> None:
        """Count one batch: ``acts`` (b,K,h,w), ``masks`` (b,c,H,W) bool of the concepts ``present`` (c,).

        Blocks of images x units and images x concepts hold at most :data:`BUDGET` floats; intersections are a
        matrix product of the flattened masks, ``M (k, n*H*W) @ L (c, n*H*W).T`` (exact float32 sums of 0/1 while
        n*H*W < 2**24: one block holds at most BUDGET pixels unless a single image is larger)."""
        b, k_all = acts.shape[:2]
        c_all = masks.shape[1]
        size = tuple(masks.shape[-2:])
        pixels = size[0] * size[1]
        if c_all:
            self.concept_area.index_add_(0, present, masks.sum((0, 2, 3)).cpu().double())
        n = max(1, min(b, BUDGET // (pixels * max(k_all, c_all, 1))))
        ku = max(1, min(k_all, BUDGET // (n * pixels)))
        cc = max(1, min(c_all, BUDGET // (n * pixels)))
        for i in range(0, b, n):
            blocks = [(j, masks[i:i + n, j:j + cc]) for j in range(0, c_all, cc)]
            flat = [(j, blk.transpose(0, 1).reshape(blk.shape[1], -1).float()) for j, blk in blocks]
            for k in range(0, k_all, ku):
                a = acts[i:i + n, k:k + ku].float()
                if tuple(a.shape[-2:]) != size:
                    a = F.interpolate(a, size=size, mode="bilinear", align_corners=False)
                unit_masks = a > thresholds[k:k + ku].view(1, -1, 1, 1)
                m = unit_masks.transpose(0, 1).reshape(unit_masks.shape[1], -1).float()
                self.unit_area[k:k + ku] += m.sum(1).cpu().double()  # a float sum: exact below 2**24 per block
                for j, lf in flat:
                    self.inter[k:k + ku].index_add_(1, present[j:j + cc], (m @ lf.T).cpu().double())

    def iou(self) -> Tensor:
        """(K, C) float64: inter / union, 0 where the union is empty."""
        union = self.unit_area[:, None] + self.concept_area[None, :] - self.inter
        return torch.where(union > 0, self.inter / union.clamp(min=1), torch.zeros_like(union))
