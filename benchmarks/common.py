"""Shared pieces of the benchmark scripts: the photo batch, the references, interleaved timing, peak memory, tables.

The project standard these helpers implement: the reference does the same work as the method (an input-only
backward for gradient methods; a competitor at the same batch/chunk size); both sides are warmed up and timed
interleaved in one process; a figure in the README names the results file that holds it.

Run ``python benchmarks/common.py --memory-case MODULE CASE ...`` only through :func:`peak_memory` (the child side).
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import math
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

import seewhy
from seewhy import engine, zoo
from seewhy.hooks import model_state
from seewhy.images import BUNDLED, bundled_image

HERE = Path(__file__).parent
RESULTS = HERE / "results"

INPUT_ONLY = (
    "**input-only forward+backward** (the reference of every ratio): parameters frozen and eval mode through "
    "`seewhy.hooks.model_state(model)`, as seewhy's methods run; a fresh input leaf, a forward with gradients, "
    "`torch.autograd.grad(score.sum(), leaf)` of the top-1 scores with respect to the input only"
)
TRAINING = (
    "**training-style forward+backward** (second column only): parameters require grad, "
    "`score.sum().backward()` to the input and every parameter, then `zero_grad`"
)
MEMORY = (
    "**peak MB**: each call runs once in a fresh Python process (`python benchmarks/common.py --memory-case`) that "
    "loads the model, the photos and the targets and builds the call; then the peak resident set is reset to the "
    "current one (`/proc/self/clear_refs`, 5) and the call runs: peak MB = VmHWM after the call - VmRSS before it "
    "(/proc/self/status), the extra memory one cold call needs (where the reset is not allowed: VmHWM minus that of "
    "a baseline process that does everything but the call). `getrusage(...).ru_maxrss` is not used: a child "
    "forked from a large benchmark process inherits the parent's high-water mark"
)


def setup(
    doc: str, extra: Callable[[argparse.ArgumentParser], None] | None = None
) -> tuple[argparse.Namespace, torch.nn.Module, torch.Tensor, torch.Tensor]:
    """Parse --batch/--repeat/--threads/--size (plus ``extra`` options), set the thread count, load
    efficientnet_lite0 and the photo batch: returns (args, model, x, top-1 targets)."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=3, help="interleaved timed rounds (after one warm-up round)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--size", type=int, default=224, help="input size in pixels (smaller: smoke runs only)")
    if extra is not None:
        extra(parser)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = zoo.load("efficientnet_lite0")
    x = photos(args.batch, size=args.size)
    return args, model, x, top1(model, x)


def photos(batch: int, model: str = "efficientnet_lite0", size: int = 224) -> torch.Tensor:
    """``batch`` bundled photos preprocessed for the zoo model (cycling through chelsea, coffee, ...), resized to
    ``size`` pixels when it is not the model's 224."""
    spec = zoo.get_spec(model)
    x = torch.stack([spec.preprocess(bundled_image(BUNDLED[i % len(BUNDLED)])) for i in range(batch)])
    if x.shape[-1] != size:
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", antialias=True)
    return x


