from __future__ import annotations

import pytest
import torch
from conftest import build

import seewhy


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
