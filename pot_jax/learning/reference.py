"""Plain NumPy aggregation rules and pre-aggregators, written from their papers.

The ground truth for :mod:`pot_jax.learning.aggregation`: the tests compare
every JAX rule with the function of the same name here, and the aggregation
benchmark (``python -m pot_jax.bench.aggregation``) times both. It lives in
the package, not under tests/, because the benchmark runs it.

Each rule takes the accepted rows only, ``x_nxP`` (n accepted gradients by P
parameters), works in float64, and raises :class:`TooFewRows` below the
number of rows its paper requires; :func:`aggregate` applies the mask, routes
parameters through a ``PRE+RULE`` name as :func:`~pot_jax.learning.aggregation.make_rule`
does, and returns NaN where the JAX rule does (too few rows). Pairwise squared
distances come from the float64 Gram matrix (``|x_i|^2 + |x_j|^2 - 2 x_i.x_j``),
which resolves distances down to about ``1e-8 |x|``, far below the float32
rules under test.

Where a paper leaves a choice, the choice here (and in the JAX rules):

* order statistics: the median of an even count is the mean of the two middle
  values; meamed and Bulyan keep, on a tie in distance to the median, the
  smaller value;
* nearest neighbours (Krum scores, Multi-Krum, MoNNA, NNM): ties go to the
  lower worker slot (a stable sort of the accepted rows in slot order);
* Krum and Multi-Krum: equal scores go to the lower slot;
* Bulyan's repeated Krum: equal scores go to the row with the smallest sum of
  squared distances to the remaining rows, then to the lower slot;
* MDA: the search runs over the sets of f accepted rows to drop, in
  ``itertools.combinations`` order; the smallest diameter of the rows kept
  wins, ties go to the smallest sum of squared pairwise distances, then to
  the first set (the one dropping the lowest slots);
* CAF: the top eigenpair of the weighted covariance is exact (``eigh``);
  ``max tau`` runs over rows still weighted; the loop stops when no weight
  can shrink (every weighted row equal);
* MoNNA: the reference gradient is the coordinate-wise median of the
  accepted rows, or (``idx``) the row of worker ``idx``, which always counts
  among its own nearest;
* bucketing: the shuffle is pot-jax's seeded one (:func:`bucketing_order`).
"""

from __future__ import annotations

import inspect
import itertools
from collections.abc import Callable
from typing import Any

import numpy as np


class TooFewRows(ValueError):
    """Fewer accepted rows than the rule's paper requires."""


def _require(name: str, n: int, minimum: int, requirement: str) -> None:
    if n < minimum:
        raise TooFewRows(f"{name} needs at least {requirement} = {minimum} rows, got {n}")


def _sq_distances(x_nxP: np.ndarray) -> np.ndarray:
    """``|x_i - x_j|^2`` for every pair, 0 on the diagonal."""
    sq_n = np.einsum("ip,ip->i", x_nxP, x_nxP)
    gram_nxn = x_nxP @ x_nxP.T
    dist_nxn = np.maximum(sq_n[:, None] + sq_n[None, :] - 2 * gram_nxn, 0)
    dist_nxn = 0.5 * (dist_nxn + dist_nxn.T)
    np.fill_diagonal(dist_nxn, 0)
    return dist_nxn


def _window_mean(x_nxP: np.ndarray, keep: int) -> np.ndarray:
    """Per coordinate, the mean of the ``keep`` values closest to the median (ties: smaller)."""
    sorted_nxP = np.sort(x_nxP, axis=0)
    median_P = np.median(sorted_nxP, axis=0)
    # A stable sort of the distances keeps the smaller value first on a tie.
    nearest_nxP = np.argsort(np.abs(sorted_nxP - median_P), axis=0, kind="stable")[:keep]
    return np.take_along_axis(sorted_nxP, nearest_nxP, axis=0).mean(axis=0)


# --------------------------------------------------------------------------- #
# Rules: x_nxP (accepted rows, float64) -> agg_P
# --------------------------------------------------------------------------- #


def mean(x_nxP: np.ndarray) -> np.ndarray:
    """The average of the accepted gradients."""
    _require("mean", len(x_nxP), 1, "1")
    return x_nxP.mean(axis=0)


def coordinate_median(x_nxP: np.ndarray) -> np.ndarray:
    """Coordinate-wise median (Yin et al., 2018); even n averages the two middle values."""
    _require("coordinate_median", len(x_nxP), 1, "1")
    return np.median(x_nxP, axis=0)


