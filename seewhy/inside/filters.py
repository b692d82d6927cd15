"""What a layer holds and what it computes: convolution filters and feature maps."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..layers import LayerSpec, resolve_layer
from .stream import layer_activations

__all__ = ["feature_maps", "filters", "first_conv", "top_channels"]


def first_conv(model: nn.Module) -> str:
    """The name of the first ``nn.Conv2d`` (or subclass) of ``model`` in module order.

    Raises:
        ValueError: the model has no 2-D convolution.
    """
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            return name
    raise ValueError(f"{type(model).__name__} has no nn.Conv2d; pass layer= (a module with a 4-D weight)")


def filters(model: nn.Module, layer: LayerSpec | None = None) -> Tensor:
    """The weights of a convolution as a (K, C, kh, kw) tensor (a detached copy): ``layer`` or the first ``nn.Conv2d``.

    K is the number of filters, C the input channels each filter sees (``in_channels / groups``). Draw them with
    :func:`seewhy.viz.filter_grid`.

    Raises:
        ValueError: an unknown layer, or a module without a 4-D ``weight``.
    """
    name, module = resolve_layer(model, first_conv(model) if layer is None else layer)
    weight = getattr(module, "weight", None)
    if not isinstance(weight, Tensor) or weight.ndim != 4:
        shape = None if not isinstance(weight, Tensor) else tuple(weight.shape)
        raise ValueError(f"layer {name!r} ({type(module).__name__}) has no 4-D convolution weight (got {shape}); "
                         "pass a 2-D convolution")
    return weight.detach().clone()


def feature_maps(model: nn.Module, x: Tensor, layer: LayerSpec) -> Tensor:
    """The output of ``layer`` for inputs ``x``: (B, K, h, w), one forward in inference mode that stops after the
    layer (the model is left as it was). Draw it with :func:`seewhy.viz.feature_map_grid`.

    Raises:
        ValueError: ``x`` is not (B,C,H,W), an unknown layer, or a layer whose output is not (B,K,h,w).
    """
    if not isinstance(x, Tensor) or x.ndim != 4:
        raise ValueError(f"x must be a (B,C,H,W) tensor, got {tuple(x.shape) if isinstance(x, Tensor) else type(x)}")
    acts = layer_activations(model, x, layer)
    if acts.ndim != 4:
        raise ValueError(f"layer {resolve_layer(model, layer)[0]!r} outputs shape {tuple(acts.shape)}, not "
                         "(B,K,h,w); choose a convolutional layer")
    return acts.clone(memory_format=torch.contiguous_format)  # a normal tensor, usable outside inference mode


def top_channels(maps: Tensor, n: int) -> list[int]:
    """The ``n`` channels of one image's maps (K,h,w) with the highest mean activation, highest first (ties: lower
    channel first)."""
    if maps.ndim != 3:
        raise ValueError(f"maps must be (K,h,w) for one image, got {tuple(maps.shape)}")
    means = maps.float().mean(dim=(1, 2))
    order = torch.sort(-means, stable=True).indices
    return order[: max(0, int(n))].tolist()
