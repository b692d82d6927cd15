"""The fast path of the sign-splitting rules (alpha-beta, z+): the sums of the positive / negative contributions
z_j+ = sum_i (x_i w_ij)+ and z_j- in as few layer calls as possible, and the terms of their modified backward.

The plain forms these compute are the ``reference`` methods of :class:`~seewhy.methods.lrp.rules.AlphaBeta` and
:class:`~seewhy.methods.lrp.rules.ZPlus` (tested against each other in float64).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .layer import Layer, Term


def _bias_part(layer: Layer, positive: bool) -> Tensor | None:
    if layer.bias is None:
        return None
    return layer.bias.clamp(min=0) if positive else layer.bias.clamp(max=0)


def shifted(b: Tensor | None, shift: float, like: Tensor) -> Tensor | None:
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
    bp, bn = shifted(bp, epsilon, w), shifted(bn, -epsilon, w)
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
    return SignedParts(through(layer, wp, wn, bp), through(layer, wn, wp, bn))


def through(layer: Layer, w_pos: Tensor, w_neg: Tensor, bias: Tensor | None) -> Tensor:
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
