"""Training ProtoPNet: losses, the warm-up / joint / push / last-layer schedule, checkpoints and runs.

Chen et al., NeurIPS 2019 (defaults from the reference code's settings.py):

    loss = CE + 0.8 Clst - 0.08 Sep + 1e-4 ||W * (1 - identity^T)||_1
    Clst = mean_i min_{j in class(y_i)} d_min[i, j]      Sep = mean_i min_{j not in class(y_i)} d_min[i, j]

Schedule: epochs ``0 .. warm_epochs-1`` train the add-on layers and prototypes (backbone frozen); later
epochs train backbone, add-on and prototypes with separate learning rates (StepLR stepped after each
joint epoch). After epoch ``e >= push_start`` with ``(e - push_start) % push_every == 0``, and always
after the last epoch, the prototypes are pushed and the last layer alone is trained for
``last_layer_epochs`` epochs (the trunk in eval mode, so the pushed prototypes stay exact training patches).
The trunk is also in eval mode during warm-up (its weights are frozen: its BatchNorm statistics stay, no
dropout or drop-connect). A warm-up or joint epoch moves the prototypes away from their source patches, so it
clears the source records (``prototype_image`` etc. back to -1: not pushed) until the next push.

A run directory holds ``config.json`` (everything needed to rebuild the model), ``split.json`` (the
train/validation files, for folder runs), ``last.pt`` (the training state after the latest stage, to
resume), ``best.pt`` (the pushed model with the best validation accuracy; never chosen on a test set)
with ``best.json``, and ``history.json``. Checkpoints are state dicts loadable with
``torch.load(..., weights_only=True)``; every file is written atomically, ``history.json`` before
``last.pt`` (a resume drops history entries after the stage of ``last.pt``). Randomness (initialisation,
split, shuffling, augmentation, and the trunk's own draws from torch's global generator such as dropout or
drop-connect) comes from ``seed``: each stage draws from its own generators, the global one forked and seeded
per stage (the caller's global RNG state is left as it was), so a run does not depend on the global RNG state
before it and a resumed run ends bit-identical to an uninterrupted one (on the CPU).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import os
import pickle
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..fileio import load_checkpoint, read_json
from ..fileio import save_checkpoint as _save  # module-level names: the crash tests replace them
from ..fileio import write_json as write_json_file
from ..hooks import model_state
from .data import Augment, ImageSet
from .explain import batches, normalize
from .model import Preprocessing, ProtoPNet
from .push import push_prototypes

__all__ = [
    "Stage",
    "TrainConfig",
    "TrainResult",
    "evaluate",
    "protopnet_loss",
    "schedule",
    "train",
]

log = logging.getLogger("seewhy")
RUN_FORMAT = 1
RUN_FILES = ("config.json", "split.json", "last.pt", "best.pt", "best.json", "history.json")


@dataclass(frozen=True)
class TrainConfig:
    """Schedule, optimisers and loss weights (the reference's defaults, except ``epochs``: the reference
    runs 1000 epochs, i.e. until stopped).

    ``augment`` is applied to training batches only (never to the push set nor to validation).
    """

    epochs: int = 30
    warm_epochs: int = 5
    push_start: int = 10
    push_every: int = 10
    last_layer_epochs: int = 20
    batch_size: int = 80
    push_batch_size: int = 75
    eval_batch_size: int = 100
    lr_features: float = 1e-4
    lr_add_on: float = 3e-3
    lr_prototypes: float = 3e-3
    lr_warm_add_on: float = 3e-3
    lr_warm_prototypes: float = 3e-3
    lr_last_layer: float = 1e-4
    weight_decay: float = 1e-3
    lr_step: int = 5
    lr_gamma: float = 0.1
    cross_entropy: float = 1.0
    cluster: float = 0.8
    separation: float = -0.08
    l1: float = 1e-4
    percentile: float = 95.0
    seed: int = 0
    augment: Augment = field(default_factory=Augment)

    def __post_init__(self) -> None:
        if isinstance(self.augment, Mapping):
            aug = dict(self.augment)
            if "scale" in aug:
                aug["scale"] = tuple(aug["scale"])
            object.__setattr__(self, "augment", Augment(**aug))
        for key in ("epochs", "batch_size", "push_batch_size", "eval_batch_size", "push_every", "lr_step"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{key} must be a positive int, got {value!r}")
        for key in ("warm_epochs", "push_start", "last_layer_epochs", "seed"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{key} must be an int >= 0, got {value!r}")

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["augment"]["scale"] = list(out["augment"]["scale"])
        return out


@dataclass(frozen=True)
class Stage:
    """One step of the schedule: ``phase`` is warm, joint, push or last; ``epoch`` the training epoch it
    belongs to; ``step`` the last-layer epoch after a push."""

    phase: str
    epoch: int
    step: int = 0

    def __str__(self) -> str:
        if self.phase == "last":
            return f"epoch {self.epoch} last-layer {self.step + 1}"
        return f"epoch {self.epoch} {self.phase}"


def schedule(config: TrainConfig) -> list[Stage]:
    """The stages of a run, in order (see the module docstring)."""
    stages = []
    for e in range(config.epochs):
        stages.append(Stage("warm" if e < config.warm_epochs else "joint", e))
        if (e >= config.push_start and (e - config.push_start) % config.push_every == 0) or e == config.epochs - 1:
            stages.append(Stage("push", e))
            stages += [Stage("last", e, i) for i in range(config.last_layer_epochs)]
    return stages


def protopnet_loss(model: ProtoPNet, logits: Tensor, min_distances: Tensor, labels: Tensor,
                   config: TrainConfig) -> tuple[Tensor, dict[str, float]]:
    """``CE + cluster * Clst + separation * Sep + l1 * L1`` (coefficients from ``config``); returns the loss
    and its terms. The masked minima are taken directly (the reference's ``max_dist - max(...)`` trick
    is the same while distances stay below D)."""
    own = model.prototype_class_identity[:, labels].t().bool()  # (B, P)
    ce = F.cross_entropy(logits, labels)
    inf = torch.finfo(min_distances.dtype).max
    clst = min_distances.masked_fill(~own, inf).amin(1).mean()
    sep = min_distances.masked_fill(own, inf).amin(1).mean()
    l1 = (model.last_layer.weight * (1 - model.prototype_class_identity.t())).abs().sum()
    loss = config.cross_entropy * ce + config.cluster * clst + config.separation * sep + config.l1 * l1
    terms = {k: float(v.detach()) for k, v in (("cross_entropy", ce), ("cluster", clst), ("separation", sep),
                                                ("l1", l1))}
    return loss, terms


def evaluate(model: nn.Module, data: ImageSet, prep: Preprocessing, *, batch_size: int = 100) -> dict[str, float]:
    """Accuracy and mean cross-entropy of ``model`` on ``data`` (eval mode, no gradients; flags restored)."""
    if len(data) == 0:
        return {"accuracy": float("nan"), "loss": float("nan"), "n": 0}
    device = next(model.parameters()).device
    correct, total_loss = 0, 0.0
    with torch.inference_mode(False), model_state(model, freeze=False), torch.no_grad():
        for idx, x in batches(data, None, batch_size):
            y = data.labels[idx].to(device)
            logits = model(normalize(x.to(device), prep))
            correct += int((logits.argmax(1) == y).sum())
            total_loss += float(F.cross_entropy(logits, y, reduction="sum"))
    return {"accuracy": correct / len(data), "loss": total_loss / len(data), "n": len(data)}


@dataclass
class TrainResult:
    """The history (one record per stage), the best stage and its model state (CPU), the wall time."""

    history: list[dict[str, Any]]
    best: dict[str, Any] | None
    best_state: dict[str, Tensor] | None
    seconds: float


def _optimizers(model: ProtoPNet, c: TrainConfig) -> dict[str, Any]:
    add_on = list(model.add_on_layers.parameters())
    protos = [model.prototype_vectors]
    warm = torch.optim.Adam([
        {"params": add_on, "lr": c.lr_warm_add_on, "weight_decay": c.weight_decay},
        {"params": protos, "lr": c.lr_warm_prototypes},
    ])
    joint = torch.optim.Adam([
        {"params": list(model.features.parameters()), "lr": c.lr_features, "weight_decay": c.weight_decay},
        {"params": add_on, "lr": c.lr_add_on, "weight_decay": c.weight_decay},
        {"params": protos, "lr": c.lr_prototypes},
    ])
    last = torch.optim.Adam([{"params": list(model.last_layer.parameters()), "lr": c.lr_last_layer}])
    sched = torch.optim.lr_scheduler.StepLR(joint, step_size=c.lr_step, gamma=c.lr_gamma)
    return {"warm": warm, "joint": joint, "last": last, "scheduler": sched}


def _trainable(model: ProtoPNet, phase: str) -> None:
    parts = {"warm": ("add_on_layers", "prototype_vectors"),
             "joint": ("features", "add_on_layers", "prototype_vectors"),
             "last": ("last_layer",)}[phase]
    for name, p in model.named_parameters():
        p.requires_grad_(name.split(".", 1)[0] in parts)


def _epoch(model: ProtoPNet, data: ImageSet, prep: Preprocessing, phase: str, optimizer: torch.optim.Optimizer,
           config: TrainConfig, generator: torch.Generator, progress: bool, desc: str) -> dict[str, float]:
    from ..progress import track

    device = model.prototype_vectors.device
    _trainable(model, phase)
    model.train()
    if phase != "joint":  # the trunk is frozen: keep its BatchNorm statistics, no dropout / drop-connect
        model.features.eval()
    if phase == "last":  # and the add-on too, so pushed patches stay exact
        model.add_on_layers.eval()
    order = torch.randperm(len(data), generator=generator)
    sums: dict[str, float] = {}
    correct, n = 0, 0
    for idx, x in track(batches(data, order, config.batch_size), -(-len(data) // config.batch_size), desc, "batches",
                        enabled=progress):
        x = normalize(config.augment(x, generator).to(device), prep)
        y = data.labels[idx].to(device)
        if phase == "last":
            with torch.no_grad():
                _, d = model.prototype_distances(x)
                min_d = d.flatten(2).amin(2)
            logits = model.last_layer(model.similarity(min_d))
        else:
            logits, min_d = model(x, return_distances=True)
        loss, terms = protopnet_loss(model, logits, min_d, y, config)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        b = int(y.shape[0])
        for k, v in {"loss": float(loss.detach()), **terms}.items():
            sums[k] = sums.get(k, 0.0) + v * b
        correct += int((logits.detach().argmax(1) == y).sum())
        n += b
    return {**{k: v / max(n, 1) for k, v in sums.items()}, "accuracy": correct / max(n, 1)}


def _stage_seed(seed: int, stage: int, salt: int = 12345) -> int:
    return (int(seed) * 1_000_003 + stage * 7919 + salt) % (2**63)


def _stage_generator(seed: int, stage: int) -> torch.Generator:
    return torch.Generator().manual_seed(_stage_seed(seed, stage))


@contextlib.contextmanager
def _seeded_global_rng(seed: int, device: torch.device) -> Iterator[None]:
    """torch's global generators (the CPU's and ``device``'s) seeded with ``seed`` inside, and restored to the
    caller's state on exit: what a trunk draws from them (dropout, drop-connect) is then reproducible."""
    mod = getattr(torch, device.type, None) if device.type != "cpu" else None
    if mod is None or not callable(getattr(mod, "get_rng_state", None)):
        devices, kind = [], "cuda"
    else:
        index = device.index if device.index is not None else (mod.current_device() if device.type == "cuda" else 0)
        devices, kind = [index], device.type
    with torch.random.fork_rng(devices=devices, device_type=kind):
        torch.random.default_generator.manual_seed(seed)
        if devices and kind == "cuda":
            torch.cuda.default_generators[devices[0]].manual_seed(seed)
        elif devices:
            mod.manual_seed(seed)  # type: ignore[union-attr]  # mps, xpu...: one generator per process
        yield


