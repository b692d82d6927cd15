"""A layer's activations over a dataset, batch by batch: the one loop under top patches, embeddings and dissection.

Each batch runs in ``torch.inference_mode()`` with the model in eval mode (restored afterwards), ``channels_last``
when the model prefers it, and the forward stops right after the layer (the rest of the network is not run). The
batch size is the engine's (:func:`seewhy.engine.batch_size_for`: measured fastest on this model for long runs).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import torch
from torch import Tensor, nn

from ..data import Batch, ImageData
from ..engine import batch_size_for, prefers_channels_last
from ..hooks import layer_outputs, model_state
from ..layers import LayerSpec, resolve_layer
from ..progress import format_seconds

log = logging.getLogger("seewhy")

__all__ = ["layer_activations", "pick_batch_size", "stream_layer"]


def layer_activations(model: nn.Module, inputs: Tensor, layer: LayerSpec, *, channels_last: bool | None = None
                      ) -> Tensor:
    """The output of ``layer`` for ``inputs`` (one forward in inference mode, stopped after the layer).

    Raises:
        ValueError: unknown layer (with the closest names), a layer the forward does not reach or calls more than
            once, or one whose output is not a tensor.
    """
    name, module = resolve_layer(model, layer)
    cl = prefers_channels_last(model, inputs) if channels_last is None else channels_last
    x = inputs.contiguous(memory_format=torch.channels_last) if cl and inputs.ndim == 4 else inputs
    with model_state(model, freeze=False), torch.inference_mode():
        acts, _, calls = layer_outputs(model, x, {name: module}, grad=False, stop=True)
    if calls[name] == 0:
        raise ValueError(f"layer {name!r} was not called during the forward pass; choose a layer the model uses")
    if calls[name] > 1:
        raise ValueError(f"layer {name!r} is called {calls[name]} times in one forward pass (a reused module); "
                         "choose a module that runs once, e.g. its parent block")
    return acts[name]


def pick_batch_size(model: nn.Module, data: ImageData, batch_size: int | None) -> tuple[int, Tensor]:
    """The batch size to stream ``data`` with (``batch_size``, or the engine's for this model and input shape) and
    the first input (1,C,H,W)."""
    first = data.first()
    if batch_size is not None:
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int or None, got {batch_size!r}")
        return batch_size, first
    return batch_size_for(model, first, len(data), prefers_channels_last(model, first)), first


def stream_layer(model: nn.Module, data: ImageData, layer: LayerSpec, *, batch_size: int | None = None,
                 device: torch.device | str | None = None, desc: str = "images", progress: bool = True
                 ) -> Iterator[tuple[Batch, Tensor]]:
    """``(batch, activations)`` for every batch of ``data``: the layer's output (b, ...) for the batch's inputs, on
    ``device`` (default: the model's). ``progress=False``: no bar and no cost line (the caller reports the work)."""
    size, first = pick_batch_size(model, data, batch_size)
    if device is None:
        p = next(model.parameters(), None)
        device = p.device if p is not None else first.device
    cl = prefers_channels_last(model, first)
    start = time.perf_counter()
    for k, batch in enumerate(data.batches(size, device, desc=desc, progress=progress)):
        acts = layer_activations(model, batch.inputs, layer, channels_last=cl)
        if k == 0 and progress and len(data) > 2 * size:  # the cost after the first batch (reading too)
            per_image = (time.perf_counter() - start) / len(batch.indices)
            log.info("%s: about %s for %d images (%d per forward)", desc, format_seconds(per_image * len(data)),
                     len(data), size)
        yield batch, acts
