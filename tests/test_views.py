"""An Explanation as pictures: the Jupyter view, overlay arrays, saved PNGs, a matplotlib figure."""

from __future__ import annotations

import dataclasses
import io
import os
import pickle
import warnings
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import torch
from conftest import build
from matplotlib.figure import Figure
from PIL import Image

import seewhy
from seewhy import views
from seewhy.views import explanation_html
from seewhy.viz import apply_colormap, heat_to_image, overlay, tensor_to_image
from seewhy.zoo.small import TinyCNN

matplotlib.use("Agg")  # figures are drawn off screen: nothing blocks, nothing warns (pyplot is imported in tests)

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _image(h: int = 12, w: int = 16, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


# ------------------------------------------------------------------------------------ explanation_html


@pytest.fixture(scope="module")
def explanation() -> seewhy.Explanation:
    torch.manual_seed(0)
    model = TinyCNN().eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    return seewhy.explain(model, x, "saliency")


def test_explanation_html(explanation: seewhy.Explanation) -> None:
    page = explanation_html(explanation)
    assert page.count("<img") == 2 * 2  # input + overlay per sample
    assert page.count("<tr>") == 1 + 2
    assert "saliency" in page and explanation.label(0) in page
    assert f"{float(explanation.scores[1]):.4g}" in page
    assert explanation._repr_html_() == page
    no_inputs = explanation_html(dataclasses.replace(explanation, inputs=None))
    assert no_inputs.count("<img") == 2
    signed = dataclasses.replace(explanation, heatmap_convention={"sign": "all", "normalize": "max"})
    assert signed.heatmap_steps()["sign"] == "all" and explanation_html(signed).count("<img") == 4
    assert explanation_html(explanation, max_rows=1).count("<img") == 2


def test_explanation_html_escapes(explanation: seewhy.Explanation) -> None:
    evil = dataclasses.replace(
        explanation,
        method="<script>alert(1)</script>",
        params={"note": "<u>&"},
        layer="a<b",
        class_names=["<i>cat</i> & dog"] * 10,
    )
    page = explanation_html(evil)
    assert "<script>" not in page and "<i>" not in page and "<u>" not in page and "a<b" not in page
    assert "&lt;script&gt;" in page and "&lt;i&gt;cat&lt;/i&gt; &amp; dog" in page


# ------------------------------------------------------------------------------------ Explanation pictures


@pytest.fixture(scope="module")
def batch() -> torch.Tensor:
    return torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))


@pytest.fixture(scope="module")
def named_model() -> torch.nn.Module:
    model = build("tiny_cnn")
    model.class_names = [f"class {k}" for k in range(10)]
    return model


@pytest.fixture(scope="module")
def saliency(named_model: torch.nn.Module, batch: torch.Tensor) -> seewhy.Explanation:
    return seewhy.explain(named_model, batch, "saliency")


@pytest.fixture(scope="module")
def lrp(named_model: torch.nn.Module, batch: torch.Tensor) -> seewhy.Explanation:
    return seewhy.explain(named_model, batch[:2], "lrp")


def test_explanation_overlay_draws_the_heatmap_on_the_inputs(saliency: seewhy.Explanation) -> None:
    out = saliency.overlay()
    assert out.shape == (3, 32, 32, 3) and out.dtype == np.uint8
    assert saliency.heatmap_steps()["sign"] != "all"
    heat = saliency.heatmap()
    pics = tensor_to_image(saliency.inputs)
    for i in range(3):
        np.testing.assert_array_equal(out[i], overlay(pics[i], heat[i, 0]))
    np.testing.assert_array_equal(saliency.overlay(1), out[1])
    np.testing.assert_array_equal(saliency.overlay(-1), out[2])
    np.testing.assert_array_equal(saliency.overlay([2, 0]), out[[2, 0]])
    assert saliency.overlay(0, size=(64, 48)).shape == (64, 48, 3)
    assert saliency.overlay(size=40).shape == (3, 40, 40, 3)
    np.testing.assert_array_equal(saliency.overlay(0, alpha=0.0), pics[0])
    np.testing.assert_array_equal(saliency.overlay(0, alpha=1.0, cmap="viridis"),
                                  apply_colormap(heat[0, 0], "viridis"))
    denorm = saliency.overlay(0, alpha=0.0, mean=MEAN, std=STD)
    np.testing.assert_array_equal(denorm, tensor_to_image(saliency.inputs[0], MEAN, STD))
    relu = saliency.overlay(0, alpha=1.0, sign="positive")  # heatmap steps pass through
    np.testing.assert_array_equal(relu, apply_colormap(saliency.heatmap(sign="positive")[0, 0], "jet"))


