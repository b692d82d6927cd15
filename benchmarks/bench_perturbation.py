"""Perturbation and surrogate methods on efficientnet_lite0 at 224 px, against the model's speed limit.

Run:  python benchmarks/bench_perturbation.py [--images 1] [--threads 2] [--samples 500] [--rise-masks 1000]
                                              [--no-captum] [--out benchmarks/results/perturbation.md]

The speed limit of a black-box method is (its number of model evaluations) x (the model's best per-image forward
time), the best over batch sizes 1..16 and both memory formats under ``torch.inference_mode()``. Evaluations count
every image that goes through the model, including the forward on the original inputs. The table gives each
method's time and its ratio to that bound (the target is <= 1.3). When captum is installed (``pip install captum
--no-deps``; not a seewhy dependency) its Occlusion, FeatureAblation, Lime and KernelShap run at the same settings,
on the same superpixels, with their default ``perturbations_per_eval=1`` and with 16; Captum's default surrogate
models need scikit-learn, so they get a closed-form torch least-squares model instead (a negligible cost next to the
forwards, as scikit-learn's would be).
"""

from __future__ import annotations

import argparse
import platform
from collections.abc import Callable
from pathlib import Path

import torch
from common import timed

import seewhy
from seewhy import zoo
from seewhy.images import BUNDLED, bundled_image
from seewhy.methods.surrogate import weighted_least_squares
from seewhy.segments import superpixels


