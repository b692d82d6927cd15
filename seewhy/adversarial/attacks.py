"""FGSM, PGD and robustness curves (Goodfellow et al. 2015; Madry et al. 2018), and what attacks share: image and
target checks, the model's logits of [0, 1] images, the eps-ball projection."""

from __future__ import annotations

import logging
import math
import numbers
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..engine import prefers_channels_last
from ..hooks import model_state
from ..progress import format_seconds
from ..progress import progress as progress_bar
from ..zoo import Normalize, resolve_normalize
from ..zoo import class_names as zoo_class_names

log = logging.getLogger("seewhy")



NORMS = ("linf", "l2")
TargetArg = int | str | Sequence[int | str] | Tensor | None


# -- results -------------------------------------------------------------------------------------------


@dataclass
class Attack:
    """The result of :func:`fgsm` / :func:`pgd` (all tensors detached, on the images' device).

    ``adversarial`` (B,3,H,W) in [0, 1]; ``perturbation = adversarial - images``; ``labels`` (B,) the classes
    moved away from (the clean predictions unless given); ``target`` (B,) or None; ``success`` (B,) bool: the
    prediction reaches the target (targeted) or differs from the label (untargeted). ``before``/``after`` (B,) the
    predictions on the clean / adversarial images, ``before_prob``/``after_prob`` (B,) their softmax
    probabilities; ``target_prob_before``/``target_prob_after`` the target's (targeted only). ``losses`` (steps + 1,)
    the mean cross-entropy (to the label, or to the target when targeted) at the start and after each step.
    """

    adversarial: Tensor
    perturbation: Tensor
    success: Tensor
    before: Tensor
    after: Tensor
    before_prob: Tensor
    after_prob: Tensor
    labels: Tensor
    eps: float
    norm: str
    params: dict[str, Any]
    target: Tensor | None = None
    target_prob_before: Tensor | None = None
    target_prob_after: Tensor | None = None
    losses: Tensor = field(default_factory=lambda: torch.empty(0))
    seconds: float = 0.0

    @property
    def targeted(self) -> bool:
        return self.target is not None

    @property
    def linf(self) -> Tensor:
        """(B,) L-inf norm of the perturbation."""
        return self.perturbation.flatten(1).abs().amax(1)

    @property
    def l2(self) -> Tensor:
        """(B,) L2 norm of the perturbation."""
        return self.perturbation.flatten(1).norm(dim=1)

    @property
    def psnr(self) -> Tensor:
        """(B,) PSNR in dB of the adversarial image against the original (peak 1): ``10 log10(1 / MSE)``; inf
        for an unchanged image."""
        mse = self.perturbation.flatten(1).double().pow(2).mean(1)
        return torch.where(mse > 0, -10.0 * torch.log10(mse.clamp(min=1e-300)), torch.full_like(mse, math.inf))

    @property
    def success_rate(self) -> float:
        return float(self.success.float().mean()) if self.success.numel() else float("nan")


@dataclass
class RobustnessCurve:
    """The result of :func:`robustness_curve`: ``eps`` (E,), ``accuracy`` (E,) the share of images still
    classified as their label, ``correct`` (E, B) bool per image, ``success`` (E, B) the attack's success per image
    (for an untargeted attack, the complement of ``correct``), ``attack`` and ``params``."""

    eps: Tensor
    accuracy: Tensor
    correct: Tensor
    success: Tensor
    attack: str
    params: dict[str, Any]

    @property
    def success_rate(self) -> Tensor:
        """(E,) the share of images on which the attack succeeds."""
        return self.success.float().mean(1)


# -- checks --------------------------------------------------------------------------------------------


def _check_model(model: Any) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")


def _check_images(images: Any) -> Tensor:
    if not isinstance(images, Tensor):
        raise TypeError(f"images must be a float tensor (B,3,H,W) in [0, 1], got {type(images).__name__}")
    if not images.is_floating_point():
        raise TypeError(f"images must be a float tensor in [0, 1], got {images.dtype}; convert uint8 pictures with "
                        "images.float() / 255")
    if images.ndim == 3:
        images = images.unsqueeze(0)
    if images.ndim != 4 or images.shape[0] == 0:
        raise ValueError(f"images must be (B,C,H,W) (or (C,H,W) for one), got shape {tuple(images.shape)}")
    images = images.detach()
    if not torch.isfinite(images).all():
        raise ValueError("images hold NaN or infinite values")
    lo, hi = float(images.min()), float(images.max())
    if lo < 0.0 or hi > 1.0:
        raise ValueError(f"images must be in [0, 1] (they range over [{lo:.3g}, {hi:.3g}]): pass pictures, not "
                         "normalised model inputs; the model's normalisation goes in normalize=(mean, std)")
    return images


