"""Feature visualization: what a unit, a class or a layer "wants to see".

Activation maximisation (Erhan et al. 2009; Simonyan et al. 2013's class models), regularised as Yosinski et al.
2015 and Olah et al. 2017 (Distill) do it, Mahendran & Vedaldi's inversion, and Carter et al. 2019's activation atlas.
Three composable pieces, as in Lucid: objectives with algebra (:mod:`.objectives`), parameterisations of the image
(:mod:`.param`: pixels or a 1/f-scaled spectrum, with Lucid's colour decorrelation) and random transforms
(:mod:`.transforms`), plus regularisers (:mod:`.regularizers`). :func:`visualize` renders; :func:`atlas` lays out a
layer's activations and renders one icon per cell.
"""

from __future__ import annotations

from . import objectives, param, regularizers, transforms
from .atlas import Atlas, atlas  # after this line the package's `atlas` is the function, not the submodule
from .objectives import Objective
from .regularizers import yosinski_preset
from .render import FeatVis, robust_probability, visualize

__all__ = ["Atlas", "FeatVis", "Objective", "atlas", "objectives", "param", "regularizers", "robust_probability",
           "transforms", "visualize", "yosinski_preset"]
