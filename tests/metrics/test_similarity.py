"""Map similarity measures against scipy and scikit-image on fixtures."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import pearsonr, rankdata, spearmanr
from skimage.feature import hog
from skimage.metrics import structural_similarity

from seewhy.metrics import similarity as sim


def _maps(shape=(4, 1, 20, 23), seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(shape, generator=g, dtype=torch.float64)
    b = a + torch.randn(shape, generator=g, dtype=torch.float64)
    return a, b


def _ties(x: torch.Tensor, step: float) -> torch.Tensor:
    return (x / step).round() * step  # many equal values


def _unit(x: torch.Tensor) -> torch.Tensor:
    return (x - x.min()) / (x.max() - x.min())


def test_rank_averages_ties_like_scipy() -> None:
    a, _ = _maps()
    x = _ties(a, 0.5).flatten(1)
    expected = np.stack([rankdata(row) for row in x.numpy()])
    np.testing.assert_allclose(sim.rank(x).numpy(), expected)
    np.testing.assert_allclose(sim.rank(torch.tensor([[3.0, 1.0, 3.0, 3.0, 0.0]])).numpy(), [[4, 2, 4, 4, 1]])


@pytest.mark.parametrize("step", [None, 0.5, 1.5])
def test_spearman_equals_scipy_including_ties(step: float | None) -> None:
    a, b = _maps()
    if step is not None:
        a, b = _ties(a, step), _ties(b, 2 * step)
    got = sim.spearman(a, b)
    expected = [spearmanr(a[i].ravel(), b[i].ravel())[0] for i in range(a.shape[0])]
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(sim.spearman(a, -a), torch.full((4,), -1.0, dtype=torch.float64))


def test_pearson_equals_scipy_and_constant_maps_give_nan() -> None:
    a, b = _maps()
    expected = [pearsonr(a[i].ravel(), b[i].ravel())[0] for i in range(a.shape[0])]
    np.testing.assert_allclose(sim.pearson(a, b).numpy(), expected, rtol=1e-10)
    const = torch.ones_like(a)
    assert torch.isnan(sim.spearman(a, const)).all() and torch.isnan(sim.pearson(const, b)).all()


def test_bad_inputs_are_named() -> None:
    a, b = _maps()
    with pytest.raises(ValueError, match="different shapes"):
        sim.spearman(a, b[:, :, :10])
    with pytest.raises(ValueError, match="NaN"):
        sim.pearson(a, b.clone().fill_(float("nan")))
    with pytest.raises(TypeError):
        sim.spearman(a.numpy(), b)


@pytest.mark.parametrize(
    "kw",
    [{}, {"gaussian_weights": True}, {"win_size": 5}, {"use_sample_covariance": False, "K1": 0.02}],
    ids=["uniform7", "gaussian11", "uniform5", "population"],
)
def test_ssim_equals_skimage(kw: dict) -> None:
    a, b = _maps(shape=(3, 1, 24, 19))
    a, b = _unit(a), _unit(b)
    got = sim.ssim(a, b, data_range=1.0, **kw)
    expected = [structural_similarity(a[i, 0].numpy(), b[i, 0].numpy(), data_range=1.0, **kw) for i in range(3)]
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-10, atol=1e-12)


def test_ssim_several_channels_and_data_range() -> None:
    a, b = _maps(shape=(2, 3, 16, 16), seed=1)
    got = sim.ssim(a, b, data_range=4.0)
    expected = [structural_similarity(a[i].numpy(), b[i].numpy(), data_range=4.0, channel_axis=0) for i in range(2)]
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-10)
    torch.testing.assert_close(sim.ssim(a, a, data_range=4.0), torch.ones(2, dtype=torch.float64))


def test_ssim_errors() -> None:
    a, b = _maps(shape=(2, 1, 6, 6))
    with pytest.raises(ValueError, match="win_size"):
        sim.ssim(a, b, data_range=1.0)
    with pytest.raises(ValueError, match="data_range"):
        sim.ssim(a, b, data_range=0.0)


def test_hog_features_equal_skimage_and_self_similarity_is_one() -> None:
    a, b = _maps(shape=(2, 1, 48, 40), seed=2)
    a, b = _unit(a), _unit(b)
    feats = sim.hog_features(a, pixels_per_cell=8)
    np.testing.assert_allclose(feats[1].numpy(), hog(a[1, 0].numpy(), pixels_per_cell=(8, 8)), rtol=1e-12)
    torch.testing.assert_close(sim.hog_similarity(a, a, pixels_per_cell=8), torch.ones(2, dtype=torch.float64))
    for corr in ("pearson", "spearman"):
        s = sim.hog_similarity(a, b, pixels_per_cell=8, correlation=corr)
        assert (s < 1).all() and (s > -1).all()
    with pytest.raises(ValueError, match="pixels_per_cell"):
        sim.hog_similarity(a, b)  # 16 px cells: fewer than 3 a side


def test_paper_normalisations() -> None:
    a, _ = _maps(shape=(2, 3, 10, 10))
    gray = sim.grayscale_map(a)
    m = a.abs().sum(1).flatten(1).numpy()
    lo, hi = m.min(1, keepdims=True), np.percentile(m, 99, axis=1, keepdims=True)
    np.testing.assert_allclose(gray.flatten(1).numpy(), np.clip((m - lo) / (hi - lo), 0, 1))
    div = sim.diverging_map(a)
    s = a.sum(1).flatten(1).numpy()
    np.testing.assert_allclose(
        div.flatten(1).numpy(), np.clip(s / np.percentile(np.abs(s), 99, axis=1, keepdims=True), -1, 1)
    )


def test_compare_maps() -> None:
    a, b = _maps(shape=(2, 3, 32, 32), seed=3)
    same = sim.compare_maps(a, a, hog_pixels_per_cell=None)
    assert set(same) == set(sim.MEASURES)
    for v in same.values():
        torch.testing.assert_close(v, torch.ones(2, dtype=torch.float64))
    flipped = sim.compare_maps(a, -a, ("spearman_abs", "spearman"))
    torch.testing.assert_close(flipped["spearman_abs"], torch.ones(2, dtype=torch.float64))
    assert (flipped["spearman"] < -0.99).all()  # sign flips are invisible to |.|, not to the signed measure
    small = sim.compare_maps(a[:, :1, ::4, ::4], a[:, :1, ::4, ::4], ("ssim",), size=(32, 32))  # 8x8 upsampled
    torch.testing.assert_close(small["ssim"], torch.ones(2, dtype=torch.float64))
    with pytest.raises(ValueError, match="unknown similarity measure"):
        sim.compare_maps(a, b, ("pearson",))
