"""``--masks DIR`` / ``--boxes FILE`` of explain-dataset: a localization metric in the store equals the direct metric
call with the image's mask; images without an annotation get null (not an error for the job); an unreadable mask
says why in ``error``; without masks or boxes such a metric is refused; the CLI takes the flags."""

from __future__ import annotations

import argparse
import json
import math
import warnings

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("pyarrow")

from dataset_helpers import tiny_model

from seewhy import command, explain, images, zoo  # noqa: E402
from seewhy.data import as_data  # noqa: E402
from seewhy.dataset import explain_dataset, read_results  # noqa: E402
from seewhy.dataset.cli import add_parser  # noqa: E402
from seewhy.metrics import get_metric  # noqa: E402
from seewhy.metrics.localization import boxes_to_masks, load_masks  # noqa: E402

METRICS = ["pointing_game", "relevance_mass_accuracy"]
PARAMS = {"gradcam": {"layer": "features"}}


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Six 40x36 crops of a bundled photo in data/; masks/ for 0-3 (3 unreadable), boxes.json for 0, 1 and 4."""
    root = tmp_path_factory.mktemp("ann")
    data, masks = root / "data", root / "masks"
    data.mkdir(), masks.mkdir()
    photo = images.bundled_image("chelsea").resize((96, 64))
    for k in range(6):
        photo.crop((6 * k, 4 * k % 24, 6 * k + 40, 4 * k % 24 + 36)).save(data / f"{k}.png")
    for k in range(3):
        m = np.zeros((36, 40), np.uint8)
        m[4 + 3 * k : 24, 5 : 20 + 5 * k] = 255
        Image.fromarray(m).save(masks / f"{k}.png")
    (masks / "3.png").write_bytes(b"not a mask")
    (root / "boxes.json").write_text(json.dumps({"0.png": [2, 3, 20, 30], "1.png": [[0, 0, 10, 10], [20, 20, 40, 36]],
                                                 "4.png": []}))
    return root


def _run(folder, out, model, **kw):
    kw = {"method_params": PARAMS, "batch_size": 4, "chunk_size": 4, "estimate": False, "progress": False,
          "html_summary": False, **kw}
    return explain_dataset(folder / "data", model, ["gradcam"], METRICS, out=out, **kw)


def _direct(model, folder, k, mask):
    x, _ = as_data([str(folder / "data" / f"{k}.png")], model).load([0])
    exp = explain(model, x, "gradcam", target="top1", **PARAMS["gradcam"])
    return {m: float(get_metric(m)(model, x, exp.attributions, exp.targets, mask=mask).scores[0]) for m in METRICS}


def _resize(model):
    spec = zoo.spec_of(model)
    return spec.resize if spec is not None else 256


def test_mask_metrics_equal_direct_calls_and_missing_masks_give_null(folder, model, tmp_path):
    summary = _run(folder, tmp_path / "s", model, masks=folder / "masks")
    assert summary.done == 6
    t = read_results(tmp_path / "s").to_pandas().set_index("path")
    x, _ = as_data([str(folder / "data" / "0.png")], model).load([0])
    for k in range(3):
        mask = load_masks([folder / "masks" / f"{k}.png"], tuple(x.shape[-2:]), resize=_resize(model))
        row = t.loc[str(folder / "data" / f"{k}.png")]
        for m, want in _direct(model, folder, k, mask).items():
            assert row[m] == pytest.approx(want, rel=1e-6, abs=1e-9)
        assert row.error is None or (isinstance(row.error, float) and math.isnan(row.error))
    for k in (4, 5):  # no mask: null metrics, no error
        row = t.loc[str(folder / "data" / f"{k}.png")]
        assert all(math.isnan(row[m]) for m in METRICS) and not isinstance(row.error, str)
        assert not math.isnan(row.score)
    bad = t.loc[str(folder / "data" / "3.png")]  # unreadable mask: null, and why
    assert all(math.isnan(bad[m]) for m in METRICS) and "mask" in bad.error and not math.isnan(bad.score)


def test_boxes(folder, model, tmp_path):
    _run(folder, tmp_path / "s", model, boxes=folder / "boxes.json")
    t = read_results(tmp_path / "s").to_pandas().set_index("path")
    x, _ = as_data([str(folder / "data" / "0.png")], model).load([0])
    table = json.loads((folder / "boxes.json").read_text())
    for k in (0, 1):
        mask = boxes_to_masks([table[f"{k}.png"]], tuple(x.shape[-2:]), image_size=[(40, 36)],
                              resize=_resize(model))
        row = t.loc[str(folder / "data" / f"{k}.png")]
        for m, want in _direct(model, folder, k, mask).items():
            assert row[m] == pytest.approx(want, rel=1e-6, abs=1e-9)
    for k in (2, 3, 5):
        assert all(math.isnan(t.loc[str(folder / "data" / f"{k}.png")][m]) for m in METRICS)


def test_mask_metrics_need_masks_or_boxes(folder, model, tmp_path):
    with pytest.raises(ValueError, match="needs object masks"):
        _run(folder, tmp_path / "s", model)
    with pytest.raises(ValueError, match="not both"):
        _run(folder, tmp_path / "s", model, masks=folder / "masks", boxes=folder / "boxes.json")


def test_cli_takes_masks(folder, tmp_path, capsys):
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    args = parser.parse_args(["explain-dataset", str(folder / "data"), "--model", "tiny_cnn", "--metric",
                              "pointing_game", "--masks", str(folder / "masks"), "--out", str(tmp_path / "s"),
                              "--workers", "0", "--no-summary", "--save-attributions", "--set",
                              "gradcam.layer=features"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tiny_cnn ships no weights
        code = args.func(args)
    assert code == command.EXIT_PARTIAL  # 3.png's unreadable mask is an error row
    t = read_results(tmp_path / "s").to_pandas()
    assert t.pointing_game.notna().sum() == 3 and (tmp_path / "s" / "attributions" / "part-00000.npz").is_file()
    assert capsys.readouterr().out.strip().endswith("results.parquet")
