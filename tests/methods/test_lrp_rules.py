"""LRP rules: the fast form every rule runs (wide / stacked terms, in-place denominator algebra) against the plain
reference form next to it (``Rule.reference``: the rule as its paper writes it, by autograd), in float64."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_lrp import LAYERS, SHAPES  # the same layers the rule tests of test_lrp.py use
from torch import nn

import seewhy
from seewhy.methods.lrp import (
    LRP,
    LRP0,
    AlphaBeta,
    Composite,
    Epsilon,
    Flat,
    Gamma,
    Layer,
    ModifierRule,
    Pass,
    WSquare,
    ZBox,
    ZPlus,
)
from seewhy.targets import make_target

D = torch.float64


class _PlusGamma(ModifierRule):
    """LRP-gamma for x >= 0 by its modifiers: w' = w + gamma w+, b' = b + gamma b+."""

    epsilon = 1e-9

    def weight(self, w: torch.Tensor) -> torch.Tensor:
        return w + 0.5 * w.clamp(min=0)

    def bias(self, b: torch.Tensor) -> torch.Tensor:
        return b + 0.5 * b.clamp(min=0)


RULES = {
    "lrp0": LRP0(),
    "epsilon": Epsilon(0.1),
    "gamma": Gamma(gamma=0.5, epsilon=0.0),
    "gamma_eps": Gamma(gamma=0.25, epsilon=0.01),
    "alpha1_beta0": AlphaBeta(1.0, 0.0),
    "alpha2_beta1": AlphaBeta(2.0, 1.0),
    "alpha2_beta1_exact": AlphaBeta(2.0, 1.0, epsilon=0.0),
    "alpha3_beta2_nobias": AlphaBeta(3.0, 2.0, bias=False, epsilon=0.1),
    "zplus": ZPlus(),
    "zplus_exact": ZPlus(epsilon=0.0),
    "flat": Flat(),
    "wsquare": WSquare(),
    "zbox": ZBox(low=-2.5, high=2.5, epsilon=0.0),
    "zbox_per_sample": ZBox(epsilon=1e-9),
    "modifiers": _PlusGamma(),
}


def _call(layer: nn.Module, x: torch.Tensor) -> Layer:
    """The layer call as the rules see it."""
    if isinstance(layer, nn.Linear):
        def fn(i, w, b):
            return F.linear(i, w, b)
    elif isinstance(layer, nn.Conv2d):
        def fn(i, w, b):
            return F.conv2d(i, w, b, layer.stride, layer.padding, layer.dilation, layer.groups)
    else:  # an unmerged BatchNorm: y = scale * x + shift per channel
        scale = torch.rsqrt(layer.running_var + layer.eps) * layer.weight.detach()
        shift = layer.bias.detach() - layer.running_mean * scale

        def fn(i, w, b):
            return i * w.view(1, -1, 1, 1) + (0 if b is None else b.view(1, -1, 1, 1))

        return Layer(x, scale, shift, fn, lambda: fn(x, scale, shift), elementwise=True)
    w = layer.weight.detach()
    b = None if layer.bias is None else layer.bias.detach()
    return Layer(x, w, b, fn, lambda: fn(x, w, b))


def _fast(layer: nn.Module, rule, x: torch.Tensor, r_out: torch.Tensor) -> torch.Tensor:
    """Relevance at the input of ``layer`` alone through the ``lrp`` method, ``r_out`` injected at its output."""
    with torch.no_grad():
        z = layer(x)
    c = (r_out / z).nan_to_num(nan=0.0, posinf=0.0, neginf=0.0)  # R = z * c: none where z = 0
    kinds = (nn.Linear, nn.Conv2d, nn.BatchNorm2d)
    composite = Composite(first=rule) if rule.input_rule else Composite(types=[(kinds, rule)])
    target = make_target(lambda out: (out * c).flatten(1).sum(1), x.shape[0])
    return LRP(composite=composite, canonizers=None).propagate(layer, x, target)[0]


def _case(kind: str, bias: bool, inputs: str) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    layer = LAYERS[kind](bias).to(D).eval()
    x = torch.randn(2, *SHAPES[kind], dtype=D).clamp(-2.4, 2.4)
    if inputs == "nonneg":
        x = x.clamp(min=0)
    with torch.no_grad():
        z = layer(x)
    return layer, x, (torch.rand_like(z) + 0.5) * (z != 0)  # an output that is 0 carries no relevance


@pytest.mark.filterwarnings("ignore:Using padding='same'")
@pytest.mark.parametrize("inputs", ["signed", "nonneg"])
@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
@pytest.mark.parametrize("kind", sorted(LAYERS))
@pytest.mark.parametrize("name", sorted(RULES))
def test_fast_rule_equals_its_reference_form(name: str, kind: str, bias: bool, inputs: str) -> None:
    # dense layers take the wide / stacked terms, grouped ones the per-sign terms, signed inputs the stacked [x+, x-]
    layer, x, r_out = _case(kind, bias, inputs)
    rule = RULES[name]
    got = _fast(layer, rule, x, r_out)
    ref = rule.reference(_call(layer, x), r_out)
    torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("rule", [Epsilon(1e-3), Gamma(gamma=0.5), AlphaBeta(2.0, 1.0), Pass()], ids=type)
def test_rules_at_an_unmerged_batchnorm_equal_their_reference_form(rule) -> None:
    torch.manual_seed(1)
    bn = nn.BatchNorm2d(4).to(D).eval()
    with torch.no_grad():
        bn.running_mean.normal_(0, 0.3), bn.running_var.uniform_(0.5, 1.5)
        bn.weight.normal_(), bn.bias.normal_(0, 0.2)
    x = torch.randn(2, 4, 3, 3, dtype=D)
    r_out = torch.rand(2, 4, 3, 3, dtype=D) + 0.5
    torch.testing.assert_close(_fast(bn, rule, x, r_out), rule.reference(_call(bn, x), r_out), rtol=1e-9, atol=1e-10)


def test_reference_forms_conserve_relevance_without_biases() -> None:
    # the references are the textbook rules: sum_i R_i = sum_j R_j for the conservative ones on bias-free layers
    layer, x, r_out = _case("conv", False, "signed")
    for rule in (LRP0(), Gamma(gamma=1.0, epsilon=0.0), AlphaBeta(2.0, 1.0, epsilon=0.0), ZPlus(epsilon=0.0), Flat(),
                 WSquare(), ZBox(low=-2.5, high=2.5, epsilon=0.0)):
        r_in = rule.reference(_call(layer, x), r_out)
        torch.testing.assert_close(r_in.flatten(1).sum(1), r_out.flatten(1).sum(1), rtol=1e-9, atol=1e-10,
                                   msg=type(rule).__name__)


def test_a_modifier_rule_conserves_relevance_in_a_network() -> None:
    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, bias=False), nn.ReLU(), nn.Conv2d(6, 4, 3, bias=False), nn.ReLU(),
                          nn.Flatten(), nn.Linear(4 * 4 * 4, 3, bias=False)).to(D).eval()
    x = torch.randn(2, 3, 8, 8, dtype=D)
    composite = Composite(types=[(nn.Conv2d, _PlusGamma()), (nn.Linear, Epsilon(1e-300))])
    exp = seewhy.explain(model, x, "lrp", target=1, composite=composite, canonizers=None)
    torch.testing.assert_close(exp.extras["relevance_input"], exp.extras["relevance_output"], rtol=1e-6, atol=1e-9)
