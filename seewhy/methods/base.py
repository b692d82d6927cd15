"""The base of every method that runs the model on many rows made from each input: integrated-gradients steps,
SmoothGrad's noisy copies, occlusion windows, RISE masks, surrogate samples, Score-CAM and Ablation-CAM channels.

:class:`BatchedMethod` owns the batching, so a subclass writes only its math: ``batch_size`` is a real field (rows
per model call; ``None`` takes the engine's default, measured on the model for long runs) and results never depend
on it. Gradient rows go through :meth:`BatchedMethod.accumulate`, forward-only rows through
:meth:`BatchedMethod.evaluate_masks` (the shared :mod:`seewhy.engine`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .. import engine
from ..core import Method
from ..progress import progress
from ..targets import Target

RowBuilder = Callable[[Tensor, Tensor], Tensor]
"""``rows(sample, k) -> (n, ...)``: row r is variant ``k[r]`` of input ``sample[r]``."""
RowAttribution = Callable[[Tensor, Tensor], Tensor]
"""``attribute(rows, sample) -> (n, ...)``: attributions of the rows, scored for the targets of their samples."""


def evaluations_per_image(method: object) -> float:
    """Model evaluations one call of ``method`` costs per image (from :meth:`~seewhy.core.Method.cost`; 1 for a
    plain callable or a cost that depends on the channel count): how many copies a wrapper hands it at once."""
    cost = method.cost() if isinstance(method, Method) else None
    return max(1.0, (cost.evaluations() if cost is not None else None) or 1.0)


def copies_per_call(method: object, like: Tensor) -> int:
    """Copies of an input (perturbed) that the sensitivity metrics give one call of any ``method`` by default: the
    engine's forward budget (5 images at 3x224x224) over the method's evaluations per image, at least 1. (With
    Grad-CAM on efficientnet_lite0, 5 copies per call took 197 ms per image for max-sensitivity, 13 took 227.)"""
    return max(1, int(engine.default_batch_size(like) // evaluations_per_image(method)))


@dataclass
class BatchedMethod(Method):
    """A method evaluated on expanded inputs, ``batch_size`` rows per model call (results do not depend on it)."""

    batch_size: int | None = None

    def forward(self, model: nn.Module, inputs: Tensor) -> Tensor:
        """f(x) through the engine's fast path (inference mode, channels_last, ``batch_size`` rows at a time)."""
        return engine.forward(model, inputs, batch_size=self.batch_size)

    def chunk_size(self, like: Tensor, *, backward: bool, rows_cost: float = 1.0) -> int:
        """Rows per call: ``batch_size``, or the engine's memory-budget default, divided by ``rows_cost`` (model
        evaluations one row costs: a wrapped method that itself expands its input) and at least 1."""
        size = self.batch_size or engine.default_batch_size(like, backward=backward)
        return max(1, int(size // max(1.0, rows_cost)))

    def accumulate(
        self,
        inputs: Tensor,
        per_sample: int,
        rows: RowBuilder,
        attribute: RowAttribution,
        *,
        weights: Tensor | None = None,
        squares: bool = False,
        rows_cost: float = 1.0,
        desc: str | None = None,
        unit: str = "rows",
    ) -> tuple[Tensor, Tensor | None]:
        """Per input i, sum_k w_k a_ik with a_ik = ``attribute(rows(i, k))`` over its ``per_sample`` variants k (and
        sum_k a_ik^2 when ``squares``); ``weights`` (per_sample,) default to 1.

        The B * per_sample rows run sample-major in chunks of :meth:`chunk_size` (for gradients); every row's
        attribution is computed on its own, so the sums do not depend on the chunking. The attributions may have any
        per-row shape (pixels or layer maps)."""
        n = inputs.shape[0]
        total: Tensor | None = None
        sq: Tensor | None = None
        sample = torch.arange(n).repeat_interleave(per_sample)
        variant = torch.arange(per_sample).repeat(n)
        size = self.chunk_size(inputs, backward=True, rows_cost=rows_cost)
        with progress(n * per_sample, desc or self.name or type(self).__name__, unit) as bar:
            for sl in engine.slices(n * per_sample, size):
                s, k = sample[sl], variant[sl]
                a = attribute(rows(s, k), s)
                if weights is not None:
                    a = a * weights[k].to(a).view(-1, *[1] * (a.ndim - 1))
                if total is None:
                    total = torch.zeros((n, *a.shape[1:]), dtype=a.dtype, device=a.device)
                    sq = torch.zeros_like(total) if squares else None
                idx = s.to(a.device)
                total.index_add_(0, idx, a)
                if sq is not None:
                    sq.index_add_(0, idx, a * a)
                bar.update(len(s))
        assert total is not None  # per_sample >= 1 and n >= 1
        return total, sq

    def evaluate_masks(self, model: nn.Module, inputs: Tensor, baseline: Tensor, masks: Callable[[Tensor], Tensor],
                       sample: Tensor, targets: list[Target], score: str | list[str] = "logit") -> Tensor:
        """(T, n) scores of the rows ``inputs[s] * m + baseline[s] * (1 - m)`` (:func:`seewhy.engine.evaluate_masks`,
        ``batch_size`` rows per forward)."""
        return engine.evaluate_masks(model, inputs, baseline, masks, sample, targets, batch_size=self.batch_size,
                                     score=score, desc=self.name)
