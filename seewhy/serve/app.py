"""The FastAPI app of ``seewhy serve``: the page, and the JSON API behind it (see README, "seewhy serve").

Requests decode their uploads in the request (:mod:`seewhy.serve.uploads`) and hand everything that touches a model to
that model's workers (:mod:`seewhy.serve.jobs`): preprocessing, the forward passes, ``seewhy.explain``, the metrics,
the report. Models come only from the names given to :func:`create_app` (zoo names, or specs from the command line);
a request naming any other model is a 404, never a load.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import mimetypes
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from fastapi import FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from PIL import Image

from .. import images, viz, zoo
from ..core import FAMILIES, METHODS
from ..version import __version__
from .jobs import QueueFull, Workers
from .uploads import DEFAULT_MAX_MB, DEFAULT_MAX_PIXELS, BodyLimit, UploadError, decode_upload
from .work import (
    SETTINGS,
    explain_job,
    layer_job,
    layers_job,
    methods_job,
    metrics_job,
    pool_job,
    predict_job,
    report_job,
    top_patches_job,
    unit_job,
)

log = logging.getLogger("seewhy")

__all__ = ["DEFAULT_MODEL", "SETTINGS", "create_app"]

DEFAULT_MODEL = "efficientnet_lite0"
HERE = Path(__file__).resolve().parent
TEMPLATE = HERE / "templates" / "index.html"
STATIC = HERE / "static"
#: the multipart fields of the POST routes
ImageField = Annotated[UploadFile | None, File()]
OptionalField = Annotated[str | None, Form()]
TextField = Annotated[str, Form()]
IntField = Annotated[int, Form()]
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
        return await service.cached(name, "methods", methods_job(_methods_offered()))

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
        return await service.cached(service.model(model), "layers", layers_job)

    # -- work ---------------------------------------------------------------------------------------------
    @app.post("/api/predict")
    async def predict(image: ImageField = None, bundled: OptionalField = None,
                      model: OptionalField = None) -> dict[str, Any]:
        name = service.model(model)
        img, _ = await read_image(image, bundled)
        return {"model": name, **await service.run(name, predict_job(img))}

    @app.post("/api/explain")
    async def explain_(image: ImageField = None, bundled: OptionalField = None,
                       model: OptionalField = None, method: TextField = "gradcam", target: OptionalField = None,
                       colormap: TextField = "jet") -> dict[str, Any]:
        name, m, t, cmap = service.model(model), _method(method), _parse_target(target), _colormap(colormap)
        img, _ = await read_image(image, bundled)
        return {"model": name, **await service.run(name, explain_job(img, m, t, cmap))}

    @app.post("/api/metrics")
    async def metrics(image: ImageField = None, bundled: OptionalField = None,
                      model: OptionalField = None, method: TextField = "gradcam",
                      target: OptionalField = None) -> dict[str, Any]:
        name, m, t = service.model(model), _method(method), _parse_target(target)
        img, _ = await read_image(image, bundled)
        return {"model": name, **await service.run(name, metrics_job(img, m, t))}

    @app.post("/api/report")
    async def report(image: ImageField = None, bundled: OptionalField = None,
                     model: OptionalField = None, methods: TextField = "gradcam",
                     target: OptionalField = None) -> Response:
        name, t = service.model(model), _parse_target(target)
        chosen = list(dict.fromkeys(_method(m) for m in methods.split(",") if m.strip()))
        if not chosen:
            raise HTTPException(400, "no method: give 'methods' as comma-separated names, e.g. gradcam,saliency")
        img, source = await read_image(image, bundled)
        html = await service.run(name, report_job(img, source, chosen, t, name))
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
        known = [entry["name"] for entry in await service.cached(name, "layers", layers_job)]
        if layer not in known:
            raise HTTPException(400, f"unknown layer {layer!r} for {name}; spatial layers: {', '.join(known[:12])}"
                                     + (", ..." if len(known) > 12 else "") + " (GET /api/layers)")
        img, _ = await read_image(image, bundled)
        return {"model": name, **await service.run(name, layer_job(img, layer, top))}

    @app.post("/api/unit")
    async def unit(layer: TextField, unit: IntField, model: OptionalField = None, k: IntField = 6) -> dict[str, Any]:
        """A unit's top patches (receptive-field crops) among the bundled photos and their quarter crops."""
        name = service.model(model)
        if not 1 <= k <= 9:
            raise HTTPException(400, f"k must be between 1 and 9, got {k}")
        shapes = {e["name"]: e["shape"] for e in await service.cached(name, "layers", layers_job)}
        if layer not in shapes:
            raise HTTPException(400, f"unknown layer {layer!r} for {name} (GET /api/layers)")
        if not 0 <= unit < shapes[layer][0]:
            raise HTTPException(400, f"unit {unit} is out of range for {layer} with {shapes[layer][0]} channels")
        pool = await service.cached(name, "patch-pool", pool_job)
        found = await service.cached(name, f"patches:{layer}", top_patches_job(layer, 9, pool))
        answer = await service.run(name, unit_job(found, unit))
        answer["patches"] = answer["patches"][:k]
        return {"model": name, "layer": layer, **answer}

    return app


@functools.lru_cache(maxsize=1)
def _environment() -> Any:
    import jinja2

    return jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATE.parent)), autoescape=True, auto_reload=True)


def _render(template: Path, **context: Any) -> str:
    return _environment().get_template(template.name).render(**context)
