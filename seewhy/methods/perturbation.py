"""Perturbation attributions: occlusion (and its occluder-position map), feature ablation and RISE.

They treat the model as a black box: every score comes from forward passes of perturbed inputs, run by the shared
engine (:mod:`seewhy.engine`: chunks of ``batch_size``, ``torch.inference_mode()``, ``channels_last``, one pass
shared by several targets). f(x) is the forward the target was resolved from; it is not recomputed.

Every :class:`PerturbationMethod` can explain several targets from the same forward passes with
:meth:`~seewhy.core.Method.explain_targets`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core import Call, Cost, register
from ..engine import generator, make_baseline, resolve_score, score_rows
from ..segments import make_segments, n_features, segment_mean
from ..targets import Target
from .base import BatchedMethod

Result = tuple[Tensor, dict[str, Any]]  # attributions for one target and that target's extras


@dataclass
class PerturbationMethod(BatchedMethod):
    """Base of the black-box methods: a subclass writes :meth:`~seewhy.core.Method.attribute_targets` (several
    targets from the same perturbed forwards). ``score``: "logit" (the raw output), "probability" (softmax) or
    "auto" (the probability for class targets, the raw value of a callable target)."""

    score: str = "logit"
    family: ClassVar[str] = "perturbation"

    def modes(self, targets: list[Target]) -> list[str]:
        """The score each target is read with ("logit" or "probability", from ``score``)."""
        return [resolve_score(self.score, t) for t in targets]

    def clean_scores(self, call: Call, targets: list[Target], modes: list[str]) -> Tensor:
        """(T,B) f(x) for every target, from the forward that resolved the target."""
        return torch.stack([score_rows(call.output, t, m) for t, m in zip(targets, modes, strict=True)])


def _as_triple(value: int | Sequence[int], name: str, channel_default: int) -> tuple[int, int, int]:
    vals = (value, value) if isinstance(value, int) and not isinstance(value, bool) else value
    vals = tuple(vals) if isinstance(vals, (tuple, list)) else (vals,)
    if len(vals) == 2:
        vals = (channel_default, *vals)
    if len(vals) != 3 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in vals):
        raise ValueError(
            f"{name} must be a positive int, (h, w) or (c, h, w) of positive ints; got {value!r}"
        )
    return vals  # type: ignore[return-value]


def window_indicators(
    shape: Sequence[int], window: int | Sequence[int], stride: int | Sequence[int]
) -> tuple[list[Tensor], tuple[int, int, int], tuple[int, int, int]]:
    """Occlusion windows of an input of shape (C,H,W), Captum's way: along each dimension, windows start at
    0, s, 2s, ... up to the first that reaches the end (clipped at the border), so every element is covered.

    Returns ([A (n_c, C), B (n_h, H), W (n_w, W)] boolean: window i covers element j), the window and the stride,
    each as (c, h, w). An int or (h, w) window spans all channels; an int stride applies to h and w.
    """
    c = int(shape[0])
    win = _as_triple(window, "window", c)
    st = _as_triple(stride, "stride", win[0])
    if any(k > d for k, d in zip(win, shape, strict=True)):
        raise ValueError(f"window {win} (c, h, w) exceeds the input {tuple(shape)}; use a smaller window")
    for k, s, d in zip(win, st, shape, strict=True):
        if s > k and k < d:
            raise ValueError(
                f"stride {st} is larger than the window {win} (c, h, w): some pixels would never be occluded; "
                "use a stride <= the window"
            )
    inds = []
    for k, s, d in zip(win, st, shape, strict=True):
        n = -(-(d - k) // s) + 1
        starts = torch.arange(n)[:, None] * s
        pos = torch.arange(d)[None, :]
        inds.append((pos >= starts) & (pos < starts + k))
    return inds, win, st


@register("occlusion")
@dataclass
class Occlusion(PerturbationMethod):
    """Occlusion (Zeiler & Fergus 2014, arXiv:1311.2901), as Captum defines it:
    A(p) = mean over the windows W covering p of [S(x) - S(x with W set to the baseline)].

    ``window``: int k (k x k over all channels), (h, w), or (c, h, w) to slide over channels too; ``stride``: int
    (spatial), (h, w) or (c, h, w); windows start at 0, s, 2s, ... and the last is clipped at the border, so every
    pixel is covered (Captum's convention; the stride must not exceed the window). ``baseline``: a number, "mean"
    (each image's mean colour), "blur" (Gaussian, ``blur_sigma`` px) or a tensor. ``score``: "logit" (raw output)
    or "probability". Raw attributions are (B,C,H,W); when windows span all channels every channel carries the same
    value (the heatmap takes the channel mean). ``extras``: ``n_evaluations`` (forwards in the call), ``grid``
    (windows along c, h, w).
    """

    window: int | tuple[int, ...] = 16
    stride: int | tuple[int, ...] = 8
    baseline: float | str | Tensor = 0.0
    blur_sigma: float = 10.0
    heatmap_convention: ClassVar[dict[str, Any]] = {"reduce": "mean", "sign": "positive", "normalize": "max"}

    def cost(self, model: nn.Module | None = None, inputs: Tensor | None = None) -> Cost:
        """One forward per window position (and one for f(x)); without inputs, for a 3x224x224 image."""
        shape = tuple(inputs.shape[1:]) if inputs is not None else (3, 224, 224)
        inds, _, _ = window_indicators(shape, self.window, self.stride)
        k = inds[0].shape[0] * inds[1].shape[0] * inds[2].shape[0]
        return Cost(forwards=1 + k, lower="stride", note="" if inputs is not None else "at 224x224")

    def lighter(self, factor: float) -> dict[str, Any]:
        """A spatial stride larger by 1/sqrt(factor) (at most the window): about ``factor`` times the windows."""
        win = _as_triple(self.window, "window", 3)
        st = _as_triple(self.stride, "stride", win[0])
        grow = max(1.0, (1.0 / max(factor, 1e-9)) ** 0.5)
        return {"stride": tuple(min(w, max(s, round(s * grow))) for s, w in zip(st[1:], win[1:], strict=True))}

    def _occlusion_scores(
        self, model: nn.Module, inputs: Tensor, targets: list[Target], call: Call, modes: list[str]
    ) -> tuple[Tensor, list[Tensor]]:
        """(T, B, n_c, n_h, n_w) scores with each window occluded, and the window indicators."""
        inds, win, _ = window_indicators(inputs.shape[1:], self.window, self.stride)
        a, bh, bw = (i.to(inputs.device) for i in inds)
        nc, nh, nw = a.shape[0], bh.shape[0], bw.shape[0]
        k = nc * nh * nw
        b = inputs.shape[0]
        full_channels = win[0] == inputs.shape[1]
        base = make_baseline(inputs, self.baseline, blur_sigma=self.blur_sigma)
        sample = torch.arange(b).repeat_interleave(k)
        window = torch.arange(k).repeat(b)

        def masks(idx: Tensor) -> Tensor:
            kk = window[idx].to(inputs.device)
            rows, cols = bh[(kk // nw) % nh], bw[kk % nw]
            occluded = rows[:, None, :, None] & cols[:, None, None, :]
            if not full_channels:
                occluded = occluded & a[kk // (nh * nw)][:, :, None, None]
            return ~occluded

        scores = self.evaluate_masks(model, inputs, base, masks, sample, targets, modes)
        call.extras["n_evaluations"] = b * k
        call.extras["grid"] = (nc, nh, nw)
        return scores.view(len(targets), b, nc, nh, nw), inds

    def attribute_targets(self, model: nn.Module, inputs: Tensor, targets: list[Target],
                          call: Call) -> list[Result]:
        modes = self.modes(targets)
        scores, (a, bh, bw) = self._occlusion_scores(model, inputs, targets, call, modes)
        clean = self.clean_scores(call, targets, modes)
        diff = (clean[:, :, None, None, None] - scores).to(torch.float64)
        a, bh, bw = (i.to(inputs.device, torch.float64) for i in (a, bh, bw))
        total = torch.einsum("tbijk,ic,jh,kw->tbchw", diff, a, bh, bw)
        count = torch.einsum("ic,jh,kw->chw", a, bh, bw)
        attr = (total / count).to(inputs.dtype)
        return [(attr[t], {}) for t in range(len(targets))]


@register("occlusion_map")
@dataclass
class OcclusionMap(Occlusion):
    """The occluder-position map of Zeiler & Fergus 2014 (fig. 7): M(i, j) = p_c(x with the window at (i, j) set to
    the baseline), one value per window position, (B,1,n_h,n_w).

    Same windows as :class:`Occlusion` (they must span all channels). ``score="auto"`` is the class probability
    (softmax), as in the paper, or the callable target's value. Low values mark where the occluder hurts the class:
    the heatmap shows the raw map min-max scaled, so the object is where it is dark; use ``occlusion`` for a map where
    important regions are bright. ``extras["clean_score"]``: the score of the unoccluded input, (B,).
    """

    score: str = "auto"
    kind: ClassVar[str] = "map"
    heatmap_convention: ClassVar[dict[str, Any]] = {"reduce": "none", "sign": "positive", "normalize": "minmax"}

    def attribute_targets(self, model: nn.Module, inputs: Tensor, targets: list[Target],
                          call: Call) -> list[Result]:
        window = _as_triple(self.window, "window", inputs.shape[1])
        if window[0] != inputs.shape[1]:
            raise ValueError(
                f"occlusion_map needs windows over all {inputs.shape[1]} channels, got window {self.window!r}; "
                "give window=k or (h, w), or use 'occlusion' to slide over channels"
            )
        modes = self.modes(targets)
        scores, _ = self._occlusion_scores(model, inputs, targets, call, modes)
        clean = self.clean_scores(call, targets, modes)
        return [(scores[t, :, 0].unsqueeze(1), {"clean_score": clean[t]}) for t in range(len(targets))]


def feature_baseline(
    inputs: Tensor, baseline: float | str | Tensor, segments: Tensor, blur_sigma: float = 10.0
) -> Tensor:
    """:func:`seewhy.engine.make_baseline`, plus ``"segment_mean"``: each feature filled with its mean colour."""
    if isinstance(baseline, str) and baseline == "segment_mean":
        return segment_mean(inputs, segments)
    try:
        return make_baseline(inputs, baseline, blur_sigma=blur_sigma)
    except ValueError as err:
        if isinstance(baseline, str):
            raise ValueError(f"{err}; feature methods also take 'segment_mean'") from None
        raise


def broadcast_features(weights: Tensor, segments: Tensor, channels: int) -> Tensor:
    """(B,F) feature weights -> (B,C,H,W): every pixel (and channel) of feature j carries weight j (Captum's
    convention for feature masks)."""
    b, h, w = segments.shape
    return weights.gather(1, segments.reshape(b, -1)).view(b, 1, h, w).expand(b, channels, h, w).contiguous()


@register("feature_ablation")
@dataclass
class FeatureAblation(PerturbationMethod):
    """Feature ablation (Captum's ``FeatureAblation``): for every feature j,
    A_j = S(x) - S(x with feature j set to the baseline), on every pixel and channel of the feature.

    ``mask``: a LongTensor of feature ids, (H,W) for all images or (B,H,W) one per image (any ids; relabelled to
    0 .. F-1 in increasing order), or a segmentation name: "grid" (about ``n_segments`` cells, the default), "slic",
    "quickshift", "felzenszwalb" (:mod:`seewhy.segments`; ``segment_params`` override scikit-image's settings).
    ``baseline``: a number, "mean", "blur", "segment_mean" (each feature filled with its mean colour) or a tensor.
    ``extras``: ``segments`` (B,H,W), ``feature_weights`` (B,F) (zero-padded past ``n_features`` (B,)),
    ``n_evaluations``.
    """

    mask: str | Tensor = "grid"
    n_segments: int = 64
    baseline: float | str | Tensor = 0.0
    blur_sigma: float = 10.0
    segment_params: dict | None = None
    heatmap_convention: ClassVar[dict[str, Any]] = {"reduce": "mean", "sign": "positive", "normalize": "max"}

    def cost(self, model: nn.Module | None = None, inputs: Tensor | None = None) -> Cost:
        """One forward per feature (about ``n_segments``, or the ids of a given mask) and one for f(x)."""
        n = int(self.mask.unique().numel()) if isinstance(self.mask, Tensor) else self.n_segments
        return Cost(forwards=1 + n, lower=None if isinstance(self.mask, Tensor) else "n_segments")

    def attribute_targets(self, model: nn.Module, inputs: Tensor, targets: list[Target],
                          call: Call) -> list[Result]:
        segments = make_segments(self.mask, inputs, self.n_segments, self.segment_params, name="mask")
        counts = n_features(segments)
        b, f = inputs.shape[0], int(counts.max())
        base = feature_baseline(inputs, self.baseline, segments, self.blur_sigma)
        sample = torch.arange(b).repeat_interleave(counts)
        feature = torch.cat([torch.arange(int(n)) for n in counts])

        def masks(idx: Tensor) -> Tensor:
            s, j = sample[idx].to(inputs.device), feature[idx].to(inputs.device)
            return (segments[s] != j[:, None, None]).unsqueeze(1)

        modes = self.modes(targets)
        scores = self.evaluate_masks(model, inputs, base, masks, sample, targets, modes)
        clean = self.clean_scores(call, targets, modes)
        dev = inputs.device
        weights = torch.zeros(len(targets), b, f, dtype=scores.dtype, device=dev)
        weights[:, sample.to(dev), feature.to(dev)] = clean[:, sample.to(dev)] - scores
        call.extras.update(segments=segments, n_features=counts, n_evaluations=int(sample.shape[0]))
        return [
            (broadcast_features(weights[t], segments, inputs.shape[1]).to(inputs.dtype),
             {"feature_weights": weights[t]})
            for t in range(len(targets))
        ]


def rise_grids(
    n_masks: int, grid_size: int, p_keep: float, size: tuple[int, int], gen: torch.Generator
) -> tuple[Tensor, Tensor, tuple[int, int]]:
    """RISE's random draws: binary grids (N,1,s,s) and shifts (N,2), and the cell size (ceil(H/s), ceil(W/s))."""
    if not isinstance(n_masks, int) or n_masks < 1:
        raise ValueError(f"n_masks must be a positive int, got {n_masks!r}")
    if not isinstance(grid_size, int) or grid_size < 1:
        raise ValueError(f"grid_size must be a positive int, got {grid_size!r}")
    if not 0.0 < p_keep <= 1.0:
        raise ValueError(f"p_keep must be in (0, 1], got {p_keep!r}")
    cell = (-(-size[0] // grid_size), -(-size[1] // grid_size))
    grids = (torch.rand(n_masks, 1, grid_size, grid_size, generator=gen, dtype=torch.float64) < p_keep)
    shifts = torch.stack(
        [torch.randint(0, cell[0], (n_masks,), generator=gen), torch.randint(0, cell[1], (n_masks,), generator=gen)], 1
    )
    return grids, shifts, cell


def _upsampling_matrix(s: int, n: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """(n, s): linear upsampling of s values to n, as ``F.interpolate(align_corners=False)`` does."""
    eye = torch.eye(s, dtype=dtype, device=device).unsqueeze(0)  # s unit vectors as channels
    return F.interpolate(eye, size=n, mode="linear", align_corners=False)[0].T


def rise_masks(
    grids: Tensor, shifts: Tensor, cell: tuple[int, int], size: tuple[int, int], dtype: torch.dtype
) -> Tensor:
    """(k,1,H,W) soft masks: each grid upsampled bilinearly to (s+1) cells, then cropped at its shift.

    Bilinear upsampling is separable, so a crop of it is R_y[dy:dy+H] @ grid @ R_x[dx:dx+W]^T: two small batched
    matrix products instead of a full-size upsampling and a gather."""
    s, dev = grids.shape[-1], grids.device
    ry = _upsampling_matrix(s, (s + 1) * cell[0], dtype, dev)
    rx = _upsampling_matrix(s, (s + 1) * cell[1], dtype, dev)
    rows = ry[shifts[:, 0, None].to(dev) + torch.arange(size[0], device=dev)]  # (k, H, s)
    cols = rx[shifts[:, 1, None].to(dev) + torch.arange(size[1], device=dev)]  # (k, W, s)
    return (rows @ grids[:, 0].to(dtype) @ cols.transpose(1, 2)).unsqueeze(1)


@register("rise")
@dataclass
class RISE(PerturbationMethod):
    """RISE (Petsiuk et al. 2018, arXiv:1806.07421): S = 1/(N p) sum_i f(x * M_i + b * (1 - M_i)) M_i, with
    M_i = a random s x s Bernoulli(p) grid, bilinearly upsampled to (s+1) cells of ceil(H/s) px and cropped at a
    random shift. (B,1,H,W) map.

    The same ``n_masks`` masks (from ``seed``) serve every image, so a sample's map does not depend on its batch.
    ``score="auto"``: the class probability (softmax), as in the paper, or the callable target's value.
    ``baseline`` 0.0 is the paper's x * M for normalised inputs. ``extras``: ``seed``, ``n_evaluations``.
    """

    n_masks: int = 4000
    grid_size: int = 7
    p_keep: float = 0.5
    seed: int | None = None
    baseline: float | str | Tensor = 0.0
    blur_sigma: float = 10.0
    score: str = "auto"
    kind: ClassVar[str] = "map"

    _BLOCK: ClassVar[int] = 128  # masks per accumulation block (fixed: the sum does not depend on batch_size)

    def cost(self, model: nn.Module | None = None, inputs: Tensor | None = None) -> Cost:
        return Cost(forwards=1 + self.n_masks, lower="n_masks")

    @property
    def heatmap_convention(self) -> dict[str, Any]:  # type: ignore[override]
        """Min-max of the map; logit scores can make it negative, so then it is shown signed."""
        sign = "all" if self.score == "logit" else "positive"
        return {"reduce": "none", "sign": sign, "normalize": "minmax"}

    def attribute_targets(self, model: nn.Module, inputs: Tensor, targets: list[Target],
                          call: Call) -> list[Result]:
        gen, call.extras["seed"] = generator(self.seed)
        b, _, h, w = inputs.shape
        n = self.n_masks
        grids, shifts, cell = rise_grids(n, self.grid_size, self.p_keep, (h, w), gen)
        grids = grids.to(inputs.device)
        base = make_baseline(inputs, self.baseline, blur_sigma=self.blur_sigma)
        mask_of = torch.arange(n).repeat_interleave(b)  # mask-major rows: the images share each mask
        sample = torch.arange(b).repeat(n)

        def masks(idx: Tensor) -> Tensor:
            m = mask_of[idx]
            return rise_masks(grids[m.to(grids.device)], shifts[m], cell, (h, w), inputs.dtype)

        modes = self.modes(targets)
        scores = self.evaluate_masks(model, inputs, base, masks, sample, targets, modes)  # (T, n*b)
        scores = scores.view(len(targets), n, b).permute(0, 2, 1).reshape(len(targets) * b, n).to(torch.float64)
        sal = torch.zeros(len(targets) * b, h * w, dtype=torch.float64, device=inputs.device)
        for start in range(0, n, self._BLOCK):
            sl = slice(start, min(n, start + self._BLOCK))
            m = rise_masks(grids[sl], shifts[sl], cell, (h, w), torch.float64).view(-1, h * w)
            sal += scores[:, sl] @ m
        sal = (sal / (n * self.p_keep)).view(len(targets), b, 1, h, w).to(inputs.dtype)
        call.extras["n_evaluations"] = n * b
        return [(sal[t], {}) for t in range(len(targets))]

