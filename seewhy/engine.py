"""Batched evaluation of perturbed inputs at the model's forward throughput.

Every perturbation method (occlusion, feature ablation, RISE, LIME, KernelSHAP) is one loop: build ``n`` perturbed
rows, row ``r`` a variant of original sample ``sample[r]``; run them through the model in chunks of ``batch_size``;
score every row with the target(s); combine. :func:`evaluate` is that loop for any row builder, and
:func:`evaluate_masks` builds the rows on the fly as ``x * m + base * (1 - m)`` from masks (``where`` for boolean
masks, so kept pixels are bit-exact). Both

- run under ``torch.inference_mode()`` on the inputs' device (the model is not moved or changed);
- feed the model ``channels_last`` batches when it has 2-D convolutions and works in float32/float16/bfloat16
  (oneDNN on CPU and tensor cores on GPU are much faster in that layout); ``channels_last=`` forces either way;
- run ``batch_size`` rows per forward; by default, for a long run, the batch size measured fastest on this model
  (:func:`batch_size_for`: measured once per model and input shape, since the best size depends on the model and
  the machine, not on a memory budget alone);
- score each chunk with every target given, so several targets share the same forward passes;
- report progress through :mod:`seewhy.progress` (a bar on a terminal or in Jupyter after a couple of seconds, a log
  line every few seconds otherwise), so a long run is never silent.

A row's score does not depend on the chunk it ran in (up to the model's own floating-point behaviour across batch
sizes). Randomness lives in the methods, which draw from a ``torch.Generator`` before any chunking.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .progress import progress as _progress
from .targets import Target

#: input values per chunk on CPU (about 5 images at 3x224x224) when no measurement chooses the batch size
CPU_BUDGET = 3 << 18
#: input values per chunk on accelerators: about 85 images at 3x224x224
DEVICE_BUDGET = 1 << 22
#: input values per forward+backward chunk on any device: about 13 images at 3x224x224
BACKWARD_BUDGET = 1 << 21
MAX_BATCH = 256
SCORES = ("logit", "probability", "auto")
#: from this many rows on, the batch size is measured on the model (the measurement costs ~100 image-forwards once)
MEASURE_MIN_ROWS = 256
_MEASURED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> {(shape, dtype, device, layout): size}
_clock = time.perf_counter

RowBuilder = Callable[[Tensor], Tensor]


def default_batch_size(inputs: Tensor, *, backward: bool = False) -> int:
    """Rows per model call from a memory budget, at least 1, at most 256: for forwards ~0.8 Mi input values on CPU
    (5 images at 3x224x224, where CPU throughput peaks) and 4 Mi on GPUs; for forward+backward passes
    (``backward=True``) ~2 Mi on any device (13 images at 3x224x224: larger chunks are no faster on a CPU and cost
    memory, 27 images at 224 px took 2.9 GB on EfficientNet-Lite0)."""
    if backward:
        budget = BACKWARD_BUDGET
    else:
        budget = CPU_BUDGET if inputs.device.type == "cpu" else DEVICE_BUDGET
    return int(min(MAX_BATCH, max(1, budget // max(1, inputs[0].numel()))))


def slices(n: int, size: int) -> list[slice]:
    """``range(n)`` in consecutive chunks of ``size`` (the last shorter): how every batched loop walks its rows."""
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise ValueError(f"batch_size must be a positive int or None, got {size!r}")
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def batch_size_for(model: nn.Module, like: Tensor, rows: int, channels_last: bool = False) -> int:
    """Rows per forward for ``rows`` rows shaped like ``like``: the batch size with the fastest per-image forward of
    this model, measured once per model, input shape, dtype, device and layout (powers of two up to four times
    :func:`default_batch_size`, and that size itself) by the first run of at least :data:`MEASURE_MIN_ROWS` rows
    (or the cost estimate before a command-line run) and used by every run after it; :func:`default_batch_size`
    before that. Results do not depend on it: every row is scored on its own."""
    default = default_batch_size(like)
    if not isinstance(model, nn.Module) or like.ndim < 2:
        return default
    key = (tuple(like.shape[1:]), like.dtype, str(like.device), bool(channels_last))
    cache = _MEASURED.setdefault(model, {})
    if key not in cache:
        if rows < MEASURE_MIN_ROWS:
            return default
        cache[key] = _fastest_batch(model, like, default, channels_last)
    return cache[key]


def _fastest_batch(model: nn.Module, like: Tensor, default: int, channels_last: bool) -> int:
    """The candidate batch size with the lowest per-image forward time (the faster of two timed calls each, after
    one warm-up call at the largest)."""
    sizes = sorted({s for s in (1, 2, 4, 8, 16, 32, 64, default) if s <= min(MAX_BATCH, 4 * default)})
    x = like[:1].detach().expand(sizes[-1], *like.shape[1:])
    x = x.contiguous(memory_format=torch.channels_last) if channels_last and x.ndim == 4 else x.contiguous()
    per_image = {}
    with torch.inference_mode():
        model(x)
        for size in sizes:
            best = float("inf")
            for _ in range(2):
                t0 = _clock()
                model(x[:size])
                best = min(best, _clock() - t0)
            per_image[size] = best / size
    return min(per_image, key=per_image.get)


def prefers_channels_last(model: nn.Module, inputs: Tensor) -> bool:
    """True when ``model`` has a 2-D convolution and ``inputs`` are 4-D float32/16 or bfloat16."""
    if not isinstance(model, nn.Module) or inputs.ndim != 4:
        return False
    if inputs.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        return False
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


def check_score(score: str) -> str:
    if score not in SCORES:
        raise ValueError(f"unknown score {score!r}; use 'logit' (raw output), 'probability' (softmax) or 'auto'")
    return score


def resolve_score(score: str, target: Target) -> str:
    """``"auto"`` means the class probability for class targets and the raw output for callable targets."""
    check_score(score)
    if score == "auto":
        return "logit" if target.indices is None and not target.pending else "probability"
    if score == "probability" and target.indices is None and not target.pending:
        raise ValueError("score='probability' needs class targets; use score='logit' with a callable target")
    return score


def score_rows(output: Tensor, target: Target, score: str = "logit") -> Tensor:
    """The target's score for each row of ``output`` (the softmax probability when ``score="probability"``)."""
    if score == "probability":
        output = output.softmax(dim=1)
    return target.score(output)


