"""Maps of a dataset as a layer sees it: pooled features of every image projected to 2-D (PCA, t-SNE, UMAP) and drawn
as a scatter of thumbnails, or snapped to a grid ("t-SNE grid").

t-SNE: L. van der Maaten, G. Hinton, "Visualizing Data using t-SNE", JMLR 9 (2008).
UMAP: L. McInnes, J. Healy, J. Melville, "UMAP: Uniform Manifold Approximation and Projection for Dimension
Reduction", arXiv:1802.03426 (2018).

The features are the layer's output pooled to one vector per image, kept on the CPU in float32: N x K values for N
images and K channels (50,000 images of a 2048-channel layer take 400 MB), inherent to projecting them together.
They are projected as they are, not standardised (a channel's scale is part of what the layer says; standardising
would blow up near-constant channels); t-SNE first reduces them to 50 dimensions by PCA when K > 50, the usual
practice (faster, and less noise in the neighbour distances); UMAP takes them raw.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from dataclasses import dataclass
from typing import Any

import matplotlib
import numpy as np
import torch
from PIL import Image, ImageDraw, ImageOps
from torch import Tensor, nn

from ..data import ImageData, as_data
from ..layers import LayerSpec, resolve_layer
from ..progress import format_seconds, track
from ..viz import _draw_text, _text_size
from .stream import stream_layer

log = logging.getLogger("seewhy")

__all__ = ["MAX_GRID", "METHODS", "Embedding", "embed", "grid_cells", "import_umap", "pool", "project", "scatter"]

METHODS = ("umap", "tsne", "pca")
#: most images :func:`scatter` snaps to a grid; more are subsampled (seeded) to this many
MAX_GRID = 2000
UMAP_MISSING = ('UMAP needs umap-learn: pip install "seewhy[umap]" (or pip install umap-learn); '
                'method="tsne" and method="pca" work without it')


@dataclass(repr=False)
class Embedding:
    """A 2-D map of a dataset at one layer, made by :func:`embed`.

    Attributes:
        features: (N, K) float32 CPU tensor, the pooled layer output of each image used.
        coords: (N, 2) float tensor, the projection.
        indices: (N,) long, the dataset indices of the images used (unreadable files are skipped).
        labels: (N,) long class labels of those images, or None.
        classes: the class names (indexed by label), or None.
        paths: the files of the images used, or None.
        method: ``"umap"``, ``"tsne"`` or ``"pca"``; layer: the layer's name; seed: the projection's seed.
        seconds: wall-clock cost ``{"features": s, "projection": s}``.
        skipped: ``(path, reason)`` of the unreadable images.
    """

    features: Tensor
    coords: Tensor
    indices: Tensor
    labels: Tensor | None
    classes: list[str] | None
    paths: list[str] | None
    method: str
    layer: str
    seed: int
    seconds: dict[str, float]
    skipped: list[tuple[str, str]]

    def __repr__(self) -> str:
        n, k = self.features.shape
        return (f"Embedding({self.method} of {n} images x {k} features at {self.layer!r}, seed={self.seed}, "
                f"{len(self.skipped)} skipped, features {self.seconds['features']:.2f} s, "
                f"projection {self.seconds['projection']:.2f} s)")


def pool(output: Tensor) -> Tensor:
    """One vector per image from a layer output: (B,K,h,w) global-average-pooled to (B,K), (B,D) as is, (B,N,D)
    tokens averaged over N.

    Raises:
        ValueError: any other shape.
    """
    if not isinstance(output, Tensor) or output.ndim not in (2, 3, 4):
        shape = tuple(output.shape) if isinstance(output, Tensor) else type(output).__name__
        raise ValueError(f"embed needs a layer output of shape (B,K,h,w), (B,D) or (B,N,D) tokens, got {shape}; "
                         "choose a convolutional block, a pooled/linear layer or a transformer block")
    if output.ndim == 4:
        return output.float().mean(dim=(2, 3))
    return output.float() if output.ndim == 2 else output.float().mean(dim=1)


def embed(model: nn.Module, data: Any, layer: LayerSpec, method: str = "umap", seed: int = 0, *,
          batch_size: int | None = None, **options: Any) -> Embedding:
    """Pooled features of every readable image at ``layer``, projected to 2-D.

    Args:
        model: the network (run in inference mode, stopped after ``layer``).
        data: anything :func:`seewhy.data.as_data` accepts (a folder, one sub-folder per class gives labels).
        layer: a module name or module of ``model``; its output is pooled by :func:`pool`.
        method: ``"umap"`` (McInnes et al. 2018; needs umap-learn), ``"tsne"`` (van der Maaten & Hinton 2008:
            ``init="pca"``, PCA to 50 dimensions first when K > 50, perplexity at most (N - 1) / 3, so below N,
            default 30) or ``"pca"`` (the two leading principal components).
        seed: the projection's random state: the same seed gives the same coordinates.
        batch_size: images per forward (default: the engine's); the features do not depend on it.
        **options: passed to the projector (``sklearn.decomposition.PCA``, ``sklearn.manifold.TSNE``,
            ``umap.UMAP``), e.g. ``perplexity=10``, ``n_neighbors=5``, ``min_dist=0.1``.

    Returns:
        an :class:`Embedding` with the features, coordinates, labels and the cost split into feature extraction and
        projection.

    Raises:
        ValueError: unknown method, a layer output that is not (B,K,h,w), (B,D) or (B,N,D), fewer than 2 images.
        ImportError: ``method="umap"`` without umap-learn.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(repr(m) for m in METHODS)}")
    if "n_components" in options:
        raise ValueError("embed makes 2-D maps; n_components cannot be set")
    if method == "umap":
        import_umap()  # fail before the forward passes, not after
    data = as_data(data, model)
    name, _ = resolve_layer(model, layer)
    log.info("embed: %d images at %s, then a %s projection", len(data), name, method)
    start = time.perf_counter()
    feats, idx, labs = [], [], []
    for batch, acts in stream_layer(model, data, name, batch_size=batch_size, desc=f"embed {name}"):
        feats.append(pool(acts).cpu())
        idx.append(batch.indices.cpu())
        labs.append(batch.labels)
    if sum(len(i) for i in idx) < 2:
        raise ValueError(f"embed needs at least 2 readable images, got {sum(len(i) for i in idx)}")
    features = torch.cat(feats).float().contiguous()
    indices = torch.cat(idx).long()
    labels = torch.cat(labs).long() if all(t is not None for t in labs) else None
    middle = time.perf_counter()
    coords = torch.from_numpy(project(features.numpy(), method, int(seed), dict(options))).float()
    seconds = {"features": middle - start, "projection": time.perf_counter() - middle}
    log.info("embed: %d x %d features in %s, %s projection in %s", *features.shape,
             format_seconds(seconds["features"]), method, format_seconds(seconds["projection"]))
    paths = [data.paths[i] for i in indices.tolist()] if data.paths is not None else None
    return Embedding(features, coords, indices, labels, data.classes, paths, method, name, int(seed), seconds,
                     list(data.skipped))


