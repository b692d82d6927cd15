"""Objectives for feature visualization: what the optimisation maximises, with algebra (``+ - * /`` by scalars).

An objective maps the activations of one forward pass, a dict ``{layer name: tensor}`` with two extra keys,
``"logits"`` (the model's output) and ``"input"`` (the transformed image in [0, 1] as the model got it, before
normalisation), to a value per image ``(B,)`` or one value for the batch. :func:`~seewhy.featvis.visualize`
maximises it: the loss it minimises and records is ``-objective`` averaged over the batch.

Any callable ``f(activations) -> Tensor`` is an objective too; the layers it reads are found by a first call.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "INPUT",
    "LOGITS",
    "Objective",
    "as_objective",
    "channel",
    "class_logit",
    "class_probability",
    "direction",
    "diversity",
    "inversion",
    "layer_l2",
    "neuron",
]

#: the activations key of the model's output
LOGITS = "logits"
#: the activations key of the transformed image in [0, 1] (before the model's normalisation)
INPUT = "input"


class Activations(dict):
    """The activations of one forward: ``{name: (B, ...) tensor}`` for the images being optimised, and
    ``references[key]``: the same dict for a reference image (see :func:`inversion`) passed through the same
    transforms in the same forward."""

    def __init__(self, acts: Mapping[str, Tensor], references: Mapping[int, Mapping[str, Tensor]] | None = None):
        super().__init__(acts)
        self.references = dict(references or {})

    def __missing__(self, key: str) -> Tensor:
        names = ", ".join(sorted(self)) or "none"
        raise KeyError(f"the objective reads {key!r}, which this forward did not record (recorded: {names}); "
                       "name a layer from model.named_modules(), 'logits' or 'input'")


class Objective:
    """A quantity to maximise: ``fn(activations) -> Tensor`` ((B,) per image, or a scalar for the batch).

    ``layers``: the activation keys it reads (the render records only those); ``references``: images in [0, 1]
    whose activations it compares against (:func:`inversion`), passed through the same transforms in each forward.
    Objectives add and subtract (``channel(L, 3) - 10 * diversity(L)``) and scale by numbers.
    """

    def __init__(self, fn: Callable[[Activations], Tensor], layers: Sequence[str] = (), name: str = "objective",
                 references: Sequence[tuple[int, Tensor]] = (), discover: bool = False) -> None:
        self.fn = fn
        #: True when the layers it reads are unknown (a plain callable): the render finds them by a first call
        self.discover = discover
        self.layers = tuple(dict.fromkeys(layers))
        self.name = name
        self.references = tuple(references)

    def __call__(self, acts: Mapping[str, Tensor]) -> Tensor:
        if not isinstance(acts, Activations):
            acts = Activations(acts)
        return self.fn(acts)

    def __repr__(self) -> str:
        return self.name

    # -- algebra -------------------------------------------------------------------------------------------------
    def _combine(self, other: Objective, sign: float, symbol: str) -> Objective:
        a, b = self, other

        def fn(acts: Activations) -> Tensor:
            return a(acts) + sign * b(acts)

        refs = dict(a.references)
        refs.update(b.references)
        return Objective(fn, a.layers + b.layers, f"{a.name} {symbol} {_wrap(b.name)}", tuple(refs.items()),
                         a.discover or b.discover)

    def __add__(self, other: Any) -> Objective:
        if isinstance(other, numbers.Real) and not isinstance(other, bool):
            return self if other == 0 else _const(self, float(other), "+")
        return self._combine(as_objective(other), 1.0, "+")

    def __radd__(self, other: Any) -> Objective:
        return self.__add__(other)  # sum([...]) starts from 0

    def __sub__(self, other: Any) -> Objective:
        if isinstance(other, numbers.Real) and not isinstance(other, bool):
            return _const(self, -float(other), "-")
        return self._combine(as_objective(other), -1.0, "-")

    def __rsub__(self, other: Any) -> Objective:
        return (-1.0 * self).__add__(other)

    def __neg__(self) -> Objective:
        return -1.0 * self

    def __mul__(self, other: Any) -> Objective:
        if isinstance(other, Objective) or callable(other) or not isinstance(other, numbers.Real) \
                or isinstance(other, bool):
            raise TypeError(f"an objective can only be multiplied or divided by a number (int or float), got "
                            f"{type(other).__name__}; to weigh two objectives, write a + 0.5 * b")
        w = float(other)
        a = self

        def fn(acts: Activations) -> Tensor:
            return w * a(acts)

        return Objective(fn, a.layers, f"{_num(w)} * {_wrap(a.name)}", a.references, a.discover)

    __rmul__ = __mul__

    def __truediv__(self, other: Any) -> Objective:
        if isinstance(other, numbers.Real) and not isinstance(other, bool) and other == 0:
            raise ZeroDivisionError("an objective divided by 0")
        if not isinstance(other, numbers.Real) or isinstance(other, bool):
            raise TypeError(f"an objective can only be multiplied or divided by a number (int or float), got "
                            f"{type(other).__name__}")
        return self * (1.0 / float(other))


def _num(w: float) -> str:
    return f"{w:g}"


def _wrap(name: str) -> str:
    return f"({name})" if (" + " in name or " - " in name) else name


def _const(a: Objective, c: float, symbol: str) -> Objective:
    def fn(acts: Activations) -> Tensor:
        return a(acts) + c

    return Objective(fn, a.layers, f"{a.name} {symbol} {_num(abs(c))}", a.references, a.discover)


def _int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{what} must be an int, got {value!r}")
    return int(value)


def _layer(layer: Any) -> str:
    if not isinstance(layer, str) or not layer:
        raise TypeError(f"layer must be a module name from model.named_modules() (a non-empty str), got {layer!r}")
    return layer


def _units(act: Tensor, c: int, layer: str) -> Tensor:
    if act.ndim < 2:
        raise ValueError(f"layer {layer!r} gives activations of shape {tuple(act.shape)}; expected (B, C, ...)")
    if not -act.shape[1] <= c < act.shape[1]:
        raise ValueError(f"channel {c} is out of range for layer {layer!r} with {act.shape[1]} channels "
                         f"(0..{act.shape[1] - 1})")
    return act[:, c]


# -- the objectives ----------------------------------------------------------------------------------------------
def channel(layer: str, c: int) -> Objective:
    """A channel's mean activation over positions (Olah et al. 2017): ``mean_{y,x} A[b, c, y, x]``."""
    layer, c = _layer(layer), _int(c, "channel")

    def fn(acts: Activations) -> Tensor:
        a = _units(acts[layer], c, layer)
        return a.reshape(a.shape[0], -1).mean(1)

    return Objective(fn, (layer,), f"channel({layer}, {c})")