def test_explanation_overlay_on_given_images(saliency: seewhy.Explanation) -> None:
    heat = saliency.heatmap((40, 50))
    arrays = [_image(40, 50, seed=k) for k in range(3)]
    out = saliency.overlay(images=arrays)
    assert out.shape == (3, 40, 50, 3)
    np.testing.assert_array_equal(out[2], overlay(arrays[2], heat[2, 0]))
    as_pil = saliency.overlay(images=[Image.fromarray(a) for a in arrays])
    as_tensor = saliency.overlay(images=torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255)
    np.testing.assert_array_equal(as_pil, out)
    np.testing.assert_array_equal(as_tensor, out)
    np.testing.assert_array_equal(saliency.overlay(1, images=arrays[1]), out[1])  # one image for one sample
    mixed = [arrays[0], _image(20, 20), arrays[2]]
    with pytest.raises(ValueError, match="different sizes.*size="):
        saliency.overlay(images=mixed)
    assert saliency.overlay(images=mixed, size=(16, 16)).shape == (3, 16, 16, 3)
    with pytest.raises(ValueError, match="2 images for 3 samples"):
        saliency.overlay(images=arrays[:2])
    with pytest.raises(ValueError, match="one image for 3 samples"):
        saliency.overlay(images=arrays[0])
    with pytest.raises(TypeError, match="one per sample"):
        saliency.overlay(images="cat.png")


def test_explanation_overlay_without_inputs_and_errors(saliency: seewhy.Explanation) -> None:
    bare = dataclasses.replace(saliency, inputs=None)
    heat = bare.heatmap()
    np.testing.assert_array_equal(bare.overlay(0), heat_to_image(heat[0, 0]))
    assert bare.overlay(size=(8, 8)).shape == (3, 8, 8, 3)
    with pytest.raises(IndexError, match="sample 3 is out of range.*0 to 2"):
        saliency.overlay(3)
    with pytest.raises(TypeError, match="sample index"):
        saliency.overlay(1.5)
    with pytest.raises(TypeError, match="did you mean cmap"):
        saliency.overlay(camp="jet")
    with pytest.raises(ValueError, match="unknown colormap"):
        saliency.overlay(cmap="virdis")
    with pytest.raises(ValueError, match="alpha"):
        saliency.overlay(alpha=2)
    with pytest.raises(ValueError, match="size must be"):
        saliency.overlay(size=(0, 5))


def test_signed_maps_use_the_signed_colormap(lrp: seewhy.Explanation, saliency: seewhy.Explanation) -> None:
    assert lrp.heatmap_steps()["sign"] == "all"
    heat = lrp.heatmap()
    alone = dataclasses.replace(lrp, inputs=None).overlay()
    for i in range(2):
        np.testing.assert_array_equal(alone[i], apply_colormap(heat[i, 0], "bwr"))
        np.testing.assert_array_equal(lrp.overlay(i), overlay(tensor_to_image(lrp.inputs[i]), heat[i, 0], signed=True))
    zero = overlay(tensor_to_image(lrp.inputs[0]), np.full((32, 32), 0.5), signed=True)
    np.testing.assert_array_equal(zero, tensor_to_image(lrp.inputs[0]))  # signed: zero leaves the picture alone
    bare = dataclasses.replace(saliency, inputs=None)
    signed = bare.overlay(0, sign="all")  # an override makes any map signed
    np.testing.assert_array_equal(signed, apply_colormap(bare.heatmap(sign="all")[0, 0], "bwr"))


