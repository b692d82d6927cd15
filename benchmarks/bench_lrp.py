"""Milliseconds per image for every LRP preset on efficientnet_lite0 at 224 px, against an input-only forward+backward.

Run:  python benchmarks/bench_lrp.py [--batch 4] [--repeat 10] [--threads 2] [--presets NAME,...] [--no-merged]
      smoke run: python benchmarks/bench_lrp.py --size 96 --repeat 1 --presets epsilon --out -

The target is LRP <= 1.4x the input-only forward+backward (parameters frozen, gradient of the target scores with
respect to the input only, as seewhy's methods do); the training-style step (backward to every parameter too) is a
second column. Each preset runs with the model's default canonizers ("auto": for efficientnet_lite0 BatchNorms
kept, pass rule) and with every BatchNorm merged (``canonizers=[MergeBatchNorm()]``). Single timings on a shared
2-core machine drift by 20-50%, so the references and the methods run interleaved, round after round, after one
warm-up call each; each timed call follows an untimed call of the same function (so no call inherits another's
memory state), and each side keeps its fastest run (the least disturbed one, on both sides of the ratio).

Fresh memory is expensive on such machines (every new page faults): glibc returns freed memory to the system and
takes it back on the next call. PyTorch's ``THP_MEM_ALLOC_ENABLE=1``, glibc's ``MALLOC_TRIM_THRESHOLD_`` /
``MALLOC_MMAP_THRESHOLD_`` or jemalloc / tcmalloc (``LD_PRELOAD``) make it cheaper; with one of these variables
set, the table goes to benchmarks/results/lrp_tuned.md, else to benchmarks/results/lrp.md.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path

from common import (
    INPUT_ONLY,
    RESULTS,
    TRAINING,
    environment,
    input_only_step,
    interleaved,
    ms,
    setup,
    table,
    training_step,
    write,
)

import seewhy
from seewhy.methods.lrp import PRESETS, MergeBatchNorm
from seewhy.methods.lrp.method import model_defaults

REF, TRAIN = "input-only forward+backward (reference)", "training-style forward+backward"
TARGET = 1.4
TUNING = ("THP_MEM_ALLOC_ENABLE", "MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "LD_PRELOAD")


def main() -> None:
    def options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--presets", default=",".join(PRESETS), help="comma-separated presets (default: all)")
        p.add_argument("--no-merged", action="store_true", help="skip the BatchNorm-merged variants")
        p.add_argument("--out", default=None, help="'-' to print only (default: results/lrp.md or lrp_tuned.md)")

    args, model, x, target = setup(__doc__, options)
    b = x.shape[0]
    auto_composite, _ = model_defaults(model)
    calls: dict[str, tuple[Callable[[], object], str]] = {
        REF: (input_only_step(model, x, target), ""),
        TRAIN: (training_step(model, x, target), ""),
        "seewhy input_x_gradient": (lambda: seewhy.explain(model, x, "input_x_gradient", target=target), ""),
        "seewhy lrp defaults (with ledger)": (lambda: seewhy.explain(model, x, "lrp", target=target),
                                              f"composite=auto ({auto_composite}), canonizers=auto, ledger=True"),
    }
    for canon in ("auto", "merged")[: 1 if args.no_merged else 2]:
        for name in args.presets.split(","):
            params: dict = {"composite": name, "ledger": False}
            if canon == "merged":
                params["canonizers"] = [MergeBatchNorm()]
            calls[f"seewhy lrp {name} ({canon})"] = (
                lambda params=params: seewhy.explain(model, x, "lrp", target=target, **params),
                f"canonizers={canon}, ledger=False")
    t = interleaved({k: fn for k, (fn, _) in calls.items()}, args.repeat, settle=True)
    ref, train = t[REF].min, t[TRAIN].min
    rows, missed = [], []
    for name, (_, shown) in calls.items():
        ratio = t[name].min / ref
        if name.startswith("seewhy lrp") and ratio > TARGET:
            missed.append(f"{name[len('seewhy lrp '):]} {ratio:.2f}x")
        rows.append((name, ms(t[name].min / b), ms(t[name].median / b), f"{ratio:.2f}", f"{t[name].min / train:.2f}",
                     shown))
    tuned = [k for k in TUNING if os.environ.get(k)]
    verdict = (f"Target LRP <= {TARGET}x the input-only reference: **missed** by " + ", ".join(missed) + "."
               if missed else f"Target LRP <= {TARGET}x the input-only reference: met by every preset measured.")
    text = "\n".join([
        f"# LRP presets: efficientnet_lite0, {args.size}x{args.size}, batch {b}",
        "",
        table(["what", "ms / image (min)", "median", "x input-only", "x training-style", "settings"], rows),
        "",
        verdict,
        "",
        f"Ratios: fastest over fastest of {args.repeat} interleaved rounds after one warm-up call of each; every "
        "timed call follows an untimed call of the same function.",
        "",
        f"- {INPUT_ONLY}.",
        f"- {TRAINING}.",
        "- " + (f"{' and '.join(tuned)} set." if tuned else "default glibc allocator settings."),
        "",
        environment(f"; --repeat {args.repeat}."),
    ])
    out = args.out or str(RESULTS / ("lrp_tuned.md" if tuned else "lrp.md"))
    write(text, None if out == "-" else Path(out))


if __name__ == "__main__":
    main()
