"""seewhy: see why a computer-vision model made a decision."""

from __future__ import annotations

from . import (
    methods,  # noqa: F401  (registers the methods)
    metrics,  # noqa: F401  (registers the metrics and the control "explanations")
)
from .core import Explanation, Method, explain, get_method, list_methods, register
from .targets import Target, make_target
from .version import __version__

__all__ = [
    "Explanation",
    "Method",
    "Target",
    "__version__",
    "explain",
    "get_method",
    "list_methods",
    "make_target",
    "register",
]
