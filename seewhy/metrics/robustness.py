"""Robustness metrics: does the explanation stay put when the input barely moves? (Yeh et al. 2019)

The explanation method is re-run on perturbed copies of each input: a registered method name (with
``method_params``), a configured :class:`~seewhy.core.Method`, or any callable ``(model, inputs, target) -> attr``.
The target is resolved once on the clean inputs ("top1": the clean prediction) and kept for the perturbed copies.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from ..core import Method
from ..engine import default_batch_size, generator, row_generator
from ..hooks import model_state
from ..progress import progress
from ..targets import Target, TargetSpec
from .faithfulness import _positive_int, _prepare
from .registry import register_metric
from .sanity import _explainer

ExplainFn = Callable[[nn.Module, Tensor, TargetSpec], Tensor]


def _rows_target(target: Target, rows: Tensor) -> TargetSpec:
    """A target spec for a batch whose row r is a copy of sample rows[r]."""
    if target.indices is not None:
        return target.indices[rows.to(target.indices.device)]
    if target.per_sample is not None:
        return [target.per_sample[int(r)] for r in rows]
    return target.fn


def sensitivities(
    model: nn.Module,
    inputs: Tensor,
    attributions: Tensor | None,
    target: TargetSpec = None,
    *,
    method: str | Method | ExplainFn,
    method_params: dict[str, Any] | None = None,
    radius: float = 0.02,
    n_samples: int = 10,
    norm: float = 2.0,
    batch_size: int | None = None,
    seed: int | None = None,
) -> Tensor:
    """Relative explanation changes ||Phi(y_k) - Phi(x)|| / ||Phi(x)|| for y_k = x + U(-radius, radius), (B, n_samples).

    The norm is the vector ``norm`` (2: Frobenius) over all values of an explanation; an all-zero Phi(x) is divided
    by 1 (as Captum). ``attributions``: Phi(x) from the same method (None: computed here). ``radius`` is in the model's
    input units (for ImageNet-normalised inputs one unit is about 0.23 of the [0, 1] pixel range). Each (image, draw)
    has its own noise from ``seed``; ``batch_size`` perturbed inputs go to the method at once.
    """
    n_samples = _positive_int(n_samples, "n_samples")
    if not isinstance(radius, (int, float)) or isinstance(radius, bool) or radius < 0:
        raise ValueError(f"radius must be a number >= 0 (an L-inf radius in input units), got {radius!r}")
    explain = _explainer(method, method_params, seed)[0]
    with model_state(model):
        inputs, t, _ = _prepare(model, inputs, target, batch_size)
        phi = explain(model, inputs, _rows_target(t, torch.arange(inputs.shape[0]))) if attributions is None \
            else attributions
        if not isinstance(phi, Tensor) or phi.shape[0] != inputs.shape[0]:
            shape = tuple(phi.shape) if isinstance(phi, Tensor) else type(phi).__name__
            raise ValueError(f"attributions of shape {shape} do not fit inputs {tuple(inputs.shape)}")
        phi = phi.detach().to(inputs.device)
        b = inputs.shape[0]
        size = default_batch_size(inputs) if batch_size is None else _positive_int(batch_size, "batch_size")
        gen_seed = generator(seed)[1]
        sample = torch.arange(b).repeat_interleave(n_samples)
        draw = torch.arange(n_samples).repeat(b)
        ref = phi.flatten(1).double()
        ref_norm = torch.linalg.vector_norm(ref, ord=norm, dim=1)
        ref_norm = torch.where(ref_norm > 0, ref_norm, 1.0)
        out = torch.empty(b * n_samples, dtype=torch.float64, device=inputs.device)
        with progress(b * n_samples, "sensitivity", "explanations") as bar:
            for start in range(0, b * n_samples, size):
                s = sample[start : start + size]
                u = torch.stack([
                    torch.rand(inputs.shape[1:], generator=row_generator(gen_seed, i, k), dtype=torch.float32)
                    for i, k in zip(s.tolist(), draw[start : start + size].tolist(), strict=True)
                ]).to(inputs)
                y = inputs[s.to(inputs.device)] + (2 * u - 1) * radius
                a = explain(model, y, _rows_target(t, s)).detach()
                if a.shape[1:] != phi.shape[1:]:
                    raise ValueError(
                        f"the method returns {tuple(a.shape[1:])} per image but attributions are "
                        f"{tuple(phi.shape[1:])}; pass the attributions of the same method (or attributions=None)"
                    )
                sd = s.to(inputs.device)
                diff = torch.linalg.vector_norm(a.flatten(1).double() - ref[sd], ord=norm, dim=1)
                out[start : start + len(s)] = diff / ref_norm[sd]
                bar.update(len(s))
    return out.view(b, n_samples).to(inputs.dtype)


@register_metric("max_sensitivity", family="robustness", higher_is_better=False, needs=("method",),
                 cost=lambda p: int(p.get("n_samples", 10)))
def max_sensitivity(
    model: nn.Module,
    inputs: Tensor,
    attributions: Tensor | None,
    target: TargetSpec = None,
    *,
    method: str | Method | ExplainFn,
    method_params: dict[str, Any] | None = None,
    radius: float = 0.02,
    n_samples: int = 10,
    norm: float = 2.0,
    batch_size: int | None = None,
    seed: int | None = None,
) -> Tensor:
    """Max-sensitivity (Yeh et al. 2019): SENS_MAX = max_{||y - x||_inf <= r} ||Phi(y) - Phi(x)|| / ||Phi(x)||.

    The paper's SENS_MAX is not divided by ||Phi(x)||; the relative form is Captum's, which makes methods with
    different attribution scales comparable.

    Estimated by ``n_samples`` uniform draws in the L-inf ball (Captum's defaults: r = 0.02, 10 draws; the max over
    draws underestimates the true max). Lower is better. Cost: ``n_samples`` explanations per image. See
    :func:`sensitivities` for the arguments.

    Returns:
        (B,) relative max-sensitivity.
    """
    return sensitivities(model, inputs, attributions, target, method=method, method_params=method_params,
                         radius=radius, n_samples=n_samples, norm=norm, batch_size=batch_size, seed=seed).amax(1)


@register_metric("avg_sensitivity", family="robustness", higher_is_better=False, needs=("method",),
                 cost=lambda p: int(p.get("n_samples", 10)))
def avg_sensitivity(
    model: nn.Module,
    inputs: Tensor,
    attributions: Tensor | None,
    target: TargetSpec = None,
    *,
    method: str | Method | ExplainFn,
    method_params: dict[str, Any] | None = None,
    radius: float = 0.02,
    n_samples: int = 10,
    norm: float = 2.0,
    batch_size: int | None = None,
    seed: int | None = None,
) -> Tensor:
    """Average sensitivity (Yeh et al. 2019): E_{y ~ U(B_inf(x, r))} ||Phi(y) - Phi(x)|| / ||Phi(x)||; lower is better.

    Relative to ||Phi(x)|| as in Captum (the paper's form is not divided).

    Monte Carlo over ``n_samples`` draws; see :func:`sensitivities` for the arguments.

    Returns:
        (B,) relative average sensitivity.
    """
    return sensitivities(model, inputs, attributions, target, method=method, method_params=method_params,
                         radius=radius, n_samples=n_samples, norm=norm, batch_size=batch_size, seed=seed).mean(1)
