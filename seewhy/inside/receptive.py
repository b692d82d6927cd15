"""Receptive fields of a layer's units: exact (traced through the forward pass) and empirical (input gradients).

:func:`receptive_field` runs the model once under a ``TorchFunctionMode`` that gives every tensor, per spatial axis,
an affine field ``(jump, left, right)`` (unit ``i`` reads input pixels ``[left + i*jump, right + i*jump]``,
inclusive) or "whole image"; a convolution (kernel k, stride s, padding p before, dilation d) maps it by
``left' = left - p*jump``, ``right' = right + ((k-1)*d - p)*jump``, ``jump' = jump*s`` (Araujo et al., "Computing
receptive fields of convolutional neural networks", Distill 2019). :func:`empirical_receptive_field` measures where
one unit's input gradient is nonzero (Luo et al., "Understanding the effective receptive field in deep convolutional
neural networks", NeurIPS 2016).

Boxes are ``(top, left, bottom, right)`` in input pixels, clipped to the image, ``bottom``/``right`` EXCLUSIVE:
``image[..., top:bottom, left:right]`` is the crop.
"""

from __future__ import annotations

import logging
import math
import operator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from ..hooks import layer_outputs, model_state
from ..layers import resolve_layer

logger = logging.getLogger(__name__)

Axis = tuple[float, float, float] | None  # (jump, left, right) of one spatial axis; None: the whole image
Info = tuple[Axis, Axis] | str  # the (h, w) field of a tensor, or the name of the op that lost track of it
Step = tuple[float, float, float] | None  # (scale of jump, shift of left, shift of right) in input units; None: whole
_WHOLE: tuple[Axis, Axis] = (None, None)
_EPS = 1e-6


@dataclass(frozen=True)
class ReceptiveField:
    """The exact receptive field of a layer's units, from :func:`receptive_field` (all pairs are (h, w)).

    Along each axis unit ``i`` reads the input pixels ``[offset - (size-1)/2 + i*stride, offset + (size-1)/2 +
    i*stride]`` (inclusive; may overhang the image where the network pads). ``size`` and ``stride`` may be fractional
    after upsampling or an adaptive pool whose input is not a multiple of its output. Along a ``whole`` axis every unit
    reads the entire image: ``size`` is the input size, ``stride`` 0.
    """

    size: tuple[float, float]
    stride: tuple[float, float]
    offset: tuple[float, float]
    input_size: tuple[int, int]
    map_size: tuple[int, int]
    whole: tuple[bool, bool] = (False, False)

    def box(self, i: int, j: int) -> tuple[int, int, int, int]:
        """``(top, left, bottom, right)`` of unit ``(i, j)``: the pixels inside its field, clipped to the image,
        ``bottom``/``right`` exclusive (``image[..., top:bottom, left:right]``). Raises IndexError out of the map."""
        (top, bottom), (left, right) = self._span(0, i), self._span(1, j)
        return top, left, bottom, right

    def _span(self, axis: int, k: int) -> tuple[int, int]:
        k, n, full = operator.index(k), self.map_size[axis], self.input_size[axis]
        if not 0 <= k < n:
            raise IndexError(f"unit index {k} out of range for a map of size {self.map_size} (axis {'hw'[axis]})")
        if self.whole[axis]:
            return 0, full
        half = (self.size[axis] - 1) / 2
        lo = self.offset[axis] - half + k * self.stride[axis]
        hi = self.offset[axis] + half + k * self.stride[axis]
        return max(0, math.ceil(lo - _EPS)), min(full, math.floor(hi + _EPS) + 1)


@dataclass(frozen=True, eq=False)
class EmpiricalField:
    """The pixels one unit's gradient reaches, from :func:`empirical_receptive_field`.

    ``grad`` is ``|d unit / d x|`` summed over channels and batch, (H, W); ``box`` the bounding box (top, left,
    bottom, right; bottom/right exclusive) of the pixels above ``threshold * grad.max()``, None when all are zero;
    ``size`` its (h, w) ((0, 0) without a box); ``location`` the unit's (i, j) on the layer's map.
    """

    grad: Tensor
    location: tuple[int, int]
    box: tuple[int, int, int, int] | None
    size: tuple[int, int]


