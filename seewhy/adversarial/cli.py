"""``seewhy attack``: adversarial examples and what they do to the explanations, as a self-contained HTML report.

::

    seewhy attack IMAGE... --model M [--eps 2/255] [--attack pgd|fgsm] [--norm linf|l2] [--steps N]
                  [--step-size A] [--target K|NAME] [--no-random-start] [--seed N] [--method gradcam,saliency]
                  [--layer L] [--curve 0,1/255,2/255,4/255] [--batch-size N] --out DIR

Also ``--weights FILE``, ``--overwrite``, ``--device`` and ``-v``/``-q``. Each image is resized and cropped as the
model expects, attacked in [0, 1] (the model's normalisation inside), and shown with the adversarial image, the
perturbation magnified, the predictions before and after, and each method's explanation of the prediction before
and after side by side. The cost is said up front (one attack step timed after a warm-up). stdout gets only the path
of the report's ``index.html``; exit codes as for ``seewhy`` (0 ok, 1 no readable image, 2 usage error, 3 some
images unreadable or a method failed; the report lists them).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .. import command, zoo
from ..argtypes import positive_int
from ..command import EXIT_NOTHING
from ..progress import format_seconds

log = logging.getLogger("seewhy")

__all__ = ["DEFAULT_METHODS", "add_parser", "parse_eps", "parse_eps_list", "run"]

DEFAULT_METHODS = ("saliency", "gradcam")
#: share of the pixels compared by the top-k overlap of two heatmaps
TOP_SHARE = 0.1
_FORMAT = {"epilog": command.EPILOG, "formatter_class": argparse.RawDescriptionHelpFormatter}


# -- values --------------------------------------------------------------------------------------------


def parse_eps(text: str) -> float:
    """A budget: ``0.01``, ``2/255`` or ``8 / 255`` -> a finite float >= 0 (ArgumentTypeError otherwise)."""
    raw = text.strip()
    try:
        if "/" in raw:
            num, _, den = raw.partition("/")
            value = float(num) / float(den)
        else:
            value = float(raw)
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"expected a budget such as 0.01 or 2/255, got {text!r}") from None
    if not 0.0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a budget >= 0 such as 2/255, got {text!r}")
    return value


def parse_eps_list(text: str) -> list[float]:
    """``0,1/255,2/255`` -> [0.0, 0.0039, 0.0078] (sorted, distinct)."""
    values = [parse_eps(v) for v in text.split(",") if v.strip()]
    if not values:
        raise argparse.ArgumentTypeError(f"expected comma-separated budgets such as 0,1/255,2/255, got {text!r}")
    return sorted(set(values))


def _methods(text: str) -> list[str]:
    from ..core import METHODS

    names = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in names if m not in METHODS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown method(s) {', '.join(unknown) or repr(text)}; registered: "
                                         f"{', '.join(METHODS)}")
    return list(dict.fromkeys(names))


# -- parser --------------------------------------------------------------------------------------------


def add_parser(subparsers: Any, common: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """Add ``attack`` to ``subparsers``; ``common`` is the parent parser of ``-v``/``-q``. Sets ``func=run``."""
    p = subparsers.add_parser(
        "attack", parents=[common] if common is not None else [],
        help="adversarial examples (FGSM, PGD) and how they change the explanations",
        description="Attack each image within a small budget (FGSM, Goodfellow et al. 2015; PGD, Madry et al. "
                    "2018) and show the original, the adversarial image, the perturbation magnified, the "
                    "predictions before and after, and each method's explanation of the prediction before and after "
                    "side by side (an invisible change of the input can change the explanation); optionally the "
                    "robustness curve. Writes a self-contained HTML report, the adversarial images as PNG files, "
                    "the exact float images in adversarial.npz and manifest.json.", **_FORMAT)
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (PNG, JPEG, ...)")
    p.add_argument("--model", required=True, metavar="NAME|SPEC",
                   help=f"a zoo model ({', '.join(zoo.MODELS)}), path/file.py:factory, package.module:factory or a "
                        "TorchScript file")
    p.add_argument("--weights", metavar="FILE", help="a state-dict file to load into the model")
    p.add_argument("--eps", type=parse_eps, metavar="EPS",
                   help="the budget on [0, 1] pixels, a number or a fraction (default: 2/255 for linf, 0.5 for l2)")
    p.add_argument("--attack", choices=("pgd", "fgsm"), default="pgd", help="the attack (default: %(default)s)")
    p.add_argument("--norm", choices=("linf", "l2"), default="linf",
                   help="the ball of PGD (default: %(default)s; FGSM is linf)")
    p.add_argument("--steps", type=positive_int, default=10, metavar="N",
                   help="PGD iterations (default: %(default)s)")
    p.add_argument("--step-size", type=parse_eps, metavar="A", help="PGD step (default: 2.5 * eps / steps)")
    p.add_argument("--target", metavar="K|NAME",
                   help="a targeted attack toward this class (an index, or a name such as airliner for a model "
                        "with class names); default: untargeted, away from the prediction")
    p.add_argument("--no-random-start", dest="random_start", action="store_false",
                   help="start PGD at the image instead of a random point in the ball")
    p.add_argument("--seed", type=int, default=0, metavar="N",
                   help="seed of the random start and of the methods that draw random numbers (default: 0)")
    p.add_argument("--method", type=_methods, default=list(DEFAULT_METHODS), metavar="M1,M2",
                   help=f"explanation methods, comma-separated (default: {','.join(DEFAULT_METHODS)})")
    p.add_argument("--layer", metavar="NAME",
                   help="layer for the methods that take one (default: the model's CAM layer)")
    p.add_argument("--curve", type=parse_eps_list, metavar="0,1/255,2/255,4/255",
                   help="also the robustness curve: the share of predictions kept at each budget (same attack)")
    p.add_argument("--batch-size", type=positive_int, default=8, metavar="N",
                   help="images attacked together (default: %(default)s)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder for the report")
    p.add_argument("--overwrite", action="store_true", help="write into a non-empty output folder")
    p.add_argument("--device", default="cpu", help="torch device: cpu (default), cuda, cuda:1, mps")
    p.set_defaults(func=run)
    return p


# -- the command ---------------------------------------------------------------------------------------


def _target(text: str | None, names: Sequence[str] | None) -> int | None:
    from ..targets import parse_class

    return None if text is None else parse_class(text, names, "--target")


def _attack_options(args: argparse.Namespace, spec: zoo.ModelSpec, target: int | None) -> dict[str, Any]:
    norm = (spec.mean, spec.std)
    if args.attack == "fgsm":
        return {"target": target, "normalize": norm}
    return {"steps": args.steps, "step_size": args.step_size, "norm": args.norm, "target": target,
            "random_start": args.random_start, "seed": args.seed, "normalize": norm}


def _run_attack(name: str, model: nn.Module, x: Tensor, eps: float, options: dict[str, Any],
                progress: bool = True) -> Any:
    from . import fgsm, pgd

    if name == "fgsm":
        return fgsm(model, x, eps, **options)
    return pgd(model, x, eps, progress=progress, **options)


def run(args: argparse.Namespace) -> int:
    """Run a parsed ``seewhy attack``; returns the exit code."""
    from .. import images
    from ..inputs import load_inputs, stack_batches
    from ..plan import give_layer
    from . import robustness_curve

    if args.attack == "fgsm" and args.norm != "linf":
        raise ValueError("FGSM is an L-inf attack; use --attack pgd with --norm l2, or drop --norm")
    eps = args.eps if args.eps is not None else (2 / 255 if args.norm == "linf" else 0.5)
    if args.norm == "linf" and eps > 1:
        raise ValueError(f"--eps {eps:g} is larger than the [0, 1] pixel range; L-inf budgets are like 2/255")
    model, spec, device = command.open_model(args)
    names = zoo.class_names(model)
    target = _target(args.target, names)
    from ..core import seeded

    params: dict[str, dict[str, Any]] = {m: seeded(m, {}, args.seed) for m in args.method}
    give_layer(model, args.method, params, args.layer, spec.cam_layer)

    loaded, failures = load_inputs(args.images)
    rows: list[tuple[str, Tensor]] = []
    for source, img in loaded:
        try:
            pic = images.to_tensor(images.resize_crop(img, spec.resize, spec.crop, spec.interpolation))
        except (ValueError, TypeError, OSError) as err:
            log.warning("skipping %s: %s", source, err)
            failures.append((source, f"preprocessing failed: {err}"))
            continue
        rows.append((source, pic))
    if not rows:
        log.error("none of the %d image(s) could be read; nothing to report", len(args.images))
        return EXIT_NOTHING
    batches = stack_batches([pic for _, pic in rows], args.batch_size, device)
    options = _attack_options(args, spec, target)
    estimate = _time(args, model, batches, eps, options)

    results = [_run_attack(args.attack, model, x, eps, options) for x in batches]
    failed_steps: list[str] = []
    explanations = {}
    for method in args.method:
        try:
            explanations[method] = [_explain_pair(model, x, r, method, params[method], spec, names)
                                    for x, r in zip(batches, results, strict=True)]
        except (ValueError, TypeError, RuntimeError) as err:
            log.warning("%s failed: %s", method, err)
            failures.append((method, f"the explanation failed: {err}"))
            failed_steps.append(method)
    curve = None
    if args.curve:
        curve_options = {**options, "progress": False} if args.attack == "pgd" else dict(options)
        parts = [robustness_curve(model, x, None, args.curve, attack=args.attack, **curve_options) for x in batches]
        curve = _join_curves(parts)

    from . import report as attack_report

    settings = {"attack": args.attack, "eps": eps, "norm": "linf" if args.attack == "fgsm" else args.norm,
                "steps": 1 if args.attack == "fgsm" else args.steps,
                "step_size": eps if args.attack == "fgsm" else results[0].params["step_size"],
                "target": args.target, "target_index": target,
                "random_start": args.random_start if args.attack == "pgd" else False,
                "seed": args.seed, "methods": list(args.method), "method_params": params, "curve": args.curve,
                "batch_size": args.batch_size, "normalize": {"mean": list(spec.mean), "std": list(spec.std)}}
    weights = args.weights or ("pretrained" if spec.has_weights else "none (random init)")
    header = {"kind": "attack", "layer": None, "estimate": estimate,
              "model": {"name": spec.name, "spec": args.model, "description": spec.description, "weights": weights},
              "settings": {"device": str(device), **settings},
              "command": ["seewhy", *getattr(args, "argv", sys.argv[1:])]}
    path = attack_report.write_attack(args.out, header, [s for s, _ in rows], batches, results, explanations,
                                      curve=curve, class_names=names, failures=failures, overwrite=args.overwrite)
    sys.stdout.write(f"{path}\n")
    unread = [f for f in failures if f[0] not in failed_steps]
    return command.exit_code(unread, failed_steps)


def _time(args: argparse.Namespace, model: nn.Module, batches: Sequence[Tensor], eps: float,
          options: dict[str, Any]) -> dict[str, Any]:
    """Log the cost: one attack step on the first batch (the faster of two after a warm-up) scaled to the batches,
    steps and curve points; returns the estimate ({} when not logging). A bad target fails here, before any work."""
    first = batches[0]
    one = {**options, "steps": 1} if args.attack == "pgd" else options
    _run_attack(args.attack, model, first, max(eps, 1e-3), one, progress=False)  # warm-up, checks the target
    if not log.isEnabledFor(logging.INFO):
        return {}
    seconds = []
    for _ in range(2):
        start = time.perf_counter()
        _run_attack(args.attack, model, first, max(eps, 1e-3), one, progress=False)
        seconds.append(time.perf_counter() - start)
    per_step = min(seconds) / first.shape[0]
    images = sum(int(x.shape[0]) for x in batches)
    steps = 1 if args.attack == "fgsm" else args.steps
    attacks = 1 + len([e for e in (args.curve or []) if e > 0])
    total = per_step * images * steps * attacks
    log.info("cost: one %s step takes %s per image (batch of %d at %dx%d)", args.attack, format_seconds(per_step),
             first.shape[0], first.shape[-2], first.shape[-1])
    log.info("about %s for %d image%s x %d step%s%s; then the explanations", format_seconds(total), images,
             "s"[:images != 1], steps, "s"[:steps != 1],
             f" x {attacks} attacks (the curve's budgets)" if attacks > 1 else "")
    return {"seconds_per_image_step": per_step, "images": images, "steps": steps, "attacks": attacks,
            "seconds": total}


def _explain_pair(model: nn.Module, x: Tensor, result: Any, method: str, params: dict[str, Any],
                  spec: zoo.ModelSpec, names: Sequence[str] | None) -> dict[str, Any]:
    """The method's explanation of the clean prediction on the clean images and of the adversarial prediction on the
    adversarial images: heatmaps (B,1,H,W) in [0, 1], with the method's heatmap convention, and the overlays."""
    from .. import viz
    from ..core import explain
    from ..images import normalize

    out: dict[str, Any] = {}
    for key, images, target in (("before", x, result.before), ("after", result.adversarial, result.after)):
        exp = explain(model, normalize(images, spec.mean, spec.std), method, target=target.tolist(), **params)
        pictures = viz.tensor_to_image(images, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
        out[key] = {"heatmap": exp.heatmap().detach().float().cpu(), "overlay": exp.overlay(images=list(pictures)),
                    "signed": exp.heatmap_steps().get("sign") == "all"}
    out["spearman"], out["top_overlap"] = heatmap_similarity(out["before"]["heatmap"], out["after"]["heatmap"])
    return out


def heatmap_similarity(a: Tensor, b: Tensor, top: float = TOP_SHARE) -> tuple[Tensor, Tensor]:
    """Per image: the Spearman rank correlation of two heatmaps (B,1,H,W) and the overlap of their top ``top``
    share of pixels (|top_a ∩ top_b| / k), as Ghorbani et al. 2019 compare explanations under attack."""
    fa, fb = a.flatten(1).double(), b.flatten(1).double()
    ra = torch.stack([_ranks(row) for row in fa])
    rb = torch.stack([_ranks(row) for row in fb])
    ra, rb = ra - ra.mean(1, keepdim=True), rb - rb.mean(1, keepdim=True)
    rho = (ra * rb).sum(1) / (ra.norm(dim=1) * rb.norm(dim=1)).clamp(min=1e-30)
    k = max(1, round(top * fa.shape[1]))
    ta = torch.zeros_like(fa, dtype=torch.bool).scatter_(1, fa.topk(k, 1).indices, True)
    tb = torch.zeros_like(fb, dtype=torch.bool).scatter_(1, fb.topk(k, 1).indices, True)
    return rho.float(), ((ta & tb).sum(1).double() / k).float()


def _ranks(v: Tensor) -> Tensor:
    """Ranks of a 1-D tensor, ties given their average rank (a map with a flat zero region after a ReLU has many)."""
    values, order = v.sort()
    _, inverse, counts = torch.unique_consecutive(values, return_inverse=True, return_counts=True)
    ends = counts.cumsum(0).double()
    average = (2 * ends - counts.double() - 1) / 2
    out = torch.empty_like(v, dtype=torch.float64)
    out[order] = average[inverse]
    return out


def _join_curves(parts: Sequence[Any]) -> Any:
    from . import RobustnessCurve

    correct = torch.cat([p.correct for p in parts], 1)
    success = torch.cat([p.success for p in parts], 1)
    return RobustnessCurve(eps=parts[0].eps, accuracy=correct.float().mean(1), correct=correct, success=success,
                           attack=parts[0].attack, params=parts[0].params)
