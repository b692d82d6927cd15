"""Milliseconds per image and peak memory of every gradient method on efficientnet_lite0 at 224 px, with Captum.

Run:  python benchmarks/bench_gradient.py [--batch 4] [--repeat 3] [--threads 2] [--steps 50] [--no-memory]
      smoke run: python benchmarks/bench_gradient.py --size 96 --repeat 1 --steps 4 --out -

Every ratio is to the input-only forward+backward (parameters frozen, gradient of the target scores with respect
to the input only, as seewhy's methods do); the training-style step (backward to every parameter too) is a second
column. The references, seewhy's methods and Captum's (when installed: ``pip install captum``; not a seewhy
dependency) are warmed up and then timed interleaved, round after round, in one process. Captum's
IntegratedGradients and NoiseTunnel(Saliency) get the same chunk as seewhy (``seewhy.engine.default_batch_size(x,
backward=True)``); Captum rounds it down to whole steps per pass (rows = steps x images). Captum runs on the
model as a user has it (eval mode, parameters requiring grad); ``--captum-frozen`` adds rows with the parameters
frozen. Peak memory: one cold call per fresh process (see ``common.MEMORY``). Writes benchmarks/results/gradient.md.
"""

from __future__ import annotations

import argparse
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from common import (
    INPUT_ONLY,
    MEMORY,
    RESULTS,
    TRAINING,
    environment,
    forward_step,
    input_only_step,
    interleaved,
    ms,
    peak_memory,
    setup,
    table,
    training_step,
    write,
)

import seewhy
from seewhy.engine import default_batch_size
from seewhy.hooks import model_state

REF, TRAIN = "input-only forward+backward (reference)", "training-style forward+backward"


def cases(model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor, opts: dict
          ) -> dict[str, tuple[Callable[[], object], str]]:
    """Every timed call: name -> (function, settings). ``opts``: steps (IG steps, SmoothGrad samples),
    captum_frozen."""
    steps, b = int(opts.get("steps", 50)), x.shape[0]
    chunk = default_batch_size(x, backward=True)
    fwd, n_fwd = forward_step(model, x, b, True, images=b)
    out: dict[str, tuple[Callable[[], object], str]] = {
        REF: (input_only_step(model, x, target), f"batch {b}"),
        TRAIN: (training_step(model, x, target), f"batch {b}"),
        "forward (inference_mode, channels_last)": (fwd, f"batch {b}"),
    }
    methods = {
        "saliency": {},
        "input_x_gradient": {},
        "guided_backprop": {},
        "deconvnet": {},
        "integrated_gradients": {"n_steps": steps},
        "smoothgrad": {"n_samples": steps, "seed": 0},
    }
    per = max(1, chunk // b)  # Captum's unit is steps (samples) per input: rows per pass = per x b
    for name, params in methods.items():
        shown = ", ".join(f"{k}={v}" for k, v in params.items() if k != "seed")
        if len(params):
            shown += f", chunk {chunk} rows (default)"
        out[f"seewhy {name}"] = (lambda name=name, params=params: seewhy.explain(model, x, name, target=target,
                                                                                   **params), shown)
        if len(params) and per * b != chunk:  # the rows per pass Captum runs with the same chunk
            same = {**params, "batch_size": per * b}
            out[f"seewhy {name} (Captum's rows per pass)"] = (
                lambda name=name, same=same: seewhy.explain(model, x, name, target=target, **same),
                shown.replace(f"chunk {chunk} rows (default)", f"batch_size={per * b}"))
    try:
        from captum.attr import InputXGradient, IntegratedGradients, NoiseTunnel, Saliency
    except ImportError:
        return out
    stdev = float(0.15 * (x.max() - x.min()))  # seewhy's noise=0.15 of the value range (per image there)
    captum_calls: dict[str, tuple[Callable[[], object], str]] = {
        "captum Saliency": (lambda: Saliency(model).attribute(x, target=target, abs=False), "abs=False"),
        "captum InputXGradient": (lambda: InputXGradient(model).attribute(x, target=target), ""),
        "captum IntegratedGradients": (
            lambda: IntegratedGradients(model).attribute(x, target=target, n_steps=steps, method="gausslegendre",
                                                         internal_batch_size=chunk),
            f"n_steps={steps}, gausslegendre, internal_batch_size={chunk} ({per * b} rows per pass)"),
        "captum NoiseTunnel(Saliency) smoothgrad": (
            lambda: NoiseTunnel(Saliency(model)).attribute(x, target=target, abs=False, nt_type="smoothgrad",
                                                           nt_samples=steps, nt_samples_batch_size=per,
                                                           stdevs=stdev),
            f"nt_samples={steps}, nt_samples_batch_size={per} ({per * b} rows per pass)"),
    }
    out.update(captum_calls)
    if opts.get("captum_frozen"):
        for name, (fn, shown) in captum_calls.items():
            def frozen(fn: Callable[[], object] = fn) -> object:
                with model_state(model):
                    return fn()

            out[f"{name} (parameters frozen)"] = (frozen, shown)
    return out


def memory_case(name: str | None, model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor,
                opts: dict) -> Callable[[], object]:
    """The call ``name`` for :func:`common.peak_memory` (None: the baseline, everything built, nothing run)."""
    built = cases(model, x, target, opts)
    return built[name][0] if name is not None else (lambda: None)


def main() -> None:
    def options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--steps", type=int, default=50, help="IG steps and SmoothGrad samples (default 50)")
        p.add_argument("--no-memory", action="store_true", help="skip the peak-memory column")
        p.add_argument("--captum-frozen", action="store_true", help="also run Captum with frozen parameters")
        p.add_argument("--out", default=str(RESULTS / "gradient.md"), help="'-' to print only")

    args, model, x, target = setup(__doc__, options)
    warnings.filterwarnings("ignore", message="Input Tensor 0 did not already require gradients")  # Captum's note
    b = x.shape[0]
    opts = {"steps": args.steps, "captum_frozen": args.captum_frozen}
    calls = cases(model, x, target, opts)
    t = interleaved({k: fn for k, (fn, _) in calls.items()}, args.repeat)
    ref, train = t[REF].min, t[TRAIN].min
    rows = []
    for name, (_, shown) in calls.items():
        mem = "-"
        if not args.no_memory:
            mb = peak_memory("bench_gradient", name, batch=b, threads=args.threads, size=args.size, opts=opts)
            mem = f"{mb:.0f}"
        rows.append((name, ms(t[name].min / b), ms(t[name].median / b), f"{t[name].min / ref:.2f}",
                     f"{t[name].min / train:.2f}", mem, shown))
    text = "\n".join([
        f"# Gradient methods: efficientnet_lite0, {args.size}x{args.size}, batch {b}",
        "",
        table(["what", "ms / image (min)", "median", "x input-only", "x training-style", "peak MB", "settings"],
              rows),
        "",
        f"Ratios: fastest over fastest of {args.repeat} interleaved rounds after one warm-up call of each.",
        "",
        f"- {INPUT_ONLY}.",
        f"- {TRAINING}.",
        f"- {MEMORY}." if not args.no_memory else "- peak memory not measured (--no-memory).",
        "- Captum runs on the model as loaded (eval mode, parameters requiring grad) unless marked frozen; its "
        "IntegratedGradients and NoiseTunnel get seewhy's chunk, rounded down by Captum to whole steps per pass; "
        "the rows marked \"Captum's rows per pass\" run seewhy at that same number of rows.",
        "",
        environment(f"; --repeat {args.repeat} --steps {args.steps}."),
    ])
    write(text, None if args.out == "-" else Path(args.out))


if __name__ == "__main__":
    main()
