"""The work on one batch of images, shared by every engine: rows of the store from decoded images.

:func:`batch_rows` runs each method over a batch through :func:`seewhy.runner.explain_batches` (the loop of
``seewhy explain`` and ``seewhy evaluate``), scores the explanations with each metric spec as
:mod:`seewhy.evaluate` does, and returns one row per image x method x class rank. Every image has its own seed,
:func:`image_seed` of (run seed, its path relative to the data root): methods and metrics that draw random numbers are
called one image at a time with it; the others on the whole batch (their results do not depend on the batch). So a
row depends only on its image, never on the batch, the worker or the engine.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..core import METHODS
from ..hooks import model_state
from ..metrics import get_metric
from ..progress import progress
from ..runner import explain_batches

log = logging.getLogger("seewhy")

__all__ = ["MAP_KEY", "Annotations", "Item", "Plan", "batch_rows", "error_rows", "image_seed"]

#: the key of a row's attribution map (not a store column: the store writes it to ``attributions/``)
MAP_KEY = "_map"


def image_seed(key: str, seed: int) -> int:
    """A stable seed in [0, 2**63) from the run ``seed`` and an image's ``key`` (its path relative to the data)."""
    h = hashlib.blake2b(key.replace("\\", "/").encode("utf-8"), digest_size=8, key=str(int(seed)).encode())
    return int.from_bytes(h.digest(), "little") >> 1


@dataclass(frozen=True)
class Annotations:
    """Object masks of the images for the localization metrics: from a folder ``masks`` of mask files (one per
    image, named by the image's path relative to the data, or by its file name, with the image's suffix or ``.png``)
    or from ``boxes``, a table {image: [(x0, y0, x1, y1), ...]} (:func:`seewhy.metrics.localization.load_boxes`; keyed
    by the image's relative path, absolute path or file name; pixels of the original image). ``resize``: the images'
    preprocessing (see :func:`~seewhy.metrics.localization.load_masks`). An image without one gets no mask."""

    masks: str | None = None
    boxes: Mapping[str, Any] | None = None
    resize: int | None = None

    def mask_file(self, path: str, key: str) -> str | None:
        """The mask file of an image (``path`` absolute, ``key`` relative to the data), or None."""
        assert self.masks is not None
        rel, name = Path(key), Path(path).name
        for cand in (rel, rel.with_suffix(".png"), Path(name), Path(name).with_suffix(".png")):
            f = Path(self.masks) / cand
            if f.is_file():
                return str(f)
        return None

    def mask(self, path: str, key: str, size: tuple[int, int]) -> Tensor | None:
        """The (H,W) bool mask of an image at the input ``size``, or None without an annotation.

        Raises:
            ValueError: a mask file that cannot be read.
        """
        from ..annotations import table_entry
        from ..metrics.localization import boxes_to_masks, load_masks

        if self.masks is not None:
            f = self.mask_file(path, key)
            return None if f is None else load_masks([f], size, resize=self.resize)[0]
        if self.boxes is None:
            return None
        found = next((k for k in (key, path) if k in self.boxes), None) or table_entry(path, dict(self.boxes))
        if found is None:
            return None
        from PIL import Image

        with Image.open(path) as img:
            image_size = img.size
        return boxes_to_masks([self.boxes[found]], size, image_size=[image_size], resize=self.resize)[0]


@dataclass(frozen=True)
class Item:
    """One image of the data: its absolute ``path`` (the store's key), ``key`` (path relative to the data root:
    the seed's), ``label`` (None without), and ``x`` the (C,H,W) model input or ``error`` why it could not be
    read."""

    path: str
    key: str
    label: int | None = None
    x: Tensor | None = None
    error: str | None = None
    #: (H,W) bool object mask (None: no annotation, or ``mask_error`` says why it could not be read)
    mask: Tensor | None = None
    mask_error: str | None = None


