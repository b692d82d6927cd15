"""Regularisers for feature visualization: penalties added to the loss, and operations on the image between steps.

Penalties (Mahendran & Vedaldi 2015; Olah et al. 2017's "frequency penalization"): :class:`L1`, :class:`L2` and
:class:`TotalVariation` of the image in [0, 1]. Operations (Yosinski et al. 2015, "Understanding neural networks
through deep visualization", Table 1): :class:`Decay` (``x <- (1 - decay) x``), :class:`Blur` (a Gaussian every n
steps), :class:`ClipNorm` and :class:`ClipContribution` (pixels with a small norm / a small contribution
``|sum_c x_c dL/dx_c|`` set to grey). The operations act on the parameterisation's linear image (before the colour
decorrelation and the sigmoid, where 0 is mid-grey), so they work for pixel and FFT parameterisations alike.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from .param import ImageParam, decorrelate_colors

__all__ = ["Blur", "ClipContribution", "ClipNorm", "Decay", "L1", "L2", "Regularizer", "TotalVariation",
           "as_regularizers", "yosinski_preset"]


class Regularizer:
    """Base class. ``penalty(image)`` -> (B,) added to the loss (image (B,3,H,W) in [0, 1]), or None;
    ``after_step(param, step, grad)`` changes the image in place after optimiser step ``step`` (0-based); ``grad`` is
    the loss's gradient with respect to the image in [0, 1] when ``needs_grad``."""

    needs_grad = False

    def penalty(self, image: Tensor) -> Tensor | None:
        return None

    @torch.no_grad()
    def after_step(self, param: ImageParam, step: int, grad: Tensor | None) -> None:
        return None

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in vars(self).items())
        return f"{type(self).__name__}({fields})"


def _positive(value: float, what: str, *, zero: bool = True) -> float:
    v = float(value)
    if not math.isfinite(v) or v < 0 or (v == 0 and not zero):
        raise ValueError(f"{what} must be a finite number {'>=' if zero else '>'} 0, got {value!r}")
    return v


def _percentile(value: float, what: str) -> float:
    v = float(value)
    if not math.isfinite(v) or not 0 <= v <= 100:
        raise ValueError(f"{what} must be a percentile in [0, 100], got {value!r}")
    return v


class L1(Regularizer):
    """``weight * mean |x - constant|`` over pixels and channels (a sparse image, mostly ``constant``)."""

    def __init__(self, weight: float = 1.0, constant: float = 0.5) -> None:
        self.weight = _positive(weight, "weight")
        self.constant = float(constant)

    def penalty(self, image: Tensor) -> Tensor:
        return self.weight * (image - self.constant).abs().flatten(1).mean(1)


class L2(Regularizer):
    """``weight * mean (x - constant)^2`` over pixels and channels (Simonyan et al. 2013's L2 on the class model)."""

    def __init__(self, weight: float = 1.0, constant: float = 0.5) -> None:
        self.weight = _positive(weight, "weight")
        self.constant = float(constant)

    def penalty(self, image: Tensor) -> Tensor:
        return self.weight * (image - self.constant).pow(2).flatten(1).mean(1)


class TotalVariation(Regularizer):
    """Total variation, the mean over positions of ``(dx^2 + dy^2)^(beta/2)`` (Mahendran & Vedaldi's
    ``V^beta``), times ``weight``; ``beta=1`` is the anisotropic ``|dx| + |dy|`` (as ``tf.image.total_variation``)."""

    def __init__(self, weight: float = 1.0, beta: float = 1.0) -> None:
        self.weight = _positive(weight, "weight")
        self.beta = _positive(beta, "beta", zero=False)

    def penalty(self, image: Tensor) -> Tensor:
        dy = image[..., 1:, :-1] - image[..., :-1, :-1]
        dx = image[..., :-1, 1:] - image[..., :-1, :-1]
        if self.beta == 1:
            tv = dx.abs() + dy.abs()
        else:
            tv = (dx.pow(2) + dy.pow(2) + 1e-8).pow(self.beta / 2)
        return self.weight * tv.flatten(1).mean(1)


class Blur(Regularizer):
    """Yosinski et al. 2015: a Gaussian blur of std ``sigma`` px after every ``every``-th step."""

    def __init__(self, sigma: float = 0.5, every: int = 4) -> None:
        self.sigma = _positive(sigma, "sigma")
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be an int >= 1 (blur after every n-th step), got {every!r}")
        self.every = every

    @torch.no_grad()
    def after_step(self, param: ImageParam, step: int, grad: Tensor | None) -> None:
        if self.sigma > 0 and (step + 1) % self.every == 0:
            param.blur(self.sigma)


