"""The method registry, the Method base class, the Explanation record and ``explain()``."""

from __future__ import annotations

import dataclasses
import difflib
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from . import postprocess
from .cost import Cost
from .hooks import model_state, module_outputs
from .targets import Target, TargetSpec, make_target, parse_topk

log = logging.getLogger("seewhy")

METHODS: dict[str, type[Method]] = {}
#: what a method's attributions are: input-space (B,C,H,W), a layer map (B,1,h,w), prototype maps (B,P,h,w)
KINDS = ("pixel", "map", "prototype")
#: method families in the order listings and reports show them
FAMILIES = ("gradient", "cam", "lrp", "perturbation", "surrogate", "prototype", "control", "other")


def register(name: str) -> Callable[[type[Method]], type[Method]]:
    """Class decorator: register a :class:`Method` subclass (a dataclass of hyperparameters) by name."""

    def deco(cls: type[Method]) -> type[Method]:
        if name in METHODS and METHODS[name] is not cls:
            raise ValueError(f"a method named {name!r} is already registered ({METHODS[name].__name__})")
        cls.name = name
        METHODS[name] = cls
        return cls

    return deco


def list_methods() -> list[str]:
    """Names of the registered methods, in registration order."""
    return list(METHODS)


def seeded(name: str, params: Mapping[str, Any] | None, seed: int | None) -> dict[str, Any]:
    """``params`` for the registered method ``name``, with ``seed`` added when the method draws random numbers (it
    has a ``seed`` parameter) and ``params`` does not set one: how callers pass one run seed to every method."""
    out = dict(params or {})
    if seed is not None and "seed" not in out and name in METHODS and \
            "seed" in {f.name for f in dataclasses.fields(METHODS[name])}:
        out["seed"] = seed
    return out


def get_method(name: str, **params: Any) -> Method:
    """Build the registered method ``name`` with hyperparameters ``params``.

    Raises:
        ValueError: unknown method name or parameter (the message lists the valid ones).
    """
    if name not in METHODS:
        close = difflib.get_close_matches(name, METHODS, n=3)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise ValueError(f"unknown method {name!r}; {hint}registered: {', '.join(METHODS)}")
    cls = METHODS[name]
    valid = {f.name for f in dataclasses.fields(cls)}
    for key in params:
        if key not in valid:
            close = difflib.get_close_matches(key, valid, n=2)
            hint = f" (did you mean {' or '.join(close)}?)" if close else ""
            raise ValueError(
                f"method {name!r} has no parameter {key!r}{hint}; its parameters: {', '.join(sorted(valid)) or 'none'}"
            )
    return cls(**params)


@dataclass
class Call:
    """What one method call learns besides the attributions: the resolved target, the model's output
    on the inputs (when the method computed it anyway) and method-specific extras."""

    target: Target
    output: Tensor | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    def resolve(self, output: Tensor) -> Target:
        """Record the model's ``output`` on the original inputs and resolve the target from it."""
        self.output = output.detach()
        self.target = self.target.resolve(self.output)
        return self.target

    def ensure_target(self, model: nn.Module, inputs: Tensor) -> Target:
        """Resolve a pending target with a forward pass without gradients (cheap next to the method)."""
        if self.target.pending or self.output is None:
            with torch.no_grad():
                self.resolve(model(inputs))
        return self.target


