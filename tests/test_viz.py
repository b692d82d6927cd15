"""Tensors to pictures: colormaps, overlays, grids, PNG encoding."""

from __future__ import annotations

import base64
import io
import os
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import torch
from PIL import Image

from seewhy.images import normalize, to_tensor
from seewhy.viz import (
    apply_colormap,
    data_uri,
    grid,
    heat_to_image,
    overlay,
    png_bytes,
    save_png,
    tensor_to_image,
)

matplotlib.use("Agg")  # figures are drawn off screen: nothing blocks, nothing warns (pyplot is imported in tests)

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _image(h: int = 12, w: int = 16, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def _ramp(h: int = 12, w: int = 16) -> np.ndarray:
    return np.tile(np.linspace(0, 1, w), (h, 1))


# ------------------------------------------------------------------------------------ tensor_to_image


def test_tensor_to_image_shapes_and_minmax() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 8, 10, generator=g)
    out = tensor_to_image(x)
    assert out.shape == (2, 8, 10, 3) and out.dtype == np.uint8
    for b in range(2):  # per-image min-max
        assert out[b].min() == 0 and out[b].max() == 255
    one = tensor_to_image(x[1])
    np.testing.assert_array_equal(one, out[1])
    gray = tensor_to_image(torch.rand(1, 5, 6, generator=g))
    assert gray.shape == (5, 6, 3)
    assert np.array_equal(gray[..., 0], gray[..., 1]) and np.array_equal(gray[..., 0], gray[..., 2])
    assert tensor_to_image(torch.zeros(3, 4, 4)).max() == 0  # constant: no division by zero
    assert tensor_to_image(x.requires_grad_()).shape == (2, 8, 10, 3)


def test_tensor_to_image_roundtrip() -> None:
    img = _image(20, 24)
    x = normalize(to_tensor(img), MEAN, STD)
    back = tensor_to_image(x, MEAN, STD)
    assert back.dtype == np.uint8 and back.shape == img.shape
    assert np.abs(back.astype(int) - img).max() <= 1
    batch = tensor_to_image(torch.stack([x, x]), MEAN, STD)
    np.testing.assert_array_equal(batch[0], back)


def test_tensor_to_image_errors() -> None:
    with pytest.raises(ValueError, match="1 or 3 channels"):
        tensor_to_image(torch.zeros(4, 5, 5))
    with pytest.raises(ValueError, match=r"\(C,H,W\)"):
        tensor_to_image(torch.zeros(5, 5))
    with pytest.raises(ValueError, match="both mean and std"):
        tensor_to_image(torch.zeros(3, 5, 5), mean=MEAN)


# ------------------------------------------------------------------------------------ colormaps


def test_apply_colormap() -> None:
    v = _ramp()
    out = apply_colormap(v)
    assert out.shape == (12, 16, 3) and out.dtype == np.uint8
    ref = (matplotlib.colormaps["jet"](v)[..., :3] * 255).round()
    assert np.abs(out.astype(int) - ref).max() <= 4  # 256-level lookup table
    np.testing.assert_array_equal(apply_colormap(torch.from_numpy(v), "viridis"), apply_colormap(v, "viridis"))
    np.testing.assert_array_equal(apply_colormap(np.array([-1.0, 2.0, np.nan])),
                                  apply_colormap(np.array([0.0, 1.0, 0.0])))
    with pytest.raises(ValueError, match="unknown colormap 'virdis'.*viridis"):
        apply_colormap(v, "virdis")


def test_heat_to_image() -> None:
    h = _ramp()
    assert heat_to_image(h).shape == (12, 16, 3)
    np.testing.assert_array_equal(heat_to_image(torch.from_numpy(h)[None]), apply_colormap(h, "jet"))
    signed = heat_to_image(np.full((3, 3), 0.5), signed=True)
    assert (signed > 240).all()  # bwr is white at zero
    with pytest.raises(ValueError, match="one heatmap"):
        heat_to_image(np.zeros((2, 3, 3)))


# ------------------------------------------------------------------------------------ overlay


