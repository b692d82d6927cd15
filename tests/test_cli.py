"""The seewhy command line, run in-process through ``main([...])``."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from seewhy import cli, list_methods, zoo
from seewhy.core import METHODS, Method


@pytest.fixture
def pictures(tmp_path: Path) -> list[Path]:
    """Two 32x32 PNGs and one corrupt file."""
    rng = np.random.default_rng(0)
    paths = []
    for name in ("red", "blue"):
        p = tmp_path / "in" / f"{name}.png"
        p.parent.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(p)
        paths.append(p)
    bad = tmp_path / "in" / "corrupt.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n this is not a picture")
    return [*paths, bad]


def _explain(images: list[Path], out: Path, *extra: str) -> list[str]:
    return ["explain", *map(str, images), "--model", "tiny_cnn", "--out", str(out),
            "--method", "saliency,integrated_gradients", "--set", "integrated_gradients.n_steps=4", *extra]


def test_explain_writes_report_and_skips_bad_files(pictures: list[Path], tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "report"
    assert cli.main(_explain(pictures, out, "--save-attributions")) == cli.EXIT_PARTIAL  # a report, and a failure
    captured = capsys.readouterr()
    assert captured.out.strip() == str(out / "index.html")
    assert "corrupt.png" in captured.err and "exit code 3" in captured.err
    assert sorted(p.name for p in out.iterdir()) == ["attributions.npz", "index.html", "manifest.json"]
    m = json.loads((out / "manifest.json").read_text())
    assert [im["name"] for im in m["images"]] == ["red", "blue"]
    assert [x["name"] for x in m["methods"]] == ["saliency", "integrated_gradients"]
    assert m["methods"][1]["params"]["n_steps"] == 4 and m["methods"][1]["params"]["seed"] == 0
    assert [f["path"] for f in m["failures"]] == [str(pictures[2])]
    assert m["model"]["name"] == "tiny_cnn" and m["preprocessing"]["crop"] == 32
    assert m["command"][:2] == ["seewhy", "explain"]
    html = (out / "index.html").read_text(encoding="utf-8")
    assert "corrupt.png" in html and html.count('<div class="cell') == 4
    with np.load(out / "attributions.npz") as npz:
        assert npz["integrated_gradients/red"].shape == (3, 32, 32)


def test_batches_of_one_give_the_same_attributions(pictures: list[Path], tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    assert cli.main(_explain(pictures[:2], a, "--save-attributions")) == 0
    assert cli.main(_explain(pictures[:2], b, "--batch-size", "1", "--save-attributions")) == 0
    assert len(json.loads((b / "manifest.json").read_text())["methods"][0]["batches"]) == 2
    with np.load(a / "attributions.npz") as x, np.load(b / "attributions.npz") as y:
        for key in x.files:
            np.testing.assert_allclose(x[key], y[key], rtol=1e-4, atol=1e-6)


def test_all_bad_inputs_fail(pictures: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "report"
    rc = cli.main(_explain([pictures[2], tmp_path / "missing.jpg"], out))
    assert rc != 0
    err = capsys.readouterr().err
    assert "none of the 2 input(s) could be used" in err and "missing.jpg" in err
    assert not (out / "index.html").exists()


def test_unknown_method_is_a_usage_error(pictures: list[Path], tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    rc = cli.main(["explain", str(pictures[0]), "--model", "tiny_cnn", "--out", str(tmp_path / "o"),
                   "--method", "saliency,salency_map"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "salency_map" in err and all(m in err for m in list_methods())
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "tiny_cn"], "tiny_cnn"),
        (["--model", "tiny_cnn", "--target", "tabby"], "class_names"),
        (["--model", "tiny_cnn", "--target", "12"], "out of range"),
        (["--model", "tiny_cnn", "--set", "saliency.n_steps=3"], "no parameter 'n_steps'"),
        (["--model", "tiny_cnn", "--set", "integrated_gradients=3"], "METHOD.PARAM=VALUE"),
        (["--model", "tiny_cnn", "--set", "smoothgrad.n_samples=3"], "add it with --method"),
        (["--model", "tiny_cnn", "--layer", "featurez"], "features"),
        (["--model", "tiny_cnn", "--device", "gpu7"], "unknown device"),
    ],
)
def test_usage_errors(pictures: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str],
                      args: list[str], message: str) -> None:
    rc = cli.main(["explain", str(pictures[0]), "--out", str(tmp_path / "o"), "--method",
                   "saliency,integrated_gradients", *args])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert message in err and "Traceback" not in err


@dataclasses.dataclass
class _Broken(Method):
    """A method that always fails."""

    name = "broken"

    def attribute(self, model: object, inputs: object, call: object) -> None:
        raise RuntimeError("boom")


def test_a_failing_method_is_reported_and_the_others_kept(pictures: list[Path], tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(METHODS, "broken", _Broken)
    out = tmp_path / "report"
    argv = ["explain", str(pictures[0]), "--model", "tiny_cnn", "--out", str(out), "--method", "broken,saliency"]
    assert cli.main(argv) == cli.EXIT_PARTIAL
    assert "method broken failed: RuntimeError: boom" in capsys.readouterr().err
    m = json.loads((out / "manifest.json").read_text())
    assert m["methods"][0] == {"name": "broken", "error": "RuntimeError: boom"}
    assert "boom" in (out / "index.html").read_text(encoding="utf-8")
    argv[-1] = "broken"
    assert cli.main([*argv, "--overwrite"]) == 1
    assert "every method failed" in capsys.readouterr().err


def test_existing_output_folder_needs_overwrite(pictures: list[Path], tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "report"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert cli.main(_explain(pictures[:1], out)) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    assert cli.main(_explain(pictures[:1], out, "--overwrite")) == 0
    assert (out / "index.html").is_file() and (out / "notes.txt").read_text() == "mine"


def test_methods_and_models_list_the_registries(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["methods"]) == 0
    out = capsys.readouterr().out.splitlines()
    listed = [line.split()[0] for line in out if line.startswith("  ")]
    assert sorted(listed) == sorted(list_methods())
    families = [line for line in out if line and not line.startswith(" ")]
    assert families[:3] == ["gradient", "cam", "lrp"]  # grouped by family
    assert any("Simonyan" in line for line in out)
    assert any(line.split()[:3] == ["integrated_gradients", "50", "forward+backward"] for line in out)  # the cost
    assert cli.main(["models"]) == 0
    out = capsys.readouterr().out
    for name in zoo.list_models():
        assert name in out
    assert "pretrained" in out and "no weights" in out


def test_model_from_a_python_file(pictures: list[Path], tmp_path: Path) -> None:
    factory = tmp_path / "mynet.py"
    factory.write_text(
        "import torch.nn as nn\n"
        "def build():\n"
        "    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),\n"
        "                         nn.Flatten(), nn.Linear(4, 3))\n"
    )
    out = tmp_path / "report"
    rc = cli.main(["explain", str(pictures[0]), "--model", f"{factory}:build", "--method", "saliency",
                   "--out", str(out)])
    assert rc == 0
    m = json.loads((out / "manifest.json").read_text())
    assert m["model"]["spec"] == f"{factory}:build" and m["images"][0]["size"] == [224, 224]


def test_help_and_bad_arguments_return_codes(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--help"]) == 0
    assert cli.main(["explain", "x.png"]) == 2  # --model and --out missing
    assert cli.main(["frobnicate"]) == 2
    capsys.readouterr()


def test_python_dash_m_seewhy() -> None:
    done = subprocess.run([sys.executable, "-m", "seewhy", "methods"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0 and "saliency" in done.stdout


def test_demo_saliency_recognises_the_photos(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo"
    assert cli.main(["demo", "--out", str(out), "--method", "saliency", "--target", "espresso"]) == 0
    m = json.loads((out / "manifest.json").read_text())
    assert {r["target"] for r in m["methods"][0]["per_image"].values()} == {967}  # a class-name target
    top = {im["name"]: [p["label"] for p in im["top5"]] for im in m["images"]}
    assert set(top) == {"chelsea", "coffee", "astronaut", "rocket"}
    assert top["chelsea"][0] in ("tabby", "tiger cat", "Egyptian cat")
    assert top["coffee"][0] == "espresso"
    html = (out / "index.html").read_text(encoding="utf-8")
    assert "espresso" in html and any(c in html for c in ("tabby", "tiger cat", "Egyptian cat"))


@pytest.mark.slow
def test_full_demo(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    assert cli.main(["demo", "--out", str(out)]) == 0
    m = json.loads((out / "manifest.json").read_text())
    expected = [name for name in list_methods() if METHODS[name].in_all and name not in cli.DEMO_SKIP]
    assert "protopnet" not in expected and "random_attribution" not in expected  # named only
    assert [x["name"] for x in m["methods"]] == expected
    errors = {x["name"]: x["error"] for x in m["methods"] if "error" in x}
    assert not errors, errors
    html = (out / "index.html").read_text(encoding="utf-8")
    assert html.count('<div class="cell') == 4 * len(expected)


def _evaluate(images: list[Path], out: Path, *extra: str) -> list[str]:
    return ["evaluate", *map(str, images), "--model", "tiny_cnn", "--out", str(out), "--method", "saliency,gradcam",
            "--set", "deletion_auc.n_steps=4", *extra]


def test_evaluate_writes_leaderboard_and_numbers(pictures: list[Path], tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    masks = []
    for i in range(2):
        m = np.zeros((32, 32), np.uint8)
        m[8:24, 8 + i : 24] = 255
        masks.append(tmp_path / f"mask{i}.png")
        Image.fromarray(m).save(masks[-1])
    labels = tmp_path / "labels.csv"
    labels.write_text("image,label\nred.png,3\nblue.png,4\n")
    out = tmp_path / "ev"
    args = _evaluate(pictures[:2], out, "--metric", "deletion_auc,sparseness,pointing_game,model_randomization",
                     "--masks", *map(str, masks), "--labels", str(labels))
    assert cli.main(args) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == str(out / "index.html")
    assert re.search(r"deletion_auc +5 forward passes per image: ~", captured.err)  # the cost, up front
    assert "deletion_auc on gradcam: " in captured.err  # and a line per finished metric (stderr is no terminal)
    lines = (out / "results.csv").read_text().splitlines()
    assert len(lines) == 1 + 4 * 4 * 2  # (2 methods + 2 controls) x 4 metrics x 2 images
    data = json.loads((out / "results.json").read_text())
    assert data["metrics"]["deletion_auc"]["forwards_per_image"] == 5
    assert data["results"]["saliency"]["deletion_auc"]["protocol"]["n_steps"] == 4
    html = (out / "index.html").read_text(encoding="utf-8")
    assert "<h2>Leaderboard</h2>" in html and "Sanity check: cascading randomization" in html


def test_evaluate_usage_errors(pictures: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "ev"
    assert cli.main(_evaluate(pictures[:2], out, "--metric", "pointing_game")) == 2
    assert "need object masks" in capsys.readouterr().err
    assert cli.main(_evaluate(pictures[:2], out, "--metric", "no_such_metric")) == 2
    assert "unknown metric" in capsys.readouterr().err
    assert cli.main(_evaluate(pictures[:2], out, "--metric", "pointing_game,deletion_auc", "--masks",
                                   str(pictures[0]))) == 2
    assert "1 masks for 2 images" in capsys.readouterr().err
    assert cli.main(_evaluate(pictures[:2], out, "--metric", "deletion_auc", "--set", "insertion_auc.n_steps=4")) == 2
    assert "not among the metrics" in capsys.readouterr().err
    assert cli.main(_evaluate(pictures[:2], out, "--metric", "deletion_auc", "--set", "deletion_auc.bogus=1")) == 2
    assert "has no parameter 'bogus'" in capsys.readouterr().err
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps({"red.png": [[0, 0, 10, 10]], "elsewhere.png": []}))
    assert cli.main(_evaluate(pictures[:2], out, "--metric", "pointing_game,deletion_auc", "--boxes", str(boxes))) == 2
    err = capsys.readouterr().err
    assert "no boxes for" in err and "blue.png" in err
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps({"red.png": 3, "blue.png": 99}))
    assert cli.main(_evaluate(pictures[:2], out, "--metric", "deletion_auc", "--labels", str(labels))) == 2
    assert "out of range" in capsys.readouterr().err
    assert not out.exists()


def test_evaluate_pairs_masks_with_images_by_position(pictures: list[Path], tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    full, empty = tmp_path / "full.png", tmp_path / "empty.png"
    Image.fromarray(np.full((32, 32), 255, np.uint8)).save(full)
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(empty)
    out = tmp_path / "ev"
    args = _evaluate([pictures[0], pictures[0]], out, "--metric", "deletion_auc,pointing_game", "--no-controls",
                     "--masks", str(full), str(empty))
    assert cli.main(args) == 0
    scores = json.loads((out / "results.json").read_text())["results"]["saliency"]["pointing_game"]["scores"]
    assert scores == [1.0, None]  # the same image twice: a hit with the full mask, excluded with the empty one


def test_metrics_lists_the_registry(capsys: pytest.CaptureFixture[str]) -> None:
    from seewhy.metrics import list_metrics

    assert cli.main(["metrics"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:4] == ["metric", "family", "better", "cost"]
    assert sorted(line.split()[0] for line in out[1:]) == list_metrics()
    rows = {line.split()[0]: line for line in out[1:]}
    assert "225 forward passes" in rows["deletion_auc"]  # the cost at 224x224 with the defaults
    assert "object masks" in rows["pointing_game"] and "re-runs the method" in rows["max_sensitivity"]


def test_all_leaves_out_controls_and_model_specific_methods() -> None:
    everything = cli._methods(None)
    assert everything == [m for m, cls in METHODS.items() if cls.in_all]
    assert not {"protopnet", "random_attribution", "edge_detector"} & set(everything)
    assert cli._methods(["all,protopnet"]) == [*everything, "protopnet"]
    assert cli._methods(["edge_detector", "saliency,edge_detector"]) == ["edge_detector", "saliency"]


def test_protopnet_subcommand_is_wired(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["protopnet", "train", "--help"]) == 0
    assert "DATA_DIR" in capsys.readouterr().out
    assert cli.main(["protopnet", "explain", "no_such_run", "x.png", "--out", "o"]) == 2


# --- long runs: cost up front, progress, exit codes --------------------------------------------------------------


def test_a_run_says_its_cost_up_front_and_logs_each_step(pictures: list[Path], tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(_explain(pictures[:2], tmp_path / "r")) == 0
    err = capsys.readouterr().err  # captured: not a terminal, so one line per finished step instead of a bar
    assert re.search(r"cost per image \(one forward .+ s, one forward\+backward .+ s per image, measured on this "
                     r"model at 32x32\)", err)
    assert re.search(r"saliency +1 forward\+backward per image: ~", err)
    assert re.search(r"integrated_gradients +4 forward\+backward \+ 2 forward per image: ~", err)
    assert re.search(r"about .+ in all for 2 image\(s\)", err)
    assert re.search(r"saliency: batch 1/1 \(2 image\(s\)\) in .+ s", err)
    assert re.search(r"integrated_gradients: batch 1/1 \(2 image\(s\)\) in .+ s", err)
    assert err.index("cost per image") < err.index("saliency: batch 1/1")


def test_quiet_runs_say_nothing_but_warnings(pictures: list[Path], tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([*_explain(pictures[:2], tmp_path / "r"), "-q"]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == str(tmp_path / "r" / "index.html")
    assert "cost per image" not in captured.err and "batch 1/1" not in captured.err


def test_a_slow_method_is_named_with_the_setting_that_lowers_it(pictures: list[Path], tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    from seewhy import estimate

    monkeypatch.setattr(estimate, "SLOW_SECONDS", 1e-9)
    assert cli.main(_explain(pictures[:1], tmp_path / "r")) == 0
    err = capsys.readouterr().err
    assert re.search(r"warning: integrated_gradients is estimated at .+ per image \(over .+\); lower it with "
                     r"--set integrated_gradients\.n_steps=1", err)
    assert "warning: saliency is estimated" in err and "nothing in its settings lowers it" in err


def test_help_documents_the_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["--help"], ["explain", "--help"], ["evaluate", "--help"], ["demo", "--help"]):
        assert cli.main(argv) == 0
        out = capsys.readouterr().out
        assert "exit codes:" in out
        for code in (0, 1, 2, 3, 130):
            assert re.search(rf"^  {code} +\S", out, re.M), (argv, code)


def test_an_empty_file_is_reported_as_empty(pictures: list[Path], tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "in" / "empty.jpg"
    empty.write_bytes(b"")
    out = tmp_path / "r"
    assert cli.main(_explain([pictures[0], empty], out)) == cli.EXIT_PARTIAL
    assert "empty.jpg': the file is empty (0 bytes)" in capsys.readouterr().err
    m = json.loads((out / "manifest.json").read_text())
    assert [f["path"] for f in m["failures"]] == [str(empty)] and "empty" in m["failures"][0]["reason"]


def test_evaluate_exits_3_when_a_metric_fails(pictures: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    import dataclasses

    from seewhy.metrics import METRICS

    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("metric broke")

    monkeypatch.setitem(METRICS, "sparseness", dataclasses.replace(METRICS["sparseness"], fn=boom))
    out = tmp_path / "ev"
    assert cli.main(_evaluate(pictures[:2], out, "--metric", "deletion_auc,sparseness")) == cli.EXIT_PARTIAL
    assert "metric sparseness on saliency failed" in capsys.readouterr().err
    assert (out / "index.html").is_file()


def test_methods_verbose_gives_parameters_and_cost(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["methods", "-v"]) == 0
    out = capsys.readouterr().out
    block = out[out.index("  integrated_gradients  (IntegratedGradients"):out.index("  smoothgrad  (")]
    assert "cost per image: 50 forward+backward + 2 forward; lower it with --set integrated_gradients.n_steps" \
        in block
    assert "Sundararajan" in block and "completeness gap" in block  # the whole description, not one line
    assert "      n_steps = 50" in block and "      quadrature = 'gausslegendre'" in block


def test_top3_explains_three_classes_per_image(pictures: list[Path], tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "r"
    argv = ["explain", *map(str, pictures[:2]), "--model", "tiny_cnn", "--out", str(out), "--method",
            "saliency,occlusion", "--set", "occlusion.window=16", "--set", "occlusion.stride=16", "--target", "top3"]
    assert cli.main(argv) == 0
    assert "3 classes each" in capsys.readouterr().err
    m = json.loads((out / "manifest.json").read_text())
    for method in m["methods"]:
        assert method["ranks"] == 3
        for image in m["images"]:
            ranks = method["per_image"][image["key"]]
            assert [r["rank"] for r in ranks] == [0, 1, 2]
            assert [r["target"] for r in ranks] == [p["index"] for p in image["top5"][:3]]
    assert cli.main([*argv[:-1], "top11", "--overwrite"]) == cli.EXIT_USAGE  # tiny_cnn has 10 classes
    assert "at least 11 class scores" in capsys.readouterr().err
    assert cli.main(["evaluate", str(pictures[0]), "--model", "tiny_cnn", "--out", str(tmp_path / "e"),
                     "--target", "top3"]) == cli.EXIT_USAGE
    assert "seewhy explain takes topK" in capsys.readouterr().err
