"""Objectives: values against direct formulas, the algebra, diversity's maximum, parsing."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from seewhy.featvis import objectives as O
from seewhy.featvis.objectives import Activations


@pytest.fixture
def acts() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"conv": torch.randn(3, 5, 6, 7, generator=g), "fc": torch.randn(3, 4, generator=g),
            "logits": torch.randn(3, 10, generator=g)}


def test_channel_neuron_layer_l2_class_values(acts):
    a = acts["conv"]
    assert torch.allclose(O.channel("conv", 2)(acts), a[:, 2].mean((1, 2)))
    assert torch.allclose(O.channel("conv", -1)(acts), a[:, 4].mean((1, 2)))
    # the centre by default: (H // 2, W // 2) = (3, 3)
    assert torch.equal(O.neuron("conv", 1)(acts), a[:, 1, 3, 3])
    assert torch.equal(O.neuron("conv", 1, y=0, x=-1)(acts), a[:, 1, 0, 6])
    assert torch.equal(O.neuron("fc", 3)(acts), acts["fc"][:, 3])
    assert torch.allclose(O.layer_l2("conv")(acts), a.pow(2).mean((1, 2, 3)))
    z = acts["logits"]
    assert torch.equal(O.class_logit(7)(acts), z[:, 7])
    assert torch.allclose(O.class_probability(7)(acts), z.softmax(1)[:, 7])


def test_direction_matches_channel_for_a_one_hot_vector_and_the_cosine_formula(acts):
    a = acts["conv"]
    v = torch.zeros(5)
    v[2] = 1.0
    assert torch.allclose(O.direction("conv", v)(acts), O.channel("conv", 2)(acts), atol=1e-6)
    w = torch.randn(5, generator=torch.Generator().manual_seed(3))
    flat = a.reshape(3, 5, -1).double()
    dot = torch.einsum("bcp,c->bp", flat, w.double())
    cos = dot / (flat.norm(dim=1) + 1e-4) / (w.double().norm() + 1e-4)
    expected = (dot * cos.clamp_min(0.1) ** 2).mean(1)
    assert torch.allclose(O.direction("conv", w, cosine_power=2)(acts).double(), expected, atol=1e-5)
    # one direction per image
    per = torch.stack([v, -v, w])
    got = O.direction("conv", per)(acts)
    assert torch.allclose(got[0], a[0, 2].mean()) and torch.allclose(got[1], -a[1, 2].mean(), atol=1e-6)
    with pytest.raises(ValueError, match="4 directions for a batch of 3"):
        O.direction("conv", torch.ones(4, 5))(acts)
    with pytest.raises(ValueError, match="6 entries but layer 'conv' has 5 channels"):
        O.direction("conv", torch.ones(6))(acts)


def test_diversity_is_the_mean_pairwise_gram_similarity_and_maximal_for_identical_images(acts):
    same = {"conv": acts["conv"][:1].expand(4, -1, -1, -1)}
    assert O.diversity("conv")(same).item() == pytest.approx(1.0, abs=1e-6)
    a = acts["conv"]
    grams = [F.normalize((x.reshape(5, -1) @ x.reshape(5, -1).T).flatten(), dim=0) for x in a]
    pairs = [float(grams[i] @ grams[j]) for i in range(3) for j in range(3) if i != j]
    value = O.diversity("conv")(acts).item()
    assert value == pytest.approx(sum(pairs) / len(pairs), abs=1e-6)
    assert value < 1.0
    assert O.diversity("conv")({"conv": a[:1]}).item() == 0.0


def test_algebra(acts):
    a, b = O.channel("conv", 0), O.neuron("conv", 1)
    va, vb = a(acts), b(acts)
    assert torch.allclose((a + b)(acts), va + vb)
    assert torch.allclose((a - 2 * b)(acts), va - 2 * vb)
    assert torch.allclose((b * 3 - a / 2)(acts), 3 * vb - va / 2)
    assert torch.allclose((-a)(acts), -va)
    assert torch.allclose(sum([a, b])(acts), va + vb)
    assert torch.allclose((1 - a)(acts), 1 - va)
    assert (a - 10 * O.diversity("conv")).layers == ("conv",)
    assert (a + O.class_logit(1)).layers == ("conv", "logits")
    assert (a - 2 * b).name == "channel(conv, 0) - 2 * neuron(conv, 1)"
    with pytest.raises(TypeError, match="only be multiplied or divided by a number"):
        a * b  # noqa: B018
    with pytest.raises(TypeError, match="only be multiplied or divided by a number"):
        a / b  # noqa: B018
    with pytest.raises(ZeroDivisionError):
        a / 0  # noqa: B018


def test_a_callable_is_an_objective_and_layers_are_discovered_later(acts):
    obj = O.as_objective(lambda d: d["fc"][:, 0])
    assert obj.discover and obj.layers == ()
    assert torch.equal(obj(acts), acts["fc"][:, 0])
    combined = obj + O.channel("conv", 0)
    assert combined.discover

    def f(d):
        return d["fc"].sum(1)

    f.layers = ("fc",)
    declared = O.as_objective(f)
    assert not declared.discover and declared.layers == ("fc",)


def test_errors_name_the_fix(acts):
    with pytest.raises(ValueError, match="channel 9 is out of range for layer 'conv' with 5 channels"):
        O.channel("conv", 9)(acts)
    with pytest.raises(ValueError, match="outside layer 'conv'"):
        O.neuron("conv", 0, y=10, x=0)(acts)
    with pytest.raises(ValueError, match="class 12 is out of range for a model with 10 outputs"):
        O.class_logit(12)(acts)
    with pytest.raises(KeyError, match="did not record"):
        O.channel("nope", 0)(Activations(acts))
    with pytest.raises(TypeError, match="layer must be a module name"):
        O.channel(3, 0)
    with pytest.raises(TypeError, match="channel must be an int"):
        O.channel("conv", 1.5)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        O.inversion("conv", torch.full((3, 4, 4), 2.0))
    with pytest.raises(TypeError, match="an objective must be"):
        O.as_objective(3)


def test_parse_spec_strings():
    assert O.parse("channel:_blocks.9:12").name == "channel(_blocks.9, 12)"
    assert O.parse("neuron:features.0:3").name == "neuron(features.0, 3)"
    assert O.parse("neuron:features.0:3:1:2").name == "neuron(features.0, 3, y=1, x=2)"
    assert O.parse("class:967").name == "class_logit(967)"
    assert O.parse("class:espresso", classes=["tabby", "espresso"]).name == "class_logit(1)"
    assert O.parse("probability:2").name == "class_probability(2)"
    assert O.parse("deepdream:_blocks.5").name == "layer_l2(_blocks.5)"
    with pytest.raises(ValueError, match="unknown objective 'chanel:x:1'; write one of channel:LAYER:C"):
        O.parse("chanel:x:1")
    with pytest.raises(ValueError, match="cannot read objective 'channel:x:y'"):
        O.parse("channel:x:y")
    with pytest.raises(ValueError, match="no class named 'teapot'"):
        O.parse("class:teapot", classes=["espresso"])
