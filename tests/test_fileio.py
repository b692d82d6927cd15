"""seewhy.fileio: whole files or none, JSON-safe copies, checkpoints."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from seewhy.fileio import atomic_write, jsonable, load_checkpoint, read_json, save_checkpoint, write_json


def test_atomic_write_replaces_whole_or_leaves_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    with atomic_write(path) as f:
        f.write(b"old")
    with pytest.raises(RuntimeError, match="midway"), atomic_write(path) as f:
        f.write(b"half of the new")
        raise RuntimeError("midway")
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["f.bin"]  # no temporary file left
    assert os.stat(path).st_mode & 0o044  # ordinary permissions, not a private temporary file's 0600


def test_json_round_trip_and_errors(tmp_path: Path) -> None:
    write_json({"a": [1, 2.5], "b": None}, tmp_path / "x.json")
    assert read_json(tmp_path / "x.json") == {"a": [1, 2.5], "b": None}
    (tmp_path / "bad.json").write_text("{nope")
    with pytest.raises(ValueError, match="bad.json"):
        read_json(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="missing.json"):
        read_json(tmp_path / "missing.json")


def test_jsonable_makes_plain_values() -> None:
    value = {"t": torch.tensor([1.0, float("nan")]), "big": np.zeros((10, 10)), "n": np.int64(3), 1: (math.inf,),
             "p": Path("a/b"), "f": len}
    out = jsonable(value)
    assert out == {"t": [1.0, None], "big": {"shape": [10, 10], "dtype": "float64"}, "n": 3, "1": [None],
                   "p": str(Path("a/b")), "f": "builtins.len"}
    json.dumps(out, allow_nan=False)


def test_checkpoints_round_trip_and_name_a_bad_file(tmp_path: Path) -> None:
    state = {"w": torch.arange(4.0)}
    save_checkpoint(state, tmp_path / "c.pt")
    assert torch.equal(load_checkpoint(tmp_path / "c.pt", "cpu")["w"], state["w"])
    with pytest.raises(ValueError, match="no checkpoint"):
        load_checkpoint(tmp_path / "none.pt", "cpu")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot be read"):
        load_checkpoint(tmp_path / "junk.pt", "cpu")
