"""The seewhy serve page in a real browser: Playwright driving the system's Chromium (no browser download).

Runs in the default test run; skipped, with the reason, when Playwright or a ``chromium`` executable is absent
(``.ci/run`` installs Debian's ``chromium``; ``pip install -e ".[dev]"`` brings Playwright).
"""

from __future__ import annotations

import base64
import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.browser

METHODS = ("gradcam", "saliency")
TIMEOUT_MS = 20_000

# the live server (kept here: a conftest.py in tests/serve would shadow tests/conftest.py's `from conftest import`)
LIVE_MODELS = ["tiny_cnn"]  # 32x32 and no weights: fast enough for a browser test on two CPU cores


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def live_server() -> Iterator[str]:
    """The base URL (``http://127.0.0.1:PORT``) of ``create_app(models=["tiny_cnn"])`` run by uvicorn in a
    background thread; stopped when the module's tests are done."""
    pytest.importorskip("fastapi", reason='seewhy serve needs fastapi: pip install "seewhy[serve]"')
    uvicorn = pytest.importorskip("uvicorn", reason='seewhy serve needs uvicorn: pip install "seewhy[serve]"')
    from seewhy.serve.app import create_app

    port = _free_port()
    config = uvicorn.Config(create_app(models=LIVE_MODELS), host="127.0.0.1", port=port, log_level="warning",
                            lifespan="on")
    server = uvicorn.Server(config)
    server.install_signal_handlers = lambda: None  # not the main thread (uvicorn < 0.29 installs them in run)
    thread = threading.Thread(target=server.run, name="seewhy-serve-test", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive():
            pytest.fail("the seewhy serve test server stopped while starting (see the log above)")
        if time.monotonic() > deadline:
            server.should_exit = True
            pytest.fail("the seewhy serve test server did not start within 30 s")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)



