"""Images in: loading files robustly and preprocessing them for a model."""

from __future__ import annotations

import os
import re
import unicodedata
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor

BUNDLED: tuple[str, ...] = ("chelsea", "coffee", "astronaut", "rocket")
DEFAULT_MAX_PIXELS = 89_478_485  # PIL's own default limit (about 0.25 GB for RGB)

_RESAMPLE = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
    "lanczos": Image.Resampling.LANCZOS,
}


def to_pil(image: Image.Image | np.ndarray) -> Image.Image:
    """An RGB PIL image from a PIL image or a uint8 (H,W[,C]) array."""
    if isinstance(image, Image.Image):
        return image if image.mode == "RGB" else image.convert("RGB")
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        if np.issubdtype(arr.dtype, np.floating) and arr.size and arr.min() >= 0 and arr.max() <= 1:
            arr = (arr * 255 + 0.5).astype(np.uint8)
        else:
            raise TypeError(f"expected a uint8 image array (or floats in [0,1]), got {arr.dtype}")
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, axis=-1)
    if arr.ndim != 3 or arr.shape[-1] not in (3, 4):
        raise ValueError(f"expected an (H,W), (H,W,3) or (H,W,4) image array, got shape {arr.shape}")
    return Image.fromarray(arr[..., :3])


def resize_crop(image: Image.Image, resize: int | None = 256, crop: int | tuple[int, int] | None = 224,
                interpolation: str = "bicubic") -> Image.Image:
    """Resize the shorter side to ``resize`` then centre-crop ``crop`` (either step skipped when None)."""
    image = to_pil(image)
    if resize is not None:
        w, h = image.size
        scale = resize / min(w, h)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        if size != image.size:
            image = image.resize(size, _RESAMPLE[interpolation])
    if crop is not None:
        ch, cw = (crop, crop) if isinstance(crop, int) else crop
        w, h = image.size
        if cw > w or ch > h:
            raise ValueError(f"cannot centre-crop {cw}x{ch} from a {w}x{h} image; resize it first")
        left, top = int(round((w - cw) / 2.0)), int(round((h - ch) / 2.0))
        image = image.crop((left, top, left + cw, top + ch))
    return image


def to_tensor(image: Image.Image | np.ndarray) -> Tensor:
    """RGB image -> float32 (3,H,W) in [0, 1]."""
    arr = np.asarray(to_pil(image), dtype=np.float32) / 255.0
    return torch.from_numpy(arr.transpose(2, 0, 1).copy())


