"""Gradient-free CAMs that perturb the model: Score-CAM (masks the input) and Ablation-CAM (zeroes channels).

Both run under ``torch.no_grad()`` on ``inputs.device``, evaluate their B*K perturbed rows in chunks of
``batch_size`` and give the same result for any chunking. Maps are raw and signed, (B,1,h,w), as for every CAM.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import engine
from ..core import Call, register
from ..hooks import replace_output
from .cam import CAMMethod, forward_layers, token_grid
from .gradient import _chunks, default_batch_size

log = logging.getLogger(__name__)


def _weighted_sum(w: Tensor, a: Tensor) -> Tensor:
    return (w[:, :, None, None] * a).sum(1, keepdim=True)


@register("scorecam")
@dataclass
class ScoreCAM(CAMMethod):
    """Score-CAM (Wang et al. 2020, arXiv:1910.01279): M = sum_k w_k A_k, w = softmax_k(S(x * H_k) - S(x_b)),
    H_k = min-max(upsample(A_k)) (bilinear to the input size), x_b = 0.

    ``score="logit"`` (default) scores the raw model output, as TorchCAM and pytorch-grad-cam do; the paper's
    official code uses the softmax probability of the class, ``score="probability"``. The baseline score only
    shifts every channel of a sample equally, which the softmax ignores; it is kept as in the paper (the increase of
    confidence). A constant channel gives no mask: it is left out (weight 0) and never evaluated, as in the official
    code (pytorch-grad-cam evaluates it on an all-zero image and lets it into the softmax, which rescales the map by
    a positive factor per sample); a sample with no usable channel gets an all-zero map. Only the usable channels
    cost a forward pass; after a ReLU most channels of a late layer are often all zero (818 of 1280 at
    efficientnet_lite0's last layer on chelsea). ``extras["weights"]``: the (B,K) weights;
    ``extras["evaluations"]``: forward passes per sample (usable channels + 1 baseline)."""

    batch_size: int | None = None
    score: str = "logit"

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


@register("ablationcam")
@dataclass
class AblationCAM(CAMMethod):
    """Ablation-CAM (Desai & Ramaswamy, WACV 2020): M = sum_k w_k A_k, w_k = (S - S_k) / |S|, S_k the score with
    channel k of the layer set to 0 (|S| is clamped to >= 1e-6; for S > 0 this is the paper's (S - S_k) / S).

    When the rest of the model can be run from the activation (``head=`` a function activation -> output, the
    layer sits in a chain of ``nn.Sequential`` from the model down, or the model declares ``head_layer`` and
    ``forward_head``), only that tail is re-run for the B*K ablations;
    otherwise full forwards with the layer's output replaced by the ablated activation. Both are batched in chunks of
    ``batch_size`` rows; ``extras["ablation_path"]`` says which ran ("tail" or "forward"), ``extras["weights"]``
    holds the (B,K) weights."""

    batch_size: int | None = None
    head: Callable[[Tensor], Any] | None = None

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

    def attribute(self, model: nn.Module, inputs: Tensor, call: Call) -> Tensor:
        layers = self._layers(model, inputs, call)
        name, module = layers[0]
        with torch.no_grad():
            acts, out = forward_layers(model, inputs, layers, grad=False)
            target = call.resolve(out)
            y = target.score(out)
            native = acts[name]
            a = self._grid(native, name, inputs)
            b, k = a.shape[:2]
            tail = self.head if self.head is not None else sequential_tail(model, name) or model_tail(model, name)
            path = "forward"
            if tail is not None:
                if _same(tail(native.clone()), out):
                    path = "tail"
                elif self.head is not None:
                    raise ValueError(
                        f"head(activation of {name!r}) does not reproduce the model's output; "
                        "pass a head that maps the layer's output to the model's output"
                    )
                else:
                    log.info(
                        "ablationcam: the Sequential tail after %r does not reproduce the output; using full forwards",
                        name,
                    )
            call.extras["ablation_path"] = path
            size = self.batch_size or default_batch_size(native if path == "tail" else inputs)
            sample = torch.arange(b).repeat_interleave(k)
            channel = torch.arange(k).repeat(b)
            ablated_scores = torch.zeros(b * k, dtype=y.dtype, device=y.device)
            for sl in _chunks(b * k, size):
                idx = sample[sl].to(native.device)
                ablated = self._ablate(native[idx], channel[sl], inputs)
                if path == "tail":
                    o = tail(ablated)
                else:
                    with replace_output(module, ablated):
                        o = model(inputs[idx])
                ablated_scores[sl] = target.select(sample[sl]).score(o)
            weights = (y[:, None] - ablated_scores.view(b, k)) / y.abs().clamp(min=1e-6)[:, None]
            call.extras["weights"] = weights.to(a)
            return _weighted_sum(weights.to(a), a)


def _same(pred: Any, out: Any) -> bool:
    if not (isinstance(pred, Tensor) and isinstance(out, Tensor)) or pred.shape != out.shape:
        return False
    return bool((pred - out).abs().max() <= 1e-4 * float(out.abs().max().clamp(min=1)))


__all__ = ["AblationCAM", "ScoreCAM", "sequential_tail"]