def best_forward(model: torch.nn.Module, x: torch.Tensor, repeat: int) -> tuple[float, str, Callable[[], float]]:
    """The model's best per-image forward time over batch sizes and memory formats, where it was found, and a
    function that measures it again at that setting (the machine may be shared: re-measure next to each method)."""
    best, where, best_run, best_b = float("inf"), "", None, 1
    for fmt_name, fmt in (("contiguous", torch.contiguous_format), ("channels_last", torch.channels_last)):
        for b in (1, 2, 4, 8, 16):
            xb = x[:1].expand(b, -1, -1, -1).contiguous(memory_format=fmt)

            def run(xb: torch.Tensor = xb) -> None:
                with torch.inference_mode():
                    model(xb)

            sec = timed(run, max(repeat, 32 // b), warmup=2, best=True) / b
            if sec < best:
                best, where, best_run, best_b = sec, f"batch {b}, {fmt_name}", run, b

    def again() -> float:
        return timed(best_run, max(5, 32 // best_b), warmup=1, best=True) / best_b

    return best, where, again


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


def captum_rows(model, x, target, segments, samples, per_image, forward_again, repeat, classes) -> list[tuple]:
    """Captum at the same settings, one image per call (its surrogates take one image), summed over the images."""
    feature_ablation, kernel_shap, lime, occlusion = classes
    kernel_shap_instance = kernel_shap(model)
    kernel_shap_instance.interpretable_model = TorchLeastSquares()  # KernelShap's own choice needs scikit-learn
    runs = {
        "Occlusion": (lambda xi, ti, mi, ppe: occlusion(model).attribute(
            xi, sliding_window_shapes=(3, 32, 32), strides=(3, 16, 16), target=ti, perturbations_per_eval=ppe),
            "window=(3, 32, 32), stride=16", lambda mi: 169),
        "FeatureAblation": (lambda xi, ti, mi, ppe: feature_ablation(model).attribute(
            xi, feature_mask=mi, target=ti, perturbations_per_eval=ppe), "mask=SLIC(50)",
            lambda mi: int(mi.max()) + 1),
        "Lime": (lambda xi, ti, mi, ppe: lime(model, interpretable_model=TorchLeastSquares(alpha=1.0)).attribute(
            xi, target=ti, feature_mask=mi, n_samples=samples, perturbations_per_eval=ppe),
            f"n_samples={samples}, mask=SLIC(50)", lambda mi: samples),
        "KernelShap": (lambda xi, ti, mi, ppe: kernel_shap_instance.attribute(
            xi, target=ti, feature_mask=mi, n_samples=samples, perturbations_per_eval=ppe),
            f"n_samples={samples}, mask=SLIC(50)", lambda mi: samples),
    }
    rows = []
    for name, (fn, settings, n_evals) in runs.items():
        for ppe in (1, 16):
            sec, evals, ref = 0.0, 0, min(per_image, forward_again())
            for i in range(x.shape[0]):
                xi, ti, mi = x[i : i + 1], target[i : i + 1], segments[i : i + 1, None]
                sec += timed(lambda fn=fn, xi=xi, ti=ti, mi=mi, ppe=ppe: fn(xi, ti, mi, ppe), repeat,
                             warmup=0, best=True)
                evals += n_evals(mi) + 1
            ref = min(ref, forward_again())
            rows.append((f"captum {name} (perturbations_per_eval={ppe})", sec, evals, ref, settings))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--samples", type=int, default=500, help="LIME / KernelSHAP samples")
    parser.add_argument("--rise-masks", type=int, default=1000)
    parser.add_argument("--no-captum", action="store_true")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "perturbation.md"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    spec = zoo.get_spec("efficientnet_lite0")
    model = zoo.load("efficientnet_lite0")
    x = torch.stack([spec.preprocess(bundled_image(BUNDLED[i % len(BUNDLED)])) for i in range(args.images)])
    b = x.shape[0]
    with torch.inference_mode():
        target = model(x).argmax(1)
    per_image, where, forward_again = best_forward(model, x, 3)
    segments = superpixels(x, "slic", 50)
    methods: dict[str, dict] = {
        "occlusion": {"window": (3, 32, 32), "stride": 16},
        "occlusion_map": {"window": (3, 32, 32), "stride": 16},
        "feature_ablation": {"mask": segments},
        "rise": {"n_masks": args.rise_masks, "seed": 0},
        "lime": {"n_samples": args.samples, "segments": segments, "seed": 0},
        "kernel_shap": {"n_samples": args.samples, "segments": segments, "seed": 0},
    }
    rows = []
    for name, params in methods.items():
        exp = seewhy.explain(model, x, name, target=target, **params)  # warm-up, and the number of evaluations
        evals = exp.extras["n_evaluations"] + b
        ref = min(per_image, forward_again())
        sec = timed(lambda name=name, params=params: seewhy.explain(model, x, name, target=target, **params),
                    args.repeat, warmup=0, best=True)
        ref = min(ref, forward_again())
        shown = {k: ("SLIC(50)" if isinstance(v, torch.Tensor) else v) for k, v in params.items()}
        settings = ", ".join(f"{k}={v}" for k, v in shown.items())
        rows.append((f"seewhy {name}", sec, evals, ref, settings))
    captum_version = None
    if not args.no_captum:
        try:
            import captum
            from captum.attr import FeatureAblation, KernelShap, Lime, Occlusion
        except ImportError:
            pass
        else:
            captum_version = captum.__version__
            rows += captum_rows(model, x, target, segments, args.samples, per_image, forward_again, args.repeat,
                                (FeatureAblation, KernelShap, Lime, Occlusion))

    lines = [
        f"Best forward: {per_image * 1000:.2f} ms/image ({where}); 'bound' = evaluations x the best forward, "
        "re-measured before and after each method (the lowest of the three).",
        "",
        "| method | seconds | model evaluations | bound (s) | ratio to the bound | settings |",
        "|---|---:|---:|---:|---:|---|",
        *(f"| {n} | {s:.2f} | {e} | {e * r:.2f} | {s / (e * r):.2f} | {p} |" for n, s, e, r, p in rows),
        "",
        f"efficientnet_lite0, 224x224, {b} image(s), {args.threads} threads, torch {torch.__version__}, "
        f"{platform.processor() or platform.machine()}, seewhy {seewhy.__version__}"
        + (f", captum {captum_version}" if captum_version else "")
        + f"; minimum of {args.repeat} run(s).",
    ]
    pairs = {"occlusion": "Occlusion", "feature_ablation": "FeatureAblation", "lime": "Lime",
             "kernel_shap": "KernelShap"}
    times = {n: s for n, s, *_ in rows}
    if captum_version:
        lines += ["", "| method | seewhy (s) | captum, perturbations_per_eval=1 (s) | =16 (s) | speed-up |",
                  "|---|---:|---:|---:|---:|"]
        for ours, theirs in pairs.items():
            c1 = times[f"captum {theirs} (perturbations_per_eval=1)"]
            c16 = times[f"captum {theirs} (perturbations_per_eval=16)"]
            mine = times[f"seewhy {ours}"]
            lines.append(f"| {ours} | {mine:.2f} | {c1:.2f} | {c16:.2f} | {min(c1, c16) / mine:.1f}x |")
    text = "\n".join(lines)
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")


if __name__ == "__main__":
    main()
