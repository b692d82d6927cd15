"""Regularisers: penalties against their formulas, the image operations, Yosinski's presets."""

from __future__ import annotations

import pytest
import torch

from seewhy.featvis import regularizers as R
from seewhy.featvis.param import image_param


def test_penalties_are_zero_where_they_should_be_and_match_their_formulas():
    grey = torch.full((2, 3, 8, 8), 0.5)
    for reg in (R.L1(1.0), R.L2(1.0), R.TotalVariation(1.0), R.TotalVariation(1.0, beta=2)):
        assert torch.allclose(reg.penalty(grey), torch.zeros(2), atol=1e-3), reg
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 8, 8, generator=g)
    assert torch.allclose(R.L1(2.0).penalty(x), 2 * (x - 0.5).abs().mean((1, 2, 3)))
    assert torch.allclose(R.L2(0.5, constant=0.0).penalty(x), 0.5 * x.pow(2).mean((1, 2, 3)))
    dy = x[..., 1:, :-1] - x[..., :-1, :-1]
    dx = x[..., :-1, 1:] - x[..., :-1, :-1]
    assert torch.allclose(R.TotalVariation(1.0).penalty(x), (dx.abs() + dy.abs()).mean((1, 2, 3)))
    assert torch.allclose(R.TotalVariation(1.0, beta=2).penalty(x), (dx**2 + dy**2).mean((1, 2, 3)), atol=1e-6)


@pytest.mark.parametrize("kind", ["pixel", "fft"])
def test_blur_every_n_steps_and_a_constant_image_is_its_fixed_point(kind):
    p = image_param(kind, 16, 1, seed=0, sd=0.5)
    before = p.linear().detach().clone()
    blur = R.Blur(1.0, every=3)
    blur.after_step(p, 0, None)
    blur.after_step(p, 1, None)
    assert torch.equal(p.linear().detach(), before)
    blur.after_step(p, 2, None)
    after = p.linear().detach()
    assert not torch.allclose(after, before) and after.std() < before.std()
    p.set_linear(torch.full((1, 3, 16, 16), 0.3))
    blur.after_step(p, 5, None)
    assert torch.allclose(p.linear().detach(), torch.full((1, 3, 16, 16), 0.3), atol=1e-5)


def test_decay_and_clipping_grey_out_the_right_pixels():
    p = image_param("pixel", 8, 2, seed=1, sd=1.0)
    lin = p.linear().detach().clone()
    R.Decay(0.25).after_step(p, 0, None)
    assert torch.allclose(p.linear().detach(), 0.75 * lin)
    p = image_param("pixel", 8, 2, seed=1, sd=1.0, decorrelate=False)
    R.ClipNorm(50).after_step(p, 0, None)
    lin = p.linear().detach()
    zero = (lin == 0).all(1)  # greyed pixels: the whole colour vector is 0
    assert zero.flatten(1).sum(1).tolist() == [32, 32]
    norms = lin.norm(dim=1)
    for b in range(2):  # every kept pixel's norm is above every greyed one's (they were the smaller half)
        assert norms[b][~zero[b]].min() > 0
    p = image_param("pixel", 8, 1, seed=2, sd=1.0, decorrelate=False)
    grad = torch.zeros(1, 3, 8, 8)
    grad[..., :2, :] = 1.0  # only the top two rows contribute
    R.ClipContribution(75).after_step(p, 0, grad)
    lin = p.linear().detach()
    assert (lin[..., 2:, :] == 0).all() and (lin[..., :2, :] != 0).any()


def test_yosinski_presets_follow_table_1():
    assert [repr(r) for r in R.yosinski_preset(1)] == ["Blur(sigma=0.5, every=4)", "ClipNorm(percentile=50)"]
    assert [repr(r) for r in R.yosinski_preset(2)] == ["Decay(rate=0.3)", "ClipNorm(percentile=20)"]
    assert [repr(r) for r in R.yosinski_preset(3)] == ["Decay(rate=0.0001)", "Blur(sigma=1, every=4)"]
    assert [repr(r) for r in R.yosinski_preset(4)] == ["Blur(sigma=0.5, every=4)",
                                                      "ClipContribution(percentile=90)"]
    with pytest.raises(ValueError, match="1, 2, 3 or 4"):
        R.yosinski_preset(5)


def test_bad_arguments():
    with pytest.raises(ValueError, match="weight must be a finite number >= 0"):
        R.L1(-1)
    with pytest.raises(ValueError, match="every must be an int >= 1"):
        R.Blur(1.0, every=0)
    with pytest.raises(ValueError, match="rate must be < 1"):
        R.Decay(1.0)
    with pytest.raises(ValueError, match=r"percentile in \[0, 100\]"):
        R.ClipNorm(120)
    with pytest.raises(TypeError, match="Regularizer instances"):
        R.as_regularizers([R.L1(), "tv"])
    one = R.L1()
    assert R.as_regularizers(one) == (one,) and R.as_regularizers([one, R.L2()])[0] is one
    assert len(R.as_regularizers(None)) == 0
