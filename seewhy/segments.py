"""Features for perturbation methods: superpixels (scikit-image), grid cells, user masks, and their mean colours.

A segmentation is a LongTensor (B,H,W) of feature ids, per image ``0 .. F_b - 1`` (contiguous, starting at 0).
Superpixels are computed on the image as scikit-image sees it: the normalised input of each image is mapped to a
[0, 1] float array (H,W,C) by that image's own min-max over all channels (so colours keep their ratios), then

- ``"slic"`` (Achanta et al. 2012): ``n_segments``, ``compactness=10``, ``sigma=1``, in Lab for 3-channel images;
- ``"quickshift"`` (Vedaldi & Soatto 2008), lime's default: ``kernel_size=4, max_dist=200, ratio=0.2`` (3 channels;
  a one-channel image is repeated three times); ``n_segments`` is not used;
- ``"felzenszwalb"`` (Felzenszwalb & Huttenlocher 2004): ``scale=100, sigma=0.5, min_size=50``; ``n_segments`` is
  not used;
- ``"grid"``: rectangular cells, about ``n_segments`` of them (rows x columns follow the aspect ratio).

``params`` override the scikit-image keyword arguments.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

SEGMENTATIONS = ("slic", "quickshift", "felzenszwalb", "grid")

_DEFAULTS: dict[str, dict[str, Any]] = {
    "slic": {"compactness": 10.0, "sigma": 1.0},
    "quickshift": {"kernel_size": 4, "max_dist": 200, "ratio": 0.2},
    "felzenszwalb": {"scale": 100, "sigma": 0.5, "min_size": 50},
}


def unit_image(x: Tensor) -> np.ndarray:
    """One (C,H,W) image -> float64 (H,W,C) in [0, 1] by its own min-max (a constant image gives zeros)."""
    a = x.detach().to("cpu", torch.float64).permute(1, 2, 0).numpy()
    lo, hi = float(a.min()), float(a.max())
    return (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)


def grid_segments(height: int, width: int, n_segments: int) -> Tensor:
    """(H,W) ids of about ``n_segments`` rectangular cells, row-major."""
    rows = max(1, min(height, round(math.sqrt(n_segments * height / width))))
    cols = max(1, min(width, round(n_segments / rows)))
    r = torch.arange(height) * rows // height
    c = torch.arange(width) * cols // width
    return r[:, None] * cols + c[None, :]


def superpixels(inputs: Tensor, method: str = "slic", n_segments: int = 50, **params: Any) -> Tensor:
    """(B,H,W) LongTensor of superpixel ids (contiguous from 0 per image) on ``inputs.device``."""
    if method not in SEGMENTATIONS:
        raise ValueError(f"unknown segmentation {method!r}; use one of {', '.join(SEGMENTATIONS)} or a LongTensor")
    if not isinstance(n_segments, int) or isinstance(n_segments, bool) or n_segments < 2:
        raise ValueError(f"n_segments must be an int >= 2, got {n_segments!r}")
    b, c, h, w = inputs.shape
    if method == "grid":
        return relabel(grid_segments(h, w, n_segments).expand(b, h, w)).to(inputs.device)
    from skimage import segmentation  # imported lazily: scikit-image is slow to import

    kw = {**_DEFAULTS[method], **params}
    out = []
    for i in range(b):
        img = unit_image(inputs[i])
        if method == "slic":
            seg = segmentation.slic(
                img if c > 1 else img[..., 0], n_segments=n_segments, start_label=0,
                channel_axis=-1 if c > 1 else None, convert2lab=c == 3, **kw,
            )
        elif method == "quickshift":
            if c not in (1, 3):
                raise ValueError(f"quickshift needs 1- or 3-channel images, got {c} channels; use segments='slic'")
            seg = segmentation.quickshift(np.repeat(img, 3, axis=2) if c == 1 else img, **kw)
        else:
            seg = segmentation.felzenszwalb(img if c > 1 else img[..., 0], channel_axis=-1 if c > 1 else None, **kw)
        out.append(torch.from_numpy(np.ascontiguousarray(seg)).long())
    return relabel(torch.stack(out)).to(inputs.device)


def relabel(segments: Tensor) -> Tensor:
    """Map the ids of each image of (B,H,W) to 0 .. F_b - 1, keeping their order."""
    out = torch.empty(segments.shape, dtype=torch.long, device=segments.device)
    for i in range(segments.shape[0]):
        out[i] = torch.unique(segments[i], return_inverse=True)[1]
    return out


def make_segments(
    spec: str | Tensor,
    inputs: Tensor,
    n_segments: int = 50,
    params: dict[str, Any] | None = None,
    *,
    name: str = "segments",
) -> Tensor:
    """A segmentation (B,H,W) for ``inputs`` from a name (see the module docstring) or a user mask.

    A user mask is an integer tensor (H,W) (shared by all images) or (B,H,W); any ids, relabelled per image to
    0 .. F_b - 1 in increasing order of the given ids.
    """
    b, _, h, w = inputs.shape
    if isinstance(spec, str):
        return superpixels(inputs, spec, n_segments, **(params or {}))
    if not isinstance(spec, Tensor):
        raise TypeError(f"{name} must be one of {', '.join(SEGMENTATIONS)} or an integer tensor, got {spec!r}")
    if spec.dtype.is_floating_point or spec.dtype.is_complex or spec.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer feature ids (a LongTensor), got dtype {spec.dtype}")
    if spec.ndim == 2:
        spec = spec.unsqueeze(0).expand(b, -1, -1)
    if spec.ndim != 3 or tuple(spec.shape[1:]) != (h, w) or spec.shape[0] not in (1, b):
        raise ValueError(
            f"{name} of shape {tuple(spec.shape)} does not match inputs {tuple(inputs.shape)}; "
            f"give (H,W) = ({h}, {w}) for all images or (B,H,W) = ({b}, {h}, {w}), one map per image"
        )
    return relabel(spec.expand(b, h, w).cpu()).to(inputs.device)


def n_features(segments: Tensor) -> Tensor:
    """(B,) number of features of each image of a relabelled segmentation."""
    return segments.flatten(1).amax(dim=1).cpu() + 1


def segment_mean(inputs: Tensor, segments: Tensor) -> Tensor:
    """(B,C,H,W): every pixel replaced by the mean colour of its segment (lime's ``hide_color=None``)."""
    b, c, h, w = inputs.shape
    f = int(n_features(segments).max())
    idx = segments.reshape(b, 1, h * w).expand(b, c, h * w)
    sums = torch.zeros(b, c, f, dtype=inputs.dtype, device=inputs.device).scatter_add_(2, idx, inputs.reshape(b, c, -1))
    counts = torch.zeros(b, 1, f, dtype=inputs.dtype, device=inputs.device)
    counts.scatter_add_(2, idx[:, :1], torch.ones_like(inputs[:, :1]).reshape(b, 1, -1))
    means = sums / counts.clamp(min=1)
    return means.gather(2, idx).reshape(b, c, h, w)
