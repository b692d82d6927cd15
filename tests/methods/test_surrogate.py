"""LIME and KernelSHAP (one surrogate engine, two presets) and the superpixels they work on."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from conftest import build
from torch import nn

import seewhy
from seewhy.methods.surrogate import (
    lime_samples,
    shapley_samples,
    top_features,
    weighted_least_squares,
    weighted_r2,
)
from seewhy.segments import grid_segments, make_segments, segment_mean, superpixels


class Linear(nn.Module):
    """f_k(x) = sum(w_k * x) + c_k."""

    def __init__(self, w: torch.Tensor, c: float = 0.0) -> None:
        super().__init__()
        self.w = nn.Parameter(w)
        self.c = c

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bchw,kchw->bk", x, self.w) + self.c


def _x(shape: tuple[int, ...], seed: int = 1) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_kernel_shap_on_a_linear_model_is_w_times_x_minus_b() -> None:
    model = Linear(torch.full((1, 1, 1, 3), 4.0, dtype=torch.float64), c=3.0)
    x = torch.tensor([20.0, 50.0, 30.0], dtype=torch.float64).view(1, 1, 1, 3)
    base = torch.tensor([10.0, 20.0, 10.0], dtype=torch.float64).view(1, 1, 3)
    exp = seewhy.explain(model, x, "kernel_shap", target=0, segments=torch.arange(3).view(1, 3), baseline=base)
    torch.testing.assert_close(exp.attributions.view(3), torch.tensor([40.0, 120.0, 80.0], dtype=torch.float64))
    assert exp.extras["exact"].all() and exp.extras["n_evaluations"] == 6 + 1
    assert exp.extras["efficiency_gap"].abs().max() < 1e-5
    torch.testing.assert_close(exp.extras["baseline_scores"], torch.tensor([163.0], dtype=torch.float64))


def test_kernel_shap_sampled_coalitions_are_exact_on_a_linear_model() -> None:
    w = _x((1, 3, 12, 12), seed=3)
    model, x = Linear(w), _x((2, 3, 12, 12))
    exp = seewhy.explain(model, x, "kernel_shap", target=0, segments="grid", n_segments=36, n_samples=200,
                         baseline="mean", seed=0)
    assert not exp.extras["exact"].any() and exp.extras["n_evaluations"] == 2 * 201
    seg, phi = exp.extras["segments"], exp.extras["feature_weights"]
    contrib = (w[0] * (x - x.mean(dim=(2, 3), keepdim=True))).sum(1)  # (B,H,W)
    for j in range(36):
        torch.testing.assert_close(phi[:, j], contrib[:, seg[0] == j].sum(1), rtol=1e-8, atol=1e-8)
    assert exp.extras["efficiency_gap"].abs().max() < 1e-5
    delta = model(x)[:, 0] - model(x.mean(dim=(2, 3), keepdim=True).expand_as(x))[:, 0]
    torch.testing.assert_close(phi.sum(1), delta.detach())


def _shapley(v, f: int) -> torch.Tensor:
    """Exact Shapley values from the definition: phi_j = sum_S |S|!(F-|S|-1)!/F! (v(S + j) - v(S))."""
    phi = torch.zeros(f, dtype=torch.float64)
    for j in range(f):
        others = [i for i in range(f) if i != j]
        for k in range(f):
            for s in itertools.combinations(others, k):
                weight = math.factorial(k) * math.factorial(f - k - 1) / math.factorial(f)
                phi[j] += weight * (v(set(s) | {j}) - v(set(s)))
    return phi


def test_kernel_shap_enumerated_is_the_exact_shapley_value_of_a_nonlinear_model() -> None:
    model = build("tiny_cnn").double()
    x = _x((1, 3, 8, 8))
    seg = grid_segments(8, 8, 4)  # 2 x 2 cells
    exp = seewhy.explain(model, x, "kernel_shap", target=6, segments=seg, baseline=0.0)
    assert exp.extras["exact"].all()

    def v(keep: set) -> float:
        m = torch.zeros(8, 8, dtype=torch.bool)
        for j in keep:
            m |= seg == j
        with torch.no_grad():
            return float(model(torch.where(m, x, torch.zeros_like(x)))[0, 6])

    torch.testing.assert_close(exp.extras["feature_weights"][0], _shapley(v, 4))


def test_shapley_samples() -> None:
    g = torch.Generator().manual_seed(0)
    z, w, exact = shapley_samples(5, 1000, g)
    assert exact and len(z) == 2**5 - 2 and len(set(map(tuple, z.tolist()))) == 30
    kernel = torch.tensor([4 / (math.comb(5, k) * k * (5 - k)) for k in z.sum(1).tolist()], dtype=torch.float64)
    torch.testing.assert_close(w / w.sum(), kernel / kernel.sum())
    z, w, exact = shapley_samples(20, 201, g)
    assert not exact and len(z) == 201 and (w > 0).all()
    sizes = z.sum(1)
    assert sizes.min() >= 1 and sizes.max() <= 19
    assert (sizes == 1).sum() == 20 and (sizes == 19).sum() == 20  # sizes 1 and F-1 are enumerated first
    draws = z[40:]
    assert torch.equal(draws[:80], ~draws[81:])  # the rest comes in complementary pairs
    assert shapley_samples(1, 10, g)[0].shape == (0, 1)


def test_lime_samples_and_kernel() -> None:
    z, w = lime_samples(10, 500, 0.25, torch.Generator().manual_seed(0))
    assert z.shape == (500, 10) and abs(float(z.double().mean()) - 0.5) < 0.05
    d = 1 - (z.sum(1).double() / 10.0).sqrt()
    torch.testing.assert_close(w, torch.exp(-(d**2) / (2 * 0.25**2)))
    off = z.sum(1) == 0
    assert not off.any() or torch.allclose(w[off], torch.tensor(math.exp(-8.0), dtype=torch.float64))


def test_weighted_least_squares_matches_the_normal_equations() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(50, 6, generator=g, dtype=torch.float64)
    y = torch.rand(50, 2, generator=g, dtype=torch.float64)
    w = torch.rand(50, generator=g, dtype=torch.float64)
    coef, c0 = weighted_least_squares(x, y, w, alpha=0.7)
    xa = torch.cat([x, torch.ones(50, 1, dtype=torch.float64)], 1)
    reg = torch.diag(torch.tensor([0.7] * 6 + [0.0], dtype=torch.float64))  # the intercept is not penalised
    sol = torch.linalg.solve(xa.T @ (w[:, None] * xa) + reg, xa.T @ (w[:, None] * y))
    torch.testing.assert_close(coef, sol[:6])
    torch.testing.assert_close(c0, sol[6])
    r2 = weighted_r2(y, x @ coef + c0, w)
    assert r2.shape == (2,) and (r2 < 1).all()
    assert weighted_r2(y, y, w).tolist() == [1.0, 1.0]


def _blocks(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two images of 4 x 4 flat colour blocks (8 px each) plus mild noise, and the 16-block grid."""
    g = torch.Generator().manual_seed(seed)
    colours = torch.rand(2, 3, 4, 4, generator=g)
    x = colours.repeat_interleave(8, 2).repeat_interleave(8, 3) + 0.01 * torch.randn(2, 3, 32, 32, generator=g)
    return x.double(), grid_segments(32, 32, 16)


