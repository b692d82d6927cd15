"""Localization metrics on hand-made maps and masks with known answers; boxes, PNG masks and box files."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from seewhy.metrics import METRICS
from seewhy.metrics.localization import (
    boxes_to_masks,
    energy_pointing_game,
    load_boxes,
    load_masks,
    pointing_accuracy,
    pointing_game,
    relevance_mass_accuracy,
    relevance_rank_accuracy,
)

S = 64
X = torch.zeros(1, 3, S, S)


def peak(y: int, x: int, n: int = 1) -> torch.Tensor:
    """n maps (n,1,S,S) with a single maximum at (y, x) on a small positive background."""
    a = torch.full((n, 1, S, S), 0.1)
    a[:, 0, y, x] = 1.0
    return a


def box_mask(x0: int, y0: int, x1: int, y1: int) -> torch.Tensor:
    return boxes_to_masks([(x0, y0, x1, y1)], S)


def test_pointing_game_tolerance_is_15_pixels_strict():
    a = peak(10, 10)
    assert pointing_game(None, X, a, mask=box_mask(5, 5, 15, 15)).item() == 1.0  # on the object
    assert pointing_game(None, X, a, mask=box_mask(24, 10, 40, 11)).item() == 1.0  # 14 px away: within tolerance
    assert pointing_game(None, X, a, mask=box_mask(25, 10, 40, 11)).item() == 0.0  # exactly 15 px: TorchRay's d < 15
    assert pointing_game(None, X, a, mask=box_mask(25, 10, 40, 11), tolerance=16).item() == 1.0
    assert pointing_game(None, X, a, mask=box_mask(11, 11, 20, 20), tolerance=0).item() == 0.0  # exact point only
    assert pointing_game(None, X, a, mask=box_mask(10, 10, 11, 11), tolerance=0).item() == 1.0
    # diagonal distance: (10,10) -> (20,20) is 14.1 px, (21,21) is 15.6 px
    assert pointing_game(None, X, a, mask=box_mask(20, 20, 30, 30)).item() == 1.0
    assert pointing_game(None, X, a, mask=box_mask(21, 21, 30, 30)).item() == 0.0


def test_pointing_game_excludes_empty_masks():
    masks = torch.cat([box_mask(0, 0, 20, 20), torch.zeros(1, S, S, dtype=torch.bool), box_mask(40, 40, 60, 60)])
    hits = pointing_game(None, X.expand(3, -1, -1, -1), peak(10, 10, 3), mask=masks)
    assert hits[0] == 1.0 and math.isnan(hits[1]) and hits[2] == 0.0
    assert pointing_accuracy(hits) == 0.5  # the empty mask is neither a hit nor a miss
    assert torch.nanmean(hits).item() == 0.5
    # per-class mean, then mean over classes (Zhang et al., TorchRay): class 0 has 1/1, class 1 has 0/2 -> 0.5
    assert pointing_accuracy(torch.tensor([1.0, 0.0, 0.0, float("nan")]), classes=[0, 1, 1, 0]) == 0.5
    assert pointing_accuracy(torch.tensor([1.0, 0.0, 0.0]), classes=None) == pytest.approx(1 / 3)
    assert math.isnan(pointing_accuracy(torch.tensor([float("nan")])))


def test_pointing_game_on_an_upsampled_map_and_ties():
    small = torch.zeros(1, 1, 4, 4)
    small[0, 0, 3, 0] = 1.0  # bottom-left cell: the maximum of the upsampled map is in that corner
    assert pointing_game(None, X, small, mask=box_mask(0, 48, 16, 64), tolerance=0).item() == 1.0
    flat = torch.zeros(1, 1, S, S)  # all tied: the first pixel in raster order, (0, 0)
    assert pointing_game(None, X, flat, mask=box_mask(0, 0, 1, 1), tolerance=0).item() == 1.0
    # channels are summed (signed) before the maximum
    two = torch.zeros(1, 3, S, S)
    two[0, 0, 5, 5], two[0, 1, 5, 5] = 2.0, -2.0
    two[0, 2, 50, 50] = 1.0
    assert pointing_game(None, X, two, mask=box_mask(50, 50, 51, 51), tolerance=0).item() == 1.0


def test_energy_and_relevance_mass_on_a_fixture():
    a = torch.zeros(1, 1, S, S)
    a[0, 0, :8, :8] = 1.0  # 64 units inside the box
    a[0, 0, 40:44, 40:44] = 4.0  # 64 units outside
    a[0, 0, 60:, 60:] = -2.0  # negative relevance, outside (16 pixels, -32)
    mask = box_mask(0, 0, 16, 16)
    assert energy_pointing_game(None, X, a, mask=mask).item() == pytest.approx(0.5)
    assert relevance_mass_accuracy(None, X, a, mask=mask).item() == pytest.approx(0.5)
    assert relevance_mass_accuracy(None, X, a, mask=mask, sign="abs").item() == pytest.approx(64 / 160)
    assert relevance_mass_accuracy(None, X, a, mask=mask, sign="all").item() == pytest.approx(64 / 96)
    assert math.isnan(energy_pointing_game(None, X, -a.clamp(min=0), mask=mask).item())  # no positive energy
    assert math.isnan(relevance_mass_accuracy(None, X, a, mask=torch.zeros(1, S, S, dtype=torch.bool)).item())


def test_relevance_rank_accuracy_on_a_fixture():
    a = torch.zeros(1, 1, S, S)
    a[0, 0, 0, :6] = torch.tensor([6.0, 5.0, 4.0, 3.0, 2.0, 1.0])
    mask = torch.zeros(1, S, S, dtype=torch.bool)
    mask[0, 0, [0, 2, 5, 9]] = True  # K = 4; the top 4 are columns 0..3, of which 0 and 2 are in the mask
    assert relevance_rank_accuracy(None, X, a, mask=mask).item() == pytest.approx(0.5)
    # with negative values: "positive" ties them at 0 (raster order), "abs" ranks by magnitude
    b = torch.zeros(1, 1, S, S)
    b[0, 0, 0, 9] = -10.0
    b[0, 0, 0, 0] = 1.0
    assert relevance_rank_accuracy(None, X, b, mask=mask).item() == pytest.approx(0.5)  # top 4 = cols 0,1,2,3
    assert relevance_rank_accuracy(None, X, b, mask=mask, sign="abs").item() == pytest.approx(0.75)  # 9, 0, 1, 2
    assert relevance_rank_accuracy(None, X, b, mask=mask[:, None]).item() == pytest.approx(0.5)  # (B,1,H,W) masks


def test_boxes_to_masks():
    m = boxes_to_masks([(2, 1, 5, 3), [], [(0, 0, 2, 2), (6, 6, 8, 8)]], (8, 10))
    assert m.shape == (3, 8, 10) and m.dtype == torch.bool
    assert m[0].sum() == 6 and m[0, 1:3, 2:5].all()  # columns 2..4, rows 1..2
    assert not m[1].any()
    assert m[2].sum() == 8
    # boxes in original-image pixels: a 200x100 image resized (shorter side 32) to 64x32, centre crop 32x32
    crop = boxes_to_masks([(50, 0, 150, 100)], 32, image_size=(200, 100), resize=32)
    assert crop[0].all()  # the box is exactly the centre crop
    plain = boxes_to_masks([(0, 0, 100, 50)], 32, image_size=(200, 100))  # plain resize: the top-left quarter
    assert plain[0, :16, :16].all() and plain[0].sum() == 256
    with pytest.raises(ValueError, match="empty or reversed"):
        boxes_to_masks([(5, 5, 2, 8)], 10)
    with pytest.raises(ValueError, match="4 numbers"):
        boxes_to_masks([[(1, 2, 3)]], 10)


def test_load_masks(tmp_path):
    grey = np.zeros((20, 40), np.uint8)
    grey[:, :20] = 255
    Image.fromarray(grey).save(tmp_path / "grey.png")
    pal = Image.fromarray(np.array([[0, 3], [255, 3]], np.uint8), mode="P")
    pal.putpalette([0, 0, 0, 200, 0, 0, 0, 0, 0, 10, 10, 10] + [0] * (3 * 252))
    pal.save(tmp_path / "voc.png")
    rgba = np.zeros((10, 10, 4), np.uint8)
    rgba[:5, :, 3] = 255
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "alpha.png")
    m = load_masks([tmp_path / "grey.png", tmp_path / "voc.png", tmp_path / "alpha.png"], 4)
    assert m.shape == (3, 4, 4) and m.dtype == torch.bool
    assert m[0, :, :2].all() and not m[0, :, 2:].any()
    assert m[1, :, 2:].all() and not m[1, :, :2].any()  # index 3 is the object, 255 (void) is not
    assert m[2, :2].all() and not m[2, 2:].any()
    # resize the shorter side to 8 and centre-crop 8x8: the left half of the 40x20 mask is the left half of the crop
    crop = load_masks(tmp_path / "grey.png", 8, resize=8)
    assert crop[0, :, :4].all() and not crop[0, :, 4:].any()
    with pytest.raises(FileNotFoundError, match="nope.png"):
        load_masks([tmp_path / "nope.png"], 4)
    (tmp_path / "bad.png").write_text("not an image")
    with pytest.raises(ValueError, match="cannot read mask"):
        load_masks([tmp_path / "bad.png"], 4)


def test_load_boxes(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps({"cat.jpg": [1, 2, 3, 4], "two.jpg": [[0, 0, 1, 1], [2, 2, 3, 3]],
                                                 "none.jpg": []}))
    assert load_boxes(tmp_path / "a.json") == {"cat.jpg": [(1, 2, 3, 4)], "two.jpg": [(0, 0, 1, 1), (2, 2, 3, 3)],
                                               "none.jpg": []}
    (tmp_path / "b.json").write_text(json.dumps([{"image": "cat.jpg", "box": {"x0": 1, "y0": 2, "x1": 3, "y1": 4}},
                                                 {"image": "cat.jpg", "boxes": [[5, 5, 6, 6]]}]))
    assert load_boxes(tmp_path / "b.json") == {"cat.jpg": [(1, 2, 3, 4), (5, 5, 6, 6)]}
    (tmp_path / "c.csv").write_text(
        "image,x0,y0,x1,y1,label\ncat.jpg,1,2,3,4,cat\ncat.jpg,5,5,6,6,cat\ndog.jpg,0,0,9,9,x\n"
    )
    assert load_boxes(tmp_path / "c.csv") == {"cat.jpg": [(1, 2, 3, 4), (5, 5, 6, 6)], "dog.jpg": [(0, 0, 9, 9)]}
    (tmp_path / "bad.csv").write_text("name,x,y\ncat.jpg,1,2\n")
    with pytest.raises(ValueError, match="image,x0,y0,x1,y1"):
        load_boxes(tmp_path / "bad.csv")
    (tmp_path / "rev.csv").write_text("image,x0,y0,x1,y1\ncat.jpg,5,5,1,1\n")
    with pytest.raises(ValueError, match="line 2"):
        load_boxes(tmp_path / "rev.csv")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_boxes(tmp_path / "bad.json")
    (tmp_path / "three.json").write_text(json.dumps({"cat.jpg": [1, 2, 3]}))
    with pytest.raises(ValueError, match="cat.jpg"):
        load_boxes(tmp_path / "three.json")
    (tmp_path / "x.txt").write_text("")
    with pytest.raises(ValueError, match=r"\.json or \.csv"):
        load_boxes(tmp_path / "x.txt")
    with pytest.raises(FileNotFoundError):
        load_boxes(tmp_path / "missing.json")


LOCALIZATION = sorted(n for n, s in METRICS.items() if s.family == "localization")


@pytest.mark.parametrize("name", LOCALIZATION)
def test_every_localization_metric_is_batch_invariant_and_checks_masks(name):
    spec = METRICS[name]
    assert spec.needs == ("mask",) and spec.cost({}) == 0 and spec.higher_is_better
    g = torch.Generator().manual_seed(0)
    x = torch.zeros(3, 3, 16, 16)
    a = torch.randn(3, 3, 16, 16, generator=g)
    masks = boxes_to_masks([(0, 0, 8, 8), [], (4, 4, 16, 12)], 16)
    ref = spec.fn(None, x, a, None, mask=masks)
    assert ref.shape == (3,) and math.isnan(ref[1]) and torch.isfinite(ref[[0, 2]]).all()
    for bs in (1, 3):
        torch.testing.assert_close(spec.fn(None, x, a, None, mask=masks, batch_size=bs, seed=1), ref, equal_nan=True)
    torch.testing.assert_close(spec.fn(None, x[2:], a[2:], None, mask=masks[2:]), ref[2:])
    with pytest.raises(ValueError, match=r"load_masks\(paths, size=\(16, 16\)\)"):
        spec.fn(None, x, a, None, mask=boxes_to_masks([(0, 0, 8, 8)] * 3, 8))
    with pytest.raises(ValueError, match="only 0 and 1"):
        spec.fn(None, x, a, None, mask=masks.float() * 2)
    with pytest.raises(ValueError, match="does not fit 3 inputs"):
        spec.fn(None, x, a, None, mask=masks[:2])
    torch.testing.assert_close(spec.fn(None, x, a, None, mask=masks.float()), ref, equal_nan=True)
