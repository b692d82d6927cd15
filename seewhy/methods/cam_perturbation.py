"""Gradient-free CAMs that perturb the model: Score-CAM (masks the input) and Ablation-CAM (zeroes channels).

Both run under ``torch.no_grad()`` on ``inputs.device``, evaluate their B*K perturbed rows in chunks of
``batch_size`` and give the same result for any chunking. Maps are raw and signed, (B,1,h,w), as for every CAM.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor, nn

from .. import engine
from ..core import Call, Cost, check_inputs, register
from ..hooks import ModuleCall, model_state, record_calls, replace_output, tensor_version
from ..progress import progress
from ..targets import make_target
from .base import BatchedMethod
from .cam import CAMMethod, forward_layers, token_grid

log = logging.getLogger(__name__)


def _weighted_sum(w: Tensor, a: Tensor) -> Tensor:
    return (w[:, :, None, None] * a).sum(1, keepdim=True)


@register("scorecam")
@dataclass
class ScoreCAM(CAMMethod, BatchedMethod):
    """Score-CAM (Wang et al. 2020, arXiv:1910.01279): M = sum_k w_k A_k, w = softmax_k(S(x * H_k) - S(x_b)),
    H_k = min-max(upsample(A_k)) (bilinear to the input size, ``align_corners=False`` as in the official code;
    pytorch-grad-cam upsamples with ``align_corners=True``, which moves the masks by a fraction of a cell: map
    correlation 0.993 at efficientnet_lite0's last layer on chelsea), x_b = 0.

    ``score="logit"`` (default) scores the raw model output, as TorchCAM and pytorch-grad-cam do; the paper's
    official code uses the softmax probability of the class, ``score="probability"``. The baseline score only
    shifts every channel of a sample equally, which the softmax ignores; it is kept as in the paper (the increase of
    confidence). A constant channel gives no mask: it is left out (weight 0) and never evaluated, as in the official
    code (pytorch-grad-cam evaluates it on an all-zero image and lets it into the softmax, which rescales the map by
    a positive factor per sample); a sample with no usable channel gets an all-zero map. Only the usable channels
    cost a forward pass; after a ReLU most channels of a late layer are often all zero (818 of 1280 at
    efficientnet_lite0's last layer on chelsea). ``extras["weights"]``: the (B,K) weights;
    ``extras["evaluations"]``: forward passes per sample (usable channels + 1 baseline)."""

    score: str = "logit"

    def cost(self, model: nn.Module | None = None, inputs: Tensor | None = None) -> Cost:
        """One forward for the activations, one of the baseline, one per usable (not constant) channel of the layer:
        without a model at most K (the channel count), given ``model`` and one image the count on that image."""
        if model is None or inputs is None:
            return Cost(forwards=2, per_channel=1, note="at most; constant channels are skipped")
        x = check_inputs(inputs)[:1]
        with torch.inference_mode(False), model_state(model), torch.no_grad():
            call = Call(make_target(None, 1))
            layers = self._layers(model, x, call)
            acts, _ = forward_layers(model, x, layers, grad=False)
            a = self._grid(acts[layers[0][0]], layers[0][0], x)
        usable = int((a.amax(dim=(2, 3)) > a.amin(dim=(2, 3))).sum())
        return Cost(forwards=2 + usable, note=f"{usable} of {a.shape[1]} channels vary on this image")

    def attribute(self, model: nn.Module, inputs: Tensor, call: Call) -> Tensor:
        if self.score not in ("logit", "probability"):
            raise ValueError(f"unknown score {self.score!r}; use 'logit' or 'probability'")
        if self.score == "probability" and call.target.indices is None and not call.target.pending:
            raise ValueError("score='probability' needs class targets; use score='logit' with a callable target")
        layers = self._layers(model, inputs, call)
        name = layers[0][0]
        with torch.no_grad():
            acts, out = forward_layers(model, inputs, layers, grad=False)
            target = call.resolve(out)
            a = self._grid(acts[name], name, inputs).detach()
            b, k, h, w = a.shape
            # a constant channel stays constant when upsampled; a varying one varies (the output grid is at least
            # as fine as the layer's in practice; a map that flattens out anyway gets an all-zero mask)
            valid = (a.amax(dim=(2, 3)) > a.amin(dim=(2, 3))).reshape(-1)
            rows = valid.nonzero().squeeze(1).cpu()  # flat (sample, channel) rows that get a forward
            flat = a.reshape(b * k, 1, h, w)
            sample = torch.div(rows, k, rounding_mode="floor")

            def masked(idx: Tensor) -> Tensor:
                up = F.interpolate(flat[rows[idx].to(a.device)], size=inputs.shape[-2:], mode="bilinear")
                lo, hi = up.amin(dim=(2, 3), keepdim=True), up.amax(dim=(2, 3), keepdim=True)
                span = hi - lo
                mask = (up - lo) / torch.where(span > 0, span, torch.ones_like(span))
                return inputs[sample[idx].to(inputs.device)] * mask

            scores = torch.full((b * k,), float("-inf"), dtype=a.dtype, device=a.device)
            if len(rows):
                scores[rows.to(a.device)] = engine.evaluate(
                    model, masked, sample, target, like=inputs, batch_size=self.batch_size, score=self.score,
                    desc="score-cam",
                ).to(scores)
            base = engine.evaluate(
                model, lambda idx: torch.zeros_like(inputs[idx.to(inputs.device)]), torch.arange(b), target,
                like=inputs, batch_size=self.batch_size, score=self.score,
            ).to(scores)
            cic = scores.view(b, k) - base[:, None]
            weights = torch.softmax(cic, dim=1)
            weights = torch.where(valid.view(b, k).any(1, keepdim=True), weights, torch.zeros_like(weights))
            weights = torch.nan_to_num(weights, nan=0.0)
            call.extras["weights"] = weights
            call.extras["evaluations"] = valid.view(b, k).sum(1) + 1
            return _weighted_sum(weights, a)


Tail = Callable[[Tensor, Tensor], Any]
"""``tail(rows, samples)``: the model's output for rows of the layer's activation; ``samples`` (n,) says which input
each row belongs to (for values computed once on the inputs that the rest of the model still uses)."""


@dataclass(frozen=True)
class Split:
    """How Ablation-CAM evaluates its ablations: ``tail`` (None: full forwards), ``kind`` (how the tail was found:
    "head", "forward_head", "sequential", "fx" or "children") and ``reason`` (why none was found)."""

    tail: Tail | None
    kind: str | None = None
    reason: str = ""


def sequential_tail(model: nn.Module, name: str) -> Callable[[Tensor], Any] | None:
    """The rest of the forward after layer ``name`` when every module on the path from ``model`` to it is an
    ``nn.Sequential`` (the following siblings at each level, innermost first); else None."""
    parts = name.split(".")
    chain = [model]
    for p in parts[:-1]:
        chain.append(chain[-1]._modules[p])
    if not all(isinstance(m, nn.Sequential) for m in chain):
        return None
    stages: list[nn.Module] = []
    for parent, key in reversed(list(zip(chain, parts, strict=True))):
        keys = list(parent._modules)
        stages.extend(parent._modules[k] for k in keys[keys.index(key) + 1 :])

    def tail(x: Tensor) -> Any:
        for m in stages:
            x = m(x)
        return x

    return tail


def model_tail(model: nn.Module, name: str) -> Callable[[Tensor], Any] | None:
    """``model.forward_head`` when the model declares that it continues from layer ``name``
    (``model.head_layer == name``), as seewhy's zoo models do; else None."""
    if getattr(model, "head_layer", None) == name and callable(getattr(model, "forward_head", None)):
        return model.forward_head
    return None


class _PathTracer(fx.Tracer):
    """Traces the forwards of the modules on the path from the model down to ``layer``; the layer stays one call.
    ``opaque=True``: so does every module off that path (control flow inside them, e.g. "SAME" padding computed from
    the input size, does not stop the trace); ``opaque=False``: fx's default leaves (``torch.nn`` modules), for the
    models whose submodules fx can only reach by tracing through their parents."""

    def __init__(self, layer: str, opaque: bool = True) -> None:
        super().__init__()
        parts = layer.split(".")
        self.layer, self.opaque = layer, opaque
        self.path = {".".join(parts[:i]) for i in range(len(parts))}

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if module_qualified_name == self.layer:
            return True
        if module_qualified_name in self.path:
            return False
        return self.opaque or super().is_leaf_module(m, module_qualified_name)


def fx_tail(model: nn.Module, name: str, inputs: Tensor) -> tuple[Tail | None, str]:
    """The part of ``model`` after layer ``name`` as a ``torch.fx`` graph, or ``(None, why not)``.

    The model is traced through the modules on the path to the layer (:class:`_PathTracer`; else as
    ``torch.fx.symbolic_trace`` does, with the layer as one call); the layer must be called once. The tail holds every
    node that depends on the layer's output (and every call after it whose result is unused: an in-place op). Its
    inputs are the layer's output and every other value the tail uses (e.g. a residual skip crossing the layer):
    those are computed once here, on ``inputs``, and indexed per row by its sample. Parameters are shared, nothing is
    attached to ``model``. The caller checks the tail reproduces the output before using it."""
    graph, errors = None, []
    for opaque in (True, False):
        try:
            graph = _PathTracer(name, opaque).trace(model)
            break
        except Exception as err:  # any trace failure means no fx split: reported in the fallback log line
            errors.append(err)
    if graph is None:
        return None, f"cannot trace it ({_short(errors[0])})"
    nodes = list(graph.nodes)
    at = [n for n in nodes if n.op == "call_module" and n.target == name]
    if len(at) != 1:
        return None, f"the traced graph calls {name!r} {len(at)} times"
    layer = at[0]
    output = next(n for n in nodes if n.op == "output")
    tail = {layer}
    for n in nodes[nodes.index(layer) + 1 :]:
        if n is output or any(a in tail for a in n.all_input_nodes) or (not n.users and n.op.startswith("call")):
            tail.add(n)
    if not any(a in tail for a in output.all_input_nodes) and output.all_input_nodes:
        return None, f"the output does not depend on {name!r}"
    order = [n for n in nodes if n in tail and n is not layer]
    crossing = list(dict.fromkeys(
        a for n in order for a in n.all_input_nodes if a not in tail and a.op != "get_attr"
    ))
    from_input: set[fx.Node] = set()
    for n in nodes:
        if n.op == "placeholder" or any(a in from_input for a in n.all_input_nodes):
            from_input.add(n)
    g = fx.Graph()
    env = {layer: g.placeholder("activation")}
    for i, a in enumerate(crossing):
        env[a] = g.placeholder(f"crossing_{i}")
    for n in order:
        for a in n.all_input_nodes:
            if a not in env:  # a parameter or buffer
                env[a] = g.get_attr(a.target)
        env[n] = g.node_copy(n, env.__getitem__)
    run_tail = fx.GraphModule(model, g, class_name="AblationTail")
    values: list[Any] = []
    if crossing:  # one pass of the rest of the graph on the inputs computes them
        front, fenv = fx.Graph(), {}
        for n in nodes:
            if n not in tail and n is not layer:
                fenv[n] = front.node_copy(n, fenv.__getitem__)
        front.output(tuple(fenv[a] for a in crossing))
        values = list(fx.GraphModule(model, front, class_name="AblationFront")(inputs))
        for a, v in zip(crossing, values, strict=True):
            if a in from_input and not (isinstance(v, Tensor) and v.ndim and v.shape[0] == inputs.shape[0]):
                what = f"shape {tuple(v.shape)}" if isinstance(v, Tensor) else type(v).__name__
                return None, f"{a.name!r} crosses the layer and is not one tensor row per sample ({what})"
    per_sample = [a in from_input for a in crossing]

    def run(rows: Tensor, samples: Tensor) -> Any:
        extra = [v[samples.to(v.device)] if p else v for v, p in zip(values, per_sample, strict=True)]
        return run_tail(rows, *extra)

    return run, ""


def _flatten(x: Tensor) -> Tensor:
    return torch.flatten(x, 1)


def _pool(x: Tensor) -> Tensor:
    return F.adaptive_avg_pool2d(x, 1)


def _pool_flatten(x: Tensor) -> Tensor:
    return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)


def _link(u: ModuleCall, v: Tensor | None, v_version: int) -> list[Callable[[Tensor], Tensor]] | None:
    """What turns ``u``'s output into ``v``: [] (the same tensor, unchanged in between), [flatten] or [global average
    pooling (+ flatten)]; None for anything else (or when a tensor was changed in place).

    A flatten or pooling between two children is accepted only when the values say so exactly (flatten: bit-equal;
    pooling: equal to float tolerance, on a map of more than one pixel): parameter-free glue that classifier heads
    put between the features and the classifier (``torch.flatten(x, 1)``, ``x.mean((2, 3))``); the whole tail is
    then checked against the model's output and against a full forward with one channel ablated."""
    x = u.output
    if x is None or v is None:
        return None
    if v is x:
        return [] if v_version == u.output_version else None
    if tensor_version(x) != u.output_version or tensor_version(v) != v_version or x.ndim < 3:
        return None
    if v.shape == (x.shape[0], x[0].numel()) and torch.equal(v, _flatten(x)):
        return [_flatten]
    if x.ndim == 4 and x.shape[-2:].numel() > 1 and v.numel() == x.shape[0] * x.shape[1] and v.ndim in (2, 4):
        pooled = x.mean(dim=(2, 3))
        scale = float(x.abs().amax())
        if torch.allclose(v.reshape(pooled.shape), pooled, rtol=1e-5, atol=1e-6 * max(scale, 1e-30)):
            return [_pool_flatten] if v.ndim == 2 else [_pool]
    return None


def children_tail(model: nn.Module, name: str, inputs: Tensor) -> tuple[Tail | None, str]:
    """The modules called after layer ``name``, in order, when the forward passes each one's output straight to the
    next (at every level from the layer up: the layer's parent calls its next children in a chain, its parent the
    ones after it, and so on up to the model), or ``(None, why not)``.

    Found by recording one forward of ``inputs`` (keep it to one image) with hooks: the call order and, for each
    call, its input and output tensors; a flatten or global average pooling in between is allowed (see
    :func:`_link`). The order seen on this forward is assumed to hold for every ablation: the caller checks it."""
    with torch.no_grad(), record_calls(model) as calls:
        model(inputs)
    at = [i for i, c in enumerate(calls) if c.name == name]
    if len(at) != 1:
        return None, f"{name!r} is called {len(at)} times"
    i, stages = at[0], []
    while calls[i].parent is not None:
        p = calls[i].parent
        prev = calls[i]
        for s in (c for c in calls[i + 1 :] if c.parent == p):
            glue = _link(prev, s.arg, s.arg_version)
            if glue is None:
                return None, f"{s.name!r} does not take the output of {prev.name!r}"
            stages += [*glue, s.module]
            prev = s
        glue = _link(prev, calls[p].output, calls[p].output_version)
        if glue is None:
            return None, f"the output of {calls[p].name or type(model).__name__!r} is not that of {prev.name!r}"
        stages += glue
        i = p

    def run(rows: Tensor, samples: Tensor) -> Any:
        x = rows
        for stage in stages:
            x = stage(x)
        return x

    return run, ""


def _short(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    first = text[0] if text else ""
    return f"{type(err).__name__}: {first[:150]}{'...' if len(first) > 150 else ''}"


_WARNED: set[tuple[type, str]] = set()
#: rows of one timed tail evaluation and one timed forward in :meth:`AblationCAM.cost`
_TIMING_ROWS = 2


@register("ablationcam")
@dataclass
class AblationCAM(CAMMethod, BatchedMethod):
    """Ablation-CAM (Desai & Ramaswamy, WACV 2020): M = sum_k w_k A_k, w_k = (S - S_k) / |S|, S_k the score with
    channel k of the layer set to 0 (|S| is clamped to >= 1e-6; for S > 0 this is the paper's (S - S_k) / S).

    The B*K ablations re-run only the model's part after the layer (the tail) when one is found, in this order:
    ``head=`` (a function activation -> output); ``model.forward_head`` when ``model.head_layer`` names the layer
    (seewhy's zoo); a chain of ``nn.Sequential`` from the model down; a ``torch.fx`` split (:func:`fx_tail`: any model
    whose forward, and its modules' on the way to the layer, fx can trace; values crossing the layer such as residual
    skips are computed once); the children called in order after the layer (:func:`children_tail`, for forwards fx
    cannot trace). Every tail is checked to reproduce the model's output first. Otherwise (or with ``split=False``,
    which leaves only ``head=``) full forwards run with the layer's output replaced by the ablated activation, and
    one log line says why and how to pass ``head=``. Both are batched in chunks of ``batch_size`` rows.

    ``extras``: ``"ablation_path"`` ("tail" or "forward"), ``"tail"`` (how it was found, as :class:`Split`'s kind;
    None for full forwards), ``"no_tail"`` (why none was found), ``"weights"`` (B,K)."""

    head: Callable[[Tensor], Any] | None = None
    split: bool = True

    def cost(self, model: nn.Module | None = None, inputs: Tensor | None = None) -> Cost:
        """One forward plus one evaluation per channel K: of the tail when one is found (``tail=True``; given
        ``model`` and one image, the split is looked for as :meth:`attribute` does and one tail evaluation of a few
        ablated rows is timed against one full forward of as many images: ``tail_fraction``), else a full forward."""
        if model is None or inputs is None:
            return Cost(forwards=1, per_channel=1, tail=self.head is not None)
        x = check_inputs(inputs)[:1]
        with torch.inference_mode(False), model_state(model), torch.no_grad():
            name, module, native, out, split = self._find(model, x, Call(make_target(None, 1)))
            if split.tail is None:
                return Cost(forwards=1, per_channel=1)
            n = min(_TIMING_ROWS, self._grid(native, name, x).shape[1])
            rows = self._ablate(native.expand(n, *native.shape[1:]).clone(), torch.arange(n), x)
            samples = torch.zeros(n, dtype=torch.long)
            images = x.expand(n, *x.shape[1:]).contiguous()
            tail = _seconds(lambda: split.tail(rows.clone(), samples), repeat=5)  # cheap: the fastest of a few
            full = _seconds(lambda: model(images), repeat=2)
        return Cost(forwards=1, per_channel=1, tail=True, tail_fraction=tail / max(full, 1e-9))

    def _ablate(self, native: Tensor, channels: Tensor, inputs: Tensor) -> Tensor:
        """Rows of the layer output (a fresh copy, changed in place) with channel ``channels[r]`` of row r set to 0
        (for tokens: feature k of the grid tokens)."""
        x = native
        rows = torch.arange(x.shape[0], device=x.device)
        channels = channels.to(x.device)
        if callable(self.reshape) and not isinstance(self.reshape, bool):
            raise ValueError(
                "ablationcam cannot map the channels of a callable reshape back to the layer output; "
                "use reshape=True or reshape=<number of prefix tokens>"
            )
        if x.ndim == 4:
            x[rows, channels] = 0
        else:  # tokens (B,N,D): zero feature k of the grid tokens, leave prefix tokens alone
            fixed = None if self.reshape is True else int(self.reshape)
            prefix = token_grid(x.shape[1], tuple(inputs.shape[-2:]), fixed)[0]
            tokens = torch.arange(prefix, x.shape[1], device=x.device)
            x[rows[:, None], tokens[None, :], channels[:, None]] = 0
        return x

    def _find(self, model: nn.Module, inputs: Tensor, call: Call) -> tuple[str, nn.Module, Tensor, Any, Split]:
        """The layer, its output, the model's output (one forward) and the split: what :meth:`attribute` and
        :meth:`cost` both start from."""
        layers = self._layers(model, inputs, call)
        name, module = layers[0]
        acts, out = forward_layers(model, inputs, layers, grad=False)
        native = acts[name]
        return name, module, native, out, self._split(model, inputs, name, module, native, out)

    def _split(self, model: nn.Module, inputs: Tensor, name: str, module: nn.Module, native: Tensor,
               out: Any) -> Split:
        every = torch.arange(inputs.shape[0])
        if self.head is not None:
            head = self.head
            if not _same(head(native.clone()), out):
                raise ValueError(
                    f"head(activation of {name!r}) does not reproduce the model's output; "
                    "pass a head that maps the layer's output to the model's output"
                )
            return Split(lambda rows, samples: head(rows), "head")
        if not self.split:
            return Split(None, reason="split=False")
        reasons = []
        for kind, found in (("forward_head", model_tail(model, name)), ("sequential", sequential_tail(model, name))):
            if found is not None:
                if _same(found(native.clone()), out):
                    return Split(lambda rows, samples, f=found: f(rows), kind)
                reasons.append(f"{kind}: does not reproduce the output")
        tail, why = fx_tail(model, name, inputs)
        if tail is not None:
            if _same(tail(native.clone(), every), out):
                return Split(tail, "fx")
            why = "the traced tail does not reproduce the output"
        reasons.append(f"torch.fx: {why}")
        tail, why = children_tail(model, name, inputs[:1])
        if tail is not None:
            if _same(tail(native.clone(), every), out) and self._agrees_ablated(model, name, module, inputs, native,
                                                                                tail):
                return Split(tail, "children")
            why = "the children after it do not reproduce the output"
        reasons.append(f"children in order: {why}")
        return Split(None, reason="; ".join(reasons))

    def _agrees_ablated(self, model: nn.Module, name: str, module: nn.Module, inputs: Tensor, native: Tensor,
                        tail: Tail) -> bool:
        """The tail and a full forward agree with the strongest channel of the first image ablated."""
        grid = self._grid(native[:1], name, inputs)
        channel = grid[0].abs().flatten(1).sum(1).argmax().reshape(1)
        ablated = self._ablate(native[:1].clone(), channel, inputs)
        with replace_output(module, ablated.clone()):
            full = model(inputs[:1])
        return _same(tail(ablated.clone(), torch.zeros(1, dtype=torch.long)), full)

    def _rows_per_call(self, model: nn.Module, inputs: Tensor, native: Tensor, split: Split, rows: int) -> int:
        """``batch_size``; else for the tail, rows of the layer output worth 2 Mi values (the budget of
        :func:`seewhy.engine.default_batch_size` with ``backward=True``: 33 rows at efficientnet_lite0's head, 69 ms per
        image where the 0.8 Mi forward budget's 12 rows took 86 ms), for full forwards the engine's batch size for
        this model (:func:`seewhy.engine.batch_size_for`)."""
        if self.batch_size is not None:
            return self.batch_size
        if split.tail is not None:
            return engine.default_batch_size(native, backward=True)
        return engine.batch_size_for(model, inputs, rows)

    def attribute(self, model: nn.Module, inputs: Tensor, call: Call) -> Tensor:
        with torch.no_grad():
            name, module, native, out, split = self._find(model, inputs, call)
            target = call.resolve(out)
            y = target.score(out)
            a = self._grid(native, name, inputs)
            b, k = a.shape[:2]
            call.extras["ablation_path"] = "tail" if split.tail is not None else "forward"
            call.extras["tail"] = split.kind
            if split.tail is None:
                call.extras["no_tail"] = split.reason
                if self.split:
                    _log_fallback(model, name, native, k, split.reason)
            size = self._rows_per_call(model, inputs, native, split, b * k)
            sample = torch.arange(b).repeat_interleave(k)
            channel = torch.arange(k).repeat(b)
            ablated_scores = torch.zeros(b * k, dtype=y.dtype, device=y.device)
            with progress(b * k, "ablationcam", "ablations") as bar:
                for sl in engine.slices(b * k, size):
                    idx = sample[sl].to(native.device)
                    ablated = self._ablate(native[idx], channel[sl], inputs)
                    if split.tail is not None:
                        o = split.tail(ablated, sample[sl])
                    else:
                        with replace_output(module, ablated):
                            o = model(inputs[idx])
                    ablated_scores[sl] = target.select(sample[sl]).score(o)
                    bar.update(len(idx))
            weights = (y[:, None] - ablated_scores.view(b, k)) / y.abs().clamp(min=1e-6)[:, None]
            call.extras["weights"] = weights.to(a)
            return _weighted_sum(weights.to(a), a)


def _log_fallback(model: nn.Module, name: str, native: Tensor, k: int, reason: str) -> None:
    """The one log line of the full-forward path: a warning the first time for a model class and layer."""
    key = (type(model), name)
    level = logging.INFO if key in _WARNED else logging.WARNING
    _WARNED.add(key)
    log.log(
        level,
        "ablationcam: found no way to run only the part of %s after layer %r (%s); falling back to full forwards: "
        "%d forwards per image, one per channel. To run only the rest of the model, pass head=, a function from "
        "the layer's activation %s to the model's output, e.g. get_method('ablationcam', layer=%r, "
        "head=lambda a: rest_of_model(a))",
        type(model).__name__, name, reason, k, "(B," + ",".join(map(str, native.shape[1:])) + ")", name,
    )


def _seconds(fn: Callable[[], Any], repeat: int) -> float:
    """The fastest of ``repeat`` timed calls of ``fn``."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _same(pred: Any, out: Any) -> bool:
    if not (isinstance(pred, Tensor) and isinstance(out, Tensor)) or pred.shape != out.shape:
        return False
    return bool((pred - out).abs().max() <= 1e-4 * float(out.abs().max().clamp(min=1)))


__all__ = ["AblationCAM", "ScoreCAM", "Split", "children_tail", "fx_tail", "sequential_tail"]
