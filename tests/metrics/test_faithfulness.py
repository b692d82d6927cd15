"""Faithfulness metrics: oracle vs random on an additive model, analytic chance levels, ROAD's imputer against an
independent sparse solve, protocol mechanics, batch invariance, model state and errors."""

from __future__ import annotations

import inspect
import math

import pytest
import torch
from conftest import build
from torch import nn

from seewhy import get_method
from seewhy.hooks import count_hooks
from seewhy.metrics import METRICS
from seewhy.metrics.common import ranks as _ranks
from seewhy.metrics.common import rise_blur as _rise_blur
from seewhy.metrics.faithfulness import (
    PRESETS,
    deletion_auc,
    faithfulness_correlation,
    infidelity,
    insertion_auc,
    noisy_linear_imputation,
    pixel_flipping,
    road,
)
from seewhy.metrics.imputation import _NEIGHBOURS, _deep_holes

B, C, H, W, K = 4, 3, 12, 12, 5
N_RANDOM = 12  # random attributions averaged for the chance level


@pytest.fixture(scope="module")
def linear() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """An additive model: logit_k = sum_i w_ki x_i + b_k on pixels; its inputs and the target classes."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(C * H * W, K)).eval()
    x = torch.randn(B, C, H, W, generator=torch.Generator().manual_seed(1))
    return model, x, torch.tensor([0, 1, 2, 3])


def _weights(model: nn.Module, target: torch.Tensor) -> torch.Tensor:
    return model[1].weight.detach()[target].view(-1, C, H, W)


def _logit(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).gather(1, target[:, None])[:, 0]


def _random_maps(i: int) -> torch.Tensor:
    return torch.rand(B, 1, H, W, generator=torch.Generator().manual_seed(100 + i))


def _near(values: torch.Tensor, expected: torch.Tensor) -> None:
    """The mean over random attributions is within 4 standard errors (+ float slack) of the analytic expectation."""
    mean, se = values.mean(0), values.std(0) / math.sqrt(values.shape[0])
    assert torch.all((mean - expected).abs() <= 4 * se + 1e-4), (mean, expected, se)


def test_deletion_oracle_beats_random_and_random_is_at_chance(linear):
    model, x, t = linear
    oracle = _weights(model, t) * x  # exact contribution of every value against the zero substitute
    kw = dict(substitute="zero", score="logit")
    best = deletion_auc(model, x, oracle, t, **kw).auc
    rand = torch.stack([deletion_auc(model, x, _random_maps(i), t, **kw).auc for i in range(N_RANDOM)])
    # removing the largest contributions first is optimal at every step for an additive model
    assert torch.all(best < rand.min(0).values)
    # a random order removes, in expectation, a share t of the total at fraction t: AUC = bias + total / 2
    bias = model[1].bias.detach()[t]
    _near(rand, bias + oracle.sum(dim=(1, 2, 3)) / 2)


def test_insertion_oracle_beats_random_and_random_is_at_chance(linear):
    model, x, t = linear
    blur = _rise_blur(x)
    oracle = _weights(model, t) * (x - blur)  # contribution of putting each value back into the blurred substrate
    best = insertion_auc(model, x, oracle, t, score="logit").auc
    rand = torch.stack([insertion_auc(model, x, _random_maps(i), t, score="logit").auc for i in range(N_RANDOM)])
    assert torch.all(best > rand.max(0).values)
    _near(rand, (_logit(model, x, t) + _logit(model, blur, t)) / 2)


def test_road_oracle_beats_random_and_random_is_at_chance(linear):
    model, x, t = linear
    oracle = _weights(model, t) * x
    kw = dict(fractions=(0.1, 0.3, 0.5, 0.7), score="logit", seed=0)
    best = road(model, x, oracle, t, **kw)
    rand = [road(model, x, _random_maps(i), t, **kw) for i in range(N_RANDOM)]
    combined = torch.stack([r.scores for r in rand])
    assert torch.all(best.scores > combined.max(0).values)
    assert torch.all(best.morf.mean(1) < torch.stack([r.morf.mean(1) for r in rand]).min(0).values)
    # a random ranking removes random sets of the same size in both orders: E[LeRF] = E[MoRF], combined score 0
    _near(combined, torch.zeros(B))


def test_road_scores_follow_the_order(linear):
    model, x, t = linear
    a = _weights(model, t) * x
    both = road(model, x, a, t, fractions=(0.2, 0.6), score="logit", seed=3)
    morf = road(model, x, a, t, fractions=(0.2, 0.6), score="logit", seed=3, order="morf")
    lerf = road(model, x, a, t, fractions=(0.2, 0.6), score="logit", seed=3, order="lerf")
    torch.testing.assert_close(morf.morf, both.morf)
    torch.testing.assert_close(lerf.lerf, both.lerf)
    torch.testing.assert_close(morf.scores, both.morf.mean(1))
    torch.testing.assert_close(both.scores, (both.lerf.mean(1) - both.morf.mean(1)) / 2)
    torch.testing.assert_close(both.clean, _logit(model, x, t))
    assert lerf.morf is None and morf.lerf is None


def _official_imputation(img: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """ROAD's system as the official code builds it (lil_matrix + spsolve), written independently from the paper."""
    scipy_sparse = pytest.importorskip("scipy.sparse")
    from scipy.sparse.linalg import spsolve

    c, h, w = img.shape
    known = keep.flatten().numpy()
    flat = img.reshape(c, -1).double().numpy()
    unknown = (~keep).flatten().nonzero()[:, 0].numpy()
    index = {int(p): j for j, p in enumerate(unknown)}
    a = scipy_sparse.lil_matrix((len(unknown), len(unknown)))
    rhs = torch.zeros(len(unknown), c, dtype=torch.float64).numpy()
    for j, p in enumerate(unknown):
        r, col = divmod(int(p), w)
        for dy, dx, wt in _NEIGHBOURS:
            rr, cc = r + dy, col + dx
            if 0 <= rr < h and 0 <= cc < w:
                q = rr * w + cc
                a[j, j] += wt
                if known[q]:
                    rhs[j] += wt * flat[:, q]
                else:
                    a[j, index[q]] -= wt
    out = flat.copy()
    out[:, unknown] = spsolve(a.tocsr(), rhs).reshape(len(unknown), c).T
    return torch.from_numpy(out).view(c, h, w)