def _int(value: Any, what: str, low: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ValueError(f"{what} must be an int >= {low}, got {value!r}")
    return int(value)


def _number(value: Any, what: str, low: float = 0.0, high: float = math.inf, open_low: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{what} must be a number, got {value!r}")
    v = float(value)
    if not math.isfinite(v) or v < low or v > high or (open_low and v == low):
        raise ValueError(f"{what} must be a finite number {'>' if open_low else '>='} {low:g}"
                         f"{f' and <= {high:g}' if math.isfinite(high) else ''}, got {value!r}")
    return v


def _seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed must be an int, got {seed!r}")
    return int(seed)


def _classes(spec: TargetArg, n: int, model: nn.Module, what: str) -> Tensor | None:
    """``spec`` (an int, a class name, or one per image) -> (n,) long on the CPU; None for None."""
    if spec is None:
        return None
    from ..targets import class_index

    def one(v: Any) -> int:
        if isinstance(v, str):
            names = zoo_class_names(model)
            if not names:
                raise ValueError(f"{what} {v!r} is a class name, but {type(model).__name__} has no class names (the "
                                 "pretrained zoo models have ImageNet's); give the class index")
            return class_index(v, names)
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            raise TypeError(f"{what} must be an int, a class name, or one per image; got {v!r}")
        return int(v)

    if isinstance(spec, Tensor):
        if spec.is_floating_point() or spec.is_complex():
            raise TypeError(f"{what} must hold integer class indices, got a {spec.dtype} tensor")
        values = spec.detach().long().cpu().reshape(-1)
        if spec.ndim == 0:
            values = values.expand(n).clone()
    elif isinstance(spec, (str, numbers.Integral)) and not isinstance(spec, bool):
        values = torch.full((n,), one(spec), dtype=torch.long)
    elif isinstance(spec, Sequence):
        values = torch.tensor([one(v) for v in spec], dtype=torch.long)
    else:
        raise TypeError(f"{what} must be an int, a class name, a (B,) tensor or a list, got {type(spec).__name__}")
    if values.shape[0] != n:
        raise ValueError(f"{what} has {values.shape[0]} entries for {n} images; give one class, or one per image")
    if (values < 0).any():
        raise ValueError(f"{what} holds negative class indices {values[values < 0].tolist()}; classes are 0..K-1")
    return values


def _check_range(classes: Tensor | None, k: int, what: str) -> None:
    if classes is not None and classes.numel() and int(classes.max()) >= k:
        raise ValueError(f"{what} {int(classes.max())} is out of range: the model has {k} classes (0..{k - 1})")


# -- FGSM and PGD --------------------------------------------------------------------------------------


class _Logits:
    """``x in [0, 1] -> model(normalize(x))``, checked to be (B, K) class scores."""

    def __init__(self, model: nn.Module, normalize: Callable[[Tensor], Tensor]) -> None:
        self.model, self.normalize = model, normalize
        self.channels_last: bool | None = None

    def __call__(self, x: Tensor) -> Tensor:
        z = self.normalize(x)
        if self.channels_last is None:  # the memory layout conv models run fastest in (seewhy.engine)
            self.channels_last = prefers_channels_last(self.model, z)
        if self.channels_last:
            z = z.contiguous(memory_format=torch.channels_last)
        out = self.model(z)
        if not isinstance(out, Tensor) or out.ndim != 2:
            shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(f"the model returns {shape}; attacks need (B, K) class scores (logits)")
        return out


def _project(delta: Tensor, images: Tensor, eps: float, norm: str) -> Tensor:
    """``delta`` projected onto the eps-ball, then ``images + delta`` onto [0, 1]; returns the adversarial images.
    Clipping to the box after the ball keeps both (it only shrinks coordinates of delta)."""
    if norm == "linf":
        delta = delta.clamp(-eps, eps)
    else:
        n = delta.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
        delta = delta * torch.where(n > eps, eps / n.clamp(min=1e-30), torch.ones_like(n))
    return (images + delta).clamp(0.0, 1.0)


def _random_start(images: Tensor, eps: float, norm: str, generator: torch.Generator) -> Tensor:
    """A uniform draw in the eps-ball (from the CPU ``generator``), as a delta like ``images``."""
    shape = tuple(images.shape)
    if norm == "linf":
        u = torch.rand(shape, generator=generator, dtype=torch.float64)
        delta = (2.0 * u - 1.0) * eps
    else:  # uniform in the L2 ball: a uniform direction, radius eps * U^(1/d)
        d = math.prod(shape[1:])
        g = torch.randn(shape, generator=generator, dtype=torch.float64)
        r = torch.rand(shape[0], generator=generator, dtype=torch.float64).pow(1.0 / d)
        delta = g / g.flatten(1).norm(dim=1).clamp(min=1e-30).view(-1, 1, 1, 1) * (eps * r).view(-1, 1, 1, 1)
    return delta.to(images.device, images.dtype)


def _step_direction(grad: Tensor, norm: str) -> Tensor:
    if norm == "linf":
        return grad.sign()
    n = grad.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    return grad / n.clamp(min=1e-12)


def _attack(model: nn.Module, images: Tensor, eps: float, *, steps: int, step_size: float, norm: str,
            target: TargetArg, labels: TargetArg, random_start: bool, seed: int, normalize: Normalize,
            name: str, progress: bool) -> Attack:
    """The shared loop of FGSM (one step of eps from the image) and PGD."""
    _check_model(model)
    images = _check_images(images)
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {', '.join(NORMS)}, got {norm!r}")
    b = images.shape[0]
    targets = _classes(target, b, model, "target")
    given_labels = _classes(labels, b, model, "labels")
    norm_fn = resolve_normalize(model, normalize)
    logits_of = _Logits(model, norm_fn)
    generator = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    with torch.inference_mode(False), model_state(model):
        if images.is_inference():  # made under inference_mode: a normal copy, so autograd can use it
            images = images.clone()
        with torch.no_grad():
            clean = logits_of(images)
        k = clean.shape[1]
        _check_range(targets, k, "target")
        _check_range(given_labels, k, "labels")
        before = clean.argmax(1)
        lab = given_labels.to(images.device) if given_labels is not None else before
        tgt = targets.to(images.device) if targets is not None else None
        goal = tgt if tgt is not None else lab
        sign = -1.0 if tgt is not None else 1.0  # ascend the label's loss, descend the target's
        adv = images
        if random_start and eps > 0:
            adv = _project(_random_start(images, eps, norm, generator), images, eps, norm)
        losses = torch.empty(steps + 1, dtype=torch.float64)
        with torch.no_grad():
            losses[0] = float(F.cross_entropy(logits_of(adv) if adv is not images else clean, goal))
        timed = time.perf_counter()
        with progress_bar(steps, name, enabled=progress and steps > 1) as bar:
            for step in range(steps):
                x = adv.detach().requires_grad_(True)
                with torch.enable_grad():
                    # summed over the batch: each image's gradient does not depend on the others
                    loss = F.cross_entropy(logits_of(x), goal, reduction="sum")
                    (grad,) = torch.autograd.grad(loss, x)
                losses[step] = float(loss.detach()) / b if step else losses[0]
                adv = _project(adv.detach() + sign * step_size * _step_direction(grad, norm) - images, images, eps,
                               norm).detach()
                if step == 0 and steps > 2 and progress:
                    log.info("%s: %d steps, batch %d at %dx%d: about %s", name, steps, b, images.shape[-2],
                             images.shape[-1], format_seconds((time.perf_counter() - timed) * steps))
                bar.update()
        with torch.no_grad():
            final = logits_of(adv)
        if steps:
            losses[steps] = float(F.cross_entropy(final, goal))
    after = final.argmax(1)
    p0, p1 = clean.softmax(1), final.softmax(1)
    success = after == tgt if tgt is not None else after != lab
    params = {"attack": name, "eps": eps, "norm": norm, "steps": steps, "step_size": step_size,
              "random_start": bool(random_start and eps > 0), "seed": seed, "targeted": tgt is not None,
              "target": None if tgt is None else tgt.tolist(), "labels": "given" if given_labels is not None
              else "clean predictions"}
    return Attack(
        adversarial=adv.detach(), perturbation=(adv - images).detach(), success=success, before=before, after=after,
        before_prob=p0.gather(1, before[:, None])[:, 0], after_prob=p1.gather(1, after[:, None])[:, 0], labels=lab,
        eps=eps, norm=norm, params=params, target=tgt,
        target_prob_before=None if tgt is None else p0.gather(1, tgt[:, None])[:, 0],
        target_prob_after=None if tgt is None else p1.gather(1, tgt[:, None])[:, 0],
        losses=losses.float(), seconds=time.perf_counter() - start)


def fgsm(model: nn.Module, images: Tensor, eps: float, target: TargetArg = None, normalize: Normalize = None, *,
         labels: TargetArg = None) -> Attack:
    """Fast gradient sign method (Goodfellow et al. 2015): ``x' = clip(x + eps * sign(grad_x CE(f(x), y)), 0, 1)``.

    Args:
        images: (B,3,H,W) in [0, 1]. eps: the L-inf budget in [0, 1] (e.g. 8/255).
        target: an int, a class name (models with class names), or one per image: then the targeted variant,
            ``x' = clip(x - eps * sign(grad_x CE(f(x), t)), 0, 1)``.
        normalize: the model's input normalisation, (mean, std), a callable, False, or None (the zoo model's).
        labels: the classes to move away from (default: the clean predictions).
    """
    eps = _number(eps, "eps", 0.0, 1.0)
    return _attack(model, images, eps, steps=1 if eps > 0 else 0, step_size=eps, norm="linf", target=target,
                   labels=labels, random_start=False, seed=0, normalize=normalize, name="fgsm", progress=False)


def pgd(model: nn.Module, images: Tensor, eps: float, steps: int = 10, step_size: float | None = None,
        norm: str = "linf", targeted: bool = False, target: TargetArg = None, random_start: bool = True,
        seed: int = 0, normalize: Normalize = None, *, labels: TargetArg = None, progress: bool = True) -> Attack:
    """Projected gradient descent (Madry et al. 2018) in the L-inf or L2 ball of radius ``eps``.

    ``x_{k+1} = Proj_{B(x, eps) ∩ [0,1]}(x_k ± a * s(grad_x CE(f(x_k), y)))``, ``s`` = sign (linf) or
    ``g / ||g||_2`` (l2); + for untargeted (away from ``labels``), - toward ``target``.

    Args:
        images: (B,3,H,W) in [0, 1]; the result follows their device and dtype.
        eps: the radius (L-inf: e.g. 2/255, at most 1; L2: e.g. 0.5). steps: iterations (Madry: 7-40).
        step_size: default ``2.5 * eps / steps`` (Madry et al.).
        targeted: insist on a target (ValueError without one); a given ``target`` (an int, a class name, or one per
            image) always makes the attack targeted.
        random_start: start from a uniform draw in the ball (a generator seeded by ``seed``).
        normalize: the model's input normalisation, (mean, std), a callable, False, or None (the zoo model's).
        labels: the classes an untargeted attack moves away from (default: the clean predictions).
        progress: a progress bar and the cost after the first step (False: silent).
    """
    eps = _number(eps, "eps", 0.0, 1.0 if norm == "linf" else math.inf)
    steps = _int(steps, "steps", 1)
    if targeted and target is None:
        raise ValueError("targeted=True needs a target: pass target=CLASS (an int, a class name, or one per image)")
    if step_size is None:
        step_size = 2.5 * eps / steps
    step_size = _number(step_size, "step_size")
    return _attack(model, images, eps, steps=steps if eps > 0 else 0, step_size=step_size, norm=norm, target=target,
                   labels=labels, random_start=bool(random_start), seed=_seed(seed), normalize=normalize,
                   name=f"pgd-{norm}", progress=progress)


def robustness_curve(model: nn.Module, images: Tensor, labels: TargetArg, eps_values: Sequence[float],
                     attack: str = "pgd", **attack_kwargs: Any) -> RobustnessCurve:
    """Accuracy under attack as a function of the budget: for each eps, the share of images whose adversarial
    prediction is still the label (``labels``: (B,) true classes; None: the clean predictions, so the curve is the
    share of predictions that survive). eps 0 gives the clean accuracy. ``attack``: ``"pgd"`` or ``"fgsm"``, with
    ``attack_kwargs`` passed on (``steps``, ``norm``, ``target``, ``normalize``, ``seed`` ...)."""
    attacks: dict[str, Callable[..., Attack]] = {"pgd": pgd, "fgsm": fgsm}
    if attack not in attacks:
        raise ValueError(f"attack must be one of {', '.join(attacks)}, got {attack!r}")
    if isinstance(eps_values, (numbers.Real, Tensor)) and not (isinstance(eps_values, Tensor) and eps_values.ndim):
        raise TypeError("eps_values must be a sequence of budgets, e.g. [0, 1/255, 2/255, 4/255]")
    eps_list = [float(e) for e in (eps_values.tolist() if isinstance(eps_values, Tensor) else eps_values)]
    if not eps_list:
        raise ValueError("eps_values is empty; give budgets such as [0, 1/255, 2/255, 4/255]")
    if "labels" in attack_kwargs:
        raise TypeError("give the labels as robustness_curve's third argument, not as labels=")
    if attack == "pgd":
        attack_kwargs.setdefault("progress", False)
    images = _check_images(images)
    correct, success = [], []
    params: dict[str, Any] = {}
    for eps in eps_list:
        r = attacks[attack](model, images, eps, labels=labels, **attack_kwargs)
        correct.append((r.after == r.labels).cpu())
        success.append(r.success.cpu())
        params = {k: v for k, v in r.params.items() if k != "eps"}
    c = torch.stack(correct)
    return RobustnessCurve(eps=torch.tensor(eps_list, dtype=torch.float64), accuracy=c.float().mean(1), correct=c,
                           success=torch.stack(success), attack=attack, params=params)
