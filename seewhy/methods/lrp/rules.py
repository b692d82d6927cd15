"""LRP rules: what happens to the relevance at one linear layer (convolution, linear, unmerged BatchNorm).

Convention ("LRP as a modified gradient", Montavon et al. 2019, sec. 10.2.3): the signal that flows backward
through the network is ``g = R / z`` at every activation ``z``, so the relevance of a tensor ``a`` is ``a * g``.
Under this convention the *plain* gradient of any bias-free linear op (pooling, mean, padding, flatten,
residual addition) is exactly LRP-0, and the plain gradient of a ReLU passes relevance through unchanged.

A rule describes a layer's modified backward as a list of terms ``(graph, scale)``: ``graph`` is a
differentiable function of the layer input ``x`` (its value is not used) and ``scale`` a detached tensor
shaped like the output; the layer's input gradient becomes ``sum_k vjp(graph_k, g * scale_k)``. With
``scale = c * z / z'`` this gives ``R_in = x * W'^T (c R_out / z')``, the generic LRP rule.

*Input rules* (``Flat``, ``WSquare``, ``ZBox``) are only valid at the first layer: their relevance is not of
the form ``x * (...)``, so their ``graph`` is built so that the gradient at the input *is* the relevance.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

LayerFn = Callable[[Tensor, Tensor, "Tensor | None"], Tensor]


@dataclass
class Layer:
    """One call of a linear layer as the rules see it: ``z = fn(x, weight, bias)``.

    ``x`` carries the autograd graph, ``z`` is the detached output, ``z_graph`` the output with its graph to
    ``x``; ``fn`` re-runs the same operation (same stride, padding, groups) with other inputs or weights.
    """

    x: Tensor
    weight: Tensor
    bias: Tensor | None
    fn: LayerFn
    z: Tensor
    z_graph: Tensor
    elementwise: bool = False  # BatchNorm seen as y = weight * x + bias per channel


Term = tuple[Tensor, Tensor]


def safe_divide(num: Tensor, den: Tensor, epsilon: float = 0.0) -> Tensor:
    """``num / (den + epsilon * sign(den))`` with sign(0) = +1; 0 where the denominator is 0 (epsilon = 0)."""
    if epsilon:
        return num / (den + torch.copysign(den.new_tensor(epsilon), den))
    return (num / den).nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)


def _split(x: Tensor) -> tuple[Tensor, Tensor | None]:
    """(x+, x-) with x- None when x >= 0 everywhere (after a ReLU), which saves one layer evaluation."""
    if bool(x.min() >= 0):
        return x, None
    return x.clamp(min=0), x.clamp(max=0)


def positive_part(layer: Layer, bias: bool, scale: float = 1.0) -> Tensor:
    """z+ = W+ x+ + W- x- (+ b+): the sum of the positive contributions, differentiable in x; ``scale`` multiplies
    the weights (and bias), which is cheaper than multiplying the output."""
    w, b = layer.weight, layer.bias
    wp, wn = w.clamp(min=0), w.clamp(max=0)
    bp = b.clamp(min=0) if (bias and b is not None) else None
    if scale != 1.0:
        wp, wn, bp = wp * scale, wn * scale, None if bp is None else bp * scale
    pos, neg = _split(layer.x)
    out = layer.fn(pos, wp, bp)
    if neg is not None:
        out = out + layer.fn(neg, wn, None)
    return out


def negative_part(layer: Layer, plus: Tensor, bias: bool) -> Tensor:
    """z- = W- x+ + W+ x- (+ b-) as z - z+ (- b): its gradient without another layer evaluation (its value
    is exact only up to rounding: use :func:`negative_value` for a denominator)."""
    minus = layer.z_graph - plus
    if not bias and layer.bias is not None:
        minus = minus - layer.fn(torch.zeros_like(layer.x[:1]), torch.zeros_like(layer.weight), layer.bias)
    return minus


@torch.no_grad()
def negative_value(layer: Layer, bias: bool) -> Tensor:
    """The exact value of z- (zero where no contribution is negative), without a graph."""
    w, b = layer.weight, layer.bias
    pos, neg = _split(layer.x.detach())
    out = layer.fn(pos, w.clamp(max=0), b.clamp(max=0) if (bias and b is not None) else None)
    if neg is not None:
        out = out + layer.fn(neg, w.clamp(min=0), None)
    return out


class Rule:
    """Base class of the LRP rules; ``terms(layer)`` gives the modified backward (see the module docstring)."""

    input_rule: ClassVar[bool] = False

    def terms(self, layer: Layer) -> list[Term]:
        raise NotImplementedError


@dataclass
class Epsilon(Rule):
    """LRP-epsilon (Bach et al. 2015): R_i = sum_j x_i w_ij / (z_j + eps sign(z_j)) R_j; epsilon=0 is LRP-0."""

    epsilon: float = 1e-6

    def terms(self, layer: Layer) -> list[Term]:
        return [(layer.z_graph, safe_divide(layer.z, layer.z, self.epsilon))]


@dataclass
class LRP0(Epsilon):
    """LRP-0 (Bach et al. 2015): R_i = sum_j x_i w_ij / z_j R_j (relevance dropped where z_j = 0)."""

    epsilon: float = 0.0


@dataclass
class Gamma(Rule):
    """LRP-gamma (Montavon et al. 2019), sign-aware: R_i = sum_j (z_ij + gamma z_ij^s) / sum_i' (...) R_j, where
    z_ij^s are the contributions of the sign of z_j (positive ones for z_j >= 0, negative ones otherwise;
    biases likewise). For x >= 0 and z_j >= 0 this is w_ij + gamma w_ij+; |z'_j| >= |z_j|, so it cannot blow up."""

    gamma: float = 0.25
    epsilon: float = 1e-6

    def terms(self, layer: Layer) -> list[Term]:
        # with sigma = sign(z): z' = z + gamma (z+ where z > 0, z- = z - z+ where z < 0) = z + gamma min(z, 0) +
        # sigma (gamma z+), and z' = c_z z + sigma (gamma z+) with c_z = 1 + gamma (1 - sigma) / 2: two terms, the
        # second with gamma folded into the weights. The scales are s c_z = s + gamma / 2 (s - s sigma) and s sigma
        # (s = z / z'). Written with sign() and arithmetic, no boolean mask: where/masked_fill run ~10x slower on CPU.
        plus = positive_part(layer, bias=True, scale=self.gamma)
        z = layer.z
        sigma = torch.sign(z)
        zp = torch.add(z, z.clamp(max=0), alpha=self.gamma).addcmul_(sigma, plus.detach())
        s = safe_divide(z, zp, self.epsilon)
        s_sigma = s * sigma
        return [(layer.z_graph, torch.add(s, s - s_sigma, alpha=self.gamma / 2)), (plus, s_sigma)]