def normalize(x: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """(x - mean) / std per channel, for (3,H,W) or (B,3,H,W)."""
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    return (x - m) / s


def denormalize(x: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """Inverse of :func:`normalize`."""
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    return x * s + m


def preprocess(
    image: Image.Image | np.ndarray,
    *,
    resize: int | None = 256,
    crop: int | tuple[int, int] | None = 224,
    mean: Sequence[float] = (0.5, 0.5, 0.5),
    std: Sequence[float] = (0.5, 0.5, 0.5),
    interpolation: str = "bicubic",
) -> Tensor:
    """Resize the shorter side, centre-crop, scale to [0, 1] and normalise: returns float32 (3,H,W)."""
    return normalize(to_tensor(resize_crop(image, resize, crop, interpolation)), mean, std)


# --------------------------------------------------------------------------------------- loading files


class ImageError(ValueError):
    """A file that cannot be loaded as an image; the message names the file and what is wrong."""

    def __init__(self, path: str | os.PathLike, problem: str) -> None:
        self.path = _display(path)
        self.problem = problem
        super().__init__(f"cannot load image {self.path!r}: {problem}")

    def __reduce__(self) -> tuple[Any, ...]:  # keep picklable (multiprocessing) despite the 2-arg init
        return (type(self), (self.path, self.problem))


_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


def load_image(path: str | os.PathLike, *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Load an image file fully into memory as an RGB PIL image.

    Reads whatever PIL reads (PNG, JPEG, BMP, TIFF, WebP, GIF: the first frame of animations and
    multi-page files), honours the EXIF orientation, composites transparency on white and maps every
    mode to 8-bit RGB; 16-bit, 32-bit integer and float images are scaled from their actual value range
    (min..max) to 0..255. Nothing global in PIL is changed.

    Args:
        path: the image file.
        max_pixels: refuse images with more pixels (width x height, read from the header before anything
            is decoded), to stop decompression bombs; ``None`` for no limit of ours (PIL still refuses
            more than ``2 * PIL.Image.MAX_IMAGE_PIXELS``).

    Raises:
        ImageError: missing path, directory, not an image, corrupt or truncated data, too many pixels.
    """
    if max_pixels is not None and (isinstance(max_pixels, bool) or not isinstance(max_pixels, int)
                                   or max_pixels < 1):
        raise ValueError(f"max_pixels must be a positive int or None, got {max_pixels!r}")
    if not isinstance(path, (str, bytes, os.PathLike)):
        raise TypeError(f"load_image takes a file path, got {type(path).__name__}; "
                        "for an image already in memory use seewhy.images.to_pil")
    shown = _display(path)
    p = Path(shown)
    try:
        exists = p.exists()
    except (OSError, ValueError) as e:  # e.g. a name too long, an embedded NUL byte
        raise ImageError(shown, f"not a usable path ({e})") from e
    if not exists:
        raise ImageError(shown, "no such file; check the path")
    if p.is_dir():
        raise ImageError(shown, "it is a directory, not an image file; pass the image files inside it")
    try:
        empty = p.stat().st_size == 0
    except OSError:
        empty = False  # unreadable: the open below says why
    if empty:
        raise ImageError(shown, "the file is empty (0 bytes); it holds no image")
    pil_limit = Image.MAX_IMAGE_PIXELS
    try:
        with warnings.catch_warnings():
            # PIL warns above MAX_IMAGE_PIXELS. When our limit is at or below PIL's, that warning means
            # the image is over our limit too: make it an error. A caller who allowed more opted in.
            lenient = max_pixels is None or (pil_limit is not None and max_pixels > pil_limit)
            warnings.simplefilter("ignore" if lenient else "error", Image.DecompressionBombWarning)
            with Image.open(p) as img:
                w, h = img.size
                if max_pixels is not None and w * h > max_pixels:
                    raise ImageError(
                        shown,
                        f"{w}x{h} = {w * h} pixels is more than max_pixels={max_pixels} (a decompression "
                        "bomb?); pass a larger max_pixels, or max_pixels=None, if you trust the file",
                    )
                img.load()  # decode now (first frame), so truncated or corrupt data fails here
                img = _orient(img, shown)
            return _to_rgb(img, shown)
    except ImageError:
        raise
    except Image.DecompressionBombError as e:
        raise ImageError(
            shown, f"{e} Raise PIL.Image.MAX_IMAGE_PIXELS if you trust the file"
        ) from e
    except Image.DecompressionBombWarning as e:
        raise ImageError(shown, f"{e} Pass a larger max_pixels if you trust the file") from e
    except Image.UnidentifiedImageError as e:
        raise ImageError(
            shown, "not an image file PIL can read (PNG, JPEG, BMP, TIFF, WebP, GIF, ...); check its content"
        ) from e
    except PermissionError as e:
        raise ImageError(shown, "permission denied; check the file's permissions") from e
    except OSError as e:  # decoders report truncated and corrupt data as OSError
        detail = str(e) or type(e).__name__
        kind = "truncated" if "truncated" in detail.lower() else "corrupt or unreadable"
        raise ImageError(shown, f"{kind} image data ({detail}); re-download or re-export the file") from e
    except Exception as e:  # PIL's decoders raise many types on malformed data; keep the cause chained
        raise ImageError(shown, f"corrupt or unsupported image data ({type(e).__name__}: {e})") from e


def load_images(
    paths: Sequence[str | os.PathLike], **kw: Any
) -> tuple[list[tuple[str, Image.Image]], list[tuple[str, str]]]:
    """Load many files with :func:`load_image` (``kw`` passed on), never failing because of one file.

    Returns:
        ``(loaded, failures)``: ``[(path, image), ...]`` in input order and ``[(path, message), ...]``.
    """
    if isinstance(paths, (str, bytes, os.PathLike)):
        raise TypeError(f"load_images takes a sequence of paths, got the single path {paths!r}; "
                        "wrap it in a list or use load_image")
    loaded: list[tuple[str, Image.Image]] = []
    failures: list[tuple[str, str]] = []
    for path in paths:
        try:
            loaded.append((_display(path), load_image(path, **kw)))
        except ImageError as e:
            failures.append((_display(path), str(e)))
    return loaded, failures


def bundled_image(name: str) -> Image.Image:
    """One of the test images shipped with scikit-image (see :data:`BUNDLED`), as RGB; no download."""
    key = name.strip().lower() if isinstance(name, str) else name
    if key not in BUNDLED:
        raise ValueError(f"unknown bundled image {name!r}; choose one of: {', '.join(BUNDLED)}")
    import skimage.data  # imported lazily: scikit-image is slow to import

    return Image.fromarray(np.ascontiguousarray(getattr(skimage.data, key)())).convert("RGB")


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_RESERVED = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(10)), *(f"lpt{i}" for i in range(10))}


def image_name(path: str | os.PathLike, max_len: int = 64) -> str:
    """A short, file-system-safe stem for reports: ``"photos/My Cat (1).JPG"`` -> ``"My_Cat_1"``.

    ASCII letters, digits, ``.``, ``_`` and ``-`` only; ``"image"`` when nothing is left. Two paths can
    give the same name: making names unique is the caller's job.
    """
    stem = Path(_display(path)).stem
    ascii_stem = unicodedata.normalize("NFKD", stem).encode("ascii", "ignore").decode("ascii")
    name = _UNSAFE.sub("_", ascii_stem).strip("._-")[:max_len].rstrip("._-")
    if not name:
        return "image"
    return f"{name}_" if name.split(".")[0].lower() in _RESERVED else name


def _display(path: str | bytes | os.PathLike) -> str:
    p = os.fspath(path)
    return os.fsdecode(p) if isinstance(p, bytes) else p


def _orient(img: Image.Image, shown: str) -> Image.Image:
    """Apply the EXIF orientation (a copy either way, detached from the file)."""
    try:
        return ImageOps.exif_transpose(img)
    except Exception as e:  # broken EXIF must not lose the picture: keep it as stored, say so
        warnings.warn(f"{shown}: ignoring unreadable EXIF orientation ({e})", stacklevel=3)
        return img.copy()


def _to_rgb(img: Image.Image, shown: str) -> Image.Image:
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in _SIXTEEN_BIT or mode in ("I", "F"):
        return Image.fromarray(_range_to_uint8(np.asarray(img))).convert("RGB")
    if mode in _ALPHA_MODES or "transparency" in img.info:
        rgba = img.convert("RGBA")
        out = Image.new("RGBA", img.size, (255, 255, 255, 255))
        out.alpha_composite(rgba)
        return out.convert("RGB")
    try:
        return img.convert("RGB")
    except ValueError as e:
        raise ImageError(shown, f"cannot convert PIL mode {mode!r} to RGB ({e}); save the file as RGB") from e


def _range_to_uint8(arr: np.ndarray) -> np.ndarray:
    """High bit-depth or float (H,W) -> uint8.

    Integers within 0..65535 are 16-bit samples and keep their level on that scale (value / 257, the
    PNG/TIFF convention, so a dark image stays dark); floats within [0, 1] are scaled by 255; anything
    else (negative, wider integers, floats outside [0, 1]) maps its actual finite range onto 0..255.
    """
    a = arr.astype(np.float64)
    finite = np.isfinite(a)
    if not finite.any():
        return np.zeros(a.shape, np.uint8)
    lo, hi = a[finite].min(), a[finite].max()
    a = np.where(np.isnan(a), lo, np.clip(a, lo, hi))
    if arr.dtype.kind in "iu" and lo >= 0 and hi <= 65535:
        a = a / 65535.0 * 255.0
    elif arr.dtype.kind == "f" and lo >= 0 and hi <= 1:
        a = a * 255.0
    elif hi > lo:
        a = (a - lo) / (hi - lo) * 255.0
    else:
        a = np.zeros_like(a)
    return np.round(a).astype(np.uint8)
