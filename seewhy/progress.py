"""Progress of long work: a tqdm bar on a terminal or in Jupyter, plain log lines otherwise, nothing when quiet.

One helper for every loop that can take more than a few seconds: the engine's perturbed evaluations, the gradient
chunking (integrated-gradients steps, SmoothGrad samples), the metrics (curve points, imputations, re-runs of a
method) and the command line (methods x batches, metrics). Where it goes:

- stderr is a terminal, or the code runs in Jupyter: a bar (``tqdm``, shown only after ``delay`` seconds, removed
  when done unless ``leave``), so short work prints nothing;
- otherwise (CI, ``> log``): a line on the ``seewhy`` logger at INFO at most every ``every`` seconds while the work
  lasts (``lime: 300/1000 evaluations (30%), 12 s, about 28 s left``), and :meth:`Progress.done` lines that say what
  finished and how long it took (the command line writes one per (method, batch) and per metric);
- :func:`set_progress` (``False``) or :func:`quiet` silences both; the CLI's ``-q`` does that.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

log = logging.getLogger("seewhy")

#: seconds before a bar appears (shorter work shows nothing)
DELAY = 2.0
#: seconds between two log lines of the same work when stderr is not a terminal
EVERY = 20.0

_enabled: bool | None = None  # None: automatic (bars on a terminal / in Jupyter, log lines otherwise)


def set_progress(enabled: bool | None) -> bool | None:
    """Turn progress reports on (``True``: bars even without a terminal), off (``False``) or automatic (``None``);
    returns the previous setting."""
    global _enabled
    previous, _enabled = _enabled, enabled
    return previous


@contextmanager
def quiet() -> Iterator[None]:
    """No bar and no progress line inside the block (the previous setting comes back afterwards)."""
    previous = set_progress(False)
    try:
        yield
    finally:
        set_progress(previous)


def mode() -> str:
    """``"bar"``, ``"log"`` or ``"off"``: how progress is reported right now."""
    if _enabled is False:
        return "off"
    if _enabled is True or _interactive():
        return "bar"
    return "log"


def _interactive() -> bool:
    if "ipykernel" in sys.modules:
        return True
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # a closed or replaced stderr
        return False


class Progress:
    """Progress of one piece of work of ``total`` units; see the module docstring. Use :func:`progress`."""

    def __init__(self, total: int, desc: str, unit: str = "step", *, leave: bool = False, delay: float | None = None,
                 every: float | None = None, enabled: bool = True) -> None:
        self.total = max(0, int(total))
        self.desc = desc
        self.unit = unit
        self.n = 0
        self.mode = mode() if enabled else "off"
        self.start = time.perf_counter()
        self._every = EVERY if every is None else every
        self._last_line = self.start
        self._postfix = ""
        self._bar: Any = None
        if self.mode == "bar":
            if "ipykernel" in sys.modules:
                from tqdm.auto import tqdm
            else:
                from tqdm import tqdm
            self._bar = tqdm(total=self.total, desc=desc, unit=unit, leave=leave, file=sys.stderr,
                             delay=DELAY if delay is None else delay, dynamic_ncols=True)

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def update(self, n: int = 1) -> None:
        """``n`` more units are done."""
        self.n += int(n)
        if self._bar is not None:
            self._bar.update(n)
        elif self.mode == "log":
            now = time.perf_counter()
            if now - self._last_line >= self._every and self.n < self.total:
                self._last_line = now
                log.info("%s", self.status())

    def status(self) -> str:
        """``desc: n/total unit (pct), elapsed, about ... left``."""
        elapsed = self.elapsed
        text = f"{self.desc}{f' ({self._postfix})' if self._postfix else ''}: {self.n}/{self.total} {self.unit}"
        if self.total:
            text += f" ({100 * self.n / self.total:.0f}%)"
        text += f", {format_seconds(elapsed)}"
        if 0 < self.n < self.total:
            text += f", about {format_seconds(elapsed * (self.total - self.n) / self.n)} left"
        return text

    def set_postfix(self, text: str) -> None:
        """What is being worked on now (e.g. the method's name), shown on the bar and in log lines."""
        self._postfix = text
        if self._bar is not None:
            self._bar.set_postfix_str(text, refresh=False)

    def done(self, message: str, *args: Any) -> None:
        """Say that a step finished (``message % args``): a log line, unless a bar shows progress or it is quiet."""
        if self.mode == "log":
            log.info(message, *args)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


@contextmanager
def progress(total: int, desc: str, unit: str = "step", *, leave: bool = False, delay: float | None = None,
             every: float | None = None, enabled: bool = True) -> Iterator[Progress]:
    """Report the progress of ``total`` units of work named ``desc`` (see the module docstring); closed on exit.
    ``delay`` / ``every``: seconds before a bar appears / between log lines (default :data:`DELAY` / :data:`EVERY`);
    ``enabled=False`` reports nothing (for a caller that reports the same work itself)."""
    p = Progress(total, desc, unit, leave=leave, delay=delay, every=every, enabled=enabled)
    try:
        yield p
    finally:
        p.close()


def track(items: Iterable[Any], total: int, desc: str, unit: str = "step", *, enabled: bool = True,
          leave: bool = False) -> Iterator[Any]:
    """Iterate over ``items`` (``total`` of them) and report the progress, one unit per item (see :func:`progress`)."""
    with progress(total, desc, unit, enabled=enabled, leave=leave) as bar:
        for item in items:
            yield item
            bar.update()


def format_seconds(seconds: float) -> str:
    """``0.42 s``, ``12 s``, ``3 min 05 s``, ``1 h 02 min``."""
    if seconds < 10:
        return f"{seconds:.2g} s" if seconds < 1 else f"{seconds:.1f} s"
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"
