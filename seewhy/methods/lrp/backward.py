"""The modified backward of one LRP layer call: a rule's terms applied to the output relevance through transposed
layers (``R -> sum_k mult_k * W_k^T (R * coef_k)``, see :mod:`seewhy.methods.lrp.rules`), and the transposed layers
themselves (a transposed convolution, ``R @ W``, or autograd's input gradient for unusual convolutions)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .layer import Term

TRANSPOSED = {F.conv1d: F.conv_transpose1d, F.conv2d: F.conv_transpose2d, F.conv3d: F.conv_transpose3d}
Transpose = Callable[[Tensor, Tensor], Tensor]


class Node:
    """The modified backward of one layer call: ``R -> sum_k mult_k * W_k^T (R * coef_k)`` (a rule's terms)."""

    __slots__ = ("terms", "transpose")

    def __init__(self, terms: list[Term], transpose: Transpose | None) -> None:  # None: identity terms only
        self.terms, self.transpose = terms, transpose

    def backward(self, r: Tensor) -> Tensor:
        # R * coef once per coefficient: a coefficient computed now is a temporary and takes the product in
        # place; so does r (the caller's temporary) for the last stored coefficient
        # (a wide coefficient [c1; c2] is used by one term only: it takes R * [c1; c2] in place)
        products: dict[int, Tensor] = {}
        for term in self.terms:
            if term.pair_dim is not None:
                d, c = term.pair_dim, term.coef
                assert isinstance(c, Tensor)
                products[_key(term)] = c.unflatten(d, (2, -1)).mul_(r.unsqueeze(d)).flatten(d, d + 1)
            elif callable(term.coef):
                c = term.coef()
                products[_key(term)] = c.mul_(r) if c.shape == torch.broadcast_shapes(r.shape, c.shape) else r * c
        stored = list({_key(t): t.coef for t in self.terms if _key(t) not in products}.items())
        for k, (key, c) in enumerate(stored):
            in_place = k == len(stored) - 1 and r.shape == torch.broadcast_shapes(r.shape, c.shape)
            products[key] = r.mul_(c) if in_place else r * c
        out: Tensor | None = None
        stacked: Tensor | None = None  # stacked terms (they share mult, dim, parts): summed, masked and folded once
        for term in self.terms:
            a = products[_key(term)]
            if term.weight is None or self.transpose is None:
                g = a if len(self.terms) == 1 else a.clone()
            else:
                g = self.transpose(a, term.weight)
            if term.stacked_dim is None:
                out = _add(out, _times(g, term.mult))
                continue
            stacked = _add(stacked, g)
            mult, dim, parts = term.mult, term.stacked_dim, term.stacked_parts
        if stacked is not None:
            chunks = _times(stacked, mult).chunk(parts, dim)
            folded = chunks[0] + chunks[1]
            for chunk in chunks[2:]:
                folded.add_(chunk)
            out = _add(out, folded)
        assert out is not None
        return out


def _key(term: Term) -> int:
    """Which product R * coef a term uses: its own (computed or wide coefficient) or its stored coefficient's,
    shared with the other terms that have the same one."""
    return id(term) if callable(term.coef) or term.pair_dim is not None else id(term.coef)


def _times(g: Tensor, mult: Tensor | Callable[[], Tensor] | None) -> Tensor:
    if mult is None:
        return g
    m = mult() if callable(mult) else mult
    return g.mul_(m) if g.shape == torch.broadcast_shapes(g.shape, m.shape) else g * m


def _add(out: Tensor | None, g: Tensor) -> Tensor:
    return g if out is None else out.add_(g)


def conv_transpose(func: Any, x: Tensor, z: Tensor, w: Tensor, stride: Any, padding: Any, dilation: Any,
                    groups: int) -> Transpose | None:
    """The input gradient of a convolution as a transposed convolution (it needs no input tensor; on CPU it ran
    as fast as the generic convolution backward or faster in our measurements), or None where it cannot be
    written so (asymmetric "same" padding, unbatched inputs)."""
    n = w.ndim - 2
    if x.ndim != w.ndim or z.ndim != w.ndim:
        return None

    def tup(v: Any) -> tuple[int, ...]:
        return (int(v),) * n if isinstance(v, int) else tuple(int(i) for i in v)

    s, d, k = tup(stride), tup(dilation), tuple(w.shape[2:])
    if isinstance(padding, str):
        total = [d[i] * (k[i] - 1) for i in range(n)]
        if padding == "valid":
            p = (0,) * n
        elif padding == "same" and all(t % 2 == 0 for t in total):
            p = tuple(t // 2 for t in total)
        else:
            return None
    else:
        p = tup(padding)
    op = tuple(x.shape[2 + i] - ((z.shape[2 + i] - 1) * s[i] - 2 * p[i] + d[i] * (k[i] - 1) + 1) for i in range(n))
    if any(not 0 <= op[i] < max(s[i], d[i]) for i in range(n)):
        return None
    transposed = TRANSPOSED[func]

    def transpose(a: Tensor, weight: Tensor) -> Tensor:
        return transposed(a, weight, None, s, p, op, groups, d)

    return transpose


def vjp_transpose(fn: Any, x: Tensor, in_channels: int) -> Transpose:
    """The input gradient of ``fn(x, W)`` by autograd (the fallback for unusual convolution arguments); a weight
    with k times ``in_channels`` per group takes k stacked copies of the input (a stacked term)."""
    def transpose(a: Tensor, weight: Tensor) -> Tensor:
        k = weight.shape[1] // in_channels
        with torch.enable_grad():
            leaf = torch.zeros_like(x if k == 1 else torch.cat([x] * k, 1)).requires_grad_(True)
            return torch.autograd.grad(fn(leaf, weight, None), leaf, a)[0]

    return transpose
