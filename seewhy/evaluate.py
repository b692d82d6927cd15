"""Score explanation methods with the registered metrics: the engine behind ``seewhy evaluate``.

:func:`evaluate` explains a set of images with each method (plus two controls that ignore the model, so every
leaderboard shows what a meaningless map scores), runs each metric on every explanation, and keeps what a report
needs: per-image scores, deletion/insertion curves, the cascading-randomization maps (Adebayo et al. 2018) and,
given true labels, the maps of misclassified images for the predicted and the true class.

Every metric is called as ``fn(model, inputs, attributions, target, **params)`` with the classes the explanations
were made for (so a metric scores the same class the method explained), the seed, and what the metric ``needs``
(``mask=`` for localization, ``method=`` for robustness and sanity).
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
from .hooks import model_state
from .metrics import get_metric, sanity
from .progress import format_seconds
from .progress import progress as _progress
from .targets import TargetSpec

log = logging.getLogger("seewhy")

CONTROLS = ("random_attribution", "edge_detector")
DEFAULT_METRICS = ("deletion_auc", "insertion_auc", "road", "sparseness", "model_randomization")
#: how model_randomization groups the layers into steps by default: the first two parts of a module's dotted
#: name (efficientnet_lite0: ``_blocks.15``, ..., ``_conv_head``: 21 steps instead of 81 single layers)
RANDOMIZATION_GROUP = 2


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
    randomization: dict[str, sanity.RandomizationResult]
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


def cost_unit(metric: str) -> str:
    """What a metric's cost counts: explanation calls for the metrics that re-run the method, else forward passes."""
    return "explanations" if "method" in get_metric(metric).needs else "forward passes"


def check_metric_params(metric: str, params: Mapping[str, Any]) -> None:
    """Raise ValueError when ``params`` has a name that metric ``metric`` does not take (listing the valid ones)."""
    import inspect

    fixed = {"model", "inputs", "attributions", "target", "mask", "method", "method_params", "kwargs"}
    fn = get_metric(metric).fn
    valid = set(inspect.signature(fn).parameters)
    if metric == "model_randomization":  # forwards its keywords to parameter_randomization
        valid |= set(inspect.signature(sanity.parameter_randomization).parameters)
    valid -= fixed | {"attributions", "keep_maps"}
    unknown = sorted(set(params) - valid)
    if unknown:
        raise ValueError(f"metric {metric} has no parameter {', '.join(map(repr, unknown))}; "
                         f"its parameters: {', '.join(sorted(valid))}")


