"""The ``lrp`` method: layer-wise relevance propagation as a modified gradient, with a relevance ledger.

The pieces: rules (:mod:`.rules`, what happens at a layer), composites (:mod:`.composites`, which rule where),
canonizers (:mod:`.canonizers`, reversible model rewrites) and the mode that applies them to one forward
(:mod:`.mode`). Per-model defaults (composite, BatchNorm merging, input range) come from the zoo's
:class:`~seewhy.zoo.ModelSpec`; this module knows no model by name.
"""

from __future__ import annotations

import warnings
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ...core import Call, Explanation, register
from ...runner import Table
from ...targets import Target
from ..gradient import GradientMethod
from .canonizers import Canonized, Canonizer, applied, resolve_canonizers
from .composites import Composite, get_composite
from .layer import safe_divide
from .mode import _LRPMode, canonized
from .rules import Epsilon, Pass

__all__ = ["DEFAULT_COMPOSITE", "LRP", "canonized", "input_bounds", "ledger_table", "model_defaults"]

DEFAULT_COMPOSITE = "epsilon_plus_flat"

# models whose forward needs the standard memory layout (found on a first try in channels_last)
_STANDARD_LAYOUT: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _zoo_spec(model: nn.Module) -> Any:
    from ...zoo import spec_of  # (the zoo loads images and weights helpers: imported when first needed)

    return spec_of(model)


def model_defaults(model: nn.Module) -> tuple[str, bool]:
    """(composite, merge BatchNorms) that ``composite="auto"`` / ``canonizers="auto"`` use for ``model``: its zoo
    spec's ``lrp_composite`` / ``lrp_merge_batchnorm`` (a zoo architecture, by class), else (``DEFAULT_COMPOSITE``,
    True)."""
    spec = _zoo_spec(model)
    if spec is None:
        return DEFAULT_COMPOSITE, True
    return spec.lrp_composite or DEFAULT_COMPOSITE, spec.lrp_merge_batchnorm


