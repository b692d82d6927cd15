"""Records shared by the runs and the reports, and the one loop that runs methods over batches of images.

:func:`explain_batches` is what ``seewhy explain`` and :func:`seewhy.evaluate` both run: every method over every
batch, timed, with progress, a failing method recorded (and the others kept). :class:`MethodRun` holds one method's
result; :class:`Table` and :class:`Figure` are the plain records a report shows (methods contribute tables through
:meth:`seewhy.core.Method.report_tables`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .core import Explanation, explain
from .progress import format_seconds, progress

log = logging.getLogger("seewhy")

@dataclass(frozen=True)
class MethodRun:
    """One method over all images: its explanations, one entry per batch and in image order, and the wall time
    of each batch in seconds. An entry is one :class:`~seewhy.core.Explanation`, or a sequence of them covering
    the same images, one per class rank (rank 0 the best class: three for ``target="top3"``). A method that
    failed has no explanations and an ``error`` message."""

    name: str
    explanations: Sequence[Explanation | Sequence[Explanation]] = ()
    seconds: Sequence[float] = ()
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and bool(self.explanations)

    def batches(self) -> list[tuple[Explanation, ...]]:
        """The entries as tuples of Explanations, one per class rank, checked: the same images in every rank and
        the same number of ranks in every batch.

        Raises:
            TypeError: an entry is neither an Explanation nor a sequence of them.
            ValueError: the ranks of a batch cover different images, or batches differ in their number of ranks.
        """
        out: list[tuple[Explanation, ...]] = []
        for b, entry in enumerate(self.explanations):
            exps = (entry,) if isinstance(entry, Explanation) else tuple(entry)
            if not exps or not all(isinstance(e, Explanation) for e in exps):
                raise TypeError(f"method {self.name!r}, batch {b}: expected an Explanation or a non-empty sequence of "
                                f"Explanations (one per class rank), got {type(entry).__name__}")
            first = exps[0]
            for r, e in enumerate(exps[1:], 1):
                n0, n = first.attributions.shape[0], e.attributions.shape[0]
                if n != n0 or e.scores.shape[:1] != first.scores.shape[:1]:
                    raise ValueError(f"method {self.name!r}, batch {b}: class rank {r} explains {n} images, rank 0 "
                                     f"explains {n0}; every rank of a batch must cover the same images")
                if e.inputs is not None and first.inputs is not None and (
                        e.inputs.shape != first.inputs.shape or not torch.equal(e.inputs, first.inputs)):
                    raise ValueError(f"method {self.name!r}, batch {b}: class rank {r} was computed on other inputs "
                                     "than rank 0; every rank of a batch must explain the same images")
            out.append(exps)
        ranks = sorted({len(e) for e in out})
        if len(ranks) > 1:
            raise ValueError(f"method {self.name!r}: its batches have {ranks} class ranks; every batch needs the same "
                             "number of Explanations (one per class rank)")
        return out


@dataclass(frozen=True)
class Table:
    """A plain table for the report (metrics, for instance): cells are numbers or strings."""

    title: str
    columns: Sequence[str]
    rows: Sequence[Sequence[Any]]
    note: str = ""


@dataclass(frozen=True)
class Figure:
    """A picture for the report (a plot, a grid of maps): uint8 (H,W,3), embedded as PNG with a caption."""

    title: str
    image: np.ndarray
    caption: str = ""


def explain_batches(
    model: nn.Module,
    batches: Sequence[Tensor],
    methods: Sequence[str],
    params: Mapping[str, Mapping[str, Any]] | None = None,
    target: Any = "top1",
    *,
    batch_targets: Sequence[Any] | None = None,
    bar: Any = None,
) -> Iterator[MethodRun]:
    """Run each method over every batch, timing each call; yields one :class:`MethodRun` per method as soon as it is
    done (so a caller can score it before the next method runs). A method that fails is logged and yielded with its
    error; the other methods go on.

    ``params``: ``{method: hyperparameters}``; ``target``: the target spec of every batch, or ``batch_targets`` one
    spec per batch (per-image targets split by batch). ``bar``: a :mod:`seewhy.progress` bar to advance by one per
    batch (default: one of its own)."""
    params = params or {}
    if batch_targets is not None and len(batch_targets) != len(batches):
        raise ValueError(f"got {len(batch_targets)} batch targets for {len(batches)} batches")
    with ExitStack() as stack:
        if bar is None:
            bar = stack.enter_context(progress(len(methods) * len(batches), "explaining", "batches", delay=0))
        for m in methods:
            bar.set_postfix(m)
            exps, seconds = [], []
            try:
                for b, x in enumerate(batches):
                    t0 = time.perf_counter()
                    spec = batch_targets[b] if batch_targets is not None else target
                    exps.append(explain(model, x, m, target=spec, **dict(params.get(m, {}))))
                    seconds.append(time.perf_counter() - t0)
                    bar.update()
                    bar.done("%s: batch %d/%d (%d image(s)) in %s", m, b + 1, len(batches), x.shape[0],
                             format_seconds(seconds[-1]))
            except Exception as err:  # one broken method must not lose the others' results
                log.debug("method %s failed", m, exc_info=True)
                log.error("method %s failed: %s: %s", m, type(err).__name__, err)
                bar.update(len(batches) - len(exps))
                yield MethodRun(m, error=f"{type(err).__name__}: {err}")
                continue
            yield MethodRun(m, exps, seconds)
