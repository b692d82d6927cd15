"""Activation atlases (Carter, Armstrong, Schubert, Johnson, Olah, "Activation Atlas", Distill 2019): a layer's
spatial activations over a dataset laid out in 2-D by UMAP, binned on a grid, one feature-visualization icon per cell.

The recipe, as the paper describes it:

1. sample activation vectors ``a`` (one per image position, C channels) of ``layer`` over a dataset;
2. project them to 2-D with UMAP (McInnes et al. 2018; cosine metric, ``n_neighbors=20``, ``min_dist=0.01``),
   clip each axis at its 1st / 99th percentile and rescale it to [0, 1];
3. cut the layout into ``grid x grid`` cells; per cell the number of points and their mean activation vector;
4. for every cell with at least ``min_count`` points, render the cell's mean vector ``v`` as an icon: the image
   maximising the direction objective ``mean_{y,x} <a_yx, v> * max(cos(a_yx, v), 0.1) ** 2``
   (:func:`seewhy.featvis.objectives.direction`), rendered by :func:`seewhy.featvis.visualize`;
5. place the icons in their cells (row 0 at the top holds the largest y of the layout; empty cells are white).

The class activation atlas (the paper's "focusing on a single classification") keeps the layout of all activations
but shows only the cells whose activations support class ``k``: each sampled vector gets its attribution to logit
``k``, ``sum_c a_c * dz_k / da_c`` (activation times gradient at that position, one forward and backward per batch),
and a cell is drawn when its mean attribution is positive.

Cost: one pass over the data (a forward per batch, plus a backward with ``class_filter``), one UMAP fit on the CPU
(seconds for thousands of points, minutes for 10^5; the first fit in a process also compiles numba code, ~10 s),
and ``steps`` optimisation steps per chunk of ``icon_batch`` icons, usually the bulk of the time.
"""

from __future__ import annotations

import logging
import math
import numbers
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..data import ImageData, as_data
from ..engine import prefers_channels_last
from ..hooks import layer_outputs, model_state
from ..inside.stream import pick_batch_size, stream_layer
from ..layers import LayerSpec, resolve_layer
from ..progress import format_seconds
from ..progress import progress as _progress

log = logging.getLogger("seewhy")

__all__ = ["MIN_SAMPLES", "UMAP_DEFAULTS", "Atlas", "atlas", "bin_layout", "normalize_layout"]

#: Carter et al.'s UMAP settings; ``umap_kwargs`` overrides them
UMAP_DEFAULTS: dict[str, Any] = {"n_neighbors": 20, "min_dist": 0.01, "metric": "cosine"}
#: fewest activation vectors a layout is made from (UMAP's spectral initialisation fails below this)
MIN_SAMPLES = 4


