"""``seewhy effects``: the report (plots, strips, manifest, CSV), values and targets, exit codes."""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from seewhy import command
from seewhy.effects import TRANSFORMS
from seewhy.effects.cli import add_parser


def _main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="seewhy")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    add_parser(sub, command.common_options())
    return command.run(parser, argv)


@pytest.fixture
def pngs(tmp_path: Path) -> list[str]:
    rng = np.random.default_rng(0)
    paths = []
    for i, size in enumerate([(40, 48), (32, 32)]):
        path = tmp_path / f"img{i}.png"
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    return paths


def test_report_with_all_transforms(pngs, tmp_path, capsys):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image")
    out = tmp_path / "report"
    rc = _main(["effects", *pngs, str(bad), "--model", "tiny_cnn", "--out", str(out), "-q"])
    assert rc == command.EXIT_PARTIAL
    assert capsys.readouterr().out.strip() == str(out / "index.html")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["kind"] == "effects" and manifest["images"] == ["img0", "img1"]
    assert [e["transform"] for e in manifest["effects"]] == list(TRANSFORMS)
    assert manifest["failures"][0]["path"].endswith("broken.png")
    for e in manifest["effects"]:
        spec = TRANSFORMS[e["transform"]]
        assert e["values"] == list(spec.defaults) and e["identity"] == spec.identity
        j = e["values"].index(spec.identity)
        for img in e["images"]:
            assert img["curve"][j] == img["clean"]  # the unchanged image gives the clean probability
        assert np.allclose(e["average"], np.mean([img["curve"] for img in e["images"]], axis=0))
    with open(out / "effects.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 * sum(len(s.defaults) for s in TRANSFORMS.values())
    html = (out / "index.html").read_text()
    assert html.count('class="curve"') == len(TRANSFORMS)
    assert html.count('class="identity"') == len(TRANSFORMS)  # the unchanged image marked in each strip
    assert "broken.png" in html and "<script" not in html


def test_values_and_target(pngs, tmp_path):
    out = tmp_path / "r"
    rc = _main(["effects", *pngs, "--model", "tiny_cnn", "--transform", "brightness,blur", "--values",
                "brightness=-0.2,0,0.2", "blur=0,1", "--target", "3", "--out", str(out), "-q"])
    assert rc == command.EXIT_OK
    effects = json.loads((out / "manifest.json").read_text())["effects"]
    assert [e["values"] for e in effects] == [[-0.2, 0.0, 0.2], [0.0, 1.0]]
    assert {img["target"] for e in effects for img in e["images"]} == {3}
    out = tmp_path / "single"
    assert _main(["effects", pngs[0], "--model", "tiny_cnn", "--transform", "rotation", "--values", "-10", "0,10",
                  "--out", str(out), "-q"]) == command.EXIT_OK


@pytest.mark.parametrize("extra, message", [
    (["--transform", "sharpen"], "unknown transform(s) sharpen"),
    (["--transform", "brightness,blur", "--values", "0,0.1"], "NAME=V1,V2"),
    (["--transform", "blur", "--values=-1,0"], "out of range"),
    (["--transform", "blur", "--values", "-1", "0"], "out of range"),
    (["--transform", "blur", "--values", "x"], "expected numbers"),
    (["--transform", "blur", "--values", "scale=1,2"], "not one of the transforms"),
    (["--transform", "blur", "--target", "cat"], "has no class names"),
    (["--transform", "blur", "--target", "12"], "out of range"),
    (["--model", "no_such_model"], "unknown"),
])
def test_usage_errors(pngs, tmp_path, capsys, extra, message):
    argv = ["effects", *pngs, "--model", "tiny_cnn", "--out", str(tmp_path / "r"), *extra]
    assert _main(argv) == command.EXIT_USAGE
    assert message in capsys.readouterr().err
    assert not (tmp_path / "r" / "index.html").exists()


def test_output_folder_and_nothing_readable(pngs, tmp_path, capsys):
    out = tmp_path / "full"
    out.mkdir()
    (out / "x.txt").write_text("x")
    assert _main(["effects", *pngs, "--model", "tiny_cnn", "--out", str(out)]) == command.EXIT_USAGE
    assert "--overwrite" in capsys.readouterr().err
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"nope")
    assert _main(["effects", str(bad), "--model", "tiny_cnn", "--out", str(tmp_path / "r"), "-q"]) == \
        command.EXIT_NOTHING
    assert not (tmp_path / "r").exists()
