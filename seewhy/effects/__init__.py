"""Global effects of features and image transformations: PDP, ICE, ALE and transform curves.

- :func:`partial_dependence`: Friedman (2001) partial dependence and Goldstein et al. (2015) individual conditional
  expectation (ICE) for any prediction function on numpy arrays, pandas DataFrames or torch tensors; the grid and
  the result shapes of ``sklearn.inspection.partial_dependence(..., method="brute")``.
- :func:`accumulated_local_effects`: Apley & Zhu (2020) ALE of one feature: unlike PD it averages the model's local
  changes over the data in each bin, so correlated features do not leak into a feature's effect.
- :func:`transform_effects`: ICE curves over an image transformation (brightness, contrast, blur, rotation, scale,
  a central grey square, or any ``f(images, value)``): the target's probability per image at each value.

Every function evaluates its perturbed copies in batched calls (many grid points per call, a bounded number of rows
per call). A model is left exactly as found (:func:`seewhy.hooks.model_state`); nothing here draws random numbers.
"""

from __future__ import annotations

from .images import TRANSFORMS, TransformEffects, TransformSpec, apply_transform, transform_effects, transform_values
from .tabular import (
    ALE,
    KINDS,
    TABULAR_BUDGET,
    PartialDependence,
    accumulated_local_effects,
    feature_grid,
    partial_dependence,
)

__all__ = [
    "ALE", "KINDS", "PartialDependence", "TABULAR_BUDGET", "TRANSFORMS", "TransformEffects", "TransformSpec",
    "accumulated_local_effects", "apply_transform", "feature_grid", "partial_dependence", "transform_effects",
    "transform_values"
]
