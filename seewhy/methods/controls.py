"""Controls: "explanations" that ignore the model, so every evaluation shows what a meaningless map scores.

Both are registered explain methods (``get_method("random_attribution")``, ``get_method("edge_detector")``) and
return (B,1,H,W) maps at the input resolution. Quantus ships the same controls (random, Sobel, constant);
Adebayo et al. (2018) show that an edge detector alone resembles several saliency maps.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core import Call, Cost, Method, register


def image_seeds(inputs: Tensor, seed: int) -> list[int]:
    """One seed per image, from ``seed`` and a hash (BLAKE2b) of the image's values in float64.

    An image's seed does not depend on the other images of the batch nor on its position, so anything drawn
    from it is batch-invariant; identical images get identical seeds (and draws).
    """
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TypeError(f"seed must be an int, got {seed!r}")
    x = inputs.detach().to("cpu", torch.float64).contiguous()
    out = []
    for img in x:
        h = hashlib.blake2b(img.numpy().tobytes(), digest_size=8, key=str(seed).encode())
        out.append(int.from_bytes(h.digest(), "little") >> 1)  # non-negative, < 2**63
    return out


@register("random_attribution")
@dataclass
class RandomAttribution(Method):
    """Random control: a map of i.i.d. noise, A_ij ~ N(0, 1) (``distribution="normal"``) or U(0, 1)
    (``"uniform"``), independent of the model and the target.

    Drawn per image from a generator seeded by ``seed`` and a hash of the image's values
    (:func:`image_seeds`): the same image gets the same map whatever the batch, and two identical images get
    the same map. Returns (B,1,H,W) in the inputs' dtype and device.
    """

    kind: ClassVar[str] = "map"
    in_all: ClassVar[bool] = False  # a control: run by name
    family: ClassVar[str] = "control"
    heatmap_convention: ClassVar[dict[str, Any]] = {"reduce": "sum", "sign": "abs", "normalize": "minmax"}

    distribution: str = "normal"
    seed: int = 0

    def cost(self, model: nn.Module | None = None, inputs: Tensor | None = None) -> Cost:
        return Cost(forwards=1)

    def attribute(self, model: nn.Module, inputs: Tensor, call: Call) -> Tensor:
        if self.distribution not in ("normal", "uniform"):
            raise ValueError(f"unknown distribution {self.distribution!r}; use 'normal' or 'uniform'")
        draw = torch.randn if self.distribution == "normal" else torch.rand
        shape = (1, *inputs.shape[-2:])
        maps = [
            draw(shape, generator=torch.Generator().manual_seed(s), dtype=torch.float64)
            for s in image_seeds(inputs, self.seed)
        ]
        call.extras["seed"] = self.seed
        return torch.stack(maps).to(inputs.device, inputs.dtype)


_SOBEL_X = torch.tensor([[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]]) / 8.0


def sobel_magnitude(inputs: Tensor) -> Tensor:
    """Sobel gradient magnitude over all channels: sqrt(sum_c (G_x * x_c)^2 + (G_y * x_c)^2), with the kernels
    scaled by 1/8 (a ramp of slope 1 per pixel gives 1) and the border replicated. (B,C,H,W) -> (B,1,H,W)."""
    b, c, h, w = inputs.shape
    kx = _SOBEL_X.to(inputs.device, inputs.dtype)
    k = torch.stack([kx, kx.T])[:, None]  # (2,1,3,3): d/dx, d/dy
    x = F.pad(inputs.detach().reshape(b * c, 1, h, w), (1, 1, 1, 1), mode="replicate")
    g = F.conv2d(x, k).reshape(b, c * 2, h, w)
    return g.pow(2).sum(1, keepdim=True).sqrt()


@register("edge_detector")
@dataclass
class EdgeDetector(Method):
    """Edge-detector control: the Sobel gradient magnitude of the input image (Sobel & Feldman 1968),
    A = sqrt(sum_c (G_x * x_c)^2 + (G_y * x_c)^2); ignores the model and the target.

    A method whose maps resemble this one may be showing image edges rather than the model (Adebayo et al.
    2018). Returns (B,1,H,W), non-negative, in the inputs' dtype and device.
    """

    kind: ClassVar[str] = "map"
    in_all: ClassVar[bool] = False  # a control: run by name
    family: ClassVar[str] = "control"
    heatmap_convention: ClassVar[dict[str, Any]] = {"reduce": "sum", "sign": "abs", "normalize": "minmax"}

    def cost(self, model: nn.Module | None = None, inputs: Tensor | None = None) -> Cost:
        return Cost(forwards=1)

    def attribute(self, model: nn.Module, inputs: Tensor, call: Call) -> Tensor:
        return sobel_magnitude(inputs)