def evaluate(
    model: nn.Module,
    rows: RowBuilder | Tensor,
    sample: Tensor,
    targets: Target | Sequence[Target],
    *,
    like: Tensor,
    batch_size: int | None = None,
    score: str | Sequence[str] = "logit",
    channels_last: bool | None = None,
    progress: bool | None = None,
    desc: str = "perturbations",
) -> Tensor:
    """Scores of ``n`` perturbed rows, built chunk by chunk and run in ``torch.inference_mode()``.

    Args:
        model: in eval mode (the methods' :meth:`~seewhy.core.Method.run` sees to it).
        rows: a function ``indices (k,) -> rows (k,C,H,W)`` building any subset of the rows, or all rows as a tensor.
        sample: (n,) the original sample of each row (for the targets: ``target.select(sample[chunk])``).
        targets: one resolved :class:`~seewhy.targets.Target` or several, each scored on every chunk.
        like: an original input (sets the default batch size and the channels_last choice).
        batch_size: rows per forward (default: :func:`batch_size_for`, measured on the model for long runs).
        score: ``"logit"`` (the raw output) or ``"probability"`` (softmax over classes first), or one per target.
        channels_last: feed ``channels_last`` batches (default: :func:`prefers_channels_last`).
        progress: ``False`` to report no progress for this call (default: :mod:`seewhy.progress` decides).

    Returns:
        (n,) scores for one target, (T, n) for a sequence of T targets, in the output's dtype.
    """
    single = isinstance(targets, Target)
    tlist = [targets] if single else list(targets)
    if not tlist:
        raise ValueError("give at least one target")
    modes = [score] * len(tlist) if isinstance(score, str) else list(score)
    if len(modes) != len(tlist) or any(m not in ("logit", "probability") for m in modes):
        raise ValueError(f"score must be 'logit' or 'probability' (or one of them per target), got {score!r}")
    sample = torch.as_tensor(sample, dtype=torch.long).cpu()
    n = int(sample.shape[0])
    cl = prefers_channels_last(model, like) if channels_last is None else bool(channels_last)
    size = batch_size if batch_size is not None else batch_size_for(model, like, n, cl)
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise ValueError(f"batch_size must be a positive int or None, got {batch_size!r}")
    build = (lambda idx: rows[idx.to(rows.device)]) if isinstance(rows, Tensor) else rows
    out: Tensor | None = None
    order = torch.arange(n)
    with torch.inference_mode(), _progress(n, desc, "evaluations", enabled=progress is not False) as bar:
        for sl in slices(n, size):
            idx = order[sl]
            x = build(idx)
            if cl and x.ndim == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            output = model(x)
            prob = output.softmax(dim=1) if "probability" in modes else None
            rows_t = sample[idx]
            chunk = torch.stack([
                t.select(rows_t).score(prob if m == "probability" else output)
                for t, m in zip(tlist, modes, strict=True)
            ])
            if out is None:
                out = torch.empty((len(tlist), n), dtype=chunk.dtype, device=chunk.device)
            out[:, sl] = chunk
            bar.update(len(idx))
    if out is None:  # no rows
        out = torch.empty((len(tlist), 0), dtype=like.dtype, device=like.device)
    out = out.clone()  # a normal tensor, usable with autograd outside inference mode
    return out[0] if single else out


