"""Pictures out: colormaps, overlays, grids, plots and PNG encoding (the views of an Explanation built on them are in
:mod:`seewhy.views`).

This is the only module (with :mod:`seewhy.images` and the report) where tensors become uint8 numpy
arrays or PIL images. Heatmaps come in already scaled to [0, 1] by :mod:`seewhy.postprocess`; a
*signed* map has 0.5 for zero.
"""

from __future__ import annotations

import base64
import difflib
import io
import os
from collections.abc import Sequence
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import matplotlib
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from .fileio import atomic_write
from .images import to_pil

if TYPE_CHECKING:

    pass

__all__ = [
    "apply_colormap",
    "data_uri",
    "draw_box",
    "feature_map_grid",
    "filter_grid",
    "grid",
    "heat_to_image",
    "line_plot",
    "overlay",
    "png_bytes",
    "save_png",
    "tensor_to_image",
]

_EPS = 1e-12


def tensor_to_image(x: Tensor | np.ndarray, mean: Sequence[float] | None = None,
                    std: Sequence[float] | None = None) -> np.ndarray:
    """A (C,H,W) or (B,C,H,W) image tensor (C = 1 or 3) -> uint8 (H,W,3) or (B,H,W,3).

    With ``mean``/``std`` the tensor is denormalised (``x * std + mean``) and clipped to [0, 1];
    without, each image is min-max scaled (over all its channels, so colours keep their balance).
    One channel becomes gray RGB.
    """
    t = torch.as_tensor(x).detach().to("cpu", torch.float64)
    if t.ndim not in (3, 4):
        raise ValueError(f"expected an image tensor of shape (C,H,W) or (B,C,H,W), got {tuple(t.shape)}")
    single = t.ndim == 3
    if single:
        t = t.unsqueeze(0)
    c = t.shape[1]
    if c not in (1, 3):
        raise ValueError(f"expected 1 or 3 channels, got {c} (shape {tuple(t.shape)}); select the channels "
                         "to show first, e.g. x[:, :3]")
    if (mean is None) != (std is None):
        raise ValueError("pass both mean and std (to denormalise) or neither (per-image min-max)")
    t = torch.nan_to_num(t, nan=0.0, posinf=0.0, neginf=0.0)
    if mean is not None:
        m = torch.as_tensor(mean, dtype=t.dtype).flatten()
        s = torch.as_tensor(std, dtype=t.dtype).flatten()
        if m.numel() not in (1, c) or s.numel() not in (1, c):
            raise ValueError(f"mean and std need 1 or {c} values for a {c}-channel image, "
                             f"got {m.numel()} and {s.numel()}")
        t = (t * s.view(1, -1, 1, 1) + m.view(1, -1, 1, 1)).clamp(0, 1)
    else:
        flat = t.flatten(1)
        lo = flat.amin(1).view(-1, 1, 1, 1)
        hi = flat.amax(1).view(-1, 1, 1, 1)
        t = (t - lo) / (hi - lo).clamp(min=_EPS)
    if c == 1:
        t = t.expand(-1, 3, -1, -1)
    out = (t * 255.0).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()
    return out[0] if single else out


@lru_cache(maxsize=32)
def _lut(cmap: str) -> np.ndarray:
    """(256, 3) uint8 lookup table of a matplotlib colormap."""
    try:
        cm = matplotlib.colormaps[cmap]
    except KeyError:
        close = difflib.get_close_matches(cmap, list(matplotlib.colormaps), n=3)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise ValueError(f"unknown colormap {cmap!r}; {hint}use a name from matplotlib.colormaps "
                         "(e.g. jet, viridis, inferno, bwr, RdBu_r)") from None
    lut = (cm(np.linspace(0.0, 1.0, 256))[:, :3] * 255.0).round().astype(np.uint8)
    lut.setflags(write=False)
    return lut


def _as_numpy(values: np.ndarray | Tensor) -> np.ndarray:
    if isinstance(values, Tensor):
        return values.detach().to("cpu", torch.float64).numpy()
    return np.asarray(values, dtype=np.float64)


