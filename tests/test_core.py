from __future__ import annotations

import logging

import pytest
import torch
from conftest import build

import seewhy
from seewhy.hooks import count_hooks
from seewhy.zoo.small import TinyCNN


def test_list_and_get_methods() -> None:
    names = seewhy.list_methods()
    for n in ("saliency", "input_x_gradient", "integrated_gradients", "smoothgrad", "guided_backprop", "deconvnet"):
        assert n in names
    m = seewhy.get_method("integrated_gradients", n_steps=3)
    assert m.params["n_steps"] == 3 and m.name == "integrated_gradients"


def test_bad_method_and_params_are_clear(inputs: torch.Tensor) -> None:
    model = build("tiny_cnn")
    with pytest.raises(ValueError, match="did you mean saliency"):
        seewhy.explain(model, inputs, "salincy")
    with pytest.raises(ValueError, match="did you mean n_steps"):
        seewhy.explain(model, inputs, "integrated_gradients", n_step=3)
    with pytest.raises(ValueError, match="takes no layer"):
        seewhy.explain(model, inputs, "saliency", layer="fc")


def test_bad_inputs_are_clear() -> None:
    model = build("tiny_cnn")
    with pytest.raises(ValueError, match=r"\(B,C,H,W\)"):
        seewhy.explain(model, torch.zeros(32, 32), "saliency")
    with pytest.raises(TypeError, match="float"):
        seewhy.explain(model, torch.zeros(1, 3, 8, 8, dtype=torch.uint8), "saliency")
    with pytest.raises(TypeError, match="torch.Tensor"):
        seewhy.explain(model, [[1.0]], "saliency")
    with pytest.raises(TypeError, match="nn.Module"):
        seewhy.explain(lambda x: x, torch.zeros(1, 3, 8, 8), "saliency")
    with pytest.raises(ValueError, match="out of range"):
        seewhy.explain(model, torch.zeros(1, 3, 8, 8), "saliency", target=10)


def test_single_image_and_explanation_fields(inputs: torch.Tensor) -> None:
    model = build("tiny_cnn")
    exp = seewhy.explain(model, inputs[0], "saliency")
    assert exp.attributions.shape == (1, 3, 32, 32)
    out = model(inputs[:1])
    assert exp.targets.tolist() == [int(out.argmax())]
    torch.testing.assert_close(exp.scores, out.max(1).values.detach())
    assert exp.method == "saliency" and exp.layer is None
    assert exp.heatmap(size=(64, 48)).shape == (1, 1, 64, 48)


def test_class_name_target_uses_model_class_names(inputs: torch.Tensor) -> None:
    model = build("tiny_cnn")
    model.class_names = [f"class {i}" for i in range(10)]
    exp = seewhy.explain(model, inputs, "saliency", target="class 7")
    assert exp.targets.tolist() == [7, 7, 7]
    assert exp.label(0) == "7 class 7"