def import_umap() -> Any:
    """The ``umap`` module (umap-learn), or an ImportError that names ``pip install "seewhy[umap]"``."""
    try:
        import umap
    except ImportError as err:
        raise ImportError(UMAP_MISSING) from err
    return umap


def project(x: np.ndarray, method: str, seed: int, options: dict[str, Any]) -> np.ndarray:
    """(N, K) features -> (N, 2) float64 coordinates by ``method`` ("pca", "tsne" or "umap"), seeded; ``options`` go
    to the projection (t-SNE's perplexity is capped below N, and wide features go through PCA-50 first)."""
    from sklearn.decomposition import PCA

    n, k = x.shape
    if method == "pca":
        y = PCA(**{"n_components": min(2, n, k), "random_state": seed, **options}).fit_transform(x)
    elif method == "tsne":
        from sklearn.manifold import TSNE

        if k > 50:
            x = PCA(n_components=min(50, n), random_state=seed).fit_transform(x)
        perplexity = min(float(options.pop("perplexity", 30.0)), max((n - 1) / 3, 1.0))
        opts = {"init": "pca", "perplexity": perplexity, "random_state": seed, **options}
        y = TSNE(n_components=2, **opts).fit_transform(x)
    else:
        umap = import_umap()
        opts = {"n_neighbors": 15, **options}
        opts["n_neighbors"] = max(2, min(int(opts["n_neighbors"]), n - 1))
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*overridden to 1 by setting random_state")
            y = umap.UMAP(n_components=2, random_state=seed, **opts).fit_transform(x)
    y = np.asarray(y, dtype=np.float64)
    return np.pad(y, ((0, 0), (0, 2 - y.shape[1])))  # fewer than 2 components (K or N < 2): zeros


