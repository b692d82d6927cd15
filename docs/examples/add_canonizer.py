"""Add a canonizer: fold a custom scale layer into the next convolution while LRP runs, then restore the model."""

import torch
from torch import nn

import seewhy
from seewhy.methods.lrp import Canonized, Canonizer


class Scale(nn.Module):  # y = s * x per channel: a normalisation LRP has no rule for
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.s = nn.Parameter(torch.rand(channels) + 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.s.view(1, -1, 1, 1)


class FoldScale(Canonizer):
    """W' = W diag(s) in the convolution after the scale, s' = 1: the same function, one layer fewer."""

    def apply(self, model: nn.Module, inputs: torch.Tensor | None = None) -> Canonized:
        record = Canonized()  # every write is undone by record.restore(), bit-identically
        record.write(model[3].weight, model[3].weight * model[2].s.view(1, -1, 1, 1))
        record.write(model[2].s, torch.ones_like(model[2].s))
        return record


model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), Scale(4), nn.Conv2d(4, 5, 3), nn.ReLU(),
                      nn.Flatten(), nn.Linear(5 * 12 * 12, 3)).eval()
before = {k: v.clone() for k, v in model.state_dict().items()}
exp = seewhy.explain(model, torch.randn(2, 3, 16, 16), "lrp", target=0, canonizers=[FoldScale(), "auto"])
assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # restored exactly
