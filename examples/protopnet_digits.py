"""ProtoPNet on scikit-learn's bundled handwritten digits: a real result that needs no download.

1,797 8x8 gray digits (10 classes) upsampled to 32x32, split 70/10/20 (train / validation / test,
stratified, seeded). A small CNN trunk (``small_cnn``), 10 prototypes per class, the paper's loss and
schedule shortened to a few minutes on two CPU cores: warm-up, joint epochs, a push every 10 epochs
and after the last, each followed by last-layer epochs. The checkpoint is chosen on validation; the
test split is used once, at the end. Prints the held-out accuracy and the wall time::

    OMP_NUM_THREADS=2 python examples/protopnet_digits.py [--out RUN_DIR] [--report DIR]

Needs scikit-learn (``pip install scikit-learn``) for the data.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from seewhy.protopnet import (
    Augment,
    Preprocessing,
    ProtoPNet,
    SmallCNNTrunk,
    TensorImages,
    TrainConfig,
    evaluate,
    explain_global,
    explain_local,
    stratified_split,
    train,
)

PREP = Preprocessing(32, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
CONFIG = TrainConfig(
    epochs=20, warm_epochs=3, push_start=10, push_every=10, last_layer_epochs=10, batch_size=64,
    lr_features=1e-3, lr_add_on=3e-3, lr_prototypes=3e-3, lr_last_layer=1e-3, lr_step=10, lr_gamma=0.3,
    augment=Augment(flip=0.0, rotate=10.0, shear=5.0, translate=0.05, scale=(0.9, 1.1)), seed=0,
)


def digits(size: int = 32) -> TensorImages:
    """The 1,797 digits as (N, 3, size, size) floats in [0, 1] (bilinear upsampling of 0..16 values)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.as_tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)
    return TensorImages(x, torch.as_tensor(d.target), [str(i) for i in range(10)],
                        names=[f"digit {i}" for i in range(len(d.target))])


def run(config: TrainConfig = CONFIG, *, run_dir: str | None = None, progress: bool = True) -> dict[str, float]:
    """Train on the digits; returns test/validation accuracy of the best pushed model and the time."""
    t0 = time.perf_counter()
    data = digits()
    rest, test_idx = stratified_split(data.labels, 0.2, seed=config.seed)
    rest_data = data.subset(rest)
    train_idx, val_idx = stratified_split(rest_data.labels, 0.125, seed=config.seed + 1)
    train_data, val_data, test_data = rest_data.subset(train_idx), rest_data.subset(val_idx), data.subset(test_idx)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = ProtoPNet(SmallCNNTrunk(width=32), 10, prototypes_per_class=10, prototype_dim=128,
                          class_names=data.classes)
    result = train(model, train_data, val_data, PREP, config, run_dir=run_dir, progress=progress,
                   record={"backbone": None, "data": {"name": "sklearn digits, 32x32", "n_train": len(train_data),
                                                      "n_val": len(val_data), "n_test": len(test_data)}})
    model.load_state_dict(result.best_state)
    test = evaluate(model, test_data, PREP)
    return {"test_accuracy": test["accuracy"], "val_accuracy": result.best["val_accuracy"],
            "best_epoch": result.best["epoch"], "best_phase": result.best["phase"], "n_train": len(train_data),
            "n_val": len(val_data), "n_test": len(test_data), "seconds": time.perf_counter() - t0,
            "model": model, "train_data": train_data, "test_data": test_data}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", help="run directory for checkpoints (default: keep in memory)")
    parser.add_argument("--report", help="also write an HTML report (10 test digits + every prototype) here")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    r = run(run_dir=args.out, progress=not args.quiet)
    print(f"digits: train {r['n_train']}, validation {r['n_val']}, test {r['n_test']} images")  # noqa: T201
    print(f"best pushed checkpoint (validation {r['val_accuracy']:.4f}, epoch {r['best_epoch']}, {r['best_phase']})")  # noqa: T201
    print(f"held-out test accuracy: {r['test_accuracy']:.4f}")  # noqa: T201
    print(f"wall time: {r['seconds']:.0f} s with {torch.get_num_threads()} threads")  # noqa: T201
    if args.report:
        from seewhy.protopnet import LocalRow, write_protopnet_report

        model, test = r["model"], r["test_data"]
        idx = list(range(10))
        exps = explain_local(model, (test.load(idx) - 0.5) / 0.5, top_k=5)
        rows = [LocalRow(test.names[i], test.image(i), e) for i, e in zip(idx, exps, strict=True)]
        protos = explain_global(model, r["train_data"], PREP, 5)
        info = {"data": "sklearn digits (test split)", "test accuracy": f"{r['test_accuracy']:.4f}"}
        path = write_protopnet_report(Path(args.report), model, local=rows, prototypes=protos,
                                      train_data=r["train_data"], info=info, overwrite=True)
        print(f"report: {path}")  # noqa: T201


if __name__ == "__main__":
    main()
