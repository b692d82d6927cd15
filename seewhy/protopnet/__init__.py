"""ProtoPNet ("this looks like that", Chen et al., NeurIPS 2019): an interpretable-by-design classifier.

``ProtoPNet`` is a normal ``nn.Module`` (``model(x)`` -> logits); :func:`train_folder` / :func:`train` run
the paper's schedule with validation-based checkpoints, :func:`push_prototypes` projects prototypes onto
training patches, :func:`explain_local` / :func:`explain_global` give "this looks like that" evidence and
:func:`write_protopnet_report` renders it as a self-contained HTML page. The explain() method
``protopnet`` returns the per-prototype similarity maps.
"""

from __future__ import annotations

from .data import Augment, FolderImages, ImageSet, TensorImages, median_short_side, scan_folder, stratified_split
from .explain import (
    Evidence,
    LocalExplanation,
    Neighbour,
    PrototypeSummary,
    explain_global,
    explain_local,
    high_activation_box,
    nearest_patches,
    upsample_map,
)
from .model import (
    BACKBONES,
    FeaturesTrunk,
    LayerTrunk,
    Preprocessing,
    ProtoPNet,
    SmallCNNTrunk,
    auto_backbone,
    build_backbone,
    log_similarity,
    trunk,
)
from .push import PushResult, push_prototypes
from .report import CONSTANT_PATCH_STD, LocalRow, write_protopnet_report
from .runs import Run, load_run, train_folder
from .train import (
    Stage,
    TrainConfig,
    TrainResult,
    evaluate,
    protopnet_loss,
    schedule,
    train,
)

__all__ = [
    "Augment",
    "BACKBONES",
    "CONSTANT_PATCH_STD",
    "Evidence",
    "FeaturesTrunk",
    "FolderImages",
    "ImageSet",
    "LayerTrunk",
    "LocalExplanation",
    "LocalRow",
    "Neighbour",
    "Preprocessing",
    "ProtoPNet",
    "PrototypeSummary",
    "PushResult",
    "Run",
    "SmallCNNTrunk",
    "Stage",
    "TensorImages",
    "TrainConfig",
    "TrainResult",
    "auto_backbone",
    "build_backbone",
    "evaluate",
    "explain_global",
    "explain_local",
    "high_activation_box",
    "load_run",
    "log_similarity",
    "median_short_side",
    "nearest_patches",
    "protopnet_loss",
    "push_prototypes",
    "scan_folder",
    "schedule",
    "stratified_split",
    "train",
    "train_folder",
    "trunk",
    "upsample_map",
    "write_protopnet_report",
]
