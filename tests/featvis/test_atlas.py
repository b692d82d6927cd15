"""atlas: sampling, UMAP layout, binning, icons and the picture; the class activation atlas; model state; errors.

The first UMAP fit in a process compiles numba code (~8 s), so the atlases are built once per module and shared.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from seewhy.featvis.atlas import Atlas, atlas, bin_layout, normalize_layout
from seewhy.hooks import count_hooks
from seewhy.zoo.small import TinyCNN, TinyResNet

LAYER = "features.3"  # TinyCNN's last ReLU: (B, 32, 16, 16) for 16x16 inputs, followed by GAP + linear
FAST = {"grid": 4, "min_count": 3, "icon_size": 16, "steps": 4, "samples_per_image": 16, "normalize": False,
        "progress": False}


def _inputs(n: int = 8, size: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def model() -> nn.Module:
    torch.manual_seed(0)
    return TinyCNN().eval()


@pytest.fixture(scope="module")
def base(model: nn.Module) -> Atlas:
    return atlas(model, _inputs(), LAYER, **FAST)


@pytest.fixture(scope="module")
def klass(model: nn.Module) -> Atlas:
    return atlas(model, _inputs(), LAYER, class_filter=2, **FAST)


def _block(image: torch.Tensor, row: int, col: int, s: int) -> torch.Tensor:
    return image[:, row * s:(row + 1) * s, col * s:(col + 1) * s]


def test_cells_icons_and_picture_are_consistent(model: nn.Module, base: Atlas) -> None:
    a, g, s, n = base, FAST["grid"], FAST["icon_size"], 8 * FAST["samples_per_image"]
    assert len(a.activations) == len(a.layout) == len(a.sources) == len(a.bins) == n
    assert a.activations.shape == (n, 32) and a.counts.shape == (g, g)
    assert int(a.counts.sum()) == n
    assert a.layout.min() >= 0 and a.layout.max() <= 1
    rows, cols = bin_layout(a.layout, g)
    assert torch.equal(a.bins, rows * g + cols)
    assert torch.equal(a.counts.flatten(), torch.bincount(a.bins, minlength=g * g))
    # icons exactly in the cells with at least min_count vectors, row-major
    expected = (a.counts >= FAST["min_count"]).nonzero()
    assert torch.equal(a.cells, expected) and len(a.cells) > 0
    m = len(a.cells)
    assert a.icons.shape == (m, 3, s, s) and a.directions.shape == (m, 32)
    assert a.icons.min() >= 0 and a.icons.max() <= 1
    for j, (r, c) in enumerate(a.cells.tolist()):
        assert torch.allclose(a.directions[j], a.activations[a.bins == r * g + c].mean(0), atol=1e-6)
    # the picture: icons in their cells, the rest white
    assert a.image.shape == (3, g * s, g * s)
    drawn = {tuple(rc) for rc in a.cells.tolist()}
    for r in range(g):
        for c in range(g):
            block = _block(a.image, r, c, s)
            if (r, c) in drawn:
                assert torch.equal(block, a.icons[a.cells.tolist().index([r, c])])
            else:
                assert torch.equal(block, torch.ones_like(block))
    # each vector is the layer's output at its source (image, y, x)
    with torch.no_grad():
        feats = model.features(_inputs())
    i, y, x = a.sources.T
    assert torch.allclose(a.activations, feats[i, :, y, x], atol=1e-6)
    assert len(torch.unique(a.sources, dim=0)) == n and torch.equal(torch.bincount(i), torch.full((8,), 16))
    # the record
    assert a.scores is None and a.attributions is None
    assert a.losses.shape == (1, FAST["steps"]) and a.objective_values.shape == (m,)
    assert set(a.seconds) == {"activations", "umap", "icons"}
    json.dumps(a.params)
    assert a.params["umap"] == {"n_neighbors": 20, "min_dist": 0.01, "metric": "cosine"}
    assert a.params["render"]["size"] == s and a.params["samples"] == n
    assert "4x4 grid" in repr(a)


def test_reproducible_whatever_the_batch_size_and_loader(model: nn.Module, base: Atlas) -> None:
    again = atlas(model, DataLoader(TensorDataset(_inputs()), batch_size=3), LAYER, batch_size=5, **FAST)
    for name in ("sources", "activations", "layout", "counts", "cells", "directions", "icons", "image"):
        assert torch.equal(getattr(again, name), getattr(base, name)), name
    other = atlas(model, _inputs(), LAYER, **{**FAST, "min_count": 10 ** 6}, seed=1)
    assert not torch.equal(other.sources, base.sources)


def test_max_samples_is_a_seeded_subsample(model: nn.Module, base: Atlas, caplog: pytest.LogCaptureFixture) -> None:
    full = atlas(model, _inputs(), LAYER, **{**FAST, "samples_per_image": None, "min_count": 10 ** 6},
                 max_samples=40)
    with caplog.at_level(logging.WARNING, logger="seewhy"):
        again = atlas(model, _inputs(), LAYER, **{**FAST, "samples_per_image": None, "min_count": 10 ** 6},
                      max_samples=40, batch_size=3)
    assert len(full.sources) == 40 and full.params["positions_seen"] == 8 * 16 * 16
    assert torch.equal(full.sources, again.sources)
    # sorted by (image, y, x), several images represented, an empty atlas is white
    key = (full.sources[:, 0] * 16 + full.sources[:, 1]) * 16 + full.sources[:, 2]
    assert torch.all(key[1:] > key[:-1]) and len(full.sources[:, 0].unique()) > 1
    assert len(full.cells) == 0 and full.icons.shape == (0, 3, 16, 16)
    assert torch.equal(full.image, torch.ones(3, 64, 64))
    assert "the atlas is empty" in caplog.text


def test_class_filter_keeps_cells_with_positive_mean_attribution(model: nn.Module, base: Atlas,
                                                                 klass: Atlas) -> None:
    a, g, k = klass, FAST["grid"], 2
    assert torch.equal(a.sources, base.sources) and torch.equal(a.layout, base.layout)  # the same layout
    assert a.attributions is not None and a.attributions.shape == (len(a.sources),)
    # an independent attribution: logit_k = sum_c W_kc mean_yx f_cyx + b_k, so dz_k/df_cyx = W_kc / (h w)
    with torch.no_grad():
        feats = model.features(_inputs()).double()
    w = model.fc.weight.double()[k]
    i, y, x = a.sources.T
    expected = (feats[i, :, y, x] * w).sum(1) / (16 * 16)
    assert torch.allclose(a.attributions.double(), expected, rtol=1e-4, atol=1e-7)
    # per-cell scores: the mean attribution; NaN where empty
    assert a.scores is not None and a.scores.shape == (g, g)
    for cell in range(g * g):
        inside = a.bins == cell
        score = a.scores.flatten()[cell]
        if inside.any():
            assert torch.allclose(score, a.attributions[inside].mean(), rtol=1e-4, atol=1e-8)
        else:
            assert torch.isnan(score)
    shown = (a.counts >= FAST["min_count"]) & (a.scores > 0)
    assert torch.equal(a.cells, shown.nonzero())
    assert 0 < len(a.cells) < len(base.cells)  # some cells argue against class 2
    assert a.params["class_filter"] == k
    for r, c in (base.counts >= FAST["min_count"]).nonzero().tolist():
        if not shown[r, c]:
            assert torch.equal(_block(a.image, r, c, FAST["icon_size"]), torch.ones(3, 16, 16))


def test_model_is_left_as_found() -> None:
    torch.manual_seed(0)
    model = TinyResNet().train()
    model.layer1.bn1.eval()
    model.stem[0].weight.requires_grad_(False)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    training = {name: m.training for name, m in model.named_modules()}
    grads = {name: p.requires_grad for name, p in model.named_parameters()}

    def same() -> None:
        assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
        assert training == {name: m.training for name, m in model.named_modules()}
        assert grads == {name: p.requires_grad for name, p in model.named_parameters()}
        assert count_hooks(model) == 0 and all(p.grad is None for p in model.parameters())

    result = atlas(model, _inputs(4), "layer1", class_filter=0, **{**FAST, "steps": 2, "grid": 2})
    assert len(result.activations) == 64 and len(result.icons) > 0
    same()
    atlas(model, _inputs(4), "layer1", **{**FAST, "min_count": 10 ** 6})  # the inference path (no icons)
    same()
    with pytest.raises(ValueError, match="class_filter=10 is out of range"):
        atlas(model, _inputs(4), "layer1", class_filter=10, **FAST)
    same()


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"grid": 0}, ValueError, "grid must be >= 1, got 0"),
    ({"grid": 2.5}, TypeError, "grid must be an int, got 2.5"),
    ({"min_count": 0}, ValueError, "min_count must be >= 1"),
    ({"icon_size": 4}, ValueError, "icon_size must be >= 8"),
    ({"steps": 0}, ValueError, "steps must be >= 1"),
    ({"samples_per_image": 0}, ValueError, "samples_per_image must be >= 1.*None for every position"),
    ({"max_samples": 2}, ValueError, "max_samples must be >= 4"),
    ({"class_filter": -1}, ValueError, "class_filter must be >= 0"),
    ({"class_filter": "cat"}, TypeError, "class_filter must be an int"),
    ({"cosine_power": -1}, ValueError, "cosine_power must be"),
    ({"icon_batch": 0}, ValueError, "icon_batch must be >= 1"),
    ({"seed": -1}, ValueError, "seed must be >= 0"),
    ({"seed": 2 ** 40}, ValueError, "seed must be < 2\\*\\*32"),
    ({"umap_kwargs": {"n_components": 3}}, ValueError, "cannot set n_components"),
    ({"umap_kwargs": {"random_state": 1}}, ValueError, "seed="),
    ({"umap_kwargs": [("n_neighbors", 5)]}, TypeError, "umap_kwargs must be a dict"),
    ({"render_kwargs": {"size": 32}}, ValueError, "render_kwargs cannot set size"),
    ({"layer": "nope"}, ValueError, "unknown layer 'nope'"),
    ({"layer": "fc"}, ValueError, "spatial layer with \\(B, C, h, w\\) outputs; 'fc' gives \\(8, 10\\)"),
    ({"layer": "fc", "class_filter": 1}, ValueError, "spatial layer"),
    ({"class_filter": 10}, ValueError, "class_filter=10 is out of range .* 10 outputs"),
    ({"samples_per_image": 1, "n": 3}, ValueError, "3 activation vectors are too few for a UMAP layout"),
])
def test_bad_arguments_raise_clear_errors(model: nn.Module, kwargs: dict, error: type, match: str) -> None:
    kwargs = {**FAST, **kwargs}
    layer, n = kwargs.pop("layer", LAYER), kwargs.pop("n", 8)
    with pytest.raises(error, match=match):
        atlas(model, _inputs(n), layer, **kwargs)
    assert count_hooks(model) == 0


def test_not_a_model() -> None:
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        atlas("model", _inputs(), LAYER)  # type: ignore[arg-type]


def test_normalize_layout_clips_outliers_and_bin_layout_puts_large_y_on_top() -> None:
    rng = np.random.default_rng(0)
    pts = rng.normal(size=(1000, 2))
    pts[0] = (1e6, -1e6)  # an outlier does not squeeze the rest
    out = normalize_layout(pts)
    assert out.min() == 0 and out.max() == 1 and tuple(out[0]) == (1.0, 0.0)
    assert np.percentile(out[1:], 50, axis=0) == pytest.approx([0.5, 0.5], abs=0.05)
    assert np.all(normalize_layout(np.array([[3.0, 1.0], [3.0, 2.0]]))[:, 0] == 0.5)  # a constant axis
    rows, cols = bin_layout(torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.3, 0.6], [0.49999, 0.5]]), 2)
    assert rows.tolist() == [0, 1, 0, 0] and cols.tolist() == [0, 1, 0, 0]


@pytest.mark.slow
def test_atlas_on_efficientnet_lite0_over_the_bundled_photos() -> None:
    from seewhy.images import BUNDLED, bundled_image
    from seewhy.zoo import get_spec, load

    spec = get_spec("efficientnet_lite0")
    model = load("efficientnet_lite0")
    pictures = []
    for name in BUNDLED:  # chelsea, coffee, astronaut, rocket: the whole photo and its four corner quarters
        img = bundled_image(name)
        w, h = img.size
        pictures.append(img)
        pictures += [img.crop((x, y, x + w // 2, y + h // 2)) for x in (0, w // 2) for y in (0, h // 2)]
    data = torch.stack([spec.preprocess(p) for p in pictures])  # (20, 3, 224, 224)
    result = atlas(model, data, "_blocks.10", grid=5, min_count=4, icon_size=32, steps=4, samples_per_image=16,
                   icon_batch=8, progress=False, render_kwargs={"input_size": 64})
    assert len(result.activations) == 20 * 16 and int(result.counts.sum()) == 320
    assert len(result.cells) > 3
    assert result.icons.shape == (len(result.cells), 3, 32, 32) and result.image.shape == (3, 160, 160)
    assert result.losses.shape == (-(-len(result.cells) // 8), 4)
    fed = result.params["render"]["normalize"]  # the icons were normalised the model's way
    assert fed["mean"] == pytest.approx(list(spec.mean)) and fed["std"] == pytest.approx(list(spec.std))
    for j, (r, c) in enumerate(result.cells.tolist()):
        assert torch.equal(_block(result.image, r, c, 32), result.icons[j])
        assert result.icons[j].std() > 0  # rendered, not blank
