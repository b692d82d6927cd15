"""seewhy.evaluate: every method x every metric, controls, batch invariance, failure cases; and its report."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import build

from seewhy.evaluate import CONTROLS, evaluate
from seewhy.evaluation_report import write_evaluation_report
from seewhy.report import ImageRow

METRICS = ["deletion_auc", "insertion_auc", "sparseness", "pointing_game", "model_randomization"]
SETTINGS = {"deletion_auc": {"n_steps": 6}, "insertion_auc": {"n_steps": 6}}


def _data(n: int = 5) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    model = build("tiny_cnn")
    x = torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    masks = torch.zeros(n, 32, 32, dtype=torch.bool)
    masks[:, 4:20, 8:28] = True
    masks[-1] = False  # an empty mask: excluded from the pointing game
    return model, x, masks


@pytest.fixture(scope="module")
def result():
    model, x, masks = _data()
    return evaluate(model, x, ["saliency", "gradcam"], METRICS, metric_params=SETTINGS, masks=masks,
                    labels=[0, 1, 2, 3, 4], batch_size=2, progress=False)


def test_every_method_and_control_gets_every_metric(result) -> None:
    assert result.methods == ["saliency", "gradcam"] and result.controls == list(CONTROLS)
    assert not result.errors
    for method in [*result.methods, *result.controls]:
        assert len(result.explanations[method]) == 3  # batches of 2, 2, 1
        for metric in METRICS:
            assert result.results[(method, metric)].scores.shape == (5,)
    pointing = result.results[("saliency", "pointing_game")].scores
    assert math.isnan(pointing[-1]) and not torch.isnan(pointing[:-1]).any()
    assert result.results[("saliency", "pointing_game")].summary()[2] == 4  # the empty mask is not counted
    curve = result.results[("gradcam", "deletion_auc")]
    assert curve.curves.shape == (5, 7) and curve.fractions[0] == 0 and curve.fractions[-1] == 1


def test_controls_fail_the_randomization_check_and_methods_pass_it(result) -> None:
    edge = result.results[("edge_detector", "model_randomization")].scores
    torch.testing.assert_close(edge, torch.ones(5, dtype=torch.float64))  # ignores the model: never changes
    assert (result.results[("saliency", "model_randomization")].scores < 0.9).all()
    assert set(result.randomization) == {"saliency", "gradcam", *CONTROLS}
    assert len(result.randomization["saliency"].maps) == len(result.randomization["saliency"].layers)


def test_same_scores_whatever_the_batch_size(result) -> None:
    model, x, masks = _data()
    again = evaluate(model, x, ["saliency", "gradcam"], METRICS, metric_params=SETTINGS, masks=masks,
                     batch_size=5, progress=False, controls=True)
    for key, res in result.results.items():
        torch.testing.assert_close(again.results[key].scores, res.scores, equal_nan=True, rtol=1e-5, atol=1e-6)


def test_seeded_metrics_do_not_depend_on_the_batch_size() -> None:
    # their draws are keyed by an image's row: evaluate must not restart the rows at every chunk
    model, x, _ = _data(4)
    seeded = ["faithfulness_correlation", "max_sensitivity", "road", "infidelity"]
    fast = {"faithfulness_correlation": {"n_runs": 8}, "max_sensitivity": {"n_samples": 3},
            "road": {"fractions": [0.2, 0.5]}, "infidelity": {"n_samples": 4}}
    runs = [evaluate(model, x, ["saliency"], seeded, metric_params=fast, batch_size=bs, controls=False, progress=False)
            for bs in (1, 4)]
    assert not runs[0].errors and not runs[1].errors
    for key, res in runs[1].results.items():
        torch.testing.assert_close(runs[0].results[key].scores, res.scores, equal_nan=True, rtol=1e-5, atol=1e-6)


def test_model_left_as_it_was_and_failure_cases() -> None:
    model, x, masks = _data(3)
    model.train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        pred = model.eval()(x).argmax(1)
    model.train()
    labels = pred.clone()
    labels[1] = (pred[1] + 1) % 10  # image 1 is "misclassified"
    res = evaluate(model, x, ["saliency"], ["sparseness"], labels=labels, controls=False, progress=False)
    assert model.training and all(m.training for m in model.modules())
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    (case,) = res.failure_cases
    assert (case.index, case.predicted, case.true) == (1, int(pred[1]), int(labels[1]))
    on_pred, on_true = case.maps["saliency"]
    assert int(on_pred.targets[0]) == int(pred[1]) and int(on_true.targets[0]) == int(labels[1])
    assert not torch.equal(on_pred.attributions, on_true.attributions)


def test_bad_requests_fail_before_any_work() -> None:
    model, x, masks = _data(2)
    with pytest.raises(ValueError, match="need object masks"):
        evaluate(model, x, ["saliency"], ["pointing_game"], progress=False)
    with pytest.raises(ValueError, match="unknown metric"):
        evaluate(model, x, ["saliency"], ["no_such_metric"], progress=False)
    with pytest.raises(ValueError, match="2 masks for 1 images|got 2 masks"):
        evaluate(model, x[:1], ["saliency"], ["pointing_game"], masks=masks, progress=False)
    with pytest.raises(ValueError):
        evaluate(model, x, ["no_such_method"], ["sparseness"], progress=False)
    with pytest.raises(ValueError, match="got 3 labels for 2 images"):
        evaluate(model, x, ["no_such_method"], ["sparseness"], labels=[1, 2, 3], progress=False)


def test_report_has_leaderboard_curves_grid_failures_and_numbers(result, tmp_path: Path) -> None:
    _, x, _ = _data()
    rows = [ImageRow(f"img{i}", (x[i].permute(1, 2, 0) * 255).to(torch.uint8).numpy(), source=f"/data/img{i}.png")
            for i in range(5)]
    index = write_evaluation_report(tmp_path / "out", rows, result, model={"name": "tiny_cnn"}, grid_images=2)
    html = index.read_text(encoding="utf-8")
    for title in ("Leaderboard", "Curves: deletion_auc", "Curves: insertion_auc",
                  "Sanity check: cascading randomization", "Failure modes: misclassified images"):
        assert f"<h2>{title}</h2>" in html
    contents = html[html.index('id="contents"'):html.index("</nav>")]
    for anchor in ("#image-img0", "#image-img4", "#methods", "#table-leaderboard", "#table-metrics",
                   "#figure-curves-deletion-auc", "#figure-sanity-check-cascading-randomization"):
        assert f'href="{anchor}"' in contents and f'id="{anchor[1:]}"' in html
    # one card per image and method (controls included), each with its metric scores
    assert html.count('<div class="cell') == 5 * 4
    card = html[html.index('id="card-img3/gradcam"'):]
    card = card[:card.index("</figure>")]
    score = float(result.results[("gradcam", "sparseness")].scores[3])
    assert f"sparseness {score:.4g}" in card and "deletion auc" in card
    assert 'data-family="control"' in html
    data = json.loads((tmp_path / "out" / "results.json").read_text())
    assert set(data["results"]) == {"saliency", "gradcam", *CONTROLS}
    assert data["results"]["saliency"]["deletion_auc"]["mean"] == pytest.approx(
        float(result.results[("saliency", "deletion_auc")].scores.mean()))
    assert [im["image"] for im in data["images"]] == [f"img{i}.png" for i in range(5)]
    assert data["images"][2] == {"index": 2, "image": "img2.png", "name": "img2", "key": "img2",
                                 "source": "/data/img2.png"}
    assert all(c["name"] == f"img{c['image']}.png" for c in data["failure_cases"])
    lines = (tmp_path / "out" / "results.csv").read_text().splitlines()
    assert lines[0] == "method,control,metric,index,image,score" and len(lines) == 1 + 4 * len(METRICS) * 5
    by_index = {line.split(",")[3]: line.split(",")[4] for line in lines[1:]}
    assert by_index == {str(i): f"img{i}.png" for i in range(5)}
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert "results.csv" in manifest["files"] and any(t["title"] == "Leaderboard" for t in manifest["tables"])
    leader = next(t for t in manifest["tables"] if t["title"] == "Leaderboard")
    assert [r[0] for r in leader["rows"]] == ["saliency", "gradcam", *(f"{c} (control)" for c in CONTROLS)]
    assert np.asarray(rows[0].image).dtype == np.uint8
    assert (tmp_path / "out" / "attributions.npz").is_file()


def test_report_names_images_without_a_source_and_can_leave_out_the_attributions(result, tmp_path: Path) -> None:
    _, x, _ = _data()
    rows = [ImageRow("cat" if i < 2 else f"dog{i}", (x[i].permute(1, 2, 0) * 255).to(torch.uint8).numpy())
            for i in range(5)]
    write_evaluation_report(tmp_path, rows, result, model={"name": "tiny_cnn"}, save_attributions=False)
    assert not (tmp_path / "attributions.npz").exists()
    data = json.loads((tmp_path / "results.json").read_text())
    assert [(im["image"], im["key"]) for im in data["images"]] == [
        ("cat", "cat"), ("cat", "cat-2"), ("dog2", "dog2"), ("dog3", "dog3"), ("dog4", "dog4")]
    lines = (tmp_path / "results.csv").read_text().splitlines()
    assert "saliency,False,sparseness,1,cat," in "\n".join(lines)
