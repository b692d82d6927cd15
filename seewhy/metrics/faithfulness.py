"""Faithfulness metrics: do the pixels an attribution ranks high drive the model's score? The family in one place.

- curves (:mod:`.curves`): deletion / insertion AUC (Petsiuk et al. 2018, RISE) and pixel flipping (MoRF/LeRF,
  Bach et al. 2015; Samek et al. 2016);
- ROAD (:mod:`.road`, Rong et al. 2022), with its noisy linear imputation (:mod:`.imputation`);
- random perturbations (:mod:`.perturbation`): faithfulness correlation (Bhatt et al. 2020) and infidelity (Yeh et
  al. 2019).
"""

from __future__ import annotations

from typing import Any

from .curves import (
    Curves,
    deletion_auc,
    insertion_auc,
    pixel_flipping,
    pixel_flipping_lerf,
    pixel_flipping_morf,
    rise_auc,
)
from .imputation import noisy_linear_imputation
from .perturbation import faithfulness_correlation, infidelity
from .road import ROAD_FRACTIONS, RoadResult, road, road_lerf, road_morf

#: published protocols as (registered metric, params) -- the metrics' defaults, spelled out for reports and the CLI.
#: The target is the model's top-1 prediction on the clean image in both papers.
PRESETS: dict[str, tuple[str, dict[str, Any]]] = {
    "rise_deletion": ("deletion_auc", {"pixels_per_step": 224, "substitute": "zero", "score": "probability"}),
    "rise_insertion": ("insertion_auc", {"pixels_per_step": 224, "substitute": "blur", "score": "probability"}),
    "road": ("road", {"fractions": ROAD_FRACTIONS, "order": "combined", "noise": 0.01, "score": "probability"}),
}

__all__ = [
    "PRESETS", "Curves", "RoadResult", "deletion_auc", "faithfulness_correlation", "infidelity", "insertion_auc",
    "noisy_linear_imputation", "pixel_flipping", "pixel_flipping_lerf", "pixel_flipping_morf", "rise_auc", "road",
    "road_lerf", "road_morf",
]