def _better(val: Mapping[str, float], best: Mapping[str, Any] | None) -> bool:
    if best is None:
        return True
    acc, b_acc = val["accuracy"], best["val_accuracy"]
    if acc != acc:  # no validation split: the latest pushed model
        return True
    return acc > b_acc or (acc == b_acc and val["loss"] < best["val_loss"])


def train(
    model: ProtoPNet,
    train_data: ImageSet,
    val_data: ImageSet,
    prep: Preprocessing,
    config: TrainConfig | None = None,
    *,
    run_dir: str | os.PathLike | None = None,
    resume: bool = False,
    record: Mapping[str, Any] | None = None,
    progress: bool = True,
    max_stages: int | None = None,
) -> TrainResult:
    """Train ``model`` in place through the whole schedule; returns the history and the best pushed state.

    Args:
        train_data: the training images (also the push set, without augmentation), in [0, 1].
        val_data: the validation images: the best checkpoint is chosen on them, among pushed models.
        prep: image size and normalisation of the model's inputs.
        run_dir: where to write checkpoints (see the module docstring); None keeps everything in memory.
        resume: continue from ``run_dir/last.pt`` (the configs must match); without it, a ``run_dir`` that
            already holds checkpoints is refused.
        record: extra JSON-safe information stored in ``config.json`` (backbone, data); when resuming, the
            saved entries not given here are kept.
        max_stages: stop after this many stages in this call (for tests; resume later).

    Logs (logger ``seewhy``, INFO) the setup first (trunk, input size, classes, images, parameters) and the
    estimated time per stage and for the schedule (from timing one batch: a forward and a backward, no step),
    then one line per stage with its time, accuracies and the time left. The model's ``requires_grad`` flags
    and training mode are restored at the end.
    """
    config = config or TrainConfig()
    if not isinstance(model, ProtoPNet):
        raise TypeError(f"train needs a ProtoPNet, got {type(model).__name__}")
    if len(train_data) == 0:
        raise ValueError("the training set is empty")
    if len(val_data) == 0:
        log.warning("no validation images: the best checkpoint is simply the latest pushed model")
    stages = schedule(config)
    opt = _optimizers(model, config)
    state = _RunState({"seewhy_protopnet_run": RUN_FORMAT, "model": model.config(),
                       "preprocessing": dataclasses.asdict(prep), "train": config.to_dict(), **dict(record or {})})
    out = Path(run_dir) if run_dir is not None else None
    device = model.prototype_vectors.device
    if out is not None:
        _open_run(out, model, opt, state, resume, stages, device)

    start = state.start
    end = len(stages) if max_stages is None else min(len(stages), start + max_stages)
    estimate = _log_setup(model, train_data, val_data, prep, config, state, stages, end)
    spent: dict[str, float] = {}  # measured seconds per phase, to refine the estimate of what is left
    flags = [(p, p.requires_grad) for p in model.parameters()]
    modes = [(m, m.training) for m in model.modules()]
    t0 = time.perf_counter()
    try:
        for s in range(start, end):
            stage = stages[s]
            ts = time.perf_counter()
            desc = f"[{s + 1}/{len(stages)}] {stage}"
            with _seeded_global_rng(_stage_seed(config.seed, s, salt=67890), device):
                metrics, val = _run_stage(model, stage, s, opt, train_data, val_data, prep, config, progress, desc)
            seconds = time.perf_counter() - ts
            state.history.append({"stage": s, "phase": stage.phase, "epoch": stage.epoch, "step": stage.step,
                                  "train": metrics, "val": val, "seconds": seconds})
            spent[stage.phase] = spent.get(stage.phase, 0.0) + seconds
            left = _left(estimate, spent, stages[start:s + 1], stages[s + 1:end])
            log.info("%s: %s; train %s; val accuracy %.4f loss %.4f%s", desc, _secs(seconds),
                     ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()), val["accuracy"], val["loss"],
                     f"; about {_secs(left)} left" if s + 1 < end else "")
            _checkpoint(out, model, opt, state, stages[s], s, val)
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        for m, flag in modes:
            m.training = flag
    return TrainResult(history=state.history, best=state.best, best_state=state.best_state,
                       seconds=time.perf_counter() - t0)


