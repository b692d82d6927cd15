"""``seewhy featvis`` and ``seewhy atlas``, run in-process through ``seewhy.cli.main``: the reports' files and
numbers (checked against the library functions called directly), the cost said up front, exit codes and stdout.

The atlas tests lay out with PCA instead of UMAP (numba compiles UMAP for ~10 s on its first use in a process); one
slow-marked test runs the real thing."""

from __future__ import annotations

import argparse
import csv
import json
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from seewhy import cli, zoo
from seewhy.featvis import cli as fcli
from seewhy.featvis import regularizers as R

SMALL = ("--model", "tiny_cnn", "--size", 16, "--steps", 3)


def _run(capsys: pytest.CaptureFixture[str], *argv: Any) -> tuple[int, str, str]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tiny_cnn ships no weights
        rc = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def _report(out: Path) -> tuple[str, dict[str, Any]]:
    return (out / "index.html").read_text(encoding="utf-8"), json.loads((out / "manifest.json").read_text())


def _model() -> torch.nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return zoo.load_model("tiny_cnn")[0]


# -- featvis -------------------------------------------------------------------------------------------


def test_featvis_report_matches_visualize(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from seewhy.featvis import visualize

    out = tmp_path / "fv"
    rc, stdout, err = _run(capsys, "featvis", *SMALL, "--objective", "channel:features.2:3", "--objective",
                           "class:4", "--batch", 2, "--regularizer", "tv:0.05", "--seed", 5, "--out", out)
    assert rc == 0, err
    assert stdout == f"{out / 'index.html'}\n"
    html, manifest = _report(out)
    # the cost, said up front for the two objectives, and recorded
    assert re.search(r"about .* for 2 objectives x 3 steps", err)
    assert err.index("for 2 objectives") < err.index("objective 1/2")
    assert manifest["estimate"]["objectives"] == 2 and manifest["estimate"]["seconds"] > 0
    assert manifest["kind"] == "featvis" and manifest["settings"]["objectives"] == ["channel:features.2:3", "class:4"]
    assert manifest["settings"]["regularizers"] == ["TotalVariation(weight=0.05, beta=1)"]

    spec = zoo.get_spec("tiny_cnn")
    model = _model()
    for i, (given, name) in enumerate([("channel:features.2:3", "channel(features.2, 3)"),
                                       ("class:4", "class_logit(4)")]):
        rec = manifest["objectives"][i]
        assert rec["spec"] == given and rec["name"] == name
        assert rec["params"]["size"] == 16 and rec["params"]["steps"] == 3 and rec["params"]["batch"] == 2
        assert rec["params"]["seed"] == 5 and rec["params"]["lr"] == 0.05 and rec["params"]["param"] == "fft"
        assert len(rec["losses"]) == 3 and len(rec["objective_values"]) == 2 and len(rec["files"]) == 2
        direct = visualize(model, given, size=16, steps=3, batch=2, regularizers=[R.TotalVariation(0.05)], seed=5,
                           normalize=(spec.mean, spec.std), progress=False)
        np.testing.assert_allclose(rec["losses"], direct.losses.tolist(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(rec["objective_values"], direct.objective_values.tolist(), rtol=1e-5, atol=1e-6)
        for b, file in enumerate(rec["files"]):
            png = np.asarray(Image.open(out / file))
            assert png.shape == (16, 16, 3) and png.dtype == np.uint8
            expected = (direct.images[b].permute(1, 2, 0).clamp(0, 1) * 255).round().to(torch.uint8).numpy()
            assert np.abs(png.astype(int) - expected.astype(int)).max() <= 1
            assert file in html
        # the section: images, loss curve, the settings table
        section = html[html.index(f'id="objective-{i + 1}"'):]
        section = section[:section.index("</section>")]
        assert section.count("<img") == 3 and "loss curve" in section
        assert f"{rec['objective_values'][0]:.4g}" in section
        for key in ("objective", "lr", "param", "decorrelate", "transforms", "regularizers", "normalize",
                    "input size"):
            assert f"<td>{key}</td>" in section
    assert "cost estimate" in html and "http://" not in html and "https://" not in html  # self-contained


def test_featvis_one_objective_leaves_the_estimate_to_visualize(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "one"
    rc, _, err = _run(capsys, "featvis", *SMALL, "--objective", "neuron:features.0:1", "--param", "pixel",
                      "--no-decorrelate", "--transforms", "none", "--lr", 0.1, "--input-size", 24, "--out", out)
    assert rc == 0, err
    assert "cost:" not in err and "feature visualization of neuron(features.0, 1)" in err  # visualize's estimate
    _, manifest = _report(out)
    params = manifest["objectives"][0]["params"]
    assert (params["param"], params["decorrelate"], params["transforms"], params["lr"], params["input_size"]) == \
        ("pixel", False, "none", 0.1, 24)
    assert manifest["estimate"] is None


def test_featvis_diversity(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "div"
    rc, _, err = _run(capsys, "featvis", *SMALL, "--objective", "channel:features.2:3", "--objective", "class:1",
                      "--batch", 2, "--diversity", 10, "--out", out)
    assert rc == 0, err
    assert "class_logit(1) reads no layer" in err
    _, manifest = _report(out)
    names = [o["name"] for o in manifest["objectives"]]
    assert names == ["channel(features.2, 3) - 10 * diversity(features.2)", "class_logit(1)"]
    rc, _, err = _run(capsys, "featvis", *SMALL, "--objective", "channel:features.2:3", "--diversity", 10, "--out",
                      tmp_path / "div1")
    assert rc == 0 and "does nothing with --batch 1" in err


@pytest.mark.parametrize(("objective", "message"), [
    ("chanel:features.2:3", "channel:LAYER:C"),                      # unknown kind: the forms
    ("channel:features.2", "channel:LAYER:C"),                       # no channel
    ("channel:feature.2:3", "closest valid names: features.2"),      # unknown layer: close names
    ("class:espresso", "give the class index instead"),             # a name on a model without names
    ("class:", "write class:K or class:NAME"),
])
def test_featvis_bad_objective_is_a_usage_error(objective: str, message: str, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bad"
    rc, stdout, err = _run(capsys, "featvis", *SMALL, "--objective", objective, "--out", out)
    assert rc == 2 and stdout == "" and message in err, err
    assert not out.exists()


def test_featvis_bad_second_objective_fails_before_any_work(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bad"
    rc, stdout, err = _run(capsys, "featvis", *SMALL, "--objective", "channel:features.2:3", "--objective",
                           "channel:features.2:99", "--objective", "class:12", "--out", out)
    assert rc == 2 and stdout == "" and "channel 99 is out of range" in err and "(0..31)" in err
    assert "objective 1/" not in err and not out.exists()
    rc, _, err = _run(capsys, "featvis", *SMALL, "--objective", "channel:features.2:3", "--objective", "class:12",
                      "--out", out)
    assert rc == 2 and "class 12 is out of range" in err


def test_class_names_with_suggestions() -> None:
    from seewhy.featvis.objectives import class_logit

    model = _model()
    model.class_names = ["plane", "car", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    objective = fcli._objectives(["class:Bird", "probability:truck", "class:3"], model)
    assert [o.name for o in objective] == [class_logit(2).name, "class_probability(9)", class_logit(3).name]
    with pytest.raises(ValueError, match="did you mean 'bird'"):
        fcli._objectives(["class:brid"], model)


@pytest.mark.parametrize(("text", "expected"), [
    ("tv:0.05", [R.TotalVariation(0.05)]),
    ("TV:0.05:2", [R.TotalVariation(0.05, 2.0)]),
    ("l1:0.01", [R.L1(0.01)]),
    ("l2:0.01:0.4", [R.L2(0.01, 0.4)]),
    ("blur:0.5:4", [R.Blur(0.5, 4)]),
    ("blur:1", [R.Blur(1.0)]),
    ("decay:0.01", [R.Decay(0.01)]),
    ("clip_norm:20", [R.ClipNorm(20)]),
    ("clip-contribution:90", [R.ClipContribution(90)]),
    ("yosinski:3", list(R.yosinski_preset(3))),
])
def test_parse_regularizer(text: str, expected: list[Any]) -> None:
    assert [repr(r) for r in fcli.parse_regularizer(text)] == [repr(r) for r in expected]


@pytest.mark.parametrize(("text", "message"), [
    ("tv", "takes 1 to 2 number"), ("tv:x", "regularizer 'tv:x'"), ("blur:0.5:1.5", "regularizer 'blur:0.5:1.5'"),
    ("decay:1.5", "rate must be < 1"), ("yosinski:7", "1, 2, 3 or 4"), ("sharpen:1", "unknown regularizer"),
    ("l1:-1", "weight must be"), ("clip_norm:120", "percentile"),
])
def test_parse_regularizer_errors(text: str, message: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match=re.escape(message)) as info:
        fcli.parse_regularizer(text)
    assert "tv:W[:BETA]" in str(info.value)  # every error lists the forms


def test_featvis_bad_options_are_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "x"
    for extra, message in [(("--regularizer", "sharpen:1"), "unknown regularizer 'sharpen:1'"),
                           (("--param", "wavelet"), "invalid choice"), (("--size", 1), "an integer >= 2"),
                           (("--lr", 0), "a finite number > 0"), (("--diversity", -1), "a finite number >= 0"),
                           (("--device", "cuda:7"), "use --device cpu")]:
        rc, stdout, err = _run(capsys, "featvis", *SMALL, "--objective", "class:1", *extra, "--out", out)
        assert rc == 2 and stdout == "" and message in err, (extra, err)
    assert not out.exists()
    rc, _, err = _run(capsys, "featvis", "--model", "tiny_cnn", "--out", out)
    assert rc == 2 and "--objective" in err


def test_featvis_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
                           ) -> None:
    out = tmp_path / "full"
    out.mkdir()
    (out / "keep.txt").write_text("x")

    def fail(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the model was loaded before the output folder was checked")

    monkeypatch.setattr(zoo, "load_model", fail)
    rc, stdout, err = _run(capsys, "featvis", *SMALL, "--objective", "class:1", "--out", out)
    assert rc == 2 and stdout == "" and "not empty" in err and "--overwrite" in err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    monkeypatch.undo()
    rc, stdout, _ = _run(capsys, "featvis", *SMALL, "--objective", "class:1", "--out", out, "--overwrite", "-q")
    assert rc == 0 and stdout.strip() == str(out / "index.html")
    assert {p.name for p in out.iterdir()} == {"keep.txt", "index.html", "manifest.json", "01_class-1_0.png"}


def test_quiet_says_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, stdout, err = _run(capsys, "featvis", *SMALL, "--objective", "class:1", "--objective", "class:2", "-q",
                           "--out", tmp_path / "q")
    assert rc == 0 and err == "" and stdout.strip().endswith("index.html")


# -- atlas ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Eight 32x32 PNGs (halves of a saturated colour on noise) and one corrupt file."""
    root = tmp_path_factory.mktemp("atlas_data")
    rng = np.random.default_rng(0)
    for i in range(8):
        a = (rng.random((32, 32, 3)) * 160).astype(np.uint8)
        a[:, :16, i % 3] = 255
        Image.fromarray(a).save(root / f"img{i}.png")
    (root / "zz_corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not a picture")
    return root


@pytest.fixture()
def pca_layout(monkeypatch: pytest.MonkeyPatch) -> None:
    """Lay the atlas out by PCA (no numba compile): the CLI and the report are under test here, not UMAP."""
    from seewhy.inside import embedding

    project = embedding.project
    monkeypatch.setattr(embedding, "import_umap", lambda: None)
    monkeypatch.setattr(embedding, "project", lambda x, method, seed, options: project(x, "pca", seed, {}))


ATLAS = ("--model", "tiny_cnn", "--grid", 3, "--min-count", 2, "--icon-size", 8, "--steps", 2,
         "--samples-per-image", 6)


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_atlas_report(folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], pca_layout: None) -> None:
    out = tmp_path / "atlas"
    rc, stdout, err = _run(capsys, "atlas", folder, *ATLAS, "--seed", 1, "--out", out)
    assert rc == 3, err  # the corrupt file is listed under Failures
    assert stdout == f"{out / 'index.html'}\n"
    assert re.search(r"icons: at most 9 .* about .* in all", err)  # the cost up front
    assert err.index("icons: at most") < err.index("activation vectors")
    html, manifest = _report(out)
    assert {p.name for p in out.iterdir()} == {"index.html", "manifest.json", "atlas.png", "atlas.csv",
                                               "samples.csv"}
    assert manifest["kind"] == "atlas" and manifest["layer"] == "features"
    params = manifest["params"]
    assert (params["grid"], params["min_count"], params["icon_size"], params["steps"], params["seed"],
            params["samples_per_image"]) == (3, 2, 8, 2, 1, 6)
    n = manifest["samples"]
    assert n == 8 * 6 == params["samples"]
    counts = np.array(manifest["counts"])
    assert counts.shape == (3, 3) and counts.sum() == n
    picture = np.asarray(Image.open(out / "atlas.png"))
    assert picture.shape == (24, 24, 3)
    cells = _rows(out / "atlas.csv")
    assert sorted((int(c["row"]), int(c["col"]), int(c["count"])) for c in cells) == \
        sorted((r, c, int(counts[r, c])) for r, c in zip(*np.nonzero(counts), strict=True))
    drawn = [c for c in cells if c["drawn"] == "1"]
    assert all(int(c["count"]) >= 2 for c in drawn) and params["icons"] == len(drawn)
    assert {int(c["count"]) for c in cells if c["drawn"] == "0"} <= {1}
    for c in cells:  # an empty cell is white in the atlas, a drawn one is not
        tile = picture[int(c["row"]) * 8:(int(c["row"]) + 1) * 8, int(c["col"]) * 8:(int(c["col"]) + 1) * 8]
        assert (tile == 255).all() != (c["drawn"] == "1")
    samples = _rows(out / "samples.csv")
    assert len(samples) == n and {s["image"] for s in samples} == {str(folder / f"img{i}.png") for i in range(8)}
    assert all(0 <= float(s["layout_x"]) <= 1 and 0 <= float(s["layout_y"]) <= 1 for s in samples)
    for section in ('id="atlas"', 'id="layout"', 'id="cells"', 'id="settings"', 'id="cost"', 'id="failures"'):
        assert section in html
    assert "zz_corrupt.png" in html and html.count("<tr><td class=\"n\">") >= len(cells)
    assert "<td>min count</td>" in html and "umap" in html


def test_atlas_class_filter(folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                            pca_layout: None) -> None:
    out = tmp_path / "class"
    rc, _, err = _run(capsys, "atlas", folder, *ATLAS, "--class", 4, "--layer", "features.2", "--out", out)
    assert rc == 3, err
    html, manifest = _report(out)
    assert manifest["params"]["class_filter"] == 4 and manifest["settings"]["class_index"] == 4
    assert "<th class=\"n\">score</th>" in html and "attribution to class 4" in html
    scores = np.array([[np.nan if v is None else v for v in row] for row in manifest["scores"]], dtype=float)
    for c in _rows(out / "atlas.csv"):
        assert (c["drawn"] == "1") == (int(c["count"]) >= 2 and scores[int(c["row"]), int(c["col"])] > 0)
    assert "attribution" in _rows(out / "samples.csv")[0]


def test_atlas_usage_errors(folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                            pca_layout: None) -> None:
    out = tmp_path / "bad"
    for extra, message in [(("--layer", "fc"), "an atlas needs a convolutional layer"),
                           (("--layer", "feature"), "closest valid names"),
                           (("--class", "cat"), "give the class index instead"),
                           (("--class", 10), "class_filter=10 is out of range"),
                           (("--icon-size", 4), "an integer >= 8")]:
        rc, stdout, err = _run(capsys, "atlas", folder, *ATLAS, *extra, "--out", out)
        assert rc == 2 and stdout == "" and message in err, (extra, err)
    assert not out.exists()
    rc, _, err = _run(capsys, "atlas", tmp_path / "missing", *ATLAS, "--out", out)
    assert rc == 2 and "does not exist" in err
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "broken.png").write_bytes(b"not an image")
    rc, stdout, err = _run(capsys, "atlas", empty, *ATLAS, "--out", out)
    assert rc == 1 and stdout == "" and "could be read" in err


@pytest.mark.slow  # numba compiles UMAP on its first run in a process: about 10 s
def test_atlas_with_umap(folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "umap"
    rc, _, err = _run(capsys, "atlas", folder, *ATLAS, "--out", out)
    assert rc == 3, err
    _, manifest = _report(out)
    assert manifest["params"]["umap"]["metric"] == "cosine" and np.array(manifest["counts"]).sum() == 48
