"""Surrogate attributions: LIME and KernelSHAP, two presets of one engine.

The engine (:class:`SurrogateMethod`): split each image into F features (superpixels, grid cells or a user mask),
draw binary coalitions z in {0,1}^F (1 keeps the feature, 0 fills it with the baseline), score the perturbed images
with the shared batched evaluator (:mod:`seewhy.engine`), weight the samples and fit a linear surrogate
g(z) = phi_0 + sum_j phi_j z_j by weighted least squares in float64 (torch, no scikit-learn). The presets differ in
three choices:

============  ============================================  ==========================  ===============================
preset        coalitions                                    sample weight               fit
============  ============================================  ==========================  ===============================
lime          z ~ Bernoulli(1/2)^F, plus z = 1 (f(x))       exp(-d^2 / (2 width^2)),    ridge (``alpha``), free
                                                            d = cosine distance to 1    intercept; weighted R^2
kernel_shap   Shapley-kernel sizes, paired (z, 1 - z);      Shapley kernel (enumerated  phi_0 = f(b) and
              small sizes enumerated, all when 2^F-2 <= n   sizes) or 1 (sampled)       sum(phi) = f(x) - f(b) exactly
============  ============================================  ==========================  ===============================

Per-feature weights are broadcast to pixels: every pixel (and channel) of feature j carries phi_j (Captum's
convention), so the efficiency sum holds on ``extras["feature_weights"]``, not on the pixel map.
:func:`top_features` gives lime's positive-only / top-k view.
"""

from __future__ import annotations

import itertools
import math
import warnings
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ..core import Call, Cost, Explanation, register
from ..engine import generator
from ..segments import make_segments, n_features
from ..targets import Target
from .perturbation import PerturbationMethod, Result, broadcast_features, feature_baseline


def weighted_least_squares(x: Tensor, y: Tensor, w: Tensor, *, alpha: float = 0.0, intercept: bool = True
                           ) -> tuple[Tensor, Tensor]:
    """argmin_{b, c} sum_i w_i (y_i - c - x_i b)^2 + alpha |b|^2 (the intercept c is not penalised), float64.

    x: (n, F), y: (n, T), w: (n,) >= 0. Returns (b (F, T), c (T,)). Solved by least squares on the rescaled system
    (the minimum-norm solution when it is underdetermined).
    """
    x, y, w = x.double().cpu(), y.double().cpu(), w.double().cpu()
    f, t = x.shape[1], y.shape[1]
    if intercept:
        total = w.sum().clamp(min=1e-300)
        xm, ym = (w @ x) / total, (w @ y) / total
        x, y = x - xm, y - ym
    else:
        xm, ym = torch.zeros(f, dtype=torch.float64), torch.zeros(t, dtype=torch.float64)
    sw = w.sqrt()[:, None]
    a, rhs = sw * x, sw * y
    if alpha > 0:
        a = torch.cat([a, math.sqrt(alpha) * torch.eye(f, dtype=torch.float64)])
        rhs = torch.cat([rhs, torch.zeros(f, t, dtype=torch.float64)])
    if f == 0:
        coef = torch.zeros(0, t, dtype=torch.float64)
    else:
        coef = torch.linalg.lstsq(a, rhs, driver="gelsd").solution
    return coef, ym - xm @ coef


def weighted_r2(y: Tensor, pred: Tensor, w: Tensor) -> Tensor:
    """Weighted coefficient of determination per column of (n, T) (1 for a perfect fit of a constant)."""
    mean = (w @ y) / w.sum()
    res = (w[:, None] * (y - pred) ** 2).sum(0)
    tot = (w[:, None] * (y - mean) ** 2).sum(0)
    perfect = (res <= 1e-24 * (1 + float(y.abs().max()) ** 2)).double()
    return torch.where(tot > 0, 1 - res / tot.clamp(min=1e-300), perfect)