def input_bounds(model: nn.Module, x: Tensor, low: float | Tensor | None = None,
                 high: float | Tensor | None = None) -> tuple[Tensor | float, Tensor | float]:
    """The box [low, high] of the inputs for the z^B rule.

    Given values win; for a zoo model the range of its normalised inputs, (0 - mean) / std and
    (1 - mean) / std per channel; otherwise each sample's per-channel min / max of ``x``.
    """
    if low is not None and high is not None:
        return low, high
    spec = _zoo_spec(model)
    if spec is not None:
        mean = torch.tensor(spec.mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(spec.std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        lo, hi = (0 - mean) / std, (1 - mean) / std
    else:
        dims = tuple(range(2, x.ndim))
        lo, hi = x.amin(dim=dims, keepdim=True), x.amax(dim=dims, keepdim=True)
    return (lo if low is None else low), (hi if high is None else high)


@register("lrp")
@dataclass
class LRP(GradientMethod):
    """Layer-wise relevance propagation (Bach et al. 2015; Montavon et al. 2019): R_i = sum_j q_ij / sum_i' q_i'j
    R_j layer by layer from R = score at the target logit, with rules chosen per layer by a composite.

    Args:
        composite: ``"auto"`` (a zoo model's ``ModelSpec.lrp_composite``, else ``epsilon_plus_flat``), a preset
            (``epsilon_plus``, ``epsilon_plus_flat``, ``epsilon_gamma_box``, ``epsilon_alpha2_beta1``,
            ``epsilon_alpha2_beta1_flat``, ``epsilon``) or a :class:`Composite`.
        canonizers: ``"auto"`` (merge every mergeable BatchNorm, except for zoo models whose spec says
            ``lrp_merge_batchnorm=False``: their BatchNorms get the pass rule), None, or a list of
            :class:`Canonizer` objects (``MergeBatchNorm(pairs)``, your own). Unmerged BatchNorms get
            ``batchnorm`` in the presets.
        epsilon, gamma: the presets' rule parameters.
        low, high: the input box of the z^B rule (see :func:`input_bounds`).
        batchnorm: the presets' rule for unmerged BatchNorms: ``"epsilon"`` or ``"pass"`` (None: pass when
            ``canonizers="auto"`` keeps them unmerged, except with the ``epsilon`` preset, else epsilon; pass
            with epsilon at the convolutions lets relevance blow up where a convolution's output is ~0).
        ledger: record the relevance sum at each layer's input in ``extras["relevance_ledger"]``.

    Returns raw signed relevance at the input (B,C,H,W); the heatmap sums channels and keeps the sign.
    """

    composite: str | Composite = "auto"
    canonizers: str | Sequence[object] | None = "auto"
    epsilon: float = 1e-6
    gamma: float = 0.25
    low: float | Tensor | None = None
    high: float | Tensor | None = None
    batchnorm: str | None = None
    ledger: bool = True

    heatmap_convention: ClassVar[dict[str, Any]] = {"reduce": "sum", "sign": "all", "normalize": "percentile"}
    family: ClassVar[str] = "lrp"

    def plan(self, model: nn.Module, x: Tensor) -> tuple[Composite, list[Canonizer]]:
        """The composite and the canonizers this call uses on ``model`` (``"auto"`` resolved per model)."""
        auto_composite, merge = model_defaults(model)
        name = auto_composite if self.composite == "auto" else self.composite
        auto = isinstance(self.canonizers, str) and self.canonizers == "auto"
        # the pass rule sends a BatchNorm's relevance on whole, however small the layer output before it: the
        # positive-part rules (z+, gamma, alpha-beta) share it out stably, epsilon divides by that output
        keep = auto and not merge
        bn = self.batchnorm or ("pass" if keep and name != "epsilon" else "epsilon")
        if bn not in ("epsilon", "pass"):
            raise ValueError(f"batchnorm must be 'epsilon' or 'pass', got {bn!r}")
        params: dict[str, Any] = {"epsilon": self.epsilon, "gamma": self.gamma,
                                  "batchnorm": Pass() if bn == "pass" else Epsilon(self.epsilon)}
        if name == "epsilon_gamma_box":
            params["low"], params["high"] = input_bounds(model, x, self.low, self.high)
        return get_composite(name, **params), resolve_canonizers(None if keep else self.canonizers)

    def propagate(self, model: nn.Module, x: Tensor, target: Target, call: Call | None = None,
                  ledger: bool = False) -> tuple[Tensor, dict[str, Tensor]]:
        """(relevance at the input, ledger) for a batch of rows; resolves ``call``'s target from this forward.

        The canonizers stay applied through the backward (the rules read the canonized weights)."""
        x = x.detach()
        composite, canonizers = self.plan(model, x)
        with applied(model, x, canonizers) as records, torch.enable_grad():
            leaf, mode, out = _forward(model, x, composite, records, ledger)
            if call is not None:
                target = call.resolve(out)
            score = target.score(out)
            if not score.requires_grad:
                raise RuntimeError("the target score does not depend on the inputs through autograd (no_grad or "
                                   "detach inside forward()?)")
            (grad,) = torch.autograd.grad(score.sum(), leaf, allow_unused=True)
        if mode.count == 0:
            warnings.warn("lrp: no conv/linear/BatchNorm call could be intercepted (TorchScript model?); the "
                          "result is input x gradient", stacklevel=3)
        grad = torch.zeros_like(x) if grad is None else grad
        attr = grad.contiguous() if mode.input_rule else x * grad
        book: dict[str, Tensor] = {}
        if ledger:
            book["output"] = score.detach()
            for name, holder in reversed(mode.entries):
                book[name] = torch.stack(holder).sum(0) if holder else torch.zeros_like(score).detach()
            book["input"] = attr.flatten(1).sum(1)
        return attr, book

    def attribute(self, model: nn.Module, inputs: Tensor, call: Call) -> Tensor:
        attr, book = self.propagate(model, inputs, call.target, call, ledger=self.ledger)
        if book:
            call.extras["relevance_ledger"] = book
            call.extras["relevance_output"] = book["output"]
            call.extras["relevance_input"] = book["input"]
            call.extras["relevance_ratio"] = book["input"] / book["output"]
        return attr

    def report_tables(self, batches: Sequence[tuple[Explanation, ...]], keys: Sequence[str]) -> list[Table]:
        """The relevance ledger as a table per class rank: the relevance sum entering each layer, output to input,
        per image, and its ratio to the output relevance (1 where relevance is conserved). None if a batch has no
        ledger (``ledger=False``) or the batches saw different layers."""
        tables: list[Table] = []
        k = len(batches[0]) if batches else 0
        for r in range(k):
            per_batch = [ledger_table(ranks[r]) for ranks in batches if ranks[r].extras.get("relevance_ledger")]
            if len(per_batch) != len(batches):
                return tables
            layers = [row["layer"] for row in per_batch[0]]
            if any([row["layer"] for row in rows] != layers for rows in per_batch):
                return tables
            columns = ["layer"]
            for key in keys:
                columns += [f"{key}: relevance", f"{key}: / output"]
            body = []
            for i, layer in enumerate(layers):
                cells: list[Any] = [layer]
                for rows in per_batch:
                    for rel, ratio in zip(rows[i]["relevance"], rows[i]["ratio"], strict=True):
                        cells += [rel, ratio]
                body.append(cells)
            note = ("sum of relevance entering each layer, from the output (the explained score) to the input; "
                    "a ratio of 1 means relevance is conserved down to that layer")
            title = f"Relevance ledger: {batches[0][0].method}" + (f", class rank {r + 1}" if k > 1 else "")
            tables.append(Table(title, columns, body, note))
        return tables


def _forward(model: nn.Module, x: Tensor, composite: Composite, records: Sequence[Canonized],
             ledger: bool) -> tuple[Tensor, _LRPMode, Any]:
    """(input leaf, mode, output) of the LRP forward. 4-d inputs run in channels_last (oneDNN convolutions skip
    their layout reorders: LRP on efficientnet_lite0 ran 1.2-1.45x faster). A forward that raises a RuntimeError
    there (e.g. a model that ``.view()``s a feature map) is run once more in the standard layout: the layout is
    decided by that outcome, never by an error's text. The retry's error, if any, is raised (what the model raises
    on ordinary inputs); a model whose retry succeeds is remembered and runs in the standard layout from then on."""
    standard = x.ndim != 4 or _STANDARD_LAYOUT.get(model, False)
    formats = [torch.contiguous_format] if standard else [torch.channels_last, torch.contiguous_format]
    for fmt in formats:
        leaf = x.clone(memory_format=fmt).requires_grad_(True)
        mode = _LRPMode(model, composite, records, ledger=ledger)
        try:
            with mode:
                out = model(leaf)
        except RuntimeError:
            if fmt == torch.contiguous_format:
                raise
            continue
        if fmt == torch.contiguous_format and not standard:
            _STANDARD_LAYOUT[model] = True
        return leaf, mode, out
    raise AssertionError("unreachable")


def ledger_table(exp: Explanation | dict[str, Tensor]) -> list[dict[str, Any]]:
    """Rows for a report from ``exp.extras["relevance_ledger"]`` (or the ledger dict itself), output to input:
    ``{"layer", "relevance": [per sample], "ratio": [relevance / output relevance per sample]}``."""
    book = exp.extras.get("relevance_ledger") if isinstance(exp, Explanation) else exp
    if not book:
        raise ValueError("no relevance ledger: run the 'lrp' method with ledger=True (the default)")
    top = book["output"]
    return [
        {"layer": name, "relevance": r.tolist(), "ratio": safe_divide(r, top.to(r)).tolist()}
        for name, r in book.items()
    ]
