"""Find layers by dotted name or module object; pick a default spatial layer by a dry forward."""

from __future__ import annotations

import difflib

from torch import Tensor, nn

from .hooks import model_state, module_outputs

LayerSpec = str | nn.Module


def resolve_layer(model: nn.Module, layer: LayerSpec) -> tuple[str, nn.Module]:
    """Return ``(dotted_name, module)`` for a name from ``model.named_modules()`` or a module of ``model``.

    Raises:
        ValueError: the name is unknown (the message lists the closest valid names) or the module is not
            part of ``model``.
    """
    modules = dict(model.named_modules())
    if isinstance(layer, nn.Module):
        for name, m in modules.items():
            if m is layer:
                return name, m
        raise ValueError(f"the given {type(layer).__name__} module is not part of the model")
    if not isinstance(layer, str):
        raise TypeError(f"layer must be a dotted module name or an nn.Module, got {type(layer).__name__}")
    if layer in modules and layer != "":
        return layer, modules[layer]
    names = [n for n in modules if n]
    close = difflib.get_close_matches(layer, names, n=5, cutoff=0.5)
    if not close:
        close = [n for n in names if layer.split(".")[-1] in n][:5] or names[-5:]
    raise ValueError(
        f"unknown layer {layer!r}; closest valid names: {', '.join(close)} "
        "(see model.named_modules() for all)"
    )


def spatial_layers(model: nn.Module, inputs: Tensor) -> list[str]:
    """Names of the modules whose output is a (B,C,h,w) map larger than 1x1, in the order they finish
    (one dry forward)."""
    with model_state(model):
        found = module_outputs(model, inputs[:1], lambda name, out: out.ndim == 4 and out.shape[-2:].numel() > 1)
    return list(dict.fromkeys(name for name, spatial in found if spatial))


def default_layer(model: nn.Module, inputs: Tensor) -> str:
    """The last module with a spatial (B,C,h,w) output (h*w > 1), found by a dry forward on one sample."""
    order = spatial_layers(model, inputs)
    if not order:
        raise ValueError("the model has no module with a 4-D (B,C,h,w) output; pass layer= explicitly")
    return order[-1]
