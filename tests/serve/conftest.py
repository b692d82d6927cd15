"""Shared fixtures of the seewhy serve tests: the real app on a loopback port, served by uvicorn in a thread."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

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
