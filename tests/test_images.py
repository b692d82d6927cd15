"""Loading image files robustly (every format and mode, EXIF, bombs, broken files) and preprocessing."""

from __future__ import annotations

import gc
import os
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from seewhy.images import (
    BUNDLED,
    ImageError,
    bundled_image,
    image_name,
    load_image,
    load_images,
    normalize,
    preprocess,
    resize_crop,
    to_pil,
    to_tensor,
)

RNG = np.random.default_rng(0)
NOISE = RNG.integers(0, 256, size=(24, 32, 3), dtype=np.uint8)


def _rgb(img: Image.Image) -> np.ndarray:
    assert isinstance(img, Image.Image)
    assert img.mode == "RGB"
    arr = np.asarray(img)
    assert arr.dtype == np.uint8 and arr.ndim == 3 and arr.shape[2] == 3
    return arr


# ------------------------------------------------------------------------------------ formats


@pytest.mark.parametrize("ext, kw", [
    ("png", {}),
    ("bmp", {}),
    ("tiff", {}),
    ("tif", {"compression": "tiff_lzw"}),
    ("webp", {"lossless": True}),
])
def test_lossless_formats_roundtrip(tmp_path: Path, ext: str, kw: dict) -> None:
    path = tmp_path / f"noise.{ext}"
    Image.fromarray(NOISE).save(path, **kw)
    np.testing.assert_array_equal(_rgb(load_image(path)), NOISE)
    assert np.array_equal(_rgb(load_image(str(path))), NOISE)  # str paths too


def test_jpeg(tmp_path: Path) -> None:
    path = tmp_path / "flat.jpg"
    Image.new("RGB", (16, 8), (200, 30, 60)).save(path, quality=95)
    arr = _rgb(load_image(path))
    assert arr.shape == (8, 16, 3)
    assert np.abs(arr.astype(int) - (200, 30, 60)).max() <= 3


def test_grayscale_png(tmp_path: Path) -> None:
    gray = RNG.integers(0, 256, size=(10, 12), dtype=np.uint8)
    Image.fromarray(gray).save(tmp_path / "g.png")
    arr = _rgb(load_image(tmp_path / "g.png"))
    for c in range(3):
        np.testing.assert_array_equal(arr[..., c], gray)


def test_one_bit(tmp_path: Path) -> None:
    img = Image.new("1", (8, 4), 0)
    img.putpixel((3, 2), 1)
    img.save(tmp_path / "bw.png")
    arr = _rgb(load_image(tmp_path / "bw.png"))
    assert arr[2, 3].tolist() == [255, 255, 255] and arr[0, 0].tolist() == [0, 0, 0]


def test_rgba_composited_on_white(tmp_path: Path) -> None:
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 255  # red
    rgba[0, 0, 3] = 255  # opaque
    rgba[0, 1, 3] = 0  # transparent
    rgba[0, 2, 3] = 128  # half
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    arr = _rgb(load_image(tmp_path / "a.png"))
    assert arr[0, 0].tolist() == [255, 0, 0]
    assert arr[0, 1].tolist() == [255, 255, 255]
    assert arr[0, 2, 0] == 255 and abs(int(arr[0, 2, 1]) - 127) <= 1


def test_la_composited_on_white(tmp_path: Path) -> None:
    la = Image.new("LA", (3, 2), (0, 0))
    la.putpixel((1, 1), (0, 255))
    la.save(tmp_path / "la.png")
    arr = _rgb(load_image(tmp_path / "la.png"))
    assert arr[0, 0].tolist() == [255, 255, 255] and arr[1, 1].tolist() == [0, 0, 0]


