"""Cost estimates before a run: model evaluations from the methods' hyperparameters, seconds from timed passes."""

from __future__ import annotations

import logging

import pytest
import torch

from seewhy import estimate
from seewhy.core import METHODS, Cost, get_method
from seewhy.hooks import count_hooks
from seewhy.zoo.small import TinyCNN


@pytest.fixture
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return TinyCNN().eval()


def test_cost_arithmetic() -> None:
    c = Cost(forwards=2, backwards=50, lower="n_steps")
    assert c.evaluations() == 52
    assert c.describe() == "50 forward+backward + 2 forward"
    assert c.seconds(0.01, 0.03) == pytest.approx(2 * 0.01 + 50 * 0.03)
    k = Cost(forwards=2, per_channel=1)
    assert k.evaluations() is None and k.seconds(0.01, 0.03) is None
    assert k.evaluations(100) == 102 and k.seconds(0.01, 0.03, 100) == pytest.approx(1.02)
    assert "K" in k.describe() and k.describe(100) == "102 forward"
    tail = Cost(forwards=1, per_channel=1, tail=True, tail_fraction=0.1)
    assert tail.seconds(0.02, 0.05, 1000) == pytest.approx(0.02 + 1000 * 0.1 * 0.02)


def test_every_method_counts_its_evaluations() -> None:
    for name in METHODS:
        cost = get_method(name).cost()
        n = cost.evaluations(64)
        assert n is not None and n >= 1, name
    assert get_method("integrated_gradients", n_steps=8).cost().evaluations() == 10
    assert get_method("lime", n_samples=300).cost().evaluations() == 300
    assert get_method("smoothgrad", n_samples=5).cost().backwards == 5
    assert get_method("smoothgrad", base="integrated_gradients", n_samples=5,
                      base_params={"n_steps": 4}).cost().backwards == 20


def test_time_model_leaves_the_model_alone(model: torch.nn.Module) -> None:
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    t = estimate.time_model(model, torch.randn(2, 3, 32, 32))
    assert t.forward > 0 and t.forward_backward > 0 and t.input_size == (32, 32) and t.batch_size >= 1
    assert model.training and count_hooks(model) == 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.requires_grad for p in model.parameters())


def test_estimates_use_the_timing(model: torch.nn.Module) -> None:
    timing = estimate.Timing(forward=0.01, forward_backward=0.04, batch_size=5, input_size=(32, 32))
    x = torch.randn(1, 3, 32, 32)
    found = estimate.estimate_methods(model, x, ["saliency", "integrated_gradients", "lime"],
                                      {"integrated_gradients": {"n_steps": 8}, "lime": {"n_samples": 100}}, timing)
    by = {e.name: e for e in found}
    assert by["saliency"].seconds == pytest.approx(0.04)
    assert by["integrated_gradients"].evaluations == 10
    assert by["integrated_gradients"].seconds == pytest.approx(2 * 0.01 + 8 * 0.04)
    assert by["lime"].seconds == pytest.approx(100 * 0.01)


def test_layer_channels_are_counted_by_a_dry_forward(model: torch.nn.Module) -> None:
    name, k = estimate.layer_channels(model, torch.randn(1, 3, 32, 32), None)
    out = {}
    handle = model.get_submodule(name).register_forward_hook(lambda m, a, o: out.setdefault("a", o))
    model(torch.randn(1, 3, 32, 32))
    handle.remove()
    assert k == out["a"].shape[1]


def test_a_slow_method_gets_a_warning_with_the_setting_that_lowers_it(model: torch.nn.Module,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="seewhy")
    timing = estimate.Timing(forward=0.13, forward_backward=0.3, batch_size=5, input_size=(224, 224))
    found = estimate.estimate_methods(model, torch.randn(1, 3, 32, 32), ["lime", "saliency"], {}, timing)
    total = estimate.log_estimates(found, images=2)
    assert total == pytest.approx(2 * (1000 * 0.13 + 0.3))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and warnings[0].startswith("lime is estimated at 2 min 10 s per image")
    n = found[0].lighter["n_samples"]
    assert f"--set lime.n_samples={n}" in warnings[0] and n * 0.13 <= 60  # the hint brings it under a minute
