"""Occlusion, occlusion_map, feature_ablation and RISE against independent formulas."""

from __future__ import annotations

import itertools

import pytest
import torch
from conftest import build
from torch import nn

import seewhy
from seewhy.methods.perturbation import rise_grids, rise_masks, window_indicators


class Additive(nn.Module):
    """f_k(x) = sum(w_k * x) + c_k: every pixel contributes w * x, independently."""

    def __init__(self, shape: tuple[int, int, int] = (3, 8, 10), k: int = 4, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w = nn.Parameter(torch.randn(k, *shape, generator=g, dtype=torch.float64))
        self.c = nn.Parameter(torch.randn(k, generator=g, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bchw,kchw->bk", x, self.w) + self.c


def _x(shape: tuple[int, ...] = (2, 3, 8, 10), seed: int = 1) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _brute_occlusion(model: nn.Module, x: torch.Tensor, target: int, win: tuple, stride: tuple) -> torch.Tensor:
    """Slide the window by hand (Captum's convention: the last window is clipped at the border)."""
    _, c, h, w = x.shape
    total, count = torch.zeros_like(x), torch.zeros_like(x)
    f0 = model(x)[:, target]
    starts = [range(0, max(d - k, 0) + s, s) if d > k else [0] for d, k, s in zip((c, h, w), win, stride, strict=True)]
    for i, j, k in itertools.product(*starts):
        m = torch.zeros_like(x[:1], dtype=torch.bool)
        m[:, i : i + win[0], j : j + win[1], k : k + win[2]] = True
        drop = f0 - model(torch.where(m, torch.zeros_like(x), x))[:, target]
        total += drop[:, None, None, None] * m
        count += m
    return total / count


def test_occlusion_on_an_additive_model_gives_the_pixel_contributions() -> None:
    model, x = Additive(), _x()
    w = model.w[2]
    a = seewhy.explain(model, x, "occlusion", target=2, window=(1, 1, 1), stride=(1, 1, 1)).attributions
    torch.testing.assert_close(a, w * x, rtol=1e-10, atol=1e-10)
    # 1x1 windows over all channels: the pixel's contribution summed over channels, on every channel
    a = seewhy.explain(model, x, "occlusion", target=2, window=1, stride=1).attributions
    torch.testing.assert_close(a, (w * x).sum(1, keepdim=True).expand_as(x), rtol=1e-10, atol=1e-10)


def test_non_overlapping_windows_tile_the_input() -> None:
    model, x = Additive(), _x()
    exp = seewhy.explain(model, x, "occlusion", target=1, window=(2, 5), stride=(2, 5), baseline=0.5)
    assert exp.extras["n_evaluations"] == 2 * 4 * 2 and exp.extras["grid"] == (1, 4, 2)
    contrib = (model.w[1] * (x - 0.5)).sum(1)  # (B,H,W)
    cells = contrib.view(2, 4, 2, 2, 5).sum(dim=(2, 4))  # one value per window
    expected = cells.repeat_interleave(2, 1).repeat_interleave(5, 2)[:, None].expand_as(x)
    torch.testing.assert_close(exp.attributions, expected, rtol=1e-10, atol=1e-10)
    # each window's value is on each of its pixels once: one pixel per window sums to f(x) - f(baseline)
    delta = model(x)[:, 1] - model(torch.full_like(x, 0.5))[:, 1]
    torch.testing.assert_close(exp.attributions[:, 0, ::2, ::5].sum(dim=(1, 2)), delta.detach())


@pytest.mark.parametrize(
    ("win", "stride"), [((3, 4, 4), (3, 3, 3)), ((1, 3, 5), (1, 2, 4)), ((2, 5, 5), (1, 5, 5)), ((3, 8, 10), (1, 1, 1))]
)
def test_overlapping_and_clipped_windows_match_a_brute_force_loop(win: tuple, stride: tuple) -> None:
    model = build("tiny_cnn").double()
    x = _x((2, 3, 8, 10))
    got = seewhy.explain(model, x, "occlusion", target=3, window=win, stride=stride).attributions
    torch.testing.assert_close(got, _brute_occlusion(model, x, 3, win, stride).detach())


def test_occlusion_matches_captum() -> None:
    captum = pytest.importorskip("captum.attr")
    model = build("tiny_vgg").double().eval()
    x = _x((2, 3, 32, 32))
    got = seewhy.explain(model, x, "occlusion", target=[1, 4], window=(3, 12, 12), stride=(3, 7, 7)).attributions
    ref = captum.Occlusion(model).attribute(x, sliding_window_shapes=(3, 12, 12), strides=(3, 7, 7), target=[1, 4])
    torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-6, check_dtype=False)  # captum returns float32


def test_window_indicators_cover_everything() -> None:
    (a, b, c), win, stride = window_indicators((3, 11, 13), 4, 3)
    assert win == (3, 4, 4) and stride == (3, 3, 3)
    assert a.shape == (1, 3) and b.shape == (4, 11) and c.shape == (4, 13)
    assert b.any(0).all() and c.any(0).all()
    assert b[-1].nonzero().squeeze(1).tolist() == [9, 10]  # clipped at the border


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"window": 40}, "exceeds the input"),
        ({"window": 4, "stride": 5}, "stride"),
        ({"window": (1, 2, 3, 4)}, "window must be"),
        ({"window": 0}, "window must be"),
        ({"window": 2.5}, "window must be"),
        ({"window": 4, "stride": (1, 1, 1, 1)}, "stride must be"),
        ({"baseline": "gray"}, "unknown baseline"),
        ({"score": "softmax"}, "unknown score"),
    ],
)
def test_occlusion_errors(params: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        seewhy.explain(build("tiny_cnn"), _x((1, 3, 32, 32)).float(), "occlusion", target=0, **params)


def test_occlusion_map_is_the_class_probability_per_occluder_position() -> None:
    model = build("tiny_cnn").double()
    x = _x((2, 3, 16, 16))
    exp = seewhy.explain(model, x, "occlusion_map", target=[2, 5], window=8, stride=4, baseline="mean")
    assert exp.kind == "map" and exp.attributions.shape == (2, 1, 3, 3)
    base = x.mean(dim=(2, 3), keepdim=True).expand_as(x)
    occluded = x.clone()
    occluded[:, :, 4:12, 8:16] = base[:, :, 4:12, 8:16]
    p = model(occluded).softmax(1)[[0, 1], [2, 5]]
    torch.testing.assert_close(exp.attributions[:, 0, 1, 2], p.detach())
    torch.testing.assert_close(exp.extras["clean_score"], model(x).softmax(1)[[0, 1], [2, 5]].detach())
    logit = seewhy.explain(model, x, "occlusion_map", target=[2, 5], window=8, stride=4, baseline="mean", score="logit")
    torch.testing.assert_close(logit.attributions[:, 0, 1, 2], model(occluded)[[0, 1], [2, 5]].detach())
    with pytest.raises(ValueError, match="all 3 channels"):
        seewhy.explain(model, x, "occlusion_map", target=0, window=(1, 8, 8))


def test_feature_ablation_with_user_masks() -> None:
    model, x = Additive(), _x()
    contrib = (model.w[0] * x).sum(1)  # (B,H,W)
    mask = torch.randint(5, 9, (8, 10), generator=torch.Generator().manual_seed(0))  # ids 5..8 -> 0..3
    exp = seewhy.explain(model, x, "feature_ablation", target=0, mask=mask)
    for f, fid in enumerate(range(5, 9)):
        sel = mask == fid
        torch.testing.assert_close(exp.extras["feature_weights"][:, f], contrib[:, sel].sum(1))
        expected = contrib[:, sel].sum(1)[:, None, None].expand(2, 3, int(sel.sum()))
        torch.testing.assert_close(exp.attributions[:, :, sel], expected)
    assert exp.extras["n_evaluations"] == 8 and exp.extras["n_features"].tolist() == [4, 4]
    # one mask per image, with different numbers of features
    masks = torch.stack([torch.zeros(8, 10, dtype=torch.long), torch.arange(80).view(8, 10) % 3])
    exp = seewhy.explain(model, x, "feature_ablation", target=0, mask=masks)
    torch.testing.assert_close(exp.attributions[0, 0], contrib[0].sum().expand(8, 10))
    assert exp.extras["n_features"].tolist() == [1, 3] and exp.extras["n_evaluations"] == 4


def test_feature_ablation_matches_captum() -> None:
    captum = pytest.importorskip("captum.attr")
    model = build("tiny_resnet").double().eval()
    x = _x((2, 3, 32, 32))
    mask = torch.randint(0, 6, (32, 32), generator=torch.Generator().manual_seed(2))
    got = seewhy.explain(model, x, "feature_ablation", target=[3, 8], mask=mask, baseline=0.25).attributions
    ref = captum.FeatureAblation(model).attribute(
        x, feature_mask=mask[None, None].expand(1, 3, 32, 32), target=[3, 8], baselines=0.25
    )
    torch.testing.assert_close(got, ref)


def test_feature_ablation_grid_superpixels_and_segment_mean() -> None:
    model, x = Additive(), _x()
    exp = seewhy.explain(model, x, "feature_ablation", target=1, n_segments=4, baseline="segment_mean")
    seg = exp.extras["segments"]
    assert seg.shape == (2, 8, 10) and exp.extras["n_features"].tolist() == [4, 4]
    for f in range(4):
        sel = seg[0] == f
        xs = x[0][:, sel]
        expected = (model.w[1][:, sel] * (xs - xs.mean(1, keepdim=True))).sum()
        torch.testing.assert_close(exp.extras["feature_weights"][0, f], expected)
    slic = seewhy.explain(model, x, "feature_ablation", target=1, mask="slic", n_segments=6)
    assert slic.extras["segments"].max() + 1 == slic.extras["n_features"].max()


@pytest.mark.parametrize(
    ("mask", "match"),
    [
        (torch.zeros(7, 10, dtype=torch.long), "does not match inputs"),
        (torch.zeros(3, 8, 10, dtype=torch.long), "does not match inputs"),
        (torch.zeros(8, 10), "integer feature ids"),
        ("watershed", "unknown segmentation"),
    ],
)
def test_feature_ablation_mask_errors(mask, match: str) -> None:
    with pytest.raises((ValueError, TypeError), match=match):
        seewhy.explain(Additive(), _x(), "feature_ablation", target=0, mask=mask)
    with pytest.raises(ValueError, match="n_segments"):
        seewhy.explain(Additive(), _x(), "feature_ablation", target=0, n_segments=1)


class RegionModel(nn.Module):
    """Looks only at rows 2..9, columns 18..29 of a 32x32 image: logits (s, -s), s = 6 (region mean - 1/2)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = 6 * (x[:, :, 2:10, 18:30].mean(dim=(1, 2, 3)) - 0.5)
        return torch.stack([s, -s], 1)


def test_rise_puts_its_mass_on_the_region_the_model_looks_at() -> None:
    x = torch.ones(1, 3, 32, 32)
    inside = torch.zeros(32, 32, dtype=torch.bool)
    inside[2:10, 18:30] = True
    far = torch.zeros(32, 32, dtype=torch.bool)
    far[18:, :12] = True  # the opposite corner, beyond the reach of the region's mask cells
    for score in ("probability", "logit"):
        exp = seewhy.explain(RegionModel(), x, "rise", target=0, n_masks=1000, seed=0, score=score)
        sal = exp.attributions[0, 0]
        assert exp.kind == "map" and sal.shape == (32, 32)
        assert sal[inside].mean() - sal[far].mean() > 5 * sal[far].std(), score
        assert sal[far].max() < sal[inside].mean(), score
        assert inside.view(-1)[int(sal.argmax())], score


def test_rise_is_the_score_weighted_mask_average() -> None:
    model = build("tiny_cnn").double()
    x = _x((1, 3, 16, 16))
    exp = seewhy.explain(model, x, "rise", target=4, n_masks=20, grid_size=3, p_keep=0.3, seed=5, score="logit")
    grids, shifts, cell = rise_grids(20, 3, 0.3, (16, 16), torch.Generator().manual_seed(5))
    masks = rise_masks(grids, shifts, cell, (16, 16), torch.float64)
    scores = model(x * masks)[:, 4]
    expected = (scores[:, None, None, None] * masks).sum(0) / (20 * 0.3)
    torch.testing.assert_close(exp.attributions[0], expected.detach())
    assert exp.extras["seed"] == 5 and exp.extras["n_evaluations"] == 20


def test_rise_masks() -> None:
    grids, shifts, cell = rise_grids(300, 7, 0.5, (32, 32), torch.Generator().manual_seed(0))
    assert cell == (5, 5) and grids.shape == (300, 1, 7, 7) and shifts.max() < 5
    m = rise_masks(grids, shifts, cell, (32, 32), torch.float32)
    assert m.shape == (300, 1, 32, 32) and m.min() >= 0 and m.max() <= 1
    assert abs(float(m.mean()) - 0.5) < 0.03
    # the separable crop equals a full bilinear upsampling followed by the crop
    up = torch.nn.functional.interpolate(grids[:5].float(), size=(40, 40), mode="bilinear", align_corners=False)
    for k in range(5):
        dy, dx = shifts[k].tolist()
        torch.testing.assert_close(m[k, 0], up[k, 0, dy : dy + 32, dx : dx + 32])
    with pytest.raises(ValueError, match="p_keep"):
        rise_grids(3, 7, 0.0, (32, 32), torch.Generator())
    with pytest.raises(ValueError, match="grid_size"):
        rise_grids(3, 0, 0.5, (32, 32), torch.Generator())


def test_rise_seed_reproducibility() -> None:
    model, x = build("tiny_cnn"), _x((1, 3, 32, 32)).float()
    a = seewhy.explain(model, x, "rise", target=1, n_masks=32, seed=3).attributions
    b = seewhy.explain(model, x, "rise", target=1, n_masks=32, seed=3).attributions
    c = seewhy.explain(model, x, "rise", target=1, n_masks=32, seed=4).attributions
    assert torch.equal(a, b) and not torch.equal(a, c)
    none = seewhy.explain(model, x, "rise", target=1, n_masks=32)
    again = seewhy.explain(model, x, "rise", target=1, n_masks=32, seed=none.extras["seed"]).attributions
    assert torch.equal(none.attributions, again)


FAST = {
    "occlusion": {"window": 8, "stride": 4},
    "occlusion_map": {"window": 8, "stride": 4},
    "feature_ablation": {"n_segments": 16, "baseline": "blur", "blur_sigma": 2.0},
    "rise": {"n_masks": 40, "seed": 1, "grid_size": 4},
}


@pytest.mark.parametrize("name", sorted(FAST))
def test_batch_size_invariance(name: str) -> None:
    model = build("tiny_cnn")
    x = _x((3, 3, 16, 16)).float()
    ref = seewhy.explain(model, x, name, target=[0, 5, 9], batch_size=1, **FAST[name]).attributions
    for size in (7, 64):
        got = seewhy.explain(model, x, name, target=[0, 5, 9], batch_size=size, **FAST[name]).attributions
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
    alone = seewhy.explain(model, x[1:2], name, target=5, batch_size=7, **FAST[name]).attributions
    torch.testing.assert_close(alone, ref[1:2], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", sorted(FAST))
def test_several_targets_share_forwards(name: str) -> None:
    class Counting(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net, self.rows = build("tiny_cnn"), 0

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.rows += x.shape[0]
            return self.net(x)

    model, x = Counting(), _x((2, 3, 16, 16)).float()
    method = seewhy.get_method(name, **FAST[name])
    exps = method.explain_targets(model, x, ["top1", 3, [1, 2]])
    rows = model.rows
    single = seewhy.explain(model, x, method, target=3)
    assert model.rows - rows == rows  # one target costs as much as three
    assert len(exps) == 3 and exps[1].method == name and exps[1].targets.tolist() == [3, 3]
    torch.testing.assert_close(exps[1].attributions, single.attributions)
    assert torch.equal(exps[0].targets, model(x).argmax(1))
    with pytest.raises(TypeError, match="list of target specs"):
        method.explain_targets(model, x, 3)


def test_heatmaps_follow_the_conventions() -> None:
    model, x = build("tiny_cnn"), _x((2, 3, 16, 16)).float()
    for name, params in FAST.items():
        h = seewhy.explain(model, x, name, target=0, **params).heatmap()
        assert h.shape == (2, 1, 16, 16) and h.min() >= 0 and h.max() <= 1
