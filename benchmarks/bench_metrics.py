"""Seconds per image for every evaluation metric on efficientnet_lite0 at 224 px, against the model's speed limit.

Run:  python benchmarks/bench_metrics.py [--batch 4] [--repeat 1] [--threads 2] [--out benchmarks/results/metrics.md]
      python benchmarks/bench_metrics.py --quick      (a smoke run: 1 image, a few steps, nothing written)

The bound of a metric is (its model forwards per image, from the registry's cost) x (the model's best per-image
forward: the best over batch sizes 1..16 and both memory formats under ``torch.inference_mode()``, re-measured
before and after each metric, the lowest kept). Issue 6 asks deletion and insertion with n steps to run within 1.3x of
n x the best forward: the table gives that ratio (``x n fwd``) next to the ratio to all the forwards the metric makes
(n + 1 for a curve). ROAD adds its imputation (conjugate gradients on the CPU), the sensitivities count explanation
calls (Grad-CAM, forward + backward) rather than forwards, and localization / complexity need no forward. The
attributions are Grad-CAM maps at the default layer, computed once; the targets are the top-1 classes.
"""

from __future__ import annotations

import argparse
import platform
from pathlib import Path

import torch
from bench_perturbation import best_forward
from common import RESULTS, setup, timed

import seewhy
from seewhy.metrics import METRICS
from seewhy.metrics.localization import boxes_to_masks

FULL = {
    "deletion_auc": {},
    "insertion_auc": {},
    "pixel_flipping_morf": {},
    "road": {"seed": 0},
    "faithfulness_correlation": {"seed": 0},
    "infidelity": {"seed": 0},
    "max_sensitivity": {"method": "gradcam", "seed": 0},
    "avg_sensitivity": {"method": "gradcam", "seed": 0},
    "pointing_game": {},
    "energy_pointing_game": {},
    "relevance_mass_accuracy": {},
    "relevance_rank_accuracy": {},
    "sparseness": {},
    "entropy_complexity": {},
}
CURVES = ("deletion_auc", "insertion_auc", "pixel_flipping_morf")
QUICK = {
    "deletion_auc": {"n_steps": 4},
    "insertion_auc": {"n_steps": 4},
    "pixel_flipping_morf": {"n_steps": 4},
    "road": {"fractions": (0.2, 0.8), "seed": 0},
    "faithfulness_correlation": {"n_runs": 3, "seed": 0},
    "infidelity": {"n_samples": 2, "seed": 0},
    "max_sensitivity": {"method": "gradcam", "n_samples": 2, "seed": 0},
    "avg_sensitivity": {"method": "gradcam", "n_samples": 2, "seed": 0},
}


def options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="1 image, few steps, print only (a smoke run)")
    parser.add_argument("--out", default=str(RESULTS / "metrics.md"))


def main() -> None:
    args, model, x, target = setup(__doc__, options)
    if args.quick:
        x, target, args.repeat = x[:1], target[:1], 1
    b, h, w = x.shape[0], x.shape[-2], x.shape[-1]
    per_image, where, forward_again = best_forward(model, x, 1 if args.quick else 3)
    attr = seewhy.explain(model, x, "gradcam", target=target).attributions
    mask = boxes_to_masks([(w // 4, h // 4, 3 * w // 4, 3 * h // 4)] * b, (h, w))
    rows = []
    for name, base in FULL.items():
        params = {**base, **QUICK.get(name, {})} if args.quick else base
        spec = METRICS[name]
        extra = {"mask": mask} if "mask" in spec.needs else {}
        forwards = spec.cost({**params, "input_size": (h, w)})

        def run(name: str = name, params: dict = params, extra: dict = extra) -> object:
            return METRICS[name].fn(model, x, attr, target, **params, **extra)

        ref = min(per_image, forward_again())
        sec = timed(run, args.repeat, warmup=0 if args.quick else 1, best=True) / b
        ref = min(ref, forward_again())
        steps = forwards - 1 if name in CURVES else None  # a curve of n steps makes n + 1 forwards
        shown = ", ".join(f"{k}={v}" for k, v in params.items() if k != "seed") or "defaults"
        rows.append((name, sec, forwards, ref, steps, shown))

    lines = [
        f"Best forward: {per_image * 1000:.2f} ms/image ({where}); bound = forwards x the best forward, re-measured "
        "before and after each metric (the lowest of the three).",
        "",
        "| metric | ms / image | forwards / image | bound (ms) | x bound | x n fwd | settings |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for name, sec, forwards, ref, steps, shown in rows:
        bound = forwards * ref
        ratio = f"{sec / bound:.2f}" if bound else "-"
        per_step = f"{sec / (steps * ref):.2f}" if steps else "-"
        ms = f"{sec * 1000:.1f} | {forwards} | {bound * 1000:.1f}"
        lines.append(f"| {name} | {ms} | {ratio} | {per_step} | {shown} |")
    lines += [
        "",
        f"efficientnet_lite0, {h}x{w}, {b} image(s), {torch.get_num_threads()} threads, torch {torch.__version__}, "
        f"{platform.processor() or platform.machine()}, seewhy {seewhy.__version__}; best of {args.repeat} run(s). "
        "Sensitivities: 'forwards' are Grad-CAM calls (forward + backward each).",
    ]
    text = "\n".join(lines)
    print(text)
    if not args.quick:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")


if __name__ == "__main__":
    main()