def test_callable_target_for_non_classification_output(inputs: torch.Tensor) -> None:
    class Seg(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 2, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(x)  # (B, 2, H, W) "segmentation" logits

    mask = torch.zeros(32, 32)
    mask[8:16, 8:16] = 1
    exp = seewhy.explain(Seg(), inputs, "saliency", target=lambda out: (out[:, 1] * mask).sum((1, 2)))
    assert exp.targets is None and exp.scores.shape == (3,)
    far = exp.attributions[..., 24:, 24:]
    assert far.abs().max() == 0 and exp.attributions[..., 8:16, 8:16].abs().sum() > 0


def test_seeded_adds_the_run_seed_only_to_methods_that_draw() -> None:
    from seewhy.core import seeded

    assert seeded("smoothgrad", {"n_samples": 2}, 7) == {"n_samples": 2, "seed": 7}
    assert seeded("smoothgrad", {"seed": 1}, 7) == {"seed": 1}  # the method's own seed wins
    assert seeded("saliency", None, 7) == {}
    assert seeded("smoothgrad", None, None) == {}


def test_repr_is_one_short_line(inputs: torch.Tensor) -> None:
    model = build("tiny_cnn")
    model.class_names = [f"class {i}" for i in range(9)] + ["a\nvery long class name that goes on and on"]
    exp = seewhy.explain(model, inputs[:2], "saliency", target=[3, 9])
    text = repr(exp)
    assert str(exp) == text and "\n" not in text
    assert text == ("Explanation(method='saliency', attributions=(2, 3, 32, 32) float32 cpu, "
                    "targets=[3 'class 3', 9 'a\\nvery long class name that...'], "
                    f"scores=[{float(exp.scores[0]):.3g}, {float(exp.scores[1]):.3g}])")
    cam = seewhy.explain(model, inputs[:1], "gradcam")
    assert f"method='gradcam', layer={cam.layer!r}, attributions=(1, 1, " in repr(cam)

    big = seewhy.explain(model, torch.randn(50, 3, 8, 8, generator=torch.Generator().manual_seed(0)), "saliency")
    text = repr(big)
    assert "\n" not in text and len(text) < 250 and "tensor(" not in text
    assert text.count("... 46 more") == 2  # targets and scores: the first four of each
    assert "targets=[" in text and "scores=[" in text
    assert big._repr_html_().startswith('<div class="seewhy-explanation">')  # the Jupyter view is unchanged


def test_repr_custom_targets_and_no_class_names(inputs: torch.Tensor) -> None:
    model = build("tiny_cnn")
    exp = seewhy.explain(model, inputs, "saliency", target=lambda out: out[:, 0])
    assert "targets=custom" in repr(exp) and "scores=[" in repr(exp)
    plain = seewhy.explain(model, inputs, "saliency", target=2)
    assert "targets=[2, 2, 2]" in repr(plain)


# --- top-k targets, did-you-mean, empty rectified maps ---------------------------------------------------------------


def _signed_model() -> torch.nn.Module:
    """conv (bias -5: negative output) -> BatchNorm (centres it: signed) -> ReLU -> GAP -> linear, as in a network
    explained at a convolution before its normalisation and activation."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 6, 3, padding=1)
    bn = torch.nn.BatchNorm2d(6)
    with torch.no_grad():
        conv.weight.mul_(0.1)
        conv.bias.fill_(-5.0)
        bn.running_mean.fill_(-5.0)
    model = torch.nn.Sequential(conv, bn, torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                torch.nn.Linear(6, 4))
    return model.eval()


def test_top3_gives_one_explanation_per_class_rank() -> None:
    torch.manual_seed(0)
    model = TinyCNN().eval()
    x = torch.randn(2, 3, 32, 32)
    ranks = model(x).topk(3, dim=1).indices
    exps = seewhy.explain(model, x, "saliency", target="top3")
    assert isinstance(exps, list) and len(exps) == 3
    for r, e in enumerate(exps):
        assert torch.equal(e.targets, ranks[:, r]) and e.extras["rank"] == r
        single = seewhy.explain(model, x, "saliency", target=ranks[:, r])
        torch.testing.assert_close(e.attributions, single.attributions)
    assert [e.targets.tolist() for e in seewhy.explain(model, x, "saliency", topk=3)] == \
        [e.targets.tolist() for e in exps]
    assert isinstance(seewhy.explain(model, x, "saliency", target="top1"), seewhy.Explanation)


def test_top_k_shares_the_forwards_of_perturbation_methods() -> None:
    torch.manual_seed(0)
    model = TinyCNN().eval()
    x = torch.randn(1, 3, 32, 32)
    exps = seewhy.explain(model, x, "occlusion", topk=2, window=16, stride=16)
    assert [int(e.targets[0]) for e in exps] == model(x).topk(2).indices[0].tolist()
    single = seewhy.explain(model, x, "occlusion", target=int(exps[1].targets[0]), window=16, stride=16)
    torch.testing.assert_close(exps[1].attributions, single.attributions)


def test_top_k_errors() -> None:
    torch.manual_seed(0)
    model = TinyCNN().eval()
    x = torch.randn(1, 3, 32, 32)
    with pytest.raises(ValueError, match="asks for 11 classes, but the model has 10"):
        seewhy.explain(model, x, "saliency", target="top11")
    with pytest.raises(ValueError, match="not both"):
        seewhy.explain(model, x, "saliency", target=3, topk=2)
    with pytest.raises(ValueError, match="positive int"):
        seewhy.explain(model, x, "saliency", topk=0)


def test_an_unknown_class_name_gets_a_did_you_mean() -> None:
    torch.manual_seed(0)
    model = TinyCNN().eval()
    model.class_names = ["tabby cat", "tiger cat", "espresso", "golden retriever", *map(str, range(6))]
    try:
        with pytest.raises(ValueError, match=r"unknown class name 'expresso'; did you mean 'espresso'"):
            seewhy.explain(model, torch.randn(1, 3, 32, 32), "saliency", target="expresso")
        with pytest.raises(ValueError, match=r"did you mean 'tabby cat', 'tiger cat'"):
            seewhy.explain(model, torch.randn(1, 3, 32, 32), "saliency", target="cat")
    finally:
        del model.class_names


def test_an_empty_rectified_map_is_flagged_with_a_better_layer(caplog: pytest.LogCaptureFixture) -> None:
    model = _signed_model()
    x = torch.randn(2, 3, 16, 16)
    with caplog.at_level(logging.WARNING, logger="seewhy"):
        exp = seewhy.explain(model, x, "scorecam", layer="0")
    assert bool((exp.attributions < 0).all())  # Score-CAM's weights are positive, the activations negative
    assert exp.extras["empty_heatmap"].tolist() == [True, True]
    (msg,) = exp.extras["warnings"]
    assert "empty after the ReLU" in msg and "layer='2'" in msg  # the ReLU after the BatchNorm is non-negative
    assert any("empty after the ReLU" in r.getMessage() for r in caplog.records)
    assert count_hooks(model) == 0
    ok = seewhy.explain(model, x, "scorecam", layer="2")
    assert ok.extras["empty_heatmap"].tolist() == [False, False] and "warnings" not in ok.extras
    assert "empty_heatmap" not in seewhy.explain(model, x, "saliency").extras  # |.| conventions are never empty
