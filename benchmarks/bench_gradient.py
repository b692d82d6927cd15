"""Milliseconds per image for every gradient method on efficientnet_lite0 at 224 px, next to one forward+backward.

Run:  python benchmarks/bench_gradient.py [--batch 4] [--repeat 3] [--threads 2] [--out benchmarks/results/gradient.md]

The reference "forward+backward" is a training-style step: a forward with gradients and a backward that
computes the gradient of the target scores for the input and every parameter. Captum's IntegratedGradients
is timed with the same settings when captum is installed (``pip install captum``; not a seewhy dependency).
The table is written as Markdown (the README shows it).
"""

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

METHODS: dict[str, dict] = {
    "saliency": {},
    "input_x_gradient": {},
    "guided_backprop": {},
    "deconvnet": {},
    "integrated_gradients": {"n_steps": 50},
    "smoothgrad": {"n_samples": 50, "seed": 0},
}


def timed(fn: Callable[[], object], repeat: int) -> float:
    """Median wall time of ``fn`` in seconds, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "gradient.md"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    spec = zoo.get_spec("efficientnet_lite0")
    model = zoo.load("efficientnet_lite0")
    names = [BUNDLED[i % len(BUNDLED)] for i in range(args.batch)]
    x = torch.stack([spec.preprocess(bundled_image(n)) for n in names])
    b = x.shape[0]
    target = model(x).argmax(1).detach()

    def forward_backward() -> None:
        leaf = x.clone().requires_grad_(True)
        model(leaf).gather(1, target[:, None]).sum().backward()
        model.zero_grad(set_to_none=True)

    def forward(fmt: torch.memory_format) -> Callable[[], object]:
        xf = x.contiguous(memory_format=fmt)

        def run() -> object:
            with torch.inference_mode():
                return model(xf)

        return run

    ref = timed(forward_backward, args.repeat) / b
    rows = [
        ("forward (inference_mode)", timed(forward(torch.contiguous_format), args.repeat) / b, ""),
        ("forward (inference_mode, channels_last)", timed(forward(torch.channels_last), args.repeat) / b, ""),
        ("forward+backward (reference)", ref, ""),
    ]
    for name, params in METHODS.items():
        expanded = params.get("n_steps", params.get("n_samples", 1))
        sec = timed(lambda name=name, params=params: seewhy.explain(model, x, name, target=target, **params),
                    args.repeat if expanded == 1 else 1) / b
        rows.append((f"seewhy {name}", sec, ", ".join(f"{k}={v}" for k, v in params.items())))
    try:
        from captum.attr import IntegratedGradients, Saliency
    except ImportError:
        captum = None
    else:
        import captum

        model.eval()
        rows.append(("captum Saliency", timed(lambda: Saliency(model).attribute(x, target=target), args.repeat) / b, ""))
        ig = IntegratedGradients(model)
        rows.append((
            "captum IntegratedGradients",
            timed(lambda: ig.attribute(x, target=target, n_steps=50, method="gausslegendre"), 1) / b,
            "n_steps=50, gausslegendre, internal_batch_size=None",
        ))

    lines = [
        "| what | ms / image | x forward+backward | settings |",
        "|---|---:|---:|---|",
        *(f"| {n} | {s * 1000:.1f} | {s / ref:.2f} | {p} |" for n, s, p in rows),
        "",
        f"efficientnet_lite0, 224x224, batch {b}, {args.threads} threads, torch {torch.__version__}, "
        f"{platform.processor() or platform.machine()}, seewhy {seewhy.__version__}"
        + (f", captum {captum.__version__}" if captum else "")
        + f"; median of {args.repeat} runs (1 run for 50-step methods).",
    ]
    text = "\n".join(lines)
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")


if __name__ == "__main__":
    main()
