"""An :class:`~seewhy.core.Explanation` as pictures: the Jupyter HTML view, overlay arrays, PNG files and a matplotlib
figure (``exp._repr_html_()``, ``exp.overlay()``, ``exp.save()``, ``exp.show()``), built on :mod:`seewhy.viz`."""

from __future__ import annotations

import difflib
import html
import io
import math
import operator
import os
import re
import warnings
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import matplotlib
import numpy as np
import torch
from PIL import Image
from torch import Tensor

from .viz import _default_cmap, _lut, _to_rgb, data_uri, heat_to_image, overlay, save_png, tensor_to_image

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["ExplanationLike", "explanation_figure", "explanation_html", "explanation_overlays", "save_explanation"]


class ExplanationLike(Protocol):
    """What the views read from a :class:`seewhy.core.Explanation` (typed by its shape, so that the views do not
    depend on the module that defines it)."""

    @property
    def attributions(self) -> Tensor: ...
    @property
    def scores(self) -> Tensor: ...
    @property
    def inputs(self) -> Tensor | None: ...
    @property
    def method(self) -> str: ...
    @property
    def params(self) -> dict[str, Any]: ...
    @property
    def layer(self) -> str | None: ...

    def heatmap(self, size: tuple[int, int] | None = None, **overrides: Any) -> Tensor: ...
    def heatmap_steps(self, size: tuple[int, int] | None = None, **overrides: Any) -> dict[str, Any]: ...
    def label(self, i: int) -> str: ...


# ------------------------------------------------------------------------------------- Jupyter view


def _short(value: Any, limit: int = 80) -> str:
    if isinstance(value, Tensor):
        text = f"tensor{tuple(value.shape)}" if value.numel() > 8 else repr(value.tolist())
    else:
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def explanation_html(exp: ExplanationLike, *, max_rows: int = 16, width: int = 160) -> str:
    """A small HTML table for ``Explanation._repr_html_``: per sample the input, the heatmap overlay,
    the target label and its score; the method, its parameters and the heatmap steps above it.

    Shows the first ``max_rows`` samples; images are displayed ``width`` pixels wide.
    """
    steps = exp.heatmap_steps()
    signed = steps.get("sign") == "all"
    heat = exp.heatmap()  # (B,1,H,W) in [0, 1]
    n = int(heat.shape[0])
    shown = min(n, max_rows)
    inputs = None
    if exp.inputs is not None and exp.inputs.ndim == 4 and exp.inputs.shape[1] in (1, 3):
        inputs = tensor_to_image(exp.inputs[:shown])

    def img(arr: np.ndarray, alt: str) -> str:
        return (f'<img src="{data_uri(arr)}" alt="{html.escape(alt)}" '
                f'style="width:{width}px;image-rendering:pixelated">')

    esc = html.escape
    params = ", ".join(f"{esc(str(k))}={esc(_short(v))}" for k, v in exp.params.items()) or "none"
    step_text = ", ".join(f"{esc(str(k))}={esc(str(v))}" for k, v in steps.items() if k != "size")
    head = f"<b>{esc(exp.method)}</b>"
    if exp.layer:
        head += f" at layer <code>{esc(str(exp.layer))}</code>"
    parts = [
        '<div class="seewhy-explanation">',
        f"<div>{head} &mdash; {n} sample{'s' if n != 1 else ''}</div>",
        f"<div><small>params: {params}</small></div>",
        f"<div><small>heatmap: {step_text}</small></div>",
        "<table>",
        "<tr><th>#</th><th>input</th><th>heatmap</th><th>target</th><th>score</th></tr>",
    ]
    for i in range(shown):
        label = exp.label(i)
        h = heat[i, 0]
        if inputs is not None:
            left = img(inputs[i], f"input {i}")
            right = img(overlay(inputs[i], h, signed=signed), f"heatmap {i}: {label}")
        else:
            left = ""
            right = img(heat_to_image(h, signed=signed), f"heatmap {i}: {label}")
        score = f"{float(exp.scores[i]):.4g}" if exp.scores is not None and exp.scores.numel() > i else ""
        parts.append(f"<tr><td>{i}</td><td>{left}</td><td>{right}</td>"
                     f"<td>{esc(label)}</td><td>{esc(score)}</td></tr>")
    parts.append("</table>")
    if shown < n:
        parts.append(f"<div><small>... and {n - shown} more (showing {shown} of {n})</small></div>")
    parts.append("</div>")
    return "\n".join(parts)