def _normalise(coords: np.ndarray) -> np.ndarray:
    """Each axis min-max scaled to [0, 1] (a constant axis to 0.5)."""
    c = np.asarray(coords, dtype=np.float64)
    lo, span = c.min(0), np.ptp(c, 0)
    return np.where(span > 0, (c - lo) / np.where(span > 0, span, 1.0), 0.5)


def grid_cells(coords: Tensor | np.ndarray) -> np.ndarray:
    """The cell of each point in a square grid of ``side = ceil(sqrt(N))`` cells a side: (N,) distinct indices
    ``row * side + col`` (row 0 at the top, where y is largest).

    The points (each axis min-max scaled to [0, 1]) go to the cells by the assignment of least total squared
    distance to the cell centres (``scipy.optimize.linear_sum_assignment``), one point per cell.
    """
    from scipy.optimize import linear_sum_assignment

    c = _normalise(coords.detach().cpu().numpy() if isinstance(coords, Tensor) else coords)
    side = max(1, math.ceil(math.sqrt(len(c))))
    r, col = np.divmod(np.arange(side * side), side)
    centres = np.stack([(col + 0.5) / side, 1 - (r + 0.5) / side], axis=1)
    cost = ((c[:, None, :] - centres[None, :, :]) ** 2).sum(-1)
    _, cells = linear_sum_assignment(cost)
    return cells.astype(np.int64)


