"""Add a CAM variant: one GradientCAM subclass with a short weights(acts, grads) -> (B, K)."""

from dataclasses import dataclass

import torch

import seewhy
from seewhy.core import register
from seewhy.methods.cam import GradientCAM
from seewhy.zoo.small import TinyCNN


@register("gradcam_max")
@dataclass
class GradCAMMax(GradientCAM):
    """Grad-CAM with max-pooled gradients: M = sum_k w_k A_k, w_k = max_ij dS/dA_kij."""

    def weights(self, acts: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
        return grads.amax(dim=(2, 3))


model = TinyCNN().eval()
x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
exp = seewhy.explain(model, x, "gradcam_max", target=[1, 4])
assert exp.attributions.shape == (2, 1, 32, 32) and exp.kind == "map"  # the layer's grid: TinyCNN keeps 32x32
assert "gradcam_max" in seewhy.list_methods()  # the CLI, reports and the contract test see it too