def top1(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The top-1 classes of ``x`` (the targets of every benchmark)."""
    with torch.no_grad():  # not inference_mode: the targets are used in autograd-tracked code
        return model(x).argmax(1)


# ---------------------------------------------------------------------------------------------------- references


def input_only_step(model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor) -> Callable[[], torch.Tensor]:
    """The reference of the gradient, CAM and LRP ratios: one forward+backward of the target scores to the input
    only, with the parameters frozen (``model_state``), as seewhy's gradient methods do."""

    def step() -> torch.Tensor:
        with model_state(model), torch.enable_grad():
            leaf = x.detach().clone().requires_grad_(True)
            score = model(leaf).gather(1, target[:, None])
            (grad,) = torch.autograd.grad(score.sum(), leaf)
        return grad

    return step


def training_step(model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor) -> Callable[[], None]:
    """A training-style step (the old reference, kept as a second column): backward of the target scores to the
    input and every parameter, gradients cleared afterwards."""

    def step() -> None:
        leaf = x.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            model(leaf).gather(1, target[:, None]).sum().backward()
        model.zero_grad(set_to_none=True)

    return step


def forward_step(model: torch.nn.Module, x: torch.Tensor, batch: int, channels_last: bool, images: int = 16
                 ) -> tuple[Callable[[], None], int]:
    """A plain forward under ``torch.inference_mode()`` of batches of ``batch`` copies of the first image, repeated
    until about ``images`` images went through; returns (the step, how many images one step runs)."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    xb = x[:1].expand(batch, -1, -1, -1).contiguous(memory_format=fmt)
    reps = max(1, math.ceil(images / batch))

    def step() -> None:
        with torch.inference_mode():
            for _ in range(reps):
                model(xb)

    return step, reps * batch


def forward_batches(x: torch.Tensor, model: torch.nn.Module) -> list[int]:
    """The batch sizes the best forward is searched over: 1, 2, 4, 8, 16, the engine's memory-budget default
    (``seewhy.engine.default_batch_size``) and the size the engine measures fastest on ``model`` for long runs
    (:func:`engine_batch`), sorted."""
    return sorted({1, 2, 4, 8, 16, engine.default_batch_size(x), engine_batch(model, x)})


def engine_batch(model: torch.nn.Module, x: torch.Tensor) -> int:
    """The batch size seewhy's engine runs a long evaluation of ``x``-shaped rows at on ``model``, as the engine
    measures it (``seewhy.engine.batch_size_for``; cached per model)."""
    return engine.batch_size_for(model, x[:1], engine.MEASURE_MIN_ROWS, engine.prefers_channels_last(model, x))


@dataclass
class BestForward:
    """The best measured per-image forward: seconds, where it was found, and a step that measures it again."""

    seconds: float
    batch: int
    channels_last: bool
    step: Callable[[], None]
    images: int
    sweep: dict[str, float] = field(default_factory=dict)

    @property
    def where(self) -> str:
        return f"batch {self.batch}, {'channels_last' if self.channels_last else 'contiguous'}"

    def update(self, seconds_per_image: float) -> None:
        self.seconds = min(self.seconds, seconds_per_image)


def best_forward(model: torch.nn.Module, x: torch.Tensor, repeat: int = 3, images: int = 16) -> BestForward:
    """Sweep :func:`forward_batches` x both memory formats (each warmed up, ``repeat`` timed runs of about
    ``images`` images, the fastest kept) and return the best setting. Re-measure it next to each method with
    ``best.step`` (interleaved) and keep the lowest with ``best.update``."""
    best: BestForward | None = None
    sweep: dict[str, float] = {}
    for cl in (False, True):
        for b in forward_batches(x, model):
            step, n = forward_step(model, x, b, cl, images)
            sec = interleaved({"f": step}, repeat)["f"].min / n
            sweep[f"{b}{' cl' if cl else ''}"] = sec
            if best is None or sec < best.seconds:
                best = BestForward(sec, b, cl, step, n)
    assert best is not None
    best.sweep = sweep
    return best


# -------------------------------------------------------------------------------------------------------- timing


@dataclass
class Timing:
    """Wall times (seconds per call) of one side of an interleaved measurement."""

    times: list[float] = field(default_factory=list)

    @property
    def min(self) -> float:
        return min(self.times)

    @property
    def median(self) -> float:
        return statistics.median(self.times)


def interleaved(fns: dict[str, Callable[[], object]], rounds: int, *, warmup: int = 1,
                schedule: Sequence[str] | None = None, settle: bool = False) -> dict[str, Timing]:
    """Time several functions interleaved in this process: ``warmup`` untimed calls of each, then ``rounds``
    rounds that call each once in ``schedule`` order (default: the order of ``fns``; a name may appear several
    times, e.g. the reference between every method). With ``settle`` every timed call follows an untimed call of
    the same function (so no call inherits another's memory state). Returns per-name times (``.min``,
    ``.median``); the minimum is the least disturbed run on a shared machine."""
    order = list(schedule) if schedule is not None else list(fns)
    out = {name: Timing() for name in fns}
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    for _ in range(rounds):
        for name in order:
            fn = fns[name]
            if settle:
                fn()
            start = time.perf_counter()
            fn()
            out[name].times.append(time.perf_counter() - start)
    return out


# -------------------------------------------------------------------------------------------------------- memory


def peak_memory(module: str, case: str, *, batch: int, threads: int, size: int = 224, opts: dict | None = None
                ) -> float:
    """Extra peak resident memory in MB of one cold call of ``module.memory_case(case, ...)`` (see ``MEMORY``), run
    in a fresh process."""

    def child(name: str) -> dict:
        cmd = [sys.executable, str(HERE / "common.py"), "--memory-case", module, name, "--batch", str(batch),
               "--threads", str(threads), "--size", str(size), "--opts", json.dumps(opts or {})]
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=HERE)
        if done.returncode != 0:
            raise RuntimeError(f"memory case {module}:{name} failed:\n{done.stderr[-2000:]}")
        return json.loads(done.stdout.strip().splitlines()[-1])

    got = child(case)
    if got["reset"]:  # the high-water mark was reset just before the call
        return (got["peak_kb"] - got["before_kb"]) / 1024
    key = (module, batch, threads, size, json.dumps(opts or {}, sort_keys=True))
    if key not in _BASELINES:
        _BASELINES[key] = child("baseline")["peak_kb"]
    return (got["peak_kb"] - _BASELINES[key]) / 1024


_BASELINES: dict[tuple, float] = {}


def _status_kb(key: str) -> int:
    """A ``kB`` field of /proc/self/status (VmRSS: resident now, VmHWM: the peak since exec or the last reset)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {key} in /proc/self/status (peak memory needs Linux)")


def _memory_child(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--memory-case", nargs=2, metavar=("MODULE", "CASE"), required=True)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--opts", default="{}")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    module_name, case = args.memory_case
    sys.path.insert(0, str(HERE))
    module = importlib.import_module(module_name)
    model = zoo.load("efficientnet_lite0")
    x = photos(args.batch, size=args.size)
    target = top1(model, x)
    fn = module.memory_case(case if case != "baseline" else None, model, x, target, json.loads(args.opts))
    before = _status_kb("VmRSS")
    try:  # "5" resets the peak resident set (VmHWM) to the current one (Linux >= 4.0)
        Path("/proc/self/clear_refs").write_text("5")
        reset = True
    except OSError:
        reset = False
    if case != "baseline":
        fn()
    print(json.dumps({"before_kb": before, "peak_kb": _status_kb("VmHWM"), "reset": reset}))


# ------------------------------------------------------------------------------------------------------- reports


def environment(extra: str = "") -> str:
    """Date, torch version, thread count, CPU, seewhy (and captum when importable) versions; then the command."""
    try:
        import captum

        cap = f", captum {captum.__version__}"
    except ImportError:
        cap = ""
    command = "python benchmarks/" + " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])
    return (f"{datetime.date.today().isoformat()}; torch {torch.__version__}, {torch.get_num_threads()} threads, "
            f"{platform.processor() or platform.machine()}, seewhy {seewhy.__version__}{cap}" + extra
            + f"\n\nCommand: `{command}`")


def table(headers: Sequence[str], rows: Sequence[Sequence[object]], right: Sequence[bool] | None = None) -> str:
    """A Markdown table (``right[i]``: right-align column i; default: every column but the first and last)."""
    right = right if right is not None else [0 < i < len(headers) - 1 for i in range(len(headers))]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---:" if r else "---" for r in right) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def write(text: str, out: Path | None) -> None:
    """Print ``text`` and write it to ``out`` (unless None)."""
    print(text)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
        print(f"\n(written to {out})")


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


if __name__ == "__main__":
    _memory_child(sys.argv[1:])
