"""Training on a synthetic part-based task, the push invariants, checkpoints, resuming and explanations."""

from __future__ import annotations

import importlib
import json
import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from protopnet_helpers import CONFIG, PREP, new_model, synthetic, trained
from torch import nn

import seewhy
from seewhy.hooks import count_hooks
from seewhy.protopnet import (
    LocalRow,
    ProtoPNet,
    SmallCNNTrunk,
    TrainConfig,
    evaluate,
    explain_global,
    explain_local,
    load_run,
    nearest_patches,
    push_prototypes,
    train,
    write_protopnet_report,
)
from seewhy.protopnet.report import _ordinal
from seewhy.zoo.small import TinyCNN


def test_trains_to_high_accuracy_quickly() -> None:
    t = trained()
    assert t.seconds < 60
    assert t.result.best["val_accuracy"] >= 0.95
    assert evaluate(t.model, t.test_data, PREP)["accuracy"] >= 0.95


def test_best_is_a_pushed_model_chosen_on_validation() -> None:
    t = trained()
    pushed = [h for h in t.result.history if h["phase"] in ("push", "last")]
    assert t.result.best["phase"] in ("push", "last")
    assert t.result.best["val_accuracy"] == max(h["val"]["accuracy"] for h in pushed)
    assert t.model.pushed


def test_push_projects_each_prototype_onto_a_patch_of_its_own_class() -> None:
    t = trained()
    model = t.model
    with torch.no_grad():
        for j in range(model.num_prototypes):
            i = int(model.prototype_image[j])
            assert int(t.train_data.labels[i]) == int(model.prototype_classes[j])
            x = (t.train_data.load([i]) - 0.5) / 0.5
            z, d = model.prototype_distances(x)
            h, w = model.prototype_location[j].tolist()
            patch = z[0, :, h, w]
            torch.testing.assert_close(model.prototype_vectors[j, :, 0, 0], patch, atol=1e-6, rtol=0)
            assert float(d[0, j, h, w]) < 1e-5  # the recorded cell is the closest one (distance ~0)
            # ~log(1e4) = 9.2103: float32 rounding in ||z||^2 - 2 z.p + ||p||^2 leaves d ~ 1e-7..1e-6
            assert float(model.similarity(d[0, j].min())) == pytest.approx(math.log(1e4), abs=0.1)
            y0, y1, x0, x1 = model.prototype_box[j].tolist()
            assert 0 <= y0 < y1 <= 32 and 0 <= x0 < x1 <= 32


def test_push_picks_the_global_nearest_patch_of_the_class() -> None:
    data, _ = synthetic(4, seed=5)
    model = new_model(seed=3).eval()
    old = model.prototype_vectors.detach().clone()
    with torch.no_grad():
        z, d = model.prototype_distances((data.load(range(len(data))) - 0.5) / 0.5)
    res = push_prototypes(model, data, PREP, batch_size=5)  # batches smaller than the set
    for j in range(model.num_prototypes):
        own = data.labels == model.prototype_classes[j]
        best = d[own, j].min()
        assert float(res.moved[j]) == pytest.approx(float(best), rel=1e-5, abs=1e-6)
    assert not torch.equal(old, model.prototype_vectors)
    with pytest.raises(ValueError, match="no image in the push set"):
        push_prototypes(model, data.subset([0, 1]), PREP)
    with pytest.raises(TypeError, match="ProtoPNet"):
        push_prototypes(TinyCNN(), data, PREP)  # type: ignore[arg-type]


def test_checkpoint_reloads_to_identical_logits(tmp_path: Path) -> None:
    t = trained()
    path = tmp_path / "weights.pt"
    torch.save(t.model.state_dict(), path)
    again = ProtoPNet(SmallCNNTrunk(width=8), 3, prototypes_per_class=2, prototype_dim=16)
    again.load_state_dict(torch.load(path, weights_only=True))
    again.eval()
    x = (t.test_data.load(range(10)) - 0.5) / 0.5
    assert torch.equal(again(x), t.model(x))
    assert torch.equal(again.prototype_image, t.model.prototype_image)


SHORT = TrainConfig(**{**CONFIG.to_dict(), "epochs": 4, "warm_epochs": 2, "push_start": 2, "push_every": 2,
                       "last_layer_epochs": 2})


