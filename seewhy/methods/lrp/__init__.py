"""Layer-wise relevance propagation as four pieces: rules (what happens at a layer), composites (which rule where),
canonizers (reversible model rewrites) and the ``lrp`` method (the attributor, with a relevance ledger)."""

from __future__ import annotations

from .canonizers import Canonized, Canonizer, MergeBatchNorm, detect_batchnorm_pairs
from .composites import (
    PRESETS,
    Composite,
    epsilon_alpha2_beta1,
    epsilon_alpha2_beta1_flat,
    epsilon_gamma_box,
    epsilon_plus,
    epsilon_plus_flat,
    get_composite,
)
from .method import LRP, canonized, input_bounds, ledger_table, model_defaults
from .rules import (
    LRP0,
    RULES,
    AlphaBeta,
    Epsilon,
    Flat,
    Gamma,
    Layer,
    ModifierRule,
    Pass,
    Rule,
    Term,
    WSquare,
    ZBox,
    ZPlus,
    modified_gradient,
)

__all__ = [
    "AlphaBeta",
    "Canonized",
    "Canonizer",
    "Composite",
    "Epsilon",
    "Flat",
    "Gamma",
    "LRP",
    "LRP0",
    "Layer",
    "MergeBatchNorm",
    "ModifierRule",
    "PRESETS",
    "Pass",
    "RULES",
    "Rule",
    "Term",
    "WSquare",
    "ZBox",
    "ZPlus",
    "canonized",
    "detect_batchnorm_pairs",
    "epsilon_alpha2_beta1",
    "epsilon_alpha2_beta1_flat",
    "epsilon_gamma_box",
    "epsilon_plus",
    "epsilon_plus_flat",
    "get_composite",
    "input_bounds",
    "ledger_table",
    "model_defaults",
    "modified_gradient",
]
