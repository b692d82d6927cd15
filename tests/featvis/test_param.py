"""seewhy.featvis.param: colour decorrelation, pixel and FFT parameterisations (Olah et al. 2017, Lucid)."""

from __future__ import annotations

import math

import pytest
import torch

from seewhy.featvis.param import (
    COLOR_CORRELATION,
    COLOR_CORRELATION_SVD_SQRT,
    FFTParam,
    ImageParam,
    PixelParam,
    decorrelate_colors,
    image_param,
    undo_decorrelate_colors,
)

KINDS = ["pixel", "fft"]


def _random_image(shape, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return (0.05 + 0.9 * torch.rand(shape, generator=g, dtype=torch.float64)).to(dtype)


# --- colour decorrelation -----------------------------------------------------------------------------------------


def test_color_correlation_is_lucids_matrix_normalised_by_its_largest_column_norm():
    expected = torch.tensor([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]], dtype=torch.float64)
    assert torch.equal(COLOR_CORRELATION_SVD_SQRT.double(), expected)
    norms = COLOR_CORRELATION.norm(dim=0)
    assert norms.max().item() == pytest.approx(1.0, abs=1e-12)
    assert norms.min().item() < 0.5  # the other columns are not normalised
    torch.testing.assert_close(COLOR_CORRELATION * expected.norm(dim=0).max(), expected.to(COLOR_CORRELATION.dtype))