def test_lime_on_a_linear_model_ranks_superpixels_as_the_true_weights() -> None:
    x, _ = _blocks()
    w = _x((1, 3, 32, 32), seed=7)
    model = Linear(w)
    exp = seewhy.explain(model, x, "lime", target=0, segments="slic", n_segments=16, n_samples=500, seed=0,
                         segment_params={"compactness": 20.0})
    seg, phi, counts = exp.extras["segments"], exp.extras["feature_weights"], exp.extras["n_features"]
    base = segment_mean(x, seg)
    contrib = (w[0] * (x - base)).sum(1)
    for i in range(2):
        f = int(counts[i])
        assert f >= 8
        true = torch.stack([contrib[i, seg[i] == j].sum() for j in range(f)])
        assert torch.equal(phi[i, :f].argsort(), true.argsort())
        torch.testing.assert_close(phi[i, :f], true, rtol=0.1, atol=0.1 * float(true.abs().max()))
    assert (exp.extras["r2"] > 0.99).all()
    torch.testing.assert_close(exp.extras["local_prediction"], model(x)[:, 0].detach(), rtol=0.05, atol=0.5)
    # every pixel of a superpixel carries its weight, on every channel
    torch.testing.assert_close(exp.attributions[0, 2, seg[0] == 3], phi[0, 3].expand(int((seg[0] == 3).sum())))


def test_lime_with_a_user_mask_and_a_zero_baseline_recovers_linear_weights() -> None:
    x, seg = _blocks()
    w = _x((1, 3, 32, 32), seed=8)
    exp = seewhy.explain(Linear(w), x, "lime", target=0, segments=seg, baseline=0.0, alpha=0.0, n_samples=300,
                         seed=1)
    true = torch.stack([(w[0] * x)[:, :, seg == j].sum(dim=(1, 2)) for j in range(16)], 1)
    torch.testing.assert_close(exp.extras["feature_weights"], true)  # no penalty, linear model: exact
    torch.testing.assert_close(exp.extras["r2"], torch.ones(2, dtype=torch.float64))


def test_top_features_is_limes_positive_only_view() -> None:
    x, seg = _blocks()
    w = _x((1, 3, 32, 32), seed=9)
    exp = seewhy.explain(Linear(w), x, "kernel_shap", target=0, segments=seg, n_samples=300, seed=0)
    phi = exp.extras["feature_weights"]
    mask = top_features(exp, k=3)
    for i in range(2):
        pos = [j for j in phi[i].argsort(descending=True).tolist() if phi[i, j] > 0][:3]
        expected = torch.zeros(32, 32, dtype=torch.bool)
        for j in pos:
            expected |= seg == j
        assert torch.equal(mask[i], expected)
    neg = top_features(exp, k=2, positive_only=False, negative_only=True)
    assert (phi[0][seg[neg[0]]] < 0).all() and len(seg[neg[0]].unique()) == min(2, int((phi[0] < 0).sum()))
    both = top_features(exp, k=16, positive_only=False)
    assert both.all()
    assert not top_features(exp, k=3, min_weight=1e9).any()
    with pytest.raises(ValueError, match="not both"):
        top_features(exp, positive_only=True, negative_only=True)
    with pytest.raises(ValueError, match="per-feature weights"):
        top_features(seewhy.explain(build("tiny_cnn"), x.float(), "occlusion", target=0))


