"""Gradient attributions: saliency, input x gradient, integrated gradients, SmoothGrad (and its squared and
variance forms), guided backprop and deconvnet.

Every method writes only :meth:`~seewhy.core.Method.attribute`; the expanded inputs of integrated gradients (steps)
and SmoothGrad (noisy copies) are batched by :class:`~seewhy.methods.base.BatchedMethod`. SmoothGrad wraps any
registered method, as Captum's NoiseTunnel does.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from .. import engine
from ..core import METHODS, Call, Cost, Method, get_method, register
from ..engine import gaussian_blur  # noqa: F401  (re-exported)
from ..hooks import rectifier_backward
from ..targets import Target
from .base import BatchedMethod, evaluations_per_image


def input_gradient(model: nn.Module, x: Tensor, target: Target, call: Call | None = None) -> Tensor:
    """d target.score(model(x)) / dx for a batch of rows, with a fresh leaf (``x`` is not touched).

    When ``call`` is given, ``x`` are the original inputs: a pending target is resolved from this same
    forward pass and the output is recorded (no extra forward).
    """
    leaf = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        out = model(leaf)
        if call is not None:
            target = call.resolve(out)
        score = target.score(out)
        if not score.requires_grad:
            raise RuntimeError(
                "the target score does not depend on the inputs through autograd: does the model run under "
                "torch.no_grad(), detach its output, or convert to numpy inside forward()?"
            )
        (grad,) = torch.autograd.grad(score.sum(), leaf, allow_unused=True)
    return torch.zeros_like(leaf) if grad is None else grad


@dataclass
class GradientMethod(Method):
    """A method built from input gradients."""

    kind: ClassVar[str] = "pixel"
    family: ClassVar[str] = "gradient"


@register("saliency")
@dataclass
class Saliency(GradientMethod):
    """Gradient saliency (Simonyan et al. 2013, arXiv:1312.6034): A = dS_c/dx.

    Raw attributions are the signed gradient; the heatmap is max over channels of |gradient|, as in the paper.
    """

    heatmap_convention: ClassVar[dict[str, Any]] = {"reduce": "max_abs", "sign": "abs", "normalize": "percentile"}

    def attribute(self, model: nn.Module, inputs: Tensor, call: Call) -> Tensor:
        return input_gradient(model, inputs, call.target, call)


@register("input_x_gradient")
@dataclass
class InputXGradient(Saliency):
    """Input x gradient, the first-order Taylor term (Shrikumar et al. 2016): A = x * dS_c/dx."""

    heatmap_convention: ClassVar[dict[str, Any]] = {"reduce": "sum", "sign": "abs", "normalize": "percentile"}

    def attribute(self, model: nn.Module, inputs: Tensor, call: Call) -> Tensor:
        return inputs * input_gradient(model, inputs, call.target, call)


def quadrature(n_steps: int, rule: str) -> tuple[Tensor, Tensor]:
    """Nodes ``alphas`` in [0, 1] and weights summing to 1 for integrating over [0, 1] with ``n_steps`` points."""
    if n_steps < 1:
        raise ValueError(f"n_steps must be >= 1, got {n_steps}")
    n = n_steps
    if rule == "gausslegendre":
        x, w = np.polynomial.legendre.leggauss(n)
        return torch.from_numpy((x + 1) / 2), torch.from_numpy(w / 2)
    k = torch.arange(n, dtype=torch.float64)
    if rule == "riemann_left":
        return k / n, torch.full((n,), 1.0 / n, dtype=torch.float64)
    if rule == "riemann_right":
        return (k + 1) / n, torch.full((n,), 1.0 / n, dtype=torch.float64)
    if rule == "riemann_middle":
        return (k + 0.5) / n, torch.full((n,), 1.0 / n, dtype=torch.float64)
    if rule == "riemann_trapezoid":
        if n < 2:
            raise ValueError("riemann_trapezoid needs n_steps >= 2")
        w = torch.full((n,), 1.0 / (n - 1), dtype=torch.float64)
        w[0] = w[-1] = 0.5 / (n - 1)
        return k / (n - 1), w
    raise ValueError(
        f"unknown quadrature {rule!r}; use gausslegendre, riemann_left, riemann_right, riemann_middle "
        "or riemann_trapezoid"
    )


def make_baseline(
    inputs: Tensor, baseline: str | float | Tensor, *, sigma: float, generator: torch.Generator | None
) -> Tensor:
    """The IG reference input: ``"zeros"``, ``"blur"`` (Gaussian, ``sigma`` pixels), ``"uniform"`` (noise over
    each image's value range), or anything :func:`seewhy.engine.make_baseline` takes (a number, ``"mean"``,
    a tensor broadcastable to ``inputs``)."""
    if isinstance(baseline, str) and baseline == "uniform":
        lo = inputs.amin(dim=(1, 2, 3), keepdim=True)
        hi = inputs.amax(dim=(1, 2, 3), keepdim=True)
        u = torch.rand(inputs.shape[1:], generator=generator, dtype=torch.float64).to(inputs)
        return lo + (hi - lo) * u
    try:
        return engine.make_baseline(inputs, baseline, blur_sigma=sigma)
    except ValueError as err:
        if "unknown baseline" in str(err):
            raise ValueError(
                f"unknown baseline {baseline!r}; use 'zeros', 'blur', 'uniform', 'mean', a number or a tensor"
            ) from None
        raise


@register("integrated_gradients")
@dataclass
class IntegratedGradients(GradientMethod, BatchedMethod):
    """Integrated gradients (Sundararajan et al. 2017, arXiv:1703.01365):
    A = (x - x') * integral_0^1 dS_c(x' + a (x - x'))/dx da, by quadrature with ``n_steps`` nodes.

    The completeness gap sum(A) - (S_c(x) - S_c(x')) is reported per sample in
    ``extras["completeness_gap"]``. ``baseline``: "zeros" | "blur" | "uniform" | number | Tensor;
    ``blur_sigma`` is in pixels; ``seed`` drives the "uniform" baseline; ``batch_size``: path points per
    forward+backward.
    """

    n_steps: int = 50
    baseline: str | float | Tensor = "zeros"
    quadrature: str = "gausslegendre"
    blur_sigma: float = 10.0
    seed: int | None = None

    def cost(self, model: nn.Module | None = None, inputs: Tensor | None = None) -> Cost:
        """One forward of the input and the baseline, then ``n_steps`` forward+backward passes."""
        return Cost(forwards=2, backwards=self.n_steps, lower="n_steps")

    def attribute(self, model: nn.Module, inputs: Tensor, call: Call) -> Tensor:
        gen = engine.generator(self.seed)[0] if self.baseline == "uniform" else None
        base = make_baseline(inputs, self.baseline, sigma=self.blur_sigma, generator=gen)
        with torch.no_grad():
            out = model(torch.cat([inputs, base]))
        n = inputs.shape[0]
        target = call.resolve(out[:n])
        alphas, weights = quadrature(self.n_steps, self.quadrature)
        diff = inputs - base

        def path(s: Tensor, k: Tensor) -> Tensor:
            d = s.to(inputs.device)
            return base[d] + alphas[k].to(inputs).view(-1, 1, 1, 1) * diff[d]

        total, _ = self.accumulate(inputs, self.n_steps, path,
                                   lambda rows, s: input_gradient(model, rows, target.select(s)),
                                   weights=weights, desc=self.name or "integrated_gradients", unit="steps")
        attr = diff * total
        delta = target.score(out[:n]) - target.score(out[n:])
        call.extras["baseline_scores"] = target.score(out[n:]).detach()
        call.extras["completeness_gap"] = (attr.sum(dim=(1, 2, 3)) - delta).detach()
        return attr


#: SmoothGrad's variants: the mean of the base attributions, the mean of their squares, their variance
VARIANTS = ("smoothgrad", "smoothgrad_sq", "vargrad")


@register("smoothgrad")
@dataclass
class SmoothGrad(BatchedMethod):
    """SmoothGrad (Smilkov et al. 2017, arXiv:1706.03825) over any registered method ``base``:
    A = mean_k base(x + e_k), e_k ~ N(0, (noise * (max x - min x))^2).

    ``variant="smoothgrad_sq"`` averages base(.)^2; ``variant="vargrad"`` (Adebayo et al. 2018) takes the
    variance. The base may be any method (a gradient, a CAM, a perturbation method, as Captum's NoiseTunnel wraps
    any attribution): the result has the base's kind and shape. The same ``n_samples`` noise patterns (from
    ``seed``) are used for every image, scaled by each image's value range, so a sample's result does not depend on
    its batch; ``batch_size`` counts the base's model evaluations per call (noisy copies per call: ``batch_size``
    over the base's evaluations per image).
    """

    base: str = "saliency"
    n_samples: int = 50
    noise: float = 0.15
    variant: str = "smoothgrad"
    seed: int | None = None
    base_params: dict | None = None

    family: ClassVar[str] = "gradient"

    @property
    def kind(self) -> str:  # type: ignore[override]
        """The base method's kind (pixel attributions from a gradient base, a layer map from a CAM)."""
        return METHODS[self.base].kind if self.base in METHODS else "pixel"

    @property
    def heatmap_convention(self) -> dict[str, Any]:  # type: ignore[override]
        conv = dict(get_method(self.base).heatmap_convention)
        if self.variant != "smoothgrad":
            conv.update(sign="positive", reduce="sum" if conv.get("reduce") != "max_abs" else "max_abs")
        return conv

    def cost(self, model: nn.Module | None = None, inputs: Tensor | None = None) -> Cost:
        """``n_samples`` calls of the base method (on noisy copies), plus one forward for the target."""
        base = self._base().cost(model, inputs)
        return Cost(forwards=1 + base.forwards * self.n_samples, backwards=base.backwards * self.n_samples,
                    per_channel=base.per_channel * self.n_samples, tail=base.tail, tail_fraction=base.tail_fraction,
                    lower="n_samples")

    def _base(self) -> Method:
        if self.base == "smoothgrad":
            raise ValueError("smoothgrad cannot wrap itself")
        m = get_method(self.base, **dict(self.base_params or {}))
        if isinstance(m, BatchedMethod) and m.batch_size is None:
            m.batch_size = self.batch_size
        return m

    def attribute(self, model: nn.Module, inputs: Tensor, call: Call) -> Tensor:
        if self.variant not in VARIANTS:
            raise ValueError(f"unknown variant {self.variant!r}; use {', '.join(VARIANTS)}")
        if self.n_samples < 1:
            raise ValueError(f"n_samples must be >= 1, got {self.n_samples}")
        base = self._base()
        target = call.ensure_target(model, inputs)
        gen, call.extras["seed"] = engine.generator(self.seed)
        noise = torch.randn((self.n_samples, *inputs.shape[1:]), generator=gen, dtype=torch.float64).to(inputs)
        sigma = self.noise * (inputs.amax(dim=(1, 2, 3)) - inputs.amin(dim=(1, 2, 3)))  # (B,)

        def noisy(s: Tensor, k: Tensor) -> Tensor:
            d = s.to(inputs.device)
            return inputs[d] + sigma[d].view(-1, 1, 1, 1) * noise[k.to(inputs.device)]

        def attribute(rows: Tensor, s: Tensor) -> Tensor:
            one = Call(target.take(s))
            return base.attribute(model, rows, one)

        total, sq = self.accumulate(inputs, self.n_samples, noisy, attribute, squares=self.variant != "smoothgrad",
                                    rows_cost=evaluations_per_image(base), desc=f"smoothgrad({self.base})",
                                    unit="samples")
        mean = total / self.n_samples
        if self.variant == "smoothgrad":
            return mean
        sq = sq / self.n_samples
        return sq if self.variant == "smoothgrad_sq" else (sq - mean * mean).clamp(min=0)


def _guided_rule(grad: Tensor, mask: Tensor) -> Tensor:
    return grad.clamp(min=0) * mask


def _deconv_rule(grad: Tensor, mask: Tensor) -> Tensor:
    return grad.clamp(min=0)


@dataclass
class _ModifiedReLU(GradientMethod):
    heatmap_convention: ClassVar[dict[str, Any]] = {"reduce": "max_abs", "sign": "abs", "normalize": "percentile"}
    _rule: ClassVar[Any] = None

    def _gradient(self, model: nn.Module, x: Tensor, target: Target, call: Call | None) -> Tensor:
        with rectifier_backward(type(self)._rule) as mode:
            g = input_gradient(model, x, target, call)
        if mode.count == 0:
            warnings.warn(
                f"{self.name}: the model made no ReLU/ReLU6 call that could be intercepted (TorchScript, or "
                "other activations); the result is the plain gradient",
                stacklevel=4,
            )
        return g

    def attribute(self, model: nn.Module, inputs: Tensor, call: Call) -> Tensor:
        return self._gradient(model, inputs, call.target, call)


@register("guided_backprop")
@dataclass
class GuidedBackprop(_ModifiedReLU):
    """Guided backpropagation (Springenberg et al. 2015, arXiv:1412.6806): at every ReLU,
    R_in = relu(R_out) * 1[x > 0]. Works on ``nn.ReLU(inplace=True)`` modules and on functional
    ``F.relu`` / ``F.relu6`` calls alike (intercepted with a TorchFunctionMode; no module is swapped)."""

    _rule: ClassVar[Any] = staticmethod(_guided_rule)


@register("deconvnet")
@dataclass
class Deconvnet(_ModifiedReLU):
    """Deconvnet (Zeiler & Fergus 2014, arXiv:1311.2901): at every ReLU the backward signal is rectified
    on its own, R_in = relu(R_out), ignoring the forward mask."""

    _rule: ClassVar[Any] = staticmethod(_deconv_rule)
