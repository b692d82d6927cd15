"""What an LRP rule sees and returns: one call of a linear layer (:class:`Layer`) and the parts of its modified
backward (:class:`Term`), with the stabilized divisions the rules share.

Convention ("LRP as a modified gradient", Montavon et al. 2019, sec. 10.2.3): the backward signal is ``g = R / z``
at every activation ``z``; a rule's terms give the gradient at the layer input, ``sum_k mult_k * W_k^T (R * coef_k)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

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


def finite_stabilizer(epsilon: float, dtype: torch.dtype) -> bool:
    """Whether ``epsilon`` keeps ``1 / (z+ + epsilon)`` (z+ >= 0) and its products with relevances finite in
    ``dtype`` (then no guard against 1 / 0 is needed)."""
    return epsilon >= torch.finfo(dtype).max ** -0.5
