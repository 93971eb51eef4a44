"""Attacks on robust aggregation (ByzFL's set and beyond), and one on tolerance-mode checks.

Every attack here is an :class:`~pot_jax.attacks.workers.Attack` registered
in ``ATTACKS`` under the name given below (ByzFL's class names in snake case
where ByzFL has the attack). All but ``inf`` and ``drift`` collude
(``knowledge="colluding"``): they read every worker's honest gradient of the
round, ``ctx.grads_WxP``.

Conventions. The *reference* gradients are all W rows of ``ctx.grads_WxP``
(every worker's honest computation, the Byzantine workers' own included, as
for ``alie`` and ``ipm``): the statistics an attack is built from (mean,
standard deviation, per-coordinate extremes, pairwise distances) are taken
over them. What the server aggregates is simulated as ``ctx.grads_WxP`` with
every Byzantine row replaced by the attack vector, all rows accepted; the
*honest mean* is the mean of the non-Byzantine rows. Searches are fixed
grids or bisections with stated iteration counts, so an attack is a
deterministic function of the round and ``rng``.

ByzFL's set (LPD-EPFL ``byzfl.attacks``):

* ``inf`` (``Inf``): every coordinate +inf (malformed; knowledge "own").
* ``fall_of_empires`` (``FallOfEmpires``, Xie et al., UAI 2020):
  ``(1 - tau) * mean``, i.e. ``ipm`` with ``epsilon = tau - 1``.
* ``mimic`` (``Mimic``, Karimireddy et al., ICLR 2022): copies one honest worker.
* ``optimal_ipm``, ``optimal_alie`` (``Optimal_InnerProductManipulation``,
  ``Optimal_ALittleIsEnough``): ``ipm``/``alie`` with the scale that moves
  the aggregation rule's output furthest from the honest mean; the rule is
  ``rule=`` or, in a run, the run's aggregation (``build_attack``).
* ``sign_flip``, ``gaussian``, ``ipm``, ``alie`` and ``label_flip`` are in
  :mod:`pot_jax.attacks.workers` (their docstrings say where ByzFL differs).

Beyond ByzFL:

* ``min_max``, ``min_sum`` (Shejwalkar and Houmansadr, NDSS 2021).
* ``fang_krum``, ``fang_trimmed_mean`` (Fang et al., USENIX Security 2020).
* ``drift`` knows the verification scheme: in tolerance mode it sends its
  gradient moved by just under the threshold (knowledge "own").

Depends on ``pot_jax.learning``; ``drift`` imports the recomputation metric
from ``pot_jax.verification`` when it runs, so importing this module does not.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from numbers import Integral
from typing import Any

import numpy as np

from pot_jax.attacks.workers import ATTACKS, Attack, AttackContext, _choice, _real, alie_z
from pot_jax.learning.aggregation import RULES, AggregationRule, krum_scores

__all__ = [
    "ROBUST_ATTACK_NAMES",
    "SHEJWALKAR_DIRECTIONS",
    "aggregate_deviation",
    "drift",
    "fall_of_empires",
    "fang_krum",
    "fang_krum_lambda",
    "fang_trimmed_mean",
    "inf",
    "mimic",
    "mimic_target",
    "min_max",
    "min_sum",
    "optimal_alie",
    "optimal_ipm",
    "scale_grid",
    "shejwalkar_gamma",
]

SHEJWALKAR_DIRECTIONS = ("unit_vec", "std", "sign")
"""Perturbation directions of min-max and min-sum (the authors' code names)."""

# The doubling phase of the gamma search stops after this many doublings
# (gamma_init * 2**60): a perturbation that stays feasible that far is zero.
_MAX_DOUBLINGS = 60


# --------------------------------------------------------------------------- #
# Shared pieces
# --------------------------------------------------------------------------- #


def _int(attack: str, field: str, value: Any, *, low: int, high: int | None = None) -> int:
    expect = f"an int >= {low}" if high is None else f"an int in [{low}, {high}]"
    if isinstance(value, bool | np.bool_) or not isinstance(value, Integral):
        raise ValueError(f"{attack}: {field} = {value!r}, expected {expect}")
    if int(value) < low or (high is not None and int(value) > high):
        raise ValueError(f"{attack}: {field} = {value!r}, expected {expect}")
    return int(value)


def _reference(ctx: AttackContext) -> np.ndarray:
    return np.asarray(ctx.grads_WxP, dtype=np.float64)


def _honest_workers(ctx: AttackContext) -> np.ndarray:
    byzantine = set(ctx.byzantine)
    return np.array([w for w in range(ctx.n_workers) if w not in byzantine], dtype=np.int64)


def _submitted(grads_WxP: Any, byzantine: tuple[int, ...], sent_P: np.ndarray) -> np.ndarray:
    """What the server aggregates: the honest rows, with every Byzantine row set to ``sent_P``."""
    rows = np.array(grads_WxP, dtype=np.float32)
    rows[list(byzantine)] = sent_P
    return rows


def aggregate_deviation(
    rule: AggregationRule, grads_WxP: Any, byzantine: tuple[int, ...], sent_P: np.ndarray
) -> float:
    """``||rule(submitted) - mean(honest rows)||``, the objective of the line searches.

    ``submitted`` is ``grads_WxP`` with every row in ``byzantine`` set to
    ``sent_P`` (float32), all rows accepted; the honest rows are the others.
    NaN when the rule's output is not finite.
    """
    rows = _submitted(grads_WxP, byzantine, sent_P)
    honest = np.ones(rows.shape[0], bool)
    honest[list(byzantine)] = False
    target = np.asarray(grads_WxP, dtype=np.float64)[honest].mean(axis=0)
    agg = np.asarray(rule.aggregate(rows, np.ones(rows.shape[0], bool)), dtype=np.float64)
    if not np.all(np.isfinite(agg)):
        return math.nan
    diff = agg - target
    return math.sqrt(float(np.add.reduce(diff * diff)))


def _round_key(ctx: AttackContext) -> tuple:
    """Identifies a round's inputs, so the Byzantine workers of a round share one search."""
    grads = np.ascontiguousarray(ctx.grads_WxP)
    return (ctx.round, tuple(ctx.byzantine), grads.shape, hashlib.sha256(grads).digest())


def _memo_last(fn: Callable[[AttackContext], Any]) -> Callable[[AttackContext], Any]:
    """Caches ``fn(ctx)`` for the last round seen (every Byzantine worker sends the same vector)."""
    last: dict[tuple, Any] = {}

    def cached(ctx: AttackContext) -> Any:
        key = _round_key(ctx)
        if key not in last:
            last.clear()
            last[key] = fn(ctx)
        return last[key]

    return cached


def _rule_of(attack: str, rule: Any) -> tuple[AggregationRule, str]:
    """The rule a searching attack targets, from a spec or an ``AggregationRule``."""
    if isinstance(rule, AggregationRule):
        return rule, rule.label
    if not isinstance(rule, str):
        raise ValueError(
            f"{attack}: rule = {rule!r}, expected an aggregation rule spec such as "
            "'krum:f=3' (';' between its parameters) or an AggregationRule"
        )
    # In an attack spec ',' separates the attack's parameters, so the rule's use ';'.
    text = rule.replace(";", ",")
    return RULES.build(text, flag=f"{attack}: rule"), text


def scale_grid(default: float, *, low: float, high: float, points: int) -> np.ndarray:
    """The scales a line search tries, in order: ``default``, then ``points`` geometric steps.

    The steps run from ``low`` to ``high``; the first best scale wins, so the
    default is kept unless another scale does strictly better.
    """
    return np.concatenate([[default], np.geomspace(low, high, points)])


def _grid_argmax(scales: np.ndarray, objective: Callable[[float], float]) -> float:
    best, best_value = float(scales[0]), -math.inf
    for scale in scales:
        value = objective(float(scale))
        if not math.isnan(value) and value > best_value:
            best, best_value = float(scale), value
    return best


def _search_params(attack: str, low: Any, high: Any, points: Any) -> tuple[float, float, int]:
    low = _real(attack, "low", low, expect="a finite number > 0", ok=lambda v: v > 0)
    high = _real(
        attack, "high", high, expect=f"a finite number > low = {low}", ok=lambda v: v > low
    )
    points = _int(attack, "points", points, low=2, high=1000)
    return low, high, points


# --------------------------------------------------------------------------- #
# ByzFL's attacks
# --------------------------------------------------------------------------- #


def inf() -> Attack:
    """Sends +inf in every coordinate (ByzFL's ``Inf``); the finiteness check rejects it."""

    def apply(ctx, worker, rng):
        return np.full(np.shape(ctx.grads_WxP)[1], np.inf, np.float32)

    return Attack("inf", apply, malformed=True, knowledge="own")


def fall_of_empires(*, tau: float = 3.0) -> Attack:
    """Fall of Empires (Xie et al., UAI 2020), as ByzFL writes it: ``(1 - tau) * mean``.

    The same vector as ``ipm`` with ``epsilon = tau - 1``; ByzFL's default
    ``tau = 3`` sends ``-2 * mean``, the large-epsilon regime in which the
    paper breaks the mean and Krum (``optimal_ipm`` searches epsilon instead).
    """
    tau = _real("fall_of_empires", "tau", tau, expect="a finite number > 1", ok=lambda v: v > 1)

    def apply(ctx, worker, rng):
        return ((1.0 - tau) * _reference(ctx).mean(axis=0)).astype(np.float32)

    return Attack("fall_of_empires", apply, params=(("tau", tau),), knowledge="colluding")


def mimic_target(grads_WxP: Any, honest_W: np.ndarray) -> int:
    """The honest worker the mimic attack copies: the most extreme along the top principal axis.

    Karimireddy et al. (ICLR 2022) pick the honest worker ``i`` maximising
    ``<z, x_i>``, where ``z`` is the direction of largest variance of the
    honest gradients, ``argmax_{|z|=1} sum_i <z, x_i - mean>^2``. Here ``z``
    is computed exactly for the round (the top eigenvector of the centred
    Gram matrix, float64) and the score is ``|<z, x_i - mean>|``, which does
    not depend on the sign an eigensolver gives ``z``. Ties: lowest index.
    """
    x = np.asarray(grads_WxP, dtype=np.float64)[honest_W]
    centred = x - x.mean(axis=0)
    gram = centred @ centred.T
    _, vectors = np.linalg.eigh(gram)
    # The projections of the rows on z are proportional to the top eigenvector of the Gram matrix.
    scores = np.abs(gram @ vectors[:, -1])
    return int(honest_W[int(np.argmax(scores))])


def mimic(*, target: int | None = None) -> Attack:
    """Mimic (Karimireddy et al., ICLR 2022): every Byzantine worker sends one honest worker's gradient.

    Over-representing one honest worker biases the aggregate under
    heterogeneous data while every sent vector is a genuine gradient.
    ``target=None``: the worker of :func:`mimic_target`, chosen anew each
    round. The paper (and its code) estimate ``z`` online by power iteration
    during a warm-up and then fix the target, scoring ``<z, x_i>``; ByzFL's
    ``Mimic`` copies a fixed honest worker ``epsilon`` (default 0) and its
    optimizer scores the uncentred ``|<x_i, z>|``. ``target=k``: the k-th
    honest (non-Byzantine) worker in index order, like ByzFL's ``epsilon``.
    """
    if target is not None:
        target = _int("mimic", "target", target, low=0)

    def apply(ctx, worker, rng):
        honest = _honest_workers(ctx)
        if honest.size == 0:
            raise ValueError("mimic: every worker is Byzantine; there is no honest worker to copy")
        if target is None:
            chosen = mimic_target(ctx.grads_WxP, honest)
        elif target < honest.size:
            chosen = int(honest[target])
        else:
            raise ValueError(
                f"mimic: target = {target}, but there are only {honest.size} honest workers"
            )
        return np.array(np.asarray(ctx.grads_WxP)[chosen], dtype=np.float32)

    return Attack("mimic", apply, params=(("target", target),), knowledge="colluding")


def optimal_ipm(*, rule: Any, low: float = 1e-2, high: float = 1e3, points: int = 41) -> Attack:
    """IPM with a searched epsilon (ByzFL's ``Optimal_InnerProductManipulation``).

    Sends ``-epsilon * mean`` with the epsilon that maximises
    :func:`aggregate_deviation` under ``rule`` (a spec such as ``"krum:f=3"``
    or ``"multi_krum:f=3;m=5"``, or an ``AggregationRule``; a run passes its
    own aggregation unless the attack's spec names one, as ByzFL's attacks
    search the run's aggregator: :func:`~pot_jax.attacks.build_attack`), tried over
    :func:`scale_grid` from ``ipm``'s default 0.1: ``points + 1`` calls of
    the rule per round. ByzFL searches by expansion then contraction
    (20 evaluations from 0 with step 10, aggregating after a clipping
    pre-aggregator by default); a grid makes the search order-free and the
    result at least as strong as the fixed-scale ``ipm`` by construction.
    """
    built, text = _rule_of("optimal_ipm", rule)
    low, high, points = _search_params("optimal_ipm", low, high, points)
    scales = scale_grid(0.1, low=low, high=high, points=points)

    def vector(ctx, epsilon):
        return (-epsilon * _reference(ctx).mean(axis=0)).astype(np.float32)

    @_memo_last
    def search(ctx):
        return _grid_argmax(
            scales,
            lambda e: aggregate_deviation(built, ctx.grads_WxP, ctx.byzantine, vector(ctx, e)),
        )

    def apply(ctx, worker, rng):
        return vector(ctx, search(ctx))

    params = (("rule", text), ("low", low), ("high", high), ("points", points))
    return Attack("optimal_ipm", apply, params=params, knowledge="colluding")


def optimal_alie(*, rule: Any, low: float = 1e-2, high: float = 1e3, points: int = 41) -> Attack:
    """ALIE with a searched z (ByzFL's ``Optimal_ALittleIsEnough``).

    Sends ``mean - z * std`` (as ``alie``) with the z that maximises
    :func:`aggregate_deviation` under ``rule`` (as for ``optimal_ipm``: in a
    run, the run's aggregation unless named), tried over :func:`scale_grid`
    from ``alie``'s default ``alie_z(W, f)``. ByzFL writes ``mean + tau * std``
    with the unbiased std; the sign is immaterial to the search's reach.
    """
    built, text = _rule_of("optimal_alie", rule)
    low, high, points = _search_params("optimal_alie", low, high, points)

    def vector(ctx, z):
        grads = _reference(ctx)
        return (grads.mean(axis=0) - z * grads.std(axis=0)).astype(np.float32)

    @_memo_last
    def search(ctx):
        scales = scale_grid(
            alie_z(ctx.n_workers, ctx.n_byzantine), low=low, high=high, points=points
        )
        return _grid_argmax(
            scales,
            lambda z: aggregate_deviation(built, ctx.grads_WxP, ctx.byzantine, vector(ctx, z)),
        )

    def apply(ctx, worker, rng):
        return vector(ctx, search(ctx))

    params = (("rule", text), ("low", low), ("high", high), ("points", points))
    return Attack("optimal_alie", apply, params=params, knowledge="colluding")


# --------------------------------------------------------------------------- #
# Shejwalkar and Houmansadr (NDSS 2021): min-max and min-sum
# --------------------------------------------------------------------------- #


def _perturbation(reference_NxP: np.ndarray, direction: str) -> np.ndarray:
    mean = reference_NxP.mean(axis=0)
    if direction == "unit_vec":
        norm = float(np.linalg.norm(mean))
        return -mean / norm if norm > 0 else np.zeros_like(mean)
    if direction == "std":
        return -reference_NxP.std(axis=0)
    return -np.sign(mean)


def _squared_distances(x_NxP: np.ndarray) -> np.ndarray:
    gram = x_NxP @ x_NxP.T
    sq = np.diagonal(gram)
    return np.maximum(sq[:, None] + sq[None, :] - 2 * gram, 0.0)


def shejwalkar_gamma(
    reference_NxP: Any,
    direction: str,
    *,
    objective: str,
    bound: str = "max",
    gamma_init: float = 10.0,
    iters: int = 30,
) -> tuple[float, float]:
    """The largest feasible gamma of min-max or min-sum, bracketed: ``(gamma, gamma_fail)``.

    The malicious gradient is ``m = mean + gamma * p`` with ``p`` the
    ``direction``: ``unit_vec`` ``-mean / |mean|``, ``std`` ``-std`` (per
    coordinate), ``sign`` ``-sign(mean)``. Feasible means, over the reference
    gradients ``x_i``:

    * ``objective="min_max"``: ``max_i |m - x_i|^2 <= max_{i,j} |x_i - x_j|^2``;
    * ``objective="min_sum"``: ``sum_i |m - x_i|^2 <= max_i sum_j |x_i - x_j|^2``
      (``bound="min"``: ``min_i``, as the authors' code has it).

    Both sets of feasible gamma >= 0 are intervals ``[0, gamma*]`` (the left
    sides are convex in gamma and feasible at 0). The search doubles
    ``gamma_init`` until infeasible (at most 60 times), then bisects ``iters``
    times; it returns ``gamma`` feasible and ``gamma_fail`` infeasible with
    ``gamma_fail - gamma`` the resolution (``gamma_fail = inf`` when ``p = 0``
    or every doubling stayed feasible). The paper's Algorithm 1 moves gamma
    by a halving step from ``gamma_init`` (the authors' code: 10, to a
    tolerance of 1e-5), so it never exceeds ``2 * gamma_init``; the doubling
    removes that ceiling.
    """
    x = np.asarray(reference_NxP, dtype=np.float64)
    mean = x.mean(axis=0)
    p = _perturbation(x, direction)
    offsets = mean - x
    a = np.einsum("ij,ij->i", offsets, offsets)
    b = offsets @ p
    c = float(p @ p)
    dist = _squared_distances(x)
    if objective == "min_max":
        limit = float(dist.max())

        def feasible(g):
            return float(np.max(a + 2 * g * b + g * g * c)) <= limit

    else:
        sums = dist.sum(axis=1)
        limit = float(sums.max() if bound == "max" else sums.min())

        def feasible(g):
            return float(np.sum(a + 2 * g * b + g * g * c)) <= limit

    if c == 0 or not feasible(0.0):
        return 0.0, math.inf
    lo, hi = 0.0, float(gamma_init)
    for _ in range(_MAX_DOUBLINGS):
        if not feasible(hi):
            break
        lo, hi = hi, 2 * hi
    else:
        return lo, math.inf
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        if feasible(mid):
            lo = mid
        else:
            hi = mid
    return lo, hi


def _shejwalkar(name: str, direction: str, gamma_init: Any, iters: Any, bound: str) -> Attack:
    direction = _choice(name, "direction", direction, SHEJWALKAR_DIRECTIONS)
    gamma_init = _real(
        name, "gamma_init", gamma_init, expect="a finite number > 0", ok=lambda v: v > 0
    )
    iters = _int(name, "iters", iters, low=1, high=200)

    @_memo_last
    def craft(ctx):
        x = _reference(ctx)
        gamma, _ = shejwalkar_gamma(
            x, direction, objective=name, bound=bound, gamma_init=gamma_init, iters=iters
        )
        return (x.mean(axis=0) + gamma * _perturbation(x, direction)).astype(np.float32)

    def apply(ctx, worker, rng):
        return craft(ctx).copy()

    params = (("direction", direction), ("gamma_init", gamma_init), ("iters", iters))
    if name == "min_sum":
        params += (("bound", bound),)
    return Attack(name, apply, params=params, knowledge="colluding")


def min_max(*, direction: str = "unit_vec", gamma_init: float = 10.0, iters: int = 30) -> Attack:
    """Min-max (Shejwalkar and Houmansadr, NDSS 2021): the AGR-agnostic attack.

    Sends ``mean + gamma * p`` with the largest gamma keeping its largest
    distance to the reference gradients within their largest pairwise
    distance (:func:`shejwalkar_gamma`); every Byzantine worker sends it.
    """
    return _shejwalkar("min_max", direction, gamma_init, iters, "max")


def min_sum(
    *, direction: str = "unit_vec", gamma_init: float = 10.0, iters: int = 30, bound: str = "max"
) -> Attack:
    """Min-sum (Shejwalkar and Houmansadr, NDSS 2021): the AGR-agnostic attack.

    Sends ``mean + gamma * p`` with the largest gamma keeping its sum of
    squared distances to the reference gradients within the largest such
    sum of a reference gradient (the paper's bound, ``bound="max"``) or the
    smallest (``bound="min"``, the authors' code) (:func:`shejwalkar_gamma`).
    """
    bound = _choice("min_sum", "bound", bound, ("max", "min"))
    return _shejwalkar("min_sum", direction, gamma_init, iters, bound)


# --------------------------------------------------------------------------- #
# Fang et al. (USENIX Security 2020): full-knowledge attacks on Krum and trimmed mean
# --------------------------------------------------------------------------- #


def fang_krum_lambda(grads_WxP: Any, byzantine: tuple[int, ...]) -> float:
    """Fang et al.'s upper bound on lambda for Krum, in gradient space.

    ``1/((m - 2c - 1) sqrt(d)) * min_i sum_{l in N(i)} |g_l - g_i|
    + 1/sqrt(d) * max_i |g_i|`` over the benign (non-Byzantine) gradients
    ``i``, with ``N(i)`` the ``m - c - 2`` benign gradients nearest ``g_i``,
    m workers, c Byzantine, d parameters. (The paper measures local models
    against the global model; with ``w_i = w - lr * g_i`` the learning rate
    cancels.) The first term is dropped when ``m - 2c - 1 < 1`` or ``N(i)``
    is empty, outside Krum's assumption.
    """
    g = np.asarray(grads_WxP, dtype=np.float64)
    m, d = g.shape
    c = len(byzantine)
    honest = np.setdiff1d(np.arange(m), np.asarray(byzantine, dtype=np.int64))
    benign = g[honest]
    norms = np.sqrt(np.einsum("ij,ij->i", benign, benign))
    bound = float(norms.max()) / math.sqrt(d) if benign.size else 0.0
    nearest = m - c - 2
    if m - 2 * c - 1 >= 1 and nearest >= 1 and len(honest) > nearest:
        dist = np.sqrt(_squared_distances(benign))
        np.fill_diagonal(dist, np.inf)
        sums = np.sort(dist, axis=1)[:, :nearest].sum(axis=1)
        bound += float(sums.min()) / ((m - 2 * c - 1) * math.sqrt(d))
    return bound


def fang_krum(*, f: int | None = None, iters: int = 20) -> Attack:
    """Fang et al.'s full-knowledge attack on Krum: ``-lambda * sign(mean)``, selected by Krum.

    Every Byzantine worker sends ``-lambda * s`` with ``s = sign(mean)`` of
    the reference gradients (the direction the honest update moves the
    gradient; the paper takes the sign of the global model's change without
    attack, the same up to Krum's choice). lambda starts at
    :func:`fang_krum_lambda` and is halved until Krum with ``f`` (default:
    the number of Byzantine workers) selects a Byzantine row of the
    simulated round, ``iters`` halvings at most (the paper stops below
    1e-5); if none is selected the last lambda is sent. Krum is the
    server's own ``krum_scores`` on float32 rows, ties to the lowest index.
    """
    if f is not None:
        f = _int("fang_krum", "f", f, low=0)
    iters = _int("fang_krum", "iters", iters, low=0, high=200)

    @_memo_last
    def craft(ctx):
        s = np.sign(_reference(ctx).mean(axis=0))
        lam = fang_krum_lambda(ctx.grads_WxP, ctx.byzantine)
        krum_f = ctx.n_byzantine if f is None else f
        mask = np.ones(ctx.n_workers, bool)
        byzantine = set(ctx.byzantine)
        for step in range(iters + 1):
            sent = (-lam * s).astype(np.float32)
            rows = _submitted(ctx.grads_WxP, ctx.byzantine, sent)
            scores = np.asarray(krum_scores(rows, mask, f=krum_f))
            if int(np.argsort(scores, kind="stable")[0]) in byzantine or step == iters:
                return sent
            lam /= 2

    def apply(ctx, worker, rng):
        return craft(ctx).copy()

    return Attack("fang_krum", apply, params=(("f", f), ("iters", iters)), knowledge="colluding")


def fang_trimmed_mean(*, b: float = 2.0) -> Attack:
    """Fang et al.'s full-knowledge attack on trimmed mean and median.

    Per coordinate j, with ``s_j = sign(mean_j)`` of the reference gradients
    and ``max_j``, ``min_j`` their extremes, each Byzantine worker draws a
    value uniformly beyond the honest range on the side opposite to ``s_j``:
    if ``mean_j > 0``, in ``[min_j / b, min_j]`` (``min_j > 0``) or
    ``[b min_j, min_j]``; otherwise in ``[max_j, b max_j]`` (``max_j > 0``)
    or ``[max_j, max_j / b]``. (The paper states it for local models, whose
    change is minus the gradient, hence the sides swap.) ``b`` in (1, 2];
    the paper uses 2. Every such value lies outside the honest range, so each
    coordinate of a trimmed mean or median moves against ``s_j`` (or stays).
    """
    b = _real("fang_trimmed_mean", "b", b, expect="a number in (1, 2]", ok=lambda v: 1 < v <= 2)

    def apply(ctx, worker, rng):
        x = _reference(ctx)
        mean, high, low = x.mean(axis=0), x.max(axis=0), x.min(axis=0)
        down = mean > 0
        start = np.where(down, np.where(low > 0, low / b, b * low), high)
        stop = np.where(down, low, np.where(high > 0, b * high, high / b))
        u = rng.random(x.shape[1])
        return (start + u * (stop - start)).astype(np.float32)

    return Attack("fang_trimmed_mean", apply, params=(("b", b),), knowledge="colluding")


# --------------------------------------------------------------------------- #
# An attack that knows the verification scheme
# --------------------------------------------------------------------------- #

_DRIFT_RETRIES = 8


def drift(*, threshold: float, margin: float = 0.9, direction: str = "opposite") -> Attack:
    """Sends its gradient moved by ``margin * threshold`` in tolerance mode's own metric.

    Tolerance mode accepts a gradient ``g`` whose normalised distance
    ``|g - g*| / max(|g*|, eps)`` to the validator's recomputation ``g*``
    is at most the run's ``threshold`` (``calibrate_threshold``). The worker
    computes ``g* = learner.worker_gradient(params, batch)`` itself, the
    validators' program on its own public batch, and sends
    ``g* + margin * threshold * max(|g*|, eps) * u`` with ``u`` a unit
    vector: ``-g* / |g*|`` (``direction="opposite"``, a shrunken step) or a
    Gaussian direction from ``rng`` (``"random"``). The distance is measured
    after rounding to float32 with ``gradient_distance``, the check's own
    function, and the step shrunk (at most 8 times) until it is at most
    ``margin * threshold``; if it cannot be, or ``g*`` is not finite, the
    worker sends ``g*``. A bitwise check rejects any nonzero drift.
    """
    threshold = _real(
        "drift", "threshold", threshold, expect="a finite number > 0", ok=lambda v: v > 0
    )
    margin = _real("drift", "margin", margin, expect="a number in (0, 1]", ok=lambda v: 0 < v <= 1)
    direction = _choice("drift", "direction", direction, ("opposite", "random"))
    target = margin * threshold

    def apply(ctx, worker, rng):
        from pot_jax.verification.fraud_proof import DISTANCE_EPS, gradient_distance, l2_norm

        x_B, y_B = ctx.batch_of(worker)
        expected = np.array(ctx.learner.worker_gradient(ctx.params, x_B, y_B), dtype=np.float32)
        if not np.all(np.isfinite(expected)):
            return expected
        g = expected.astype(np.float64)
        norm = l2_norm(g)
        if direction == "opposite" and norm > 0:
            unit = -g / norm
        else:
            noise = rng.standard_normal(g.size)
            unit = noise / l2_norm(noise)
        step = target * max(norm, DISTANCE_EPS)
        for _ in range(_DRIFT_RETRIES):
            sent = (g + step * unit).astype(np.float32)
            distance = gradient_distance(sent, expected)
            if distance <= target:
                return sent
            step *= 0.999 * target / distance
        return expected

    params = (("threshold", threshold), ("margin", margin), ("direction", direction))
    return Attack("drift", apply, params=params, knowledge="own")


_ROBUST_FACTORIES: dict[str, Callable[..., Attack]] = {
    "inf": inf,
    "fall_of_empires": fall_of_empires,
    "mimic": mimic,
    "optimal_ipm": optimal_ipm,
    "optimal_alie": optimal_alie,
    "min_max": min_max,
    "min_sum": min_sum,
    "fang_krum": fang_krum,
    "fang_trimmed_mean": fang_trimmed_mean,
    "drift": drift,
}
ROBUST_ATTACK_NAMES: tuple[str, ...] = tuple(_ROBUST_FACTORIES)


def _register() -> None:
    for name, factory in _ROBUST_FACTORIES.items():
        ATTACKS.register(name, factory)


_register()  # once, on import (``pot_jax.attacks`` imports this module)
