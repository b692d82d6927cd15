"""The job queue of seewhy serve: a fixed number of workers per model, never two jobs on one model at once, every
model call in the model's worker thread, a full queue answered with 503 and Retry-After."""

from __future__ import annotations

import threading
import time
import warnings
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, ClassVar

import pytest
import torch

pytest.importorskip("fastapi")
pytest.importorskip("multipart")

with warnings.catch_warnings():  # starlette's notice about httpx versions
    warnings.filterwarnings("ignore", message=".*httpx.*")
    from fastapi.testclient import TestClient  # noqa: E402
from torch import Tensor, nn  # noqa: E402

from seewhy.core import METHODS, Call, Method, register  # noqa: E402
from seewhy.serve import create_app  # noqa: E402
from seewhy.serve.jobs import Lane, QueueFull  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")


class _Overlap:
    """Records, per model object, how many calls run at once, and the threads they run in."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.now: dict[int, int] = defaultdict(int)
        self.peak: dict[int, int] = defaultdict(int)
        self.total_now = self.total_peak = 0
        self.threads: set[str] = set()
        self.sleep = 0.05

    def enter(self, key: int) -> None:
        with self.lock:
            self.now[key] += 1
            self.peak[key] = max(self.peak[key], self.now[key])
            self.total_now += 1
            self.total_peak = max(self.total_peak, self.total_now)
            self.threads.add(threading.current_thread().name)

    def leave(self, key: int) -> None:
        with self.lock:
            self.now[key] -= 1
            self.total_now -= 1


def test_lane_runs_one_job_per_model_copy_in_its_worker_threads() -> None:
    overlap, loads = _Overlap(), []

    def load() -> tuple[Any, Any]:
        loads.append(threading.current_thread().name)
        return object(), None

    lane = Lane("m", load, workers=2, capacity=16)

    def job(model: Any, spec: Any) -> str:
        overlap.enter(id(model))
        time.sleep(0.03)
        overlap.leave(id(model))
        return threading.current_thread().name

    try:
        names = [f.result(5) for f in [lane.submit(job) for _ in range(12)]]
    finally:
        lane.close()
    assert len(overlap.peak) == 2 and max(overlap.peak.values()) == 1  # two copies, never two jobs on one
    assert overlap.total_peak == 2
    assert sorted(loads) == ["seewhy-model-m-0", "seewhy-model-m-1"]  # each copy built once, in its own worker
    assert set(names) <= {"seewhy-model-m-0", "seewhy-model-m-1"}


def test_full_lane_refuses_with_retry_after_and_errors_reach_the_caller() -> None:
    gate = threading.Event()
    lane = Lane("m", lambda: (object(), None), workers=1, capacity=2)
    try:
        first = lane.submit(lambda model, spec: gate.wait(5))
        deadline = time.time() + 5
        while lane.running == 0 and time.time() < deadline:  # the first job is running, the queue is empty
            time.sleep(0.005)
        queued = [lane.submit(lambda model, spec: 1) for _ in range(2)]
        with pytest.raises(QueueFull) as info:
            lane.submit(lambda model, spec: 1)
        assert info.value.retry_after >= 1 and "full" in str(info.value)
        gate.set()
        assert first.result(5) is True and [f.result(5) for f in queued] == [1, 1]
        failing = lane.submit(lambda model, spec: (_ for _ in ()).throw(ValueError("bad")))
        with pytest.raises(ValueError, match="bad"):
            failing.result(5)
    finally:
        gate.set()
        lane.close()


@pytest.fixture
def probe() -> Any:
    """A registered method that sleeps and records overlapping calls per model object."""
    overlap = _Overlap()

    @register("serve_probe")
    @dataclass
    class ServeProbe(Method):
        """Test probe: sleeps, records overlapping calls on one model."""

        kind: ClassVar[str] = "map"
        in_all: ClassVar[bool] = False
        family: ClassVar[str] = "control"
        heatmap_convention: ClassVar[dict[str, Any]] = {"reduce": "sum", "sign": "abs", "normalize": "minmax"}

        def attribute(self, model: nn.Module, inputs: Tensor, call: Call) -> Tensor:
            overlap.enter(id(model))
            try:
                call.resolve(self.forward(model, inputs))
                time.sleep(overlap.sleep)
                return torch.rand(inputs.shape[0], 1, *inputs.shape[-2:], generator=torch.Generator().manual_seed(0))
            finally:
                overlap.leave(id(model))

    try:
        yield overlap
    finally:
        METHODS.pop("serve_probe", None)


def _png(size: int = 32) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (size, size), (120, 60, 200)).save(buf, "PNG")
    return buf.getvalue()


def _fire(client: TestClient, n: int, model: str, method: str = "serve_probe") -> list[Any]:
    data = _png()

    def one(_: int) -> Any:
        return client.post("/api/explain", files={"image": ("x.png", data)}, data={"model": model, "method": method})

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(one, range(n)))


def test_concurrent_requests_never_overlap_on_one_model(probe: _Overlap) -> None:
    app = create_app(["tiny_cnn", "tiny_vgg"], queue_size=16, workers=2)
    with TestClient(app) as client:
        answers = _fire(client, 8, "tiny_cnn") + _fire(client, 4, "tiny_vgg")
    assert [r.status_code for r in answers] == [200] * 12, [r.text for r in answers if r.status_code != 200]
    assert all(r.json()["method"] == "serve_probe" for r in answers)
    assert probe.peak and max(probe.peak.values()) == 1  # never two explanations on one model object at once
    assert len(probe.peak) == 4  # two copies of each model, one per worker
    assert probe.total_peak >= 2  # ... which did run side by side: the API serves requests concurrently
    assert all(t.startswith(("seewhy-model-tiny_cnn-", "seewhy-model-tiny_vgg-")) for t in probe.threads)


def test_full_queue_answers_503_with_retry_after(probe: _Overlap) -> None:
    probe.sleep = 0.3  # slow jobs, so that the queue fills
    app = create_app(["tiny_cnn"], queue_size=1, workers=1)
    with TestClient(app) as client:
        answers = _fire(client, 6, "tiny_cnn")
        codes = sorted(r.status_code for r in answers)
        assert 200 in codes and 503 in codes, codes
        assert set(codes) == {200, 503}
        busy = next(r for r in answers if r.status_code == 503)
        assert int(busy.headers["Retry-After"]) >= 1
        assert "full" in busy.json()["detail"]
        health = client.get("/api/health").json()
    assert health["queue"]["capacity"] == 1 and health["queue"]["workers"] == 1
    assert max(probe.peak.values()) == 1
