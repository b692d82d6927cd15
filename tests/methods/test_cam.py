"""Numerical checks of the CAM family against independent formulas, on tiny models."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import build
from torch import nn

import seewhy
from seewhy.hooks import count_hooks
from seewhy.methods import fully_convolutional


def _x(shape: tuple[int, ...] = (3, 3, 32, 32), seed: int = 0, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _attr(model: nn.Module, x: torch.Tensor, method: str, target=None, **params) -> torch.Tensor:
    return seewhy.explain(model, x, method, target=target, **params).attributions


def _acts_grads(model: nn.Module, x: torch.Tensor, layer: str, target: torch.Tensor):
    """Activation and gradient at ``layer`` by a plain forward hook that keeps the graph tensor (independent of
    seewhy.hooks)."""
    store = {}
    module = model.get_submodule(layer)
    handle = module.register_forward_hook(lambda m, a, out: store.update(a=out))
    try:
        out = model(x)
    finally:
        handle.remove()
    (g,) = torch.autograd.grad(out.gather(1, target[:, None]).sum(), store["a"])
    return store["a"].detach(), g


class _Seq(nn.Module):
    """The same computation as a Sequential chain, behind a custom forward (so no tail can be found)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _sequential_cnn(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(8, 12, 3, padding=1))
    return nn.Sequential(features, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(12, 5)).double().eval()


class _Block(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, 2, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class TinyViT(nn.Module):
    """8x8 patches of a 32x32 image -> 16 tokens + a class token, two blocks, a head on the class token."""

    def __init__(self, dim: int = 16, classes: int = 5) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, dim, 8, 8)
        self.cls = nn.Parameter(0.5 * torch.randn(1, 1, dim))
        self.pos = nn.Parameter(0.5 * torch.randn(1, 17, dim))
        self.blocks = nn.Sequential(_Block(dim), _Block(dim))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.patch(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls.expand(t.shape[0], -1, -1), t], dim=1) + self.pos
        return self.head(self.norm(self.blocks(t)[:, 0]))


# --- identities on linear heads ---------------------------------------------------------------------------------------


def test_cam_gradcam_xgradcam_hirescam_agree_on_a_gap_head() -> None:
    model, x = build("tiny_cnn").double(), _x()
    targets = torch.tensor([1, 4, 7])
    a, _ = _acts_grads(model, x, "features", targets)
    closed = torch.einsum("bk,bkhw->bhw", model.fc.weight[targets], a).unsqueeze(1)  # sum_k w_ck A_k
    cam = _attr(model, x, "cam", targets, layer="features")
    torch.testing.assert_close(cam, closed)
    torch.testing.assert_close(
        cam.mean(dim=(1, 2, 3)) + model.fc.bias[targets], model(x).gather(1, targets[:, None])[:, 0]
    )
    z = a.shape[-2] * a.shape[-1]  # the gradient methods see w_ck / (h*w): the same map up to a positive scale
    for name in ("gradcam", "xgradcam", "hirescam"):
        torch.testing.assert_close(_attr(model, x, name, targets, layer="features") * z, closed, msg=name)


def test_hirescam_and_cam_are_exact_on_a_flatten_head() -> None:
    model, x = build("tiny_vgg").double(), _x()
    targets = torch.tensor([0, 3, 9])
    score = model(x).gather(1, targets[:, None])[:, 0]
    bias = model.classifier.bias[targets]
    hires = _attr(model, x, "hirescam", targets, layer="features")
    assert hires.shape == (3, 1, 8, 8)
    torch.testing.assert_close(hires.sum(dim=(1, 2, 3)) + bias, score)
    cam = _attr(model, x, "cam", targets, layer="features")  # per-location weights: mean(M) + b = S
    torch.testing.assert_close(cam.mean(dim=(1, 2, 3)) + bias, score)
    torch.testing.assert_close(cam, hires * 64)
    grad = _attr(model, x, "gradcam", targets, layer="features")  # gradient averaging breaks the sum
    assert not torch.allclose(grad.sum(dim=(1, 2, 3)) * 64 + bias, score)


