"""Exact receptive fields (traced) against hand-computed values, and empirical fields (input gradients) inside them."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seewhy.hooks import count_hooks
from seewhy.inside.receptive import EmpiricalField, ReceptiveField, empirical_receptive_field, receptive_field
from seewhy.zoo.efficientnet_lite import Conv2dSame
from tests.conftest import build


def positive(model: nn.Module, scale: float = 0.1, seed: int = 0) -> nn.Module:
    """Random positive conv / linear weights: with a positive input every ReLU passes and no gradient cancels."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) * scale + 1e-3)
                if m.bias is not None:
                    m.bias.zero_()
    return model.eval()


def inside(inner: tuple[int, int, int, int], outer: tuple[int, int, int, int]) -> bool:
    return inner[0] >= outer[0] and inner[1] >= outer[1] and inner[2] <= outer[2] and inner[3] <= outer[3]


def check(rf: ReceptiveField, size, stride, offset) -> None:
    assert (rf.size, rf.stride, rf.offset) == (size, stride, offset)


# --- exact values on hand-computed nets -----------------------------------------------------------------------------


def test_stacked_3x3_convs():
    # each 3x3 stride-1 conv adds 2: 1 + 2 + 2 = 5; without padding unit 0 reads pixels 0..4 (centre 2)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3))
    rf = receptive_field(net, "2", (16, 16))
    check(rf, (5, 5), (1, 1), (2, 2))
    assert rf.map_size == (12, 12) and rf.input_size == (16, 16)
    assert rf.box(0, 0) == (0, 0, 5, 5) and rf.box(3, 7) == (3, 7, 8, 12)
    # padding 1 centres unit i on pixel i; the box of a corner unit is clipped to the image
    rf = receptive_field(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)), "1", (16, 16))
    check(rf, (5, 5), (1, 1), (0, 0))
    assert rf.box(0, 0) == (0, 0, 3, 3) and rf.box(8, 15) == (6, 13, 11, 16)
    assert receptive_field(nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 3)), "0", (16, 16)).size == (3, 3)


def test_conv_pool_conv():
    # conv 3x3: [0, 2] jump 1; max-pool 2x2 s2: [0, 2 + 1] jump 2; conv 3x3: [0, 3 + 2*2] = [0, 7] jump 2
    # size 3 + 1*1 + 2*2 = 8, stride 2, centre 3.5; unit (1, 1) reads pixels 2..9
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.MaxPool2d(2, 2), nn.Conv2d(4, 4, 3))
    rf = receptive_field(net, "2", (20, 20))
    check(rf, (8, 8), (2, 2), (3.5, 3.5))
    assert rf.box(0, 0) == (0, 0, 8, 8) and rf.box(1, 1) == (2, 2, 10, 10)
    # with padding 1 everywhere: conv [-1, 1]; pool [-1, 2] jump 2; conv [-1 - 2, 2 + 1*2] = [-3, 4]
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.MaxPool2d(2), nn.Conv2d(4, 4, 3, padding=1))
    check(receptive_field(net, "2", (20, 20)), (8, 8), (2, 2), (0.5, 0.5))


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
def test_dilation_and_same_padding():
    # a 3x3 kernel with dilation 2 spans (3 - 1) * 2 + 1 = 5 pixels; after a plain 3x3: 3 + 4 = 7
    check(receptive_field(nn.Sequential(nn.Conv2d(3, 4, 3, dilation=2)), "0", (16, 16)), (5, 5), (1, 1), (2, 2))
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, dilation=2, padding="same"))
    check(receptive_field(net, "1", (16, 16)), (7, 7), (1, 1), (0, 0))
    # PyTorch "same" with an even kernel: total padding 1, none before -> unit 0 reads pixels 0..1
    rf = receptive_field(nn.Sequential(nn.Conv2d(3, 4, (2, 4), padding="same")), "0", (8, 8))
    check(rf, (2, 4), (1, 1), (0.5, 0.5))
    assert rf.box(0, 0) == (0, 0, 2, 3)


