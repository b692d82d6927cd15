"""The model zoo: named architectures with their preprocessing, and loading any user model from a spec.

A model spec for :func:`load_model` is one of

- a zoo name (``efficientnet_lite0``, ``tiny_cnn``, ...; see :func:`list_models`);
- ``path/to/file.py:factory``: the file is imported and ``factory()`` must return an ``nn.Module``;
- ``package.module:factory``: the same with an importable module;
- a TorchScript file (``.pt``, ``.pth``, ``.ts``, ``.torchscript``), loaded with ``torch.jit.load``.

``weights`` is an optional state-dict file (``torch.save(model.state_dict(), path)``), loaded strictly.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import hashlib
import importlib
import importlib.resources
import importlib.util
import logging
import os
import pickle
import sys
import warnings
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from .. import images
from . import small
from .efficientnet_lite import EfficientNetLite0, efficientnet_lite0

log = logging.getLogger("seewhy")

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

TORCHSCRIPT_SUFFIXES = (".pt", ".pth", ".ts", ".torchscript")

_SPEC_HELP = (
    "a model spec is a zoo name ({names}), 'path/to/file.py:factory', 'package.module:factory' "
    "(factory() must return an nn.Module) or a TorchScript file ({suffixes})"
)


def _spec_help() -> str:
    return _SPEC_HELP.format(names=", ".join(MODELS), suffixes=", ".join(TORCHSCRIPT_SUFFIXES))


@dataclass(frozen=True)
class ModelSpec:
    """A model and how to feed it: ``build(pretrained) -> nn.Module`` plus its preprocessing, and the defaults the
    methods take for it: ``cam_layer``, and for LRP ``lrp_composite`` (``composite="auto"``; None: LRP's default)
    and ``lrp_merge_batchnorm`` (``canonizers="auto"`` merges the BatchNorms; False keeps them, with the pass rule).
    A model is recognised as this architecture by its class name, ``class_name`` (see :func:`spec_of`)."""

    name: str
    build: Callable[[bool], nn.Module]
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    resize: int | None = 256
    crop: int | None = 224
    interpolation: str = "bicubic"
    cam_layer: str | None = None  # default layer for CAM methods (a name in model.named_modules())
    description: str = ""
    has_weights: bool = False
    class_name: str | None = None
    lrp_composite: str | None = None
    lrp_merge_batchnorm: bool = True

    def preprocess(self, image: Image.Image | np.ndarray) -> Tensor:
        """An RGB image (PIL or uint8 array) -> the normalised float32 (3,H,W) input of this model."""
        return images.preprocess(image, resize=self.resize, crop=self.crop, mean=self.mean, std=self.std,
                                 interpolation=self.interpolation)


@functools.lru_cache(maxsize=1)
def _imagenet_classes() -> tuple[str, ...]:
    text = importlib.resources.files(__name__).joinpath("imagenet_classes.txt").read_text(encoding="utf-8")
    names = tuple(line.strip() for line in text.splitlines() if line.strip())
    if len(names) != 1000:
        raise RuntimeError(f"seewhy/zoo/imagenet_classes.txt holds {len(names)} names instead of 1000")
    return names


def imagenet_classes() -> list[str]:
    """The 1000 ImageNet-1k class names in index order (281 'tabby', 967 'espresso')."""
    return list(_imagenet_classes())


_RANDOM_SEED = 0


def _small(factory: Callable[[], nn.Module]) -> Callable[[bool], nn.Module]:
    """A build function for a model without weights: ``pretrained=True`` gives a fixed random init."""

    def build(pretrained: bool) -> nn.Module:
        if not pretrained:
            return factory()
        with torch.random.fork_rng(devices=[]):  # a fixed init that leaves the global RNG untouched
            torch.manual_seed(_RANDOM_SEED)
            return factory()

    return build


_SMALL = dict(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), resize=32, crop=32, has_weights=False)

MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            "efficientnet_lite0",
            efficientnet_lite0,
            mean=(0.498, 0.498, 0.498),
            std=(0.502, 0.502, 0.502),
            cam_layer="_features",
            description="EfficientNet-Lite0, ImageNet-1k (4.7M parameters, ReLU6, 224x224)",
            has_weights=True,
            class_name="EfficientNetLite0",
            # BatchNorms unmerged with the pass rule: merged, the large shifts of the depthwise BatchNorms become
            # biases that absorb most of the relevance (with z+, 0.37 of a class score of 9.2 reaches the input on
            # the chelsea photo; with gamma 0.12); unmerged with pass and gamma, 3.5 does
            lrp_composite="epsilon_gamma_box",
            lrp_merge_batchnorm=False,
        ),
        ModelSpec("tiny_cnn", _small(small.TinyCNN), class_name="TinyCNN", cam_layer="features",
                  description="conv-ReLU(inplace) x2, GAP, linear; 10 classes, 32x32, no weights",
                  **_SMALL),
        ModelSpec("tiny_functional_cnn", _small(small.TinyFunctionalCNN), class_name="TinyFunctionalCNN",
                  cam_layer="conv2",
                  description="functional F.relu/F.relu6, BatchNorm, max-pool; 10 classes, 32x32, no weights",
                  **_SMALL),
        ModelSpec("tiny_resnet", _small(small.TinyResNet), class_name="TinyResNet", cam_layer="layer2",
                  description="two residual stages, in-place ReLU, GAP; 10 classes, 32x32, no weights",
                  **_SMALL),
        ModelSpec("tiny_vgg", _small(small.TinyVGG), class_name="TinyVGG", cam_layer="features",
                  description="conv-ReLU-pool x2, flatten + linear; 10 classes, 32x32, no weights",
                  **_SMALL),
    )
}


def class_names(model: nn.Module) -> list[str] | None:
    """The class names of ``model``'s outputs: its ``class_names`` attribute, else ImageNet's for a pretrained zoo
    model (recognised by :func:`spec_of`), else None."""
    names = getattr(model, "class_names", None)
    if names:
        return list(names)
    spec = spec_of(model)
    return imagenet_classes() if spec is not None and spec.has_weights else None


def list_models() -> list[str]:
    """Names of the zoo models."""
    return list(MODELS)


def get_spec(name: str) -> ModelSpec:
    """The :class:`ModelSpec` of the zoo model ``name``.

    Raises:
        ValueError: unknown name (the message lists close and valid names).
    """
    if name in MODELS:
        return MODELS[name]
    close = difflib.get_close_matches(name, MODELS, n=3)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise ValueError(f"unknown zoo model {name!r}; {hint}available: {', '.join(MODELS)}")


def spec_of(model: nn.Module) -> ModelSpec | None:
    """The zoo spec of ``model``'s architecture, recognised by class name (so a user's copy of a zoo class under the
    same name gets it too), else None."""
    name = type(model).__name__
    for spec in MODELS.values():
        if spec.class_name == name:
            return spec
    return None


def load(name: str, pretrained: bool = True) -> nn.Module:
    """Build the zoo model ``name`` in eval mode, with its weights when ``pretrained``.

    A model without shipped weights and ``pretrained=True`` gets a fixed random initialisation (same
    every call, independent of the global seed) and a warning.
    """
    spec = get_spec(name)
    if pretrained and not spec.has_weights:
        warnings.warn(
            f"zoo model {name!r} ships no weights: using a fixed random initialisation "
            "(pass weights=... to load a trained state dict)",
            stacklevel=2,
        )
    return spec.build(pretrained).eval()


def load_model(spec: str, weights: str | os.PathLike | None = None) -> tuple[nn.Module, ModelSpec]:
    """Load a model from a spec (zoo name, ``file.py:factory``, ``module:factory`` or TorchScript file)
    and optionally a state-dict file; returns (model in eval mode, its :class:`ModelSpec`).

    Raises:
        ValueError: a bad spec or weights file (the message says what is wrong and how to write a spec).
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"empty or non-string model spec {spec!r}; {_spec_help()}")
    spec = spec.strip()
    if spec in MODELS:
        zoo_spec = MODELS[spec]
        if weights is None:
            return load(spec, pretrained=True), zoo_spec
        model = zoo_spec.build(False)
        _load_weights(model, weights)
        return model.eval(), dataclasses.replace(zoo_spec, has_weights=True)

    model, is_script = _build_user_model(spec)
    if weights is not None:
        _load_weights(model, weights)

    def build(pretrained: bool) -> nn.Module:
        return load_model(spec, weights if pretrained else None)[0]

    info = ModelSpec(
        name=spec,
        build=build,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        resize=256,
        crop=224,
        cam_layer=None,
        description=f"user model {spec}",
        has_weights=weights is not None or is_script,
    )
    return model.eval(), info


