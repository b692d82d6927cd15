"""STORE/summary.html of explain-dataset: its tables equal a groupby of results.parquet, the confusion matrix equals
a crosstab, the shown cases are the extreme ones (with maps equal to a direct seewhy.explain), error rows listed,
nothing external; a failing summary never fails the run; --no-summary and --summary-only."""

from __future__ import annotations

import argparse
import html
import logging
import math
import re
import warnings

import numpy as np
import pytest

pytest.importorskip("pyarrow")

from dataset_helpers import photo_folder, tiny_model

from seewhy import command, explain, viz  # noqa: E402
from seewhy.data import as_data  # noqa: E402
from seewhy.dataset import Store, explain_dataset, read_results  # noqa: E402
from seewhy.dataset import summary as summary_mod  # noqa: E402
from seewhy.dataset.cli import add_parser  # noqa: E402
from seewhy.dataset.summary import write_summary  # noqa: E402
from seewhy.report_layout import jpeg_uri  # noqa: E402

METRICS = ["deletion_auc"]
PARAMS = {"gradcam": {"layer": "features"}}


_model = tiny_model


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Two class folders of 32-px crops and flips of a bundled photo (5 + 4 images) and one unreadable file."""
    return photo_folder(tmp_path_factory.mktemp("data"), {"cat": 5, "dog": 4}, step=(7, 5))


@pytest.fixture(scope="module")
def store(folder, model, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "store"
    explain_dataset(folder, model, ["gradcam"], METRICS, out=out, method_params=PARAMS, batch_size=4,
                    estimate=False, progress=False, run_info={"model": "tiny_cnn"})
    return out


def _html(store):
    return (store / "summary.html").read_text()


def _table_rows(text, table_id):
    """``{(data attrs of the row): {data-key: data-value}}`` of one summary table."""
    body = re.search(rf'<table[^>]*id="{table_id}".*?</table>', text, re.S).group(0)
    out = {}
    for attrs, cells in re.findall(r"<tr ((?:data-[a-z]+=\"[^\"]*\" ?)+)>(.*?)</tr>", body, re.S):
        key = tuple(html.unescape(v) for v in re.findall(r'data-[a-z]+="([^"]*)"', attrs))
        out[key] = {k: v for k, v in re.findall(r'data-key="([^"]+)" data-value="([^"]*)"', cells)}
    return out


def _close(got, want):
    if want is None or (isinstance(want, float) and math.isnan(want)):
        assert got == ""
    else:
        assert float(got) == pytest.approx(float(want), rel=1e-12, abs=0)


def _check_tables(text, frame, metrics):
    top = frame[frame["rank"].isna() | (frame["rank"] == 0)].copy()
    top["class"] = top.label.fillna(top.prediction)
    for table_id, keys in (("method-table", ["method"]), ("class-table", ["class", "method"])):
        rows = _table_rows(text, table_id)
        groups = top.dropna(subset=keys).groupby(keys)
        assert len(rows) == groups.ngroups
        for key, g in groups:
            key = key if isinstance(key, tuple) else (key,)
            got = rows[tuple(str(int(k)) if isinstance(k, float) else str(k) for k in key)]
            assert int(got["rows"]) == len(g) and int(got["errors"]) == g.error.notna().sum()
            for m in metrics:
                _close(got[f"{m}_mean"], g[m].mean())
                assert int(got[f"{m}_count"]) == g[m].count()


def _figures(text, section_class, **attrs):
    sel = "".join(f' data-{k}="{v}"' for k, v in attrs.items())
    start = text.index(f'<div class="cases {section_class}"{sel}>')
    end = min(i for i in (text.find('<div class="cases', start + 1), text.index("</section>", start)) if i > 0)
    block = text[start:end]
    return [(html.unescape(p), v, fig) for p, v, fig in
            re.findall(r'<figure class="case" data-path="([^"]*)" data-value="([^"]*)">(.*?)</figure>', block, re.S)]


def test_the_tables_equal_a_groupby_of_the_results(store):
    frame = read_results(store).to_pandas()
    text = _html(store)
    _check_tables(text, frame, METRICS)
    assert ">0 (cat)<" in text and ">1 (dog)<" in text  # the class folders name the labels


def test_the_confusion_matrix_counts_the_images(store):
    frame = read_results(store).to_pandas()
    images_ = frame.dropna(subset=["label", "prediction"]).drop_duplicates("path")
    want = images_.groupby(["label", "prediction"]).size()
    cells = dict(((int(a), int(b)), int(v)) for a, b, v in re.findall(
        r'<td class="n[^"]*" data-label="(\d+)" data-prediction="(\d+)" data-value="(\d+)"', _html(store)))
    assert {k: v for k, v in cells.items() if v} == {(int(a), int(b)): int(n) for (a, b), n in want.items()}
    assert sum(cells.values()) == 9  # the broken image has no prediction


def test_the_shown_cases_are_the_extreme_ones_with_their_maps(store, model):
    frame = read_results(store).to_pandas()
    text = _html(store)
    good = frame[frame.deletion_auc.notna()]
    want = good.sort_values(["deletion_auc", "path"], ascending=[False, True]).head(8)  # lower is better: highest
    shown = _figures(text, "worst", method="gradcam", metric="deletion_auc")
    assert [p for p, _, _ in shown] == list(want.path)
    assert [float(v) for _, v, _ in shown] == list(want.deletion_auc)
    # the map of the worst case equals a direct explanation of the image re-read from its path
    path = shown[0][0]
    data = as_data([path], model)
    x, _ = data.load([0])
    exp = explain(model, x, "gradcam", target=int(want.target.iloc[0]), layer="features")
    picture = data.images(x)[0]
    uri = jpeg_uri(viz.overlay(picture, exp.heatmap(picture.shape[:2])[0, 0].numpy()))
    assert f'src="{uri}" alt="gradcam map"' in shown[0][2]
    assert all('alt="gradcam map"' in fig for _, _, fig in shown)
    # most surprising: labelled, predicted wrong, the highest score of the predicted class first
    wrong = good[(good.label != good.prediction) & (good.target == good.prediction)]
    wrong = wrong.sort_values(["score", "path"], ascending=[False, True]).drop_duplicates("path").head(8)
    assert [p for p, _, _ in _figures(text, "surprising")] == list(wrong.path)


def test_error_rows_are_listed_and_nothing_is_external(store, folder):
    text = _html(store)
    listed = re.findall(r'<tr class="error-row" data-path="([^"]*)" data-method="([^"]*)">', text)
    assert listed == [(str(folder / "dog" / "broken.png"), "gradcam")]
    assert "not an image file" in text
    assert not re.search(r"https?://|//cdn|<script|<link", text)
    assert not re.search(r'(?:src|href)="(?!data:|#)', text)


def test_a_store_of_rows_made_by_hand(tmp_path):
    """topK ranks, unlabelled images (class: the prediction), nulls, a fixed budget of maps without a model."""
    metrics = ["deletion_auc", "insertion_auc"]
    st = Store(tmp_path / "s", metrics)
    st.open({"methods": ["a", "b"], "metrics": metrics, "seed": 0})
    rng = np.random.default_rng(0)
    rows = []
    for i in range(40):
        label = None if i % 7 == 0 else i % 4
        prediction = (i * 3) % 4 if i % 5 else label if label is not None else 1
        for m in ("a", "b"):
            if i == 13 and m == "b":
                rows.append({"path": f"/x/{i:02d}.png", "label": label, "method": m, "error": "method b: boom"})
                continue
            for r in range(2):
                rows.append({"path": f"/x/{i:02d}.png", "label": label, "prediction": prediction, "method": m,
                             "rank": r, "target": prediction if r == 0 else (prediction + 1) % 4,
                             "score": float(rng.random()), "seconds": 0.01, "seed": i,
                             "deletion_auc": None if i == 3 else float(rng.random()),
                             "insertion_auc": float(rng.random())})
    st.write(rows[:50])
    st.write(rows[50:])
    path = write_summary(tmp_path / "s", max_cases=5)
    text = path.read_text()
    frame = read_results(tmp_path / "s").to_pandas()
    _check_tables(text, frame, metrics)
    labelled = frame.dropna(subset=["label", "prediction"]).drop_duplicates("path")
    counts = labelled.groupby(["label", "prediction"]).size()
    cells = {(int(a), int(b)): (int(v), "top" in c) for c, a, b, v in re.findall(
        r'<td class="n([^"]*)" data-label="(\d+)" data-prediction="(\d+)" data-value="(\d+)"', text)}
    assert {k: v for k, (v, _) in cells.items() if v} == {(int(a), int(b)): int(n) for (a, b), n in counts.items()}
    off = sorted(((-n, (int(a), int(b))) for (a, b), n in counts.items() if a != b))[:3]
    assert {k for k, (_, top) in cells.items() if top} == {k for _, k in off}
    top = frame[frame["rank"] == 0]
    for m, higher in (("insertion_auc", True), ("deletion_auc", False)):
        g = top[(top.method == "a") & top[m].notna()].sort_values([m, "path"], ascending=[higher, True]).head(5)
        assert [p for p, _, _ in _figures(text, "worst", method="a", metric=m)] == list(g.path)
    assert "no maps: run.json names no model" in text and 'alt="a map"' not in text
    assert re.findall(r'data-path="([^"]*)" data-method="([^"]*)"', text) == [("/x/13.png", "b")]


def test_the_budget_of_maps(store, model):
    write_summary(store, model=model, max_cases=3, max_maps=2)
    text = _html(store)
    assert len(set(re.findall(r'src="([^"]+)" alt="gradcam map"', text))) == 2  # one map shown in several places
    assert "beyond the budget of 2 maps" in text
    with pytest.raises(FileExistsError):
        write_summary(store, overwrite=False)
    write_summary(store)  # as the run wrote it, for the other tests


def test_a_failing_summary_does_not_fail_the_run(folder, model, tmp_path, monkeypatch, caplog):
    def boom(*args, **kwargs):
        raise RuntimeError("no disk left")

    monkeypatch.setattr(summary_mod, "write_summary", boom)
    with caplog.at_level(logging.WARNING, logger="seewhy"):
        result = explain_dataset(folder, model, ["gradcam"], METRICS, out=tmp_path / "s", method_params=PARAMS,
                                 estimate=False, progress=False)
    assert result.done == 10 and len(read_results(tmp_path / "s")) == 10
    assert not (tmp_path / "s" / "summary.html").exists()
    assert "the summary could not be written (RuntimeError: no disk left)" in caplog.text
    assert "--summary-only" in caplog.text


def _cli(argv):
    parser = argparse.ArgumentParser(prog="seewhy")
    sub = parser.add_subparsers(dest="command", required=True)
    add_parser(sub, command.common_options())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return command.run(parser, ["explain-dataset", *argv])


def test_the_command_no_summary_and_summary_only(folder, tmp_path, capsys):
    out = tmp_path / "s"
    args = ["--model", "tiny_cnn", "--method", "gradcam", "--metric", "deletion_auc", "-q", "--workers", "0"]
    assert _cli([str(folder / "cat"), "--out", str(out), "--no-summary", *args]) == 0
    assert not (out / "summary.html").exists()
    capsys.readouterr()
    assert _cli(["--summary-only", "--out", str(out), "-q"]) == 0  # the model from run.json
    assert capsys.readouterr().out.strip() == str(out / "summary.html")
    text = _html(out)
    assert 'alt="gradcam map"' in text and "tiny_cnn loaded from run.json" in text
    assert _cli(["--out", str(out), "-q"]) == 2  # no DATA, no --model: a usage error
    assert "--summary-only" in capsys.readouterr().err
    assert _cli(["--summary-only", "--out", str(tmp_path / "none"), "-q"]) == 2  # no store there
