"""Add a perturbation method: the base batches the perturbed forwards; the subclass writes only its math."""

from dataclasses import dataclass

import torch

import seewhy
from seewhy.core import register
from seewhy.methods.perturbation import PerturbationMethod


@register("row_occlusion")
@dataclass
class RowOcclusion(PerturbationMethod):
    """Occlude one image row at a time: A(i, :) = S(x) - S(x with row i set to 0), a (B,1,H,W) map."""

    kind = "map"

    def attribute_targets(self, model, inputs, targets, call):
        b, _, h, w = inputs.shape
        sample, row = torch.arange(b).repeat_interleave(h), torch.arange(h).repeat(b)

        def keep(idx):  # keep-masks of the rows idx: all but their image row
            return (torch.arange(h)[None, :] != row[idx][:, None])[:, None, :, None].expand(-1, 1, h, w)

        modes = self.modes(targets)  # the `score` field: logit or probability
        scores = self.evaluate_masks(model, inputs, torch.zeros_like(inputs), keep, sample, targets, modes)
        drop = self.clean_scores(call, targets, modes)[:, :, None] - scores.view(len(targets), b, h)
        return [(d[:, None, :, None].expand(b, 1, h, w).contiguous(), {}) for d in drop]


model = seewhy.zoo.small.TinyCNN().eval()
x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))
one = seewhy.explain(model, x, "row_occlusion", target=2, batch_size=5)
two = seewhy.explain(model, x, "row_occlusion", target=2, batch_size=48)  # batching never changes the result
torch.testing.assert_close(one.attributions, two.attributions)
ranks = seewhy.explain(model, x, "row_occlusion", topk=2)  # two classes from the same perturbed forwards
assert len(ranks) == 2 and ranks[0].attributions.shape == (3, 1, 16, 16)
