"""Sanity checks: does the explanation depend on the model's parameters and on the explained class?

- Model-parameter randomization (Adebayo et al. 2018, "Sanity checks for saliency maps", arXiv:1810.03292):
  re-initialise the model's layers from the top down, cumulatively (``mode="cascading"``) or one at a time
  (``"independent"``), re-explain, and compare each map with the trained model's map
  (:func:`seewhy.metrics.similarity.compare_maps`: Spearman of |maps| and of signed maps, SSIM, HOG).
  A method whose maps stay similar does not explain the model (Guided Backprop is the paper's example).
- Random logit (Sixt et al. 2020, arXiv:1912.09818): compare the map for the explained class with the map for
  a random other class; a class-insensitive method scores high.

Randomization always works on ``copy.deepcopy`` of the model: the user's model is never modified. The
explanation method is a registered name, a :class:`~seewhy.core.Method`, or any callable
``(model, inputs, target) -> attributions``. The explained class is the trained model's (``target``, or its
prediction) and stays fixed for every randomized model.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from .. import postprocess
from ..core import check_inputs
from ..hooks import model_state
from ..layers import resolve_layer
from ..methods.controls import image_seeds
from ..progress import progress
from ..targets import TargetSpec, make_target
from .common import Explainer, explainer, need_method, run_explainer
from .registry import MetricResult, register_metric
from .similarity import MEASURES, compare_maps

log = logging.getLogger(__name__)

LayerGroups = Sequence[str | nn.Module | Sequence[str | nn.Module]]


# --- targets, maps and measures -------------------------------------------------------------------------------------


def _resolve_target(model: nn.Module, inputs: Tensor, target: TargetSpec) -> tuple[TargetSpec, Tensor | None, Tensor]:
    """(spec to pass on, class indices or None, model output) -- "top1" resolved once, on the trained model."""
    t = make_target(target, inputs.shape[0], getattr(model, "class_names", None))
    with torch.inference_mode(False), model_state(model), torch.no_grad():
        out = model(inputs)
    t = t.resolve(out)
    if t.indices is not None:
        return t.indices.clone(), t.indices.clone(), out
    return target, None, out


def _check_original(attributions: Tensor | None, inputs: Tensor) -> Tensor | None:
    if attributions is None:
        return None
    if not isinstance(attributions, Tensor) or attributions.ndim != 4 or attributions.shape[0] != inputs.shape[0]:
        shape = tuple(attributions.shape) if isinstance(attributions, Tensor) else type(attributions).__name__
        raise ValueError(f"attributions must be ({inputs.shape[0]}, C, H, W) raw maps of the method, got {shape}")
    return attributions.detach()


def _compare_size(size: str | tuple[int, int] | None, inputs: Tensor) -> tuple[int, int] | None:
    if size == "input":
        return tuple(inputs.shape[-2:])
    if size is None or (isinstance(size, tuple) and len(size) == 2):
        return size
    raise ValueError(f"size must be 'input', None (the maps' own size) or (H, W), got {size!r}")


def _hog_cell(measures: Sequence[str], hw: tuple[int, int], pixels_per_cell: int | None) -> int | None:
    if "hog" not in measures:
        return pixels_per_cell
    fit = min(hw) // 3
    if pixels_per_cell is None:
        return max(1, fit)
    if pixels_per_cell > fit:
        log.info("hog: %d px cells do not fit in %s maps; using %d px cells", pixels_per_cell, hw, max(1, fit))
        return max(1, fit)
    return pixels_per_cell


# --- which layers, and how they are randomized ----------------------------------------------------------------------


def _owners(model: nn.Module, prefix: str = "") -> list[str]:
    """Names of the modules under ``prefix`` that own parameters directly, in module order."""
    out = []
    for name, m in model.named_modules():
        if prefix and not (name == prefix or name.startswith(prefix + ".")):
            continue
        if next(m.parameters(recurse=False), None) is not None:
            out.append(name)
    return out


def randomization_steps(
    model: nn.Module, layers: LayerGroups | None = None, group: str | int = "layer"
) -> list[tuple[str, tuple[str, ...]]]:
    """The randomization steps: ``[(label, module names re-initialised at this step), ...]``, top layer first.

    Args:
        model: the model (only read).
        layers: None for every module that owns parameters (conv, linear, norm, ...), in reverse module
            order -- module registration order, which is the forward order for most models; pass ``layers``
            when it is not. Otherwise one entry per step, in the order they are randomised (top first): a
            module name or module (all parameters under it), or a list of them (one step).
        group: with ``layers=None``: ``"layer"`` (one step per parameterized module), ``"block"`` (one step per
            top-level child, as Adebayo et al.'s Inception blocks) or an int k (group by the first k parts
            of the dotted name).
    """
    if layers is not None:
        steps = []
        for entry in layers:
            items = [entry] if isinstance(entry, str | nn.Module) else list(entry)
            names: list[str] = []
            labels = []
            for item in items:
                name, _ = resolve_layer(model, item)
                owned = _owners(model, name)
                if not owned:
                    raise ValueError(f"layer {name!r} has no parameters to randomize; pick a module that has some")
                names += [n for n in owned if n not in names]
                labels.append(name)
            steps.append(("+".join(labels), tuple(names)))
        if not steps:
            raise ValueError("layers is empty; pass None for every parameterized layer")
        return steps
    owned = _owners(model)
    if not owned:
        raise ValueError("the model has no parameters to randomize")
    if group == "layer":
        depth = None
    elif group == "block":
        depth = 1
    elif isinstance(group, int) and not isinstance(group, bool) and group >= 1:
        depth = group
    else:
        raise ValueError(f"group must be 'layer', 'block' or a positive int (name depth), got {group!r}")
    grouped: dict[str, list[str]] = {}
    for name in owned:
        key = name if depth is None else ".".join(name.split(".")[:depth])
        grouped.setdefault(key or "(root)", []).append(name)
    return [(key, tuple(names)) for key, names in reversed(grouped.items())]


def _layer_seed(seed: int, name: str) -> int:
    h = hashlib.blake2b(f"{seed}:{name}".encode(), digest_size=8)
    return int.from_bytes(h.digest(), "little") >> 1


def _randomize(model: nn.Module, names: Sequence[str], seed: int, init: str, reset_buffers: bool) -> None:
    """Re-initialise the parameters owned by the modules ``names`` of ``model`` (a copy), in place."""
    modules = dict(model.named_modules())
    for name in names:
        m = modules[name]
        s = _layer_seed(seed, name)
        if init == "reset" and hasattr(m, "reset_parameters"):
            saved = {} if reset_buffers else {k: b.clone() for k, b in m.named_buffers(recurse=False)}
            cuda = sorted({p.device.index or 0 for p in m.parameters() if p.device.type == "cuda"})
            with torch.random.fork_rng(devices=cuda), torch.no_grad():  # the global RNG is left as it was
                torch.manual_seed(s)
                m.reset_parameters()
                for k, b in m.named_buffers(recurse=False):
                    if k in saved:
                        b.copy_(saved[k])
            continue
        if init == "reset":
            log.info("%s (%s) has no reset_parameters(); drawing normal weights instead", name, type(m).__name__)
        gen = torch.Generator().manual_seed(s)
        with torch.no_grad():
            for p in m.parameters(recurse=False):
                ref = p.detach().to(torch.float64)
                mean = float(ref.mean()) if ref.numel() else 0.0
                std = float(ref.std()) if ref.numel() > 1 else abs(mean)
                draw = torch.randn(p.shape, generator=gen, dtype=torch.float64) * std + mean
                p.copy_(draw.to(p.device, p.dtype))


# --- model-parameter randomization ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RandomizationResult:
    """What a model-parameter randomization check found.

    ``layers[k]``: label of step k (top first); ``modules[k]``: the module names re-initialised at step k
    (cascading: in addition to the steps before); ``original``: (B,C,h,w) raw attributions of the trained
    model; ``maps[k]``: (B,C,h,w) raw attributions after step k (empty when ``keep_maps=False``);
    ``scores[measure]``: (L, B) similarity to the original map, per step and image (float64; NaN where a map
    is constant); ``targets``: (B,) explained classes (None for callable targets); ``protocol``: every
    setting that decides the numbers.
    """

    mode: str
    method: str
    layers: tuple[str, ...]
    modules: tuple[tuple[str, ...], ...]
    original: Tensor
    maps: tuple[Tensor, ...]
    scores: dict[str, Tensor]
    targets: Tensor | None
    protocol: dict[str, Any] = field(default_factory=dict)
    heatmap_convention: dict[str, Any] = field(default_factory=dict)

    def mean(self, measure: str = "spearman_abs") -> Tensor:
        """(B,) similarity averaged over the randomization steps (the unrandomized map is not counted)."""
        return torch.nanmean(self._scores(measure), 0)

    def last(self, measure: str = "spearman_abs") -> Tensor:
        """(B,) similarity after the last step (cascading: the fully randomized model)."""
        return self._scores(measure)[-1]

    def _scores(self, measure: str) -> Tensor:
        if measure not in self.scores:
            raise ValueError(f"measure {measure!r} was not computed; computed: {', '.join(self.scores)}")
        return self.scores[measure]

    def heatmaps(self, size: tuple[int, int] | None = None, **overrides: Any) -> Tensor:
        """(L+1, B, 1, H, W) heatmaps in [0, 1] for the report grid: row 0 the trained model, row k+1 after step
        k; by the method's heatmap convention (``overrides`` as :func:`seewhy.postprocess.heatmap`)."""
        if not self.maps:
            raise ValueError("the maps were not kept; run the check with keep_maps=True")
        steps = {"reduce": "sum", "sign": "abs", "upsample": "bilinear", "normalize": "minmax"}
        steps.update(self.heatmap_convention)
        steps.update(overrides)
        size = size or tuple(self.protocol.get("input_size") or self.original.shape[-2:])
        return torch.stack([postprocess.heatmap(m, size, **steps) for m in (self.original, *self.maps)])

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly record: layers, modules, scores as nested lists [step][image], protocol."""
        return {
            "check": "model_parameter_randomization",
            "mode": self.mode,
            "method": self.method,
            "layers": list(self.layers),
            "modules": [list(m) for m in self.modules],
            "targets": None if self.targets is None else self.targets.tolist(),
            "scores": {
                k: [[None if math.isnan(v) else v for v in row] for row in s.tolist()] for k, s in self.scores.items()
            },
            "protocol": self.protocol,
        }


#: how the similarities are computed, for the protocol
_SSIM = {"gaussian_weights": True, "data_range": 1.0, "maps": "grayscale (min to percentile -> [0, 1])"}


def parameter_randomization(
    model: nn.Module,
    inputs: Tensor,
    method: Explainer,
    target: TargetSpec = None,
    *,
    mode: str = "cascading",
    layers: LayerGroups | None = None,
    group: str | int = "layer",
    measures: Sequence[str] = MEASURES,
    init: str = "reset",
    reset_buffers: bool = False,
    seed: int = 0,
    size: str | tuple[int, int] | None = "input",
    percentile: float = 99.0,
    hog_pixels_per_cell: int | None = 16,
    attributions: Tensor | None = None,
    keep_maps: bool = True,
    method_params: dict[str, Any] | None = None,
) -> RandomizationResult:
    """Model-parameter randomization test (Adebayo et al. 2018): s_k = sim(E(f_theta, x), E(f_theta_k, x)),
    theta_k the parameters with the top k steps re-initialised (cascading) or only step k (independent).

    Args:
        model: the trained model; never modified (randomization works on ``copy.deepcopy(model)``).
        inputs: (B,C,H,W) images.
        method: a registered method name, a Method, or a callable ``(model, inputs, target) -> (B,C,h,w)``.
        target: the class to explain (default: the trained model's prediction); the same class is explained
            for every randomized model.
        mode: ``"cascading"`` (top down, cumulative) or ``"independent"`` (one step at a time, others trained).
        layers, group: the steps, see :func:`randomization_steps`.
        measures: similarity measures from :data:`~seewhy.metrics.similarity.MEASURES`.
        init: ``"reset"``: each module's own ``reset_parameters()`` (PyTorch's default initialiser, as the paper
            re-runs the variables' initialisers), under ``torch.manual_seed`` of a seed derived from ``seed``
            and the module name, with torch's global RNG restored afterwards; modules without it fall back to
            ``"normal"``: each parameter tensor drawn i.i.d. from N(mean, std^2) of its trained values.
        reset_buffers: also reset buffers (BatchNorm running statistics) with ``reset_parameters()``; by default
            they are kept, as in the paper (only trainable variables are re-initialised).
        seed: the same seed gives the same randomized weights in both modes and the same result.
        size: compare maps at the input size (``"input"``, bilinear), at their own size (None) or at (H, W).
        percentile, hog_pixels_per_cell: see :func:`~seewhy.metrics.similarity.compare_maps`; HOG cells that
            do not fit three times in the maps are shrunk to ``min(H, W) // 3`` (recorded in ``protocol``).
        attributions: the method's (B,C,h,w) maps on the trained model, if already computed (saves one call).
        keep_maps: keep every step's raw maps (for the report grid).
        method_params: hyperparameters for a method given by name (a dict, so that e.g. the method's ``seed``
            does not collide with this function's).
    Returns:
        :class:`RandomizationResult` (scores (L, B) per measure; lower = the method depends on the parameters).
    """
    _check_settings(model, mode, init, seed, measures)
    inputs = check_inputs(inputs)
    explain, name, convention = explainer(method, method_params, seed)
    steps = randomization_steps(model, layers, group)
    with torch.inference_mode(False):  # the copies must hold normal tensors even inside inference_mode
        base = _copy(model)
        spec, indices, _ = _resolve_target(base, inputs, target)
        original = _check_original(attributions, inputs)
        if original is None:
            original = run_explainer(explain, base, inputs, spec)
        cmp_size = _compare_size(size, inputs)
        ppc = _hog_cell(measures, cmp_size or tuple(original.shape[-2:]), hog_pixels_per_cell)

        def compare(attr: Tensor) -> dict[str, Tensor]:
            if cmp_size is None and attr.shape[1:] != original.shape[1:]:
                raise ValueError(f"the maps changed shape from {tuple(original.shape)} to {tuple(attr.shape)}")
            return compare_maps(original, attr, measures, size=cmp_size, percentile=percentile, hog_pixels_per_cell=ppc)

        randomize = functools.partial(_randomize, seed=seed, init=init, reset_buffers=reset_buffers)
        maps, scores = _randomized_maps(base, inputs, spec, explain, steps, mode, randomize, compare, keep_maps)
    protocol = {"mode": mode, "init": init, "reset_buffers": reset_buffers, "seed": seed,
                "group": group if layers is None else "custom", "measures": list(measures),
                "size": list(cmp_size) if cmp_size else None, "percentile": percentile, "hog_pixels_per_cell": ppc,
                "ssim": dict(_SSIM), "target": "given" if target is not None else "trained model's prediction",
                "input_size": list(inputs.shape[-2:])}
    return RandomizationResult(mode=mode, method=name, layers=tuple(label for label, _ in steps),
                               modules=tuple(names for _, names in steps), original=original, maps=tuple(maps),
                               scores=scores, targets=indices, protocol=protocol, heatmap_convention=convention)


def _check_settings(model: nn.Module, mode: str, init: str, seed: int, measures: Sequence[str]) -> None:
    if mode not in ("cascading", "independent"):
        raise ValueError(f"unknown mode {mode!r}; use 'cascading' or 'independent'")
    if init not in ("reset", "normal"):
        raise ValueError(f"unknown init {init!r}; use 'reset' or 'normal'")
    _check_seed_and_measures(seed, measures)
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")


def _check_seed_and_measures(seed: int, measures: Sequence[str]) -> None:
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TypeError(f"seed must be an int, got {seed!r}")
    unknown = [m for m in measures if m not in MEASURES]
    if unknown or not measures:
        raise ValueError(f"unknown similarity measure(s) {unknown or measures}; use some of {', '.join(MEASURES)}")


def _copy(model: nn.Module) -> nn.Module:
    try:
        return copy.deepcopy(model)
    except Exception as err:
        raise TypeError(f"the model cannot be copied with copy.deepcopy ({err}); randomization needs a copy") from err


def _randomized_maps(
    base: nn.Module, inputs: Tensor, target: TargetSpec, explain: Callable, steps: list[tuple[str, tuple[str, ...]]],
    mode: str, randomize: Callable, compare: Callable, keep_maps: bool,
) -> tuple[list[Tensor], dict[str, Tensor]]:
    """Each step's maps (when ``keep_maps``) and {measure: (L, B) similarity to the original map}: ``base`` (a copy)
    randomized cumulatively (cascading) or a fresh copy of it per step (independent)."""
    maps: list[Tensor] = []
    scores: dict[str, list[Tensor]] = {}
    work = base
    with progress(len(steps), f"{mode} randomization", "layers") as bar:
        for label, names in steps:
            bar.set_postfix(str(label))
            if mode == "independent":
                work = copy.deepcopy(base)
            randomize(work, names)
            attr = run_explainer(explain, work, inputs, target)
            for m, s in compare(attr).items():
                scores.setdefault(m, []).append(s)
            if keep_maps:
                maps.append(attr)
            bar.update()
    return maps, {m: torch.stack(v) for m, v in scores.items()}


def cascading_randomization(
    model: nn.Module, inputs: Tensor, method: Explainer, target: TargetSpec = None, **kwargs: Any
) -> RandomizationResult:
    """Cascading model-parameter randomization (Adebayo et al. 2018): :func:`parameter_randomization` with
    ``mode="cascading"`` -- the top k steps re-initialised together, k = 1..L."""
    return parameter_randomization(model, inputs, method, target, mode="cascading", **kwargs)


def independent_randomization(
    model: nn.Module, inputs: Tensor, method: Explainer, target: TargetSpec = None, **kwargs: Any
) -> RandomizationResult:
    """Independent model-parameter randomization (Adebayo et al. 2018): :func:`parameter_randomization` with
    ``mode="independent"`` -- one step re-initialised at a time, the rest trained."""
    return parameter_randomization(model, inputs, method, target, mode="independent", **kwargs)


# --- random logit ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RandomLogitResult:
    """What the random-logit test found: ``targets`` (B,) explained classes, ``others`` (B,) the random other
    classes, ``original`` / ``maps`` (B,C,h,w) raw attributions for each, ``scores[measure]`` (B,) their
    similarity (lower = the method is class-sensitive), ``protocol``."""

    method: str
    targets: Tensor
    others: Tensor
    original: Tensor
    maps: Tensor
    scores: dict[str, Tensor]
    protocol: dict[str, Any] = field(default_factory=dict)
    heatmap_convention: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "check": "random_logit",
            "method": self.method,
            "targets": self.targets.tolist(),
            "others": self.others.tolist(),
            "scores": {k: [None if math.isnan(v) else v for v in s.tolist()] for k, s in self.scores.items()},
            "protocol": self.protocol,
        }


def random_logit_test(
    model: nn.Module,
    inputs: Tensor,
    method: Explainer,
    target: TargetSpec = None,
    *,
    measures: Sequence[str] = ("ssim", "spearman_abs"),
    num_classes: int | None = None,
    seed: int = 0,
    size: str | tuple[int, int] | None = "input",
    percentile: float = 99.0,
    hog_pixels_per_cell: int | None = 16,
    attributions: Tensor | None = None,
    method_params: dict[str, Any] | None = None,
) -> RandomLogitResult:
    """Random-logit test (Sixt et al. 2020; Adebayo et al. 2018): s = sim(E_c(x), E_c'(x)), c the explained
    class, c' drawn uniformly from the other classes.

    c' is drawn per image from a generator seeded by ``seed`` and a hash of the image
    (:func:`~seewhy.methods.controls.image_seeds`), so it does not depend on the batch. SSIM is computed on the
    2-D maps (Quantus flattens them to 1-D).

    Args:
        model, inputs, method, target: as :func:`parameter_randomization` (class targets only).
        measures: similarity measures (:data:`~seewhy.metrics.similarity.MEASURES`).
        num_classes: number of classes to draw from (default: the width of the model's output).
        attributions: the method's maps for ``target``, if already computed.
        method_params: hyperparameters for a method given by name.
    Returns:
        :class:`RandomLogitResult`.
    """
    _check_seed_and_measures(seed, measures)
    inputs = check_inputs(inputs)
    explain, name, convention = explainer(method, method_params, seed)
    spec, indices, out = _resolve_target(model, inputs, target)
    if indices is None:
        raise TypeError("the random-logit test needs class targets (int, list of ints, 'top1'), not a callable")
    k = int(num_classes) if num_classes is not None else int(out.shape[1])
    if k < 2:
        raise ValueError(f"the random-logit test needs at least 2 classes, got num_classes={k}")
    if int(indices.max()) >= k:
        raise ValueError(f"target class {int(indices.max())} is not below num_classes={k}")
    draws = [
        int(torch.randint(k - 1, (1,), generator=torch.Generator().manual_seed(s))) for s in image_seeds(inputs, seed)
    ]
    others = (indices + 1 + torch.tensor(draws, dtype=torch.long, device=indices.device)) % k
    original = _check_original(attributions, inputs)
    if original is None:
        original = run_explainer(explain, model, inputs, spec)
    other_maps = run_explainer(explain, model, inputs, others.clone())
    cmp_size = _compare_size(size, inputs)
    ppc = _hog_cell(measures, cmp_size or tuple(original.shape[-2:]), hog_pixels_per_cell)
    scores = compare_maps(original, other_maps, measures, size=cmp_size, percentile=percentile, hog_pixels_per_cell=ppc)
    protocol = {
        "seed": seed,
        "num_classes": k,
        "measures": list(measures),
        "size": list(cmp_size) if cmp_size else None,
        "percentile": percentile,
        "hog_pixels_per_cell": ppc,
        "target": "given" if target is not None else "model's prediction",
    }
    return RandomLogitResult(name, indices, others, original, other_maps, scores, protocol, convention)


# --- registered metrics ---------------------------------------------------------------------------------------------


def _randomization_cost(params: dict[str, Any]) -> int:
    """Explanation calls per image: one per randomization step (counted on ``params["model"]`` when given)."""
    if params.get("model") is None:
        return int(params.get("n_steps", 1))
    return len(randomization_steps(params["model"], params.get("layers"), params.get("group", "layer")))


def model_randomization_result(
    model: nn.Module,
    inputs: Tensor,
    attributions: Tensor | None,
    target: TargetSpec = None,
    *,
    method: Explainer | None = None,
    mode: str = "cascading",
    measure: str = "spearman_abs",
    measures: Sequence[str] = (),
    seed: int | None = 0,
    keep_maps: bool = True,
    **kwargs: Any,
) -> MetricResult:
    """:func:`model_randomization` with its record: ``details`` is the :class:`RandomizationResult` (the maps of
    every step with ``keep_maps``, the similarities by every one of ``measure`` and ``measures``)."""
    result = parameter_randomization(
        model,
        inputs,
        need_method(method, "model_randomization"),
        target,
        mode=mode,
        measures=tuple(dict.fromkeys((measure, *measures))),
        seed=0 if seed is None else seed,
        attributions=attributions,
        keep_maps=keep_maps,
        **kwargs,
    )
    return MetricResult(result.mean(measure), protocol={"measure": measure, **result.protocol}, details=result)


@register_metric("model_randomization", family="sanity", higher_is_better=False, needs=("method",),
                 cost=_randomization_cost, per_batch=True, forwards=parameter_randomization,
                 detailed=model_randomization_result)
def model_randomization(model: nn.Module, inputs: Tensor, attributions: Tensor | None, target: TargetSpec = None, *,
                        method: Explainer | None = None, mode: str = "cascading", measure: str = "spearman_abs",
                        seed: int | None = 0, **kwargs: Any) -> Tensor:
    """Model-parameter randomization score (Adebayo et al. 2018): mean over the randomization steps of the
    similarity to the trained model's map, s = mean_k sim(E(f_theta, x), E(f_theta_k, x)); (B,), lower = better.

    ``mode``: "cascading" or "independent"; ``measure``: one of :data:`~seewhy.metrics.similarity.MEASURES`.
    ``attributions`` (the method's maps on the trained model) are used as the reference when given. The steps'
    similarities alone are averaged (not the trained model's self-similarity). ``cost``: explanation calls per
    image, one per step of :func:`randomization_steps`. ``seed`` (default 0; None means 0,
    the check stays reproducible). Other keywords go to :func:`parameter_randomization`.
    """
    return model_randomization_result(model, inputs, attributions, target, method=method, mode=mode, measure=measure,
                                      seed=seed, keep_maps=False, **kwargs).scores


@register_metric("random_logit", family="sanity", higher_is_better=False, needs=("method",), cost=lambda params: 1,
                 per_batch=True, forwards=random_logit_test)
def random_logit(model: nn.Module, inputs: Tensor, attributions: Tensor | None, target: TargetSpec = None, *,
                 method: Explainer | None = None, measure: str = "ssim", seed: int | None = 0, **kwargs: Any) -> Tensor:
    """Random-logit score (Sixt et al. 2020): s = sim(E_c(x), E_c'(x)) for a random other class c'; (B,),
    lower = better (the map depends on the class). SSIM by default (as Quantus); ``cost``: one more explanation
    call per image; ``seed=None`` means 0. Other keywords go to :func:`random_logit_test`."""
    result = random_logit_test(model, inputs, need_method(method, "random_logit"), target, measures=(measure,),
                               seed=0 if seed is None else seed, attributions=attributions, **kwargs)
    return result.scores[measure]