# --- gradient CAMs against hand-computed formulas ---------------------------------------------------------------------


@pytest.fixture
def resnet_layer1():
    model, x = build("tiny_resnet").double(), _x(seed=3)
    targets = torch.tensor([2, 5, 8])
    a, g = _acts_grads(model, x, "layer1", targets)
    return model, x, targets, a, g


def test_gradcam_xgradcam_hirescam_layercam_formulas(resnet_layer1) -> None:
    model, x, targets, a, g = resnet_layer1
    expected = {
        "gradcam": (g.mean(dim=(2, 3))[:, :, None, None] * a).sum(1, keepdim=True),
        "xgradcam": ((g * a).sum(dim=(2, 3)) / a.sum(dim=(2, 3)))[:, :, None, None].mul(a).sum(1, keepdim=True),
        "hirescam": (g * a).sum(1, keepdim=True),
        "layercam": (g.clamp(min=0) * a).sum(1, keepdim=True),
    }
    for name, want in expected.items():
        torch.testing.assert_close(_attr(model, x, name, targets, layer="layer1"), want, msg=name)


def test_gradcam_plus_plus_closed_form(resnet_layer1) -> None:
    model, x, targets, a, g = resnet_layer1
    s = a.sum(dim=(2, 3), keepdim=True)
    alpha = g**2 / (2 * g**2 + s * g**3)  # the closed form for an exponential output; 0/0 where g = 0
    alpha[g == 0] = 0
    w = (alpha * g.clamp(min=0)).sum(dim=(2, 3))
    want = (w[:, :, None, None] * a).sum(1, keepdim=True)
    torch.testing.assert_close(_attr(model, x, "gradcam_plus_plus", targets, layer="layer1"), want)


def test_layercam_fuses_layers_at_the_finest_grid(resnet_layer1) -> None:
    model, x, targets, *_ = resnet_layer1
    one = [_attr(model, x, "layercam", targets, layer=name) for name in ("layer1", "layer2")]
    fused = seewhy.explain(model, x, "layercam", target=targets, layer=["layer1", "layer2"], fuse="sum")
    assert fused.layer == "layer1, layer2"
    up = F.interpolate(one[1], size=(32, 32), mode="bilinear", align_corners=False)
    torch.testing.assert_close(fused.attributions, one[0] + up)
    fmax = _attr(model, x, "layercam", targets, layer=["layer2", "layer1"])
    assert fmax.shape == (3, 1, 32, 32) and float(fmax.max()) <= 1 and torch.isfinite(fmax).all()


def test_gradient_cams_are_linear_in_a_callable_target() -> None:
    model, x = build("tiny_resnet").double(), _x()
    diff = _attr(model, x, "gradcam", lambda out: out[:, 2] - out[:, 3], layer="layer2")
    torch.testing.assert_close(
        diff, _attr(model, x, "gradcam", 2, layer="layer2") - _attr(model, x, "gradcam", 3, layer="layer2")
    )


