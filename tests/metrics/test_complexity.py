"""Sparseness (Gini) and entropy complexity against their closed forms."""

from __future__ import annotations

import math

import pytest
import torch

from seewhy.metrics import METRICS
from seewhy.metrics.complexity import entropy_complexity, sparseness

X = torch.zeros(2, 3, 8, 8)
N = 64


def one_hot(n: int = 2) -> torch.Tensor:
    a = torch.zeros(n, 1, 8, 8)
    a[:, 0, 3, 5] = -2.5  # the sign does not matter: |a|
    return a


def test_gini_of_one_hot_and_uniform_maps():
    torch.testing.assert_close(sparseness(None, X, one_hot()), torch.full((2,), (N - 1) / N))
    torch.testing.assert_close(sparseness(None, X, torch.full((2, 1, 8, 8), 0.3)), torch.zeros(2))
    # a hand-computed case: |a| sorted = (0, 0, 1, 3) on 4 pixels -> (-3*0 - 1*0 + 1*1 + 3*3) / (4 * 4) = 10/16
    a = torch.tensor([[[[3.0, 0.0], [-1.0, 0.0]]]])
    assert sparseness(None, torch.zeros(1, 1, 2, 2), a).item() == pytest.approx(10 / 16)
    # scale invariance, and NaN for an all-zero map
    torch.testing.assert_close(sparseness(None, X, 7 * one_hot()), sparseness(None, X, one_hot()))
    assert torch.isnan(sparseness(None, X, torch.zeros(2, 1, 8, 8))).all()


def test_entropy_of_one_hot_and_uniform_maps():
    torch.testing.assert_close(entropy_complexity(None, X, torch.ones(2, 1, 8, 8)), torch.full((2,), math.log(N)))
    torch.testing.assert_close(entropy_complexity(None, X, one_hot()), torch.zeros(2))
    torch.testing.assert_close(entropy_complexity(None, X, torch.ones(2, 1, 8, 8), normalized=True), torch.ones(2))
    half = torch.zeros(2, 1, 8, 8)
    half[:, :, :4] = 1.0  # uniform on 32 pixels
    torch.testing.assert_close(entropy_complexity(None, X, half), torch.full((2,), math.log(32)))
    assert torch.isnan(entropy_complexity(None, X, torch.zeros(2, 1, 8, 8))).all()


def test_maps_channels_and_resolution():
    # channels are summed (signed) before |.|: opposite channels cancel
    a = torch.zeros(2, 3, 8, 8)
    a[:, 0] = 1.0
    a[:, 1] = -1.0
    a[:, 2, 0, 0] = 1.0
    torch.testing.assert_close(sparseness(None, X, a), torch.full((2,), (N - 1) / N))
    # a 2x2 layer map is upsampled to 8x8 by default; at_input_size=False keeps its 4 cells
    small = torch.zeros(2, 1, 2, 2)
    small[:, 0, 0, 0] = 1.0
    torch.testing.assert_close(sparseness(None, X, small, at_input_size=False), torch.full((2,), 3 / 4))
    assert torch.all(sparseness(None, X, small) < 3 / 4)
    torch.testing.assert_close(entropy_complexity(None, X, torch.ones(2, 1, 2, 2), at_input_size=False),
                               torch.full((2,), math.log(4)))


@pytest.mark.parametrize("name", ["sparseness", "entropy_complexity"])
def test_registry_and_batch_invariance(name):
    spec = METRICS[name]
    assert spec.family == "complexity" and spec.cost({}) == 0
    assert spec.higher_is_better is (name == "sparseness")
    a = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    x = torch.zeros(3, 3, 8, 8)
    ref = spec.fn(None, x, a, None)
    for bs in (1, 3):
        torch.testing.assert_close(spec.fn(None, x, a, None, batch_size=bs, seed=2), ref)
    torch.testing.assert_close(spec.fn(None, x[1:], a[1:], None), ref[1:])
    with pytest.raises(ValueError, match="do not fit inputs"):
        spec.fn(None, x, a[:2], None)