def _arg(args: tuple, kwargs: dict, i: int, name: str, default: Any = None) -> Any:
    return kwargs[name] if name in kwargs else (args[i] if len(args) > i else default)


def _pair(v: Any) -> tuple[Any, Any]:
    if isinstance(v, (tuple, list)):
        return (v[0], v[0]) if len(v) == 1 else (v[-2], v[-1])
    return v, v


def _tensors(obj: Any) -> list[Tensor]:
    if isinstance(obj, Tensor):
        return [obj]
    items = obj.values() if isinstance(obj, dict) else obj if isinstance(obj, (tuple, list)) else ()
    return [t for o in items for t in _tensors(o)]


def _name(func: Any) -> str:
    name, module = getattr(func, "__name__", None), getattr(func, "__module__", None)
    return f"{module}.{name}" if name and module else str(getattr(func, "__qualname__", None) or name or func)


def _both(*names: str) -> set:
    return {f for n in names for f in (getattr(torch, n, None), getattr(Tensor, n, None)) if f is not None}


def _window(args: tuple, kwargs: dict, x: Tensor, out: Tensor, kind: str = "conv") -> list[Step]:
    """Steps of a convolution (``kind`` "conv", "transpose") or pool ("max", "avg", "lp") from its arguments."""
    if kind in ("conv", "transpose"):
        k = (args[1] if len(args) > 1 else kwargs["weight"]).shape[-2:]
        s, p, d = (_pair(_arg(args, kwargs, i, n, v)) for i, n, v in
                   ((3, "stride", 1), (4, "padding", 0), (7 if kind == "transpose" else 5, "dilation", 1)))
    else:
        lp = kind == "lp"  # lp_pool2d(input, norm_type, kernel_size, stride): no padding, no dilation
        k = _pair(_arg(args, kwargs, 1 + lp, "kernel_size"))
        s = _pair(_arg(args, kwargs, 2 + lp, "stride") or k)  # stride None (or []) means the kernel size
        p = (0, 0) if lp else _pair(_arg(args, kwargs, 3, "padding", 0))
        d = _pair(_arg(args, kwargs, 4, "dilation", 1)) if kind == "max" else (1, 1)
    if isinstance(p[0], str):  # PyTorch "same": total (k-1)*d, the smaller half before; "valid": none
        p = tuple((dd * (kk - 1)) // 2 if p[0] == "same" else 0 for kk, dd in zip(k, d, strict=True))
    if kind == "transpose":  # output o gathers the inputs i with i*s - p + t*d = o: [(o + p - (k-1)d)/s, (o + p)/s]
        return [(1 / ss, (pp - (kk - 1) * dd) / ss, pp / ss) for kk, ss, pp, dd in zip(k, s, p, d, strict=True)]
    return [(ss, -pp, (kk - 1) * dd - pp) for kk, ss, pp, dd in zip(k, s, p, d, strict=True)]


def _pad(args: tuple, kwargs: dict, x: Tensor, out: Tensor) -> list[Step]:
    pads = list(_arg(args, kwargs, 1, "pad")) + [0, 0, 0, 0]
    circular = _arg(args, kwargs, 2, "mode", "constant") == "circular"
    return [None if circular and (b or a) else (1, -b, -b) for b, a in ((pads[2], pads[3]), (pads[0], pads[1]))]


def _adaptive(args: tuple, kwargs: dict, x: Tensor, out: Tensor) -> list[Step]:
    # bin i spans [floor(i*n/o), ceil((i+1)*n/o)): exactly kernel = stride = n/o when o divides n, otherwise inside
    # [i*n/o - 1 + 1/o, (i+1)*n/o - 1/o] (a kernel of about n/o + 1 with the fractional stride n/o)
    return [None if o == 1 else (n / o, 0, n / o - 1) if n % o == 0 else (n / o, 1 / o - 1, n / o - 1 / o)
            for n, o in zip(x.shape[-2:], out.shape[-2:], strict=True)]


def _interpolate(args: tuple, kwargs: dict, x: Tensor, out: Tensor) -> list[Step]:
    # output o reads around the source coordinate src = o*scale + c: nearest floor(src) (within [src - 1 + scale, src]
    # for an integer factor), bilinear floor(src) and floor(src) + 1 (within [src - 1, src + 1]), bicubic +-2
    mode = _arg(args, kwargs, 3, "mode", "nearest")
    corners, factor = _arg(args, kwargs, 4, "align_corners"), _arg(args, kwargs, 2, "scale_factor")
    if mode == "area":
        return _adaptive(args, kwargs, x, out)
    if mode not in ("nearest", "nearest-exact", "bilinear", "bicubic") or _arg(args, kwargs, 6, "antialias", False):
        raise NotImplementedError(f"interpolate mode={mode!r}")
    steps: list[Step] = []
    for a, (n, o) in enumerate(zip(x.shape[-2:], out.shape[-2:], strict=True)):
        recompute = factor is None or _arg(args, kwargs, 5, "recompute_scale_factor")
        s = n / o if recompute else 1 / float(_pair(factor)[a])
        if mode == "nearest-exact":
            c, lo, hi = 0.5 * s, -1.0, 0.0
        elif mode == "nearest":
            c, lo, hi = 0.0, (s - 1 if abs(1 / s - round(1 / s)) < _EPS else -1.0), 0.0
        else:
            s = ((n - 1) / (o - 1) if o > 1 else 0.0) if corners else s
            c, lo, hi = (0.0 if corners else 0.5 * s - 0.5), *((-1.0, 1.0) if mode == "bilinear" else (-2.0, 2.0))
        steps.append((s, c + lo, c + hi))
    return steps


_SPATIAL: dict[Any, Any] = {
    torch.conv2d: _window, F.conv_transpose2d: lambda *a: _window(*a, kind="transpose"),
    **dict.fromkeys((F.max_pool2d, F.max_pool2d_with_indices, torch.max_pool2d), lambda *a: _window(*a, kind="max")),
    F.avg_pool2d: lambda *a: _window(*a, kind="avg"), F.lp_pool2d: lambda *a: _window(*a, kind="lp"),
    F.pad: _pad, torch.constant_pad_nd: _pad,
    F.adaptive_avg_pool2d: _adaptive, F.adaptive_max_pool2d: _adaptive, F.adaptive_max_pool2d_with_indices: _adaptive,
    F.interpolate: _interpolate,
}
_REDUCTIONS = _both("mean", "sum", "amax", "amin", "max", "min", "std", "var", "prod", "logsumexp", "nansum",
                    "nanmean", "median", "norm", "argmax", "argmin", "all", "any", "count_nonzero", "std_mean",
                    "var_mean", "aminmax")
# shape-preserving ops that mix values along a dim: (position of the dim argument, its keyword, default)
_ALONG: dict[Any, tuple[int, str, Any]] = {
    **{f: (1, "dim", 1) for f in _both("softmax", "log_softmax") | {F.softmax, F.log_softmax, F.softmin}},
    **{f: (1, "dim", -1) for f in _both("cumsum", "cumprod", "cummax", "cummin", "logcumsumexp", "sort", "argsort")},
    **{f: (1, "dims", None) for f in _both("flip")},
    **{f: (2, "dims", None) for f in _both("roll")},
    **{f: (2, "dim", -1) for f in _both("topk")},
    F.normalize: (2, "dim", 1),
}
_MIXING = _both("matmul", "mm", "bmm", "einsum", "gather", "scatter", "scatter_add", "index_select", "take",
                "take_along_dim", "index_put", "masked_select", "nonzero", "cdist", "__matmul__") | {
    F.linear, F.bilinear, F.group_norm, F.instance_norm, F.grid_sample, F.scaled_dot_product_attention,
    *(getattr(torch.fft, n) for n in dir(torch.fft) if not n.startswith("_") and callable(getattr(torch.fft, n)))}
# not followed: axis permutations (channels-last code) and convolutions of other dimensions
_UNSUPPORTED = _both("movedim", "moveaxis", "transpose", "swapaxes", "swapdims", "permute", "conv1d", "conv3d",
                     "conv_transpose1d", "conv_transpose3d")
_NEUTRAL = _both("zeros_like", "ones_like", "empty_like", "full_like", "rand_like", "randn_like", "randint_like",
                 "new_zeros", "new_ones", "new_empty", "new_full", "new_tensor")
_NORMS = _both("norm")


def _union(parts: list[Axis], n: int) -> Axis:
    """Fields of several inputs read by one output axis of size ``n``: None if any is whole; the same jump keeps it
    (min left, max right); different jumps (a broadcast 1x1 map has jump 0) take the largest, widened to cover all
    ``n`` units."""
    if any(p is None for p in parts):
        return None
    j = max(p[0] for p in parts)  # type: ignore[index]
    lefts = [min(lft, lft + (n - 1) * (jj - j)) for jj, lft, _ in parts]  # type: ignore[misc]
    rights = [max(r, r + (n - 1) * (jj - j)) for jj, _, r in parts]  # type: ignore[misc]
    return j, min(lefts), max(rights)


class _FieldMode(TorchFunctionMode):
    """Annotates every tensor produced during the block with its per-axis field; ``infos`` (keyed by ``id``) keeps
    each annotated tensor alive, so no id is reused while it is filled."""

    def __init__(self) -> None:
        super().__init__()
        self.infos: dict[int, tuple[Tensor, Info]] = {}
        self.reported: set[str] = set()

    def get(self, t: Any) -> Info | None:
        entry = self.infos.get(id(t)) if isinstance(t, Tensor) else None
        return entry[1] if entry is not None and entry[0] is t else None

    def set(self, t: Tensor, info: Info) -> None:
        self.infos[id(t)] = (t, info)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        result = func(*args, **kwargs)
        inputs = [(t, i) for t in _tensors((args, kwargs)) if (i := self.get(t)) is not None]
        if not inputs or func in _NEUTRAL:
            return result
        outs = [args[0]] if func is Tensor.__setitem__ else list(_tensors(result))
        for out in outs:
            try:
                info = self._infer(func, args, kwargs, inputs, out)
            except Exception as err:  # never break the forward: this tensor is just not tracked
                info = f"{_name(func)} ({type(err).__name__}: {err})"
            if isinstance(info, str) and info not in self.reported and not any(i == info for _, i in inputs):
                self.reported.add(info)
                logger.info("receptive field: cannot follow %s; tensors computed from it are not tracked", info)
            self.set(out, info)
            base = out._base if args and out is args[0] else None  # an in-place change of a view changes its base
            if base is not None and (bi := self.get(base)) is not None and not isinstance(info, str):
                self.set(base, bi if isinstance(bi, str) else self._generic(func, [(base, bi), (out, info)], base))
        return result

    def _infer(self, func: Any, args: tuple, kwargs: dict, inputs: list[tuple[Tensor, Info]], out: Tensor) -> Info:
        lost = next((i for _, i in inputs if isinstance(i, str)), None)
        if lost is not None:
            return lost
        if any(i == _WHOLE for _, i in inputs) or func in _MIXING:
            return _WHOLE
        x = args[0] if args and isinstance(args[0], Tensor) else None
        xi = self.get(x)
        if func in _UNSUPPORTED:
            return _name(func)
        if xi is None or x.ndim < 2:
            return self._generic(func, inputs, out)
        if func in _SPATIAL:
            if len(inputs) > 1:
                return _name(func)
            steps = zip(xi, _SPATIAL[func](args, kwargs, x, out), strict=True)
            return tuple(None if a is None or s is None else (a[0] * s[0], a[1] + s[1] * a[0], a[2] + s[2] * a[0])
                         for a, s in steps)
        if func in _REDUCTIONS and not isinstance(_arg(args, kwargs, 1, "other"), Tensor):
            dim = _arg(args, kwargs, 2 if func in _NORMS else 1, "dim", kwargs.get("axis"))
            if dim is None:
                return _WHOLE
            return self._along(func, inputs, x, xi, out, dim, reduce=True)
        if func in _ALONG:
            pos, key, default = _ALONG[func]
            dim = _arg(args, kwargs, pos, key, default)
            return _WHOLE if dim is None else self._along(func, inputs, x, xi, out, dim)
        if func is F.layer_norm:
            shape = _arg(args, kwargs, 1, "normalized_shape")
            return self._along(func, inputs, x, xi, out, -1 if isinstance(shape, int) or len(shape) < 2 else (-2, -1))
        if func is Tensor.__getitem__ and any(True for _ in _tensors(args[1])):
            return _name(func)  # advanced indexing may reorder the spatial axes
        return self._generic(func, inputs, out)

    def _along(self, func: Any, inputs: list, x: Tensor, xi: Any, out: Tensor, dim: Any, reduce: bool = False) -> Info:
        dims = {operator.index(d) % x.ndim for d in (dim if isinstance(dim, (tuple, list)) else (dim,))}
        spatial = [x.ndim - 2 in dims, x.ndim - 1 in dims]
        if reduce and all(spatial):
            return _WHOLE
        if reduce and any(spatial) and out.ndim != x.ndim:
            return _name(func)  # one spatial axis reduced away: the remaining axes shift
        info = self._generic(func, inputs, out) if not (reduce and any(spatial)) else xi
        return info if isinstance(info, str) else tuple(None if s else ax for s, ax in zip(spatial, info, strict=True))

    def _generic(self, func: Any, inputs: list[tuple[Tensor, Info]], out: Tensor) -> Info:
        """Elementwise ops, views, channel concatenation...: each output axis is the union of the inputs of the same
        size along it (a size-1 input broadcasts); any other size change loses track."""
        if out.ndim < 2:
            return _name(func)
        axes: list[Axis] = []
        for a in (0, 1):
            n, parts = out.shape[a - 2], []
            for t, info in inputs:
                m = t.shape[a - 2] if t.ndim >= 2 else -1
                ax = info[a]  # type: ignore[index]
                if m != n and m != 1:
                    return _name(func)
                parts.append(ax if m == n or ax is None else (0.0, ax[1], ax[2]))
            axes.append(_union(parts, n))
        return axes[0], axes[1]


def _num(v: float) -> float:
    return round(v) if abs(v - round(v)) < _EPS else v


def receptive_field(model: nn.Module, layer: str | nn.Module, input_size: tuple[int, int] = (224, 224)
                    ) -> ReceptiveField:
    """The exact receptive field of the units of ``layer`` for an input of ``input_size``, traced.

    One forward on zeros (1, C, H, W) (C: ``in_channels`` of the first ``nn.Conv2d``, else 3) follows the functions
    the forward actually calls, so functional code, asymmetric TensorFlow-"SAME" padding and residual branches count.
    Convolutions and pools follow Araujo et al. (2019); ``F.pad`` shifts the field; elementwise ops, channel
    concatenation and residual sums take the union (the largest field wins); global reductions, adaptive pools to 1,
    normalisations over space and broadcasts of a 1x1 map make an axis "whole". Upsampling, ``conv_transpose2d`` and
    adaptive pools whose output does not divide the input are bounded conservatively (fractional strides). Reflect /
    replicate padding counts like zeros (a border unit may mirror pixels outside its box). A module called several
    times is measured at its first call.

    Args:
        model: the network, left as it was (training flags, ``requires_grad``, no hooks).
        layer: a dotted module name or a module of ``model`` with a (B, C, h, w) output.
        input_size: (H, W); TensorFlow-"SAME" padding depends on it.

    Raises:
        ValueError: unknown layer, a layer the forward does not reach, a non-4-D output, or an op the tracer cannot
            follow (axis permutations, spatial slicing...): then use :func:`empirical_receptive_field`.
    """
    name, module = resolve_layer(model, layer)
    H, W = (int(input_size), int(input_size)) if isinstance(input_size, int) else map(int, input_size)
    param = next(model.parameters(), None)
    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    x = torch.zeros(1, conv.in_channels if conv is not None else 3, H, W,
                    dtype=param.dtype if param is not None else torch.float32,
                    device=param.device if param is not None else None)
    mode = _FieldMode()
    mode.set(x, ((1.0, 0.0, 0.0), (1.0, 0.0, 0.0)))
    try:
        with model_state(model), torch.no_grad(), mode:
            acts, _, _ = layer_outputs(model, x, {name: module}, grad=False, stop=True)
        out = acts.get(name)
        info = mode.get(out)
    finally:
        mode.infos.clear()
    if out is None:
        raise ValueError(f"layer {name!r} was not called during the forward pass; choose a layer the model uses")
    if out.ndim != 4:
        raise ValueError(f"layer {name!r} has a non-spatial output of shape {tuple(out.shape)}; a receptive field "
                         "needs a (B, C, h, w) map: choose an earlier layer")
    if not isinstance(info, tuple):
        what = f"the op {info}" if info else "an op outside torch functions (its output is not derived from the input)"
        raise ValueError(f"cannot trace the receptive field of layer {name!r}: {what} changes the spatial layout in a "
                         "way the tracer does not know; use seewhy.inside.empirical_receptive_field instead")
    axes = [(0.0, 0.0, n - 1.0) if ax is None else ax for ax, n in zip(info, (H, W), strict=True)]
    return ReceptiveField(tuple(_num(r - lo + 1) for _, lo, r in axes), tuple(_num(j) for j, _, _ in axes),
                          tuple(_num((lo + r) / 2) for _, lo, r in axes), (H, W), (out.shape[2], out.shape[3]),
                          (info[0] is None, info[1] is None))


def empirical_receptive_field(model: nn.Module, layer: str | nn.Module, x: Tensor, unit: int | tuple[int, int, int],
                              threshold: float = 0.0) -> EmpiricalField:
    """The pixels that move one unit of ``layer``: the bounding box of its input gradient (Luo et al., 2016).

    ``grad = sum over batch and channels of |d a / d x|``, ``a`` the unit's activation summed over the batch; the box
    holds the pixels with ``grad > threshold * grad.max()``: inside the exact box of :func:`receptive_field`, usually
    smaller (rectifiers, max-pooling, saturation).

    Args:
        model: the network (restored as it was afterwards).
        layer: a dotted module name or a module of ``model`` with a (B, C, h, w) output.
        x: inputs (B, C, H, W) or (C, H, W), on the model's device.
        unit: a channel (at the centre of the map, (h // 2, w // 2)) or ``(channel, i, j)``.
        threshold: fraction of the largest gradient a pixel must exceed (0: any nonzero gradient).

    Returns:
        EmpiricalField: ``grad`` (H, W), ``location``, ``box`` (or None when the gradient is all zero), ``size``.
    """
    name, module = resolve_layer(model, layer)
    x = (x[None] if x.ndim == 3 else x).detach().clone().requires_grad_(True)
    with model_state(model), torch.enable_grad():
        acts, _, _ = layer_outputs(model, x, {name: module}, grad=True, stop=True)
        act = acts.get(name)
        if act is None or act.ndim != 4:
            shape = "no output (not called)" if act is None else f"an output of shape {tuple(act.shape)}"
            raise ValueError(f"layer {name!r} has {shape}; an empirical field needs a (B, C, h, w) map")
        centre = (act.shape[2] // 2, act.shape[3] // 2)
        c, i, j = (int(u) for u in (unit if isinstance(unit, (tuple, list)) else (operator.index(unit), *centre)))
        if not (0 <= c < act.shape[1] and 0 <= i < act.shape[2] and 0 <= j < act.shape[3]):
            raise IndexError(f"unit {(c, i, j)} out of range for layer {name!r} of shape {tuple(act.shape[1:])}")
        (grad,) = torch.autograd.grad(act[:, c, i, j].sum(), x, allow_unused=True)
    grad = torch.zeros_like(x) if grad is None else grad
    field = grad.detach().abs().sum(dim=(0, 1))
    peak = float(field.max())
    box, size = None, (0, 0)
    if peak > 0:
        rows = torch.nonzero((field > threshold * peak).any(dim=1)).flatten()
        cols = torch.nonzero((field > threshold * peak).any(dim=0)).flatten()
        box = (int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1)
        size = (box[2] - box[0], box[3] - box[1])
    return EmpiricalField(field, (int(i), int(j)), box, size)