def test_resumed_run_equals_uninterrupted_run_and_reloads(tmp_path: Path) -> None:
    data, _ = synthetic(10, seed=0)
    val, _ = synthetic(4, seed=1)
    whole = new_model()
    res = train(whole, data, val, PREP, SHORT, run_dir=tmp_path / "a", progress=False)
    part = new_model()
    train(part, data, val, PREP, SHORT, run_dir=tmp_path / "b", progress=False, max_stages=5)
    assert json.loads((tmp_path / "b" / "history.json").read_text())[-1]["stage"] == 4
    resumed = new_model(seed=99)  # weights come from last.pt
    res_b = train(resumed, data, val, PREP, SHORT, run_dir=tmp_path / "b", resume=True, progress=False)
    for key, value in whole.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key
    assert res.best == res_b.best
    run = load_run(tmp_path / "a", features=SmallCNNTrunk(width=8))
    expected = new_model()
    expected.load_state_dict(res.best_state)
    x = (val.load(range(len(val))) - 0.5) / 0.5
    assert torch.equal(run.model(x), expected.eval()(x))
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["best.json", "best.pt", "config.json",
                                                                  "history.json", "last.pt"]
    with pytest.raises(ValueError, match="other training settings"):
        train(new_model(), data, val, PREP, TrainConfig(**{**SHORT.to_dict(), "seed": 1}), run_dir=tmp_path / "b",
              resume=True, progress=False)
    with pytest.raises(ValueError, match="custom trunk"):
        load_run(tmp_path / "a")
    with pytest.raises(FileExistsError, match="already holds a run"):
        train(new_model(), data, val, PREP, SHORT, run_dir=tmp_path / "a", progress=False)


def test_training_restores_flags() -> None:
    data, _ = synthetic(3, seed=0)
    model = new_model()
    model.eval()
    model.last_layer.weight.requires_grad_(False)
    train(model, data, data, PREP, TrainConfig(**{**SHORT.to_dict(), "epochs": 1, "last_layer_epochs": 1}),
          progress=False)
    assert not model.training and not model.last_layer.weight.requires_grad
    assert all(p.requires_grad for n, p in model.named_parameters() if n != "last_layer.weight")


def test_local_explanation_points_add_up_and_boxes_find_the_part() -> None:
    t = trained()
    x = (t.test_data.load(range(len(t.test_data))) - 0.5) / 0.5
    exps = explain_local(t.model, x, top_k=3)
    hits = 0
    for e, (y0, x0) in zip(exps, t.test_corners.tolist(), strict=True):
        assert e.total == pytest.approx(float(e.points.sum()), rel=1e-5, abs=1e-5)
        assert [ev.points for ev in e.evidence] == sorted((ev.points for ev in e.evidence), reverse=True)
        top = e.evidence[0]
        assert top.prototype_class == e.target == e.predicted
        b0, b1, c0, c1 = top.box
        hits += math.hypot((b0 + b1) / 2 - (y0 + 3.5), (c0 + c1) / 2 - (x0 + 3.5)) < 12
    # the box of the top prototype sits at the shape (centres within 12 px; random boxes: 42%); a 4x4 latent grid
    # with a large receptive field localises coarsely, as in the paper
    assert hits / len(exps) >= 0.8
    other = explain_local(t.model, x[:2], target="ring", top_k=2)
    assert [e.target for e in other] == [1, 1]
    with pytest.raises(ValueError, match="out of range"):
        explain_local(t.model, x[:1], target=7)


def test_global_explanation_neighbours_start_with_the_source() -> None:
    t = trained()
    protos = explain_global(t.model, t.train_data, PREP, k=4)
    assert len(protos) == t.model.num_prototypes
    for p in protos:
        assert len(p.neighbours) == 4
        assert p.neighbours[0].distance < 1e-5 and p.neighbours[0].label == p.prototype_class
        assert [n.distance for n in p.neighbours] == sorted(n.distance for n in p.neighbours)
        assert p.image == int(t.model.prototype_image[p.prototype])


def test_explain_method_returns_similarity_maps() -> None:
    t = trained()
    x = (t.test_data.load(range(4)) - 0.5) / 0.5
    exp = seewhy.explain(t.model, x, "protopnet")
    assert exp.attributions.shape == (4, 6, 4, 4) and exp.kind == "prototype"
    with torch.no_grad():
        torch.testing.assert_close(exp.attributions, t.model.similarity_maps(x))
    assert exp.heatmap().shape == (4, 1, 32, 32)
    assert exp.extras["top_prototype"].shape == (4,)
    assert count_hooks(t.model) == 0
    with pytest.raises(TypeError, match="ProtoPNet"):
        seewhy.explain(TinyCNN().eval(), x, "protopnet")
    cam = seewhy.explain(t.model, x, "gradcam")  # and other methods explain a ProtoPNet too
    assert cam.attributions.shape[0] == 4