def apply_colormap(values: np.ndarray | Tensor, cmap: str = "jet") -> np.ndarray:
    """Values in [0, 1] (any shape, typically (H,W)) -> uint8 colours of shape ``values.shape + (3,)``.

    Values are clipped to [0, 1]; NaN maps to 0. 256 levels, from ``matplotlib.colormaps[cmap]``.
    """
    v = np.nan_to_num(np.clip(_as_numpy(values), 0.0, 1.0), nan=0.0)
    return _lut(cmap)[np.rint(v * 255.0).astype(np.intp)]


def _heat2d(heat: np.ndarray | Tensor, size: tuple[int, int] | None = None, *,
            signed: bool = False) -> np.ndarray:
    """(H,W), (1,H,W) or (1,1,H,W) -> float64 (H,W) in [0, 1], resized bilinearly to ``size`` if given."""
    h = _as_numpy(heat)
    while h.ndim > 2 and h.shape[0] == 1:
        h = h[0]
    if h.ndim != 2:
        raise ValueError(f"expected one heatmap of shape (H,W), (1,H,W) or (1,1,H,W), got {tuple(np.shape(heat))}; "
                         "pass one sample at a time, e.g. heat[i]")
    h = np.nan_to_num(h, nan=0.5 if signed else 0.0)
    if size is not None and h.shape != tuple(size):
        t = torch.from_numpy(np.ascontiguousarray(h))[None, None]
        t = F.interpolate(t, size=tuple(size), mode="bilinear", align_corners=False, antialias=True)
        h = t[0, 0].numpy()
    return np.clip(h, 0.0, 1.0)


def _as_rgb(image: np.ndarray | Image.Image, what: str = "image") -> np.ndarray:
    """uint8 (H,W,3) from an RGB/RGBA/gray uint8 array (or floats in [0,1]) or a PIL image."""
    if isinstance(image, Tensor):
        raise TypeError(f"{what} is a torch tensor; convert it with seewhy.viz.tensor_to_image first")
    return np.asarray(to_pil(image))


_IMAGE_TENSORS = "uint8 (H,W,3) or (3,H,W), or float (3,H,W) or (H,W,3) in [0, 1] (or normalised)"


def _tensor_rgb(image: Tensor, what: str, mean: Sequence[float] | None = None,
                std: Sequence[float] | None = None) -> np.ndarray:
    """uint8 (H,W,3) from one image tensor (see :func:`overlay`); ``mean``/``std`` denormalise float tensors."""
    shape = tuple(image.shape)
    t = image.detach().cpu()
    if t.ndim == 4 and t.shape[0] == 1:
        t = t[0]
    if t.ndim not in (2, 3):
        hint = "; pass one sample at a time, e.g. x[i]" if t.ndim == 4 else ""
        raise ValueError(f"{what} is a tensor of shape {shape}; expected one image: {_IMAGE_TENSORS}{hint}")
    if t.dtype == torch.uint8:
        if t.ndim == 3 and t.shape[-1] not in (1, 3, 4) and t.shape[0] in (1, 3, 4):
            t = t.permute(1, 2, 0)  # (C,H,W) as torchvision.io.read_image returns it
        if t.ndim == 3 and t.shape[-1] not in (1, 3, 4):
            raise ValueError(f"{what} is a uint8 tensor of shape {shape}; expected (H,W,3) (or (3,H,W), (H,W), "
                             "(H,W,4)) with 1, 3 or 4 channels")
        arr = t.numpy()
        return _as_rgb(arr[..., 0] if arr.ndim == 3 and arr.shape[-1] == 1 else arr, what)
    if not t.is_floating_point():
        raise TypeError(f"{what} is a {t.dtype} tensor; pass uint8 (0-255) or float in [0, 1], "
                        "e.g. x.float() / 255")
    if t.ndim == 2:
        t = t.unsqueeze(0)
    if t.shape[0] not in (1, 3) and t.shape[-1] in (1, 3):
        t = t.permute(2, 0, 1)  # channels last; channels first wins when both could be the channels
    if t.shape[0] not in (1, 3):
        raise ValueError(f"{what} is a float tensor of shape {shape}; expected (3,H,W) or (H,W,3) "
                         "(or one channel); select the channels to show, e.g. x[:3]")
    if mean is not None or std is not None:
        return tensor_to_image(t, mean, std)
    if t.dtype in (torch.float16, torch.bfloat16):
        t = t.float()
    if t.numel() and bool(t.min() >= 0) and bool(t.max() <= 1):  # False for NaN: min-max below zeroes them
        arr = t.permute(1, 2, 0).numpy()
        return _as_rgb(arr[..., 0] if arr.shape[-1] == 1 else arr, what)  # exactly as the same array would be
    return tensor_to_image(t)  # normalised (or any range): per-image min-max