def test_palette_with_transparency(tmp_path: Path) -> None:
    p = Image.new("P", (4, 4), 0)
    p.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    p.putpixel((2, 1), 1)
    p.save(tmp_path / "p.png", transparency=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "palette images with transparency" warning either
        arr = _rgb(load_image(tmp_path / "p.png"))
    assert arr[1, 2].tolist() == [0, 255, 0]
    assert arr[0, 0].tolist() == [255, 255, 255]  # transparent black -> white, not black


def test_gray_with_transparent_level(tmp_path: Path) -> None:
    Image.fromarray(np.array([[10, 100]], np.uint8)).save(tmp_path / "t.png", transparency=100)
    arr = _rgb(load_image(tmp_path / "t.png"))
    assert arr[0, 0].tolist() == [10, 10, 10] and arr[0, 1].tolist() == [255, 255, 255]


def test_sixteen_bit_png_uses_the_whole_range(tmp_path: Path) -> None:
    ramp = np.tile(np.linspace(0, 65535, 256).round().astype(np.uint16), (4, 1))
    img = Image.fromarray(ramp)
    assert img.mode.startswith("I;16")
    img.save(tmp_path / "ramp16.png")
    arr = _rgb(load_image(tmp_path / "ramp16.png"))[0, :, 0].astype(int)
    assert arr[0] == 0 and arr[-1] == 255
    assert np.all(np.diff(arr) >= 0)
    assert abs(arr[128] - 128) <= 1  # scaled, not clipped (clipping would give 255 from index 1 on)
    assert len(np.unique(arr)) > 200


def test_sixteen_bit_levels_are_kept_not_stretched(tmp_path: Path) -> None:
    ramp = np.tile(np.arange(0, 4096, 16, dtype=np.uint16), (2, 1))  # a dark image: 0..4080 of 65535
    Image.fromarray(ramp).save(tmp_path / "ramp12.png")
    arr = _rgb(load_image(tmp_path / "ramp12.png"))[0, :, 0]
    assert arr.min() == 0 and arr.max() == 16  # 4080 / 257, as an 8-bit save of the same picture


@pytest.mark.parametrize("dtype", ["<u2", ">u2", "int32", "float32"])
def test_high_bit_depth_tiff(tmp_path: Path, dtype: str) -> None:
    ramp = np.tile(np.linspace(0, 65535, 101), (3, 1))
    if dtype == "float32":
        ramp = ramp / 65535 * 3.5 - 1.0  # floats outside [0, 1]: their range is stretched
    Image.fromarray(ramp.astype(dtype)).save(tmp_path / "hb.tif")
    arr = _rgb(load_image(tmp_path / "hb.tif"))[1, :, 0].astype(int)
    assert arr[0] == 0 and arr[-1] == 255 and np.all(np.diff(arr) >= 0)
    assert abs(arr[50] - 128) <= 1


def test_constant_sixteen_bit_image(tmp_path: Path) -> None:
    Image.fromarray(np.full((3, 3), 65535, np.uint16)).save(tmp_path / "white16.png")
    assert _rgb(load_image(tmp_path / "white16.png")).min() == 255


def test_cmyk_jpeg(tmp_path: Path) -> None:
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg", quality=95)
    with Image.open(tmp_path / "cmyk.jpg") as raw:
        assert raw.mode == "CMYK"
    arr = _rgb(load_image(tmp_path / "cmyk.jpg"))
    assert np.abs(arr[4, 4].astype(int) - (255, 0, 0)).max() <= 6


def test_gif_animation_first_frame(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (6, 5), c) for c in [(255, 0, 0), (0, 0, 255), (0, 255, 0)]]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=40, loop=0)
    arr = _rgb(load_image(tmp_path / "anim.gif"))
    assert arr.shape == (5, 6, 3) and arr[2, 2].tolist() == [255, 0, 0]