def _build_user_model(spec: str) -> tuple[nn.Module, bool]:
    """(model, is_torchscript) for a non-zoo spec."""
    path = Path(spec).expanduser()
    if path.suffix.lower() in TORCHSCRIPT_SUFFIXES:
        return _load_torchscript(path, spec), True
    if ":" in spec:
        target, _, attr = spec.rpartition(":")
        if not target or not attr:
            raise ValueError(f"model spec {spec!r} needs both a module or file and a factory; {_spec_help()}")
        module = _import_target(target, spec)
        factory = module
        for part in attr.split("."):
            if not hasattr(factory, part):
                public = sorted(n for n, v in vars(module).items() if not n.startswith("_") and callable(v)
                                and getattr(v, "__module__", None) == module.__name__)
                raise ValueError(
                    f"model spec {spec!r}: {target!r} has no attribute {attr!r}; "
                    f"callables there: {', '.join(public[:15]) or 'none'}"
                )
            factory = getattr(factory, part)
        if not callable(factory):
            raise ValueError(
                f"model spec {spec!r}: {attr!r} is a {type(factory).__name__}, not a callable factory"
            )
        model = factory()
        if not isinstance(model, nn.Module):
            raise ValueError(
                f"model spec {spec!r}: {attr}() returned a {type(model).__name__}, not an nn.Module; "
                "the factory must build and return the model"
            )
        return model, False
    if path.suffix == ".py":
        raise ValueError(
            f"model spec {spec!r} names a Python file but no factory: write '{spec}:factory_name'"
        )
    if path.exists():
        raise ValueError(f"model spec {spec!r}: unsupported file type; {_spec_help()}")
    close = difflib.get_close_matches(spec, MODELS, n=3)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise ValueError(f"unknown model {spec!r}: not a zoo name nor a file; {hint}{_spec_help()}")


