"""The ProtoPNet model: a convolutional trunk, add-on layers, prototypes, log-similarities and a last layer.

Chen et al., "This Looks Like That: Deep Learning for Interpretable Image Recognition", NeurIPS 2019.

    z = add_on(features(x))                       (B, D, h, w), in [0, 1] (sigmoid)
    d_j(h, w) = ||z(h, w) - p_j||^2                squared L2 to every latent patch, via a convolution
    s_j = log((min_hw d_j + 1) / (min_hw d_j + eps))   eps = 1e-4, so s_j(0) = log(1e4) = 9.2103
    logits = W s                                   W (K, P) without bias, +1 own class / -0.5 others at init

``ProtoPNet`` is an ordinary ``nn.Module``: ``model(x)`` returns the logits (B, K), so every seewhy method
explains it; ``model(x, return_distances=True)`` returns the paper's ``(logits, min_distances)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import zoo
from ..hooks import layer_outputs
from ..layers import resolve_layer

__all__ = [
    "BACKBONES",
    "FeaturesTrunk",
    "LayerTrunk",
    "Preprocessing",
    "ProtoPNet",
    "SmallCNNTrunk",
    "auto_backbone",
    "build_backbone",
    "log_similarity",
    "trunk",
]

EPSILON = 1e-4
INCORRECT_WEIGHT = -0.5


def log_similarity(distances: Tensor, epsilon: float = EPSILON) -> Tensor:
    """ProtoPNet's similarity ``log((d + 1) / (d + eps))``: decreasing in d, ``log(1/eps)`` at d = 0."""
    return torch.log((distances + 1) / (distances + epsilon))


