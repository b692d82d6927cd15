from __future__ import annotations

import pytest
import torch
from conftest import build

from seewhy.layers import default_layer, resolve_layer, spatial_layers


def test_resolve_by_name_and_module() -> None:
    model = build("tiny_resnet")
    assert resolve_layer(model, "layer2.conv1") == ("layer2.conv1", model.layer2.conv1)
    assert resolve_layer(model, model.layer1.bn2) == ("layer1.bn2", model.layer1.bn2)


def test_unknown_layer_lists_close_names() -> None:
    model = build("tiny_resnet")
    with pytest.raises(ValueError, match="layer2.conv1") as info:
        resolve_layer(model, "layer2.conv")
    assert "unknown layer 'layer2.conv'" in str(info.value)
    with pytest.raises(ValueError, match="not part of the model"):
        resolve_layer(model, torch.nn.Conv2d(1, 1, 1))
    with pytest.raises(TypeError):
        resolve_layer(model, 3)


def test_default_layer_is_last_spatial_output() -> None:
    model = build("tiny_resnet")
    x = torch.randn(2, 3, 16, 16)
    assert default_layer(model, x) == "layer2"
    assert spatial_layers(model, x)[0] == "stem.0"
    assert default_layer(build("tiny_vgg"), torch.randn(1, 3, 32, 32)) == "features"
