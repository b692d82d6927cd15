"""The HTTP API of seewhy serve (the routes the page calls), the page and static files, and the command's host check.
Tiny zoo models, so the whole file runs in seconds."""

from __future__ import annotations

import argparse
import base64
import io
import logging
import warnings

import pytest
import torch
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("multipart")

with warnings.catch_warnings():  # starlette's notice about httpx versions
    warnings.filterwarnings("ignore", message=".*httpx.*")
    from fastapi.testclient import TestClient

import seewhy  # noqa: E402
from seewhy import images, zoo  # noqa: E402
from seewhy.serve import app as serve_app  # noqa: E402
from seewhy.serve import cli as serve_cli  # noqa: E402
from seewhy.serve import create_app  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")


def _png(colour: tuple[int, int, int] = (200, 40, 40), size: tuple[int, int] = (48, 40)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "PNG")
    return buf.getvalue()


def _image(uri: str) -> Image.Image:
    assert uri.startswith("data:image/png;base64,")
    return Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))


@pytest.fixture(scope="module")
def client() -> TestClient:
    app = create_app(["tiny_cnn", "tiny_resnet"])
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def test_listings(client: TestClient) -> None:
    health = client.get("/api/health").json()
    assert health["status"] == "ok" and set(health["queue"]) >= {"size", "capacity", "workers"}
    models = client.get("/api/models").json()
    assert [m["name"] for m in models] == ["tiny_cnn", "tiny_resnet"]
    assert models[0]["input_size"] == 32 and isinstance(models[0]["loaded"], bool) and models[0]["description"]
    methods = client.get("/api/methods", params={"model": "tiny_cnn"}).json()
    names = [m["name"] for m in methods]
    assert {"gradcam", "saliency", "lrp", "random_attribution"} <= set(names) and "protopnet" not in names
    gradcam = next(m for m in methods if m["name"] == "gradcam")
    assert gradcam["family"] == "CAM" and gradcam["cost"] == "1 forward+backward" and gradcam["seconds"] >= 0
    families = [m["family"] for m in methods]
    assert families == sorted(families, key=families.index)  # grouped: each family in one run
    photos = client.get("/api/images").json()
    assert [p["name"] for p in photos] == list(images.BUNDLED)
    r = client.get(photos[0]["url"])
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert client.get("/api/images/passwd").status_code == 404


def test_predict_and_explain_match_seewhy(client: TestClient) -> None:
    data = _png()
    r = client.post("/api/predict", files={"image": ("red.png", data)}, data={"model": "tiny_cnn"})
    assert r.status_code == 200, r.text
    top = r.json()["top"]
    model, spec = zoo.load_model("tiny_cnn")
    x = spec.preprocess(Image.open(io.BytesIO(data)).convert("RGB")).unsqueeze(0)
    probs = torch.softmax(model(x)[0].double(), 0)
    assert len(top) == 5 and [t["index"] for t in top] == probs.topk(5).indices.tolist()
    assert top[0]["score"] == pytest.approx(float(probs.max()), rel=1e-5) and top[0]["label"]

    second = top[1]["index"]
    r = client.post("/api/explain", files={"image": ("red.png", data)},
                    data={"model": "tiny_cnn", "method": "gradcam", "target": str(second), "colormap": "viridis"})
    assert r.status_code == 200, r.text
    a = r.json()
    assert a["method"] == "gradcam" and a["target"] == second and a["size"] == [32, 32]
    assert a["score"] == pytest.approx(float(probs[second]), rel=1e-5)
    assert set(a) >= {"label", "seconds", "heatmap_png", "overlay_png", "raw_png", "steps"}
    for key in ("heatmap_png", "overlay_png", "raw_png"):
        assert _image(a[key]).size == (32, 32)
    assert a["steps"][0].startswith("reduce channels") and a["steps"][-1] == "normalise: minmax"
    exp = seewhy.explain(model, x, "gradcam", target=second, layer=spec.cam_layer)
    expected = (exp.heatmap()[0, 0].numpy() * 255).round()
    shown = torch.tensor(list(_image(a["heatmap_png"]).convert("RGB").getdata()))  # viridis: compare via the lut
    from seewhy import viz
    lut = torch.as_tensor(viz.apply_colormap(torch.linspace(0, 1, 256), "viridis")).long()
    levels = (shown[:, None, :] - lut[None]).abs().sum(-1).argmin(1).reshape(32, 32).numpy()
    assert abs(levels - expected).max() <= 1

    r = client.post("/api/explain", files={"image": ("red.png", data)}, data={"method": "saliency"})
    assert r.status_code == 200 and r.json()["model"] == "tiny_cnn"  # default: the first model, top-1 class