@dataclass
class Method:
    """Base class: a dataclass of hyperparameters, called as ``method(model, inputs, target) -> Tensor``.

    A subclass writes only its math, in one of two places, and is registered with :func:`register`:
    :meth:`attribute` (one target; it may resolve a pending target from a forward it runs anyway), or
    :meth:`attribute_targets` (several resolved targets from shared work, e.g. the same perturbed forwards); each
    defaults to the other. Batching over expanded inputs (steps, noisy copies, perturbations) belongs to
    :class:`seewhy.methods.base.BatchedMethod`. ``kind`` is one of :data:`KINDS`: ``"pixel"`` (attributions
    (B,C,H,W) in input space), ``"map"`` ((B,1,h,w) at layer resolution) or ``"prototype"`` ((B,P,h,w)).
    ``family`` groups methods in listings and reports ("gradient", "cam", "perturbation", "surrogate", "lrp",
    "prototype", "control"). ``in_all`` is False for methods that "all" leaves out and that run only when named:
    controls that ignore the model, and methods made for one kind of model.
    """

    name: ClassVar[str] = ""
    kind: ClassVar[str] = "pixel"
    family: ClassVar[str] = "other"
    in_all: ClassVar[bool] = True
    heatmap_convention: ClassVar[dict[str, Any]] = {"reduce": "sum", "sign": "abs", "normalize": "percentile"}

    @property
    def params(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def attribute(self, model: nn.Module, inputs: Tensor, call: Call) -> Tensor:
        """Attributions of ``inputs`` for ``call.target`` (pending, e.g. "top1", until resolved from the model's
        output); extras go to ``call.extras``. Default: :meth:`attribute_targets` on the one target."""
        if type(self).attribute_targets is Method.attribute_targets:
            raise NotImplementedError(f"{type(self).__name__} defines neither attribute() nor attribute_targets()")
        if call.output is None:  # f(x), and the target resolved from it
            call.resolve(self.forward(model, inputs))
        ((attr, extras),) = self.attribute_targets(model, inputs, [call.target], call)
        call.extras.update(extras)
        return attr

    def attribute_targets(self, model: nn.Module, inputs: Tensor, targets: list[Target],
                          call: Call) -> list[tuple[Tensor, dict[str, Any]]]:
        """(attributions, extras) for each resolved target; extras shared by all go to ``call.extras``, which holds
        the model's output on ``inputs``. Default: one :meth:`attribute` call per target."""
        out = []
        for t in targets:
            one = Call(t, output=call.output)
            out.append((self.attribute(model, inputs, one), one.extras))
        return out

    def forward(self, model: nn.Module, inputs: Tensor) -> Tensor:
        """The model's output on ``inputs`` without gradients (batched methods use the engine's fast path)."""
        with torch.no_grad():
            return model(inputs)

    def cost(self, model: nn.Module | None = None, inputs: Tensor | None = None) -> Cost:
        """Model evaluations per image of one call with these hyperparameters (default: one forward+backward).

        Without a model the answer comes from the hyperparameters alone (for listings); given ``model`` and one
        image ``inputs`` (1,C,H,W), a method may refine it (e.g. time the part of the model it re-runs)."""
        return Cost(backwards=1)

    def lighter(self, factor: float) -> dict[str, Any]:
        """Hyperparameters that cut the cost of a call by about ``factor`` (< 1), for the hint printed when a method
        is estimated to be slow: the count named by ``cost().lower`` scaled down (empty when nothing lowers it)."""
        name = self.cost().lower
        value = getattr(self, name, None) if name else None
        if not isinstance(value, int) or isinstance(value, bool):
            return {}
        return {name: max(1, int(value * factor))}

    def report_tables(self, batches: Sequence[tuple[Explanation, ...]], keys: Sequence[str]) -> list[Any]:
        """Tables this method adds to a report (:class:`seewhy.runner.Table`), from its explanations: one tuple per
        batch (one Explanation per class rank), ``keys`` naming the images of every batch in order. Default: none."""
        return []

    def run(
        self, model: nn.Module, inputs: Tensor, target: TargetSpec = None, *, class_names: Sequence[str] | None = None
    ) -> tuple[Tensor, Call]:
        """Attribute with the model in eval mode and frozen, restored afterwards; returns (attr, call)."""
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        inputs = check_inputs(inputs)
        names = class_names if class_names is not None else getattr(model, "class_names", None)
        call = Call(make_target(target, inputs.shape[0], names))
        with torch.inference_mode(False), model_state(model):
            attr = self.attribute(model, inputs, call)
        check_attribution(attr, inputs, self)
        return attr, call

    def __call__(self, model: nn.Module, inputs: Tensor, target: TargetSpec = None) -> Tensor:
        return self.run(model, inputs, target)[0]

    def explain_targets(self, model: nn.Module, inputs: Tensor, targets: Sequence[TargetSpec]) -> list[Explanation]:
        """One :class:`Explanation` per target spec, each resolved as in :func:`explain` (e.g.
        ``targets=["top1", 281, 285]``); a method that writes :meth:`attribute_targets` shares its work (perturbation
        methods: the same forward passes) across them."""
        if isinstance(targets, (str, int, Tensor)) or callable(targets) or not len(targets):
            raise TypeError("targets must be a non-empty list of target specs, e.g. ['top1', 281]")
        inputs = check_inputs(inputs)
        names = getattr(model, "class_names", None)
        with torch.inference_mode(False), model_state(model):
            output = self.forward(model, inputs)
            resolved = [make_target(t, inputs.shape[0], names).resolve(output) for t in targets]
            call = Call(resolved[0], output=output)
            results = self.attribute_targets(model, inputs, resolved, call)
        out = []
        for t, (attr, extras) in zip(resolved, results, strict=True):
            check_attribution(attr, inputs, self)
            out.append(self.explanation(model, inputs, attr, t, output, {**call.extras, **extras}))
        return out

    def explanation(self, model: nn.Module, inputs: Tensor, attr: Tensor, target: Target, output: Tensor,
                    extras: dict[str, Any]) -> Explanation:
        """The :class:`Explanation` record of one call (``extras["layer"]`` becomes its ``layer``), its empty
        heatmaps flagged."""
        extras = dict(extras)
        exp = Explanation(
            attributions=attr.detach(), targets=target.indices, scores=target.score(output).detach(),
            method=self.name, params=self.params, layer=extras.pop("layer", None), kind=self.kind,
            heatmap_convention=dict(self.heatmap_convention), extras=extras,
            class_names=getattr(model, "class_names", None), inputs=inputs.detach(),
        )
        flag_empty_heatmaps(exp, model)
        return exp


def check_inputs(inputs: Tensor) -> Tensor:
    """A float (B,C,H,W) tensor; a 3-D tensor is one image."""
    if not isinstance(inputs, Tensor):
        raise TypeError(f"inputs must be a torch.Tensor of shape (B,C,H,W), got {type(inputs).__name__}")
    if inputs.ndim == 3:
        inputs = inputs.unsqueeze(0)
    if inputs.ndim != 4:
        raise ValueError(
            f"inputs must have shape (B,C,H,W) or (C,H,W), got {tuple(inputs.shape)}; "
            "add a batch dimension with inputs.unsqueeze(0)"
        )
    if not inputs.is_floating_point():
        raise TypeError(
            f"inputs must be a float tensor, got {inputs.dtype}; convert and normalise images first "
            "(seewhy.images.preprocess or the model's own transform)"
        )
    if inputs.shape[0] == 0:
        raise ValueError("inputs hold no image (batch size 0)")
    return inputs


def check_attribution(attr: Tensor, inputs: Tensor, method: Method) -> None:
    if not isinstance(attr, Tensor) or attr.ndim != 4 or attr.shape[0] != inputs.shape[0]:
        shape = tuple(attr.shape) if isinstance(attr, Tensor) else type(attr).__name__
        raise RuntimeError(f"method {method.name!r} returned {shape}; expected ({inputs.shape[0]}, C, h, w)")
    if method.kind not in KINDS:
        raise RuntimeError(f"method {method.name!r} declares kind {method.kind!r}; a kind is one of {', '.join(KINDS)}")
    if method.kind == "pixel" and attr.shape != inputs.shape:
        raise RuntimeError(f"method {method.name!r} returned {tuple(attr.shape)} for inputs {tuple(inputs.shape)}")
    if attr.device != inputs.device:
        raise RuntimeError(f"method {method.name!r} returned a tensor on {attr.device}, inputs are on {inputs.device}")


@dataclass(frozen=True)
class Explanation:
    """The result of :func:`explain`: raw signed attributions plus what they explain.

    ``attributions``: (B,C,H,W) for pixel methods, (B,1,h,w) for map methods; ``targets``: (B,) class
    indices (``None`` for callable targets); ``scores``: (B,) the model's score for each target.
    """

    attributions: Tensor
    targets: Tensor | None
    scores: Tensor
    method: str
    params: dict[str, Any]
    layer: str | None = None
    kind: str = "pixel"
    heatmap_convention: dict[str, Any] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)
    class_names: Sequence[str] | None = field(default=None, repr=False)
    inputs: Tensor | None = field(default=None, repr=False)

    def heatmap(self, size: tuple[int, int] | None = None, **overrides: Any) -> Tensor:
        """(B,1,H,W) in [0, 1] at ``size`` (default: the input size), by the method's convention.

        ``overrides`` change single steps (``reduce``, ``sign``, ``upsample``, ``normalize``, ``percentile``);
        see :mod:`seewhy.postprocess`.
        """
        steps = self.heatmap_steps(size, **overrides)
        return postprocess.heatmap(self.attributions, steps.pop("size"), **steps)

    def heatmap_steps(self, size: tuple[int, int] | None = None, **overrides: Any) -> dict[str, Any]:
        """The post-processing applied by :meth:`heatmap`, for the record."""
        if size is None and self.inputs is not None:
            size = tuple(self.inputs.shape[-2:])
        steps = {"reduce": "sum", "sign": "abs", "upsample": "bilinear", "normalize": "minmax"}
        steps.update(self.heatmap_convention)
        steps.update(overrides)
        steps["size"] = size
        return steps

    def label(self, i: int) -> str:
        """Human-readable target of sample ``i``."""
        if self.targets is None:
            return "custom target"
        t = int(self.targets[i])
        return f"{t} {self.class_names[t]}" if self.class_names and t < len(self.class_names) else str(t)

    def overlay(self, i: int | Sequence[int] | None = None, *, size: int | tuple[int, int] | None = None,
                cmap: str | None = None, alpha: float = 0.5, images: Any = None, mean: Sequence[float] | None = None,
                std: Sequence[float] | None = None, **heatmap_overrides: Any) -> Any:
        """uint8 numpy overlays of the heatmap (by the method's convention; signed maps in a signed colormap) on the
        inputs, or on ``images`` (one per sample): (B,H,W,3), or (H,W,3) for one index ``i``.

        ``mean``/``std`` denormalise the inputs for display (else each is min-max scaled); without inputs or
        ``images``, the colormapped heatmaps alone. See :func:`seewhy.views.explanation_overlays`.
        """
        from .views import explanation_overlays

        return explanation_overlays(self, i, size=size, cmap=cmap, alpha=alpha, images=images, mean=mean, std=std,
                                    **heatmap_overrides)

    def save(self, path: Any, *, size: int | tuple[int, int] | None = None, cmap: str | None = None,
             alpha: float = 0.5, images: Any = None, mean: Sequence[float] | None = None,
             std: Sequence[float] | None = None, **heatmap_overrides: Any) -> Any:
        """Write one overlay PNG per image (atomically) and return the list of ``pathlib.Path`` written.

        One image: exactly ``path`` (``.png`` added without a suffix); more: ``<stem>-0.png``, ``<stem>-1.png``...;
        a folder (existing, or ending with a separator): ``<method>-<i>.png`` in it. Other arguments as in
        :meth:`overlay`; see :func:`seewhy.views.save_explanation`.
        """
        from .views import save_explanation

        return save_explanation(self, path, size=size, cmap=cmap, alpha=alpha, images=images, mean=mean, std=std,
                                **heatmap_overrides)

    def show(self, i: int | Sequence[int] | None = None, *, cols: int = 2, max_images: int = 16,
             size: int | tuple[int, int] | None = None, cmap: str | None = None, alpha: float = 0.5,
             images: Any = None, mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
             figsize: tuple[float, float] | None = None, block: bool | None = None, **heatmap_overrides: Any) -> Any:
        """A ``matplotlib.figure.Figure``: per image the input, the overlay titled with label and score, and a
        colourbar; the method and layer on top; at most ``max_images`` images, ``cols`` per row.

        Shows once in Jupyter; opens a window in scripts (``plt.show(block=block)``); under Agg and other file
        backends it only returns the figure (no blocking, no warning). See :func:`seewhy.views.explanation_figure`.
        """
        from .views import explanation_figure

        return explanation_figure(self, i, cols=cols, max_images=max_images, size=size, cmap=cmap, alpha=alpha,
                                  images=images, mean=mean, std=std, figsize=figsize, block=block,
                                  **heatmap_overrides)

    def __repr__(self) -> str:
        """One line: method, layer, the attributions' shape/dtype/device, the first targets and scores."""

        def first(items: list[str], n: int) -> str:
            more = f", ... {n - len(items)} more" if n > len(items) else ""
            return f"[{', '.join(items)}{more}]"

        def count(t: Any) -> int:
            return int(t.numel()) if isinstance(t, Tensor) else len(t)

        a = self.attributions
        shape = (f"{tuple(a.shape)} {str(a.dtype).removeprefix('torch.')} {a.device}" if isinstance(a, Tensor)
                 else type(a).__name__)
        parts = [f"method={self.method!r}"] + ([f"layer={self.layer!r}"] if self.layer is not None else [])
        parts.append(f"attributions={shape}")
        if self.targets is None:
            parts.append("targets=custom")
        else:
            n = count(self.targets)
            names = self.class_names
            items = []
            for t in torch.as_tensor(self.targets).flatten()[: n if n <= 5 else 4].tolist():
                name = str(names[t]) if names is not None and 0 <= t < len(names) else None
                name = name if name is None or len(name) <= 30 else name[:27] + "..."
                items.append(f"{t} {name!r}" if name is not None else str(t))
            parts.append(f"targets={first(items, n)}")
        if self.scores is not None:
            n = count(self.scores)
            values = torch.as_tensor(self.scores).flatten()[: n if n <= 5 else 4].tolist()
            parts.append(f"scores={first([f'{float(v):.3g}' for v in values], n)}")
        return f"Explanation({', '.join(parts)})"

    def _repr_html_(self) -> str:
        from .views import explanation_html

        return explanation_html(self)