def lime_samples(f: int, n: int, kernel_width: float, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """LIME's draws: z ~ Bernoulli(1/2)^F (n rows) and their weights exp(-d^2 / (2 width^2)), d the cosine distance
    between z and the all-ones vector (1 for z = 0)."""
    z = torch.rand(n, f, generator=gen, dtype=torch.float64) < 0.5
    d = 1 - (z.sum(1).double() / f).sqrt()
    return z, torch.exp(-(d**2) / (2 * kernel_width**2))


def shapley_samples(f: int, n: int, gen: torch.Generator) -> tuple[Tensor, Tensor, bool]:
    """KernelSHAP coalitions (Lundberg & Lee 2017) for F features and a budget of n, and their weights.

    The Shapley kernel gives all coalitions of size k the total mass (F-1) / (k (F-k)). Sizes k and F-k are taken in
    pairs from the smallest: while the budget covers the expected number of draws of a pair, all its coalitions are
    enumerated with their exact kernel weights; the rest of the budget is drawn from the remaining sizes by their
    mass, each draw followed by its complement, all with equal weight. Returns (z (m, F) bool, w (m,), exact): exact
    when every coalition is enumerated (then the regression gives the exact Shapley values).
    """
    if f < 2:
        return torch.zeros(0, f, dtype=torch.bool), torch.zeros(0, dtype=torch.float64), True
    size = torch.arange(1, f, dtype=torch.float64)
    mass = (f - 1) / (size * (f - size))
    mass = mass / mass.sum()
    rows: list[Tensor] = []
    weights: list[Tensor] = []
    left = list(range(1, f))
    budget = n
    everything = 2**f - 2 <= n
    for k in range(1, f // 2 + 1):
        pair = [k] if 2 * k == f else [k, f - k]
        count = sum(math.comb(f, j) for j in pair)
        share = float(mass[[j - 1 for j in pair]].sum() / mass[[j - 1 for j in left]].sum())
        if not everything and (count > budget or budget * share < count):
            break
        for j in pair:
            combos = torch.tensor(list(itertools.combinations(range(f), j)), dtype=torch.long)
            z = torch.zeros(len(combos), f, dtype=torch.bool)
            z.scatter_(1, combos, True)
            rows.append(z)
            weights.append(torch.full((len(combos),), float(mass[j - 1]) / math.comb(f, j), dtype=torch.float64))
            left.remove(j)
        budget -= count
    if left and budget > 0:
        p = mass[[j - 1 for j in left]]
        sizes = torch.tensor(left)[torch.multinomial(p, (budget + 1) // 2, replacement=True, generator=gen)]
        rank = torch.rand(len(sizes), f, generator=gen).argsort(1).argsort(1)
        z = rank < sizes[:, None]
        z = torch.cat([z, ~z])[:budget]
        rows.append(z)
        weights.append(torch.full((budget,), float(p.sum()) / budget, dtype=torch.float64))
    exact = not left
    if not rows:
        return torch.zeros(0, f, dtype=torch.bool), torch.zeros(0, dtype=torch.float64), exact
    return torch.cat(rows), torch.cat(weights), exact


@dataclass
class SurrogateMethod(PerturbationMethod):
    """The surrogate engine shared by LIME and KernelSHAP; a preset defines :meth:`draw` and :meth:`fit`."""

    family: ClassVar[str] = "surrogate"

    n_samples: int = 1000
    segments: str | Tensor = "slic"
    n_segments: int = 50
    baseline: float | str | Tensor = 0.0
    seed: int | None = None
    segment_params: dict | None = None
    blur_sigma: float = 10.0

    def cost(self, model: nn.Module | None = None, inputs: Tensor | None = None) -> Cost:
        """``n_samples`` coalitions (and f(x), and for KernelSHAP f(baseline))."""
        return Cost(forwards=self.n_samples + (2 if self.name == "kernel_shap" else 0), lower="n_samples")

    def draw(self, f: int, gen: torch.Generator) -> tuple[Tensor, Tensor, dict[str, Any]]:
        """Coalitions to evaluate (m, F) bool, their regression weights (m,), and per-image info."""
        raise NotImplementedError

    def fit(self, z: Tensor, y: Tensor, w: Tensor, clean: Tensor, info: dict[str, Any]
            ) -> tuple[Tensor, dict[str, Tensor]]:
        """Feature weights (T, F) from scores y (T, m) of coalitions z, f(x) ``clean`` (T,); per-target extras."""
        raise NotImplementedError

    def attribute_targets(self, model: nn.Module, inputs: Tensor, targets: list[Target],
                          call: Call) -> list[Result]:
        if not isinstance(self.n_samples, int) or isinstance(self.n_samples, bool) or self.n_samples < 2:
            raise ValueError(f"n_samples must be an int >= 2, got {self.n_samples!r}")
        segments = make_segments(self.segments, inputs, self.n_segments, self.segment_params)
        counts = n_features(segments)
        b, f_max = inputs.shape[0], int(counts.max())
        base = feature_baseline(inputs, self.baseline, segments, self.blur_sigma)
        seed = generator(self.seed)[1]
        # each image draws from its own generator with the same seed: its samples do not depend on the batch
        draws = [self.draw(int(f), torch.Generator().manual_seed(seed)) for f in counts]
        sizes = torch.tensor([len(d[0]) for d in draws])
        z_all = torch.zeros(b, int(sizes.max()), f_max, dtype=torch.bool)
        for i, (z, _, _) in enumerate(draws):
            z_all[i, : len(z), : z.shape[1]] = z
        z_all = z_all.to(inputs.device)
        sample = torch.arange(b).repeat_interleave(sizes)
        draw = torch.cat([torch.arange(int(s)) for s in sizes])
        h, w = inputs.shape[-2:]

        def masks(idx: Tensor) -> Tensor:
            s = sample[idx].to(inputs.device)
            z = z_all[s, draw[idx].to(inputs.device)]
            return z.gather(1, segments[s].reshape(len(idx), -1)).view(len(idx), 1, h, w)

        modes = self.modes(targets)
        scores = self.evaluate_masks(model, inputs, base, masks, sample, targets, modes).double().cpu()
        clean = self.clean_scores(call, targets, modes).double().cpu()
        weights = torch.zeros(len(targets), b, f_max, dtype=torch.float64)
        per_target: list[dict[str, list[Tensor]]] = [{} for _ in targets]
        start = 0
        for i, (z, wt, info) in enumerate(draws):
            y = scores[:, start : start + len(z)]
            start += len(z)
            phi, extras = self.fit(z, y, wt, clean[:, i], info)
            weights[:, i, : phi.shape[1]] = phi
            for t in range(len(targets)):
                for key, val in extras.items():
                    per_target[t].setdefault(key, []).append(val[t])
        call.extras.update(segments=segments, n_features=counts, n_evaluations=int(sizes.sum()), seed=seed)
        weights = weights.to(inputs.device)
        out = []
        for t in range(len(targets)):
            attr = broadcast_features(weights[t], segments, inputs.shape[1]).to(inputs.dtype)
            extras = {k: torch.stack(v).to(inputs.device) for k, v in per_target[t].items()}
            out.append((attr, {"feature_weights": weights[t].to(inputs.dtype), **extras}))
        return out


@register("lime")
@dataclass
class Lime(SurrogateMethod):
    """LIME (Ribeiro et al. 2016, arXiv:1602.04938) on superpixels: g = argmin sum_z pi(z) (f(x_z) - g(z))^2 +
    alpha |phi|^2, z ~ Bernoulli(1/2)^F, pi(z) = exp(-d(z, 1)^2 / (2 width^2)), d the cosine distance.

    As lime's image explainer: ``n_samples`` samples of which the first is the image itself (its score is reused, so
    ``n_samples - 1`` forwards), ``kernel_width=0.25``, a ridge surrogate with ``alpha=1`` and a free intercept,
    superpixels filled with their mean colour (``baseline="segment_mean"``; also a number, "mean", "blur" or a
    tensor). ``segments``: "slic" (default), "quickshift", "felzenszwalb", "grid" or a LongTensor (H,W)/(B,H,W).
    ``score``: "logit" (raw output, as Captum) or "probability" (softmax, as lime's ``classifier_fn``).
    ``extras``: ``feature_weights`` (B,F), ``intercept``, ``r2`` (the surrogate's weighted R^2, lime's ``score``) and
    ``local_prediction`` (B,), ``segments`` (B,H,W), ``n_features`` (B,), ``n_evaluations``, ``seed``.
    """

    baseline: float | str | Tensor = "segment_mean"
    kernel_width: float = 0.25
    alpha: float = 1.0
    heatmap_convention: ClassVar[dict[str, Any]] = {"reduce": "mean", "sign": "positive", "normalize": "max"}

    def draw(self, f: int, gen: torch.Generator) -> tuple[Tensor, Tensor, dict[str, Any]]:
        if self.kernel_width <= 0:
            raise ValueError(f"kernel_width must be > 0, got {self.kernel_width!r}")
        if self.alpha < 0:
            raise ValueError(f"alpha must be >= 0, got {self.alpha!r}")
        z, w = lime_samples(f, self.n_samples - 1, self.kernel_width, gen)
        return z, w, {}

    def fit(self, z: Tensor, y: Tensor, w: Tensor, clean: Tensor, info: dict[str, Any]
            ) -> tuple[Tensor, dict[str, Tensor]]:
        x = torch.cat([torch.ones(1, z.shape[1], dtype=torch.float64), z.double()])
        yy = torch.cat([clean[:, None], y], dim=1).T  # (m+1, T): the image itself first, weight 1
        ww = torch.cat([torch.ones(1, dtype=torch.float64), w])
        coef, c0 = weighted_least_squares(x, yy, ww, alpha=self.alpha)
        r2 = weighted_r2(yy, x @ coef + c0, ww)
        return coef.T, {"intercept": c0, "r2": r2, "local_prediction": c0 + coef.sum(0)}


@register("kernel_shap")
@dataclass
class KernelShap(SurrogateMethod):
    """KernelSHAP (Lundberg & Lee 2017, arXiv:1705.07874): phi = argmin sum_z pi(z) (f(x_z) - f(b) - z.phi)^2
    subject to sum(phi) = f(x) - f(b) (efficiency, enforced exactly), pi(z) = (F-1) / (C(F,|z|) |z| (F-|z|)).

    ``n_samples`` coalitions per image (plus one forward of the baseline; f(x) is reused); when 2^F - 2 <= n_samples
    all coalitions are enumerated and phi are the exact Shapley values of the features; otherwise small and large
    coalition sizes are enumerated while the budget allows and the rest sampled in complementary pairs
    (:func:`shapley_samples`). ``baseline``: a number (default 0.0), "mean", "blur", "segment_mean" or a tensor.
    ``extras``: ``feature_weights`` (B,F), ``baseline_scores`` f(b) and ``efficiency_gap`` sum(phi) - (f(x) - f(b))
    (B,), ``exact`` (B,) bool, ``segments``, ``n_features``, ``n_evaluations``, ``seed``.
    """

    heatmap_convention: ClassVar[dict[str, Any]] = {"reduce": "mean", "sign": "all", "normalize": "max"}

    def draw(self, f: int, gen: torch.Generator) -> tuple[Tensor, Tensor, dict[str, Any]]:
        z, w, exact = shapley_samples(f, self.n_samples, gen)
        if not exact and len(z) < f:
            warnings.warn(
                f"kernel_shap: {self.n_samples} samples for {f} features leave the fit underdetermined; "
                "raise n_samples or lower n_segments",
                stacklevel=6,
            )
        z = torch.cat([z, torch.zeros(1, f, dtype=torch.bool)])  # last row: the baseline f(b)
        return z, torch.cat([w, torch.zeros(1, dtype=torch.float64)]), {"exact": exact}

    def fit(self, z: Tensor, y: Tensor, w: Tensor, clean: Tensor, info: dict[str, Any]
            ) -> tuple[Tensor, dict[str, Tensor]]:
        base = y[:, -1]
        z, y, w = z[:-1].double(), (y[:, :-1] - base[:, None]).T, w[:-1]
        delta = clean - base
        f = z.shape[1]
        if f == 1:
            phi = delta[None, :]
        else:  # eliminate phi_F = delta - sum_{j<F} phi_j, then unconstrained weighted least squares
            coef, _ = weighted_least_squares(z[:, :-1] - z[:, -1:], y - z[:, -1:] * delta, w, intercept=False)
            phi = torch.cat([coef, (delta - coef.sum(0))[None]])
        t = len(clean)
        return phi.T, {
            "baseline_scores": base,
            "efficiency_gap": phi.sum(0) - delta,
            "exact": torch.full((t,), bool(info["exact"])),
        }


def top_features(
    exp: Explanation, k: int = 5, *, positive_only: bool = True, negative_only: bool = False, min_weight: float = 0.0
) -> Tensor:
    """lime's ``get_image_and_mask`` view: a (B,H,W) boolean mask of each image's ``k`` strongest features.

    Features are ranked by |weight|; ``positive_only`` keeps those with weight > ``min_weight`` (lime's default
    view), ``negative_only`` those with weight < -``min_weight``, neither: |weight| > ``min_weight``. Works on any
    explanation with ``extras["feature_weights"]`` and ``extras["segments"]`` (lime, kernel_shap, feature_ablation).
    Show the kept regions with ``inputs * mask[:, None]`` (lime's ``hide_rest``).
    """
    if positive_only and negative_only:
        raise ValueError("choose positive_only or negative_only, not both")
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    extras = getattr(exp, "extras", {})
    if "feature_weights" not in extras or "segments" not in extras:
        raise ValueError(
            f"top_features needs an explanation with per-feature weights (lime, kernel_shap, feature_ablation); "
            f"{getattr(exp, 'method', type(exp).__name__)!r} has extras {sorted(extras)}"
        )
    w, seg = extras["feature_weights"], extras["segments"]
    f = torch.arange(w.shape[1], device=w.device)
    counts = extras.get("n_features")
    valid = f[None, :] < (counts.to(w.device)[:, None] if counts is not None else w.shape[1])
    if positive_only:
        valid &= w > min_weight
    elif negative_only:
        valid &= w < -min_weight
    else:
        valid &= w.abs() > min_weight
    rank = torch.where(valid, w.abs(), torch.full_like(w, -1.0))
    top = rank.topk(min(k, w.shape[1]), dim=1)
    chosen = torch.zeros_like(valid)
    chosen.scatter_(1, top.indices, top.values >= 0)
    chosen &= valid
    return chosen.gather(1, seg.reshape(seg.shape[0], -1)).view_as(seg)