@pytest.mark.parametrize(("fields", "status", "words"), [
    ({"model": "efficientnet_lite0"}, 404, "not served"),  # a zoo model, but not given to the server
    ({"model": "/etc/passwd"}, 404, "not served"),
    ({"model": "os:getcwd"}, 404, "not served"),
    ({"model": "seewhy.zoo.small:TinyCNN"}, 404, "not served"),
    ({"method": "no_such_method"}, 400, "unknown method"),
    ({"method": "protopnet"}, 400, "unknown method"),
    ({"target": "cat"}, 400, "class index"),
    ({"target": "10"}, 400, "out of range"),
    ({"colormap": "nope"}, 400, "colormap"),
])
def test_bad_requests_are_4xx_and_never_load_a_path(client: TestClient, monkeypatch: pytest.MonkeyPatch,
                                                     fields: dict, status: int, words: str) -> None:
    loaded = []
    monkeypatch.setattr(zoo, "load_model", lambda *a, **k: loaded.append(a) or (_ for _ in ()).throw(AssertionError))
    r = client.post("/api/explain", files={"image": ("x.png", _png())}, data={"method": "gradcam", **fields})
    assert r.status_code == status, r.text
    assert words in r.json()["detail"] and not loaded
    if "model" in fields:
        assert client.get("/api/layers", params={"model": fields["model"]}).status_code == 404


def test_metrics_report_and_layers(client: TestClient) -> None:
    files = {"image": ("red.png", _png())}
    r = client.post("/api/metrics", files=files, data={"model": "tiny_resnet", "method": "saliency", "target": "3"})
    assert r.status_code == 200, r.text
    m = r.json()
    assert m["method"] == "saliency" and m["target"] == 3 and 0 <= m["deletion"] <= 1 and 0 <= m["insertion"] <= 1
    r = client.post("/api/report", files=files, data={"model": "tiny_cnn", "methods": "saliency,gradcam"})
    assert r.status_code == 200, r.text
    assert r.headers["content-disposition"].startswith("attachment;") and ".html" in r.headers["content-disposition"]
    assert "<html" in r.text.lower() and "gradcam" in r.text and "saliency" in r.text
    layers = client.get("/api/layers", params={"model": "tiny_cnn"}).json()
    assert layers and all(len(entry["shape"]) == 3 for entry in layers)
    name, (c, h, w) = layers[0]["name"], layers[0]["shape"]
    r = client.post("/api/layer", files=files, data={"model": "tiny_cnn", "layer": name, "top": "4"})
    assert r.status_code == 200, r.text
    a = r.json()
    assert a["layer"] == name and a["shape"] == [c, h, w] and len(a["channels"]) == 4
    means = [ch["mean"] for ch in a["channels"]]
    assert means == sorted(means, reverse=True) and _image(a["grid_png"]).size[0] > 0
    r = client.post("/api/layer", files=files, data={"model": "tiny_cnn", "layer": "os.system"})
    assert r.status_code == 400 and "unknown layer" in r.json()["detail"]


