"""Is the explanation faithful? Metrics that score attributions, sanity checks and controls (issue 6).

Every metric is a function `(model, inputs, attributions, target, ..., seed=None) -> Tensor (B,)` (or a small
result object) registered in `METRICS`; importing this package registers them all.
"""

from . import complexity, controls, faithfulness, localization, robustness, sanity, similarity  # noqa: F401
from .registry import METRICS, MetricSpec, get_metric, list_metrics, register_metric

__all__ = ["METRICS", "MetricSpec", "get_metric", "list_metrics", "register_metric"]
