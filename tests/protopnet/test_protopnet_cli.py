"""``seewhy protopnet train / explain / prototypes`` end to end on a tiny ImageFolder, and their errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from protopnet_helpers import write_folder

from seewhy.protopnet import load_run
from seewhy.protopnet.cli import main

TRAIN = ["--backbone", "small_cnn", "--epochs", "3", "--warm-epochs", "1", "--push-start", "1", "--push-every", "1",
         "--last-layer-epochs", "2", "--prototypes-per-class", "2", "--prototype-dim", "16", "--batch-size", "16",
         "--val-fraction", "0.25", "--no-flip", "-q"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pp")
    data = write_folder(root / "data", n_per_class=8)
    out = root / "run"
    assert main(["train", str(data), "--out", str(out), *TRAIN]) == 0
    return out


def test_train_writes_a_complete_run(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    names = sorted(p.name for p in run_dir.iterdir())
    assert names == ["best.json", "best.pt", "config.json", "history.json", "last.pt", "split.json"]
    cfg = json.loads((run_dir / "config.json").read_text())
    assert cfg["backbone"]["name"] == "small_cnn" and cfg["model"]["class_names"] == ["plus", "ring", "x"]
    assert cfg["train"]["epochs"] == 3 and cfg["train"]["augment"]["flip"] == 0
    split = json.loads((run_dir / "split.json").read_text())
    assert len(split["train"]["files"]) == 18 and len(split["val"]["files"]) == 6
    assert not set(split["train"]["files"]) & set(split["val"]["files"])
    history = json.loads((run_dir / "history.json").read_text())
    assert [h["phase"] for h in history] == ["warm", "joint", "push", "last", "last", "joint", "push", "last", "last"]
    state = torch.load(run_dir / "best.pt", weights_only=True)  # a plain state dict, no pickled model
    assert "prototype_vectors" in state
    run = load_run(run_dir)
    assert run.model.pushed and run.prep.image_size == 32
    # resuming a finished run does nothing and keeps the checkpoints
    before = (run_dir / "best.pt").read_bytes()
    assert main(["train", str(run.data_root), "--out", str(run_dir), "--resume", "-q"]) == 0
    assert (run_dir / "best.pt").read_bytes() == before
    assert capsys.readouterr().out.strip() == str(run_dir)


def test_explain_writes_a_report_with_rows(run_dir: Path, tmp_path: Path) -> None:
    data = load_run(run_dir).data_root
    pictures = [data / "plus" / "000.png", data / "ring" / "010.png"]
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    out = tmp_path / "explained"
    rc = main(["explain", str(run_dir), *map(str, pictures), str(bad), "--out", str(out), "--top-k", "3", "-q"])
    assert rc == 3  # EXIT_PARTIAL: the report is written, one input failed
    assert sorted(p.name for p in out.iterdir()) == ["explanations.json", "index.html", "local.csv", "prototypes.csv"]
    html = (out / "index.html").read_text(encoding="utf-8")
    assert html.count('class="evidence-row"') == 2 * 3
    assert "broken.png" in html and "data:image/png;base64," in html and "http" not in html.split("<body>")[1]
    assert "at or above its 95th percentile" in html  # the run's setting
    record = json.loads((out / "explanations.json").read_text())
    assert [r["name"] for r in record["local"]] == ["000", "010"]
    row = record["local"][0]
    assert len(row["evidence"]) == 3 and row["target"] == row["predicted"]
    for e in row["evidence"]:
        assert e["points"] == pytest.approx(e["similarity"] * e["weight"], rel=1e-5)
    with (out / "local.csv").open() as f:
        assert len(list(csv.DictReader(f))) == 6
    assert record["failures"][0]["path"] == str(bad)
    # an explicit class by name
    out2 = tmp_path / "as_ring"
    assert main(["explain", str(run_dir), str(pictures[0]), "--out", str(out2), "--target", "ring", "-q"]) == 0
    assert json.loads((out2 / "explanations.json").read_text())["local"][0]["target_label"] == "ring"


def test_explain_without_the_training_images(run_dir: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    picture = load_run(run_dir).data_root / "x" / "020.png"
    out = tmp_path / "e"
    assert main(["explain", str(run_dir), str(picture), "--out", str(out), "--data", str(tmp_path / "moved")]) == 0
    assert "no pictures of the prototypes' training images" in capsys.readouterr().err
    html = (out / "index.html").read_text(encoding="utf-8")
    assert html.count('class="evidence-row"') == 6 and "unknown" in html  # all 6 prototypes, no source pictures
    rc = main(["prototypes", str(run_dir), "--out", str(tmp_path / "p"), "--data", str(tmp_path / "moved")])
    assert rc == 2 and "--data DIR" in capsys.readouterr().err


def test_prototypes_report_lists_every_prototype(run_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "protos"
    assert main(["prototypes", str(run_dir), "--out", str(out), "--k", "3", "-q"]) == 0
    html = (out / "index.html").read_text(encoding="utf-8")
    assert html.count('class="prototype-row"') == 6
    record = json.loads((out / "explanations.json").read_text())
    assert [len(p["neighbours"]) for p in record["prototypes"]] == [3] * 6
    assert all(p["neighbours"][0]["distance"] < 1e-4 for p in record["prototypes"])


def test_missing_run_dir_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["prototypes", str(tmp_path / "nope"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and "no ProtoPNet run" in err and "Traceback" not in err


def test_empty_class_folder_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = write_folder(tmp_path / "data", n_per_class=2)
    (data / "empty").mkdir()
    rc = main(["train", str(data), "--out", str(tmp_path / "run"), *TRAIN])
    err = capsys.readouterr().err
    assert rc == 2 and "empty" in err and "holds no image" in err
    assert not (tmp_path / "run").exists()


def test_unreadable_training_image_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = write_folder(tmp_path / "data", n_per_class=2)
    (data / "ring" / "zz.png").write_bytes(b"garbage")
    rc = main(["train", str(data), "--out", str(tmp_path / "run"), *TRAIN])
    err = capsys.readouterr().err
    assert rc == 2 and "zz.png" in err and "cannot be used as images" in err


def test_wrong_images_only(run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "notes.png"
    bad.write_text("hello")
    out = tmp_path / "o"
    rc = main(["explain", str(run_dir), str(bad), str(tmp_path / "missing.jpg"), "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 1 and "notes.png" in err and "missing.jpg" in err and "none of the 2 input(s)" in err
    assert not (out / "index.html").exists()


def test_usage_errors(run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = load_run(run_dir).data_root
    rc = main(["train", str(data), "--out", str(run_dir), *TRAIN])  # a non-empty run dir, no --resume
    assert rc == 2 and "not empty" in capsys.readouterr().err
    rc = main(["train", str(data), "--out", str(tmp_path / "r"), *TRAIN[2:], "--backbone", "resnet9000"])
    assert rc == 2 and "unknown backbone" in capsys.readouterr().err
    rc = main(["train", str(tmp_path / "no_data"), "--out", str(tmp_path / "r2")])
    assert rc == 2 and "does not exist" in capsys.readouterr().err
    img = data / "x" / str(sorted((data / "x").iterdir())[0].name)
    rc = main(["explain", str(run_dir), str(img), "--out", str(tmp_path / "e"), "--target", "square"])
    assert rc == 2 and "unknown class name 'square'" in capsys.readouterr().err
    rc = main(["train", str(data), "--out", str(tmp_path / "r3"), "--epochs", "0"])
    assert rc == 2 and "positive integer" in capsys.readouterr().err


def test_partly_failed_explain_writes_the_report_and_exits_3(run_dir: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    from seewhy.protopnet.cli import EXIT_NOTHING, EXIT_OK, EXIT_PARTIAL, EXIT_USAGE

    assert (EXIT_OK, EXIT_NOTHING, EXIT_USAGE, EXIT_PARTIAL) == (0, 1, 2, 3)
    good = load_run(run_dir).data_root / "plus" / "000.png"
    bad = []
    for i in range(4):
        (tmp_path / f"bad{i}.png").write_bytes(b"garbage")
        bad.append(str(tmp_path / f"bad{i}.png"))
    bad.append(str(tmp_path / "missing.jpg"))
    out = tmp_path / "e"
    rc = main(["explain", str(run_dir), *bad[:2], str(good), *bad[2:], "--out", str(out), "--top-k", "2"])
    captured = capsys.readouterr()
    assert rc == 3 and captured.out.strip() == str(out / "index.html")
    assert "5 of 6 input(s) could not be used" in captured.err
    record = json.loads((out / "explanations.json").read_text())
    assert len(record["local"]) == 1 and sorted(f["path"] for f in record["failures"]) == sorted(bad)
    html = (out / "index.html").read_text(encoding="utf-8")
    assert "1 input explained &middot; 5 inputs could not be used &middot; 2 of 6 prototypes shown" in html
    assert html.count("<li><code>") == 5
