"""Milliseconds per image for the CAM family on efficientnet_lite0 at 224 px (layer ``_features``, 1280 channels),
against an input-only forward+backward; Score-CAM against pytorch-grad-cam's procedure, split into its sources.

Run:  python benchmarks/bench_cam.py [--batch 4] [--repeat 3] [--threads 2] [--scorecam-repeat 2] [--skip-scorecam]
      smoke run: python benchmarks/bench_cam.py --size 96 --batch 2 --repeat 1 --scorecam-repeat 1 --out -

Gradient CAMs and Ablation-CAM: ratios to the input-only forward+backward (parameters frozen, gradient of the
target scores with respect to the input only, as seewhy's methods do), the training-style step (backward to every
parameter too) as a second column; all warmed up, then timed interleaved round after round in one process.

Score-CAM (on the first ``--scorecam-images`` photos): pytorch-grad-cam needs torchvision, which is not usable here,
so its ScoreCAM weight loop is re-created (not its code): every one of the 1280 channels, upsampled with
``nn.UpsamplingBilinear2d`` (align_corners=True), min-max normalised, multiplied with the input (all masked inputs
built at once), forwards in batches of ``--pgc-batch`` (16, its default when ``cam.batch_size`` is not set) under
``torch.no_grad()`` in the default memory format, one ``.item()`` per score, softmax. Next to it, at the same batch
size and at the batch size the engine measures: seewhy's engine (``seewhy.engine.evaluate``: inference mode,
channels_last, masks built per chunk) on ALL 1280 channels plus the baseline forward, and seewhy's Score-CAM
itself, which skips the constant channels (usable channels + 1 baseline forward, ``extras["evaluations"]``). The
steps from one to the next split the speed-up into the engine at the same batch size, the engine's batch size, and
the skipped channels.
Every side is warmed up (the 1280-channel sides on their first 2 x 64 channels: the same chunk shapes) and the
sides are timed interleaved, ``--scorecam-repeat`` rounds. ``--scorecam-limit N`` evaluates only N channels on the
1280-channel sides (a smoke run; the table says so).

When examples/user_efficientnet.py exists (a user-style EfficientNet-Lite0, a plain module without
``forward_head``), Grad-CAM, Ablation-CAM and Score-CAM also run on it at its head convolution, against that model's
own input-only reference and best measured forward. Writes benchmarks/results/cam.md.
"""

from __future__ import annotations

import argparse
import importlib.util
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from common import (
    INPUT_ONLY,
    RESULTS,
    TRAINING,
    best_forward,
    engine_batch,
    environment,
    forward_step,
    input_only_step,
    interleaved,
    ms,
    table,
    top1,
    training_step,
    write,
)
from common import setup as common_setup
from torch import nn

import seewhy
from seewhy import engine
from seewhy.targets import make_target

GRADIENT_CAMS = ["gradcam", "gradcam_plus_plus", "xgradcam", "hirescam", "layercam", "eigencam", "cam"]
REF, TRAIN = "input-only forward+backward (reference)", "training-style forward+backward"
USER_FILE = Path(__file__).parent.parent / "examples" / "user_efficientnet.py"


def activations(model: nn.Module, x: torch.Tensor, layer: str) -> torch.Tensor:
    """The output of ``layer`` on ``x`` (one forward under no_grad, a plain forward hook)."""
    acts: dict[str, torch.Tensor] = {}
    handle = model.get_submodule(layer).register_forward_hook(lambda m, i, o: acts.__setitem__("a", o.detach()))
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    return acts["a"]


def pgc_scorecam(model: nn.Module, x: torch.Tensor, target: torch.Tensor, layer: str, batch: int = 16,
                 limit: int | None = None) -> torch.Tensor:
    """pytorch-grad-cam's ScoreCAM weight loop, re-created for timing (``limit``: only the first channels)."""
    a = activations(model, x, layer)[:, :limit]
    with torch.no_grad():
        up = nn.UpsamplingBilinear2d(size=x.shape[-2:])(a)
        flat = up.view(up.size(0), up.size(1), -1)
        maxs, mins = flat.max(dim=-1)[0][:, :, None, None], flat.min(dim=-1)[0][:, :, None, None]
        up = (up - mins) / (maxs - mins + 1e-8)
        masked = x[:, None] * up[:, :, None]  # (B,K,C,H,W), all at once as pytorch-grad-cam does
        scores = []
        for t, tensor in zip(target.tolist(), masked, strict=True):
            for i in range(0, tensor.size(0), batch):
                scores.extend(float(o[t].cpu().item()) for o in model(tensor[i : i + batch]))
        w = torch.softmax(torch.tensor(scores).view(a.shape[0], a.shape[1]), dim=-1)
    return (w[:, :, None, None] * a).sum(1, keepdim=True)