@dataclass(repr=False)
class Atlas:
    """An activation atlas made by :func:`atlas`.

    ``N`` sampled activation vectors, ``M`` icons (cells drawn), ``G = grid``, ``s = icon_size``. The sample and cell
    records (``activations`` .. ``scores``) are CPU tensors; ``directions``, ``icons`` and ``image`` are on the
    model's device.

    Attributes:
        image: (3, G*s, G*s) float in [0, 1], the atlas: icon of cell (row, col) at pixels
            ``[row*s:(row+1)*s, col*s:(col+1)*s]``, row 0 at the top (largest layout y), empty cells white.
        icons: (M, 3, s, s) in [0, 1], one per drawn cell.
        cells: (M, 2) long, the (row, col) of each icon, in row-major order.
        directions: (M, C) float32, each drawn cell's mean activation vector (what its icon maximises).
        counts: (G, G) long, the number of sampled vectors in every cell (sums to N).
        scores: (G, G) float, the mean attribution to ``class_filter`` of every cell's vectors (NaN for an empty
            cell), or None without ``class_filter``.
        layout: (N, 2) float64, each vector's (x, y) position in [0, 1] after percentile clipping.
        sources: (N, 3) long, where each vector comes from: (dataset image index, y, x) on the layer's grid.
        bins: (N,) long, each vector's cell ``row * G + col``.
        activations: (N, C) float32, the sampled activation vectors (UMAP's input).
        attributions: (N,) float32, each vector's attribution to ``class_filter`` (``sum_c a_c dz_k/da_c``), or None.
        losses: (chunks, steps) float, the render's loss curve (mean over the icons of a chunk) per chunk of icons.
        objective_values: (M,) float, each icon's final direction objective.
        layer: the layer's name.
        params: the settings (JSON-able): layer, grid, min_count, UMAP settings, icon_size, steps, cosine_power,
            class_filter, sampling, seed, normalize, the render's settings, and counts of images / positions.
        seconds: wall-clock cost ``{"activations": s, "umap": s, "icons": s}``.
    """

    image: Tensor
    icons: Tensor
    cells: Tensor
    directions: Tensor
    counts: Tensor
    scores: Tensor | None
    layout: Tensor
    sources: Tensor
    bins: Tensor
    activations: Tensor
    attributions: Tensor | None
    losses: Tensor
    objective_values: Tensor
    layer: str
    params: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def __repr__(self) -> str:
        g = self.params.get("grid", self.counts.shape[0])
        cls = f", class {self.params['class_filter']}" if self.params.get("class_filter") is not None else ""
        cost = ", ".join(f"{k} {format_seconds(v)}" for k, v in self.seconds.items())
        return (f"Atlas({self.layer!r}: {len(self.activations)} activations, {g}x{g} grid, {len(self.cells)} icons "
                f"of {self.params.get('icon_size')} px{cls}; {cost})")


# -- argument checks -------------------------------------------------------------------------------------------------
def _int(value: Any, name: str, minimum: int, fix: str = "") -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {value!r} ({type(value).__name__}){fix}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}{fix}")
    return int(value)


def _optional_int(value: Any, name: str, minimum: int, fix: str = "") -> int | None:
    return None if value is None else _int(value, name, minimum, fix)


def _umap_options(umap_kwargs: Mapping[str, Any] | None) -> dict[str, Any]:
    if umap_kwargs is None:
        return dict(UMAP_DEFAULTS)
    if not isinstance(umap_kwargs, Mapping):
        raise TypeError(f"umap_kwargs must be a dict of umap.UMAP options (e.g. {{'n_neighbors': 50}}) or None, got "
                        f"{type(umap_kwargs).__name__}")
    if "n_components" in umap_kwargs:
        raise ValueError("an atlas is a 2-D layout: umap_kwargs cannot set n_components")
    if "random_state" in umap_kwargs:
        raise ValueError("set the UMAP's random state with atlas(..., seed=...), not umap_kwargs['random_state']")
    return {**UMAP_DEFAULTS, **dict(umap_kwargs)}


def _normalize_arg(normalize: Any, model: nn.Module, data: ImageData) -> Any:
    """The ``normalize`` to render icons with: the one given; else the data's mean/std when known (files are
    normalised the model's way by :func:`~seewhy.data.as_data`); else the zoo model's (None, the render's default);
    else none (``False``), said once here rather than by every render."""
    if normalize is not None:
        return normalize
    if data.mean is not None and data.std is not None:
        return (list(data.mean), list(data.std))
    from ..zoo import spec_of

    if spec_of(model) is not None:
        return None
    log.warning("atlas: the data has no mean/std and %s is not a zoo model, so the icons are fed to it as [0, 1] "
                "pixels; pass normalize=(mean, std) (the inputs' normalisation) or normalize=False to silence this",
                type(model).__name__)
    return False


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Tensor):
        return value.tolist()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, numbers.Number):
        return value.item() if hasattr(value, "item") else float(value)  # type: ignore[arg-type]
    return repr(value)


