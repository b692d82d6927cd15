"""Streaming quantiles of many variables at once (one per unit of a layer), in memory that does not grow with data.

:class:`RunningQuantile` keeps, per unit, a histogram of ``bins`` bins on an aligned power-of-two grid: bin ``a`` of
unit ``u`` covers ``[a * 2**e_u, (a + 1) * 2**e_u)`` and the unit keeps the ``bins`` consecutive bins that start at
the one holding its smallest value. ``e_u`` is the smallest exponent for which the unit's values seen so far (their
minimum to their maximum) fit in ``bins`` bins. A batch that falls outside the range grows it: the width doubles
(as often as needed) and pairs of neighbouring bins merge, ``2a`` and ``2a + 1`` into ``a`` (the range grows at the
low end or at the high end, as the data needs); counts are never split, so merging is exact.

Because the grid is aligned and the exponent depends only on the minimum and maximum of all values, the final
histogram is the same whatever the order and the batching of the values: the estimate does not depend on the batch
size. The quantile is read off the histogram by linear interpolation inside the bin where the cumulative count
crosses the rank, and clipped to the exact minimum and maximum (also tracked).

Error bound: the estimate lies in the same bin as the order statistic at the quantile's rank, so it is within one
bin width ``w = 2**e`` of it (:attr:`RunningQuantile.bin_width`); ``w < 2 * (max - min) / (bins - 1)``. Against
``torch.quantile`` (which interpolates between the two order statistics around the rank) the error is at most
``w`` plus the gap between those two values, which vanishes as the data grows. Memory: ``units * bins`` int64
counts, a few ``(units,)`` vectors and work buffers for :data:`CHUNK` values (binning allocates nothing), whatever
the number of values fed.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["RunningQuantile"]

# bin exponents stay in [-MAX_EXP, MAX_EXP] so that 2**-e is a finite float64; below, the grid is 2**(log2|v| - 40)
MAX_EXP = 960
RESOLUTION_BITS = 40
#: values binned at a time by :meth:`RunningQuantile.update`: its work buffers hold at most this many (4 MB)
CHUNK = 1 << 18


class RunningQuantile:
    """Streaming upper-tail quantiles of ``units`` variables: :meth:`update` with ``(units, n)`` values, then
    :meth:`quantile` ``(q) -> (units,)``, the value ``v`` of each unit with a fraction ``q`` of its values above.

    ``bins`` bins per unit (default 2048): the estimate is within one bin width (:attr:`bin_width`, less than
    ``2 * range / (bins - 1)``) of the exact sample quantile; see the module docstring.
    """

    def __init__(self, units: int, bins: int = 2048) -> None:
        if not isinstance(units, int) or isinstance(units, bool) or units < 1:
            raise ValueError(f"units must be a positive int, got {units!r}")
        if not isinstance(bins, int) or isinstance(bins, bool) or bins < 2:
            raise ValueError(f"bins must be an int >= 2, got {bins!r}")
        self.units = units
        self.bins = bins
        self.counts = torch.zeros(units, bins, dtype=torch.long)
        self.exponent = torch.zeros(units, dtype=torch.long)  # bin width 2**exponent
        self.offset = torch.zeros(units, dtype=torch.long)  # grid index of the first bin
        self.min = torch.full((units,), float("inf"), dtype=torch.float64)
        self.max = torch.full((units,), float("-inf"), dtype=torch.float64)
        self.n = torch.zeros(units, dtype=torch.long)
        self._work: tuple[Tensor, Tensor] | None = None

    @property
    def nbytes(self) -> int:
        """Bytes held: the histograms and per-unit vectors, plus work buffers for at most :data:`CHUNK` values
        (independent of how many values were fed)."""
        return sum(t.numel() * t.element_size() for t in (*self._state(), *(self._work or ())))

    @property
    def bin_width(self) -> Tensor:
        """(units,) float64: the current bin width of each unit, the error bound of :meth:`quantile`."""
        return torch.ldexp(torch.ones_like(self.min), self.exponent.to(self.min.device))

    def _state(self) -> tuple[Tensor, ...]:
        return self.counts, self.exponent, self.offset, self.min, self.max, self.n

    def update(self, values: Tensor) -> None:
        """Add ``values`` (units, n): row ``u`` holds new values of unit ``u`` (any float dtype, any device).

        Raises:
            ValueError: wrong shape, or non-finite values.
        """
        if not isinstance(values, Tensor) or values.ndim != 2 or values.shape[0] != self.units:
            raise ValueError(f"values must be a (units={self.units}, n) tensor, got "
                             f"{tuple(values.shape) if isinstance(values, Tensor) else type(values).__name__}")
        if values.shape[1] == 0:
            return
        values = values.detach()
        if values.device.type == "mps":  # float64 is needed
            values = values.cpu()
        device = values.device
        if self.counts.device != device:
            self.counts, self.exponent, self.offset, self.min, self.max, self.n = (t.to(device) for t in self._state())
        lo, hi = values.amin(1).double(), values.amax(1).double()
        if not bool((torch.isfinite(lo) & torch.isfinite(hi)).all()):  # NaN and infinities reach min or max
            raise ValueError("values must be finite (got NaN or infinity)")
        seen = self.n > 0
        lo, hi = torch.minimum(self.min, lo), torch.maximum(self.max, hi)
        exponent = self._exponent(lo, hi)
        exponent = torch.where(seen, torch.maximum(exponent, self.exponent), exponent)
        offset = torch.floor(torch.ldexp(lo, -exponent)).long()
        if bool(((exponent != self.exponent) | (offset != self.offset)).any()):
            self.counts = self._regrid(exponent, offset)
        self.exponent, self.offset, self.min, self.max = exponent, offset, lo, hi
        self.n = self.n + values.shape[1]
        scale = torch.ldexp(torch.ones_like(lo), -exponent)[:, None]
        first = (torch.arange(self.units, device=device) * self.bins)[:, None]
        counts = self.counts.view(-1)
        step = max(1, CHUNK // self.units)
        grid, slots = self._buffers(self.units * min(step, values.shape[1]), device)
        for j in range(0, values.shape[1], step):
            part = values[:, j:j + step]
            g, s = grid[:part.numel()].view(part.shape), slots[:part.numel()].view(part.shape)
            # grid index - offset >= 0 (values >= the minimum): truncation is the floor; exact in float64 (< 2**53)
            torch.mul(part, scale, out=g).sub_(offset[:, None])
            s.copy_(g).clamp_(0, self.bins - 1).add_(first)
            counts.index_add_(0, s.view(-1), torch.ones(1, dtype=counts.dtype, device=device).expand(s.numel()))

    def _buffers(self, size: int, device: torch.device) -> tuple[Tensor, Tensor]:
        """Flat work buffers of ``size`` float64 and int64, kept between updates: binning allocates nothing."""
        buf = self._work
        if buf is None or buf[0].numel() < size or buf[0].device != device:
            buf = self._work = (torch.empty(size, dtype=torch.float64, device=device),
                                torch.empty(size, dtype=torch.long, device=device))
        return buf

    def _exponent(self, lo: Tensor, hi: Tensor) -> Tensor:
        """The smallest grid exponent at which [lo, hi] fits in ``bins`` aligned bins (per unit), no finer than
        2**-RESOLUTION_BITS of the largest magnitude: a function of (lo, hi) only, non-decreasing as they spread."""
        span = hi - lo
        big = torch.maximum(lo.abs(), hi.abs())
        floor_exp = torch.where(big > 0, torch.floor(torch.log2(big)) - RESOLUTION_BITS, torch.full_like(big, -MAX_EXP))
        guess = torch.where(span > 0, torch.floor(torch.log2(span / self.bins)) - 1, torch.full_like(span, -MAX_EXP))
        e = torch.maximum(floor_exp, guess).clamp(-MAX_EXP, MAX_EXP).long()
        while True:
            width = torch.floor(torch.ldexp(hi, -e)) - torch.floor(torch.ldexp(lo, -e))
            misfit = (width > self.bins - 1) & (e < MAX_EXP)
            if not bool(misfit.any()):
                return e
            e = e + misfit.long()

    def _regrid(self, exponent: Tensor, offset: Tensor) -> Tensor:
        """The counts moved to the grid (exponent, offset): bins merged 2**(exponent - old) at a time (exact)."""
        shift = (exponent - self.exponent).clamp(0, 62)[:, None]
        grid = self.offset[:, None] + torch.arange(self.bins, device=self.counts.device)[None]
        slots = ((grid >> shift) - offset[:, None]).clamp_(0, self.bins - 1)  # only empty bins can fall outside
        return torch.zeros_like(self.counts).scatter_add_(1, slots, self.counts)

    def quantile(self, q: float) -> Tensor:
        """(units,) float64: per unit, the value with a fraction ``q`` of the values above it (the ``1 - q``
        quantile, as ``torch.quantile(x, 1 - q)``), within :attr:`bin_width` of the exact one; NaN for a unit
        with no value yet.

        Raises:
            ValueError: ``q`` not in [0, 1].
        """
        if isinstance(q, bool) or not isinstance(q, (int, float)) or not 0 <= q <= 1:
            raise ValueError(f"q must be a number in [0, 1], got {q!r}")
        counts = self.counts.double()
        cum = counts.cumsum(1)
        # cumulative mass at the rank of the (1 - q) quantile: value i (sorted) spans (i, i + 1], torch.quantile's
        # position (1 - q)(n - 1) is its centre
        target = ((1 - q) * (self.n.double() - 1) + 0.5)[:, None]
        b = torch.searchsorted(cum, target).clamp_(max=self.bins - 1)
        inside = counts.gather(1, b)
        frac = ((target - (cum.gather(1, b) - inside)) / inside.clamp(min=1)).clamp_(0, 1)
        est = torch.ldexp((self.offset[:, None] + b).double() + frac, self.exponent[:, None]).squeeze(1)
        est = torch.minimum(torch.maximum(est, self.min), self.max)
        return torch.where(self.n > 0, est, torch.full_like(est, float("nan")))
