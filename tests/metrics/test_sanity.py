"""Sanity checks (Adebayo et al. 2018; Sixt et al. 2020) on tiny ReLU CNNs."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import build
from torch import nn

import seewhy
import seewhy.metrics  # noqa: F401  (registers the controls and metrics)
from seewhy.hooks import count_hooks
from seewhy.metrics import get_metric
from seewhy.metrics import sanity as S

FAST = {"measures": ("spearman_abs", "ssim")}


def _snapshot(model: nn.Module) -> tuple[dict, dict, dict]:
    return (
        {k: v.detach().clone() for k, v in model.state_dict().items()},
        {k: m.training for k, m in model.named_modules()},
        {k: p.requires_grad for k, p in model.named_parameters()},
    )


def test_edge_detector_fails_model_randomization(inputs: torch.Tensor) -> None:
    model = build("tiny_cnn")
    for mode in ("cascading", "independent"):
        r = S.parameter_randomization(model, inputs, "edge_detector", mode=mode, hog_pixels_per_cell=None)
        assert set(r.scores) == {"spearman_abs", "spearman", "ssim", "hog"}
        for s in r.scores.values():
            assert s.shape == (3, 3)  # 3 parameterized layers x 3 images
            torch.testing.assert_close(s, torch.ones_like(s))  # the map does not change at all


@pytest.mark.parametrize("method", ["saliency", "gradcam"])
def test_saliency_and_gradcam_change_under_cascading_randomization(method: str, inputs: torch.Tensor) -> None:
    model = build("tiny_cnn")
    r = S.cascading_randomization(model, inputs, method, **FAST)
    assert r.layers == ("fc", "features.2", "features.0")
    for measure in FAST["measures"]:
        assert (r.scores[measure] < 0.5).all(), (measure, r.scores[measure])
    assert len(r.maps) == 3 and all(not torch.equal(m, r.original) for m in r.maps)


@pytest.mark.parametrize("model_name", ["tiny_cnn", "tiny_functional_cnn"])
def test_guided_backprop_stays_similar_where_saliency_does_not(model_name: str, inputs: torch.Tensor) -> None:
    """Adebayo et al.: guided backprop is largely invariant to the top layers' parameters (it keeps showing the
    input's structure), plain gradients are not."""
    model = build(model_name)
    gbp = S.cascading_randomization(model, inputs, "guided_backprop", **FAST)
    sal = S.cascading_randomization(model, inputs, "saliency", **FAST)
    for measure in FAST["measures"]:
        top_gbp, top_sal = gbp.scores[measure][0], sal.scores[measure][0]  # only the top layer randomized
        assert (top_gbp > top_sal).all(), (measure, top_gbp, top_sal)
        assert (gbp.mean(measure) > sal.mean(measure)).all()


def test_user_model_untouched_by_every_check(inputs: torch.Tensor) -> None:
    model = build("tiny_resnet")
    model.train()
    model.layer1.train(False)
    model.stem[0].weight.requires_grad_(False)
    snap = _snapshot(model)
    rng = torch.get_rng_state()
    x0 = inputs.clone()
    S.cascading_randomization(model, inputs, "saliency", group="block", **FAST)
    S.independent_randomization(model, inputs, "gradcam", group="block", **FAST)
    S.parameter_randomization(model, inputs, "saliency", layers=["layer2", "stem"], init="normal", reset_buffers=True)
    S.random_logit_test(model, inputs, "saliency")
    get_metric("model_randomization").fn(model, inputs, None, None, method="saliency", group="block")
    get_metric("random_logit").fn(model, inputs, None, None, method="saliency")
    params, flags, grads = snap
    for k, v in model.state_dict().items():
        assert torch.equal(v, params[k]), k
    assert {k: m.training for k, m in model.named_modules()} == flags
    assert {k: p.requires_grad for k, p in model.named_parameters()} == grads
    assert count_hooks(model) == 0 and all(p.grad is None for p in model.parameters())
    assert torch.equal(torch.get_rng_state(), rng), "the global RNG was consumed"
    assert torch.equal(inputs, x0)


