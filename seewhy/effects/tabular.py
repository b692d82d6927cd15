"""Partial dependence, ICE (Friedman 2001; Goldstein et al. 2015) and ALE (Apley & Zhu 2020) for any
prediction function on numpy arrays, pandas DataFrames or torch tensors.
"""


from __future__ import annotations

import contextlib
import logging
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..hooks import model_state
from ..progress import progress as _progress

log = logging.getLogger("seewhy")

#: values per model call when ``batch_size`` is None: rows x columns of the stacked copies (16 MiB of float64)
TABULAR_BUDGET = 1 << 21
KINDS = ("average", "individual", "both")


# -- data access: numpy, pandas, torch -------------------------------------------------------------------


def _is_frame(X: Any) -> bool:
    return hasattr(X, "iloc") and hasattr(X, "columns")


def _n_rows_cols(X: Any, what: str = "X") -> tuple[int, int]:
    if _is_frame(X) or isinstance(X, (np.ndarray, Tensor)):
        if len(X.shape) != 2:
            raise ValueError(f"{what} must be 2-D (n_samples, n_features), got shape {tuple(X.shape)}")
        if X.shape[0] < 1:
            raise ValueError(f"{what} has no rows; pass at least one sample")
        return int(X.shape[0]), int(X.shape[1])
    raise TypeError(f"{what} must be a numpy array, a pandas DataFrame or a torch tensor, got {type(X).__name__}; "
                    "convert it with np.asarray(X)")


def _column_index(X: Any, feature: Any) -> int:
    """A feature (int position, or a column name of a DataFrame) -> its column position."""
    d = int(X.shape[1])
    if isinstance(feature, (numbers.Integral, np.integer)) and not isinstance(feature, bool):
        j = int(feature)
        if not -d <= j < d:
            raise ValueError(f"feature {j} out of range: X has {d} columns (0..{d - 1})")
        return j % d
    if isinstance(feature, str):
        if not _is_frame(X):
            raise TypeError(f"feature {feature!r} is a column name, but X is not a DataFrame; pass a column index")
        names = [str(c) for c in X.columns]
        if feature not in names:
            raise ValueError(f"unknown column {feature!r}; X has columns {names}")
        return names.index(feature)
    raise TypeError(f"a feature must be a column index (int) or a DataFrame column name, got {feature!r}")


def _column(X: Any, j: int) -> np.ndarray:
    """Column ``j`` as a 1-D numpy array."""
    if _is_frame(X):
        return np.asarray(X.iloc[:, j])
    if isinstance(X, Tensor):
        return X[:, j].detach().cpu().numpy()
    return np.asarray(X[:, j])


def _build_rows(X: Any, rows: np.ndarray, columns: Sequence[int], values: np.ndarray) -> Any:
    """Copies of the rows ``rows`` of ``X`` (same type as ``X``) with column ``columns[k]`` set to
    ``values[:, k]``."""
    if _is_frame(X):
        out = X.iloc[rows].copy()
        for k, j in enumerate(columns):
            out[out.columns[j]] = values[:, k]  # replaces the column: its dtype follows the values
        return out
    if isinstance(X, Tensor):
        idx = torch.as_tensor(rows, device=X.device)
        out = X.index_select(0, idx)
        v = torch.as_tensor(values, device=X.device)
        if not out.dtype.is_floating_point and v.dtype.is_floating_point:
            out = out.to(torch.get_default_dtype())
        out[:, list(columns)] = v.to(out.dtype)
        return out
    out = X[rows]
    dtype = np.result_type(out.dtype, values.dtype)
    if dtype != out.dtype:
        out = out.astype(dtype)
    out[:, list(columns)] = values
    return out


def _to_numpy_output(y: Any, n: int) -> np.ndarray:
    """A prediction for ``n`` rows -> float64 (n, n_outputs)."""
    if isinstance(y, Tensor):
        y = y.detach().cpu().double().numpy()
    elif hasattr(y, "to_numpy"):
        y = y.to_numpy()
    y = np.asarray(y, dtype=np.float64)
    if y.ndim == 1:
        y = y[:, None]
    if y.ndim != 2 or y.shape[0] != n:
        raise ValueError(f"predict returned shape {y.shape} for {n} rows; it must return (n,) or (n, n_outputs)")
    return y


def _is_binary_classifier_proba(predict: Callable) -> bool:
    """True for the bound ``predict_proba`` of a scikit-learn style classifier (``_estimator_type`` "classifier" or a
    ``classes_`` attribute)."""
    owner = getattr(predict, "__self__", None)
    if owner is None or getattr(predict, "__name__", "") != "predict_proba":
        return False
    return getattr(owner, "_estimator_type", None) == "classifier" or hasattr(owner, "classes_")


