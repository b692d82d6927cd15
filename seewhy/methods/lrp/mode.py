"""The LRP mode: layer-wise relevance propagation as a modified gradient, applied to the calls of one forward.

Mechanism: one ``TorchFunctionMode`` intercepts the functional calls the layers make (``F.conv1d/2d/3d``,
``F.linear``, ``F.batch_norm``, ``F.relu`` / ``F.relu6`` / ``F.hardtanh``), recognising each layer by the identity
of its weight tensor. A layer with a rule computes its output without autograd and returns it through one
autograd node whose backward is the rule (transposed layers applied to the output relevance, see
:mod:`seewhy.methods.lrp.rules` and :mod:`seewhy.methods.lrp.backward`). A pass-through op applied to such an
output (a rectifier, a BatchNorm with the pass rule) is folded into the node: no backward step of its own. The mode
registers no hook on a module, swaps no module and writes no parameter (a canonizer may write one, and restores it);
the ledger uses tensor hooks on this call's graph only. What counts as a rectifier is decided by
:func:`seewhy.hooks.rectifier_bounds`, the matcher guided backprop uses too.

Conventions (the backward signal is R / z; see :mod:`seewhy.methods.lrp.rules`):

- residual additions, average pooling, ``mean``, padding, flatten, dropout (eval): plain gradient, which
  is LRP-0 for these bias-free linear ops: ``a + b`` splits relevance in proportion a / (a + b), b / (a + b)
  and conserves it exactly (unstable only where a + b ~ 0 with large opposite parts; the ledger shows it);
- max pooling: winner takes all (plain gradient);
- ``F.relu`` / ``nn.ReLU`` (in place too): pass-through of relevance (the plain gradient does the same);
  ``F.relu6`` / ``nn.ReLU6`` / ``hardtanh(0, t)``: pass-through (saturated units keep their relevance, unlike
  with the plain gradient); other activations keep their plain gradient;
- BatchNorm: merged into the adjacent conv/linear by the ``MergeBatchNorm`` canonizer (any canonizer's
  functional changes are applied here, see :mod:`seewhy.methods.lrp.canonizers`); an unmerged one is
  an element-wise linear layer with the composite's BatchNorm rule (epsilon or pass in the presets);
- in-place ops on a layer output (``out += shortcut``) are seen and handled; an in-place change through a
  view of it (``out[:, :k] += ...``) is detected in the backward and reported.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from ...hooks import RECTIFIERS, rectifier_bounds
from .backward import Node, Transpose, conv_transpose, vjp_transpose
from .canonizers import LAYER_FUNCS, Canonized, applied, bn_key, resolve_canonizers
from .composites import BATCHNORM, CONV, LINEAR, Composite
from .layer import Layer, Term, stabilized_reciprocal
from .rules import Pass, Rule

_CONV_DEFAULTS = {"stride": 1, "padding": 0, "dilation": 1, "groups": 1}  # after input, weight, bias


def _sample_sums(t: Tensor) -> Tensor:
    """Per-sample sums, in any memory layout (no copy)."""
    return t.sum(dim=tuple(range(1, t.ndim))) if t.ndim > 1 else t


def _sample_dots(a: Tensor, b: Tensor) -> Tensor:
    """Per-sample sums of ``a * b`` as dot products (no product tensor), in ``a``'s memory layout. Large samples
    take one BLAS dot each (4.5x faster than one batched matrix product on a 2-core CPU, 2x faster than a
    product and a sum, in our measurements)."""
    if a.ndim > 2:
        order = sorted(range(1, a.ndim), key=lambda d: -a.stride(d))  # dims from outer to inner in memory
        a, b = a.permute(0, *order), b.permute(0, *order)
    a, b = a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)
    if a.shape[1] < 1 << 14:
        return torch.linalg.vecdot(a, b)
    return torch.stack([torch.dot(ai, bi) for ai, bi in zip(a, b, strict=True)])


class _Saved:
    """The value a node's output relevance is computed from (R = grad * num), its version at creation, and the
    ledger entries that equal this output's relevance (BatchNorms with the pass rule folded into the node)."""

    __slots__ = ("num", "version", "ledger")

    def __init__(self, num: Tensor, ledger: list[list[Tensor]]) -> None:
        self.num, self.version, self.ledger = num, num._version, ledger


