"""ProtoPNet's model, loss, schedule, data helpers and box rule against the reference's numbers."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest
import torch
from protopnet_helpers import CONFIG, PREP, new_model, synthetic, write_folder
from torch import nn

from seewhy.hooks import count_hooks
from seewhy.protopnet import (
    Augment,
    LayerTrunk,
    ProtoPNet,
    SmallCNNTrunk,
    TensorImages,
    TrainConfig,
    build_backbone,
    high_activation_box,
    log_similarity,
    protopnet_loss,
    scan_folder,
    schedule,
    stratified_split,
    trunk,
)
from seewhy.protopnet.train import _optimizers, _trainable
from seewhy.zoo.small import TinyFunctionalCNN, TinyResNet


def test_similarity_at_zero_distance_is_log_1e4() -> None:
    s = log_similarity(torch.tensor([0.0, 1.0, 128.0], dtype=torch.float64))
    assert float(s[0]) == pytest.approx(math.log(1e4), abs=1e-9)
    assert float(s[0]) == pytest.approx(9.2103, abs=1e-4)
    assert float(s[2]) == pytest.approx(math.log(129 / 128.0001), abs=1e-9)  # 0.00778 at d = D = 128
    assert bool((s[1:] < s[:-1]).all())  # decreasing in d


def test_distances_match_brute_force_and_are_non_negative() -> None:
    model = new_model()
    g = torch.Generator().manual_seed(0)
    z = torch.rand(2, 16, 4, 5, generator=g)
    d = model.l2_distances(z)
    p = model.prototype_vectors.detach()[:, :, 0, 0]  # (P, D)
    brute = ((z[:, None] - p[None, :, :, None, None]) ** 2).sum(2)
    torch.testing.assert_close(d.detach(), brute, atol=1e-4, rtol=0)
    assert bool((d >= 0).all())


def test_last_layer_initialisation_and_logits_at_init() -> None:
    model = ProtoPNet(SmallCNNTrunk(width=4), 200, prototypes_per_class=10, prototype_dim=8)
    w = model.last_layer.weight.detach()
    assert w.shape == (200, 2000) and model.last_layer.bias is None
    assert int((w == 1).sum()) == 2000 and int((w == -0.5).sum()) == 2000 * 199
    cls = torch.arange(2000) // 10
    assert torch.equal(w.argmax(0), cls) and torch.equal(model.prototype_classes, cls)
    assert torch.equal(model.prototype_class_identity.sum(0), torch.full((200,), 10.0))
    small = new_model()
    x = torch.randn(2, 3, 32, 32)
    logits, min_d = small.eval()(x, return_distances=True)
    sims = log_similarity(min_d)
    own = torch.stack([sims[:, 2 * c:2 * c + 2].sum(1) for c in range(3)], 1)
    torch.testing.assert_close(logits, own - 0.5 * (sims.sum(1, keepdim=True) - own))


def test_forward_returns_logits_by_default() -> None:
    model = new_model().eval()
    x = torch.randn(3, 3, 32, 32)
    logits = model(x)
    assert logits.shape == (3, 3)
    logits2, min_d = model(x, return_distances=True)
    assert torch.equal(logits, logits2) and min_d.shape == (3, 6)
    with torch.no_grad():
        z, d = model.prototype_distances(x)
    assert z.shape == (3, 16, 4, 4) and d.shape == (3, 6, 4, 4)
    assert float(z.min()) >= 0 and float(z.max()) <= 1  # sigmoid add-on
    torch.testing.assert_close(min_d, d.flatten(2).amin(2))


@pytest.mark.parametrize(("factory", "layer"), [(TinyFunctionalCNN, "conv2"), (TinyResNet, "layer2")])
def test_layer_trunk_cuts_any_model_and_leaves_no_hook(factory: type[nn.Module], layer: str) -> None:
    torch.manual_seed(0)
    net = factory().eval()
    model = ProtoPNet(trunk(net, layer), 10, prototypes_per_class=1, prototype_dim=8).eval()
    x = torch.randn(2, 3, 32, 32)
    assert model(x).shape == (2, 10)
    assert count_hooks(model) == 0
    acts = {}

    def keep(module: nn.Module, args: tuple, out: torch.Tensor) -> None:
        acts["o"] = out.clone()  # before the in-place ReLU that may follow

    handle = net.get_submodule(layer).register_forward_hook(keep)
    net(x)
    handle.remove()
    torch.testing.assert_close(model.features(x), acts["o"])
    with pytest.raises(ValueError, match="unknown layer"):
        LayerTrunk(net, "nope")


def test_backbones() -> None:
    feats, prep = build_backbone("efficientnet_lite0", pretrained=False)
    assert prep.image_size == 224
    assert ProtoPNet(feats, 4, prototypes_per_class=1, prototype_dim=8).feature_channels == 1280
    feats, prep = build_backbone("tiny_cnn")
    assert prep.image_size == 32 and isinstance(feats, LayerTrunk)
    with pytest.raises(ValueError, match="unknown backbone 'resnet9000'"):
        build_backbone("resnet9000")


def test_bad_arguments_are_clear() -> None:
    with pytest.raises(TypeError, match="nn.Module"):
        ProtoPNet("vgg", 3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="class_names"):
        ProtoPNet(SmallCNNTrunk(), 3, class_names=["a", "b"])
    with pytest.raises(ValueError, match=r"\(B, C, h, w\) feature map"):
        ProtoPNet(nn.Sequential(nn.Flatten(), nn.LazyLinear(4)), 3)
    with pytest.raises(ValueError, match="prototypes_per_class"):
        ProtoPNet(SmallCNNTrunk(), 3, prototypes_per_class=0)


def test_loss_terms() -> None:
    model = new_model()
    labels = torch.tensor([0, 2])
    equal = torch.full((2, 6), 3.0)
    _, terms = protopnet_loss(model, torch.zeros(2, 3), equal, labels, CONFIG)
    assert terms["cluster"] == terms["separation"] == 3.0  # all prototypes equidistant
    d = torch.arange(12.0).view(2, 6)
    _, terms = protopnet_loss(model, torch.zeros(2, 3), d, labels, CONFIG)
    assert terms["cluster"] == pytest.approx((0 + 10) / 2)  # own: sample 0 -> protos 0,1; sample 1 -> 4,5
    assert terms["separation"] == pytest.approx((2 + 6) / 2)
    assert terms["l1"] == pytest.approx(0.5 * 6 * 2)  # only the wrong-class weights: 6 prototypes x 2 classes
    big = ProtoPNet(SmallCNNTrunk(width=4), 200, prototypes_per_class=10, prototype_dim=8)
    mask = 1 - big.prototype_class_identity.t()
    assert int((mask == 0).sum()) == 2000


def test_optimizer_groups_and_trainable_parts() -> None:
    model = new_model()
    opt = _optimizers(model, CONFIG)
    ids = lambda params: {id(p) for p in params}  # noqa: E731
    warm = ids(p for g in opt["warm"].param_groups for p in g["params"])
    assert not warm & ids(model.features.parameters()) and not warm & ids(model.last_layer.parameters())
    assert ids(p for g in opt["last"].param_groups for p in g["params"]) == ids(model.last_layer.parameters())
    joint_lrs = [g["lr"] for g in opt["joint"].param_groups]
    assert joint_lrs == [CONFIG.lr_features, CONFIG.lr_add_on, CONFIG.lr_prototypes]
    _trainable(model, "last")
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {"last_layer.weight"}
    _trainable(model, "warm")
    assert not any(p.requires_grad for p in model.features.parameters())


def test_schedule_defaults() -> None:
    stages = schedule(TrainConfig(epochs=25))
    pushes = [s.epoch for s in stages if s.phase == "push"]
    assert pushes == [10, 20, 24]  # the paper's push epochs, and always after the last epoch
    assert sum(s.phase == "last" for s in stages) == 3 * 20
    assert [s.phase for s in stages[:6]] == ["warm"] * 5 + ["joint"]
    i = stages.index(next(s for s in stages if s.phase == "push"))
    assert stages[i - 1].phase == "joint" and stages[i + 1].phase == "last"


def test_high_activation_box_matches_the_reference_cases() -> None:
    block = torch.zeros(224, 224)
    block[100:160, 50:110] = 1
    assert high_activation_box(block) == (100, 160, 50, 110)
    yy, xx = torch.meshgrid(torch.arange(224.0), torch.arange(224.0), indexing="ij")
    gauss = torch.exp(-((yy - 112) ** 2 + (xx - 80) ** 2) / (2 * 20.0**2))
    assert high_activation_box(gauss) == (84, 141, 52, 109)
    small = torch.zeros(224, 224)
    small[10:30, 10:30] = 1  # under 5% of the pixels: the percentile is 0, so everything passes
    assert high_activation_box(small) == (0, 224, 0, 224)


def test_augment_is_seeded_and_keeps_range() -> None:
    x = torch.rand(4, 3, 32, 32)
    aug = Augment(translate=0.1, scale=(0.9, 1.1))
    a = aug(x, torch.Generator().manual_seed(3))
    b = aug(x, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and not torch.equal(a, x)
    assert float(a.min()) >= 0 and float(a.max()) <= 1
    assert torch.equal(Augment(0, 0, 0)(x, torch.Generator()), x)
    flip = Augment(flip=1.0, rotate=0, shear=0)(x, torch.Generator())
    torch.testing.assert_close(flip, x.flip(-1), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="probability"):
        Augment(flip=2.0)


def test_stratified_split() -> None:
    labels = torch.tensor([0] * 10 + [1] * 20 + [2] * 2)
    keep, held = stratified_split(labels, 0.2, seed=1)
    assert sorted(torch.cat([keep, held]).tolist()) == list(range(32))
    assert torch.bincount(labels[held]).tolist() == [2, 4, 1]
    assert torch.equal(held, stratified_split(labels, 0.2, seed=1)[1])
    assert not torch.equal(held, stratified_split(labels, 0.2, seed=2)[1])
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        stratified_split(labels, 1.0)


def test_tensor_images() -> None:
    data, corners = synthetic(2, seed=0)
    assert len(data) == 6 and data.load([0, 5]).shape == (2, 3, 32, 32) and corners.shape == (6, 2)
    assert data.image(0).dtype.name == "uint8" and data.image(0).shape == (32, 32, 3)
    gray = TensorImages(torch.zeros(2, 1, 8, 8, dtype=torch.uint8), [0, 1])
    assert gray.load([0]).shape == (1, 3, 8, 8)
    with pytest.raises(ValueError, match="normalisation"):
        TensorImages(torch.full((1, 3, 4, 4), -1.0), [0])
    assert PREP.image_size == 32


def test_scan_folder_skips_hidden_files_and_folders(tmp_path: Path) -> None:
    root = write_folder(tmp_path / "data", n_per_class=2)
    (root / "plus" / "nested").mkdir()
    shutil.copy(root / "plus" / "000.png", root / "plus" / "nested" / "a.png")  # nested folders are searched
    for hidden in ("plus/.ipynb_checkpoints/000-checkpoint.png", "ring/deep/.cache/b.png", "x/.c.png",
                   ".trash/plus/d.png"):
        (root / hidden).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(root / "plus" / "000.png", root / hidden)
    classes, files, labels = scan_folder(root)
    assert classes == ["plus", "ring", "x"]
    assert files == ["plus/000.png", "plus/001.png", "plus/nested/a.png", "ring/002.png", "ring/003.png",
                     "x/004.png", "x/005.png"]
    assert labels == [0, 0, 0, 1, 1, 2, 2]