def _select_outputs(y: np.ndarray, output: Any, binary_proba: bool) -> np.ndarray:
    """The columns of ``y`` (n, k) that ``output`` asks for."""
    if output == "auto":
        return y[:, 1:2] if binary_proba and y.shape[1] == 2 else y
    if output == "all":
        return y
    cols = [output] if isinstance(output, (numbers.Integral, np.integer)) else list(output)
    bad = [c for c in cols if not isinstance(c, (numbers.Integral, np.integer)) or not -y.shape[1] <= c < y.shape[1]]
    if bad or not cols:
        raise ValueError(f"output {output!r}: the prediction has {y.shape[1]} column(s); pass 'auto', 'all', a column "
                         "index or a list of them")
    return y[:, cols]


class _Predictor:
    """Runs ``predict`` on batches of modified copies of ``X``: one call per chunk of at most ``batch_size`` rows,
    under the model's eval/frozen state and inference mode when ``predict`` is an ``nn.Module``."""

    def __init__(self, predict: Callable, X: Any, output: Any, batch_size: int | None, desc: str) -> None:
        if not callable(predict):
            raise TypeError(f"predict must be a callable on X (e.g. model.predict), got {type(predict).__name__}")
        self.predict, self.X, self.output, self.desc = predict, X, output, desc
        self.n, self.d = _n_rows_cols(X)
        if batch_size is None:
            batch_size = max(self.n, TABULAR_BUDGET // max(1, self.d))
        if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int or None, got {batch_size!r}")
        self.batch_size = int(batch_size)
        self.binary_proba = _is_binary_classifier_proba(predict)

    def __call__(self, sample: np.ndarray, columns: Sequence[int], values: np.ndarray) -> np.ndarray:
        """Predictions (rows, n_outputs) for row ``r``: sample ``sample[r]`` with ``columns`` set to
        ``values[r]``."""
        out = []
        total = len(sample)
        module = self.predict if isinstance(self.predict, nn.Module) else None
        with _progress(total, self.desc, "row") as bar, _module_context(module), \
                (torch.inference_mode() if isinstance(self.X, Tensor) else contextlib.nullcontext()):
            for start in range(0, total, self.batch_size):
                stop = min(start + self.batch_size, total)
                batch = _build_rows(self.X, sample[start:stop], columns, values[start:stop])
                y = _to_numpy_output(self.predict(batch), stop - start)
                out.append(_select_outputs(y, self.output, self.binary_proba))
                bar.update(stop - start)
        return np.concatenate(out, axis=0)


def _module_context(module: nn.Module | None) -> Any:
    return model_state(module) if module is not None else contextlib.nullcontext()


# -- partial dependence ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PartialDependence:
    """Partial dependence (Friedman 2001) and ICE curves (Goldstein et al. 2015) on a grid.

    ``grid``: one 1-D array per feature; ``average``: (n_outputs, *grid_shape) or None; ``individual``:
    (n_outputs, n_samples, *grid_shape) or None (shapes as scikit-learn's ``grid_values``, ``average``,
    ``individual``); ``features``: the column positions."""

    grid: list[np.ndarray]
    average: np.ndarray | None
    individual: np.ndarray | None
    features: tuple[int, ...]
    kind: str


def _feature_set(X: Any, features: Any) -> tuple[int, ...]:
    """``0``, ``"age"``, ``[0]``, ``[(0, 1)]``, ``(0, 1)`` -> column positions (one or two)."""
    if isinstance(features, (list, tuple)) and len(features) == 1 and isinstance(features[0], (list, tuple)):
        features = features[0]
    if isinstance(features, (list, tuple, np.ndarray)):
        items = list(features)
    else:
        items = [features]
    if not 1 <= len(items) <= 2:
        raise ValueError(f"features {features!r}: give one feature (0, [0]) or a pair ((0, 1), [(0, 1)]); call once "
                         "per feature or pair for more")
    cols = tuple(_column_index(X, f) for f in items)
    if len(set(cols)) != len(cols):
        raise ValueError(f"features {features!r} names the same column twice; give two different features")
    return cols


def _quantiles(x: np.ndarray, probs: Sequence[float]) -> np.ndarray:
    """Hyndman & Fan (1996) plotting-position quantiles with alpha = beta = 0.4 (``scipy.stats.mstats.mquantiles``'s
    default, which scikit-learn's grid uses)."""
    from scipy.stats.mstats import mquantiles

    return np.asarray(mquantiles(x, prob=list(probs)), dtype=np.float64)


def feature_grid(x: np.ndarray, grid_resolution: int = 100, percentiles: tuple[float, float] = (0.05, 0.95)
                 ) -> np.ndarray:
    """The grid of one feature, as scikit-learn builds it: its sorted unique values when there are fewer than
    ``grid_resolution``, else ``grid_resolution`` equally spaced points between its ``percentiles`` (mquantiles)."""
    x = np.asarray(x)
    uniques = np.unique(x)
    if uniques.shape[0] < grid_resolution:
        return uniques
    low, high = _quantiles(x.astype(np.float64), percentiles)
    if np.allclose(low, high):
        raise ValueError(f"percentiles {tuple(percentiles)} give the same value {low:g} for this feature; choose "
                         "percentiles further apart")
    return np.linspace(low, high, num=grid_resolution, endpoint=True)


def _check_grid_args(grid_resolution: Any, percentiles: Any, kind: Any) -> None:
    if isinstance(grid_resolution, bool) or not isinstance(grid_resolution, numbers.Integral) or grid_resolution < 2:
        raise ValueError(f"grid_resolution must be an int > 1, got {grid_resolution!r}")
    try:
        low, high = (float(p) for p in percentiles)
    except (TypeError, ValueError):
        raise ValueError(f"percentiles must be a pair (low, high) in [0, 1], got {percentiles!r}") from None
    if not (0.0 <= low < high <= 1.0):
        raise ValueError(f"percentiles must satisfy 0 <= low < high <= 1, got {percentiles!r} (e.g. (0.05, 0.95))")
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")


def partial_dependence(predict: Callable, X: Any, features: Any, grid_resolution: int = 100,
                       percentiles: tuple[float, float] = (0.05, 0.95), kind: str = "average", *,
                       output: Any = "auto", sample_weight: Any = None, batch_size: int | None = None
                       ) -> PartialDependence:
    """Partial dependence (Friedman 2001) and ICE (Goldstein et al. 2015) of ``predict`` on one or two features.

    ICE_i(g) = f(x_S = g, x_{C,i}); PD(g) = (1/n) sum_i ICE_i(g) (weighted by ``sample_weight`` if given). The grid
    per feature is scikit-learn's (see :func:`feature_grid`); with two features it is their Cartesian product, the
    first feature varying slowest. ``predict`` is called with the type ``X`` has (numpy array, pandas DataFrame or
    torch tensor), on stacked copies of ``X`` (several grid points per call, at most ``batch_size`` rows; default:
    about 2 Mi values per call); an ``nn.Module`` runs in eval mode under inference mode and is restored.

    Args:
        predict: ``f(X) -> (n,)`` or ``(n, n_outputs)`` (numpy, tensor or pandas).
        X: (n_samples, n_features) data the curves average over.
        features: a column (int, or a name for a DataFrame), ``[0]``, a pair ``(0, 1)`` or ``[(0, 1)]``.
        kind: "average" (PD), "individual" (ICE) or "both".
        output: "auto" (every column, but only the positive class, column 1, for the bound ``predict_proba`` of a
            binary scikit-learn classifier, as scikit-learn reports it), "all", a column index or a list of them.

    Returns:
        :class:`PartialDependence`: ``average`` (n_outputs, *grid_shape), ``individual`` (n_outputs, n_samples,
        *grid_shape), float64 numpy arrays, the unused one None.
    """
    _check_grid_args(grid_resolution, percentiles, kind)
    run = _Predictor(predict, X, output, batch_size, "partial dependence")
    cols = _feature_set(X, features)
    grid = [feature_grid(_column(X, j), int(grid_resolution), tuple(percentiles)) for j in cols]
    points = np.stack([g.ravel() for g in np.meshgrid(*grid, indexing="ij")], axis=1)  # (P, len(cols))
    n, p = run.n, len(points)
    sample = np.tile(np.arange(n), p)  # row r: sample r % n at grid point r // n
    values = np.repeat(points, n, axis=0)
    y = run(sample, cols, values)  # (P * n, k)
    k = y.shape[1]
    ice = y.reshape(p, n, k).transpose(2, 1, 0)  # (k, n, P)
    shape = tuple(len(g) for g in grid)
    average = individual = None
    if kind in ("average", "both"):
        weights = None if sample_weight is None else _weights(sample_weight, n)
        average = np.average(ice, axis=1, weights=weights).reshape(k, *shape)
    if kind in ("individual", "both"):
        individual = ice.reshape(k, n, *shape)
    return PartialDependence(grid=grid, average=average, individual=individual, features=cols, kind=kind)


def _weights(sample_weight: Any, n: int) -> np.ndarray:
    w = np.asarray(sample_weight.detach().cpu() if isinstance(sample_weight, Tensor) else sample_weight,
                   dtype=np.float64).reshape(-1)
    if w.shape[0] != n or not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise ValueError(f"sample_weight must hold {n} finite weights >= 0 with a positive sum, got shape {w.shape}")
    return w


# -- accumulated local effects ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ALE:
    """Accumulated local effects (Apley & Zhu 2020) of one feature.

    ``grid``: the bin edges z_0 < ... < z_K (K+1,); ``effect``: the centred ALE at each edge (n_outputs, K+1);
    ``counts``: samples per bin (K,), bin k = (z_{k-1}, z_k] (the first also holds z_0); ``local``: the mean finite
    difference per bin (n_outputs, K); ``offset``: the centring constant subtracted (n_outputs,)."""

    grid: np.ndarray
    effect: np.ndarray
    counts: np.ndarray
    local: np.ndarray
    offset: np.ndarray
    feature: int


def _ale_edges(x: np.ndarray, bins: Any) -> np.ndarray:
    if isinstance(bins, (numbers.Integral, np.integer)) and not isinstance(bins, bool):
        if bins < 1:
            raise ValueError(f"bins must be an int >= 1 or increasing bin edges, got {bins!r}")
        # empirical (inverse-CDF) quantiles: every edge is a value of the feature, z_0 = min, z_K = max
        edges = np.unique(np.quantile(x, np.linspace(0.0, 1.0, int(bins) + 1), method="inverted_cdf"))
    else:
        try:
            edges = np.asarray(bins, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError):
            raise TypeError(f"bins must be an int or a sequence of bin edges, got {bins!r}") from None
        if edges.size < 2 or not np.all(np.isfinite(edges)) or np.any(np.diff(edges) <= 0):
            raise ValueError(f"bin edges must be at least 2 finite, strictly increasing numbers, got {bins!r}")
        if x.min() < edges[0] or x.max() > edges[-1]:
            raise ValueError(f"bin edges {edges[0]:g}..{edges[-1]:g} do not cover the feature's range "
                             f"{x.min():g}..{x.max():g}; widen them")
    if edges.size < 2:
        raise ValueError(f"the feature is constant ({edges[0]:g}): ALE needs at least two distinct values")
    return edges


def accumulated_local_effects(predict: Callable, X: Any, feature: Any, bins: Any = 20, *, output: Any = "auto",
                              batch_size: int | None = None) -> ALE:
    """Accumulated local effects of one feature (Apley & Zhu 2020, eq. 15 with their piecewise-linear centring).

    Bin k = (z_{k-1}, z_k] between quantile edges (``bins`` + 1 quantiles of the feature, duplicates merged, so
    repeated values never split; or the given edges). Local effect
    Delta_k = mean_{i in bin k} [f(z_k, x_{i,\\j}) - f(z_{k-1}, x_{i,\\j})]; uncentred A_k = sum_{m<=k} Delta_m
    (A_0 = 0); centred effect = A_k - sum_k n_k (A_{k-1} + A_k) / 2 / n (the count-weighted mean of the ALE, linear
    within each bin, is 0). 2n rows evaluated in batched calls. ``predict``, ``X`` and ``output`` as for
    :func:`partial_dependence`.
    """
    run = _Predictor(predict, X, output, batch_size, "accumulated local effects")
    j = _column_index(X, feature)
    x = _column(X, j).astype(np.float64)
    if not np.all(np.isfinite(x)):
        raise ValueError(f"feature {feature!r} has non-finite values; ALE needs finite numbers")
    edges = _ale_edges(x, bins)
    n, n_bins = run.n, len(edges) - 1
    bin_of = np.clip(np.searchsorted(edges, x, side="left"), 1, n_bins)  # 1..K; x == z_0 goes to bin 1
    counts = np.bincount(bin_of - 1, minlength=n_bins)
    sample = np.tile(np.arange(n), 2)
    values = np.concatenate([edges[bin_of], edges[bin_of - 1]])[:, None]
    y = run(sample, (j,), values)  # (2n, k)
    diff = y[:n] - y[n:]
    k = y.shape[1]
    local = np.zeros((k, n_bins))
    for c in range(k):
        local[c] = np.bincount(bin_of - 1, weights=diff[:, c], minlength=n_bins) / np.maximum(counts, 1)
    if np.any(counts == 0):
        log.warning("accumulated_local_effects: %d of %d bins hold no sample; their local effect is taken as 0",
                    int(np.sum(counts == 0)), n_bins)
    acc = np.concatenate([np.zeros((k, 1)), np.cumsum(local, axis=1)], axis=1)  # (k, K+1)
    offset = ((acc[:, :-1] + acc[:, 1:]) / 2 * counts).sum(axis=1) / counts.sum()
    return ALE(grid=edges, effect=acc - offset[:, None], counts=counts, local=local, offset=offset, feature=j)


# -- image transformations -------------------------------------------------------------------------------
