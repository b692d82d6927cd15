"""Network Dissection: planted detectors are found with IoU 1 from every concept source, the IoU matches a dense
recomputation, results do not depend on the batch size, and colour detectors show up in EfficientNet-Lite0."""

from __future__ import annotations

import importlib
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from seewhy.data import as_data
from seewhy.images import to_tensor
from seewhy.inside.concepts import colour_concepts
from seewhy.inside.dissect import Dissection, UnitConcept, dissect

# the module (seewhy.inside exports the function under the same name)
dissect_module = importlib.import_module("seewhy.inside.dissect")

SIZE = 16
# top 15% of each unit's activations: more than each planted square (6.25%), less than both (12.5%); the threshold
# falls on the zeros of the background, so a unit that is 1 on its square and <= 0 elsewhere fires exactly there
QUANTILE = 0.15


def planted(n: int = 10, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Black images with a pure red and a pure blue 4x4 square at random places; their masks (n,1,16,16)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(n, 3, SIZE, SIZE)
    red = torch.zeros(n, 1, SIZE, SIZE, dtype=torch.bool)
    blue = torch.zeros_like(red)
    for i in range(n):
        r, c = torch.randint(0, SIZE // 2 - 4, (2,), generator=g).tolist()
        red[i, 0, r:r + 4, c:c + 4] = True
        r, c = torch.randint(SIZE // 2, SIZE - 4, (2,), generator=g).tolist()
        blue[i, 0, r:r + 4, c:c + 4] = True
    x[:, 0:1][red] = 1.0
    x[:, 2:3][blue] = 1.0
    return x, red, blue


def colour_model() -> nn.Module:
    """1x1 conv, 4 units: 0 = red - green - blue (a red detector), 1 = blue - red - green (blue), 2 = red + blue
    (fires on both: no concept alone), 3 = green - red - blue (never positive here)."""
    model = nn.Sequential(nn.Conv2d(3, 4, 1))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, -1, -1], [-1, -1, 1], [1, 0, 1], [-1, 1, -1]]).view(4, 3, 1, 1))
        model[0].bias.zero_()
    return model.eval()


def _check_planted(d: Dissection, red: str = "red", blue: str = "blue") -> None:
    r, b = d.concepts.index(red), d.concepts.index(blue)
    assert abs(float(d.iou[0, r]) - 1) < 1e-6 and abs(float(d.iou[1, b]) - 1) < 1e-6
    assert float(d.iou[2].max()) < 0.75  # fires on both squares: IoU 0.5 with each
    assert float(d.iou[3].max()) == 0.0
    best = d.best()
    assert [u.unit for u in best] == [0, 1, 2, 3]
    assert best[0] == UnitConcept(0, red, pytest.approx(1.0)) and best[1].concept == blue
    tie = d.concepts[min(r, b)]  # unit 2: IoU 0.5 with both: the first in concept order
    assert [(u.unit, u.concept) for u in d.detectors()] == [(0, red), (1, blue), (2, tie)]  # sorted by IoU
    assert d.detectors()[-1].iou == pytest.approx(0.5)


def test_planted_detectors_with_dict_concepts(caplog: pytest.LogCaptureFixture) -> None:
    x, red, blue = planted()
    model = colour_model()
    with caplog.at_level(logging.INFO, logger="seewhy"):
        d = dissect(model, x, {"blue": blue, "red": red}, "0", quantile=QUANTILE)
    _check_planted(d)
    assert d.concepts == ["blue", "red"] and d.layer == "0" and d.images == 10 and d.skipped == []
    assert d.iou.shape == (4, 2) and d.thresholds.shape == (4,)
    assert d.quantile == QUANTILE and d.iou_threshold == 0.04
    assert (d.thresholds[:2] >= 0).all() and (d.thresholds[:2] < 0.01).all()  # on the zeros, within a bin
    assert d.best()[3].concept == "blue"  # all IoUs 0: the first concept
    assert "10 images, 4 units, 2 concepts" in caplog.text
    assert "units=4" in repr(d)


def test_planted_detectors_from_png_files_and_a_mask_folder(tmp_path: Path) -> None:
    x, red, blue = planted(6)
    (tmp_path / "images").mkdir()
    for name, masks in (("red", red), ("blue", blue)):
        (tmp_path / "masks" / name).mkdir(parents=True)
        for i in range(6):
            Image.fromarray(masks[i, 0].numpy().astype(np.uint8) * 255).save(tmp_path / "masks" / name / f"p{i}.png")
    for i in range(6):
        Image.fromarray((x[i].permute(1, 2, 0).numpy() * 255).astype(np.uint8)).save(tmp_path / "images" / f"p{i}.png")
    (tmp_path / "images" / "p9.png").write_bytes(b"not a png")  # unreadable: skipped, not fatal
    data = as_data(tmp_path / "images", transform=to_tensor, mean=(0, 0, 0), std=(1, 1, 1))
    d = dissect(colour_model(), data, tmp_path / "masks", "0", quantile=QUANTILE, batch_size=4)
    _check_planted(d)
    assert d.images == 6 and len(d.skipped) == 1 and d.skipped[0][0].endswith("p9.png")


def test_planted_detectors_with_colour_concepts() -> None:
    x, _, _ = planted()
    model = colour_model()
    d = dissect(model, x, colour_concepts, model[0], quantile=QUANTILE)  # the layer as a module
    assert d.concepts[:3] == ["black", "blue", "brown"] and len(d.concepts) == 11
    _check_planted(d)


