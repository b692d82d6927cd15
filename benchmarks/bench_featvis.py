"""Feature visualization on efficientnet_lite0: ms per optimisation step against one forward+backward of the same
model at the same size, where the step's time goes, the wall time of a 512-step class model, and the class-model
check for pixel vs FFT + decorrelation.

Run:  python benchmarks/bench_featvis.py [--rounds 5] [--threads 2] [--classes 967,282,417,...] [--steps 256]
      smoke run: python benchmarks/bench_featvis.py --rounds 1 --classes 967 --steps 8 --long-steps 8 --out -

- **Step**: ``visualize(..., steps=S)`` at 128 px (resized to the model's 224 px input, Lucid's default) with the
  standard transforms, batch 1; ms per step = (time of S = 24 steps - time of S = 4 steps) / 20, so the set-up and
  the final evaluation cancel. Objectives: ``class_logit(967)`` (the whole network) with the FFT + decorrelation
  and with pixels, and ``channel(_blocks.9, 12)`` (the forward stops after the layer).
- **Reference** (the same work): a forward with gradients of one 224 px image and ``torch.autograd.grad`` of the
  objective's value with respect to the input only, parameters frozen (``model_state``), in the faster of the two
  memory formats (measured here); for the channel objective the forward is stopped after ``_blocks.9`` by a hook.
  Interleaved with the steps in one process, one warm-up each; the minimum of the rounds.
- **Where the time goes**: the image from its parameters (irfft + colour + sigmoid), the transforms + resize to 224
  and the normalisation, each forward and backward, timed alone.
- **Class models** (Simonyan et al. 2013's check, as the issue states it): ``visualize(class_logit(k), size=128,
  steps=--steps)``, then :func:`seewhy.featvis.render.robust_probability`: upscaled to 224 and 8 times rescaled by
  a factor uniform in [0.8, 1.2] and re-cropped at a random offset (draws unlike the optimisation's); a success when
  every one of the 8 probabilities of k is above 0.9. Both parameterisations, the same seeds. Two more columns tell
  them apart: the same check after a Gaussian blur (1 px at 128 px), and the share of the image's spectral power
  above 0.25 cycles/px. The picture (first six classes; top row pixels, bottom row FFT) is written to
  benchmarks/results/featvis_classes.png.
Writes benchmarks/results/featvis.md.
"""

from __future__ import annotations

import argparse
import importlib.util
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from common import RESULTS, environment, interleaved, ms, table, write
from PIL import Image

from seewhy import zoo
from seewhy.featvis import objectives as O
from seewhy.featvis import visualize
from seewhy.featvis.param import PixelParam, image_param
from seewhy.featvis.render import robust_probability
from seewhy.featvis.transforms import resolve_transforms
from seewhy.hooks import StopForward, model_state
from seewhy.progress import quiet

USER_FILE = Path(__file__).parent.parent / "examples" / "user_efficientnet.py"
SIZE = 128
INPUT = 224
BLUR = 1.0
SHORT, LONG = 4, 24
DEFAULT_CLASSES = "967,282,417,1,94,130,309,340,409,530,574,779,852,948,980"


def reference(model: torch.nn.Module, x: torch.Tensor, objective: str, channels_last: bool,
              layer: str = "_blocks.9"):
    """Input-only forward+backward of the objective's value (stopped after ``layer`` for the channel)."""
    leaf_x = x.contiguous(memory_format=torch.channels_last) if channels_last else x.contiguous()
    stop_at = model.get_submodule(layer)

    def step() -> torch.Tensor:
        with model_state(model), torch.enable_grad():
            leaf = leaf_x.detach().clone().requires_grad_(True)
            if objective == "class":
                value = model(leaf)[0, 967]
            else:
                got = {}

                def hook(m, a, out):
                    got["a"] = out
                    raise StopForward()

                h = stop_at.register_forward_hook(hook)
                try:
                    model(leaf)
                except StopForward:
                    pass
                finally:
                    h.remove()
                value = got["a"][0, 12].mean()
            (g,) = torch.autograd.grad(value, leaf)
        return g

    return step