@pytest.mark.parametrize("orientation, corner", [(6, (2, 17)), (8, (37, 2))])
def test_exif_orientation(tmp_path: Path, orientation: int, corner: tuple[int, int]) -> None:
    stored = np.zeros((20, 40, 3), np.uint8)
    stored[...] = (0, 0, 255)
    stored[:6, :6] = (255, 0, 0)  # red block in the stored top-left corner
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / f"o{orientation}.jpg"
    Image.fromarray(stored).save(path, exif=exif, quality=95)
    arr = _rgb(load_image(path))
    assert arr.shape == (40, 20, 3)  # width and height swapped
    y, x = corner  # 6: rotated 90 degrees clockwise -> top-right; 8: counter-clockwise -> bottom-left
    assert arr[y, x, 0] > 200 and arr[y, x, 2] < 60
    assert arr[2, 2, 2] > 200 and arr[2, 2, 0] < 60  # the stored top-left is no longer top-left


def test_files_are_closed(tmp_path: Path) -> None:
    paths = []
    for ext in ("png", "jpg", "gif", "tif"):
        paths.append(tmp_path / f"x.{ext}")
        Image.fromarray(NOISE).save(paths[-1])
    (tmp_path / "bad.png").write_bytes(b"not an image")
    fds = Path("/proc/self/fd")
    before = len(os.listdir(fds)) if fds.exists() else None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for p in paths:
            load_image(p)
        with pytest.raises(ImageError):
            load_image(tmp_path / "bad.png")
        gc.collect()
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)]
    if before is not None:
        assert len(os.listdir(fds)) == before


# ------------------------------------------------------------------------------------ bad files


def _noise_png(path: Path, size: tuple[int, int] = (100, 80)) -> bytes:
    Image.fromarray(RNG.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path.read_bytes()


@pytest.mark.parametrize("ext", ["png", "jpg"])
def test_truncated_file(tmp_path: Path, ext: str) -> None:
    full = tmp_path / f"full.{ext}"
    Image.fromarray(RNG.integers(0, 256, size=(64, 64, 3), dtype=np.uint8)).save(full)
    data = full.read_bytes()
    cut = tmp_path / f"cut.{ext}"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match=f"cut.{ext}") as info:
        load_image(cut)
    assert "truncated" in str(info.value) or "corrupt" in str(info.value)
    assert info.value.path == str(cut)


def test_text_file_named_png(tmp_path: Path) -> None:
    path = tmp_path / "notes.png"
    path.write_text("hello, I am not a picture\n")
    with pytest.raises(ImageError, match="notes.png.*not an image"):
        load_image(path)


def test_empty_file(tmp_path: Path) -> None:
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(ImageError, match="empty.jpg"):
        load_image(tmp_path / "empty.jpg")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="nowhere.png.*no such file"):
        load_image(tmp_path / "nowhere.png")


def test_directory(tmp_path: Path) -> None:
    (tmp_path / "folder.png").mkdir()
    with pytest.raises(ImageError, match="folder.png.*directory"):
        load_image(tmp_path / "folder.png")


def test_unusable_paths(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="name.png"):
        load_image("bad\0name.png")
    with pytest.raises(TypeError, match="to_pil"):
        load_image(Image.new("RGB", (2, 2)))  # type: ignore[arg-type]
    loaded, failures = load_images(["x" * 5000 + ".png"])
    assert not loaded and len(failures) == 1


def test_image_error_is_value_error_and_picklable(tmp_path: Path) -> None:
    with pytest.raises(ValueError) as info:
        load_image(tmp_path / "gone.png")
    err = pickle.loads(pickle.dumps(info.value))
    assert isinstance(err, ImageError) and str(err) == str(info.value) and err.path == info.value.path


