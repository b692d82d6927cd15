"""Milliseconds per image for the CAM family on efficientnet_lite0 at 224 px (layer ``_features``, 1280 channels),
next to one forward+backward and the best forward.

Run:  python benchmarks/bench_cam.py [--batch 4] [--repeat 3] [--threads 2] [--skip-scorecam]

Targets (issue 3): gradient CAMs <= 1.15x one forward+backward; scorecam >= 3x faster than pytorch-grad-cam's
ScoreCAM (batch 64, every one of the 1280 channels evaluated) with the same map; ablationcam < 1 s per image by
re-running only the model's head. pytorch-grad-cam needs torchvision, which is not usable here, so its Score-CAM
procedure is re-created (not its code): for each channel, the input times the min-max normalised upsampled channel,
forwards in batches of 64 under torch.no_grad() in the default memory format, one ``.item()`` per score. Score-CAM
runs on the first photo only (``--scorecam-images`` to change).
Writes benchmarks/results/cam.md.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from common import RESULTS, forward_backward_time, forward_time, setup, timed, write_table

import seewhy

GRADIENT_CAMS = ["gradcam", "gradcam_plus_plus", "xgradcam", "hirescam", "layercam", "eigencam", "cam"]


def pgc_style_scorecam(model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor, batch: int = 64) -> torch.Tensor:
    """pytorch-grad-cam's Score-CAM procedure, re-created for timing: every channel evaluated, batches of 64."""
    acts = {}
    handle = model._features.register_forward_hook(lambda m, i, o: acts.__setitem__("a", o.detach()))
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    a = acts["a"]
    maps = []
    with torch.no_grad():
        up = F.interpolate(a, size=x.shape[-2:], mode="bilinear", align_corners=False)
        lo, hi = up.amin(dim=(2, 3), keepdim=True), up.amax(dim=(2, 3), keepdim=True)
        up = (up - lo) / (hi - lo + 1e-8)
        for i in range(x.shape[0]):
            masked = x[i : i + 1] * up[i][:, None]  # (K,C,H,W)
            scores = []
            for start in range(0, masked.shape[0], batch):
                out = model(masked[start : start + batch])
                scores.extend(float(o[target[i]].item()) for o in out)
            w = torch.softmax(torch.tensor(scores), dim=0)
            maps.append((w[:, None, None] * a[i]).sum(0))
    return torch.stack(maps)[:, None]


def scorecam_rows(model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor, fwd: float) -> list[tuple]:
    """Score-CAM at the default batch size and at 64, the re-created pytorch-grad-cam procedure, and the floors."""
    n = x.shape[0]
    rows = []
    for bs in (None, 64):
        exp = None

        def run(bs: int | None = bs) -> None:
            nonlocal exp
            exp = seewhy.explain(model, x, "scorecam", target=target, layer="_features", batch_size=bs)

        sec = timed(run, 1, warmup=False) / n
        evals = float(exp.extras["evaluations"].double().mean())
        rows.append(("seewhy scorecam", sec, f"layer=_features, batch_size={bs or 'default'}, {evals:.0f} forwards"))
    ours = exp.attributions
    rows.append(("floor: seewhy's forwards x best forward", evals * fwd, f"{evals:.0f} masked forwards per image"))
    pgc = None

    def run_pgc() -> None:
        nonlocal pgc
        pgc = pgc_style_scorecam(model, x, target)

    sec = timed(run_pgc, 1, warmup=False) / n
    pairs = zip(pgc, ours, strict=True)
    same = [float(torch.corrcoef(torch.stack([p.flatten(), q.flatten()]))[0, 1]) for p, q in pairs]
    rows.append(("pytorch-grad-cam procedure (re-created)", sec, f"1280 forwards, batch 64; map correlation "
                 f"with seewhy's {min(same):.6f}"))
    rows.append(("floor: 1280 x best forward", 1280 * fwd, "every channel evaluated"))
    return rows


def main() -> None:
    def options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--skip-scorecam", action="store_true")
        p.add_argument("--scorecam-images", type=int, default=1)

    args, model, x, target = setup(__doc__, options)
    b = x.shape[0]

    ref = forward_backward_time(model, x, args.repeat)
    fwd = forward_time(model, x, args.repeat)
    rows = [("forward (inference_mode, channels_last)", fwd, ""), ("forward+backward (reference)", ref, "")]
    for name in GRADIENT_CAMS:
        sec = timed(lambda name=name: seewhy.explain(model, x, name, target=target, layer="_features"), args.repeat) / b
        rows.append((f"seewhy {name}", sec, "layer=_features"))
    exp = seewhy.explain(model, x, "ablationcam", target=target, layer="_features", batch_size=256)
    sec = timed(lambda: seewhy.explain(model, x, "ablationcam", target=target, layer="_features", batch_size=256), 1)
    rows.append(("seewhy ablationcam", sec / b, f"layer=_features, batch_size=256, path={exp.extras['ablation_path']}"))
    if not args.skip_scorecam:
        rows.extend(scorecam_rows(model, x[: args.scorecam_images], target[: args.scorecam_images], fwd))
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