def engine_all_scorecam(model: nn.Module, x: torch.Tensor, target: torch.Tensor, layer: str, batch: int | None,
                        limit: int | None = None) -> torch.Tensor:
    """Score-CAM through seewhy's engine with ALL channels evaluated (constant ones too, as an all-zero image)
    plus one baseline forward per image: seewhy's Score-CAM without the skipping of constant channels."""
    a = activations(model, x, layer)[:, :limit]
    b, k = a.shape[:2]
    flat = a.reshape(b * k, 1, *a.shape[-2:])
    sample = torch.arange(b).repeat_interleave(k)
    tgt = make_target(target.tolist(), b)

    def masked(idx: torch.Tensor) -> torch.Tensor:
        up = F.interpolate(flat[idx], size=x.shape[-2:], mode="bilinear")
        lo, hi = up.amin(dim=(2, 3), keepdim=True), up.amax(dim=(2, 3), keepdim=True)
        span = hi - lo
        return x[sample[idx]] * ((up - lo) / torch.where(span > 0, span, torch.ones_like(span)))

    scores = engine.evaluate(model, masked, sample, tgt, like=x, batch_size=batch, desc="score-cam (all)")
    base = engine.evaluate(model, lambda idx: torch.zeros_like(x[idx]), torch.arange(b), tgt, like=x,
                           batch_size=batch)
    w = torch.softmax(scores.view(b, k) - base[:, None], dim=1)
    return (w[:, :, None, None] * a).sum(1, keepdim=True)


def correlation(p: torch.Tensor, q: torch.Tensor) -> float:
    """The lowest per-image Pearson correlation of two map batches."""
    pairs = zip(p, q, strict=True)
    return min(float(torch.corrcoef(torch.stack([u.flatten(), v.flatten()]).double())[0, 1]) for u, v in pairs)


