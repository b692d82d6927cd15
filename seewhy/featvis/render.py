"""Render a feature visualization: optimise an image so that an objective is as large as possible.

Erhan et al. 2009 (activation maximisation), Simonyan et al. 2013 (class models), Olah et al. 2017 (Distill: the
1/f spectrum and colour decorrelation as a preconditioner, robustness to random transforms). Each step::

    x = param()                          # (B, 3, size, size) in [0, 1]
    x' = resize(crop_or_pad(transforms(x), size), input)  # random pad / jitter / scale / rotate, one draw per step
    loss = -mean_b objective(model(normalize(x')))_b + sum penalties
    Adam step on the parameters; then the regularisers' image operations (blur, decay, clipping)

The model is put in eval mode with frozen weights and its forward is stopped after the last layer the objective
reads; hooks exist only inside the call. All randomness comes from ``torch.Generator`` seeded by ``seed``.
"""

from __future__ import annotations

import logging
import math
import numbers
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..engine import prefers_channels_last
from ..hooks import StopForward, capture, model_state, watch
from ..layers import resolve_layer
from ..progress import format_seconds
from ..progress import progress as progress_bar
from ..zoo import Normalize, input_normalizer, resolve_normalize
from .objectives import INPUT, LOGITS, Activations, Objective, as_objective
from .param import image_param
from .regularizers import Regularizer, as_regularizers
from .transforms import Transform, resolve_transforms

log = logging.getLogger("seewhy")

__all__ = ["FeatVis", "robust_probability", "visualize"]



@dataclass
class FeatVis:
    """The result of :func:`visualize`.

    ``images``: (batch, 3, size, size) in [0, 1], detached, on the model's device. ``losses``: (steps,) the loss at
    each step (``-objective`` averaged over the batch, plus the penalties). ``objective_values``: (batch,) the
    objective of the final images as they are (no transforms). ``params``: the settings (JSON-able).
    """

    images: Tensor
    losses: Tensor
    params: dict[str, Any]
    objective_values: Tensor
    seconds: float = 0.0
    layers: tuple[str, ...] = field(default_factory=tuple)