@dataclass
class AlphaBeta(Rule):
    """LRP-alpha-beta (Bach et al. 2015): R_i = sum_j (alpha z_ij+ / z_j+ - beta z_ij- / z_j-) R_j.

    Conservative when alpha - beta = 1. ``bias=True`` counts b+ / b- in z_j+ / z_j- (they absorb relevance).
    """

    alpha: float = 2.0
    beta: float = 1.0
    bias: bool = True

    def __post_init__(self) -> None:
        if self.alpha < 0 or self.beta < 0:
            raise ValueError(f"alpha and beta must be >= 0, got alpha={self.alpha}, beta={self.beta}")

    def terms(self, layer: Layer) -> list[Term]:
        plus = positive_part(layer, self.bias)
        out = [(plus, self.alpha * safe_divide(layer.z, plus.detach()))]
        if self.beta:
            minus = negative_part(layer, plus, self.bias)
            out.append((minus, -self.beta * safe_divide(layer.z, negative_value(layer, self.bias))))
        return out


@dataclass
class ZPlus(Rule):
    """z+-rule of deep Taylor decomposition (Montavon et al. 2017): R_i = sum_j z_ij+ / sum_i' z_i'j+ R_j,
    biases ignored; equal to alpha1-beta0 without biases."""

    def terms(self, layer: Layer) -> list[Term]:
        plus = positive_part(layer, bias=False)
        return [(plus, safe_divide(layer.z, plus.detach()))]


