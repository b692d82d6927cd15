"""Gradient attributions: saliency, input x gradient, integrated gradients, SmoothGrad (and its squared and
variance forms), guided backprop and deconvnet.

Every method here is a :class:`GradientMethod`: it maps a batch of rows (inputs, or expanded variants
of them) and a row target to attributions of the same shape with :meth:`GradientMethod.rows`, so that
SmoothGrad can wrap any of them, and batched expansions (IG steps, noise samples) share one code path.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from .. import engine
from ..core import Call, Cost, Method, get_method, register
from ..engine import gaussian_blur  # noqa: F401  (re-exported)
from ..hooks import rectifier_backward
from ..progress import progress
from ..targets import Target


def default_batch_size(inputs: Tensor) -> int:
    """Rows per forward+backward chunk: about 2 Mi input values (13 images at 3x224x224), at least 1.

    Larger chunks are no faster on a CPU and cost memory (27 images at 224 px took 2.9 GB on EfficientNet)."""
    return max(1, (1 << 21) // max(1, inputs[0].numel()))


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
    """A method built from input gradients; subclasses define :meth:`rows`."""

    kind: ClassVar[str] = "pixel"
    family: ClassVar[str] = "gradient"

    def rows(self, model: nn.Module, x: Tensor, target: Target) -> Tensor:
        """Attributions for a batch of rows ``x`` scored by ``target`` (already resolved for these rows)."""
        raise NotImplementedError

    def attribute(self, model: nn.Module, inputs: Tensor, call: Call) -> Tensor:
        target = call.ensure_target(model, inputs)
        return self.rows(model, inputs, target)


@register("saliency")
@dataclass
class Saliency(GradientMethod):
    """Gradient saliency (Simonyan et al. 2013, arXiv:1312.6034): A = dS_c/dx.

    Raw attributions are the signed gradient; the heatmap is max over channels of |gradient|, as in the paper.
    """

    heatmap_convention: ClassVar[dict[str, Any]] = {"reduce": "max_abs", "sign": "abs", "normalize": "percentile"}

    def rows(self, model: nn.Module, x: Tensor, target: Target) -> Tensor:
        return input_gradient(model, x, target)

    def attribute(self, model: nn.Module, inputs: Tensor, call: Call) -> Tensor:
        return input_gradient(model, inputs, call.target, call)


@register("input_x_gradient")
@dataclass
class InputXGradient(Saliency):
    """Input x gradient, the first-order Taylor term (Shrikumar et al. 2016): A = x * dS_c/dx."""

    heatmap_convention: ClassVar[dict[str, Any]] = {"reduce": "sum", "sign": "abs", "normalize": "percentile"}

    def rows(self, model: nn.Module, x: Tensor, target: Target) -> Tensor:
        return x * input_gradient(model, x, target)

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


def _chunks(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


@register("integrated_gradients")
@dataclass
class IntegratedGradients(GradientMethod):
    """Integrated gradients (Sundararajan et al. 2017, arXiv:1703.01365):
    A = (x - x') * integral_0^1 dS_c(x' + a (x - x'))/dx da, by quadrature with ``n_steps`` nodes.

    The completeness gap sum(A) - (S_c(x) - S_c(x')) is reported per sample in
    ``extras["completeness_gap"]``. ``baseline``: "zeros" | "blur" | "uniform" | number | Tensor;
    ``blur_sigma`` is in pixels; ``seed`` drives the "uniform" baseline.
    """

    n_steps: int = 50
    baseline: str | float | Tensor = "zeros"
    quadrature: str = "gausslegendre"
    batch_size: int | None = None
    blur_sigma: float = 10.0
    seed: int | None = None

    def cost(self, model: nn.Module | None = None, inputs: Tensor | None = None) -> Cost:
        """One forward of the input and the baseline, then ``n_steps`` forward+backward passes."""
        return Cost(forwards=2, backwards=self.n_steps, lower="n_steps")

    def _baseline(self, inputs: Tensor) -> Tensor:
        gen = engine.generator(self.seed)[0] if self.baseline == "uniform" else None
        return make_baseline(inputs, self.baseline, sigma=self.blur_sigma, generator=gen)

    def rows(self, model: nn.Module, x: Tensor, target: Target) -> Tensor:
        return self._integrate(model, x, self._baseline(x), target)

    def _integrate(self, model: nn.Module, x: Tensor, base: Tensor, target: Target) -> Tensor:
        alphas, weights = quadrature(self.n_steps, self.quadrature)
        n, s = x.shape[0], self.n_steps
        size = self.batch_size or default_batch_size(x)
        total = torch.zeros_like(x)
        diff = x - base
        sample = torch.arange(n).repeat_interleave(s)  # row r of the expansion is sample r // s, node r % s
        node = torch.arange(s).repeat(n)
        with progress(n * s, self.name or "integrated_gradients", "steps") as bar:
            for sl in _chunks(n * s, size):
                idx, k = sample[sl].to(x.device), node[sl]
                a = alphas[k].to(x).view(-1, 1, 1, 1)
                w = weights[k].to(x).view(-1, 1, 1, 1)
                g = input_gradient(model, base[idx] + a * diff[idx], target.select(sample[sl]))
                total.index_add_(0, idx, g * w)
                bar.update(len(idx))
        return diff * total

    def attribute(self, model: nn.Module, inputs: Tensor, call: Call) -> Tensor:
        base = self._baseline(inputs)
        with torch.no_grad():
            out = model(torch.cat([inputs, base]))
        n = inputs.shape[0]
        target = call.resolve(out[:n])
        attr = self._integrate(model, inputs, base, target)
        delta = target.score(out[:n]) - target.score(out[n:])
        call.extras["baseline_scores"] = target.score(out[n:]).detach()
        call.extras["completeness_gap"] = (attr.sum(dim=(1, 2, 3)) - delta).detach()
        return attr


@register("smoothgrad")
@dataclass
class SmoothGrad(GradientMethod):
    """SmoothGrad (Smilkov et al. 2017, arXiv:1706.03825) over any gradient method ``base``:
    A = mean_k base(x + e_k), e_k ~ N(0, (noise * (max x - min x))^2).

    ``kind="smoothgrad_sq"`` averages base(.)^2; ``kind="vargrad"`` (Adebayo et al. 2018) takes the
    variance. The same ``n_samples`` noise patterns (from ``seed``) are used for every image, scaled by
    each image's value range, so a sample's result does not depend on its batch.
    """

    base: str = "saliency"
    n_samples: int = 50
    noise: float = 0.15
    kind: str = "smoothgrad"
    seed: int | None = None
    batch_size: int | None = None
    base_params: dict | None = None

    @property
    def heatmap_convention(self) -> dict[str, Any]:  # type: ignore[override]
        conv = dict(get_method(self.base).heatmap_convention)
        if self.kind != "smoothgrad":
            conv.update(sign="positive", reduce="sum" if conv.get("reduce") != "max_abs" else "max_abs")
        return conv

    def cost(self, model: nn.Module | None = None, inputs: Tensor | None = None) -> Cost:
        """``n_samples`` calls of the base method (on noisy copies), plus one forward for the target."""
        base = self._base().cost(model, inputs)
        return Cost(forwards=1 + base.forwards * self.n_samples, backwards=base.backwards * self.n_samples,
                    lower="n_samples")

    def _base(self) -> GradientMethod:
        params = dict(self.base_params or {})
        if self.base == "smoothgrad":
            raise ValueError("smoothgrad cannot wrap itself")
        m = get_method(self.base, **params)
        if not isinstance(m, GradientMethod):
            raise ValueError(f"smoothgrad needs a gradient method as base, {self.base!r} is not one")
        if "batch_size" in m.params and m.params["batch_size"] is None:
            m.batch_size = self.batch_size  # type: ignore[attr-defined]
        return m

    def rows(self, model: nn.Module, x: Tensor, target: Target) -> Tensor:
        return self._smooth(model, x, target, engine.generator(self.seed)[0])

    def _smooth(self, model: nn.Module, x: Tensor, target: Target, gen: torch.Generator) -> Tensor:
        if self.kind not in ("smoothgrad", "smoothgrad_sq", "vargrad"):
            raise ValueError(f"unknown kind {self.kind!r}; use smoothgrad, smoothgrad_sq or vargrad")
        if self.n_samples < 1:
            raise ValueError(f"n_samples must be >= 1, got {self.n_samples}")
        base = self._base()
        noise = torch.randn((self.n_samples, *x.shape[1:]), generator=gen, dtype=torch.float64).to(x)
        sigma = self.noise * (x.amax(dim=(1, 2, 3)) - x.amin(dim=(1, 2, 3)))  # (B,)
        n, s = x.shape[0], self.n_samples
        size = self.batch_size or default_batch_size(x)
        if isinstance(base, IntegratedGradients):
            size = max(1, size // base.n_steps)
        mean = torch.zeros_like(x)
        sq = torch.zeros_like(x)
        sample = torch.arange(n).repeat_interleave(s)
        draw = torch.arange(s).repeat(n)
        with progress(n * s, f"smoothgrad({self.base})", "samples") as bar:
            for sl in _chunks(n * s, size):
                idx, k = sample[sl].to(x.device), draw[sl].to(x.device)
                rows = x[idx] + sigma[idx].view(-1, 1, 1, 1) * noise[k]
                a = base.rows(model, rows, target.select(sample[sl]))
                mean.index_add_(0, idx, a)
                sq.index_add_(0, idx, a * a)
                bar.update(len(idx))
        mean, sq = mean / s, sq / s
        if self.kind == "smoothgrad":
            return mean
        if self.kind == "smoothgrad_sq":
            return sq
        return (sq - mean * mean).clamp(min=0)

    def attribute(self, model: nn.Module, inputs: Tensor, call: Call) -> Tensor:
        target = call.ensure_target(model, inputs)
        gen, call.extras["seed"] = engine.generator(self.seed)
        return self._smooth(model, inputs, target, gen)


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

    def rows(self, model: nn.Module, x: Tensor, target: Target) -> Tensor:
        return self._gradient(model, x, target, None)

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