def trimmed_mean(x_nxP: np.ndarray, *, trim: int) -> np.ndarray:
    """Coordinate-wise trimmed mean (Yin et al., 2018): drop ``trim`` values at each end."""
    n = len(x_nxP)
    _require("trimmed_mean", n, 2 * trim + 1, "2*trim+1")
    return np.sort(x_nxP, axis=0)[trim : n - trim].mean(axis=0)


def krum_scores(x_nxP: np.ndarray, *, f: int) -> np.ndarray:
    """Krum scores (Blanchard et al., 2017): each row's summed squared distance to
    its ``n - f - 2`` nearest other rows."""
    n = len(x_nxP)
    dist_nxn = _sq_distances(x_nxP)
    others = [np.sort(np.delete(dist_nxn[i], i)) for i in range(n)]
    return np.array([row[: max(n - f - 2, 0)].sum() for row in others])


def krum(x_nxP: np.ndarray, *, f: int) -> np.ndarray:
    """Krum (Blanchard et al., 2017): the row with the lowest score (ties: lower slot)."""
    _require("krum", len(x_nxP), 2 * f + 3, "2f+3")
    return x_nxP[np.argmin(krum_scores(x_nxP, f=f))]


def multi_krum(x_nxP: np.ndarray, *, f: int, m: int) -> np.ndarray:
    """Multi-Krum (Blanchard et al., 2017): the mean of the ``m`` lowest-scoring rows."""
    _require("multi_krum", len(x_nxP), max(2 * f + 3, f + m), "max(2f+3, f+m)")
    order = np.argsort(krum_scores(x_nxP, f=f), kind="stable")
    return x_nxP[order[:m]].mean(axis=0)


def geometric_median(
    x_nxP: np.ndarray, *, iters: int = 8, eps: float = 1e-6, init: str = "median"
) -> np.ndarray:
    """Smoothed Weiszfeld (Pillutla, Kakade and Harchaoui, RFA, 2019), ``iters`` steps
    ``z <- sum_i b_i x_i / sum_i b_i``, ``b_i = 1 / max(eps, |z - x_i|)``, from the
    coordinate-wise median (``init="median"``) or the mean."""
    _require("geometric_median", len(x_nxP), 1, "1")
    z_P = np.median(x_nxP, axis=0) if init == "median" else x_nxP.mean(axis=0)
    for _ in range(iters):
        b_n = 1 / np.maximum(np.linalg.norm(x_nxP - z_P, axis=1), eps)
        z_P = b_n @ x_nxP / b_n.sum()
    return z_P


def centered_clipping(
    x_nxP: np.ndarray, *, tau: float, iters: int = 3, center: np.ndarray | None = None
) -> np.ndarray:
    """Centered clipping (Karimireddy, He and Jaggi, 2021): ``iters`` steps
    ``v <- v + (1/n) sum_i (x_i - v) min(1, tau / |x_i - v|)`` from ``center``
    (by default the mean)."""
    n = len(x_nxP)
    _require("centered_clipping", n, 1, "1")
    v_P = x_nxP.mean(axis=0) if center is None else np.asarray(center, np.float64)
    for _ in range(iters):
        u_nxP = x_nxP - v_P
        norm_n = np.linalg.norm(u_nxP, axis=1)
        scale_n = np.minimum(1, tau / np.where(norm_n > 0, norm_n, np.inf))
        scale_n = np.where(norm_n > 0, scale_n, 0)  # u_i = 0 adds nothing
        v_P = v_P + scale_n @ u_nxP / n
    return v_P


def mda(x_nxP: np.ndarray, *, f: int) -> np.ndarray:
    """Minimum-diameter averaging (El Mhamdi et al., 2020): the mean of the ``n - f``
    rows whose largest pairwise distance is smallest, by exhaustive search."""
    n = len(x_nxP)
    _require("mda", n, 2 * f + 1, "2f+1")
    dist_nxn = _sq_distances(x_nxP)
    best_key, best = None, None
    for dropped in itertools.combinations(range(n), f):
        kept = np.setdiff1d(np.arange(n), dropped)
        block = dist_nxn[np.ix_(kept, kept)]
        key = (block.max(), block.sum())
        if best_key is None or key < best_key:
            best_key, best = key, kept
    return x_nxP[best].mean(axis=0)


def monna(x_nxP: np.ndarray, *, f: int, idx: int | None = None) -> np.ndarray:
    """MoNNA (Farhadkhani et al., 2023): the mean of the ``n - f`` rows nearest to a
    reference, the coordinate-wise median or the row ``idx`` of ``x_nxP``."""
    n = len(x_nxP)
    _require("monna", n, 2 * f + 1, "2f+1")
    ref_P = np.median(x_nxP, axis=0) if idx is None else x_nxP[idx]
    dist_n = np.linalg.norm(x_nxP - ref_P, axis=1)
    if idx is not None:
        dist_n[idx] = -1  # the trusted row is always among its own nearest
    return x_nxP[np.argsort(dist_n, kind="stable")[: n - f]].mean(axis=0)


