"""Exemplars (k-means medoids per class) and MMD-critic prototypes and criticisms (Kim, Khanna & Koyejo 2016), on
scikit-learn's bundled digits (1797 images of 8x8 pixels, 10 classes) and small random matrices."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

import seewhy.data
from seewhy.exemplars import Exemplars, PrototypesCriticisms, kernel_matrix, mmd_objective, prototypes_criticisms


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    x, y = load_digits(return_X_y=True)
    return (x - x.mean(0)) / (x.std(0) + 1e-8), y  # standardised pixels, float64


@pytest.fixture(scope="module")
def found(digits: tuple[np.ndarray, np.ndarray]) -> dict[str, PrototypesCriticisms]:
    x, _ = digits
    return {"abs": prototypes_criticisms(x, 40, 20),
            "logdet": prototypes_criticisms(x, 40, 20, regularizer="logdet"),
            "positive": prototypes_criticisms(x, 40, 20, witness_sign="positive")}


def test_reexported_from_data() -> None:
    assert seewhy.data.prototypes_criticisms is prototypes_criticisms
    assert isinstance(seewhy.data.exemplars, type(prototypes_criticisms))
    assert {"exemplars", "prototypes_criticisms"} <= set(seewhy.data.__all__)


def test_prototypes_cover_every_class(digits: tuple[np.ndarray, np.ndarray],
                                      found: dict[str, PrototypesCriticisms]) -> None:
    _, y = digits
    r = found["abs"]
    assert r.prototypes.shape == (40,) and r.criticisms.shape == (20,) and r.witness.shape == (len(y),)
    assert len(set(y[r.prototypes.numpy()])) == 10  # measured: all 10 classes among the 40 prototypes
    assert len(set(r.prototypes.tolist())) == 40
    assert not set(r.criticisms.tolist()) & set(r.prototypes.tolist())
    assert r.gamma_rule == "scale" and r.gamma == pytest.approx(1 / (64 * digits[0].var()))


def test_criticisms_are_atypical(found: dict[str, PrototypesCriticisms]) -> None:
    # mean k(x, X) of the criticisms vs the prototypes (measured, standardised digits, gamma "scale"):
    # abs 0.203 vs 0.227, logdet 0.024 vs 0.227, positive witness 0.061 vs 0.227 (all rows: 0.222)
    for name, ratio in {"abs": 0.95, "logdet": 0.3, "positive": 0.5}.items():
        r = found[name]
        assert r.density[r.criticisms].mean() < ratio * r.density[r.prototypes].mean(), name
    assert bool((found["positive"].witness[found["positive"].criticisms] > 0).all())


def test_objective_increases_and_matches_brute_force(digits: tuple[np.ndarray, np.ndarray],
                                                     found: dict[str, PrototypesCriticisms]) -> None:
    x, _ = digits
    r = found["abs"]
    assert bool((r.objective.diff() > 0).all())
    k, gamma, _ = kernel_matrix(x)
    assert gamma == r.gamma
    for m in (1, 2, 5, 17, 40):
        assert r.objective[m - 1].item() == pytest.approx(mmd_objective(k, r.prototypes[:m]), abs=1e-10)
    # each greedy step is the best single addition (checked by brute force at step 3 on a subset of candidates)
    s = r.prototypes[:2].tolist()
    best = max(range(0, len(x), 7), key=lambda c: -np.inf if c in s else mmd_objective(k, [*s, c]))
    assert mmd_objective(k, [*s, r.prototypes[2].item()]) >= mmd_objective(k, [*s, best]) - 1e-12


def test_witness_matches_direct_float64_formula() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(60, 5, generator=g)
    r = prototypes_criticisms(x, 6, 4, gamma=0.3)
    xd = x.double()
    k = torch.exp(-0.3 * ((xd[:, None, :] - xd[None, :, :]) ** 2).sum(-1))
    witness = k.mean(1) - k[:, r.prototypes].mean(1)
    torch.testing.assert_close(r.witness.double(), witness, atol=1e-5, rtol=0)
    assert r.witness.dtype == torch.float32
    assert r.criticisms.tolist() == sorted(set(range(60)) - set(r.prototypes.tolist()),
                                           key=lambda i: (-abs(witness[i].item()), i))[:4]


def test_logdet_regulariser_matches_slogdet() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(40, 3, generator=g, dtype=torch.float64)
    r = prototypes_criticisms(x, 4, 5, gamma=0.5, regularizer="logdet")
    k, _, _ = kernel_matrix(x, gamma=0.5)
    score = r.witness.abs()
    chosen: list[int] = []
    for _ in range(5):  # the greedy criticisms, recomputed with explicit log-determinants
        def value(c: int) -> float:
            s = [*chosen, c]
            return float(score[s].sum() + torch.linalg.slogdet(k[s][:, s])[1])
        free = [c for c in range(40) if c not in chosen and c not in r.prototypes.tolist()]
        chosen.append(max(free, key=value))
    assert r.criticisms.tolist() == chosen


def test_precomputed_and_median() -> None:
    g = torch.Generator().manual_seed(2)
    x = torch.randn(30, 4, generator=g, dtype=torch.float64)
    k, gamma, rule = kernel_matrix(x, gamma="median")
    d = torch.cdist(x, x) ** 2
    assert rule == "median" and gamma == pytest.approx(1 / d[~torch.eye(30, dtype=torch.bool)].median().item())
    a = prototypes_criticisms(x, 5, 3, gamma="median")
    b = prototypes_criticisms(k, 5, 3, kernel="precomputed")
    assert a.prototypes.tolist() == b.prototypes.tolist() and a.criticisms.tolist() == b.criticisms.tolist()
    assert b.gamma is None
    with pytest.raises(ValueError, match="no effect"):
        prototypes_criticisms(k, 5, kernel="precomputed", gamma=0.1)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"n_prototypes": 0}, "n_prototypes"),
    ({"n_prototypes": 20, "n_criticisms": 20}, "exceeds"),
    ({"kernel": "poly"}, "unknown kernel"),
    ({"gamma": -1.0}, "gamma must be"),
    ({"regularizer": "l2"}, "unknown regularizer"),
    ({"witness_sign": "neg"}, "witness_sign"),
])
def test_prototypes_errors(kwargs: dict, match: str) -> None:
    args = {"n_prototypes": 3, "n_criticisms": 2, **kwargs}
    with pytest.raises(ValueError, match=match):
        prototypes_criticisms(torch.randn(30, 2), **args)


def test_feature_errors() -> None:
    with pytest.raises(ValueError, match="2-D"):
        prototypes_criticisms(torch.randn(4, 2, 2), 1)
    with pytest.raises(ValueError, match="NaN"):
        prototypes_criticisms(torch.tensor([[0.0], [float("nan")]]), 1)
    with pytest.raises(ValueError, match="constant"):
        prototypes_criticisms(torch.ones(5, 3), 1)
    with pytest.raises(TypeError, match="numpy array or torch tensor"):
        prototypes_criticisms([[1.0, 2.0]], 1)


def test_exemplars_are_medoids(digits: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = digits
    e = seewhy.data.exemplars(x, y, 3, seed=0)
    assert isinstance(e, Exemplars)
    assert e.indices.shape == (30,) and sorted(e.per_class) == list(range(10))
    from sklearn.cluster import KMeans

    for c, rows in e.per_class.items():
        assert len(rows) == 3 and bool((torch.as_tensor(y)[rows] == c).all())
        members = np.flatnonzero(y == c)
        km = KMeans(3, n_init=10, random_state=0).fit(x[members])
        # each exemplar is the actual row nearest its own cluster's centre
        medoids = {int(members[np.argmin(((x[members] - ctr) ** 2).sum(1) + 1e300 * (km.labels_ != j))])
                   for j, ctr in enumerate(km.cluster_centers_)}
        assert set(rows.tolist()) == medoids
    assert int(e.cluster_sizes.sum()) == len(y)
    again = seewhy.data.exemplars(torch.as_tensor(x), torch.as_tensor(y), 3, seed=0)
    assert torch.equal(again.indices, e.indices)


def test_exemplars_small_class_and_errors() -> None:
    x = torch.randn(12, 2, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0] * 10 + [1] * 2)
    with pytest.warns(UserWarning, match="class 1 has 2 rows"):
        e = seewhy.data.exemplars(x, y, 3)
    assert e.per_class[1].tolist() == [10, 11] and len(e.per_class[0]) == 3
    with pytest.raises(ValueError, match="labels for 12 rows"):
        seewhy.data.exemplars(x, y[:5], 2)
    with pytest.raises(ValueError, match="k must be"):
        seewhy.data.exemplars(x, y, 0)


# -- on a model layer over an image folder, and the command ----------------------------------------------------


@pytest.fixture(scope="module")
def digit_folder(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    """60 digits (6 per class) as 8x8 PNGs in one sub-folder per class."""
    from PIL import Image

    x, y = load_digits(return_X_y=True)
    root = tmp_path_factory.mktemp("digits")
    keep = np.concatenate([np.flatnonzero(y == c)[:6] for c in range(10)])
    for i in keep:
        (root / str(y[i])).mkdir(exist_ok=True)
        Image.fromarray((x[i].reshape(8, 8) * 255 / 16).astype(np.uint8)).convert("RGB").save(root / str(y[i])
                                                                                               / f"{i:04d}.png")
    return root, y[keep]


def test_image_prototypes_criticisms(digit_folder: tuple[Path, np.ndarray]) -> None:
    from seewhy.data import as_data
    from seewhy.inside.prototypes import image_prototypes_criticisms, layer_features, tiles
    from seewhy.zoo import get_spec

    root, _ = digit_folder
    torch.manual_seed(0)
    spec = get_spec("tiny_cnn")
    model = spec.build(pretrained=False).train()  # training mode on purpose: it must come back as found
    before = {k: v.clone() for k, v in model.state_dict().items()}
    data = as_data(root, model, transform=spec.preprocess, mean=spec.mean, std=spec.std)
    feats = layer_features(model, data, "features", batch_size=16)
    assert feats.features.shape[0] == 60 and feats.features.dtype == torch.float32 and feats.labels is not None
    assert model.training and all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    r = image_prototypes_criticisms(model, data, "features", 10, 5, batch_size=16, regularizer="logdet")
    direct = prototypes_criticisms(feats.features, 10, 5, regularizer="logdet")
    assert r.found.prototypes.tolist() == direct.prototypes.tolist()
    assert r.prototypes.tolist() == feats.indices[direct.prototypes].tolist()
    pictures = tiles(r, data, size=32, columns=5)
    assert set(pictures) == {"prototypes", "criticisms"}
    assert pictures["prototypes"].dtype == np.uint8 and pictures["prototypes"].shape[2] == 3


@pytest.mark.filterwarnings("ignore:zoo model 'tiny_cnn' ships no weights")
def test_prototypes_command(digit_folder: tuple[Path, np.ndarray], tmp_path: Path,
                            capsys: pytest.CaptureFixture[str]) -> None:
    import argparse
    import json

    from seewhy.inside.prototypes_cli import add_parser

    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="command"))
    out = tmp_path / "report"
    args = parser.parse_args(["prototypes", str(digit_folder[0]), "--model", "tiny_cnn", "--out", str(out),
                              "--prototypes", "8", "--criticisms", "4", "--gamma", "median", "--batch-size", "32"])
    assert args.func(args) == 0
    assert capsys.readouterr().out.strip() == str(out / "index.html")
    manifest = json.loads((out / "manifest.json").read_text())
    assert len(manifest["prototypes"]) == 8 and len(manifest["criticisms"]) == 4
    assert manifest["kernel"]["gamma_rule"] == "median" and manifest["prototypes"][0]["path"].endswith(".png")
    assert "data:image/png;base64" in (out / "index.html").read_text()
    with pytest.raises(SystemExit):
        parser.parse_args(["prototypes", "x", "--model", "tiny_cnn", "--out", "o", "--gamma", "-1"])