def neuron(layer: str, c: int, y: int | None = None, x: int | None = None) -> Objective:
    """One unit at one position (Erhan et al. 2009): ``A[b, c, y, x]``, the centre ``(H // 2, W // 2)`` by default.
    Positions may be negative (counted from the end). Works on (B, C) layers too (then without a position)."""
    layer, c = _layer(layer), _int(c, "channel")
    y = None if y is None else _int(y, "y")
    x = None if x is None else _int(x, "x")

    def fn(acts: Activations) -> Tensor:
        a = _units(acts[layer], c, layer)
        if a.ndim == 1:
            return a
        if a.ndim != 3:
            raise ValueError(f"neuron needs (B, C, H, W) or (B, C) activations; layer {layer!r} gives "
                             f"{tuple(acts[layer].shape)}")
        h, w = a.shape[1:]
        yy = h // 2 if y is None else y
        xx = w // 2 if x is None else x
        if not (-h <= yy < h and -w <= xx < w):
            raise ValueError(f"position (y={yy}, x={xx}) is outside layer {layer!r}'s {h}x{w} map at this image size")
        return a[:, yy, xx]

    where = "" if y is None and x is None else f", y={y}, x={x}"
    return Objective(fn, (layer,), f"neuron({layer}, {c}{where})")


def layer_l2(layer: str) -> Objective:
    """DeepDream (Mordvintsev et al. 2015): the mean squared activation of a whole layer, ``mean A^2``."""
    layer = _layer(layer)

    def fn(acts: Activations) -> Tensor:
        a = acts[layer]
        return a.reshape(a.shape[0], -1).pow(2).mean(1)

    return Objective(fn, (layer,), f"layer_l2({layer})")


def _logits(acts: Activations, k: int) -> Tensor:
    z = acts[LOGITS]
    if z.ndim != 2:
        raise ValueError(f"class objectives need (B, classes) model outputs, got shape {tuple(z.shape)}")
    if not 0 <= k < z.shape[1]:
        raise ValueError(f"class {k} is out of range for a model with {z.shape[1]} outputs (0..{z.shape[1] - 1})")
    return z