def meamed(x_nxP: np.ndarray, *, f: int) -> np.ndarray:
    """Mean around the median (Xie, Koyejo and Gupta, 2018): per coordinate, the
    mean of the ``n - f`` values closest to the median."""
    n = len(x_nxP)
    _require("meamed", n, 2 * f + 1, "2f+1")
    return _window_mean(x_nxP, n - f)


def caf(x_nxP: np.ndarray, *, f: int) -> np.ndarray:
    """Covariance-bound agnostic filter (Allouah, Guerraoui and Stephan, 2025).

    Weights ``c_i = 1``; while ``sum c > n - 2f``: weighted mean ``mu``, top
    eigenpair ``(lam, v)`` of the weighted covariance, ``tau_i = ((x_i - mu).v)^2``,
    ``c_i <- c_i (1 - tau_i / max tau)``. Returns the ``mu`` with the smallest ``lam``.
    """
    n = len(x_nxP)
    _require("caf", n, 2 * f + 1, "2f+1")
    c_n = np.ones(n)
    best_lam, best_mu = np.inf, x_nxP.mean(axis=0)
    while c_n.sum() > n - 2 * f:
        w_n = c_n / c_n.sum()
        mu_P = w_n @ x_nxP
        centred_nxP = x_nxP - mu_P
        # The covariance sum_i w_i d_i d_i^T is A^T A (P x P) with rows a_i = sqrt(w_i) d_i;
        # its top eigenpair is (lam, A^T u / sqrt(lam)) for the top eigenpair (lam, u)
        # of the n x n matrix A A^T (an SVD of A gives the same, 20x slower here).
        a_nxP = np.sqrt(w_n)[:, None] * centred_nxP
        eigvals_n, eigvecs_nxn = np.linalg.eigh(a_nxP @ a_nxP.T)
        lam = max(eigvals_n[-1], 0.0)
        v_P = eigvecs_nxn[:, -1] @ a_nxP / np.sqrt(lam) if lam > 0 else np.zeros(x_nxP.shape[1])
        if lam < best_lam:
            best_lam, best_mu = lam, mu_P
        tau_n = np.where(c_n > 0, (centred_nxP @ v_P) ** 2, 0)
        if tau_n.max() <= 0:
            break  # every weighted row is the mean: nothing left to filter
        c_n = np.maximum(c_n * (1 - tau_n / tau_n.max()), 0)
    return best_mu


def bulyan(x_nxP: np.ndarray, *, f: int) -> np.ndarray:
    """Bulyan over Krum (El Mhamdi, Guerraoui and Rouault, 2018).

    ``theta = n - 2f`` rows chosen one by one by Krum over the remaining rows
    (scores over ``|R| - f - 2`` nearest remaining rows), then per coordinate
    the mean of the ``theta - 2f`` selected values closest to their median.
    """
    n = len(x_nxP)
    _require("bulyan", n, 4 * f + 3, "4f+3")
    dist_nxn = _sq_distances(x_nxP)
    remaining, selected = list(range(n)), []
    for _ in range(n - 2 * f):
        nearest = max(len(remaining) - f - 2, 0)
        keys = []
        for i in remaining:
            others = np.sort([dist_nxn[i, j] for j in remaining if j != i])
            keys.append((others[:nearest].sum(), dist_nxn[i, remaining].sum(), i))
        selected.append(min(keys)[2])
        remaining.remove(selected[-1])
    return _window_mean(x_nxP[selected], n - 4 * f)


# --------------------------------------------------------------------------- #
# Pre-aggregators: x_nxP -> y_mxP
# --------------------------------------------------------------------------- #


def nnm(x_nxP: np.ndarray, *, f: int) -> np.ndarray:
    """Nearest-neighbour mixing (Allouah et al., 2023): each row becomes the mean
    of its ``n - f`` nearest rows, itself included."""
    n = len(x_nxP)
    _require("nnm", n, 2 * f + 1, "2f+1")
    dist_nxn = _sq_distances(x_nxP)
    mix_nxn = np.zeros((n, n))
    for i in range(n):
        mix_nxn[i, np.argsort(dist_nxn[i], kind="stable")[: n - f]] = 1 / (n - f)
    return mix_nxn @ x_nxP


def bucketing_order(mask_W: np.ndarray, seed: int) -> np.ndarray:
    """pot-jax's seeded shuffle of the accepted rows: their positions among the
    accepted rows, by ascending key ``jax.random.uniform(PRNGKey(seed), (W,))``."""
    import jax  # only bucketing needs pot-jax's random stream

    keys_W = np.asarray(jax.random.uniform(jax.random.PRNGKey(seed), (len(mask_W),)))
    return np.argsort(keys_W[np.asarray(mask_W, bool)], kind="stable")


