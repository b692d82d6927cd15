"""The local engine of explain-dataset: rows equal direct seewhy.explain + metric calls, whatever the batch size; an
interrupted run resumed equals an uninterrupted one; bad files become error rows; labels from class folders; parts
written chunk by chunk; the CLI end to end (exit codes 0, 2, 3). (A peak-RSS test at 200 vs 2,000 images is left
for the benchmark session.)"""

from __future__ import annotations

import argparse
import math
import warnings
from pathlib import Path

import pytest
import torch

pytest.importorskip("pyarrow")

from dataset_helpers import frame, photo_folder, same, tiny_model

from seewhy import command, explain  # noqa: E402
from seewhy.data import as_data  # noqa: E402
from seewhy.dataset import Store, explain_dataset, image_seed  # noqa: E402
from seewhy.dataset.cli import add_parser  # noqa: E402
from seewhy.metrics import get_metric  # noqa: E402

METHODS = ["gradcam", "integrated_gradients", "smoothgrad"]
PARAMS = {"gradcam": {"layer": "features"}, "integrated_gradients": {"n_steps": 4}, "smoothgrad": {"n_samples": 3}}
METRICS = ["deletion_auc", "insertion_auc"]
FLOATS = ["score", *METRICS]


_model = tiny_model


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Two class folders of 32-px crops and flips of a bundled photo (6 + 5 images) and one unreadable file."""
    return photo_folder(tmp_path_factory.mktemp("data"), {"cat": 6, "dog": 5})


def _run(folder, out, model, **kw):
    kw = {"method_params": PARAMS, "batch_size": 4, "chunk_size": 4, "estimate": False, "progress": False, **kw}
    return explain_dataset(folder, model, METHODS, METRICS, out=out, **kw)


_frame = frame


def _same(a, b):
    same(a, b, FLOATS)


@pytest.fixture(scope="module")
def reference(folder, model, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "store"
    summary = _run(folder, out, model)
    return out, summary


def test_rows_equal_direct_explain_and_metric_calls(folder, model, reference):
    out, summary = reference
    assert (summary.images, summary.done, summary.errors) == (12, 12, 1)
    table = _frame(out)
    assert len(table) == 12 * len(METHODS)
    paths = [str(folder / "cat" / "1.png"), str(folder / "dog" / "3.png")]
    x, read = as_data(paths, model).load([0, 1])
    assert read == [0, 1]
    for m in METHODS:
        for j, p in enumerate(paths):
            seed = image_seed(str(Path(p).relative_to(folder)), 0)
            params = {**PARAMS[m], **({"seed": seed} if m != "gradcam" else {})}
            exp = explain(model, x[j : j + 1], m, target="top1", **params)
            row = table[(table.path == p) & (table.method == m)].iloc[0]
            assert row.seed == seed and row.target == int(exp.targets[0]) and row.prediction == row.target
            assert row.score == pytest.approx(float(exp.scores[0]), rel=1e-5)
            assert row.label == (0 if "cat" in p else 1) and row["rank"] == 0 and isinstance(row.error, float)  # null
            for metric in METRICS:
                want = get_metric(metric)(model, x[j : j + 1], exp.attributions, exp.targets, seed=seed).scores
                assert row[metric] == pytest.approx(float(want[0]), rel=1e-5, abs=1e-7)


def test_bad_files_become_error_rows_and_labels_come_from_class_folders(folder, reference):
    table = _frame(reference[0])
    bad = table[table.path == str(folder / "dog" / "broken.png")]
    assert sorted(bad.method) == sorted(METHODS)
    assert bad.error.str.contains("not an image file").all() and bad.score.isna().all()
    assert bad.label.eq(1).all() and bad.deletion_auc.isna().all()
    good = table[table.error.isna()]
    assert set(good.label[good.path.str.contains("/cat/")]) == {0}
    assert set(good.label[good.path.str.contains("/dog/")]) == {1}
    assert not good[METRICS].isna().any().any()


def test_batch_size_does_not_change_the_rows(folder, model, reference, tmp_path):
    _run(folder, tmp_path / "s", model, batch_size=3, chunk_size=100)
    _same(_frame(tmp_path / "s"), _frame(reference[0]))


def test_parts_are_written_chunk_by_chunk(folder, model, tmp_path, monkeypatch):
    sizes = []
    write = Store.write

    def spy(self, rows, prefix="part"):
        rows = list(rows)
        sizes.append(len({r["path"] for r in rows}))
        return write(self, rows, prefix)

    monkeypatch.setattr(Store, "write", spy)
    summary = _run(folder, tmp_path / "s", model, batch_size=2, chunk_size=3)  # chunk: 2 whole batches
    assert sizes == [4, 4, 4] and len(summary.parts) == 3
    assert [p.name for p in Store(tmp_path / "s", METRICS).parts()] == [p.name for p in summary.parts]


def test_an_interrupted_run_resumed_equals_an_uninterrupted_one(folder, model, reference, tmp_path, monkeypatch):
    write = Store.write
    calls = []

    def crash_after_two(self, rows, prefix="part"):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(1)
        return write(self, rows, prefix)

    monkeypatch.setattr(Store, "write", crash_after_two)
    with pytest.raises(KeyboardInterrupt):
        _run(folder, tmp_path / "s", model)
    monkeypatch.setattr(Store, "write", write)
    assert len(Store(tmp_path / "s", METRICS).done_paths()) == 8
    with pytest.raises(FileExistsError, match="--resume"):
        _run(folder, tmp_path / "s", model)
    summary = _run(folder, tmp_path / "s", model, resume=True, batch_size=3)
    assert (summary.skipped, summary.done) == (8, 4)
    _same(_frame(tmp_path / "s"), _frame(reference[0]))
    again = _run(folder, tmp_path / "s", model, resume=True)  # nothing left: nothing written, nothing duplicated
    assert again.done == 0 and again.parts == []
    _same(_frame(tmp_path / "s"), _frame(reference[0]))


def _cli(argv):
    parser = argparse.ArgumentParser(prog="seewhy")
    sub = parser.add_subparsers(dest="command", required=True)
    add_parser(sub, command.common_options())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return command.run(parser, ["explain-dataset", *argv])


def test_the_command_end_to_end(folder, tmp_path, capsys):
    good = tmp_path / "good"
    good.mkdir()
    for p in sorted((folder / "cat").glob("*.png"))[:4]:
        (good / p.name).write_bytes(p.read_bytes())
    args = ["--model", "tiny_cnn", "--method", "gradcam,saliency", "--metric", "deletion_auc", "-q",
            "--batch-size", "3", "--chunk-size", "2"]
    assert _cli([str(good), "--out", str(tmp_path / "a"), "--workers", "2", *args]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "a" / "results.parquet")
    a = _frame(tmp_path / "a")
    assert len(a) == 8 and a.label.isna().all() and a.error.isna().all()
    # a text file of paths (relative to its folder, the seeds' root) and a glob give the same rows
    (good / "list.txt").write_text("# four images, one listed twice\n" + "\n".join(f"{k}.png" for k in [0, 1, 2, 3, 0]))
    assert _cli([str(good / "list.txt"), "--out", str(tmp_path / "b"), "--workers", "0", *args]) == 0
    _same(_frame(tmp_path / "b"), a)
    assert _cli([str(good / "*.png"), "--out", str(tmp_path / "c"), "--workers", "0", *args]) == 0
    _same(_frame(tmp_path / "c"), a)
    # true classes from a --labels file
    (tmp_path / "labels.csv").write_text("image,label\n" + "".join(f"{k}.png,{k % 3}\n" for k in range(4)))
    assert _cli([str(good), "--out", str(tmp_path / "f"), "--labels", str(tmp_path / "labels.csv"), *args]) == 0
    f = _frame(tmp_path / "f")
    assert dict(zip(f.path.str[-5:], f.label, strict=True)) == {f"{k}.png": k % 3 for k in range(4)}
    # a non-empty store: refused (2) naming --resume/--overwrite; --resume does nothing more (0)
    capsys.readouterr()
    assert _cli([str(good), "--out", str(tmp_path / "a"), *args]) == 2
    assert "--resume" in capsys.readouterr().err
    assert _cli([str(good), "--out", str(tmp_path / "a"), "--resume", *args]) == 0
    _same(_frame(tmp_path / "a"), a)
    # usage errors (2); a bad file: error rows and exit code 3
    assert _cli([str(good), "--out", str(tmp_path / "d"), "--model", "tiny_cnn", "--method", "nope"]) == 2
    assert _cli([str(folder), "--out", str(tmp_path / "e"), "--workers", "0", *args]) == 3
    e = _frame(tmp_path / "e")
    assert e.error.notna().sum() == 2 and math.isclose(e.label.max(), 1)
    assert torch.get_num_threads() >= 1
