"""Milliseconds per image for every gradient method on efficientnet_lite0 at 224 px, next to one forward+backward.

Run:  python benchmarks/bench_gradient.py [--batch 4] [--repeat 3] [--threads 2]

The reference "forward+backward" is a training-style step (backward to the input and every parameter).
Captum's Saliency and IntegratedGradients are timed with the same settings when captum is installed
(``pip install captum``; not a seewhy dependency). Writes benchmarks/results/gradient.md.
"""

from __future__ import annotations

from common import RESULTS, forward_backward_time, forward_time, setup, timed, write_table

import seewhy

METHODS: dict[str, dict] = {
    "saliency": {},
    "input_x_gradient": {},
    "guided_backprop": {},
    "deconvnet": {},
    "integrated_gradients": {"n_steps": 50},
    "smoothgrad": {"n_samples": 50, "seed": 0},
}


def main() -> None:
    args, model, x, target = setup(__doc__)
    b = x.shape[0]

    ref = forward_backward_time(model, x, args.repeat)
    rows = [
        ("forward (inference_mode, channels_last)", forward_time(model, x, args.repeat), ""),
        ("forward+backward (reference)", ref, ""),
    ]
    for name, params in METHODS.items():
        many = "n_steps" in params or "n_samples" in params
        sec = timed(lambda name=name, params=params: seewhy.explain(model, x, name, target=target, **params),
                    1 if many else args.repeat, warmup=not many) / b
        rows.append((f"seewhy {name}", sec, ", ".join(f"{k}={v}" for k, v in params.items())))
    note = f"efficientnet_lite0, 224x224, batch {b}; median of {args.repeat} runs (1 run for 50-pass methods)"
    try:
        import captum
        from captum.attr import IntegratedGradients, Saliency
    except ImportError:
        pass
    else:
        model.eval()
        sal = timed(lambda: Saliency(model).attribute(x, target=target, abs=False), args.repeat) / b
        rows.append(("captum Saliency", sal, "abs=False"))
        ig = IntegratedGradients(model)
        sec = timed(lambda: ig.attribute(x, target=target, n_steps=50, method="gausslegendre"), 1, False) / b
        rows.append(("captum IntegratedGradients", sec, "n_steps=50, gausslegendre"))
        note += f"; captum {captum.__version__}"
    write_table(rows, ref, "forward+backward", note, RESULTS / "gradient.md")


if __name__ == "__main__":
    main()