def load_user_model() -> torch.nn.Module:
    spec = importlib.util.spec_from_file_location("user_efficientnet", USER_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build(pretrained=True)


def run_vis(model: torch.nn.Module, objective: O.Objective, param: str, steps: int, **extra):
    def fn() -> object:
        return visualize(model, objective, size=SIZE, steps=steps, param=param, decorrelate=param == "fft",
                         progress=False, **extra)

    return fn


def breakdown(model: torch.nn.Module, rounds: int) -> list[list[str]]:
    """ms per step of the pieces, each forward and backward, timed alone (minimum of ``rounds`` x 10)."""
    p = image_param("fft", SIZE, 1)
    t = resolve_transforms("standard", SIZE)
    g = torch.Generator().manual_seed(0)
    mean = torch.full((1, 3, 1, 1), 0.498)
    std = torch.full((1, 3, 1, 1), 0.502)

    def image() -> None:
        p().sum().backward()

    def transforms() -> None:
        x = p().detach().requires_grad_(True)
        y = F.interpolate(t(x, g), size=(INPUT, INPUT), mode="bilinear", align_corners=False)
        ((y - mean) / std).sum().backward()

    out = interleaved({"image": lambda: [image() for _ in range(10)],
                       "transforms": lambda: [transforms() for _ in range(10)]}, rounds)
    return [["image from parameters (irfft, colour, sigmoid), fwd+bwd", ms(out["image"].min / 10)],
            ["standard transforms + resize to 224 + normalise, fwd+bwd", ms(out["transforms"].min / 10)]]


def blurred(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """A Gaussian blur (std ``sigma`` px, reflect padding) of images in [0, 1]."""
    p = PixelParam(tuple(images.shape), decorrelate=False)
    p.set_linear(images)
    p.blur(sigma)
    return p.linear().detach().clamp(0, 1)


def high_frequency_share(images: torch.Tensor, cutoff: float = 0.25) -> float:
    """The share of the (mean-removed, grey) image's spectral power above ``cutoff`` cycles/px."""
    grey = images.mean(1)
    grey = grey - grey.mean((1, 2), keepdim=True)
    power = torch.fft.rfft2(grey).abs() ** 2
    fy = torch.fft.fftfreq(grey.shape[-2])[:, None]
    fx = torch.fft.rfftfreq(grey.shape[-1])[None, :]
    high = (fy**2 + fx**2).sqrt() > cutoff
    return float(power[:, high].sum() / power.sum())


def class_models(model: torch.nn.Module, classes: list[int], steps: int, out_png: Path | None) -> tuple[str, list]:
    names = zoo.imagenet_classes()
    rows = []
    tiles: dict[str, list[np.ndarray]] = {"pixel": [], "fft": []}
    success = {"pixel": 0, "fft": 0}
    blur_success = {"pixel": 0, "fft": 0}
    for k in classes:
        row = [f"{k} {names[k]}"]
        for param in ("pixel", "fft"):
            r = visualize(model, O.class_logit(k), size=SIZE, steps=steps, param=param, decorrelate=param == "fft",
                          progress=False)
            probs = robust_probability(model, r.images, k)[0]
            soft = robust_probability(model, blurred(r.images, BLUR), k)[0]
            ok, soft_ok = bool((probs > 0.9).all()), bool((soft > 0.9).all())
            success[param] += ok
            blur_success[param] += soft_ok
            row += [f"{probs.min():.3f}", "yes" if ok else "no", f"{soft.min():.3f}",
                    f"{high_frequency_share(r.images):.2f}"]
            tiles[param].append((r.images[0].permute(1, 2, 0).clamp(0, 1).numpy() * 255).astype(np.uint8))
        rows.append(row)
    if out_png is not None and tiles["fft"]:
        shown = min(len(classes), 6)
        grid = np.concatenate([np.concatenate(tiles[p][:shown], axis=1) for p in ("pixel", "fft")], axis=0)
        Image.fromarray(grid).save(out_png)
    n = len(classes)
    text = table(["class", "pixel: min p", "ok", "blurred: min p", "high-freq. share",
                  "FFT: min p", "ok", "blurred: min p", "high-freq. share"], rows,
                 right=[False, True, False, True, True, True, False, True, True])
    text += (f"\n\nSuccess (all 8 re-views above 0.9): pixel {success['pixel']}/{n}, FFT + decorrelation "
             f"{success['fft']}/{n}. After a Gaussian blur of {BLUR:g} px (at 128 px): pixel "
             f"{blur_success['pixel']}/{n}, FFT + decorrelation {blur_success['fft']}/{n}. High-frequency share: the "
             "fraction of the grey image's spectral power above 0.25 cycles/px.")
    return text, [success["pixel"], success["fft"], n]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--classes", default=DEFAULT_CLASSES)
    parser.add_argument("--steps", type=int, default=256, help="steps of each class model in the check")
    parser.add_argument("--long-steps", type=int, default=512, help="steps of the timed long class model")
    parser.add_argument("--out", default=str(RESULTS / "featvis.md"), help="results file, or - for none")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = None if args.out == "-" else Path(args.out)
    model = zoo.load("efficientnet_lite0")
    x = torch.rand(1, 3, INPUT, INPUT, generator=torch.Generator().manual_seed(0))

    with quiet():
        # the faster memory format for the references
        fmt = {}
        for objective in ("class", "channel"):
            both = interleaved({cl: reference(model, x, objective, cl) for cl in (False, True)}, args.rounds)
            fmt[objective] = min(both, key=lambda cl: both[cl].min)
        cases = {
            "class_logit(967), FFT + decorrelation": ("class", O.class_logit(967), "fft"),
            "class_logit(967), pixels": ("class", O.class_logit(967), "pixel"),
            "channel(_blocks.9, 12), FFT + decorrelation": ("channel", O.channel("_blocks.9", 12), "fft"),
        }
        rows = []
        for label, (kind, objective, param) in cases.items():
            fns = {"ref": reference(model, x, kind, fmt[kind]), "short": run_vis(model, objective, param, SHORT),
                   "long": run_vis(model, objective, param, LONG)}
            t = interleaved(fns, args.rounds)
            step = (t["long"].min - t["short"].min) / (LONG - SHORT)
            rows.append([label, ms(step), ms(t["ref"].min), f"{step / t['ref'].min:.2f}"])
        # a user-style EfficientNet-Lite0 (not seewhy's zoo class: no spec, so the input size and normalisation
        # are passed as a user would)
        user = load_user_model()
        user_opts = {"input_size": INPUT, "normalize": (zoo.get_spec("efficientnet_lite0").mean,
                                                        zoo.get_spec("efficientnet_lite0").std)}
        for kind, objective, label in (
                ("class", O.class_logit(967), "user-style model: class_logit(967), FFT"),
                ("channel", O.channel("blocks.9", 12), "user-style model: channel(blocks.9, 12), FFT")):
            both = interleaved({cl: reference(user, x, kind, cl, "blocks.9") for cl in (False, True)}, args.rounds)
            cl = min(both, key=lambda c: both[c].min)
            fns = {"ref": reference(user, x, kind, cl, "blocks.9"),
                   "short": run_vis(user, objective, "fft", SHORT, **user_opts),
                   "long": run_vis(user, objective, "fft", LONG, **user_opts)}
            t = interleaved(fns, args.rounds)
            step = (t["long"].min - t["short"].min) / (LONG - SHORT)
            rows.append([label, ms(step), ms(t["ref"].min), f"{step / t['ref'].min:.2f}"])
        pieces = breakdown(model, args.rounds)
        start = time.perf_counter()
        visualize(model, O.class_logit(967), size=SIZE, steps=args.long_steps, progress=False)
        wall = time.perf_counter() - start
        classes = [int(k) for k in args.classes.split(",") if k.strip()]
        png = None if out is None else out.parent / "featvis_classes.png"
        check, _ = class_models(model, classes, args.steps, png)

    text = "\n\n".join([
        "# Feature visualization (efficientnet_lite0)",
        environment(),
        __doc__.split("\n\n", 2)[2].rsplit("Writes", 1)[0].strip(),
        f"## ms per step (128 px, resized to 224, standard transforms, batch 1); reference in "
        f"{'channels_last' if fmt['class'] else 'contiguous'} (class) / "
        f"{'channels_last' if fmt['channel'] else 'contiguous'} (channel)",
        table(["objective", "ms/step", "reference ms", "x reference"], rows, right=[False, True, True, True]),
        "## Where a step's time goes (outside the model)",
        table(["piece", "ms"], pieces, right=[False, True]),
        f"## Wall time of a {args.long_steps}-step class model (class_logit(967), 128 px, FFT + decorrelation)",
        f"{wall:.1f} s",
        f"## Class models: {args.steps} steps, pixel vs FFT + decorrelation "
        f"(picture of the first six: featvis_classes.png, top pixels, bottom FFT)",
        check,
    ])
    write(text, out)


if __name__ == "__main__":
    main()