# -- reproducibility, prototype sources, warm-up mode, checkpoints ------------------------------------------

TRAIN_MODULE = importlib.import_module("seewhy.protopnet.train")  # seewhy.protopnet.train is also the function
# warm 0, joint 1, push 1, last 1, joint 2, push 2, last 2
TINY = TrainConfig(**{**SHORT.to_dict(), "epochs": 3, "warm_epochs": 1, "push_start": 1, "push_every": 1,
                      "last_layer_epochs": 1})


def dropout_model(seed: int = 0) -> ProtoPNet:
    """A ProtoPNet whose trunk draws from torch's global generator (nn.Dropout), like drop-connect does."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        trunk = nn.Sequential(SmallCNNTrunk(width=8), nn.Dropout(0.5))
        return ProtoPNet(trunk, 3, prototypes_per_class=2, prototype_dim=16, class_names=["plus", "ring", "x"])


def test_a_trunk_drawing_from_the_global_rng_trains_reproducibly(tmp_path: Path) -> None:
    data, _ = synthetic(4, seed=0)
    val, _ = synthetic(2, seed=1)
    states, modes = [], []
    for global_seed in (1, 2):  # the same config.seed after different global RNG states
        model = dropout_model()
        model.features[1].register_forward_hook(lambda m, args, out: modes.append(m.training))
        torch.manual_seed(global_seed)
        before = torch.get_rng_state()
        train(model, data, val, PREP, TINY, progress=False)
        assert torch.equal(torch.get_rng_state(), before)  # the caller's global RNG state is left as it was
        states.append(model.state_dict())
    assert any(modes)  # the dropout was active (joint epochs), so the runs did draw from the global RNG
    for key, value in states[0].items():
        assert torch.equal(value, states[1][key]), key
    # stopped after the first joint epoch and resumed (from another global RNG state): the same model
    torch.manual_seed(3)
    train(dropout_model(), data, val, PREP, TINY, run_dir=tmp_path, progress=False, max_stages=2)
    resumed = dropout_model(seed=99)  # weights come from last.pt
    torch.manual_seed(4)
    train(resumed, data, val, PREP, TINY, run_dir=tmp_path, resume=True, progress=False)
    for key, value in states[0].items():
        assert torch.equal(value, resumed.state_dict()[key]), key


def _sources(model: ProtoPNet) -> list[torch.Tensor]:
    return [model.prototype_image.clone(), model.prototype_location.clone(), model.prototype_box.clone()]


def test_training_after_a_push_clears_the_prototype_sources(tmp_path: Path) -> None:
    data, _ = synthetic(4, seed=0)
    val, _ = synthetic(2, seed=1)
    # SHORT: warm 0, warm 1, joint 2, push 2, last 2 (x2), joint 3, push 3, last 3 (x2)
    model = new_model()
    train(model, data, val, PREP, SHORT, run_dir=tmp_path, progress=False, max_stages=5)  # to the 1st last-layer
    assert model.pushed
    pushed = _sources(model)
    model = new_model()
    train(model, data, val, PREP, SHORT, run_dir=tmp_path, resume=True, progress=False, max_stages=1)
    assert all(torch.equal(a, b) for a, b in zip(_sources(model), pushed, strict=True))  # last-layer: kept
    model = new_model()
    train(model, data, val, PREP, SHORT, run_dir=tmp_path, resume=True, progress=False, max_stages=1)  # joint 3
    assert not model.pushed
    assert all(bool((t == -1).all()) for t in _sources(model))
    assert not load_run(tmp_path, "last", features=SmallCNNTrunk(width=8)).model.pushed
    assert load_run(tmp_path, "best", features=SmallCNNTrunk(width=8)).model.pushed  # best is a pushed model
    model = new_model()
    train(model, data, val, PREP, SHORT, run_dir=tmp_path, resume=True, progress=False)  # push 3 records anew
    assert model.pushed and load_run(tmp_path, "last", features=SmallCNNTrunk(width=8)).model.pushed
    # a warm-up epoch clears them too
    train(model, data, val, PREP, TrainConfig(**{**SHORT.to_dict(), "epochs": 1, "warm_epochs": 1}), progress=False,
          max_stages=1)
    assert not model.pushed


def test_warm_up_keeps_the_trunk_statistics_and_weights() -> None:
    data, _ = synthetic(4, seed=0)
    model = new_model()
    model.train()
    before = {k: v.clone() for k, v in model.features.state_dict().items()}
    assert any(k.endswith("running_mean") for k in before)
    protos = model.prototype_vectors.detach().clone()
    warm_only = TrainConfig(**{**SHORT.to_dict(), "epochs": 2, "warm_epochs": 2, "last_layer_epochs": 1})
    res = train(model, data, data, PREP, warm_only, progress=False)
    assert [h["phase"] for h in res.history] == ["warm", "warm", "push", "last"]
    for key, value in model.features.state_dict().items():
        assert torch.equal(value, before[key]), key  # BatchNorm running statistics (and weights) unchanged
    assert not torch.equal(model.prototype_vectors.detach(), protos)  # while the warm-up did train
    assert model.training  # modes restored


def test_a_crash_while_checkpointing_keeps_the_history_consistent(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    data, _ = synthetic(3, seed=0)
    config = TrainConfig(**{**TINY.to_dict(), "epochs": 2})  # warm 0, joint 1, push 1, last 1
    expected = [h["phase"] for h in train(new_model(), data, data, PREP, config, progress=False).history]
    write_json, save = TRAIN_MODULE.write_json_file, TRAIN_MODULE._save

    def crashing(name: str) -> Callable[[object, Path], None]:
        calls = []

        def write(obj: object, path: Path) -> None:
            if path.name == name:
                calls.append(path)
                if len(calls) == 2:
                    raise KeyboardInterrupt
            (write_json if path.suffix == ".json" else save)(obj, path)

        return write

    for name in ("history.json", "last.pt"):  # the process dies while writing the 2nd stage's file
        crash = crashing(name)
        monkeypatch.setattr(TRAIN_MODULE, "write_json_file", crash)
        monkeypatch.setattr(TRAIN_MODULE, "_save", crash)
        with pytest.raises(KeyboardInterrupt):
            train(new_model(), data, data, PREP, config, run_dir=tmp_path / name, progress=False)
        monkeypatch.undo()
        res = train(new_model(), data, data, PREP, config, run_dir=tmp_path / name, resume=True, progress=False)
        assert [h["stage"] for h in res.history] == list(range(len(expected))), name
        assert [h["phase"] for h in res.history] == expected
        history = json.loads((tmp_path / name / "history.json").read_text())
        assert [h["stage"] for h in history] == list(range(len(expected)))


def test_resuming_without_a_record_keeps_the_saved_config(tmp_path: Path) -> None:
    data, _ = synthetic(2, seed=0)

    def model() -> ProtoPNet:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return ProtoPNet(SmallCNNTrunk(), 3, prototypes_per_class=1, prototype_dim=8)

    record = {"backbone": {"name": "small_cnn", "pretrained": False, "layer": None}, "data": {"root": "somewhere"}}
    config = TrainConfig(**{**TINY.to_dict(), "epochs": 1, "last_layer_epochs": 0})  # warm 0, push 0
    train(model(), data, data, PREP, config, run_dir=tmp_path, record=record, progress=False, max_stages=1)
    train(model(), data, data, PREP, config, run_dir=tmp_path, resume=True, progress=False)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["backbone"] == record["backbone"] and saved["data"] == record["data"]
    assert saved["train"] == config.to_dict()
    run = load_run(tmp_path, "last")  # rebuilt from the saved backbone, no features= needed
    assert run.model.pushed and run.percentile == 95.0


def test_nearest_patches_of_an_empty_set_is_a_clear_error() -> None:
    data, _ = synthetic(1, seed=0)
    with pytest.raises(ValueError, match="image set is empty"):
        nearest_patches(new_model(), data.subset([]), PREP)


def test_report_states_the_box_percentile(tmp_path: Path) -> None:
    t = trained()
    x = (t.test_data.load([0]) - 0.5) / 0.5
    exp = explain_local(t.model, x, top_k=2, percentile=80.0)[0]
    rows = [LocalRow("first", t.test_data.image(0), exp)]
    index = write_protopnet_report(tmp_path / "r", t.model, local=rows, train_data=t.train_data, percentile=80.0)
    html = index.read_text(encoding="utf-8")
    assert "at or above its 80th percentile" in html and "95th" not in html
    assert json.loads((tmp_path / "r" / "explanations.json").read_text())["box_percentile"] == 80.0
    index = write_protopnet_report(tmp_path / "d", t.model, local=rows)
    assert "at or above its 95th percentile" in index.read_text(encoding="utf-8")
    with pytest.raises(ValueError, match="percentile"):
        write_protopnet_report(tmp_path / "e", t.model, local=rows, percentile=150)
    assert [_ordinal(p) for p in (1, 2, 3, 11, 12, 21, 90, 99.5)] == ["1st", "2nd", "3rd", "11th", "12th", "21st",
                                                                    "90th", "99.5th"]