def test_decorrelate_is_a_per_pixel_matrix_product_and_undo_is_its_inverse():
    x = torch.randn(2, 3, 4, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    y = decorrelate_colors(x)
    c = COLOR_CORRELATION.double()
    # pixel (1, :, 2, 3) by hand
    torch.testing.assert_close(y[1, :, 2, 3], c @ x[1, :, 2, 3])
    torch.testing.assert_close(undo_decorrelate_colors(y), x, atol=1e-12, rtol=0)
    torch.testing.assert_close(decorrelate_colors(undo_decorrelate_colors(x)), x, atol=1e-12, rtol=0)
    assert y.dtype == torch.float64 and y.shape == x.shape
    x32 = x.float()
    assert decorrelate_colors(x32).dtype == torch.float32
    torch.testing.assert_close(undo_decorrelate_colors(decorrelate_colors(x32)), x32, atol=1e-6, rtol=0)


def test_decorrelate_rejects_wrong_channel_count():
    with pytest.raises(ValueError, match="3 colour channels"):
        decorrelate_colors(torch.zeros(1, 4, 2, 2))
    with pytest.raises(ValueError, match="3 colour channels"):
        undo_decorrelate_colors(torch.zeros(2, 2))


# --- shapes and the image -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("h", "w"), [(8, 8), (6, 7), (5, 9), (1, 1)])
def test_fft_param_shapes_for_even_and_odd_sizes(h, w):
    p = image_param("fft", (h, w))
    assert isinstance(p, FFTParam) and isinstance(p, ImageParam)
    assert p.shape == (1, 3, h, w)
    assert len(p.params) == 1 and p.params[0].shape == (1, 3, h, w // 2 + 1, 2)
    assert p.linear().shape == (1, 3, h, w)
    assert p().shape == (1, 3, h, w)


def test_pixel_param_shapes_and_linear_is_the_param():
    p = image_param("pixel", (6, 7), batch=2)
    assert isinstance(p, PixelParam)
    assert p.params[0].shape == (2, 3, 6, 7)
    assert p.linear() is p.params[0]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("decorrelate", [True, False])
def test_image_is_in_open_unit_interval_and_differentiable(kind, decorrelate):
    p = image_param(kind, 12, batch=2, decorrelate=decorrelate, sd=0.5)
    img = p()
    assert img.shape == (2, 3, 12, 12)
    assert (img > 0).all() and (img < 1).all()
    assert img.std() > 1e-3  # not a flat grey
    for t in p.params:
        assert t.is_leaf and t.requires_grad
    (img * torch.linspace(-1, 1, 12)).sum().backward()
    grad = p.params[0].grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_call_is_sigmoid_of_decorrelated_linear():
    p = image_param("fft", 8, sd=0.3)
    torch.testing.assert_close(p(), torch.sigmoid(decorrelate_colors(p.linear())))
    q = image_param("fft", 8, sd=0.3, decorrelate=False)
    torch.testing.assert_close(q(), torch.sigmoid(q.linear()))


def test_fft_linear_matches_the_formula():
    p = image_param("fft", (6, 5), sd=0.2, decay_power=1.5)
    h, w = 6, 5
    fy = torch.fft.fftfreq(h)[:, None]
    fx = torch.fft.rfftfreq(w)[None, :]
    f = (fy**2 + fx**2).sqrt()
    scale = 1 / torch.maximum(f, torch.tensor(1 / max(h, w))) ** 1.5
    expected = torch.fft.irfft2(torch.view_as_complex(p.params[0].detach()) * scale, s=(h, w), norm="ortho") / 4
    torch.testing.assert_close(p.linear().detach(), expected)
    # the DC term is scaled by max(H, W) ** decay_power
    assert p.scale[0, 0].item() == pytest.approx(6**1.5, rel=1e-6)


# --- round trips --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("h", "w"), [(8, 8), (7, 9)])
def test_set_linear_round_trip(kind, h, w):
    p = image_param(kind, (h, w), batch=2)
    target = torch.randn(2, 3, h, w, generator=torch.Generator().manual_seed(3))
    p.set_linear(target)
    torch.testing.assert_close(p.linear().detach(), target, atol=1e-5, rtol=0)
    assert p.params[0].is_leaf and p.params[0].requires_grad


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("decorrelate", [True, False])
@pytest.mark.parametrize(("h", "w"), [(8, 8), (7, 9)])
def test_set_image_round_trip(kind, decorrelate, h, w):
    p = image_param(kind, (h, w), batch=2, decorrelate=decorrelate)
    image = _random_image((2, 3, h, w))
    p.set_image(image)
    torch.testing.assert_close(p().detach(), image, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", KINDS)
def test_set_image_clamps_to_the_open_interval(kind):
    p = image_param(kind, 4)
    image = torch.zeros(1, 3, 4, 4)
    image[..., :2, :] = 1.0
    p.set_image(image)
    out = p().detach()
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, image.clamp(1e-4, 1 - 1e-4), atol=1e-5, rtol=0)


def test_set_linear_broadcasts_and_rejects_wrong_shapes():
    p = image_param("pixel", 4, batch=3)
    p.set_linear(torch.ones(3, 1, 1))
    assert torch.equal(p.linear().detach(), torch.ones(3, 3, 4, 4))
    with pytest.raises(ValueError, match=r"broadcastable to \(3, 3, 4, 4\)"):
        p.set_linear(torch.ones(2, 3, 4, 4))
    with pytest.raises(ValueError, match="broadcastable"):
        p.set_image(torch.ones(1, 3, 5, 4))


def test_float64_round_trip_and_dtype():
    for kind in KINDS:
        p = image_param(kind, (6, 7), dtype=torch.float64)
        assert p.params[0].dtype == torch.float64 and p().dtype == torch.float64
        image = _random_image((1, 3, 6, 7), dtype=torch.float64)
        p.set_image(image)
        torch.testing.assert_close(p().detach(), image, atol=1e-12, rtol=0)


# --- seeds ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_seed_reproducible_and_batch_invariant(kind):
    a = image_param(kind, 10, batch=3, seed=5)
    b = image_param(kind, 10, batch=3, seed=5)
    one = image_param(kind, 10, batch=1, seed=5)
    other = image_param(kind, 10, batch=1, seed=6)
    assert torch.equal(a.params[0], b.params[0])
    assert torch.equal(a.params[0][:1], one.params[0])
    assert torch.equal(a()[:1], one())
    assert not torch.equal(one.params[0], other.params[0])
    assert not torch.equal(a.params[0][0], a.params[0][1])  # images in a batch differ
    # N(0, sd^2) start in the param's space
    big = image_param(kind, 32, batch=2, sd=0.5)
    assert big.params[0].std().item() == pytest.approx(0.5, rel=0.1)
    assert abs(big.params[0].mean().item()) < 0.05


def test_image_param_does_not_touch_the_global_rng():
    state = torch.get_rng_state()
    for kind in KINDS:
        p = image_param(kind, 8, batch=2, seed=1)
        p()
        p.blur(1.0)
        p.set_image(torch.full((2, 3, 8, 8), 0.3))
    assert torch.equal(torch.get_rng_state(), state)


def test_image_param_validates_arguments():
    with pytest.raises(ValueError, match="'pixel' or 'fft'"):
        image_param("cppn", 8)
    with pytest.raises(ValueError, match="size"):
        image_param("fft", 0)
    with pytest.raises(ValueError, match="size"):
        image_param("fft", (8, 8, 8))
    with pytest.raises(ValueError, match="batch"):
        image_param("fft", 8, batch=0)
    with pytest.raises(ValueError, match="sd"):
        image_param("fft", 8, sd=float("nan"))
    with pytest.raises(ValueError, match="decay_power"):
        image_param("fft", 8, decay_power=float("inf"))
    with pytest.raises(TypeError, match="float32 or torch.float64"):
        image_param("pixel", 8, dtype=torch.int64)
    with pytest.raises(ValueError, match="decorrelate=False"):
        PixelParam((1, 4, 8, 8))
    assert PixelParam((1, 4, 8, 8), decorrelate=False)().shape == (1, 4, 8, 8)


def test_repr_names_the_settings():
    assert (
        repr(image_param("fft", 8, decay_power=1.0)) == "FFTParam(shape=(1, 3, 8, 8), decorrelate=True, decay_power=1)"
    )
    assert repr(image_param("pixel", 8, decorrelate=False)) == "PixelParam(shape=(1, 3, 8, 8), decorrelate=False)"


# --- blur ----------------------------------------------------------------------------------------------------------


def _circular_gaussian_blur_reference(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Direct float64 sum: circular convolution with the periodised, sampled Gaussian (normalised to sum 1)."""
    h, w = x.shape[-2:]
    r = int(math.ceil(10 * sigma))
    kernel = torch.zeros(h, w, dtype=torch.float64)
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            kernel[dy % h, dx % w] += math.exp(-(dy * dy + dx * dx) / (2 * sigma * sigma))
    kernel /= kernel.sum()
    out = torch.zeros_like(x, dtype=torch.float64)
    xd = x.double()
    for sy in range(h):
        for sx in range(w):
            out += kernel[sy, sx] * torch.roll(xd, shifts=(sy, sx), dims=(-2, -1))
    return out


@pytest.mark.parametrize(("h", "w"), [(16, 16), (15, 16), (16, 15)])
def test_fft_blur_is_a_circular_gaussian_convolution(h, w):
    p = image_param("fft", (h, w), dtype=torch.float64, sd=1.0)
    before = p.linear().detach().clone()
    p.blur(2.0)
    after = p.linear().detach()
    expected = _circular_gaussian_blur_reference(before, 2.0)
    torch.testing.assert_close(after, expected, atol=1e-8 * before.abs().max().item(), rtol=0)
    assert (after - before).abs().max() > 0.1 * before.abs().max()  # it did blur


def test_pixel_blur_of_a_constant_is_the_constant_and_of_an_impulse_is_a_gaussian():
    p = image_param("pixel", (9, 11), batch=2, dtype=torch.float64)
    p.set_linear(torch.full((2, 3, 9, 11), 0.7, dtype=torch.float64))
    p.blur(1.5)
    torch.testing.assert_close(p.linear().detach(), torch.full((2, 3, 9, 11), 0.7, dtype=torch.float64))
    # an impulse far from the border spreads into the sampled, normalised Gaussian (radius ceil(4 sigma))
    sigma, n = 1.5, 21
    q = image_param("pixel", n, dtype=torch.float64)
    impulse = torch.zeros(1, 3, n, n, dtype=torch.float64)
    impulse[..., n // 2, n // 2] = 1.0
    q.set_linear(impulse)
    q.blur(sigma)
    r = math.ceil(4 * sigma)
    k1 = torch.tensor([math.exp(-(i * i) / (2 * sigma**2)) for i in range(-r, r + 1)], dtype=torch.float64)
    k1 /= k1.sum()
    expected = torch.zeros(n, n, dtype=torch.float64)
    expected[n // 2 - r : n // 2 + r + 1, n // 2 - r : n // 2 + r + 1] = k1[:, None] * k1[None, :]
    torch.testing.assert_close(q.linear().detach()[0, 1], expected, atol=1e-12, rtol=0)


def test_pixel_blur_reflects_at_the_border_and_handles_tiny_images():
    p = image_param("pixel", (1, 5), decorrelate=False)
    before = p.linear().detach().clone()
    p.blur(1.0)  # height 1: no vertical blur, horizontal radius clamped to 4
    after = p.linear().detach()
    assert after.shape == before.shape and not torch.equal(after, before)
    # reflect padding: a constant stays constant up to the border (zero padding would darken it), even for 4 sigma > 8
    q = image_param("pixel", 8, dtype=torch.float64)
    q.set_linear(torch.ones(1, 3, 8, 8, dtype=torch.float64))
    q.blur(3.0)
    torch.testing.assert_close(q.linear().detach(), torch.ones(1, 3, 8, 8, dtype=torch.float64))


@pytest.mark.parametrize("kind", KINDS)
def test_blur_sigma_zero_is_a_no_op_and_negative_sigma_is_an_error(kind):
    p = image_param(kind, 8, sd=1.0)
    before = p.params[0].detach().clone()
    p.blur(0.0)
    assert torch.equal(p.params[0], before)
    with pytest.raises(ValueError, match="sigma"):
        p.blur(-1.0)
    with pytest.raises(ValueError, match="sigma"):
        p.blur(float("nan"))
    p.blur(0.5)
    assert p.params[0].is_leaf and p.params[0].requires_grad
    assert not torch.equal(p.params[0], before)