def test_gradient_cams_use_one_forward_for_top1() -> None:
    inner = build("tiny_cnn")
    calls = []

    class Counting(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            calls.append(x.shape[0])
            return self.inner(x)

    exp = seewhy.explain(Counting(), _x(dtype=torch.float32), "gradcam", layer="inner.features")
    assert calls == [3]
    torch.testing.assert_close(exp.targets, inner(_x(dtype=torch.float32)).argmax(1))


def test_guided_gradcam_is_the_product_of_its_parts() -> None:
    model, x = build("tiny_cnn").double(), _x()
    targets = [3, 1, 0]
    exp = seewhy.explain(model, x, "guided_gradcam", target=targets, layer="features.2")
    assert exp.kind == "pixel" and exp.attributions.shape == x.shape
    gb = _attr(model, x, "guided_backprop", targets)
    cam = _attr(model, x, "gradcam", targets, layer="features.2").clamp(min=0)
    torch.testing.assert_close(exp.attributions, gb * F.interpolate(cam, size=(32, 32), mode="bilinear"))


def test_eigencam_is_the_first_principal_projection_with_a_fixed_sign() -> None:
    model, x = build("tiny_resnet").double(), _x()
    a, _ = _acts_grads(model, x, "layer2", torch.zeros(3, dtype=torch.long))
    m = _attr(model, x, "eigencam", layer="layer2")
    for b in range(3):
        u, s, _ = torch.linalg.svd(a[b].flatten(1).T, full_matrices=False)
        torch.testing.assert_close(m[b].flatten().abs(), (s[0] * u[:, 0]).abs())
        mean = a[b].mean(0).flatten()
        assert float((m[b].flatten() * (mean - mean.mean())).sum()) >= 0
    centred = _attr(model, x, "eigencam", layer="layer2", center=True)
    torch.testing.assert_close(centred.mean(dim=(2, 3)), torch.zeros(3, 1, dtype=torch.float64))


# --- perturbation CAMs ------------------------------------------------------------------------------------------------


def test_scorecam_matches_a_loop_and_does_not_depend_on_batch_size() -> None:
    model, x = build("tiny_functional_cnn").double(), _x((2, 3, 32, 32), seed=5)
    targets = torch.tensor([1, 3])
    maps = [_attr(model, x, "scorecam", targets, layer="conv2", batch_size=bs) for bs in (1, 7, 64)]
    torch.testing.assert_close(maps[0], maps[1], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(maps[0], maps[2], rtol=1e-12, atol=1e-12)
    store = {}  # conv2's output, before the in-place F.relu that follows it
    handle = model.conv2.register_forward_hook(lambda m, args, out: store.update(a=out.detach().clone()))
    with torch.no_grad():
        model(x)
    handle.remove()
    a = store["a"]
    want = []
    for b in range(2):  # the definition, channel by channel
        base = model(torch.zeros_like(x[b : b + 1]))[0, targets[b]]
        cic = torch.full((a.shape[1],), float("-inf"), dtype=torch.float64)  # constant channels: left out
        for k in range(a.shape[1]):
            up = F.interpolate(a[b : b + 1, k : k + 1], size=(32, 32), mode="bilinear")
            if up.max() > up.min():
                mask = (up - up.min()) / (up.max() - up.min())
                cic[k] = model(x[b : b + 1] * mask)[0, targets[b]] - base
        w = torch.softmax(cic, 0)
        want.append((w[:, None, None] * a[b]).sum(0, keepdim=True))
    torch.testing.assert_close(maps[0], torch.stack(want).detach())
    prob = _attr(model, x, "scorecam", targets, layer="conv2", score="probability")
    assert torch.isfinite(prob).all() and not torch.allclose(prob, maps[0])


def test_scorecam_constant_channel_gives_no_nan() -> None:
    model = _sequential_cnn()
    conv = model[0][2]
    with torch.no_grad():
        conv.weight[:3] = 0  # channels 0-2 are constant (their bias)
    exp = seewhy.explain(model, _x(), "scorecam", target=1, layer="0.2")
    assert torch.isfinite(exp.attributions).all()
    assert (exp.extras["weights"][:, :3] == 0).all()
    torch.testing.assert_close(exp.extras["weights"].sum(1), torch.ones(3, dtype=torch.float64))
    # constant channels cost no forward: the model sees the 3 inputs once, then k - 3 masked rows and 1 baseline each
    seen = []
    handle = model.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[0]))
    try:
        exp = seewhy.explain(model, _x(), "scorecam", target=1, layer="0.2", batch_size=4)
    finally:
        handle.remove()
    k = exp.extras["weights"].shape[1]
    assert exp.extras["evaluations"].tolist() == [k - 3 + 1] * 3
    assert sum(seen) == 3 + 3 * (k - 3 + 1)
    with torch.no_grad():
        conv.weight.zero_()  # every channel constant: an all-zero map, still finite
    assert (_attr(model, _x(), "scorecam", 1, layer="0.2") == 0).all()


