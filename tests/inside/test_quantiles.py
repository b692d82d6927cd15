"""The streaming per-unit quantile: within one bin width of torch.quantile, independent of order and batching,
constant memory."""

from __future__ import annotations

import pytest
import torch

from seewhy.inside.quantiles import RunningQuantile

QS = (0.005, 0.05, 0.5, 0.95)


def _data(kind: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    n = 40_000
    if kind == "normal":
        return torch.randn(3, n, generator=g) * torch.tensor([[1.0], [10.0], [0.01]])
    if kind == "heavy_tail":  # exponential, squared: a long right tail
        return torch.empty(3, n).exponential_(generator=g) ** 2 * 5
    if kind == "all_equal":
        return torch.full((3, n), 3.25)
    if kind == "increasing":  # sorted, fed in order: the range grows (doubles) many times
        return torch.logspace(-3, 4, n).repeat(3, 1) * torch.tensor([[1.0], [2.0], [-1.0]])
    if kind == "negative":
        return -torch.rand(3, n, generator=g) * 7 - 100
    raise AssertionError(kind)


def _feed(values: torch.Tensor, chunk: int, bins: int = 2048) -> RunningQuantile:
    rq = RunningQuantile(values.shape[0], bins)
    for part in values.split(chunk, dim=1):
        rq.update(part)
    return rq


@pytest.mark.parametrize("kind", ["normal", "heavy_tail", "all_equal", "increasing", "negative"])
def test_estimate_is_within_one_bin_of_torch_quantile(kind: str) -> None:
    x = _data(kind)
    rq = _feed(x, 997)
    width = rq.bin_width
    xd = x.double()
    for q in QS:
        exact = torch.quantile(xd, 1 - q, dim=1)
        est = rq.quantile(q)
        tol = 1e-9 * xd.abs().amax(1) + 1e-12
        assert ((est - exact).abs() <= width + tol).all(), (q, est, exact, width)
        # and the estimate leaves about a fraction q of the values above it
        above = (xd > est[:, None]).double().mean(1)
        at = (xd >= est[:, None]).double().mean(1)
        assert ((above <= q + 1e-3) | (at >= q)).all()
    span = xd.amax(1) - xd.amin(1)
    # the bin is at most 2 * range / (bins - 1) (finer when the values are all equal)
    assert (width <= torch.clamp(2 * span / 2047, min=1e-9 * xd.abs().amax(1))).all()


def test_the_range_grows_from_a_tiny_start_without_losing_accuracy() -> None:
    x = _data("increasing")
    rq = RunningQuantile(3, 2048)
    exponents = set()
    for part in x.split(500, dim=1):
        rq.update(part)
        exponents.add(int(rq.exponent[0]))
    assert len(exponents) > 10  # it grew again and again
    assert ((rq.quantile(0.005) - torch.quantile(x.double(), 0.995, dim=1)).abs() <= rq.bin_width).all()


def test_all_equal_values_give_that_value() -> None:
    rq = _feed(torch.full((2, 1000), -2.5), 100)
    assert torch.equal(rq.quantile(0.005), torch.tensor([-2.5, -2.5], dtype=torch.float64))


def test_order_and_batching_do_not_change_the_estimate() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 20_000, generator=g) * torch.tensor([[1.0], [0.1], [100.0], [1e-4]]) + 3
    reference = _feed(x, 20_000).quantile(0.005)
    for chunk in (13, 333, 5000):
        assert torch.equal(_feed(x, chunk).quantile(0.005), reference)
    shuffled = x[:, torch.randperm(x.shape[1], generator=g)]
    assert torch.equal(_feed(shuffled, 613).quantile(0.005), reference)
    ordered = x.sort(dim=1, descending=True).values
    assert torch.equal(_feed(ordered, 101).quantile(0.005), reference)


def test_memory_does_not_depend_on_how_many_values_were_fed() -> None:
    from seewhy.inside.quantiles import CHUNK

    rq = RunningQuantile(5, 256)
    g = torch.Generator().manual_seed(2)
    rq.update(torch.randn(5, 1000, generator=g))
    after_one = rq.nbytes
    for i in range(300):
        rq.update(torch.randn(5, 1000, generator=g) * (i + 1))
    assert rq.nbytes == after_one == 5 * 256 * 8 + 5 * 5 * 8 + 2 * 5 * 1000 * 8
    assert int(rq.n[0]) == 301_000
    rq.update(torch.randn(5, 10 * CHUNK, generator=g))  # a huge update: work buffers stop at CHUNK values
    assert rq.nbytes <= 5 * 256 * 8 + 5 * 5 * 8 + 2 * CHUNK * 8
    assert all(t.shape[-1] in (5, 256) for t in (rq.counts, rq.exponent, rq.offset, rq.min, rq.max, rq.n))


def test_units_are_independent() -> None:
    g = torch.Generator().manual_seed(3)
    x = torch.stack([torch.randn(5000, generator=g), torch.rand(5000, generator=g) * 1e6, torch.zeros(5000)])
    joint = _feed(x, 1000).quantile(0.01)
    alone = torch.cat([_feed(x[i:i + 1], 1000).quantile(0.01) for i in range(3)])
    assert torch.equal(joint, alone)


def test_a_unit_with_no_value_is_nan_and_bad_input_is_refused() -> None:
    rq = RunningQuantile(2)
    assert torch.isnan(rq.quantile(0.5)).all()
    with pytest.raises(ValueError, match="units=2"):
        rq.update(torch.zeros(3, 4))
    with pytest.raises(ValueError, match="finite"):
        rq.update(torch.tensor([[1.0, float("nan")], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="q must be"):
        rq.quantile(1.5)
    with pytest.raises(ValueError, match="bins"):
        RunningQuantile(2, bins=1)
    with pytest.raises(ValueError, match="units"):
        RunningQuantile(0)
