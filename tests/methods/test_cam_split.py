"""Ablation-CAM splits any model at its layer: torch.fx, children called in order, or full forwards with a log line.

Every split must give the map of the full-forward path (``split=False``), leave the model as it was, and say how it
ran (``extras["ablation_path"]``, ``extras["tail"]``).
"""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F
from conftest import user_efficientnet
from torch import nn

import seewhy
from seewhy.core import Cost
from seewhy.hooks import count_hooks
from seewhy.methods.cam_perturbation import children_tail, fx_tail


def _x(shape: tuple[int, ...] = (3, 3, 16, 16), seed: int = 0) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


class ResidualNet(nn.Module):
    """A residual skip crossing the layer (``body.0``, inside a Sequential) and a functional flatten before the
    classifier: fx-traceable, not a Sequential chain, no forward_head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, padding=1)
        self.body = nn.Sequential(nn.Conv2d(6, 6, 3, padding=1), nn.BatchNorm2d(6))
        self.mix = nn.Conv2d(6, 6, 1)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(6 * 4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = F.relu(self.stem(x))
        h = self.body(skip)
        h = F.relu(self.mix(h) + skip)
        return self.fc(torch.flatten(self.pool(h), 1))


class BranchyNet(nn.Module):
    """Data-dependent control flow (fx cannot trace it) around children called in order. ``glue`` between the
    last feature and the classifier: "flatten" (pool module + torch.flatten), "mean" (x.mean((2, 3))), "relu"
    (a functional op: no chain), "relu_" (an in-place functional op on the layer's output: no chain either)."""

    def __init__(self, glue: str = "flatten") -> None:
        super().__init__()
        self.glue = glue
        self.features = nn.Sequential(
            nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(6, 8, 3, padding=1), nn.BatchNorm2d(8)
        )
        self.act = nn.ReLU(inplace=True)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(8 * 4 if glue == "flatten" else 8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if float(x.abs().amax()) > 1e6:  # data-dependent: torch.fx cannot trace this
            x = x / 1e6
        x = self.features(x)
        if self.glue == "relu_":
            F.relu_(x)
        x = self.act(x)
        if self.glue == "flatten":
            return self.fc(torch.flatten(self.pool(x), 1))
        if self.glue == "relu":
            x = F.relu(x - 0.1)
        return self.fc(x.mean((2, 3)))


def _build(cls: type[nn.Module], *args: object, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = cls(*args).double().eval()
    with torch.no_grad():  # BatchNorm statistics that are not the identity
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return model


def _snapshot(model: nn.Module) -> tuple[dict, dict, dict, dict]:
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    flags = {k: m.training for k, m in model.named_modules()}
    grads = {k: p.requires_grad for k, p in model.named_parameters()}
    attrs = {k: sorted(vars(m)) for k, m in model.named_modules()}
    return state, flags, grads, attrs


def _assert_unchanged(model: nn.Module, snap: tuple[dict, dict, dict, dict]) -> None:
    state, flags, grads, attrs = snap
    assert model.state_dict().keys() == state.keys()
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert {k: m.training for k, m in model.named_modules()} == flags
    assert {k: p.requires_grad for k, p in model.named_parameters()} == grads
    assert {k: sorted(vars(m)) for k, m in model.named_modules()} == attrs
    assert count_hooks(model) == 0
    assert torch._C._len_torch_function_stack() == 0


def _both(model: nn.Module, x: torch.Tensor, layer: str, target: list[int], **params: object):
    fast = seewhy.explain(model, x, "ablationcam", target=target, layer=layer, **params)
    full = seewhy.explain(model, x, "ablationcam", target=target, layer=layer, split=False)
    assert full.extras["ablation_path"] == "forward" and full.extras["tail"] is None
    return fast, full


def test_fx_split_with_a_residual_crossing_the_layer() -> None:
    model, x = _build(ResidualNet), _x()
    model.train()  # left in training mode: the method runs in eval mode and restores the flags
    model.stem.eval()
    snap = _snapshot(model)
    fast, full = _both(model, x, "body.0", [0, 3, 4], batch_size=4)  # chunks cross the samples' boundaries
    _assert_unchanged(model, snap)
    assert (fast.extras["ablation_path"], fast.extras["tail"]) == ("tail", "fx")
    torch.testing.assert_close(fast.attributions, full.attributions)
    torch.testing.assert_close(fast.extras["weights"], full.extras["weights"])
    assert fast.extras["weights"].abs().sum() > 0
    one = seewhy.explain(model, x, "ablationcam", target=[0, 3, 4], layer="body.0", batch_size=100)
    torch.testing.assert_close(one.attributions, fast.attributions)
    # the skip is a value crossing the layer: the tail takes it per row, by sample
    with torch.no_grad():
        tail, why = fx_tail(model.eval(), "body.0", x)
        a = model.body[0](F.relu(model.stem(x)))
        rows = torch.tensor([2, 0])
        torch.testing.assert_close(tail(a[rows], rows), model(x)[rows])
    assert why == ""


def test_fx_split_of_a_layer_inside_a_block() -> None:
    model, x = _build(ResidualNet), _x(seed=1)
    fast, full = _both(model, x, "body", [1, 1, 2])
    assert fast.extras["tail"] == "fx"
    torch.testing.assert_close(fast.attributions, full.attributions)


class Parts(nn.Module):
    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [x[:, :2], x[:, 2:]]


class PartsNet(nn.Module):
    """The parent iterates over a list a submodule returns: fx must trace through that submodule."""

    def __init__(self) -> None:
        super().__init__()
        self.parts = Parts()
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.fc = nn.Linear(4 + 1, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = (F.relu(p) for p in self.parts(x))
        h = self.conv(a)
        return self.fc(torch.cat([h.mean((2, 3)), b.mean((1, 2, 3))[:, None]], 1))


def test_fx_split_traces_through_a_module_when_it_must() -> None:
    model, x = _build(PartsNet), _x(seed=4)
    fast, full = _both(model, x, "conv", [0, 1, 2], batch_size=2)
    assert fast.extras["tail"] == "fx"  # and b crosses the layer
    torch.testing.assert_close(fast.attributions, full.attributions)


@pytest.mark.parametrize("glue", ["flatten", "mean"])
def test_children_in_order_when_fx_cannot_trace(glue: str) -> None:
    model, x = _build(BranchyNet, glue), _x(seed=2)
    with torch.no_grad():
        assert fx_tail(model, "features.2", x)[0] is None
    model.train()
    snap = _snapshot(model)
    fast, full = _both(model, x, "features.2", [4, 0, 2], batch_size=5)
    _assert_unchanged(model, snap)
    assert (fast.extras["ablation_path"], fast.extras["tail"]) == ("tail", "children")
    torch.testing.assert_close(fast.attributions, full.attributions)
    fast_bn, full_bn = _both(model, x, "features.3", [4, 0, 2])  # the last child of the container
    assert fast_bn.extras["tail"] == "children"
    torch.testing.assert_close(fast_bn.attributions, full_bn.attributions)


@pytest.mark.parametrize("glue", ["relu", "relu_"])
def test_fallback_logs_one_line_and_gives_the_same_map(glue: str, caplog: pytest.LogCaptureFixture) -> None:
    model, x = _build(BranchyNet, glue), _x(seed=3)
    with torch.no_grad():
        assert children_tail(model.eval(), "features.2", x[:1])[0] is None
    snap = _snapshot(model)
    with caplog.at_level(logging.INFO, logger="seewhy"):
        slow = seewhy.explain(model, x, "ablationcam", target=[1, 2, 3], layer="features.2")
    _assert_unchanged(model, snap)
    assert (slow.extras["ablation_path"], slow.extras["tail"]) == ("forward", None)
    lines = [r for r in caplog.records if r.name == "seewhy.methods.cam_perturbation"]
    assert len(lines) == 1, [r.getMessage() for r in caplog.records]
    msg = lines[0].getMessage()
    assert lines[0].levelno >= logging.INFO
    assert "full forwards" in msg and "8 forwards per image" in msg and "head=" in msg
    assert "torch.fx: cannot trace it" in msg and "children in order" in msg and "features.2" in msg
    assert "torch.fx" in slow.extras["no_tail"]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="seewhy"):
        full = seewhy.explain(model, x, "ablationcam", target=[1, 2, 3], layer="features.2", split=False)
    assert not [r for r in caplog.records if r.name == "seewhy.methods.cam_perturbation"]  # asked for: no line
    torch.testing.assert_close(slow.attributions, full.attributions)
    # the same map as a head given by hand
    head = lambda a: model.fc(F.relu(model.act(model.features[3](a)) - 0.1).mean((2, 3)))  # noqa: E731
    if glue == "relu":
        given = seewhy.explain(model, x, "ablationcam", target=[1, 2, 3], layer="features.2", head=head)
        assert given.extras["tail"] == "head"
        torch.testing.assert_close(given.attributions, slow.attributions)


def test_costs() -> None:
    bound = seewhy.get_method("scorecam").cost()
    assert (bound.forwards, bound.per_channel) == (2, 1) and "at most" in bound.note
    net, x0 = _build(ResidualNet), _x()[:1]
    exact = seewhy.get_method("scorecam", layer="body.0").cost(net, x0)  # the channels that vary on this image
    out = {}
    handle = net.get_submodule("body.0").register_forward_hook(lambda m, a, o: out.setdefault("a", o))
    net(x0)
    handle.remove()
    a = out["a"]
    assert exact.forwards == 2 + int((a.amax(dim=(2, 3)) > a.amin(dim=(2, 3))).sum()) and exact.per_channel == 0
    method = seewhy.get_method("ablationcam", layer="body.0")
    assert method.cost() == Cost(forwards=1, per_channel=1)
    model, x = _build(ResidualNet), _x()[:1]
    snap = _snapshot(model)
    cost = method.cost(model, x)
    _assert_unchanged(model, snap)
    assert cost.tail and cost.forwards == 1 and cost.per_channel == 1
    assert cost.tail_fraction is not None and 0 < cost.tail_fraction
    assert seewhy.get_method("ablationcam").cost(model, x).tail  # the default layer, found as attribute does
    unsplittable = seewhy.get_method("ablationcam", layer="features.2").cost(_build(BranchyNet, "relu"), x)
    assert not unsplittable.tail and unsplittable.tail_fraction is None


def test_user_efficientnet_takes_the_tail_path() -> None:
    model = user_efficientnet().build(pretrained=True)
    spec = seewhy.zoo.get_spec("efficientnet_lite0")
    x = spec.preprocess(seewhy.images.bundled_image("chelsea"))[None]
    snap = _snapshot(model)
    exp = seewhy.explain(model, x, "ablationcam", layer="conv_head")
    _assert_unchanged(model, snap)
    assert (exp.extras["ablation_path"], exp.extras["tail"]) == ("tail", "fx")
    assert int(exp.targets[0]) == 282 and exp.attributions.shape == (1, 1, 7, 7)
    assert exp.extras["weights"].shape == (1, 1280)
    # a few ablations through the tail and through the full model agree
    with torch.no_grad():
        tail, _ = fx_tail(model, "conv_head", x)
        store = {}
        handle = model.conv_head.register_forward_hook(lambda m, a, out: store.update(a=out.clone()))
        try:
            y = model(x)[0, 282]
        finally:
            handle.remove()
        for k in (0, 700, 1279):
            ablated = store["a"].clone()
            ablated[:, k] = 0
            handle = model.conv_head.register_forward_hook(lambda m, a, out, v=ablated: v.clone())
            try:
                full = model(x)
            finally:
                handle.remove()
            torch.testing.assert_close(tail(ablated, torch.zeros(1, dtype=torch.long)), full, rtol=1e-5, atol=1e-4)
            torch.testing.assert_close((y - full[0, 282]) / y.abs(), exp.extras["weights"][0, k], rtol=1e-3,
                                       atol=1e-5)
    assert count_hooks(model) == 0
