"""seewhy.featvis.transforms: Lucid's random transforms (Olah et al. 2017), seeded, differentiable, named."""

from __future__ import annotations

import math

import pytest
import torch

from seewhy.featvis.transforms import (
    compose,
    jitter,
    pad,
    random_rotate,
    random_scale,
    resolve_transforms,
    standard_transforms,
)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def rand(*shape, seed=0, dtype=torch.float32):
    return torch.rand(*shape, generator=gen(seed), dtype=dtype)


ALL = [
    pad(2),
    pad(2, "reflect"),
    pad(1, "replicate"),
    jitter(2),
    random_scale([0.8, 1.25]),
    random_rotate([-7.5, 30]),
    compose(standard_transforms(16)),
]
IDS = ["pad", "pad_reflect", "pad_replicate", "jitter", "scale", "rotate", "standard"]


# --- Lucid/Lucent unit cases ------------------------------------------------------------------------------------------


def test_pad_constant_on_ones_gives_a_grey_border():
    out = pad(1, "constant")(torch.ones(1, 1, 2, 2), gen())
    assert out.shape == (1, 1, 4, 4)
    assert torch.equal(out[..., 1:3, 1:3], torch.ones(1, 1, 2, 2))
    border = torch.ones(4, 4, dtype=torch.bool)
    border[1:3, 1:3] = False
    assert (out[0, 0][border] == 0.5).all()
    assert (pad(1, value=0.0)(torch.ones(1, 1, 2, 2), gen())[0, 0][border] == 0).all()


def test_pad_reflect_on_ones_is_all_ones():
    out = pad(1, "reflect")(torch.ones(1, 1, 2, 2), gen())
    assert torch.equal(out, torch.ones(1, 1, 4, 4))


def test_random_scale_a_third_of_three_by_three_ones_is_one_by_one():
    out = random_scale([1 / 3])(torch.ones(1, 1, 3, 3), gen())
    assert out.shape == (1, 1, 1, 1)
    assert out.item() == pytest.approx(1.0)


def test_random_scale_sizes_are_rounded_and_bilinear():
    x = rand(1, 2, 10, 20)
    out = random_scale([1.26])(x, gen())
    assert out.shape == (1, 2, 13, 25)  # round(12.6), round(25.2)
    expected = torch.nn.functional.interpolate(x, size=(13, 25), mode="bilinear", align_corners=False)
    torch.testing.assert_close(out, expected)


def test_random_rotate_90_maps_the_right_column_to_the_top_row():
    x = torch.arange(9.0).view(1, 1, 3, 3)
    out = random_rotate([90])(x, gen())
    torch.testing.assert_close(out[0, 0, 0], x[0, 0, :, 2], atol=1e-5, rtol=0)  # right column -> top row
    torch.testing.assert_close(out[0, 0, :, 0], x[0, 0, 0].flip(0), atol=1e-5, rtol=0)  # top row -> left column
    torch.testing.assert_close(out, torch.rot90(x, 1, dims=(-2, -1)), atol=1e-5, rtol=0)
    # negative angles turn clockwise
    torch.testing.assert_close(random_rotate([-90])(x, gen()), torch.rot90(x, -1, dims=(-2, -1)), atol=1e-5, rtol=0)


