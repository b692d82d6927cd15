"""ProtoPNet runs from an image folder: ``train_folder`` (split, backbone chosen from the data, training with
checkpoints in a run directory, resumable) and ``load_run`` (a trained run back as a model, its preprocessing and
its training images). The training itself is :func:`seewhy.protopnet.train.train`; the run directory's files are
described there."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import Tensor, nn

from .. import images as _images
from ..fileio import load_checkpoint, read_json, write_json
from ..report_files import prepare_out_dir
from .data import FolderImages, median_short_side, scan_folder, stratified_split
from .model import AUTO, Preprocessing, ProtoPNet, auto_backbone, build_backbone
from .train import RUN_FILES, RUN_FORMAT, TrainConfig, TrainResult, log, train

__all__ = ["Run", "load_run", "train_folder"]

def _build(backbone: Mapping[str, Any], model_cfg: Mapping[str, Any], pretrained: bool,
           features: nn.Module | None = None) -> tuple[ProtoPNet, Preprocessing]:
    if features is None:
        if backbone.get("name") is None:
            raise ValueError("this run was trained with a custom trunk: pass features=<the trunk module> to "
                             "load_run")
        features, prep = build_backbone(backbone["name"], pretrained=pretrained, layer=backbone.get("layer"))
    else:
        prep = None
    cfg = dict(model_cfg)
    model = ProtoPNet(features, cfg.pop("num_classes"), **cfg)
    return model, prep  # type: ignore[return-value]


def train_folder(
    data_dir: str | os.PathLike,
    run_dir: str | os.PathLike,
    *,
    backbone: str | None = None,
    pretrained: bool = True,
    trunk_layer: str | None = None,
    image_size: int | None = None,
    prototypes_per_class: int = 10,
    prototype_dim: int = 128,
    val_fraction: float = 0.1,
    config: TrainConfig | None = None,
    resume: bool = False,
    overwrite: bool = False,
    device: str | torch.device = "cpu",
    progress: bool = True,
    max_stages: int | None = None,
) -> TrainResult:
    """Train a ProtoPNet on an ImageFolder-style directory (one sub-folder of images per class) into ``run_dir``.

    A stratified ``val_fraction`` of each class is held out for validation (seeded by ``config.seed``).
    ``backbone`` None or ``"auto"`` chooses from the data (:func:`seewhy.protopnet.auto_backbone`): ``small_cnn``
    at 32 px when the median shorter side of the images is at most 64 px, else ``efficientnet_lite0``
    (pretrained) at 224 px. With ``resume`` every setting comes from ``run_dir/config.json`` and the split from
    ``split.json`` (the arguments but ``data_dir``, ``device`` and ``progress`` are ignored; the run keeps its
    saved backbone).

    Raises:
        ValueError: a bad data directory (missing, empty class folder, unreadable images), bad settings.
        FileExistsError: ``run_dir`` is not empty and neither ``resume`` nor ``overwrite`` is set.
    """
    out = Path(run_dir)
    device = torch.device(device)
    if resume and (out / "config.json").is_file():
        setup = _resumed_setup(out, data_dir, backbone)
    else:
        if resume:
            log.warning("nothing to resume in %s (no config.json): starting a new run", out)
        setup = _new_setup(out, data_dir, backbone, pretrained, trunk_layer, val_fraction, config or TrainConfig(),
                           overwrite)
    config, prep, classes = setup.config, setup.prep, setup.split["classes"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        if setup.model_cfg is None:
            features, prep = build_backbone(setup.backbone, pretrained=pretrained, layer=trunk_layer)
            if image_size is not None:
                prep = dataclasses.replace(prep, image_size=int(image_size))
            model = ProtoPNet(features, len(classes), prototypes_per_class=prototypes_per_class,
                              prototype_dim=prototype_dim, class_names=classes)
            log.info("backbone: %s, %s%s", setup.backbone, _weights(setup.backbone, pretrained),
                     f" (chosen automatically: {setup.why}; pass --backbone / backbone= to choose)" if setup.why
                     else "")
        else:  # the weights come from last.pt; without it (stopped in the first stage) start as the run did
            fresh = not (out / "last.pt").is_file()
            rec = setup.record["backbone"]
            model, _ = _build(rec, setup.model_cfg, pretrained=fresh and bool(rec.get("pretrained")))
    model.to(device)
    train_data, val_data = (FolderImages(data_dir, setup.split[part]["files"], setup.split[part]["labels"], classes,
                                         prep.image_size, progress=progress) for part in ("train", "val"))
    out.mkdir(parents=True, exist_ok=True)
    write_json(setup.split, out / "split.json")
    return train(model, train_data, val_data, prep, config, run_dir=out, resume=resume, record=setup.record,
                 progress=progress, max_stages=max_stages)


@dataclass
class _Setup:
    """A folder run before its model exists: the training settings, the split (``{"classes", "train": {"files",
    "labels"}, "val": ...}``), the record for config.json, and the backbone (a resumed run: its saved model config
    and preprocessing; a new one: the backbone's name and why it was chosen)."""

    config: TrainConfig
    split: dict[str, Any]
    record: dict[str, Any]
    backbone: str | None = None
    why: str = ""
    model_cfg: dict[str, Any] | None = None
    prep: Preprocessing | None = None


def _resumed_setup(out: Path, data_dir: str | os.PathLike, backbone: str | None) -> _Setup:
    """The settings, split and backbone saved in a run directory (``data_dir`` is where the data is now)."""
    saved = read_json(out / "config.json")
    if saved.get("seewhy_protopnet_run") != RUN_FORMAT:
        raise ValueError(f"{str(out / 'config.json')!r} is not a seewhy ProtoPNet run config")
    split = read_json(out / "split.json")
    prep = Preprocessing(**{k: tuple(v) if isinstance(v, list) else v for k, v in saved["preprocessing"].items()})
    record = {k: saved[k] for k in ("backbone", "data")}
    record["data"] = {**record["data"], "root": str(Path(data_dir).resolve())}
    name = (saved["backbone"] or {}).get("name") or "a custom trunk"
    if backbone not in (None, AUTO, name):
        log.warning("backbone %r ignored: the resumed run keeps its saved backbone %s", backbone, name)
    log.info("backbone: %s (saved with the run)", name)
    return _Setup(TrainConfig(**saved["train"]), split, record, model_cfg=saved["model"], prep=prep)


def _new_setup(out: Path, data_dir: str | os.PathLike, backbone: str | None, pretrained: bool,
               trunk_layer: str | None, val_fraction: float, config: TrainConfig, overwrite: bool) -> _Setup:
    """A new run: ``out`` emptied of an old run's files, the data scanned and split, the backbone chosen."""
    prepare_out_dir(out, overwrite=overwrite, create=False)
    classes, files, labels = scan_folder(data_dir)
    for name in RUN_FILES:  # an overwritten run must not keep the old checkpoints
        (out / name).unlink(missing_ok=True)
    keep, held = stratified_split(labels, val_fraction, config.seed)
    split = {"classes": classes,
             "train": {"files": [files[i] for i in keep.tolist()], "labels": [labels[i] for i in keep.tolist()]},
             "val": {"files": [files[i] for i in held.tolist()], "labels": [labels[i] for i in held.tolist()]}}
    name, why = _choose_backbone(backbone, data_dir, files, trunk_layer)
    backbone_rec = {"name": name, "pretrained": pretrained, "layer": trunk_layer}
    if why:
        backbone_rec["chosen"] = why
    record = {"backbone": backbone_rec,
              "data": {"root": str(Path(data_dir).resolve()), "val_fraction": val_fraction, "classes": classes,
                       "n_train": len(split["train"]["files"]), "n_val": len(split["val"]["files"])}}
    return _Setup(config, split, record, backbone=name, why=why)


def _choose_backbone(backbone: str | None, data_dir: str | os.PathLike, files: list[str],
                     trunk_layer: str | None) -> tuple[str, str]:
    """``(name, why)``: ``backbone`` itself (why empty), or the automatic choice from the images' sizes."""
    if backbone not in (None, AUTO):
        if not isinstance(backbone, str) or not backbone:
            raise ValueError(f"backbone must be a name or a model spec (or None / 'auto'), got {backbone!r}")
        return backbone, ""
    if trunk_layer is not None:
        raise ValueError(f"trunk layer {trunk_layer!r} given without a backbone: name the backbone it belongs to "
                         "(--backbone NAME / backbone=...), or drop the trunk layer")
    return auto_backbone(median_short_side(data_dir, files), len(files))


def _weights(name: str, pretrained: bool) -> str:
    """How the trunk ``name`` starts, in words."""
    from .. import zoo

    if name in zoo.MODELS:
        return "pretrained" if pretrained and zoo.get_spec(name).has_weights else "random initial weights"
    return "random initial weights" if name == "small_cnn" else "weights as the model spec loads them"


@dataclass
class Run:
    """A trained run loaded from its directory: the model (eval mode), its preprocessing and records."""

    model: ProtoPNet
    prep: Preprocessing
    config: dict[str, Any]
    run_dir: Path
    checkpoint: str
    best: dict[str, Any] | None = None
    split: dict[str, Any] | None = None

    @property
    def percentile(self) -> float:
        """The percentile of the similarity map that bounds the boxes (the run's setting, 95 by default)."""
        return float(self.config.get("train", {}).get("percentile", 95.0))

    @property
    def data_root(self) -> Path | None:
        root = self.config.get("data", {}).get("root")
        return Path(root) if root else None

    def preprocess(self, image: Image.Image) -> Tensor:
        """A PIL/uint8 image -> the model's float (3, S, S) input."""
        s = self.prep.image_size
        return _images.preprocess(image, resize=s, crop=s, mean=self.prep.mean, std=self.prep.std)

    def train_set(self, data_dir: str | os.PathLike | None = None, *, preload: bool = False) -> FolderImages:
        """The training split (the push set), read from ``data_dir`` (default: the directory trained on).

        Raises:
            ValueError: the run has no recorded split, or the data directory or its files are missing.
        """
        if self.split is None:
            raise ValueError(f"run {str(self.run_dir)!r} has no split.json: it was not trained from an image "
                             "folder, so its training images are unknown")
        root = Path(data_dir) if data_dir is not None else self.data_root
        if root is None or not root.is_dir():
            raise ValueError(f"the training data directory {str(root)!r} of run {str(self.run_dir)!r} is missing; "
                             "pass the directory it was trained on (--data DIR)")
        files = self.split["train"]["files"]
        gone = [f for f in files[:1000] if not (root / f).is_file()]
        if gone:
            raise ValueError(f"{len(gone)} training file(s) of the run are missing under {str(root)!r} "
                             f"(e.g. {gone[0]!r}); pass the directory the run was trained on (--data DIR)")
        return FolderImages(root, files, self.split["train"]["labels"], self.split["classes"],
                            self.prep.image_size, preload=preload)


def load_run(run_dir: str | os.PathLike, checkpoint: str = "best", *, device: str | torch.device = "cpu",
             features: nn.Module | None = None) -> Run:
    """Load a run written by :func:`train_folder` (or :func:`train` with ``run_dir``).

    Args:
        checkpoint: ``"best"`` (the pushed model with the best validation accuracy) or ``"last"``.
        features: the trunk module, for runs trained with a custom trunk.

    Raises:
        ValueError: no run at ``run_dir``, an unknown or missing checkpoint, a checkpoint that does not fit.
    """
    path = Path(run_dir)
    if not (path / "config.json").is_file():
        what = "does not exist" if not path.exists() else "has no config.json"
        raise ValueError(f"no ProtoPNet run at {str(path)!r}: the folder {what}; train one with "
                         "`seewhy protopnet train DATA_DIR --out RUN_DIR`")
    if checkpoint not in ("best", "last"):
        raise ValueError(f"checkpoint must be 'best' or 'last', got {checkpoint!r}")
    config = read_json(path / "config.json")
    if config.get("seewhy_protopnet_run") != RUN_FORMAT:
        raise ValueError(f"{str(path / 'config.json')!r} is not a seewhy ProtoPNet run config")
    with torch.random.fork_rng(devices=[]):
        model, prep = _build(config.get("backbone") or {}, config["model"], pretrained=False, features=features)
    saved_prep = config.get("preprocessing")
    if saved_prep:
        prep = Preprocessing(int(saved_prep["image_size"]), tuple(saved_prep["mean"]), tuple(saved_prep["std"]))
    file = path / f"{checkpoint}.pt"
    if not file.is_file():
        raise ValueError(f"run {str(path)!r} has no {checkpoint}.pt yet (a run saves best.pt after its first push); "
                         "use --checkpoint last or train longer")
    state = load_checkpoint(file, "cpu")
    if checkpoint == "last":
        state = state["model"]
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise ValueError(f"checkpoint {str(file)!r} does not fit the model in config.json: {err}") from err
    model.to(device).eval()
    best = read_json(path / "best.json") if (path / "best.json").is_file() else None
    split = read_json(path / "split.json") if (path / "split.json").is_file() else None
    return Run(model=model, prep=prep, config=config, run_dir=path, checkpoint=checkpoint, best=best, split=split)

