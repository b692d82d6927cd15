"""What runs in a model's worker thread for ``seewhy serve``: preparing an upload for the model, predictions,
explanations and their heatmaps, metrics, the report, a layer's feature maps and a unit's top patches. Each ``*_job``
returns ``fn(model, spec)``, which the job queue (:mod:`seewhy.serve.jobs`) runs on the model's own copy."""

from __future__ import annotations

import dataclasses
import logging
import math
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from .. import images, viz, zoo
from ..core import METHODS, explain
from ..hooks import model_state
from ..listings import summary
from ..plan import give_layer, plan_methods

log = logging.getLogger("seewhy")

__all__ = ["METRIC_STEPS", "PATCH_SOURCES", "SETTINGS", "explain_job", "layer_job", "layers_job", "methods_job",
           "metrics_job", "patch_pool", "pool_job", "predict_job", "report_job", "top_patches_job", "unit_job"]

#: lighter than the defaults, as in ``seewhy demo`` (seewhy.cli.DEMO_SETTINGS), so that a map comes in seconds
SETTINGS: dict[str, dict[str, Any]] = {
    "integrated_gradients": {"n_steps": 16},
    "smoothgrad": {"n_samples": 16},
    "occlusion": {"window": 56, "stride": 28},
    "occlusion_map": {"window": 56, "stride": 28},
    "rise": {"n_masks": 300},
    "lime": {"n_samples": 150},
    "kernel_shap": {"n_samples": 150},
}
#: steps of the deletion and insertion curves of /api/metrics (the registered default is one per image row)
METRIC_STEPS = 50
FAMILY_TITLES = {"gradient": "Gradient", "cam": "CAM", "lrp": "LRP", "perturbation": "Perturbation",
                 "surrogate": "Surrogate", "prototype": "Prototype", "control": "Control", "other": "Other"}
_SIGN_STEP = {"abs": "absolute value", "positive": "relu", "negative": "relu of the negative part",
              "all": "keep the sign"}



# -- what runs in a model's worker ----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Input:
    crop: np.ndarray  # uint8 (H,W,3): the image as the model sees it
    x: torch.Tensor  # (1,3,H,W) model input
    output: torch.Tensor  # (K,) the model's output


def _prepare(model: Any, spec: zoo.ModelSpec, img: Image.Image) -> _Input:
    crop = np.asarray(images.resize_crop(img, spec.resize, spec.crop, spec.interpolation), dtype=np.uint8)
    x = spec.preprocess(img).unsqueeze(0)
    with model_state(model), torch.no_grad():
        out = model(x)
    if out.ndim != 2:
        raise ValueError(f"the model returns outputs of shape {tuple(out.shape)}, not class scores (1, K)")
    return _Input(crop, x, out[0].detach().float())


def _target(inp: _Input, target: int | None) -> int:
    k = inp.output.shape[0]
    if target is None:
        return int(inp.output.argmax())
    if not 0 <= target < k:
        raise ValueError(f"target {target} is out of range: the model has {k} classes (0..{k - 1})")
    return target


def _params(model: Any, spec: zoo.ModelSpec, methods: Sequence[str]) -> dict[str, dict[str, Any]]:
    """The hyperparameters of ``methods`` for ``model``: :data:`SETTINGS` (those made for 224-pixel inputs, the
    occlusion windows, only from there up), seed 0, the model's CAM layer."""
    side = min(_dummy(spec).shape[-2:])
    defaults = {m: v for m, v in SETTINGS.items() if side >= 224 or m not in ("occlusion", "occlusion_map")}
    names, params = plan_methods([",".join(methods)], [], 0, defaults=defaults)
    give_layer(model, names, params, None, spec.cam_layer)
    return params


def _label(names: Sequence[str] | None, i: int) -> str:
    return str(names[i]) if names and 0 <= i < len(names) else f"class {i}"


def _steps(steps: dict[str, Any], raw_size: Sequence[int]) -> list[str]:
    """The heatmap's post-processing (Explanation.heatmap_steps) in words, in the order seewhy.postprocess runs it."""
    size = tuple(steps["size"])
    norm = steps["normalize"] + (f" ({steps.get('percentile', 99.0):g}th percentile)"
                                 if steps["normalize"] == "percentile" else "")
    resize = (f"resize: {steps['upsample']} from {raw_size[0]}x{raw_size[1]} to {size[0]}x{size[1]}"
              if tuple(raw_size) != size else f"resize: none (already {size[0]}x{size[1]})")
    return [f"reduce channels: {steps['reduce']}", _SIGN_STEP.get(steps["sign"], steps["sign"]), resize,
            f"normalise: {norm}"]


def _uri(image: np.ndarray) -> str:
    return viz.data_uri(image)