class Decay(Regularizer):
    """Yosinski et al. 2015's L2 decay: ``x <- (1 - rate) x`` after each step (towards grey)."""

    def __init__(self, rate: float) -> None:
        self.rate = _positive(rate, "rate")
        if self.rate >= 1:
            raise ValueError(f"rate must be < 1 (it multiplies the image by 1 - rate), got {rate!r}")

    @torch.no_grad()
    def after_step(self, param: ImageParam, step: int, grad: Tensor | None) -> None:
        if self.rate > 0:
            param.set_linear(param.linear() * (1 - self.rate))


def _grey_out(param: ImageParam, score: Tensor, percentile: float) -> None:
    """Set the pixels whose ``score`` (B,H,W) is below its per-image ``percentile`` to grey (linear image 0)."""
    if percentile <= 0:
        return
    flat = score.flatten(1).float()
    cut = torch.quantile(flat, percentile / 100, dim=1, keepdim=True)
    keep = (flat >= cut).reshape(score.shape).unsqueeze(1)
    param.set_linear(param.linear() * keep.to(score.dtype))


class ClipNorm(Regularizer):
    """Yosinski et al. 2015: after each step, pixels whose colour norm is in the lowest ``percentile`` % of the image
    become grey (norm of the centred colour, after the colour decorrelation)."""

    def __init__(self, percentile: float) -> None:
        self.percentile = _percentile(percentile, "percentile")

    @torch.no_grad()
    def after_step(self, param: ImageParam, step: int, grad: Tensor | None) -> None:
        lin = param.linear()
        colour = decorrelate_colors(lin) if param.decorrelate else lin
        _grey_out(param, colour.norm(dim=1), self.percentile)


class ClipContribution(Regularizer):
    """Yosinski et al. 2015: after each step, pixels whose contribution ``|sum_c (x_c - 0.5) dobjective/dx_c|`` is in
    the lowest ``percentile`` % of the image become grey."""

    needs_grad = True

    def __init__(self, percentile: float) -> None:
        self.percentile = _percentile(percentile, "percentile")

    @torch.no_grad()
    def after_step(self, param: ImageParam, step: int, grad: Tensor | None) -> None:
        if grad is None:
            return
        image = param()
        _grey_out(param, ((image - 0.5) * grad).sum(1).abs(), self.percentile)


#: Yosinski et al. 2015, Table 1: (L2 decay, blur sigma, blur every, small-norm percentile, small-contribution pct)
YOSINSKI_PRESETS: dict[int, tuple[float, float, int, float, float]] = {
    1: (0.0, 0.5, 4, 50.0, 0.0),
    2: (0.3, 0.0, 0, 20.0, 0.0),
    3: (0.0001, 1.0, 4, 0.0, 0.0),
    4: (0.0, 0.5, 4, 0.0, 90.0),
}


def yosinski_preset(n: int) -> tuple[Regularizer, ...]:
    """The regulariser settings of Yosinski et al. 2015, Table 1, row ``n`` (1-4; row 3 made most of the paper's
    figures): L2 decay, Gaussian blur (sigma, every n steps), small-norm and small-contribution clipping. Their
    optimiser (plain gradient ascent at 100 on 0-255 pixels) is not part of the preset."""
    if n not in YOSINSKI_PRESETS:
        raise ValueError(f"yosinski_preset takes 1, 2, 3 or 4 (the rows of Yosinski et al.'s Table 1), got {n!r}")
    decay, sigma, every, norm_pct, contrib_pct = YOSINSKI_PRESETS[n]
    regs: list[Regularizer] = []
    if decay:
        regs.append(Decay(decay))
    if sigma:
        regs.append(Blur(sigma, every))
    if norm_pct:
        regs.append(ClipNorm(norm_pct))
    if contrib_pct:
        regs.append(ClipContribution(contrib_pct))
    return tuple(regs)


def as_regularizers(regularizers: Regularizer | Sequence[Regularizer] | None) -> tuple[Regularizer, ...]:
    """A tuple of regularisers from one, a sequence or None."""
    if regularizers is None:
        return ()
    if isinstance(regularizers, Regularizer):
        return (regularizers,)
    try:
        regs = tuple(regularizers)
    except TypeError:
        raise TypeError(f"regularizers must be a sequence of seewhy.featvis.regularizers.Regularizer, got "
                        f"{type(regularizers).__name__}") from None
    for r in regs:
        if not isinstance(r, Regularizer):
            raise TypeError(f"regularizers must be Regularizer instances (L1, L2, TotalVariation, Blur, Decay, "
                            f"ClipNorm, ClipContribution or yosinski_preset(n)), got {type(r).__name__}")
    return regs
