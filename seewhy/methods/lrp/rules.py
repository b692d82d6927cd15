"""LRP rules: what happens to the relevance at one linear layer (convolution, linear, unmerged BatchNorm).

Convention ("LRP as a modified gradient", Montavon et al. 2019, sec. 10.2.3): the signal that flows backward
through the network is ``g = R / z`` at every activation ``z``, so the relevance of a tensor ``a`` is ``a * g``.
Under this convention the *plain* gradient of any bias-free linear op (pooling, mean, padding, flatten,
residual addition) is exactly LRP-0, and the plain gradient of a ReLU passes relevance through unchanged.

A rule describes a layer's modified backward as a list of :class:`Term` ``(weight, coef, mult)``: given the
relevance ``R`` of the layer output, the gradient at the layer input is ``sum_k mult_k * W_k^T (R * coef_k)``,
where ``W^T`` is the transpose of the layer's linear map with weight ``W`` (a transposed convolution, ``R @ W``,
or a per-channel product). With ``coef = c / z'`` this is ``R_in = x * W'^T (c R_out / z')``, the generic LRP
rule. Rules compute their denominators once in the forward (without autograd); the backward is one transposed
layer per term, so no graph of the modified forward is kept.

*Input rules* (``Flat``, ``WSquare``, ``ZBox``) are only valid at the first layer: their relevance is not of
the form ``x * (...)``, so the gradient they give at the input *is* the relevance.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import ClassVar

import torch
from torch import Tensor

LayerFn = Callable[[Tensor, Tensor, "Tensor | None"], Tensor]


@dataclass
class Term:
    """One part of a modified backward: the input gradient gets ``mult * W^T (R * coef)`` (``weight=None``:
    the identity map; ``mult=None``: 1). ``coef`` and ``mult`` may be functions that compute them in the
    backward (then they are not kept in memory between the forward and the backward)."""

    weight: Tensor | None
    coef: Tensor | Callable[[], Tensor]
    mult: Tensor | Callable[[], Tensor] | None = None
    # W^T gives the input channels ``stacked_parts`` times along this dimension (e.g. [for x+; for x-]): the parts
    # are multiplied by ``mult`` (stacked alike) and summed
    stacked_dim: int | None = None
    stacked_parts: int = 2
    # ``coef`` holds two coefficients along this dimension, [c1; c2] (one wide layer output): R * [c1; c2]
    pair_dim: int | None = None


@dataclass
class Layer:
    """One call of a linear layer as the rules see it: ``z = fn(x, weight, bias)``, all detached.

    ``fn`` re-runs the same operation (same stride, padding, groups) with other inputs or weights;
    ``compute`` gives the output ``z`` when a rule first asks for it (a rule that evaluates the layer in parts
    anyway may set ``layer.z`` from them instead: it becomes the output the network sees);
    ``nonneg`` says whether ``x >= 0`` is known (True after a rectifier; None: look).
    """

    x: Tensor
    weight: Tensor
    bias: Tensor | None
    fn: LayerFn
    compute: Callable[[], Tensor]
    elementwise: bool = False  # BatchNorm seen as y = weight * x + bias per channel
    nonneg: bool | None = None

    @cached_property
    def z(self) -> Tensor:
        with torch.no_grad():
            return self.compute()

    def forward(self, x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
        """The layer's operation with other inputs / weights (no autograd graph)."""
        with torch.no_grad():
            return self.fn(x, weight, bias)

    def __post_init__(self) -> None:
        self._x_version = self.x._version

    def _unchanged_x(self) -> Tensor:
        if self.x._version != self._x_version:
            raise RuntimeError(
                "lrp: the model changed a layer's input in place after the layer used it; write that operation "
                "out of place to explain this model with LRP"
            )
        return self.x

    # a term's ``mult`` computed in the backward (x is kept for it anyway)
    def sign_x(self) -> Tensor:
        return torch.sign(self._unchanged_x())

    def x_positive(self) -> Tensor:
        return self._unchanged_x() > 0

    def x_negative(self) -> Tensor:
        return self._unchanged_x() < 0

    def x_signs(self) -> Tensor:
        """[x > 0, x < 0] stacked on the channel dimension (the masks of a stacked term)."""
        x = self._unchanged_x()
        return torch.cat([x > 0, x < 0], self.channel_dim)

    @property
    def channel_dim(self) -> int:
        """The input's channel dimension: last for a linear layer, 1 for a convolution."""
        return -1 if self.weight.ndim == 2 else 1

    def stacked_x(self) -> Tensor:
        """[x+, x-] on the channel dimension: one call through [W+, W-] gives W+ x+ + W- x-."""
        d, n = self.channel_dim, self.x.shape[self.channel_dim]
        out = torch.cat([self.x, self.x], d)
        out.narrow(d, 0, n).clamp_(min=0)
        out.narrow(d, n, n).clamp_(max=0)
        return out

    def dense(self) -> bool:
        """A linear layer or a convolution with groups=1 (every input channel reaches every output)."""
        return not self.elementwise and self.weight.shape[1] == self.x.shape[self.channel_dim]

    def x_nonneg(self) -> bool:
        if self.nonneg is None:
            self.nonneg = bool(self.x.min() >= 0)
        return self.nonneg

    def bias_view(self, b: Tensor) -> Tensor:
        """A per-output bias shaped to broadcast against ``z``."""
        if self.channel_dim == -1 or self.x.ndim <= 2:  # features last: broadcasts as it is
            return b
        return b.view(1, -1, *([1] * (self.x.ndim - 2)))