def _looks_like_path(target: str) -> bool:
    return target.endswith(".py") or "/" in target or "\\" in target or target.startswith(".")


def _import_target(target: str, spec: str) -> object:
    """Import a module by file path or dotted name."""
    if _looks_like_path(target):
        path = Path(target).expanduser().resolve()
        if not path.is_file():
            raise ValueError(f"model spec {spec!r}: no such file {str(path)!r}; {_spec_help()}")
        if path.suffix != ".py":
            raise ValueError(
                f"model spec {spec!r}: a 'file:factory' spec needs a Python (.py) file; {_spec_help()}"
            )
        digest = hashlib.sha1(str(path).encode()).hexdigest()[:10]
        mod_name = f"_seewhy_user_{path.stem}_{digest}"
        mod_spec = importlib.util.spec_from_file_location(mod_name, path)
        if mod_spec is None or mod_spec.loader is None:
            raise ValueError(f"model spec {spec!r}: cannot import {str(path)!r} as a Python module")
        module = importlib.util.module_from_spec(mod_spec)
        sys.modules[mod_name] = module  # dataclasses, pickling and relative lookups need it registered
        try:
            mod_spec.loader.exec_module(module)
        except BaseException:
            sys.modules.pop(mod_name, None)
            raise
        return module
    try:
        return importlib.import_module(target)
    except ModuleNotFoundError as err:
        if err.name and target.startswith(err.name):
            raise ValueError(
                f"model spec {spec!r}: cannot import module {target!r} ({err}); {_spec_help()}"
            ) from err
        raise


def _load_torchscript(path: Path, spec: str) -> nn.Module:
    if not path.is_file():
        raise ValueError(f"model spec {spec!r}: no such TorchScript file {str(path)!r}")
    try:
        return torch.jit.load(str(path), map_location="cpu")
    except (RuntimeError, ValueError) as err:
        saved = _is_torch_save(path)
        what = "a torch.save checkpoint (state dict or pickled model)" if saved else "unreadable"
        raise ValueError(
            f"model spec {spec!r}: {str(path)!r} is not a TorchScript archive, it is {what}. "
            "Save TorchScript with torch.jit.save(torch.jit.script(model), path); for a state dict, pass "
            "it as weights with an architecture spec ('file.py:factory', 'module:factory' or a zoo name)"
        ) from err


