"""ProtoPNet explanations: "this looks like that".

Local (one input, one class c): ``logit_c = sum_j s_j W[c, j]``, so each prototype j contributes
``points_j = similarity_j x weight`` to class c. For the top prototypes by points we give the most
similar latent cell, the box around it (the smallest box covering the similarity map, bicubically
upsampled to the input size, where it is at or above its ``percentile``-th percentile, 95 by default),
the prototype's patch and the training image it was projected onto. Global: every prototype with its
source patch and its nearest training patches (the closest patch of each image, the k closest images).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import images as _images
from ..hooks import model_state
from ..targets import TargetSpec, make_target
from .data import ImageSet
from .model import Preprocessing, ProtoPNet

__all__ = [
    "Evidence",
    "LocalExplanation",
    "Neighbour",
    "PrototypeSummary",
    "explain_global",
    "explain_local",
    "high_activation_box",
    "nearest_patches",
    "upsample_map",
]

Box = tuple[int, int, int, int]


def upsample_map(maps: Tensor, size: tuple[int, int]) -> Tensor:
    """Bicubic upsampling of (..., h, w) maps to ``size`` (the reference uses OpenCV's INTER_CUBIC)."""
    lead = maps.shape[:-2]
    x = maps.reshape(-1, 1, *maps.shape[-2:]).double()
    out = F.interpolate(x, size=tuple(size), mode="bicubic", align_corners=False)
    return out.reshape(*lead, *size)


def high_activation_box(heat: Tensor, percentile: float = 95.0) -> Box:
    """``(y0, y1, x0, x1)``, end-exclusive: the smallest box covering every pixel of the (H, W) map at or above
    its ``percentile``-th percentile (linear interpolation, as ``numpy.percentile``). Several blobs give one
    box around all of them; a map whose percentile equals its minimum gives the whole image."""
    if heat.ndim != 2:
        raise ValueError(f"expected one (H, W) map, got shape {tuple(heat.shape)}")
    if not 0.0 <= percentile <= 100.0:
        raise ValueError(f"percentile must be in [0, 100], got {percentile!r}")
    h = heat.detach().double()
    threshold = torch.quantile(h.flatten(), percentile / 100.0)
    mask = h >= threshold
    rows = torch.nonzero(mask.any(1)).flatten()
    cols = torch.nonzero(mask.any(0)).flatten()
    if rows.numel() == 0:  # NaN maps
        return 0, int(h.shape[0]), 0, int(h.shape[1])
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def _check_model(model: object) -> ProtoPNet:
    if not isinstance(model, ProtoPNet):
        raise TypeError(f"expected a seewhy.protopnet.ProtoPNet, got {type(model).__name__}")
    return model


def _device(model: ProtoPNet) -> torch.device:
    return model.prototype_vectors.device


def batches(data: ImageSet, indices: Tensor | Sequence[int] | None, batch_size: int
            ) -> Iterator[tuple[Tensor, Tensor]]:
    """(indices, images in [0, 1]) batches of ``data`` (all images when ``indices`` is None)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    idx = torch.arange(len(data)) if indices is None else torch.as_tensor(indices, dtype=torch.long).reshape(-1)
    for start in range(0, idx.numel(), batch_size):
        chunk = idx[start:start + batch_size]
        yield chunk, data.load(chunk)


def normalize(x: Tensor, prep: Preprocessing) -> Tensor:
    """Images in [0, 1] -> model inputs."""
    return _images.normalize(x, prep.mean, prep.std)


# -- local -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Evidence:
    """One prototype's part in a decision: ``points = similarity * weight`` (weight = W[target, prototype])."""

    prototype: int
    prototype_class: int
    similarity: float
    distance: float
    weight: float
    points: float
    location: tuple[int, int]
    box: Box
    heat: Tensor = field(repr=False)  # (H, W) the similarity map upsampled to the input size (raw values)


@dataclass(frozen=True)
class LocalExplanation:
    """Why one input got its score for class ``target``: ``logits[target] == points.sum()``."""

    target: int
    predicted: int
    logits: Tensor  # (K,)
    similarities: Tensor  # (P,)
    points: Tensor  # (P,) similarity x W[target]
    evidence: list[Evidence]  # the top prototypes by points, best first
    class_names: list[str] | None = None

    @property
    def total(self) -> float:
        """The target's logit: the sum of every prototype's points."""
        return float(self.logits[self.target])

    def label(self, c: int) -> str:
        return self.class_names[c] if self.class_names and 0 <= c < len(self.class_names) else str(c)

    def class_totals(self, k: int = 5) -> list[tuple[int, str, float]]:
        """The ``k`` classes with the highest totals (logits): ``(class, label, points)``."""
        values, idx = self.logits.topk(min(k, self.logits.numel()))
        return [(int(i), self.label(int(i)), float(v)) for v, i in zip(values, idx, strict=True)]

    def table(self) -> list[dict[str, object]]:
        """The evidence as rows of plain values."""
        return [
            {"prototype": e.prototype, "prototype_class": e.prototype_class,
             "prototype_label": self.label(e.prototype_class), "similarity": e.similarity, "distance": e.distance,
             "weight": e.weight, "points": e.points, "location": list(e.location), "box": list(e.box)}
            for e in self.evidence
        ]


def explain_local(model: ProtoPNet, inputs: Tensor, target: TargetSpec = None, *, top_k: int = 10,
                  percentile: float = 95.0) -> list[LocalExplanation]:
    """Local explanations of ``inputs`` (B, C, H, W) (normalised model inputs) for ``target`` (default: the
    predicted class; an int, one per sample, or a class name).

    The model is used in eval mode without gradients and left as it was.
    """
    model = _check_model(model)
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"top_k must be a positive int, got {top_k!r}")
    if inputs.ndim == 3:
        inputs = inputs.unsqueeze(0)
    size = tuple(inputs.shape[-2:])
    with torch.inference_mode(False), model_state(model), torch.no_grad():
        _, d = model.prototype_distances(inputs)
        min_d = d.flatten(2).amin(2)
        sims = model.similarity(min_d)
        logits = model.last_layer(sims)
        maps = model.similarity(d)
        tgt = make_target(target, inputs.shape[0], model.class_names).resolve(logits)
        if tgt.indices is None:
            raise ValueError("ProtoPNet explanations need class targets (an int, a list of ints, a class name or "
                             "'top1'), not a callable")
        t = tgt.indices.to(logits.device)
        tgt.score(logits)  # range check
        weights = model.last_layer.weight[t].detach()  # (B, P): W[target, j]
        points = sims * weights
    out = []
    classes = model.prototype_classes.tolist()
    w = maps.shape[-1]
    for b in range(inputs.shape[0]):
        top = points[b].topk(min(top_k, points.shape[1])).indices.tolist()
        heat = upsample_map(maps[b, top].cpu(), size)
        evidence = []
        for r, j in enumerate(top):
            cell = int(maps[b, j].flatten().argmax())
            evidence.append(Evidence(
                prototype=j, prototype_class=classes[j], similarity=float(sims[b, j]), distance=float(min_d[b, j]),
                weight=float(weights[b, j]), points=float(points[b, j]),
                location=(cell // w, cell % w), box=high_activation_box(heat[r], percentile), heat=heat[r].float(),
            ))
        out.append(LocalExplanation(
            target=int(t[b]), predicted=int(logits[b].argmax()), logits=logits[b].detach().cpu(),
            similarities=sims[b].detach().cpu(), points=points[b].detach().cpu(), evidence=evidence,
            class_names=model.class_names,
        ))
    return out


# -- global ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Neighbour:
    """A training patch close to a prototype: the closest latent cell of image ``image``."""

    image: int
    label: int
    distance: float
    location: tuple[int, int]
    box: Box


@dataclass(frozen=True)
class PrototypeSummary:
    """A prototype, where it comes from (after a push) and its nearest training patches."""

    prototype: int
    prototype_class: int
    weight: float  # W[own class, prototype]
    image: int  # source image index in the push set (-1 before a push)
    location: tuple[int, int]
    box: Box
    neighbours: list[Neighbour]


def nearest_patches(model: ProtoPNet, data: ImageSet, prep: Preprocessing, k: int = 5, *, batch_size: int = 64,
                    progress: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    """For each prototype the ``k`` images of ``data`` with the closest latent patch (one patch per image):
    ``(distances (P, k), image indices (P, k), locations (P, k, 2))``, closest first; ties keep the lower index.
    """
    from ..progress import track

    model = _check_model(model)
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    if len(data) == 0:
        raise ValueError("the image set is empty: there are no patches to search; pass the training images "
                         "(the push set)")
    k = min(k, len(data))
    device = _device(model)
    p = model.num_prototypes
    best_d = torch.full((p, 0), float("inf"), dtype=torch.float64, device=device)
    best_i = torch.zeros((p, 0), dtype=torch.long, device=device)
    best_l = torch.zeros((p, 0), dtype=torch.long, device=device)
    with torch.inference_mode(False), model_state(model), torch.no_grad():
        for idx, x in track(batches(data, None, batch_size), -(-len(data) // batch_size), "nearest patches", "batches",
                            enabled=progress):
            _, d = model.prototype_distances(normalize(x.to(device), prep))
            flat = d.flatten(2)  # (B, P, hw)
            dmin, arg = flat.min(2)  # (B, P)
            cand_d = torch.cat([best_d, dmin.t().double()], 1)
            cand_i = torch.cat([best_i, idx.to(device).view(1, -1).expand(p, -1)], 1)
            cand_l = torch.cat([best_l, arg.t()], 1)
            # stable order: sort by (distance, image index)
            order = torch.argsort(cand_i, dim=1, stable=True)
            cand_d, cand_i, cand_l = (t.gather(1, order) for t in (cand_d, cand_i, cand_l))
            order = torch.argsort(cand_d, dim=1, stable=True)[:, :k]
            best_d, best_i, best_l = (t.gather(1, order) for t in (cand_d, cand_i, cand_l))
    w = d.shape[-1]
    loc = torch.stack([best_l // w, best_l % w], -1)
    return best_d.float().cpu(), best_i.cpu(), loc.cpu()


def prototype_boxes(model: ProtoPNet, data: ImageSet, prep: Preprocessing, pairs: Sequence[tuple[int, int]], *,
                    percentile: float = 95.0, batch_size: int = 64) -> dict[tuple[int, int], Box]:
    """The high-similarity box of prototype j on image i for each ``(j, i)`` in ``pairs``."""
    model = _check_model(model)
    by_image: dict[int, list[int]] = {}
    for j, i in pairs:
        by_image.setdefault(int(i), []).append(int(j))
    out: dict[tuple[int, int], Box] = {}
    size = (data.image_size, data.image_size)
    device = _device(model)
    with torch.inference_mode(False), model_state(model), torch.no_grad():
        for idx, x in batches(data, sorted(by_image), batch_size):
            maps = model.similarity_maps(normalize(x.to(device), prep))
            for r, i in enumerate(idx.tolist()):
                protos = by_image[i]
                heat = upsample_map(maps[r, protos].cpu(), size)
                for q, j in enumerate(protos):
                    out[(j, i)] = high_activation_box(heat[q], percentile)
    return out


def explain_global(model: ProtoPNet, data: ImageSet, prep: Preprocessing, k: int = 5, *, percentile: float = 95.0,
                   batch_size: int = 64, progress: bool = False) -> list[PrototypeSummary]:
    """Every prototype with its source (recorded by the push) and its ``k`` nearest patches in ``data`` (the
    push set: the first neighbour of a pushed prototype is its own source patch, at distance ~0)."""
    model = _check_model(model)
    dist, idx, loc = nearest_patches(model, data, prep, k, batch_size=batch_size, progress=progress)
    pairs = [(j, int(i)) for j in range(model.num_prototypes) for i in idx[j].tolist()]
    boxes = prototype_boxes(model, data, prep, pairs, percentile=percentile, batch_size=batch_size)
    classes = model.prototype_classes.tolist()
    weights = model.last_layer.weight.detach().cpu()
    out = []
    for j in range(model.num_prototypes):
        neighbours = [
            Neighbour(image=int(i), label=int(data.labels[i]), distance=float(dist[j, r]),
                      location=(int(loc[j, r, 0]), int(loc[j, r, 1])), box=boxes[(j, int(i))])
            for r, i in enumerate(idx[j].tolist())
        ]
        out.append(PrototypeSummary(
            prototype=j, prototype_class=classes[j], weight=float(weights[classes[j], j]),
            image=int(model.prototype_image[j]), location=tuple(int(v) for v in model.prototype_location[j]),
            box=tuple(int(v) for v in model.prototype_box[j]), neighbours=neighbours,
        ))
    return out