def class_logit(k: int) -> Objective:
    """A class model (Simonyan et al. 2013): the class's logit ``z_k`` (logits, not probabilities: the softmax can
    rise by lowering the other classes)."""
    k = _int(k, "class")

    def fn(acts: Activations) -> Tensor:
        return _logits(acts, k)[:, k]

    return Objective(fn, (LOGITS,), f"class_logit({k})")


def class_probability(k: int) -> Objective:
    """The class's softmax probability ``softmax(z)_k``."""
    k = _int(k, "class")

    def fn(acts: Activations) -> Tensor:
        return _logits(acts, k).float().softmax(1)[:, k].to(acts[LOGITS].dtype)

    return Objective(fn, (LOGITS,), f"class_probability({k})")


def direction(layer: str, vector: Tensor | Sequence[float], cosine_power: float = 0) -> Objective:
    """A direction in activation space (Olah et al. 2018; Carter et al. 2019):
    ``mean_{y,x} <a_yx, v> * max(cos(a_yx, v), 0.1) ** cosine_power`` (the plain dot product at power 0).

    ``vector``: (C,), or (B, C) for one direction per image of the batch (the atlas renders its cells that way).
    """
    layer = _layer(layer)
    v = torch.as_tensor(vector).detach()
    if v.ndim not in (1, 2) or v.shape[-1] == 0 or not torch.isfinite(v).all():
        raise ValueError(f"vector must be finite, of shape (C,) or (B, C); got shape {tuple(v.shape)}")
    power = float(cosine_power)
    if power < 0:
        raise ValueError(f"cosine_power must be >= 0, got {cosine_power}")

    def fn(acts: Activations) -> Tensor:
        a = acts[layer]
        if a.ndim < 2 or a.shape[1] != v.shape[-1]:
            raise ValueError(f"the direction has {v.shape[-1]} entries but layer {layer!r} has "
                             f"{a.shape[1] if a.ndim > 1 else 'no'} channels")
        if v.ndim == 2 and v.shape[0] != a.shape[0]:
            raise ValueError(f"{v.shape[0]} directions for a batch of {a.shape[0]} images; pass (C,) or (batch, C)")
        a = a.reshape(a.shape[0], a.shape[1], -1)  # (B, C, P)
        vv = v.to(a.device, a.dtype)
        vv = vv[None, :, None] if vv.ndim == 1 else vv[:, :, None]
        dot = (a * vv).sum(1)  # (B, P)
        if power:
            eps = 1e-4
            cos = dot / (a.norm(dim=1) + eps) / (vv.norm(dim=1) + eps)
            dot = dot * cos.clamp_min(0.1) ** power
        return dot.mean(1)

    return Objective(fn, (layer,), f"direction({layer}{', cosine_power=' + _num(power) if power else ''})")


def _gram(a: Tensor) -> Tensor:
    """Per image, the channel Gram matrix of (B, C, ...) activations, flattened and L2-normalised: (B, C*C)."""
    a = a.reshape(a.shape[0], a.shape[1], -1)
    g = a @ a.transpose(1, 2)
    return F.normalize(g.reshape(a.shape[0], -1), dim=1)


def diversity(layer: str) -> Objective:
    """How alike the batch's images are (Olah et al. 2017, "Diversity"): the mean cosine similarity of the images'
    Gram matrices over all pairs ``i != j``, ``1/(B(B-1)) sum_{i!=j} <G_i/|G_i|, G_j/|G_j|>``, at most 1 (identical
    images). Subtract it to spread a batch over a unit's facets: ``channel(L, c) - 10 * diversity(L)``. One value for
    the batch; 0 for a batch of one."""
    layer = _layer(layer)

    def fn(acts: Activations) -> Tensor:
        a = acts[layer]
        b = a.shape[0]
        if b < 2:
            return a.new_zeros(())
        g = _gram(a)
        sim = g @ g.T
        return (sim.sum() - sim.diagonal().sum()) / (b * (b - 1))

    return Objective(fn, (layer,), f"diversity({layer})")