# -- layout and binning ------------------------------------------------------------------------------------------------
def normalize_layout(layout: Tensor | np.ndarray, low: float = 1.0, high: float = 99.0) -> np.ndarray:
    """A 2-D layout with each axis clipped to its ``low`` / ``high`` percentiles and rescaled to [0, 1] (a constant
    axis to 0.5), so a few outlying points do not squeeze the rest into a corner: (N, 2) float64."""
    c = np.asarray(layout.detach().cpu().numpy() if isinstance(layout, Tensor) else layout, dtype=np.float64)
    if c.ndim != 2 or c.shape[0] == 0:
        raise ValueError(f"a layout must be (N, D) with N >= 1, got shape {c.shape}")
    lo, hi = np.percentile(c, low, axis=0), np.percentile(c, high, axis=0)
    span = hi - lo
    scaled = (np.clip(c, lo, hi) - lo) / np.where(span > 0, span, 1.0)
    return np.where(span > 0, scaled, 0.5)


def bin_layout(layout: Tensor | np.ndarray, grid: int) -> tuple[Tensor, Tensor]:
    """The grid cell ``(row, col)`` of each point of an (N, 2) layout in [0, 1]: ``col = floor(x * grid)``,
    ``row = grid - 1 - floor(y * grid)`` (row 0 at the top, where y is largest; 1.0 falls in the last cell)."""
    c = torch.as_tensor(np.asarray(layout.cpu() if isinstance(layout, Tensor) else layout, dtype=np.float64))
    k = (c * grid).floor().long().clamp_(0, grid - 1)
    return grid - 1 - k[:, 1], k[:, 0]


# -- activation sampling -------------------------------------------------------------------------------------------
def _positions(index: int, seed: int, n_positions: int, per_image: int | None) -> tuple[Tensor, Tensor]:
    """The positions sampled from image ``index`` and a uniform key for each (the ``max_samples`` cap keeps the
    smallest keys): drawn from the image's own CPU generator, so they do not depend on the batch size."""
    g = torch.Generator().manual_seed((seed * 1_000_003 + index) & 0x7FFF_FFFF_FFFF_FFFF)
    if per_image is None or per_image >= n_positions:
        pos = torch.arange(n_positions)
    else:
        pos = torch.randperm(n_positions, generator=g)[:per_image].sort().values
    return pos, torch.rand(len(pos), generator=g, dtype=torch.float64)


class _Reservoir:
    """Sampled vectors, capped at ``cap`` by keeping the ``cap`` smallest random keys (a uniform subsample of
    everything seen, whatever the order and batch size), trimmed only when twice the cap is held."""

    def __init__(self, cap: int | None) -> None:
        self.cap = cap
        self.parts: list[tuple[Tensor, Tensor, Tensor, Tensor | None]] = []
        self.held = 0
        self.seen = 0

    def add(self, vecs: Tensor, sources: Tensor, keys: Tensor, attrs: Tensor | None) -> None:
        self.parts.append((vecs, sources, keys, attrs))
        self.held += len(keys)
        self.seen += len(keys)
        if self.cap is not None and self.held > 2 * self.cap:
            self.parts = [self._trim()]
            self.held = len(self.parts[0][2])

    def _trim(self) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        vecs = torch.cat([p[0] for p in self.parts])
        sources = torch.cat([p[1] for p in self.parts])
        keys = torch.cat([p[2] for p in self.parts])
        attrs = None if self.parts[0][3] is None else torch.cat([p[3] for p in self.parts])  # type: ignore[misc]
        if self.cap is not None and len(keys) > self.cap:
            keep = torch.topk(keys, self.cap, largest=False).indices
            vecs, sources, keys = vecs[keep], sources[keep], keys[keep]
            attrs = None if attrs is None else attrs[keep]
        return vecs, sources, keys, attrs

    def result(self) -> tuple[Tensor, Tensor, Tensor | None]:
        """(vectors, sources, attributions) in dataset order (image, y, x)."""
        if not self.parts:
            return torch.empty(0, 0), torch.empty(0, 3, dtype=torch.long), None
        vecs, sources, _, attrs = self._trim()
        span = int(sources[:, 1:].max()) + 1 if len(sources) else 1
        order = torch.argsort((sources[:, 0] * span + sources[:, 1]) * span + sources[:, 2])
        return vecs[order], sources[order], None if attrs is None else attrs[order]