def test_ablationcam_tail_and_full_forward_agree_with_the_definition() -> None:
    seq = _sequential_cnn()
    x = _x(seed=2)
    targets = torch.tensor([0, 2, 4])
    tail = seewhy.explain(seq, x, "ablationcam", target=targets, layer="0.2", batch_size=5)
    full = seewhy.explain(_Seq(seq), x, "ablationcam", target=targets, layer="net.0.2", batch_size=3, split=False)
    assert tail.extras["ablation_path"] == "tail" and full.extras["ablation_path"] == "forward"
    torch.testing.assert_close(tail.attributions, full.attributions)
    a = seq[0](x)
    y = seq[1:](a).gather(1, targets[:, None])[:, 0]
    w = torch.zeros(3, a.shape[1], dtype=torch.float64)
    for k in range(a.shape[1]):
        ablated = a.clone()
        ablated[:, k] = 0
        w[:, k] = (y - seq[1:](ablated).gather(1, targets[:, None])[:, 0]) / y.abs()
    torch.testing.assert_close(tail.extras["weights"], w)
    torch.testing.assert_close(tail.attributions, (w[:, :, None, None] * a).sum(1, keepdim=True).detach())


def test_ablationcam_with_a_user_head() -> None:
    model, x = build("tiny_cnn").double(), _x()
    head = lambda a: model.fc(model.pool(a).flatten(1))  # noqa: E731
    fast = seewhy.explain(model, x, "ablationcam", target=[1, 2, 3], layer="features", head=head)
    slow = seewhy.explain(model, x, "ablationcam", target=[1, 2, 3], layer="features", split=False)
    assert (fast.extras["ablation_path"], slow.extras["ablation_path"]) == ("tail", "forward")
    torch.testing.assert_close(fast.attributions, slow.attributions)
    with pytest.raises(ValueError, match="does not reproduce"):
        seewhy.explain(model, x, "ablationcam", target=1, layer="features", head=lambda a: model.fc(a.amax((2, 3))))


# --- fully-convolutional class maps -----------------------------------------------------------------------------------


def test_class_map_on_a_gap_head() -> None:
    model, x = build("tiny_cnn").double(), _x()
    exp = seewhy.explain(model, x, "class_map", target=[0, 5, 9], layer="features")
    assert exp.attributions.shape == (3, 1, 32, 32)
    torch.testing.assert_close(exp.attributions.mean(dim=(1, 2, 3)), exp.scores)
    torch.testing.assert_close(exp.scores, model(x).gather(1, torch.tensor([[0], [5], [9]]))[:, 0])
    big = _x((2, 3, 48, 40), seed=1)
    assert _attr(model, big, "class_map", 4, layer="features").shape == (2, 1, 48, 40)
    fcn = fully_convolutional(model, "features")
    with torch.no_grad():
        torch.testing.assert_close(fcn(big).mean(dim=(2, 3)), model(big))
    assert count_hooks(model) == 0


def test_class_map_on_a_flatten_head() -> None:
    model, x = build("tiny_vgg").double(), _x()
    exp = seewhy.explain(model, x, "class_map", target=[1, 2, 3], layer="features")
    assert exp.attributions.shape == (3, 1, 1, 1)
    torch.testing.assert_close(exp.attributions.flatten(), model(x).gather(1, torch.tensor([[1], [2], [3]]))[:, 0])
    big = _x((2, 3, 48, 48), seed=1)  # the model itself cannot run on it; the fully-convolutional version can
    with pytest.raises(RuntimeError):
        model(big)
    m = _attr(model, big, "class_map", 4, layer="features")
    assert m.shape == (2, 1, 5, 5)  # 12x12 features, 8x8 kernel
    torch.testing.assert_close(m, _attr(model, big, "class_map", 4, layer="features", train_size=32))
    with torch.no_grad():
        torch.testing.assert_close(fully_convolutional(model, "features", train_size=(32, 32))(big)[:, 4:5], m)


