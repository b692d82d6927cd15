"""seewhy.effects: PDP/ICE equal to scikit-learn's brute partial_dependence, the grid, ALE identities and the
correlated-feature case where PD and ALE differ, and transform_effects on a tiny CNN."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats.mstats import mquantiles
from sklearn.ensemble import GradientBoostingRegressor
from sklearn.inspection import partial_dependence as sk_partial_dependence
from sklearn.linear_model import LogisticRegression

from seewhy import effects, zoo
from seewhy.effects import accumulated_local_effects, partial_dependence, transform_effects
from seewhy.hooks import count_hooks


def _data(n: int = 120, d: int = 3, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    X[:, 2] = rng.integers(0, 4, n).astype(float)  # a feature with 4 unique values
    return X


@pytest.fixture(scope="module")
def regressor() -> tuple[GradientBoostingRegressor, np.ndarray]:
    X = _data()
    y = X[:, 0] ** 2 + np.sin(2 * X[:, 1]) + 0.5 * X[:, 2] * X[:, 0]
    return GradientBoostingRegressor(n_estimators=15, max_depth=2, random_state=0).fit(X, y), X


def _same(ours: effects.PartialDependence, theirs: dict, kind: str) -> None:
    assert len(ours.grid) == len(theirs["grid_values"])
    for a, b in zip(ours.grid, theirs["grid_values"], strict=True):
        np.testing.assert_array_equal(a, b)
    if kind in ("average", "both"):
        assert ours.average.shape == theirs["average"].shape
        np.testing.assert_allclose(ours.average, theirs["average"], rtol=1e-12, atol=1e-12)
    else:
        assert ours.average is None
    if kind in ("individual", "both"):
        assert ours.individual.shape == theirs["individual"].shape
        np.testing.assert_allclose(ours.individual, theirs["individual"], rtol=1e-12, atol=1e-12)
    else:
        assert ours.individual is None


@pytest.mark.parametrize("features", [[0], [2], [(0, 1)], [(0, 2)]])
@pytest.mark.parametrize("kind", ["average", "individual", "both"])
def test_regressor_equals_sklearn(regressor, features, kind):
    est, X = regressor
    theirs = sk_partial_dependence(est, X, features, method="brute", kind=kind, grid_resolution=12)
    ours = partial_dependence(est.predict, X, features, grid_resolution=12, kind=kind, batch_size=500)
    _same(ours, theirs, kind)


def test_single_int_and_pair_forms(regressor):
    est, X = regressor
    a = partial_dependence(est.predict, X, 1, grid_resolution=8)
    b = partial_dependence(est.predict, X, [1], grid_resolution=8)
    np.testing.assert_array_equal(a.average, b.average)
    c = partial_dependence(est.predict, X, (0, 1), grid_resolution=8)
    assert c.average.shape == (1, 8, 8) and c.features == (0, 1)


@pytest.mark.parametrize("n_classes", [2, 3])
@pytest.mark.parametrize("features", [[1], [(0, 1)]])
def test_classifier_predict_proba_equals_sklearn(n_classes, features):
    X = _data(90, seed=1)
    y = (X[:, 0] + X[:, 1] > 0).astype(int) if n_classes == 2 else np.digitize(X[:, 0] - X[:, 1], [-0.7, 0.7])
    est = LogisticRegression().fit(X, y)
    theirs = sk_partial_dependence(est, X, features, method="brute", kind="both", grid_resolution=7,
                                   response_method="predict_proba")
    ours = partial_dependence(est.predict_proba, X, features, grid_resolution=7, kind="both")
    _same(ours, theirs, "both")
    assert ours.average.shape[0] == (1 if n_classes == 2 else 3)  # binary: the positive class only, as sklearn
    assert ours.individual.min() >= 0 and ours.individual.max() <= 1
    both = partial_dependence(est.predict_proba, X, features, grid_resolution=7, output="all")
    assert both.average.shape[0] == n_classes
    theirs = sk_partial_dependence(est, X, features, method="brute", kind="average", grid_resolution=7,
                                   response_method="decision_function")
    _same(partial_dependence(est.decision_function, X, features, grid_resolution=7), theirs, "average")


def test_dataframe_input_and_column_names(regressor):
    pd = pytest.importorskip("pandas")
    est, X = regressor
    frame = pd.DataFrame(X, columns=["a", "b", "c"])
    fitted = GradientBoostingRegressor(n_estimators=10, max_depth=2, random_state=0).fit(frame, X[:, 0] * X[:, 1])
    seen = []

    def predict(data):
        seen.append(type(data))
        return fitted.predict(data)

    theirs = sk_partial_dependence(fitted, frame, ["a", "b"], method="brute", kind="both", grid_resolution=6)
    ours = partial_dependence(predict, frame, [("a", "b")], grid_resolution=6, kind="both", batch_size=1000)
    _same(ours, theirs, "both")
    assert set(seen) == {pd.DataFrame}
    assert len(seen) == 5  # 36 grid points x 120 rows = 4320 rows in chunks of 1000


def test_torch_input_and_module():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2)).double().train()
    X = torch.randn(50, 3, dtype=torch.float64)
    ours = partial_dependence(net, X, 0, grid_resolution=5, kind="both")
    g = torch.as_tensor(ours.grid[0])
    with torch.no_grad():
        ref = torch.stack([net.eval()(torch.cat([g[i].expand(50, 1), X[:, 1:]], 1)) for i in range(5)], 2)
    net.train()
    np.testing.assert_allclose(ours.individual, ref.permute(1, 0, 2).numpy(), rtol=1e-12)
    assert net.training and all(p.requires_grad for p in net.parameters()) and count_hooks(net) == 0


def test_batched_calls_not_one_per_point(regressor):
    est, X = regressor
    calls = []

    def predict(data):
        calls.append(len(data))
        return est.predict(data)

    partial_dependence(predict, X, [(0, 1)], grid_resolution=10)  # 100 points x 120 rows
    assert len(calls) == 1 and calls[0] == 12000
    calls.clear()
    partial_dependence(predict, X, [(0, 1)], grid_resolution=10, batch_size=5000)
    assert calls == [5000, 5000, 2000]


def test_grid_unique_values_and_percentiles():
    X = _data(200, seed=3)
    g = effects.feature_grid(X[:, 2], grid_resolution=10)
    np.testing.assert_array_equal(g, [0.0, 1.0, 2.0, 3.0])  # fewer unique values than the resolution: those
    g = effects.feature_grid(X[:, 2], grid_resolution=4, percentiles=(0.3, 0.6))  # 4 uniques, not < 4: linspace
    lo, hi = mquantiles(X[:, 2], [0.3, 0.6])
    np.testing.assert_allclose(g, np.linspace(lo, hi, 4))
    g = effects.feature_grid(X[:, 0], grid_resolution=20, percentiles=(0.1, 0.8))
    np.testing.assert_allclose(g[[0, -1]], mquantiles(X[:, 0], [0.1, 0.8]))
    assert len(g) == 20
    # the same grid as scikit-learn's, read from its result
    est = LogisticRegression().fit(X, (X[:, 0] > 0).astype(int))
    for col, res in ((0, 20), (2, 4), (2, 5)):
        theirs = sk_partial_dependence(est, X, [col], method="brute", grid_resolution=res, percentiles=(0.3, 0.6))
        np.testing.assert_array_equal(effects.feature_grid(X[:, col], res, (0.3, 0.6)), theirs["grid_values"][0])


@pytest.mark.parametrize("kwargs, match", [
    ({"grid_resolution": 1}, "grid_resolution must be an int > 1"),
    ({"percentiles": (0.9, 0.1)}, "0 <= low < high <= 1"),
    ({"kind": "mean"}, "kind must be one of"),
    ({"features": [0, 1, 2]}, "one feature"),
    ({"features": 7}, "out of range"),
    ({"features": "a"}, "not a DataFrame"),
    ({"output": 5}, "2 column"),
])
def test_partial_dependence_errors(kwargs, match):
    X = _data(30)
    est = LogisticRegression().fit(X, (X[:, 0] > 0).astype(int))
    args = {"features": 0, **kwargs}
    with pytest.raises((ValueError, TypeError), match=match):
        partial_dependence(est.predict_proba, X, **args)


def test_percentiles_too_close():
    x = np.r_[np.zeros(300), np.linspace(1, 2, 150)]  # the 10% and 50% quantiles are both 0
    with pytest.raises(ValueError, match="further apart"):
        effects.feature_grid(x, grid_resolution=5, percentiles=(0.1, 0.5))


# -- ALE -------------------------------------------------------------------------------------------------


def test_ale_linear_model_exact():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(1000, 3))
    b = np.array([2.0, -1.0, 0.5])

    def f(data):
        return data @ b + 3.0

    for j in range(3):
        ale = accumulated_local_effects(f, X, j, bins=20)
        z, n = ale.grid, ale.counts
        assert len(z) == 21 and n.sum() == 1000 and ale.effect.shape == (1, 21)
        c = np.sum(n * (z[:-1] + z[1:]) / 2) / n.sum()
        np.testing.assert_allclose(ale.effect[0], b[j] * (z - c), atol=1e-10)
        np.testing.assert_allclose(ale.local[0], b[j] * np.diff(z), atol=1e-10)
        # centred: the count-weighted mean of the (piecewise-linear) ALE is 0
        assert abs(np.sum(n * (ale.effect[0, :-1] + ale.effect[0, 1:]) / 2)) < 1e-8
        assert z[0] == X[:, j].min() and z[-1] == X[:, j].max()


def test_pd_and_ale_differ_on_correlated_features():
    """f = x1 + x1 * x2 with x2 = x1 + small noise, x1 ~ U(-1, 1).

    PD_1(g) = g * (1 + mean(x2)) exactly (x2 averaged over its marginal, mean about 0: a straight line);
    ALE_1(z) = int_{-1}^{z} (1 + E[x2 | x1 = t]) dt - const = z + z^2 / 2 - 1/6 (centred: E[x1] = 0,
    E[x1^2] / 2 = 1/6): the feature's own, curved effect."""
    rng = np.random.default_rng(0)
    x1 = rng.uniform(-1, 1, 20000)
    X = np.stack([x1, x1 + rng.normal(0, 0.05, x1.size)], 1)

    def f(data):
        return data[:, 0] + data[:, 0] * data[:, 1]

    pd_ = partial_dependence(f, X[:2000], 0, grid_resolution=25)
    g = pd_.grid[0]
    np.testing.assert_allclose(pd_.average[0], g * (1 + X[:2000, 1].mean()), atol=1e-12)
    ale = accumulated_local_effects(f, X, 0, bins=40)
    z = ale.grid
    np.testing.assert_allclose(ale.effect[0], z + z ** 2 / 2 - 1 / 6, atol=0.01)
    # where they differ: at the ends PD misses the curvature (z^2 / 2 ~ 0.5 at |z| = 1)
    pd_at_z = z * (1 + X[:2000, 1].mean())
    centred_pd = pd_at_z - pd_at_z.mean()
    assert np.max(np.abs((ale.effect[0] - ale.effect[0].mean()) - centred_pd)) > 0.15


