"""Pre-model views of a dataset: exemplars (k-means medoids per class) and MMD-critic prototypes and criticisms.

Both work on any (N, D) feature matrix (numpy or torch): raw pixels, or a layer's pooled activations (see
:func:`seewhy.inside.prototypes.layer_features` and :func:`seewhy.inside.prototypes.image_prototypes_criticisms`, which
stream a model layer over an image folder). This module imports nothing from the rest of seewhy, so
:mod:`seewhy.data` can re-export it.

MMD-critic: B. Kim, R. Khanna, O. Koyejo, "Examples are not enough, learn to criticize! Criticism for
Interpretability", NeurIPS 2016.
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

log = logging.getLogger("seewhy")

__all__ = ["Exemplars", "PrototypesCriticisms", "exemplars", "kernel_matrix", "mmd_objective",
           "prototypes_criticisms"]

KERNELS = ("rbf", "precomputed")
REGULARIZERS = (None, "logdet")
WITNESS_SIGNS = ("abs", "positive")


# ------------------------------------------------------------------------------------------------ inputs


def _as_matrix(features: Any, what: str = "features") -> Tensor:
    """(N, D) numpy/torch -> a floating torch tensor on its device (float32 for integer input), checked finite."""
    if isinstance(features, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(features))
    elif isinstance(features, Tensor):
        x = features.detach()
    else:
        raise TypeError(f"{what} must be an (N, D) numpy array or torch tensor, got {type(features).__name__}")
    if x.ndim != 2:
        raise ValueError(f"{what} must be 2-D (N rows, D features), got shape {tuple(x.shape)}; flatten images "
                         "first, e.g. x.reshape(len(x), -1)")
    if not x.is_floating_point():
        x = x.float()
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{what} is empty (shape {tuple(x.shape)})")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{what} holds NaN or infinite values; drop or impute those rows first")
    return x


def _count(value: Any, name: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return int(value)


# ------------------------------------------------------------------------------------------------ exemplars


@dataclass(frozen=True, repr=False)
class Exemplars:
    """k-means medoids of every class, made by :func:`exemplars`.

    Attributes:
        indices: (M,) long, rows of ``features``, grouped by class (classes in sorted order), within a class by
            cluster size (largest first, ties by row index).
        labels: (M,) long, the class of each exemplar.
        cluster_sizes: (M,) long, the number of the class's rows in each exemplar's cluster.
        k: the clusters asked for per class; seed: the k-means random state.
    """

    indices: Tensor
    labels: Tensor
    cluster_sizes: Tensor
    k: int
    seed: int

    @property
    def per_class(self) -> dict[int, Tensor]:
        """class -> (k_c,) long row indices of its exemplars."""
        return {int(c): self.indices[self.labels == c] for c in torch.unique(self.labels).tolist()}

    def __repr__(self) -> str:
        return f"Exemplars({len(self.indices)} rows, {len(self.per_class)} classes, k={self.k}, seed={self.seed})"


def exemplars(features: Any, labels: Any, k: int, *, seed: int = 0, n_init: int = 10) -> Exemplars:
    """Per class, the k rows closest to the centres of a k-means clustering of that class's rows (medoids).

    Each class's rows are clustered by ``sklearn.cluster.KMeans(k, n_init=n_init, random_state=seed)`` (in float64);
    for each cluster the exemplar is the member row nearest its centre, argmin_{i in cluster} ||x_i - mu||
    (ties: the smaller row index). The same seed gives the same exemplars.

    Args:
        features: (N, D) numpy array or torch tensor.
        labels: (N,) class of each row (ints).
        k: clusters (exemplars) per class. A class with fewer than k rows gives all its rows, with a warning.
        seed: the k-means random state; n_init: k-means restarts (fixed, so results do not depend on sklearn's
            default).

    Returns:
        :class:`Exemplars` (``.indices``, ``.labels``, ``.per_class``), tensors on the CPU.

    Raises:
        ValueError: features not (N, D) or not finite, labels of another length, k < 1.
    """
    from sklearn.cluster import KMeans

    x = _as_matrix(features).cpu().double().numpy()
    k = _count(k, "k", 1)
    y = torch.as_tensor(np.asarray(labels) if not isinstance(labels, Tensor) else labels).reshape(-1).cpu()
    if y.is_floating_point() and not bool((y == y.round()).all()):
        raise ValueError("labels must be class indices (ints), got non-integer values")
    y = y.long()
    if len(y) != len(x):
        raise ValueError(f"got {len(y)} labels for {len(x)} rows of features; pass one label per row")
    idx, labs, sizes = [], [], []
    for c in torch.unique(y).tolist():
        rows = torch.nonzero(y == c).flatten().numpy()
        if len(rows) < k:
            warnings.warn(f"class {c} has {len(rows)} rows, fewer than k={k}: all of them are its exemplars",
                          stacklevel=2)
            chosen, size = rows, np.ones(len(rows), np.int64)
        else:
            xc = x[rows]
            km = KMeans(n_clusters=k, n_init=n_init, random_state=seed).fit(xc)
            chosen, size = [], []
            for j in range(k):
                members = np.flatnonzero(km.labels_ == j)
                if len(members) == 0:  # an empty cluster (duplicate rows): no medoid
                    continue
                d = ((xc[members] - km.cluster_centers_[j]) ** 2).sum(1)
                chosen.append(rows[members[np.flatnonzero(d == d.min())[0]]])
                size.append(len(members))
            chosen, size = np.asarray(chosen, np.int64), np.asarray(size, np.int64)
            order = np.lexsort((chosen, -size))  # largest cluster first, then by row index
            chosen, size = chosen[order], size[order]
        idx.append(torch.as_tensor(chosen, dtype=torch.long))
        sizes.append(torch.as_tensor(size, dtype=torch.long))
        labs.append(torch.full((len(chosen),), c, dtype=torch.long))
    return Exemplars(torch.cat(idx), torch.cat(labs), torch.cat(sizes), k, int(seed))


# ------------------------------------------------------------------------------------------------ MMD-critic


@dataclass(frozen=True, repr=False)
class PrototypesCriticisms:
    """MMD-critic prototypes and criticisms of a dataset, made by :func:`prototypes_criticisms`.

    Attributes:
        prototypes: (P,) long row indices, in the order the greedy search picked them.
        criticisms: (C,) long row indices (never prototypes), in the order picked.
        witness: (N,) signed witness of every row against the prototypes,
            ``1/n sum_i k(x, x_i) - 1/P sum_j k(x, z_j)`` (negative: over-represented by the prototypes; positive:
            under-represented).
        objective: (P,) ``J_b(S)`` after each prototype was added (``MMD^2(X, S) = mean(K) - J_b(S)``).
        density: (N,) mean kernel value of each row to all rows, ``1/n sum_i k(x, x_i)``.
        kernel: ``"rbf"`` or ``"precomputed"``; gamma: the RBF width used (None for precomputed);
        gamma_rule: how gamma was chosen (``"scale"``, ``"median"`` or ``"given"``); regularizer: None or
        ``"logdet"``; witness_sign: ``"abs"`` or ``"positive"``.
    """

    prototypes: Tensor
    criticisms: Tensor
    witness: Tensor
    objective: Tensor
    density: Tensor
    kernel: str
    gamma: float | None
    gamma_rule: str
    regularizer: str | None
    witness_sign: str = "abs"

    def __repr__(self) -> str:
        g = "" if self.gamma is None else f", gamma={self.gamma:.4g} ({self.gamma_rule})"
        return (f"PrototypesCriticisms({len(self.prototypes)} prototypes, {len(self.criticisms)} criticisms of "
                f"{len(self.witness)} rows, kernel={self.kernel!r}{g}, regularizer={self.regularizer!r})")


def _gamma(x: Tensor, gamma: Any, sq: Tensor | None = None) -> tuple[float, str]:
    if gamma is None or gamma == "scale":
        var = float(x.double().var(unbiased=False))
        if var <= 0:
            raise ValueError("the features are constant (variance 0), so gamma='scale' is undefined; pass gamma")
        return 1.0 / (x.shape[1] * var), "scale"
    if gamma == "median":
        n = x.shape[0]
        if n < 2:
            raise ValueError("gamma='median' needs at least 2 rows")
        d = sq if sq is not None else _sq_dists(x)
        off = d[~torch.eye(n, dtype=torch.bool, device=d.device)]
        med = float(off.double().median())
        if med <= 0:
            raise ValueError("the median squared distance between rows is 0 (mostly duplicate rows), so "
                             "gamma='median' is undefined; pass gamma")
        return 1.0 / med, "median"
    if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not math.isfinite(gamma) or gamma <= 0:
        raise ValueError(f"gamma must be a positive number, 'scale', 'median' or None, got {gamma!r}")
    return float(gamma), "given"


def _sq_dists(x: Tensor) -> Tensor:
    """(N, N) squared Euclidean distances, ||x||^2 + ||y||^2 - 2 x.y clamped at 0, zero diagonal."""
    sq = (x * x).sum(1)
    d = (sq[:, None] + sq[None, :] - 2.0 * (x @ x.T)).clamp_min_(0)
    d.fill_diagonal_(0)
    return d


def kernel_matrix(features: Any, kernel: str = "rbf", gamma: Any = None) -> tuple[Tensor, float | None, str]:
    """The (N, N) kernel matrix of the rows and the width used: ``k(x, y) = exp(-gamma ||x - y||^2)``.

    ``gamma=None`` (or ``"scale"``) is scikit-learn's "scale" rule, ``1 / (D * Var(X))`` (the variance of all
    entries); ``"median"`` is the median heuristic, ``1 / median_{i != j} ||x_i - x_j||^2``. ``kernel="precomputed"``
    takes ``features`` as the (N, N) kernel matrix itself. Returns ``(K, gamma, gamma_rule)``; K is in the features'
    dtype on their device: N^2 values (10,000 rows: 400 MB in float32, 800 MB in float64).
    """
    x = _as_matrix(features)
    if kernel == "precomputed":
        if gamma is not None:
            raise ValueError(f"gamma={gamma!r} has no effect with kernel='precomputed'; leave gamma as None")
        if x.shape[0] != x.shape[1]:
            raise ValueError(f"kernel='precomputed' needs a square (N, N) kernel matrix, got {tuple(x.shape)}")
        return x, None, "precomputed"
    if kernel != "rbf":
        raise ValueError(f"unknown kernel {kernel!r}; choose one of {', '.join(map(repr, KERNELS))}")
    d = _sq_dists(x)
    g, rule = _gamma(x, gamma, d)
    return torch.exp_(d.mul_(-g)), g, rule


def mmd_objective(k: Tensor, selected: Any) -> float:
    """``J_b(S) = 2/(n|S|) sum_{i in [n], j in S} k(x_i, x_j) - 1/|S|^2 sum_{i,j in S} k(x_i, x_j)`` (Kim et al.
    2016, Eq. 4) for the rows ``selected`` of the (N, N) kernel matrix ``k``, computed directly in float64."""
    s = torch.as_tensor(selected, dtype=torch.long, device=k.device).reshape(-1)
    if len(s) == 0:
        return 0.0
    kd = k.double()
    n, m = kd.shape[0], len(s)
    return float(2.0 / (n * m) * kd[:, s].sum() - kd[s][:, s].sum() / m ** 2)


def prototypes_criticisms(features: Any, n_prototypes: int, n_criticisms: int = 0, kernel: str = "rbf",
                          gamma: Any = None, *, regularizer: str | None = None, witness_sign: str = "abs"
                          ) -> PrototypesCriticisms:
    """MMD-critic (Kim, Khanna & Koyejo 2016): prototypes that summarise the data, criticisms it leaves out.

    Prototypes S are picked greedily, each maximising ``J_b(S) = 2/(n|S|) sum_{i in [n], j in S} k(x_i, x_j) -
    1/|S|^2 sum_{i,j in S} k(x_i, x_j)`` (= const - MMD^2(X, S)). Criticisms C (not prototypes) are then picked
    greedily, each maximising ``sum_{c in C} |witness(x_c)| (+ log det K_CC with regularizer="logdet")``, where
    ``witness(x) = 1/n sum_i k(x, x_i) - 1/|S| sum_{j in S} k(x, z_j)``. Ties go to the smaller row index.

    Args:
        features: (N, D) numpy array or torch tensor (or (N, N) kernel matrix with ``kernel="precomputed"``).
            Computed in its floating dtype (float32 for ints) on its device.
        n_prototypes: P >= 1; n_criticisms: C >= 0; P + C <= N.
        kernel: ``"rbf"`` (``exp(-gamma ||x - y||^2)``) or ``"precomputed"``.
        gamma: RBF width: None / ``"scale"`` = ``1 / (D * Var(X))`` (scikit-learn's "scale"), ``"median"`` =
            ``1 / median ||x_i - x_j||^2``, or a positive number.
        regularizer: None or ``"logdet"`` (the paper's diversity term: criticisms spread out, not clustered).
        witness_sign: ``"abs"`` (the paper: |witness|, both rows the prototypes under- and over-represent) or
            ``"positive"`` (only under-represented rows, witness > 0: the data is denser there than the prototypes).
            With many prototypes the largest |witness| is often negative (rows between several prototypes);
            ``"positive"`` or ``regularizer="logdet"`` then give the more atypical criticisms.

    Memory: the (N, N) kernel matrix (10,000 rows: 400 MB in float32, 800 MB in float64); time O(N^2 D + N (P + C)).

    Returns:
        :class:`PrototypesCriticisms` on the features' device.

    Raises:
        ValueError: features not 2-D/finite, bad counts, unknown kernel/regularizer, a non-positive gamma.
    """
    if regularizer not in REGULARIZERS:
        raise ValueError(f"unknown regularizer {regularizer!r}; choose None or 'logdet'")
    if witness_sign not in WITNESS_SIGNS:
        raise ValueError(f"unknown witness_sign {witness_sign!r}; choose 'abs' or 'positive'")
    k, g, rule = kernel_matrix(features, kernel, gamma)
    n = k.shape[0]
    p = _count(n_prototypes, "n_prototypes", 1)
    c = _count(n_criticisms, "n_criticisms", 0)
    if p + c > n:
        raise ValueError(f"n_prototypes + n_criticisms = {p + c} exceeds the {n} rows; ask for fewer")
    if n > 10_000:
        log.info("prototypes_criticisms: a %d x %d kernel matrix (%.1f GB)", n, n, n * n * k.element_size() / 1e9)
    dev = k.device
    colsum = k.sum(0)  # sum_i k(x_i, x_c)
    diag = k.diagonal()
    chosen = torch.zeros(n, dtype=torch.bool, device=dev)
    to_s = torch.zeros(n, dtype=k.dtype, device=dev)  # sum_{j in S} k(x_c, z_j)
    a = b = 0.0  # sum_{i, j in S} k(x_i, z_j) over all i; sum over i, j in S
    protos, objective = [], []
    for m in range(p):
        gain = 2.0 / (n * (m + 1)) * (a + colsum) - (b + 2.0 * to_s + diag) / (m + 1) ** 2
        gain = gain.masked_fill(chosen, -math.inf)
        j = int(torch.argmax(gain))
        objective.append(float(gain[j]))
        a += float(colsum[j])
        b += float(2.0 * to_s[j] + diag[j])
        to_s += k[j]
        chosen[j] = True
        protos.append(j)
    density = colsum / n
    witness = density - to_s / p
    crits = _criticisms(k, witness.abs() if witness_sign == "abs" else witness, chosen, c, regularizer)
    return PrototypesCriticisms(torch.tensor(protos, dtype=torch.long, device=dev),
                                torch.tensor(crits, dtype=torch.long, device=dev), witness,
                                torch.tensor(objective, dtype=torch.float64), density, kernel, g, rule, regularizer,
                                witness_sign)


def _criticisms(k: Tensor, score: Tensor, taken: Tensor, c: int, regularizer: str | None) -> list[int]:
    """Greedy criticisms: argmax of |witness| (+ the log-det gain ``log(k_cc - k_cC K_CC^-1 k_Cc)``, kept for all
    candidates by an incremental Cholesky factorisation)."""
    taken = taken.clone()
    residual = k.diagonal().clone()  # k_cc - k_cC K_CC^-1 k_Cc (Schur complement)
    factors: list[Tensor] = []
    out: list[int] = []
    tiny = torch.finfo(k.dtype).tiny
    for _ in range(c):
        gain = score.clone()
        if regularizer == "logdet":
            gain = gain + torch.log(residual.clamp_min(tiny))
        j = int(torch.argmax(gain.masked_fill(taken, -math.inf)))
        out.append(j)
        taken[j] = True
        if regularizer == "logdet":
            e = k[j].clone()
            for f in factors:
                e -= f[j] * f
            e /= math.sqrt(max(float(residual[j]), float(tiny)))
            factors.append(e)
            residual -= e * e
    return out
