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
from ..engine import generator, row_generator, slices
from ..hooks import model_state
from ..methods.base import copies_per_call
from ..methods.controls import image_seeds
from ..progress import progress
from ..targets import Target, TargetSpec
from .common import explainer, positive_int, prepare
from .registry import preset, register_metric

ExplainFn = Callable[[nn.Module, Tensor, TargetSpec], Tensor]


def _rows_target(target: Target, rows: Tensor) -> TargetSpec:
    """A target spec for a batch whose row r is a copy of sample rows[r] (:meth:`Target.take` as a spec, for any
    callable explanation function)."""
    taken = target.take(rows)
    if taken.indices is not None:
        return taken.indices
    return list(taken.per_sample) if taken.per_sample is not None else taken.fn


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
    has its own noise from ``seed`` and the image's content (not its place in the batch); ``batch_size`` perturbed
    inputs go to the method at once (default:
    :func:`~seewhy.methods.base.copies_per_call`, fewer for a method that costs more evaluations per image: any
    registered method works).
    """
    n_samples = positive_int(n_samples, "n_samples")
    if not isinstance(radius, (int, float)) or isinstance(radius, bool) or radius < 0:
        raise ValueError(f"radius must be a number >= 0 (an L-inf radius in input units), got {radius!r}")
    explain = explainer(method, method_params, seed)[0]
    with model_state(model):
        inputs, t, _ = prepare(model, inputs, target, batch_size)
        phi = explain(model, inputs, _rows_target(t, torch.arange(inputs.shape[0]))) if attributions is None \
            else attributions
        if not isinstance(phi, Tensor) or phi.shape[0] != inputs.shape[0]:
            shape = tuple(phi.shape) if isinstance(phi, Tensor) else type(phi).__name__
            raise ValueError(f"attributions of shape {shape} do not fit inputs {tuple(inputs.shape)}")
        phi = phi.detach().to(inputs.device)
        b = inputs.shape[0]
        size = copies_per_call(explain, inputs) if batch_size is None else positive_int(batch_size, "batch_size")
        gen_seed = generator(seed)[1]
        keys = image_seeds(inputs, gen_seed)  # draws keyed by image content: batch-invariant
        sample = torch.arange(b).repeat_interleave(n_samples)
        draw = torch.arange(n_samples).repeat(b)
        ref = phi.flatten(1).double()
        ref_norm = torch.linalg.vector_norm(ref, ord=norm, dim=1)
        ref_norm = torch.where(ref_norm > 0, ref_norm, 1.0)
        out = torch.empty(b * n_samples, dtype=torch.float64, device=inputs.device)
        with progress(b * n_samples, "sensitivity", "explanations") as bar:
            for sl in slices(b * n_samples, size):
                s = sample[sl]
                u = torch.stack([
                    torch.rand(inputs.shape[1:], generator=row_generator(keys[i], k), dtype=torch.float32)
                    for i, k in zip(s.tolist(), draw[sl].tolist(), strict=True)
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
                out[sl] = diff / ref_norm[sd]
                bar.update(len(s))
    return out.view(b, n_samples).to(inputs.dtype)


_MAX = ("Max-sensitivity (Yeh et al. 2019): max_{||y - x||_inf <= r} ||Phi(y) - Phi(x)|| / ||Phi(x)||, estimated over "
        "n_samples draws; lower is better.")
_AVG = ("Average sensitivity (Yeh et al. 2019): E_{y ~ U(B_inf(x, r))} ||Phi(y) - Phi(x)|| / ||Phi(x)||; lower is "
        "better.")


def _cost(params: dict[str, Any]) -> int:
    return int(params.get("n_samples", 10))


@register_metric("max_sensitivity", family="robustness", higher_is_better=False, needs=("method",), cost=_cost,
                 params={"reduce": "max"}, summary=_MAX)
@register_metric("avg_sensitivity", family="robustness", higher_is_better=False, needs=("method",), cost=_cost,
                 params={"reduce": "mean"}, summary=_AVG)
def sensitivity(model: nn.Module, inputs: Tensor, attributions: Tensor | None, target: TargetSpec = None, *,
                method: str | Method | ExplainFn, method_params: dict[str, Any] | None = None, reduce: str = "max",
                radius: float = 0.02, n_samples: int = 10, norm: float = 2.0, batch_size: int | None = None,
                seed: int | None = None) -> Tensor:
    """Max- or average sensitivity (Yeh et al. 2019): the relative explanation change under small input noise,
    SENS = reduce_k ||Phi(y_k) - Phi(x)|| / ||Phi(x)||, y_k ~ U(B_inf(x, r)); lower is better.

    ``reduce="max"``: SENS_MAX, the max over the draws (it underestimates the true max over the ball); ``"mean"``:
    the Monte Carlo average. The paper's SENS is not divided by ||Phi(x)||; the relative form is Captum's, which
    makes methods with different attribution scales comparable. Defaults are Captum's (r = 0.02, 10 draws). Cost:
    ``n_samples`` explanations per image. See :func:`sensitivities` for the arguments. Registered as
    ``max_sensitivity`` and ``avg_sensitivity``.

    Returns:
        (B,) relative sensitivity.
    """
    if reduce not in ("max", "mean"):
        raise ValueError(f"unknown reduce {reduce!r}; use 'max' or 'mean'")
    rel = sensitivities(model, inputs, attributions, target, method=method, method_params=method_params,
                        radius=radius, n_samples=n_samples, norm=norm, batch_size=batch_size, seed=seed)
    return rel.amax(1) if reduce == "max" else rel.mean(1)


max_sensitivity = preset("max_sensitivity")
avg_sensitivity = preset("avg_sensitivity")