def _to_rgb(image: np.ndarray | Image.Image | Tensor, what: str = "image", mean: Sequence[float] | None = None,
            std: Sequence[float] | None = None) -> np.ndarray:
    """uint8 (H,W,3) from an array, a PIL image or an image tensor."""
    if isinstance(image, Tensor):
        return _tensor_rgb(image, what, mean, std)
    return _as_rgb(image, what)


def _default_cmap(cmap: str | None, signed: bool) -> str:
    return cmap if cmap is not None else ("bwr" if signed else "jet")


def overlay(image: np.ndarray | Image.Image | Tensor, heat: np.ndarray | Tensor, *, cmap: str | None = None,
            alpha: float = 0.5, signed: bool = False) -> np.ndarray:
    """Blend a heatmap over an image: uint8 (H,W,3).

    Args:
        image: uint8 (H,W,3) array (gray and RGBA are accepted too, and floats in [0, 1]) or PIL image; or a
            tensor: uint8 (H,W,3) (or (3,H,W)), or float (3,H,W) / (H,W,3) in [0, 1] (channels first when both
            could be). A float tensor with values outside [0, 1] (a normalised model input) is min-max scaled
            like :func:`tensor_to_image`; to undo the model's normalisation instead, pass
            ``tensor_to_image(x, mean, std)``.
        heat: (H,W), (1,H,W) or (1,1,H,W) array or tensor in [0, 1]; resized bilinearly to the image when
            the sizes differ.
        cmap: matplotlib colormap; default ``"jet"``, or ``"bwr"`` when ``signed``.
        alpha: opacity of the colours, in [0, 1] (0: the image, 1: the colormap alone).
        signed: 0.5 means zero: the opacity is ``alpha * |2 * heat - 1|``, so zero shows the image.
    """
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    img = _to_rgb(image)
    h = _heat2d(heat, img.shape[:2], signed=signed)
    colours = apply_colormap(h, _default_cmap(cmap, signed)).astype(np.float64)
    a = float(alpha) * (np.abs(2.0 * h - 1.0) if signed else np.ones_like(h))
    a = a[..., None]
    out = (1.0 - a) * img + a * colours
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def heat_to_image(heat: np.ndarray | Tensor, *, cmap: str | None = None, signed: bool = False) -> np.ndarray:
    """The colormapped heatmap alone: (H,W) or (1,H,W) in [0, 1] -> uint8 (H,W,3)."""
    return apply_colormap(_heat2d(heat, signed=signed), _default_cmap(cmap, signed))


# ----------------------------------------------------------------------------------------------- grid


@lru_cache(maxsize=1)
def _font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default()


def _text_size(draw: ImageDraw.ImageDraw, text: str) -> tuple[int, int]:
    if not text:
        return 0, 0
    x0, y0, x1, y1 = draw.multiline_textbbox((0, 0), text, font=_font())
    return int(np.ceil(x1)), int(np.ceil(y1))


