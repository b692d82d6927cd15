"""filters(), feature_maps() and their pictures: values, layer resolution, errors, model left as it was."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import build
from torch import nn

from seewhy import viz
from seewhy.hooks import count_hooks
from seewhy.inside import feature_maps, filters
from seewhy.inside.filters import first_conv, top_channels


def test_filters_default_is_the_first_conv_weight_copy():
    model = build("tiny_resnet")
    name = first_conv(model)
    w = filters(model)
    ref = dict(model.named_modules())[name].weight
    assert torch.equal(w, ref) and w.data_ptr() != ref.data_ptr() and not w.requires_grad
    w.zero_()
    assert ref.abs().sum() > 0  # a copy: the model is untouched


def test_filters_named_layer_and_errors():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 6, 5, groups=2), nn.Flatten(), nn.Linear(6, 2))
    assert filters(model, "2").shape == (6, 2, 5, 5)
    assert filters(model, model[2]).shape == (6, 2, 5, 5)
    with pytest.raises(ValueError, match="4-D convolution weight"):
        filters(model, "4")
    with pytest.raises(ValueError, match="unknown layer"):
        filters(model, "conv9")
    with pytest.raises(ValueError, match="no nn.Conv2d"):
        filters(nn.Sequential(nn.Linear(3, 2)))


def test_feature_maps_equal_the_layer_output():
    model = build("tiny_functional_cnn")
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    seen = []
    handle = model.conv2.register_forward_hook(lambda m, a, out: seen.append(out.detach().clone()))
    with torch.no_grad():
        model(x)
    handle.remove()
    model.train()
    maps = feature_maps(model, x, "conv2")
    torch.testing.assert_close(maps, seen[0])
    assert model.training and all(m.training for m in model.modules()) and count_hooks(model) == 0
    assert all(p.requires_grad for p in model.parameters())
    assert not maps.requires_grad and maps.is_contiguous()
    assert (maps * 2).sum().isfinite()  # a normal tensor, not an inference tensor


def test_feature_maps_match_a_manual_forward_on_a_sequential():
    model = nn.Sequential(nn.Conv2d(3, 5, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2), nn.Conv2d(5, 7, 3))
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model[:3](x)
    torch.testing.assert_close(feature_maps(model, x, "2"), ref)
    with pytest.raises(ValueError, match=r"\(B,C,H,W\)"):
        feature_maps(model, x[0], "2")


def test_feature_maps_reject_a_flat_layer():
    model = nn.Sequential(nn.Conv2d(3, 2, 3), nn.Flatten(), nn.Linear(2 * 14 * 14, 3))
    with pytest.raises(ValueError, match="not \\(B,K,h,w\\)"):
        feature_maps(model, torch.zeros(1, 3, 16, 16), "2")


def test_top_channels_orders_by_mean():
    maps = torch.zeros(4, 2, 2)
    maps[2] = 3.0
    maps[0] = 1.0
    maps[3] = 1.0
    assert top_channels(maps, 3) == [2, 0, 3]


def test_filter_grid_normalisation_and_layouts():
    w = torch.zeros(2, 3, 3, 3)
    w[0, 0, 1, 1] = 2.0  # the layer's largest |w|: full red at the centre of filter 0
    w[1, 2, 0, 0] = -2.0  # zero blue at the corner of filter 1
    img = viz.filter_grid(w, tile=3, columns=2)
    assert img.dtype == np.uint8 and img.ndim == 3
    # tiles are 3x3 pixels (scale 1), pad 2: filter 0 at (2..5, 2..5), filter 1 at (2..5, 7..10)
    assert tuple(img[3, 3]) == (255, 128, 128)  # red: 0.5 + 0.5 * 1; green/blue: mid-grey
    assert tuple(img[2, 2]) == (128, 128, 128)  # zero weight -> mid-grey
    assert tuple(img[2, 7]) == (128, 128, 0)  # blue -2 -> 0
    deep = viz.filter_grid(torch.randn(5, 16, 3, 3), max_channels=4, tile=12)
    assert deep.shape[0] > 5 * 12 and deep.shape[1] > 4 * 12
    with pytest.raises(ValueError, match=r"\(K, C, kh, kw\)"):
        viz.filter_grid(torch.zeros(3, 3))


def test_feature_map_grid_shows_the_top_channels():
    maps = torch.zeros(1, 6, 4, 4)
    maps[0, 4] = 5.0
    img = viz.feature_map_grid(maps, n=2, columns=2, tile=8)
    assert img.dtype == np.uint8 and img.shape[2] == 3
    with pytest.raises(ValueError, match="out of range"):
        viz.feature_map_grid(maps, channels=[7])


def test_draw_box_outlines_exactly_the_box():
    img = np.zeros((10, 10, 3), np.uint8)
    out = viz.draw_box(img, (2, 3, 6, 8), width=1)
    assert tuple(out[2, 3]) == (255, 0, 0) and tuple(out[5, 7]) == (255, 0, 0)
    assert tuple(out[6, 8]) == (0, 0, 0) and tuple(out[4, 5]) == (0, 0, 0)
    assert img.sum() == 0
