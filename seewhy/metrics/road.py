"""ROAD, Remove And Debias (Rong et al. 2022): MoRF/LeRF removal with the removed pixels imputed from their
neighbours (:func:`~seewhy.metrics.imputation.noisy_linear_imputation`), so the removed set's shape leaks less.

Each (image, order, fraction) draws its noise from a generator derived from (``seed``, the image's content, the
order, the fraction), so an image's score depends neither on ``batch_size`` nor on the other images of the call.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..engine import evaluate, generator, row_generator
from ..hooks import model_state
from ..methods.controls import image_seeds
from ..targets import TargetSpec
from .common import clean_scores, fraction, grid, pixel_map, ranks
from .imputation import impute
from .registry import MetricResult, preset, register_metric


@dataclass(frozen=True, kw_only=True)
class RoadResult(MetricResult):
    """ROAD curves and scores.

    ``fractions`` (P,): shares of pixels removed; ``morf`` / ``lerf`` (B, P): the target's score with the most /
    least relevant share removed and imputed (None when that order was not run); ``clean`` (B,): the score on the
    inputs; ``scores`` (B,): mean of the MoRF curve ("morf", lower is better), of the LeRF curve ("lerf", higher is
    better) or (mean LeRF - mean MoRF) / 2 ("combined", higher is better, as pytorch-grad-cam's ROADCombined).
    """

    morf: Tensor | None
    lerf: Tensor | None
    clean: Tensor


#: the paper's shares of pixels removed
ROAD_FRACTIONS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.7, 0.9)


def _road_cost(params: dict[str, Any]) -> int:
    n = len(params.get("fractions", ROAD_FRACTIONS))
    return n * (2 if params.get("order", "combined") == "combined" else 1) + 1


@register_metric("road", family="faithfulness", higher_is_better=True, cost=_road_cost)
@register_metric("road_morf", family="faithfulness", higher_is_better=False, cost=_road_cost, params={"order": "morf"},
                 summary="ROAD, most relevant first (mean score over the fractions; lower is better).")
@register_metric("road_lerf", family="faithfulness", higher_is_better=True, cost=_road_cost, params={"order": "lerf"},
                 summary="ROAD, least relevant first (mean score over the fractions; higher is better).")
def road(
    model: nn.Module,
    inputs: Tensor,
    attributions: Tensor,
    target: TargetSpec = None,
    *,
    fractions: Sequence[float] = ROAD_FRACTIONS,
    order: str = "combined",
    noise: float = 0.01,
    score: str = "probability",
    tol: float = 1e-4,
    max_iter: int = 1000,
    batch_size: int | None = None,
    seed: int | None = None,
) -> RoadResult:
    """ROAD, Remove And Debias (Rong et al. 2022): MoRF/LeRF removal with noisy linear imputation, no retraining.

    For each fraction p: f_c(x with the p most ("morf") or least ("lerf") relevant pixels imputed from their
    neighbours + N(0, noise^2)); both orders remove a share p (x-axis = fraction removed; the official code's LeRF at
    p keeps the top p, i.e. removes 1 - p). ``order``: "morf", "lerf" or "combined" (both; score (mean LeRF - mean
    MoRF) / 2). Defaults: the paper's fractions 0.1 ... 0.9, noise 0.01,
    softmax probability of the target. The imputation is solved to relative residual ``tol`` (see
    :func:`noisy_linear_imputation`); the noise of each (image, order, fraction) comes from ``seed``.

    Returns:
        :class:`RoadResult` (``scores`` (B,), the curves, the clean scores).
    """
    if order not in ("morf", "lerf", "combined"):
        raise ValueError(f"unknown order {order!r}; use 'morf', 'lerf' or 'combined'")
    fr = [fraction(p, "each ROAD fraction", closed_right=False) for p in fractions]
    if not fr:
        raise ValueError("give at least one fraction, e.g. fractions=(0.1, 0.5, 0.9)")
    orders = ("morf", "lerf") if order == "combined" else (order,)
    with model_state(model):
        inputs, t, mode, clean = clean_scores(model, inputs, target, batch_size, score)
        order_ranks = ranks(pixel_map(attributions, inputs))
        b, n = inputs.shape[0], inputs.shape[-2] * inputs.shape[-1]
        counts = torch.tensor([round(p * n) for p in fr], dtype=torch.int32, device=inputs.device)
        n_o, n_p = len(orders), len(fr)
        sample, which = grid(b, n_o * n_p)
        gen_seed = generator(seed)[1]
        keys = image_seeds(inputs, gen_seed)  # draws keyed by image content: batch-invariant
        lerf_flag = torch.tensor([o == "lerf" for o in orders], device=inputs.device)

        def rows(idx: Tensor) -> Tensor:
            s, k = sample[idx], which[idx]
            o, p = k // n_p, k % n_p
            r = order_ranks[s.to(order_ranks.device)]
            c = counts[p.to(counts.device)].view(-1, 1, 1, 1)
            removed = torch.where(lerf_flag[o.to(lerf_flag.device)].view(-1, 1, 1, 1), r >= n - c, r < c)
            gens = [row_generator(keys[int(i)], int(orders[oi] == "lerf"), int(pi))
                    for i, oi, pi in zip(s.tolist(), o.tolist(), p.tolist(), strict=True)]
            return impute(inputs[s.to(inputs.device)], ~removed, noise, gens, tol, max_iter)

        out = evaluate(model, rows, sample, t, like=inputs, batch_size=batch_size, score=mode, desc="road")
    curves = out.view(b, n_o, n_p)
    morf = curves[:, orders.index("morf")] if "morf" in orders else None
    lerf = curves[:, orders.index("lerf")] if "lerf" in orders else None
    if order == "combined":
        scores = (lerf.mean(1) - morf.mean(1)) / 2
    else:
        scores = curves[:, 0].mean(1)
    protocol = {"order": order, "noise": noise, "score": mode, "seed": gen_seed, "imputation": "noisy linear, 8-nbr",
                "ties": "raster order"}
    fractions_t = torch.tensor(fr, dtype=curves.dtype, device=curves.device)
    return RoadResult(scores, None, fractions_t, protocol, morf=morf, lerf=lerf, clean=clean)


road_morf = preset("road_morf")
road_lerf = preset("road_lerf")
