"""``seewhy attack``, run in-process through a parser built with ``seewhy.adversarial.cli.add_parser`` and
``command.run`` (as ``seewhy.cli.main`` runs it): the report's files and numbers (checked against
:func:`seewhy.adversarial.pgd` called directly), the cost said up front, exit codes and stdout."""

from __future__ import annotations

import argparse
import json
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from seewhy import adversarial, command, images, zoo
from seewhy.adversarial import cli as attack_cli


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="seewhy")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    attack_cli.add_parser(sub, command.common_options())
    return parser


def _run(capsys: pytest.CaptureFixture[str], *argv: Any) -> tuple[int, str, str]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tiny models ship no weights
        rc = command.run(_parser(), ["attack", *[str(a) for a in argv]])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def _pictures(folder: Path, n: int = 2, size: tuple[int, int] = (40, 36)) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        path = folder / f"pic{i}.png"
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def _report(out: Path) -> tuple[str, dict[str, Any]]:
    return (out / "index.html").read_text(encoding="utf-8"), json.loads((out / "manifest.json").read_text())


def test_report_matches_pgd(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    paths = _pictures(tmp_path)
    out = tmp_path / "out"
    rc, stdout, err = _run(capsys, *paths, "--model", "tiny_vgg", "--eps", "8/255", "--steps", 4, "--seed", 3,
                           "--method", "saliency,gradcam", "--curve", "0,2/255,8/255", "--out", out)
    assert rc == 0, err
    assert stdout == f"{out / 'index.html'}\n"
    assert re.search(r"about .* for 2 images x 4 steps x 3 attacks", err)
    html, manifest = _report(out)
    assert manifest["kind"] == "attack" and manifest["settings"]["eps"] == pytest.approx(8 / 255)
    assert manifest["settings"]["steps"] == 4 and manifest["estimate"]["seconds"] > 0
    # the same attack called directly, on the pictures as the CLI prepares them
    spec = zoo.get_spec("tiny_vgg")
    x = torch.stack([images.to_tensor(images.resize_crop(Image.open(p).convert("RGB"), spec.resize, spec.crop,
                                                         spec.interpolation)) for p in paths])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = zoo.load("tiny_vgg")
    direct = adversarial.pgd(model, x, 8 / 255, steps=4, seed=3, progress=False)
    saved = np.load(out / "adversarial.npz")
    np.testing.assert_allclose(saved["original"], x.numpy(), atol=0)
    np.testing.assert_allclose(saved["adversarial"], direct.adversarial.numpy(), atol=1e-6)
    for i, rec in enumerate(manifest["images"]):
        assert rec["before"] == int(direct.before[i]) and rec["after"] == int(direct.after[i])
        assert rec["success"] == bool(direct.success[i])
        assert rec["after_prob"] == pytest.approx(float(direct.after_prob[i]), abs=1e-5)
        assert rec["linf"] <= 8 / 255 + 1e-6 and rec["linf_255"] == pytest.approx(rec["linf"] * 255)
        assert rec["l2"] == pytest.approx(float(direct.l2[i]), rel=1e-4)
        assert rec["psnr"] == pytest.approx(float(direct.psnr[i]), rel=1e-4)
        assert set(rec["methods"]) == {"saliency", "gradcam"}
        for sim in rec["methods"].values():
            assert -1 <= sim["spearman"] <= 1 and 0 <= sim["top_overlap"] <= 1
        png = np.asarray(Image.open(out / rec["file"]))
        assert png.shape == (32, 32, 3)
    # the curve: eps 0 keeps every prediction
    points = manifest["robustness_curve"]["points"]
    assert [p["eps"] for p in points] == pytest.approx([0, 2 / 255, 8 / 255])
    assert points[0]["accuracy"] == 1.0 and points[0]["success"] == 0.0
    assert "Robustness curve" in html and "perturbation magnified" in html and html.count("<h3>") == 4
    assert "adversarial.npz" in manifest["files"]


def test_targeted_fgsm_and_l2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    paths = _pictures(tmp_path, 1)
    rc, _, err = _run(capsys, *paths, "--model", "tiny_vgg", "--attack", "fgsm", "--eps", "0.05", "--target", 3,
                      "--method", "saliency", "--out", tmp_path / "fgsm", "-q")
    assert rc == 0, err
    assert err == ""  # -q: no cost, no progress
    _, manifest = _report(tmp_path / "fgsm")
    rec = manifest["images"][0]
    assert manifest["targeted"] and rec["target"] == 3 and rec["target_prob_after"] is not None
    assert manifest["settings"]["attack"] == "fgsm" and manifest["settings"]["steps"] == 1
    rc, _, err = _run(capsys, *paths, "--model", "tiny_vgg", "--norm", "l2", "--method", "saliency",
                      "--no-random-start", "--out", tmp_path / "l2")
    assert rc == 0, err
    _, manifest = _report(tmp_path / "l2")
    assert manifest["settings"]["eps"] == 0.5 and manifest["settings"]["norm"] == "l2"
    assert manifest["images"][0]["l2"] <= 0.5 + 1e-5


def test_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    paths = _pictures(tmp_path, 1)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    small = ("--model", "tiny_cnn", "--steps", 2, "--method", "saliency")
    rc, stdout, err = _run(capsys, *paths, bad, *small, "--out", tmp_path / "partial")
    assert rc == 3 and stdout.strip().endswith("index.html")
    _, manifest = _report(tmp_path / "partial")
    assert [f["path"] for f in manifest["failures"]] == [str(bad)]
    assert len(manifest["images"]) == 1
    rc, stdout, err = _run(capsys, bad, *small, "--out", tmp_path / "nothing")
    assert rc == 1 and stdout == "" and "nothing to report" in err
    rc, _, err = _run(capsys, *paths, *small, "--target", "airliner", "--out", tmp_path / "name")
    assert rc == 2 and "no class names" in err
    rc, _, err = _run(capsys, *paths, *small, "--target", 99, "--out", tmp_path / "range")
    assert rc == 2 and "out of range" in err
    rc, _, err = _run(capsys, *paths, *small, "--attack", "fgsm", "--norm", "l2", "--out", tmp_path / "fgsm")
    assert rc == 2 and "FGSM is an L-inf attack" in err
    rc, _, err = _run(capsys, *paths, *small, "--method", "nonsense", "--out", tmp_path / "method")
    assert rc == 2 and "unknown method" in err
    rc, _, err = _run(capsys, *paths, *small, "--eps", "2/0", "--out", tmp_path / "eps")
    assert rc == 2 and "2/255" in err
    rc, _, err = _run(capsys, *paths, *small, "--out", tmp_path / "partial")
    assert rc == 2 and "--overwrite" in err
    for folder in ("nothing", "name", "range", "fgsm", "method", "eps"):
        assert not (tmp_path / folder / "index.html").exists()


def test_values() -> None:
    assert attack_cli.parse_eps("2/255") == pytest.approx(2 / 255)
    assert attack_cli.parse_eps(" 8 / 255 ") == pytest.approx(8 / 255)
    assert attack_cli.parse_eps("0.01") == 0.01
    for bad in ("-1", "x", "1/0", "inf"):
        with pytest.raises(argparse.ArgumentTypeError):
            attack_cli.parse_eps(bad)
    assert attack_cli.parse_eps_list("4/255,0,1/255,0") == pytest.approx([0, 1 / 255, 4 / 255])
    h = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    rho, top = attack_cli.heatmap_similarity(h, h)
    torch.testing.assert_close(rho, torch.ones(2)) and torch.testing.assert_close(top, torch.ones(2))
    rho, top = attack_cli.heatmap_similarity(h, -h)
    torch.testing.assert_close(rho, -torch.ones(2))
    assert (top == 0).all()
    flat = torch.tensor([0.0, 0.0, 0.0, 0.0, 1.0, 2.0, 3.0, 4.0]).view(1, 1, 2, 4)  # ties get their average rank
    shuffled = flat.flatten()[[2, 0, 1, 3, 4, 5, 6, 7]].view(1, 1, 2, 4)  # zeros reordered: the same ranking
    assert float(attack_cli.heatmap_similarity(flat, shuffled)[0]) == pytest.approx(1.0)


@pytest.mark.slow
def test_airliner_on_the_photos(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    paths = []
    for name in ("coffee", "rocket"):
        paths.append(tmp_path / f"{name}.png")
        images.bundled_image(name).save(paths[-1])
    out = tmp_path / "out"
    rc, stdout, err = _run(capsys, *paths, "--model", "efficientnet_lite0", "--eps", "2/255", "--steps", 20,
                           "--target", "airliner", "--method", "gradcam", "--out", out)
    assert rc == 0, err
    html, manifest = _report(out)
    assert [r["after_label"] for r in manifest["images"]] == ["404 airliner"] * 2
    assert manifest["settings"]["target_index"] == 404 and "404 airliner" in html
    for rec in manifest["images"]:
        assert rec["target_prob_after"] > 0.5 and rec["linf_255"] <= 2 + 1e-4
        assert rec["methods"]["gradcam"]["spearman"] < 0.95  # the explanation moved