def test_explanation_save_one_image(tmp_path: Path, saliency: seewhy.Explanation) -> None:
    one = dataclasses.replace(saliency, attributions=saliency.attributions[:1], targets=saliency.targets[:1],
                              scores=saliency.scores[:1], inputs=saliency.inputs[:1])
    assert one.save(tmp_path / "exact.png") == [tmp_path / "exact.png"]
    assert one.save(tmp_path / "nosuffix") == [tmp_path / "nosuffix.png"]
    assert one.save(str(tmp_path / "deeper" / "x.png")) == [tmp_path / "deeper" / "x.png"]  # folders made
    with Image.open(tmp_path / "exact.png") as saved:
        assert saved.size == (32, 32) and saved.mode == "RGB"
        np.testing.assert_array_equal(np.asarray(saved), one.overlay(0))
    with pytest.raises(ValueError, match=r"PNG.*\.png"):
        one.save(tmp_path / "photo.jpg")
    assert sorted(os.listdir(tmp_path)) == ["deeper", "exact.png", "nosuffix.png"]


def test_explanation_save_batch_names_and_sizes(tmp_path: Path, saliency: seewhy.Explanation) -> None:
    written = saliency.save(tmp_path / "run.png", size=(48, 40))
    assert written == [tmp_path / f"run-{i}.png" for i in range(3)]
    for i, path in enumerate(written):
        with Image.open(path) as saved:
            assert saved.size == (40, 48)  # PIL: (W, H)
            np.testing.assert_array_equal(np.asarray(saved), saliency.overlay(i, size=(48, 40)))
    assert saliency.save(tmp_path) == [tmp_path / f"saliency-{i}.png" for i in range(3)]  # an existing folder
    made = saliency.save(f"{tmp_path / 'new'}{os.sep}")  # a trailing separator: a folder, created
    assert made == [tmp_path / "new" / f"saliency-{i}.png" for i in range(3)] and all(p.is_file() for p in made)
    odd = dataclasses.replace(saliency, method="a/b <c>")
    assert [p.name for p in odd.save(f"{tmp_path / 'odd'}/")] == [f"a_b_c-{i}.png" for i in range(3)]