# ---------------------------------------------------------------------- an Explanation as pictures

_STEPS = ("reduce", "sign", "upsample", "normalize", "percentile")
_PICTURE_KEYWORDS = ("size", "cmap", "alpha", "images", "mean", "std")


def _check_steps(overrides: dict[str, Any], keywords: Sequence[str]) -> None:
    """Extra keywords must be heatmap steps (so that a misspelt keyword is named, not passed on)."""
    for key in overrides:
        if key not in _STEPS:
            close = difflib.get_close_matches(key, [*keywords, *_STEPS], n=2)
            hint = f"did you mean {' or '.join(close)}? " if close else ""
            raise TypeError(f"unexpected keyword {key!r}; {hint}the keywords are {', '.join(keywords)} and the "
                            f"heatmap steps {', '.join(_STEPS)}")


def _indices(i: Any, n: int) -> tuple[list[int], bool]:
    """The samples ``i`` picks (None: all; an int: one; a sequence of ints) and whether ``i`` is one int."""
    if i is None:
        return list(range(n)), False
    one = not isinstance(i, (Sequence, np.ndarray, Tensor)) or (isinstance(i, (np.ndarray, Tensor)) and i.ndim == 0)
    out = []
    for j in [i] if one else list(i):
        if isinstance(j, (bool, np.bool_)) or (isinstance(j, Tensor) and j.dtype == torch.bool):
            raise TypeError(f"i must be a sample index (int) or a list of them, got {j!r}")
        try:
            k = operator.index(j)
        except TypeError:
            raise TypeError(f"i must be a sample index (int) or a list of them, got {j!r}") from None
        if not -n <= k < n:
            raise IndexError(f"sample {k} is out of range for an explanation of {n} sample{'s' if n != 1 else ''}; "
                             f"use 0 to {n - 1}")
        out.append(k % n)
    if not out:
        raise ValueError("i picks no sample; pass an index, a non-empty list of indices, or None for all")
    return out, one


def _size(size: int | Sequence[int] | None) -> tuple[int, int] | None:
    if size is None:
        return None
    try:
        hw = (size, size) if isinstance(size, (int, np.integer)) else tuple(size)
    except TypeError:
        hw = ()
    if len(hw) != 2 or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1 for v in hw):
        raise ValueError(f"size must be (H, W) in pixels (or one int for a square), got {size!r}")
    return int(hw[0]), int(hw[1])


def _given_images(images: Any, n: int, idx: list[int], one: bool, mean: Sequence[float] | None,
                  std: Sequence[float] | None) -> list[np.ndarray]:
    """uint8 (H,W,3) pictures of the samples ``idx`` from the user's ``images`` (one per sample)."""
    if isinstance(images, Image.Image) or (isinstance(images, (np.ndarray, Tensor)) and images.ndim <= 3):
        if n != 1 and not one:
            raise ValueError(f"images holds one image for {n} samples; pass one per sample (a list, a (B,H,W,3) "
                             "array or a (B,3,H,W) tensor), or pick the sample it shows with i=")
        return [_to_rgb(images, "images", mean, std)]
    if isinstance(images, (np.ndarray, Tensor)):
        if images.ndim != 4:
            raise ValueError(f"images has shape {tuple(images.shape)}; expected one image per sample: a (B,H,W,3) "
                             "array or a (B,3,H,W) / (B,H,W,3) tensor")
    elif not isinstance(images, Sequence) or isinstance(images, (str, bytes)):
        raise TypeError(f"images must be uint8 arrays, PIL images or tensors, one per sample, got "
                        f"{type(images).__name__}")
    if len(images) != n:
        raise ValueError(f"got {len(images)} images for {n} samples; pass one per sample")
    return [_to_rgb(images[j], f"images[{j}]", mean, std) for j in idx]