def inversion(layer: str, image: Tensor) -> Objective:
    """Invert a representation (Mahendran & Vedaldi 2015): match ``image``'s activations at ``layer``,
    ``-|A(x) - A(x0)|^2 / |A(x0)|^2``. ``image``: (3, H, W) or (1, 3, H, W) in [0, 1], the size being optimised; it
    goes through the same random transforms as the optimised image in each forward, so the two stay aligned."""
    layer = _layer(layer)
    if not isinstance(image, Tensor):
        raise TypeError(f"image must be a tensor (3, H, W) in [0, 1], got {type(image).__name__}")
    x0 = image.detach()
    if x0.ndim == 3:
        x0 = x0[None]
    if x0.ndim != 4 or x0.shape[0] != 1:
        raise ValueError(f"image must be (3, H, W) or (1, 3, H, W), got shape {tuple(image.shape)}")
    if not torch.isfinite(x0).all() or x0.min() < 0 or x0.max() > 1:
        raise ValueError("image must hold finite values in [0, 1] (pixels, not the model's normalised input)")
    key = id(x0)

    def fn(acts: Activations) -> Tensor:
        if key not in acts.references:
            raise RuntimeError("inversion's reference image was not passed through the model; render it with "
                               "seewhy.featvis.visualize")
        a = acts[layer]
        t = acts.references[key][layer].detach()
        a = a.reshape(a.shape[0], -1)
        t = t.reshape(1, -1).to(a.dtype)
        return -(a - t).pow(2).sum(1) / t.pow(2).sum().clamp_min(1e-12)

    return Objective(fn, (layer,), f"inversion({layer})", ((key, x0),))


# -- parsing -----------------------------------------------------------------------------------------------------
SPEC_HELP = ("channel:LAYER:C, neuron:LAYER:C[:Y:X], layer_l2:LAYER (or deepdream:LAYER), class:K (class_logit), "
             "probability:K (class_probability)")


def _callable_objective(fn: Callable[[Mapping[str, Tensor]], Tensor]) -> Objective:
    layers = getattr(fn, "layers", None)
    name = getattr(fn, "__name__", type(fn).__name__)
    return Objective(lambda acts: fn(acts), tuple(layers) if layers is not None else (), name,
                     discover=layers is None)


def parse(spec: str, classes: Sequence[str] | None = None) -> Objective:
    """An objective from a short string: ``channel:_blocks.9:12``, ``neuron:_blocks.9:12[:3:4]``,
    ``layer_l2:_blocks.5`` (``deepdream:...``), ``class:967`` or ``class:espresso`` (with ``classes``),
    ``probability:967``."""
    if not isinstance(spec, str):
        raise TypeError(f"an objective spec must be a str, got {type(spec).__name__}")
    kind, _, rest = spec.strip().partition(":")
    kind = kind.strip().lower()
    try:
        if kind in ("class", "class_logit", "logit", "probability", "class_probability"):
            k = _class_index(rest, classes)
            return class_logit(k) if kind in ("class", "class_logit", "logit") else class_probability(k)
        if kind in ("layer_l2", "deepdream"):
            if not rest:
                raise ValueError("no layer")
            return layer_l2(rest)
        if kind == "channel":
            layer, _, c = rest.rpartition(":")
            return channel(layer, int(c))
        if kind == "neuron":
            parts = rest.split(":")
            if len(parts) >= 4 and all(p.lstrip("-").isdigit() for p in parts[-3:]):
                return neuron(":".join(parts[:-3]), int(parts[-3]), int(parts[-2]), int(parts[-1]))
            return neuron(":".join(parts[:-1]), int(parts[-1]))
    except (ValueError, TypeError) as e:
        raise ValueError(f"cannot read objective {spec!r} ({e}); write one of {SPEC_HELP}") from None
    raise ValueError(f"unknown objective {spec!r}; write one of {SPEC_HELP}")


def _class_index(text: str, classes: Sequence[str] | None) -> int:
    text = text.strip()
    if text.lstrip("-").isdigit():
        return int(text)
    if classes:
        lowered = [c.lower() for c in classes]
        if text.lower() in lowered:
            return lowered.index(text.lower())
        raise ValueError(f"no class named {text!r}")
    raise ValueError(f"class {text!r} is not an index")


def as_objective(obj: Any, classes: Sequence[str] | None = None) -> Objective:
    """An :class:`Objective` from an objective, a spec string (see :func:`parse`) or a callable
    ``f(activations) -> Tensor`` (an optional ``f.layers`` names the layers it reads)."""
    if isinstance(obj, Objective):
        return obj
    if isinstance(obj, str):
        return parse(obj, classes)
    if callable(obj):
        return _callable_objective(obj)
    raise TypeError(f"an objective must be an Objective, a spec string ({SPEC_HELP}) or a callable "
                    f"f(activations) -> Tensor; got {type(obj).__name__}")