def test_tensorflow_same_padding_stride_2():
    # 8 pixels, k3 s2: padding (ceil(8/2) - 1) * 2 + 3 - 8 = 1, all of it after -> unit 0 reads 0..2 (centre 1),
    # unit 3 reads 6..8 where 8 is padding (clipped)
    conv = Conv2dSame(3, 4, 3, 2)
    rf = receptive_field(nn.Sequential(conv), "0", (8, 8))
    check(rf, (3, 3), (2, 2), (1, 1))
    assert rf.map_size == (4, 4) and rf.box(0, 0) == (0, 0, 3, 3) and rf.box(3, 3) == (6, 6, 8, 8)
    # 9 pixels: padding (5 - 1) * 2 + 3 - 9 = 2, one before -> unit 0 reads -1..1 (centre 0)
    rf = receptive_field(nn.Sequential(conv), "0", (9, 9))
    check(rf, (3, 3), (2, 2), (0, 0))
    assert rf.box(0, 0) == (0, 0, 2, 2) and rf.box(4, 4) == (7, 7, 9, 9)
    # non-square: 8 x 9 gives each axis its own padding
    rf = receptive_field(nn.Sequential(conv), "0", (8, 9))
    assert rf.offset == (1, 0) and rf.box(0, 0) == (0, 0, 3, 2)


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 3, 3)
        self.conv2 = nn.Conv2d(3, 3, 3)
        self.one = nn.Identity()
        self.two = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        up_left = self.conv1(F.pad(x, (2, 0, 2, 0)))  # pixels [-2, 0] around each unit
        y = self.one(x + F.relu(up_left))  # the skip reads [0, 0]
        down_right = self.conv2(F.pad(x, (0, 2, 0, 2)))  # pixels [0, 2]
        return self.two(y - down_right)


def test_residual_union():
    # union of the skip [0, 0] and the branch [-2, 0]: [-2, 0], size 3, centre -1; the branch field wins
    rf = receptive_field(Residual(), "one", (10, 10))
    check(rf, (3, 3), (1, 1), (-1, -1))
    assert rf.box(0, 0) == (0, 0, 1, 1) and rf.box(5, 5) == (3, 3, 6, 6)
    # with a second branch [0, 2]: [-2, 2], neither branch contains the other
    rf = receptive_field(Residual(), "two", (10, 10))
    check(rf, (5, 5), (1, 1), (0, 0))
    assert rf.box(0, 0) == (0, 0, 3, 3) and rf.box(9, 9) == (7, 7, 10, 10)
    # a ResNet block: two 3x3 convs (5) and a 1x1 strided shortcut (1): the branch wins
    net = build("tiny_resnet")
    check(receptive_field(net, "layer1", (32, 32)), (7, 7), (1, 1), (0, 0))  # stem 3 + 2 + 2
    check(receptive_field(net, "layer2.shortcut", (32, 32)), (7, 7), (2, 2), (0, 0))
    check(receptive_field(net, "layer2", (32, 32)), (13, 13), (2, 2), (0, 0))  # 7 + 2*1 + 2*2 (stride 2)


class Functional(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 3, 2, 1)
        return self.conv2(F.relu(x, inplace=True))


def test_functional_ops():
    # conv p1: [-1, 1]; max_pool k3 s2 p1: [-1 - 1, 1 + 2 - 1] = [-2, 2] jump 2; conv p1: [-4, 4] jump 2
    check(receptive_field(Functional(), "conv2", (16, 16)), (9, 9), (2, 2), (0, 0))
    # TinyFunctionalCNN: conv p1 [-1, 1]; F.max_pool2d(x, 2): [-1, 2] jump 2; conv p1: [-3, 4] -> size 8, centre 0.5
    check(receptive_field(build("tiny_functional_cnn"), "conv2", (32, 32)), (8, 8), (2, 2), (0.5, 0.5))


