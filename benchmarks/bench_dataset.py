"""Images per second of ``seewhy.dataset.explain_dataset`` (issue 20) on efficientnet_lite0 over a folder of JPEG
files, local engine (0 and 1 decoding workers) and Ray engine (a local Ray of 2 CPUs), against the same work done on
preloaded batches; the store size per row; a plan for 1 M images on N GPU nodes.

Run:  python benchmarks/bench_dataset.py [--images 64] [--rounds 2] [--threads 2] [--batch 16] [--deletion-steps 16]
      [--no-ray] [--gpu-factor 50] [--gpus-per-node 4] [--out benchmarks/results/dataset.md]
      smoke run: python benchmarks/bench_dataset.py --images 16 --rounds 1 --out -

- **Data**: a folder of ``--images`` JPEG files, 256 px random crops of the bundled photos
  (``bench_inside.photo_folder``), decoded and preprocessed by seewhy as the zoo model asks (resize, centre crop
  224, normalise).
- **Work**: (a) ``gradcam`` with no metric; (b) ``gradcam`` + ``deletion_auc`` with ``n_steps=--deletion-steps``
  (``n_steps + 1`` forwards per image; the default of one image row per step, 224 steps, would cost 225 forwards and
  dominate everything). Target: top-1; one row per image.
- **Engine runs**: ``explain_dataset(folder, model, methods, metrics, out=<a fresh temp store>, batch_size=--batch,
  html_summary=False, progress=False, estimate=False)``; local with ``workers=0`` (decoding in the main process) and
  ``workers=1`` (one DataLoader process decoding with 1 thread while the model computes); Ray with
  ``engine="ray"`` on a local Ray started once (``ray.init(num_cpus=2)``, its start-up timed apart), default actors
  (1 CPU and 1 torch thread each, 2 actors), ``run_info={"model": "efficientnet_lite0"}`` as the CLI passes (the actors
  build the architecture and load the driver's state dict). A Ray run's time includes creating its actor pool and
  sending the weights: the per-run overhead of the engine, stated as such; the first run of each work in the Ray
  session is the Ray side's warm-up, timed and shown apart. Every run's time is the whole call
  (resolving the folder, opening the store, decoding, the extra no-grad forward that gives the ``prediction`` column,
  the method, the metric, writing the Parquet parts).
- **References (the same work)**: (a) ``seewhy.explain(model, x, "gradcam")`` on the images preloaded as tensors, in
  batches of ``--batch``: the method's own per-image cost, no decoding, no store; (b) the same, then
  ``seewhy.metrics.deletion_auc(model, x, exp.attributions, target=exp.targets, n_steps=...)`` on the same batches.
  For scale, the best measured per-image forward (``common.best_forward``: batch sizes x memory formats, inference
  mode). Engine runs and references are timed interleaved in one process (``common.interleaved``: one warm-up each,
  ``--rounds`` timed rounds, the minimum kept; for (b) the warm-up is one deletion_auc call on one batch, since
  (a) warmed up everything else); the Ray runs after the local ones, with the references timed again
  next to them. Goal: the local engine within 1.3x of the method's own per-image cost.
- **Decoding**: seconds per image to read and preprocess one JPEG on one thread (``ImageData.load`` one at a time),
  the CPU work a GPU node must supply besides the model.
- **Store**: bytes per row = the sizes of the Parquet parts of a (b) run / its rows; attributions are not saved by
  these runs and are sized by arithmetic (float16: 224x224 map = 100,352 bytes, 7x7 Grad-CAM map = 98 bytes, per
  image and method, before compression).
- **Plan for 1 M images**: from the measured CPU figures and one stated assumption, ``--gpu-factor`` (how many times
  faster one GPU does the method's work than the 2 cores measured here; not measured here).
Writes benchmarks/results/dataset.md.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from bench_inside import photo_folder
from common import RESULTS, best_forward, environment, interleaved, ms, table, write

import seewhy
from seewhy import zoo
from seewhy.data import as_data
from seewhy.dataset import explain_dataset
from seewhy.metrics import deletion_auc
from seewhy.progress import quiet

MODEL = "efficientnet_lite0"
GOAL = 1.3
F16 = 2  # bytes per float16


def preload(folder: Path, model: torch.nn.Module) -> tuple[torch.Tensor, float]:
    """Every image of ``folder`` decoded and preprocessed as the engines do (``ImageData.load``), and the seconds per
    image that took on one thread."""
    data = as_data(str(folder), model)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        start = time.perf_counter()
        xs = [data.load([i])[0][0] for i in range(len(data))]
        sec = (time.perf_counter() - start) / len(data)
    finally:
        torch.set_num_threads(threads)
    return torch.stack(xs), sec


def reference(model: torch.nn.Module, x: torch.Tensor, batch: int, steps: int | None) -> Callable[[], None]:
    """The same work on preloaded batches: gradcam (``steps`` None) or gradcam then deletion_auc with ``steps``."""
    batches = [x[i:i + batch] for i in range(0, x.shape[0], batch)]

    def step() -> None:
        for xb in batches:
            exp = seewhy.explain(model, xb, "gradcam")
            if steps is not None:
                deletion_auc(model, xb, exp.attributions, target=exp.targets, n_steps=steps)

    return step


class Runs:
    """``explain_dataset`` calls, each into a fresh store under ``root`` (removed after the call, except the last,
    whose Parquet parts are measured)."""

    def __init__(self, root: Path, folder: Path, model: torch.nn.Module, batch: int, steps: int) -> None:
        self.root, self.folder, self.model, self.batch, self.steps = root, folder, model, batch, steps
        self.count = 0
        self.last: Path | None = None

    def call(self, metric: bool, engine: str, workers: int = 0) -> Callable[[], None]:
        def step() -> None:
            if self.last is not None:
                shutil.rmtree(self.last, ignore_errors=True)
            self.count += 1
            out = self.root / f"store{self.count:04d}"
            explain_dataset(self.folder, self.model, ["gradcam"], ["deletion_auc"] if metric else [], out=out,
                            metric_params={"deletion_auc": {"n_steps": self.steps}} if metric else None,
                            engine=engine, batch_size=self.batch, workers=workers, html_summary=False,
                            progress=False, estimate=False, run_info={"model": MODEL})
            self.last = out

        return step

    def keep(self) -> Path:
        """The last store (the caller measures it); a later call starts a new one."""
        assert self.last is not None
        kept, self.last = self.last, None
        return kept


def store_bytes(store: Path) -> tuple[int, int]:
    """(bytes of the Parquet parts, rows) of a store."""
    import pyarrow.parquet as pq

    parts = sorted((store / "results.parquet").glob("*.parquet"))
    return sum(p.stat().st_size for p in parts), sum(pq.ParquetFile(p).metadata.num_rows for p in parts)


def fmt_rate(sec: float) -> str:
    return f"{1 / sec:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64, help="JPEG files in the folder")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved timed rounds (after one warm-up)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=16, help="images per model call (engines and references)")
    parser.add_argument("--deletion-steps", type=int, default=16, help="n_steps of deletion_auc")
    parser.add_argument("--no-ray", action="store_true", help="skip the Ray engine")
    parser.add_argument("--gpu-factor", type=float, default=50.0,
                        help="ASSUMED speed-up of one GPU over the 2 measured cores on the method's work (plan only)")
    parser.add_argument("--gpus-per-node", type=int, default=4, help="plan only")
    parser.add_argument("--out", default=str(RESULTS / "dataset.md"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.getLogger("seewhy").setLevel(logging.WARNING)
    t_start = time.perf_counter()
    model = zoo.load(MODEL)
    n, steps = args.images, args.deletion_steps

    with tempfile.TemporaryDirectory() as tmp, quiet():
        folder = photo_folder(Path(tmp) / "photos", n)
        x, decode = preload(folder, model)
        best = best_forward(model, x[:16] if n >= 16 else x, repeat=max(2, args.rounds))
        runs = Runs(Path(tmp), folder, model, args.batch, steps)
        ref_a, ref_b = reference(model, x, args.batch, None), reference(model, x, args.batch, steps)

        # local engine, interleaved with the references and the best forward
        local = {}
        for metric, ref in ((False, ref_a), (True, ref_b)):
            fns = {"best": best.step, "ref": ref, "w0": runs.call(metric, "local", 0),
                   "w1": runs.call(metric, "local", 1)}
            if metric:  # (a) warmed up every path but deletion_auc's: warm it on one batch, not whole runs
                exp = seewhy.explain(model, x[:args.batch], "gradcam")
                deletion_auc(model, x[:args.batch], exp.attributions, target=exp.targets, n_steps=steps)
            t = interleaved(fns, args.rounds, warmup=0 if metric else 1)
            best.update(t["best"].min / best.images)
            local[metric] = {k: t[k].min / n for k in ("ref", "w0", "w1")}
        size, rows = store_bytes(runs.keep())

        # Ray engine: start-up timed apart, then runs on the running Ray, interleaved with the references
        ray_info = None
        if not args.no_ray:
            import ray

            os.environ.setdefault("RAY_DEDUP_LOGS", "0")
            start = time.perf_counter()
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
            startup = time.perf_counter() - start
            try:
                cold = {}
                for metric in (False, True):  # the first run on a fresh Ray (untimed by interleaved: timed here)
                    start = time.perf_counter()
                    runs.call(metric, "ray")()
                    cold[metric] = (time.perf_counter() - start) / n
                ray_t = {}
                for metric, ref in ((False, ref_a), (True, ref_b)):
                    t = interleaved({"ref": ref, "ray": runs.call(metric, "ray")}, args.rounds, warmup=0)
                    ray_t[metric] = {k: t[k].min / n for k in ("ref", "ray")}
                    local[metric]["ref"] = min(local[metric]["ref"], ray_t[metric]["ref"])
            finally:
                start = time.perf_counter()
                ray.shutdown()
                shutdown = time.perf_counter() - start
            ray_info = (startup, shutdown, cold, ray_t)
    total = time.perf_counter() - t_start

    # ------------------------------------------------------------------------------------------------- report
    rows_out = []
    for metric, name in ((False, "(a) gradcam"), (True, f"(b) gradcam + deletion_auc ({steps} steps)")):
        ref = local[metric]["ref"]
        rows_out.append((f"{name}: reference on preloaded batches", fmt_rate(ref), ms(ref), "1.00x",
                         f"{ref / best.seconds:.1f}x", "the same work, no decoding, no store"))
        for key, label in (("w0", "local engine, workers=0"), ("w1", "local engine, workers=1")):
            sec = local[metric][key]
            rows_out.append((f"{name}: {label}", fmt_rate(sec), ms(sec), f"{sec / ref:.2f}x",
                             f"{sec / best.seconds:.1f}x",
                             "within the goal" if sec / ref <= GOAL else f"over the {GOAL}x goal"))
        if ray_info is not None:
            startup, shutdown, cold, ray_t = ray_info
            sec = ray_t[metric]["ray"]
            rows_out.append((f"{name}: Ray engine, 2 actors x 1 CPU", fmt_rate(sec), ms(sec), f"{sec / ref:.2f}x",
                             f"{sec / best.seconds:.1f}x",
                             f"per-run overhead vs the reference: {(sec - ref) * n:.1f} s per run of {n} images"))
            rows_out.append((f"{name}: Ray engine, first run after ray.init", fmt_rate(cold[metric]),
                             ms(cold[metric]), f"{cold[metric] / ref:.2f}x", f"{cold[metric] / best.seconds:.1f}x",
                             "the first run of this work in the Ray session (untimed warm-up of the row above)"))
    speed = table(["run", "images/s", "ms per image", "vs the same work", "vs best forward", "note"], rows_out)

    per_row = size / rows
    ray_line = ""
    if ray_info is not None:
        startup, shutdown, cold, ray_t = ray_info
        ray_line = (f"Ray start-up (`ray.init(num_cpus=2)` of a local Ray): {startup:.1f} s; "
                    f"shutdown {shutdown:.1f} s; "
                    "paid once per session (on a cluster, once per driver: `address=\"auto\"` joins a running Ray). "
                    f"Per run, the Ray engine's fixed cost (actor pool, weights, Ray Data planning) is "
                    f"{max(0.0, (ray_t[False]['ray'] - local[False]['ref']) * n):.1f} s over the reference for (a), "
                    f"which a long run amortises; its per-image rate on 2 actors x 1 thread is what the table shows.")

    # the plan: one GPU = gpu_factor x the measured 2-core rate of the method's own work (an assumption)
    g, f = args.gpus_per_node, args.gpu_factor
    plan_rows = []
    for name, ref, eng in (("(a) gradcam", local[False]["ref"], local[False]["w0"]),
                           (f"(b) gradcam + deletion_auc ({steps} steps)", local[True]["ref"], local[True]["w0"])):
        # the engine's per-image time without the decoding (which stays on the node's CPU cores), sped up f times
        gpu_sec = max(ref, eng - decode) / f
        node_rate = g / gpu_sec  # images/s per node
        cores = node_rate * decode  # CPU cores the node needs to decode that many images/s
        per_hour = node_rate * 3600
        for nodes in (1, 4, 16):
            hours = 1e6 / (node_rate * nodes) / 3600
            took = f"{hours:.1f} h" if hours >= 1 else f"{hours * 60:.1f} min"
            plan_rows.append((name, str(nodes), f"{per_hour:,.0f}", took, f"{cores:.1f}"))
    store_rows = [
        ("results.parquet rows, gradcam + deletion_auc (measured, (b))", f"{per_row:.0f} B per row",
         f"{per_row * 1e6 / 1e6:.0f} MB"),
        ("attributions 224x224 float16, per method", f"{224 * 224 * F16:,} B per image",
         f"{224 * 224 * F16 * 1e6 / 1e9:.0f} GB"),
        ("attributions 7x7 Grad-CAM float16, per method", f"{7 * 7 * F16} B per image",
         f"{7 * 7 * F16 * 1e6 / 1e6:.0f} MB"),
    ]
    text = "\n\n".join([
        "# seewhy explain-dataset: images/s on efficientnet_lite0, local vs Ray, and a plan for 1 M images",
        environment(f"; {n} JPEG files (256 px crops of the bundled photos), batch size {args.batch}, "
                    f"{args.rounds} timed rounds"),
        "## Method",
        __doc__.split("\n\n", 2)[2].split("Writes benchmarks")[0].strip(),
        "## Images/s",
        f"Best measured forward: {ms(best.seconds)} ms per image ({1 / best.seconds:.1f} images/s, {best.where}). "
        f"Decoding + preprocessing one JPEG on one thread: {ms(decode)} ms. \"vs the same work\": the run's time "
        f"over the reference of its work (goal for the local engine: <= {GOAL}x); \"vs best forward\": over the best "
        "per-image forward, for scale (gradcam is a forward and a backward; deletion adds n_steps + 1 forwards).",
        speed,
        ray_line,
        "## Plan for 1 M images on N GPU nodes",
        f"Assumption (not measured here): one GPU does the engine's model-side work {f:g}x faster than the 2 CPU "
        f"cores measured above (`--gpu-factor`); {g} GPUs per node (`--gpus-per-node`), one Ray actor per GPU "
        "(`ray_options={\"num_gpus\": 1}`). Model-side work per image = max(reference, local engine workers=0 - "
        f"decode) = {ms(max(local[False]['ref'], local[False]['w0'] - decode))} ms for (a), "
        f"{ms(max(local[True]['ref'], local[True]['w0'] - decode))} ms for (b): the method, the prediction forward, "
        f"the metric and the store, measured. Formula: images/s per node = {g} x {f:g} / model-side seconds per "
        "image; time for 1 M = 1e6 / (nodes x images/s per node). Decoding stays on the CPU: the node needs "
        f"images/s x {ms(decode)} ms (measured, one thread per image) of CPU cores (last column) to feed its GPUs, "
        "or the GPUs wait; the Ray start-up and the per-run fixed cost (seconds) are negligible against hours; "
        "the driver writes the Parquet rows (a few hundred bytes per image), far below any node's rate.",
        table(["work", "nodes", "images per node-hour", "time for 1 M", "decode cores per node"], plan_rows,
              right=[False, True, True, True, True]),
        f"The local engine's time is measured on runs of {n} images and includes each run's fixed cost "
        "(resolving the folder, opening the store): on a 1 M-image run it is spread thinner, so these figures are "
        f"conservative. With another GPU speed-up s, scale: time x {f:g} / s.",
        "Store size for 1 M images (one row per image and method, top-1):",
        table(["what", "size", "for 1 M images"], store_rows, right=[False, True, True]),
        f"Measured: {size:,} bytes of Parquet parts for {rows} rows ({n} images, {-(-n // 256)} part(s)); a small "
        "store pays the Parquet footer per part, so bytes per row fall for 256-image parts. Attributions are off by "
        "default (`--save-attributions`); the dense 224x224 float16 maps are the store's size, the rows are not.",
        f"Whole benchmark: {total:.0f} s.",
    ])
    write(text, None if args.out == "-" else Path(args.out))


if __name__ == "__main__":
    main()
