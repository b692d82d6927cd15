"""Random-perturbation faithfulness: do the attributions predict how the score moves under random perturbations?

- :func:`faithfulness_correlation` (Bhatt et al. 2020): random pixel subsets set to a baseline;
- :func:`infidelity` (Yeh et al. 2019): random perturbations I, compared with I^T Phi.

Each (image, draw) has its own generator derived from (``seed``, the image's content, the draw:
:func:`~seewhy.methods.controls.image_seeds`), so an image's score depends neither on ``batch_size`` (rows per
forward) nor on the other images of the call; ``seed=None`` draws a seed. The model runs in eval mode under
``torch.inference_mode()``; its flags are restored afterwards.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..engine import evaluate, evaluate_masks, generator, row_generator
from ..hooks import model_state
from ..methods.controls import image_seeds
from ..targets import TargetSpec
from .common import Substitute, clean_scores, grid, pixel_map, positive_int, substitute_values
from .registry import register_metric
from .similarity import pearson


@register_metric("faithfulness_correlation", family="faithfulness", higher_is_better=True,
                 cost=lambda p: int(p.get("n_runs", 100)) + 1)
def faithfulness_correlation(
    model: nn.Module,
    inputs: Tensor,
    attributions: Tensor,
    target: TargetSpec = None,
    *,
    n_runs: int = 100,
    subset_size: int | float = 0.1,
    baseline: Substitute = 0.0,
    score: str = "logit",
    batch_size: int | None = None,
    seed: int | None = None,
) -> Tensor:
    """Faithfulness correlation (Bhatt et al. 2020): do attribution sums predict the score drops?

    mu_F = Pearson over ``n_runs`` random pixel subsets S of (sum_{i in S} a_i, f(x) - f(x with x_S <- baseline)).
    ``subset_size``: pixels per subset, an int or a fraction of the H*W pixels (default 0.1: Quantus' 224
    channel-values barely move an ImageNet model). Subsets are drawn per image and run from ``seed``; pixels of all
    channels are replaced together. NaN when the drops or sums are constant. Higher is better, in [-1, 1].

    Returns:
        (B,) correlations.
    """
    n_runs = positive_int(n_runs, "n_runs")
    if n_runs < 2:
        raise ValueError("n_runs must be >= 2 to compute a correlation")
    with model_state(model):
        inputs, t, mode, clean = clean_scores(model, inputs, target, batch_size, score)
        pmap = pixel_map(attributions, inputs).flatten(1)
        b, n = pmap.shape
        k = _subset_count(subset_size, n)
        base = substitute_values(inputs, baseline)
        keys = image_seeds(inputs, generator(seed)[1])
        sample, run = grid(b, n_runs)
        sums = torch.zeros(b * n_runs, dtype=torch.float64, device=inputs.device)

        def masks(idx: Tensor) -> Tensor:
            keep = torch.ones(len(idx), n, dtype=torch.bool)
            for j, (i, r) in enumerate(zip(sample[idx].tolist(), run[idx].tolist(), strict=True)):
                keep[j, torch.randperm(n, generator=row_generator(keys[i], r))[:k]] = False
            keep = keep.to(inputs.device)
            sums[idx.to(sums.device)] = (pmap[sample[idx].to(pmap.device)] * ~keep).sum(1, dtype=torch.float64)
            return keep.view(len(idx), 1, *inputs.shape[-2:])

        perturbed = evaluate_masks(model, inputs, base, masks, sample, t, batch_size=batch_size, score=mode,
                                   desc="faithfulness_correlation")
    drops = clean.repeat_interleave(n_runs) - perturbed
    return pearson(sums.view(b, n_runs), drops.view(b, n_runs)).to(clean.dtype)


def _subset_count(size: int | float, n: int) -> int:
    if isinstance(size, float):
        if not 0 < size < 1:
            raise ValueError(f"subset_size as a fraction must be in (0, 1), got {size!r}")
        return min(max(1, round(size * n)), n - 1)  # at least one pixel kept: a full subset has no variance
    if not isinstance(size, int) or isinstance(size, bool) or not 1 <= size < n:
        raise ValueError(f"subset_size must be an int in [1, {n - 1}] pixels or a fraction in (0, 1), got {size!r}")
    return size


def _infidelity_cost(params: dict[str, Any]) -> int:
    deterministic = params.get("perturbation", "gaussian") == "baseline" and not params.get("noise_std", 0.1)
    return (1 if deterministic else int(params.get("n_samples", 32))) + 1


def _infidelity_draws(perturbation: str, n_samples: int, noise_std: float) -> int:
    """The checked number of perturbations per image (1 for the deterministic baseline difference)."""
    if perturbation not in ("gaussian", "baseline"):
        raise ValueError(f"unknown perturbation {perturbation!r}; use 'gaussian' or 'baseline'")
    n_samples = positive_int(n_samples, "n_samples")
    if not isinstance(noise_std, (int, float)) or noise_std < 0:
        raise ValueError(f"noise_std must be a number >= 0, got {noise_std!r}")
    if perturbation == "gaussian" and noise_std == 0:
        raise ValueError("noise_std=0 with the gaussian perturbation perturbs nothing (infidelity would be 0 for any "
                         "map); use noise_std > 0, or perturbation='baseline' for the deterministic baseline")
    return 1 if perturbation == "baseline" and noise_std == 0 else n_samples


def _explanation_per_value(attributions: Tensor, inputs: Tensor, base: Tensor, multiply_by_inputs: bool) -> Tensor:
    """Phi shaped like the inputs: attributions of that shape per value, maps summed over channels, upsampled and
    shared equally by the channels of a pixel; divided by (x - x0) (0 where x = x0) with ``multiply_by_inputs``."""
    if isinstance(attributions, Tensor) and attributions.shape == inputs.shape:
        if not bool(torch.isfinite(attributions).all()):
            raise ValueError("attributions contain NaN or inf")
        phi = attributions.detach().to(inputs)
    else:
        phi = (pixel_map(attributions, inputs) / inputs.shape[1]).unsqueeze(1).expand_as(inputs).to(inputs)
    if multiply_by_inputs:
        diff = inputs - base
        phi = torch.where(diff.abs() > 1e-12, phi / torch.where(diff == 0, 1.0, diff), 0.0)
    return phi


@register_metric("infidelity", family="faithfulness", higher_is_better=False, cost=_infidelity_cost)
def infidelity(model: nn.Module, inputs: Tensor, attributions: Tensor, target: TargetSpec = None, *,
               perturbation: str = "gaussian", n_samples: int = 32, noise_std: float = 0.1,
               baseline: Substitute = 0.0, multiply_by_inputs: bool = False, optimal_scale: bool = True,
               score: str = "logit", batch_size: int | None = None, seed: int | None = None) -> Tensor:
    """Infidelity (Yeh et al. 2019): does I^T Phi predict f(x) - f(x - I) for random perturbations I? Lower is better.

    INFD = E_I[(beta I^T Phi - (f(x) - f(x - I)))^2], Monte Carlo over ``n_samples`` draws of I per image (from
    ``seed``), with the perturbation distribution ``perturbation``:

    - "gaussian": I ~ N(0, noise_std^2) on every input value (input units);
    - "baseline": I = x - (x0 + eps), eps ~ N(0, noise_std^2) ("noisy baseline"; ``noise_std=0`` is the deterministic
      difference to the baseline x0, evaluated once).

    ``optimal_scale`` (the paper's scale-invariant form, always used by the official code): beta = E[I^T Phi dF] /
    E[(I^T Phi)^2] per image, else beta = 1. ``multiply_by_inputs``: the attributions are of the form (x - x0) * g
    (integrated gradients, input x gradient), so Phi = a / (x - x0) (0 where x = x0), as Captum's decorator.
    Attributions shaped like the inputs are used per value; maps are summed over channels, upsampled and shared
    equally by the channels of a pixel.

    Returns:
        (B,) infidelity.
    """
    n_samples = _infidelity_draws(perturbation, n_samples, noise_std)
    with model_state(model):
        inputs, t, mode, clean = clean_scores(model, inputs, target, batch_size, score)
        base = substitute_values(inputs, baseline)
        phi = _explanation_per_value(attributions, inputs, base, multiply_by_inputs)
        b = inputs.shape[0]
        keys = image_seeds(inputs, generator(seed)[1])
        sample, draw = grid(b, n_samples)
        proj = torch.zeros(b * n_samples, dtype=torch.float64, device=inputs.device)

        def rows(idx: Tensor) -> Tensor:
            s = sample[idx].to(inputs.device)
            eps = torch.stack([
                torch.randn(inputs.shape[1:], generator=row_generator(keys[i], d), dtype=torch.float32)
                for i, d in zip(sample[idx].tolist(), draw[idx].tolist(), strict=True)
            ]).to(inputs) * noise_std
            pert = eps if perturbation == "gaussian" else inputs[s] - base[s] - eps
            proj[idx.to(proj.device)] = (pert * phi[s]).sum(dim=(1, 2, 3), dtype=torch.float64)
            return inputs[s] - pert

        perturbed = evaluate(model, rows, sample, t, like=inputs, batch_size=batch_size, score=mode, desc="infidelity")
    dy = (clean.repeat_interleave(n_samples) - perturbed).double().view(b, n_samples)
    ip = proj.view(b, n_samples)
    if optimal_scale:
        den = ip.square().mean(1)
        beta = torch.where(den > 0, (ip * dy).mean(1) / den.clamp(min=1e-300), 0.0)
        ip = ip * beta[:, None]
    return (ip - dy).square().mean(1).to(clean.dtype)