def metric_costs(
    model: nn.Module, inputs: Tensor, metrics: Sequence[str], metric_params: Mapping[str, Mapping[str, Any]]
) -> dict[str, int]:
    """Model forwards per image and method for each metric (for the metrics that re-run the method, robustness and
    sanity: explanation calls)."""
    out = {}
    for m in metrics:
        params = {"input_size": tuple(inputs.shape[-2:]), **metric_params.get(m, {})}
        if m == "model_randomization":
            steps = sanity.randomization_steps(model, group=params.get("group", RANDOMIZATION_GROUP))
            params["n_steps"] = len(steps)
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
    if not names:
        raise ValueError("give at least one method to evaluate")
    extra = [c for c in CONTROLS if c not in names] if controls else []
    metrics = list(dict.fromkeys(metrics))
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
    costs = metric_costs(model, inputs, metrics, metric_params)
    if estimate:
        from .estimate import log_run

        run = [*names, *extra]
        log_run(model, inputs, run, {m: seeded(m, method_params.get(m), seed) for m in run}, n, metrics=metrics,
                metric_costs=costs)

    chunks = [slice(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]
    result = Evaluation(names, extra, metrics, {}, {}, {}, {}, {}, costs)
    total = (len(names) + len(extra)) * len(chunks) * (1 + len(metrics))
    with _progress(total, "evaluating", "steps", delay=0, enabled=progress is not False) as bar:
        for method in [*names, *extra]:
            params = seeded(method, method_params.get(method), seed)
            bar.set_postfix(method)
            exps, seconds = [], []
            try:
                for b, sl in enumerate(chunks):
                    t0 = time.perf_counter()
                    exps.append(explain(model, inputs[sl], method, target=_rows(target, sl), **params))
                    seconds.append(time.perf_counter() - t0)
                    bar.update()
                    bar.done("%s: batch %d/%d (%d image(s)) in %s", method, b + 1, len(chunks), sl.stop - sl.start,
                             format_seconds(seconds[-1]))
            except Exception as err:  # one broken method must not lose the others
                log.error("method %s failed: %s: %s", method, type(err).__name__, err)
                result.errors[method] = f"{type(err).__name__}: {err}"
                bar.update((len(chunks) - len(exps)) + len(chunks) * len(metrics))
                continue
            result.explain_seconds[method] = seconds
            result.explanations[method] = exps
            for metric in metrics:
                bar.set_postfix(f"{method} / {metric}")
                try:
                    res = result.results[(method, metric)] = _score(
                        model, inputs, exps, chunks, method, params, metric, metric_params.get(metric, {}), masks,
                        seed, result, bar,
                    )
                    bar.done("%s on %s: %s for %d image(s)", metric, method, format_seconds(res.seconds), n)
                except Exception as err:
                    log.error("metric %s on %s failed: %s: %s", metric, method, type(err).__name__, err)
                    result.errors[f"{method}/{metric}"] = f"{type(err).__name__}: {err}"
    if labels is not None:
        result.failure_cases = _failure_cases(model, inputs, names, method_params, labels, result, seed, batch_size)
    return result


def _score(model: nn.Module, inputs: Tensor, exps: list[Explanation], chunks: list[slice], method: str,
           method_params: dict[str, Any], metric: str, params: dict[str, Any], masks: Tensor | None, seed: int,
           result: Evaluation, bar: Any) -> MetricScores:
    """One metric over every explanation of one method. A metric is called once on all the images (it batches its
    own forwards), so that seeded draws, keyed by an image's row in the call, do not depend on ``batch_size``;
    model randomization runs per chunk (the same randomized copies for every chunk) and keeps the first chunk's maps."""
    spec = get_metric(metric)
    t0 = time.perf_counter()
    kw = {"seed": seed, **params}
    if metric == "model_randomization":
        scores, protocol = [], {}
        for b, (sl, exp) in enumerate(zip(chunks, exps, strict=True)):
            out = _randomization(model, inputs[sl], exp, method, method_params, kw, keep=b == 0)
            if b == 0:
                result.randomization[method] = out
            measure = params.get("measure", "spearman_abs")
            scores.append(out.mean(measure))
            protocol = {"measure": measure, **out.protocol}
            bar.update()
        s = torch.cat([x.detach().double().cpu().reshape(-1) for x in scores])
        return MetricScores(method, metric, s, time.perf_counter() - t0, protocol=protocol)
    attributions = torch.cat([e.attributions for e in exps])
    targets = [e.targets for e in exps]
    target = None if any(t is None for t in targets) else torch.cat(targets)
    if "mask" in spec.needs:
        kw["mask"] = masks.to(inputs.device)
    if "method" in spec.needs:
        kw.setdefault("method", method)
        kw.setdefault("method_params", method_params)
    out = spec.fn(model, inputs, attributions, target, **kw)
    bar.update(len(chunks))
    scores = out if isinstance(out, Tensor) else out.scores
    protocol = {} if isinstance(out, Tensor) else dict(getattr(out, "protocol", {}) or {})
    curves = getattr(out, "curves", None)
    fractions = getattr(out, "fractions", None)
    return MetricScores(
        method, metric, scores.detach().double().cpu().reshape(-1), time.perf_counter() - t0,
        None if curves is None else curves.detach().double().cpu(),
        None if curves is None or fractions is None else fractions.detach().double().cpu(), protocol,
    )


def _randomization(model: nn.Module, x: Tensor, exp: Explanation, method: str, method_params: dict[str, Any],
                   kw: dict[str, Any], keep: bool) -> sanity.RandomizationResult:
    kw = dict(kw)
    kw.pop("measure", None)
    kw.setdefault("group", RANDOMIZATION_GROUP)
    kw.setdefault("mode", "cascading")
    kw.setdefault("measures", ("spearman_abs", "spearman", "ssim"))
    target = exp.targets if exp.targets is not None else None
    return sanity.parameter_randomization(model, x, method, target, attributions=exp.attributions, keep_maps=keep,
                                          method_params=method_params, **kw)


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
