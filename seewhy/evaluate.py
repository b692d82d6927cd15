"""Score explanation methods with the registered metrics: the engine behind ``seewhy evaluate``.

:func:`evaluate` explains a set of images with each method (plus two controls that ignore the model, so every
leaderboard shows what a meaningless map scores), runs each metric on every explanation, and keeps what a report
needs: per-image scores, deletion/insertion curves, the cascading-randomization maps (Adebayo et al. 2018) and,
given true labels, the maps of misclassified images for the predicted and the true class.

The methods run through :func:`seewhy.runner.explain_batches` (the loop ``seewhy explain`` uses). Every metric is
called through its spec, ``spec(model, inputs, attributions, target, **params) -> MetricResult``, with the classes
the explanations were made for (so a metric scores the same class the method explained), the seed, and what the
metric ``needs`` (``mask=`` for localization, ``method=`` for robustness and sanity); a ``per_batch`` metric gets one
batch of explanations at a time, and the first batch's ``details`` (the randomization maps) are kept.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from .core import Explanation, explain, get_method, seeded
from .estimate import cost_unit, log_run
from .hooks import model_state
from .metrics import get_metric
from .metrics.sanity import RandomizationResult
from .progress import format_seconds
from .progress import progress as _progress
from .runner import explain_batches
from .targets import TargetSpec

log = logging.getLogger("seewhy")

__all__ = [
    "CONTROLS", "DEFAULT_METRICS", "METRIC_DEFAULTS", "Evaluation", "FailureCase", "MetricScores",
    "check_metric_params", "cost_unit", "evaluate", "metric_costs",
]

CONTROLS = ("random_attribution", "edge_detector")
DEFAULT_METRICS = ("deletion_auc", "insertion_auc", "road", "sparseness", "model_randomization")
#: how model_randomization groups the layers into steps by default: the first two parts of a module's dotted
#: name (efficientnet_lite0: ``_blocks.15``, ..., ``_conv_head``: 21 steps instead of 81 single layers)
RANDOMIZATION_GROUP = 2
#: evaluate's settings for a metric, under the caller's ``metric_params``: model randomization in layer groups,
#: with the similarities the report shows
METRIC_DEFAULTS: dict[str, dict[str, Any]] = {
    "model_randomization": {"group": RANDOMIZATION_GROUP, "measures": ("spearman_abs", "spearman", "ssim")},
}


@dataclass
class MetricScores:
    """One metric over one method: ``scores`` (N,) float64 per image (NaN where undefined, e.g. an empty mask),
    ``curves`` (N, S+1) and ``fractions`` (S+1,) for curve metrics, the wall time, and the metric's protocol."""

    method: str
    metric: str
    scores: Tensor
    seconds: float
    curves: Tensor | None = None
    fractions: Tensor | None = None
    protocol: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> tuple[float, float, int]:
        """(mean, standard deviation, number of images) over the images where the score is defined."""
        ok = self.scores[~torch.isnan(self.scores)]
        n = int(ok.numel())
        if n == 0:
            return math.nan, math.nan, 0
        return float(ok.mean()), float(ok.std(unbiased=True)) if n > 1 else 0.0, n


@dataclass
class FailureCase:
    """A misclassified image: ``maps[method] = (predicted-class explanation, true-class explanation)``."""

    index: int
    predicted: int
    true: int
    maps: dict[str, tuple[Explanation, Explanation]] = field(default_factory=dict)