def test_random_rotate_non_square_images_are_not_sheared():
    x = rand(2, 3, 6, 10)
    torch.testing.assert_close(random_rotate([180])(x, gen()), x.flip(-2, -1), atol=1e-5, rtol=0)
    # a round blob (in pixels) at the centre of a wide image stays round under a rotation
    h, w = 17, 33
    yy, xx = torch.meshgrid(torch.arange(h) - h // 2, torch.arange(w) - w // 2, indexing="ij")
    blob = torch.exp(-(yy**2 + xx**2) / (2 * 3.0**2)).to(torch.float64)[None, None]
    out = random_rotate([30])(blob, gen())
    assert out.shape == blob.shape
    assert (out - blob).abs().max() < 0.05  # bilinear error ~0.02; rotating in normalised coordinates gives ~0.24


def test_jitter_crops_by_d_with_offsets_zero_to_d():
    d = 2
    x = torch.arange(36.0).view(1, 1, 6, 6).expand(2, 3, 6, 6)
    t = jitter(d)
    g = gen(1)
    offsets = set()
    for _ in range(60):
        out = t(x, g)
        assert out.shape == (2, 3, 6 - d, 6 - d)
        oy, ox = divmod(int(out[0, 0, 0, 0].item()), 6)
        assert torch.equal(out, x[..., oy : oy + 6 - d, ox : ox + 6 - d])
        offsets.add((oy, ox))
    assert {o[0] for o in offsets} == {0, 1, 2} and {o[1] for o in offsets} == {0, 1, 2}


def test_identity_cases_return_the_input():
    x = rand(1, 3, 5, 5)
    assert pad(0)(x, gen()) is x
    assert jitter(0)(x, gen()) is x
    assert random_scale([1.0])(x, gen()) is x
    assert random_rotate([0])(x, gen()) is x
    assert compose([])(x, gen()) is x


# --- standard transforms and resolution ---------------------------------------------------------------------------


def test_standard_transforms_128_has_lucids_numbers():
    ts = standard_transforms(128)
    assert [repr(t) for t in ts][:2] == ["pad(12, constant 0.5)", "jitter(8)"]
    assert repr(ts[4]) == "jitter(4)"
    assert list(ts[2].scales) == pytest.approx([0.9, 0.92, 0.94, 0.96, 0.98, 1.0, 1.02, 1.04, 1.06, 1.08, 1.1])
    angles = list(ts[3].angles)
    assert sorted(set(angles)) == list(range(-10, 11))
    assert len(angles) == 26 and angles.count(0) == 6
    assert repr(ts[2]).startswith("random_scale([0.9, 0.92,") and repr(ts[3]).startswith("random_rotate([-10, -9,")
    out = compose(ts)(rand(1, 3, 128, 128), gen())
    # 128 + 24 - 8 = 144, scaled by 0.9..1.1 (130..158), minus 4
    assert out.shape[:2] == (1, 3) and 126 <= out.shape[-1] <= 154 and out.shape[-1] == out.shape[-2]


def test_standard_transforms_scale_pixel_amounts_with_the_size():
    assert [repr(t) for t in standard_transforms(32)][:2] == ["pad(3, constant 0.5)", "jitter(2)"]
    assert repr(standard_transforms(32)[4]) == "jitter(1)"
    assert repr(standard_transforms(256)[0]) == "pad(24, constant 0.5)"
    small = standard_transforms(8)  # 0.75, 0.5, 0.25 px -> at least 1
    assert [repr(small[i]) for i in (0, 1, 4)] == ["pad(1, constant 0.5)", "jitter(1)", "jitter(1)"]
    with pytest.raises(ValueError, match="size"):
        standard_transforms(0)


def test_resolve_transforms():
    x = rand(1, 3, 32, 32)
    std = resolve_transforms("standard", 32)
    assert repr(std) == repr(compose(standard_transforms(32)))
    assert torch.equal(std(x, gen(4)), compose(standard_transforms(32))(x, gen(4)))
    for spec in ("none", None, (), []):
        t = resolve_transforms(spec, 32)
        assert t(x, gen()) is x and repr(t) == "identity"
    listed = resolve_transforms([pad(2), jitter(1)], 32)
    assert repr(listed) == "compose([pad(2, constant 0.5), jitter(1)])"
    assert listed(x, gen()).shape == (1, 3, 35, 35)
    single = jitter(1)
    assert resolve_transforms(single, 32) is single
    for bad in ("lucid", 5, [pad(1), "jitter"]):
        with pytest.raises(ValueError, match="standard") as info:
            resolve_transforms(bad, 32)
        assert "none" in str(info.value)


def test_reprs_are_readable():
    assert repr(pad(12)) == "pad(12, constant 0.5)"
    assert repr(pad(1, "reflect")) == "pad(1, reflect)"
    assert repr(jitter(8)) == "jitter(8)"
    assert repr(random_scale([0.5, 2])) == "random_scale([0.5, 2])"
    assert repr(random_rotate([-5, 0, 5])) == "random_rotate([-5, 0, 5])"
    assert repr(compose([pad(1), jitter(2)])) == "compose([pad(1, constant 0.5), jitter(2)])"
    assert jitter(3).name == "jitter(3)"


# --- contract: shapes, dtype, gradients, seeds --------------------------------------------------------------------


@pytest.mark.parametrize("t", ALL, ids=IDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_keeps_batch_channels_dtype_and_device(t, dtype):
    x = rand(3, 2, 16, 16, dtype=dtype)
    out = t(x, gen(2))
    assert out.shape[:2] == (3, 2) and out.dtype == dtype and out.device == x.device
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("t", ALL, ids=IDS)
def test_one_draw_shared_by_the_batch(t):
    x = rand(1, 3, 16, 16).expand(4, 3, 16, 16)
    g = gen(3)
    for _ in range(3):
        out = t(x, g)
        assert torch.equal(out, out[:1].expand_as(out))


@pytest.mark.parametrize("t", ALL, ids=IDS)
def test_differentiable(t):
    x = rand(2, 3, 16, 16, dtype=torch.float64).requires_grad_()
    out = t(x, gen(5))
    (out * torch.linspace(0.5, 1.5, out.shape[-1], dtype=torch.float64)).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    # the transforms are linear in x: a numerical Jacobian check on a small input with a fixed draw
    small = rand(1, 1, 6, 7, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(lambda y: t(y, gen(5)), (small,), eps=1e-6, atol=1e-6, fast_mode=True)


@pytest.mark.parametrize("t", ALL[3:], ids=IDS[3:])
def test_reproducible_from_a_seed_and_different_seeds_differ(t):
    x = rand(2, 3, 16, 16)

    def draws(seed):
        g = gen(seed)
        return [t(x, g) for _ in range(6)]

    a, b, c = draws(7), draws(7), draws(8)
    assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True))
    assert any(u.shape != v.shape or not torch.equal(u, v) for u, v in zip(a, c, strict=True))
    assert any(u.shape != a[0].shape or not torch.equal(u, a[0]) for u in a[1:])  # draws vary from call to call


def test_global_rng_untouched():
    state = torch.get_rng_state()
    x = rand(1, 3, 32, 32)
    t = compose(standard_transforms(32))
    g = gen(0)
    for _ in range(5):
        t(x, g)
    assert torch.equal(torch.get_rng_state(), state)


def test_random_transforms_need_a_cpu_generator():
    x = rand(1, 3, 8, 8)
    for t in (jitter(1), random_scale([1.0]), random_rotate([0])):
        with pytest.raises(TypeError, match="torch.Generator"):
            t(x, None)
    assert pad(1)(x, None).shape == (1, 3, 10, 10)  # a deterministic transform needs none


# --- validation ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: pad(-1), "pad width"),
        (lambda: pad(1.5), "pad width"),
        (lambda: pad(1, "wrap"), "constant, reflect, replicate, circular"),
        (lambda: pad(1, value=float("nan")), "finite"),
        (lambda: jitter(-2), "jitter d"),
        (lambda: random_scale([]), "at least one"),
        (lambda: random_scale([0.0]), "> 0"),
        (lambda: random_scale([1.0, float("nan")]), "finite"),
        (lambda: random_scale("1.0"), "sequence"),
        (lambda: random_rotate([float("inf")]), "finite"),
        (lambda: random_rotate([]), "at least one"),
        (lambda: compose([pad(1), 3]), "callables"),
    ],
)
def test_bad_arguments_raise_value_error(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_bad_inputs_raise_value_error():
    with pytest.raises(ValueError, match="larger than 4"):
        jitter(4)(rand(1, 1, 4, 8), gen())
    with pytest.raises(ValueError, match="larger than 2"):
        pad(2, "reflect")(rand(1, 1, 2, 2), gen())
    with pytest.raises(ValueError, match=r"\(B,C,H,W\)"):
        random_rotate([5])(rand(3, 8, 8), gen())
    assert math.isfinite(random_rotate([5])(rand(1, 1, 8, 8), gen()).sum().item())