def safe_divide(num: Tensor, den: Tensor, epsilon: float = 0.0) -> Tensor:
    """``num / (den + epsilon * sign(den))`` with sign(0) = +1; 0 where the denominator is 0 (epsilon = 0)."""
    if epsilon:
        return num / (den + torch.copysign(den.new_tensor(epsilon), den))
    return (num / den).nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)


def stabilized_reciprocal(den: Tensor, epsilon: float = 0.0, inplace: bool = False) -> Tensor:
    """``1 / (den + epsilon * sign(den))`` with sign(0) = +1; with ``epsilon == 0``, 0 where ``den == 0`` (that
    relevance is dropped). ``inplace`` (epsilon 0 only) overwrites ``den``, a temporary, instead of allocating."""
    if epsilon:
        return den.abs().add_(epsilon).reciprocal_().copysign_(den)
    out = den.reciprocal_() if inplace else torch.reciprocal(den)
    return out.nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)


def _bias_part(layer: Layer, positive: bool) -> Tensor | None:
    if layer.bias is None:
        return None
    return layer.bias.clamp(min=0) if positive else layer.bias.clamp(max=0)


def finite_stabilizer(epsilon: float, dtype: torch.dtype) -> bool:
    """Whether ``epsilon`` keeps ``1 / (z+ + epsilon)`` (z+ >= 0) and its products with relevances finite in
    ``dtype`` (then no guard against 1 / 0 is needed)."""
    return epsilon >= torch.finfo(dtype).max ** -0.5


def _shifted(b: Tensor | None, shift: float, like: Tensor) -> Tensor | None:
    """``b + shift`` (a bias of ``shift`` where there is none; ``b`` itself for shift 0), per output of ``like``."""
    if not shift:
        return b
    return like.new_full(like.shape[:1], shift) if b is None else b + shift


@dataclass
class SignedParts:
    """Exact z+ + eps and z- - eps (see :func:`signed_parts`); for a dense layer also the wide call that gave
    them: its output ``wide`` = [z+; z-] on the channel dimension (z+, z- are views of it) and its weight."""

    zp: Tensor
    zn: Tensor
    wide: Tensor | None = None
    wide_weight: Tensor | None = None


def signed_parts(layer: Layer, bias: bool, epsilon: float = 0.0) -> SignedParts:
    """The sums of the positive / negative contributions ``x_i w_ij`` (+ b+ / b- with ``bias``), stabilized
    through the bias of the call that computes them (no pass over the outputs of its own). A dense layer takes
    one wide call: x through [W+; W-] for x >= 0, else [x+, x-] through [[W+, W-], [W-, W+]]."""
    w, x = layer.weight, layer.x
    wp, wn = w.clamp(min=0), w.clamp(max=0)
    bp, bn = (_bias_part(layer, True), _bias_part(layer, False)) if bias else (None, None)
    bp, bn = _shifted(bp, epsilon, w), _shifted(bn, -epsilon, w)
    if layer.dense():
        both = None if bp is None or bn is None else torch.cat([bp, bn])
        if layer.x_nonneg():
            weight, inputs = torch.cat([wp, wn]), x
        else:  # (bigger, more efficient matrix products than four calls)
            top = torch.cat([wp, wn], 1)
            weight, inputs = torch.cat([top, top.roll(w.shape[1], 1)]), layer.stacked_x()
        wide = layer.forward(inputs, weight, both)
        zp, zn = wide.split(w.shape[0], layer.channel_dim)
        return SignedParts(zp, zn, wide, weight)
    return SignedParts(_through(layer, wp, wn, bp), _through(layer, wn, wp, bn))


def _through(layer: Layer, w_pos: Tensor, w_neg: Tensor, bias: Tensor | None) -> Tensor:
    """``w_pos x+ + w_neg x- + bias``: x through ``w_pos`` for x >= 0; for signed x one call through the stacked
    input [x+, x-] on a dense layer, else two calls."""
    x = layer.x
    if layer.x_nonneg():
        return layer.forward(x, w_pos, bias)
    if layer.dense():
        return layer.forward(layer.stacked_x(), torch.cat([w_pos, w_neg], 1), bias)
    return layer.forward(x.clamp(min=0), w_pos, bias).add_(layer.forward(x.clamp(max=0), w_neg, None))