def test_overlay_alpha_extremes() -> None:
    img, heat = _image(), _ramp()
    assert overlay(img, heat).shape == img.shape and overlay(img, heat).dtype == np.uint8
    np.testing.assert_array_equal(overlay(img, heat, alpha=0.0), img)
    np.testing.assert_array_equal(overlay(img, heat, alpha=1.0), apply_colormap(heat, "jet"))
    np.testing.assert_array_equal(overlay(img, heat, alpha=1.0, cmap="magma"), apply_colormap(heat, "magma"))
    half = overlay(img, heat, alpha=0.5).astype(int)
    expected = (img.astype(int) + apply_colormap(heat).astype(int)) / 2
    assert np.abs(half - expected).max() <= 1
    with pytest.raises(ValueError, match="alpha"):
        overlay(img, heat, alpha=1.5)


def test_overlay_resizes_and_accepts_tensors() -> None:
    img = _image(32, 48)
    small = torch.rand(1, 4, 6, generator=torch.Generator().manual_seed(0))
    out = overlay(img, small)
    assert out.shape == (32, 48, 3)
    const = overlay(img, torch.full((1, 1, 4, 6), 0.25), alpha=1.0)
    np.testing.assert_array_equal(const, apply_colormap(np.full((32, 48), 0.25)))


def test_signed_overlay_leaves_zero_unchanged() -> None:
    img = _image()
    heat = np.full((12, 16), 0.5)
    heat[:, :4] = 1.0  # positive
    heat[:, 4:8] = 0.0  # negative
    out = overlay(img, heat, signed=True, alpha=0.8)
    np.testing.assert_array_equal(out[:, 8:], img[:, 8:])
    assert (np.abs(out[:, :8].astype(int) - img[:, :8]).sum(-1) > 0).mean() > 0.9
    red = overlay(np.zeros_like(img), heat, signed=True, alpha=1.0)
    assert (red[:, :4, 0] > 200).all() and (red[:, 4:8, 2] > 200).all()


def test_overlay_with_tensors_equals_overlay_with_arrays() -> None:
    img, heat = _image(), _ramp()
    expected = overlay(img, heat, alpha=0.6)
    chw = torch.from_numpy(img).permute(2, 0, 1)
    images = {
        "uint8 (H,W,3)": torch.from_numpy(img),
        "uint8 (3,H,W)": chw,
        "float (3,H,W)": chw.float() / 255,
        "float (H,W,3)": torch.from_numpy(img).double() / 255,
        "float (1,3,H,W)": (chw.float() / 255)[None],
        "float16 (3,H,W)": (chw.float() / 255).half(),
    }
    heats = {"(H,W)": torch.from_numpy(heat), "(1,H,W)": torch.from_numpy(heat)[None],
             "(1,1,H,W)": torch.from_numpy(heat)[None, None].float()}
    for name, image in images.items():
        for heat_name, h in heats.items():
            got = overlay(image, h, alpha=0.6)
            diff = np.abs(got.astype(int) - expected).max()
            assert got.dtype == np.uint8 and diff <= (1 if "16" in name else 0), (name, heat_name)
    gray = img[..., 0]
    np.testing.assert_array_equal(overlay(torch.from_numpy(gray), heat), overlay(gray, heat))
    np.testing.assert_array_equal(overlay(torch.from_numpy(gray).float()[None] / 255, heat), overlay(gray, heat))
    np.testing.assert_array_equal(overlay(Image.fromarray(img), heat), overlay(img, heat))  # PIL, as before


def test_overlay_normalised_tensor_is_min_max_scaled() -> None:
    x = normalize(to_tensor(_image(20, 24)), MEAN, STD)  # outside [0, 1]
    heat = torch.rand(20, 24, generator=torch.Generator().manual_seed(0))
    np.testing.assert_array_equal(overlay(x, heat), overlay(tensor_to_image(x), heat))
    back = overlay(tensor_to_image(x, MEAN, STD), heat)  # the documented way to undo the normalisation
    assert back.shape == (20, 24, 3)