def _log_setup(model: ProtoPNet, train_data: ImageSet, val_data: ImageSet, prep: Preprocessing, config: TrainConfig,
               state: _RunState, stages: list[Stage], end: int) -> dict[str, float]:
    """Log the run (trunk, sizes, parameters, stages) and the estimated time of stages ``state.start .. end``;
    returns the estimate per phase."""
    name = (state.config.get("backbone") or {}).get("name") or type(model.features).__name__
    log.info("training ProtoPNet (%s trunk): input %dx%d, %d classes, %d training / %d validation images, %d "
             "prototypes (%d per class, dim %d); %s; %d stages (%d epochs)", name, prep.image_size, prep.image_size,
             model.num_classes, len(train_data), len(val_data), model.num_prototypes, model.prototypes_per_class,
             model.prototype_dim, _parameters(model), len(stages), config.epochs)
    start = state.start
    estimate = _estimate(model, train_data, val_data, prep, config, stages[start:end]) if end > start else {}
    if start >= len(stages):
        log.info("nothing left to train: the run has finished its %d stages", len(stages))
    return estimate


@dataclass
class _RunState:
    """What a run carries from stage to stage: its config.json, history and best pushed stage (and its weights)."""

    config: dict[str, Any]
    start: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] | None = None
    best_state: dict[str, Tensor] | None = None