def test_ale_bins_with_repeated_values():
    rng = np.random.default_rng(1)
    X = np.stack([rng.choice([0.0, 1.0, 2.0, 5.0], 400, p=[0.6, 0.2, 0.1, 0.1]), rng.normal(size=400)], 1)
    ale = accumulated_local_effects(lambda d: 3 * d[:, 0] - d[:, 1], X, 0, bins=20)
    np.testing.assert_array_equal(ale.grid, [0.0, 1.0, 2.0, 5.0])  # quantile edges merged
    values, n = np.unique(X[:, 0], return_counts=True)
    np.testing.assert_array_equal(ale.counts, [n[0] + n[1], n[2], n[3]])  # the first bin also holds the minimum
    c = np.sum(ale.counts * (ale.grid[:-1] + ale.grid[1:]) / 2) / 400
    np.testing.assert_allclose(ale.effect[0], 3 * (ale.grid - c), atol=1e-12)


def test_ale_errors_and_explicit_edges():
    X = np.stack([np.ones(20), np.arange(20.0)], 1)
    with pytest.raises(ValueError, match="constant"):
        accumulated_local_effects(lambda d: d[:, 0], X, 0)
    with pytest.raises(ValueError, match="bins must be"):
        accumulated_local_effects(lambda d: d[:, 1], X, 1, bins=0)
    with pytest.raises(ValueError, match="do not cover"):
        accumulated_local_effects(lambda d: d[:, 1], X, 1, bins=[0, 5, 10])
    ale = accumulated_local_effects(lambda d: 2 * d[:, 1], X, 1, bins=[0, 5, 10, 19])
    np.testing.assert_array_equal(ale.counts, [6, 5, 9])
    np.testing.assert_allclose(ale.local[0], 2 * np.diff([0, 5, 10, 19]))


