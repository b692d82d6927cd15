"""LRP canonizers as a protocol: apply -> record -> restore (exactly, also after errors), a user's canonizer consumed
by the ``lrp`` method and ``canonized`` without changes to the mode, and ``MergeBatchNorm`` as one implementation."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import seewhy
from seewhy.hooks import count_hooks
from seewhy.methods.lrp import LRP, Canonized, Canonizer, Composite, Epsilon, MergeBatchNorm, canonized

D = torch.float64


class Scale(nn.Module):
    """A custom normalisation: y = s x + t per channel (no layer LRP knows)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.s = nn.Parameter(torch.rand(channels) + 0.5)
        self.t = nn.Parameter(torch.randn(channels) * 0.3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.s.view(1, -1, 1, 1) + self.t.view(1, -1, 1, 1)


class FoldScale(Canonizer):
    """Folds ``scale`` into the unpadded convolution after it (W' = W diag(s), b' = b + sum_ik W_jik t_i) and makes
    the scale the identity, by writing the parameters (restored bit-identically), with a hook (removed on restore)."""

    def __init__(self, scale: str, conv: str) -> None:
        self.scale, self.conv = scale, conv

    def apply(self, model: nn.Module, inputs: torch.Tensor | None = None) -> Canonized:
        modules = dict(model.named_modules())
        scale, conv = modules[self.scale], modules[self.conv]
        record = Canonized()
        record.write(conv.bias, conv.bias + (conv.weight * scale.t.view(1, -1, 1, 1)).sum((1, 2, 3)))
        record.write(conv.weight, conv.weight * scale.s.view(1, -1, 1, 1))
        record.write(scale.s, torch.ones_like(scale.s))
        record.write(scale.t, torch.zeros_like(scale.t))
        record.hook(scale.register_forward_hook(lambda m, a, out: None))
        return record


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.ReLU(), Scale(4), nn.Conv2d(4, 5, 3),
                         nn.ReLU(), nn.Flatten(), nn.Linear(5 * 4 * 4, 3, bias=False)).to(D).eval()


def _snapshot(model: nn.Module) -> tuple[dict, dict, dict]:
    tensors = {k: (v, v.clone()) for k, v in model.state_dict(keep_vars=True).items()}
    attrs = {n: set(vars(m)) for n, m in model.named_modules()}
    flags = {k: p.requires_grad for k, p in model.named_parameters()}
    return tensors, attrs, flags


def _assert_restored(model: nn.Module, snap: tuple[dict, dict, dict]) -> None:
    tensors, attrs, flags = snap
    for k, v in model.state_dict(keep_vars=True).items():
        obj, value = tensors[k]
        assert v is obj and torch.equal(v, value) and v.dtype == value.dtype, k  # same object, same bits
    assert {n: set(vars(m)) for n, m in model.named_modules()} == attrs  # no attribute left behind
    assert {k: p.requires_grad for k, p in model.named_parameters()} == flags
    assert count_hooks(model) == 0


def test_a_user_canonizer_keeps_the_function_and_restores_exactly() -> None:
    model, x = _model(), torch.randn(2, 3, 8, 8, dtype=D)
    snap, ref = _snapshot(model), model(x)
    with canonized(model, x, [FoldScale("2", "3")]) as records:
        assert isinstance(records[0], Canonized) and count_hooks(model) == 1
        assert torch.equal(model[2].s, torch.ones(4, dtype=D)) and torch.equal(model[2].t, torch.zeros(4, dtype=D))
        torch.testing.assert_close(model(x), ref, rtol=1e-12, atol=1e-12)
    _assert_restored(model, snap)


def test_lrp_consumes_a_user_canonizer_through_the_backward() -> None:
    # LRP-0 on a ReLU network is input x gradient, folded or not; gamma shares relevance by the contributions of
    # the folded layer (the shift t becomes conv 3's bias): it must see the folded weights through the backward
    model, x = _model(), torch.randn(2, 3, 8, 8, dtype=D)
    snap = _snapshot(model)
    ixg = seewhy.get_method("input_x_gradient")(model, x, 1)
    a = LRP(composite=Composite(types=[((nn.Conv2d, nn.Linear), Epsilon(1e-300))]), canonizers=[FoldScale("2", "3")])
    torch.testing.assert_close(a(model, x, 1), ixg, rtol=1e-9, atol=1e-12)
    _assert_restored(model, snap)
    folded = _model()
    with torch.no_grad():
        folded[3].bias.add_((folded[3].weight * folded[2].t.view(1, -1, 1, 1)).sum((1, 2, 3)))
        folded[3].weight.mul_(folded[2].s.view(1, -1, 1, 1)), folded[2].s.fill_(1.0), folded[2].t.zero_()
    gamma = LRP(composite="epsilon_gamma_box", canonizers=[FoldScale("2", "3")])(model, x, 1)
    torch.testing.assert_close(gamma, LRP(composite="epsilon_gamma_box", canonizers=None)(folded, x, 1))
    assert not torch.allclose(gamma, LRP(composite="epsilon_gamma_box", canonizers=None)(model, x, 1))


class _Failing(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = _model()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.inner(x)
        raise ValueError("broken model")


def test_canonizers_are_restored_after_an_error() -> None:
    model, x = _Failing(), torch.randn(1, 3, 8, 8, dtype=D)
    snap = _snapshot(model)
    with pytest.raises(ValueError, match="broken model"):
        LRP(canonizers=[FoldScale("inner.2", "inner.3")])(model, x, 0)
    _assert_restored(model, snap)

    class Broken(Canonizer):
        def apply(self, model: nn.Module, inputs: torch.Tensor | None = None) -> Canonized:
            raise RuntimeError("cannot canonize")

    inner = model.inner
    with pytest.raises(RuntimeError, match="cannot canonize"):
        with canonized(inner, x, [FoldScale("2", "3"), Broken()]):
            pass  # pragma: no cover
    _assert_restored(model, snap)  # the first one was applied, then restored


def test_merge_batchnorm_is_a_functional_canonizer() -> None:
    torch.manual_seed(2)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU()).eval()
    model[1].running_mean.uniform_(-1, 1)
    x = torch.randn(2, 3, 6, 6)
    snap = _snapshot(model)
    with MergeBatchNorm().apply(model, x) as record:
        assert record.bypassed and id(model[0].weight) in record.weights  # nothing written: the mode applies these
        _assert_restored(model, snap)
    assert not record.weights and not record.bypassed
    with pytest.raises(ValueError, match="pass inputs"):
        MergeBatchNorm().apply(model)
    with MergeBatchNorm(pairs=[("0", "1")]).apply(model) as named, MergeBatchNorm().apply(model, x) as found:
        assert named.weights.keys() == found.weights.keys() == {id(model[0].weight)}
    with pytest.raises(ValueError, match="unknown canonizer"):
        LRP(canonizers=["fold"])(model, x, 0)


def test_canonizers_auto_and_none_keep_their_meaning() -> None:
    from conftest import build

    model = build("tiny_resnet")
    x = torch.randn(1, 3, 32, 32)
    method = LRP()
    assert [type(c) for c in method.plan(model, x)[1]] == [MergeBatchNorm]  # auto: merge (not a zoo exception)
    assert LRP(canonizers=None).plan(model, x)[1] == []
    assert LRP(canonizers="merge_batchnorm").plan(model, x)[1] == [MergeBatchNorm()]
    user = FoldScale("a", "b")
    assert LRP(canonizers=[user, "auto"]).plan(model, x)[1] == [user, MergeBatchNorm()]
