"""Recognisable class models on the pretrained efficientnet_lite0 (slow: about 15 s per class on 2 cores)."""

from __future__ import annotations

import pytest

from seewhy import zoo
from seewhy.featvis import objectives as O
from seewhy.featvis import visualize
from seewhy.featvis.render import robust_probability
from seewhy.hooks import count_hooks

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("k", [967, 282, 417])  # espresso, tiger cat, balloon
def test_class_models_are_recognised_from_views_unlike_the_optimisations(k):
    """Simonyan et al. 2013's class model at 128 px with Lucid's settings (FFT + decorrelation, standard
    transforms), 256 steps: upscaled to 224 and re-viewed 8 times at a continuous random scale in [0.8, 1.2] and a
    random offset (draws the optimisation never made), the model gives class k a probability above 0.9 every time."""
    model = zoo.load("efficientnet_lite0")
    r = visualize(model, O.class_logit(k), size=128, steps=256, progress=False)
    probs = robust_probability(model, r.images, k, trials=8, seed=1234)
    assert probs.shape == (1, 8)
    assert (probs > 0.9).all(), probs
    # an unoptimised start is not class k
    assert robust_probability(model, visualize(model, O.class_logit(k), size=128, steps=0, progress=False).images,
                              k).max() < 0.1
    assert count_hooks(model) == 0 and not model.training