@dataclass
class Pass(Rule):
    """Pass-through (for element-wise layers such as an unmerged BatchNorm): R_in = R_out."""

    def terms(self, layer: Layer) -> list[Term]:
        if not layer.elementwise:
            raise ValueError("the Pass rule only applies to element-wise layers (BatchNorm), not conv/linear")
        return [(layer.x, safe_divide(layer.z, layer.x.detach()))]


@dataclass
class Flat(Rule):
    """Flat rule (Lapuschkin et al. 2019): R_i = sum_j 1 / sum_i' 1 R_j over each output's receptive field."""

    input_rule: ClassVar[bool] = True

    def terms(self, layer: Layer) -> list[Term]:
        ones = torch.ones_like(layer.weight)
        den = layer.fn(torch.ones_like(layer.x[:1].detach()), ones, None)  # the same for every sample
        return [(layer.fn(layer.x, ones, None), safe_divide(layer.z, den))]


@dataclass
class WSquare(Rule):
    """w^2-rule (Montavon et al. 2017): R_i = sum_j w_ij^2 / sum_i' w_i'j^2 R_j."""

    input_rule: ClassVar[bool] = True

    def terms(self, layer: Layer) -> list[Term]:
        w2 = layer.weight * layer.weight
        den = layer.fn(torch.ones_like(layer.x[:1].detach()), w2, None)  # the same for every sample
        return [(layer.fn(layer.x, w2, None), safe_divide(layer.z, den))]


@dataclass
class ZBox(Rule):
    """z^B (box) rule of deep Taylor decomposition (Montavon et al. 2017), for inputs in [low, high]:
    R_i = sum_j (x_i w_ij - l_i w_ij+ - h_i w_ij-) / sum_i' (...) R_j.

    ``low``/``high``: floats or tensors broadcastable to the layer input, e.g. (1,C,1,1) per channel; None:
    each sample's per-channel min / max of the layer input.
    """

    input_rule: ClassVar[bool] = True
    low: float | Tensor | None = None
    high: float | Tensor | None = None
    epsilon: float = 1e-9

    def bounds(self, x: Tensor) -> tuple[Tensor, Tensor]:
        dims = tuple(range(2, x.ndim))
        lo = x.amin(dim=dims, keepdim=True) if self.low is None else torch.as_tensor(self.low)
        hi = x.amax(dim=dims, keepdim=True) if self.high is None else torch.as_tensor(self.high)
        lo, hi = lo.to(x), hi.to(x)
        return torch.broadcast_to(lo, x.shape), torch.broadcast_to(hi, x.shape)

    def terms(self, layer: Layer) -> list[Term]:
        x, w = layer.x, layer.weight
        xd = x.detach()
        lo, hi = self.bounds(xd)
        wp, wn = w.clamp(min=0), w.clamp(max=0)
        graph = layer.fn(xd * x, w, None) - layer.fn(lo * x, wp, None) - layer.fn(hi * x, wn, None)
        # x w is the output without its bias; bounds shared by all samples need one sample's worth of work
        z = layer.z if layer.bias is None else layer.z - layer.bias.view(1, -1, *([1] * (layer.z.ndim - 2)))
        if lo.stride(0) == 0 and hi.stride(0) == 0:
            lo, hi = lo[:1], hi[:1]
        den = z - layer.fn(lo, wp, None) - layer.fn(hi, wn, None)
        return [(graph, safe_divide(layer.z, den, self.epsilon))]


RULES: dict[str, type[Rule]] = {
    "lrp0": LRP0,
    "epsilon": Epsilon,
    "gamma": Gamma,
    "alpha_beta": AlphaBeta,
    "zplus": ZPlus,
    "zbox": ZBox,
    "flat": Flat,
    "wsquare": WSquare,
    "pass": Pass,
}