class SqueezeExcite(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Conv2d(8, 8, 1)
        self.scaled = nn.Identity()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.after = nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x)
        s = torch.sigmoid(self.fc(x.mean((2, 3), keepdim=True)))
        x = self.after(self.scaled(x * s))
        return self.pool(x).flatten(1)


def test_global_pool_broadcast_is_whole():
    net = SqueezeExcite()
    check(receptive_field(net, "conv", (12, 10)), (3, 3), (1, 1), (0, 0))
    for layer in ("scaled", "after", "pool"):
        rf = receptive_field(net, layer, (12, 10))
        assert rf.whole == (True, True) and rf.size == (12, 10) and rf.stride == (0, 0)
        assert rf.box(0, 0) == (0, 0, 12, 10)
    assert receptive_field(net, "after", (12, 10)).box(11, 9) == (0, 0, 12, 10)


class Resample(nn.Module):
    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.conv1 = nn.Conv2d(2, 2, 3, padding=1)
        self.up = nn.ConvTranspose2d(2, 2, 4, stride=2, padding=1)
        self.conv2 = nn.Conv2d(2, 2, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv1(x)
        if self.kind == "adaptive":
            x = F.adaptive_avg_pool2d(x, (6, 4))  # 12 -> 6 (kernel = stride = 2) and 12 -> 4 (3)
        elif self.kind == "transpose":
            x = self.up(x)
        else:
            x = F.interpolate(x, scale_factor=2, mode=self.kind)
        return self.conv2(x)


def test_adaptive_pool_divisible():
    # conv p1 [-1, 1]; adaptive 12 -> 6: kernel = stride 2 -> [-1, 2] jump 2; conv p1 -> [-3, 4]
    # along w, 12 -> 4: kernel = stride 3 -> [-1, 3] jump 3; conv p1 -> [-4, 6]
    check(receptive_field(Resample("adaptive"), "conv2", (12, 12)), (8, 11), (2, 3), (0.5, 1))


@pytest.mark.parametrize("kind", ["nearest", "bilinear", "adaptive", "transpose"])
def test_resampling_contains_the_empirical_field(kind: str):
    net = positive(Resample(kind))
    x = torch.rand(1, 2, 12, 12)
    rf = receptive_field(net, "conv2", (12, 12))
    for unit in [(0, 3, 3), (1, rf.map_size[0] // 2, rf.map_size[1] - 1), (0, 0, 0)]:
        emp = empirical_receptive_field(net, "conv2", x, unit)
        assert emp.box is not None and inside(emp.box, rf.box(*unit[1:])), (kind, unit, emp.box, rf.box(*unit[1:]))


# --- the empirical field against the exact one ----------------------------------------------------------------------

CROSS = [("tiny_cnn", "features"), ("tiny_functional_cnn", "conv2"), ("tiny_resnet", "layer2"),
         ("tiny_vgg", "features"), ("tiny_vgg", "features.3"), ("tiny_resnet", "layer1.conv2")]


@pytest.mark.parametrize(("name", "layer"), CROSS)
def test_empirical_inside_exact(name: str, layer: str):
    net = positive(build(name))
    x = torch.rand(2, 3, 32, 32)
    rf = receptive_field(net, layer, (32, 32))
    emp = empirical_receptive_field(net, layer, x, 1)
    assert isinstance(emp, EmpiricalField) and emp.location == (rf.map_size[0] // 2, rf.map_size[1] // 2)
    assert emp.grad.shape == (32, 32) and emp.box is not None
    assert inside(emp.box, rf.box(*emp.location))
    # random (signed) weights and input: whatever the gradient reaches is still inside
    net, x = build(name, seed=3), torch.randn(1, 3, 32, 32)
    for unit in [(0, 0, 0), (2, 1, rf.map_size[1] - 2)]:
        emp = empirical_receptive_field(net, layer, x, unit)
        assert emp.box is None or inside(emp.box, rf.box(*unit[1:]))


def test_linear_stack_empirical_equals_exact():
    # no rectifier and positive weights: the gradient reaches every pixel of the exact field
    net = positive(nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), Conv2dSame(4, 4, 3, 2), nn.Conv2d(4, 4, 3, dilation=2, padding=2),
        nn.AvgPool2d(2), nn.Conv2d(4, 4, (3, 5), stride=(1, 2)),
    ))
    x = torch.randn(1, 3, 40, 48)
    rf = receptive_field(net, "4", (40, 40 + 8))
    # 3; stride-2 SAME (pad 0 before on 40 and 48): [-1, 3] jump 2; dilated: [-5, 7]; avg 2: [-5, 9] jump 4;
    # (3, 5) conv, stride (1, 2): h [-5, 17] jump 4, w [-5, 25] jump 8
    check(rf, (23, 31), (4, 8), (6, 10))
    for i, j in [(rf.map_size[0] // 2, rf.map_size[1] // 2), (2, 2), (1, 1)]:
        emp = empirical_receptive_field(net, "4", x, (1, i, j))
        assert emp.box == rf.box(i, j) and emp.size == (emp.box[2] - emp.box[0], emp.box[3] - emp.box[1])
    net = positive(build("tiny_cnn"))
    rf = receptive_field(net, "features", (16, 16))
    assert empirical_receptive_field(net, "features", torch.rand(1, 3, 16, 16), (0, 7, 7)).box == rf.box(7, 7)


def test_empirical_threshold_and_zero_gradient():
    net = positive(nn.Sequential(nn.Conv2d(1, 1, 3, padding=1, bias=False), nn.Conv2d(1, 1, 3, padding=1)))
    x = torch.rand(1, 1, 9, 9)
    full = empirical_receptive_field(net, "1", x, 0)
    assert full.location == (4, 4) and full.box == (2, 2, 7, 7) and full.size == (5, 5)
    assert empirical_receptive_field(net, "1", x[0], 0).box == full.box  # a single (C, H, W) image
    peak = empirical_receptive_field(net, "1", x, 0, threshold=0.999)
    assert peak.box is not None and inside(peak.box, full.box) and peak.size[0] < 5
    with torch.no_grad():
        net[1].weight.zero_()
    dead = empirical_receptive_field(net, "1", x, (0, 1, 1))
    assert dead.box is None and dead.size == (0, 0) and float(dead.grad.abs().sum()) == 0


# --- EfficientNet-Lite0 at 224 ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lite0() -> nn.Module:
    from seewhy.zoo import load

    return load("efficientnet_lite0")


def test_efficientnet_lite0(lite0: nn.Module):
    # stem k3 s2, SAME pad (0, 1): [0, 2] jump 2; block0 dw k3 s1 pad (1, 1): [-2, 4]; block1 dw k3 s2 pad (0, 1):
    # [-2, 8] jump 4; block2 dw k3 s1: [-6, 12] (the skip [-2, 8] is inside) -> size 19, stride 4, centre 3
    check(receptive_field(lite0, "_blocks.2"), (19, 19), (4, 4), (3, 3))
    # block3 k5 s2 pad (1, 2): [-10, 24] jump 8; block4 k5 s1: [-26, 40]; block5 k3 s2 pad (0, 1): [-26, 56] jump 16
    rf5 = receptive_field(lite0, "_blocks.5")
    check(rf5, (83, 83), (16, 16), (15, 15))
    # blocks 6-10 (s1: k3, k3, k5, k5, k5 at jump 16): [-154, 184]; block11 k5 s2 pad (1, 2): [-170, 232] jump 32;
    # blocks 12-14 k5: [-362, 424]; block15 k3: [-394, 456]; 1x1 head -> size 851, stride 32, centre 31
    rf = receptive_field(lite0, "_features")
    check(rf, (851, 851), (32, 32), (31, 31))
    assert rf.map_size == (7, 7) and rf.box(3, 3) == (0, 0, 224, 224)
    assert rf5.map_size == (14, 14) and rf5.box(7, 7) == (86, 86, 169, 169)  # [-26 + 7*16, 56 + 7*16]

    from seewhy.images import bundled_image
    from seewhy.zoo import get_spec

    x = get_spec("efficientnet_lite0").preprocess(bundled_image("chelsea"))
    x = x[None] if x.ndim == 3 else x
    for layer, exact in (("_blocks.5", rf5), ("_blocks.2", receptive_field(lite0, "_blocks.2"))):
        emp = empirical_receptive_field(lite0, layer, x, 3)
        assert emp.box is not None and inside(emp.box, exact.box(*emp.location)), (layer, emp.box)
    assert count_hooks(lite0) == 0


# --- errors and side effects ----------------------------------------------------------------------------------------


class Strided(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.head = nn.Conv2d(4, 4, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.conv(x)[..., ::2, ::2])


def test_errors():
    net = build("tiny_cnn")
    with pytest.raises(ValueError, match="unknown layer 'featurez'"):
        receptive_field(net, "featurez", (16, 16))
    with pytest.raises(ValueError, match="non-spatial output"):
        receptive_field(net, "fc", (16, 16))
    net.unused = nn.Conv2d(3, 3, 1)
    with pytest.raises(ValueError, match="not called"):
        receptive_field(net, "unused", (16, 16))
    rf = receptive_field(net, "features", (16, 12))
    assert rf.map_size == (16, 12)
    for i, j in [(16, 0), (0, 12), (-1, 0)]:
        with pytest.raises(IndexError, match="out of range"):
            rf.box(i, j)
    with pytest.raises(ValueError, match=r"__getitem__.*empirical_receptive_field"):
        receptive_field(Strided(), "head", (16, 16))
    assert receptive_field(Strided(), "conv", (16, 16)).size == (3, 3)
    assert empirical_receptive_field(Strided(), "head", torch.rand(1, 3, 16, 16), (0, 2, 2)).box == (4, 4, 7, 7)
    with pytest.raises(ValueError, match="unknown layer"):
        empirical_receptive_field(net, "nope", torch.rand(1, 3, 16, 16), 0)
    with pytest.raises(ValueError, match=r"\(B, C, h, w\)"):
        empirical_receptive_field(net, "fc", torch.rand(1, 3, 16, 16), 0)
    with pytest.raises(IndexError, match="out of range"):
        empirical_receptive_field(net, "features", torch.rand(1, 3, 16, 16), (0, 16, 0))


def test_model_left_unchanged():
    net = build("tiny_resnet")
    net.train()
    net.fc.weight.requires_grad_(False)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    flags = [p.requires_grad for p in net.parameters()]
    receptive_field(net, net.layer2, (32, 32))
    empirical_receptive_field(net, "layer2", torch.randn(2, 3, 32, 32), (0, 3, 4))
    assert count_hooks(net) == 0 and net.training and all(m.training for m in net.modules())
    assert [p.requires_grad for p in net.parameters()] == flags
    assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())  # BN statistics untouched
    assert all(p.grad is None for p in net.parameters())


def test_a_user_written_efficientnet_has_the_same_fields():
    """The "any model" check: a user-style EfficientNet-Lite0 (its own padding module, 'same' convolutions, in-place
    ReLU6 modules, no seewhy helpers) gives the fields of the zoo's, block by block."""
    from conftest import user_efficientnet

    from seewhy import zoo

    user = user_efficientnet().build(pretrained=False).eval()
    ours = zoo.load("efficientnet_lite0", pretrained=False)
    for block in (0, 2, 5, 10, 15):
        mine = receptive_field(ours, f"_blocks.{block}", (224, 224))
        theirs = receptive_field(user, f"blocks.{block}", (224, 224))
        assert (mine.size, mine.stride, mine.offset) == (theirs.size, theirs.stride, theirs.offset), block
        assert mine.box(3, 4) == theirs.box(3, 4)
