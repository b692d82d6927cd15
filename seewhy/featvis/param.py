"""Image parameterisations for feature visualization: pixels, or a 1/f-scaled Fourier spectrum.

Olah, Mordvintsev & Schubert 2017 ("Feature Visualization", Distill): optimising in a decorrelated, whitened space
preconditions the problem and gives less high-frequency noise. Two pieces, as in Lucid:

- spatial: :class:`FFTParam` holds the image's spectrum and scales frequency f by ``1 / max(f, 1/max(H,W))**decay``;
  :class:`PixelParam` holds the pixels;
- colour: :func:`decorrelate_colors` maps each pixel's colour vector c to ``COLOR_CORRELATION @ c`` (the square root
  of ImageNet's colour covariance from Lucid, normalised by its largest column norm); a sigmoid then maps to (0, 1).

``image = sigmoid(COLOR_CORRELATION @ linear)`` per pixel (or ``sigmoid(linear)`` without decorrelation), with
``linear`` the param's (B,3,H,W) "linear image". :func:`image_param` builds either one from a seed.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "COLOR_CORRELATION",
    "COLOR_CORRELATION_SVD_SQRT",
    "FFTParam",
    "ImageParam",
    "PixelParam",
    "decorrelate_colors",
    "image_param",
    "undo_decorrelate_colors",
]

#: Lucid's square root of ImageNet's colour correlation (float64; ``.to(x)`` before mixing with other tensors).
COLOR_CORRELATION_SVD_SQRT = torch.tensor(
    [[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]], dtype=torch.float64
)
#: :data:`COLOR_CORRELATION_SVD_SQRT` divided by its largest column L2 norm (float64).
COLOR_CORRELATION = COLOR_CORRELATION_SVD_SQRT / COLOR_CORRELATION_SVD_SQRT.norm(dim=0).max()
_COLOR_CORRELATION_INV = torch.linalg.inv(COLOR_CORRELATION)

_EPS_IMAGE = 1e-4


def _mix_colors(x: Tensor, matrix: Tensor, what: str) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{what} takes a tensor of shape (B,3,H,W), got {type(x).__name__}")
    if x.ndim < 3 or x.shape[-3] != 3:
        raise ValueError(f"{what} needs 3 colour channels in (B,3,H,W), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{what} needs a floating-point tensor, got {x.dtype}; convert with x.float()")
    return torch.einsum("ij,...jhw->...ihw", matrix.to(device=x.device, dtype=x.dtype), x)


def decorrelate_colors(x: Tensor) -> Tensor:
    """Lucid's colour decorrelation: each pixel's colour vector c -> ``COLOR_CORRELATION @ c``.

    Args: x (B,3,H,W) (any leading dims) in the decorrelated space. Returns the correlated colours, same shape,
    device and dtype.
    """
    return _mix_colors(x, COLOR_CORRELATION, "decorrelate_colors")


def undo_decorrelate_colors(x: Tensor) -> Tensor:
    """The exact inverse of :func:`decorrelate_colors`: c -> ``inv(COLOR_CORRELATION) @ c`` (inverse in float64)."""
    return _mix_colors(x, _COLOR_CORRELATION_INV, "undo_decorrelate_colors")


def _check_shape(shape: tuple[int, ...], decorrelate: bool) -> tuple[int, int, int, int]:
    try:
        shape = tuple(shape)
    except TypeError:
        raise TypeError(f"shape must be a tuple (B,3,H,W), got {shape!r}") from None
    if len(shape) != 4 or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape):
        raise ValueError(f"shape must be four positive ints (B,3,H,W), got {shape!r}")
    if decorrelate and shape[1] != 3:
        raise ValueError(f"colour decorrelation needs 3 channels, got shape {shape!r}; pass decorrelate=False")
    return shape  # type: ignore[return-value]


def _check_dtype(dtype: torch.dtype) -> torch.dtype:
    if dtype not in (torch.float32, torch.float64):
        raise TypeError(f"dtype must be torch.float32 or torch.float64 (the FFT needs them), got {dtype}")
    return dtype


def _check_sigma(sigma: float) -> float:
    sigma = float(sigma)
    if not math.isfinite(sigma) or sigma < 0:
        raise ValueError(f"blur sigma must be a finite number >= 0 (pixels), got {sigma}")
    return sigma


class ImageParam:
    """Base class: an image (B,3,H,W) in (0, 1) made from leaf tensors ``params`` that an optimiser updates.

    ``image = sigmoid(decorrelate_colors(linear()))`` if ``decorrelate`` else ``sigmoid(linear())``.
    Subclasses implement :meth:`linear`, :meth:`set_linear` and :meth:`blur`.
    """

    shape: tuple[int, int, int, int]
    decorrelate: bool
    params: list[Tensor]

    def __init__(self, shape: tuple[int, int, int, int], *, decorrelate: bool = True) -> None:
        self.shape = _check_shape(shape, decorrelate)
        self.decorrelate = bool(decorrelate)
        self.params = []

    @property
    def device(self) -> torch.device:
        return self.params[0].device

    @property
    def dtype(self) -> torch.dtype:
        return self.params[0].dtype

    def linear(self) -> Tensor:
        """The linear image (B,3,H,W), before colour decorrelation and the sigmoid."""
        raise NotImplementedError

    def __call__(self) -> Tensor:
        """The image (B,3,H,W) in (0, 1), differentiable in :attr:`params`."""
        linear = self.linear()
        if self.decorrelate:
            linear = decorrelate_colors(linear)
        return torch.sigmoid(linear)

    def _as_target(self, x: Tensor, what: str) -> Tensor:
        if not isinstance(x, Tensor):
            raise TypeError(f"{what} takes a tensor broadcastable to {self.shape}, got {type(x).__name__}")
        try:
            ok = torch.broadcast_shapes(x.shape, self.shape) == torch.Size(self.shape)
        except RuntimeError:
            ok = False
        if not ok:
            raise ValueError(f"{what} needs a tensor broadcastable to {self.shape}, got {tuple(x.shape)}")
        return x.detach().to(device=self.device, dtype=self.dtype).expand(self.shape)

    @torch.no_grad()
    def set_linear(self, linear: Tensor) -> None:
        """Set the params so that ``self.linear() == linear`` (up to float error); ``linear`` broadcasts to shape."""
        raise NotImplementedError

    @torch.no_grad()
    def set_image(self, image: Tensor) -> None:
        """Inverse of ``__call__``: clamp to [1e-4, 1 - 1e-4], logit, undo the colour decorrelation, set_linear."""
        image = self._as_target(image, "set_image")
        linear = torch.logit(image.clamp(_EPS_IMAGE, 1 - _EPS_IMAGE))
        if self.decorrelate:
            linear = undo_decorrelate_colors(linear)
        self.set_linear(linear)

    @torch.no_grad()
    def blur(self, sigma: float) -> None:
        """Gaussian blur (standard deviation ``sigma`` px) of the linear image, in place; sigma 0 does nothing."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(shape={self.shape}, decorrelate={self.decorrelate})"


