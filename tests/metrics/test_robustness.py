"""Max- and avg-sensitivity: zero for explanations that cannot move, positive for saliency on a nonlinear model,
seeded and batch-invariant, any kind of explanation method, model left as it was."""

from __future__ import annotations

import pytest
import torch
from conftest import build
from torch import nn

from seewhy import get_method
from seewhy.hooks import count_hooks
from seewhy.metrics import METRICS
from seewhy.metrics.robustness import avg_sensitivity, max_sensitivity, sensitivities


def constant(model: nn.Module, x: torch.Tensor, target) -> torch.Tensor:
    return torch.ones(x.shape[0], 1, 4, 4)


def test_constant_method_has_zero_sensitivity(inputs):
    model = build("tiny_cnn")
    for fn in (max_sensitivity, avg_sensitivity):
        assert torch.equal(fn(model, inputs, None, "top1", method=constant, n_samples=3, seed=0), torch.zeros(3))


def test_gradient_of_a_linear_model_does_not_move(inputs):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 4))
    out = max_sensitivity(model, inputs, None, "top1", method="saliency", n_samples=3, seed=0)
    assert out.abs().max() < 1e-6


def test_saliency_of_a_nonlinear_model_moves(inputs):
    model = build("tiny_cnn")
    attr = get_method("saliency")(model, inputs, "top1")
    rel = sensitivities(model, inputs, attr, "top1", method="saliency", n_samples=4, radius=0.1, seed=0)
    assert rel.shape == (3, 4) and torch.all(rel > 1e-3)
    mx = max_sensitivity(model, inputs, attr, "top1", method="saliency", n_samples=4, radius=0.1, seed=0)
    av = avg_sensitivity(model, inputs, attr, "top1", method="saliency", n_samples=4, radius=0.1, seed=0)
    torch.testing.assert_close(mx, rel.amax(1))
    torch.testing.assert_close(av, rel.mean(1))
    assert torch.all(mx >= av)
    assert torch.equal(max_sensitivity(model, inputs, attr, "top1", method="saliency", n_samples=2, radius=0.0),
                       torch.zeros(3))
    # a larger radius moves the explanation more
    far = avg_sensitivity(model, inputs, attr, "top1", method="saliency", n_samples=4, radius=1.0, seed=0)
    assert torch.all(far > av)


def test_normalisation_is_relative_to_the_original_explanation(inputs):
    # the identity "explanation": ||Phi(y) - Phi(x)|| / ||Phi(x)|| = ||U|| / ||x|| with U ~ U(-r, r)^n,
    # about r sqrt(n / 3) / ||x||
    model = build("tiny_cnn")
    rel = sensitivities(model, inputs, None, 0, method=lambda m, x, t: x.clone(), radius=0.05, n_samples=3, seed=0)
    expected = 0.05 * (inputs[0].numel() / 3) ** 0.5 / inputs.flatten(1).norm(dim=1)
    assert torch.all((rel / expected[:, None] - 1).abs() < 0.05)


def test_method_forms_agree(inputs):
    model = build("tiny_cnn")
    kw = dict(n_samples=2, seed=3)
    by_name = avg_sensitivity(model, inputs, None, 2, method="integrated_gradients", method_params={"n_steps": 4}, **kw)
    method = get_method("integrated_gradients", n_steps=4)
    by_object = avg_sensitivity(model, inputs, None, 2, method=method, **kw)
    by_callable = avg_sensitivity(model, inputs, None, 2, method=lambda m, x, t: method(m, x, t), **kw)
    torch.testing.assert_close(by_name, by_object)
    torch.testing.assert_close(by_name, by_callable)
    with pytest.raises(ValueError, match="method_params"):
        avg_sensitivity(model, inputs, None, 2, method=method, method_params={"n_steps": 2})


def test_layer_maps_and_callable_targets(inputs):
    model = build("tiny_cnn")
    out = max_sensitivity(model, inputs, None, "top1", method="gradcam", n_samples=2, seed=0)
    assert out.shape == (3,) and torch.isfinite(out).all()
    score = avg_sensitivity(model, inputs, None, lambda o: o[:, 1] - o[:, 0], method="saliency", n_samples=2, seed=0)
    assert score.shape == (3,) and torch.all(score > 0)


@pytest.mark.parametrize("name", ["max_sensitivity", "avg_sensitivity"])
def test_batch_size_and_seed_invariance(name, inputs):
    model = build("tiny_resnet")
    fn = METRICS[name].fn
    assert METRICS[name].needs == ("method",) and METRICS[name].cost({"n_samples": 4}) == 4
    ref = fn(model, inputs, None, "top1", method="saliency", n_samples=4, radius=0.1, seed=11)
    for bs in (1, 3):
        out = fn(model, inputs, None, "top1", method="saliency", n_samples=4, radius=0.1, seed=11, batch_size=bs)
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4)
    first = fn(model, inputs[:1], None, "top1", method="saliency", n_samples=4, radius=0.1, seed=11)
    torch.testing.assert_close(first, ref[:1], atol=1e-5, rtol=1e-4)
    other = fn(model, inputs, None, "top1", method="saliency", n_samples=4, radius=0.1, seed=12)
    assert not torch.equal(other, ref)


def test_model_is_left_as_it_was(inputs):
    model = build("tiny_resnet")
    model.train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    max_sensitivity(model, inputs, None, "top1", method="saliency", n_samples=2, seed=0)
    assert all(m.training for m in model.modules())
    assert all(p.requires_grad for p in model.parameters())
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert count_hooks(model) == 0


def test_clear_errors(inputs):
    model = build("tiny_cnn")
    with pytest.raises(ValueError, match="radius"):
        max_sensitivity(model, inputs, None, method="saliency", radius=-1)
    with pytest.raises(ValueError, match="n_samples"):
        max_sensitivity(model, inputs, None, method="saliency", n_samples=0)
    with pytest.raises(ValueError, match="unknown method"):
        max_sensitivity(model, inputs, None, method="no_such_method")
    with pytest.raises(TypeError, match="method must be"):
        max_sensitivity(model, inputs, None, method=3)
    with pytest.raises(ValueError, match="same method"):
        max_sensitivity(model, inputs, torch.ones(3, 1, 4, 4), method="saliency", n_samples=1)
    with pytest.raises(ValueError, match="do not fit inputs"):
        max_sensitivity(model, inputs, torch.ones(2, 3, 32, 32), method="saliency", n_samples=1)


def test_a_stochastic_method_gets_the_metric_seed(inputs: torch.Tensor) -> None:
    model = build("tiny_cnn")
    params = {"n_samples": 2}
    runs = [max_sensitivity(model, inputs, None, target=0, method="smoothgrad", method_params=params, n_samples=2,
                            seed=5) for _ in range(2)]
    torch.testing.assert_close(runs[0], runs[1], rtol=0, atol=0)