def test_imputation_solves_the_official_linear_system():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(3, 3, 36, 36, generator=g, dtype=torch.float64)
    keep = torch.rand(3, 36, 36, generator=g) > 0.5  # image 2: scattered holes (Jacobi preconditioner)
    keep[0, 1:35, 2:35] = False  # a large hole (multigrid preconditioner)
    keep[1, :, :] = False
    keep[1, 0, 0] = True  # a single known pixel (the corner): the solution is that pixel everywhere
    assert _deep_holes(keep[:, None]).tolist() == [True, True, False]
    out = noisy_linear_imputation(x, keep, noise=0.0, tol=1e-10, max_iter=5000)
    for i in range(3):
        torch.testing.assert_close(out[i], _official_imputation(x[i], keep[i]), atol=1e-7, rtol=0)
    torch.testing.assert_close(out[1], x[1, :, :1, :1].expand(3, 36, 36), atol=1e-7, rtol=0)


def test_imputation_keeps_known_pixels_and_adds_seeded_noise():
    g = torch.Generator().manual_seed(6)
    x = torch.randn(2, 3, 32, 32, generator=g)
    keep = torch.rand(2, 32, 32, generator=g) > 0.3
    clean = noisy_linear_imputation(x, keep, noise=0.0)
    noisy = noisy_linear_imputation(x, keep, noise=0.5, seed=1)
    k = keep[:, None].expand_as(x)
    assert torch.equal(noisy[k], x[k])
    diff = (noisy - clean)[~k]
    assert abs(float(diff.std()) - 0.5) < 0.05 and abs(float(diff.mean())) < 0.05
    assert torch.equal(noisy, noisy_linear_imputation(x, keep, noise=0.5, seed=1))
    assert not torch.equal(noisy, noisy_linear_imputation(x, keep, noise=0.5, seed=2))
    with pytest.raises(ValueError, match="at least one pixel"):
        noisy_linear_imputation(x, torch.zeros(2, 32, 32, dtype=torch.bool))