def _explain_one(model: Any, spec: zoo.ModelSpec, inp: _Input, method: str, target: int) -> tuple[Any, float]:
    params = _params(model, spec, [method])[method]
    t0 = time.perf_counter()
    exp = explain(model, inp.x, method, target=target, **params)
    return exp, time.perf_counter() - t0


def explain_job(img: Image.Image, method: str, target: int | None, cmap: str) -> Callable[[Any, Any], dict]:
    def job(model: Any, spec: zoo.ModelSpec) -> dict[str, Any]:
        inp = _prepare(model, spec, img)
        t = _target(inp, target)
        exp, seconds = _explain_one(model, spec, inp, method, t)
        steps = exp.heatmap_steps()
        heat = exp.heatmap()[0, 0]
        raw = exp.heatmap(sign="all")[0, 0]
        names = zoo.class_names(model)
        prob = torch.softmax(inp.output.double(), 0)[t]
        warnings = exp.extras.get("warnings") or []
        return {
            "method": method, "target": t, "label": _label(names, t), "score": float(prob),
            "logit": float(exp.scores[0]), "seconds": round(seconds, 4), "layer": exp.layer,
            "heatmap_png": _uri(viz.heat_to_image(heat, cmap=cmap)),
            "overlay_png": _uri(viz.overlay(inp.crop, heat, cmap=cmap, alpha=0.5)),
            "raw_png": _uri(viz.heat_to_image(raw, cmap="bwr", signed=True)),
            "steps": _steps(steps, exp.attributions.shape[-2:]), "size": list(inp.crop.shape[:2]),
            "warnings": [str(w) for w in (warnings if isinstance(warnings, list) else [warnings])],
        }

    return job


def predict_job(img: Image.Image, k: int = 5) -> Callable[[Any, Any], dict]:
    from ..report import top_predictions

    def job(model: Any, spec: zoo.ModelSpec) -> dict[str, Any]:
        inp = _prepare(model, spec, img)
        top = top_predictions(inp.output, zoo.class_names(model), k)
        return {"top": [{"index": i, "label": label, "score": p} for i, label, p in top],
                "input_png": _uri(inp.crop), "size": list(inp.crop.shape[:2])}

    return job


def metrics_job(img: Image.Image, method: str, target: int | None) -> Callable[[Any, Any], dict]:
    from ..metrics import get_metric

    def job(model: Any, spec: zoo.ModelSpec) -> dict[str, Any]:
        t0 = time.perf_counter()
        inp = _prepare(model, spec, img)
        t = _target(inp, target)
        exp, _ = _explain_one(model, spec, inp, method, t)
        out: dict[str, Any] = {"method": method, "target": t}
        for name in ("deletion", "insertion"):
            result = get_metric(f"{name}_auc")(model, inp.x, exp.attributions, exp.targets, n_steps=METRIC_STEPS)
            score = float(result.scores[0])
            out[name] = score if math.isfinite(score) else None
            out[f"{name}_protocol"] = {k: v for k, v in result.protocol.items() if isinstance(v, (str, int, float))}
        out["seconds"] = round(time.perf_counter() - t0, 4)
        return out

    return job


def report_job(img: Image.Image, source: str, methods: Sequence[str], target: int | None,
                model_name: str) -> Callable[[Any, Any], str]:
    from ..report import ImageRow, write_explain_report
    from ..runner import MethodRun

    def job(model: Any, spec: zoo.ModelSpec) -> str:
        inp = _prepare(model, spec, img)
        t = _target(inp, target)
        runs = []
        for m in methods:
            try:
                exp, seconds = _explain_one(model, spec, inp, m, t)
            except Exception as err:  # one failing method must not lose the others (as in seewhy explain)
                log.debug("method %s failed", m, exc_info=True)
                runs.append(MethodRun(m, error=f"{type(err).__name__}: {err}"))
                continue
            runs.append(MethodRun(m, [exp], [seconds]))
        if not any(r.ok for r in runs):
            raise ValueError("every method failed: " + "; ".join(f"{r.name}: {r.error}" for r in runs))
        rows = [ImageRow(name=images.image_name(source), image=inp.crop, source=source, output=inp.output)]
        with tempfile.TemporaryDirectory(prefix="seewhy-serve-report-") as tmp:
            path = write_explain_report(
                tmp, rows, runs, model={"name": spec.name, "description": spec.description, "spec": model_name,
                                        "weights": "pretrained" if spec.has_weights else "none (random init)"},
                target=str(t) if target is not None else "top1",
                preprocessing={"resize": spec.resize, "crop": spec.crop, "interpolation": spec.interpolation,
                               "mean": list(spec.mean), "std": list(spec.std)},
                class_names=zoo.class_names(model), settings={"device": "cpu", "seed": 0, "served by": "seewhy serve"},
                command=["seewhy", "serve"], title="seewhy serve report", save_attributions=False)
            return Path(path).read_text(encoding="utf-8")

    return job


