"""The bounded job queue of ``seewhy serve``: a fixed number of worker threads per model, each with its own copy.

A model is not thread-safe across hooks (a method adds hooks and flips ``requires_grad`` for the length of a call), so
everything a request does to a model runs in one of that model's worker threads: the model is built there (lazily, on
the first job; once per worker), and each job is a function ``fn(model, spec)`` run there. With ``workers=N`` a lane
has N threads and N independent copies of the model, so no two jobs ever touch one model object at once. A lane holds
at most ``capacity`` waiting jobs; :meth:`Lane.submit` on a full lane raises :class:`QueueFull`, which the app answers
with HTTP 503 and a ``Retry-After`` header.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

log = logging.getLogger("seewhy")

__all__ = ["Lane", "QueueFull", "Workers"]

_STOP = object()


class QueueFull(RuntimeError):
    """A lane's queue is full: try again in ``retry_after`` seconds."""

    def __init__(self, model: str, capacity: int, retry_after: int) -> None:
        self.model, self.capacity, self.retry_after = model, capacity, retry_after
        super().__init__(f"the queue of model {model!r} is full ({capacity} jobs waiting); retry in {retry_after} s")


class Lane:
    """One model's queue and its worker threads (started on the first job).

    ``load() -> (model, spec)`` builds one copy of the model; each worker calls it once, in its own thread.
    """

    def __init__(self, name: str, load: Callable[[], tuple[Any, Any]], *, workers: int = 1, capacity: int = 8) -> None:
        if workers < 1 or capacity < 1:
            raise ValueError(f"workers and capacity must be >= 1, got workers={workers}, capacity={capacity}")
        self.name, self.workers, self.capacity = name, workers, capacity
        self._load = load
        self._queue: queue.Queue = queue.Queue(maxsize=capacity)
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._running = 0
        self._loaded = 0
        self._seconds = 1.0  # running mean of the job durations, for Retry-After
        self._closed = False

    # -- state -----------------------------------------------------------------------------------------
    @property
    def waiting(self) -> int:
        """Jobs in the queue, not yet started."""
        return self._queue.qsize()

    @property
    def running(self) -> int:
        return self._running

    @property
    def loaded(self) -> bool:
        """Whether a worker has built its copy of the model."""
        return self._loaded > 0

    def retry_after(self) -> int:
        """Seconds until a place in the queue is likely free (at least 1)."""
        jobs = self.waiting + self.running
        return max(1, math.ceil(self._seconds * jobs / self.workers))

    # -- jobs ------------------------------------------------------------------------------------------
    def submit(self, fn: Callable[[Any, Any], Any]) -> Future:
        """Queue ``fn(model, spec)``; returns its future. Raises :class:`QueueFull` when ``capacity`` jobs wait."""
        if self._closed:
            raise RuntimeError(f"the workers of model {self.name!r} are stopped")
        self._start()
        future: Future = Future()
        try:
            self._queue.put_nowait((fn, future))
        except queue.Full:
            raise QueueFull(self.name, self.capacity, self.retry_after()) from None
        return future

    def _start(self) -> None:
        with self._lock:
            if self._threads:
                return
            for i in range(self.workers):
                t = threading.Thread(target=self._work, name=f"seewhy-model-{self.name}-{i}", daemon=True)
                t.start()
                self._threads.append(t)

    def _work(self) -> None:
        model = spec = None
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            fn, future = item
            if not future.set_running_or_notify_cancel():
                continue
            with self._lock:
                self._running += 1
            t0 = time.perf_counter()
            try:
                if model is None:
                    model, spec = self._load()
                    with self._lock:
                        self._loaded += 1
                    log.info("model %s loaded in worker %s", self.name, threading.current_thread().name)
                result = fn(model, spec)
            except BaseException as err:  # handed to the request, which answers with it
                future.set_exception(err)
            else:
                future.set_result(result)
            finally:
                seconds = time.perf_counter() - t0
                with self._lock:
                    self._running -= 1
                    self._seconds = 0.8 * self._seconds + 0.2 * seconds
                del item, fn, future  # nothing of a finished job stays alive in the worker

    def close(self, timeout: float | None = 5.0) -> None:
        """Stop the workers after the jobs already queued."""
        self._closed = True
        for _ in self._threads:
            self._queue.put(_STOP)
        for t in self._threads:
            t.join(timeout)


class Workers:
    """The lanes of all served models, by name."""

    def __init__(self, loaders: dict[str, Callable[[], tuple[Any, Any]]], *, workers: int = 1,
                 capacity: int = 8) -> None:
        self.workers, self.capacity = workers, capacity
        self.lanes = {name: Lane(name, load, workers=workers, capacity=capacity) for name, load in loaders.items()}

    def __getitem__(self, name: str) -> Lane:
        return self.lanes[name]

    def submit(self, name: str, fn: Callable[[Any, Any], Any]) -> Future:
        return self.lanes[name].submit(fn)

    def status(self) -> dict[str, Any]:
        return {"size": sum(lane.waiting for lane in self.lanes.values()),
                "running": sum(lane.running for lane in self.lanes.values()),
                "capacity": self.capacity, "workers": self.workers}

    def close(self) -> None:
        for lane in self.lanes.values():
            lane.close()
