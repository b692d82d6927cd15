"""Images in: loading files robustly and preprocessing them for a model."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor

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
