from __future__ import annotations

import pytest
import torch

from seewhy import postprocess as pp


def _attr() -> torch.Tensor:
    return torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))


def test_reduce_channels() -> None:
    a = _attr()
    assert torch.equal(pp.reduce_channels(a, "sum"), a.sum(1, keepdim=True))
    assert torch.equal(pp.reduce_channels(a, "max_abs"), a.abs().amax(1, keepdim=True))
    torch.testing.assert_close(pp.reduce_channels(a, "l2"), a.pow(2).sum(1, keepdim=True).sqrt())
    with pytest.raises(ValueError, match="one channel"):
        pp.reduce_channels(a, "none")
    with pytest.raises(ValueError, match="unknown reduce"):
        pp.reduce_channels(a, "median")


@pytest.mark.parametrize("normalize", ["minmax", "max", "percentile"])
@pytest.mark.parametrize("sign", ["abs", "positive", "negative", "all"])
def test_heatmap_is_in_unit_range_at_size(normalize: str, sign: str) -> None:
    h = pp.heatmap(_attr(), (16, 12), reduce="sum", sign=sign, normalize=normalize)
    assert h.shape == (2, 1, 16, 12)
    assert float(h.min()) >= 0 and float(h.max()) <= 1


def test_minmax_hits_both_ends_and_signed_keeps_zero_at_half() -> None:
    h = pp.heatmap(_attr(), normalize="minmax")
    assert torch.allclose(h.flatten(1).amin(1), torch.zeros(2))
    assert torch.allclose(h.flatten(1).amax(1), torch.ones(2))
    a = torch.zeros(1, 1, 4, 4)
    a[0, 0, 0, 0], a[0, 0, 1, 1] = 2.0, -1.0
    s = pp.heatmap(a, reduce="none", sign="all", normalize="max")
    assert s[0, 0, 0, 0] == 1.0 and s[0, 0, 1, 1] == 0.25 and s[0, 0, 2, 2] == 0.5


def test_percentile_clips_outliers_and_handles_constant_maps() -> None:
    a = torch.ones(1, 1, 10, 10)
    a[0, 0, 0, 0] = 1000.0
    h = pp.heatmap(a, reduce="none", sign="abs", normalize="percentile", percentile=90)
    assert h[0, 0, 5, 5] == 1.0  # the outlier no longer washes the map out
    z = pp.heatmap(torch.zeros(1, 1, 4, 4), reduce="none", normalize="percentile")
    assert torch.isfinite(z).all() and z.max() == 0
    c = pp.heatmap(torch.full((1, 1, 4, 4), 3.0), reduce="none", normalize="minmax")
    assert torch.isfinite(c).all()