def _pictures(exp: ExplanationLike, idx: list[int], one: bool, images: Any, mean: Sequence[float] | None,
              std: Sequence[float] | None) -> list[np.ndarray] | None:
    """The pictures under the heatmaps: the user's ``images``, else the inputs, else None."""
    if images is not None:
        return _given_images(images, int(exp.attributions.shape[0]), idx, one, mean, std)
    x = exp.inputs
    if x is None:
        return None
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        warnings.warn(f"the inputs of shape {tuple(x.shape)} are not 1- or 3-channel images; showing the heatmaps "
                      "alone (pass images= to draw them on pictures)", stacklevel=4)
        return None
    return list(tensor_to_image(x[idx], mean, std))


def _compose(exp: ExplanationLike, idx: list[int], one: bool, *, size: int | Sequence[int] | None, cmap: str | None,
             alpha: float, images: Any, mean: Sequence[float] | None, std: Sequence[float] | None,
             overrides: dict[str, Any]) -> tuple[list[np.ndarray] | None, list[np.ndarray], bool]:
    """(pictures or None, overlays, signed) for the samples ``idx``; without pictures the overlays are the
    colormapped heatmaps alone."""
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    hw = _size(size)
    signed = exp.heatmap_steps(**overrides).get("sign") == "all"
    name = _default_cmap(cmap, signed)
    _lut(name)  # an unknown colormap fails before any work
    pics = _pictures(exp, idx, one, images, mean, std)
    if pics is None:
        heat = exp.heatmap(hw, **overrides)
        return None, [heat_to_image(heat[j, 0], cmap=name, signed=signed) for j in idx], signed
    if hw is not None:
        pics = [p if p.shape[:2] == hw else np.asarray(Image.fromarray(p).resize(hw[::-1], Image.Resampling.BILINEAR))
                for p in pics]
    heats: dict[tuple[int, int], Tensor] = {}  # one heatmap batch per picture size (usually one)
    out = []
    for pic, j in zip(pics, idx, strict=True):
        key = (int(pic.shape[0]), int(pic.shape[1]))
        if key not in heats:
            heats[key] = exp.heatmap(key, **overrides)
        out.append(overlay(pic, heats[key][j, 0], cmap=name, alpha=alpha, signed=signed))
    return pics, out, signed


def explanation_overlays(exp: ExplanationLike, i: int | Sequence[int] | None = None, *,
                         size: int | tuple[int, int] | None = None, cmap: str | None = None, alpha: float = 0.5,
                         images: Any = None, mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                         **heatmap_overrides: Any) -> np.ndarray:
    """The heatmaps of ``exp`` over its images: uint8 (B,H,W,3), or (H,W,3) when ``i`` is one index.

    Args:
        i: None for every sample, one index, or a list of indices.
        size: (H, W) of the result (pictures resized bilinearly); default: the input size (or each image's).
        cmap, alpha: as in :func:`overlay`; the default colormap is ``"bwr"`` for signed maps
            (``exp.heatmap_steps()["sign"] == "all"``), else ``"jet"``.
        images: pictures to draw on instead of ``exp.inputs``, one per sample: uint8 arrays, PIL images or
            tensors (see :func:`overlay`), as a list or a batch array/tensor; one image with one index ``i``.
        mean, std: denormalise ``exp.inputs`` (and float tensor ``images``) for display; without them each image
            is min-max scaled (:func:`tensor_to_image`).
        **heatmap_overrides: heatmap steps (``reduce``, ``sign``, ``normalize``...), see ``Explanation.heatmap``.

    Without inputs or ``images``, the colormapped heatmaps alone (at ``size``, else the attributions' size).
    """
    _check_steps(heatmap_overrides, ("i", *_PICTURE_KEYWORDS))
    idx, one = _indices(i, int(exp.attributions.shape[0]))
    _, out, _ = _compose(exp, idx, one, size=size, cmap=cmap, alpha=alpha, images=images, mean=mean, std=std,
                         overrides=heatmap_overrides)
    if one:
        return out[0]
    sizes = sorted({o.shape[:2] for o in out})
    if len(sizes) > 1:
        shown = ", ".join(f"{h}x{w}" for h, w in sizes)
        raise ValueError(f"the images have different sizes ({shown}); pass size=(H, W) to bring them to one size, "
                         "or pick one image with i=")
    return np.stack(out)


@lru_cache(maxsize=1)
def _image_suffixes() -> frozenset[str]:
    return frozenset(ext.lower() for ext in Image.registered_extensions())