@dataclass(frozen=True)
class Plan:
    """What to compute per image: methods with their hyperparameters, metrics with their keywords, the target spec
    (``"top1"``, ``"topK"``, a class index or name), and the run seed."""

    methods: Sequence[str]
    params: Mapping[str, Mapping[str, Any]]
    metrics: Sequence[str] = ()
    metric_params: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
    target: Any = "top1"
    seed: int = 0
    #: ``"float16"`` / ``"float32"``: each result row also carries its raw signed map under :data:`MAP_KEY` (a numpy
    #: array of that dtype, as the method returns it: (C,H,W) or (1,h,w)), for ``--save-attributions``; None: no maps
    attributions_dtype: str | None = None
    #: the object masks for the metrics that need one (None: no such metric)
    annotations: Annotations | None = None


def _takes_seed_method(name: str) -> bool:
    return "seed" in {f.name for f in dataclasses.fields(METHODS[name])}


def _takes_seed_metric(name: str) -> bool:
    return "seed" in get_metric(name).parameters()


def error_rows(item: Item, plan: Plan, error: str) -> list[dict[str, Any]]:
    """One row per method saying why ``item`` has no result."""
    return [{"path": item.path, "label": item.label, "method": m, "seed": image_seed(item.key, plan.seed),
             "error": error} for m in plan.methods]


def batch_rows(model: nn.Module, items: Sequence[Item], plan: Plan) -> list[dict[str, Any]]:
    """The store rows of ``items`` (image by image, each with its rows per method then class rank): error rows for
    the items that could not be read and for the methods that failed on them, result rows for the others. The
    inputs go to the device of the model's first parameter."""
    good = [it for it in items if it.error is None and it.x is not None]
    ok = {id(it) for it in good}
    by_path: dict[str, list[dict[str, Any]]] = {}
    for it in items:
        by_path[it.path] = [] if id(it) in ok else error_rows(it, plan, it.error or "no input")
    if good:
        param = next(model.parameters(), None)
        x = torch.stack([it.x for it in good])  # type: ignore[misc]
        x = x.to(param.device) if param is not None else x
        seeds = [image_seed(it.key, plan.seed) for it in good]
        try:
            prediction = _predictions(model, x, plan)
        except Exception as err:  # the model fails on this batch: its images get error rows, the job goes on
            log.error("the model failed on a batch of %d image(s): %s: %s", len(good), type(err).__name__, err)
            for it in good:
                by_path[it.path] = error_rows(it, plan, f"model: {type(err).__name__}: {err}")
            return [r for it in items for r in by_path[it.path]]
        masks = [(it.mask, it.mask_error) for it in good]
        with progress(0, "", enabled=False) as bar:  # the engine reports images; the runner's bar stays quiet
            for m in plan.methods:
                for j, image_rows in enumerate(_method_rows(model, x, seeds, masks, m, plan, bar)):
                    if prediction[j] is None:  # top-k targets: the prediction is the first method's rank-0 target
                        prediction[j] = next((r["target"] for r in image_rows if r.get("rank") == 0
                                              and r.get("target") is not None), None)
                    it = good[j]
                    for r in image_rows:
                        r.update(path=it.path, label=it.label, seed=seeds[j])
                    by_path[it.path].extend(image_rows)
        for j, it in enumerate(good):
            for r in by_path[it.path]:
                r["prediction"] = prediction[j]
    return [r for it in items for r in by_path[it.path]]


def _predictions(model: nn.Module, x: Tensor, plan: Plan) -> list[int | None]:
    """The model's top class per image. With a top-k target the methods' own forward gives it (their rank-0 target:
    None here, filled in from the first method's rows), so no extra forward is spent on it; otherwise one forward."""
    spec = plan.target
    if isinstance(spec, str) and spec.strip().lower().startswith("top") and plan.methods:
        return [None] * x.shape[0]
    with model_state(model), torch.no_grad():
        return model(x).argmax(1).tolist()