def test_explanation_save_leaves_no_partial_files(tmp_path: Path, saliency: seewhy.Explanation,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="unknown colormap"):
        saliency.save(tmp_path / "x.png", cmap="nope")
    with pytest.raises(ValueError, match="3 samples"):
        saliency.save(tmp_path / "x.png", images=[_image()])
    assert os.listdir(tmp_path) == []  # failed before the first write

    def boom(*args: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        saliency.save(tmp_path / "x.png")
    assert os.listdir(tmp_path) == []  # no temporary file left behind


def _colorbars(fig: Figure) -> list:
    return [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]


def test_explanation_show_returns_a_figure(saliency: seewhy.Explanation) -> None:
    import matplotlib.pyplot as plt

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # under Agg: no "cannot be shown" warning, no blocking
        fig = saliency.show()
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 3 * 3  # per image: input, overlay, colourbar
    bars = _colorbars(fig)
    assert len(bars) == 3
    assert [t.get_text() for t in bars[0].get_yticklabels()] == ["low", "high"]
    titles = [ax.get_title() for ax in fig.axes]
    assert "#0" in titles and any(saliency.label(1) in t and f"{float(saliency.scores[1]):.3g}" in t for t in titles)
    assert fig.get_suptitle() == "saliency"
    assert fig.number not in plt.get_fignums()  # closed in pyplot under Agg: figures do not pile up
    buf = io.BytesIO()
    fig.savefig(buf, format="png")  # still draws
    assert buf.getvalue()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(saliency.show(1).axes) == 3
    assert len(dataclasses.replace(saliency, inputs=None).show([0, 2]).axes) == 2 * 2  # heatmap + colourbar


def test_explanation_show_signed_layer_and_many_images(lrp: seewhy.Explanation, named_model: torch.nn.Module) -> None:
    bar = _colorbars(lrp.show(cols=1))[0]
    assert [t.get_text() for t in bar.get_yticklabels()] == ["negative", "0", "positive"]
    assert "bwr" in {c.get_cmap().name for c in bar.collections}  # the colour strip of the colourbar
    unsigned = _colorbars(lrp.show(sign="abs"))[0]
    assert "jet" in {c.get_cmap().name for c in unsigned.collections}
    assert [t.get_text() for t in unsigned.get_yticklabels()] == ["low", "high"]
    x = torch.randn(20, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    many = seewhy.explain(named_model, x, "gradcam")
    fig = many.show()
    assert len(fig.axes) == 3 * 16 and len(_colorbars(fig)) == 16
    title = fig.get_suptitle()
    assert title.startswith(f"gradcam at layer {many.layer}") and "showing 16 of 20" in title
    assert len(many.show(max_images=4, cols=4).axes) == 12
    assert "showing" not in many.show(list(range(5))).get_suptitle()
    with pytest.raises(ValueError, match="cols"):
        many.show(cols=0)
    with pytest.raises(TypeError, match="did you mean max_images"):
        many.show(max_image=3)


def test_explanation_figure_displays_once_in_jupyter(saliency: seewhy.Explanation,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("IPython")
    import IPython.display
    import matplotlib.pyplot as plt

    shown: list[dict] = []
    monkeypatch.setattr(IPython.display, "display", lambda obj, **kw: shown.append(obj))
    monkeypatch.setattr(views, "_inline_backend", lambda: True)
    fig = saliency.show(0)
    assert fig.number in plt.get_fignums()  # the inline backend draws it after the cell...
    fig._ipython_display_()  # ...unless it is the cell's value: then it is drawn here, once
    assert fig.number not in plt.get_fignums() and len(shown) == 1
    assert shown[0]["image/png"][:8] == b"\x89PNG\r\n\x1a\n"
    fig._ipython_display_()  # a later cell shows it again
    assert len(shown) == 2


def test_explanation_show_in_a_script_with_a_window(saliency: seewhy.Explanation,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import matplotlib.pyplot as plt
    from matplotlib.backend_bases import FigureManagerBase

    class Window(FigureManagerBase):  # stands for a GUI backend's manager (Agg's cannot show anything)
        def show(self) -> None:
            pass

    real_figure = plt.figure

    def figure(*args: object, **kwargs: object) -> Figure:
        fig = real_figure(*args, **kwargs)
        fig.canvas.manager.__class__ = Window
        return fig

    calls: list[bool | None] = []
    monkeypatch.setattr(plt, "figure", figure)
    monkeypatch.setattr(plt, "show", lambda block=None: calls.append(block))
    monkeypatch.setattr(matplotlib, "is_interactive", lambda: False)
    fig = saliency.show(0, block=False)
    assert calls == [False] and fig.number in plt.get_fignums()  # a script: plt.show opens the window
    monkeypatch.setattr(matplotlib, "is_interactive", lambda: True)
    other = saliency.show(1)
    assert calls == [False]  # interactive (plt.ion, IPython): the window is already up
    plt.close(fig)
    plt.close(other)


def test_explanation_figure_pickles(saliency: seewhy.Explanation) -> None:
    fig = pickle.loads(pickle.dumps(saliency.show(0)))
    assert type(fig).__name__ == "ExplanationFigure" and len(fig.axes) == 3
