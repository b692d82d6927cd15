"""Milliseconds per image for the CAM family on efficientnet_lite0 at 224 px (layer ``_features``, 1280 channels),
next to one forward+backward and the best forward.

Run:  python benchmarks/bench_cam.py [--batch 4] [--repeat 3] [--threads 2] [--skip-scorecam]

Targets (issue 3): gradient CAMs <= 1.15x one forward+backward; scorecam 1280 masked forwards per image, so
its floor is 1280 x the best forward; ablationcam < 1 s per image by re-running only the model's head.
pytorch-grad-cam is timed side by side when it is importable (it needs torchvision; not a seewhy dependency).
Writes benchmarks/results/cam.md.
"""

from __future__ import annotations

import argparse

from common import RESULTS, forward_backward_time, forward_time, setup, timed, write_table

import seewhy

GRADIENT_CAMS = ["gradcam", "gradcam_plus_plus", "xgradcam", "hirescam", "layercam", "eigencam", "cam"]


def main() -> None:
    def options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--skip-scorecam", action="store_true")

    args, model, x, target = setup(__doc__, options)
    b = x.shape[0]

    ref = forward_backward_time(model, x, args.repeat)
    fwd = forward_time(model, x, args.repeat)
    rows = [("forward (inference_mode, channels_last)", fwd, ""), ("forward+backward (reference)", ref, "")]
    for name in GRADIENT_CAMS:
        sec = timed(lambda name=name: seewhy.explain(model, x, name, target=target, layer="_features"), args.repeat) / b
        rows.append((f"seewhy {name}", sec, "layer=_features"))
    for name, params in (("ablationcam", {"batch_size": 256}), ("scorecam", {"batch_size": 64})):
        if name == "scorecam" and args.skip_scorecam:
            continue
        exp = None

        def run(name: str = name, params: dict = params) -> None:
            nonlocal exp
            exp = seewhy.explain(model, x, name, target=target, layer="_features", **params)

        sec = timed(run, 1, warmup=False) / b
        extra = f", path={exp.extras['ablation_path']}" if name == "ablationcam" else ""
        rows.append((f"seewhy {name}", sec, f"layer=_features, batch_size={params['batch_size']}{extra}"))
        if name == "scorecam":
            rows.append(("floor: 1280 x best forward", 1280 * fwd, "1280 masked forwards per image"))
    try:
        import pytorch_grad_cam  # noqa: F401
    except Exception as err:  # torchvision missing or broken: no side-by-side
        note_pgc = f"pytorch-grad-cam not importable here ({type(err).__name__})"
    else:
        note_pgc = "pytorch-grad-cam importable: add its timings"
    note = f"efficientnet_lite0, 224x224, batch {b}, median of {args.repeat} runs (1 for perturbation CAMs); {note_pgc}"
    write_table(rows, ref, "forward+backward", note, RESULTS / "cam.md")


if __name__ == "__main__":
    main()