@dataclass
class Evaluation:
    """What :func:`evaluate` found. ``results[(method, metric)]``; ``explanations[method]``: one
    :class:`~seewhy.core.Explanation` per batch; ``randomization[method]``: the cascading-randomization result of
    the first batch (maps kept for the grid); ``errors``: methods or (method, metric) pairs that failed."""

    methods: list[str]
    controls: list[str]
    metrics: list[str]
    results: dict[tuple[str, str], MetricScores]
    explanations: dict[str, list[Explanation]]
    explain_seconds: dict[str, list[float]]  # per batch
    randomization: dict[str, RandomizationResult]
    errors: dict[str, str]
    costs: dict[str, int]
    failure_cases: list[FailureCase] = field(default_factory=list)

    def leaderboard(self) -> tuple[list[str], list[list[Any]]]:
        """(columns, rows): one row per method, ``mean ± sd`` per metric, controls last and marked."""
        columns = ["method", *(f"{m} {_arrow(m)}" for m in self.metrics)]
        rows = []
        for method in [*self.methods, *self.controls]:
            row: list[Any] = [method + (" (control)" if method in self.controls else "")]
            for metric in self.metrics:
                res = self.results.get((method, metric))
                if res is None:
                    row.append("failed" if f"{method}/{metric}" in self.errors or method in self.errors else "")
                    continue
                mean, sd, n = res.summary()
                row.append("n/a" if n == 0 else f"{mean:.4g} ± {sd:.2g}" if n > 1 else f"{mean:.4g}")
            rows.append(row)
        return columns, rows

    def records(self) -> list[dict[str, Any]]:
        """One record per (method, metric, image): the long format of the CSV file."""
        out = []
        for (method, metric), res in self.results.items():
            for i, v in enumerate(res.scores.tolist()):
                out.append({"method": method, "control": method in self.controls, "metric": metric, "image": i,
                            "score": None if math.isnan(v) else v})
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly: the leaderboard summary, per-image scores, curves, protocols, randomization scores."""
        summary = {}
        for (method, metric), res in self.results.items():
            mean, sd, n = res.summary()
            summary.setdefault(method, {})[metric] = {
                "mean": _num(mean), "sd": _num(sd), "n": n, "seconds": res.seconds,
                "scores": [_num(v) for v in res.scores.tolist()], "protocol": res.protocol,
                **({"fractions": res.fractions.tolist(),
                    "curves": [[_num(v) for v in c] for c in res.curves.tolist()]} if res.curves is not None else {}),
            }
        return {
            "methods": self.methods,
            "controls": self.controls,
            "metrics": {m: {"family": get_metric(m).family, "higher_is_better": get_metric(m).higher_is_better,
                            "forwards_per_image": self.costs.get(m)} for m in self.metrics},
            "explain_seconds": self.explain_seconds,
            "results": summary,
            "randomization": {m: r.to_dict() for m, r in self.randomization.items()},
            "errors": self.errors,
            "failure_cases": [{"image": c.index, "predicted": c.predicted, "true": c.true} for c in self.failure_cases],
        }


def check_metric_params(metric: str, params: Mapping[str, Any]) -> None:
    """Raise ValueError when ``params`` has a name that metric ``metric`` does not take (listing the valid ones)."""
    fixed = {"model", "inputs", "attributions", "target", "mask", "method", "method_params", "kwargs", "keep_maps"}
    valid = get_metric(metric).parameters() - fixed
    unknown = sorted(set(params) - valid)
    if unknown:
        raise ValueError(f"metric {metric} has no parameter {', '.join(map(repr, unknown))}; "
                         f"its parameters: {', '.join(sorted(valid))}")


def metric_costs(
    model: nn.Module, inputs: Tensor, metrics: Sequence[str], metric_params: Mapping[str, Mapping[str, Any]]
) -> dict[str, int]:
    """Model forwards per image and method for each metric (for the metrics that re-run the method, robustness and
    sanity: explanation calls), with evaluate's defaults (:data:`METRIC_DEFAULTS`) under ``metric_params``."""
    out = {}
    for m in metrics:
        params = {"input_size": tuple(inputs.shape[-2:]), "model": model, **_metric_params(m, metric_params)}
        out[m] = int(get_metric(m).cost(params))
    return out


