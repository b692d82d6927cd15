"""Images per second of seewhy.inside's dataset passes on efficientnet_lite0 at 224 px, against the best measured
forward; embed's cost split into features and projection; peak memory of 200 vs 2,000 images.

Run:  python benchmarks/bench_inside.py [--images 64] [--repeat 3] [--threads 2] [--memory-images 200,2000]
      smoke run: python benchmarks/bench_inside.py --images 8 --repeat 1 --memory-images 8,16 --out -

- **References**: the best measured per-image forward of the whole model (batch sizes 1..engine's x both memory
  formats, inference mode; ``common.best_forward``), the issue's yardstick; and the same work as the call: the
  forward stopped after the call's layer by a plain hook, at that batch size (twice for dissect). Both are timed
  interleaved with each call (one warm-up each).
- ``top_patches`` (k=9, all units) and ``dissect`` (the 11 colour concepts, two passes: thresholds, then IoU) run on
  the same photos as a tensor, at the engine's batch size; their forwards stop after the layer, so an early layer
  costs less than a whole forward. Goal: within 1.3x of the reference.
- ``top_patches`` from a folder of JPEG files adds decoding and preprocessing (in a background thread).
- ``embed``: the seconds of the feature pass and of the projection, as ``Embedding.seconds`` measures them.
- Memory: each call in a fresh process over a folder of N JPEG files at batch size 8 (``common.peak_memory``:
  VmHWM after the call minus VmRSS before it).
Writes benchmarks/results/inside.md.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from common import MEMORY, RESULTS, best_forward, environment, interleaved, ms, peak_memory, table, write
from PIL import Image

from seewhy import zoo
from seewhy.images import BUNDLED, bundled_image
from seewhy.progress import quiet

PATCH_LAYERS = ("_blocks.2", "_blocks.5", "_blocks.10", "_features")
DISSECT_LAYERS = ("_blocks.2", "_blocks.5")
MEMORY_BATCH = 8
USER_FILE = Path(__file__).parent.parent / "examples" / "user_efficientnet.py"


def photo_folder(root: Path, n: int, side: int = 256) -> Path:
    """``n`` JPEG files: random crops (seeded) of the bundled photos, ``side`` pixels square."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    photos = [np.asarray(bundled_image(name)) for name in BUNDLED]
    for i in range(n):
        p = photos[i % len(photos)]
        s = int(rng.integers(side // 2, min(p.shape[:2])))
        t, left = (int(rng.integers(0, d - s + 1)) for d in p.shape[:2])
        Image.fromarray(p[t:t + s, left:left + s]).resize((side, side)).save(root / f"{i:05d}.jpg", quality=90)
    return root


def crops(n: int) -> torch.Tensor:
    """``n`` preprocessed crops of the photos (model inputs, 224 px)."""
    spec = zoo.get_spec("efficientnet_lite0")
    with tempfile.TemporaryDirectory() as tmp:
        folder = photo_folder(Path(tmp), n)
        return torch.stack([spec.preprocess(Image.open(p).convert("RGB")) for p in sorted(folder.iterdir())])


def memory_case(case: str | None, model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor, opts: dict):
    """The child side of ``common.peak_memory``: a call over the folder ``opts["folder"]``."""
    from seewhy.inside import colour_concepts, dissect, top_patches

    folder = opts.get("folder")
    # one batch size for every folder: the engine measures its own only for 256 images or more, and a larger batch
    # holds more activations (that is the batch, not the folder)
    if case == "top_patches":
        return lambda: top_patches(model, folder, "_blocks.5", k=9, batch_size=MEMORY_BATCH)
    if case == "dissect":
        return lambda: dissect(model, folder, colour_concepts, "_blocks.2", batch_size=MEMORY_BATCH)
    return lambda: None


def user_model() -> torch.nn.Module:
    """examples/user_efficientnet.py: EfficientNet-Lite0 written as a user would (no seewhy helpers)."""
    spec = importlib.util.spec_from_file_location("user_efficientnet", USER_FILE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build(pretrained=True).eval()


class _Stop(Exception):
    pass


def layer_forward(model: torch.nn.Module, x: torch.Tensor, layer: str, batch: int) -> Callable[[], None]:
    """The same-work reference of a pass: the model's forward up to ``layer`` (a plain forward hook that ends it),
    inference mode, channels_last, ``batch`` images at a time."""
    module = model.get_submodule(layer)
    xs = [x[i:i + batch].contiguous(memory_format=torch.channels_last) for i in range(0, x.shape[0], batch)]

    def hook(m: torch.nn.Module, args: tuple, out: torch.Tensor) -> None:
        raise _Stop

    def step() -> None:
        handle = module.register_forward_hook(hook)
        try:
            with torch.inference_mode():
                for xb in xs:
                    try:
                        model(xb)
                    except _Stop:
                        pass
        finally:
            handle.remove()

    return step


def timed(args: argparse.Namespace, model: torch.nn.Module, x: torch.Tensor, calls: dict) -> tuple[str, str]:
    """The calls timed interleaved with the model's best forward and with its forward stopped after the call's
    layer (the same work: ``calls`` maps a name to ``(layer, passes, fn)``): (header line, table)."""
    best = best_forward(model, x, args.repeat)
    n = x.shape[0]
    rows = []
    for name, (layer, passes, fn) in calls.items():
        ref = layer_forward(model, x, layer, best.batch)
        t = interleaved({"best": best.step, "layer": ref, "call": fn}, args.repeat)
        best.update(t["best"].min / best.images)
        rows.append((name, t["call"].min / n, passes * t["layer"].min / n))
    lines = [(name, f"{1 / sec:.1f}", ms(sec), f"{sec / best.seconds:.2f}x", f"{sec / same:.2f}x")
             for name, sec, same in rows]
    header = (f"Reference: best forward {ms(best.seconds)} ms per image ({1 / best.seconds:.1f} images/s, "
              f"{best.where}), {n} images per call. Same work: the forward stopped after the layer, at that batch "
              "size (twice for dissect's two passes), timed interleaved with the call.")
    return header, table(["call", "images/s", "ms per image", "vs best forward", "vs forward to the layer"], lines)


def speed(args: argparse.Namespace, model: torch.nn.Module, x: torch.Tensor) -> list[str]:
    from seewhy.inside import colour_concepts, dissect, top_patches

    calls = {f"top_patches {layer}": (layer, 1, lambda layer=layer: top_patches(model, x, layer, k=9))
             for layer in PATCH_LAYERS}
    calls.update({f"dissect {layer}": (layer, 2, lambda layer=layer: dissect(model, x, colour_concepts, layer))
                  for layer in DISSECT_LAYERS})
    with tempfile.TemporaryDirectory() as tmp:
        folder = photo_folder(Path(tmp) / "photos", x.shape[0])
        calls["top_patches _blocks.5 (JPEG folder)"] = ("_blocks.5", 1,
                                                        lambda: top_patches(model, folder, "_blocks.5", k=9))
        out = list(timed(args, model, x, calls))
    if USER_FILE.exists():  # the "any model" check: a user-style module, its own best forward
        user = user_model()
        calls = {f"top_patches {layer}": (layer, 1, lambda layer=layer: top_patches(user, x, layer, k=9))
                 for layer in ("blocks.5", "blocks.15")}
        calls["dissect blocks.2"] = ("blocks.2", 2, lambda: dissect(user, x, colour_concepts, "blocks.2"))
        header, tab = timed(args, user, x, calls)
        out += ["## The same on a user-style EfficientNet-Lite0 (`examples/user_efficientnet.py`)", header, tab]
    return out


def embed_costs(args: argparse.Namespace, model: torch.nn.Module, x: torch.Tensor) -> str:
    from seewhy.inside import embed

    rows = []
    for method in ("pca", "tsne", "umap"):
        try:
            embed(model, x[:8], "_features", method=method)  # warm-up (UMAP compiles with numba)
            e = embed(model, x, "_features", method=method)
        except ImportError as err:
            rows.append((method, "-", "-", f"not run: {err}"))
            continue
        f, p = e.seconds["features"], e.seconds["projection"]
        rows.append((method, f"{f:.2f}", f"{p:.2f}", f"{x.shape[0]} images, 1280 features"))
    return table(["method", "features s", "projection s", "note"], rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--memory-images", default="200,2000")
    parser.add_argument("--out", default=str(RESULTS / "inside.md"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = zoo.load("efficientnet_lite0")
    x = crops(args.images)
    with quiet():
        speed_tables = speed(args, model, x)
        embed_table = embed_costs(args, model, x)
    memory_rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in (int(v) for v in args.memory_images.split(",")):
            folder = photo_folder(Path(tmp) / f"n{n}", n)
            row = [str(n)]
            for fixed in (False, True):  # glibc's default, then a fixed mmap threshold (what the code holds)
                if fixed:
                    os.environ["MALLOC_MMAP_THRESHOLD_"] = str(1 << 20)
                try:
                    for case in ("top_patches", "dissect"):
                        opts = {"folder": str(folder)}
                        row.append(f"{peak_memory('bench_inside', case, batch=1, threads=args.threads, opts=opts):.0f}")
                finally:
                    os.environ.pop("MALLOC_MMAP_THRESHOLD_", None)
            memory_rows.append(row)
    text = "\n\n".join([
        "# seewhy.inside: dataset passes on efficientnet_lite0 (224 px)",
        environment(),
        *speed_tables,
        "## embed: features and projection (seconds)",
        embed_table,
        "## Peak memory over a folder of JPEG files (MB), batch size 8",
        MEMORY,
        "Columns 2-3 with glibc's default allocator settings; columns 4-5 with a fixed mmap threshold "
        "(`MALLOC_MMAP_THRESHOLD_=1048576`): by default glibc raises the threshold after large frees, so batch-sized "
        "tensors then come from the heap, whose fragmentation grows with the number of batches; fixed, the peak shows "
        "what the code holds.",
        table(["images", "top_patches _blocks.5", "dissect _blocks.2 (colours)", "top_patches, fixed threshold",
               "dissect, fixed threshold"], memory_rows),
    ])
    write(text, None if args.out == "-" else Path(args.out))


if __name__ == "__main__":
    main()
