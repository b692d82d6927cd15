"""The contract every registered metric keeps (later metrics join automatically): a MetricResult with float64 (B,)
scores, batch invariance, seed determinism, the model, inputs and attributions left as they were, and a declared
direction that an informative explanation beats the random control in."""

from __future__ import annotations

import pytest
import torch
from conftest import build
from torch import nn

import seewhy
from seewhy.hooks import count_hooks
from seewhy.metrics import METRICS, MetricResult, Preset, list_metrics

from .test_faithfulness import FAST as FAITHFULNESS_FAST

NAMES = list_metrics()
TARGETS = [1, 7, 3]

# settings that keep each metric fast; metrics not listed run with their defaults
FAST: dict[str, dict] = {
    **FAITHFULNESS_FAST,
    "max_sensitivity": {"n_samples": 3, "radius": 0.1},
    "avg_sensitivity": {"n_samples": 3, "radius": 0.1},
}
def _mask(n: int, size: int = 32) -> torch.Tensor:
    masks = torch.zeros(n, size, size, dtype=torch.bool)
    masks[:, size // 4 : size // 2, size // 8 : 3 * size // 4] = True
    return masks


def _score(name: str, model: nn.Module, x: torch.Tensor, attr: torch.Tensor | None, target, **extra) -> MetricResult:
    spec = METRICS[name]
    kw = {**FAST.get(name, {}), **extra}
    if "mask" in spec.needs:
        kw.setdefault("mask", _mask(x.shape[0], x.shape[-1]))
    if "method" in spec.needs:
        kw.setdefault("method", "saliency")
    return spec(model, x, attr, target, **kw)


def _snapshot(model: nn.Module) -> tuple[dict, dict, dict]:
    return ({k: v.detach().clone() for k, v in model.state_dict().items()},
            {k: m.training for k, m in model.named_modules()},
            {k: p.requires_grad for k, p in model.named_parameters()})


@pytest.mark.parametrize("name", NAMES)
def test_result_type_and_nothing_changed(name: str, inputs: torch.Tensor) -> None:
    model = build("tiny_functional_cnn")  # BatchNorm: running statistics must not move
    attr = seewhy.get_method("saliency")(model, inputs, TARGETS)
    model.train()  # the metric must run the model in eval mode and restore the flags
    next(model.parameters()).requires_grad_(False)  # a partly frozen model stays partly frozen
    before = _snapshot(model)
    x0, a0 = inputs.clone(), attr.clone()
    res = _score(name, model, inputs, attr, TARGETS, seed=0)
    assert isinstance(res, MetricResult)
    assert res.scores.shape == (inputs.shape[0],) and res.scores.dtype == torch.float64
    if res.curves is not None:
        assert res.curves.shape[0] == inputs.shape[0] and res.fractions.shape == res.curves.shape[1:]
    after = _snapshot(model)
    assert all(torch.equal(before[0][k], v) for k, v in after[0].items()), "parameters or buffers changed"
    assert before[1:] == after[1:], "training flags or requires_grad changed"
    assert count_hooks(model) == 0 and all(p.grad is None for p in model.parameters())
    assert torch.equal(inputs, x0) and torch.equal(attr, a0), "inputs or attributions were mutated"


@pytest.mark.parametrize("name", NAMES)
def test_batch_invariance(name: str, inputs: torch.Tensor) -> None:
    model = build("tiny_cnn")
    attr = seewhy.get_method("saliency")(model, inputs, TARGETS)
    batch = _score(name, model, inputs, attr, TARGETS, seed=3).scores
    kw = {"rtol": 1e-4, "atol": 1e-5, "equal_nan": True}
    first = _score(name, model, inputs[:2], attr[:2], TARGETS[:2], seed=3).scores
    torch.testing.assert_close(first, batch[:2], **kw)
    rest = _score(name, model, inputs[2:], attr[2:], TARGETS[2:], seed=3).scores
    torch.testing.assert_close(torch.cat([first, rest]), batch, **kw)


@pytest.mark.parametrize("name", NAMES)
def test_seed_determinism(name: str, inputs: torch.Tensor) -> None:
    model = build("tiny_cnn")
    attr = seewhy.get_method("saliency")(model, inputs, TARGETS)
    runs = [_score(name, model, inputs, attr, TARGETS, seed=5).scores for _ in range(2)]
    torch.testing.assert_close(runs[0], runs[1], rtol=0, atol=0, equal_nan=True)


# --- the declared direction, honoured: an informative explanation against the random control ----------------------

B, C, H, W, K = 4, 3, 12, 12, 5
# settings under which the oracle is exact: logit scores, the zero substitute (the oracle's reference)
DIRECTION: dict[str, dict] = {
    "deletion_auc": {"score": "logit"},
    "insertion_auc": {"score": "logit", "substitute": "zero"},
    "pixel_flipping_morf": {"score": "logit", "n_steps": 12},
    "pixel_flipping_lerf": {"score": "logit", "n_steps": 12},
    "road": {"score": "logit", "fractions": (0.1, 0.3, 0.5, 0.7)},
    "road_morf": {"score": "logit", "fractions": (0.1, 0.3, 0.5, 0.7)},
    "road_lerf": {"score": "logit", "fractions": (0.1, 0.3, 0.5, 0.7)},
    "faithfulness_correlation": {"n_runs": 30},
    "infidelity": {"n_samples": 8, "multiply_by_inputs": True},
    "pointing_game": {"tolerance": 0},
}


@pytest.fixture(scope="module")
def linear() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """An additive model, logit_k = sum_i w_ki x_i + b_k: the contribution of every input value is known."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(C * H * W, K)).eval()
    x = torch.randn(B, C, H, W, generator=torch.Generator().manual_seed(1))
    return model, x, torch.arange(B)


def _pair(name: str, model: nn.Module, x: torch.Tensor, t: torch.Tensor) -> tuple[dict, dict]:
    """(informative, control) keywords for one metric: attributions, or the method a metric re-runs."""
    family = METRICS[name].family
    random = seewhy.get_method("random_attribution", seed=0)(model, x, t)
    if family in ("robustness", "sanity"):  # saliency of a linear model is its weights: still, and model-bound
        return {"attr": None, "method": "saliency"}, {"attr": None, "method": "random_attribution"}
    oracle = model[1].weight.detach()[t].view(-1, C, H, W) * x  # exact contributions against the zero reference
    if family == "localization":  # the object is where the oracle puts the most relevance
        pmap = oracle.sum(1)
        mask = pmap >= pmap.flatten(1).quantile(0.75, dim=1).view(-1, 1, 1)
        return {"attr": oracle, "mask": mask}, {"attr": random, "mask": mask}
    if family == "complexity":  # a concise map: the oracle's top pixel alone
        pmap = oracle.sum(1, keepdim=True).flatten(1)
        peak = torch.zeros_like(pmap).scatter_(1, pmap.argmax(1, keepdim=True), 1.0).view(-1, 1, H, W)
        return {"attr": peak}, {"attr": random}
    return {"attr": oracle}, {"attr": random}


@pytest.mark.parametrize("name", NAMES)
def test_direction_is_declared_and_the_informative_map_beats_the_random_control(name: str, linear) -> None:
    spec = METRICS[name]
    assert isinstance(spec.higher_is_better, bool), f"{name} declares no direction"
    model, x, t = linear
    good, bad = (dict(kw) for kw in _pair(name, model, x, t))
    scores = []
    for kw in (good, bad):
        attr = kw.pop("attr")
        scores.append(_score(name, model, x, attr, t, seed=0, **{**DIRECTION.get(name, {}), **kw}).scores.nanmean())
    informative, control = scores
    assert (informative > control) if spec.higher_is_better else (informative < control), (name, scores)


def test_presets_are_registrations_of_one_function() -> None:
    presets = {n: s for n, s in METRICS.items() if s.params}
    assert {"road_morf", "road_lerf", "pixel_flipping_morf", "pixel_flipping_lerf"} <= set(presets)
    for name, spec in presets.items():
        assert isinstance(spec.fn, Preset) and spec.fn.keywords == dict(spec.params) and spec.fn.__name__ == name
        assert getattr(seewhy.metrics, name) is spec.fn
    assert METRICS["road_morf"].fn.func is METRICS["road"].fn
    assert METRICS["pixel_flipping_morf"].fn.func is METRICS["pixel_flipping_lerf"].fn.func
