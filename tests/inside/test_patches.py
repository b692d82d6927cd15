"""top_patches over a folder of real photos and crops: a planted red detector finds exactly the planted red squares,
results do not depend on the batch size, unreadable files are skipped."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from seewhy import images
from seewhy.data import as_data
from seewhy.hooks import count_hooks
from seewhy.inside import top_patches

SIDE = 64
#: (image number, top, left) of the planted 12x12 pure-red squares
PLANTED = [(3, 10, 20), (8, 40, 5), (13, 30, 44)]


def _photos() -> list[np.ndarray]:
    """Crops of the bundled photos (four per photo), SIDE x SIDE, with their reds damped so no natural 3x3 patch
    is pure red."""
    out = []
    for name in images.BUNDLED:
        img = np.asarray(images.bundled_image(name).resize((2 * SIDE, 2 * SIDE)))
        for top, left in ((0, 0), (0, SIDE), (SIDE, 0), (SIDE, SIDE)):
            crop = img[top:top + SIDE, left:left + SIDE].astype(np.int16)
            crop[..., 1:] = np.maximum(crop[..., 1:], 8)  # at least a little green and blue everywhere
            out.append(crop.astype(np.uint8))
    return out


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("patches")
    photos = _photos()
    for n, top, left in PLANTED:
        photos[n][top:top + 12, left:left + 12] = (255, 0, 0)
    for i, p in enumerate(photos):
        Image.fromarray(p).save(root / f"img{i:02d}.png")
    (root / "img99_broken.png").write_bytes(b"not a png")
    return root


def red_model() -> nn.Module:
    """Unit 0 of the pooled map: sum over a 3x3 window of (r - g - b), which is 9 only on pure red; unit 1: green."""
    conv = nn.Conv2d(3, 2, 3, padding=1)
    with torch.no_grad():
        conv.weight.zero_()
        conv.bias.zero_()
        conv.weight[0, 0] = 1.0
        conv.weight[0, 1:] = -1.0
        conv.weight[1, 1] = 1.0
    return nn.Sequential(conv, nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(2 * 32 * 32, 3)).eval()


def _data(folder: Path):
    return as_data(folder, transform=images.to_tensor, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))


def test_planted_red_detector_finds_the_red_squares(folder: Path):
    model = red_model()
    top = top_patches(model, _data(folder), "2", units=[0], k=len(PLANTED) + 2, batch_size=4)
    recs = top.records(0)
    assert [Path(r.path).name for r in recs[:3]] == [f"img{n:02d}.png" for n, _, _ in PLANTED]
    assert [r.index for r in recs[:3]] == [n for n, _, _ in PLANTED]
    for r, (_, t, left) in zip(recs[:3], PLANTED, strict=True):
        assert r.value == pytest.approx(9.0)
        bt, bl, bb, br = r.box
        assert (bb - bt, br - bl) == (4, 4)  # 3x3 conv then 2x2 pool: a 4x4 field
        # the field covers the 3x3 window that saw pure red: it lies on the square, at most one pixel (the other
        # pooled conv row/column) outside it
        assert t - 1 <= bt and bb <= t + 13 and left - 1 <= bl and br <= left + 13
        assert min(bb, t + 12) - max(bt, t) >= 3 and min(br, left + 12) - max(bl, left) >= 3
        assert (bt, bl) == (2 * r.y - 1, 2 * r.x - 1)  # pool unit y covers input rows 2y-1 .. 2y+2
    assert all(r.value < 9.0 - 1e-3 for r in recs[3:])  # no natural patch is pure red
    crops, pics = top.patches(0), top.pictures(0)
    for r, c, pic in zip(recs, crops, pics, strict=True):
        png = np.asarray(Image.open(r.path).convert("RGB"))
        t, left, b, right = r.box
        assert np.array_equal(pic, png[t:b, left:right])  # the crop is the field's box of the image
        torch.testing.assert_close(c, images.to_tensor(png)[:, t:b, left:right])
    assert all(int((c[0] == 1).sum()) >= 9 for c in crops[:3])  # the 3x3 window of pure red lies in each
    assert top.skipped and "img99_broken.png" in top.skipped[0][0]
    assert top.images == 16 and count_hooks(model) == 0


@pytest.mark.parametrize("batch_size", [1, 5])
def test_results_do_not_depend_on_the_batch_size(folder: Path, batch_size: int):
    model = red_model()
    ref = top_patches(model, _data(folder), "1", k=4, batch_size=16)
    got = top_patches(model, _data(folder), "1", k=4, batch_size=batch_size)
    assert torch.equal(ref.indices, got.indices) and torch.equal(ref.ys, got.ys) and torch.equal(ref.xs, got.xs)
    torch.testing.assert_close(ref.values, got.values)
    assert ref.records(1) == got.records(1)


def test_topk_against_a_brute_force_search():
    model = red_model()
    x = torch.rand(11, 3, SIDE, SIDE, generator=torch.Generator().manual_seed(3))
    top = top_patches(model, x, "2", k=3, batch_size=4)
    with torch.no_grad():
        acts = model[:3](x)  # (11, 2, 32, 32)
    for unit in (0, 1):
        flat = acts[:, unit].flatten(1)
        best = flat.max(1).values
        order = torch.sort(best, descending=True, stable=True).indices[:3]
        recs = top.records(unit)
        assert [r.index for r in recs] == order.tolist() and recs[0].path is None
        for r in recs:
            assert acts[r.index, unit, r.y, r.x] == pytest.approx(r.value)


def test_fewer_images_than_k_and_bad_arguments():
    model = red_model()
    x = torch.rand(2, 3, SIDE, SIDE)
    top = top_patches(model, x, "2", k=5)
    assert len(top.records(0)) == 2 and top.indices[0, 2:].eq(-1).all()
    with pytest.raises(ValueError, match="out of range"):
        top_patches(model, x, "2", units=[2])
    with pytest.raises(ValueError, match="not searched"):
        top_patches(model, x, "2", units=[1]).records(0)
    with pytest.raises(ValueError, match="k must be"):
        top_patches(model, x, "2", k=0)
    with pytest.raises(ValueError, match="not \\(B,K,h,w\\)"):
        top_patches(model, x, "3")
