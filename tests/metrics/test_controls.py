"""The built-in controls: a seeded random map and a Sobel edge map, both ignoring the model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import build
from scipy import ndimage

import seewhy
import seewhy.metrics
from seewhy.methods.controls import image_seeds, sobel_magnitude


def test_controls_live_with_the_methods() -> None:
    from seewhy.methods import EdgeDetector, RandomAttribution

    assert RandomAttribution.__module__ == EdgeDetector.__module__ == "seewhy.methods.controls"
    assert seewhy.metrics.RandomAttribution is RandomAttribution  # still re-exported


def test_registered_as_methods() -> None:
    assert {"random_attribution", "edge_detector"} <= set(seewhy.list_methods())
    assert seewhy.get_method("random_attribution").kind == "map"


@pytest.mark.parametrize("distribution", ["normal", "uniform"])
def test_random_attribution_is_seeded_and_batch_invariant(distribution: str, inputs: torch.Tensor) -> None:
    model = build("tiny_cnn")
    m = seewhy.get_method("random_attribution", distribution=distribution, seed=3)
    a = m(model, inputs, 0)
    assert a.shape == (3, 1, 32, 32) and a.dtype == inputs.dtype
    torch.testing.assert_close(a, m(build("tiny_vgg"), inputs, 5), rtol=0, atol=0)  # ignores model and target
    for i in range(3):
        torch.testing.assert_close(m(model, inputs[i : i + 1], 0), a[i : i + 1], rtol=0, atol=0)
    reversed_batch = m(model, inputs.flip(0), 0)
    torch.testing.assert_close(reversed_batch.flip(0), a, rtol=0, atol=0)
    other = seewhy.get_method("random_attribution", distribution=distribution, seed=4)(model, inputs, 0)
    assert not torch.equal(a, other)
    assert not torch.equal(a[0], a[1])
    if distribution == "uniform":
        assert float(a.min()) >= 0 and float(a.max()) < 1
    else:
        assert abs(float(a.mean())) < 0.1 and abs(float(a.std()) - 1) < 0.1


def test_random_attribution_errors(inputs: torch.Tensor) -> None:
    with pytest.raises(ValueError, match="distribution"):
        seewhy.get_method("random_attribution", distribution="cauchy")(build("tiny_cnn"), inputs, 0)
    with pytest.raises(TypeError, match="seed"):
        image_seeds(inputs, 1.5)  # type: ignore[arg-type]


def test_image_seeds_depend_on_content_only(inputs: torch.Tensor) -> None:
    seeds = image_seeds(inputs, 0)
    assert len(set(seeds)) == 3
    assert image_seeds(inputs[1:2], 0) == seeds[1:2]
    assert image_seeds(inputs.double(), 0) == seeds  # float32 values are exact in float64
    assert image_seeds(inputs, 1) != seeds


def test_edge_detector_is_the_sobel_magnitude(inputs: torch.Tensor) -> None:
    x = inputs.double()
    a = seewhy.get_method("edge_detector")(build("tiny_cnn").double(), x, 0)
    expected = np.zeros(a.shape[-2:])
    for c in range(3):
        img = x[0, c].numpy()
        # scipy's sobel: axis 1 = d/dx (columns); unnormalised kernels, so divide by 8
        expected += (ndimage.sobel(img, axis=1, mode="nearest") / 8) ** 2 + (
            ndimage.sobel(img, axis=0, mode="nearest") / 8
        ) ** 2
    np.testing.assert_allclose(a[0, 0].numpy(), np.sqrt(expected), rtol=1e-12, atol=1e-12)
    assert a.shape == (3, 1, 32, 32) and (a >= 0).all()


def test_edge_detector_ignores_the_model_and_finds_edges() -> None:
    x = torch.zeros(1, 3, 16, 16)
    assert sobel_magnitude(x).abs().max() == 0  # a flat image has no edge
    x[..., 8:] = 1.0  # a vertical step edge between columns 7 and 8
    m = seewhy.get_method("edge_detector")
    a = m(build("tiny_cnn"), x, 0)
    torch.testing.assert_close(a, m(build("tiny_resnet"), x, 3))
    cols = a[0, 0].sum(0)
    assert set(torch.nonzero(cols).flatten().tolist()) == {7, 8}
    ramp = torch.arange(16.0).expand(1, 1, 16, 16)  # slope 1 per pixel -> magnitude 1 inside
    torch.testing.assert_close(sobel_magnitude(ramp)[0, 0, 1:-1, 1:-1], torch.ones(14, 14))
