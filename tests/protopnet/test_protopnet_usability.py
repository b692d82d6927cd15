"""What a user sees: the automatic backbone and the start-of-training log, help texts with their defaults,
report wording (counts, signed points) and the flag on prototypes pushed onto nearly constant patches."""

from __future__ import annotations

import argparse
import csv
import json
import logging
import re
from pathlib import Path

import pytest
import torch
from PIL import Image
from protopnet_helpers import PREP, new_model, synthetic, write_folder

from seewhy.protopnet import (
    LocalRow,
    Preprocessing,
    ProtoPNet,
    SmallCNNTrunk,
    TensorImages,
    TrainConfig,
    auto_backbone,
    explain_global,
    explain_local,
    load_run,
    median_short_side,
    push_prototypes,
    train_folder,
    write_protopnet_report,
)
from seewhy.protopnet import cli as pp_cli

TINY = TrainConfig(epochs=1, warm_epochs=0, push_start=0, last_layer_epochs=1, batch_size=8)


# -- the backbone from the data ---------------------------------------------------------------------------


def _pngs(folder: Path, sizes: list[tuple[int, int]]) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    for i, (w, h) in enumerate(sizes):
        Image.new("RGB", (w, h), (i, 0, 0)).save(folder / f"{i}.png")
    return [f"{i}.png" for i in range(len(sizes))]


def test_auto_backbone_from_the_median_shorter_side(tmp_path: Path) -> None:
    files = _pngs(tmp_path, [(32, 32), (40, 28), (30, 300), (500, 400)])
    (tmp_path / "bad.png").write_bytes(b"not an image")  # skipped: the folder loader names it later
    assert median_short_side(tmp_path, [*files, "bad.png"]) == 31  # median of 32, 28, 30, 400
    assert median_short_side(tmp_path, ["bad.png"]) is None
    assert median_short_side(tmp_path, files[3:]) == 400
    assert auto_backbone(31, 4)[0] == "small_cnn" and "31 px" in auto_backbone(31, 4)[1]
    assert auto_backbone(64)[0] == "small_cnn"
    assert auto_backbone(65)[0] == "efficientnet_lite0"
    assert auto_backbone(None)[0] == "efficientnet_lite0"


def test_train_folder_chooses_small_cnn_for_small_images_and_logs_the_setup(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    data = write_folder(tmp_path / "data", n_per_class=4, size=16)
    run = tmp_path / "run"
    with caplog.at_level(logging.INFO, logger="seewhy"):
        train_folder(data, run, prototypes_per_class=1, prototype_dim=8, val_fraction=0.25, config=TINY,
                     progress=False)
    text = caplog.text
    assert "backbone: small_cnn" in text and "chosen automatically" in text
    assert "median shorter side of the 12 images is 16 px" in text
    assert "input 32x32, 3 classes, 9 training / 3 validation images" in text
    n = sum(p.numel() for p in load_run(run).model.parameters())
    assert f"{n:,} parameters, {n:,} trainable" in text
    assert re.search(r"estimated time \(from timing \d+ images\): joint epoch ~[\d.]+ s, push ~[\d.]+ s, "
                     r"last-layer epoch ~[\d.]+ s; the 3 stages: about [\d.]+ s", text)
    stage_lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("[")]
    assert len(stage_lines) == 3
    assert all(re.search(r": [\d.e-]+ s; train .*val accuracy", m) for m in stage_lines)
    assert "left" in stage_lines[0] and "left" not in stage_lines[-1]
    config = json.loads((run / "config.json").read_text())
    assert config["backbone"]["name"] == "small_cnn" and "16 px" in config["backbone"]["chosen"]
    assert config["preprocessing"]["image_size"] == 32
    # a resumed run keeps its saved backbone, whatever is asked
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="seewhy"):
        train_folder(data, run, backbone="efficientnet_lite0", resume=True, progress=False)
    assert "ignored: the resumed run keeps its saved backbone small_cnn" in caplog.text
    assert json.loads((run / "config.json").read_text())["backbone"]["name"] == "small_cnn"


def test_trunk_layer_without_backbone_is_a_clear_error(tmp_path: Path) -> None:
    data = write_folder(tmp_path / "data", n_per_class=2, size=16)
    with pytest.raises(ValueError, match="trunk layer 'layers.3' given without a backbone"):
        train_folder(data, tmp_path / "run", trunk_layer="layers.3", config=TINY, progress=False)