def scorecam_section(model: nn.Module, x: torch.Tensor, target: torch.Tensor, layer: str, args: argparse.Namespace,
                     title: str) -> list[str]:
    """The Score-CAM table and the split of the speed-up into engine, batch size and skipped channels."""
    n = x.shape[0]
    default = engine_batch(model, x)  # the batch size the engine measured on this model
    pb, limit = args.pgc_batch, args.scorecam_limit
    best = best_forward(model, x, 3)
    results: dict[str, torch.Tensor] = {}
    exp = seewhy.explain(model, x, "scorecam", target=target, layer=layer)  # also the warm-up of that side
    results["seewhy"] = exp.attributions
    evals = float(exp.extras["evaluations"].double().mean())
    k = activations(model, x[:1], layer).shape[1]
    k_run = min(k, limit) if limit else k
    skips = evals < k + 1  # some channel is constant: the all-channel sides differ from seewhy's

    def keep(key: str, fn: Callable[[], torch.Tensor]) -> Callable[[], None]:
        def run() -> None:
            results[key] = fn()
        return run

    fns = {
        "pgc": keep("pgc", lambda: pgc_scorecam(model, x, target, layer, pb, limit)),
        "all_pb": keep("all_pb", lambda: engine_all_scorecam(model, x, target, layer, pb, limit)),
        "all_default": keep("all_default", lambda: engine_all_scorecam(model, x, target, layer, None, limit)),
        "seewhy_pb": keep("seewhy_pb", lambda: seewhy.explain(model, x, "scorecam", target=target, layer=layer,
                                                              batch_size=pb).attributions),
        "seewhy": keep("seewhy", lambda: seewhy.explain(model, x, "scorecam", target=target,
                                                        layer=layer).attributions),
        "forward": best.step,
    }
    if not skips:  # no constant channel: seewhy's Score-CAM is the all-channel run itself
        del fns["all_pb"], fns["all_default"]
    warm = min(k_run, 128)  # the 1280-channel sides: warmed up on their first channels (the same chunk shapes)
    pgc_scorecam(model, x, target, layer, pb, warm)
    if skips:
        engine_all_scorecam(model, x, target, layer, pb, warm)
        engine_all_scorecam(model, x, target, layer, None, warm)
    fns["seewhy_pb"]()
    t = interleaved(fns, args.scorecam_repeat, warmup=0)
    best.update(t["forward"].min / best.images)
    fwd = best.seconds
    chans = f"{k_run} of {k} channels" if k_run < k else f"all {k} channels"
    rows_spec = [
        ("pgc", f"pytorch-grad-cam procedure (re-created), {chans}", k_run, pb,
         "no_grad, contiguous, .item() per score"),
        ("all_pb", f"seewhy engine, {chans} + 1 baseline", k_run + 1, pb, "engine.evaluate"),
        ("all_default", f"seewhy engine, {chans} + 1 baseline", k_run + 1, default,
         "engine.evaluate, the engine's batch"),
        ("seewhy_pb", "seewhy scorecam", evals, pb, f"batch_size={pb}"),
        ("seewhy", "seewhy scorecam", evals, default, "the engine's batch size"),
    ]
    rows = []
    for key, what, forwards, bs, shown in rows_spec:
        if key not in t:
            continue
        sec = t[key].min / n
        rows.append((what, f"{sec:.2f}", f"{t[key].median / n:.2f}", f"{forwards:.0f}", bs,
                     f"{sec / (forwards * fwd):.2f}", f"{t['pgc'].min / t[key].min:.2f}", shown))
    batches = sorted({int(s.split()[0]) for s in best.sweep})
    lines = [
        f"## {title}",
        "",
        table(["what", "s / image (min)", "median", "forwards / image", "batch", "x floor", "speed-up vs pgc",
               "settings"], rows),
        "",
        f"Floor = forwards x the best measured forward, {fwd * 1000:.2f} ms/image ({best.where}; batch sizes "
        f"{', '.join(map(str, batches))} incl. the engine's {default}, both memory formats, re-measured interleaved "
        "with the sides).",
        f"seewhy's Score-CAM evaluates {evals - 1:.0f} usable channels of {k} ({k + 1 - evals:.0f} constant, never "
        f"evaluated) plus 1 baseline forward: {evals:.0f} forwards per image (mean over {n} image(s), "
        "`extras[\"evaluations\"]`).",
        "",
        "Where the speed-up comes from (ratios of the fastest runs):",
    ]
    s = {key: t[key].min for key in t}
    if skips:
        lines += [
            f"- the engine at the same batch size ({pb}) and the same {k_run + 1} forwards: "
            f"{s['pgc'] / s['all_pb']:.2f}x (pgc procedure / seewhy's engine on every channel);",
            f"- the engine's batch size ({default} instead of {pb}): {s['all_pb'] / s['all_default']:.2f}x;",
        ]
    if k_run < k:
        lines.append(f"- skipped channels / in all: not comparable with --scorecam-limit {limit} (smoke run).")
    else:
        if skips:
            lines.append(f"- skipping the constant channels ({evals:.0f} instead of {k + 1} forwards): "
                         f"{s['all_default'] / s['seewhy']:.2f}x (at batch {pb}: {s['all_pb'] / s['seewhy_pb']:.2f}x);")
        else:
            lines.append(f"- no channel is constant here, seewhy evaluates all {k}: the engine at the same batch size "
                         f"({pb}): {s['pgc'] / s['seewhy_pb']:.2f}x; the engine's batch size ({default} instead of "
                         f"{pb}): {s['seewhy_pb'] / s['seewhy']:.2f}x;")
        lines += [
            f"- in all: {s['pgc'] / s['seewhy']:.2f}x (at pytorch-grad-cam's batch size {pb}: "
            f"{s['pgc'] / s['seewhy_pb']:.2f}x).",
            "",
            "Map correlation with seewhy's (lowest per image): pgc procedure "
            f"{correlation(results['pgc'], results['seewhy']):.6f} (align_corners differs)"
            + (f", seewhy engine on all channels {correlation(results['all_default'], results['seewhy']):.6f}"
               if skips else "") + ".",
        ]
    lines += ["", f"Fastest of {args.scorecam_repeat} interleaved round(s) after the warm-up."]
    return lines


