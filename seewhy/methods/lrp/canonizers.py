"""Canonizers: reversible model rewrites that leave the function unchanged but make LRP rules apply as intended
(Motzkus et al. 2022, "Measurably stronger explanation reliability via model canonization").

The protocol (Zennit's, written anew): ``Canonizer.apply(model, inputs) -> Canonized``, the record of what was
changed, which ``restore()``s it exactly and is a context manager. A record holds two kinds of change:

- *written* ones (``write`` a parameter or buffer in place, ``hook`` a module, ``on_restore`` anything else): undone
  by ``restore()`` in reverse order, a written tensor getting its saved copy back (bit-identical, same object);
- *functional* ones (``substitute`` a layer's weight and bias, ``bypass`` a BatchNorm): nothing is written; the LRP
  mode (and :func:`~seewhy.methods.lrp.canonized`) apply them to the calls they see while active, so the model
  stays usable by other threads meanwhile.

``MergeBatchNorm`` is functional. It folds each BatchNorm into the convolution / linear layer whose output it
normalises (y = s (W x + b - mu) + beta with s = gamma / sqrt(var + eps): W' = s W, b' = s (b - mu) + beta), and a
BatchNorm that feeds a linear layer into that layer (W' = W diag(s), b' = b + W (beta - s mu)).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode
from torch.utils.hooks import RemovableHandle

from .composites import BATCHNORM, CONV, LINEAR

LAYER_FUNCS = (F.conv1d, F.conv2d, F.conv3d, F.linear)


def bn_key(bn: nn.Module) -> int:
    """The identity a BatchNorm call is recognised by (its running mean, else its weight)."""
    return id(bn.running_mean if bn.running_mean is not None else bn.weight)


class Canonized:
    """What one canonizer changed in one model, and how to undo it; ``with record:`` restores on exit."""

    def __init__(self) -> None:
        self.weights: dict[int, tuple[Tensor, Tensor | None]] = {}  # id(layer weight) -> (W', b'), functional
        self.bypassed: set[int] = set()  # BatchNorm keys (bn_key) whose calls return their input, functional
        self._undo: list[Callable[[], None]] = []

    def write(self, tensor: Tensor, value: Tensor) -> None:
        """Write ``value`` into ``tensor`` (a parameter or buffer) in place; ``restore`` writes the saved copy back."""
        saved = tensor.detach().clone()
        with torch.no_grad():
            tensor.copy_(value)

        def undo() -> None:
            with torch.no_grad():
                tensor.copy_(saved)

        self._undo.append(undo)

    def substitute(self, weight: Tensor, new_weight: Tensor, new_bias: Tensor | None) -> None:
        """Calls of the conv/linear layer with this ``weight`` use ``new_weight`` and ``new_bias`` (nothing written)."""
        self.weights[id(weight)] = (new_weight, new_bias)

    def bypass(self, bn: nn.Module) -> None:
        """Calls of the BatchNorm ``bn`` return their input (nothing written)."""
        self.bypassed.add(bn_key(bn))

    def hook(self, handle: RemovableHandle) -> RemovableHandle:
        """A hook the canonizer registered: removed by ``restore``."""
        self._undo.append(handle.remove)
        return handle

    def on_restore(self, undo: Callable[[], None]) -> None:
        """Any other undo step, run by ``restore`` (in reverse order of registration)."""
        self._undo.append(undo)

    def restore(self) -> None:
        """Undo every written change (all of them, even if one step fails); forget the functional ones."""
        self.weights, self.bypassed = {}, set()
        failed: Exception | None = None
        while self._undo:
            try:
                self._undo.pop()()
            except Exception as err:  # the other steps still run; the first failure is raised
                failed = failed or err
        if failed is not None:
            raise failed

    def __enter__(self) -> Canonized:
        return self

    def __exit__(self, *exc: object) -> None:
        self.restore()


class Canonizer:
    """A reversible model rewrite for LRP: ``apply(model, inputs)`` makes it and returns the :class:`Canonized`
    record that restores it. A canonizer holds configuration only (one object serves any number of models);
    ``inputs`` (a batch like the explained one) is for canonizers that look at a forward pass, else None."""

    def apply(self, model: nn.Module, inputs: Tensor | None = None) -> Canonized:
        raise NotImplementedError


@dataclass(frozen=True)
class MergeBatchNorm(Canonizer):
    """Merge BatchNorm layers into the adjacent convolution/linear layer (Guillemot et al. 2020; see the module
    docstring), functionally: parameters are never written, the outputs are the original model's up to rounding.

    ``pairs``: module names in data-flow order: (layer, BatchNorm) for a BatchNorm after its layer,
    (BatchNorm, linear) for a BatchNorm feeding a linear layer; None detects them with one forward pass without
    gradients: a BatchNorm whose input is exactly the output of a conv/linear layer that nothing else uses
    (or whose output only feeds a linear layer). Detection is cached per model object and module tree.
    """

    pairs: Sequence[tuple[str, str]] | None = None

    def apply(self, model: nn.Module, inputs: Tensor | None = None) -> Canonized:
        if self.pairs is None and inputs is None:
            raise ValueError("MergeBatchNorm() detects its pairs with a forward pass: pass inputs to apply(), or "
                             "name the pairs, MergeBatchNorm(pairs=[(layer, batchnorm), ...])")
        pairs = detect_batchnorm_pairs(model, inputs) if self.pairs is None else self.pairs
        record = Canonized()
        _merge(model, pairs, record)
        return record


class _Recorder(TorchFunctionMode):
    """Records, in one forward, which tensors each conv/linear/BatchNorm call takes and returns."""

    def __init__(self, layers: dict[int, str], bns: dict[int, str]) -> None:
        super().__init__()
        self.layers, self.bns = layers, bns
        self.keep: list[object] = []
        self.uses: dict[int, int] = {}
        self.layer_out: dict[int, str] = {}
        self.layer_in: dict[int, tuple[str, int]] = {}
        self.bn_calls: list[tuple[str, int, int, int]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if not isinstance(out, Tensor):
            return out
        flat = [a for a in (*args, *kwargs.values()) if isinstance(a, Tensor)]
        for a in flat:
            self.uses[id(a)] = self.uses.get(id(a), 0) + 1
        self.keep.extend([out, *flat])
        if func in LAYER_FUNCS and len(args) > 1 and id(args[1]) in self.layers:
            name = self.layers[id(args[1])]
            self.layer_out[id(out)] = name
            self.layer_in[id(args[0])] = (name, args[0].ndim)
        elif func is F.batch_norm and id(args[1]) in self.bns:
            self.bn_calls.append((self.bns[id(args[1])], id(args[0]), id(out), args[0].ndim))
        return out


_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def detect_batchnorm_pairs(model: nn.Module, inputs: Tensor) -> list[tuple[str, str]]:
    """(layer, BatchNorm) name pairs that :class:`MergeBatchNorm` can merge, found by a dry forward."""
    modules = dict(model.named_modules())
    layout = tuple((n, id(m)) for n, m in modules.items())  # a changed module tree invalidates the entry
    cached = _CACHE.get(model)
    if cached is not None and cached[0] == layout:
        return list(cached[1])
    layers = {id(m.weight): n for n, m in modules.items() if isinstance(m, CONV + LINEAR)}
    bns = {
        id(m.running_mean): n for n, m in modules.items()
        if isinstance(m, BATCHNORM) and m.running_mean is not None and m.running_var is not None
    }
    rec = _Recorder(layers, bns)
    with torch.no_grad(), rec:
        model(inputs[:1])
    pairs: list[tuple[str, str]] = []
    merged: set[str] = set()
    for bn, in_id, out_id, ndim in rec.bn_calls:
        if bn in merged:
            continue
        layer = rec.layer_out.get(in_id)
        if layer is not None and rec.uses.get(in_id) == 1 and layer not in merged:
            pairs.append((layer, bn))
            merged.update((layer, bn))
            continue
        after = rec.layer_in.get(out_id)
        if (after is not None and ndim == 2 and after[1] == 2 and rec.uses.get(out_id) == 1
                and isinstance(modules[after[0]], LINEAR) and after[0] not in merged):
            pairs.append((bn, after[0]))
            merged.update((after[0], bn))
    _CACHE[model] = (layout, tuple(pairs))
    return pairs


def _scale_shift(bn: nn.Module) -> tuple[Tensor, Tensor]:
    s = torch.rsqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        s = s * bn.weight
    shift = -bn.running_mean * s
    if bn.bias is not None:
        shift = shift + bn.bias
    return s, shift


@torch.no_grad()
def _merge(model: nn.Module, pairs: Sequence[tuple[str, str]], record: Canonized) -> None:
    """Record the merged (W', b') of each pair's layer and bypass its BatchNorm. A pair (BatchNorm, linear) merges
    the BatchNorm into the linear layer's input side."""
    modules = dict(model.named_modules())
    for first, second in pairs:
        before = isinstance(modules.get(first), BATCHNORM)
        layer_name, bn_name = (second, first) if before else (first, second)
        for n in (layer_name, bn_name):
            if n not in modules:
                raise ValueError(f"MergeBatchNorm: the model has no module {n!r}; pairs are (layer, BatchNorm) names")
        layer, bn = modules[layer_name], modules[bn_name]
        if not isinstance(layer, CONV + LINEAR) or not isinstance(bn, BATCHNORM) or bn.running_mean is None:
            raise ValueError(
                f"MergeBatchNorm: ({layer_name!r}, {bn_name!r}) must be a conv/linear layer and a BatchNorm with "
                "running statistics"
            )
        s, shift = _scale_shift(bn)
        w, b = layer.weight, layer.bias
        if not before and w.shape[0] == s.shape[0]:
            w2 = w * s.view(-1, *[1] * (w.ndim - 1)).to(w)
            b2 = (b * s if b is not None else 0) + shift
        elif before and isinstance(layer, LINEAR) and w.shape[1] == s.shape[0]:
            w2 = w * s.view(1, -1).to(w)
            b2 = (b if b is not None else 0) + w @ shift.to(w)
        else:
            raise ValueError(f"MergeBatchNorm: {bn_name!r} ({s.shape[0]} channels) does not fit {layer_name!r}")
        record.substitute(w, w2.to(w), b2.to(w))
        record.bypass(bn)