def test_the_up_front_timing_changes_nothing() -> None:
    """The timing before the first stage (forwards and backwards on a copy) leaves the weights, the BatchNorm
    statistics, ``.grad``, the flags and the caller's RNG as they were."""
    from seewhy.protopnet.train import _probe

    data, _ = synthetic(4, seed=0, size=16)
    model = new_model().train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    seconds, n = _probe(model, data, Preprocessing(16, PREP.mean, PREP.std), 8)
    assert set(seconds) == {"forward", "warm", "joint"} and min(seconds.values()) > 0 and n == 8
    assert torch.equal(torch.random.get_rng_state(), before)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert all(p.grad is None and p.requires_grad for p in model.parameters()) and model.training


# -- help texts ---------------------------------------------------------------------------------------------


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    root = argparse.ArgumentParser(prog="seewhy")
    pp_cli.add_parser(root.add_subparsers(dest="command"))
    top = next(a for a in root._actions if isinstance(a, argparse._SubParsersAction)).choices["protopnet"]
    return dict(next(a for a in top._actions if isinstance(a, argparse._SubParsersAction)).choices)


@pytest.mark.parametrize("command", ["train", "explain", "prototypes"])
def test_every_option_has_help_stating_its_default(command: str) -> None:
    parser = _subparsers()[command]
    formatter = parser._get_formatter()
    options = [a for a in parser._actions if a.option_strings and not isinstance(a, argparse._HelpAction)]
    assert len(options) >= (20 if command == "train" else 5)
    for action in options:
        assert action.help, f"{action.option_strings} has no help"
        text = formatter._expand_help(action)
        name = action.option_strings[-1]
        assert "default" in text or (action.required and "required" in text), f"{name}: {text!r}"
        if action.default not in (None, False):
            assert f"(default: {action.default})" in text, f"{name}: {text!r}"