def _dummy(spec: zoo.ModelSpec) -> torch.Tensor:
    size = spec.crop or spec.resize or 224
    h, w = (size, size) if isinstance(size, int) else size
    return torch.zeros(1, 3, h, w)


def layers_job(model: Any, spec: zoo.ModelSpec) -> list[dict[str, Any]]:
    from ..hooks import module_outputs

    with model_state(model):
        found = module_outputs(model, _dummy(spec),
                               lambda name, out: list(out.shape[1:]) if out.ndim == 4 and out.shape[-2:].numel() > 1
                               else None)
    shapes: dict[str, list[int]] = {}
    for name, shape in found:  # the modules with a spatial output, in the order they finish (layers.spatial_layers)
        if shape is not None and name not in shapes:
            shapes[name] = shape
    return [{"name": n, "shape": s} for n, s in shapes.items()]


def layer_job(img: Image.Image, layer: str, top: int) -> Callable[[Any, Any], dict]:
    from ..inside.filters import feature_maps, top_channels

    def job(model: Any, spec: zoo.ModelSpec) -> dict[str, Any]:
        x = spec.preprocess(img).unsqueeze(0)
        maps = feature_maps(model, x, layer)[0]
        channels = top_channels(maps, top)
        grid = viz.feature_map_grid(maps, channels=channels, columns=min(8, max(1, len(channels))))
        means = maps.float().mean(dim=(1, 2))
        return {"layer": layer, "shape": list(maps.shape), "grid_png": _uri(grid),
                "channels": [{"index": c, "mean": float(means[c])} for c in channels]}

    return job


#: what a unit's top patches are searched in: the bundled photos and their four quarter crops (no download)
PATCH_SOURCES = "the bundled photos and their quarter crops"


def patch_pool(spec: zoo.ModelSpec) -> tuple[torch.Tensor, list[str]]:
    """The images a unit's top patches come from (model inputs) and their names."""
    tensors, names = [], []
    for name in images.BUNDLED:
        img = images.bundled_image(name)
        w, h = img.size
        crops = [("", img)] + [(f" ({where})", img.crop(box)) for where, box in (
            ("top left", (0, 0, w // 2, h // 2)), ("top right", (w // 2, 0, w, h // 2)),
            ("bottom left", (0, h // 2, w // 2, h)), ("bottom right", (w // 2, h // 2, w, h)))]
        for suffix, picture in crops:
            tensors.append(spec.preprocess(picture))
            names.append(name + suffix)
    return torch.stack(tensors), names


def pool_job(model: Any, spec: zoo.ModelSpec) -> tuple[torch.Tensor, list[str]]:
    return patch_pool(spec)


def top_patches_job(layer: str, k: int, pool: tuple[torch.Tensor, list[str]]) -> Callable[[Any, Any], Any]:
    """Every unit's top-``k`` patches of ``layer`` over the pool (one streamed pass; the server caches it per layer,
    the pool once per model)."""
    from ..inside.patches import top_patches

    def job(model: Any, spec: zoo.ModelSpec) -> Any:
        x, names = pool
        return top_patches(model, x, layer, k=k), names

    return job


def unit_job(found: Any, unit: int) -> Callable[[Any, Any], dict]:
    def job(model: Any, spec: zoo.ModelSpec) -> dict[str, Any]:
        top, names = found
        records = top.records(unit)
        pictures = top.pictures(unit)
        return {"unit": unit, "source": PATCH_SOURCES, "patches": [
            {"image": names[r.index], "value": float(r.value), "position": [int(r.y), int(r.x)],
             "box": [int(v) for v in r.box], "png": _uri(pic)} for r, pic in zip(records, pictures, strict=True)]}

    return job


def methods_job(methods: Sequence[str]) -> Callable[[Any, Any], list[dict]]:
    from ..estimate import estimate_methods, time_model

    def job(model: Any, spec: zoo.ModelSpec) -> list[dict[str, Any]]:
        params = _params(model, spec, methods)
        x = _dummy(spec)
        timing = time_model(model, x)
        found = {}
        for m in methods:
            try:
                found[m] = estimate_methods(model, x, [m], params, timing)[0]
            except Exception as err:  # no estimate is no reason to refuse the listing
                log.info("no cost estimate for %s on %s: %s", m, spec.name, err)
        out = []
        for m in methods:
            cls = METHODS[m]
            e = found.get(m)
            cost = e.text if e is not None else cls(**{k: v for k, v in params[m].items()
                                                      if k != "layer"}).cost().describe()
            out.append({"name": m, "family": FAMILY_TITLES.get(cls.family, cls.family), "family_key": cls.family,
                        "description": summary(cls, 200), "cost": cost,
                        "seconds": None if e is None or e.seconds is None else round(e.seconds, 3)})
        return out

    return job