def test_unit_top_patches_match_inside_top_patches(client: TestClient) -> None:
    """/api/unit: a unit's top patches among the bundled photos and their quarter crops, the same records as
    seewhy.inside.top_patches over the same images."""
    from seewhy.inside import top_patches
    from seewhy.serve.work import patch_pool

    layer, unit = "features.2", 5
    r = client.post("/api/unit", data={"model": "tiny_cnn", "layer": layer, "unit": str(unit), "k": "4"})
    assert r.status_code == 200, r.text
    a = r.json()
    assert a["layer"] == layer and a["unit"] == unit and len(a["patches"]) == 4
    x, names = patch_pool(zoo.get_spec("tiny_cnn"))
    expected = top_patches(zoo.load("tiny_cnn"), x, layer, k=4).records(unit)
    assert [p["image"] for p in a["patches"]] == [names[rec.index] for rec in expected]
    assert [p["value"] for p in a["patches"]] == pytest.approx([rec.value for rec in expected])
    values = [p["value"] for p in a["patches"]]
    assert values == sorted(values, reverse=True) and all(_image(p["png"]).size[0] > 0 for p in a["patches"])
    for bad, why in (({"unit": "99"}, "out of range"), ({"layer": "nope"}, "unknown layer"), ({"k": "0"}, "k must")):
        r = client.post("/api/unit", data={"model": "tiny_cnn", "layer": layer, "unit": str(unit), **bad})
        assert r.status_code == 400 and why in r.json()["detail"]


def test_page_static_and_clean_500(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    r = client.get("/")
    assert r.status_code == 200 and "text/html" in r.headers["content-type"]
    assert client.get("/static/../app.py").status_code == 404
    assert client.get("/static/%2e%2e/app.py").status_code == 404
    if (serve_app.STATIC / "app.js").is_file():
        assert client.get("/static/app.js").status_code == 200

    def broken(img: Image.Image, k: int = 5) -> object:
        def job(model: object, spec: object) -> None:
            raise RuntimeError("secret internal state")

        return job

    monkeypatch.setattr(serve_app, "predict_job", broken)
    r = client.post("/api/predict", files={"image": ("x.png", _png())})
    assert r.status_code == 500
    assert r.json()["detail"].startswith("internal error") and "secret" not in r.text and "Traceback" not in r.text


def test_host_warning_and_cli(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    for host in ("127.0.0.1", "127.0.0.5", "localhost", "::1", "[::1]"):
        assert serve_cli.host_warning(host) is None, host
    for host in ("0.0.0.0", "::", "192.168.1.20", "example.org"):
        assert "reachable" in serve_cli.host_warning(host), host
    parser = argparse.ArgumentParser()
    serve_cli.add_parser(parser.add_subparsers(dest="command"), argparse.ArgumentParser(add_help=False))
    args = parser.parse_args(["serve", "--model", "tiny_cnn"])
    assert args.host == "127.0.0.1" and args.port == 8765 and args.workers == 1 and args.max_upload_mb == 20
    args = parser.parse_args(["serve", "--model", "tiny_cnn", "--host", "0.0.0.0", "--port", "9000"])
    args.quiet = False
    calls = []
    import uvicorn

    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append((app, kw)))
    with caplog.at_level(logging.WARNING, logger="seewhy"):
        assert serve_cli.run(args) == 0
    assert any("0.0.0.0" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)
    (app, kw), = calls
    assert kw["host"] == "0.0.0.0" and kw["port"] == 9000 and app.state.service.models == ["tiny_cnn"]
    assert app.state.service.workers["tiny_cnn"].loaded  # built before serving: a bad spec fails at start
    args.model = ["no_such_model"]
    with pytest.raises(ValueError, match="no_such_model"):
        serve_cli.run(args)


def test_missing_extra_names_the_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    import seewhy.serve

    monkeypatch.setitem(sys.modules, "fastapi", None)  # as if FastAPI were not installed
    with pytest.raises(ImportError, match=r'pip install "seewhy\[serve\]"'):
        seewhy.serve.require()
    with pytest.raises(ImportError, match="fastapi"):
        seewhy.serve.create_app  # noqa: B018


def test_the_page_works_offline(client: TestClient) -> None:
    """No CDN: the page, its script and its styles name no external address, and there is no Swagger page (FastAPI
    loads it from a CDN); the schema is served as JSON."""
    for path in ("/", "/static/app.js", "/static/app.css"):
        r = client.get(path)
        assert r.status_code == 200, path
        assert "http://" not in r.text and "https://" not in r.text and "//cdn" not in r.text, path
    assert client.get("/api/docs").status_code == 404
    assert client.get("/api/openapi.json").json()["info"]["title"] == "seewhy serve"