def _open_run(out: Path, model: ProtoPNet, opt: dict[str, Any], state: _RunState, resume: bool,
              stages: list[Stage], device: torch.device) -> None:
    """Prepare ``out`` for the run: refuse an existing run unless ``resume``, else load ``last.pt`` (the model and
    optimisers), the history and the best stage into ``state``; write config.json (keeping the saved entries that
    ``state.config`` does not restate)."""
    out.mkdir(parents=True, exist_ok=True)
    if not resume and any((out / n).exists() for n in ("last.pt", "best.pt")):
        raise FileExistsError(f"{str(out)!r} already holds a run (last.pt/best.pt); pass resume=True to continue "
                              "it, or choose another run_dir")
    saved = read_json(out / "config.json") if resume and (out / "config.json").is_file() else None
    if saved is not None and not isinstance(saved, dict):
        raise ValueError(f"{str(out / 'config.json')!r} is not a seewhy ProtoPNet run config")
    train_cfg = state.config["train"]
    if resume and (out / "last.pt").is_file():
        if saved is not None and saved.get("train") != train_cfg:
            diff = sorted(k for k in train_cfg if saved.get("train", {}).get(k) != train_cfg[k])
            raise ValueError(f"cannot resume {str(out)!r} with other training settings ({', '.join(diff)}); "
                             "resume with the saved config.json or start a new run")
        last = load_checkpoint(out / "last.pt", device)
        model.load_state_dict(last["model"])
        for key in ("warm", "joint", "last", "scheduler"):
            opt[key].load_state_dict(last[key])
        start = state.start = int(last["stage"]) + 1
        history = read_json(out / "history.json") if (out / "history.json").is_file() else []
        if len(history) < start:
            log.warning("%s has %d entries for %d finished stages: the history misses stages",
                        out / "history.json", len(history), start)
        state.history = history[:start]
        if (out / "best.json").is_file() and (out / "best.pt").is_file():
            state.best = read_json(out / "best.json")
            state.best_state = load_checkpoint(out / "best.pt", "cpu")
        log.info("resuming %s after stage %d/%d (%s)", out, start, len(stages), stages[start - 1] if start else "start")
    elif resume:
        log.warning("nothing to resume in %s (no last.pt): starting from the beginning", out)
    if saved is not None:  # keep what this call does not restate (backbone, data from train_folder)
        state.config = {**saved, **state.config}
    write_json_file(state.config, out / "config.json")


