"""Looking inside a network: filters, feature maps, receptive fields, top-activating patches, embeddings and Network
Dissection (the other half of the lectures: not why one decision, but what the network has learned).

- :func:`filters` / :func:`feature_maps`: a convolution's weights (K,C,kh,kw) and a layer's maps (B,K,h,w); pictures
  with :func:`seewhy.viz.filter_grid` and :func:`seewhy.viz.feature_map_grid`.
- :func:`receptive_field` (exact, traced from the functions the forward calls) and :func:`empirical_receptive_field`
  (from the gradient).
- :func:`top_patches`: the k images and locations that excite each unit most, streamed over a dataset.
- :func:`embed`: a layer's pooled features projected to 2-D (PCA, t-SNE, UMAP) and :func:`scatter` with thumbnails.
- :func:`dissect`: Network Dissection (Bau et al. 2017) against concept masks; :func:`colour_concepts` built in.

``data`` is anything :func:`seewhy.data.as_data` takes: a folder (flat or one sub-folder per class), a list of paths,
a (N,C,H,W) tensor or a DataLoader. The embedding and dissection modules load on first use (scikit-learn is slow to
import).
"""

from __future__ import annotations

import importlib
from typing import Any

from .filters import feature_maps, filters
from .patches import PatchRecord, TopPatches, top_patches
from .receptive import EmpiricalField, ReceptiveField, empirical_receptive_field, receptive_field

_LAZY = {
    "embed": "embedding",
    "Embedding": "embedding",
    "scatter": "embedding",
    "dissect": "dissect",
    "Dissection": "dissect",
    "UnitConcept": "dissect",
    "colour_concepts": "concepts",
    "COLOUR_NAMES": "concepts",
    "linear_templates": "linear",
    "class_weight_norms": "linear",
    "image_prototypes_criticisms": "prototypes",
    "layer_features": "prototypes",
}

__all__ = [
    "COLOUR_NAMES",
    "Dissection",
    "Embedding",
    "EmpiricalField",
    "PatchRecord",
    "ReceptiveField",
    "TopPatches",
    "UnitConcept",
    "class_weight_norms",
    "colour_concepts",
    "dissect",
    "embed",
    "empirical_receptive_field",
    "feature_maps",
    "filters",
    "image_prototypes_criticisms",
    "layer_features",
    "linear_templates",
    "receptive_field",
    "scatter",
    "top_patches",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
