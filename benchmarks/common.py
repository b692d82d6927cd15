"""Shared pieces of the benchmark scripts: the photo batch, timing, the reference costs, the Markdown table."""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

import seewhy
from seewhy import zoo
from seewhy.images import BUNDLED, bundled_image

RESULTS = Path(__file__).parent / "results"


def setup(
    doc: str, extra: Callable[[argparse.ArgumentParser], None] | None = None
) -> tuple[argparse.Namespace, torch.nn.Module, torch.Tensor, torch.Tensor]:
    """Parse --batch/--repeat/--threads (plus ``extra`` options), set the thread count, load efficientnet_lite0
    and the photo batch: returns (args, model, x, top-1 targets)."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    if extra is not None:
        extra(parser)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = zoo.load("efficientnet_lite0")
    x = photos(args.batch)
    return args, model, x, model(x).argmax(1).detach()


def photos(batch: int, model: str = "efficientnet_lite0") -> torch.Tensor:
    """``batch`` bundled photos preprocessed for the zoo model (cycling through chelsea, coffee, ...)."""
    spec = zoo.get_spec(model)
    return torch.stack([spec.preprocess(bundled_image(BUNDLED[i % len(BUNDLED)])) for i in range(batch)])


def timed(fn: Callable[[], object], repeat: int, warmup: int = 1, best: bool = False) -> float:
    """Wall time of ``fn`` in seconds over ``repeat`` calls after ``warmup`` calls: the median, or with ``best``
    the minimum (the least disturbed run, on a shared machine)."""
    for _ in range(int(warmup)):
        fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times) if best else statistics.median(times)


def forward_backward_step(model: torch.nn.Module, x: torch.Tensor) -> Callable[[], None]:
    """A training-style step: forward with gradients, backward of the top-1 scores to the input and every
    parameter (the reference cost of the gradient-based benchmarks)."""
    target = model(x).argmax(1).detach()

    def step() -> None:
        leaf = x.clone().requires_grad_(True)
        model(leaf).gather(1, target[:, None]).sum().backward()
        model.zero_grad(set_to_none=True)

    return step


def forward_backward_time(model: torch.nn.Module, x: torch.Tensor, repeat: int, best: bool = False) -> float:
    """Seconds per image of :func:`forward_backward_step` (median of ``repeat`` runs, or with ``best`` the
    fastest)."""
    return timed(forward_backward_step(model, x), repeat, best=best) / x.shape[0]


def forward_time(model: torch.nn.Module, x: torch.Tensor, repeat: int, channels_last: bool = True) -> float:
    """Seconds per image of the best forward: inference_mode, channels_last input."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    xf = x.contiguous(memory_format=fmt)

    def run() -> object:
        with torch.inference_mode():
            return model(xf)

    return timed(run, repeat) / x.shape[0]


def write_table(rows: list[tuple[str, float, str]], ref: float, ref_name: str, note: str, out: Path) -> str:
    """Markdown table of (what, seconds per image, settings) with the ratio to ``ref``; printed and written."""
    lines = [
        f"| what | ms / image | x {ref_name} | settings |",
        "|---|---:|---:|---|",
        *(f"| {n} | {s * 1000:.1f} | {s / ref:.2f} | {p} |" for n, s, p in rows),
        "",
        f"{note}; torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{platform.processor() or platform.machine()}, seewhy {seewhy.__version__}.",
    ]
    text = "\n".join(lines)
    print(text)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")
    return text