def load_user_model(layer: str) -> tuple[nn.Module, str] | None:
    """examples/user_efficientnet.py's ``build(pretrained=True)`` and its head-convolution layer, or None."""
    if not USER_FILE.exists():
        return None
    spec = importlib.util.spec_from_file_location("user_efficientnet", USER_FILE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build(pretrained=True).eval(), layer


def cam_rows(model: nn.Module, x: torch.Tensor, target: torch.Tensor, layer: str,
             methods: list[tuple[str, str, dict]], rounds: int, prefix: str = "") -> list[tuple]:
    """The references and the CAMs ``(label, method, params)`` at ``layer``, interleaved; rows with the ratios."""
    b = x.shape[0]
    fwd, _ = forward_step(model, x, b, True, images=b)
    calls: dict[str, tuple[Callable[[], object], str]] = {
        REF: (input_only_step(model, x, target), f"batch {b}"),
        TRAIN: (training_step(model, x, target), f"batch {b}"),
        "forward (inference_mode, channels_last)": (fwd, f"batch {b}"),
    }
    paths: dict[str, str] = {}
    for label, method, params in methods:
        def run(label: str = label, method: str = method, params: dict = params) -> None:
            exp = seewhy.explain(model, x, method, target=target, layer=layer, **params)
            if "ablation_path" in exp.extras:
                how = exp.extras.get("tail")
                paths[label] = exp.extras["ablation_path"] + (f" ({how})" if how else "")

        calls[label] = (run, ", ".join([f"layer={layer}", *(f"{k}={v}" for k, v in params.items())]))
    t = interleaved({k: fn for k, (fn, _) in calls.items()}, rounds)
    ref, train = t[REF].min, t[TRAIN].min
    return [(prefix + name, ms(t[name].min / b), ms(t[name].median / b), f"{t[name].min / ref:.2f}",
             f"{t[name].min / train:.2f}", shown + (f", path={paths[name]}" if name in paths else ""))
            for name, (_, shown) in calls.items()]


def main() -> None:
    def options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--skip-scorecam", action="store_true")
        p.add_argument("--scorecam-images", type=int, default=1)
        p.add_argument("--scorecam-repeat", type=int, default=2, help="interleaved Score-CAM rounds")
        p.add_argument("--scorecam-limit", type=int, default=None, help="channels on the 1280-channel sides (smoke)")
        p.add_argument("--pgc-batch", type=int, default=16, help="pytorch-grad-cam's batch (its default: 16)")
        p.add_argument("--user-layer", default="conv_head",
                       help="the user model's head convolution (examples/user_efficientnet.py: conv_head)")
        p.add_argument("--skip-user", action="store_true", help="skip the user-model rows")
        p.add_argument("--skip-user-scorecam", action="store_true", help="skip Score-CAM on the user model")
        p.add_argument("--out", default=str(RESULTS / "cam.md"), help="'-' to print only")

    args, model, x, target = common_setup(__doc__, options)
    b = x.shape[0]
    cams = [(f"seewhy {name}", name, {}) for name in [*GRADIENT_CAMS, "ablationcam"]]
    cams.append(("seewhy ablationcam (batch 256)", "ablationcam", {"batch_size": 256}))
    rows = cam_rows(model, x, target, "_features", cams, args.repeat)
    headers = ["what", "ms / image (min)", "median", "x input-only", "x training-style", "settings"]
    lines = [
        f"# CAM family: efficientnet_lite0, {args.size}x{args.size}, batch {b}, layer `_features` (1280 channels)",
        "",
        table(headers, rows),
        "",
        f"Ratios: fastest over fastest of {args.repeat} interleaved rounds after one warm-up call of each.",
        "",
        f"- {INPUT_ONLY}.",
        f"- {TRAINING}.",
    ]
    if not args.skip_scorecam:
        n = args.scorecam_images
        lines += [""] + scorecam_section(model, x[:n], target[:n], "_features", args,
                                         f"Score-CAM: efficientnet_lite0 (zoo), layer `_features`, {n} image(s)")
    user = None if args.skip_user else load_user_model(args.user_layer)
    if user is None:
        lines += ["", "User-style model: examples/user_efficientnet.py not found (or --skip-user): no rows."]
    else:
        umodel, ulayer = user
        ut = top1(umodel, x)
        ucams = [(f"seewhy {name}", name, {}) for name in ("gradcam", "ablationcam")]
        urows = cam_rows(umodel, x, ut, ulayer, ucams, args.repeat, prefix="user model: ")
        lines += ["", f"## User-style EfficientNet-Lite0 (examples/user_efficientnet.py, no forward_head), layer "
                  f"`{ulayer}`, batch {b}", "", table(headers, urows),
                  "", "Ratios to this model's own input-only reference."]
        if not (args.skip_scorecam or args.skip_user_scorecam):
            n = args.scorecam_images
            lines += [""] + scorecam_section(umodel, x[:n], ut[:n], ulayer, args,
                                             f"Score-CAM: user-style model, layer `{ulayer}`, {n} image(s)")
    lines += ["", environment(f"; --repeat {args.repeat} --scorecam-repeat {args.scorecam_repeat} "
                              f"--pgc-batch {args.pgc_batch}"
                              + (f" --scorecam-limit {args.scorecam_limit}" if args.scorecam_limit else "") + ".")]
    write("\n".join(lines), None if args.out == "-" else Path(args.out))


if __name__ == "__main__":
    main()
