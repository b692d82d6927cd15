"""Perturbation and surrogate methods on efficientnet_lite0 at 224 px, against the model's speed limit.

Run:  python benchmarks/bench_perturbation.py [--images 1] [--threads 2] [--repeat 3] [--samples 500]
                                              [--rise-masks 1000] [--captum-ppe 1,engine] [--no-captum]
      smoke run: python benchmarks/bench_perturbation.py --size 96 --repeat 1 --samples 40 --rise-masks 40 --out -

The bound of a black-box method is (its number of model evaluations) x (the best measured forward): the model's
fastest per-image forward under ``torch.inference_mode()`` over batch sizes 1, 2, 4, 8, 16, the engine's default and
the one the engine measures (``seewhy.engine.batch_size_for``), in both memory formats. Evaluations count every
image that goes through the model, including the forward on the original inputs. Every method is warmed up once
(that call also counts its evaluations), then the methods are timed interleaved with the reference, round after
round, in one process: the forward at the best setting runs before every method, and the best measured forward is
the lowest of the sweep and all these re-measurements. The target is a ratio <= 1.3; a ratio under 1 would mean the
bound missed a faster setting. When captum is installed (``pip install captum --no-deps``; not a seewhy dependency)
its Occlusion, FeatureAblation, Lime and KernelShap run at the same settings, on the same superpixels, with
``perturbations_per_eval`` 1 (its default) and the engine's batch size (``--captum-ppe``); Captum's default
surrogate models need scikit-learn, so they get a closed-form torch least-squares model instead (a negligible cost
next to the forwards, as scikit-learn's would be). Writes benchmarks/results/perturbation.md.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import torch
from common import RESULTS, best_forward, engine_batch, environment, interleaved, photos, table, top1, write

import seewhy
from seewhy import engine, zoo
from seewhy.methods.surrogate import weighted_least_squares
from seewhy.segments import superpixels


class TorchLeastSquares:
    """A stand-in for Captum's scikit-learn surrogates (the ``captum._utils.models.Model`` interface): a weighted
    least-squares fit with intercept in closed form, ``alpha`` ridge penalty."""

    def __init__(self, alpha: float = 0.0) -> None:
        self.alpha, self.coef, self.bias = alpha, None, None

    def fit(self, train_data, **kwargs) -> None:
        xs, ys, ws = [], [], []
        for batch in train_data:
            xs.append(batch[0])
            ys.append(batch[1])
            ws.append(batch[2] if len(batch) > 2 else torch.ones(len(batch[0])))
        x, y, w = torch.cat(xs).double(), torch.cat(ys).double().reshape(-1, 1), torch.cat(ws).double().reshape(-1)
        coef, bias = weighted_least_squares(x, y, w, alpha=self.alpha)
        self.coef, self.bias = coef.T.float(), bias.float()

    def representation(self) -> torch.Tensor:
        return self.coef

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x.float() @ self.coef.T + self.bias


def captum_calls(model, x, target, segments, samples: int, ppes: list[int], window: int, stride: int
                 ) -> dict[str, tuple[Callable[[], object], int, str]]:
    """Captum at the same settings, one image per call (its surrogates take one image), looped over the images:
    name -> (function, model evaluations, settings)."""
    from captum.attr import FeatureAblation, KernelShap, Lime, Occlusion

    n_windows = ((x.shape[-2] - window) // stride + 1) * ((x.shape[-1] - window) // stride + 1)
    b = x.shape[0]
    n_segments = sum(int(segments[i].max()) + 1 for i in range(b))
    kernel_shap = KernelShap(model)
    kernel_shap.interpretable_model = TorchLeastSquares()  # KernelShap's own choice needs scikit-learn
    runs = {
        "Occlusion": (lambda xi, ti, mi, ppe: Occlusion(model).attribute(
            xi, sliding_window_shapes=(3, window, window), strides=(3, stride, stride), target=ti,
            perturbations_per_eval=ppe), b * n_windows, f"window=(3, {window}, {window}), stride={stride}"),
        "FeatureAblation": (lambda xi, ti, mi, ppe: FeatureAblation(model).attribute(
            xi, feature_mask=mi, target=ti, perturbations_per_eval=ppe), n_segments, "mask=SLIC(50)"),
        "Lime": (lambda xi, ti, mi, ppe: Lime(model, interpretable_model=TorchLeastSquares(alpha=1.0)).attribute(
            xi, target=ti, feature_mask=mi, n_samples=samples, perturbations_per_eval=ppe), b * samples,
            f"n_samples={samples}, mask=SLIC(50)"),
        "KernelShap": (lambda xi, ti, mi, ppe: kernel_shap.attribute(
            xi, target=ti, feature_mask=mi, n_samples=samples, perturbations_per_eval=ppe), b * samples,
            f"n_samples={samples}, mask=SLIC(50)"),
    }
    out = {}
    for name, (fn, evals, settings) in runs.items():
        for ppe in ppes:
            def run(fn=fn, ppe=ppe) -> None:
                for i in range(b):
                    fn(x[i : i + 1], target[i : i + 1], segments[i : i + 1, None], ppe)

            out[f"captum {name} (perturbations_per_eval={ppe})"] = (run, evals + b, settings)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3, help="interleaved timed rounds after one warm-up")
    parser.add_argument("--size", type=int, default=224, help="input size in pixels (smaller: smoke runs only)")
    parser.add_argument("--samples", type=int, default=500, help="LIME / KernelSHAP samples")
    parser.add_argument("--rise-masks", type=int, default=1000)
    parser.add_argument("--no-captum", action="store_true")
    parser.add_argument("--captum-ppe", default="1,engine", help="Captum's perturbations_per_eval values")
    parser.add_argument("--out", default=str(RESULTS / "perturbation.md"), help="'-' to print only")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model = zoo.load("efficientnet_lite0")
    x = photos(args.images, size=args.size)
    b, engine_rows = x.shape[0], engine_batch(model, x)
    target = top1(model, x)
    best = best_forward(model, x, 3)
    segments = superpixels(x, "slic", 50)
    window, stride = (32, 16) if args.size >= 128 else (16, 8)
    methods: dict[str, dict] = {
        "occlusion": {"window": (3, window, window), "stride": stride},
        "occlusion_map": {"window": (3, window, window), "stride": stride},
        "feature_ablation": {"mask": segments},
        "rise": {"n_masks": args.rise_masks, "seed": 0},
        "lime": {"n_samples": args.samples, "segments": segments, "seed": 0},
        "kernel_shap": {"n_samples": args.samples, "segments": segments, "seed": 0},
    }
    evals: dict[str, int] = {}
    calls: dict[str, tuple[Callable[[], object], str]] = {}
    for name, params in methods.items():
        def run(name: str = name, params: dict = params) -> None:
            exp = seewhy.explain(model, x, name, target=target, **params)
            evals[f"seewhy {name}"] = int(exp.extras["n_evaluations"]) + b

        shown = {k: ("SLIC(50)" if isinstance(v, torch.Tensor) else v) for k, v in params.items() if k != "seed"}
        calls[f"seewhy {name}"] = (run, ", ".join(f"{k}={v}" for k, v in shown.items()))
    captum_version = None
    if not args.no_captum:
        try:
            import captum
        except ImportError:
            pass
        else:
            captum_version = captum.__version__
            ppes = sorted({engine_rows if p == "engine" else int(p) for p in args.captum_ppe.split(",")})
            for name, (fn, n_evals, settings) in captum_calls(model, x, target, segments, args.samples, ppes,
                                                              window, stride).items():
                calls[name] = (fn, settings)
                evals[name] = n_evals

    fns: dict[str, Callable[[], object]] = {"reference": best.step, **{k: fn for k, (fn, _) in calls.items()}}
    schedule = [s for name in calls for s in ("reference", name)]
    t = interleaved(fns, args.repeat, schedule=schedule)
    for sec in t["reference"].times:
        best.update(sec / best.images)
    fwd = best.seconds
    rows = []
    for name, (_, settings) in calls.items():
        bound = evals[name] * fwd
        rows.append((name, f"{t[name].min:.2f}", f"{t[name].median:.2f}", evals[name], f"{bound:.2f}",
                     f"{t[name].min / bound:.2f}", settings))
    sweep = ", ".join(f"{k}: {v * 1000:.2f}" for k, v in best.sweep.items())
    lines = [
        f"# Perturbation methods: efficientnet_lite0, {args.size}x{args.size}, {b} image(s)",
        "",
        f"Best measured forward: {fwd * 1000:.2f} ms/image at {best.where} (the engine measured {engine_rows} as "
        f"its batch size; its memory-budget default is {engine.default_batch_size(x)}); 'bound' = model evaluations "
        "x the best measured forward.",
        "",
        table(["method", "seconds (min)", "median", "model evaluations", "bound (s)", "ratio to the bound",
               "settings"], rows),
        "",
        f"Fastest of {args.repeat} interleaved round(s) after one warm-up call of each; the forward at the best "
        "setting ran before every method in every round and the lowest of those and of the sweep is the best "
        f"measured forward. Sweep (ms/image; batch size, 'cl' = channels_last, the fastest of 3 runs each): {sweep}.",
    ]
    pairs = {"occlusion": "Occlusion", "feature_ablation": "FeatureAblation", "lime": "Lime",
             "kernel_shap": "KernelShap"}
    if captum_version:
        cols = [f"captum, perturbations_per_eval={p} (s)" for p in ppes]
        comp = []
        for ours, theirs in pairs.items():
            mine = t[f"seewhy {ours}"].min
            theirs_t = [t[f"captum {theirs} (perturbations_per_eval={p})"].min for p in ppes]
            comp.append((ours, f"{mine:.2f}", *(f"{c:.2f}" for c in theirs_t), f"{min(theirs_t) / mine:.1f}x"))
        lines += ["", table(["method", "seewhy (s)", *cols, "speed-up vs Captum's fastest"], comp,
                            right=[False] + [True] * (len(cols) + 2))]
    lines += ["", environment(f"; --repeat {args.repeat} --samples {args.samples} --rise-masks {args.rise_masks}.")]
    write("\n".join(lines), None if args.out == "-" else Path(args.out))


if __name__ == "__main__":
    main()