class _Relevance(torch.autograd.Function):
    """Forward: ``num`` as is (the layer output, or a pass-through op applied to it); backward: the node's rule
    applied to the output relevance ``R = grad * num``, as the gradient of the layer input ``x``."""

    @staticmethod
    def forward(ctx, num: Tensor, x: Tensor, node: Node, saved: _Saved) -> Tensor:  # type: ignore[override]
        ctx.node, ctx.saved, ctx.x = node, saved, x  # x: for nodes folded onto this one
        return num.detach()

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        saved: _Saved = ctx.saved
        if saved.num._version != saved.version:
            raise RuntimeError(
                "lrp: the model modified a layer output in place through a view (e.g. out[:, :k] += ...); "
                "write that operation out of place to explain this model with LRP"
            )
        r = saved.num * grad  # a fresh tensor (the node may overwrite it) in the layout of the forward
        if saved.ledger:  # the relevance of this output, entering the folded BatchNorms and the layers it feeds
            sums = _sample_sums(r)
            for holder in saved.ledger:
                holder.append(sums)
        node, ctx.node, ctx.x, ctx.saved = ctx.node, None, None, None  # free coefficients and inputs as we go
        return None, node.backward(r), None, None


def _is_inplace(func: Any) -> bool:
    name = getattr(func, "__name__", "")
    return (name.endswith("_") and not name.endswith("__")) or name in ("__setitem__", "__iadd__", "__isub__",
                                                                         "__imul__", "__itruediv__")


