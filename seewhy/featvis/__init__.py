"""Feature visualization: what a unit, a class or a layer "wants to see".

Activation maximisation (Erhan et al. 2009; Simonyan et al. 2013's class models), regularised as Yosinski et al.
2015 and Olah et al. 2017 (Distill) do it, Mahendran & Vedaldi's inversion, and Carter et al. 2019's activation atlas.
Three composable pieces, as in Lucid: objectives with algebra (:mod:`.objectives`), parameterisations of the image
(:mod:`.param`: pixels or a 1/f-scaled spectrum, with Lucid's colour decorrelation) and random transforms
(:mod:`.transforms`), plus regularisers (:mod:`.regularizers`). :func:`visualize` renders; :func:`atlas` lays out a
layer's activations and renders one icon per cell.
"""

from __future__ import annotations

from typing import Any

from . import objectives
from .objectives import Objective

__all__ = ["Atlas", "FeatVis", "Objective", "atlas", "objectives", "visualize", "yosinski_preset"]

_LAZY = {
    "visualize": ("render", "visualize"),
    "FeatVis": ("render", "FeatVis"),
    "atlas": ("atlas", "atlas"),
    "Atlas": ("atlas", "Atlas"),
    "yosinski_preset": ("regularizers", "yosinski_preset"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(f"{__name__}.{module}"), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