def _save_paths(path: str | os.PathLike, method: str, n: int) -> list[Path]:
    """Where :func:`save_explanation` writes ``n`` PNGs (see there)."""
    text = os.fsdecode(os.fspath(path))
    p = Path(text)
    seps = tuple(s for s in (os.sep, os.altsep) if s)
    if p.is_dir() or text.endswith(seps) or not text:
        stem = re.sub(r"[^A-Za-z0-9._-]+", "_", str(method)).strip("._") or "explanation"
        return [p / f"{stem}-{j}.png" for j in range(n)]
    suffix = p.suffix.lower()
    if suffix and suffix != ".png" and suffix in _image_suffixes():
        raise ValueError(f"save writes PNG files, got the path {text!r}; use a .png name (or a folder)")
    stem = p.name[: -len(suffix)] if suffix == ".png" else p.name
    if n == 1:
        return [p if suffix == ".png" else p.with_name(stem + ".png")]
    return [p.with_name(f"{stem}-{j}.png") for j in range(n)]


def save_explanation(exp: ExplanationLike, path: str | os.PathLike, *, size: int | tuple[int, int] | None = None,
                     cmap: str | None = None, alpha: float = 0.5, images: Any = None,
                     mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                     **heatmap_overrides: Any) -> list[Path]:
    """Write one overlay PNG per image of ``exp`` (the pictures of :func:`explanation_overlays`); returns the paths.

    One image: exactly ``path`` (``.png`` added when it has no suffix). More: ``<stem>-0.png``, ``<stem>-1.png``...
    next to ``path``; when ``path`` is a folder (it exists, or ends with a separator), ``<method>-<i>.png`` in it.
    Missing folders are created. Every picture is made before the first write, and each file is written atomically
    (:func:`save_png`): an error leaves no half-written file (files written before it stay, complete).
    """
    _check_steps(heatmap_overrides, ("path", *_PICTURE_KEYWORDS))
    n = int(exp.attributions.shape[0])
    paths = _save_paths(path, exp.method, n)
    _, out, _ = _compose(exp, list(range(n)), False, size=size, cmap=cmap, alpha=alpha, images=images, mean=mean,
                         std=std, overrides=heatmap_overrides)
    for folder in dict.fromkeys(p.parent for p in paths):
        folder.mkdir(parents=True, exist_ok=True)
    for pic, p in zip(out, paths, strict=True):
        save_png(pic, p)
    return paths


def _inline_backend() -> bool:
    """Whether pyplot draws into IPython/Jupyter cells (``%matplotlib inline``, the Jupyter default)."""
    return "inline" in str(matplotlib.get_backend()).lower()


@lru_cache(maxsize=1)
def _figure_class() -> type[Figure]:
    from matplotlib.figure import Figure

    class ExplanationFigure(Figure):
        """A matplotlib Figure that Jupyter shows once, whether it is the value of a cell or not."""

        def _ipython_display_(self) -> None:
            import matplotlib.pyplot as plt
            from IPython.display import display

            manager = self.canvas.manager
            if manager is not None and plt.fignum_exists(manager.num):
                if not _inline_backend():
                    return  # a window or widget backend shows its own canvas
                plt.close(self)  # drawn here; the inline backend would draw it again after the cell
            buf = io.BytesIO()
            self.savefig(buf, format="png", bbox_inches="tight")
            display({"image/png": buf.getvalue(), "text/plain": repr(self)}, raw=True)

    ExplanationFigure.__qualname__ = "ExplanationFigure"
    return ExplanationFigure


def __getattr__(name: str) -> Any:
    """``ExplanationFigure`` is made on first use (importing matplotlib.figure is slow); pickle finds it here."""
    if name == "ExplanationFigure":
        return _figure_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _present(fig: Figure, block: bool | None) -> None:
    """Show ``fig`` as the backend allows (see :func:`explanation_figure`)."""
    import matplotlib.pyplot as plt
    from matplotlib.backend_bases import FigureManagerBase

    if _inline_backend():
        return  # drawn after the cell (or as the cell's value), once
    manager = fig.canvas.manager
    if manager is None or type(manager).show is FigureManagerBase.show:  # Agg, PDF, SVG...: no window to show
        plt.close(fig)  # so that pyplot does not pile figures up; the Figure still draws and saves
    elif not matplotlib.is_interactive():
        plt.show(block=block)  # a script with a window backend