def _chromium() -> str | None:
    for candidate in (os.environ.get("SEEWHY_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium"),
                      shutil.which("chromium-browser")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    sync_api = pytest.importorskip("playwright.sync_api",
                                   reason="playwright is not installed (pip install -e '.[dev]')")
    executable = _chromium()
    if executable is None:
        pytest.skip("no chromium executable (/usr/bin/chromium or `chromium` on PATH; apt-get install chromium)")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page(browser, live_server: str):
    context = browser.new_context(viewport={"width": 1280, "height": 1000}, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    problems: list[str] = []
    page.on("pageerror", lambda err: problems.append(f"page error: {err}"))
    page.on("console", lambda msg: problems.append(f"console {msg.type}: {msg.text}") if msg.type == "error" else None)
    page.problems = problems
    page.goto(live_server + "/")
    yield page
    context.close()


def _photo(path: Path) -> Path:
    """A PNG photo written by the test: the bundled chelsea photo, shrunk (tiny_cnn resizes it to 32x32)."""
    from seewhy.images import bundled_image

    img = bundled_image("chelsea")
    img.thumbnail((160, 160))
    img.save(path)
    return path


def _card(page, method: str):
    return page.locator(f'#maps .map-card[data-method="{method}"]')


def _wait_maps_for(page, target: int) -> None:
    """Every method's card shows a loaded map for class ``target`` and is no longer running."""
    page.wait_for_function(
        """([methods, target]) => methods.every((m) => {
             const card = document.querySelector(`#maps .map-card[data-method="${m}"]`);
             const img = card && card.querySelector("img.map");
             return img && img.complete && img.naturalWidth > 0 && !card.classList.contains("running")
                    && card.dataset.target === String(target);
           })""",
        arg=[list(METHODS), target],
    )


def test_compare_view_end_to_end(page, tmp_path: Path) -> None:
    # the page loads its models, methods (grouped by family) and bundled photos from the API
    page.wait_for_selector("#methods fieldset.family input.method")
    page.wait_for_selector("#bundled .bundled-image")
    assert page.locator("#model-select option").count() >= 1

    # upload a photo: the top-5 classes appear as buttons, the first one selected
    page.set_input_files("#image-input", str(_photo(tmp_path / "cat.png")))
    page.wait_for_function("document.querySelectorAll('#classes .class-button').length === 5")
    indices = [int(b.get_attribute("data-index")) for b in page.locator("#classes .class-button").all()]
    assert len(set(indices)) == 5

    # two methods, explained in parallel: both maps appear, for the top-1 class, with the heatmap steps
    for method in METHODS:
        page.check(f'#methods input.method[value="{method}"]')
    page.click("#explain-button")
    _wait_maps_for(page, indices[0])
    for method in METHODS:
        assert _card(page, method).locator(".steps li").count() >= 1

    # another class: every map is re-made for it
    page.click(f'#classes .class-button[data-index="{indices[2]}"]')
    _wait_maps_for(page, indices[2])
    assert page.get_attribute(f'#classes .class-button[data-index="{indices[2]}"]', "aria-pressed") == "true"

    # the compare view, as a screenshot saved by the test: not blank
    shot = tmp_path / "compare.png"
    page.locator("#compare").screenshot(path=str(shot))
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert pixels.std() > 10
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50

    # the opacity slider blends the heatmap over the image (client side)
    first_map = _card(page, "gradcam").locator("img.map")
    before = first_map.evaluate("img => img.style.opacity")
    page.locator("#opacity").scroll_into_view_if_needed()
    box = page.locator("#opacity").bounding_box()
    page.mouse.click(box["x"] + box["width"] * 0.2, box["y"] + box["height"] / 2)
    value = int(page.input_value("#opacity"))
    after = first_map.evaluate("img => img.style.opacity")
    assert after != before
    assert float(after) == pytest.approx(value / 100)

    # raw signed map vs heatmap
    heat_src = first_map.get_attribute("src")
    page.check("#raw-toggle")
    raw_src = first_map.get_attribute("src")
    assert raw_src.startswith("data:image/png;base64,") and raw_src != heat_src
    page.uncheck("#raw-toggle")
    assert first_map.get_attribute("src") == heat_src

    # another colormap: the maps are requested again with it
    page.select_option("#colormap", "viridis")
    page.wait_for_function(
        """src => { const card = document.querySelector('#maps .map-card[data-method="gradcam"]');
                    const img = card.querySelector('img.map');
                    return !card.classList.contains('running') && img.src !== src && img.complete; }""",
        arg=heat_src)
    _wait_maps_for(page, indices[2])

    # deletion / insertion under each map
    page.click("#metrics-button")
    for method in METHODS:
        page.wait_for_function(
            """m => /deletion \\d.*insertion \\d/.test(
                 document.querySelector(`#maps .map-card[data-method="${m}"] .metrics`).textContent)""",
            arg=method)

    # the report: a self-contained HTML file naming both methods
    with page.expect_download() as download:
        page.click("#report-link")
    html = Path(download.value.path()).read_text(encoding="utf-8")
    assert "<html" in html.lower()
    for method in METHODS:
        assert method in html

    # the layer browser: a layer's feature maps for the image
    layers = [o.get_attribute("value") for o in page.locator("#layer-select option").all()]
    layers = [name for name in layers if name]
    assert layers
    page.select_option("#layer-select", layers[-1])
    page.wait_for_function(
        "() => { const g = document.querySelector('#layer-grid');"
        " return !g.hidden && g.src.startsWith('data:image/png') && g.complete && g.naturalWidth > 0; }")
    # ... and a unit's top patches among the bundled photos
    page.locator("#layer-channels button.unit-button").first.click()
    page.wait_for_function(
        "() => { const imgs = document.querySelectorAll('#unit-patches img.patch');"
        " return imgs.length > 0 && [...imgs].every((i) => i.complete && i.naturalWidth > 0); }")

    assert page.locator("#message").is_hidden(), page.inner_text("#message")
    assert not page.problems, page.problems


def test_api_errors_are_shown(page, tmp_path: Path) -> None:
    """A file that is not an image: the API's 4xx message is shown on the page, not swallowed."""
    page.wait_for_selector("#methods input.method")
    bad = tmp_path / "not-an-image.png"
    bad.write_bytes(b"this is not a picture")
    page.set_input_files("#image-input", str(bad))
    message = page.locator("#message")
    message.wait_for(state="visible")
    assert "predict" in message.inner_text()
    assert page.locator("#classes .class-button").count() == 0


def test_bundled_photo_and_drop(page, tmp_path: Path) -> None:
    """A bundled photo is one click; a file dropped on the image panel replaces it (and is predicted again)."""
    page.click('#bundled .bundled-image[data-name="coffee"]')
    page.wait_for_function("document.querySelectorAll('#classes .class-button').length === 5")
    assert page.inner_text("#image-name") == "coffee.png"
    first = page.locator("#classes").inner_text()

    data = base64.b64encode(_photo(tmp_path / "dropped.png").read_bytes()).decode()
    page.evaluate(
        """(b64) => {
             const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
             const dt = new DataTransfer();
             dt.items.add(new File([bytes], "dropped.png", { type: "image/png" }));
             document.querySelector("#drop-zone").dispatchEvent(
               new DragEvent("drop", { dataTransfer: dt, bubbles: true, cancelable: true }));
           }""",
        data,
    )
    page.wait_for_function("document.querySelector('#image-name').textContent === 'dropped.png'")
    page.wait_for_function("document.querySelectorAll('#classes .class-button').length === 5")
    assert page.locator("#classes").inner_text() != first
    assert page.locator("#message").is_hidden(), page.inner_text("#message")
