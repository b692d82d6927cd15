"""Probes: PGD's cost per step against one forward+backward of the same batch, and partial dependence's cost
against the predict throughput (and scikit-learn's brute-force partial_dependence on the same model and grid).

Run:  python benchmarks/bench_probes.py [--rounds 5] [--threads 2] [--batch 4]
      smoke run: python benchmarks/bench_probes.py --rounds 1 --out -

- **PGD** (L-inf, eps 2/255, no random start) on efficientnet_lite0 at 224 px over a batch of the bundled photos:
  ms per step = (time of 12 steps - time of 2 steps) / 10, so the clean and final forwards cancel. Reference (the
  same work): a forward with gradients of the batch and ``torch.autograd.grad`` of the summed cross-entropy with
  respect to the input only, parameters frozen (``model_state``), in the faster memory format. Interleaved, one
  warm-up each, the minimum of the rounds. Goal: within 1.2x. Also on the user-style EfficientNet-Lite0
  (``examples/user_efficientnet.py``).
- **Partial dependence** (one feature, 100 grid points, ``kind="both"``) of a scikit-learn
  HistGradientBoostingRegressor and of a small torch MLP on 2,000 rows x 8 features: the call's time against the
  model's predict on all the rows it evaluates (2,000 x 100) in one call (the throughput bound), and
  ``sklearn.inspection.partial_dependence(method="brute")`` on the same model and grid.
Writes benchmarks/results/probes.md.
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from common import RESULTS, environment, interleaved, ms, table, write

from seewhy import zoo
from seewhy.hooks import model_state
from seewhy.images import BUNDLED, bundled_image, resize_crop, to_tensor
from seewhy.progress import quiet

USER_FILE = Path(__file__).parent.parent / "examples" / "user_efficientnet.py"
SHORT, LONG = 2, 12
EPS = 2 / 255


def load_user_model() -> torch.nn.Module:
    spec = importlib.util.spec_from_file_location("user_efficientnet", USER_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build(pretrained=True)


def photos(batch: int) -> torch.Tensor:
    """The bundled photos, resized and centre-cropped to 224, in [0, 1] (cycled to ``batch``)."""
    pics = [to_tensor(resize_crop(bundled_image(BUNDLED[i % len(BUNDLED)]), 256, 224)) for i in range(batch)]
    return torch.stack(pics)


def reference(model: torch.nn.Module, x: torch.Tensor, labels: torch.Tensor, channels_last: bool):
    """Input-only forward+backward of the summed cross-entropy (what one PGD step needs from the model)."""
    spec = zoo.get_spec("efficientnet_lite0")
    mean = torch.tensor(spec.mean).view(1, 3, 1, 1)
    std = torch.tensor(spec.std).view(1, 3, 1, 1)

    def step() -> torch.Tensor:
        with model_state(model), torch.enable_grad():
            leaf = x.detach().clone().requires_grad_(True)
            z = (leaf - mean) / std
            if channels_last:
                z = z.contiguous(memory_format=torch.channels_last)
            loss = F.cross_entropy(model(z), labels, reduction="sum")
            (g,) = torch.autograd.grad(loss, leaf)
        return g

    return step


def pgd_rows(model: torch.nn.Module, x: torch.Tensor, label: str, rounds: int, normalize) -> list[list[str]]:
    from seewhy.adversarial import pgd

    with torch.no_grad():
        spec = zoo.get_spec("efficientnet_lite0")
        mean = torch.tensor(spec.mean).view(1, 3, 1, 1)
        std = torch.tensor(spec.std).view(1, 3, 1, 1)
        labels = model((x - mean) / std).argmax(1)
    both = interleaved({cl: reference(model, x, labels, cl) for cl in (False, True)}, rounds)
    cl = min(both, key=lambda c: both[c].min)

    def run(steps: int):
        return lambda: pgd(model, x, EPS, steps=steps, random_start=False, normalize=normalize)

    t = interleaved({"ref": reference(model, x, labels, cl), "short": run(SHORT), "long": run(LONG)}, rounds)
    step = (t["long"].min - t["short"].min) / (LONG - SHORT)
    return [[label, str(len(x)), ms(step), ms(t["ref"].min), f"{step / t['ref'].min:.2f}"]]


def pdp_rows(rounds: int) -> list[list[str]]:
    from seewhy.effects import partial_dependence
    from sklearn.ensemble import HistGradientBoostingRegressor
    from sklearn.inspection import partial_dependence as sk_pd

    rng = np.random.default_rng(0)
    X = rng.normal(size=(2000, 8))
    y = X[:, 0] * 2 + np.sin(X[:, 1]) + X[:, 2] * X[:, 3] + rng.normal(scale=0.1, size=2000)
    gbr = HistGradientBoostingRegressor(max_iter=100, random_state=0).fit(X, y)
    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Linear(8, 256), torch.nn.ReLU(), torch.nn.Linear(256, 256),
                              torch.nn.ReLU(), torch.nn.Linear(256, 1)).eval()

    def mlp_predict(a: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return mlp(torch.as_tensor(a, dtype=torch.float32)).squeeze(1).numpy()

    rows = []
    for label, predict, est in (("HistGradientBoostingRegressor", gbr.predict, gbr), ("torch MLP 8-256-256-1",
                                                                                    mlp_predict, None)):
        grid = np.linspace(*np.quantile(X[:, 0], [0.05, 0.95]), 100)
        big = np.repeat(X[None], len(grid), 0)
        big[:, :, 0] = grid[:, None]
        big = big.reshape(-1, X.shape[1])
        fns = {"seewhy": lambda p=predict: partial_dependence(p, X, [0], grid_resolution=100, kind="both"),
               "bound": lambda p=predict, rows=big: p(rows)}
        if est is not None:
            fns["sklearn"] = lambda e=est: sk_pd(e, X, [0], grid_resolution=100, kind="both", method="brute")
        t = interleaved(fns, rounds)
        sk = f"{t['sklearn'].min:.3f}" if "sklearn" in t else "-"
        ratio = f"{t['sklearn'].min / t['seewhy'].min:.2f}" if "sklearn" in t else "-"
        rows.append([label, f"{t['seewhy'].min:.3f}", f"{t['bound'].min:.3f}",
                     f"{t['seewhy'].min / t['bound'].min:.2f}", sk, ratio])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--out", default=str(RESULTS / "probes.md"), help="results file, or - for none")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = None if args.out == "-" else Path(args.out)
    x = photos(args.batch)
    spec = zoo.get_spec("efficientnet_lite0")
    with quiet():
        rows = pgd_rows(zoo.load("efficientnet_lite0"), x, "efficientnet_lite0", args.rounds, None)
        rows += pgd_rows(load_user_model(), x, "user-style EfficientNet-Lite0", args.rounds,
                         (spec.mean, spec.std))
        pdp = pdp_rows(args.rounds)
    text = "\n\n".join([
        "# Probes: PGD and partial dependence",
        environment(),
        __doc__.split("\n\n", 2)[2].rsplit("Writes", 1)[0].strip(),
        "## PGD (L-inf, 2/255, no random start), ms per step against the input-only forward+backward",
        table(["model", "batch", "ms/step", "reference ms", "x reference"], rows, right=[False] + [True] * 4),
        "## Partial dependence (1 feature, 100 grid points, 2,000 rows, kind='both'), seconds",
        table(["model", "seewhy", "predict bound", "x bound", "sklearn brute", "sklearn / seewhy"], pdp,
              right=[False] + [True] * 5),
    ])
    write(text, out)


if __name__ == "__main__":
    main()
