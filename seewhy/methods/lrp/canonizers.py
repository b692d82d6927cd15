"""Canonizers: model rewrites that leave the function unchanged but make LRP rules apply as intended.

``MergeBatchNorm`` folds each BatchNorm into the convolution / linear layer whose output it normalises
(y = s (W x + b - mu) + beta with s = gamma / sqrt(var + eps): W' = s W, b' = s (b - mu) + beta), and a
BatchNorm that feeds a linear layer into that layer (W' = W diag(s), b' = b + W (beta - s mu)).

The merge is *functional*: the parameters are never written. While the LRP mode is active, the merged
layer's call uses (W', b') and the merged BatchNorm call returns its input, so the outputs are those of
the original model up to rounding, and the parameters stay bit-identical (nothing to undo).
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from .composites import BATCHNORM, CONV, LINEAR

_LAYER_FUNCS = (F.conv1d, F.conv2d, F.conv3d, F.linear)


def bn_key(bn: nn.Module) -> int:
    """The identity a BatchNorm call is recognised by (its running mean, else its weight)."""
    return id(bn.running_mean if bn.running_mean is not None else bn.weight)


@dataclass(frozen=True)
class MergeBatchNorm:
    """Merge BatchNorm layers into the adjacent convolution/linear layer (see the module docstring).

    ``pairs``: module names in data-flow order: (layer, BatchNorm) for a BatchNorm after its layer,
    (BatchNorm, linear) for a BatchNorm feeding a linear layer; None detects them with one forward pass without
    gradients: a BatchNorm whose input is exactly the output of a conv/linear layer that nothing else uses
    (or whose output only feeds a linear layer). Detection is cached per model object and module tree.
    """

    pairs: Sequence[tuple[str, str]] | None = None


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
        if func in _LAYER_FUNCS and len(args) > 1 and id(args[1]) in self.layers:
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
def merge_plan(model: nn.Module, pairs: Sequence[tuple[str, str]]) -> tuple[dict[int, tuple[Tensor, Tensor]], set[int]]:
    """For the LRP mode: {id(layer weight): (merged weight, merged bias)} and the keys of the merged BatchNorms.

    A pair (BatchNorm, linear) merges the BatchNorm into the linear layer's input side.
    """
    modules = dict(model.named_modules())
    params: dict[int, tuple[Tensor, Tensor]] = {}
    skip: set[int] = set()
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
        params[id(w)] = (w2.to(w), b2.to(w))
        skip.add(bn_key(bn))
    return params, skip


def resolve_canonizers(
    model: nn.Module, inputs: Tensor, canonizers: str | Sequence[object] | None
) -> list[tuple[str, str]]:
    """``"auto"`` (merge every BatchNorm that can be merged), None/[] (none), or a list of
    ``MergeBatchNorm`` objects / the name ``"merge_batchnorm"``: the (layer, BatchNorm) pairs to merge."""
    if canonizers is None:
        return []
    if isinstance(canonizers, str):
        canonizers = [canonizers]
    pairs: list[tuple[str, str]] = []
    for c in canonizers:
        if c in ("auto", "merge_batchnorm"):
            c = MergeBatchNorm()
        if not isinstance(c, MergeBatchNorm):
            raise ValueError(
                f"unknown canonizer {c!r}; use 'auto', 'merge_batchnorm', MergeBatchNorm(pairs) or None"
            )
        pairs.extend(detect_batchnorm_pairs(model, inputs) if c.pairs is None else c.pairs)
    return pairs