def _fit(draw: ImageDraw.ImageDraw, text: str, width: int) -> str:
    """Each line of ``text`` shortened with '...' to fit ``width`` pixels."""
    lines = []
    for line in str(text).splitlines() or [""]:
        if _text_size(draw, line)[0] > width:
            lo, hi = 0, len(line)  # the longest prefix that fits with '...' (binary search)
            while lo < hi:
                mid = (lo + hi + 1) // 2
                lo, hi = (mid, hi) if _text_size(draw, line[:mid] + "...")[0] <= width else (lo, mid - 1)
            line = line[:lo] + "..."
        lines.append(line)
    return "\n".join(lines)


def _draw_text(draw: ImageDraw.ImageDraw, xy: tuple[int, int], text: str) -> None:
    try:
        draw.multiline_text(xy, text, fill=(0, 0, 0), font=_font())
    except UnicodeEncodeError:  # a bitmap fallback font (no FreeType) only has Latin-1
        draw.multiline_text(xy, text.encode("latin-1", "replace").decode("latin-1"), fill=(0, 0, 0),
                            font=_font())


def grid(cells: Sequence[Sequence[np.ndarray | None]], *, row_labels: Sequence[str] | None = None,
         col_labels: Sequence[str] | None = None, pad: int = 4, max_label_width: int = 200) -> np.ndarray:
    """Lay images out in rows (e.g. images x methods) on white, with text labels: uint8 (H,W,3).

    Every cell is as large as the largest image (smaller ones are centred; ``None`` leaves a cell
    blank; short rows are padded). Without labels the result is ``rows * h + (rows + 1) * pad`` high and
    ``cols * w + (cols + 1) * pad`` wide; column labels add a band on top, row labels one on the left
    (at most ``max_label_width`` pixels; longer labels are shortened with '...'). Labels may hold '\\n'.
    """
    if pad < 0:
        raise ValueError(f"pad must be >= 0, got {pad}")
    rows = [[None if c is None else _as_rgb(c, "grid cell") for c in row] for row in cells]
    n_rows = len(rows)
    n_cols = max((len(r) for r in rows), default=0)
    if row_labels is not None and len(row_labels) != n_rows:
        raise ValueError(f"got {len(row_labels)} row_labels for {n_rows} rows")
    if col_labels is not None and len(col_labels) != n_cols:
        raise ValueError(f"got {len(col_labels)} col_labels for {n_cols} columns")
    if n_rows == 0 or n_cols == 0:
        raise ValueError("grid needs at least one cell")
    present = [c for r in rows for c in r if c is not None]
    ch = max((c.shape[0] for c in present), default=1)
    cw = max((c.shape[1] for c in present), default=1)

    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    cols_txt = [_fit(draw, lab, cw) for lab in col_labels] if col_labels is not None else None
    rows_txt = [_fit(draw, lab, max_label_width) for lab in row_labels] if row_labels is not None else None
    top = max(_text_size(draw, t)[1] for t in cols_txt) + pad if cols_txt else 0
    left = max(_text_size(draw, t)[0] for t in rows_txt) + pad if rows_txt else 0

    height = top + n_rows * ch + (n_rows + 1) * pad
    width = left + n_cols * cw + (n_cols + 1) * pad
    canvas = np.full((height, width, 3), 255, np.uint8)
    for i, row in enumerate(rows):
        y = top + pad + i * (ch + pad)
        for j, cell in enumerate(row):
            if cell is None:
                continue
            x = left + pad + j * (cw + pad)
            dy, dx = (ch - cell.shape[0]) // 2, (cw - cell.shape[1]) // 2
            canvas[y + dy:y + dy + cell.shape[0], x + dx:x + dx + cell.shape[1]] = cell

    if cols_txt or rows_txt:
        pil = Image.fromarray(canvas)
        d = ImageDraw.Draw(pil)
        for j, text in enumerate(cols_txt or []):
            x = left + pad + j * (cw + pad) + (cw - _text_size(d, text)[0]) // 2
            _draw_text(d, (x, pad // 2), text)
        for i, text in enumerate(rows_txt or []):
            y = top + pad + i * (ch + pad) + (ch - _text_size(d, text)[1]) // 2
            _draw_text(d, (pad // 2, y), text)
        canvas = np.asarray(pil).copy()
    return canvas


# ------------------------------------------------------------------------------------- inside a network


def _tile(a: np.ndarray, size: int) -> np.ndarray:
    """A uint8 (h,w[,3]) array enlarged with nearest-neighbour sampling so its longer side is ``size``."""
    img = Image.fromarray(a)
    scale = max(1, size // max(a.shape[0], a.shape[1]))
    return np.asarray(img.resize((a.shape[1] * scale, a.shape[0] * scale), Image.Resampling.NEAREST).convert("RGB"))


def filter_grid(weights: Tensor, *, max_filters: int = 64, max_channels: int = 8, tile: int = 32,
                columns: int = 8) -> np.ndarray:
    """Convolution filters (K, C, kh, kw) as one picture, uint8 (H,W,3).

    Normalisation (one scale for the whole layer, so filters compare and signs show): ``0.5 + 0.5 * w / max|w|``,
    mid-grey is zero, brighter positive, darker negative. With C == 3 (a first layer on RGB) each filter is one
    colour tile, ``columns`` per row; otherwise each filter is a row of grey tiles, one per input channel (the first
    ``max_channels``). At most ``max_filters`` filters are drawn; tiles are enlarged to ``tile`` pixels.
    """
    w = torch.as_tensor(weights).detach().to("cpu", torch.float64)
    if w.ndim != 4:
        raise ValueError(f"weights must be (K, C, kh, kw), got {tuple(w.shape)}; use seewhy.inside.filters(model)")
    w = w[:max_filters]
    v = (0.5 + 0.5 * w / w.abs().max().clamp(min=_EPS)).clamp(0, 1)
    u8 = (v * 255).round().to(torch.uint8).numpy()
    if w.shape[1] == 3:
        tiles = [_tile(np.ascontiguousarray(f.transpose(1, 2, 0)), tile) for f in u8]
        rows = [tiles[i:i + columns] for i in range(0, len(tiles), columns)]
        return grid(rows, pad=2)
    rows = [[_tile(np.ascontiguousarray(c), tile) for c in f[:max_channels]] for f in u8]
    labels = [f"filter {i}" for i in range(len(rows))]
    cols = [f"in {j}" for j in range(min(max_channels, w.shape[1]))]
    return grid(rows, row_labels=labels, col_labels=cols, pad=2)


def feature_map_grid(maps: Tensor, *, n: int = 16, channels: Sequence[int] | None = None, columns: int = 8,
                     tile: int = 96, cmap: str = "viridis") -> np.ndarray:
    """One image's feature maps (K,h,w) (or the first image of (B,K,h,w)) as a labelled grid, uint8 (H,W,3).

    Shows ``channels`` if given, else the ``n`` channels with the highest mean activation. One scale for all the maps
    shown (min to max over them), so tiles compare; each tile is labelled with its channel and mean.
    """
    m = torch.as_tensor(maps).detach().to("cpu", torch.float64)
    if m.ndim == 4:
        m = m[0]
    if m.ndim != 3:
        raise ValueError(f"maps must be (K,h,w) or (B,K,h,w), got {tuple(m.shape)}")
    if channels is None:
        channels = torch.sort(-m.mean(dim=(1, 2)), stable=True).indices[:n].tolist()
    bad = [c for c in channels if not 0 <= int(c) < m.shape[0]]
    if bad:
        raise ValueError(f"channels {bad} out of range for {m.shape[0]} maps")
    shown = m[[int(c) for c in channels]]
    lo, hi = shown.min(), shown.max()
    norm = (shown - lo) / (hi - lo).clamp(min=_EPS)
    tiles = [_tile(apply_colormap(t, cmap), tile) for t in norm.numpy()]
    labels = [f"ch {int(c)}\nmean {float(t.mean()):.3g}" for c, t in zip(channels, shown, strict=True)]
    cells = [tiles[i:i + columns] for i in range(0, len(tiles), columns)]
    lab_rows = [labels[i:i + columns] for i in range(0, len(labels), columns)]
    out = []
    for row, labs in zip(cells, lab_rows, strict=True):
        out.append(grid([row + [None] * (columns - len(row))], col_labels=labs + [""] * (columns - len(labs)), pad=2))
    width = max(o.shape[1] for o in out)
    return np.concatenate([np.pad(o, ((0, 0), (0, width - o.shape[1]), (0, 0)), constant_values=255) for o in out])


def draw_box(image: np.ndarray | Image.Image, box: Sequence[int], *, colour: tuple[int, int, int] = (255, 0, 0),
             width: int = 2) -> np.ndarray:
    """A copy of the image with a rectangle ``box`` = (top, left, bottom, right) drawn on it (bottom/right
    exclusive, as :meth:`seewhy.inside.ReceptiveField.box` gives), uint8 (H,W,3)."""
    pil = Image.fromarray(_as_rgb(image)).copy()
    top, left, bottom, right = (int(v) for v in box)
    ImageDraw.Draw(pil).rectangle([left, top, max(left, right - 1), max(top, bottom - 1)], outline=colour,
                                  width=width)
    return np.asarray(pil).copy()


# ------------------------------------------------------------------------------------------ encoding


def _pil_any(image: np.ndarray | Image.Image) -> Image.Image:
    """A PIL image from uint8 (H,W) gray, (H,W,3) RGB or (H,W,4) RGBA (alpha kept for PNG)."""
    if isinstance(image, Image.Image):
        return image
    if isinstance(image, Tensor):
        raise TypeError("got a torch tensor; convert it with seewhy.viz.tensor_to_image first")
    arr = np.asarray(image)
    if arr.dtype == np.uint8 and (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[-1] in (3, 4))):
        return Image.fromarray(np.ascontiguousarray(arr))
    return to_pil(arr)  # floats in [0, 1] and the errors that name what is wrong


def line_plot(x: Sequence[float] | np.ndarray | Tensor, series: dict[str, Any], *, title: str = "",
              xlabel: str = "", ylabel: str = "", bands: dict[str, Any] | None = None,
              size: tuple[float, float] = (5.0, 3.4), dpi: int = 110) -> np.ndarray:
    """A line chart (one line per entry of ``series``, optional +- ``bands``) as a uint8 (H,W,3) image, drawn
    with matplotlib's Agg canvas (no display, no global pyplot state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=dpi)
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    xs = _as_numpy(x).astype(float)
    for label, ys in series.items():
        y = _as_numpy(ys).astype(float)
        (line,) = ax.plot(xs, y, label=label, linewidth=1.6)
        if bands and label in bands:
            spread = _as_numpy(bands[label]).astype(float)
            ax.fill_between(xs, y - spread, y + spread, color=line.get_color(), alpha=0.15, linewidth=0)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel, fontsize=9)
    ax.set_ylabel(ylabel, fontsize=9)
    ax.tick_params(labelsize=8)
    ax.grid(alpha=0.3)
    if series:
        ax.legend(fontsize=7, frameon=False)
    fig.tight_layout()
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def png_bytes(image: np.ndarray) -> bytes:
    """Encode a uint8 (H,W), (H,W,3) or (H,W,4) image as PNG."""
    buf = io.BytesIO()
    _pil_any(image).save(buf, format="PNG")
    return buf.getvalue()


def data_uri(image: np.ndarray) -> str:
    """The image as an inline PNG: ``"data:image/png;base64,..."``."""
    return "data:image/png;base64," + base64.b64encode(png_bytes(image)).decode("ascii")


def save_png(image: np.ndarray, path: str | os.PathLike) -> None:
    """Write a PNG atomically (:func:`seewhy.fileio.atomic_write`): readers never see a half-written file; the
    folder must exist."""
    data = png_bytes(image)
    with atomic_write(path) as f:
        f.write(data)