def resolve_canonizers(canonizers: str | Sequence[object] | None) -> list[Canonizer]:
    """``"auto"`` / ``"merge_batchnorm"`` (merge every BatchNorm that can be merged), None/[] (none), or a list of
    :class:`Canonizer` objects (and those names)."""
    if canonizers is None:
        return []
    if isinstance(canonizers, (str, Canonizer)):
        canonizers = [canonizers]
    out: list[Canonizer] = []
    for c in canonizers:
        if isinstance(c, str) and c in ("auto", "merge_batchnorm"):
            c = MergeBatchNorm()
        if not isinstance(c, Canonizer):
            raise ValueError(
                f"unknown canonizer {c!r}; use 'auto', 'merge_batchnorm', None or Canonizer objects such as "
                "MergeBatchNorm(pairs)"
            )
        out.append(c)
    return out


@contextmanager
def applied(model: nn.Module, inputs: Tensor | None, canonizers: Sequence[Canonizer]) -> Iterator[list[Canonized]]:
    """Apply ``canonizers`` in order for the block; restore them in reverse order on exit, also after an error
    (a canonizer that fails to apply has the ones before it restored)."""
    with ExitStack() as stack:
        records = []
        for c in canonizers:
            record = c.apply(model, inputs)
            if not isinstance(record, Canonized):
                raise TypeError(f"{type(c).__name__}.apply() returned {type(record).__name__}, not a Canonized record")
            records.append(stack.enter_context(record))
        yield records
