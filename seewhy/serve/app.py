"""The FastAPI app of ``seewhy serve``: the page, and the JSON API behind it (see README, "seewhy serve").

Requests decode their uploads in the request (:mod:`seewhy.serve.uploads`) and hand everything that touches a model to
that model's workers (:mod:`seewhy.serve.jobs`): preprocessing, the forward passes, ``seewhy.explain``, the metrics,
the report. Models come only from the names given to :func:`create_app` (zoo names, or specs from the command line);
a request naming any other model is a 404, never a load.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import math
import mimetypes
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch
from fastapi import FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from PIL import Image

from .. import images, viz, zoo
from ..core import FAMILIES, METHODS, explain
from ..hooks import model_state
from ..listings import summary
from ..plan import give_layer, plan_methods
from ..version import __version__
from .jobs import QueueFull, Workers
from .uploads import DEFAULT_MAX_MB, DEFAULT_MAX_PIXELS, BodyLimit, UploadError, decode_upload

log = logging.getLogger("seewhy")

__all__ = ["DEFAULT_MODEL", "SETTINGS", "create_app"]

DEFAULT_MODEL = "efficientnet_lite0"
HERE = Path(__file__).resolve().parent
TEMPLATE = HERE / "templates" / "index.html"
STATIC = HERE / "static"
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
#: the multipart fields of the POST routes
ImageField = Annotated[UploadFile | None, File()]
OptionalField = Annotated[str | None, Form()]
TextField = Annotated[str, Form()]
IntField = Annotated[int, Form()]
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


def _explain_job(img: Image.Image, method: str, target: int | None, cmap: str) -> Callable[[Any, Any], dict]:
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


def _predict_job(img: Image.Image, k: int = 5) -> Callable[[Any, Any], dict]:
    from ..report import top_predictions

    def job(model: Any, spec: zoo.ModelSpec) -> dict[str, Any]:
        inp = _prepare(model, spec, img)
        top = top_predictions(inp.output, zoo.class_names(model), k)
        return {"top": [{"index": i, "label": label, "score": p} for i, label, p in top],
                "input_png": _uri(inp.crop), "size": list(inp.crop.shape[:2])}

    return job


def _metrics_job(img: Image.Image, method: str, target: int | None) -> Callable[[Any, Any], dict]:
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


def _report_job(img: Image.Image, source: str, methods: Sequence[str], target: int | None,
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


def _layers_job(model: Any, spec: zoo.ModelSpec) -> list[dict[str, Any]]:
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


def _layer_job(img: Image.Image, layer: str, top: int) -> Callable[[Any, Any], dict]:
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


def _patch_pool(spec: zoo.ModelSpec) -> tuple[torch.Tensor, list[str]]:
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


def _pool_job(model: Any, spec: zoo.ModelSpec) -> tuple[torch.Tensor, list[str]]:
    return _patch_pool(spec)


def _top_patches_job(layer: str, k: int, pool: tuple[torch.Tensor, list[str]]) -> Callable[[Any, Any], Any]:
    """Every unit's top-``k`` patches of ``layer`` over the pool (one streamed pass; the server caches it per layer,
    the pool once per model)."""
    from ..inside.patches import top_patches

    def job(model: Any, spec: zoo.ModelSpec) -> Any:
        x, names = pool
        return top_patches(model, x, layer, k=k), names

    return job


def _unit_job(found: Any, unit: int) -> Callable[[Any, Any], dict]:
    def job(model: Any, spec: zoo.ModelSpec) -> dict[str, Any]:
        top, names = found
        records = top.records(unit)
        pictures = top.pictures(unit)
        return {"unit": unit, "source": PATCH_SOURCES, "patches": [
            {"image": names[r.index], "value": float(r.value), "position": [int(r.y), int(r.x)],
             "box": [int(v) for v in r.box], "png": _uri(pic)} for r, pic in zip(records, pictures, strict=True)]}

    return job


def _methods_job(methods: Sequence[str]) -> Callable[[Any, Any], list[dict]]:
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


# -- the service ----------------------------------------------------------------------------------------


def _loader(name: str) -> Callable[[], tuple[Any, zoo.ModelSpec]]:
    def load() -> tuple[Any, zoo.ModelSpec]:
        model, spec = zoo.load_model(name)
        return model, spec

    return load


class Service:
    """What the routes share: the served model names, their workers, the limits, caches of plain data."""

    def __init__(self, models: Sequence[str], *, workers: int, queue_size: int, max_upload_mb: float,
                 max_pixels: int | None) -> None:
        self.models = list(models)
        self.max_bytes = int(max_upload_mb * 1e6)
        self.max_upload_mb = max_upload_mb
        self.max_pixels = max_pixels
        self.workers = Workers({m: _loader(m) for m in self.models}, workers=workers, capacity=queue_size)
        self.cache: dict[tuple[str, str], Any] = {}

    def model(self, name: str | None) -> str:
        """The served model ``name`` (default: the first); 404 for anything else."""
        if name is None or not name.strip():
            return self.models[0]
        if name not in self.models:
            raise HTTPException(404, f"model {name!r} is not served here; served: {', '.join(self.models)} "
                                     "(start seewhy serve with --model to serve another)")
        return name

    async def run(self, model: str, fn: Callable[[Any, Any], Any]) -> Any:
        """Run ``fn(model, spec)`` in one of the model's workers; a full queue is 503 with Retry-After, a ValueError
        or TypeError (a bad target, layer, or a method that does not fit the model) 400 with its message."""
        try:
            future = self.workers.submit(model, fn)
        except QueueFull as err:
            raise HTTPException(503, str(err), headers={"Retry-After": str(err.retry_after)}) from None
        try:
            return await asyncio.wrap_future(future)
        except (ValueError, TypeError) as err:
            raise HTTPException(400, str(err)) from None

    async def cached(self, model: str, key: str, fn: Callable[[Any, Any], Any]) -> Any:
        if (model, key) not in self.cache:
            self.cache[(model, key)] = await self.run(model, fn)
        return self.cache[(model, key)]

    def preload(self) -> None:
        """Build every model now (in its workers), so that a bad spec fails before the server starts."""
        futures = [lane.submit(lambda model, spec: None) for lane in self.workers.lanes.values()
                   for _ in range(lane.workers)]
        for f in futures:
            f.result()

    def model_info(self, name: str) -> dict[str, Any]:
        lane = self.workers[name]
        if name in zoo.MODELS:
            spec = zoo.get_spec(name)
            return {"name": name, "description": spec.description, "input_size": spec.crop or spec.resize,
                    "loaded": lane.loaded}
        return {"name": name, "description": f"user model {name}", "input_size": 224, "loaded": lane.loaded}


def _methods_offered() -> list[str]:
    """The methods the page offers: those of 'all' and the controls, by family (not the model-specific ones)."""
    names = [m for m, cls in METHODS.items() if cls.in_all or cls.family == "control"]
    order = {f: i for i, f in enumerate(FAMILIES)}
    return sorted(names, key=lambda m: order.get(METHODS[m].family, len(order)))


def _method(name: str) -> str:
    name = (name or "").strip()
    if name not in METHODS or not (METHODS[name].in_all or METHODS[name].family == "control"):
        close = [m for m in _methods_offered() if m.startswith(name[:3])][:5] if name else []
        raise HTTPException(400, f"unknown method {name!r}; " + (f"did you mean {', '.join(close)}? " if close else "")
                            + f"available: {', '.join(_methods_offered())}")
    return name


def _parse_target(target: str | None) -> int | None:
    if target is None or target.strip().lower() in ("", "top1", "none", "null"):
        return None
    try:
        value = int(target)
    except ValueError:
        raise HTTPException(400, f"target must be a class index (an integer) or top1, got {target!r}") from None
    if value < 0:
        raise HTTPException(400, f"target must be a class index >= 0, got {value}")
    return value


def _colormap(name: str) -> str:
    try:
        viz.apply_colormap(np.zeros(1), name)
    except ValueError as err:
        raise HTTPException(400, str(err)) from None
    return name


@functools.lru_cache(maxsize=len(images.BUNDLED))
def _bundled_png(name: str) -> bytes:
    return viz.png_bytes(np.asarray(images.bundled_image(name)))


# -- the app --------------------------------------------------------------------------------------------


def create_app(models: Sequence[str] | None = None, *, max_upload_mb: float = DEFAULT_MAX_MB, queue_size: int = 8,
               workers: int = 1, max_pixels: int | None = DEFAULT_MAX_PIXELS, preload: bool = False) -> FastAPI:
    """The ``seewhy serve`` app.

    Args:
        models: the models it serves: zoo names, or specs given on the command line (``file.py:factory``,
            ``module:factory``, TorchScript); default ``["efficientnet_lite0"]``. Each is built lazily, in its
            worker threads, on first use; requests can name only these.
        max_upload_mb: largest upload (413 above).
        queue_size: jobs that may wait per model (503 with Retry-After above).
        workers: worker threads per model, each with its own copy of the model.
        max_pixels: largest image (width x height) an upload may decode to (422 above): the decompression-bomb limit.
        preload: build the models now (a bad spec raises here).
    """
    names = list(dict.fromkeys(m.strip() for m in (models or [DEFAULT_MODEL]) if isinstance(m, str) and m.strip()))
    if not names:
        raise ValueError(f"no model to serve in {models!r}; give zoo names ({', '.join(zoo.MODELS)}) or specs")
    if max_upload_mb <= 0:
        raise ValueError(f"max_upload_mb must be > 0, got {max_upload_mb}")
    service = Service(names, workers=workers, queue_size=queue_size, max_upload_mb=max_upload_mb,
                      max_pixels=max_pixels)
    if preload:
        service.preload()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        service.workers.close()  # the jobs already queued finish first

    # no Swagger/ReDoc pages: FastAPI loads them from a CDN, and the explorer works offline; the schema is JSON
    app = FastAPI(title="seewhy serve", version=__version__, docs_url=None, redoc_url=None,
                  openapi_url="/api/openapi.json", lifespan=lifespan)
    app.state.service = service
    app.add_middleware(BodyLimit, max_bytes=service.max_bytes)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, err: Exception) -> JSONResponse:
        log.error("%s %s failed", request.method, request.url.path, exc_info=err)
        return JSONResponse({"detail": f"internal error ({type(err).__name__}); the server's log has the details"},
                            status_code=500)

    async def read_image(image: UploadFile | None, bundled: str | None) -> tuple[Image.Image, str]:
        if image is None:
            if bundled:
                try:
                    return images.bundled_image(bundled), bundled
                except ValueError as err:
                    raise HTTPException(404, str(err)) from None
            raise HTTPException(400, "no image: send the file as the multipart field 'image'")
        data = await image.read(service.max_bytes + 1)
        try:
            img = await run_in_threadpool(decode_upload, data, image.filename, max_bytes=service.max_bytes,
                                          max_pixels=service.max_pixels)
        except UploadError as err:
            raise HTTPException(err.status, str(err)) from None
        finally:
            await image.close()
        return img, image.filename or "upload"

    # -- page ---------------------------------------------------------------------------------------------
    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> HTMLResponse:
        if not TEMPLATE.is_file():
            return HTMLResponse("<!doctype html><title>seewhy serve</title><h1>seewhy serve</h1>"
                                "<p>The page is not installed; the API's schema is at "
                                "<a href='/api/openapi.json'>/api/openapi.json</a>.</p>")
        return HTMLResponse(_render(TEMPLATE, models=[service.model_info(m) for m in service.models],
                                    images=list(images.BUNDLED), max_upload_mb=service.max_upload_mb,
                                    version=__version__))

    @app.get("/static/{path:path}", include_in_schema=False)
    def static(path: str) -> FileResponse:
        root = STATIC.resolve()
        file = (root / path).resolve()
        if not file.is_relative_to(root) or not file.is_file():
            raise HTTPException(404, f"no static file {path!r}")
        return FileResponse(file, media_type=mimetypes.guess_type(file.name)[0] or "application/octet-stream")

    # -- listings -----------------------------------------------------------------------------------------
    @app.get("/api/health")
    def health() -> dict[str, Any]:
        lanes = service.workers.lanes
        return {"status": "ok", "models": [m for m in service.models if lanes[m].loaded], "served": service.models,
                "queue": service.workers.status(), "version": __version__}

    @app.get("/api/models")
    def models_() -> list[dict[str, Any]]:
        return [service.model_info(m) for m in service.models]

    @app.get("/api/methods")
    async def methods(model: str | None = None) -> list[dict[str, Any]]:
        name = service.model(model)
        return await service.cached(name, "methods", _methods_job(_methods_offered()))

    @app.get("/api/images")
    def bundled() -> list[dict[str, str]]:
        return [{"name": n, "url": f"/api/images/{n}"} for n in images.BUNDLED]

    @app.get("/api/images/{name}")
    async def bundled_image(name: str) -> Response:
        if name not in images.BUNDLED:
            raise HTTPException(404, f"no bundled image {name!r}; bundled: {', '.join(images.BUNDLED)}")
        return Response(await run_in_threadpool(_bundled_png, name), media_type="image/png",
                        headers={"Cache-Control": "max-age=3600"})

    @app.get("/api/layers")
    async def layers(model: str | None = None) -> list[dict[str, Any]]:
        return await service.cached(service.model(model), "layers", _layers_job)

    # -- work ---------------------------------------------------------------------------------------------
    @app.post("/api/predict")
    async def predict(image: ImageField = None, bundled: OptionalField = None,
                      model: OptionalField = None) -> dict[str, Any]:
        name = service.model(model)
        img, _ = await read_image(image, bundled)
        return {"model": name, **await service.run(name, _predict_job(img))}

    @app.post("/api/explain")
    async def explain_(image: ImageField = None, bundled: OptionalField = None,
                       model: OptionalField = None, method: TextField = "gradcam", target: OptionalField = None,
                       colormap: TextField = "jet") -> dict[str, Any]:
        name, m, t, cmap = service.model(model), _method(method), _parse_target(target), _colormap(colormap)
        img, _ = await read_image(image, bundled)
        return {"model": name, **await service.run(name, _explain_job(img, m, t, cmap))}

    @app.post("/api/metrics")
    async def metrics(image: ImageField = None, bundled: OptionalField = None,
                      model: OptionalField = None, method: TextField = "gradcam",
                      target: OptionalField = None) -> dict[str, Any]:
        name, m, t = service.model(model), _method(method), _parse_target(target)
        img, _ = await read_image(image, bundled)
        return {"model": name, **await service.run(name, _metrics_job(img, m, t))}

    @app.post("/api/report")
    async def report(image: ImageField = None, bundled: OptionalField = None,
                     model: OptionalField = None, methods: TextField = "gradcam",
                     target: OptionalField = None) -> Response:
        name, t = service.model(model), _parse_target(target)
        chosen = list(dict.fromkeys(_method(m) for m in methods.split(",") if m.strip()))
        if not chosen:
            raise HTTPException(400, "no method: give 'methods' as comma-separated names, e.g. gradcam,saliency")
        img, source = await read_image(image, bundled)
        html = await service.run(name, _report_job(img, source, chosen, t, name))
        stem = images.image_name(source)
        return Response(html, media_type="text/html; charset=utf-8",
                        headers={"Content-Disposition": f'attachment; filename="seewhy-report-{stem}.html"'})

    @app.post("/api/layer")
    async def layer(layer: TextField, image: ImageField = None,
                    bundled: OptionalField = None, model: OptionalField = None,
                    top: IntField = 16) -> dict[str, Any]:
        name = service.model(model)
        if not 1 <= top <= 256:
            raise HTTPException(400, f"top must be between 1 and 256, got {top}")
        known = [entry["name"] for entry in await service.cached(name, "layers", _layers_job)]
        if layer not in known:
            raise HTTPException(400, f"unknown layer {layer!r} for {name}; spatial layers: {', '.join(known[:12])}"
                                     + (", ..." if len(known) > 12 else "") + " (GET /api/layers)")
        img, _ = await read_image(image, bundled)
        return {"model": name, **await service.run(name, _layer_job(img, layer, top))}

    @app.post("/api/unit")
    async def unit(layer: TextField, unit: IntField, model: OptionalField = None, k: IntField = 6) -> dict[str, Any]:
        """A unit's top patches (receptive-field crops) among the bundled photos and their quarter crops."""
        name = service.model(model)
        if not 1 <= k <= 9:
            raise HTTPException(400, f"k must be between 1 and 9, got {k}")
        shapes = {e["name"]: e["shape"] for e in await service.cached(name, "layers", _layers_job)}
        if layer not in shapes:
            raise HTTPException(400, f"unknown layer {layer!r} for {name} (GET /api/layers)")
        if not 0 <= unit < shapes[layer][0]:
            raise HTTPException(400, f"unit {unit} is out of range for {layer} with {shapes[layer][0]} channels")
        pool = await service.cached(name, "patch-pool", _pool_job)
        found = await service.cached(name, f"patches:{layer}", _top_patches_job(layer, 9, pool))
        answer = await service.run(name, _unit_job(found, unit))
        answer["patches"] = answer["patches"][:k]
        return {"model": name, "layer": layer, **answer}

    return app


@functools.lru_cache(maxsize=1)
def _environment() -> Any:
    import jinja2

    return jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATE.parent)), autoescape=True, auto_reload=True)


def _render(template: Path, **context: Any) -> str:
    return _environment().get_template(template.name).render(**context)
