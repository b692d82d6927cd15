"""The ``lrp`` method: layer-wise relevance propagation as a modified gradient, with a relevance ledger.

Mechanism: one ``TorchFunctionMode`` intercepts the functional calls the layers make (``F.conv1d/2d/3d``,
``F.linear``, ``F.batch_norm``, ``F.relu6`` / ``F.hardtanh``), recognising each layer by the identity of its
weight tensor. A layer with a rule returns ``z + sum_k (G_k s_k - detach(G_k s_k))``: exactly its output in the
forward, the rule's modified vector-Jacobian product in the backward. No hook is registered on a module, no
module is swapped, no parameter is written; the ledger uses tensor hooks on this call's graph only.

Conventions (the backward signal is R / z; see :mod:`seewhy.methods.lrp.rules`):

- residual additions, average pooling, ``mean``, padding, flatten, dropout (eval): plain gradient, which
  is LRP-0 for these bias-free linear ops: ``a + b`` splits relevance in proportion a / (a + b), b / (a + b)
  and conserves it exactly (unstable only where a + b ~ 0 with large opposite parts; the ledger shows it);
- max pooling: winner takes all (plain gradient);
- ``F.relu`` / ``nn.ReLU`` (in place too): plain gradient = pass-through of relevance; ``F.relu6`` /
  ``nn.ReLU6`` / ``hardtanh(0, t)``: pass-through (the backward signal is scaled by a / z, so saturated units
  keep their relevance); other activations keep their plain gradient;
- BatchNorm: merged into the adjacent conv/linear by the ``MergeBatchNorm`` canonizer; an unmerged one is
  an element-wise linear layer with the composite's BatchNorm rule (epsilon in the presets).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from ...core import Call, Explanation, register
from ...targets import Target
from ..gradient import GradientMethod
from .canonizers import bn_key, merge_plan, resolve_canonizers
from .composites import BATCHNORM, CONV, LINEAR, Composite, get_composite
from .rules import Epsilon, Layer, Pass, Rule, safe_divide

_LAYER_FUNCS = (F.conv1d, F.conv2d, F.conv3d, F.linear)
_ACTIVATIONS = (F.relu6, F.hardtanh, F.hardtanh_)


class _PassThrough(torch.autograd.Function):
    """clamp(x, lo, hi) forward; backward g * a / x, i.e. the relevance a * g passes through unchanged."""

    @staticmethod
    def forward(ctx, x: Tensor, lo: float, hi: float | None) -> Tensor:  # type: ignore[override]
        out = x.clamp(min=lo) if hi is None else x.clamp(lo, hi)
        ctx.save_for_backward(safe_divide(out, x))
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        (ratio,) = ctx.saved_tensors
        return grad * ratio, None, None


class _Modified(torch.autograd.Function):
    """Forward: the layer output ``z`` as is; backward: sum_k vjp(graph_k, grad * scale_k) (a rule's terms)."""

    @staticmethod
    def forward(ctx, z: Tensor, n: int, *scales_and_graphs: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(*scales_and_graphs[:n])
        return z.detach()

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        return (None, None, *(None for _ in ctx.saved_tensors), *(grad * s for s in ctx.saved_tensors))


def _activation_bounds(func: Any, args: tuple, kwargs: dict) -> tuple[float, float, bool] | None:
    """(lo, hi, inplace) of a rectifier call with lower bound 0, else None."""
    def arg(i: int, key: str, default: Any) -> Any:
        return kwargs.get(key, args[i] if len(args) > i else default)

    if func is F.relu6:
        return 0.0, 6.0, bool(arg(1, "inplace", False))
    lo, hi = arg(1, "min_val", -1.0), arg(2, "max_val", 1.0)
    inplace = func is F.hardtanh_ or bool(arg(3, "inplace", False))
    return (0.0, float(hi), inplace) if lo == 0 else None


class _LRPMode(TorchFunctionMode):
    """Applies a composite's rules (and merged BatchNorms) to the layer calls made inside the block."""

    def __init__(self, model: nn.Module, composite: Composite | None, pairs: Sequence[tuple[str, str]],
                 ledger: bool = False) -> None:
        super().__init__()
        self.layers: dict[int, tuple[str, nn.Module]] = {}
        for name, m in model.named_modules():
            if isinstance(m, CONV + LINEAR):
                self.layers[id(m.weight)] = (name, m)
            elif isinstance(m, BATCHNORM) and (m.running_mean is not None or m.weight is not None):
                self.layers[bn_key(m)] = (name, m)
        self.merged, self.skip = merge_plan(model, pairs)
        self.composite = composite
        self.ledger = ledger
        self.entries: list[tuple[str, list[Tensor]]] = []
        self.calls: dict[str, int] = {}
        self.first_seen = False
        self.input_rule = False
        self.count = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _LAYER_FUNCS and len(args) > 1 and id(args[1]) in self.layers:
            return self._layer(func, args, kwargs)
        if func is F.batch_norm and len(args) > 1:
            return self._batch_norm(func, args, kwargs)
        if func in _ACTIVATIONS and self.composite is not None and args and isinstance(args[0], Tensor):
            bounds = _activation_bounds(func, args, kwargs)
            if bounds is not None and torch.is_grad_enabled() and args[0].requires_grad:
                out = _PassThrough.apply(args[0], bounds[0], bounds[1])
                return args[0].copy_(out) if bounds[2] else out
        return func(*args, **kwargs)

    def _layer(self, func: Any, args: tuple, kwargs: dict) -> Tensor:
        x, w = args[0], args[1]
        name, module = self.layers[id(w)]
        kw = dict(kwargs)
        b = args[2] if len(args) > 2 else kw.pop("bias", None)
        rest = args[3:]
        if id(w) in self.merged:
            w, b = self.merged[id(w)]

        def fn(i: Tensor, ww: Tensor, bb: Tensor | None) -> Tensor:
            return func(i, ww, bb, *rest, **kw)

        first = not self.first_seen
        self.first_seen = True
        return self._apply(name, module, x, w, b, fn, first, False, None)

    def _batch_norm(self, func: Any, args: tuple, kwargs: dict) -> Tensor:
        names = ("input", "running_mean", "running_var", "weight", "bias", "training", "momentum", "eps")
        defaults = (None, None, None, None, None, False, 0.1, 1e-5)
        a = dict(zip(names, defaults, strict=True))
        a.update(zip(names, args, strict=False))
        a.update(kwargs)
        key = id(a["running_mean"]) if a["running_mean"] is not None else id(a["weight"])
        if key in self.skip:
            return a["input"]
        if key not in self.layers or a["training"] or a["running_mean"] is None:
            return func(*args, **kwargs)
        name, module = self.layers[key]
        z_graph = func(*args, **kwargs)
        x = a["input"]
        scale = torch.rsqrt(a["running_var"] + a["eps"])
        if a["weight"] is not None:
            scale = scale * a["weight"]
        shift = -a["running_mean"] * scale + (a["bias"] if a["bias"] is not None else 0)
        shape = (1, -1) + (1,) * (x.ndim - 2)

        def fn(i: Tensor, ww: Tensor, bb: Tensor | None) -> Tensor:
            return i * ww.view(shape) + (bb.view(shape) if bb is not None else 0)

        return self._apply(name, module, x, scale.detach(), shift.detach(), fn, False, True, z_graph)

    def _apply(self, name: str, module: nn.Module, x: Tensor, w: Tensor, b: Tensor | None, fn: Any,
               first: bool, elementwise: bool, z_graph: Tensor | None) -> Tensor:
        if z_graph is None:
            z_graph = fn(x, w, b)
        if self.composite is None or not (torch.is_grad_enabled() and x.requires_grad):
            return z_graph
        self.count += 1
        rule: Rule | None = self.composite.rule_for(name, module, first)
        if rule is not None and rule.input_rule:
            if not first:
                raise ValueError(
                    f"{type(rule).__name__} is an input rule (its relevance is not x * gradient): assign it to the "
                    f"first layer only (Composite(first=...)), not to {name!r}"
                )
            self.input_rule = True
        self._record(name, x, rule is not None and rule.input_rule)
        if rule is None:
            return z_graph
        z = z_graph.detach()
        terms = rule.terms(Layer(x, w, b, fn, z, z_graph, elementwise))
        return _Modified.apply(z, len(terms), *(s for _, s in terms), *(g for g, _ in terms))

    def _record(self, name: str, x: Tensor, is_input_rule: bool) -> None:
        if not self.ledger:
            return
        k = self.calls[name] = self.calls.get(name, 0) + 1
        holder: list[Tensor] = []
        self.entries.append((name if k == 1 else f"{name}#{k}", holder))
        xd = x.detach()

        def hook(g: Tensor) -> None:
            r = g if is_input_rule else xd * g
            holder.append(r.flatten(1).sum(1).detach())

        x.register_hook(hook)


_ZOO_NAMES = {
    "EfficientNetLite0": "efficientnet_lite0",
    "TinyCNN": "tiny_cnn",
    "TinyFunctionalCNN": "tiny_functional_cnn",
    "TinyResNet": "tiny_resnet",
    "TinyVGG": "tiny_vgg",
}


def input_bounds(model: nn.Module, x: Tensor, low: float | Tensor | None = None,
                 high: float | Tensor | None = None) -> tuple[Tensor | float, Tensor | float]:
    """The box [low, high] of the inputs for the z^B rule.

    Given values win; for a zoo model the range of its normalised inputs, (0 - mean) / std and
    (1 - mean) / std per channel; otherwise each sample's per-channel min / max of ``x``.
    """
    if low is not None and high is not None:
        return low, high
    spec_name = _ZOO_NAMES.get(type(model).__name__)
    if spec_name is not None:
        from ...zoo import get_spec

        spec = get_spec(spec_name)
        mean = torch.tensor(spec.mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(spec.std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        lo, hi = (0 - mean) / std, (1 - mean) / std
    else:
        dims = tuple(range(2, x.ndim))
        lo, hi = x.amin(dim=dims, keepdim=True), x.amax(dim=dims, keepdim=True)
    return (lo if low is None else low), (hi if high is None else high)


# per zoo model: (composite, BatchNorms merged?) for composite="auto" / canonizers="auto". EfficientNet-Lite0 keeps
# its BatchNorms unmerged with the pass rule: merged, the large shifts of the depthwise BatchNorms become biases
# that absorb most of the relevance (with z+, 0.37 of a class score of 9.2 reaches the input on the chelsea
# photo; with gamma 0.12); unmerged with pass and gamma, 3.5 does.
MODEL_DEFAULTS: dict[str, tuple[str, bool]] = {"efficientnet_lite0": ("epsilon_gamma_box", False)}
DEFAULT_COMPOSITE = "epsilon_plus_flat"


def model_defaults(model: nn.Module) -> tuple[str, bool]:
    """(composite, merge BatchNorms) that ``composite="auto"`` / ``canonizers="auto"`` use for ``model``."""
    return MODEL_DEFAULTS.get(_ZOO_NAMES.get(type(model).__name__, ""), (DEFAULT_COMPOSITE, True))


@contextmanager
def canonized(model: nn.Module, inputs: Tensor, canonizers: str | Sequence[object] | None = "auto") -> Iterator[None]:
    """Run ``model`` with its BatchNorms merged (functionally) inside the block; nothing to undo afterwards."""
    pairs = resolve_canonizers(model, inputs, canonizers)
    with _LRPMode(model, None, pairs):
        yield


@register("lrp")
@dataclass
class LRP(GradientMethod):
    """Layer-wise relevance propagation (Bach et al. 2015; Montavon et al. 2019): R_i = sum_j q_ij / sum_i' q_i'j
    R_j layer by layer from R = score at the target logit, with rules chosen per layer by a composite.

    Args:
        composite: ``"auto"`` (per zoo model, see ``MODEL_DEFAULTS``; else ``epsilon_plus_flat``), a preset
            (``epsilon_plus``, ``epsilon_plus_flat``, ``epsilon_gamma_box``, ``epsilon_alpha2_beta1``,
            ``epsilon_alpha2_beta1_flat``, ``epsilon``) or a :class:`Composite`.
        canonizers: ``"auto"`` (merge every mergeable BatchNorm, except for models listed in ``MODEL_DEFAULTS``
            whose BatchNorms get the pass rule), None, or a list of ``MergeBatchNorm``. Unmerged BatchNorms
            get ``batchnorm`` in the presets.
        epsilon, gamma: the presets' rule parameters.
        low, high: the input box of the z^B rule (see :func:`input_bounds`).
        batchnorm: the presets' rule for unmerged BatchNorms: ``"epsilon"`` or ``"pass"`` (None: pass when
            ``canonizers="auto"`` keeps them unmerged, else epsilon).
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

    def propagate(self, model: nn.Module, x: Tensor, target: Target, call: Call | None = None,
                  ledger: bool = False) -> tuple[Tensor, dict[str, Tensor]]:
        """(relevance at the input, ledger) for a batch of rows; resolves ``call``'s target from this forward."""
        x = x.detach()
        auto_composite, merge = model_defaults(model)
        name = auto_composite if self.composite == "auto" else self.composite
        canonizers = self.canonizers if self.canonizers != "auto" or merge else None
        bn = self.batchnorm or ("pass" if self.canonizers == "auto" and not merge else "epsilon")
        if bn not in ("epsilon", "pass"):
            raise ValueError(f"batchnorm must be 'epsilon' or 'pass', got {bn!r}")
        params: dict[str, Any] = {"epsilon": self.epsilon, "gamma": self.gamma,
                                  "batchnorm": Pass() if bn == "pass" else Epsilon(self.epsilon)}
        if name == "epsilon_gamma_box":
            params["low"], params["high"] = input_bounds(model, x, self.low, self.high)
        composite = get_composite(name, **params)
        pairs = resolve_canonizers(model, x, canonizers)
        leaf = x.clone().requires_grad_(True)
        mode = _LRPMode(model, composite, pairs, ledger=ledger)
        with torch.enable_grad():
            with mode:
                out = model(leaf)
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
        grad = torch.zeros_like(leaf) if grad is None else grad
        attr = grad if mode.input_rule else x * grad
        book: dict[str, Tensor] = {}
        if ledger:
            book["output"] = score.detach()
            for name, holder in reversed(mode.entries):
                book[name] = holder[0] if holder else torch.zeros_like(score).detach()
            book["input"] = attr.flatten(1).sum(1)
        return attr, book

    def rows(self, model: nn.Module, x: Tensor, target: Target) -> Tensor:
        return self.propagate(model, x, target)[0]

    def attribute(self, model: nn.Module, inputs: Tensor, call: Call) -> Tensor:
        attr, book = self.propagate(model, inputs, call.target, call, ledger=self.ledger)
        if book:
            call.extras["relevance_ledger"] = book
            call.extras["relevance_output"] = book["output"]
            call.extras["relevance_input"] = book["input"]
            call.extras["relevance_ratio"] = book["input"] / book["output"]
        return attr


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
