"""Curve metrics: remove (or restore) pixels in the order an attribution ranks them and follow the target's score.

:func:`rise_auc` (deletion and insertion, Petsiuk et al. 2018, RISE) and :func:`pixel_flipping` (MoRF/LeRF, Bach et
al. 2015; Samek et al. 2016) share one engine: every step image of every input is built chunk by chunk into one
buffer by :func:`seewhy.engine.evaluate_masks` and scored in shared batches (n steps cost n + 1 forwards per image,
the model's throughput limit). ``score``: ``"probability"`` (softmax of the target class, the RISE protocol) or
``"logit"``; ``target``: anything :func:`seewhy.targets.make_target` accepts ("top1"/None: the prediction on the
clean input). Pixels are ranked with a stable sort, ties in raster order (a constant map deletes the image from
the top down). The curves are deterministic (``seed`` is unused); the model runs in eval mode, restored after.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..engine import evaluate_masks, resolve_score
from ..hooks import model_state
from ..targets import Target, TargetSpec
from .common import Substitute, grid, pixel_map, positive_int, prepare, ranks, substitute_values
from .registry import MetricResult, preset, register_metric


@dataclass(frozen=True)
class Curves(MetricResult):
    """Deletion / insertion / pixel-flipping curves, kept for plotting.

    ``fractions`` (S+1,): share of pixels moved at each step (0 ... 1); ``curves`` (B, S+1): the target's score at
    each step; ``scores`` = ``auc`` (B,): trapezoidal area under each curve over ``fractions``; ``protocol``.
    """

    @property
    def auc(self) -> Tensor:
        return self.scores

    @property
    def aopc(self) -> Tensor:
        """Area over the perturbation curve (Samek et al. 2016): mean over steps k of f(x^(0)) - f(x^(k)), (B,)."""
        return (self.curves[:, :1] - self.curves).mean(1)


def _counts(n_pixels: int, width: int, pixels_per_step: int | None, n_steps: int | None) -> tuple[Tensor, int]:
    """Pixels moved after each step, (S+1,) from 0 to n_pixels, and the pixels per step (for the record)."""
    if pixels_per_step is not None and n_steps is not None:
        raise ValueError("give pixels_per_step or n_steps, not both")
    if n_steps is not None:
        n_steps = positive_int(n_steps, "n_steps")
        if n_steps > n_pixels:
            raise ValueError(f"n_steps={n_steps} exceeds the {n_pixels} pixels of the input; use at most {n_pixels}")
        counts = torch.div(torch.arange(n_steps + 1) * n_pixels + n_steps // 2, n_steps, rounding_mode="floor")
        return counts, math.ceil(n_pixels / n_steps)
    step = width if pixels_per_step is None else positive_int(pixels_per_step, "pixels_per_step")
    n = math.ceil(n_pixels / step)
    return (torch.arange(n + 1) * step).clamp(max=n_pixels), step


def _curve_rows(
    model: nn.Module, start: Tensor, end: Tensor, order: Tensor, counts: Tensor, target: Target, score: str,
    batch_size: int | None, desc: str,
) -> Tensor:
    """(B, S+1) scores of the images that take pixel p from ``end`` when rank(p) < counts[k], else from ``start``."""
    b, s = start.shape[0], counts.shape[0]
    sample, step = grid(b, s)
    counts_d = counts.to(device=start.device, dtype=torch.int32)

    def masks(idx: Tensor) -> Tensor:
        return order[sample[idx].to(order.device)] < counts_d[step[idx].to(order.device)].view(-1, 1, 1, 1)

    out = evaluate_masks(model, end, start, masks, sample, target, batch_size=batch_size, score=score, desc=desc)
    return out.view(b, s)


def _curves(
    model: nn.Module, inputs: Tensor, attributions: Tensor, target: TargetSpec, *, mode: str, order: str,
    pixels_per_step: int | None, n_steps: int | None, substitute: Substitute, score: str, batch_size: int | None,
) -> Curves:
    if order not in ("morf", "lerf"):
        raise ValueError(f"unknown order {order!r}; use 'morf' (most relevant first) or 'lerf' (least relevant first)")
    with model_state(model):
        inputs, t, _ = prepare(model, inputs, target, batch_size)
        mode_score = resolve_score(score, t)
        pmap = pixel_map(attributions, inputs)
        h, w = inputs.shape[-2:]
        counts, step = _counts(h * w, w, pixels_per_step, n_steps)
        order_ranks = ranks(pmap, descending=order == "morf")
        sub = substitute_values(inputs, substitute)
        start, end = (inputs, sub) if mode == "deletion" else (sub, inputs)
        curves = _curve_rows(model, start, end, order_ranks, counts, t, mode_score, batch_size, mode)
    fractions = counts.to(device=curves.device, dtype=curves.dtype) / (h * w)
    auc = torch.trapezoid(curves, fractions, dim=1)
    shown = substitute if not isinstance(substitute, Tensor) else "tensor"
    protocol = {"mode": mode, "order": order, "pixels_per_step": step, "n_steps": counts.shape[0] - 1,
                "substitute": shown, "score": mode_score, "ties": "raster order"}
    return Curves(auc, curves, fractions, protocol)


def _curve_cost(params: dict[str, Any], default_steps: int | None = None) -> int:
    """Forwards per image of a curve: n_steps + 1 (the size comes from ``params["input_size"]``, default 224x224)."""
    h, w = params.get("input_size", (224, 224))
    if params.get("n_steps") is not None:
        return int(params["n_steps"]) + 1
    if params.get("pixels_per_step") is None and default_steps is not None:
        return default_steps + 1
    return math.ceil(h * w / int(params.get("pixels_per_step") or w)) + 1


_DELETION = "Deletion AUC (Petsiuk et al. 2018, RISE): remove pixels most relevant first; lower is better."
_INSERTION = "Insertion AUC (Petsiuk et al. 2018, RISE): restore pixels most relevant first; higher is better."


@register_metric("deletion_auc", family="faithfulness", higher_is_better=False, cost=_curve_cost,
                 params={"mode": "deletion", "substitute": "zero"}, summary=_DELETION)
@register_metric("insertion_auc", family="faithfulness", higher_is_better=True, cost=_curve_cost,
                 params={"mode": "insertion", "substitute": "blur"}, summary=_INSERTION)
def rise_auc(model: nn.Module, inputs: Tensor, attributions: Tensor, target: TargetSpec = None, *,
             mode: str = "deletion", pixels_per_step: int | None = None, n_steps: int | None = None,
             substitute: Substitute | None = None, score: str = "probability", batch_size: int | None = None,
             seed: int | None = None) -> Curves:
    """Deletion or insertion AUC (Petsiuk et al. 2018, RISE), the most relevant pixels first.

    Deletion: AUC = integral over t in [0, 1] of f_c(x with the top t of pixels set to the substitute) dt; lower is
    better. Insertion: f_c(substrate with the top t of pixels of x put back); higher is better. Trapezoid rule.
    Defaults are RISE's protocol: ``pixels_per_step`` = the input width (224 at 224 px: 224 steps), softmax
    probability of the target; ``substitute`` None is RISE's: 0 for deletion (the mean colour for normalised
    inputs), for insertion the image blurred with an 11x11 Gaussian of sigma 5 (zero padding). ``n_steps`` instead
    spreads the pixels evenly over that many steps. Registered as ``deletion_auc`` and ``insertion_auc``.

    Returns:
        :class:`Curves` with ``fractions``, ``curves`` (B, S+1), ``auc`` = ``scores`` (B,).
    """
    if mode not in ("deletion", "insertion"):
        raise ValueError(f"unknown mode {mode!r}; use 'deletion' or 'insertion'")
    if substitute is None:
        substitute = "zero" if mode == "deletion" else "blur"
    return _curves(model, inputs, attributions, target, mode=mode, order="morf", pixels_per_step=pixels_per_step,
                   n_steps=n_steps, substitute=substitute, score=score, batch_size=batch_size)


@register_metric("pixel_flipping_morf", family="faithfulness", higher_is_better=False, params={"order": "morf"},
                 cost=lambda p: _curve_cost(p, default_steps=100),
                 summary="Pixel flipping, most relevant first (AUC; lower is better).")
@register_metric("pixel_flipping_lerf", family="faithfulness", higher_is_better=True, params={"order": "lerf"},
                 cost=lambda p: _curve_cost(p, default_steps=100),
                 summary="Pixel flipping, least relevant first (AUC; higher is better).")
def pixel_flipping(model: nn.Module, inputs: Tensor, attributions: Tensor, target: TargetSpec = None, *,
                   order: str = "morf", n_steps: int | None = 100, pixels_per_step: int | None = None,
                   substitute: Substitute = "zero", score: str = "probability", batch_size: int | None = None,
                   seed: int | None = None) -> Curves:
    """Pixel flipping (Bach et al. 2015; MoRF/LeRF as in Samek et al. 2016): replace pixels in order of relevance.

    Curve f_c(x^(k)), x^(k) = x with the k-th share of pixels in ``order`` ("morf": most relevant first, a faithful
    map drops fast, lower AUC is better; "lerf": least relevant first, higher is better) set to ``substitute``.
    ``n_steps`` (default 100) even steps, or ``pixels_per_step``. The result also gives AOPC (``Curves.aopc``).
    Registered as ``pixel_flipping_morf`` and ``pixel_flipping_lerf``.
    """
    if pixels_per_step is not None:
        n_steps = None
    return _curves(model, inputs, attributions, target, mode="deletion", order=order, pixels_per_step=pixels_per_step,
                   n_steps=n_steps, substitute=substitute, score=score, batch_size=batch_size)


deletion_auc = preset("deletion_auc")
insertion_auc = preset("insertion_auc")
pixel_flipping_morf = preset("pixel_flipping_morf")
pixel_flipping_lerf = preset("pixel_flipping_lerf")
