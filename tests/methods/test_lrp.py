"""LRP: every rule against an independent float64 matrix-form reference, conservation, canonizers, the ledger,
and the pretrained EfficientNet-Lite0."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import seewhy
from seewhy.hooks import count_hooks
from seewhy.methods.lrp import (
    LRP,
    LRP0,
    AlphaBeta,
    Composite,
    Epsilon,
    Flat,
    Gamma,
    MergeBatchNorm,
    WSquare,
    ZBox,
    ZPlus,
    canonized,
    detect_batchnorm_pairs,
    ledger_table,
)
from seewhy.targets import make_target

D = torch.float64


# --- the float64 matrix-form reference -------------------------------------------------------------------


def _dense(layer: nn.Module, shape: tuple[int, ...], weight: torch.Tensor | None = None) -> torch.Tensor:
    """The matrix M (J, I) of the bias-free layer on inputs of ``shape`` (one sample), column by column."""
    w = layer.weight if weight is None else weight
    n = int(torch.tensor(shape).prod())
    basis = torch.eye(n, dtype=D).view(n, *shape)
    if isinstance(layer, nn.Linear):
        cols = basis @ w.T
    else:
        cols = torch.nn.functional.conv2d(basis, w, None, layer.stride, layer.padding, layer.dilation, layer.groups)
    return cols.reshape(n, -1).T


def _reference(rule: str, m: torch.Tensor, ones: torch.Tensor, x: torch.Tensor, b: torch.Tensor,
               r: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, eps: float = 0.0, gamma: float = 0.25,
               alpha: float = 1.0, beta: float = 0.0, bias: bool = True) -> torch.Tensor:
    """R_i = sum_j q_ij / sum_i' q_i'j R_j with q from the LRP papers; m: (J, I), x: (I,), b, r: (J,).
    Outputs without relevance (r_j = 0, e.g. where z_j = 0) contribute nothing, even where the denominator is 0."""
    z = m * x[None, :]  # z_ij as [j, i]
    keep = (r != 0)[:, None]

    def share(q: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
        return torch.where(keep, q / den[:, None] * r[:, None], 0.0).sum(0)

    if rule in ("lrp0", "epsilon"):
        den = z.sum(1) + b
        den = den + eps * torch.where(den >= 0, 1.0, -1.0).to(D)
        return share(z, den)
    if rule == "gamma":
        pos = (z.sum(1) + b >= 0)[:, None]
        q = z + gamma * torch.where(pos, z.clamp(min=0), z.clamp(max=0))
        den = q.sum(1) + b + gamma * torch.where(pos[:, 0], b.clamp(min=0), b.clamp(max=0))
        den = den + eps * torch.where(den >= 0, 1.0, -1.0).to(D)
        return share(q, den)
    if rule == "alpha_beta":
        zp, zn = z.clamp(min=0), z.clamp(max=0)
        dp = zp.sum(1) + (b.clamp(min=0) if bias else 0) + eps
        dn = zn.sum(1) + (b.clamp(max=0) if bias else 0) - eps
        dp, dn = (torch.where(d == 0, torch.inf, d) for d in (dp, dn))  # no contribution of that sign: share 0
        return alpha * (zp / dp[:, None] * r[:, None]).sum(0) - beta * (zn / dn[:, None] * r[:, None]).sum(0)
    if rule == "flat":
        return share(ones, ones.sum(1))
    if rule == "wsquare":
        q = m * m
        return share(q, q.sum(1))
    if rule == "zbox":
        q = z - lo[None, :] * m.clamp(min=0) - hi[None, :] * m.clamp(max=0)
        return share(q, q.sum(1))
    raise AssertionError(rule)


def _ours(layer: nn.Module, rule, x: torch.Tensor, r_out: torch.Tensor) -> torch.Tensor:
    """Relevance at the input of ``layer`` alone, with ``r_out`` injected as the output relevance."""
    with torch.no_grad():
        z = layer(x)
    c = (r_out / z).nan_to_num(nan=0.0, posinf=0.0, neginf=0.0).detach()  # R = z * c: none where z = 0
    composite = Composite(first=rule) if rule.input_rule else Composite(types=[((nn.Linear, nn.Conv2d), rule)])
    method = LRP(composite=composite, canonizers=None)
    target = make_target(lambda out: (out * c).flatten(1).sum(1), x.shape[0])
    return method.propagate(layer, x, target)[0]


LAYERS = {
    "linear": lambda bias: nn.Linear(12, 5, bias=bias),
    "conv": lambda bias: nn.Conv2d(3, 4, 3, stride=2, padding=1, bias=bias),
    "depthwise": lambda bias: nn.Conv2d(4, 4, 3, padding=1, groups=4, bias=bias),
    # asymmetric padding: the transposed layers come from autograd (the fallback)
    "same_even": lambda bias: nn.Conv2d(3, 4, 4, padding="same", bias=bias),
}
SHAPES = {"linear": (12,), "conv": (3, 6, 6), "depthwise": (4, 5, 5), "same_even": (3, 5, 5)}
RULES = {
    "lrp0": (LRP0(), {}),
    "epsilon": (Epsilon(0.1), {"eps": 0.1}),
    "gamma": (Gamma(gamma=0.5, epsilon=0.0), {"gamma": 0.5}),
    "alpha1_beta0": (AlphaBeta(1.0, 0.0), {"alpha": 1.0, "beta": 0.0, "eps": 1e-6}),
    "alpha2_beta1": (AlphaBeta(2.0, 1.0), {"alpha": 2.0, "beta": 1.0, "eps": 1e-6}),
    "alpha2_beta1_exact": (AlphaBeta(2.0, 1.0, epsilon=0.0), {"alpha": 2.0, "beta": 1.0}),
    "alpha3_beta2_nobias": (AlphaBeta(3.0, 2.0, bias=False, epsilon=0.1),
                            {"alpha": 3.0, "beta": 2.0, "bias": False, "eps": 0.1}),
    "zplus": (ZPlus(), {"alpha": 1.0, "beta": 0.0, "bias": False, "eps": 1e-6}),
    "zplus_exact": (ZPlus(epsilon=0.0), {"alpha": 1.0, "beta": 0.0, "bias": False}),
    "flat": (Flat(), {}),
    "wsquare": (WSquare(), {}),
    "zbox": (ZBox(low=-2.5, high=2.5, epsilon=0.0), {}),
}


@pytest.mark.filterwarnings("ignore:Using padding='same'")
@pytest.mark.parametrize("inputs", ["signed", "nonneg"])
@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
@pytest.mark.parametrize("kind", sorted(LAYERS))
@pytest.mark.parametrize("name", sorted(RULES))
def test_rule_matches_the_matrix_reference(name: str, kind: str, bias: bool, inputs: str) -> None:
    # signed and non-negative inputs (after a rectifier) take different paths through the rules
    torch.manual_seed(0)
    layer = LAYERS[kind](bias).to(D).eval()
    x = torch.randn(2, *SHAPES[kind], dtype=D).clamp(-2.4, 2.4)
    if inputs == "nonneg":
        x = x.clamp(min=0)
    with torch.no_grad():
        z = layer(x)
    r_out = (torch.rand_like(z) + 0.5) * (z != 0)  # an output that is 0 carries no relevance (R = z * R / z)
    rule, kw = RULES[name]
    got = _ours(layer, rule, x, r_out)
    m = _dense(layer, SHAPES[kind])
    ones = _dense(layer, SHAPES[kind], torch.ones_like(layer.weight))
    b = layer.bias if bias else torch.zeros(layer.weight.shape[0], dtype=D)
    b = b.detach().repeat_interleave(m.shape[0] // b.shape[0])  # per output unit, channel-major
    ref_rule = "alpha_beta" if name.startswith(("alpha", "zplus")) else name
    lo = torch.full((m.shape[1],), -2.5, dtype=D)
    for i in range(x.shape[0]):
        ref = _reference(ref_rule, m, ones, x[i].flatten(), b, r_out[i].flatten(), lo, -lo, **kw)
        torch.testing.assert_close(got[i].flatten(), ref, rtol=1e-9, atol=1e-10)


def test_alpha_beta_is_stable_where_one_side_is_tiny() -> None:
    # contributions (1, 1, -1e-9): z- = -1e-9, so R * beta / z- is ~1e9; in float32 the shares must still be
    # (alpha / 2, alpha / 2, -beta) R (a W / |W| decomposition would cancel catastrophically here)
    layer = nn.Linear(3, 1, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, 1.0, 1e-6]]))
    x = torch.tensor([[1.0, 1.0, -1e-3]])
    got = _ours(layer, AlphaBeta(2.0, 1.0, bias=False, epsilon=0.0), x, torch.ones(1, 1))
    torch.testing.assert_close(got, torch.tensor([[1.0, 1.0, -1.0]]), rtol=1e-4, atol=1e-5)
    # with the default stabilizer 1e-6, z- - eps is dominated by eps: the negative share is 1e-9 / (1e-9 + 1e-6)
    got = _ours(layer, AlphaBeta(2.0, 1.0, bias=False), x, torch.ones(1, 1))
    torch.testing.assert_close(got, torch.tensor([[1.0, 1.0, -1e-9 / (1e-9 + 1e-6)]]), rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("rule", [AlphaBeta(2.0, 1.0), ZPlus(), Gamma(), Epsilon(0.1)], ids=type)
def test_linear_rules_on_inputs_with_extra_dimensions(rule) -> None:
    # a linear layer on (B, T, features), as in token models, gives each row what the row alone would get
    torch.manual_seed(6)
    layer = nn.Linear(5, 3).to(D)
    x = torch.randn(2, 4, 5, dtype=D)
    r = torch.rand(2, 4, 3, dtype=D) + 0.5
    got = _ours(layer, rule, x, r)
    rows = _ours(layer, rule, x.reshape(8, 5), r.reshape(8, 3))
    torch.testing.assert_close(got.reshape(8, 5), rows, rtol=1e-9, atol=1e-12)


def test_zplus_equals_alpha1_beta0_without_biases() -> None:
    torch.manual_seed(1)
    layer = nn.Conv2d(3, 5, 3, padding=1).to(D).eval()
    x = torch.randn(2, 3, 6, 6, dtype=D)
    r = torch.rand(2, 5, 6, 6, dtype=D)
    torch.testing.assert_close(_ours(layer, ZPlus(), x, r), _ours(layer, AlphaBeta(1.0, 0.0, bias=False), x, r))


# --- networks: input x gradient, conservation ---------------------------------------------------------------


class _Plain(nn.Module):
    """Bias-free: conv-ReLU(inplace)-conv-relu6 (saturating)-maxpool-conv-ReLU-avgpool-flatten-linear."""

    def __init__(self, saturate: bool = True) -> None:
        super().__init__()
        self.saturate = saturate
        self.c1 = nn.Conv2d(3, 6, 3, padding=1, bias=False)
        self.c2 = nn.Conv2d(6, 6, 3, padding=1, bias=False)
        self.c3 = nn.Conv2d(6, 8, 3, padding=1, bias=False)
        self.fc = nn.Linear(8 * 4 * 4, 5, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.relu(self.c1(x), inplace=True)
        x = nn.functional.relu6(self.c2(x) * 20) if self.saturate else torch.relu(self.c2(x))
        x = nn.functional.max_pool2d(x, 2)
        x = nn.functional.adaptive_avg_pool2d(torch.relu(self.c3(x)), 4)
        return self.fc(x.flatten(1))


class _Res(nn.Module):
    """Bias-free residual network with in-place ReLU modules and ``out += shortcut``."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, padding=1, bias=False)
        self.a = nn.Conv2d(6, 6, 3, padding=1, bias=False)
        self.b = nn.Conv2d(6, 6, 1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.fc = nn.Linear(6, 4, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.stem(x))
        out = self.b(self.relu(self.a(x)))
        out += x
        return self.fc(self.relu(out).mean(dim=(2, 3)))


def _net(cls: type[nn.Module], **kw) -> nn.Module:
    torch.manual_seed(3)
    return cls(**kw).to(D).eval()


@pytest.mark.parametrize("cls", [_Plain, _Res])
def test_lrp0_on_a_bias_free_relu_network_is_input_x_gradient(cls: type[nn.Module]) -> None:
    # (a saturating relu6 passes relevance through where the plain gradient is 0: not compared here)
    model = _net(cls, saturate=False) if cls is _Plain else _net(cls)
    x = torch.randn(2, 3, 8, 8, dtype=D)
    ixg = seewhy.get_method("input_x_gradient")(model, x, 1)
    for comp in ("epsilon", Composite()):
        a = LRP(composite=comp, epsilon=1e-300, canonizers=None)(model, x, 1)
        torch.testing.assert_close(a, ixg, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("composite", ["epsilon", "epsilon_plus", "epsilon_alpha2_beta1"])
def test_relevance_is_conserved_layer_by_layer(composite: str) -> None:
    model = _net(_Plain)
    x = torch.randn(3, 3, 8, 8, dtype=D)
    exp = seewhy.explain(model, x, "lrp", target=2, composite=composite, epsilon=1e-300, canonizers=None)
    book = exp.extras["relevance_ledger"]
    assert list(book) == ["output", "fc", "c3", "c2", "c1", "input"]
    for name, r in book.items():
        torch.testing.assert_close(r, book["output"], rtol=1e-5, atol=1e-8, msg=f"leak at {name}")
    # relu6 saturates here (inputs x20): relevance passes through it, unlike the plain gradient
    ixg = seewhy.get_method("input_x_gradient")(model, x, 2).flatten(1).sum(1)
    assert not torch.allclose(ixg, book["output"], rtol=1e-3)


def test_residual_additions_conserve_relevance() -> None:
    model = _net(_Res)
    x = torch.randn(2, 3, 8, 8, dtype=D)
    exp = seewhy.explain(model, x, "lrp", target=0, composite="epsilon", epsilon=1e-300, canonizers=None)
    book = exp.extras["relevance_ledger"]
    torch.testing.assert_close(book["input"], book["output"], rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(book["stem"], book["output"], rtol=1e-5, atol=1e-8)
    rows = ledger_table(exp)
    assert rows[0]["layer"] == "output" and rows[-1]["layer"] == "input"
    assert rows[-1]["ratio"] == pytest.approx([1.0, 1.0], rel=1e-5)


class _Convs(nn.Module):
    """Bias-free ReLU network over unusual convolution arguments: odd sizes with stride 2 (output padding in the
    transposed convolution), dilation, padding="same" (odd and even kernels), conv1d and conv3d."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, stride=2, padding=1, bias=False)
        self.b = nn.Conv2d(4, 4, 3, padding="same", dilation=2, bias=False)
        self.c = nn.Conv2d(4, 4, 4, padding="same", bias=False)  # asymmetric padding: the autograd fallback
        self.d = nn.Conv2d(4, 4, 2, stride=2, groups=2, bias=False)
        self.e = nn.Conv1d(4, 3, 3, stride=2, bias=False)
        self.f = nn.Conv3d(1, 2, (1, 2, 2), bias=False)
        self.fc = nn.Linear(2 * 3 * 2, 3, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.a(x))
        x = torch.relu(self.b(x))
        x = torch.relu(self.c(x))
        x = torch.relu(self.d(x))  # (B, 4, 2, 2) from a 9x9 input
        y = torch.relu(self.e(x.flatten(2)))  # (B, 3, 1)
        y = torch.relu(self.f(y[:, None, :, :, None].expand(-1, 1, 3, 3, 3)))  # (B, 2, 3, 2, 2)
        return self.fc(y.flatten(1)[:, :12])


@pytest.mark.filterwarnings("ignore:Using padding='same'")
def test_transposed_layers_match_autograd_for_unusual_convolutions() -> None:
    model = _net(_Convs)
    x = torch.randn(2, 3, 9, 9, dtype=D)
    ixg = seewhy.get_method("input_x_gradient")(model, x, 1)
    a = LRP(composite="epsilon", epsilon=1e-300, canonizers=None)(model, x, 1)
    torch.testing.assert_close(a, ixg, rtol=1e-9, atol=1e-12)


class _BnChain(nn.Module):
    """conv -> BatchNorm -> relu6; with ``split``, an identity op between the layers keeps LRP from folding the
    pass-through BatchNorm and relu6 into the convolution's node (the unfolded path must give the same result)."""

    def __init__(self, split: bool) -> None:
        super().__init__()
        self.split = split
        self.conv = nn.Conv2d(3, 5, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(5)
        self.conv2 = nn.Conv2d(5, 4, 3, bias=False)
        self.fc = nn.Linear(4 * 6 * 6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.conv(x)
        y = self.bn(z * 1.0 if self.split else z)
        a = nn.functional.relu6(y * 1.0 if self.split else y)
        return self.fc(torch.relu(self.conv2(a)).flatten(1))


@pytest.mark.parametrize("composite", ["epsilon_gamma_box", "epsilon_alpha2_beta1", "epsilon"])
def test_folded_pass_through_ops_equal_the_unfolded_path(composite: str) -> None:
    torch.manual_seed(4)
    folded, split = _with_stats(_BnChain(False)).to(D), _with_stats(_BnChain(True)).to(D)
    split.load_state_dict(folded.state_dict())
    x = torch.randn(2, 3, 8, 8, dtype=D) * 4  # some units saturate the relu6
    kw = {"composite": composite, "canonizers": None, "batchnorm": "pass", "low": -12.0, "high": 12.0}
    a = seewhy.explain(folded, x, "lrp", target=0, **kw)
    b = seewhy.explain(split, x, "lrp", target=0, **kw)
    torch.testing.assert_close(a.attributions, b.attributions, rtol=1e-9, atol=1e-12)
    for name in ("bn", "conv", "input"):  # the folded BatchNorm still has its ledger entry
        torch.testing.assert_close(a.extras["relevance_ledger"][name], b.extras["relevance_ledger"][name])


class _InPlace(nn.Module):
    def __init__(self, through_view: bool) -> None:
        super().__init__()
        self.through_view = through_view
        self.a = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.b = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.fc = nn.Linear(4, 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = nn.functional.relu(self.a(x), inplace=True)
        out = self.b(h)
        if self.through_view:
            out[:, :2] += h[:, :2]
        else:
            out += h
            out.mul_(0.5)
        return self.fc(nn.functional.relu(out, inplace=True).mean(dim=(2, 3)))


def test_in_place_ops_on_layer_outputs() -> None:
    model = _net(_InPlace, through_view=False)
    x = torch.randn(2, 3, 6, 6, dtype=D)
    ixg = seewhy.get_method("input_x_gradient")(model, x, 1)
    torch.testing.assert_close(LRP(composite="epsilon", epsilon=1e-300, canonizers=None)(model, x, 1), ixg,
                               rtol=1e-9, atol=1e-12)
    model = _net(_InPlace, through_view=True)
    with pytest.raises(RuntimeError, match="in place through a view"):
        LRP(composite="epsilon", canonizers=None)(model, x, 1)
    assert count_hooks(model) == 0


class _Viewing(nn.Module):
    """Flattens its feature map with .view(), which needs the standard (not channels_last) layout."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, bias=False)
        self.fc = nn.Linear(4 * 4 * 4, 3, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv(x))
        return self.fc(h.view(h.shape[0], -1))


def test_a_model_that_views_its_feature_maps_still_works() -> None:
    model = _net(_Viewing)
    x = torch.randn(2, 3, 6, 6, dtype=D)
    a = LRP(composite="epsilon", epsilon=1e-300, canonizers=None)(model, x, 2)
    torch.testing.assert_close(a, seewhy.get_method("input_x_gradient")(model, x, 2), rtol=1e-9, atol=1e-12)
    assert a.is_contiguous()
    b = LRP(composite="epsilon_plus_flat", canonizers=None)(model, x, 2)  # input rule: the result is the gradient
    assert b.is_contiguous() and torch.isfinite(b).all()
    from seewhy.methods.lrp.method import _STANDARD_LAYOUT

    assert _STANDARD_LAYOUT.get(model)  # remembered: later calls skip the channels_last try


def test_input_rule_elsewhere_than_the_first_layer_is_an_error() -> None:
    model = _net(_Plain)
    with pytest.raises(ValueError, match="first layer only"):
        LRP(composite=Composite(names={"c2": Flat()}), canonizers=None)(model, torch.randn(1, 3, 8, 8, dtype=D), 0)


# --- canonizers -----------------------------------------------------------------------------------------------


def _with_stats(model: nn.Module) -> nn.Module:
    g = torch.Generator().manual_seed(5)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.3)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.randn(m.num_features, generator=g))
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.2)
    return model.eval()


def _bn_head() -> nn.Module:
    torch.manual_seed(2)
    return _with_stats(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                                     nn.Linear(4 * 6 * 6, 8), nn.ReLU(), nn.BatchNorm1d(8), nn.Linear(8, 3)))


def test_merge_batchnorm_detection_outputs_and_bit_identical_parameters() -> None:
    from conftest import build

    for model, expected in ((_with_stats(build("tiny_resnet")), ("stem.0", "stem.1")), (_bn_head(), ("6", "7"))):
        x = torch.randn(2, 3, 32, 32) if expected[0] == "stem.0" else torch.randn(2, 3, 8, 8)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        ref = model(x)
        pairs = detect_batchnorm_pairs(model, x)
        assert expected in pairs
        with canonized(model, x, [MergeBatchNorm()]):
            got = model(x)
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
        for k, v in model.state_dict().items():
            assert torch.equal(v, before[k]) and v.dtype == before[k].dtype, k
        assert count_hooks(model) == 0


def test_resnet_pairs_and_lrp_runs_with_and_without_canonizer() -> None:
    from conftest import build

    model = _with_stats(build("tiny_resnet"))
    x = torch.randn(2, 3, 32, 32)
    pairs = detect_batchnorm_pairs(model, x)
    assert ("layer1.conv2", "layer1.bn2") in pairs and ("layer2.shortcut.0", "layer2.shortcut.1") in pairs
    for canon in ("auto", None):
        exp = seewhy.explain(model, x, "lrp", target=1, canonizers=canon)
        assert torch.isfinite(exp.attributions).all() and exp.attributions.abs().sum() > 0


def test_smoothgrad_over_lrp() -> None:
    from conftest import build

    model = build("tiny_functional_cnn")
    x = torch.randn(2, 3, 32, 32)
    a = seewhy.get_method("smoothgrad", base="lrp", n_samples=3, seed=0)(model, x, 1)
    assert a.shape == x.shape and torch.isfinite(a).all()


# --- the pretrained EfficientNet-Lite0 --------------------------------------------------------------------


@pytest.fixture(scope="module")
def lite0():
    from seewhy import zoo
    from seewhy.images import bundled_image

    try:
        model = zoo.load("efficientnet_lite0")
    except Exception as err:  # pragma: no cover - weights not installed
        pytest.skip(f"efficientnet_lite0 weights unavailable: {err}")
    x = zoo.get_spec("efficientnet_lite0").preprocess(bundled_image("chelsea"))[None]
    return model, x


@pytest.mark.parametrize("composite", ["auto", "epsilon_plus_flat", "epsilon_alpha2_beta1_flat", "epsilon"])
def test_efficientnet_relevance_stays_near_the_class_score(lite0, composite: str) -> None:
    model, x = lite0
    exp = seewhy.explain(model, x, "lrp", target=282, composite=composite)
    score = float(exp.scores[0])
    book = exp.extras["relevance_ledger"]
    assert float(book["output"][0]) == pytest.approx(score, rel=1e-4)
    r_in = float(book["input"][0])
    assert all(torch.isfinite(v).all() for v in book.values())
    assert max(abs(float(v[0])) for v in book.values()) <= 10 * abs(score)  # no blow-up at any layer
    if composite == "auto":  # gamma + box, BatchNorms unmerged with the pass rule
        assert 0.1 * abs(score) <= r_in <= 10 * abs(score), (r_in, score)
    assert "_bn1" in book  # canonizers="auto" keeps this model's BatchNorms (pass rule): its zoo spec says so
    assert "_fc" in book and "_conv_stem" in book and "_blocks.15._project_conv" in book
    assert len(ledger_table(exp)) == len(book)
    # the map is not flat noise: the top decile of |relevance| holds much more than a tenth of it
    a = exp.attributions.sum(1).abs().flatten()
    assert a.topk(a.numel() // 10).values.sum() > 0.2 * a.sum()