def _run_stage(model: ProtoPNet, stage: Stage, s: int, opt: dict[str, Any], train_data: ImageSet,
               val_data: ImageSet, prep: Preprocessing, config: TrainConfig, progress: bool, desc: str
               ) -> tuple[dict[str, float], dict[str, float]]:
    """Stage ``s`` of the schedule (a push or an epoch), then the validation: ``(train metrics, val metrics)``."""
    if stage.phase == "push":
        res = push_prototypes(model, train_data, prep, batch_size=config.push_batch_size,
                              percentile=config.percentile, progress=progress)
        metrics: dict[str, float] = {"moved": float(res.moved.mean())}
    else:
        if stage.phase in ("warm", "joint"):  # the prototypes move off their source patches
            model.reset_prototype_sources()
        metrics = _epoch(model, train_data, prep, stage.phase, opt[stage.phase], config,
                         _stage_generator(config.seed, s), progress, desc)
        if stage.phase == "joint":
            opt["scheduler"].step()
    return metrics, evaluate(model, val_data, prep, batch_size=config.eval_batch_size)


def _checkpoint(out: Path | None, model: ProtoPNet, opt: dict[str, Any], state: _RunState, stage: Stage, s: int,
                val: Mapping[str, float]) -> None:
    """After stage ``s``: a better pushed model becomes the best (best.pt, best.json); then history.json, last.pt."""
    if stage.phase in ("push", "last") and _better(val, state.best):
        state.best = {"stage": s, "phase": stage.phase, "epoch": stage.epoch, "step": stage.step,
                      "val_accuracy": val["accuracy"], "val_loss": val["loss"]}
        state.best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        if out is not None:
            _save(state.best_state, out / "best.pt")
            write_json_file(state.best, out / "best.json")
    if out is not None:  # the history first: a resume drops entries after the stage of last.pt
        write_json_file(state.history, out / "history.json")
        last = {"model": model.state_dict(), "stage": s, **{k: opt[k].state_dict() for k in
                                                            ("warm", "joint", "last", "scheduler")}}
        _save(last, out / "last.pt")


# -- what a run costs ---------------------------------------------------------------------------------------