def explain(
    model: nn.Module,
    inputs: Tensor,
    method: str | Method = "integrated_gradients",
    target: TargetSpec = None,
    layer: str | nn.Module | None = None,
    batch_size: int | None = None,
    *,
    topk: int | None = None,
    **params: Any,
) -> Explanation | list[Explanation]:
    """Explain ``model``'s decision on ``inputs`` with a registered method.

    Args:
        model: any ``nn.Module`` returning (B, K) scores (or any output, with a callable target).
        inputs: float (B,C,H,W), or (C,H,W) for one image, on the model's device.
        method: a registered name (see :func:`list_methods`) or a configured :class:`Method`.
        target: None/"top1", an int, one int per sample, a class name, a callable ``f(output) -> (B,)``, or
            ``"topk"`` such as ``"top3"``: the k best classes of each image (a list of k explanations).
        layer: dotted module name or module, for methods that work at a layer.
        batch_size: how many expanded inputs go through the model at once (results do not depend on it).
        topk: explain the ``topk`` best classes of each image, one :class:`Explanation` per rank (rank 0: the
            predicted class), returned as a list; the same as ``target="top<k>"``. Perturbation methods share their
            forward passes across the k classes.
        **params: the method's hyperparameters.

    A map that a ReLU empties (the heatmap of a method whose convention keeps the positive part, for an image whose
    raw map is negative, or nearly) is flagged in ``extras["empty_heatmap"]`` (B,) and ``extras["warnings"]``, and
    logged, with what to do instead.
    """
    m = _method(method, layer, batch_size, params)
    inputs = check_inputs(inputs)
    k = _topk(target, topk)
    if k is not None:
        return _explain_topk(model, inputs, m, k)
    attr, call = m.run(model, inputs, target)
    if call.output is None:
        with torch.inference_mode(False), model_state(model):
            call.ensure_target(model, inputs)
    return m.explanation(model, inputs, attr, call.target, call.output, call.extras)


