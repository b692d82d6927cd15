from __future__ import annotations

import pytest
import torch

from seewhy.targets import class_index, make_target

OUT = torch.tensor([[0.1, 2.0, -1.0], [3.0, 0.0, 1.0]])
NAMES = ["tabby, tabby cat", "tiger cat", "espresso"]


def test_top1_resolves_from_the_output() -> None:
    for spec in (None, "top1"):
        t = make_target(spec, 2)
        assert t.pending
        with pytest.raises(RuntimeError, match="resolve"):
            t.score(OUT)
        r = t.resolve(OUT)
        assert r.indices.tolist() == [1, 0]
        assert r.score(OUT).tolist() == [2.0, 3.0]


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (2, [2, 2]),
        ("2", [2, 2]),
        ([1, 2], [1, 2]),
        (torch.tensor([0, 1]), [0, 1]),
        ("espresso", [2, 2]),
        ("Tabby", [0, 0]),
        (["tiger cat", 2], [1, 2]),
    ],
)
def test_index_specs(spec: object, expected: list[int]) -> None:
    t = make_target(spec, 2, NAMES)
    assert t.indices.tolist() == expected
    assert t.score(OUT).tolist() == [OUT[i, j].item() for i, j in enumerate(expected)]


def test_callables() -> None:
    t = make_target(lambda out: out[:, 0] - out[:, 2], 2)
    assert t.score(OUT).tolist() == pytest.approx([1.1, 2.0])
    per = make_target([lambda row: row[1], lambda row: row.sum()], 2)
    assert per.score(OUT).tolist() == pytest.approx([2.0, 4.0])
    assert per.select(torch.tensor([1, 1, 0])).score(OUT[[1, 1, 0]]).tolist() == pytest.approx([4.0, 4.0, 2.0])
    with pytest.raises(ValueError, match="one score per sample"):
        make_target(lambda out: out, 2).score(OUT)


def test_select_and_repeat() -> None:
    t = make_target([2, 0], 2)
    rep = t.repeat(3)
    big = OUT.repeat_interleave(3, dim=0)
    assert rep.score(big).tolist() == [-1.0] * 3 + [3.0] * 3
    sub = rep.select(torch.tensor([5, 0]))
    assert sub.score(OUT[[1, 0]]).tolist() == [3.0, -1.0]


def test_errors() -> None:
    with pytest.raises(ValueError, match="out of range"):
        make_target(3, 2).score(OUT)
    with pytest.raises(ValueError, match="got 3 targets for 2 inputs"):
        make_target([0, 1, 2], 2)
    with pytest.raises(ValueError, match="carries no class_names"):
        make_target("espresso", 2)
    with pytest.raises(ValueError, match="did you mean 'espresso'"):
        make_target("expresso", 2, NAMES)
    with pytest.raises(TypeError, match="integer class indices"):
        make_target(torch.tensor([0.5, 1.0]), 2)
    with pytest.raises(TypeError, match="bool"):
        make_target(True, 2)
    with pytest.raises(ValueError, match=r"shape \(B, K\)"):
        make_target(0, 2).score(torch.zeros(2, 3, 4))
    assert class_index("tabby cat", NAMES) == 0
