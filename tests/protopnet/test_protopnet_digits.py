"""The real result: ProtoPNet on scikit-learn's bundled digits (examples/protopnet_digits.py), slow."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "protopnet_digits.py"


@pytest.mark.slow
def test_digits_held_out_accuracy_after_push() -> None:
    pytest.importorskip("sklearn", reason="the digits come from scikit-learn")
    spec = importlib.util.spec_from_file_location("protopnet_digits", EXAMPLE)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    r = example.run(progress=False)
    assert (r["n_train"], r["n_val"], r["n_test"]) == (1259, 179, 359)
    assert r["best_phase"] in ("push", "last")  # the chosen model is a pushed one
    model = r["model"]
    assert model.pushed
    labels = r["train_data"].labels[model.prototype_image]
    assert torch.equal(labels, model.prototype_classes)  # every prototype is a patch of its own class
    assert r["test_accuracy"] >= 0.95, r["test_accuracy"]