class SmallCNNTrunk(nn.Module):
    """A small convolutional trunk for small images (digits, CIFAR-size): four conv-BN-ReLU blocks, the
    first three followed by 2x2 max-pooling, so 32x32 inputs give a 4x4 grid of ``4 * width`` channels."""

    def __init__(self, in_channels: int = 3, width: int = 32) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        for i, out in enumerate((width, 2 * width, 4 * width, 4 * width)):
            layers += [nn.Conv2d(c, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
            if i < 3:
                layers.append(nn.MaxPool2d(2))
            c = out
        self.layers = nn.Sequential(*layers)
        self.out_channels = c

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


class FeaturesTrunk(nn.Module):
    """The trunk of a model that has ``forward_features(x) -> (B, C, h, w)`` (EfficientNet in the zoo)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        if not callable(getattr(model, "forward_features", None)):
            raise TypeError(f"{type(model).__name__} has no forward_features(); use LayerTrunk(model, layer)")
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model.forward_features(x)


class LayerTrunk(nn.Module):
    """Any model cut after one of its layers: runs the model's forward and stops once ``layer`` has run.

    Works for models whose forward uses functional calls (no ``nn.Sequential`` needed): the layer is captured and
    the forward stopped by :func:`seewhy.hooks.layer_outputs`, whose hooks exist only during the trunk's forward.
    """

    def __init__(self, model: nn.Module, layer: str) -> None:
        super().__init__()
        self.layer, _ = resolve_layer(model, layer)
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        module = self.model.get_submodule(self.layer)
        acts, _, calls = layer_outputs(self.model, x, {self.layer: module}, grad=None, stop=True)
        if not calls[self.layer]:
            raise ValueError(f"trunk layer {self.layer!r} was not called during the forward pass; choose a layer "
                             "the model uses (see model.named_modules())")
        return acts[self.layer]


def trunk(model: nn.Module, layer: str | None = None) -> nn.Module:
    """The convolutional trunk of ``model``: cut after ``layer`` if given, else ``forward_features`` if the
    model has it, else the model itself (which must then return a (B, C, h, w) map)."""
    if layer is not None:
        return LayerTrunk(model, layer)
    if callable(getattr(model, "forward_features", None)):
        return FeaturesTrunk(model)
    return model


@dataclass(frozen=True)
class Preprocessing:
    """How images become inputs: resize the shorter side and centre-crop to ``image_size``, scale to [0, 1],
    normalise with ``mean``/``std``."""

    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


#: ProtoPNet's own backbone names; every zoo model name works too.
BACKBONES = {"small_cnn": "conv-BN-ReLU x4 with 3 max-pools (32x32 -> 4x4, 128 channels), for small images"}


#: The backbone name that means "choose from the images' sizes" (:func:`auto_backbone`).
AUTO = "auto"
#: Images whose (median) shorter side is at most this many pixels get ``small_cnn`` when no backbone is given.
SMALL_IMAGE_SIDE = 64
#: The backbone for larger images when none is given (pretrained, 224 px).
LARGE_BACKBONE = "efficientnet_lite0"


def auto_backbone(short_side: int | None, n_images: int | None = None) -> tuple[str, str]:
    """The backbone for images whose median shorter side is ``short_side`` px: ``small_cnn`` (32 px input) up
    to :data:`SMALL_IMAGE_SIDE`, else :data:`LARGE_BACKBONE` (224 px); returns ``(name, reason)``."""
    of = f"the {n_images} images" if n_images is not None else "the images"
    if short_side is None:
        return LARGE_BACKBONE, f"the sizes of {of} could not be read"
    if short_side <= SMALL_IMAGE_SIDE:
        return "small_cnn", f"the median shorter side of {of} is {short_side} px (<= {SMALL_IMAGE_SIDE} px)"
    return LARGE_BACKBONE, f"the median shorter side of {of} is {short_side} px (> {SMALL_IMAGE_SIDE} px)"


def build_backbone(name: str, *, pretrained: bool = True, layer: str | None = None) -> tuple[nn.Module, Preprocessing]:
    """A trunk and its preprocessing from a name: ``small_cnn``, a zoo model (``efficientnet_lite0``,
    ``tiny_cnn``, ...; its ``forward_features`` or its CAM layer) or any :func:`seewhy.zoo.load_model` spec
    (``file.py:factory``; cut at ``layer``, or the model itself if it returns a feature map).

    Raises:
        ValueError: an unknown name or spec.
    """
    if name == "small_cnn":
        if layer is not None:
            raise ValueError("small_cnn is already a trunk; drop the trunk layer")
        return SmallCNNTrunk(), Preprocessing(32, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    if name in zoo.MODELS:
        spec = zoo.get_spec(name)
        model = spec.build(pretrained and spec.has_weights).eval()
        if layer is None and not callable(getattr(model, "forward_features", None)):
            layer = spec.cam_layer
        size = spec.crop or spec.resize or 224
        return trunk(model, layer), Preprocessing(int(size), tuple(spec.mean), tuple(spec.std))
    try:
        model, spec = zoo.load_model(name)
    except ValueError as err:
        raise ValueError(f"unknown backbone {name!r}: use small_cnn, a zoo model ({', '.join(zoo.MODELS)}) "
                         f"or a model spec ({err})") from err
    return trunk(model, layer), Preprocessing(int(spec.crop or 224), tuple(spec.mean), tuple(spec.std))


def _infer_channels(features: nn.Module, in_channels: int, size: int) -> int:
    """Channels of the trunk's output, by one forward of zeros in eval mode (flags restored)."""
    flags = [(m, m.training) for m in features.modules()]
    param = next(features.parameters(), None)
    x = torch.zeros(1, in_channels, size, size, dtype=param.dtype if param is not None else torch.float32,
                    device=param.device if param is not None else None)
    try:
        features.eval()
        with torch.no_grad():
            out = features(x)
    finally:
        for m, flag in flags:
            m.training = flag
    if not isinstance(out, Tensor) or out.ndim != 4:
        got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(f"the trunk must return a (B, C, h, w) feature map, got {got}; cut a classifier at a "
                         "convolutional layer (seewhy.protopnet.trunk(model, layer=...))")
    return int(out.shape[1])


class ProtoPNet(nn.Module):
    """ProtoPNet (Chen et al., NeurIPS 2019): classify by the similarity of latent patches to prototypes.

    ``logits = W log((d_min + 1) / (d_min + 1e-4))`` with ``d_min[j] = min_{h,w} ||z(h,w) - p_j||^2``.

    Args:
        features: the convolutional trunk, ``(B, 3, H, W) -> (B, C, h, w)`` (see :func:`trunk`).
        num_classes: K.
        prototypes_per_class: prototypes of each class (P = K x this); prototype j belongs to class j // this.
        prototype_dim: D, the channels of the add-on output and of the prototypes.
        feature_channels: C; inferred by one forward of a ``infer_size`` image when None.
        class_names: K labels (targets by name, reports).
        epsilon: the similarity's stability constant (1e-4).
        incorrect_weight: initial last-layer weight of the connections to other classes (-0.5).

    Submodules ``features``, ``add_on_layers`` (1x1 conv -> ReLU -> 1x1 conv -> Sigmoid), the parameter
    ``prototype_vectors`` (P, D, 1, 1), ``last_layer`` (Linear(P, K, bias=False)); buffers
    ``prototype_class_identity`` (P, K) one-hot and, once pushed, ``prototype_image`` (P,) (index of the
    source image in the push set, -1 before a push and after training moved the prototypes again),
    ``prototype_location`` (P, 2) latent cell (h, w) and ``prototype_box`` (P, 4) the source image's
    high-similarity box (y0, y1, x0, x1), end-exclusive.
    """

    def __init__(
        self,
        features: nn.Module,
        num_classes: int,
        *,
        prototypes_per_class: int = 10,
        prototype_dim: int = 128,
        feature_channels: int | None = None,
        class_names: Sequence[str] | None = None,
        epsilon: float = EPSILON,
        incorrect_weight: float = INCORRECT_WEIGHT,
        in_channels: int = 3,
        infer_size: int = 64,
    ) -> None:
        super().__init__()
        if not isinstance(features, nn.Module):
            raise TypeError(f"features must be an nn.Module (a convolutional trunk), got {type(features).__name__}")
        for key, value in (("num_classes", num_classes), ("prototypes_per_class", prototypes_per_class),
                           ("prototype_dim", prototype_dim)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{key} must be a positive int, got {value!r}")
        if not epsilon > 0:
            raise ValueError(f"epsilon must be > 0, got {epsilon!r}")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"got {len(class_names)} class_names for num_classes={num_classes}")
        if feature_channels is None:
            feature_channels = _infer_channels(features, in_channels, infer_size)
        self.features = features
        self.num_classes = num_classes
        self.prototypes_per_class = prototypes_per_class
        self.num_prototypes = num_classes * prototypes_per_class
        self.prototype_dim = prototype_dim
        self.feature_channels = int(feature_channels)
        self.epsilon = float(epsilon)
        self.incorrect_weight = float(incorrect_weight)
        self.class_names: list[str] | None = None if class_names is None else [str(c) for c in class_names]

        self.add_on_layers = nn.Sequential(
            nn.Conv2d(self.feature_channels, prototype_dim, 1),
            nn.ReLU(),
            nn.Conv2d(prototype_dim, prototype_dim, 1),
            nn.Sigmoid(),
        )
        for m in self.add_on_layers:
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
        p = self.num_prototypes
        self.prototype_vectors = nn.Parameter(torch.rand(p, prototype_dim, 1, 1))
        identity = torch.zeros(p, num_classes)
        identity[torch.arange(p), torch.arange(p) // prototypes_per_class] = 1.0
        self.register_buffer("prototype_class_identity", identity)
        self.register_buffer("prototype_image", torch.full((p,), -1, dtype=torch.long))
        self.register_buffer("prototype_location", torch.full((p, 2), -1, dtype=torch.long))
        self.register_buffer("prototype_box", torch.full((p, 4), -1, dtype=torch.long))
        self.last_layer = nn.Linear(p, num_classes, bias=False)
        self.set_last_layer_incorrect_connection(self.incorrect_weight)

    # -- configuration ---------------------------------------------------------------------------------

    @property
    def prototype_classes(self) -> Tensor:
        """(P,) the class of each prototype."""
        return self.prototype_class_identity.argmax(1)

    @property
    def pushed(self) -> bool:
        """Whether every prototype has been projected onto a training patch."""
        return bool((self.prototype_image >= 0).all())

    def reset_prototype_sources(self) -> None:
        """Forget where the prototypes come from (source image, location and box back to -1: not pushed), as
        training moves them off their source patches; the next push records new sources."""
        for buf in (self.prototype_image, self.prototype_location, self.prototype_box):
            buf.fill_(-1)

    def set_last_layer_incorrect_connection(self, incorrect_weight: float = INCORRECT_WEIGHT) -> None:
        """W[c, j] = 1 if prototype j belongs to class c, else ``incorrect_weight``."""
        positive = self.prototype_class_identity.t()
        with torch.no_grad():
            self.last_layer.weight.copy_(positive + incorrect_weight * (1 - positive))

    def config(self) -> dict[str, Any]:
        """The constructor arguments besides ``features`` (JSON-safe), to rebuild the model."""
        return {
            "num_classes": self.num_classes,
            "prototypes_per_class": self.prototypes_per_class,
            "prototype_dim": self.prototype_dim,
            "feature_channels": self.feature_channels,
            "class_names": self.class_names,
            "epsilon": self.epsilon,
            "incorrect_weight": self.incorrect_weight,
        }

    # -- forward ---------------------------------------------------------------------------------------

    def conv_features(self, x: Tensor) -> Tensor:
        """Latent patches z = add_on(features(x)): (B, D, h, w)."""
        return self.add_on_layers(self.features(x))

    def l2_distances(self, z: Tensor) -> Tensor:
        """Squared L2 distance of every latent patch to every prototype, (B, P, h, w), via
        ``||z||^2 - 2 z.p + ||p||^2`` (one convolution), clamped at 0 against rounding."""
        p = self.prototype_vectors
        z2 = (z * z).sum(1, keepdim=True)
        p2 = (p * p).sum(dim=(1, 2, 3)).view(1, -1, 1, 1)
        return F.relu(z2 - 2 * F.conv2d(z, p) + p2)

    def prototype_distances(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(latent patches z (B, D, h, w), distances (B, P, h, w)): the push forward."""
        z = self.conv_features(x)
        return z, self.l2_distances(z)

    def similarity(self, distances: Tensor) -> Tensor:
        """``log((d + 1) / (d + epsilon))`` elementwise."""
        return log_similarity(distances, self.epsilon)

    def similarity_maps(self, x: Tensor) -> Tensor:
        """Per-prototype similarity maps (B, P, h, w)."""
        return self.similarity(self.prototype_distances(x)[1])

    def forward(self, x: Tensor, return_distances: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """Logits (B, K); with ``return_distances=True`` the paper's ``(logits, min_distances (B, P))``."""
        _, d = self.prototype_distances(x)
        min_d = d.flatten(2).amin(2)
        logits = self.last_layer(self.similarity(min_d))
        return (logits, min_d) if return_distances else logits

    def extra_repr(self) -> str:
        return (f"num_classes={self.num_classes}, prototypes={self.num_prototypes} "
                f"({self.prototypes_per_class}/class), prototype_dim={self.prototype_dim}, "
                f"feature_channels={self.feature_channels}")