def forward(
    model: nn.Module, inputs: Tensor, *, batch_size: int | None = None, channels_last: bool | None = None
) -> Tensor:
    """The model's output on ``inputs`` through the same fast path (chunks, inference mode, channels_last)."""
    cl = prefers_channels_last(model, inputs) if channels_last is None else bool(channels_last)
    size = batch_size if batch_size is not None else batch_size_for(model, inputs, inputs.shape[0], cl)
    outs = []
    with torch.inference_mode():
        for sl in slices(inputs.shape[0], size):
            x = inputs[sl]
            outs.append(model(x.contiguous(memory_format=torch.channels_last) if cl else x))
    return torch.cat(outs).clone()


def evaluate_masks(
    model: nn.Module,
    inputs: Tensor,
    baseline: Tensor,
    masks: Callable[[Tensor], Tensor],
    sample: Tensor,
    targets: Target | Sequence[Target],
    *,
    batch_size: int | None = None,
    channels_last: bool | None = None,
    **kwargs,
) -> Tensor:
    """:func:`evaluate` for rows ``inputs[s] * m + baseline[s] * (1 - m)``.

    ``masks(indices)`` returns the keep-masks of those rows, (k, 1 or C, H, W): boolean (``True`` keeps the input
    pixel, exactly) or float in [0, 1] (a blend). ``baseline`` has the shape of ``inputs``. The rows are written
    into one reused buffer, in the memory format the model gets (no per-chunk allocation or layout copy).
    """
    sample = torch.as_tensor(sample, dtype=torch.long).cpu()
    cl = prefers_channels_last(model, inputs) if channels_last is None else bool(channels_last)
    size = batch_size if batch_size is not None else batch_size_for(model, inputs, int(sample.shape[0]), cl)
    fmt = torch.channels_last if cl and inputs.ndim == 4 else torch.contiguous_format
    state: dict[str, Tensor] = {}

    def pick(t: Tensor, s: Tensor) -> Tensor:
        first = int(s[0])
        if bool((s == first).all()):  # one image: a broadcast view, no copy
            return t[first : first + 1].expand(len(s), *t.shape[1:])
        return t[s.to(t.device)]

    def build(idx: Tensor) -> Tensor:
        s = sample[idx]
        m = masks(idx).to(inputs.device)
        if "buffer" not in state:
            shape = (min(size, max(1, len(sample))), *inputs.shape[1:])
            state["buffer"] = torch.empty(shape, dtype=inputs.dtype, device=inputs.device, memory_format=fmt)
        out = state["buffer"][: len(idx)]
        if m.dtype == torch.bool:
            return torch.where(m, pick(inputs, s), pick(baseline, s), out=out)
        if "diff" not in state:
            state["diff"] = inputs - baseline
        return torch.addcmul(pick(baseline, s), m.to(inputs.dtype), pick(state["diff"], s), out=out)

    return evaluate(model, build, sample, targets, like=inputs, batch_size=size, channels_last=cl, **kwargs)


def gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of (B,C,H,W) with reflect padding (kernel radius 3 sigma, capped by the image)."""
    if sigma <= 0:
        return x.clone()
    radius = max(1, min(int(3 * sigma + 0.5), min(x.shape[-2:]) - 1))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    c = x.shape[1]
    y = F.pad(x, (radius, radius, radius, radius), mode="reflect")
    y = F.conv2d(y, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(y, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def make_baseline(inputs: Tensor, baseline: float | str | Tensor, *, blur_sigma: float = 10.0) -> Tensor:
    """The fill of perturbed regions, shaped like ``inputs``: a number (constant, e.g. 0.0 = the dataset mean for
    normalised inputs), ``"mean"`` (each image's mean colour per channel), ``"blur"`` (Gaussian, ``blur_sigma``
    pixels) or a tensor broadcastable to (B,C,H,W) (a (C,H,W) tensor is shared by all images)."""
    if isinstance(baseline, Tensor):
        try:
            return torch.broadcast_to(baseline.to(inputs), inputs.shape).contiguous()
        except RuntimeError:
            raise ValueError(
                f"baseline of shape {tuple(baseline.shape)} does not broadcast to inputs {tuple(inputs.shape)}; "
                "give (C,H,W), (B,C,H,W) or (C,1,1)"
            ) from None
    if isinstance(baseline, (int, float)) and not isinstance(baseline, bool):
        return torch.full_like(inputs, float(baseline))
    if baseline in ("zero", "zeros"):
        return torch.zeros_like(inputs)
    if baseline == "mean":
        return inputs.mean(dim=(2, 3), keepdim=True).expand_as(inputs).contiguous()
    if baseline == "blur":
        return gaussian_blur(inputs, blur_sigma)
    raise ValueError(f"unknown baseline {baseline!r}; use a number, 'mean', 'blur' or a tensor")


_M64 = (1 << 64) - 1


def derive_seed(seed: int, *keys: int) -> int:
    """A seed for one part of a seeded computation (an image, a draw, a training stage): splitmix64 of ``seed`` and
    ``keys``, so each part's randomness does not depend on how the work is chunked or ordered."""
    h = int(seed) & _M64
    for k in keys:
        z = (h + 0x9E3779B97F4A7C15 + (int(k) & _M64)) & _M64
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
        h = z ^ (z >> 31)
    return h


def row_generator(seed: int, *keys: int) -> torch.Generator:
    """A CPU generator seeded with :func:`derive_seed` ``(seed, *keys)``."""
    return torch.Generator().manual_seed(derive_seed(seed, *keys))


def generator(seed: int | None) -> tuple[torch.Generator, int]:
    """A CPU generator seeded with ``seed`` (drawn from torch's global generator when None), and the seed."""
    if seed is None:
        seed = int(torch.randint(0, 2**31 - 1, (1,)).item())
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TypeError(f"seed must be an int or None, got {seed!r}")
    return torch.Generator().manual_seed(seed), seed