def test_same_seed_same_result_and_seed_matters(inputs: torch.Tensor) -> None:
    model = build("tiny_cnn")
    a = S.cascading_randomization(model, inputs, "saliency", seed=5, **FAST)
    b = S.cascading_randomization(model, inputs, "saliency", seed=5, **FAST)
    c = S.cascading_randomization(model, inputs, "saliency", seed=6, **FAST)
    for m in a.scores:
        torch.testing.assert_close(a.scores[m], b.scores[m], rtol=0, atol=0)
    assert all(torch.equal(x, y) for x, y in zip(a.maps, b.maps, strict=True))
    assert not torch.equal(a.maps[0], c.maps[0])
    # the same seed re-initialises a layer identically in both modes: step 1 is the same model
    ind = S.independent_randomization(model, inputs, "saliency", seed=5, **FAST)
    torch.testing.assert_close(ind.maps[0], a.maps[0], rtol=0, atol=0)


def test_batch_size_invariance(inputs: torch.Tensor) -> None:
    model = build("tiny_cnn")
    batch = S.cascading_randomization(model, inputs, "gradcam", **FAST)
    logit = S.random_logit_test(model, inputs, "saliency", measures=("spearman_abs",))
    for i in range(3):
        alone = S.cascading_randomization(model, inputs[i : i + 1], "gradcam", **FAST)
        for m in FAST["measures"]:
            torch.testing.assert_close(alone.scores[m][:, 0], batch.scores[m][:, i], rtol=1e-4, atol=1e-5)
        one = S.random_logit_test(model, inputs[i : i + 1], "saliency", measures=("spearman_abs",))
        assert int(one.others[0]) == int(logit.others[i])
        torch.testing.assert_close(one.scores["spearman_abs"][0], logit.scores["spearman_abs"][i], rtol=1e-4, atol=1e-5)


def test_steps_grouping_and_custom_layers() -> None:
    model = build("tiny_resnet")
    steps = S.randomization_steps(model)
    assert steps[0] == ("fc", ("fc",)) and steps[-1] == ("stem.0", ("stem.0",))
    assert [s for s, _ in S.randomization_steps(model, group="block")] == ["fc", "layer2", "layer1", "stem"]
    assert [s for s, _ in S.randomization_steps(model, group=2)][:2] == ["fc", "layer2.shortcut"]
    custom = S.randomization_steps(model, [["fc", model.layer2], "stem"])
    assert custom[0][0] == "fc+layer2" and "layer2.conv1" in custom[0][1]
    with pytest.raises(ValueError, match="unknown layer"):
        S.randomization_steps(model, ["layer9"])
    with pytest.raises(ValueError, match="no parameters"):
        S.randomization_steps(model, ["pool"])
    with pytest.raises(ValueError, match="group"):
        S.randomization_steps(model, group="blocks")


def test_running_statistics_are_kept_unless_asked(inputs: torch.Tensor) -> None:
    model = build("tiny_functional_cnn")
    with torch.no_grad():
        model.bn1.running_mean.fill_(0.3)
    seen = []

    def explainer(m: nn.Module, x: torch.Tensor, target) -> torch.Tensor:
        seen.append((m.bn1.running_mean.clone(), m.conv1.weight.detach().clone()))
        return seewhy.get_method("saliency")(m, x, target)

    for reset in (False, True):
        seen.clear()
        S.parameter_randomization(model, inputs, explainer, layers=["bn1", "conv1"], reset_buffers=reset, **FAST)
        assert not torch.equal(seen[2][1], model.conv1.weight)  # conv1 re-initialised at step 2
        assert torch.equal(seen[1][0], model.bn1.running_mean) != reset


def test_method_forms_and_errors(inputs: torch.Tensor) -> None:
    model = build("tiny_cnn")
    params = {"n_samples": 2, "seed": 0}
    by_name = S.cascading_randomization(model, inputs, "smoothgrad", method_params=params, seed=1, **FAST)
    by_obj = S.cascading_randomization(model, inputs, seewhy.get_method("smoothgrad", **params), seed=1, **FAST)
    torch.testing.assert_close(by_name.scores["ssim"], by_obj.scores["ssim"], rtol=0, atol=0)
    assert by_name.method == "smoothgrad"
    with pytest.raises(ValueError, match="method_params"):
        S.cascading_randomization(model, inputs, seewhy.get_method("saliency"), method_params={"n_samples": 2})
    with pytest.raises(TypeError, match="method must be"):
        S.cascading_randomization(model, inputs, 3)
    with pytest.raises(ValueError, match="mode"):
        S.parameter_randomization(model, inputs, "saliency", mode="bottom_up")
    with pytest.raises(ValueError, match="measure"):
        S.parameter_randomization(model, inputs, "saliency", measures=("psnr",))
    with pytest.raises(ValueError, match="method="):
        get_metric("model_randomization").fn(model, inputs, None, None)