class PixelParam(ImageParam):
    """Pixel parameterisation: ``params = [p]`` with p (B,3,H,W) and ``linear() = p``.

    Args: shape (B,3,H,W); decorrelate; device; dtype (float32 or float64). The params start at zero
    (:func:`image_param` draws a random start).
    """

    def __init__(
        self,
        shape: tuple[int, int, int, int],
        *,
        decorrelate: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__(shape, decorrelate=decorrelate)
        self.params = [torch.zeros(self.shape, device=device, dtype=_check_dtype(dtype), requires_grad=True)]

    def linear(self) -> Tensor:
        return self.params[0]

    @torch.no_grad()
    def set_linear(self, linear: Tensor) -> None:
        self.params[0].copy_(self._as_target(linear, "set_linear"))

    @torch.no_grad()
    def blur(self, sigma: float) -> None:
        """Separable Gaussian blur (std ``sigma`` px, radius ceil(4 sigma)) with reflect padding, in place."""
        sigma = _check_sigma(sigma)
        if sigma == 0:
            return
        p = self.params[0]
        b, c, h, w = p.shape
        x = p.reshape(b * c, 1, h, w)
        for dim, n in ((2, h), (3, w)):
            radius = min(math.ceil(4 * sigma), n - 1)
            if radius == 0:
                continue
            offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
            kernel = torch.exp(-(offsets**2) / (2 * sigma**2))
            kernel = (kernel / kernel.sum()).to(device=p.device, dtype=p.dtype)
            if dim == 2:
                x = torch.nn.functional.pad(x, (0, 0, radius, radius), mode="reflect")
                x = torch.nn.functional.conv2d(x, kernel.view(1, 1, -1, 1))
            else:
                x = torch.nn.functional.pad(x, (radius, radius, 0, 0), mode="reflect")
                x = torch.nn.functional.conv2d(x, kernel.view(1, 1, 1, -1))
        p.copy_(x.reshape(b, c, h, w))


def _frequencies(h: int, w: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """|f| (cycles/px) of the rfft2 bins, shape (H, W//2+1)."""
    fy = torch.fft.fftfreq(h, device=device, dtype=dtype)[:, None]
    fx = torch.fft.rfftfreq(w, device=device, dtype=dtype)[None, :]
    return torch.sqrt(fy**2 + fx**2)


class FFTParam(ImageParam):
    """Fourier parameterisation (Olah et al. 2017; Lucid's ``fft_image``).

    ``params = [spectrum]``, a real tensor (B,3,H,W//2+1,2) holding (real, imag);
    ``linear() = irfft2(complex(spectrum) * scale, s=(H,W), norm="ortho") / 4`` with
    ``scale = 1 / max(f, 1/max(H,W))**decay_power`` and f the bin's frequency in cycles/px.

    Args: shape (B,3,H,W); decorrelate; decay_power (1 gives a 1/f spectrum, 0 a white one); device; dtype.
    The spectrum starts at zero (:func:`image_param` draws a random start).
    """

    def __init__(
        self,
        shape: tuple[int, int, int, int],
        *,
        decorrelate: bool = True,
        decay_power: float = 1.0,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__(shape, decorrelate=decorrelate)
        decay_power = float(decay_power)
        if not math.isfinite(decay_power):
            raise ValueError(f"decay_power must be finite (1 is Lucid's default), got {decay_power}")
        self.decay_power = decay_power
        b, c, h, w = self.shape
        dtype = _check_dtype(dtype)
        self.params = [torch.zeros((b, c, h, w // 2 + 1, 2), device=device, dtype=dtype, requires_grad=True)]
        freqs = _frequencies(h, w, self.params[0].device, dtype)
        #: (H, W//2+1) per-frequency scale applied to the spectrum
        self.scale = 1.0 / freqs.clamp(min=1.0 / max(h, w)) ** decay_power
        self._freqs = freqs

    def linear(self) -> Tensor:
        h, w = self.shape[2:]
        spectrum = torch.view_as_complex(self.params[0]) * self.scale
        return torch.fft.irfft2(spectrum, s=(h, w), norm="ortho") / 4.0

    @torch.no_grad()
    def set_linear(self, linear: Tensor) -> None:
        linear = self._as_target(linear, "set_linear")
        spectrum = torch.fft.rfft2(linear * 4.0, norm="ortho") / self.scale
        self.params[0].copy_(torch.view_as_real(spectrum))

    @torch.no_grad()
    def blur(self, sigma: float) -> None:
        """Exact circular Gaussian blur: the spectrum times the transfer function ``exp(-2 pi^2 sigma^2 f^2)``."""
        sigma = _check_sigma(sigma)
        if sigma == 0:
            return
        transfer = torch.exp(-2 * math.pi**2 * sigma**2 * self._freqs**2)
        self.params[0].mul_(transfer[..., None])

    def __repr__(self) -> str:
        return f"FFTParam(shape={self.shape}, decorrelate={self.decorrelate}, decay_power={self.decay_power:g})"


def image_param(
    kind: str,
    size: int | tuple[int, int],
    batch: int = 1,
    *,
    decorrelate: bool = True,
    sd: float = 0.01,
    seed: int = 0,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    decay_power: float = 1.0,
) -> ImageParam:
    """A :class:`PixelParam` (``kind="pixel"``) or :class:`FFTParam` (``kind="fft"``) with a seeded random start.

    The start is N(0, sd^2) in the param's space (pixels or spectrum). Image i is drawn (float32, CPU) from
    ``torch.Generator().manual_seed(seed * 65_537 + i)``, so it is the same whatever the batch size; then moved to
    ``device``/``dtype``. The global RNG is not used.

    Args: kind; size (S or (H, W)); batch; decorrelate; sd; seed; device; dtype; decay_power (FFT only).
    """
    if kind not in ("pixel", "fft"):
        raise ValueError(f"unknown image parameterisation {kind!r}; use 'pixel' or 'fft'")
    if isinstance(size, int) and not isinstance(size, bool):
        h = w = size
    else:
        try:
            h, w = size  # type: ignore[misc]
        except (TypeError, ValueError):
            raise ValueError(f"size must be an int or a pair (H, W), got {size!r}") from None
    if not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in (h, w)):
        raise ValueError(f"size must be positive ints, got {size!r}")
    if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
        raise ValueError(f"batch must be a positive int, got {batch!r}")
    sd = float(sd)
    if not math.isfinite(sd) or sd < 0:
        raise ValueError(f"sd must be a finite number >= 0 (Lucid uses 0.01), got {sd}")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TypeError(f"seed must be an int, got {seed!r}")
    shape = (batch, 3, h, w)
    if kind == "pixel":
        param: ImageParam = PixelParam(shape, decorrelate=decorrelate, device=device, dtype=dtype)
    else:
        param = FFTParam(shape, decorrelate=decorrelate, decay_power=decay_power, device=device, dtype=dtype)
    p = param.params[0]
    per_image = tuple(p.shape[1:])
    starts = []
    for i in range(batch):
        generator = torch.Generator().manual_seed((seed * 65_537 + i) % 2**64)
        starts.append(torch.randn(per_image, generator=generator) * sd)
    with torch.no_grad():
        p.copy_(torch.stack(starts).to(device=p.device, dtype=p.dtype))
    return param