def test_overlay_tensor_errors_name_the_shape() -> None:
    heat = _ramp()
    with pytest.raises(ValueError, match=r"\(2, 3, 12, 16\).*x\[i\]"):
        overlay(torch.rand(2, 3, 12, 16), heat)
    with pytest.raises(ValueError, match=r"\(5, 12, 16\).*\(3,H,W\)"):
        overlay(torch.rand(5, 12, 16), heat)
    with pytest.raises(ValueError, match=r"\(12, 16, 7\).*\(H,W,3\)"):
        overlay(torch.zeros(12, 16, 7, dtype=torch.uint8), heat)
    with pytest.raises(TypeError, match="int64.*uint8"):
        overlay(torch.zeros(3, 12, 16, dtype=torch.long), heat)
    with pytest.raises(ValueError, match=r"one heatmap.*\(1,1,H,W\), got \(2, 12, 16\)"):
        overlay(_image(), torch.rand(2, 12, 16))


# ------------------------------------------------------------------------------------ grid


def test_grid_size_arithmetic() -> None:
    cells = [[_image(10, 12, seed=3 * i + j) for j in range(3)] for i in range(2)]
    g = grid(cells, pad=4)
    assert g.dtype == np.uint8 and g.shape == (2 * 10 + 3 * 4, 3 * 12 + 4 * 4, 3)
    np.testing.assert_array_equal(g[4:14, 4:16], cells[0][0])
    np.testing.assert_array_equal(g[18:28, 36:48], cells[1][2])
    assert (g[:4] == 255).all() and (g[:, :4] == 255).all()  # white padding
    assert grid(cells, pad=0).shape == (20, 36, 3)

    labelled = grid(cells, col_labels=["a", "b", "c"], pad=4)
    top = labelled.shape[0] - g.shape[0]
    assert top > 4 and labelled.shape[1] == g.shape[1]
    assert (labelled[:top] < 128).any()  # text drawn in the band
    both = grid(cells, row_labels=["first", "second"], col_labels=["a", "b", "c"], pad=4)
    assert both.shape[0] == labelled.shape[0] and both.shape[1] > g.shape[1]
    left = both.shape[1] - g.shape[1]
    np.testing.assert_array_equal(both[top + 4:top + 14, left + 4:left + 16], cells[0][0])


def test_grid_mixed_sizes_blank_cells_and_long_labels() -> None:
    cells = [[_image(10, 10), None], [_image(6, 20, seed=1)]]  # ragged row, blank cell
    g = grid(cells, pad=2, row_labels=["x" * 500, "two\nlines"], col_labels=["input", "a very long label"],
             max_label_width=50)
    h_cells = 2 * 10 + 3 * 2
    w_cells = 2 * 20 + 3 * 2
    assert g.shape[0] > h_cells and w_cells < g.shape[1] <= w_cells + 50 + 2
    gray = grid([[_image(5, 5)[..., 0]]], pad=1)  # 2-D gray cells become RGB
    assert gray.shape == (7, 7, 3)
    with pytest.raises(ValueError, match="row_labels"):
        grid(cells, row_labels=["one"])
    with pytest.raises(TypeError, match="tensor_to_image"):
        grid([[torch.zeros(3, 4, 4)]])


# ------------------------------------------------------------------------------------ encoding


def test_png_bytes_and_data_uri_roundtrip() -> None:
    img = _image()
    data = png_bytes(img)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(data))), img)
    uri = data_uri(img)
    assert uri.startswith("data:image/png;base64,")
    assert base64.b64decode(uri.split(",", 1)[1]) == data
    rgba = np.dstack([img, np.full(img.shape[:2], 7, np.uint8)])
    assert Image.open(io.BytesIO(png_bytes(rgba))).mode == "RGBA"


def test_save_png_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    img = _image()
    path = tmp_path / "out.png"
    save_png(img, path)
    save_png(img[::-1], str(path))  # overwrite
    assert os.listdir(tmp_path) == ["out.png"]
    with Image.open(path) as saved:
        np.testing.assert_array_equal(np.asarray(saved), img[::-1])
    assert os.stat(path).st_mode & 0o044  # ordinary permissions, not a private temp file's 0600

    def boom(*args: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        save_png(img, tmp_path / "other.png")
    assert os.listdir(tmp_path) == ["out.png"]