class _LRPMode(TorchFunctionMode):
    """Applies a composite's rules (and the canonizers' functional changes: substituted weights, bypassed
    BatchNorms) to the layer calls made inside the block; with ``composite=None`` only the latter.

    The layer outputs are computed without autograd; each rule-modified call returns a :class:`_Relevance`
    node. A pass-through op (rectifier, BatchNorm with the pass rule) applied to such an output is folded into
    the node: the new node computes the output relevance from the op's output (R = grad * a), which is what
    passing relevance through the op means, without a backward step of its own.
    """

    def __init__(self, model: nn.Module, composite: Composite | None, records: Sequence[Canonized] = (),
                 ledger: bool = False) -> None:
        super().__init__()
        self.layers: dict[int, tuple[str, nn.Module]] = {}
        for name, m in model.named_modules():
            if isinstance(m, CONV + LINEAR):
                self.layers[id(m.weight)] = (name, m)
            elif isinstance(m, BATCHNORM) and (m.running_mean is not None or m.weight is not None):
                self.layers[bn_key(m)] = (name, m)
        self.merged: dict[int, tuple[Tensor, Tensor | None]] = {}  # the canonizers' functional changes
        self.skip: set[int] = set()
        for record in records:
            self.merged.update(record.weights)
            self.skip.update(record.bypassed)
        self.composite = composite
        self.ledger = ledger
        self.entries: list[tuple[str, list[Tensor]]] = []
        self.calls: dict[str, int] = {}
        # weak references: a dead intermediate (a layer output folded into a BatchNorm / rectifier) is freed
        self.outputs: dict[int, weakref.ref] = {}
        self.nonneg: dict[int, weakref.ref] = {}
        self.padded: dict[int, tuple[weakref.ref, Any]] = {}  # zero-padded node outputs -> the node (ledger)
        self.first_seen = False
        self.input_rule = False
        self.count = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in LAYER_FUNCS and len(args) > 1 and id(args[1]) in self.layers:
            return self._layer(func, args, kwargs)
        if func is F.batch_norm and len(args) > 1:
            return self._batch_norm(func, args, kwargs)
        if self.composite is None or not args or not isinstance(args[0], Tensor):
            return func(*args, **kwargs)
        if func in RECTIFIERS:
            bounds = rectifier_bounds(func, args, kwargs)
            if bounds is not None:
                return self._rectify(func, args, kwargs, *bounds)
        if self.outputs and id(args[0]) in self.outputs and _is_inplace(func):
            self._unshare(args[0])
        out = func(*args, **kwargs)
        if func is F.pad and isinstance(out, Tensor):
            value = kwargs.get("value", args[3] if len(args) > 3 else None)
            mode = kwargs.get("mode", args[2] if len(args) > 2 else "constant")
            if self._is_nonneg(args[0]) and (mode != "constant" or value is None or value >= 0):
                self._mark_nonneg(out)
            if self.ledger and mode == "constant" and not value:  # zero padding adds no relevance: the padded
                ctx = self._node_of(args[0])  # tensor's relevance sum is its node's
                if ctx is not None:
                    self.padded[id(out)] = (weakref.ref(out), ctx)
        return out

    # --- the nodes ----------------------------------------------------------------------------------------

    def _emit(self, node: Node, num: Tensor, x: Tensor, ledger: list[list[Tensor]] | None = None) -> Tensor:
        saved = _Saved(num, ledger or [])
        out = _Relevance.apply(num, x, node, saved)
        self.outputs[id(out)] = weakref.ref(out)
        return out

    def _node_of(self, t: Tensor) -> Any:
        """The autograd node (``_Relevance`` context: node, saved, x) whose output ``t`` is, or None."""
        ref = self.outputs.get(id(t))
        if ref is None or ref() is not t or getattr(t.grad_fn, "saved", None) is None:
            return None
        return t.grad_fn

    def _unshare(self, t: Tensor) -> None:
        """``t`` (a node output) is about to change in place: keep the value its node needs; ``t`` is no longer
        that node's output."""
        ctx = self._node_of(t)
        self.outputs.pop(id(t), None)
        if ctx is not None and ctx.saved.num.data_ptr() == t.data_ptr():
            ctx.saved.num = ctx.saved.num.clone()
            ctx.saved.version = ctx.saved.num._version

    def _mark_nonneg(self, t: Tensor) -> None:
        self.nonneg[id(t)] = weakref.ref(t)

    def _is_nonneg(self, t: Tensor) -> bool:
        ref = self.nonneg.get(id(t))
        return ref is not None and ref() is t

    def _rectify(self, func: Any, args: tuple, kwargs: dict, lo: float, hi: float | None, inplace: bool) -> Tensor:
        x = args[0]
        if not (torch.is_grad_enabled() and x.requires_grad):
            return func(*args, **kwargs)
        entry = self._node_of(x)
        if entry is None:  # not a node output: the plain gradient of a ReLU passes relevance; relu6 needs a node
            if inplace and id(x) in self.outputs:
                self._unshare(x)
            if hi is None:
                out = func(*args, **kwargs)
            else:  # the pass rule as a node of its own: R_x = R_a (the gradient becomes grad * a / x)
                with torch.no_grad():
                    a, coef = x.clamp(lo, hi), stabilized_reciprocal(x.detach())
                out = self._emit(Node([Term(None, coef)], None), a, x)
                if inplace:
                    out = x.copy_(out)
        elif inplace:  # the node now computes R from the rectified value: no new node
            with torch.no_grad():
                x.clamp_(min=lo) if hi is None else x.clamp_(lo, hi)
            entry.saved.version = entry.saved.num._version
            out = x
        else:
            with torch.no_grad():
                a = x.clamp(min=lo) if hi is None else x.clamp(lo, hi)
            out = self._emit(entry.node, a, entry.x, entry.saved.ledger)
        self._mark_nonneg(out)
        return out

    # --- layers -------------------------------------------------------------------------------------------

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

        def transpose(z: Tensor) -> Transpose:
            if func is F.linear:
                return lambda a, ww: a @ ww
            conv = {**_CONV_DEFAULTS, **dict(zip(_CONV_DEFAULTS, rest, strict=False)), **kw}
            t = conv_transpose(func, x, z, w, conv["stride"], conv["padding"], conv["dilation"], conv["groups"])
            return t if t is not None else vjp_transpose(fn, x.detach(), w.shape[1])

        first = not self.first_seen
        self.first_seen = True
        return self._apply(name, module, x, w, b, fn, transpose, first, False)

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
        x = a["input"]
        scale = torch.rsqrt(a["running_var"] + a["eps"])
        if a["weight"] is not None:
            scale = scale * a["weight"]
        shift = -a["running_mean"] * scale + (a["bias"] if a["bias"] is not None else 0)
        shape = (1, -1) + (1,) * (x.ndim - 2)

        def fn(i: Tensor, ww: Tensor, bb: Tensor | None) -> Tensor:
            return i * ww.view(shape) + (bb.view(shape) if bb is not None else 0)

        def transpose(z: Tensor) -> Transpose:
            return lambda r, ww: r * ww.view(shape)

        entry = self._node_of(x)
        if (entry is not None and self.composite is not None and torch.is_grad_enabled()
                and isinstance(self.composite.rule_for(name, module, False), Pass)):
            # pass rule on a node output: fold into the node (its output relevance is this BatchNorm's)
            self.count += 1
            with torch.no_grad():
                y = func(*args, **kwargs)
            ledger = [*entry.saved.ledger, self._entry(name)] if self.ledger else entry.saved.ledger
            return self._emit(entry.node, y, entry.x, ledger)
        return self._apply(name, module, x, scale.detach(), shift.detach(), fn, transpose, False, True,
                           lambda: func(*args, **kwargs))

    def _apply(self, name: str, module: nn.Module, x: Tensor, w: Tensor, b: Tensor | None, fn: Any,
               transpose: Callable[[Tensor], Transpose], first: bool, elementwise: bool,
               compute: Callable[[], Tensor] | None = None) -> Tensor:
        compute = compute or (lambda: fn(x, w, b))
        if self.composite is None or not (torch.is_grad_enabled() and x.requires_grad):
            return compute()
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
            return compute()
        with torch.no_grad():
            nonneg = True if self._is_nonneg(x) else None
            layer = Layer(x.detach(), w.detach(), None if b is None else b.detach(), fn, compute, elementwise, nonneg)
            terms = rule.terms(layer)
            z = layer.z
        return self._emit(Node(terms, transpose(z)), z, x)

    # --- the ledger ---------------------------------------------------------------------------------------

    def _entry(self, name: str) -> list[Tensor]:
        k = self.calls[name] = self.calls.get(name, 0) + 1
        holder: list[Tensor] = []
        self.entries.append((name if k == 1 else f"{name}#{k}", holder))
        return holder

    def _record(self, name: str, x: Tensor, is_input_rule: bool) -> None:
        if not self.ledger:
            return
        holder = self._entry(name)
        entry = self._node_of(x)
        if entry is None and id(x) in self.padded and self.padded[id(x)][0]() is x:
            entry = self.padded[id(x)][1]
        if entry is not None and not is_input_rule:  # x is a node's output (or zero-padded): that node's R
            entry.saved.ledger = [*entry.saved.ledger, holder]  # (a new list: folded nodes may share the old one)
            return
        xd = x.detach()

        def hook(g: Tensor) -> None:
            holder.append((_sample_sums(g) if is_input_rule else _sample_dots(xd, g)).detach())

        x.register_hook(hook)


@contextmanager
def canonized(model: nn.Module, inputs: Tensor | None,
              canonizers: str | Sequence[object] | None = "auto") -> Iterator[list[Canonized]]:
    """Run ``model`` canonized inside the block (``"auto"``: BatchNorms merged, functionally); everything is
    restored on exit. Yields the :class:`Canonized` records."""
    with applied(model, inputs, resolve_canonizers(canonizers)) as records, _LRPMode(model, None, records):
        yield records
