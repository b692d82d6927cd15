"""The dataset store: parts written atomically, the paths it holds, refusal of a non-empty store, resume checks,
the seeds per image, and pyarrow as an optional dependency."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytest.importorskip("pyarrow")

from seewhy.dataset.store import BASE_COLUMNS, RESULTS, Store, read_results, require_pyarrow  # noqa: E402
from seewhy.dataset.work import image_seed  # noqa: E402

RUN = {"methods": ["gradcam"], "metrics": ["deletion_auc"], "seed": 0, "batch_size": 4}


def _rows(paths, method="gradcam"):
    return [{"path": p, "label": 1, "prediction": 2, "method": method, "rank": 0, "target": 2, "score": 0.5,
             "seconds": 0.1, "seed": image_seed(p, 0), "deletion_auc": 0.25} for p in paths]


def test_parts_are_written_atomically_and_hold_the_paths(tmp_path):
    store = Store(tmp_path / "s", ["deletion_auc"])
    store.open(RUN)
    assert store.write([]) is None
    first = store.write(_rows(["a.png", "b.png"]))
    second = store.write(_rows(["c.png"]) + [{"path": "bad.png", "method": "gradcam", "error": "unreadable"}])
    assert [p.name for p in store.parts()] == ["part-00000.parquet", "part-00001.parquet"] == [first.name, second.name]
    assert not [p for p in store.results.iterdir() if p.name.startswith(".")]  # no temporary file left
    assert store.done_paths() == {"a.png", "b.png", "c.png", "bad.png"}
    table = read_results(tmp_path / "s")
    assert table.column_names == [n for n, _ in BASE_COLUMNS] + ["deletion_auc"]
    assert table.column("path").to_pylist() == ["a.png", "b.png", "bad.png", "c.png"]
    bad = table.filter(table.column("path").to_numpy(zero_copy_only=False) == "bad.png").to_pylist()[0]
    assert bad["error"] == "unreadable" and bad["score"] is None and bad["deletion_auc"] is None
    assert json.loads((tmp_path / "s" / "run.json").read_text())["methods"] == ["gradcam"]
    assert store.next_part("ray-w1").name == "ray-w1-00000.parquet"  # other engines name their parts apart


def test_a_non_empty_store_is_refused_unless_resume_or_overwrite(tmp_path):
    store = Store(tmp_path, ["deletion_auc"])
    store.open(RUN)
    store.write(_rows(["a.png"]))
    with pytest.raises(FileExistsError, match="--resume.*--overwrite"):
        Store(tmp_path, ["deletion_auc"]).open(RUN)
    Store(tmp_path, ["deletion_auc"]).open({**RUN, "batch_size": 8}, resume=True)  # batching may change
    with pytest.raises(ValueError, match="another run.*methods"):
        Store(tmp_path, ["deletion_auc"]).open({**RUN, "methods": ["saliency"]}, resume=True)
    again = Store(tmp_path, ["deletion_auc"])
    again.open({**RUN, "methods": ["saliency"]}, overwrite=True)
    assert again.parts() == [] and again.done_paths() == set()
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError, match="is a file"):
        Store(tmp_path / "file", []).open(RUN)


def test_image_seeds_depend_on_the_path_and_the_run_seed_only():
    assert image_seed("cat/1.png", 0) == image_seed("cat/1.png", 0) == image_seed("cat\\1.png", 0)
    assert image_seed("cat/1.png", 0) != image_seed("cat/2.png", 0)
    assert image_seed("cat/1.png", 0) != image_seed("cat/1.png", 1)
    assert 0 <= image_seed("x", 3) < 2**63


def test_pyarrow_is_needed_only_by_the_store(monkeypatch):
    code = ("import sys; sys.modules['pyarrow'] = None; sys.modules['pyarrow.parquet'] = None\n"
            "import seewhy.dataset, seewhy.dataset.cli\n"
            "try:\n    seewhy.dataset.Store('x', [])\nexcept ImportError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert 'pip install "seewhy[dataset]"' in out.stdout
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    with pytest.raises(ImportError, match=r'seewhy\[dataset\]'):
        require_pyarrow()
    assert RESULTS == "results.parquet"
