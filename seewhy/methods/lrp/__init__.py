"""Layer-wise relevance propagation: rules, composites, canonizers and the ``lrp`` method (with a ledger)."""

from __future__ import annotations

from .canonizers import MergeBatchNorm, detect_batchnorm_pairs
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
from .method import LRP, canonized, input_bounds, ledger_table
from .rules import LRP0, RULES, AlphaBeta, Epsilon, Flat, Gamma, Layer, Pass, Rule, WSquare, ZBox, ZPlus

__all__ = [
    "AlphaBeta",
    "Composite",
    "Epsilon",
    "Flat",
    "Gamma",
    "LRP",
    "LRP0",
    "Layer",
    "MergeBatchNorm",
    "PRESETS",
    "Pass",
    "RULES",
    "Rule",
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
]