def _int(value: Any, what: str, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ValueError(f"{what} must be an int >= {low}, got {value!r}")
    return int(value)


def _model_device(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    for t in list(model.parameters()) + list(model.buffers()):
        if t.is_floating_point():
            return t.device, t.dtype
    return torch.device("cpu"), torch.float32


def _default_input_size(model: nn.Module, size: int) -> int | None:
    from ..zoo import spec_of

    spec = spec_of(model)
    if spec is not None and spec.crop and size < spec.crop:
        return int(spec.crop)
    return None


class _Forward:
    """One forward that records the objective's layers (with gradients) and stops after the last of them when
    the objective does not need the model's output."""

    def __init__(self, model: nn.Module, layers: Sequence[str]) -> None:
        self.model = model
        self.want_logits = LOGITS in layers
        self.modules: dict[str, nn.Module] = {}
        for name in layers:
            if name in (LOGITS, INPUT):
                continue
            self.modules[name] = resolve_layer(model, name)[1]

    def __call__(self, x: Tensor) -> dict[str, Tensor]:
        names = set(self.modules)
        stop = None if self.want_logits or not names else (lambda out: names <= acts.keys())
        token = object()
        out = None
        with capture(self.modules, grad=True) as acts, watch(self.modules, stop, token) as calls:
            try:
                out = self.model(x)
            except StopForward as err:
                if err.token is not token:
                    raise
        for name, n in calls.items():
            if n == 0:
                raise ValueError(f"layer {name!r} was not called during the forward pass; choose a layer the model "
                                 "uses")
            if n > 1:
                raise ValueError(f"layer {name!r} is called {n} times in one forward pass (a reused module); choose "
                                 "a module that runs once, e.g. its parent block")
        result = dict(acts)
        if self.want_logits:
            if not isinstance(out, Tensor):
                raise TypeError(f"the model returns {type(out).__name__}; class objectives need a tensor of logits")
            result[LOGITS] = out
        return result


def crop_or_pad(x: Tensor, size: int, value: float = 0.5) -> Tensor:
    """The centre ``size`` x ``size`` of ``x`` (B,C,H,W), padded with ``value`` (mid-grey) where it is smaller: the
    transformed image back at the size the model is fed (the random shifts and scales stay in it)."""
    h, w = x.shape[-2:]
    if (h, w) == (size, size):
        return x
    top, left = (h - size) // 2, (w - size) // 2
    if top > 0 or left > 0:
        x = x[..., max(top, 0): max(top, 0) + min(h, size), max(left, 0): max(left, 0) + min(w, size)]
    h, w = x.shape[-2:]
    if (h, w) != (size, size):
        py, px = size - h, size - w
        x = F.pad(x, (px // 2, px - px // 2, py // 2, py - py // 2), value=value)
    return x


def _discover_layers(model: nn.Module, objective: Objective, x: Tensor) -> tuple[str, ...]:
    """The activation keys a plain callable objective reads, by one forward recording every module."""
    modules = {name: m for name, m in model.named_modules() if name}
    read: list[str] = []

    class Recording(Activations):
        def __getitem__(self, key: str) -> Tensor:
            if key not in read:
                read.append(key)
            return super().__getitem__(key)

    with capture(modules, grad=True) as acts:
        out = model(x)
    acts = dict(acts)
    acts[LOGITS] = out
    acts[INPUT] = x
    value = objective(Recording(acts))
    if not isinstance(value, Tensor):
        raise TypeError(f"the objective returned {type(value).__name__}; it must return a tensor, (B,) or a scalar")
    if not read:
        raise ValueError("the objective reads no activations; it must index the dict it gets, e.g. acts['logits']")
    return tuple(read)


def visualize(
    model: nn.Module,
    objective: Any,
    *,
    size: int = 128,
    steps: int = 512,
    lr: float = 0.05,
    param: str = "fft",
    decorrelate: bool = True,
    transforms: str | Sequence[Transform] | None = "standard",
    regularizers: Regularizer | Sequence[Regularizer] = (),
    batch: int = 1,
    normalize: Normalize = None,
    seed: int = 0,
    progress: bool = True,
    input_size: int | None = None,
    init: Tensor | None = None,
) -> FeatVis:
    """Optimise ``batch`` images of ``size`` x ``size`` pixels to maximise ``objective``.

    Args:
        objective: an :class:`~seewhy.featvis.objectives.Objective`, a spec string (``"channel:_blocks.9:12"``,
            ``"class:967"``) or a callable ``f(activations) -> Tensor``.
        param: ``"fft"`` (a spectrum scaled by 1/f) or ``"pixel"``; ``decorrelate``: Lucid's ImageNet colour
            decorrelation. The start is N(0, 0.01^2) in the parameter space, drawn from ``seed``.
        transforms: ``"standard"`` (pad, jitter, scale, rotate, jitter; Olah et al. 2017), ``"none"`` or a sequence
            of transforms from :mod:`seewhy.featvis.transforms`; drawn from a generator seeded by ``seed``.
        regularizers: penalties and image operations from :mod:`seewhy.featvis.regularizers`.
        normalize: the model's input normalisation, ``(mean, std)`` or a callable on [0, 1] images; None takes the
            zoo model's (a warning for other models, which then get [0, 1] pixels); False: none.
        input_size: the side the model is fed: the transformed image is cropped or padded (grey) back to ``size``
            around its centre, then resized (bilinear) to ``input_size``; None: the zoo model's crop (224 for
            efficientnet_lite0) when ``size`` is smaller, else ``size``. So models with a fixed input size work.
        progress: a progress bar (log lines when not on a terminal) and the cost, said after the first step; False:
            silent, for a caller that reports the work itself.
        init: optional start images (batch, 3, size, size) in (0, 1) instead of the random start.

    Returns:
        :class:`FeatVis`: ``images`` (batch, 3, size, size) in [0, 1], ``losses`` (steps,), ``params``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    size = _int(size, "size", 2)
    steps = _int(steps, "steps", 0)
    batch = _int(batch, "batch")
    lr = float(lr)
    if not math.isfinite(lr) or lr <= 0:
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed must be an int, got {seed!r}")
    if input_size is None:
        input_size = _default_input_size(model, size)
    elif _int(input_size, "input_size", 2) == size:
        input_size = None
    from ..zoo import class_names

    obj = as_objective(objective, class_names(model))
    regs = as_regularizers(regularizers)
    transform = resolve_transforms(transforms, size)
    norm, norm_desc = input_normalizer(model, normalize)
    device, dtype = _model_device(model)
    p = image_param(param, size, batch, decorrelate=decorrelate, seed=int(seed), device=device, dtype=dtype)
    if init is not None:
        if not isinstance(init, Tensor) or tuple(init.shape) != (batch, 3, size, size):
            raise ValueError(f"init must be a tensor of shape {(batch, 3, size, size)} in (0, 1), got "
                             f"{tuple(init.shape) if isinstance(init, Tensor) else type(init).__name__}")
        p.set_image(init.to(device, dtype))
    generator = torch.Generator().manual_seed(int(seed))
    refs = [(key, img.to(device, dtype)) for key, img in obj.references]
    for _, img in refs:
        if tuple(img.shape[-2:]) != (size, size) or img.shape[1] != 3:
            raise ValueError(f"the inversion image has shape {tuple(img.shape[1:])}; it must be (3, {size}, {size}), "
                             "the size being optimised")
    needs_grad = any(r.needs_grad for r in regs)
    channels_last = prefers_channels_last(model, p().detach())

    def model_input(image: Tensor) -> Tensor:
        x = torch.cat([image] + [img for _, img in refs]) if refs else image
        x = crop_or_pad(transform(x, generator), size)
        if input_size is not None:
            x = F.interpolate(x, size=(input_size, input_size), mode="bilinear", align_corners=False)
        return x

    def activations(forward: _Forward, x: Tensor) -> Activations:
        z = norm(x)
        acts = forward(z.contiguous(memory_format=torch.channels_last) if channels_last else z)
        acts[INPUT] = x
        main = {k: v[:batch] for k, v in acts.items()}
        references = {key: {k: v[batch + j: batch + j + 1] for k, v in acts.items()} for j, (key, _) in
                      enumerate(refs)}
        return Activations(main, references)

    settings = {
        "objective": obj.name, "size": size, "steps": steps, "lr": lr, "param": param,
        "decorrelate": bool(decorrelate), "transforms": transforms if isinstance(transforms, str) or
        transforms is None else [repr(t) for t in transforms], "regularizers": [repr(r) for r in regs],
        "batch": batch, "normalize": norm_desc, "seed": int(seed), "input_size": input_size or size,
    }
    start = time.perf_counter()
    losses = torch.empty(steps, dtype=torch.float64)
    with model_state(model):
        layers = obj.layers
        if obj.discover:
            with torch.no_grad():
                layers = tuple(dict.fromkeys(layers + _discover_layers(model, obj, norm(model_input(p().detach())))))
            generator.manual_seed(int(seed))  # the discovery forward does not shift the transforms' draws
        forward = _Forward(model, layers)
        optimizer = torch.optim.Adam(p.params, lr=lr)
        with progress_bar(steps, "feature visualization", enabled=progress) as bar:
            bar.set_postfix(obj.name)
            for step in range(steps):
                optimizer.zero_grad(set_to_none=True)
                image = p()
                if needs_grad:
                    image.retain_grad()
                value = obj(activations(forward, model_input(image)))
                if not isinstance(value, Tensor):
                    raise TypeError(f"the objective returned {type(value).__name__}; it must return a tensor")
                if value.ndim > 1 or (value.ndim == 1 and value.shape[0] != batch):
                    raise ValueError(f"the objective returned shape {tuple(value.shape)}; it must return (batch,) "
                                     f"= ({batch},) or a scalar")
                # summed over the batch so that each image's gradient does not depend on the batch size (Adam's
                # eps is not scale-free); recorded as the mean over the batch
                loss = -value.expand(batch).sum()
                for r in regs:
                    pen = r.penalty(image)
                    if pen is not None:
                        loss = loss + pen.expand(batch).sum()
                if not loss.requires_grad:
                    raise ValueError(f"the objective {obj.name} does not depend on the image (no gradient); does it "
                                     "read a layer of this model's forward?")
                loss.backward()
                optimizer.step()
                grad = image.grad if needs_grad else None
                for r in regs:
                    r.after_step(p, step, grad)
                losses[step] = float(loss.detach()) / batch
                if step == 0 and steps > 1 and progress:  # without progress the caller says the cost
                    first = time.perf_counter() - start
                    fed = f" fed at {input_size} px" if input_size else ""
                    log.info("feature visualization of %s: %d steps, %d px%s, batch %d: about %s", obj.name, steps,
                             size, fed, batch, format_seconds(first * steps))
                bar.update()
                if not math.isfinite(losses[step]):
                    raise FloatingPointError(f"the loss became {losses[step]} at step {step}; lower lr (now {lr}) "
                                             "or the regularisers' weights")
        with torch.no_grad():
            images = p().detach()
            final = obj(activations(forward, _plain_input(images, refs, input_size)))
    seconds = time.perf_counter() - start
    values = (final if final.ndim == 1 else final.expand(batch)).detach().float().cpu()
    return FeatVis(images=images, losses=losses.float(), params=settings, objective_values=values,
                   seconds=seconds, layers=tuple(layers))


def _plain_input(images: Tensor, refs: Sequence[tuple[int, Tensor]], input_size: int | None) -> Tensor:
    """The final images (and references) as the model sees them without random transforms."""
    x = torch.cat([images] + [img for _, img in refs]) if refs else images
    if input_size is not None:
        x = F.interpolate(x, size=(input_size, input_size), mode="bilinear", align_corners=False)
    return x



@torch.no_grad()
def robust_probability(model: nn.Module, images: Tensor, k: int, *, trials: int = 8, input_size: int | None = None,
                       normalize: Normalize = None, scale: tuple[float, float] = (0.8, 1.2), seed: int = 1
                       ) -> Tensor:
    """How surely ``model`` sees class ``k`` in ``images`` when it is not the view they were optimised for: each
    image (B,3,S,S) in [0, 1] is resized to ``input_size`` (the zoo model's crop by default), then ``trials`` times
    rescaled by a factor uniform in ``scale`` and cropped or padded (grey) back at a uniform random offset
    (continuous draws, unlike :func:`~seewhy.featvis.transforms.standard_transforms`' discrete ones), and classified.
    Returns the softmax probabilities of ``k``, (B, trials), on the CPU."""
    if not isinstance(images, Tensor) or images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be (B, 3, H, W) in [0, 1], got "
                         f"{tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__}")
    trials = _int(trials, "trials")
    lo, hi = (float(v) for v in scale)
    if not 0 < lo <= hi:
        raise ValueError(f"scale must be (low, high) with 0 < low <= high, got {scale!r}")
    side = input_size or _default_input_size(model, images.shape[-1]) or images.shape[-1]
    norm = resolve_normalize(model, normalize)
    device, dtype = _model_device(model)
    x = F.interpolate(images.to(device, dtype), size=(side, side), mode="bilinear", align_corners=False)
    g = torch.Generator().manual_seed(int(seed))
    out = torch.empty(images.shape[0], trials)
    with model_state(model):
        for t in range(trials):
            s = lo + (hi - lo) * float(torch.rand((), generator=g))
            n = max(1, round(side * s))
            y = F.interpolate(x, size=(n, n), mode="bilinear", align_corners=False)
            if n >= side:
                oy, ox = (int(v) for v in torch.randint(0, n - side + 1, (2,), generator=g))
                y = y[..., oy:oy + side, ox:ox + side]
            else:
                oy, ox = (int(v) for v in torch.randint(0, side - n + 1, (2,), generator=g))
                y = F.pad(y, (ox, side - n - ox, oy, side - n - oy), value=0.5)
            logits = model(norm(y))
            if not isinstance(logits, Tensor) or logits.ndim != 2 or not 0 <= k < logits.shape[1]:
                raise ValueError(f"class {k} needs (B, classes) logits with more than {k} classes")
            out[:, t] = logits.float().softmax(1)[:, k].cpu()
    return out
