"""embed / scatter / grid_cells: pooled features, projections (PCA, t-SNE, UMAP), the thumbnail map and its grid."""

from __future__ import annotations

import importlib.util
import itertools
import logging
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import Tensor, nn

from seewhy.data import ImageData, as_data
from seewhy.images import preprocess
from seewhy.inside.embedding import Embedding, embed, grid_cells, project, scatter
from seewhy.zoo.small import TinyCNN

CLASSES = ("blue", "green", "red")
PER_CLASS = 8
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def _write_folder(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for c, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True)
        base = np.zeros(3)
        base[2 - c] = 200  # blue, green, red
        for i in range(PER_CLASS):
            img = np.clip(base + 30 + rng.normal(0, 25, (24, 24, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(root / name / f"{i:02d}.png")
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write_folder(tmp_path_factory.mktemp("colours"))


@pytest.fixture(scope="module")
def model() -> nn.Module:
    torch.manual_seed(0)
    return TinyCNN().eval()


def _small(folder: Path | str) -> ImageData:
    """The folder at 32x32 (fast), true colours for thumbnails."""
    return as_data(folder, transform=lambda img: preprocess(img, resize=32, crop=32, mean=MEAN, std=STD),
                   mean=MEAN, std=STD)


def _loo_1nn(coords: Tensor, labels: Tensor) -> float:
    d = torch.cdist(coords.double(), coords.double())
    d.fill_diagonal_(float("inf"))
    return (labels[d.argmin(1)] == labels).float().mean().item()


def _gap_by_hook(model: nn.Module, module: nn.Module, x: Tensor) -> Tensor:
    out: dict[str, Tensor] = {}

    def hook(mod: nn.Module, args: tuple, output: Tensor) -> None:
        out["y"] = output.detach().clone()  # before the in-place ReLU after it

    handle = module.register_forward_hook(hook)
    with torch.no_grad():
        model(x)
    handle.remove()
    return out["y"].mean(dim=(2, 3))


def test_folder_gives_labels_and_pca_separates_classes(folder: Path, model: nn.Module,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="seewhy"):
        e = embed(model, str(folder), "features.2", "pca")  # the folder itself: default preprocessing, labels
    assert "24 images at features.2, then a pca projection" in caplog.records[0].getMessage()  # the cost up front
    assert isinstance(e, Embedding)
    n = len(CLASSES) * PER_CLASS
    assert e.features.shape == (n, 32) and e.features.dtype == torch.float32 and e.features.device.type == "cpu"
    assert e.coords.shape == (n, 2) and e.indices.tolist() == list(range(n))
    assert e.classes == list(CLASSES) and e.labels.tolist() == [c for c in range(3) for _ in range(PER_CLASS)]
    assert [Path(p).parent.name for p in e.paths] == [CLASSES[c] for c in e.labels.tolist()]
    assert (e.method, e.layer, e.seed, e.skipped) == ("pca", "features.2", 0, [])
    assert set(e.seconds) == {"features", "projection"} and all(s > 0 for s in e.seconds.values())
    assert _loo_1nn(e.coords, e.labels) >= 0.9


def test_tsne_separates_classes_and_is_deterministic(folder: Path, model: nn.Module) -> None:
    data = _small(folder)
    a = embed(model, data, "features.2", "tsne", seed=3, batch_size=8, max_iter=300)
    b = embed(model, data, "features.2", "tsne", seed=3, batch_size=8, max_iter=300)
    assert torch.equal(a.coords, b.coords)
    assert _loo_1nn(a.coords, a.labels) >= 0.9
    assert a.coords.std(0).min() > 0  # a real 2-D map, not collapsed


def test_tsne_reduces_wide_features_to_50_dims_by_pca_and_clips_perplexity() -> None:
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    x = np.random.default_rng(0).normal(size=(30, 80)).astype(np.float32)
    expected = TSNE(n_components=2, init="pca", perplexity=29 / 3, random_state=1, max_iter=250).fit_transform(
        PCA(n_components=30, random_state=1).fit_transform(x))
    np.testing.assert_allclose(project(x, "tsne", 1, {"max_iter": 250}), expected, rtol=1e-5, atol=1e-5)
    assert project(x[:5, :4], "tsne", 0, {"perplexity": 50.0, "max_iter": 250}).shape == (5, 2)  # not >= N


def test_features_are_the_gap_of_the_layer_and_pca_is_the_svd(folder: Path, model: nn.Module) -> None:
    data = _small(folder)
    e = embed(model, data, model.features[2], "pca", batch_size=5)
    x, _ = data.load(range(len(data)))
    torch.testing.assert_close(e.features, _gap_by_hook(model, model.features[2], x), atol=1e-5, rtol=1e-5)
    f = e.features.double().numpy()
    u, s, _ = np.linalg.svd(f - f.mean(0), full_matrices=False)
    expected = u[:, :2] * s[:2]
    got = e.coords.double().numpy()
    for j in range(2):
        assert min(np.abs(got[:, j] - expected[:, j]).max(), np.abs(got[:, j] + expected[:, j]).max()) < 1e-4


def test_batch_size_does_not_change_the_result(folder: Path, model: nn.Module) -> None:
    data = _small(folder)
    one = embed(model, data, "features.2", "pca", batch_size=1)
    five = embed(model, data, "features.2", "pca", batch_size=5)
    assert torch.equal(one.indices, five.indices)
    torch.testing.assert_close(one.features, five.features, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(one.coords, five.coords, atol=1e-4, rtol=1e-4)
    again = embed(model, data, "features.2", "pca", batch_size=5)
    assert torch.equal(five.coords, again.coords)


class _Vector(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 8 * 8, 6)
        self.tokens = nn.Identity()
        self.scalar = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv(x)
        v = self.fc(h.flatten(1))
        t = self.tokens(h.flatten(2).transpose(1, 2))  # (B, 64 tokens, 4)
        return self.scalar(v.sum(1)) + t.sum((1, 2))  # (B,)


def test_vector_token_and_bad_layer_outputs() -> None:
    torch.manual_seed(1)
    net = _Vector().eval()
    x = torch.randn(6, 3, 8, 8)
    with torch.no_grad():
        h = net.conv(x)
        fc, tokens = net.fc(h.flatten(1)), h.flatten(2).transpose(1, 2).mean(1)
    e = embed(net, x, "fc", "pca", batch_size=4)
    torch.testing.assert_close(e.features, fc, atol=1e-5, rtol=1e-5)
    assert e.labels is None and e.classes is None and e.paths is None
    torch.testing.assert_close(embed(net, x, "tokens", "pca").features, tokens, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match=r"\(B,K,h,w\), \(B,D\) or \(B,N,D\)"):
        embed(net, x, "scalar", "pca")
    with pytest.raises(ValueError, match="'umap', 'tsne', 'pca'"):
        embed(net, x, "fc", "isomap")


def test_grid_cells_is_an_optimal_one_to_one_assignment() -> None:
    corners = np.array([[1.0, 1.0], [0.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    assert grid_cells(corners).tolist() == [1, 2, 0, 3]  # 2x2 grid, row 0 at the top (largest y)
    rng = np.random.default_rng(0)
    cells = grid_cells(torch.from_numpy(rng.normal(size=(10, 2))))
    assert len(set(cells.tolist())) == 10 and cells.min() >= 0 and cells.max() < 16  # 4x4 grid, distinct cells
    for trial in range(3):  # 5 points in a 3x3 grid: the same total cost as the best of all 15,120 placements
        pts = np.random.default_rng(trial).uniform(size=(5, 2)) ** 3  # bunched in a corner: greedy would fail
        norm = (pts - pts.min(0)) / np.ptp(pts, 0)
        r, c = np.divmod(np.arange(9), 3)
        centres = np.stack([(c + 0.5) / 3, 1 - (r + 0.5) / 3], axis=1)
        cost = ((norm[:, None] - centres[None]) ** 2).sum(-1)
        best = min(cost[range(5), list(p)].sum() for p in itertools.permutations(range(9), 5))
        assert cost[range(5), grid_cells(pts)].sum() == pytest.approx(best)


def test_scatter_grid_puts_each_image_in_its_cell(folder: Path, model: nn.Module) -> None:
    data = _small(folder)
    e = embed(model, data, "features.2", "pca", batch_size=8)
    size = 300
    pic = scatter(e, data, grid=True, size=size, border_by_label=False)
    assert pic.shape == (size, size, 3) and pic.dtype == np.uint8
    side = 5  # ceil(sqrt(24))
    box = size // side
    filled = {int(c) for c in grid_cells(e.coords)}
    for cell in range(side * side):
        r, c = divmod(cell, side)
        tile = pic[r * box:(r + 1) * box, c * box:(c + 1) * box]
        assert (tile.min() < 250) == (cell in filled), cell  # an image in every used cell, white elsewhere
    labelled = scatter(e, data, thumb=30, size=size)
    assert labelled.shape == (size, size, 3) and (labelled < 250).any(-1).mean() > 0.02
    tab10_blue = np.array([31, 119, 180], dtype=np.uint8)
    assert (labelled == tab10_blue).all(-1).sum() > 50  # class borders and the legend


def test_unreadable_file_is_skipped(tmp_path: Path, model: nn.Module) -> None:
    root = _write_folder(tmp_path / "data")
    (root / "red" / "03_broken.png").write_bytes(b"not a png")
    data = _small(root)
    e = embed(model, data, "features.2", "pca", batch_size=4)
    assert len(e.skipped) == 1 and e.skipped[0][0].endswith("03_broken.png")
    assert len(e.indices) == len(data) - 1 and len(e.paths) == len(e.indices)
    assert not any(p.endswith("03_broken.png") for p in e.paths)
    assert torch.equal(e.labels, data.labels[e.indices])
    assert scatter(e, data, size=200, thumb=20).shape == (200, 200, 3)
    other = _write_folder(tmp_path / "other")  # same layout, other files: refused
    (other / "red" / "03_other.png").write_bytes((root / "red" / "00.png").read_bytes())
    with pytest.raises(ValueError, match="not the embedding's"):
        scatter(e, _small(other), size=200)


@pytest.mark.slow  # numba compiles UMAP on its first run in a process: about 10 s
@pytest.mark.skipif(importlib.util.find_spec("umap") is None, reason="umap-learn is not installed")
def test_umap_short_run(model: nn.Module) -> None:
    x = torch.randn(20, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    e = embed(model, x, "features.2", "umap", n_neighbors=5, n_epochs=30)
    assert e.coords.shape == (20, 2) and torch.isfinite(e.coords).all() and e.method == "umap"


def test_umap_missing_names_the_extra(model: nn.Module, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "umap", None)  # import umap -> ImportError
    with pytest.raises(ImportError, match=r'pip install "seewhy\[umap\]"') as info:
        embed(model, torch.randn(4, 3, 8, 8), "features.2", "umap")
    assert "tsne" in str(info.value) and "pca" in str(info.value)
