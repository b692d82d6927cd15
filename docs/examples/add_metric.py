"""Add a metric: one function, one registration; then run it by name, next to the built-in ones."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seewhy.evaluate import evaluate
from seewhy.metrics import register_metric
from seewhy.zoo.small import TinyCNN


@register_metric("top_decile_drop", family="faithfulness", higher_is_better=True, cost=lambda params: 2)
def top_decile_drop(model: nn.Module, inputs: Tensor, attributions: Tensor, target: Tensor, *,
                    seed: int | None = None) -> Tensor:
    """Top-decile drop: f_c(x) - f_c(x with its 10% most relevant pixels set to 0); higher is more faithful."""
    pmap = F.interpolate(attributions.sum(1, keepdim=True), size=inputs.shape[-2:], mode="bilinear")
    keep = pmap < pmap.flatten(1).quantile(0.9, dim=1).view(-1, 1, 1, 1)
    rows = torch.arange(inputs.shape[0])
    with torch.no_grad():
        return model(inputs)[rows, target] - model(inputs * keep)[rows, target]


torch.manual_seed(0)
model, images = TinyCNN().eval(), torch.rand(8, 3, 32, 32)
run = evaluate(model, images, ["input_x_gradient"], ["top_decile_drop"], progress=False, estimate=False)
drop = {m: run.results[(m, "top_decile_drop")].summary()[0] for m in ("input_x_gradient", "random_attribution")}
assert drop["input_x_gradient"] > drop["random_attribution"], drop  # the method beats the random control