def _colours(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """(N, 3) uint8 colours of class labels (tab10 / tab20, or spread over turbo for more classes)."""
    if n_classes <= 20:
        cmap = matplotlib.colormaps["tab10" if n_classes <= 10 else "tab20"]
        rgb = np.array([cmap(int(v) % cmap.N)[:3] for v in labels])
    else:
        rgb = matplotlib.colormaps["turbo"]((labels % n_classes + 0.5) / n_classes)[:, :3]
    return (np.asarray(rgb).reshape(-1, 3) * 255).round().astype(np.uint8)


def _legend(canvas: Image.Image, names: list[str], colours: np.ndarray, max_lines: int = 4) -> int:
    """Class names with colour swatches in a strip at the bottom of ``canvas``; returns the strip's height."""
    draw = ImageDraw.Draw(canvas)
    line_h, pad, width = _text_size(draw, "Ag")[1] + 6, 6, canvas.width
    rows: list[list[tuple[str, tuple[int, ...]]]] = [[]]
    used = pad
    for k, (name, colour) in enumerate(zip(names, colours, strict=True)):
        w = line_h + _text_size(draw, name)[0] + 12
        if used + w > width and rows[-1]:
            if len(rows) == max_lines:
                rows[-1][-1] = (f"+{len(names) - k + 1} more", (255, 255, 255))
                break
            rows.append([])
            used = pad
        rows[-1].append((name, tuple(int(v) for v in colour)))
        used += w
    top = canvas.height - len(rows) * line_h - pad
    for j, row in enumerate(rows):
        x, y = pad, top + j * line_h
        for name, colour in row:
            draw.rectangle([x, y + 2, x + line_h - 6, y + line_h - 4], fill=colour, outline=(0, 0, 0))
            _draw_text(draw, (x + line_h - 2, y + 1), name)
            x += line_h + _text_size(draw, name)[0] + 12
    return len(rows) * line_h + pad


def _thumbnail(picture: np.ndarray, box: int, border: tuple[int, ...] | None) -> Image.Image:
    """A picture centre-cropped to a ``box`` x ``box`` square, framed by ``border`` when given."""
    width = max(1, box // 12) if border is not None and box > 6 else 0
    img = ImageOps.fit(Image.fromarray(picture), (box - 2 * width, box - 2 * width), Image.Resampling.LANCZOS)
    if not width:
        return img
    return ImageOps.expand(img, border=width, fill=border)


def _check_data(embedding: Embedding, data: ImageData) -> None:
    top = int(embedding.indices.max()) if len(embedding.indices) else -1
    if top >= len(data):
        raise ValueError(f"the embedding uses image {top} but the data has {len(data)} images; pass the data "
                         "given to embed")
    if embedding.paths is not None and data.paths is not None:
        if [data.paths[i] for i in embedding.indices.tolist()] != embedding.paths:
            raise ValueError("the data's files are not the embedding's; pass the data given to embed")


def scatter(embedding: Embedding, data: Any, *, grid: bool = False, thumb: int = 40, size: int = 800,
            border_by_label: bool = True) -> np.ndarray:
    """The embedding's images as thumbnails at their 2-D coordinates on a white ``size`` x ``size`` canvas.

    Each axis is scaled to the canvas on its own (t-SNE and UMAP distances mean nothing beyond neighbourhoods).
    With labels (and ``border_by_label``) each thumbnail has a border coloured by class and a legend of the class
    names fills a strip at the bottom. ``grid=True`` makes the "t-SNE grid": every image snapped to its own cell of
    a ``ceil(sqrt(N))``-a-side grid by :func:`grid_cells`, thumbnails filling the cells (``thumb`` is then unused);
    above :data:`MAX_GRID` images a seeded random subset (the embedding's seed) of that many is shown.

    Args:
        embedding: from :func:`embed`.
        data: the data given to :func:`embed` (anything :func:`seewhy.data.as_data` accepts; pass the same
            :class:`~seewhy.data.ImageData` to see the images exactly as the model did): thumbnails come from
            ``data.picture(index)``.
        grid: snap to a grid instead of scattering (no overlap).
        thumb: thumbnail side in pixels (scatter only).
        size: side of the picture in pixels.
        border_by_label: colour borders and show a legend when the embedding has labels.

    Returns:
        uint8 (size, size, 3).
    """
    if not 4 <= thumb <= size:
        raise ValueError(f"thumb must be between 4 and size ({size}) pixels, got {thumb}")
    data = as_data(data)
    _check_data(embedding, data)
    keep = np.arange(len(embedding.indices))
    if grid and len(keep) > MAX_GRID:
        log.info("scatter: %d images are too many for a grid; showing a random %d", len(keep), MAX_GRID)
        keep = np.sort(np.random.default_rng(embedding.seed).choice(len(keep), MAX_GRID, replace=False))
    canvas = Image.new("RGB", (size, size), (255, 255, 255))
    labels = embedding.labels.numpy()[keep] if embedding.labels is not None and border_by_label else None
    colours, bottom = None, 0
    if labels is not None:
        n_classes = max(len(embedding.classes or []), int(embedding.labels.max()) + 1)
        colours = _colours(labels, n_classes)
        present = np.unique(labels)
        names = [embedding.classes[v] if embedding.classes and 0 <= v < len(embedding.classes) else f"class {v}"
                 for v in present.tolist()]
        bottom = _legend(canvas, names, _colours(present, n_classes))
    height = size - bottom
    coords = embedding.coords.detach().cpu().numpy()[keep]
    if grid:
        side = max(1, math.ceil(math.sqrt(len(keep))))
        box = min(size, height) // side
        if box < 4:
            raise ValueError(f"a grid of {side} x {side} images does not fit in {size} pixels; raise size")
        row, col = np.divmod(grid_cells(coords), side)
        x0, y0 = (size - side * box) // 2, (height - side * box) // 2
        xy = np.stack([x0 + col * box, y0 + row * box], axis=1)
    else:
        box = min(thumb, height)
        c = _normalise(coords)
        xy = np.stack([c[:, 0] * (size - box), (1 - c[:, 1]) * (height - box)], axis=1).round().astype(int)
    indices = embedding.indices.numpy()[keep]
    for k in track(range(len(keep)), len(keep), "scatter thumbnails", "images"):
        try:
            picture = data.picture(int(indices[k]))
        except ValueError as err:  # a file gone unreadable since embed: leave its place empty
            log.warning("scatter: no thumbnail for %s: %s", data.name(int(indices[k])), err)
            continue
        border = tuple(int(v) for v in colours[k]) if colours is not None else None
        canvas.paste(_thumbnail(picture, box, border), (int(xy[k, 0]), int(xy[k, 1])))
    return np.asarray(canvas).copy()
