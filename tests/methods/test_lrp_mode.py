"""The LRP mode around the rules: the channels_last retry (decided by the outcome, not an error's text), the one
rectifier matcher shared with the hooks, per-model defaults from the zoo spec, and the ledger's report tables."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import seewhy
from seewhy.hooks import RECTIFIERS, rectifier_bounds
from seewhy.methods.lrp import LRP, ledger_table, model_defaults
from seewhy.methods.lrp.method import _STANDARD_LAYOUT
from seewhy.runner import Table

D = torch.float64


class _LayoutFussy(nn.Module):
    """Refuses channels_last with a RuntimeError whose text says nothing about views or layouts."""

    def __init__(self, always: bool = False) -> None:
        super().__init__()
        self.always = always
        self.conv = nn.Conv2d(3, 4, 3, bias=False)
        self.fc = nn.Linear(4, 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv(x))
        if self.always or not h.is_contiguous():
            raise RuntimeError("something went wrong")
        return self.fc(h.mean(dim=(2, 3)))


def test_the_layout_retry_does_not_read_the_error_message() -> None:
    torch.manual_seed(0)
    model = _LayoutFussy().to(D).eval()
    x = torch.randn(2, 3, 6, 6, dtype=D)
    a = LRP(composite="epsilon", epsilon=1e-300, canonizers=None)(model, x, 1)
    torch.testing.assert_close(a, seewhy.get_method("input_x_gradient")(model, x, 1), rtol=1e-9, atol=1e-12)
    assert _STANDARD_LAYOUT.get(model)
    broken = _LayoutFussy(always=True).to(D).eval()
    with pytest.raises(RuntimeError, match="something went wrong"):  # the standard-layout error is raised
        LRP(canonizers=None)(broken, x, 1)
    assert not _STANDARD_LAYOUT.get(broken)  # failed in both layouts: nothing remembered


CALLS = [
    (F.relu, (), {}, (0.0, None, False)),
    (F.relu, (True,), {}, (0.0, None, True)),
    (F.relu, (), {"inplace": True}, (0.0, None, True)),
    (torch.relu, (), {}, (0.0, None, False)),
    (torch.Tensor.relu, (), {}, (0.0, None, False)),
    (torch.relu_, (), {}, (0.0, None, True)),
    (torch.Tensor.relu_, (), {}, (0.0, None, True)),
    (F.relu6, (), {}, (0.0, 6.0, False)),
    (F.relu6, (), {"inplace": True}, (0.0, 6.0, True)),
    (F.hardtanh, (0.0, 6.0, False), {}, (0.0, 6.0, False)),  # what nn.ReLU6 calls
    (F.hardtanh, (), {"min_val": 0.0, "max_val": 2.0, "inplace": True}, (0.0, 2.0, True)),
    (F.hardtanh_, (0.0, 3.0), {}, (0.0, 3.0, True)),
    (F.hardtanh, (), {}, None),  # [-1, 1]: not a rectifier
    (F.leaky_relu, (), {}, None),
    (torch.add, (1.0,), {}, None),
]


@pytest.mark.parametrize(("func", "args", "kwargs", "expected"), CALLS)
def test_one_rectifier_matcher(func, args, kwargs, expected) -> None:
    assert rectifier_bounds(func, (torch.zeros(2), *args), kwargs) == expected
    assert (func in RECTIFIERS) == (func in (F.hardtanh,) or expected is not None)


def test_lrp_and_guided_backprop_use_the_same_matcher() -> None:
    from seewhy import hooks
    from seewhy.methods.lrp import mode

    assert mode.rectifier_bounds is hooks.rectifier_bounds and mode.RECTIFIERS is hooks.RECTIFIERS


def test_per_model_defaults_come_from_the_zoo_spec() -> None:
    from conftest import build

    from seewhy import zoo

    assert model_defaults(zoo.EfficientNetLite0()) == ("epsilon_gamma_box", False)
    assert model_defaults(build("tiny_resnet")) == ("epsilon_plus_flat", True)
    assert model_defaults(nn.Sequential(nn.Linear(2, 2))) == ("epsilon_plus_flat", True)
    import seewhy.methods.lrp.method as method

    assert not hasattr(method, "MODEL_DEFAULTS") and not hasattr(method, "_ZOO_NAMES")


def _tiny() -> tuple[nn.Module, torch.Tensor]:
    from conftest import build

    return build("tiny_cnn"), torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def test_report_tables_hold_the_ledger_per_class_rank() -> None:
    model, x = _tiny()
    method = LRP()
    batches = [(seewhy.explain(model, x[:2], method),), (seewhy.explain(model, x[2:], method),)]
    keys = ["a", "b", "c", "d"]
    (table,) = method.report_tables(batches, keys)
    assert isinstance(table, Table) and table.title == "Relevance ledger: lrp"
    assert table.columns == ["layer", "a: relevance", "a: / output", "b: relevance", "b: / output",
                             "c: relevance", "c: / output", "d: relevance", "d: / output"]
    book = batches[1][0].extras["relevance_ledger"]
    assert [row[0] for row in table.rows] == list(book)
    for row, r in zip(table.rows, book.values(), strict=True):
        assert row[5:9:2] == pytest.approx(r.tolist())
        assert row[6:10:2] == pytest.approx((r / book["output"]).tolist())
    assert "conserved" in table.note
    assert [row["layer"] for row in ledger_table(batches[0][0])] == list(book)
    ranked = [tuple(seewhy.explain(model, x[:2], method, target=t) for t in (0, 1))]
    assert [t.title for t in method.report_tables(ranked, keys[:2])] == [
        "Relevance ledger: lrp, class rank 1", "Relevance ledger: lrp, class rank 2"]
    quiet = LRP(ledger=False)
    assert quiet.report_tables([(seewhy.explain(model, x, quiet),)], keys) == []
