"""Is the explanation faithful? Metrics that score attributions, and sanity checks (issue 6).

Every metric is a function `(model, inputs, attributions, target, ..., seed=None) -> Tensor (B,)` (or a
:class:`MetricResult`) registered in `METRICS`; importing this package registers them all. A registered spec is
callable and returns a :class:`MetricResult` (float64 scores, optional curves, protocol); the functions are also
available here by name, e.g. ``seewhy.metrics.deletion_auc(model, x, exp.attributions, target=exp.targets)``.

The families, one module each: :mod:`.curves` (deletion, insertion, pixel flipping), :mod:`.road` (with
:mod:`.imputation`), :mod:`.perturbation` (faithfulness correlation, infidelity) -- together
:mod:`.faithfulness` --, :mod:`.robustness`, :mod:`.localization`, :mod:`.complexity`, :mod:`.sanity`
(with :mod:`.similarity`). Shared helpers live in :mod:`.common`. The controls (random and edge-detector maps) are
methods: :mod:`seewhy.methods.controls`.
"""

from ..methods.controls import EdgeDetector, RandomAttribution
from .complexity import entropy_complexity, sparseness
from .faithfulness import (
    Curves,
    RoadResult,
    deletion_auc,
    faithfulness_correlation,
    infidelity,
    insertion_auc,
    noisy_linear_imputation,
    pixel_flipping,
    pixel_flipping_lerf,
    pixel_flipping_morf,
    rise_auc,
    road,
    road_lerf,
    road_morf,
)
from .localization import (
    boxes_to_masks,
    energy_pointing_game,
    load_boxes,
    load_masks,
    pointing_accuracy,
    pointing_game,
    relevance_accuracy,
    relevance_mass_accuracy,
    relevance_rank_accuracy,
)
from .registry import METRICS, MetricResult, MetricSpec, Preset, get_metric, list_metrics, register_metric
from .robustness import avg_sensitivity, max_sensitivity, sensitivity
from .sanity import (
    RandomizationResult,
    RandomLogitResult,
    cascading_randomization,
    independent_randomization,
    model_randomization,
    parameter_randomization,
    random_logit,
    random_logit_test,
)
from .similarity import compare_maps, hog_similarity, spearman, ssim

__all__ = [
    "METRICS", "MetricResult", "MetricSpec", "Preset", "get_metric", "list_metrics", "register_metric",
    "Curves", "RoadResult", "deletion_auc", "insertion_auc", "rise_auc", "pixel_flipping", "pixel_flipping_morf",
    "pixel_flipping_lerf", "road", "road_morf", "road_lerf", "noisy_linear_imputation", "faithfulness_correlation",
    "infidelity", "sensitivity", "max_sensitivity", "avg_sensitivity", "pointing_game", "energy_pointing_game",
    "pointing_accuracy", "relevance_accuracy", "relevance_mass_accuracy", "relevance_rank_accuracy",
    "boxes_to_masks", "load_masks", "load_boxes", "sparseness", "entropy_complexity", "RandomizationResult",
    "RandomLogitResult", "parameter_randomization", "cascading_randomization", "independent_randomization",
    "model_randomization", "random_logit", "random_logit_test", "compare_maps", "spearman", "ssim",
    "hog_similarity", "RandomAttribution", "EdgeDetector",
]