def _method(method: str | Method, layer: Any, batch_size: int | None, params: dict[str, Any]) -> Method:
    if isinstance(method, Method):
        if params or layer is not None or batch_size is not None:
            raise ValueError("pass hyperparameters either in the Method object or as keywords, not both")
        return method
    extra = {k: v for k, v in (("layer", layer), ("batch_size", batch_size)) if v is not None}
    fields = {f.name for f in dataclasses.fields(METHODS[method])} if method in METHODS else None
    for key in extra:
        if fields is not None and key not in fields:
            raise ValueError(f"method {method!r} takes no {key}= parameter")
    return get_method(method, **extra, **params)


def _topk(target: TargetSpec, topk: int | None) -> int | None:
    """k for ``topk=k`` or a ``"top<k>"`` target with k > 1; None for a single target."""
    k = parse_topk(target) if isinstance(target, str) else None
    if topk is not None:
        if not isinstance(topk, int) or isinstance(topk, bool) or topk < 1:
            raise ValueError(f"topk must be a positive int, got {topk!r}")
        if target is not None and (k is None or k != topk) and not (isinstance(target, str) and k == 1):
            raise ValueError(f"give either topk={topk} or target={target!r}, not both")
        return topk
    return k if k is not None and k > 1 else None


def _explain_topk(model: nn.Module, inputs: Tensor, m: Method, k: int) -> list[Explanation]:
    """One explanation per rank of the ``k`` best classes of each image (perturbation methods share forwards)."""
    with torch.inference_mode(False), model_state(model), torch.no_grad():
        output = model(inputs)
    if not isinstance(output, Tensor) or output.ndim != 2:
        raise ValueError(f"target='top{k}' needs class scores (B, K) from the model; got "
                         f"{getattr(output, 'shape', type(output).__name__)}")
    if k > output.shape[1]:
        raise ValueError(f"target='top{k}' asks for {k} classes, but the model has {output.shape[1]}")
    ranks = output.detach().topk(k, dim=1).indices.cpu()  # (B, k)
    exps = m.explain_targets(model, inputs, [ranks[:, r] for r in range(k)])
    for r, e in enumerate(exps):
        e.extras["rank"] = r
    return exps