def _parameters(model: ProtoPNet) -> str:
    """'N parameters, M trainable (trunk a, add-on b, prototypes c, last layer d)'."""
    parts = {"trunk": list(model.features.parameters()), "add-on": list(model.add_on_layers.parameters()),
             "prototypes": [model.prototype_vectors], "last layer": list(model.last_layer.parameters())}
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    detail = ", ".join(f"{k} {sum(p.numel() for p in v):,}" for k, v in parts.items())
    return f"{total:,} parameters, {trainable:,} trainable ({detail})"


def _secs(x: float) -> str:
    """Seconds for a log line: '0.42 s', '12 s', '190 s (3.2 min)', '7200 s (2.0 h)'."""
    if x < 10:
        return f"{x:.2g} s" if x < 1 else f"{x:.1f} s"
    if x < 120:
        return f"{x:.0f} s"
    return f"{x:.0f} s ({x / 60:.1f} min)" if x < 7200 else f"{x:.0f} s ({x / 3600:.1f} h)"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _probe(model: ProtoPNet, data: ImageSet, prep: Preprocessing, n: int) -> tuple[dict[str, float], int]:
    """Seconds per image of each kind of pass, timed on a copy of ``model`` (the model itself, its gradients and
    the global RNG are left alone) with the first ``n`` training images, after one untimed forward (first calls
    pay for allocations and kernel selection): ``forward`` in eval mode without gradients (push, last layer,
    validation), ``warm`` and ``joint`` a forward + backward in the mode of those epochs. Returns them and the
    number of images timed. A rough figure: a busy machine skews it; the stages' own times refine it."""
    device = model.prototype_vectors.device
    x = normalize(data.load(list(range(min(n, len(data))))).to(device), prep)
    probe = copy.deepcopy(model)

    def timed(phase: str) -> float:
        probe.train(phase != "forward")
        if phase == "warm":
            probe.features.eval()
        t = time.perf_counter()
        if phase == "forward":
            with torch.no_grad():
                probe(x)
        else:
            _trainable(probe, phase)
            logits, min_d = probe(x, return_distances=True)
            (logits.sum() + min_d.sum()).backward()
        _sync(device)
        return (time.perf_counter() - t) / x.shape[0]

    with torch.inference_mode(False), _seeded_global_rng(0, device):
        timed("forward")
        return {phase: timed(phase) for phase in ("forward", "warm", "joint")}, int(x.shape[0])


def _estimate(model: ProtoPNet, train_data: ImageSet, val_data: ImageSet, prep: Preprocessing, config: TrainConfig,
              todo: list[Stage]) -> dict[str, float]:
    """Estimated seconds of one stage of each phase (with its validation pass), from timing one batch; logged with
    the estimate for ``todo``, the stages this call runs."""
    try:
        per_image, n = _probe(model, train_data, prep, min(config.batch_size, 32))
    except (copy.Error, TypeError, RuntimeError, pickle.PicklingError) as err:  # a trunk that cannot be copied
        log.info("no time estimate: the model cannot be copied to time it (%s: %s)", type(err).__name__, err)
        return {}
    n_train, forward = len(train_data), per_image["forward"]
    val = len(val_data) * forward
    estimate = {
        "warm": n_train * per_image["warm"] + val,
        "joint": n_train * per_image["joint"] + val,
        "push": (n_train + min(model.num_prototypes, n_train)) * forward + val,  # the push, then the source boxes
        "last": n_train * forward + val,
    }
    phases = [p for p in ("warm", "joint", "push", "last") if any(st.phase == p for st in todo)]
    total = sum(estimate[st.phase] for st in todo)
    words = {"warm": "warm-up epoch", "joint": "joint epoch", "push": "push", "last": "last-layer epoch"}
    log.info("estimated time (from timing %d images): %s; the %d stages: about %s", n,
             ", ".join(f"{words[p]} ~{_secs(estimate[p])}" for p in phases), len(todo), _secs(total))
    return estimate


def _left(estimate: Mapping[str, float], spent: Mapping[str, float], done: list[Stage], todo: list[Stage]) -> float:
    """Seconds left for ``todo``: the measured mean of each phase, else its estimate scaled by how far the
    estimates of the stages ``done`` were off."""
    count: dict[str, int] = {}
    for st in done:
        count[st.phase] = count.get(st.phase, 0) + 1
    guessed = sum(estimate.get(st.phase, 0.0) for st in done)
    scale = sum(spent.values()) / guessed if guessed > 0 else 1.0
    return sum(spent[st.phase] / count[st.phase] if st.phase in count else scale * estimate.get(st.phase, 0.0)
               for st in todo)
