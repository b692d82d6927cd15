"""seewhy.data: folders (flat, per class), path lists, tensors and DataLoaders streamed in batches; unreadable files
skipped and reported."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

from seewhy import images, zoo
from seewhy.data import ImageData, as_data, scan_images


def _png(path: Path, value: int, side: int = 8) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((side, side, 3), value, np.uint8)).save(path)


def _collect(data: ImageData, size: int) -> tuple[torch.Tensor, torch.Tensor, list]:
    xs, idx, labels = [], [], []
    for b in data.batches(size):
        assert len(b.inputs) <= size
        xs.append(b.inputs)
        idx.append(b.indices)
        labels.append(b.labels)
    return torch.cat(xs), torch.cat(idx), labels


def test_flat_folder_in_order_with_a_broken_file(tmp_path: Path):
    for i in range(5):
        _png(tmp_path / f"f{i}.png", 40 * i)
    (tmp_path / "f2b.png").write_bytes(b"broken")
    (tmp_path / ".hidden.png").write_bytes(b"hidden")
    (tmp_path / "notes.txt").write_text("not an image")
    data = as_data(tmp_path, transform=images.to_tensor, mean=(0, 0, 0), std=(1, 1, 1))
    assert len(data) == 6 and data.labels is None and Path(data.paths[3]).name == "f2b.png"
    x, idx, _ = _collect(data, 2)
    assert idx.tolist() == [0, 1, 2, 4, 5]
    torch.testing.assert_close(x[:, 0, 0, 0], torch.tensor([0, 40, 80, 120, 160]) / 255)
    assert len(data.skipped) == 1 and "f2b.png" in data.skipped[0][0]
    assert data.picture(4).shape == (8, 8, 3) and data.picture(4)[0, 0, 0] == 120


def test_class_folders_give_labels(tmp_path: Path):
    for c, n in (("cat", 2), ("dog", 3)):
        for i in range(n):
            _png(tmp_path / c / "sub" / f"{i}.png", 10 * i)
    (tmp_path / "empty").mkdir()
    paths, labels, classes = scan_images(tmp_path)
    assert classes == ["cat", "dog"] and labels == [0, 0, 1, 1, 1] and len(paths) == 5
    data = as_data(tmp_path, transform=images.to_tensor)
    _, idx, labels_ = _collect(data, 4)
    assert torch.cat(labels_).tolist() == [0, 0, 1, 1, 1] and idx.tolist() == list(range(5))


def test_default_preprocessing_is_the_zoo_models(tmp_path: Path):
    _png(tmp_path / "a.png", 200, side=40)
    model = zoo.load("tiny_cnn", pretrained=False)
    data = as_data(tmp_path, model)
    x = next(iter(data.batches(1))).inputs
    spec = zoo.get_spec("tiny_cnn")
    assert x.shape == (1, 3, 32, 32) and data.mean == spec.mean
    torch.testing.assert_close(data.pictures(x), torch.full_like(x, 200 / 255), atol=1e-6, rtol=0)
    generic = as_data([str(tmp_path / "a.png")])  # no model: ImageNet's 256 / 224
    assert next(iter(generic.batches(1))).inputs.shape == (1, 3, 224, 224)


def test_tensor_and_dataloaders():
    x = torch.randn(7, 3, 4, 4)
    y = torch.arange(7) % 2
    got, idx, labels = _collect(as_data(x, labels=y), 3)
    assert torch.equal(got, x) and idx.tolist() == list(range(7)) and torch.cat(labels).tolist() == y.tolist()
    loader = DataLoader(TensorDataset(x, y), batch_size=2)
    data = as_data(loader)
    got, idx, labels = _collect(data, 3)  # re-cut from batches of 2 into batches of 3
    assert torch.equal(got, x) and idx.tolist() == list(range(7)) and torch.cat(labels).tolist() == y.tolist()
    loaded, read = data.load([5, 1])
    assert torch.equal(loaded, x[[5, 1]]) and read == [5, 1]

    class Stream(IterableDataset):
        def __iter__(self):
            yield from x

    with pytest.raises(ValueError, match="no len"):
        as_data(DataLoader(Stream(), batch_size=4))

    class SizedStream(Stream):
        def __len__(self) -> int:
            return 7

    sized = as_data(DataLoader(SizedStream(), batch_size=4))
    assert len(sized) == 7 and not sized.random_access and torch.equal(_collect(sized, 5)[0], x)
    with pytest.raises(ValueError, match="random access"):
        sized.load([0])


def test_bad_data_is_explained(tmp_path: Path):
    with pytest.raises(ValueError, match="not a folder"):
        as_data(tmp_path / "missing")
    with pytest.raises(ValueError, match="no image files"):
        as_data(tmp_path)
    with pytest.raises(ValueError, match=r"\(N,C,H,W\)"):
        as_data(torch.zeros(3, 4, 4))
    with pytest.raises(TypeError, match="float"):
        as_data(torch.zeros(1, 3, 4, 4, dtype=torch.uint8))
    with pytest.raises(ValueError, match="labels"):
        as_data(torch.zeros(2, 3, 4, 4), labels=[0])
    with pytest.raises(TypeError, match="data must be"):
        as_data(3)
    _png(tmp_path / "a.png", 1, side=8)
    _png(tmp_path / "b.png", 1, side=10)
    data = as_data(tmp_path, transform=images.to_tensor)
    with pytest.raises(ValueError, match="share one size"):
        _collect(data, 2)
    with pytest.raises(ValueError, match="positive int"):
        next(iter(data.batches(0)))