def _is_torch_save(path: Path) -> bool:
    """Whether ``path`` is a zip archive written by ``torch.save`` (data.pkl without TorchScript code)."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = [n.split("/", 1)[-1] for n in archive.namelist()]
    except (zipfile.BadZipFile, OSError):
        return False
    return "data.pkl" in names and "constants.pkl" not in names


def _few(keys: list[str], n: int = 5) -> str:
    return ", ".join(keys[:n]) + (", ..." if len(keys) > n else "")


def _load_weights(model: nn.Module, weights: str | os.PathLike) -> None:
    """Load a state-dict file into ``model`` strictly, with errors that name the keys and the file."""
    path = Path(weights).expanduser()
    if not path.is_file():
        raise ValueError(f"no such weights file {str(path)!r}")
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, EOFError, ValueError) as err:
        raise ValueError(
            f"weights file {str(path)!r} is not a plain state dict ({str(err).splitlines()[0]}); "
            "save one with torch.save(model.state_dict(), path)"
        ) from err
    if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(
            f"weights file {str(path)!r} holds a {type(state).__name__}, not a state dict of tensors; "
            "save one with torch.save(model.state_dict(), path)"
        )
    expected = set(model.state_dict())
    missing = sorted(expected - set(state))
    unexpected = sorted(set(state) - expected)
    if missing or unexpected:
        parts = [f"{len(keys)} {kind} keys ({_few(keys)})" for kind, keys in
                 (("missing", missing), ("unexpected", unexpected)) if keys]
        hint = " (keys start with 'module.': strip that DataParallel prefix)" if any(
            k.startswith("module.") for k in unexpected) else ""
        raise ValueError(
            f"weights file {str(path)!r} does not match the model: {'; '.join(parts)}{hint}"
        )
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueError(f"weights file {str(path)!r} does not fit the model: {err}") from err


__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MODELS",
    "EfficientNetLite0",
    "ModelSpec",
    "efficientnet_lite0",
    "get_spec",
    "imagenet_classes",
    "list_models",
    "load",
    "load_model",
    "spec_of",
]


#: a model's input normalisation: (mean, std), a callable on [0, 1] images, False (none) or None (the zoo model's)
Normalize = tuple[Sequence[float], Sequence[float]] | Callable[[Tensor], Tensor] | bool | None


def input_normalizer(model: nn.Module, normalize: Normalize) -> tuple[Callable[[Tensor], Tensor], Any]:
    """The function that maps [0, 1] images to ``model``'s input, and a JSON-able description of it: ``normalize`` =
    (mean, std), a callable, False (none) or None (the zoo model's, else none with a warning)."""
    if normalize is None:
        spec = spec_of(model)
        if spec is None:
            log.warning("no normalize given and %s is not a zoo model, so it gets [0, 1] pixels; pass "
                        "normalize=(mean, std) (e.g. ImageNet's) or normalize=False to silence this",
                        type(model).__name__)
            return (lambda x: x), None
        normalize = (spec.mean, spec.std)
    if normalize is False:
        return (lambda x: x), None
    if normalize is True:
        raise ValueError("normalize=True is ambiguous; pass (mean, std), a callable, False or None (the zoo's)")
    if callable(normalize):
        return normalize, getattr(normalize, "__name__", type(normalize).__name__)
    try:
        mean, std = normalize
        mean_t = torch.as_tensor(mean, dtype=torch.float64).flatten()
        std_t = torch.as_tensor(std, dtype=torch.float64).flatten()
    except (TypeError, ValueError):
        raise ValueError(f"normalize must be (mean, std), a callable, False or None; got {normalize!r}") from None
    if mean_t.numel() not in (1, 3) or std_t.numel() not in (1, 3) or (std_t <= 0).any():
        raise ValueError(f"normalize=(mean, std) needs 1 or 3 values each and std > 0; got {normalize!r}")
    cache: dict[tuple, tuple[Tensor, Tensor]] = {}

    def fn(x: Tensor) -> Tensor:
        key = (x.device, x.dtype)
        if key not in cache:
            cache[key] = (mean_t.to(x.device, x.dtype).reshape(1, -1, 1, 1),
                          std_t.to(x.device, x.dtype).reshape(1, -1, 1, 1))
        m, s = cache[key]
        return (x - m) / s

    return fn, {"mean": mean_t.tolist(), "std": std_t.tolist()}


def resolve_normalize(model: nn.Module, normalize: Normalize) -> Callable[[Tensor], Tensor]:
    """The function that maps [0, 1] images to ``model``'s input (see :func:`input_normalizer`)."""
    return input_normalizer(model, normalize)[0]