def test_too_many_pixels_checked_before_decoding(tmp_path: Path) -> None:
    pil_limit = Image.MAX_IMAGE_PIXELS
    filters = list(warnings.filters)
    data = _noise_png(tmp_path / "big.png", (100, 80))
    # truncate it: an error about pixels (not truncation) shows the header was checked first
    (tmp_path / "big_cut.png").write_bytes(data[: len(data) // 3])
    for name in ("big.png", "big_cut.png"):
        with pytest.raises(ImageError, match=rf"{name}.*100x80 = 8000 pixels.*max_pixels=5000"):
            load_image(tmp_path / name, max_pixels=5000)
    assert _rgb(load_image(tmp_path / "big.png", max_pixels=8000)).shape == (80, 100, 3)
    assert _rgb(load_image(tmp_path / "big.png", max_pixels=None)).shape == (80, 100, 3)
    assert Image.MAX_IMAGE_PIXELS == pil_limit
    assert warnings.filters == filters


def test_pil_bomb_warning_and_error_become_image_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _noise_png(tmp_path / "bomb.png", (100, 80))  # 8000 pixels
    filters = list(warnings.filters)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 6000)  # PIL warns above 6000, refuses above 12000
    with pytest.raises(ImageError, match="bomb.png.*8000 pixels"):
        load_image(tmp_path / "bomb.png", max_pixels=6000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_image(tmp_path / "bomb.png", max_pixels=None).size == (100, 80)  # caller opted in
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 3000)
    with pytest.raises(ImageError, match="bomb.png.*MAX_IMAGE_PIXELS"):
        load_image(tmp_path / "bomb.png", max_pixels=None)
    assert warnings.filters == filters


def test_bad_max_pixels(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="max_pixels"):
        load_image(tmp_path / "x.png", max_pixels=0)


def test_load_images_keeps_the_good_and_reports_the_bad(tmp_path: Path) -> None:
    Image.fromarray(NOISE).save(tmp_path / "a.png")
    Image.fromarray(NOISE).save(tmp_path / "c.jpg")
    (tmp_path / "b.png").write_text("text")
    (tmp_path / "dir.png").mkdir()
    paths = [tmp_path / "a.png", tmp_path / "b.png", tmp_path / "missing.png", tmp_path / "dir.png",
             str(tmp_path / "c.jpg")]
    loaded, failures = load_images(paths)
    assert [p for p, _ in loaded] == [str(tmp_path / "a.png"), str(tmp_path / "c.jpg")]
    assert all(img.mode == "RGB" for _, img in loaded)
    assert [p for p, _ in failures] == [str(tmp_path / n) for n in ("b.png", "missing.png", "dir.png")]
    for path, message in failures:
        assert path in message
    loaded, failures = load_images([tmp_path / "a.png"], max_pixels=10)
    assert not loaded and "max_pixels=10" in failures[0][1]
    with pytest.raises(TypeError, match="single path"):
        load_images(str(tmp_path / "a.png"))


# ------------------------------------------------------------------------------------ bundled, names


@pytest.mark.parametrize("name", BUNDLED)
def test_bundled_images(name: str) -> None:
    arr = _rgb(bundled_image(name))
    assert arr.shape[0] >= 256 and arr.shape[1] >= 256 and arr.std() > 10


def test_unknown_bundled_image() -> None:
    with pytest.raises(ValueError, match="'dog'.*chelsea, coffee, astronaut, rocket"):
        bundled_image("dog")


@pytest.mark.parametrize("path, name", [
    ("photos/My Cat (1).JPG", "My_Cat_1"),
    (Path("/a/b/chelsea.png"), "chelsea"),
    ("café.tar.gz", "cafe.tar"),
    ("../../etc/passwd", "passwd"),
    ("猫.png", "image"),
    (".hidden", "hidden"),
    ("CON.png", "CON_"),
    ("a" * 100 + ".png", "a" * 64),
    ("x/y/", "y"),
])
def test_image_name(path: str | Path, name: str) -> None:
    assert image_name(path) == name


# ------------------------------------------------------------------------------------ preprocessing


def test_preprocess_pipeline() -> None:
    img = Image.fromarray(NOISE)
    x = preprocess(img, resize=16, crop=12)
    assert x.shape == (3, 12, 12) and x.dtype == torch.float32
    ref = normalize(to_tensor(resize_crop(img, 16, 12)), (0.5,) * 3, (0.5,) * 3)
    torch.testing.assert_close(x, ref)
    assert to_pil(NOISE[..., 0]).mode == "RGB"
    with pytest.raises(ValueError, match="resize it first"):
        resize_crop(img, None, 100)
