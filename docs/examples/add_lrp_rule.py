"""Add an LRP rule: a small class with named modifiers, used through a composite."""

import torch
from torch import nn

import seewhy
from seewhy.methods.lrp import Composite, Epsilon, ModifierRule


class PlusGamma(ModifierRule):
    """LRP-gamma for inputs >= 0 (Montavon et al. 2019): R_i = sum_j x_i (w_ij + g w_ij+) / sum_i' (...) R_j."""

    def __init__(self, gamma: float = 0.25) -> None:
        self.gamma = gamma

    def weight(self, w: torch.Tensor) -> torch.Tensor:
        return w + self.gamma * w.clamp(min=0)

    def bias(self, b: torch.Tensor) -> torch.Tensor:
        return b + self.gamma * b.clamp(min=0)


torch.manual_seed(0)
model = nn.Sequential(nn.Conv2d(3, 8, 3, bias=False), nn.ReLU(), nn.Conv2d(8, 8, 3, bias=False), nn.ReLU(),
                      nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4, bias=False)).double().eval()
composite = Composite(types=[(nn.Conv2d, PlusGamma(0.5)), (nn.Linear, Epsilon(1e-12))])
x = torch.randn(2, 3, 16, 16, dtype=torch.float64)

exp = seewhy.explain(model, x, "lrp", target=1, composite=composite, canonizers=None)

# bias-free layers: all relevance reaches the input (the ledger sums it at every layer)
book = exp.extras["relevance_ledger"]
assert torch.allclose(book["input"], book["output"], rtol=1e-6), book
