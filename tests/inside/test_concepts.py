"""Concept masks for dissection: the built-in colour terms and the three concept sources (folder, dict, callable)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from seewhy.data import Batch, as_data
from seewhy.inside.concepts import COLOUR_NAMES, as_concepts, colour_concepts, rgb_to_lab

EXPECTED = {
    "red": (1, 0, 0), "blue": (0, 0, 1), "yellow": (1, 1, 0), "white": (1, 1, 1), "black": (0, 0, 0),
    "grey": (0.5, 0.5, 0.5), "orange": (1, 0.5, 0), "brown": (0.45, 0.25, 0.1), "pink": (1, 0.75, 0.8),
    "purple": (0.5, 0, 0.5), "green": (0, 0.6, 0),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_pure_colours_get_their_name(name: str) -> None:
    image = torch.tensor(EXPECTED[name], dtype=torch.float32).view(3, 1, 1).expand(3, 4, 5)
    masks = colour_concepts(image)
    assert list(masks) == list(COLOUR_NAMES)
    assert masks[name].all(), {k: int(v.sum()) for k, v in masks.items()}


def test_every_pixel_is_in_exactly_one_colour() -> None:
    image = torch.rand(3, 37, 29, generator=torch.Generator().manual_seed(0))
    masks = colour_concepts(image)
    assert all(m.dtype == torch.bool and m.shape == (1, 37, 29) for m in masks.values())
    assert torch.equal(torch.stack(list(masks.values())).sum(0), torch.ones(1, 37, 29, dtype=torch.long))
    assert sum(bool(m.any()) for m in masks.values()) >= 8  # random colours reach most terms


def test_lab_matches_skimage() -> None:
    from skimage.color import rgb2lab

    rgb = torch.rand(50, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    expected = torch.from_numpy(rgb2lab(rgb.numpy()[None])[0])
    assert torch.allclose(rgb_to_lab(rgb), expected, atol=1e-3)


def test_colour_concepts_refuses_other_shapes() -> None:
    with pytest.raises(ValueError, match=r"\(3,H,W\)"):
        colour_concepts(torch.rand(1, 3, 4, 4))
    with pytest.raises(ValueError, match=r"\(3,H,W\)"):
        colour_concepts(torch.zeros(3, 4, 4, dtype=torch.uint8))


def _batch(data, indices: list[int]) -> Batch:
    x, read = data.load(indices)
    return Batch(x, torch.tensor(read), None)


def _write_images(folder: Path, n: int, size: int = 8) -> list[str]:
    folder.mkdir()
    for i in range(n):
        Image.fromarray(np.full((size, size, 3), 40 * i, dtype=np.uint8)).save(folder / f"img{i}.png")
    return [f"img{i}" for i in range(n)]


def _file_data(folder: Path):
    from seewhy.images import to_tensor

    return as_data(folder, transform=to_tensor, mean=(0, 0, 0), std=(1, 1, 1))


def test_folder_masks_are_matched_by_stem_resized_and_missing_means_absent(tmp_path: Path) -> None:
    _write_images(tmp_path / "images", 3)
    data = _file_data(tmp_path / "images")
    (tmp_path / "masks" / "sky").mkdir(parents=True)
    (tmp_path / "masks" / "cat").mkdir()
    half = np.zeros((4, 4), dtype=np.uint8)
    half[:2] = 255
    Image.fromarray(half).save(tmp_path / "masks" / "sky" / "img1.png")  # 4x4: resized (nearest) to 8x8
    Image.fromarray(np.full((8, 8), 1, dtype=np.uint8)).save(tmp_path / "masks" / "cat" / "img2.png")
    Image.fromarray(np.full((8, 8), 255, dtype=np.uint8)).save(tmp_path / "masks" / "cat" / "other.png")
    source = as_concepts(tmp_path / "masks", data, data.first())
    assert source.names == ["cat", "sky"]  # sorted
    present, masks = source.masks(_batch(data, [0, 1, 2]), (8, 8))
    assert present.tolist() == [0, 1] and masks.shape == (3, 2, 8, 8) and masks.dtype == torch.bool
    assert not masks[0].any()  # no mask file for img0: absent
    assert masks[1, 1, :4].all() and not masks[1, 1, 4:].any() and not masks[1, 0].any()
    assert masks[2, 0].all() and not masks[2, 1].any()
    present, masks = source.masks(_batch(data, [0]), (8, 8))
    assert present.numel() == 0 and masks.shape == (1, 0, 8, 8)


def test_folder_errors(tmp_path: Path) -> None:
    _write_images(tmp_path / "images", 2)
    data = _file_data(tmp_path / "images")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no concept sub-folders"):
        as_concepts(tmp_path / "empty", data, data.first())
    (tmp_path / "wrong" / "sky").mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(tmp_path / "wrong" / "sky" / "unrelated.png")
    with pytest.raises(ValueError, match="matches an image"):
        as_concepts(tmp_path / "wrong", data, data.first())
    with pytest.raises(ValueError, match="not a folder"):
        as_concepts(tmp_path / "missing", data, data.first())
    tensor_data = as_data(torch.rand(2, 3, 8, 8))
    with pytest.raises(ValueError, match="image files"):
        as_concepts(tmp_path / "wrong", tensor_data, tensor_data.first())


def test_dict_masks_are_indexed_by_the_batch_and_checked() -> None:
    data = as_data(torch.rand(4, 3, 6, 6))
    sky = torch.zeros(4, 1, 6, 6, dtype=torch.bool)
    sky[2, 0, :3] = True
    cat = torch.zeros(4, 1, 3, 3, dtype=torch.bool)
    cat[3, 0, 0, 0] = True
    source = as_concepts({"sky": sky, "cat": cat}, data, data.first())
    assert source.names == ["sky", "cat"]  # dict order
    present, masks = source.masks(Batch(data.load([2, 3])[0], torch.tensor([2, 3]), None), (6, 6))
    assert present.tolist() == [0, 1]
    assert torch.equal(masks[0, 0], sky[2, 0]) and not masks[1, 0].any()
    assert masks[1, 1, :2, :2].all() and int(masks[1, 1].sum()) == 4  # 3x3 -> 6x6, nearest
    with pytest.raises(ValueError, match="3 images, the data has 4"):
        as_concepts({"sky": sky[:3]}, data, data.first())
    with pytest.raises(ValueError, match=r"\(N,1,H,W\)"):
        as_concepts({"sky": torch.zeros(4, 2, 6, 6, dtype=torch.bool)}, data, data.first())
    with pytest.raises(ValueError, match="bool"):
        as_concepts({"sky": torch.rand(4, 1, 6, 6)}, data, data.first())
    with pytest.raises(ValueError, match="empty"):
        as_concepts({}, data, data.first())


def test_callable_names_keep_the_first_call_order_and_grow() -> None:
    data = as_data(torch.rand(3, 3, 4, 4))
    calls = []

    def concepts(picture: torch.Tensor) -> dict[str, torch.Tensor]:
        calls.append(picture.shape)
        k = len(calls)
        found = {"b": torch.ones(4, 4, dtype=torch.bool), "a": torch.zeros(1, 4, 4, dtype=torch.bool)}
        if k == 4:  # the third image (the first one was also seen up front)
            found = {"c": torch.ones(4, 4, dtype=torch.bool)}  # b and a absent, c new
        return found

    source = as_concepts(concepts, data, data.first())
    assert source.names == ["b", "a"] and calls == [(3, 4, 4)]
    present, masks = source.masks(Batch(data.load([0, 1])[0], torch.tensor([0, 1]), None), (4, 4))
    assert present.tolist() == [0] and masks.shape == (2, 1, 4, 4) and masks.all()  # 'a' is empty everywhere
    present, masks = source.masks(Batch(data.load([2])[0], torch.tensor([2]), None), (4, 4))
    assert source.names == ["b", "a", "c"] and present.tolist() == [2] and masks.all()


def test_callable_errors() -> None:
    data = as_data(torch.rand(2, 3, 4, 4))
    with pytest.raises(ValueError, match="must return a dict"):
        as_concepts(lambda p: [p > 0], data, data.first())
    with pytest.raises(ValueError, match="picture's size"):
        as_concepts(lambda p: {"x": torch.ones(5, 5, dtype=torch.bool)}, data, data.first())
    with pytest.raises(TypeError, match="concepts must be"):
        as_concepts(3, data, data.first())