def _caption(exp: ExplanationLike, j: int) -> str:
    label = exp.label(j)
    label = label if len(label) <= 32 else label[:29] + "..."
    scores = exp.scores
    if scores is not None and scores.numel() > j:
        label += f"\nscore {float(scores.flatten()[j]):.3g}"
    return label


def explanation_figure(exp: ExplanationLike, i: int | Sequence[int] | None = None, *, cols: int = 2,
                       max_images: int = 16, size: int | tuple[int, int] | None = None, cmap: str | None = None,
                       alpha: float = 0.5, images: Any = None, mean: Sequence[float] | None = None,
                       std: Sequence[float] | None = None, figsize: tuple[float, float] | None = None,
                       block: bool | None = None, **heatmap_overrides: Any) -> Figure:
    """A matplotlib figure of ``exp``: per image the input, the overlay (titled with the target label and the score)
    and a colourbar (signed maps: negative to positive; unsigned: low to high); the method and layer on top.

    ``cols`` images per row; at most ``max_images`` (the title notes the others); ``figsize`` in inches; the other
    arguments as in :func:`explanation_overlays`. Without pictures each image is its colormapped heatmap alone.

    The figure is made with ``matplotlib.pyplot`` and returned. Display: in Jupyter (the inline backend) it shows
    once below the cell, also as the cell's value; with a window backend it opens a window, and in a script (not
    interactive) calls ``plt.show(block=block)``, which blocks until the window is closed unless ``block=False``;
    with a non-interactive backend (Agg, PDF, SVG...) nothing is shown, nothing blocks or warns, and the figure is
    closed in pyplot (``fig.savefig`` still works).
    """
    import matplotlib.pyplot as plt
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    _check_steps(heatmap_overrides, ("i", "cols", "max_images", *_PICTURE_KEYWORDS, "figsize", "block"))
    for key, value in (("cols", cols), ("max_images", max_images)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{key} must be a positive int, got {value!r}")
    idx, one = _indices(i, int(exp.attributions.shape[0]))
    shown = idx[:max_images]
    pics, overlays, signed = _compose(exp, shown, one, size=size, cmap=cmap, alpha=alpha, images=images, mean=mean,
                                      std=std, overrides=heatmap_overrides)
    panels = 1 if pics is None else 2
    k = len(shown)
    c = min(int(cols), k)
    r = math.ceil(k / c)
    fig = plt.figure(figsize=figsize or (c * (2.3 * panels + 0.8), 2.6 * r + 0.6), FigureClass=_figure_class(),
                     layout="constrained")
    axes = fig.subplots(r, c * panels, squeeze=False)
    norm, ticks, names = ((Normalize(-1.0, 1.0), [-1.0, 0.0, 1.0], ["negative", "0", "positive"]) if signed
                          else (Normalize(0.0, 1.0), [0.0, 1.0], ["low", "high"]))
    for pos in range(r * c):
        row, col = divmod(pos, c)
        cells = axes[row, col * panels:(col + 1) * panels]
        if pos >= k:
            for ax in cells:
                ax.remove()
            continue
        j = shown[pos]
        if pics is not None:
            cells[0].imshow(pics[pos])
            cells[0].set_title(f"#{j}", fontsize=9)
        cells[-1].imshow(overlays[pos])
        cells[-1].set_title(_caption(exp, j) if pics is not None else f"#{j} {_caption(exp, j)}", fontsize=9)
        for ax in cells:
            ax.set_axis_off()
        bar = fig.colorbar(ScalarMappable(norm=norm, cmap=_default_cmap(cmap, signed)), ax=cells[-1], ticks=ticks,
                           fraction=0.046, pad=0.02)
        bar.ax.set_yticklabels(names)
        bar.ax.tick_params(labelsize=7)
    title = exp.method + (f" at layer {exp.layer}" if exp.layer else "")
    if k < len(idx):
        title += f"\nshowing {k} of {len(idx)} images; pick others with i= or raise max_images="
    fig.suptitle(title, fontsize=10)
    _present(fig, block)
    return fig
