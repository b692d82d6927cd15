"""Adversarial examples as an interpretability tool: FGSM, PGD, the adversarial patch and robustness curves.

- FGSM (Goodfellow et al. 2015): ``x' = clip(x + eps * sign(grad_x L(f(x), y)), 0, 1)``; with a target,
  ``x' = clip(x - eps * sign(grad_x L(f(x), t)), 0, 1)`` (descending the target's loss).
- PGD (Madry et al. 2018): ``x_{k+1} = Proj_{B(x, eps) ∩ [0,1]}(x_k + a * s(grad))`` with ``s = sign`` (L-inf) or
  ``g / ||g||_2`` (L2), from a uniform random start in the ball, step ``a = 2.5 * eps / steps`` by default.
- Adversarial patch (Brown et al. 2017): a universal patch ``p`` trained with expectation over transformation,
  ``max_p E_{x, t} log P(target | A(p, x, t))`` over random scale, rotation and location, placed differentiably
  (affine grid + grid_sample with a mask).

Images are in [0, 1] (B, 3, H, W); ``normalize`` maps them to the model's input (None: the zoo model's, see
:func:`seewhy.zoo.resolve_normalize`). The loss is the cross-entropy on the logits. The model is left as
found (:func:`seewhy.hooks.model_state`); randomness comes only from ``torch.Generator`` seeded by ``seed``.
"""

from __future__ import annotations

from .attacks import NORMS, Attack, RobustnessCurve, fgsm, pgd, robustness_curve
from .universal_patch import DEFAULT_EOT, Patch, patch

__all__ = ["DEFAULT_EOT", "NORMS", "Attack", "Patch", "RobustnessCurve", "fgsm", "patch", "pgd", "robustness_curve"]