def test_segmentations_give_contiguous_ids_from_zero() -> None:
    x, _ = _blocks()
    for name in ("slic", "quickshift", "felzenszwalb", "grid"):
        seg = superpixels(x, name, 16)
        assert seg.shape == (2, 32, 32) and seg.dtype == torch.long
        for i in range(2):
            assert seg[i].unique().tolist() == list(range(int(seg[i].max()) + 1)), name
    grey = superpixels(x[:, :1], "slic", 8)
    assert grey.shape == (2, 32, 32)
    assert superpixels(x[:, :1], "quickshift").shape == (2, 32, 32)
    assert superpixels(torch.zeros(1, 3, 16, 16), "slic", 4).shape == (1, 16, 16)  # a constant image
    assert grid_segments(32, 64, 50).unique().numel() == 50
    user = make_segments(torch.tensor([[7, 7, -1], [3, 3, 3]]), torch.zeros(2, 1, 2, 3))
    assert user[0].tolist() == [[2, 2, 0], [1, 1, 1]] and torch.equal(user[0], user[1])


@pytest.mark.parametrize(
    ("params", "error", "match"),
    [
        ({"segments": "watershed"}, ValueError, "unknown segmentation"),
        ({"n_segments": 1}, ValueError, "n_segments must be"),
        ({"segments": torch.zeros(16, 17, dtype=torch.long)}, ValueError, "does not match inputs"),
        ({"segments": torch.zeros(16, 16)}, TypeError, "integer feature ids"),
        ({"n_samples": 1}, ValueError, "n_samples"),
        ({"baseline": "grey"}, ValueError, "segment_mean"),
        ({"segments": "quickshift", "segment_params": None}, ValueError, "quickshift needs"),
    ],
)
def test_surrogate_errors(params: dict, error: type, match: str) -> None:
    x = _x((1, 4 if params.get("segments") == "quickshift" else 3, 16, 16)).float()
    model = nn.Sequential(nn.Flatten(), nn.Linear(x[0].numel(), 3))
    for name in ("lime", "kernel_shap"):
        with pytest.raises(error, match=match):
            seewhy.explain(model, x, name, target=0, **params)


def test_kernel_shap_warns_when_underdetermined() -> None:
    x, _ = _blocks()
    with pytest.warns(UserWarning, match="underdetermined"):
        seewhy.explain(build("tiny_cnn").double(), x, "kernel_shap", target=0, segments="grid", n_segments=36,
                       n_samples=10, seed=0)


FAST = {
    "lime": {"n_samples": 40, "n_segments": 9, "seed": 2},
    "kernel_shap": {"n_samples": 40, "n_segments": 9, "seed": 2},
}


@pytest.mark.parametrize("name", sorted(FAST))
def test_batch_size_invariance_and_seeds(name: str) -> None:
    model = build("tiny_cnn")
    x = _x((3, 3, 16, 16)).float()
    ref = seewhy.explain(model, x, name, target=[0, 5, 9], batch_size=1, **FAST[name])
    for size in (7, 64):
        got = seewhy.explain(model, x, name, target=[0, 5, 9], batch_size=size, **FAST[name]).attributions
        torch.testing.assert_close(got, ref.attributions, rtol=1e-4, atol=1e-5)
    alone = seewhy.explain(model, x[2:], name, target=9, batch_size=7, **FAST[name]).attributions
    torch.testing.assert_close(alone, ref.attributions[2:], rtol=1e-4, atol=1e-5)
    other = seewhy.explain(model, x, name, target=[0, 5, 9], **{**FAST[name], "seed": 3}).attributions
    assert not torch.equal(other, ref.attributions)
    drawn = seewhy.explain(model, x, name, target=[0, 5, 9], **{**FAST[name], "seed": None})
    again = seewhy.explain(model, x, name, target=[0, 5, 9], **{**FAST[name], "seed": drawn.extras["seed"]})
    assert torch.equal(drawn.attributions, again.attributions)


def test_several_targets_share_forwards_and_match_single_calls() -> None:
    model, x = build("tiny_cnn").double(), _x((2, 3, 16, 16))
    for name in FAST:
        method = seewhy.get_method(name, **FAST[name])
        exps = method.explain_targets(model, x, [1, [4, 2]])
        for spec, exp in zip([1, [4, 2]], exps, strict=True):
            single = seewhy.explain(model, x, method, target=spec)
            torch.testing.assert_close(exp.attributions, single.attributions)
            for key in ("feature_weights", "segments"):
                torch.testing.assert_close(exp.extras[key], single.extras[key])