def positive_terms(layer: Layer, coef_plus: Tensor, coef_minus: Tensor | None = None, alpha: float = 1.0,
                   beta: float = 0.0) -> list[Term]:
    """Terms for ``alpha R * coef_plus`` through z+ minus ``beta R * coef_minus`` through z- (the sums of positive /
    negative contributions): dz+/dx is W+ where x > 0 and W- where x < 0, dz-/dx the other way round. Two
    transposed layers for x >= 0, four for signed x, each masked by the sign of x. (Written with W and |W| it
    would take two, but their sums cancel where a denominator is tiny and its coefficient huge.)"""
    w = layer.weight
    wp, wn = w.clamp(min=0), w.clamp(max=0)
    coefs = [coef_plus] if coef_minus is None else [coef_plus, coef_minus]
    coefs = [c if c.is_contiguous() or c.is_contiguous(memory_format=torch.channels_last)
             else torch.empty_like(layer.z).copy_(c) for c in coefs]  # halves of one wide output: made dense
    terms = [Term(wp * alpha, coefs[0])] + ([Term(wn * -beta, coefs[1])] if coef_minus is not None else [])
    if layer.x_nonneg():
        return terms
    if layer.dense():  # through the stacked input [x+, x-]: [W+, W-] and [W-, W+], two transposed layers
        dim = layer.channel_dim
        stacked = [Term(torch.cat([wp, wn], 1) * alpha, coefs[0], layer.x_signs, stacked_dim=dim)]
        if coef_minus is not None:
            stacked.append(Term(torch.cat([wn, wp], 1) * -beta, coefs[1], layer.x_signs, stacked_dim=dim))
        return stacked
    swapped = [Term(wn * alpha, coefs[0], layer.x_negative)]
    if coef_minus is not None:
        swapped.append(Term(wp * -beta, coefs[1], layer.x_negative))
    return [Term(t.weight, t.coef, layer.x_positive) for t in terms] + swapped


def wide_terms(layer: Layer, parts: SignedParts, alpha: float, beta: float) -> list[Term]:
    """``positive_terms`` for a dense layer whose coefficients [c+; c-] are ``parts.wide`` (the output of the wide
    call of :func:`signed_parts`, turned into coefficients in place): one transposed layer through the same wide
    weight, its rows scaled by alpha and -beta ([W+; W-] for x >= 0; for signed x, [[W+, W-], [W-, W+]] gives
    [for x+; for x-], masked by sign)."""
    weight, wide_coef = parts.wide_weight, parts.wide
    assert weight is not None and wide_coef is not None
    n = layer.weight.shape[0]
    scale = weight.new_tensor([alpha, -beta]).repeat_interleave(n).view(-1, *([1] * (weight.ndim - 1)))
    pair = layer.channel_dim % wide_coef.ndim
    if layer.x_nonneg():
        return [Term(weight.mul_(scale), wide_coef, pair_dim=pair)]
    return [Term(weight.mul_(scale), wide_coef, layer.x_signs, stacked_dim=layer.channel_dim, pair_dim=pair)]


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

    def terms(self, layer: Layer) -> list[Term]:
        w = layer.weight
        zp = _through(layer, w.clamp(min=0), w.clamp(max=0), _shifted(None, self.epsilon, w))
        fast = finite_stabilizer(self.epsilon, zp.dtype)
        return positive_terms(layer, zp.reciprocal_() if fast else stabilized_reciprocal(zp, inplace=True))


@dataclass
class Pass(Rule):
    """Pass-through (for element-wise layers such as an unmerged BatchNorm): R_in = R_out."""

    def terms(self, layer: Layer) -> list[Term]:
        if not layer.elementwise:
            raise ValueError("the Pass rule only applies to element-wise layers (BatchNorm), not conv/linear")
        return [Term(None, stabilized_reciprocal(layer.x))]


@dataclass
class Flat(Rule):
    """Flat rule (Lapuschkin et al. 2019): R_i = sum_j 1 / sum_i' 1 R_j over each output's receptive field."""

    input_rule: ClassVar[bool] = True

    def terms(self, layer: Layer) -> list[Term]:
        ones = torch.ones_like(layer.weight)
        den = layer.forward(torch.ones_like(layer.x[:1]), ones)  # the same for every sample
        return [Term(ones, stabilized_reciprocal(den))]


@dataclass
class WSquare(Rule):
    """w^2-rule (Montavon et al. 2017): R_i = sum_j w_ij^2 / sum_i' w_i'j^2 R_j."""

    input_rule: ClassVar[bool] = True

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
