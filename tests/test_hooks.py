from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import build
from torch import nn

from seewhy.hooks import capture, count_hooks, model_state, rectifier_backward


def test_model_state_restores_flags_and_requires_grad_even_on_error() -> None:
    model = build("tiny_resnet")
    model.train()
    model.layer1.eval()
    model.fc.bias.requires_grad_(False)
    flags = {k: m.training for k, m in model.named_modules()}
    grads = {k: p.requires_grad for k, p in model.named_parameters()}
    with pytest.raises(KeyError), model_state(model):
        assert not any(m.training for m in model.modules())
        assert not any(p.requires_grad for p in model.parameters())
        raise KeyError("x")
    assert {k: m.training for k, m in model.named_modules()} == flags
    assert {k: p.requires_grad for k, p in model.named_parameters()} == grads


def test_capture_gives_differentiable_activations_and_removes_hooks() -> None:
    model = build("tiny_cnn")
    x = torch.randn(2, 3, 16, 16)
    with model_state(model), capture({"features.2": model.features[2]}) as acts:
        out = model(x)
        a = acts["features.2"]
        assert a.requires_grad  # frozen model: the captured output was made a graph leaf
        (g,) = torch.autograd.grad(out[:, 0].sum(), a)
    assert g.shape == a.shape
    assert count_hooks(model) == 0
    with pytest.raises(RuntimeError), capture({"fc": model.fc}):
        raise RuntimeError
    assert count_hooks(model) == 0


def test_rectifier_mode_changes_backward_only_and_counts_calls() -> None:
    x = torch.tensor([-1.0, 0.5, 2.0, 7.0], requires_grad=True)
    grad_out = torch.tensor([1.0, -1.0, 1.0, 1.0])

    def rule(grad: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return grad.clamp(min=0) * mask

    with rectifier_backward(rule) as mode:
        y = F.relu6(x)
        z = nn.ReLU()(x)
    assert mode.count == 2
    assert y.tolist() == [0.0, 0.5, 2.0, 6.0] and z.tolist() == [0.0, 0.5, 2.0, 7.0]
    (gy,) = torch.autograd.grad(y, x, grad_out)
    assert gy.tolist() == [0.0, 0.0, 1.0, 0.0]
    (gz,) = torch.autograd.grad(z, x, grad_out)
    assert gz.tolist() == [0.0, 0.0, 1.0, 1.0]
    assert torch._C._len_torch_function_stack() == 0


def test_rectifier_mode_keeps_inplace_semantics() -> None:
    def rule(grad: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return grad * mask

    x = torch.tensor([-1.0, 2.0], requires_grad=True)
    with rectifier_backward(rule):
        h = x * 1
        F.relu_(h)  # result used through the mutated tensor only
    assert h.tolist() == [0.0, 2.0]
    (g,) = torch.autograd.grad(h.sum(), x)
    assert g.tolist() == [0.0, 1.0]


def test_count_hooks_sees_hooks() -> None:
    model = build("tiny_cnn")
    h = model.fc.register_forward_hook(lambda *a: None)
    assert count_hooks(model) == 1
    h.remove()
    assert count_hooks(model) == 0


def test_capture_is_safe_with_a_following_inplace_relu() -> None:
    model = build("tiny_cnn")  # features.0 (conv) is followed by nn.ReLU(inplace=True)
    x = torch.randn(2, 3, 16, 16)
    conv_out = model.features[0](x)
    with torch.no_grad(), capture({"features.0": model.features[0]}) as acts:
        model(x)
    torch.testing.assert_close(acts["features.0"], conv_out.detach())
    assert (acts["features.0"] < 0).any()
    with model_state(model), capture({"features.0": model.features[0]}) as acts:
        out = model(x)
        (g,) = torch.autograd.grad(out[:, 1].sum(), acts["features.0"])
    torch.testing.assert_close(acts["features.0"], conv_out.detach())
    assert (g[conv_out < 0] == 0).all() and g.abs().sum() > 0


def test_model_state_names_a_non_module() -> None:
    with pytest.raises(TypeError, match="must be a torch.nn.Module, got function"):
        with model_state(lambda x: x):
            pass