def evaluate(
    model: nn.Module,
    inputs: Tensor,
    methods: Sequence[str],
    metrics: Sequence[str] = DEFAULT_METRICS,
    *,
    target: TargetSpec = "top1",
    method_params: Mapping[str, Mapping[str, Any]] | None = None,
    metric_params: Mapping[str, Mapping[str, Any]] | None = None,
    masks: Tensor | None = None,
    labels: Sequence[int] | Tensor | None = None,
    controls: bool = True,
    batch_size: int = 16,
    seed: int = 0,
    progress: bool | None = None,
    estimate: bool = True,
) -> Evaluation:
    """Explain ``inputs`` with each method (and the controls) and score every explanation with every metric.

    Args:
        model: the classifier (left as it was; sanity checks work on copies).
        inputs: (N,C,H,W) preprocessed images.
        methods: registered method names.
        metrics: registered metric names (see :func:`seewhy.metrics.list_metrics`).
        target: what to explain (``"top1"``, a class index, per-image indices, ...); metrics score the same classes.
        method_params, metric_params: ``{name: {param: value}}`` for methods and metrics.
        masks: (N,H,W) boolean object masks, needed by the localization metrics.
        labels: (N,) true classes; misclassified images get the predicted and the true class explained side by
            side (:attr:`Evaluation.failure_cases`).
        controls: add ``random_attribution`` and ``edge_detector``, which ignore the model.
        batch_size: images per explanation / metric call.
        seed: passed to every method and metric that takes one.
        progress: ``False`` reports no progress (default: :mod:`seewhy.progress` decides: a bar on a terminal, one
            log line per finished step otherwise).
        estimate: log each method's and metric's cost per image (model evaluations and seconds, from one timed
            forward and forward+backward of ``model``) before any work, when the ``seewhy`` logger shows INFO.
    """
    if not isinstance(inputs, Tensor) or inputs.ndim != 4:
        raise ValueError(f"inputs must be a (N,C,H,W) tensor, got {getattr(inputs, 'shape', type(inputs))}")
    method_params = {k: dict(v) for k, v in (method_params or {}).items()}
    metric_params = {k: dict(v) for k, v in (metric_params or {}).items()}
    names = list(dict.fromkeys(methods))
    extra = [c for c in CONTROLS if c not in names] if controls else []
    metrics = list(dict.fromkeys(metrics))
    masks = _check_request(inputs, names, extra, metrics, method_params, metric_params, masks, labels)
    costs = metric_costs(model, inputs, metrics, metric_params)
    run = [*names, *extra]
    params = {m: seeded(m, method_params.get(m), seed) for m in run}
    if estimate:
        log_run(model, inputs, run, params, inputs.shape[0], metrics=metrics, metric_costs=costs)
    result = Evaluation(names, extra, metrics, {}, {}, {}, {}, {}, costs)
    n = inputs.shape[0]
    chunks = [slice(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]
    total = len(run) * len(chunks) * (1 + len(metrics))
    with _progress(total, "evaluating", "steps", delay=0, enabled=progress is not False) as bar:
        batches = [inputs[sl] for sl in chunks]
        targets = [_rows(target, sl) for sl in chunks]
        for done in explain_batches(model, batches, run, params, target, batch_targets=targets, bar=bar):
            if done.error is not None:  # one broken method must not lose the others
                result.errors[done.name] = done.error
                bar.update(len(chunks) * len(metrics))
                continue
            result.explain_seconds[done.name] = list(done.seconds)
            result.explanations[done.name] = list(done.explanations)
            for metric in metrics:
                _run_metric(model, inputs, chunks, done.name, params[done.name], metric,
                            _metric_params(metric, metric_params, seed), masks, result, bar)
    if labels is not None:
        result.failure_cases = _failure_cases(model, inputs, names, method_params, labels, result, seed, batch_size)
    return result


def _check_request(inputs: Tensor, names: list[str], extra: list[str], metrics: list[str],
                   method_params: dict[str, dict[str, Any]], metric_params: dict[str, dict[str, Any]],
                   masks: Tensor | None, labels: Sequence[int] | Tensor | None) -> Tensor | None:
    """Fail before any work on an unknown method, metric or parameter, or on masks and labels that do not fit;
    returns the masks as a tensor."""
    if not names:
        raise ValueError("give at least one method to evaluate")
    specs = {m: get_metric(m) for m in metrics}
    n = inputs.shape[0]
    if masks is not None:
        masks = torch.as_tensor(masks)
        if masks.shape[0] != n:
            raise ValueError(f"got {masks.shape[0]} masks for {n} images; give one mask per image")
    if labels is not None and torch.as_tensor(labels).numel() != n:
        raise ValueError(f"got {torch.as_tensor(labels).numel()} labels for {n} images; give one label per image")
    missing = [m for m, s in specs.items() if "mask" in s.needs and masks is None]
    if missing:
        raise ValueError(f"metrics {', '.join(missing)} need object masks (masks=, or --masks / --boxes on the "
                         "command line); leave them out or give masks")
    for m in [*names, *extra]:
        get_method(m, **method_params.get(m, {}))  # unknown method or parameter: fail before any work
    for m, p in metric_params.items():
        if m not in specs:
            raise ValueError(f"metric_params names {m!r}, which is not among the metrics ({', '.join(metrics)})")
        check_metric_params(m, p)
    return masks


def _metric_params(metric: str, metric_params: Mapping[str, Mapping[str, Any]], seed: int | None = None
                   ) -> dict[str, Any]:
    """A metric's keywords in a run: the seed, evaluate's defaults for it, then the caller's."""
    return {**({} if seed is None else {"seed": seed}), **METRIC_DEFAULTS.get(metric, {}),
            **metric_params.get(metric, {})}


def _run_metric(model: nn.Module, inputs: Tensor, chunks: list[slice], method: str, method_params: dict[str, Any],
                metric: str, params: dict[str, Any], masks: Tensor | None, result: Evaluation, bar: Any) -> None:
    """Score one method's explanations with one metric into ``result`` (a failure is logged and recorded)."""
    bar.set_postfix(f"{method} / {metric}")
    try:
        res, details = _score(model, inputs, result.explanations[method], chunks, method, method_params, metric,
                              params, masks, bar)
    except Exception as err:
        log.error("metric %s on %s failed: %s: %s", metric, method, type(err).__name__, err)
        result.errors[f"{method}/{metric}"] = f"{type(err).__name__}: {err}"
        return
    result.results[(method, metric)] = res
    if isinstance(details, RandomizationResult):  # the first batch's maps, for the report's grid
        result.randomization[method] = details
    bar.done("%s on %s: %s for %d image(s)", metric, method, format_seconds(res.seconds), inputs.shape[0])


def _score(model: nn.Module, inputs: Tensor, exps: list[Explanation], chunks: list[slice], method: str,
           method_params: dict[str, Any], metric: str, params: dict[str, Any], masks: Tensor | None,
           bar: Any) -> tuple[MetricScores, Any]:
    """One metric over every explanation of one method, and the first call's details. A metric is called once on all
    the images (it batches its own forwards; its seeded draws are keyed by each image's content, so the scores do
    not depend on how the images are split); a ``per_batch`` metric (one that re-explains its images at once) is
    called per batch, keeping the first batch's details."""
    spec = get_metric(metric)
    t0 = time.perf_counter()
    kw = dict(params)
    if "method" in spec.needs:
        kw.setdefault("method", method)
        kw.setdefault("method_params", method_params)
    parts = [(sl, [e]) for sl, e in zip(chunks, exps, strict=True)] if spec.per_batch \
        else [(slice(0, inputs.shape[0]), exps)]
    results = []
    for b, (sl, part) in enumerate(parts):
        targets = [e.targets for e in part]
        target = None if any(t is None for t in targets) else torch.cat(targets)
        if "mask" in spec.needs:
            kw["mask"] = masks[sl].to(inputs.device)
        results.append(spec(model, inputs[sl], torch.cat([e.attributions for e in part]), target, details=b == 0,
                            **kw))
        bar.update(len(chunks) // len(parts))
    first = results[0]
    scores = torch.cat([r.scores.detach().double().cpu().reshape(-1) for r in results])
    curves = None if first.curves is None else torch.cat([r.curves.detach().double().cpu() for r in results])
    fractions = None if curves is None or first.fractions is None else first.fractions.detach().double().cpu()
    res = MetricScores(method, metric, scores, time.perf_counter() - t0, curves, fractions, dict(first.protocol))
    return res, first.details


def _failure_cases(model: nn.Module, inputs: Tensor, methods: list[str], method_params: Mapping[str, Any],
                   labels: Sequence[int] | Tensor, result: Evaluation, seed: int, batch_size: int) -> list[FailureCase]:
    """Misclassified images: each method's explanation of the predicted and of the true class."""
    labels = torch.as_tensor(labels, dtype=torch.long).reshape(-1).cpu()
    with model_state(model), torch.no_grad():  # eval mode, as explain() runs the model; restored afterwards
        pred = torch.cat([model(inputs[i : i + batch_size]).argmax(1).cpu()
                          for i in range(0, inputs.shape[0], batch_size)])
    cases = [FailureCase(int(i), int(pred[i]), int(labels[i])) for i in torch.nonzero(pred != labels).flatten()]
    if not cases:
        return []
    idx = torch.tensor([c.index for c in cases])
    x = inputs[idx.to(inputs.device)]
    done = [m for m in methods if m not in result.errors]
    with _progress(len(done), f"maps of {len(cases)} misclassified image(s)", "methods", delay=0) as bar:
        for method in done:
            params = seeded(method, method_params.get(method), seed)
            t0 = time.perf_counter()
            try:
                for start in range(0, len(cases), batch_size):
                    sl = slice(start, start + batch_size)
                    on_pred = explain(model, x[sl], method, target=pred[idx[sl]], **params)
                    on_true = explain(model, x[sl], method, target=labels[idx[sl]], **params)
                    for j, case in enumerate(cases[sl]):
                        case.maps[method] = (_row(on_pred, j), _row(on_true, j))
            except Exception as err:
                log.error("failure-mode maps: %s failed: %s: %s", method, type(err).__name__, err)
                for case in cases:
                    case.maps.pop(method, None)
            bar.update()
            bar.done("failure-mode maps: %s for %d image(s) in %s", method, len(cases),
                     format_seconds(time.perf_counter() - t0))
    return cases


def _row(exp: Explanation, j: int) -> Explanation:
    """Row ``j`` of a batch explanation."""
    import dataclasses

    pick = slice(j, j + 1)
    return dataclasses.replace(
        exp, attributions=exp.attributions[pick], targets=None if exp.targets is None else exp.targets[pick],
        scores=exp.scores[pick], inputs=None if exp.inputs is None else exp.inputs[pick],
        extras={k: v for k, v in exp.extras.items() if not (isinstance(v, Tensor) and v.ndim and
                                                          v.shape[0] == exp.attributions.shape[0])},
    )


def _rows(target: TargetSpec, sl: slice) -> TargetSpec:
    """The part of a per-image target spec that belongs to the images ``sl``."""
    if isinstance(target, Tensor) and target.ndim == 1:
        return target[sl]
    if isinstance(target, (list, tuple)):
        return list(target[sl])
    return target


def _arrow(metric: str) -> str:
    better = get_metric(metric).higher_is_better
    return "↑" if better else "↓" if better is False else ""


def _num(v: float) -> float | None:
    return None if v is None or math.isnan(v) else float(v)
