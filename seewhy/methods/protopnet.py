"""ProtoPNet's own explanation as an explain() method: the per-prototype similarity maps.

Chen et al., "This Looks Like That", NeurIPS 2019: ``S[b, j, h, w] = log((d + 1) / (d + 1e-4))`` with
``d = ||z_b(h, w) - p_j||^2``; the class score is ``sum_j W[c, j] max_{h,w} S[b, j]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ..core import Call, Cost, Method, register
from ..protopnet.model import ProtoPNet


@register("protopnet")
@dataclass
class ProtoPNetSimilarity(Method):
    """Per-prototype similarity maps of a ProtoPNet, (B, P, h, w) at the latent resolution.

    Paper: Chen et al., NeurIPS 2019. Formula: ``S_j(h, w) = log((||z(h,w) - p_j||^2 + 1) / (||z(h,w) - p_j||^2
    + 1e-4))``. The maps do not depend on the target; the target's evidence is in ``extras``:
    ``top_prototype`` (B,), the prototype with the most points ``max_hw S_j * W[target, j]``, and
    ``top_points`` (B,). The heatmap is the largest similarity over all prototypes at each location.

    Raises:
        TypeError: the model is not a :class:`seewhy.protopnet.ProtoPNet`.
    """

    kind: ClassVar[str] = "prototype"
    family: ClassVar[str] = "prototype"
    in_all: ClassVar[bool] = False  # ProtoPNet models only: run by name
    heatmap_convention: ClassVar[dict[str, Any]] = {
        "reduce": "max_abs",
        "sign": "positive",
        "upsample": "bicubic",
        "normalize": "minmax",
    }

    def cost(self, model: nn.Module | None = None, inputs: Tensor | None = None) -> Cost:
        return Cost(forwards=1)

    def attribute(self, model: nn.Module, inputs: Tensor, call: Call) -> Tensor:
        if not isinstance(model, ProtoPNet):
            raise TypeError(
                f"the protopnet method explains seewhy.protopnet.ProtoPNet models, got {type(model).__name__}; "
                "train one with seewhy.protopnet.train_folder (or `seewhy protopnet train`), or pick another method"
            )
        with torch.no_grad():
            _, d = model.prototype_distances(inputs)
            maps = model.similarity(d)
            sims = model.similarity(d.flatten(2).amin(2))
            logits = model.last_layer(sims)
            target = call.resolve(logits)
            if target.indices is not None:
                target.score(logits)  # range check
                points = sims * model.last_layer.weight[target.indices.to(logits.device)]
                top = points.max(1)
                call.extras["top_prototype"] = top.indices.to(inputs.dtype)
                call.extras["top_points"] = top.values
        return maps
