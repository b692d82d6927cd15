"""LRP rules: what happens to the relevance at one linear layer (convolution, linear, unmerged BatchNorm).

Every rule is written twice, next to each other: ``reference(layer, R)`` is the rule as its paper writes it,
R_i = sum_j z'_ij / sum_i' z'_i'j R_j computed with plain autograd (the modified gradient x * dz'/dx^T (R / z'),
float64-tested against explicit matrices), and ``terms(layer)`` is the fast form the ``lrp`` method runs.

Convention ("LRP as a modified gradient", Montavon et al. 2019, sec. 10.2.3): the signal that flows backward
through the network is ``g = R / z`` at every activation ``z``, so the relevance of a tensor ``a`` is ``a * g``.
Under this convention the *plain* gradient of any bias-free linear op (pooling, mean, padding, flatten,
residual addition) is exactly LRP-0, and the plain gradient of a ReLU passes relevance through unchanged.

The fast form is a list of :class:`Term` ``(weight, coef, mult)``: given the relevance ``R`` of the layer output,
the gradient at the layer input is ``sum_k mult_k * W_k^T (R * coef_k)``, where ``W^T`` is the transpose of the
layer's linear map (a transposed convolution, ``R @ W``, or a per-channel product). With ``coef = c / z'`` this is
``R_in = x * W'^T (c R_out / z')``. Rules compute their denominators once in the forward (without autograd); the
backward is one transposed layer per term, so no graph of the modified forward is kept.

*Input rules* (``Flat``, ``WSquare``, ``ZBox``) are only valid at the first layer: their relevance is not of
the form ``x * (...)``, so the gradient they give at the input *is* the relevance.

A new rule is a small class: subclass :class:`ModifierRule` and name its modifiers (``weight``, ``bias``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from .layer import Layer, LayerFn, Term, finite_stabilizer, safe_divide, stabilized_reciprocal
from .signed import positive_terms, shifted, signed_parts, through, wide_terms

__all__ = [
    "LRP0", "RULES", "AlphaBeta", "Epsilon", "Flat", "Gamma", "Layer", "LayerFn", "ModifierRule", "Pass", "Rule",
    "Term", "WSquare", "ZBox", "ZPlus", "modified_gradient", "safe_divide", "stabilized_reciprocal",
]


def modified_gradient(z: Callable[..., Tensor], relevance: Tensor, *inputs: Tensor, epsilon: float = 0.0) -> Tensor:
    """The textbook LRP step for a layer ``z'(inputs)`` linear in its inputs: R_i = sum_j z'_ij / (z'_j + eps
    sign(z'_j)) R_j, computed as sum over inputs a of a * dz'/da^T (R / z') with autograd (0 where z'_j = 0)."""
    with torch.enable_grad():
        leaves = [a.detach().clone().requires_grad_(True) for a in inputs]
        out = z(*leaves)
        grads = torch.autograd.grad(out, leaves, safe_divide(relevance, out.detach(), epsilon))
    total = inputs[0] * grads[0]
    for a, g in zip(inputs[1:], grads[1:], strict=True):
        total = total + a * g
    return total


def _contributions(layer: Layer, x: Tensor, positive: bool, bias: bool) -> Tensor:
    """z_j+ = sum_i (x_i w_ij)+ (+ b_j+) for ``positive``, else z_j- = sum_i (x_i w_ij)- (+ b_j-), by autograd-able
    layer calls: the positive contributions are x+ through W+ and x- through W-."""
    w, b = layer.weight, layer.bias
    wp, wn = w.clamp(min=0), w.clamp(max=0)
    b = None if b is None or not bias else (b.clamp(min=0) if positive else b.clamp(max=0))
    first, second = (wp, wn) if positive else (wn, wp)
    return layer.fn(x.clamp(min=0), first, b) + layer.fn(x.clamp(max=0), second, None)


class Rule:
    """Base class of the LRP rules: ``reference(layer, R)`` gives the relevance at the layer input the textbook way,
    ``terms(layer)`` the fast modified backward (see the module docstring)."""

    input_rule: ClassVar[bool] = False

    def reference(self, layer: Layer, relevance: Tensor) -> Tensor:
        raise NotImplementedError

    def terms(self, layer: Layer) -> list[Term]:
        raise NotImplementedError


class ModifierRule(Rule):
    """A rule from named modifiers (the generic LRP rule, Montavon et al. 2019, eq. 10.7):
    R_i = sum_j x_i w'_ij / (z'_j + eps sign(z'_j)) R_j with w' = ``weight(w)``, b' = ``bias(b)``,
    z'_j = sum_i x_i w'_ij + b'_j. Override ``weight`` / ``bias`` (identity by default); ``epsilon`` stabilizes."""

    epsilon: float = 0.0

    def weight(self, w: Tensor) -> Tensor:
        return w

    def bias(self, b: Tensor) -> Tensor:
        return b

    def _modified(self, layer: Layer) -> tuple[Tensor, Tensor | None]:
        return self.weight(layer.weight), None if layer.bias is None else self.bias(layer.bias)

    def reference(self, layer: Layer, relevance: Tensor) -> Tensor:
        w, b = self._modified(layer)
        return modified_gradient(lambda x: layer.fn(x, w, b), relevance, layer.x, epsilon=self.epsilon)

    def terms(self, layer: Layer) -> list[Term]:
        w, b = self._modified(layer)
        return [Term(w, stabilized_reciprocal(layer.forward(layer.x, w, b), self.epsilon))]


@dataclass
class Epsilon(Rule):
    """LRP-epsilon (Bach et al. 2015): R_i = sum_j x_i w_ij / (z_j + eps sign(z_j)) R_j; epsilon=0 is LRP-0."""

    epsilon: float = 1e-6

    def reference(self, layer: Layer, relevance: Tensor) -> Tensor:
        w, b = layer.weight, layer.bias
        return modified_gradient(lambda x: layer.fn(x, w, b), relevance, layer.x, epsilon=self.epsilon)

    def terms(self, layer: Layer) -> list[Term]:
        return [Term(layer.weight, stabilized_reciprocal(layer.z, self.epsilon))]


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

    def reference(self, layer: Layer, relevance: Tensor) -> Tensor:
        w, b, g = layer.weight, layer.bias, self.gamma
        up = layer.z >= 0  # which contributions gamma favours, per output

        def z(x: Tensor) -> Tensor:
            favoured = torch.where(up, _contributions(layer, x, True, True), _contributions(layer, x, False, True))
            return layer.fn(x, w, b) + g * favoured

        return modified_gradient(z, relevance, layer.x, epsilon=self.epsilon)

    def terms(self, layer: Layer) -> list[Term]:
        # With sigma = sign(z): z' = z + gamma z+ (z > 0) or z + gamma z- = (1 + gamma) z - gamma z+ (z < 0), so
        # |z'| = (1 + gamma/2) |z| - gamma/2 z + gamma z+, and with z+ = (|W| |x| + W x) / 2 + b+ (the positive
        # contributions; for x >= 0 also W+ x + b+) the W x terms cancel:
        #     |z'| + eps = (gamma/2) |W| |x| + (gamma b+ - gamma/2 b + eps) + (1 + gamma/2) |z|,
        # one more layer evaluation (|x| through (gamma/2) |W| with that bias) and one pass adding (1 + gamma/2) |z|
        # (z * sign(z)). The backward, W^T ((1 + gamma [z<0]) R / z') + gamma dz+/dx^T (R / |z'|) with
        # dz+/dx = (W + sign(x) |W|) / 2, is (1 + gamma/2) W^T (R r) + gamma/2 sign(x) |W|^T (R |r|) with
        # r = 1 / z' = sign(z) / (|z'| + eps): one tensor kept per layer (without biases |z'| >= gamma/2 sum_i
        # |x_i w_ij|, so the two sums cannot cancel catastrophically). In-place arithmetic, no boolean mask
        # (where/masked_fill run ~10x slower on CPU, and every fresh buffer costs page faults).
        w, z, g = layer.weight, layer.z, self.gamma
        nonneg = layer.x_nonneg()
        bias = None
        if layer.bias is not None or self.epsilon:
            b = layer.bias if layer.bias is not None else w.new_zeros(w.shape[0])
            bias = (b.clamp(min=0) * g).add_(b, alpha=-g / 2).add_(self.epsilon)
        den = layer.forward(layer.x if nonneg else layer.x.abs(), w.abs().mul_(g / 2), bias)
        r = torch.sign(z)
        den.addcmul_(z, r, value=1 + g / 2)  # |z'| + eps
        r.div_(den)  # 1 / (z' + eps sign(z')), 0 where z = 0
        if not self.epsilon:
            r.nan_to_num_(nan=0.0)
        del den
        # x >= 0: sign(x) is 1 wherever the relevance x * gradient is not 0 anyway
        return [Term(w.abs().mul_(g / 2), lambda: torch.abs(r), None if nonneg else layer.sign_x),
                Term(w * (1 + g / 2), r)]


@dataclass
class AlphaBeta(Rule):
    """LRP-alpha-beta (Bach et al. 2015): R_i = sum_j (alpha z_ij+ / (z_j+ + eps) - beta z_ij- / (z_j- - eps)) R_j.

    Conservative when alpha - beta = 1 (up to the stabilizer ``epsilon``, as in Zennit; 0: exact, relevance
    dropped where z_j+ or z_j- is 0). ``bias=True`` counts b+ / b- in z_j+ / z_j- (they absorb relevance).
    The layer's output in this pass is z+ + z- (its value up to rounding), which saves one evaluation.
    """

    alpha: float = 2.0
    beta: float = 1.0
    bias: bool = True
    epsilon: float = 1e-6

    def __post_init__(self) -> None:
        if self.alpha < 0 or self.beta < 0 or self.epsilon < 0:
            raise ValueError(f"alpha, beta and epsilon must be >= 0, got alpha={self.alpha}, beta={self.beta}, "
                             f"epsilon={self.epsilon}")

    def reference(self, layer: Layer, relevance: Tensor) -> Tensor:
        eps, x = self.epsilon, layer.x
        plus = modified_gradient(lambda a: _contributions(layer, a, True, self.bias) + eps, relevance, x)
        minus = modified_gradient(lambda a: _contributions(layer, a, False, self.bias) - eps, relevance, x)
        return self.alpha * plus - self.beta * minus

    def terms(self, layer: Layer) -> list[Term]:
        # exact values (either may be ~0, where rounding would matter), stabilized away from 0 by epsilon
        parts = signed_parts(layer, self.bias, self.epsilon)
        zp, zn, wide = parts.zp, parts.zn, parts.wide
        # the output from its parts (equal up to rounding): one layer evaluation fewer
        layer.z = zp + zn if self.bias or layer.bias is None else zp + zn + layer.bias_view(layer.bias)
        fast = finite_stabilizer(self.epsilon, zp.dtype)  # |z+-| >= epsilon: 1 / z+- needs no guard
        if wide is not None and self.beta:
            wide.reciprocal_() if fast else stabilized_reciprocal(wide, inplace=True)
            return wide_terms(layer, parts, self.alpha, self.beta)
        cp = zp.reciprocal_() if fast else stabilized_reciprocal(zp, inplace=True)
        cn = None
        if self.beta:
            cn = zn.reciprocal_() if fast else stabilized_reciprocal(zn, inplace=True)
        return positive_terms(layer, cp, cn, self.alpha, self.beta)


@dataclass
class ZPlus(Rule):
    """z+-rule of deep Taylor decomposition (Montavon et al. 2017): R_i = sum_j z_ij+ / (sum_i' z_i'j+ + eps) R_j,
    biases ignored; equal to alpha1-beta0 without biases (``epsilon``: the stabilizer, as in Zennit)."""

    epsilon: float = 1e-6

    def reference(self, layer: Layer, relevance: Tensor) -> Tensor:
        return modified_gradient(lambda x: _contributions(layer, x, True, False) + self.epsilon, relevance, layer.x)

    def terms(self, layer: Layer) -> list[Term]:
        w = layer.weight
        zp = through(layer, w.clamp(min=0), w.clamp(max=0), shifted(None, self.epsilon, w))
        fast = finite_stabilizer(self.epsilon, zp.dtype)
        return positive_terms(layer, zp.reciprocal_() if fast else stabilized_reciprocal(zp, inplace=True))


@dataclass
class Pass(Rule):
    """Pass-through (for element-wise layers such as an unmerged BatchNorm): R_in = R_out."""

    def reference(self, layer: Layer, relevance: Tensor) -> Tensor:
        return relevance

    def terms(self, layer: Layer) -> list[Term]:
        if not layer.elementwise:
            raise ValueError("the Pass rule only applies to element-wise layers (BatchNorm), not conv/linear")
        return [Term(None, stabilized_reciprocal(layer.x))]


@dataclass
class Flat(Rule):
    """Flat rule (Lapuschkin et al. 2019): R_i = sum_j 1 / sum_i' 1 R_j over each output's receptive field."""

    input_rule: ClassVar[bool] = True

    def reference(self, layer: Layer, relevance: Tensor) -> Tensor:
        ones = torch.ones_like(layer.weight)
        return modified_gradient(lambda a: layer.fn(a, ones, None), relevance, torch.ones_like(layer.x))

    def terms(self, layer: Layer) -> list[Term]:
        ones = torch.ones_like(layer.weight)
        den = layer.forward(torch.ones_like(layer.x[:1]), ones)  # the same for every sample
        return [Term(ones, stabilized_reciprocal(den))]


@dataclass
class WSquare(Rule):
    """w^2-rule (Montavon et al. 2017): R_i = sum_j w_ij^2 / sum_i' w_i'j^2 R_j."""

    input_rule: ClassVar[bool] = True

    def reference(self, layer: Layer, relevance: Tensor) -> Tensor:
        w2 = layer.weight * layer.weight
        return modified_gradient(lambda a: layer.fn(a, w2, None), relevance, torch.ones_like(layer.x))

    def terms(self, layer: Layer) -> list[Term]:
        w2 = layer.weight * layer.weight
        den = layer.forward(torch.ones_like(layer.x[:1]), w2)  # the same for every sample
        return [Term(w2, stabilized_reciprocal(den))]


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

    def reference(self, layer: Layer, relevance: Tensor) -> Tensor:
        w = layer.weight
        wp, wn = w.clamp(min=0), w.clamp(max=0)

        def z(x: Tensor, lo: Tensor, hi: Tensor) -> Tensor:  # z_ij = x_i w_ij - l_i w_ij+ - h_i w_ij-, summed over i
            return layer.fn(x, w, None) - layer.fn(lo, wp, None) - layer.fn(hi, wn, None)

        return modified_gradient(z, relevance, layer.x, *self.bounds(layer.x), epsilon=self.epsilon)

    def terms(self, layer: Layer) -> list[Term]:
        x, w = layer.x, layer.weight
        lo, hi = self.bounds(x)
        wp, wn = w.clamp(min=0), w.clamp(max=0)
        # x w is the output without its bias; bounds shared by all samples need one sample's worth of work
        z = layer.z if layer.bias is None else layer.z - layer.bias_view(layer.bias)
        if lo.stride(0) == 0 and hi.stride(0) == 0:
            lo, hi = lo[:1], hi[:1]
        den = z - layer.forward(lo, wp) - layer.forward(hi, wn)
        c = stabilized_reciprocal(den, self.epsilon)
        d = layer.channel_dim

        def mult() -> Tensor:  # [x, -l, -h]: the three parts' factors, stacked like the weights
            return torch.cat([x, -lo.expand_as(x), -hi.expand_as(x)], d)

        if not layer.dense():  # a grouped layer would interleave the stacked parts per group
            return [Term(w, c, x), Term(wp, c, -lo), Term(wn, c, -hi)]
        # one transposed layer through [W, W+, W-] (stacked on the input channels) instead of three
        return [Term(torch.cat([w, wp, wn], 1), c, mult, stacked_dim=d, stacked_parts=3)]


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
