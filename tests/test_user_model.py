"""The user-style EfficientNet-Lite0 of examples/user_efficientnet.py: same weights, same logits as the zoo model."""

from __future__ import annotations

import pytest
import torch
from conftest import user_efficientnet

import seewhy
import seewhy.zoo


def test_user_efficientnet_matches_the_zoo_model() -> None:
    user_model = user_efficientnet().build(pretrained=True)
    zoo_model = seewhy.zoo.load("efficientnet_lite0")
    spec = seewhy.zoo.get_spec("efficientnet_lite0")
    x = spec.preprocess(seewhy.images.bundled_image("chelsea"))[None]
    assert not user_model.training
    assert not hasattr(user_model, "forward_head") and not hasattr(user_model, "head_layer")
    with torch.no_grad():
        ours, theirs = user_model(x), zoo_model(x)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
    assert int(ours.argmax()) == int(theirs.argmax()) == 282  # tiger cat
    odd = torch.randn(1, 3, 97, 130, generator=torch.Generator().manual_seed(0))  # "SAME" padding at any size
    with torch.no_grad():
        torch.testing.assert_close(user_model(odd), zoo_model(odd), rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_scorecam_at_the_signed_head_convolution_says_why_its_map_is_empty() -> None:
    """The trial's case: Score-CAM at conv_head (before BatchNorm and ReLU6) is negative everywhere, so its rectified
    heatmap is empty; the explanation says so and names the layer after the activation."""
    model = user_efficientnet().build(pretrained=True)
    spec = seewhy.zoo.get_spec("efficientnet_lite0")
    x = spec.preprocess(seewhy.images.bundled_image("chelsea"))[None]
    exp = seewhy.explain(model, x, "scorecam", layer="conv_head", target=282)
    assert float(exp.attributions.max()) < 0
    assert exp.extras["empty_heatmap"].tolist() == [True]
    assert "layer='act_head'" in exp.extras["warnings"][0]