# --- token models -----------------------------------------------------------------------------------------------------


def test_token_models_with_reshape() -> None:
    torch.manual_seed(0)
    model, x = TinyViT().double().eval(), _x()
    maps = [
        _attr(model, x, "gradcam", 2, layer="blocks.0", reshape=r)
        for r in (True, 1, lambda t: t[:, 1:].transpose(1, 2).reshape(t.shape[0], -1, 4, 4))
    ]
    assert maps[0].shape == (3, 1, 4, 4) and maps[0].abs().sum() > 0
    torch.testing.assert_close(maps[0], maps[1])
    torch.testing.assert_close(maps[0], maps[2])
    for name in ("hirescam", "scorecam", "eigencam", "layercam"):
        assert _attr(model, x, name, 2, layer="blocks.0", reshape=True).shape == (3, 1, 4, 4), name
    head = lambda t: model.head(model.norm(model.blocks[1](t)[:, 0]))  # noqa: E731
    fast = seewhy.explain(model, x, "ablationcam", target=2, layer="blocks.0", reshape=True, head=head)
    slow = seewhy.explain(model, x, "ablationcam", target=2, layer="blocks.0", reshape=1, split=False)
    assert fast.extras["ablation_path"] == "tail" and slow.extras["ablation_path"] == "forward"
    torch.testing.assert_close(fast.attributions, slow.attributions)
    with pytest.raises(ValueError, match="reshape=True"):
        seewhy.explain(model, x, "gradcam", layer="blocks.0")


# --- errors -----------------------------------------------------------------------------------------------------------


def test_cam_on_another_head_suggests_gradcam() -> None:
    class MLPHead(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = build("tiny_cnn").features
            self.fc1, self.fc2 = nn.Linear(32, 32), nn.Linear(32, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc2(F.relu(self.fc1(self.features(x).mean((2, 3)))))

    x = _x(dtype=torch.float32)
    with pytest.raises(ValueError, match="gradcam"):
        seewhy.explain(MLPHead(), x, "cam", target=1)
    with pytest.raises(ValueError, match="gradcam"):  # a functional ReLU after the default layer
        seewhy.explain(build("tiny_functional_cnn"), x, "cam", target=1)
    with pytest.raises(ValueError, match="matches neither"):
        seewhy.explain(build("tiny_cnn"), x, "cam", target=1, layer="features.0", fc="fc")
    with pytest.raises(ValueError, match="gradcam"):
        seewhy.explain(build("tiny_cnn"), x, "cam", target=lambda out: out[:, 0])


def test_layer_errors() -> None:
    model, x = build("tiny_resnet"), _x(dtype=torch.float32)
    with pytest.raises(ValueError, match="closest valid names: .*layer2"):
        seewhy.explain(model, x, "gradcam", layer="layer22")
    with pytest.raises(ValueError, match="non-spatial output"):
        seewhy.explain(model, x, "gradcam", layer="fc")
    with pytest.raises(ValueError, match="called 2 times"):
        seewhy.explain(model, x, "gradcam", layer="layer1.relu")
    with pytest.raises(ValueError, match="layercam"):
        seewhy.explain(model, x, "gradcam", layer=["layer1", "layer2"])
    for name in ("gradcam", "scorecam", "ablationcam", "eigencam", "cam"):
        with pytest.raises(ValueError):
            seewhy.explain(model, x, name, layer="fc")
        assert count_hooks(model) == 0


def test_heatmap_convention_and_layer_record() -> None:
    exp = seewhy.explain(build("tiny_cnn"), _x(dtype=torch.float32), "gradcam")
    assert exp.layer == "features" and exp.kind == "map"
    assert exp.heatmap_convention == {
        "reduce": "none",
        "sign": "positive",
        "upsample": "bilinear",
        "normalize": "minmax",
    }
    assert (exp.attributions < 0).any(), "raw maps keep their sign"