def _check_spatial(acts: Tensor, layer: str) -> None:
    if acts.ndim != 4:
        raise ValueError(f"an atlas needs a spatial layer with (B, C, h, w) outputs; {layer!r} gives "
                         f"{tuple(acts.shape)}: choose a convolutional layer or block (see "
                         "seewhy.layers.spatial_layers(model, inputs))")


def _sample(acts: Tensor, indices: Tensor, seed: int, per_image: int | None, attr: Tensor | None,
            layer: str) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """Sampled vectors (n, C) float32 CPU, their sources (n, 3), keys (n,) and attributions (n,) of one batch."""
    _check_spatial(acts, layer)
    b, c, h, w = acts.shape
    rows, pos, keys = [], [], []
    for i, index in enumerate(indices.tolist()):
        p, k = _positions(int(index), seed, h * w, per_image)
        rows.append(torch.full_like(p, i))
        pos.append(p)
        keys.append(k)
    r, p = torch.cat(rows), torch.cat(pos)
    rd, pd = r.to(acts.device), p.to(acts.device)
    vecs = acts.detach().flatten(2)[rd, :, pd].float().cpu()  # (n, C)
    sources = torch.stack([indices.cpu()[r], p // w, p % w], 1).long()
    a = None if attr is None else attr.detach().flatten(1)[rd, pd].float().cpu()
    return vecs, sources, torch.cat(keys), a


def _attributed(model: nn.Module, data: ImageData, name: str, module: nn.Module, k: int, batch_size: int | None,
                device: torch.device, progress: bool) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    """``(indices, activations, attribution map)`` per batch: the layer's output and ``sum_c A_c * dz_k / dA_c``
    (b, h, w), from one forward and one backward in eval mode with frozen parameters (restored afterwards)."""
    size, first = pick_batch_size(model, data, batch_size)
    cl = prefers_channels_last(model, first)
    start = time.perf_counter()
    for j, batch in enumerate(data.batches(size, device, desc=f"atlas {name} (class {k})", progress=progress)):
        x = batch.inputs.contiguous(memory_format=torch.channels_last) if cl else batch.inputs
        with model_state(model), torch.enable_grad():
            acts, out, calls = layer_outputs(model, x, {name: module}, grad=True)
            if calls[name] == 0:
                raise ValueError(f"layer {name!r} was not called during the forward pass; choose a layer the "
                                 "model uses")
            if calls[name] > 1:
                raise ValueError(f"layer {name!r} is called {calls[name]} times in one forward pass (a reused "
                                 "module); choose a module that runs once, e.g. its parent block")
            if not isinstance(out, Tensor) or out.ndim != 2:
                raise ValueError(f"class_filter needs (B, classes) model outputs, got "
                                 f"{tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__}")
            if not 0 <= k < out.shape[1]:
                raise ValueError(f"class_filter={k} is out of range for a model with {out.shape[1]} outputs "
                                 f"(0..{out.shape[1] - 1})")
            a = acts[name]
            _check_spatial(a, name)
            (g,) = torch.autograd.grad(out[:, k].sum(), a, allow_unused=True)
        if g is None:
            raise ValueError(f"logit {k} does not depend on layer {name!r}; choose a layer on its path")
        if j == 0 and progress and len(data) > 2 * size:
            per_image = (time.perf_counter() - start) / len(batch.indices)
            log.info("atlas: activations and attributions, about %s for %d images", format_seconds(
                per_image * len(data)), len(data))
        yield batch.indices, a.detach(), (a.detach() * g).sum(1)


# -- the atlas -------------------------------------------------------------------------------------------------------
def atlas(model: nn.Module, data: Any, layer: LayerSpec, grid: int = 20, min_count: int = 3,
          umap_kwargs: Mapping[str, Any] | None = None, icon_size: int = 80, steps: int = 256, *,
          class_filter: int | None = None, seed: int = 0, samples_per_image: int | None = None,
          max_samples: int | None = 100_000, cosine_power: float = 2.0, icon_batch: int = 32,
          normalize: Any = None, batch_size: int | None = None, render_kwargs: Mapping[str, Any] | None = None,
          progress: bool = True) -> Atlas:
    """An activation atlas of ``layer`` over ``data`` (Carter et al. 2019; see the module docstring).

    Args:
        model: the network (run in eval mode; left exactly as found).
        data: anything :func:`seewhy.data.as_data` accepts: a folder, image paths, an (N, C, H, W) tensor of model
            inputs, a DataLoader.
        layer: a module name or module of ``model`` with (B, C, h, w) outputs.
        grid: cells per side of the layout's grid.
        min_count: fewest sampled vectors a cell needs to get an icon.
        umap_kwargs: ``umap.UMAP`` options overriding :data:`UMAP_DEFAULTS` (not ``n_components`` /
            ``random_state``; ``n_neighbors`` is lowered to N - 1 for small N).
        icon_size: side of each icon in pixels.
        steps: optimisation steps per icon.
        class_filter: a class index ``k``: the class activation atlas, drawing only cells whose vectors' mean
            attribution ``sum_c a_c dz_k/da_c`` is positive (one forward and backward per batch).
        seed: seeds the position sampling, the ``max_samples`` subsample, UMAP and the icons' renders.
        samples_per_image: positions sampled (uniformly, without replacement) from each image; None: every position.
        max_samples: most vectors kept (a seeded uniform subsample of all sampled); None: no cap.
        cosine_power: the direction objective's cosine exponent (Carter et al.: 2; 0 is the plain dot product).
        icon_batch: icons rendered per batch (bounds the memory of a render).
        normalize: the model's input normalisation for the icons, as :func:`~seewhy.featvis.visualize` takes it
            (``(mean, std)``, a callable, False); default: the data's mean/std when known (files are normalised the
            model's way by :func:`~seewhy.data.as_data`), else the zoo model's, else none (with a warning).
        batch_size: images per forward while sampling (default: the engine's); the result does not depend on it.
        render_kwargs: other :func:`~seewhy.featvis.visualize` options (``lr``, ``param``, ``transforms``,
            ``regularizers``, ...). The model is fed the icons at ``icon_size`` (as Carter et al. render them;
            ``input_size=224`` upsamples them first, about 8x the cost at 80 px).
        progress: show progress (data batches, icons).

    Returns:
        an :class:`Atlas`.

    Raises:
        ValueError: a bad argument (the message names it and the fix), a layer without (B, C, h, w) outputs, fewer
            than :data:`MIN_SAMPLES` vectors, a class index out of range.
        TypeError: an argument of the wrong type.
        ImportError: umap-learn is missing (``pip install "seewhy[umap]"``).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    grid = _int(grid, "grid", 1, "; grid is the number of cells per side, e.g. grid=20")
    min_count = _int(min_count, "min_count", 1, "; it is the fewest activations a cell needs for an icon")
    icon_size = _int(icon_size, "icon_size", 8, "; icons are square images of icon_size pixels, e.g. 80")
    steps = _int(steps, "steps", 1, "; e.g. steps=256")
    seed = _int(seed, "seed", 0, " (UMAP takes seeds in 0..2**32 - 1)")
    if seed >= 2**32:
        raise ValueError(f"seed must be < 2**32 (UMAP's random state), got {seed}")
    per_image = _optional_int(samples_per_image, "samples_per_image", 1, " (or None for every position)")
    cap = _optional_int(max_samples, "max_samples", MIN_SAMPLES, " (or None for no cap)")
    icon_batch = _int(icon_batch, "icon_batch", 1, "; icons rendered per batch, e.g. 32")
    k = _optional_int(class_filter, "class_filter", 0, "; pass a class index of the model's output, or None")
    power = float(cosine_power)
    if not math.isfinite(power) or power < 0:
        raise ValueError(f"cosine_power must be a finite number >= 0, got {cosine_power!r}")
    options = _umap_options(umap_kwargs)
    if render_kwargs is not None and not isinstance(render_kwargs, Mapping):
        raise TypeError(f"render_kwargs must be a dict of visualize options or None, got "
                        f"{type(render_kwargs).__name__}")
    extra = dict(render_kwargs or {})
    extra.setdefault("input_size", icon_size)  # icons at their own size, as Carter et al. render them
    fixed = {"size", "steps", "batch", "seed", "progress", "normalize"} & set(extra)
    if fixed:
        raise ValueError(f"render_kwargs cannot set {', '.join(sorted(fixed))}: use atlas's own arguments "
                         "(icon_size, steps, icon_batch, seed, progress, normalize)")
    from ..inside import embedding  # matplotlib and PIL: only when an atlas is made

    embedding.import_umap()  # fail before the forward passes, not after

    data = as_data(data, model)
    name, module = resolve_layer(model, layer)
    p = next(model.parameters(), None)
    device = p.device if p is not None else torch.device("cpu")
    normalize = _normalize_arg(normalize, model, data)

    # 1. activations (and attributions)
    start = time.perf_counter()
    pool = _Reservoir(cap)
    if k is None:
        for batch, acts in stream_layer(model, data, name, batch_size=batch_size, desc=f"atlas {name}",
                                        progress=progress):
            pool.add(*_sample(acts, batch.indices, seed, per_image, None, name))
    else:
        for indices, acts, attr in _attributed(model, data, name, module, k, batch_size, device, progress):
            pool.add(*_sample(acts, indices, seed, per_image, attr, name))
    vectors, sources, attributions = pool.result()
    n = len(vectors)
    if n < MIN_SAMPLES:
        raise ValueError(f"{n} activation vector{'s' if n != 1 else ''} are too few for a UMAP layout (at least "
                         f"{MIN_SAMPLES}, better hundreds): give more images, or samples_per_image=None (every "
                         "position) and a larger max_samples")
    seconds = {"activations": time.perf_counter() - start}
    log.info("atlas: %d activation vectors of %d channels at %s (%d positions seen) in %s", n, vectors.shape[1],
             name, pool.seen, format_seconds(seconds["activations"]))

    # 2. layout
    start = time.perf_counter()
    if n - 1 < int(options.get("n_neighbors", 15)):
        log.info("atlas: n_neighbors lowered from %s to %d for %d vectors", options["n_neighbors"], n - 1, n)
    raw = embedding.project(vectors.numpy(), "umap", seed, dict(options))
    layout = torch.from_numpy(normalize_layout(raw))
    seconds["umap"] = time.perf_counter() - start

    # 3. cells
    rows, cols = bin_layout(layout, grid)
    bins = rows * grid + cols
    counts = torch.bincount(bins, minlength=grid * grid)
    sums = torch.zeros(grid * grid, vectors.shape[1], dtype=torch.float64).index_add_(0, bins, vectors.double())
    keep = counts >= min_count
    scores = None
    if attributions is not None:
        total = torch.zeros(grid * grid, dtype=torch.float64).index_add_(0, bins, attributions.double())
        scores = torch.where(counts > 0, total / counts.clamp(min=1), torch.full_like(total, float("nan")))
        keep &= scores > 0
    drawn = keep.nonzero().flatten()
    cells = torch.stack([drawn // grid, drawn % grid], 1)
    directions = (sums[drawn] / counts[drawn, None]).float().to(device)
    if not len(drawn):
        why = f" and a positive mean attribution to class {k}" if k is not None else ""
        log.warning("atlas: no cell of the %dx%d grid has %d or more activations%s; the atlas is empty (lower "
                    "min_count or grid, or sample more activations)", grid, grid, min_count, why)

    # 4. icons
    start = time.perf_counter()
    icons, losses, values, render_params = _render_icons(model, name, directions, icon_size, steps, icon_batch,
                                                         power, seed, normalize, extra, progress)
    seconds["icons"] = time.perf_counter() - start

    # 5. the picture
    image = torch.ones(3, grid * icon_size, grid * icon_size, device=icons.device, dtype=icons.dtype)
    for (r, c), icon in zip(cells.tolist(), icons, strict=True):
        image[:, r * icon_size:(r + 1) * icon_size, c * icon_size:(c + 1) * icon_size] = icon

    params = {
        "layer": name, "grid": grid, "min_count": min_count, "umap": options, "icon_size": icon_size, "steps": steps,
        "cosine_power": power, "class_filter": k, "seed": seed, "samples_per_image": per_image,
        "max_samples": cap, "icon_batch": icon_batch, "normalize": normalize, "render": render_params,
        "images": len(data), "skipped": len(data.skipped), "positions_seen": pool.seen, "samples": n,
        "icons": len(drawn),
    }
    log.info("atlas: %d icons on a %dx%d grid; activations %s, UMAP %s, icons %s", len(drawn), grid, grid,
             *(format_seconds(seconds[s]) for s in ("activations", "umap", "icons")))
    return Atlas(image=image, icons=icons, cells=cells, directions=directions, counts=counts.view(grid, grid),
                 scores=None if scores is None else scores.float().view(grid, grid), layout=layout, sources=sources,
                 bins=bins, activations=vectors, attributions=attributions, losses=losses, objective_values=values,
                 layer=name, params=_jsonable(params), seconds=seconds)


def _render_icons(model: nn.Module, name: str, directions: Tensor, size: int, steps: int, chunk: int, power: float,
                  seed: int, normalize: Any, extra: dict[str, Any], progress: bool
                  ) -> tuple[Tensor, Tensor, Tensor, dict[str, Any]]:
    """One direction visualization per row of ``directions``, ``chunk`` at a time: (icons (M, 3, s, s), losses
    (chunks, steps), final objective values (M,), the render's settings)."""
    from . import objectives
    from .render import visualize

    m = len(directions)
    device = directions.device
    if m == 0:
        return (torch.empty(0, 3, size, size, device=device), torch.empty(0, steps), torch.empty(0), {})
    icons, losses, values = [], [], []
    settings: dict[str, Any] = {}
    n_chunks = math.ceil(m / chunk)
    log.info("atlas: rendering %d icons (%d px, %d steps) in %d batch%s of up to %d", m, size, steps, n_chunks,
             "es" if n_chunks > 1 else "", chunk)
    with _progress(m, "atlas icons", "icons", enabled=progress) as bar:
        for j in range(n_chunks):
            t0 = time.perf_counter()
            v = directions[j * chunk:(j + 1) * chunk]
            objective = objectives.direction(name, v, cosine_power=power)
            result = visualize(model, objective, size=size, steps=steps, batch=len(v), seed=seed,
                               progress=False, normalize=normalize, **extra)
            icons.append(result.images.detach())
            losses.append(torch.as_tensor(result.losses).detach().float().cpu().reshape(-1))
            values.append(torch.as_tensor(result.objective_values).detach().float().cpu().reshape(-1))
            if j == 0:
                settings = dict(result.params)
                if n_chunks > 1:
                    took = time.perf_counter() - t0
                    log.info("atlas: about %s for %d icons (%s for the first %d)",
                             format_seconds(took * m / len(v)), m, format_seconds(took), len(v))
            bar.update(len(v))
    return torch.cat(icons).clamp(0, 1), torch.stack(losses), torch.cat(values), settings
