"""Numerical checks of the gradient family against independent formulas."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import build
from torch import nn

import seewhy
from seewhy.methods.gradient import gaussian_blur, quadrature


def _linear_model(seed: int = 0, shape: tuple[int, ...] = (3, 8, 8), k: int = 5) -> nn.Module:
    torch.manual_seed(seed)
    d = int(torch.tensor(shape).prod())
    return nn.Sequential(nn.Flatten(), nn.Linear(d, k)).double().eval()


def _x(shape: tuple[int, ...] = (4, 3, 8, 8), seed: int = 0) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_saliency_equals_autograd_gradient(inputs: torch.Tensor) -> None:
    model = build("tiny_resnet")
    targets = torch.tensor([0, 4, 9])
    x = inputs.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(model(x).gather(1, targets[:, None]).sum(), x)
    torch.testing.assert_close(seewhy.explain(model, inputs, "saliency", target=targets).attributions, g)


def test_linear_model_input_x_gradient_equals_ig_equals_w_times_x() -> None:
    model, x = _linear_model(), _x()
    w = model[1].weight[2].view(3, 8, 8)
    expected = w * x
    ixg = seewhy.explain(model, x, "input_x_gradient", target=2).attributions
    torch.testing.assert_close(ixg, expected)
    for rule in ("gausslegendre", "riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid"):
        ig = seewhy.explain(model, x, "integrated_gradients", target=2, n_steps=7, quadrature=rule)
        torch.testing.assert_close(ig.attributions, expected)
        assert ig.extras["completeness_gap"].abs().max() < 1e-10


def test_ig_completeness_gap_shrinks_with_steps() -> None:
    torch.manual_seed(3)
    model = nn.Sequential(nn.Flatten(), nn.Linear(192, 32), nn.Tanh(), nn.Linear(32, 32), nn.Softplus(),
                          nn.Linear(32, 4)).double().eval()
    x = 3 * _x()
    for rule in ("gausslegendre", "riemann_trapezoid", "riemann_middle", "riemann_right"):
        gaps = [
            seewhy.explain(model, x, "integrated_gradients", target=1, n_steps=n, quadrature=rule)
            .extras["completeness_gap"].abs().max().item()
            for n in (4, 16, 64)
        ]
        assert gaps[2] < gaps[1] < gaps[0], (rule, gaps)
    gl = seewhy.explain(model, x, "integrated_gradients", target=1, n_steps=64).extras["completeness_gap"]
    assert gl.abs().max() < 1e-8


def test_ig_of_sum_is_input_minus_baseline() -> None:
    class Sum(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.flatten(1).sum(1, keepdim=True)

    x = _x()
    for baseline in ("zeros", "blur", "uniform", 0.5, torch.full((3, 8, 8), -1.0, dtype=torch.float64)):
        exp = seewhy.explain(Sum(), x, "integrated_gradients", target=0, baseline=baseline, n_steps=3, seed=1)
        base = x - exp.attributions
        if baseline == "zeros":
            torch.testing.assert_close(base, torch.zeros_like(x))
        elif isinstance(baseline, float):
            torch.testing.assert_close(base, torch.full_like(x, 0.5))
        elif baseline == "blur":
            torch.testing.assert_close(base, gaussian_blur(x, 10.0))
        assert exp.extras["completeness_gap"].abs().max() < 1e-10


def test_ig_batch_size_does_not_change_results(inputs: torch.Tensor) -> None:
    model = build("tiny_functional_cnn")
    runs = [seewhy.explain(model, inputs, "integrated_gradients", n_steps=10, batch_size=b).attributions
            for b in (1, 7, 64)]
    for r in runs[1:]:
        torch.testing.assert_close(r, runs[0], rtol=1e-4, atol=1e-7)


def test_ig_baseline_errors() -> None:
    model, x = _linear_model(), _x()
    with pytest.raises(ValueError, match="baseline"):
        seewhy.explain(model, x, "integrated_gradients", baseline="gray")
    with pytest.raises(ValueError, match="does not broadcast"):
        seewhy.explain(model, x, "integrated_gradients", baseline=torch.zeros(2, 5, 5))
    with pytest.raises(ValueError, match="quadrature"):
        seewhy.explain(model, x, "integrated_gradients", quadrature="simpson")


@pytest.mark.parametrize("rule", ["gausslegendre", "riemann_left", "riemann_right", "riemann_middle",
                                  "riemann_trapezoid"])
def test_quadrature_nodes_and_weights(rule: str) -> None:
    a, w = quadrature(9, rule)
    assert a.shape == w.shape == (9,)
    assert float(a.min()) >= 0 and float(a.max()) <= 1
    torch.testing.assert_close(w.sum(), torch.tensor(1.0, dtype=torch.float64))
    # integral of 3 a^2 over [0, 1] is 1: exact for Gauss-Legendre, O(1/n) or O(1/n^2) for the Riemann rules
    err = abs(float((w * 3 * a**2).sum()) - 1.0)
    assert err < (1e-12 if rule == "gausslegendre" else 0.2)


def _two_layer(act: str) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(5)
    lin1, lin2 = nn.Linear(6, 10).double(), nn.Linear(10, 3).double()

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin1, self.lin2 = lin1, lin2
            self.relu = nn.ReLU(inplace=True)
            self.relu6 = nn.ReLU6()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.lin1(x.flatten(1)) * 4
            if act == "module_inplace":
                h = self.relu(h)
            elif act == "functional":
                h = F.relu(h)
            elif act == "tensor_method":
                h = h.relu()
            elif act == "relu6_module":
                h = self.relu6(h)
            else:
                h = F.relu6(h)
            return self.lin2(h)

    x = torch.randn(4, 6, 1, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    pre = lin1(x.flatten(1)) * 4
    return Net().eval(), x, pre


@pytest.mark.parametrize("act", ["module_inplace", "functional", "tensor_method", "relu6_module", "relu6_functional"])
def test_guided_backprop_and_deconvnet_by_hand(act: str) -> None:
    model, x, pre = _two_layer(act)
    t = 1
    w1, w2 = model.lin1.weight.detach() * 4, model.lin2.weight[t].detach()
    hi = 6.0 if "relu6" in act else float("inf")
    mask = ((pre > 0) & (pre < hi)).double()
    guided = (w2.clamp(min=0) * mask) @ w1
    deconv = (w2.clamp(min=0).expand_as(mask)) @ w1
    plain = (w2 * mask) @ w1
    assert not torch.allclose(guided, plain)
    gb = seewhy.explain(model, x, "guided_backprop", target=t).attributions.view(4, 6)
    dc = seewhy.explain(model, x, "deconvnet", target=t).attributions.view(4, 6)
    sal = seewhy.explain(model, x, "saliency", target=t).attributions.view(4, 6)
    torch.testing.assert_close(gb, guided.detach())
    torch.testing.assert_close(dc, deconv.detach())
    torch.testing.assert_close(sal, plain.detach())


def test_guided_backprop_same_for_inplace_and_functional_relu(inputs: torch.Tensor) -> None:
    torch.manual_seed(0)
    inplace = build("tiny_cnn")

    class Functional(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = inplace

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            f = self.inner.features
            x = F.relu(f[2](F.relu(f[0](x))))
            return self.inner.fc(x.mean(dim=(2, 3)))

    a = seewhy.explain(inplace, inputs, "guided_backprop", target=3).attributions
    b = seewhy.explain(Functional(), inputs, "guided_backprop", target=3).attributions
    torch.testing.assert_close(a, b)


def test_guided_backprop_warns_when_no_relu_is_seen() -> None:
    model, x = _linear_model(), _x()
    with pytest.warns(UserWarning, match="no ReLU"):
        seewhy.explain(model, x, "guided_backprop", target=0)


def test_smoothgrad_limits(inputs: torch.Tensor) -> None:
    model = build("tiny_cnn").double()
    x = inputs.double()
    sal = seewhy.explain(model, x, "saliency", target=2).attributions
    sg = seewhy.explain(model, x, "smoothgrad", target=2, n_samples=3, noise=0.0).attributions
    torch.testing.assert_close(sg, sal)
    sq = seewhy.explain(model, x, "smoothgrad", target=2, n_samples=2, noise=0.0, variant="smoothgrad_sq")
    torch.testing.assert_close(sq.attributions, sal**2)
    var = seewhy.explain(model, x, "smoothgrad", target=2, n_samples=2, noise=0.0, variant="vargrad")
    assert var.attributions.abs().max() < 1e-12


def test_smoothgrad_matches_an_explicit_average(inputs: torch.Tensor) -> None:
    model = build("tiny_resnet").double()
    x = inputs.double()
    exp = seewhy.explain(model, x, "smoothgrad", target=4, n_samples=5, noise=0.2, seed=11)
    noise = torch.randn((5, 3, 32, 32), generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    sigma = 0.2 * (x.amax(dim=(1, 2, 3)) - x.amin(dim=(1, 2, 3)))
    grads = []
    for k in range(5):
        xk = (x + sigma.view(-1, 1, 1, 1) * noise[k]).requires_grad_(True)
        grads.append(torch.autograd.grad(model(xk)[:, 4].sum(), xk)[0])
    g = torch.stack(grads)
    torch.testing.assert_close(exp.attributions, g.mean(0))
    vg = seewhy.explain(model, x, "smoothgrad", target=4, n_samples=5, noise=0.2, seed=11, variant="vargrad")
    torch.testing.assert_close(vg.attributions, g.var(0, unbiased=False))
    assert exp.extras["seed"] == 11


def test_smoothgrad_seed_and_batch_size(inputs: torch.Tensor) -> None:
    model = build("tiny_functional_cnn")
    a = seewhy.explain(model, inputs, "smoothgrad", n_samples=6, seed=3, batch_size=1).attributions
    b = seewhy.explain(model, inputs, "smoothgrad", n_samples=6, seed=3, batch_size=64).attributions
    c = seewhy.explain(model, inputs, "smoothgrad", n_samples=6, seed=4).attributions
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)
    assert not torch.allclose(a, c)
    unseeded = seewhy.explain(model, inputs, "smoothgrad", n_samples=2)
    again = seewhy.explain(model, inputs, "smoothgrad", n_samples=2, seed=unseeded.extras["seed"])
    torch.testing.assert_close(unseeded.attributions, again.attributions)


@pytest.mark.parametrize("base", ["input_x_gradient", "guided_backprop", "integrated_gradients"])
def test_smoothgrad_wraps_other_gradient_methods(base: str, inputs: torch.Tensor) -> None:
    model = build("tiny_cnn")
    params = {"n_steps": 4} if base == "integrated_gradients" else None
    sg = seewhy.explain(model, inputs, "smoothgrad", target=1, base=base, n_samples=1, noise=0.0,
                        base_params=params).attributions
    direct = seewhy.explain(model, inputs, base, target=1, **(params or {})).attributions
    torch.testing.assert_close(sg, direct, rtol=1e-4, atol=1e-6)


def test_smoothgrad_errors(inputs: torch.Tensor) -> None:
    model = build("tiny_cnn")
    with pytest.raises(ValueError, match="variant"):
        seewhy.explain(model, inputs, "smoothgrad", variant="smoothgrad_cubed")
    with pytest.raises(ValueError, match="unknown method"):
        seewhy.explain(model, inputs, "smoothgrad", base="salency")


def test_heatmap_conventions(inputs: torch.Tensor) -> None:
    model = build("tiny_cnn")
    sal = seewhy.explain(model, inputs, "saliency")
    assert sal.heatmap_steps()["reduce"] == "max_abs"
    expected = sal.attributions.abs().amax(1, keepdim=True)
    expected = expected / expected.flatten(1).amax(1).view(-1, 1, 1, 1)
    torch.testing.assert_close(sal.heatmap(normalize="max"), expected)
    ig = seewhy.explain(model, inputs, "integrated_gradients", n_steps=4)
    assert ig.heatmap_steps()["reduce"] == "sum"
    signed = ig.heatmap(sign="all")
    assert float(signed.min()) >= 0 and float(signed.max()) <= 1


def test_pretrained_efficientnet_with_functional_relu6() -> None:
    import warnings

    from seewhy import zoo
    from seewhy.images import bundled_image

    model = zoo.load("efficientnet_lite0")
    x = zoo.get_spec("efficientnet_lite0").preprocess(bundled_image("chelsea"))[None]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every F.relu6 call is intercepted: no "no ReLU" warning
        gb = seewhy.explain(model, x, "guided_backprop")
    sal = seewhy.explain(model, x, "saliency")
    assert gb.targets.item() in (281, 282, 285)
    assert not torch.allclose(gb.attributions, sal.attributions)
    dc = seewhy.explain(model, x, "deconvnet")
    assert not torch.allclose(gb.attributions, dc.attributions)
    gaps = []
    for n in (8, 24):
        ig = seewhy.explain(model, x, "integrated_gradients", n_steps=n)
        gaps.append(ig.extras["completeness_gap"].abs().item())
    delta = (ig.scores - ig.extras["baseline_scores"]).abs().item()
    # measured here: |gap| 10.1 at 8 steps, 1.0 at 24, for f(x) - f(0) = 9.2
    assert gaps[1] < gaps[0] and gaps[1] < 0.15 * delta, (gaps, delta)
