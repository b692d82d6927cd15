"""CAMs on the pretrained EfficientNet-Lite0: a cat on the left half, an espresso on the right half."""

from __future__ import annotations

import pytest
import torch

import seewhy
from seewhy import zoo
from seewhy.images import bundled_image

TIGER_CAT, ESPRESSO = 282, 967


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return zoo.load("efficientnet_lite0")


@pytest.fixture(scope="module")
def pair() -> torch.Tensor:
    spec = zoo.get_spec("efficientnet_lite0")
    left, right = (spec.preprocess(bundled_image(n)) for n in ("chelsea", "coffee"))
    x = torch.cat([left, right], dim=-1)[None]  # (1, 3, 224, 448): the model is fully convolutional
    return x.expand(2, -1, -1, -1)  # one copy per target


def _peak_halves(cam: torch.Tensor) -> list[str]:
    w = cam.shape[-1]
    cols = cam.flatten(1).argmax(1) % w
    return ["left" if int(c) < w // 2 else "right" for c in cols]


@pytest.mark.parametrize("method", ["gradcam", "gradcam_plus_plus", "ablationcam"])
def test_maps_peak_on_the_right_object(model: torch.nn.Module, pair: torch.Tensor, method: str) -> None:
    exp = seewhy.explain(model, pair, method, target=[TIGER_CAT, ESPRESSO])
    assert exp.layer == "_features"
    assert _peak_halves(exp.attributions) == ["left", "right"]
    if method == "ablationcam":
        assert exp.extras["ablation_path"] == "tail"  # only forward_head re-runs for the 1280 ablations


@pytest.mark.slow
def test_scorecam_peaks_on_the_right_object(model: torch.nn.Module, pair: torch.Tensor) -> None:
    exp = seewhy.explain(model, pair, "scorecam", target=[TIGER_CAT, ESPRESSO])
    assert _peak_halves(exp.attributions) == ["left", "right"]


def test_scorecam_on_a_smaller_layer_peaks_on_the_cat(model: torch.nn.Module, pair: torch.Tensor) -> None:
    # one target and the last block's 320 channels keep this at 320 forwards; the slow test does both targets
    # at the 1280-channel layer
    exp = seewhy.explain(model, pair[:1], "scorecam", layer="_blocks.15", target=TIGER_CAT)
    assert _peak_halves(exp.attributions) == ["left"]