# -- transform_effects ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny() -> tuple[torch.nn.Module, torch.Tensor]:
    model = zoo.get_spec("tiny_cnn").build(True).eval()
    g = torch.Generator().manual_seed(0)
    return model, torch.rand(3, 3, 32, 32, generator=g)


def _clean_probs(model, images):
    with torch.no_grad():
        return model((images - 0.5) / 0.5).softmax(1)


@pytest.mark.parametrize("name", list(effects.TRANSFORMS))
def test_transform_effects_identity_exact(tiny, name):
    model, images = tiny
    res = transform_effects(model, images, name, batch_size=4)
    spec = effects.TRANSFORMS[name]
    assert res.curves.shape == (3, len(spec.defaults)) and res.average.shape == (len(spec.defaults),)
    assert res.identity == spec.identity and spec.identity in res.values and res.transform == name
    probs = _clean_probs(model, images)
    target = probs.argmax(1)
    assert torch.equal(res.target, target)
    j = res.values.index(spec.identity)
    assert torch.equal(res.curves[:, j], probs[torch.arange(3), target])
    assert torch.allclose(res.average, res.curves.mean(0))
    assert ((res.curves >= 0) & (res.curves <= 1)).all()


def test_transform_effects_values_match_direct_forward(tiny):
    model, images = tiny
    res = transform_effects(model, images, "rotation", values=[-20, 0, 30], target=4, batch_size=2)
    for j, v in enumerate(res.values):
        direct = _clean_probs(model, effects.apply_transform(images, "rotation", v))[:, 4]
        torch.testing.assert_close(res.curves[:, j], direct, rtol=1e-5, atol=1e-6)
    assert res.target.tolist() == [4, 4, 4]


