"""Shared fixtures: tiny models (in-place ReLU modules, functional activations, residual, flatten head),
seeded inputs, and fast settings for every registered method."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest
import torch

from seewhy.zoo.small import TinyCNN, TinyFunctionalCNN, TinyResNet, TinyVGG

# Settings that keep each registered method fast in tests; methods not listed run with their defaults.
FAST_PARAMS: dict[str, dict] = {
    "integrated_gradients": {"n_steps": 8},
    "smoothgrad": {"n_samples": 4, "seed": 0},
    # the tiny models include heads that are not linear(GAP(layer)) at the default layer (a functional ReLU after
    # it): the contract test checks the mechanics, test_cam.py checks strict mode
    "cam": {"strict": False},
    "class_map": {"strict": False},
    # perturbation / surrogate methods: few evaluations, fixed seeds (the contract wants determinism)
    "feature_ablation": {"n_segments": 16},
    "rise": {"n_masks": 32, "seed": 0},
    "lime": {"n_samples": 40, "n_segments": 12, "seed": 0},
    "kernel_shap": {"n_samples": 40, "n_segments": 12, "seed": 0},
}

MODEL_CLASSES = {
    "tiny_cnn": TinyCNN,
    "tiny_functional_cnn": TinyFunctionalCNN,
    "tiny_resnet": TinyResNet,
    "tiny_vgg": TinyVGG,
}


def build(name: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = MODEL_CLASSES[name]()
    model.eval()
    return model


def build_protopnet(trunk_name: str = "tiny_resnet", seed: int = 0) -> torch.nn.Module:
    """A ProtoPNet (10 classes, 2 prototypes each) on a tiny model cut at its CAM layer: the model the
    ``protopnet`` method explains (it refuses any other)."""
    from seewhy.protopnet import ProtoPNet, trunk
    from seewhy.zoo import get_spec

    net = build(trunk_name, seed)
    model = ProtoPNet(trunk(net, get_spec(trunk_name).cam_layer), 10, prototypes_per_class=2, prototype_dim=8)
    model.eval()
    return model


@pytest.fixture(params=sorted(MODEL_CLASSES))
def any_model(request: pytest.FixtureRequest) -> torch.nn.Module:
    return build(request.param)


@pytest.fixture
def inputs() -> torch.Tensor:
    g = torch.Generator().manual_seed(1234)
    return torch.randn(3, 3, 32, 32, generator=g)


def user_efficientnet() -> ModuleType:
    """examples/user_efficientnet.py as a module (examples is not a package): an EfficientNet-Lite0 written as a
    user would, without seewhy's helpers."""
    path = Path(__file__).resolve().parents[1] / "examples" / "user_efficientnet.py"
    spec = importlib.util.spec_from_file_location("user_efficientnet", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