#: a rectified heatmap is flagged as empty when its positive part holds at most this share of the map's mass
EMPTY_SHARE = 0.01


def flag_empty_heatmaps(exp: Explanation, model: nn.Module | None = None) -> Tensor | None:
    """Flag the images whose heatmap a ReLU empties (``sign="positive"`` conventions; at most :data:`EMPTY_SHARE` of
    the raw map's mass is positive): ``extras["empty_heatmap"]`` (B,) bool, a message in ``extras["warnings"]`` and
    the log. For a layer method the message names a later layer whose activations are not negative (one dry forward of
    ``model``, only when a map is flagged). Returns the flags (None when the convention keeps negative values)."""
    steps = exp.heatmap_steps()
    if steps.get("sign") != "positive" or exp.attributions.ndim != 4:
        return None
    share = postprocess.positive_share(exp.attributions, steps.get("reduce", "sum"))
    empty = share <= EMPTY_SHARE
    exp.extras["empty_heatmap"] = empty.cpu()
    if not bool(empty.any()):
        return empty
    flat = exp.attributions.detach().flatten(1)
    which = [int(i) for i in torch.nonzero(empty).flatten()]
    ranges = ", ".join(f"image {i}: {float(flat[i].min()):.3g} to {float(flat[i].max()):.3g}" for i in which[:4])
    more = f" and {len(which) - 4} more" if len(which) > 4 else ""
    msg = (f"{exp.method}: the heatmap of {len(which)} of {len(empty)} image(s) is empty after the ReLU of its "
           f"convention: the raw map is zero or negative (nearly) everywhere ({ranges}{more}); this follows the "
           "method's definition, the raw signed map is in .attributions and heatmap(sign='all') shows both signs")
    if exp.layer and model is not None and exp.inputs is not None:
        later = _non_negative_layer_after(model, exp.inputs[:1], exp.layer.split(", ")[-1])
        msg += (f". Layer {exp.layer!r} has signed activations (before a normalisation or activation): explain a layer "
                "after the activation" + (f", e.g. layer={later!r}" if later else ""))
    exp.extras.setdefault("warnings", []).append(msg)
    log.warning("%s", msg)
    return empty


def _non_negative_layer_after(model: nn.Module, x: Tensor, layer: str) -> str | None:
    """The first module finishing after ``layer`` whose output is a spatial map with no negative value (and not all
    zero)."""

    def non_negative(name: str, out: Tensor) -> bool | None:
        if out.ndim != 4 or out.shape[-2:].numel() <= 1:
            return None
        return bool((out >= 0).all() and (out > 0).any())

    try:
        with torch.inference_mode(False), model_state(model):
            order = [(n, ok) for n, ok in module_outputs(model, x, non_negative) if ok is not None]
    except Exception:  # a suggestion only: never fail an explanation for it
        return None
    names = [n for n, _ in order]
    if layer not in names:
        return None
    start = names.index(layer)
    return next((n for n, ok in order[start + 1 :] if ok and not n.startswith(layer + ".")), None)
