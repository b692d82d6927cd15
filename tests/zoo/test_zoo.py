"""The model zoo: EfficientNet-Lite0 against known predictions, the registry and load_model specs."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import warnings

import pytest
import torch
from torch import nn

from seewhy import zoo
from seewhy.zoo.efficientnet_lite import EfficientNetLite0, weights_path
from seewhy.zoo.small import TinyCNN


@pytest.fixture(scope="module")
def lite0() -> nn.Module:
    return zoo.load("efficientnet_lite0")


def test_efficientnet_loads_strict() -> None:
    model = EfficientNetLite0()
    state = torch.load(weights_path(), map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    assert set(model.state_dict()) == set(state)
    assert all(model.state_dict()[k].shape == v.shape for k, v in state.items())
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(m.eps == 1e-3 for m in bns)


def test_efficientnet_predicts_chelsea_and_coffee(lite0: nn.Module) -> None:
    skdata = pytest.importorskip("skimage.data")
    spec = zoo.get_spec("efficientnet_lite0")
    x = torch.stack([spec.preprocess(skdata.chelsea()), spec.preprocess(skdata.coffee())])
    assert x.shape == (2, 3, 224, 224)
    with torch.no_grad():
        probs = lite0(x).softmax(dim=1)
    top = probs.argmax(dim=1).tolist()
    assert top[0] in {281, 282, 285}  # tabby / tiger cat / Egyptian cat
    assert top[1] == 967  # espresso
    assert probs[1, 967] > 0.5


def test_efficientnet_any_input_size(lite0: nn.Module) -> None:
    with torch.no_grad():
        out = lite0(torch.zeros(1, 3, 97, 130))
    assert out.shape == (1, 1000) and torch.isfinite(out).all()


def test_efficientnet_activations_are_functional() -> None:
    model = EfficientNetLite0()
    assert not any(isinstance(m, (nn.ReLU, nn.ReLU6, nn.Hardtanh)) for m in model.modules())
    calls = []

    class Spy(torch.overrides.TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            if func is torch.nn.functional.relu6:
                calls.append(func)
            return func(*args, **(kwargs or {}))

    with Spy(), torch.no_grad():
        model.eval()(torch.zeros(1, 3, 32, 32))
    assert len(calls) == 2 + 1 + 2 * 15  # stem, head, block 0 (no expand), 15 expanded blocks


def test_class_names() -> None:
    names = zoo.imagenet_classes()
    assert len(names) == 1000
    assert names[281].startswith("tabby") and names[967] == "espresso"
    assert EfficientNetLite0().class_names == names
    names.append("x")
    assert len(zoo.imagenet_classes()) == 1000  # a copy each time


@pytest.mark.parametrize("name", zoo.list_models())
def test_every_spec_builds(name: str) -> None:
    spec = zoo.get_spec(name)
    model = spec.build(False)
    assert isinstance(model, nn.Module)
    if spec.cam_layer is not None:
        assert spec.cam_layer in dict(model.named_modules())
    size = spec.crop or 224
    x = torch.zeros(2, 3, size, size)
    with torch.no_grad():
        assert model.eval()(x).ndim == 2


def test_spec_preprocess_small_models() -> None:
    import numpy as np

    img = np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8)
    x = zoo.get_spec("tiny_vgg").preprocess(img)
    assert x.shape == (3, 32, 32)


def test_load_eval_and_random_weights_warning() -> None:
    with pytest.warns(UserWarning, match="random"):
        a = zoo.load("tiny_cnn")
    assert not a.training
    torch.manual_seed(123)
    with pytest.warns(UserWarning):
        b = zoo.load("tiny_cnn")
    state = torch.random.get_rng_state()
    with pytest.warns(UserWarning):
        zoo.load("tiny_cnn")
    assert torch.equal(state, torch.random.get_rng_state())  # the global RNG is untouched
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not zoo.load("tiny_resnet", pretrained=False).training


def test_unknown_zoo_name_lists_names() -> None:
    with pytest.raises(ValueError, match="efficientnet_lite0") as err:
        zoo.get_spec("efficientnet_lite")
    assert "tiny_cnn" in str(err.value)
    with pytest.raises(ValueError, match="tiny_cnn"):
        zoo.load_model("tiny_cn")


def test_load_model_zoo_name() -> None:
    with pytest.warns(UserWarning):
        model, spec = zoo.load_model("tiny_vgg")
    assert spec is zoo.get_spec("tiny_vgg") and not model.training


def test_load_model_file_factory(tmp_path) -> None:
    src = tmp_path / "my_model.py"
    src.write_text(textwrap.dedent("""
        from torch import nn

        def make():
            return nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5))

        def not_a_model():
            return 42
    """))
    model, spec = zoo.load_model(f"{src}:make")
    assert isinstance(model, nn.Sequential) and not model.training
    assert spec.name == f"{src}:make"
    assert spec.mean == (0.485, 0.456, 0.406) and spec.std == (0.229, 0.224, 0.225)
    assert (spec.resize, spec.crop, spec.cam_layer, spec.has_weights) == (256, 224, None, False)
    with pytest.raises(ValueError, match="no attribute 'missing'"):
        zoo.load_model(f"{src}:missing")
    with pytest.raises(ValueError, match="not an nn.Module"):
        zoo.load_model(f"{src}:not_a_model")
    with pytest.raises(ValueError, match="no such file"):
        zoo.load_model(f"{tmp_path / 'nope.py'}:make")
    with pytest.raises(ValueError, match="no factory"):
        zoo.load_model(str(src))
    other = tmp_path / "notes.txt"
    other.write_text("x")
    with pytest.raises(ValueError, match=r"needs a Python \(\.py\) file"):
        zoo.load_model(f"{other}:make")


def test_load_model_module_factory() -> None:
    model, spec = zoo.load_model("seewhy.zoo.small:TinyCNN")
    assert isinstance(model, TinyCNN) and not model.training and not spec.has_weights
    with pytest.raises(ValueError, match="cannot import module"):
        zoo.load_model("seewhy.no_such_module:make")


def _tiny() -> nn.Module:
    torch.manual_seed(0)
    return TinyCNN(width=4).eval()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit is deprecated in torch >= 2.10
def test_load_model_torchscript(tmp_path) -> None:
    model = _tiny()
    x = torch.randn(2, 3, 16, 16)
    path = tmp_path / "tiny.pt"
    torch.jit.save(torch.jit.trace(model, x), str(path))
    loaded, spec = zoo.load_model(str(path))
    assert spec.has_weights and not loaded.training
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))
    bad = tmp_path / "state.pt"
    torch.save(model.state_dict(), bad)
    with pytest.raises(ValueError, match="not a TorchScript archive, it is a torch.save checkpoint"):
        zoo.load_model(str(bad))
    garbage = tmp_path / "garbage.ts"
    garbage.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a TorchScript archive, it is unreadable"):
        zoo.load_model(str(garbage))
    with pytest.raises(ValueError, match="no such TorchScript file"):
        zoo.load_model(str(tmp_path / "missing.pt"))


def test_load_model_weights_round_trip(tmp_path) -> None:
    model = _tiny()
    weights = tmp_path / "w.pth"
    torch.save(model.state_dict(), weights)
    spec = "seewhy.zoo.small:TinyCNN"
    src = tmp_path / "arch.py"
    src.write_text("from seewhy.zoo.small import TinyCNN\n\ndef make():\n    return TinyCNN(width=4)\n")
    loaded, info = zoo.load_model(f"{src}:make", weights=str(weights))
    assert info.has_weights
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"w\.pth") as err:  # width 16 vs 4: shapes differ
        zoo.load_model(spec, weights=str(weights))
    assert "fit" in str(err.value) or "match" in str(err.value)


def test_load_model_mismatched_weights_names_keys(tmp_path) -> None:
    weights = tmp_path / "other.pth"
    torch.save({"encoder.weight": torch.zeros(1), "features.0.weight": torch.zeros(16, 3, 3, 3)}, weights)
    with pytest.raises(ValueError) as err:
        zoo.load_model("seewhy.zoo.small:TinyCNN", weights=str(weights))
    msg = str(err.value)
    assert "other.pth" in msg and "encoder.weight" in msg and "fc.weight" in msg
    with pytest.raises(ValueError, match="no such weights file"):
        zoo.load_model("seewhy.zoo.small:TinyCNN", weights=str(tmp_path / "none.pth"))


def test_zoo_model_with_weights_file(tmp_path) -> None:
    model = zoo.load("tiny_resnet", pretrained=False)
    weights = tmp_path / "r.pth"
    torch.save(model.state_dict(), weights)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded, spec = zoo.load_model("tiny_resnet", weights=str(weights))
    assert spec.has_weights and spec.cam_layer == "layer2"
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


def test_importing_seewhy_does_not_import_torchvision() -> None:
    code = "import seewhy, seewhy.zoo, sys; assert not {'torchvision', 'timm'} & set(sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_spec_of_recognises_zoo_architectures_and_carries_the_lrp_defaults() -> None:
    for name in zoo.list_models():
        spec = zoo.get_spec(name)
        assert zoo.spec_of(spec.build(False)) is spec
    assert zoo.spec_of(nn.Linear(2, 2)) is None
    lite0 = zoo.get_spec("efficientnet_lite0")
    assert (lite0.lrp_composite, lite0.lrp_merge_batchnorm) == ("epsilon_gamma_box", False)
    tiny = zoo.get_spec("tiny_resnet")
    assert (tiny.lrp_composite, tiny.lrp_merge_batchnorm) == (None, True)  # None: LRP's own default
    _, user = zoo.load_model("seewhy.zoo.small:TinyCNN")
    assert user.class_name is None and zoo.spec_of(TinyCNN()) is zoo.get_spec("tiny_cnn")