def _random_case(n: int = 9) -> tuple[nn.Module, torch.Tensor, dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(5)
    torch.manual_seed(5)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, stride=2, padding=1), nn.Conv2d(6, 5, 3, padding=1)).eval()
    x = torch.randn(n, 3, 20, 20, generator=g)
    blobs = F.interpolate(torch.randn(n, 3, 5, 5, generator=g), size=(20, 20), mode="bilinear") > 0.3
    concepts = {f"c{j}": blobs[:, j:j + 1] for j in range(3)}
    concepts["never"] = torch.zeros(n, 1, 20, 20, dtype=torch.bool)
    return model, x, concepts


def _dense_iou(model: nn.Module, x: torch.Tensor, concepts: dict[str, torch.Tensor], layer: str,
               thresholds: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        acts = dict(model.named_children())[layer](model[0](x)) if layer == "1" else model[0](x)
    up = F.interpolate(acts, size=x.shape[-2:], mode="bilinear", align_corners=False) > thresholds.view(1, -1, 1, 1)
    masks = torch.cat(list(concepts.values()), 1)
    inter = torch.einsum("bkhw,bchw->kc", up.double(), masks.double())
    union = up.sum((0, 2, 3)).double()[:, None] + masks.sum((0, 2, 3)).double()[None] - inter
    return torch.where(union > 0, inter / union.clamp(min=1), torch.zeros_like(union))


@pytest.mark.parametrize("budget", [dissect_module.BUDGET, 1000])
def test_iou_matches_a_dense_computation(budget: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dissect_module, "BUDGET", budget)  # 1000: chunks of 1 image x 2 units x 2 concepts
    model, x, concepts = _random_case()
    d = dissect(model, x, concepts, "0", quantile=0.05, batch_size=4)
    assert torch.allclose(d.iou, _dense_iou(model, x, concepts, "0", d.thresholds), atol=1e-12)
    assert (d.iou[:, 3] == 0).all() and (d.iou[:, :3] > 0).all()
    with torch.no_grad():
        acts = model[0](x).transpose(0, 1).reshape(6, -1).double()
    exact = torch.quantile(acts, 0.95, dim=1)
    width = 2 * (acts.amax(1) - acts.amin(1)) / (dissect_module.BINS - 1)
    assert ((d.thresholds.double() - exact).abs() <= width + 1e-6).all()
    d2 = dissect(model, x, concepts, "1", quantile=0.05, batch_size=4)
    assert torch.allclose(d2.iou, _dense_iou(model, x, concepts, "1", d2.thresholds), atol=1e-12)


def test_results_do_not_depend_on_the_batch_size() -> None:
    model, x, concepts = _random_case(15)
    one = dissect(model, x, concepts, "1", batch_size=1, quantile=0.02)
    seven = dissect(model, x, concepts, "1", batch_size=7, quantile=0.02)
    assert torch.allclose(one.thresholds, seven.thresholds, atol=1e-6)
    assert torch.allclose(one.iou, seven.iou, atol=1e-6)


def test_the_model_is_left_as_it_was() -> None:
    model, x, concepts = _random_case(3)
    model.train()
    model[1].weight.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    dissect(model, x, concepts, "1")
    assert model.training and model[0].training
    assert model[0].weight.requires_grad and not model[1].weight.requires_grad
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_errors(tmp_path: Path) -> None:
    x, red, blue = planted(2)
    model = colour_model()
    for q in (0, 1, -0.1, 1.5, True):
        with pytest.raises(ValueError, match="quantile must be in"):
            dissect(model, x, {"red": red}, "0", quantile=q)
    for t in (-0.01, 1.01):
        with pytest.raises(ValueError, match="iou_threshold must be in"):
            dissect(model, x, {"red": red}, "0", iou_threshold=t)
    flat = nn.Sequential(nn.Conv2d(3, 4, 1), nn.Flatten(), nn.Linear(4 * SIZE * SIZE, 2))
    with pytest.raises(ValueError, match="2-D output"):
        dissect(flat, x, {"red": red}, "2")
    with pytest.raises(ValueError, match="unknown layer"):
        dissect(model, x, {"red": red}, "nope")
    with pytest.raises(ValueError, match="2 images, the data has 3"):
        dissect(model, torch.cat([x, x[:1]]), {"red": red}, "0")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "a.png").write_bytes(b"broken")
    data = as_data(tmp_path / "bad", transform=to_tensor)
    with pytest.raises(ValueError, match="no readable image"):
        dissect(model, data, {"red": red}, "0")


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The 4 bundled photos and 4 corner crops (60%) of each: 20 PNG files."""
    from seewhy.images import BUNDLED, bundled_image

    folder = tmp_path_factory.mktemp("photos")
    for name in BUNDLED:
        image = bundled_image(name)
        image.save(folder / f"{name}.png")
        w, h = image.size
        cw, ch = int(w * 0.6), int(h * 0.6)
        for j, (left, top) in enumerate([(0, 0), (w - cw, 0), (0, h - ch), (w - cw, h - ch)]):
            image.crop((left, top, left + cw, top + ch)).save(folder / f"{name}_crop{j}.png")
    return folder


def test_efficientnet_lite0_has_colour_detectors_in_an_early_block(photo_folder: Path) -> None:
    from seewhy import zoo

    model = zoo.load("efficientnet_lite0")
    d = dissect(model, photo_folder, colour_concepts, "_blocks.0")
    assert d.images == 20 and d.units == 16 and d.concepts == list(colour_concepts(torch.rand(3, 2, 2)))
    detectors = d.detectors()
    assert detectors and detectors[0].iou > 0.04
    assert [u.iou for u in detectors] == sorted((u.iou for u in detectors), reverse=True)