def test_train_help_shows_the_auto_backbone(capsys: pytest.CaptureFixture[str]) -> None:
    assert pp_cli.main(["train", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "--backbone NAME" in out and "<= 64 px" in out and "(default: auto)" in out
    assert "(default: 80)" in out and "(default: 0.0001)" in out


# -- report wording -------------------------------------------------------------------------------------------


def _plain(html: str) -> str:
    body = html.split("<body>", 1)[1]
    return " ".join(re.sub(r"<[^>]+>", " ", body).replace("&middot;", "·").split())


def _negative_total_model() -> tuple[ProtoPNet, TensorImages]:
    data, _ = synthetic(3, seed=0, size=16)
    prep = Preprocessing(16, PREP.mean, PREP.std)
    model = new_model()
    push_prototypes(model, data, prep)
    with torch.no_grad():  # other classes' prototypes weigh -3: a class total is negative, its own rows positive
        identity = model.prototype_class_identity.t()
        model.last_layer.weight.copy_(identity - 3.0 * (1 - identity))
    return model.eval(), data


def test_local_report_words_signed_points_and_right_counts(tmp_path: Path) -> None:
    model, data = _negative_total_model()
    x = (data.load([0, 4]) - 0.5) / 0.5
    exps = explain_local(model, x, target=0, top_k=2)
    assert exps[0].total < 0 < sum(e.points for e in exps[0].evidence)  # the case that read "33.09 of the -12.71"
    rows = [LocalRow(f"in{i}", data.image(i), e) for i, e in zip([0, 4], exps, strict=True)]
    path = write_protopnet_report(tmp_path / "r", model, local=rows, train_data=data,
                                  failures=[("gone.png", "no such file")])
    text = _plain(path.read_text(encoding="utf-8"))
    assert "of the -" not in text and "0 of" not in text and "0 inputs" not in text
    shown = {e.prototype for e in exps[0].evidence} | {e.prototype for e in exps[1].evidence}
    assert f"2 inputs explained · 1 input could not be used · {len(shown)} of 6 prototypes shown" in text
    e = exps[0]
    top = sum(v.points for v in e.evidence)
    sentence = (f"The 2 prototypes below contribute {top:+.4g} points and the other 4 prototypes "
                f"{e.total - top:+.4g}: plus totals {e.total:+.4g} points (its logit).")
    assert sentence in text
    record = json.loads((tmp_path / "r" / "explanations.json").read_text())
    assert record["prototypes_shown"] == sorted(shown)


def test_global_report_counts_prototypes_not_inputs(tmp_path: Path) -> None:
    model, data = _negative_total_model()
    summaries = explain_global(model, data, Preprocessing(16, PREP.mean, PREP.std), k=2)
    path = write_protopnet_report(tmp_path / "g", model, prototypes=summaries[:4], train_data=data)
    text = _plain(path.read_text(encoding="utf-8"))
    assert "4 of 6 prototypes shown" in text and "input" not in text.split("prototypes shown")[0]


def test_all_prototypes_shown_in_a_local_row(tmp_path: Path) -> None:
    model, data = _negative_total_model()
    exp = explain_local(model, (data.load([0]) - 0.5) / 0.5, target=0, top_k=6)[0]
    path = write_protopnet_report(tmp_path / "a", model, local=[LocalRow("in", data.image(0), exp)])
    text = _plain(path.read_text(encoding="utf-8"))
    assert f"These 6 prototypes (all of them) contribute {exp.total:+.4g} points in total to plus" in text
    assert "1 input explained · 6 of 6 prototypes shown" in text


# -- prototypes on nearly constant patches ---------------------------------------------------------------------


def _flat_and_noise() -> tuple[ProtoPNet, TensorImages, Preprocessing]:
    """Class 'flat': uniform gray images (every patch constant); class 'noise': uniform noise."""
    g = torch.Generator().manual_seed(0)
    flat = torch.full((4, 3, 16, 16), 128, dtype=torch.uint8)
    noise = torch.randint(0, 256, (4, 3, 16, 16), generator=g, dtype=torch.uint8)
    data = TensorImages(torch.cat([flat, noise]), [0] * 4 + [1] * 4, ["flat", "noise"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = ProtoPNet(SmallCNNTrunk(width=8), 2, prototypes_per_class=2, prototype_dim=8,
                          class_names=["flat", "noise"])
    prep = Preprocessing(16, PREP.mean, PREP.std)
    push_prototypes(model, data, prep)
    return model.eval(), data, prep


def test_prototypes_on_constant_patches_are_flagged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    model, data, prep = _flat_and_noise()
    assert set(model.prototype_image.tolist()[:2]) <= {0, 1, 2, 3}  # pushed onto flat images
    summaries = explain_global(model, data, prep, k=2)
    with caplog.at_level(logging.WARNING, logger="seewhy"):
        path = write_protopnet_report(tmp_path / "p", model, prototypes=summaries, train_data=data)
    assert "2 of the 4 prototypes shown sit on a nearly constant patch" in caplog.text
    record = json.loads((tmp_path / "p" / "explanations.json").read_text())
    assert [p["nearly_constant"] for p in record["prototypes"]] == [True, True, False, False]
    assert record["prototypes"][0]["patch_std"] == 0.0 and record["prototypes"][2]["patch_std"] > 0.1
    assert record["nearly_constant_prototypes"] == [0, 1]
    html = path.read_text(encoding="utf-8")
    rows = html.split('class="prototype-row"')[1:]
    assert ["nearly constant patch (background?)" in r.split("</tr>")[0] for r in rows] == [True, True, False, False]
    assert "2 on a nearly constant patch (background?)" in _plain(html)
    with (tmp_path / "p" / "prototypes.csv").open() as f:
        flags = {(r["prototype"], r["nearly_constant"]) for r in csv.DictReader(f)}
    assert flags == {("0", "true"), ("1", "true"), ("2", "false"), ("3", "false")}
    # the explain report flags the same prototypes in its evidence rows
    x = (data.load([0]) - 0.5) / 0.5
    exp = explain_local(model, x, top_k=4)[0]
    path = write_protopnet_report(tmp_path / "e", model, local=[LocalRow("flat", data.image(0), exp)],
                                  train_data=data)
    record = json.loads((tmp_path / "e" / "explanations.json").read_text())
    flagged = {e["prototype"]: e["nearly_constant"] for e in record["local"][0]["evidence"]}
    assert flagged == {0: True, 1: True, 2: False, 3: False}
    html = path.read_text(encoding="utf-8")
    rows = {int(r.split('"', 2)[1]): r.split("</tr>")[0] for r in html.split('data-prototype=')[1:]}
    assert all(("nearly constant patch" in rows[j]) == flagged[j] for j in flagged)
    # without the training images nothing is known, nothing is flagged
    write_protopnet_report(tmp_path / "n", model, local=[LocalRow("flat", data.image(0), exp)])
    record = json.loads((tmp_path / "n" / "explanations.json").read_text())
    assert {e["nearly_constant"] for e in record["local"][0]["evidence"]} == {None}


def test_constant_std_is_checked(tmp_path: Path) -> None:
    model, data, prep = _flat_and_noise()
    with pytest.raises(ValueError, match="constant_std must be a number >= 0"):
        write_protopnet_report(tmp_path / "x", model, prototypes=explain_global(model, data, prep, k=1),
                               constant_std=-1)
