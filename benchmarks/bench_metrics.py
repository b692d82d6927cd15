"""Seconds per image for every evaluation metric on efficientnet_lite0 at 224 px, against the model's speed limit.

Run:  python benchmarks/bench_metrics.py [--batch 4] [--repeat 3] [--threads 2] [--out benchmarks/results/metrics.md]
      smoke run: python benchmarks/bench_metrics.py --quick --size 96   (1 image, a few steps, nothing written)

The bound of a metric is (its model forwards per image, from the registry's cost) x (the best measured forward: the
model's fastest per-image forward under ``torch.inference_mode()`` over batch sizes 1, 2, 4, 8, 16, the engine's
default and the one it measures, ``seewhy.engine.batch_size_for``, in both memory formats). Every metric is warmed
up once, then the metrics are timed interleaved with the reference, round after round, in one process: the forward
at the best setting runs before every metric, and the best measured forward is the lowest of the sweep and all these
re-measurements. Issue 6 asks deletion and insertion with n steps to run within 1.3x of n x the best forward: the
table gives that ratio (``x n fwd``) next to the ratio to all the forwards the metric makes (n + 1 for a curve).
ROAD adds its imputation (conjugate gradients on the CPU). The sensitivities count explanation calls (Grad-CAM):
their bound is calls x one Grad-CAM call per image (batch ``--batch``, measured interleaved, before each of them).
Localization / complexity need no forward. The attributions are Grad-CAM maps at the default layer, computed once;
the targets are the top-1 classes.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from common import RESULTS, best_forward, engine_batch, environment, interleaved, setup, table, write

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
    best = best_forward(model, x, 1 if args.quick else 3)
    attr = seewhy.explain(model, x, "gradcam", target=target).attributions
    mask = boxes_to_masks([(w // 4, h // 4, 3 * w // 4, 3 * h // 4)] * b, (h, w))
    fns = {"forward": best.step, "gradcam": lambda: seewhy.explain(model, x, "gradcam", target=target)}
    schedule, info = [], {}
    for name, base in FULL.items():
        params = {**base, **QUICK.get(name, {})} if args.quick else base
        spec = METRICS[name]
        extra = {"mask": mask} if "mask" in spec.needs else {}
        fns[name] = lambda name=name, params=params, extra=extra: METRICS[name].fn(model, x, attr, target, **params,
                                                                                   **extra)
        info[name] = (spec.cost({**params, "input_size": (h, w)}), params)
        schedule += ["gradcam" if "method" in spec.needs else "forward", name]
    t = interleaved(fns, args.repeat, schedule=schedule)
    for sec in t["forward"].times:
        best.update(sec / best.images)
    fwd, call = best.seconds, t["gradcam"].min / b
    rows = []
    for name, (forwards, params) in info.items():
        sec = t[name].min / b
        unit = call if "method" in METRICS[name].needs else fwd
        bound = forwards * unit
        steps = forwards - 1 if name in CURVES else None  # a curve of n steps makes n + 1 forwards
        shown = ", ".join(f"{k}={v}" for k, v in params.items() if k != "seed") or "defaults"
        rows.append((name, f"{sec * 1000:.1f}", f"{t[name].median / b * 1000:.1f}", forwards, f"{bound * 1000:.1f}",
                     f"{sec / bound:.2f}" if bound else "-", f"{sec / (steps * fwd):.2f}" if steps else "-", shown))
    lines = [
        f"# Evaluation metrics: efficientnet_lite0, {h}x{w}, {b} image(s)",
        "",
        f"Best measured forward: {fwd * 1000:.2f} ms/image at {best.where} (the engine measured "
        f"{engine_batch(model, x)} as its batch size); one Grad-CAM call: {call * 1000:.1f} ms/image (batch {b}). "
        "Bound = forwards (for the sensitivities: Grad-CAM calls) x that time.",
        "",
        table(["metric", "ms / image (min)", "median", "forwards / image", "bound (ms)", "x bound", "x n fwd",
               "settings"], rows),
        "",
        f"Fastest of {args.repeat} interleaved round(s) after one warm-up call of each; the reference (the forward "
        "at the best setting, or a Grad-CAM call before a sensitivity) ran before every metric in every round.",
        "",
        environment(f"; --repeat {args.repeat}" + (" --quick" if args.quick else "") + "."),
    ]
    write("\n".join(lines), None if args.quick or args.out == "-" else Path(args.out))


if __name__ == "__main__":
    main()