def test_transforms_mean_what_they_say():
    x = torch.full((1, 3, 8, 8), 0.4)
    x[..., :4] = 0.6
    assert torch.allclose(effects.apply_transform(x, "brightness", 0.1), x + 0.1)
    assert torch.allclose(effects.apply_transform(x, "contrast", 0.0), torch.full_like(x, 0.5))
    assert torch.allclose(effects.apply_transform(x, "contrast", 2.0), 0.5 + 2 * (x - 0.5))
    occluded = effects.apply_transform(x, "occlusion_size", 0.5)
    assert (occluded[..., 2:6, 2:6] == 0.5).all() and (occluded[..., 0, :] == x[..., 0, :]).all()
    assert torch.allclose(effects.apply_transform(x, "blur", 0.0), x)
    flat = torch.full((1, 3, 8, 8), 0.3)
    assert torch.allclose(effects.apply_transform(flat, "blur", 2.0), flat, atol=1e-6)
    rot = effects.apply_transform(x, "rotation", 180.0)
    assert torch.allclose(rot, x.flip(-1), atol=1e-5)
    zoomed = effects.apply_transform(x, "scale", 0.5)  # half size, grey border
    assert torch.allclose(zoomed[..., 0, :], torch.full((1, 3, 8), 0.5))


def test_transform_effects_callable_and_per_image_target(tiny):
    model, images = tiny

    def darken(imgs, value):
        return imgs * value

    res = transform_effects(model, images, darken, values=[1.0, 0.5, 0.0], target=[1, 2, 3])
    assert res.transform == "darken" and res.identity is None and res.target.tolist() == [1, 2, 3]
    probs = _clean_probs(model, images)
    torch.testing.assert_close(res.curves[:, 0], probs[torch.arange(3), torch.tensor([1, 2, 3])])
    with pytest.raises(ValueError, match="pass values"):
        transform_effects(model, images, darken)


@pytest.mark.parametrize("kwargs, error, match", [
    ({"transform": "sharpness"}, ValueError, "unknown transform 'sharpness'; use one of brightness"),
    ({"transform": 3}, TypeError, "transform must be a name"),
    ({"transform": "blur", "values": [-1.0]}, ValueError, r"blur values \[-1.0\] are out of range"),
    ({"transform": "scale", "values": [0.0]}, ValueError, r"scale takes numbers in \(0"),
    ({"transform": "occlusion_size", "values": [1.5]}, ValueError, "out of range"),
    ({"values": []}, ValueError, "empty"),
    ({"values": ["a"]}, TypeError, "must be numbers"),
    ({"target": 10}, ValueError, "out of range: the model has 10 classes"),
    ({"target": "cat"}, ValueError, "class name"),
    ({"transform": lambda x, v: x[:, :1], "values": [1.0]}, ValueError, "must return images of shape"),
])
def test_transform_effects_errors(tiny, kwargs, error, match):
    model, images = tiny
    with pytest.raises(error, match=match):
        transform_effects(model, images, **kwargs)


def test_transform_effects_bad_images_and_model_left_as_found(tiny):
    model, images = tiny
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        transform_effects(model, images * 2 - 1)
    with pytest.raises(ValueError, match="B, C, H, W"):
        transform_effects(model, images[0])
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    transform_effects(model, images, "brightness", values=[0.0, 0.2])
    assert model.training and all(m.training for m in model.modules())
    assert all(p.requires_grad for p in model.parameters()) and count_hooks(model) == 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    model.eval()