def _method_rows(model: nn.Module, x: Tensor, seeds: list[int], masks: list[tuple[Tensor | None, str | None]],
                 method: str, plan: Plan, bar: Any) -> list[list[dict[str, Any]]]:
    """One method (and every metric on its explanations) over the batch ``x``: per image, its rows (one per rank).
    A seeded method runs image by image with each image's seed, the others on the whole batch."""
    params = dict(plan.params.get(method, {}))
    n = x.shape[0]
    if _takes_seed_method(method):
        groups = [(slice(j, j + 1), {**params, "seed": seeds[j]}) for j in range(n)]
    else:
        groups = [(slice(0, n), params)]
    out: list[list[dict[str, Any]]] = []
    for sl, p in groups:
        xs = x[sl]
        run = next(explain_batches(model, [xs], [method], {method: p}, plan.target, bar=bar))
        if not run.ok:
            out.extend([[{"method": method, "error": run.error}] for _ in range(xs.shape[0])])
            continue
        exps = run.batches()[0]
        per_image = run.seconds[0] / xs.shape[0]
        rows = [[{"method": method, "rank": r, "score": float(e.scores[j]),
                  "target": None if e.targets is None else int(e.targets[j]), "seconds": per_image}
                 for r, e in enumerate(exps)] for j in range(xs.shape[0])]
        if plan.attributions_dtype is not None:
            for r, e in enumerate(exps):
                maps = e.attributions.detach().cpu().to(getattr(torch, plan.attributions_dtype)).numpy()
                for j in range(xs.shape[0]):
                    rows[j][r][MAP_KEY] = maps[j].copy()
        for metric in plan.metrics:
            _score(model, xs, seeds[sl], masks[sl], exps, method, p, metric, plan, rows)
        out.extend(rows)
    return out


def _score(model: nn.Module, x: Tensor, seeds: list[int], masks: list[tuple[Tensor | None, str | None]],
           exps: Sequence[Any], method: str, method_params: Mapping[str, Any], metric: str, plan: Plan,
           rows: list[list[dict[str, Any]]]) -> None:
    """Score every rank's explanations of ``x`` with ``metric`` into ``rows`` (image by image with each image's seed
    for a seeded metric); a failure leaves the metric null and says why in the rows' ``error``. A metric that needs
    a mask scores the images that have one; the others get null (with the reason when their mask was unreadable)."""
    spec = get_metric(metric)
    kw: dict[str, Any] = dict(plan.metric_params.get(metric, {}))
    if "method" in spec.needs:
        kw.setdefault("method", method)
        kw.setdefault("method_params", dict(method_params))
    n = x.shape[0]
    todo = list(range(n))
    if "mask" in spec.needs:
        todo = [j for j in range(n) if masks[j][0] is not None]
        for j in range(n):
            for r in range(len(exps)):
                rows[j][r][metric] = None
                if masks[j][0] is None and masks[j][1]:
                    msg = f"metric {metric}: {masks[j][1]}"
                    rows[j][r]["error"] = "; ".join(filter(None, [rows[j][r].get("error"), msg]))
    seeded = _takes_seed_metric(metric)
    if todo == list(range(n)):  # slices: the inputs as they are (no copy)
        groups: list[Any] = [slice(j, j + 1) for j in todo] if seeded else [slice(0, n)]
    else:
        groups = [[j] for j in todo] if seeded else ([todo] if todo else [])
    for r, e in enumerate(exps):
        for g in groups:
            idx = list(range(n))[g] if isinstance(g, slice) else g
            sel = g if isinstance(g, slice) else torch.tensor(g, dtype=torch.long)
            t0 = time.perf_counter()
            target = None if e.targets is None else e.targets[sel]
            extra: dict[str, Any] = {"seed": seeds[idx[0]]} if seeded else {}
            if "mask" in spec.needs:
                extra["mask"] = torch.stack([masks[j][0] for j in idx]).to(x.device)  # type: ignore[misc]
            try:
                scores = spec(model, x[sel], e.attributions[sel], target, **kw, **extra).scores.tolist()
            except Exception as err:  # one metric failing must not lose the rows
                log.debug("metric %s on %s failed", metric, method, exc_info=True)
                msg = f"metric {metric}: {type(err).__name__}: {err}"
                scores = [None] * len(idx)
                for j in idx:
                    rows[j][r]["error"] = "; ".join(filter(None, [rows[j][r].get("error"), msg]))
            share = (time.perf_counter() - t0) / len(idx)
            for j, v in zip(idx, scores, strict=True):
                rows[j][r][metric] = None if v is None or v != v else float(v)
                rows[j][r]["seconds"] += share