def test_road_is_batch_invariant_with_both_preconditioners(inputs):
    model = build("tiny_cnn")
    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    attr = torch.rand(3, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    attr[0, 0] = -((yy - 12) ** 2 + (xx - 20) ** 2)  # a smooth map: large holes, multigrid
    kw = dict(fractions=(0.3, 0.8), score="logit", seed=1)
    ref = road(model, inputs, attr, 2, **kw)
    for bs in (1, 2):
        out = road(model, inputs, attr, 2, batch_size=bs, **kw)
        torch.testing.assert_close(out.morf, ref.morf, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(out.lerf, ref.lerf, atol=1e-5, rtol=1e-4)


def test_rise_blur_is_gkern_11_5():
    ndimage = pytest.importorskip("scipy.ndimage")
    delta = torch.zeros(11, 11, dtype=torch.float64)
    delta[5, 5] = 1
    kern = torch.from_numpy(ndimage.gaussian_filter(delta.numpy(), 5))
    x = torch.zeros(1, 1, 21, 21, dtype=torch.float64)
    x[0, 0, 10, 10] = 1
    torch.testing.assert_close(_rise_blur(x)[0, 0, 5:16, 5:16].flip(0, 1), kern)


def test_curve_mechanics(linear):
    model, x, t = linear
    a = torch.rand(B, 1, H, W, generator=torch.Generator().manual_seed(2))
    d = deletion_auc(model, x, a, t, score="logit")
    assert d.protocol["pixels_per_step"] == W and d.curves.shape == (B, H + 1)  # RISE: one row of pixels per step
    torch.testing.assert_close(d.fractions, torch.arange(H + 1) / H)
    torch.testing.assert_close(d.curves[:, 0], _logit(model, x, t))
    torch.testing.assert_close(d.curves[:, -1], _logit(model, torch.zeros_like(x), t))
    torch.testing.assert_close(d.scores, torch.trapezoid(d.curves, d.fractions, dim=1))
    ins = insertion_auc(model, x, a, t, score="logit", n_steps=7)
    assert ins.curves.shape == (B, 8)
    torch.testing.assert_close(ins.curves[:, 0], _logit(model, _rise_blur(x), t))
    torch.testing.assert_close(ins.curves[:, -1], _logit(model, x, t))
    # probability is the softmax of the target (the RISE default), and AOPC is the mean drop
    p = deletion_auc(model, x, a, t)
    with torch.no_grad():
        torch.testing.assert_close(p.curves[:, 0], model(x).softmax(1).gather(1, t[:, None])[:, 0])
    torch.testing.assert_close(p.aopc, (p.curves[:, :1] - p.curves).mean(1))


def test_step_k_removes_the_top_pixels_and_ties_go_in_raster_order(linear):
    model, x, t = linear
    assert torch.equal(_ranks(torch.zeros(1, 2, 3)).flatten(), torch.arange(6, dtype=torch.int32))
    assert _ranks(torch.tensor([[[0.0, 2.0, 2.0, 1.0]]])).flatten().tolist() == [3, 0, 1, 2]
    assert _ranks(torch.tensor([[[0.0, 2.0, 2.0, 1.0]]]), descending=False).flatten().tolist() == [0, 2, 3, 1]
    # a constant map deletes from the top row down: step k zeroes rows 0..k-1
    d = deletion_auc(model, x, torch.ones(B, 1, H, W), t, score="logit")
    for k in (1, 5):
        z = x.clone()
        z[:, :, :k] = 0
        torch.testing.assert_close(d.curves[:, k], _logit(model, z, t))
    # LeRF removes the least relevant first: the mirror order of MoRF on a reversed map
    a = torch.rand(B, 1, H, W, generator=torch.Generator().manual_seed(4))
    lerf = pixel_flipping(model, x, a, t, order="lerf", n_steps=6, score="logit")
    morf = pixel_flipping(model, x, -a, t, order="morf", n_steps=6, score="logit")
    torch.testing.assert_close(lerf.curves, morf.curves)


def test_maps_are_upsampled_and_channels_summed(linear):
    model, x, t = linear
    small = torch.rand(B, 1, 3, 3, generator=torch.Generator().manual_seed(8))
    up = torch.nn.functional.interpolate(small, size=(H, W), mode="bilinear", align_corners=False)
    torch.testing.assert_close(deletion_auc(model, x, small, t).auc, deletion_auc(model, x, up, t).auc)
    split = up.expand(B, C, H, W) / C
    torch.testing.assert_close(deletion_auc(model, x, split, t).auc, deletion_auc(model, x, up, t).auc)


def test_faithfulness_correlation_is_one_for_the_oracle_and_near_zero_for_random(linear):
    model, x, t = linear
    oracle = _weights(model, t) * x  # against the zero baseline the drop is exactly the subset's attribution sum
    torch.testing.assert_close(
        faithfulness_correlation(model, x, oracle, t, n_runs=30, seed=0), torch.ones(B), atol=1e-4, rtol=0
    )
    rand = torch.stack([faithfulness_correlation(model, x, _random_maps(i), t, n_runs=30, seed=i)
                        for i in range(N_RANDOM)])
    assert rand.mean().abs() < 0.1
    assert torch.all(rand < 0.9)


def test_infidelity_zero_for_exact_attributions_of_a_linear_model(linear):
    model, x, t = linear
    w = _weights(model, t)
    ig = w * x  # integrated gradients of a linear model against the zero baseline
    exact = infidelity(model, x, ig, t, perturbation="baseline", noise_std=0.0, multiply_by_inputs=True,
                       optimal_scale=False)
    assert exact.abs().max() < 1e-6
    # the gradient predicts f(x) - f(x - I) = w.I for any I
    assert infidelity(model, x, w, t, optimal_scale=False, n_samples=8, seed=0).max() < 1e-6
    # twice the gradient: E[(2 w.I - w.I)^2] = sigma^2 ||w||^2 without the optimal scale, 0 with it
    doubled = 2 * w
    expected = 0.1**2 * w.square().sum(dim=(1, 2, 3))
    assert infidelity(model, x, doubled, t, optimal_scale=True, n_samples=8, seed=0).max() < 1e-6
    unscaled = infidelity(model, x, doubled, t, optimal_scale=False, n_samples=64, seed=0)
    assert torch.all((unscaled / expected - 1).abs() < 0.5)
    rand = torch.randn(B, C, H, W, generator=torch.Generator().manual_seed(9))
    assert torch.all(infidelity(model, x, rand, t, n_samples=8, seed=0) > 0.5 * expected)
    # IG / (x - x0) is the gradient: exact for any perturbation; read as a gradient it is not
    noisy = infidelity(model, x, ig, t, perturbation="baseline", noise_std=0.1, multiply_by_inputs=True, seed=0)
    assert noisy.max() < 1e-6
    assert torch.all(infidelity(model, x, ig, t, n_samples=8, seed=0) > 0.5 * expected)


# --- every faithfulness metric: batch invariance, seeds, model state, errors --------------------------------------

FAST = {
    "deletion_auc": {"n_steps": 6},
    "insertion_auc": {"n_steps": 6},
    "pixel_flipping_morf": {"n_steps": 6},
    "pixel_flipping_lerf": {"n_steps": 6},
    "road": {"fractions": (0.2, 0.6)},
    "road_morf": {"fractions": (0.2, 0.6)},
    "road_lerf": {"fractions": (0.2, 0.6)},
    "faithfulness_correlation": {"n_runs": 6},
    "infidelity": {"n_samples": 5},
}
FAITHFULNESS = sorted(n for n, s in METRICS.items() if s.family == "faithfulness")


def _scores(result) -> torch.Tensor:
    return result if isinstance(result, torch.Tensor) else result.scores


def test_fast_settings_cover_every_faithfulness_metric():
    assert set(FAITHFULNESS) == set(FAST)


def test_presets_are_the_defaults_and_costs_count_forwards():
    for name, params in PRESETS.values():
        defaults = inspect.signature(METRICS[name].fn).parameters
        for key, value in params.items():
            assert key == "pixels_per_step" or defaults[key].default == value, (name, key)
    assert METRICS["deletion_auc"].cost({}) == 225  # RISE at 224 px: 224 steps of 224 pixels, plus the clean image
    assert METRICS["insertion_auc"].cost({"n_steps": 10}) == 11
    assert METRICS["deletion_auc"].cost({"input_size": (32, 32)}) == 33
    assert METRICS["pixel_flipping_morf"].cost({}) == 101
    assert METRICS["road"].cost({}) == 15 and METRICS["road_morf"].cost({}) == 8
    assert METRICS["infidelity"].cost({"perturbation": "baseline", "noise_std": 0.0}) == 2


@pytest.mark.parametrize("name", FAITHFULNESS)
def test_batch_size_and_seed_invariance(name, inputs):
    model = build("tiny_cnn")
    attr = get_method("saliency")(model, inputs, "top1")
    fn = METRICS[name].fn
    ref = _scores(fn(model, inputs, attr, "top1", seed=7, **FAST[name]))
    assert ref.shape == (inputs.shape[0],) and torch.isfinite(ref).all()
    for bs in (1, 3):
        torch.testing.assert_close(_scores(fn(model, inputs, attr, "top1", seed=7, batch_size=bs, **FAST[name])), ref,
                                   atol=1e-5, rtol=1e-4)
    # the first image alone gets the same draws as in the batch
    first = _scores(fn(model, inputs[:1], attr[:1], "top1", seed=7, **FAST[name]))
    torch.testing.assert_close(first, ref[:1], atol=1e-5, rtol=1e-4)
    assert METRICS[name].cost(FAST[name]) >= 2


@pytest.mark.parametrize("name", ["deletion_auc", "road", "faithfulness_correlation", "infidelity"])
def test_model_is_left_as_it_was(name, inputs):
    model = build("tiny_resnet")
    model.train()
    grads = [p.requires_grad for p in model.parameters()]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    attr = torch.randn(inputs.shape[0], 1, 8, 8, generator=torch.Generator().manual_seed(0))
    METRICS[name].fn(model, inputs, attr, 1, seed=0, **FAST[name])
    assert all(m.training for m in model.modules())
    assert [p.requires_grad for p in model.parameters()] == grads
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())  # BatchNorm stats untouched
    assert count_hooks(model) == 0


def test_clear_errors(linear):
    model, x, t = linear
    a = torch.rand(B, 1, H, W)
    with pytest.raises(ValueError, match="unknown substitute 'black'"):
        deletion_auc(model, x, a, t, substitute="black")
    with pytest.raises(ValueError, match="do not fit inputs"):
        deletion_auc(model, x, a[:2], t)
    with pytest.raises(ValueError, match="NaN"):
        deletion_auc(model, x, a * float("nan"), t)
    with pytest.raises(ValueError, match="not both"):
        deletion_auc(model, x, a, t, n_steps=4, pixels_per_step=4)
    with pytest.raises(ValueError, match="n_steps"):
        insertion_auc(model, x, a, t, n_steps=0)
    with pytest.raises(ValueError, match="fraction in"):
        road(model, x, a, t, fractions=(0.5, 1.0))
    with pytest.raises(ValueError, match="unknown order"):
        road(model, x, a, t, order="both")
    with pytest.raises(ValueError, match="unknown order"):
        pixel_flipping(model, x, a, t, order="up")
    with pytest.raises(ValueError, match="subset_size"):
        faithfulness_correlation(model, x, a, t, subset_size=1.5)
    with pytest.raises(ValueError, match="unknown perturbation"):
        infidelity(model, x, a, t, perturbation="square")
    with pytest.raises(ValueError, match="score"):
        deletion_auc(model, x, a, t, score="softmax")
    with pytest.raises(TypeError, match="attributions must be a torch.Tensor"):
        deletion_auc(model, x, a.numpy(), t)


def test_infidelity_refuses_a_perturbation_of_zero_and_subsets_keep_a_pixel(linear) -> None:
    from seewhy.metrics.perturbation import _subset_count, infidelity

    model, x = linear[0], linear[1]
    with pytest.raises(ValueError, match="perturbs nothing"):
        infidelity(model, x, torch.zeros_like(x), noise_std=0.0)
    assert _subset_count(0.999, 100) == 99