def test_result_record_for_the_report(inputs: torch.Tensor) -> None:
    model = build("tiny_cnn")
    r = S.cascading_randomization(model, inputs, "gradcam", target=[1, 2, 3], **FAST)
    assert r.targets.tolist() == [1, 2, 3]
    h = r.heatmaps()
    assert h.shape == (4, 3, 1, 32, 32) and float(h.min()) >= 0 and float(h.max()) <= 1
    d = json.loads(json.dumps(r.to_dict()))
    assert d["layers"] == ["fc", "features.2", "features.0"] and len(d["scores"]["ssim"]) == 3
    assert d["protocol"]["mode"] == "cascading" and d["protocol"]["seed"] == 0


def test_model_randomization_metric(inputs: torch.Tensor) -> None:
    spec = get_metric("model_randomization")
    assert spec.family == "sanity" and spec.higher_is_better is False and "method" in spec.needs
    model = build("tiny_cnn")
    score = spec.fn(model, inputs, None, None, method="saliency")
    r = S.cascading_randomization(model, inputs, "saliency", measures=("spearman_abs",))
    assert score.shape == (3,)
    torch.testing.assert_close(score, r.scores["spearman_abs"].mean(0))  # the steps only, no self-similarity
    attr = seewhy.get_method("saliency")(model, inputs, None)
    torch.testing.assert_close(spec.fn(model, inputs, attr, None, method="saliency"), score)
    edge = spec.fn(model, inputs, None, None, method="edge_detector")
    torch.testing.assert_close(edge, torch.ones(3, dtype=torch.float64))
    assert (score < edge).all()


def test_random_logit(inputs: torch.Tensor) -> None:
    spec = get_metric("random_logit")
    assert spec.family == "sanity" and spec.higher_is_better is False
    model = build("tiny_cnn")
    r = S.random_logit_test(model, inputs, "gradcam", seed=1)
    pred = model(inputs).argmax(1)
    assert torch.equal(r.targets, pred) and (r.others != r.targets).all() and (r.others < 10).all()
    again = S.random_logit_test(model, inputs, "gradcam", seed=1)
    assert torch.equal(again.others, r.others)
    torch.testing.assert_close(again.scores["ssim"], r.scores["ssim"], rtol=0, atol=0)
    assert json.dumps(r.to_dict())
    # a class-insensitive control scores 1; gradcam depends on the class
    edge = spec.fn(model, inputs, None, None, method="edge_detector")
    torch.testing.assert_close(edge, torch.ones(3, dtype=torch.float64))
    assert (spec.fn(model, inputs, None, None, method="gradcam", seed=1) < 0.9).all()
    with pytest.raises(TypeError, match="class targets"):
        S.random_logit_test(model, inputs, "saliency", target=lambda out: out[:, 0])
    with pytest.raises(ValueError, match="num_classes"):
        S.random_logit_test(model, inputs, "saliency", num_classes=1)


@pytest.mark.parametrize("context", [torch.no_grad, torch.inference_mode])
def test_works_inside_no_grad_and_inference_mode(context, inputs: torch.Tensor) -> None:
    model = build("tiny_resnet")
    expected = S.cascading_randomization(model, inputs, "saliency", group="block", **FAST)
    expected_logit = S.random_logit_test(model, inputs, "gradcam")
    with context():
        got = S.cascading_randomization(model, inputs, "saliency", group="block", **FAST)
        logit = S.random_logit_test(model, inputs, "gradcam")
    for m in FAST["measures"]:
        torch.testing.assert_close(got.scores[m], expected.scores[m])
    torch.testing.assert_close(logit.scores["ssim"], expected_logit.scores["ssim"])


def test_a_careless_callable_cannot_change_a_train_mode_model(inputs: torch.Tensor) -> None:
    # a plain callable explainer on a BatchNorm model in train mode: the random-logit test runs it in eval mode with
    # frozen parameters, so running statistics, .grad and the flags stay as they were
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(4, 5)).train()
    before = _snapshot(model)

    def grad_x_input(m: nn.Module, x: torch.Tensor, target) -> torch.Tensor:
        x = x.clone().requires_grad_(True)
        m(x)[torch.arange(x.shape[0]), target].sum().backward()
        return x.grad * x

    S.random_logit_test(model, inputs[:, :3], grad_x_input, target=torch.zeros(inputs.shape[0], dtype=torch.long))
    after = _snapshot(model)
    assert all(torch.equal(before[0][k], v) for k, v in after[0].items())
    assert before[1:] == after[1:]
    assert all(p.grad is None for p in model.parameters())