def bucketing(x_nxP: np.ndarray, *, s: int, order: np.ndarray) -> np.ndarray:
    """Bucketing (Karimireddy, He and Jaggi, 2022): the rows in ``order`` (a shuffle),
    averaged in consecutive buckets of ``s`` (the last may be smaller)."""
    _require("bucketing", len(x_nxP), 1, "1")
    shuffled = x_nxP[np.asarray(order)]
    return np.stack([shuffled[b : b + s].mean(axis=0) for b in range(0, len(shuffled), s)])


def clipping(x_nxP: np.ndarray, *, c: float) -> np.ndarray:
    """Static clipping: each row scaled to norm at most ``c``."""
    _require("clipping", len(x_nxP), 1, "1")
    norm_n = np.linalg.norm(x_nxP, axis=1)
    return x_nxP * np.where(norm_n > c, c / np.where(norm_n > c, norm_n, 1), 1)[:, None]


def arc(x_nxP: np.ndarray, *, f: int) -> np.ndarray:
    """Adaptive robust clipping (Allouah et al., 2025): with ``k = floor(2 f (n - f) / n)``,
    every row clipped to the (k + 1)-th largest norm."""
    n = len(x_nxP)
    _require("arc", n, 2 * f + 1, "2f+1")
    norm_n = np.linalg.norm(x_nxP, axis=1)
    threshold = np.sort(norm_n)[::-1][2 * f * (n - f) // n]
    above_n = norm_n > threshold
    return x_nxP * np.where(above_n, threshold / np.where(above_n, norm_n, 1), 1)[:, None]


RULES: dict[str, Callable[..., np.ndarray]] = {
    "mean": mean,
    "coordinate_median": coordinate_median,
    "trimmed_mean": trimmed_mean,
    "krum": krum,
    "multi_krum": multi_krum,
    "geometric_median": geometric_median,
    "centered_clipping": centered_clipping,
    "mda": mda,
    "monna": monna,
    "meamed": meamed,
    "caf": caf,
    "bulyan": bulyan,
}
PRE_AGGREGATORS: dict[str, Callable[..., np.ndarray]] = {
    "nnm": nnm,
    "bucketing": bucketing,
    "clipping": clipping,
    "arc": arc,
}


def _takes(part: str) -> set[str]:
    """The parameters ``make_rule`` routes to ``part`` (bucketing: ``seed``, not ``order``)."""
    fn = PRE_AGGREGATORS.get(part) or RULES[part]
    taken = set(inspect.signature(fn).parameters) - {"x_nxP"}
    return (taken - {"order"}) | {"seed"} if part == "bucketing" else taken


def aggregate(name: str, grads_WxP: Any, mask_W: Any, **params: Any) -> np.ndarray:
    """The reference output of the rule or composition ``name`` (``"nnm+krum"``).

    Each parameter goes to every part that takes it, as in ``make_rule``;
    ``bucketing`` takes ``seed`` and shuffles with :func:`bucketing_order` of
    the input mask (the other pre-aggregators keep the worker slots, so it may
    follow them, but not another bucketing); ``monna``'s ``idx`` names a
    worker slot (NaN when that worker is rejected). Returns float64 ``(P,)``,
    all NaN when some part gets fewer rows than its paper requires.
    """
    *pres, rule = name.split("+")
    mask_W = np.asarray(mask_W, bool)
    x_nxP = np.asarray(grads_WxP)[mask_W].astype(np.float64)
    nan_P = np.full(np.shape(grads_WxP)[1], np.nan)
    unknown = set(params) - set().union(*(_takes(part) for part in (*pres, rule)))
    if unknown:
        raise ValueError(f"{name} takes no parameter {sorted(unknown)}")
    try:
        for pre in pres:
            kwargs = {k: v for k, v in params.items() if k in _takes(pre)}
            if pre == "bucketing":
                kwargs = {"s": kwargs["s"], "order": bucketing_order(mask_W, kwargs.get("seed", 0))}
            x_nxP = PRE_AGGREGATORS[pre](x_nxP, **kwargs)
        kwargs = {k: v for k, v in params.items() if k in _takes(rule)}
        if rule == "monna" and kwargs.get("idx") is not None:
            if not mask_W[kwargs["idx"]]:
                return nan_P
            kwargs["idx"] = int(mask_W[: kwargs["idx"]].sum())
        return RULES[rule](x_nxP, **kwargs)
    except TooFewRows:
        return nan_P
