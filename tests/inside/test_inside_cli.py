"""``seewhy inside filters|maps|patches|embed|dissect``, run in-process through ``seewhy.cli.main``: the reports'
sections and numbers (checked against the library functions called directly), exit codes and stdout."""

from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from seewhy import cli, images, zoo
from seewhy.data import as_data

N_GOOD = 10


def _crops() -> list[np.ndarray]:
    """40x40 crops of the bundled photos: N_GOOD of them."""
    out = []
    for name in images.BUNDLED:
        img = np.asarray(images.bundled_image(name).convert("RGB").resize((80, 80)))
        out += [img[t:t + 40, left:left + 40] for t in (0, 40) for left in (0, 40)]
    return out[:N_GOOD]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """N_GOOD PNGs and one corrupt file, flat."""
    root = tmp_path_factory.mktemp("inside_data")
    for i, crop in enumerate(_crops()):
        Image.fromarray(crop).save(root / f"img{i:02d}.png")
    (root / "zz_corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not a picture")
    return root


@pytest.fixture(scope="module")
def classes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two class folders of four pictures each, no corrupt file."""
    root = tmp_path_factory.mktemp("inside_classes")
    for i, crop in enumerate(_crops()[:8]):
        sub = root / ("cool" if i % 2 else "warm")
        sub.mkdir(exist_ok=True)
        Image.fromarray(crop).save(sub / f"img{i:02d}.png")
    return root


def _model(name: str) -> torch.nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return zoo.load_model(name)[0]


def _data(source: Any, name: str) -> tuple[torch.nn.Module, Any]:
    model = _model(name)
    spec = zoo.get_spec(name)
    return model, as_data(source, model, transform=spec.preprocess, mean=spec.mean, std=spec.std)


def _run(capsys: pytest.CaptureFixture[str], *argv: Any) -> tuple[int, str, str]:
    rc = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def _report(out: Path) -> tuple[str, dict[str, Any]]:
    return (out / "index.html").read_text(encoding="utf-8"), json.loads((out / "manifest.json").read_text())


# -- filters, maps -------------------------------------------------------------------------------------


def test_filters_of_the_first_conv(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from seewhy.inside.filters import filters

    out = tmp_path / "f"
    rc, stdout, err = _run(capsys, "inside", "filters", "--model", "tiny_cnn", "--out", out, "--max-filters", 4)
    assert rc == 0 and stdout == f"{out / 'index.html'}\n"
    html, m = _report(out)
    assert m["kind"] == "filters" and m["layer"] == "features.0"
    weights = filters(_model("tiny_cnn"), "features.0")
    assert m["filters"]["shape"] == list(weights.shape) and m["filters"]["shown"] == 4
    assert [s["norm"] for s in m["filters"]["stats"]] == pytest.approx(weights.flatten(1).norm(dim=1).tolist())
    assert "Filters of features.0" in html and "<img" in html and "data:image/png;base64," in html


def test_filters_of_a_module_without_weights_is_a_usage_error(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    rc, stdout, err = _run(capsys, "inside", "filters", "--model", "tiny_cnn", "--layer", "features",
                           "--out", tmp_path / "f")
    assert rc == 2 and stdout == "" and "no 4-D convolution weight" in err
    assert not (tmp_path / "f").exists()


def test_maps_show_the_top_channels(folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from seewhy.inside.filters import feature_maps, top_channels

    out = tmp_path / "maps"
    files = [folder / "img00.png", folder / "img03.png"]
    rc, stdout, err = _run(capsys, "inside", "maps", *files, "--model", "tiny_resnet", "--top", 5, "--out", out)
    assert rc == 0 and stdout == f"{out / 'index.html'}\n"
    assert "about" in err and "for 2 images" in err  # the cost estimate
    html, m = _report(out)
    assert m["layer"] == "layer2" and [im["name"] for im in m["images"]] == ["img00", "img03"]
    model, data = _data([str(f) for f in files], "tiny_resnet")
    x, _ = data.load([0, 1])
    maps = feature_maps(model, x, "layer2")
    for i, im in enumerate(m["images"]):
        assert [c["channel"] for c in im["channels"]] == top_channels(maps[i], 5)
        assert [c["mean"] for c in im["channels"]] == pytest.approx(maps[i].mean(dim=(1, 2))[top_channels(maps[i], 5)]
                                                                    .tolist(), rel=1e-5)
        assert im["shape"] == list(maps.shape[1:])
    assert "Feature maps of layer2" in html and html.count("<img") == 4 and "Failures" not in html


def test_maps_with_given_channels_and_a_corrupt_file(folder: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "maps"
    rc, _, err = _run(capsys, "inside", "maps", folder / "img01.png", folder / "zz_corrupt.png", "--model",
                      "tiny_cnn", "--channels", "3,0", "--out", out)
    assert rc == 3 and "zz_corrupt.png" in err
    html, m = _report(out)
    assert [c["channel"] for c in m["images"][0]["channels"]] == [3, 0]
    assert [f["path"] for f in m["failures"]] == [str(folder / "zz_corrupt.png")]
    assert "Failures" in html and "zz_corrupt.png" in html
    rc, _, err = _run(capsys, "inside", "maps", folder / "img01.png", "--model", "tiny_cnn", "--channels", "999",
                      "--out", tmp_path / "bad")
    assert rc == 2 and "out of range" in err and not (tmp_path / "bad").exists()


# -- patches -------------------------------------------------------------------------------------------


def test_patches_match_top_patches(folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from seewhy.inside.patches import top_patches

    out = tmp_path / "patches"
    rc, stdout, err = _run(capsys, "inside", "patches", folder, "--model", "tiny_resnet", "--units", "0,5,7",
                           "--k", 3, "--out", out)
    assert rc == 3 and stdout == f"{out / 'index.html'}\n"  # the corrupt file: a report, and exit code 3
    html, m = _report(out)
    model, data = _data(str(folder), "tiny_resnet")
    top = top_patches(model, data, "layer2", units=[0, 5, 7], k=3)
    assert [u["unit"] for u in m["units"]] == [0, 5, 7] and m["images"] == N_GOOD == top.images
    for u in m["units"]:
        expected = [{"index": r.index, "path": r.path, "y": r.y, "x": r.x, "box": list(r.box)}
                    for r in top.records(u["unit"])]
        assert [{k: v for k, v in r.items() if k != "value"} for r in u["records"]] == expected
        assert [r["value"] for r in u["records"]] == pytest.approx([r.value for r in top.records(u["unit"])])
    assert m["field"]["size"] == list(top.field.size) and m["field"]["stride"] == list(top.field.stride)
    assert [f["path"] for f in m["failures"]] == [str(folder / "zz_corrupt.png")]
    assert "Top patches of layer2" in html and 'id="unit-5"' in html and "Receptive field" in html
    assert html.count('class="boxed"') == 9 and html.count('class="crop"') == 9 and "Failures" in html


def test_patches_default_and_top_units(folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from seewhy.inside.patches import top_patches

    files = [folder / f"img{i:02d}.png" for i in range(4)]
    rc, _, _ = _run(capsys, "inside", "patches", *files, "--model", "tiny_cnn", "--k", 2, "--out", tmp_path / "a")
    assert rc == 0
    assert [u["unit"] for u in _report(tmp_path / "a")[1]["units"]] == list(range(16))  # the first 16 units
    rc, _, _ = _run(capsys, "inside", "patches", *files, "--model", "tiny_cnn", "--top-units", 3, "--k", 2,
                    "--out", tmp_path / "b")
    assert rc == 0
    model, data = _data([str(f) for f in files], "tiny_cnn")
    top = top_patches(model, data, "features", k=2)
    best = sorted(top.units, key=lambda u: (-float(top.values[top.units.index(u), 0]), u))[:3]
    assert [u["unit"] for u in _report(tmp_path / "b")[1]["units"]] == best


# -- errors --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sub", ["maps", "patches", "embed", "dissect"])
def test_unknown_layer_is_a_usage_error(sub: str, folder: Path, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    extra = ["--method", "pca"] if sub == "embed" else []
    rc, stdout, err = _run(capsys, "inside", sub, folder / "img00.png", folder / "img01.png", "--model", "tiny_cnn",
                           "--layer", "featurez", "--out", tmp_path / "o", *extra)
    assert rc == 2 and stdout == ""
    assert err.strip().splitlines()[-1].startswith("seewhy: error: unknown layer 'featurez'")
    assert not (tmp_path / "o").exists()


def test_usage_errors_and_nothing_to_report(folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "o"
    assert _run(capsys, "inside", "patches", folder, "--model", "no_such_model", "--out", out)[0] == 2
    rc, _, err = _run(capsys, "inside", "patches", tmp_path / "missing", "--model", "tiny_cnn", "--out", out)
    assert rc == 2 and "does not exist" in err
    (tmp_path / "empty").mkdir()
    rc, _, err = _run(capsys, "inside", "embed", tmp_path / "empty", "--model", "tiny_cnn", "--method", "pca",
                      "--out", out)
    assert rc == 2 and "no image files" in err
    rc, _, err = _run(capsys, "inside", "patches", folder / "zz_corrupt.png", tmp_path / "gone.png", "--model",
                      "tiny_cnn", "--out", out)
    assert rc == 1 and "none of the 2 image(s) could be read" in err
    assert not out.exists()
    assert _run(capsys, "inside", "patches", folder, "--model", "tiny_cnn", "--units", "1,x", "--out", out)[0] == 2


def test_non_empty_out_is_refused_before_any_work(folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "o"
    out.mkdir()
    (out / "keep.txt").write_text("mine")

    def fail(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(zoo, "load_model", fail)
    rc, stdout, err = _run(capsys, "inside", "patches", folder, "--model", "tiny_cnn", "--out", out)
    assert rc == 2 and stdout == "" and "not empty" in err and "--overwrite" in err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    monkeypatch.undo()
    rc, _, _ = _run(capsys, "inside", "filters", "--model", "tiny_cnn", "--out", out, "--overwrite", "-q")
    assert rc == 0 and (out / "index.html").exists()


# -- embed ---------------------------------------------------------------------------------------------


def test_embed_writes_coordinates(classes: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from seewhy.inside.embedding import embed

    out = tmp_path / "embed"
    rc, stdout, err = _run(capsys, "inside", "embed", classes, "--model", "tiny_cnn", "--method", "pca", "--grid",
                           "--seed", 3, "--out", out)
    assert rc == 0 and stdout == f"{out / 'index.html'}\n"
    assert "the pca projection comes on top" in err
    html, m = _report(out)
    model, data = _data(str(classes), "tiny_cnn")
    e = embed(model, data, "features", method="pca", seed=3)
    assert m["method"] == "pca" and m["seed"] == 3 and m["features"] == list(e.features.shape)
    assert [p["path"] for p in m["points"]] == e.paths
    np.testing.assert_allclose([[p["x"], p["y"]] for p in m["points"]], e.coords.numpy(), rtol=1e-4, atol=1e-5)
    assert set(m["seconds"]) == {"features", "projection"}
    with open(out / "embedding.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["path"] for r in rows] == e.paths and {r["label"] for r in rows} == {"cool", "warm"}
    assert float(rows[0]["x"]) == pytest.approx(m["points"][0]["x"])
    assert "pca of 8 images" in html and "snapped to a grid" in html and html.count("<img") == 2
    assert "projection" in html


# -- dissect -------------------------------------------------------------------------------------------


def test_dissect_matches_dissect(folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from seewhy.inside.concepts import colour_concepts
    from seewhy.inside.dissect import dissect
    from seewhy.inside.patches import top_patches

    out = tmp_path / "dissect"
    rc, stdout, err = _run(capsys, "inside", "dissect", folder, "--model", "tiny_resnet", "--layer", "layer1",
                           "--quantile", 0.02, "--iou-threshold", 0.03, "--top-patches", 2, "--out", out)
    assert rc == 3 and stdout == f"{out / 'index.html'}\n"  # the corrupt file
    assert "(2 passes)" in err and "top patches take one more pass" in err
    html, m = _report(out)
    model, data = _data(str(folder), "tiny_resnet")
    d = dissect(model, data, colour_concepts, "layer1", quantile=0.02, iou_threshold=0.03)
    assert m["concepts"] == d.concepts and m["images"] == N_GOOD
    np.testing.assert_allclose(m["iou"], d.iou.numpy(), atol=1e-12)
    np.testing.assert_allclose(m["thresholds"], d.thresholds.numpy(), rtol=1e-6)
    detectors = d.detectors()
    assert detectors, "the test needs at least one detector"
    assert [(x["unit"], x["concept"]) for x in m["detectors"]] == [(u.unit, u.concept) for u in detectors]
    assert [x["iou"] for x in m["detectors"]] == pytest.approx([u.iou for u in detectors])
    ious = [r["iou"] for r in m["units"]]
    assert ious == sorted(ious, reverse=True) and len(m["units"]) == d.units
    assert m["counts"] == {c: sum(u.concept == c for u in detectors) for c in sorted(
        d.concepts, key=lambda c: (-sum(u.concept == c for u in detectors), c))}
    top = top_patches(model, data, "layer1", units=[u.unit for u in detectors], k=2)
    for shown in m["shown"]:
        assert [r["index"] for r in shown["records"]] == [r.index for r in top.records(shown["unit"])]
    with open(out / "dissection.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["unit", "concept", "iou", "threshold"] and len(rows) == d.units
    best = {u.unit: u for u in d.best()}
    for r in rows:
        assert r["concept"] == best[int(r["unit"])].concept
        assert float(r["iou"]) == pytest.approx(best[int(r["unit"])].iou)
        assert float(r["threshold"]) == pytest.approx(float(d.thresholds[int(r["unit"])]))
    for section in ("Detectors per concept", "Detectors and their top patches", "Dissection", "Failures"):
        assert f">{section}</h2>" in html
    assert html.count('class="masked"') == 2 * len(m["shown"]) and f'id="detector-{detectors[0].unit}"' in html


def test_dissect_with_a_folder_of_concepts(classes: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from seewhy.inside.dissect import dissect

    concepts = tmp_path / "concepts"
    for name, rows in (("top", slice(0, 20)), ("left", slice(None))):
        (concepts / name).mkdir(parents=True)
        for path in sorted(classes.rglob("*.png")):
            mask = np.zeros((40, 40), dtype=np.uint8)
            mask[rows, : 20 if name == "left" else 40] = 255
            Image.fromarray(mask).save(concepts / name / path.name)
    out = tmp_path / "dissect"
    rc, _, _ = _run(capsys, "inside", "dissect", classes, "--model", "tiny_cnn", "--concepts", concepts,
                    "--top-patches", 0, "--iou-threshold", 0.01, "--out", out)
    assert rc == 0
    html, m = _report(out)
    model, data = _data(str(classes), "tiny_cnn")
    d = dissect(model, data, str(concepts), "features", iou_threshold=0.01)
    assert m["concepts"] == ["left", "top"] == d.concepts
    np.testing.assert_allclose(m["iou"], d.iou.numpy(), atol=1e-12)
    assert m["shown"] == [] and 'class="masked"' not in html
    rc, _, err = _run(capsys, "inside", "dissect", classes, "--model", "tiny_cnn", "--concepts", tmp_path / "nope",
                      "--out", tmp_path / "o")
    assert rc == 2 and "neither 'colours' nor a folder" in err and not (tmp_path / "o").exists()
