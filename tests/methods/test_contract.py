"""The contract every registered method keeps (later methods join automatically)."""

from __future__ import annotations

import pytest
import torch
from conftest import FAST_PARAMS, build, build_protopnet
from torch import nn

import seewhy
from seewhy.core import KINDS
from seewhy.hooks import count_hooks

METHODS = seewhy.list_methods()


def _method(name: str, **extra) -> seewhy.Method:
    return seewhy.get_method(name, **{**FAST_PARAMS.get(name, {}), **extra})


def _model(name: str, model_name: str) -> nn.Module:
    """The model method ``name`` explains: for ``protopnet``, a ProtoPNet on the tiny model's trunk."""
    return build_protopnet(model_name) if name == "protopnet" else build(model_name)


def _snapshot(model: nn.Module) -> tuple[dict, dict, dict]:
    params = {k: v.detach().clone() for k, v in model.state_dict().items()}
    flags = {k: m.training for k, m in model.named_modules()}
    grads = {k: p.requires_grad for k, p in model.named_parameters()}
    return params, flags, grads


def _assert_unchanged(model: nn.Module, snap: tuple[dict, dict, dict]) -> None:
    params, flags, grads = snap
    for k, v in model.state_dict().items():
        assert torch.equal(v, params[k]), f"parameter/buffer {k} changed"
    assert {k: m.training for k, m in model.named_modules()} == flags
    assert {k: p.requires_grad for k, p in model.named_parameters()} == grads
    assert count_hooks(model) == 0
    assert all(p.grad is None for p in model.parameters())
    assert torch._C._len_torch_function_stack() == 0


@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("model_name", ["tiny_cnn", "tiny_functional_cnn", "tiny_resnet", "tiny_vgg"])
def test_shape_finite_and_model_untouched(name: str, model_name: str, inputs: torch.Tensor) -> None:
    model = _model(name, model_name)
    model.train()  # the method must run in eval mode and restore the training flags afterwards
    next(model.parameters()).requires_grad_(False)  # a partly frozen model must stay partly frozen
    snap = _snapshot(model)
    x0 = inputs.clone()
    exp = seewhy.explain(model, inputs, _method(name))
    _assert_unchanged(model, snap)
    assert torch.equal(inputs, x0), "inputs were mutated"
    a = exp.attributions
    assert exp.kind in KINDS, f"{name}: kind {exp.kind!r} is not one of {KINDS}"
    assert exp.kind == _method(name).kind
    assert a.ndim == 4 and a.shape[0] == inputs.shape[0]
    if exp.kind == "pixel":
        assert a.shape == inputs.shape
    assert a.dtype == inputs.dtype and a.device == inputs.device
    assert torch.isfinite(a).all()
    assert a.abs().sum() > 0, "attributions are all zero"
    h = exp.heatmap()
    assert h.shape == (inputs.shape[0], 1, *inputs.shape[-2:])
    assert float(h.min()) >= 0 and float(h.max()) <= 1
    assert exp.targets.shape == (inputs.shape[0],) and exp.scores.shape == (inputs.shape[0],)


@pytest.mark.parametrize("name", METHODS)
def test_batch_invariance_with_per_sample_targets(name: str, inputs: torch.Tensor) -> None:
    model = _model(name, "tiny_resnet")
    targets = [1, 7, 3]
    method = _method(name, batch_size=2) if "batch_size" in _method(name).params else _method(name)
    batch = method(model, inputs, targets)
    for i, t in enumerate(targets):
        alone = method(model, inputs[i : i + 1], t)
        torch.testing.assert_close(batch[i : i + 1], alone, rtol=1e-4, atol=1e-6)


class _Boom(nn.Module):
    """Raises in the middle of the forward pass, after the first ReLU ran."""

    def __init__(self) -> None:
        super().__init__()
        self.net = build("tiny_cnn")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.net.features[:2](x)
        raise RuntimeError("boom")


@pytest.mark.parametrize("name", METHODS)
def test_nothing_left_behind_when_the_model_raises(name: str, inputs: torch.Tensor) -> None:
    model = _Boom()
    if name == "protopnet":
        from seewhy.protopnet import ProtoPNet

        model = ProtoPNet(_Boom(), 10, prototypes_per_class=1, prototype_dim=8, feature_channels=32)
    model.train()
    snap = _snapshot(model)
    with pytest.raises(RuntimeError, match="boom"):
        seewhy.explain(model, inputs, _method(name), target=0)
    _assert_unchanged(model, snap)


@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("context", [torch.no_grad, torch.inference_mode])
def test_works_inside_no_grad_and_inference_mode(name: str, context, inputs: torch.Tensor) -> None:
    model = _model(name, "tiny_functional_cnn")
    expected = _method(name)(model, inputs, 2)
    with context():
        got = _method(name)(model, inputs, 2)
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("name", METHODS)
def test_float64_and_deterministic(name: str, inputs: torch.Tensor) -> None:
    model = _model(name, "tiny_cnn").double()
    x = inputs.double()
    a = _method(name)(model, x, 0)
    b = _method(name)(model, x, 0)
    assert a.dtype == torch.float64
    torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("name", [m for m in METHODS if m != "smoothgrad"])
def test_smoothgrad_wraps_every_method(name: str, inputs: torch.Tensor) -> None:
    """SmoothGrad over any registered method (as Captum's NoiseTunnel): without noise, the mean over copies is the
    method's own result, with its kind and shape."""
    model = _model(name, "tiny_cnn")
    x = inputs[:2]
    direct = _method(name)(model, x, [1, 7])
    sg = seewhy.get_method("smoothgrad", base=name, base_params=FAST_PARAMS.get(name), n_samples=2, noise=0.0)
    exp = seewhy.explain(model, x, sg, target=[1, 7])
    assert exp.kind == seewhy.get_method(name).kind
    torch.testing.assert_close(exp.attributions, direct, rtol=1e-4, atol=1e-6)
