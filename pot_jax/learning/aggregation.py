"""Aggregation rules: the paper's mean and the robust baselines it is compared with.

Every rule is a pure, jittable function of the stacked worker gradients
``grads_WxP`` (W workers by P parameters, one flat row per worker in the
canonical leaf order) and an acceptance mask ``mask_W`` (bool). W is static;
the number of accepted rows ``n = sum(mask_W)`` is data, so each rule handles
a dynamic count inside jit. Rejected rows never influence the output, whatever
they hold (NaN and Inf included).

A rule is a factory returning an :class:`AggregationRule`, a small record in
the style of ``optax.GradientTransformation``::

    rule = krum(f=2)
    check_assumption(rule, n_accepted=9, n_byzantine=2)
    agg_P = rule.aggregate(grads_WxP, mask_W)        # jittable
    agg_P = aggregate_checked(rule, grads_WxP, mask_W, n_byzantine=2)  # host side

A pre-aggregator (``nnm``, ``bucketing``, ``clipping``, ``arc``) maps
``(grads_WxP, mask_W)`` to the rows a rule then aggregates; :func:`compose`
(or the name ``pre+rule``: ``make_rule("nnm+krum", f=3)``, ``--aggregation
nnm+krum:f=3``) puts it in front of any rule.

Each rule states its assumption on the number of Byzantine inputs among the n
accepted ones (``max_byzantine(n)``) and the fewest accepted rows it is
defined for (``min_accepted``). Host side, :func:`check_assumption` raises
when either is violated. Inside jit nothing can raise, so a rule returns NaN
in every coordinate when fewer than ``min_accepted`` rows are accepted; the
Byzantine count is a threat-model bound that no function can observe.

Preconditions of ``aggregate``: accepted rows are finite and their squared
norms are finite in the input dtype (for float32, norms below about 1.8e19),
which the protocol's cheap checks (finiteness, norm bound) guarantee and
:func:`aggregate_checked` verifies.

Implementation notes (CPU XLA, 2 cores, W=16, P=203530): a reduction over the
worker axis is slow on XLA CPU (20-40 ms for ``sum(axis=0)``) and a matrix
product ``(mask_W / n) @ grads_WxP`` (0.2-0.3 ms) lets 0 * NaN from a rejected
row through, so weighted sums over workers select row by row in one fused
kernel unrolled over the static W (0.2-0.3 ms), or for W > 64 select then
multiply. Sorting along the worker axis with ``jnp.sort`` takes ~180 ms; the
order statistics use a Batcher odd-even merge sorting network instead (~3 ms;
for W > 32 layer by layer over column blocks, ~140 ms at W=64). XLA CPU fuses
the network into every elementwise consumer of its output, and into each row of
a stack of the sorted rows, and recomputes it there: a sorted row or median is
consumed once, by one fused sum or one matrix product (meamed picks dynamic
ranks by chains of selects; stacking the sorted rows cost 7x). Krum, the
geometric median and centered clipping work in W-space on the Gram matrix
``G = X X^T``: pairwise squared distances are ``G_ii + G_jj - 2 G_ij`` (the
W x W x P difference tensor is never formed) and iterates are kept as
``a * z0 + c^T X``, so each iteration costs O(W^2) instead of O(W P). The price
is float32 cancellation: distances below about ``sqrt(eps_f32) * ||x||`` are
not resolved.
"""

from __future__ import annotations

import functools
import inspect
import itertools
import math
import operator
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from pot_jax.registry import ComponentSpec, Registry, parse_spec

# Weighted sums over at most this many rows are unrolled into one fused kernel.
_UNROLL_SUM_MAX_W = 64
# Sorting networks up to this many rows are unrolled row by row into one fused
# kernel (W=32: ~10 ms at P=2e5, 0.6 s to compile); larger ones run layer by
# layer, a gather and a select per layer, because the unrolled network's compile
# time grows steeply (W=48: 5 s; W=64: 20 s).
_UNROLL_SORT_MAX_W = 32
# The layered network sorts column blocks of about this many elements at a
# time (W x B float32 = 512 KiB), so all its layers run in cache.
_SORT_BLOCK_ELEMENTS = 1 << 17
# Column block of the Gram product: at P ~ 2e5, XLA CPU computes a (W, P) x
# (P, W) product faster in blocks of this size (W=64: 23 ms instead of 77 ms).
_GRAM_BLOCK = 16384


class AggregateFn(Protocol):
    """The pure function of a rule."""

    def __call__(self, grads_WxP: jax.Array, mask_W: jax.Array) -> jax.Array:
        """Aggregates the accepted rows.

        Args:
          grads_WxP: (W, P) floating array, one flat gradient per worker.
          mask_W: (W,) bool array, True for accepted workers.

        Returns:
          agg_P: (P,) array of the input dtype.
        """


class AggregationRule(NamedTuple):
    """A named aggregation rule and the assumption it is proven under.

    Attributes:
      name: the rule's registry name (``RULE_NAMES``).
      aggregate: ``(grads_WxP, mask_W) -> agg_P``, pure and jittable.
      max_byzantine: for n accepted inputs (``n >= min_accepted``), the largest
        number of Byzantine inputs among them that the rule tolerates under its
        stated assumption; raises ``ValueError`` for ``n < min_accepted``.
      min_accepted: the fewest accepted inputs the rule is defined for.
      requirement: how ``min_accepted`` follows from the parameters (``"2f+3"``).
      assumption: the tolerance statement in words, for messages and docs.
      params: the static parameters as ``(name, value)`` pairs.
    """

    name: str
    aggregate: AggregateFn
    max_byzantine: Callable[[int], int]
    min_accepted: int
    requirement: str
    assumption: str
    params: tuple[tuple[str, Any], ...] = ()

    @property
    def label(self) -> str:
        """The rule with its parameters, e.g. ``krum(f=3)``."""
        return _label(self.name, self.params)


def _label(name: str, params: tuple[tuple[str, Any], ...]) -> str:
    if not params:
        return name
    return f"{name}({', '.join(f'{k}={v}' for k, v in params)})"


# --------------------------------------------------------------------------- #
# Parameter validation (host side, at factory time)
# --------------------------------------------------------------------------- #


def _int_param(rule: str, field: str, value: Any, *, minimum: int) -> int:
    if isinstance(value, bool | np.bool_):
        raise ValueError(f"{rule}: {field} must be an integer >= {minimum}, got {value!r}")
    try:
        as_int = operator.index(value)
    except TypeError:
        raise ValueError(
            f"{rule}: {field} must be an integer >= {minimum}, got {value!r}"
        ) from None
    if as_int < minimum:
        raise ValueError(f"{rule}: {field} must be an integer >= {minimum}, got {as_int}")
    return int(as_int)


def _positive_param(rule: str, field: str, value: Any) -> float:
    if isinstance(value, bool | np.bool_):
        raise ValueError(f"{rule}: {field} must be a finite number > 0, got {value!r}")
    try:
        as_float = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{rule}: {field} must be a finite number > 0, got {value!r}") from None
    if not (math.isfinite(as_float) and as_float > 0):
        raise ValueError(f"{rule}: {field} must be a finite number > 0, got {value!r}")
    return as_float


def _needs_at_least(label: str, requirement: str, minimum: int, n: int) -> str:
    noun = "gradient" if minimum == 1 else "gradients"
    bound = str(minimum) if requirement == str(minimum) else f"{requirement} = {minimum}"
    return f"{label} needs at least {bound} accepted {noun}, got {n}"


def _make_max_byzantine(
    label: str, requirement: str, minimum: int, bound: Callable[[int], int]
) -> Callable[[int], int]:
    def max_byzantine(n: int) -> int:
        n = _int_param(label, "n_accepted", n, minimum=0)
        if n < minimum:
            raise ValueError(_needs_at_least(label, requirement, minimum, n))
        return bound(n)

    return max_byzantine


def _rule(
    name: str,
    aggregate: AggregateFn,
    *,
    params: tuple[tuple[str, Any], ...],
    min_accepted: int,
    requirement: str,
    assumption: str,
    bound: Callable[[int], int],
) -> AggregationRule:
    return AggregationRule(
        name=name,
        aggregate=aggregate,
        max_byzantine=_make_max_byzantine(_label(name, params), requirement, min_accepted, bound),
        min_accepted=min_accepted,
        requirement=requirement,
        assumption=assumption,
        params=params,
    )


# --------------------------------------------------------------------------- #
# Building blocks (traced)
# --------------------------------------------------------------------------- #


def _check_inputs(grads_WxP: jax.Array, mask_W: jax.Array) -> None:
    """Static (trace-time) checks of shapes and dtypes."""
    if grads_WxP.ndim != 2:
        raise ValueError(
            f"grads_WxP must be 2-D (workers x parameters), got shape {tuple(grads_WxP.shape)}"
        )
    if not jnp.issubdtype(grads_WxP.dtype, jnp.floating):
        raise ValueError(f"grads_WxP must have a floating dtype, got {grads_WxP.dtype}")
    if mask_W.shape != grads_WxP.shape[:1]:
        raise ValueError(
            f"mask_W must have shape ({grads_WxP.shape[0]},) to match grads_WxP "
            f"{tuple(grads_WxP.shape)}, got {tuple(mask_W.shape)}"
        )
    if mask_W.dtype != jnp.bool_:
        raise ValueError(f"mask_W must be a bool array, got dtype {mask_W.dtype}")


def _acc_dtype(dtype: Any) -> Any:
    """Accumulate in at least float32 (bfloat16/float16 inputs)."""
    return jnp.promote_types(dtype, jnp.float32)


def _weighted_row_sum(
    weights_W: jax.Array, rows: jax.Array | Sequence[jax.Array], keep_W: jax.Array
) -> jax.Array:
    """``sum_i weights_i * rows_i`` over rows with ``keep_i``; others add exactly 0.

    Dropped rows may hold NaN or Inf: they are selected away, not multiplied by 0.
    """
    num_rows = len(rows)
    acc = _acc_dtype(rows[0].dtype)
    weights_W = weights_W.astype(acc)
    if num_rows <= _UNROLL_SUM_MAX_W:
        total_P = jnp.zeros(rows[0].shape, acc)
        for i in range(num_rows):
            total_P = total_P + jnp.where(keep_W[i], weights_W[i] * rows[i].astype(acc), 0)
        return total_P
    rows_WxP = jnp.stack(rows) if isinstance(rows, list | tuple) else rows
    clean_WxP = jnp.where(keep_W[:, None], rows_WxP.astype(acc), 0)
    return jnp.dot(weights_W, clean_WxP, precision=lax.Precision.HIGHEST)


def _empty_to_nan(agg_P: jax.Array, ok: jax.Array, dtype: Any) -> jax.Array:
    return jnp.where(ok, agg_P, jnp.nan).astype(dtype)


@functools.cache
def _merge_sort_layers(n: int) -> tuple[tuple[tuple[int, int], ...], ...]:
    """Batcher's odd-even merge sort network for n inputs, as parallel layers.

    Built for the next power of two and pruned to indices < n: every
    comparator puts the minimum at its lower index, so padding with +inf at
    the end never moves and comparators touching it are no-ops.
    """
    size = 1
    while size < n:
        size *= 2
    layers = []
    p = 1
    while p < size:
        k = p
        while k >= 1:
            layer = []
            for j in range(k % p, size - k, 2 * k):
                for i in range(min(k, size - j - k)):
                    lo, hi = i + j, i + j + k
                    if lo // (2 * p) == hi // (2 * p) and hi < n:
                        layer.append((lo, hi))
            if layer:
                layers.append(tuple(layer))
            k //= 2
        p *= 2
    return tuple(layers)


def _sort_unrolled(x_WxP: jax.Array) -> list[jax.Array]:
    """Each column sorted ascending, as a list of W rows (one fused kernel)."""
    rows = [x_WxP[i] for i in range(x_WxP.shape[0])]
    for layer in _merge_sort_layers(len(rows)):
        for lo, hi in layer:
            rows[lo], rows[hi] = jnp.minimum(rows[lo], rows[hi]), jnp.maximum(rows[lo], rows[hi])
    return rows


def _sort_layered(x_WxP: jax.Array) -> jax.Array:
    """Each column sorted ascending, one gather and select per network layer."""
    num_rows = x_WxP.shape[0]
    for layer in _merge_sort_layers(num_rows):
        partner = np.arange(num_rows)
        is_low = np.ones(num_rows, dtype=bool)
        for lo, hi in layer:
            partner[lo], partner[hi] = hi, lo
            is_low[hi] = False
        other_WxP = x_WxP[partner]
        x_WxP = jnp.where(
            jnp.asarray(is_low)[:, None],
            jnp.minimum(x_WxP, other_WxP),
            jnp.maximum(x_WxP, other_WxP),
        )
    return x_WxP


def _map_column_blocks(
    fn: Callable[[jax.Array], jax.Array], x_WxP: jax.Array, block: int, dtype: Any
) -> jax.Array:
    """``fn`` (a (W, B) -> (B,) map) over column blocks, so each block stays in cache."""
    full_blocks, rest = divmod(x_WxP.shape[1], block)
    parts = []
    if full_blocks:

        def body(b, out_P):
            chunk_WxB = lax.dynamic_slice_in_dim(x_WxP, b * block, block, axis=1)
            return lax.dynamic_update_slice_in_dim(out_P, fn(chunk_WxB), b * block, axis=0)

        parts.append(lax.fori_loop(0, full_blocks, body, jnp.zeros(full_blocks * block, dtype)))
    if rest:
        parts.append(fn(x_WxP[:, full_blocks * block :]))
    return jnp.concatenate(parts) if len(parts) > 1 else parts[0]


def _rank_weighted_sum(grads_WxP: jax.Array, mask_W: jax.Array, weights_W: jax.Array) -> jax.Array:
    """Per coordinate, ``sum_r weights_r * (r-th smallest accepted value)``.

    Rejected rows sort last as +inf, so accepted values hold ranks 0..n-1;
    ``weights_W`` must be >= 0 and 0 at ranks >= n.
    """
    num_rows, num_params = grads_WxP.shape
    keep_W = weights_W > 0
    x_WxP = jnp.where(mask_W[:, None], grads_WxP, jnp.inf)
    if num_rows <= _UNROLL_SORT_MAX_W:
        return _weighted_row_sum(weights_W, _sort_unrolled(x_WxP), keep_W)
    block = max(128, _SORT_BLOCK_ELEMENTS // num_rows // 128 * 128)

    def sort_and_sum(x_WxB):
        return _weighted_row_sum(weights_W, _sort_layered(x_WxB), keep_W)

    if num_params == 0:
        return jnp.zeros(0, _acc_dtype(grads_WxP.dtype))
    return _map_column_blocks(sort_and_sum, x_WxP, block, _acc_dtype(grads_WxP.dtype))


def _gram(x_WxP: jax.Array) -> jax.Array:
    """``X X^T`` in at least float32, accumulated over column blocks."""
    acc = _acc_dtype(x_WxP.dtype)
    num_rows, num_params = x_WxP.shape
    dot = functools.partial(jnp.dot, precision=lax.Precision.HIGHEST, preferred_element_type=acc)
    full_blocks, rest = divmod(num_params, _GRAM_BLOCK)
    gram_WxW = jnp.zeros((num_rows, num_rows), acc)
    if full_blocks:

        def body(b, total_WxW):
            block = lax.dynamic_slice_in_dim(x_WxP, b * _GRAM_BLOCK, _GRAM_BLOCK, axis=1)
            return total_WxW + dot(block, block.T)

        gram_WxW = lax.fori_loop(0, full_blocks, body, gram_WxW)
    if rest:
        block = x_WxP[:, full_blocks * _GRAM_BLOCK :]
        gram_WxW = gram_WxW + dot(block, block.T)
    return gram_WxW


def _masked_gram(grads_WxP: jax.Array, mask_W: jax.Array) -> jax.Array:
    """The Gram matrix with every entry touching a rejected row set to 0.

    Entry (i, j) of a matrix product depends only on rows i and j, so NaN in a
    rejected row stays in that row's entries, which are then replaced.
    """
    both_WxW = mask_W[:, None] & mask_W[None, :]
    return jnp.where(both_WxW, _gram(grads_WxP), 0)


# --------------------------------------------------------------------------- #
# mean
# --------------------------------------------------------------------------- #


@jax.jit
def _mean(grads_WxP: jax.Array, mask_W: jax.Array) -> jax.Array:
    _check_inputs(grads_WxP, mask_W)
    count = jnp.sum(mask_W)
    weights_W = mask_W.astype(_acc_dtype(grads_WxP.dtype)) / count
    agg_P = _weighted_row_sum(weights_W, grads_WxP, mask_W)
    return _empty_to_nan(agg_P, count > 0, grads_WxP.dtype)


def mean() -> AggregationRule:
    """The paper's rule: the average of the accepted gradients.

    Assumption: no Byzantine input among the accepted ones; a single unbounded
    input moves the mean arbitrarily far, so ``max_byzantine(n) = 0``.
    """
    return _rule(
        "mean",
        _mean,
        params=(),
        min_accepted=1,
        requirement="1",
        assumption="no Byzantine input (one unbounded input moves the mean arbitrarily)",
        bound=lambda n: 0,
    )


# --------------------------------------------------------------------------- #
# coordinate-wise median and trimmed mean
# --------------------------------------------------------------------------- #


@jax.jit
def _coordinate_median(grads_WxP: jax.Array, mask_W: jax.Array) -> jax.Array:
    _check_inputs(grads_WxP, mask_W)
    num_rows = grads_WxP.shape[0]
    count = jnp.sum(mask_W)
    rank_W = jnp.arange(num_rows)
    lo, hi = (count - 1) // 2, count // 2
    # Odd n: weight exactly 1 on the middle rank, so the output is an input value.
    weights_W = jnp.where(
        lo == hi, (rank_W == lo).astype(jnp.float32), 0.5 * ((rank_W == lo) | (rank_W == hi))
    )
    agg_P = _rank_weighted_sum(grads_WxP, mask_W, weights_W)
    return _empty_to_nan(agg_P, count > 0, grads_WxP.dtype)


def coordinate_median() -> AggregationRule:
    """Coordinate-wise median of the accepted gradients (Yin et al., 2018).

    Even n averages the two middle values. Assumption: Byzantine inputs are a
    strict minority, f < n/2 (the median's breakdown point); then every
    coordinate of the output lies within the range of the honest values.
    """
    return _rule(
        "coordinate_median",
        _coordinate_median,
        params=(),
        min_accepted=1,
        requirement="1",
        assumption="a Byzantine minority, f < n/2",
        bound=lambda n: (n - 1) // 2,
    )


@functools.partial(jax.jit, static_argnames=("trim",))
def _trimmed_mean(grads_WxP: jax.Array, mask_W: jax.Array, *, trim: int) -> jax.Array:
    _check_inputs(grads_WxP, mask_W)
    num_rows = grads_WxP.shape[0]
    count = jnp.sum(mask_W)
    rank_W = jnp.arange(num_rows)
    keep_W = (rank_W >= trim) & (rank_W < count - trim)
    kept = count - 2 * trim
    weights_W = keep_W.astype(_acc_dtype(grads_WxP.dtype)) / kept
    agg_P = _rank_weighted_sum(grads_WxP, mask_W, weights_W)
    return _empty_to_nan(agg_P, kept > 0, grads_WxP.dtype)


def trimmed_mean(*, trim: int) -> AggregationRule:
    """Coordinate-wise trimmed mean (Yin et al., 2018).

    Per coordinate, drops the ``trim`` smallest and ``trim`` largest accepted
    values and averages the remaining ``n - 2 trim``. Needs ``n > 2 trim``;
    tolerates up to ``trim`` Byzantine inputs: each coordinate of the output is
    then an average of values within the range of the honest values.
    """
    trim = _int_param("trimmed_mean", "trim", trim, minimum=0)
    return _rule(
        "trimmed_mean",
        functools.partial(_trimmed_mean, trim=trim),
        params=(("trim", trim),),
        min_accepted=2 * trim + 1,
        requirement="2*trim+1",
        assumption=f"at most trim = {trim} Byzantine inputs and n > 2*trim",
        bound=lambda n: trim,
    )


# --------------------------------------------------------------------------- #
# Krum and Multi-Krum
# --------------------------------------------------------------------------- #


def _krum_scores(grads_WxP: jax.Array, mask_W: jax.Array, f: int) -> jax.Array:
    num_rows = grads_WxP.shape[0]
    count = jnp.sum(mask_W)
    gram_WxW = _masked_gram(grads_WxP, mask_W)
    sq_W = jnp.diagonal(gram_WxW)
    dist_WxW = jnp.maximum(sq_W[:, None] + sq_W[None, :] - 2 * gram_WxW, 0)
    pair_WxW = mask_W[:, None] & mask_W[None, :] & ~jnp.eye(num_rows, dtype=bool)
    dist_WxW = jnp.where(pair_WxW, dist_WxW, jnp.inf)
    # Row i: distances to the other accepted rows first, +inf after them.
    nearest_WxW = jnp.sort(dist_WxW, axis=1)
    closest = count - f - 2
    take_W = jnp.arange(num_rows) < closest
    scores_W = jnp.sum(jnp.where(take_W[None, :], nearest_WxW, 0), axis=1)
    return jnp.where(mask_W, scores_W, jnp.inf)


@functools.partial(jax.jit, static_argnames=("f",))
def krum_scores(grads_WxP: jax.Array, mask_W: jax.Array, *, f: int) -> jax.Array:
    """Krum scores (Blanchard et al., 2017): for each accepted row, the sum of
    squared distances to its ``n - f - 2`` nearest other accepted rows.

    Args:
      grads_WxP: (W, P) floating array.
      mask_W: (W,) bool array of accepted rows.
      f: the assumed number of Byzantine inputs (static).

    Returns:
      scores_W: (W,) float array, +inf for rejected rows.
    """
    _check_inputs(grads_WxP, mask_W)
    return _krum_scores(grads_WxP, mask_W, f)


@functools.partial(jax.jit, static_argnames=("f", "m"))
def _multi_krum(grads_WxP: jax.Array, mask_W: jax.Array, *, f: int, m: int) -> jax.Array:
    _check_inputs(grads_WxP, mask_W)
    num_rows = grads_WxP.shape[0]
    count = jnp.sum(mask_W)
    scores_W = _krum_scores(grads_WxP, mask_W, f)
    order_W = jnp.argsort(scores_W, stable=True)  # ties: lowest worker index first
    ok = count >= max(2 * f + 3, f + m)
    if m == 1:
        # Krum proper: the output is one submitted gradient, bit for bit.
        best_P = lax.dynamic_index_in_dim(grads_WxP, order_W[0], axis=0, keepdims=False)
        return _empty_to_nan(best_P, ok, grads_WxP.dtype)
    rank_W = jnp.zeros(num_rows, jnp.int32).at[order_W].set(jnp.arange(num_rows, dtype=jnp.int32))
    chosen_W = mask_W & (rank_W < m)
    weights_W = chosen_W.astype(_acc_dtype(grads_WxP.dtype)) / jnp.sum(chosen_W)
    agg_P = _weighted_row_sum(weights_W, grads_WxP, chosen_W)
    return _empty_to_nan(agg_P, ok, grads_WxP.dtype)


def krum(*, f: int) -> AggregationRule:
    """Krum (Blanchard et al., 2017): the accepted gradient with the lowest score.

    A row's score is the sum of squared distances to its ``n - f - 2`` nearest
    other accepted rows (:func:`krum_scores`). Assumption: at most ``f`` of the
    n accepted inputs are Byzantine and ``n >= 2f + 3``. Ties go to the lowest
    worker index. Cost: the Gram matrix for the pairwise distances, W^2 P
    multiply-adds against the mean's W P additions (W = 16: 5-10x the mean, the
    more the quieter the machine, as the mean is memory-bound;
    ``python -m pot_jax.bench.aggregation`` measures every rule).
    """
    f = _int_param("krum", "f", f, minimum=0)
    return _rule(
        "krum",
        functools.partial(_multi_krum, f=f, m=1),
        params=(("f", f),),
        min_accepted=2 * f + 3,
        requirement="2f+3",
        assumption=f"at most f = {f} Byzantine inputs and n >= 2f+3",
        bound=lambda n: f,
    )


def multi_krum(*, f: int, m: int) -> AggregationRule:
    """Multi-Krum (Blanchard et al., 2017): the mean of the ``m`` lowest-scoring rows.

    Same assumption as Krum (at most ``f`` Byzantine inputs, ``n >= 2f + 3``);
    in addition ``m <= n - f``, so that the m selected rows can all be honest
    (the usual choice is ``m = n - f``). Ties go to the lowest worker index.
    Cost: Krum's, the Gram matrix (5-10x the mean at W = 16).
    """
    f = _int_param("multi_krum", "f", f, minimum=0)
    m = _int_param("multi_krum", "m", m, minimum=1)
    minimum = max(2 * f + 3, f + m)
    return _rule(
        "multi_krum",
        functools.partial(_multi_krum, f=f, m=m),
        params=(("f", f), ("m", m)),
        min_accepted=minimum,
        requirement="2f+3" if minimum == 2 * f + 3 else "f+m",
        assumption=f"at most f = {f} Byzantine inputs, n >= 2f+3 and m <= n - f",
        bound=lambda n: f,
    )


# --------------------------------------------------------------------------- #
# Geometric median and centered clipping: iterations in W-space
# --------------------------------------------------------------------------- #


class _Frame(NamedTuple):
    """What distances from ``z = a * z0 + c^T X`` to each row need, in W-space."""

    gram_WxW: jax.Array  # X X^T, 0 outside accepted pairs
    sq_W: jax.Array  # ||x_i||^2
    x_z0_W: jax.Array  # x_i . z0 (0 if there is no z0)
    z0_sq: jax.Array  # ||z0||^2


def _frame(grads_WxP: jax.Array, mask_W: jax.Array, z0_P: jax.Array | None) -> _Frame:
    gram_WxW = _masked_gram(grads_WxP, mask_W)
    acc = gram_WxW.dtype
    if z0_P is None:
        x_z0_W, z0_sq = jnp.zeros(grads_WxP.shape[0], acc), jnp.zeros((), acc)
    else:
        z0_P = z0_P.astype(acc)
        x_z0_W = jnp.dot(grads_WxP.astype(acc), z0_P, precision=lax.Precision.HIGHEST)
        x_z0_W = jnp.where(mask_W, x_z0_W, 0)
        z0_sq = jnp.dot(z0_P, z0_P, precision=lax.Precision.HIGHEST)
    return _Frame(gram_WxW, jnp.diagonal(gram_WxW), x_z0_W, z0_sq)


def _distances(frame: _Frame, a: jax.Array, c_W: jax.Array) -> jax.Array:
    """``||x_i - (a z0 + c^T X)||`` for every row (garbage for rejected rows)."""
    gc_W = frame.gram_WxW @ c_W
    z_sq = a * a * frame.z0_sq + 2 * a * jnp.dot(c_W, frame.x_z0_W) + jnp.dot(c_W, gc_W)
    d2_W = frame.sq_W - 2 * gc_W - 2 * a * frame.x_z0_W + z_sq
    return jnp.sqrt(jnp.maximum(d2_W, 0))


@functools.partial(jax.jit, static_argnames=("iters", "init"))
def _geometric_median(
    grads_WxP: jax.Array, mask_W: jax.Array, eps: float, *, iters: int, init: str
) -> jax.Array:
    _check_inputs(grads_WxP, mask_W)
    count = jnp.sum(mask_W)
    acc = _acc_dtype(grads_WxP.dtype)
    if init == "median":
        z0_P = _coordinate_median(grads_WxP, mask_W).astype(acc)
        a0, c0_W = jnp.ones((), acc), jnp.zeros(grads_WxP.shape[0], acc)
    else:
        z0_P = None
        a0, c0_W = jnp.zeros((), acc), mask_W.astype(acc) / count
    frame = _frame(grads_WxP, mask_W, z0_P)

    def step(_, state):
        a, c_W = state
        beta_W = jnp.where(mask_W, 1 / jnp.maximum(_distances(frame, a, c_W), eps), 0)
        return jnp.zeros((), acc), beta_W / jnp.sum(beta_W)

    # Each step (iters >= 1) leaves z = c^T X with a = 0, so the output is a
    # weighted sum of the rows alone; adding a * z0 would recompute the median's
    # sorting network, which XLA CPU fuses into every elementwise consumer.
    _, c_W = lax.fori_loop(0, iters, step, (a0, c0_W))
    agg_P = _weighted_row_sum(c_W, grads_WxP, mask_W)
    return _empty_to_nan(agg_P, count > 0, grads_WxP.dtype)


def geometric_median(*, iters: int = 8, eps: float = 1e-6, init: str = "median") -> AggregationRule:
    """Approximate geometric median by smoothed Weiszfeld (Pillutla et al., 2019, RFA).

    Each iteration sets ``z <- sum_i b_i x_i / sum_i b_i`` with
    ``b_i = 1 / max(eps, ||z - x_i||)`` over the accepted rows. Assumption: a
    Byzantine minority, f < n/2 (the geometric median's breakdown point).

    ``init="median"`` (default) starts from the coordinate-wise median.
    ``init="mean"`` starts from the mean as RFA does; from there Weiszfeld
    approaches the honest cluster only linearly (ratio about f/(n - f) per
    iteration against far outliers), so a fixed ``iters`` budget can leave the
    output far from the geometric median under large attacks.

    Cost: the coordinate-wise median's sorting network (twice: the start feeds
    a matrix product and its squared norm) and the Gram matrix, 10-20x the
    mean at W = 16; the iterations run in W-space and cost nothing next to them.
    """
    iters = _int_param("geometric_median", "iters", iters, minimum=1)
    eps = _positive_param("geometric_median", "eps", eps)
    if init not in ("median", "mean"):
        raise ValueError(f"geometric_median: init must be 'median' or 'mean', got {init!r}")
    return _rule(
        "geometric_median",
        functools.partial(_geometric_median, eps=eps, iters=iters, init=init),
        params=(("iters", iters), ("eps", eps), ("init", init)),
        min_accepted=1,
        requirement="1",
        assumption="a Byzantine minority, f < n/2",
        bound=lambda n: (n - 1) // 2,
    )


@functools.partial(jax.jit, static_argnames=("iters",))
def _centered_clipping(
    grads_WxP: jax.Array,
    mask_W: jax.Array,
    center_P: jax.Array | None,
    tau: float,
    *,
    iters: int,
) -> jax.Array:
    _check_inputs(grads_WxP, mask_W)
    num_rows, num_params = grads_WxP.shape
    count = jnp.sum(mask_W)
    acc = _acc_dtype(grads_WxP.dtype)
    n = count.astype(acc)
    if center_P is None:
        a0, c0_W = jnp.zeros((), acc), mask_W.astype(acc) / n
    else:
        if center_P.shape != (num_params,):
            raise ValueError(
                f"centered_clipping: center must have shape ({num_params},) to match "
                f"grads_WxP {tuple(grads_WxP.shape)}, got {tuple(center_P.shape)}"
            )
        center_P = center_P.astype(acc)
        a0, c0_W = jnp.ones((), acc), jnp.zeros(num_rows, acc)
    frame = _frame(grads_WxP, mask_W, center_P)

    def step(_, state):
        # v <- v + (1/n) sum_i s_i (x_i - v),  s_i = min(1, tau / ||x_i - v||)
        a, c_W = state
        dist_W = _distances(frame, a, c_W)
        s_W = jnp.where(mask_W, jnp.minimum(1, tau / jnp.maximum(dist_W, 1e-30)), 0)
        keep = 1 - jnp.sum(s_W) / n
        return a * keep, c_W * keep + s_W / n

    a, c_W = lax.fori_loop(0, iters, step, (a0, c0_W))
    agg_P = _weighted_row_sum(c_W, grads_WxP, mask_W)
    if center_P is not None:
        agg_P = agg_P + a * center_P
    return _empty_to_nan(agg_P, count > 0, grads_WxP.dtype)


def centered_clipping(
    *, tau: float, iters: int = 3, center: jax.Array | None = None
) -> AggregationRule:
    """Centered clipping (Karimireddy, He and Jaggi, 2021).

    Starting from ``v = center``, repeats ``iters`` times
    ``v <- v + (1/n) sum_i clip_tau(x_i - v)`` with
    ``clip_tau(u) = u * min(1, tau / ||u||)``, over the n accepted rows.

    ``center`` is the previous round's aggregate (the paper's momentum), a
    ``(P,)`` array; by default the masked mean of the current inputs. Each
    iteration moves ``v`` by at most ``tau``, so a center that the attack has
    already dragged (the mean, under large values) stays dragged: pass the
    momentum for robustness. Assumption: a Byzantine minority, f < n/2 (the
    paper's convergence rate needs the Byzantine fraction below a small
    constant and ``tau`` tuned to the honest spread). Cost: the Gram matrix
    (5-10x the mean at W = 16); the iterations run in W-space.
    """
    tau = _positive_param("centered_clipping", "tau", tau)
    iters = _int_param("centered_clipping", "iters", iters, minimum=1)
    if center is not None:
        center = jnp.asarray(center)
        if center.ndim != 1 or not jnp.issubdtype(center.dtype, jnp.floating):
            raise ValueError(
                "centered_clipping: center must be a 1-D floating array (one value per "
                f"parameter), got shape {tuple(center.shape)} and dtype {center.dtype}"
            )
        if not isinstance(center, jax.core.Tracer) and not bool(jnp.all(jnp.isfinite(center))):
            raise ValueError("centered_clipping: center must be finite, got NaN or Inf entries")
    # center and tau are traced arguments, not static ones: a new momentum
    # every round (or a sweep over tau) reuses the compiled function.
    aggregate = functools.partial(_centered_clipping, center_P=center, tau=tau, iters=iters)
    return _rule(
        "centered_clipping",
        aggregate,
        params=(("tau", tau), ("iters", iters), ("center", "mean" if center is None else "given")),
        min_accepted=1,
        requirement="1",
        assumption="a Byzantine minority, f < n/2",
        bound=lambda n: (n - 1) // 2,
    )


# --------------------------------------------------------------------------- #
# Rules from the ByzFL library (LPD-EPFL) and Bulyan
# --------------------------------------------------------------------------- #

# MDA enumerates the C(W, f) sets of f rows to drop and, for each, the W x W
# pairs it keeps: it refuses shapes where C(W, f) * W^2 exceeds this (W=16:
# every f; W=32: f <= 3; W=64: f <= 2).
_MDA_MAX_WORK = 1 << 24


def _sq_distances(grads_WxP: jax.Array, mask_W: jax.Array) -> jax.Array:
    """Pairwise squared distances between accepted rows (0 wherever a rejected row is)."""
    gram_WxW = _masked_gram(grads_WxP, mask_W)
    gram_WxW = 0.5 * (gram_WxW + gram_WxW.T)  # exactly symmetric, so tied pairs tie exactly
    sq_W = jnp.diagonal(gram_WxW)
    return jnp.maximum(sq_W[:, None] + sq_W[None, :] - 2 * gram_WxW, 0)


def _subset_mean(grads_WxP: jax.Array, chosen_W: jax.Array) -> jax.Array:
    """The average of the chosen rows (NaN-safe: unchosen rows are selected away)."""
    weights_W = chosen_W.astype(_acc_dtype(grads_WxP.dtype)) / jnp.sum(chosen_W)
    return _weighted_row_sum(weights_W, grads_WxP, chosen_W)


def _ranks(keys_W: jax.Array) -> jax.Array:
    """Each entry's position in a stable ascending sort (ties: lowest index first)."""
    order_W = jnp.argsort(keys_W, stable=True)
    num_rows = keys_W.shape[0]
    return jnp.zeros(num_rows, jnp.int32).at[order_W].set(jnp.arange(num_rows, dtype=jnp.int32))


def _mean_around_median(grads_WxP: jax.Array, mask_W: jax.Array, drop: int) -> jax.Array:
    """Per coordinate, the mean of the ``n - drop`` accepted values closest to the median.

    Needs ``n >= 2 drop + 1``. The k = n - drop values closest to the median m
    are the sorted values at ranks a..a+k-1 for some a in 0..drop, and then
    ``s_a <= m <= s_{a+k}``: sliding the window from a to a+1 swaps ``s_a``
    for ``s_{a+k}``, worth it iff ``s_{a+k} - m < m - s_a``, a condition that
    holds for a prefix of a. So the start is the number of a < drop where it
    holds (ties keep the lower window). Rejected rows sort last as +inf and no
    window reaches them.

    Up to ``_UNROLL_SORT_MAX_W`` rows, the value at a dynamic rank is a chain
    of selects over the sorted rows, so the network, the window and the sum
    stay one fused kernel with one output (W=16, P=2e5: ~2.5 ms). Stacking the
    sorted rows to index them instead made XLA CPU recompute the network for
    each row of the stack (~18 ms).
    """
    num_rows = grads_WxP.shape[0]
    acc = _acc_dtype(grads_WxP.dtype)
    count = jnp.sum(mask_W)
    x_WxP = jnp.where(mask_W[:, None], grads_WxP, jnp.inf)
    if num_rows <= _UNROLL_SORT_MAX_W:
        rows = [r.astype(acc) for r in _sort_unrolled(x_WxP)]

        def at_rank(rank):
            value_P = rows[0]
            for r in range(1, num_rows):
                value_P = jnp.where(rank == r, rows[r], value_P)
            return value_P

    else:
        sorted_WxP = _sort_layered(x_WxP).astype(acc)
        rows = [sorted_WxP[i] for i in range(num_rows)]

        def at_rank(rank):
            return lax.dynamic_index_in_dim(sorted_WxP, rank, axis=0, keepdims=False)

    lo, hi = (count - 1) // 2, count // 2
    median_P = jnp.where(lo == hi, at_rank(lo), 0.5 * at_rank(lo) + 0.5 * at_rank(hi))
    k = count - drop
    start_P = jnp.zeros(grads_WxP.shape[1:], jnp.int32)
    for a in range(min(drop, num_rows - 1)):
        slide_P = at_rank(a + k) - median_P < median_P - rows[a]
        start_P = start_P + slide_P.astype(jnp.int32)
    total_P = jnp.zeros(grads_WxP.shape[1:], acc)
    for r in range(num_rows):
        inside_P = (r >= start_P) & (r < start_P + k)
        total_P = total_P + jnp.where(inside_P, rows[r], 0)
    return total_P / k


@functools.partial(jax.jit, static_argnames=("f",))
def _meamed(grads_WxP: jax.Array, mask_W: jax.Array, *, f: int) -> jax.Array:
    _check_inputs(grads_WxP, mask_W)
    count = jnp.sum(mask_W)
    agg_P = _mean_around_median(grads_WxP, mask_W, f)
    return _empty_to_nan(agg_P, count >= 2 * f + 1, grads_WxP.dtype)


def meamed(*, f: int) -> AggregationRule:
    """Mean around the median (MeaMed; Xie, Koyejo and Gupta, 2018, "Generalized
    Byzantine-tolerant SGD").

    Per coordinate, the mean of the ``n - f`` accepted values closest to that
    coordinate's median (even n: the mean of the middle two values). Ties at
    the edge of the window go to the smaller values; ByzFL breaks them by
    ``argpartition``, i.e. arbitrarily. Assumption: at most ``f`` Byzantine
    inputs and ``n >= 2f + 1``. Cost: a sorting network per coordinate and a
    window of selects (W = 16: 4-5x the mean; W = 64, where the network runs
    layer by layer: 20-25x).
    """
    f = _int_param("meamed", "f", f, minimum=0)
    return _rule(
        "meamed",
        functools.partial(_meamed, f=f),
        params=(("f", f),),
        min_accepted=2 * f + 1,
        requirement="2f+1",
        assumption=f"at most f = {f} Byzantine inputs and n >= 2f+1",
        bound=lambda n: f,
    )


def _mda_drop_sets(num_rows: int, f: int) -> np.ndarray:
    """The C(W, f) sets of f rows to drop, as a (C, W) bool array (itertools order)."""
    work = math.comb(num_rows, f) * num_rows * num_rows
    if work > _MDA_MAX_WORK:
        raise ValueError(
            f"mda(f={f}) enumerates C(W, f) = {math.comb(num_rows, f)} subsets for W = "
            f"{num_rows} workers, too many to search exactly (C(W, f) * W^2 must be at most "
            f"{_MDA_MAX_WORK}); use fewer workers, a smaller f, or another rule"
        )
    drop_CxW = np.zeros((math.comb(num_rows, f), num_rows), dtype=bool)
    for c, dropped in enumerate(itertools.combinations(range(num_rows), f)):
        drop_CxW[c, list(dropped)] = True
    return drop_CxW


@functools.partial(jax.jit, static_argnames=("f",))
def _mda(grads_WxP: jax.Array, mask_W: jax.Array, *, f: int) -> jax.Array:
    _check_inputs(grads_WxP, mask_W)
    num_rows = grads_WxP.shape[0]
    count = jnp.sum(mask_W)
    drop_CxW = jnp.asarray(_mda_drop_sets(num_rows, f))
    dist_WxW = _sq_distances(grads_WxP, mask_W)
    valid_C = ~jnp.any(drop_CxW & ~mask_W[None, :], axis=1)  # drop accepted rows only
    kept_CxW = mask_W[None, :] & ~drop_CxW
    pairs_CxWxW = kept_CxW[:, :, None] & kept_CxW[:, None, :]
    diameter_C = jnp.max(jnp.where(pairs_CxWxW, dist_WxW[None], -jnp.inf), axis=(1, 2))
    diameter_C = jnp.where(valid_C, diameter_C, jnp.inf)
    # Many subsets share the pair that sets their diameter: among them, take
    # the one with the smallest sum of squared pairwise distances.
    spread_C = jnp.sum(jnp.where(pairs_CxWxW, dist_WxW[None], 0), axis=(1, 2))
    spread_C = jnp.where(diameter_C == jnp.min(diameter_C), spread_C, jnp.inf)
    kept_W = kept_CxW[jnp.argmin(spread_C)]
    agg_P = _subset_mean(grads_WxP, kept_W)
    return _empty_to_nan(agg_P, count >= 2 * f + 1, grads_WxP.dtype)


def mda(*, f: int) -> AggregationRule:
    """Minimum-diameter averaging (MDA; El Mhamdi et al.: the reference ByzFL gives
    is "Genuinely distributed Byzantine machine learning", PODC 2020).

    The mean of the ``n - f`` accepted gradients whose largest pairwise
    distance is smallest. The search is exact and exponential: it runs over
    the C(W, f) sets of f rows that could be dropped (W static, n = the
    dynamic accepted count), and tracing raises ``ValueError`` when
    ``C(W, f) * W^2`` exceeds 2^24: practical for W = 16 at every f, W = 32
    with f <= 3 and W = 64 with f <= 2. Cost: the Gram matrix plus
    C(W, f) W^2 work (W = 16: f = 4, 6-12x the mean; f = 7, 11440 subsets,
    about 25x).

    Ties are common (subsets sharing the pair that sets the diameter): they go
    to the subset with the smallest sum of squared pairwise distances, which
    does not depend on how workers are numbered. ByzFL keeps the first minimal
    subset in ``itertools.combinations`` order, so its output changes when the
    workers are renumbered. Assumption: at most ``f`` Byzantine inputs and
    ``n >= 2f + 1``.
    """
    f = _int_param("mda", "f", f, minimum=0)
    return _rule(
        "mda",
        functools.partial(_mda, f=f),
        params=(("f", f),),
        min_accepted=2 * f + 1,
        requirement="2f+1",
        assumption=f"at most f = {f} Byzantine inputs and n >= 2f+1",
        bound=lambda n: f,
    )


@functools.partial(jax.jit, static_argnames=("f", "idx"))
def _monna(grads_WxP: jax.Array, mask_W: jax.Array, *, f: int, idx: int | None) -> jax.Array:
    _check_inputs(grads_WxP, mask_W)
    num_rows = grads_WxP.shape[0]
    count = jnp.sum(mask_W)
    acc = _acc_dtype(grads_WxP.dtype)
    # Row i's distance depends on row i alone, so a rejected row's NaN stays in
    # its own entry, which the ranking below masks.
    x_WxP = grads_WxP.astype(acc)
    if idx is None:
        # |x_i|^2 - 2 x_i.m ranks the rows as |x_i - m|^2 does (|m|^2 is common),
        # and keeps the median m to one consumer, a matrix product: XLA CPU fuses
        # the sorting network into each elementwise consumer of m and recomputes it.
        ref_P = _coordinate_median(grads_WxP, mask_W).astype(acc)
        x_ref_W = jnp.dot(x_WxP, ref_P, precision=lax.Precision.HIGHEST)
        dist_W = jnp.sum(jnp.square(x_WxP), axis=1) - 2 * x_ref_W
        ref_ok = jnp.bool_(True)
    else:
        if idx >= num_rows:
            raise ValueError(
                f"monna: idx = {idx} names no worker; grads_WxP has W = {num_rows} rows"
            )
        dist_W = jnp.sum(jnp.square(x_WxP - x_WxP[idx][None, :]), axis=1)
        dist_W = dist_W.at[idx].set(-1)  # the reference is its own nearest neighbour
        ref_ok = mask_W[idx]
    rank_W = _ranks(jnp.where(mask_W, dist_W, jnp.inf))
    chosen_W = mask_W & (rank_W < count - f)
    agg_P = _subset_mean(grads_WxP, chosen_W)
    return _empty_to_nan(agg_P, (count >= 2 * f + 1) & ref_ok, grads_WxP.dtype)


def monna(*, f: int, idx: int | None = None) -> AggregationRule:
    """MoNNA (Farhadkhani, Guerraoui, Gupta, Hoang, Pinot and Stephan, ICML 2023,
    "Robust collaborative learning with linear gradient overhead", the reference
    ByzFL gives): the mean of the ``n - f`` accepted gradients nearest to a
    reference gradient.

    The paper's reference is a gradient the aggregator trusts, its own honest
    one (a peer-to-peer node). A pot-jax aggregator computes no gradient, so by
    default (``idx=None``) the reference is the coordinate-wise median of the
    accepted rows, which lies within the honest range in every coordinate when
    f < n/2. ``idx=i`` uses worker i's row, as ByzFL does (ByzFL's default is
    ``idx=0``, which trusts worker 0 whoever it is); if that row is rejected the
    output is NaN. Ties go to the lowest worker index. Assumption: at most
    ``f`` Byzantine inputs and ``n >= 2f + 1`` (and, with ``idx``, that worker
    honest). Cost: the coordinate-wise median's sorting network and one
    distance per row, 5-8x the mean at W = 16 (``idx``: about 3x).
    """
    f = _int_param("monna", "f", f, minimum=0)
    if idx is not None:
        idx = _int_param("monna", "idx", idx, minimum=0)
    return _rule(
        "monna",
        functools.partial(_monna, f=f, idx=idx),
        params=(("f", f), ("idx", "median" if idx is None else idx)),
        min_accepted=2 * f + 1,
        requirement="2f+1",
        assumption=f"at most f = {f} Byzantine inputs and n >= 2f+1",
        bound=lambda n: f,
    )


@functools.partial(jax.jit, static_argnames=("f",))
def _caf(grads_WxP: jax.Array, mask_W: jax.Array, *, f: int) -> jax.Array:
    _check_inputs(grads_WxP, mask_W)
    count = jnp.sum(mask_W)
    gram_WxW = _masked_gram(grads_WxP, mask_W)
    acc = gram_WxW.dtype
    both_WxW = mask_W[:, None] & mask_W[None, :]
    c0_W = mask_W.astype(acc)

    def step(_, state):
        c_W, best_w_W, best_lam = state
        total = jnp.sum(c_W)
        active = total > count - 2 * f
        w_W = c_W / total
        # Centred Gram (x_i - mu).(x_j - mu), mu = sum_j w_j x_j; the weighted
        # covariance's nonzero spectrum is that of K = diag(s) A diag(s), s = sqrt(w).
        gw_W = gram_WxW @ w_W
        centred_WxW = gram_WxW - gw_W[:, None] - gw_W[None, :] + jnp.dot(w_W, gw_W)
        centred_WxW = jnp.where(both_WxW, centred_WxW, 0)
        s_W = jnp.sqrt(w_W)
        eigvals_W, eigvecs_WxW = jnp.linalg.eigh(s_W[:, None] * centred_WxW * s_W[None, :])
        lam = eigvals_W[-1]
        # (x_i - mu).v for the unit top eigenvector v = D^T (s u) / sqrt(lam).
        proj_W = centred_WxW @ (s_W * eigvecs_WxW[:, -1])
        tau_W = jnp.where((c_W > 0) & (lam > 0), proj_W**2 / jnp.where(lam > 0, lam, 1), 0)
        tau_max = jnp.max(tau_W)
        better = active & (lam < best_lam)
        best_w_W = jnp.where(better, w_W, best_w_W)
        best_lam = jnp.where(better, lam, best_lam)
        shrunk_W = jnp.maximum(c_W * (1 - tau_W / jnp.where(tau_max > 0, tau_max, 1)), 0)
        # XLA may divide by a reciprocal, so tau_max / tau_max can miss 1: zero it exactly.
        shrunk_W = jnp.where((tau_W >= tau_max) & (tau_max > 0), 0, shrunk_W)
        return jnp.where(active, shrunk_W, c_W), best_w_W, best_lam

    init = (c0_W, c0_W / count, jnp.asarray(jnp.inf, acc))
    _, w_W, _ = lax.fori_loop(0, 2 * f, step, init)
    agg_P = _weighted_row_sum(w_W, grads_WxP, mask_W & (w_W > 0))
    return _empty_to_nan(agg_P, count >= 2 * f + 1, grads_WxP.dtype)


def caf(*, f: int) -> AggregationRule:
    """Covariance-bound agnostic filter (CAF; Allouah, Guerraoui and Stephan, 2025,
    "Towards trustworthy federated learning with untrusted participants").

    Weights start at ``c_i = 1``; while ``sum c > n - 2f``: take the weighted
    mean ``mu_c`` and the top eigenpair ``(lam, v)`` of the weighted covariance,
    set ``tau_i = ((x_i - mu_c).v)^2`` and ``c_i <- c_i (1 - tau_i / max tau)``;
    return the ``mu_c`` with the smallest ``lam`` seen (the plain mean when
    f = 0). The eigenpair is exact: the covariance's spectrum is that of a
    W x W matrix built from the Gram matrix, solved by ``eigh`` (jittable).
    ``max tau`` runs over rows still weighted, so each step zeroes at least one
    weight and 2f static steps run the loop to its end. ByzFL instead takes one
    power-iteration step from an unseeded random vector (so its output is
    random and its eigenvalue approximate), takes ``max tau`` over all rows,
    and returns None when f = 0. Assumption: at most ``f`` Byzantine inputs
    and ``n >= 2f + 1``. Cost: the Gram matrix (5-10x the mean at W = 16)
    and 2f ``eigh`` of W x W matrices, which add 10-30% to Krum's cost at
    W = 16 and 60-100% at W = 64 (f = 16: 32 of them).
    """
    f = _int_param("caf", "f", f, minimum=0)
    return _rule(
        "caf",
        functools.partial(_caf, f=f),
        params=(("f", f),),
        min_accepted=2 * f + 1,
        requirement="2f+1",
        assumption=f"at most f = {f} Byzantine inputs and n >= 2f+1",
        bound=lambda n: f,
    )


@functools.partial(jax.jit, static_argnames=("f",))
def _bulyan(grads_WxP: jax.Array, mask_W: jax.Array, *, f: int) -> jax.Array:
    _check_inputs(grads_WxP, mask_W)
    num_rows = grads_WxP.shape[0]
    count = jnp.sum(mask_W)
    dist_WxW = _sq_distances(grads_WxP, mask_W)
    off_diagonal_WxW = ~jnp.eye(num_rows, dtype=bool)
    theta = count - 2 * f

    def select(step, state):
        # One Krum pick among the remaining rows (score over their |R| - f - 2
        # nearest others), moved from the remaining set to the selection.
        remaining_W, selected_W = state
        pair_WxW = remaining_W[:, None] & remaining_W[None, :] & off_diagonal_WxW
        nearest_WxW = jnp.sort(jnp.where(pair_WxW, dist_WxW, jnp.inf), axis=1)
        take_W = jnp.arange(num_rows) < jnp.sum(remaining_W) - f - 2
        scores_W = jnp.where(
            remaining_W, jnp.sum(jnp.where(take_W[None, :], nearest_WxW, 0), 1), jnp.inf
        )
        # The last picks score over f - 1 or fewer neighbours and tie by
        # construction (0 neighbours: every score is 0); ties go to the row
        # closest to all remaining rows (sum of squared distances).
        total_W = jnp.sum(jnp.where(pair_WxW, dist_WxW, 0), axis=1)
        tied_W = scores_W == jnp.min(scores_W)
        pick = jnp.argmin(jnp.where(tied_W, total_W, jnp.inf))
        pick_W = jnp.arange(num_rows) == pick
        pick_W = pick_W & (step < theta)
        return remaining_W & ~pick_W, selected_W | pick_W

    _, selected_W = lax.fori_loop(
        0, max(num_rows - 2 * f, 0), select, (mask_W, jnp.zeros(num_rows, bool))
    )
    agg_P = _mean_around_median(grads_WxP, selected_W, 2 * f)
    return _empty_to_nan(agg_P, count >= 4 * f + 3, grads_WxP.dtype)


def bulyan(*, f: int) -> AggregationRule:
    """Bulyan (El Mhamdi, Guerraoui and Rouault, 2018, "The hidden vulnerability
    of distributed learning in Byzantium") over Krum.

    Selects ``theta = n - 2f`` rows by repeated Krum (each pick scores the
    remaining rows over their ``|R| - f - 2`` nearest other remaining rows and
    leaves the set), then per coordinate averages the ``beta = theta - 2f``
    selected values closest to the selection's median. The last Krum picks
    score over at most ``f - 1`` neighbours and tie by construction (for f = 1
    the last pick scores 0 everywhere); the paper leaves ties open, and here
    they go to the remaining row with the smallest sum of squared distances to
    the other remaining rows (then the lowest index), so the output does not
    depend on how workers are numbered. Window ties go to the smaller values.
    Not in ByzFL.
    Assumption: at most ``f`` Byzantine inputs and ``n >= 4f + 3``.

    Cost: Krum's Gram matrix plus meamed's sorting network and window, 9-16x
    the mean at W = 16 (the W - 2f Krum picks run in W-space).
    """
    f = _int_param("bulyan", "f", f, minimum=0)
    return _rule(
        "bulyan",
        functools.partial(_bulyan, f=f),
        params=(("f", f),),
        min_accepted=4 * f + 3,
        requirement="4f+3",
        assumption=f"at most f = {f} Byzantine inputs and n >= 4f+3",
        bound=lambda n: f,
    )


# --------------------------------------------------------------------------- #
# Pre-aggregators: (grads_WxP, mask_W) -> (grads_VxP, mask_V), composed with a rule
# --------------------------------------------------------------------------- #


class PreAggregateFn(Protocol):
    """The pure function of a pre-aggregator."""

    def __call__(self, grads_WxP: jax.Array, mask_W: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Maps the accepted rows to the rows a rule then aggregates.

        Args:
          grads_WxP: (W, P) floating array, one flat gradient per worker.
          mask_W: (W,) bool array, True for accepted workers.

        Returns:
          (grads_VxP, mask_V): V static rows of the input dtype (0 in rows
          outside mask_V) and their mask; mask_V is all False when fewer than
          ``min_accepted`` rows came in.
        """


class PreAggregator(NamedTuple):
    """A named pre-aggregator; :func:`compose` puts it in front of a rule.

    Attributes:
      name: the registry name (``PRE_AGGREGATOR_NAMES``).
      transform: ``(grads_WxP, mask_W) -> (grads_VxP, mask_V)``, pure and jittable.
      out_count: how many accepted rows come out of n accepted rows.
      max_byzantine: its own tolerance, the most Byzantine inputs among n.
      min_accepted: the fewest accepted inputs it is defined for.
      requirement: how ``min_accepted`` follows from the parameters.
      assumption: the tolerance statement in words.
      params: the static parameters as ``(name, value)`` pairs.
    """

    name: str
    transform: PreAggregateFn
    out_count: Callable[[int], int]
    max_byzantine: Callable[[int], int]
    min_accepted: int
    requirement: str
    assumption: str
    params: tuple[tuple[str, Any], ...] = ()

    @property
    def label(self) -> str:
        return _label(self.name, self.params)


def _pre(
    name: str,
    transform: PreAggregateFn,
    *,
    params: tuple[tuple[str, Any], ...],
    min_accepted: int,
    requirement: str,
    assumption: str,
    bound: Callable[[int], int],
    out_count: Callable[[int], int] = lambda n: n,
) -> PreAggregator:
    return PreAggregator(
        name=name,
        transform=transform,
        out_count=out_count,
        max_byzantine=_make_max_byzantine(_label(name, params), requirement, min_accepted, bound),
        min_accepted=min_accepted,
        requirement=requirement,
        assumption=assumption,
        params=params,
    )


def _mix(weights_VxW: jax.Array, grads_WxP: jax.Array, mask_W: jax.Array) -> jax.Array:
    """``weights_VxW @ grads_WxP`` with rejected rows selected to 0 first (no 0 * NaN)."""
    acc = _acc_dtype(grads_WxP.dtype)
    clean_WxP = jnp.where(mask_W[:, None], grads_WxP, 0).astype(acc)
    return jnp.dot(weights_VxW.astype(acc), clean_WxP, precision=lax.Precision.HIGHEST)


def _row_norms(grads_WxP: jax.Array, mask_W: jax.Array) -> jax.Array:
    acc = _acc_dtype(grads_WxP.dtype)
    clean_WxP = jnp.where(mask_W[:, None], grads_WxP, 0).astype(acc)
    return jnp.sqrt(jnp.sum(jnp.square(clean_WxP), axis=1))


def _scale_rows(grads_WxP: jax.Array, mask_W: jax.Array, scale_W: jax.Array) -> jax.Array:
    acc = _acc_dtype(grads_WxP.dtype)
    out_WxP = jnp.where(mask_W[:, None], grads_WxP.astype(acc) * scale_W[:, None], 0)
    return out_WxP.astype(grads_WxP.dtype)


@functools.partial(jax.jit, static_argnames=("f",))
def _nnm(grads_WxP: jax.Array, mask_W: jax.Array, *, f: int) -> tuple[jax.Array, jax.Array]:
    _check_inputs(grads_WxP, mask_W)
    num_rows = grads_WxP.shape[0]
    count = jnp.sum(mask_W)
    dist_WxW = _sq_distances(grads_WxP, mask_W)
    both_WxW = mask_W[:, None] & mask_W[None, :]
    dist_WxW = jnp.where(both_WxW, dist_WxW, jnp.inf)
    dist_WxW = jnp.where(jnp.eye(num_rows, dtype=bool), -1, dist_WxW)  # itself first
    order_WxW = jnp.argsort(dist_WxW, axis=1, stable=True)
    rank_WxW = jnp.argsort(order_WxW, axis=1, stable=True)
    k = count - f
    weights_WxW = (both_WxW & (rank_WxW < k)).astype(_acc_dtype(grads_WxP.dtype)) / k
    mixed_WxP = _mix(weights_WxW, grads_WxP, mask_W)
    ok = count >= 2 * f + 1
    out_mask_W = mask_W & ok
    return jnp.where(out_mask_W[:, None], mixed_WxP, 0).astype(grads_WxP.dtype), out_mask_W


def nnm(*, f: int) -> PreAggregator:
    """Nearest-neighbour mixing (NNM; Allouah et al., 2023, "Fixing by mixing").

    Replaces each accepted gradient by the average of its ``n - f`` nearest
    accepted gradients, itself included; ties go to the lowest worker index
    (ByzFL: ``argpartition``, arbitrary). Composed with a rule that tolerates
    f Byzantine inputs, the paper shows the composition keeps that tolerance
    with a better robustness coefficient. Assumption: at most ``f`` Byzantine
    inputs and ``n >= 2f + 1``. Cost: the Gram matrix and a W x W mixing
    product over P, two W^2 P products (``nnm+mean``: 10-18x the mean at
    W = 16), and the rule behind it works on the mixed rows (``nnm+krum``: a
    third product, 15-24x).
    """
    f = _int_param("nnm", "f", f, minimum=0)
    return _pre(
        "nnm",
        functools.partial(_nnm, f=f),
        params=(("f", f),),
        min_accepted=2 * f + 1,
        requirement="2f+1",
        assumption=f"at most f = {f} Byzantine inputs and n >= 2f+1",
        bound=lambda n: f,
    )


@functools.partial(jax.jit, static_argnames=("s", "seed"))
def _bucketing(
    grads_WxP: jax.Array, mask_W: jax.Array, *, s: int, seed: int
) -> tuple[jax.Array, jax.Array]:
    _check_inputs(grads_WxP, mask_W)
    num_rows = grads_WxP.shape[0]
    num_buckets = -(-num_rows // s)
    count = jnp.sum(mask_W)
    keys_W = jax.random.uniform(jax.random.PRNGKey(seed), (num_rows,))
    rank_W = _ranks(jnp.where(mask_W, keys_W, 2.0))  # accepted rows first, shuffled
    bucket_V = jnp.arange(num_buckets)
    member_VxW = mask_W[None, :] & (rank_W[None, :] // s == bucket_V[:, None])
    size_V = jnp.sum(member_VxW, axis=1)
    weights_VxW = member_VxW.astype(_acc_dtype(grads_WxP.dtype)) / jnp.maximum(size_V, 1)[:, None]
    out_mask_V = (size_V > 0) & (count >= 1)
    means_VxP = _mix(weights_VxW, grads_WxP, mask_W)
    return jnp.where(out_mask_V[:, None], means_VxP, 0).astype(grads_WxP.dtype), out_mask_V


def bucketing(*, s: int, seed: int = 0) -> PreAggregator:
    """Bucketing (Karimireddy, He and Jaggi, 2022, "Byzantine-robust learning on
    heterogeneous datasets via bucketing").

    Shuffles the n accepted gradients and averages consecutive buckets of
    ``s`` (the last one may be smaller), giving ``ceil(n / s)`` rows. A
    Byzantine input corrupts at most one bucket, so the rule behind it must
    tolerate f Byzantine rows among ``ceil(n / s)``; the paper takes
    ``s <= n / (2f)`` or so, per its delta_max. To stay pure the shuffle comes
    from ``seed`` (``jax.random.PRNGKey(seed)``), so it is the same permutation
    of worker slots every call: vary ``seed`` per round (e.g. with
    ``jax.random.fold_in`` upstream) if workers must not know their bucket.
    ByzFL draws a fresh permutation from the global RNG at every call.
    """
    s = _int_param("bucketing", "s", s, minimum=1)
    seed = _int_param("bucketing", "seed", seed, minimum=0)
    return _pre(
        "bucketing",
        functools.partial(_bucketing, s=s, seed=seed),
        params=(("s", s), ("seed", seed)),
        min_accepted=1,
        requirement="1",
        assumption="each Byzantine input corrupts at most one bucket",
        bound=lambda n: n,
        out_count=lambda n: -(-n // s),
    )


@jax.jit
def _clipping(grads_WxP: jax.Array, mask_W: jax.Array, c: float) -> tuple[jax.Array, jax.Array]:
    _check_inputs(grads_WxP, mask_W)
    norm_W = _row_norms(grads_WxP, mask_W)
    scale_W = jnp.where(norm_W > c, c / jnp.where(norm_W > c, norm_W, 1), 1)
    return _scale_rows(grads_WxP, mask_W, scale_W), mask_W


def clipping(*, c: float) -> PreAggregator:
    """Static clipping: each accepted gradient scaled to norm at most ``c``
    (``x * min(1, c / ||x||)``). Keeps the rule's tolerance; bounds what one
    input can contribute, at the price of bias when honest norms exceed c.
    """
    c = _positive_param("clipping", "c", c)
    return _pre(
        "clipping",
        functools.partial(_clipping, c=c),
        params=(("c", c),),
        min_accepted=1,
        requirement="1",
        assumption="no assumption of its own (the rule's applies)",
        bound=lambda n: n,
    )


@functools.partial(jax.jit, static_argnames=("f",))
def _arc(grads_WxP: jax.Array, mask_W: jax.Array, *, f: int) -> tuple[jax.Array, jax.Array]:
    _check_inputs(grads_WxP, mask_W)
    count = jnp.sum(mask_W)
    norm_W = _row_norms(grads_WxP, mask_W)
    # k = floor(2 (f / n) (n - f)) in integers; clip to the (k + 1)-th largest norm.
    k = jnp.maximum(2 * f * (count - f), 0) // jnp.maximum(count, 1)
    descending_W = -jnp.sort(jnp.where(mask_W, -norm_W, jnp.inf))
    threshold = lax.dynamic_index_in_dim(descending_W, k, keepdims=False)
    # Rows at or below the threshold keep scale 1 exactly (also when norms underflow to 0).
    scale_W = jnp.where(norm_W > threshold, threshold / jnp.where(norm_W > threshold, norm_W, 1), 1)
    out_mask_W = mask_W & (count >= 2 * f + 1)
    return _scale_rows(grads_WxP, out_mask_W, scale_W), out_mask_W


def arc(*, f: int) -> PreAggregator:
    """Adaptive robust clipping (ARC; Allouah, Guerraoui, Gupta, Jellouli, Rizk and
    Stephan, "The vital role of gradient clipping in Byzantine-resilient
    distributed learning", arXiv:2405.14432, ICLR 2025).

    With ``k = floor(2 (f / n) (n - f))``, clips every accepted gradient to
    the norm of the (k + 1)-th largest accepted norm, so the k largest are
    scaled down to it and the rest are unchanged. k is computed in integers;
    ByzFL computes it in floating point (``int(2 * f / n * (n - f))``) and
    clips in place, mutating its input. Assumption: at most ``f`` Byzantine
    inputs and ``n >= 2f + 1``.
    """
    f = _int_param("arc", "f", f, minimum=0)
    return _pre(
        "arc",
        functools.partial(_arc, f=f),
        params=(("f", f),),
        min_accepted=2 * f + 1,
        requirement="2f+1",
        assumption=f"at most f = {f} Byzantine inputs and n >= 2f+1",
        bound=lambda n: f,
    )


def _merge_params(pre: PreAggregator, rule: AggregationRule) -> tuple[tuple[str, Any], ...]:
    """The parts' parameters; a key both take with different values is prefixed by its part."""
    ours, theirs = dict(pre.params), dict(rule.params)
    merged = []
    for key, value in pre.params:
        clash = key in theirs and theirs[key] != value
        merged.append((f"{pre.name}.{key}" if clash else key, value))
    for key, value in rule.params:
        if key not in ours:
            merged.append((key, value))
        elif ours[key] != value:
            merged.append((f"{rule.name}.{key}", value))
    return tuple(merged)


def compose(pre: PreAggregator, rule: AggregationRule) -> AggregationRule:
    """The rule ``pre+rule``: ``rule.aggregate(*pre.transform(grads_WxP, mask_W))``.

    It tolerates, among n accepted inputs, the fewer of what ``pre`` tolerates
    and what ``rule`` tolerates among the ``pre.out_count(n)`` rows it is given,
    and needs enough inputs for both.
    """

    def aggregate(grads_WxP: jax.Array, mask_W: jax.Array) -> jax.Array:
        return rule.aggregate(*pre.transform(grads_WxP, mask_W))

    minimum = pre.min_accepted
    while pre.out_count(minimum) < rule.min_accepted:
        minimum += 1
    if pre.out_count(minimum) == minimum and minimum == rule.min_accepted:
        requirement = rule.requirement
    elif minimum == pre.min_accepted:
        requirement = pre.requirement
    else:
        requirement = f"{rule.requirement} rows after {pre.label}"
    return _rule(
        f"{pre.name}+{rule.name}",
        aggregate,
        params=_merge_params(pre, rule),
        min_accepted=minimum,
        requirement=requirement,
        assumption=f"{pre.name}: {pre.assumption}; then {rule.name}: {rule.assumption}",
        bound=lambda n: min(pre.max_byzantine(n), rule.max_byzantine(pre.out_count(n))),
    )


# --------------------------------------------------------------------------- #
# Registry and host-side checks
# --------------------------------------------------------------------------- #

_FACTORIES: dict[str, Callable[..., AggregationRule]] = {
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
RULE_NAMES: tuple[str, ...] = tuple(_FACTORIES)

_PRE_FACTORIES: dict[str, Callable[..., PreAggregator]] = {
    "nnm": nnm,
    "bucketing": bucketing,
    "clipping": clipping,
    "arc": arc,
}
PRE_AGGREGATOR_NAMES: tuple[str, ...] = tuple(_PRE_FACTORIES)


def _keyword_params(factory: Callable[..., Any]) -> dict[str, inspect.Parameter]:
    return dict(inspect.signature(factory).parameters)


def _composition_parts(name: str) -> list[tuple[str, Callable[..., Any]]]:
    """``PRE+...+RULE``: the factories of the pre-aggregators, then of the rule."""
    *pres, last = name.split("+")
    parts = []
    for part in pres:
        if part not in _PRE_FACTORIES:
            raise ValueError(
                f"{name}: {part!r} is not a pre-aggregator; expected one of "
                f"{', '.join(_PRE_FACTORIES)}"
            )
        parts.append((part, _PRE_FACTORIES[part]))
    if last not in _FACTORIES:
        raise ValueError(
            f"{name}: {last!r} is not an aggregation rule; expected one of {', '.join(_FACTORIES)}"
        )
    parts.append((last, _FACTORIES[last]))
    return parts


def _make_composition(name: str, params: dict[str, Any]) -> AggregationRule:
    """Each parameter goes to every part that takes it; one no part takes is an error."""
    parts = _composition_parts(name)
    takes = [(part, _keyword_params(factory)) for part, factory in parts]
    for key in params:
        if not any(key in accepted for _, accepted in takes):
            described = "; ".join(
                f"{part} takes {', '.join(accepted) or 'no parameters'}" for part, accepted in takes
            )
            raise ValueError(f"{name} has no parameter {key!r}; {described}")
    built = []
    for (part, factory), (_, accepted) in zip(parts, takes, strict=True):
        for key, parameter in accepted.items():
            if parameter.default is inspect.Parameter.empty and key not in params:
                raise ValueError(f"{name} needs parameter {key!r} (for {part})")
        built.append(factory(**{k: v for k, v in params.items() if k in accepted}))
    *pres, rule = built
    for pre in reversed(pres):
        rule = compose(pre, rule)
    return rule


def _composition_factory(name: str) -> Callable[..., AggregationRule]:
    """A factory for ``name`` whose signature is the union of its parts' parameters."""
    merged: dict[str, inspect.Parameter] = {}
    for _, factory in _composition_parts(name):
        for key, parameter in _keyword_params(factory).items():
            parameter = parameter.replace(kind=inspect.Parameter.KEYWORD_ONLY)
            if key not in merged or parameter.default is inspect.Parameter.empty:
                merged[key] = parameter

    def factory(**params: Any) -> AggregationRule:
        return _make_composition(name, params)

    factory.__signature__ = inspect.Signature(list(merged.values()))
    return factory


@typing.final
class RuleRegistry:
    """The aggregation rules by name, plus compositions ``PRE+RULE[:key=value,...]``.

    Same interface as :class:`pot_jax.registry.Registry` (``register``,
    ``names``, ``factory``, ``check``, ``build``), to which it hands every spec
    without a ``+``. ``parse_spec`` accepts identifiers only, so a composed
    spec (``nnm+krum:f=3``, ``clipping+nnm+krum:c=2.0,f=3``) is read here:
    registered pre-aggregators, then one registered rule, and each parameter
    goes to every part that takes it.
    """

    def __init__(self, registry: Registry):
        self._registry = registry
        self.kind = registry.kind

    def register(self, name: str, factory: Callable[..., Any], *, replace: bool = False) -> None:
        self._registry.register(name, factory, replace=replace)

    def names(self) -> tuple[str, ...]:
        return self._registry.names()

    def factory(self, spec: ComponentSpec, *, flag: str) -> Callable[..., Any]:
        if "+" not in spec.name:
            return self._registry.factory(spec, flag=flag)
        try:
            return _composition_factory(spec.name)
        except ValueError as err:
            raise ValueError(f"{flag} {spec}: {err}") from None

    def check(self, text: str, *, flag: str, extra: Mapping[str, Any] | None = None) -> str:
        spec = self._composed_spec(text, flag=flag)
        if spec is None:
            return self._registry.check(text, flag=flag, extra=extra)
        self._build(spec, flag=flag, extra=dict(extra or {}))
        return str(spec)

    def build(self, text: str, *, flag: str, **extra: Any) -> Any:
        spec = self._composed_spec(text, flag=flag)
        if spec is None:
            return self._registry.build(text, flag=flag, **extra)
        return self._build(spec, flag=flag, extra=extra)

    @staticmethod
    def _composed_spec(text: Any, *, flag: str) -> ComponentSpec | None:
        if not isinstance(text, str):
            return None
        head, sep, rest = text.strip().partition(":")
        if "+" not in head:
            return None
        if not all(part.isidentifier() for part in head.split("+")):
            raise ValueError(
                f"{flag} {text!r}: a composition is PRE+RULE of registered names, then "
                ":key=value,... (e.g. nnm+krum:f=3)"
            )
        params = parse_spec(head.rsplit("+", 1)[1] + sep + rest, flag=flag).params
        return ComponentSpec(head, params)

    @staticmethod
    def _build(spec: ComponentSpec, *, flag: str, extra: dict[str, Any]) -> AggregationRule:
        try:
            taken = set().union(*(_keyword_params(f) for _, f in _composition_parts(spec.name)))
            passed = {k: v for k, v in extra.items() if k in taken}
            return _make_composition(spec.name, {**passed, **spec.kwargs})
        except ValueError as err:
            raise ValueError(f"{flag} {spec}: {err}") from None


RULES = RuleRegistry(Registry("aggregation rule", _FACTORIES))


def register_rule(name: str, factory: Callable[..., AggregationRule]) -> None:
    """Make a rule factory selectable as ``--aggregation NAME[:params]`` (and in audits)."""
    RULES.register(name, factory)


def register_pre_aggregator(name: str, factory: Callable[..., PreAggregator]) -> None:
    """Make a pre-aggregator factory usable in compositions ``NAME+RULE``."""
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"a pre-aggregator name must be an identifier, got {name!r}")
    if name in _PRE_FACTORIES or name in _FACTORIES:
        raise ValueError(f"a pre-aggregator or rule named {name!r} is already registered")
    _PRE_FACTORIES[name] = factory


def make_rule(name: str, **params: Any) -> AggregationRule:
    """The rule called ``name`` with keyword ``params`` (e.g. ``make_rule("krum", f=2)``).

    ``name`` may compose pre-aggregators with a rule, ``make_rule("nnm+krum", f=3)``:
    each parameter goes to every part that takes it.
    """
    if isinstance(name, str) and "+" in name:
        return _make_composition(name, params)
    if isinstance(name, str) and name in _PRE_FACTORIES:
        raise ValueError(
            f"{name} is a pre-aggregator, not a rule; compose it with one, e.g. {name}+krum"
        )
    try:
        factory = _FACTORIES[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown aggregation rule {name!r}; expected one of {', '.join(RULE_NAMES)}"
        ) from None
    signature = inspect.signature(factory)
    accepted = list(signature.parameters)
    takes = ", ".join(accepted) if accepted else "no parameters"
    for key in params:
        if key not in signature.parameters:
            raise ValueError(f"{name} has no parameter {key!r}; it takes {takes}")
    for key, parameter in signature.parameters.items():
        if parameter.default is inspect.Parameter.empty and key not in params:
            raise ValueError(f"{name} needs parameter {key!r}; it takes {takes}")
    return factory(**params)


def check_assumption(rule: AggregationRule, n_accepted: int, n_byzantine: int) -> None:
    """Raises ``ValueError`` unless ``rule`` is proven for this many inputs.

    Args:
      rule: the aggregation rule.
      n_accepted: how many gradients are aggregated.
      n_byzantine: how many of those may be Byzantine (the threat model's bound).
    """
    n_accepted = _int_param(rule.label, "n_accepted", n_accepted, minimum=0)
    n_byzantine = _int_param(rule.label, "n_byzantine", n_byzantine, minimum=0)
    if n_accepted < rule.min_accepted:
        raise ValueError(
            _needs_at_least(rule.label, rule.requirement, rule.min_accepted, n_accepted)
        )
    if n_byzantine > n_accepted:
        raise ValueError(
            f"{rule.label}: n_byzantine = {n_byzantine} exceeds n_accepted = {n_accepted}"
        )
    bound = rule.max_byzantine(n_accepted)
    if n_byzantine > bound:
        raise ValueError(
            f"{rule.label} tolerates at most {bound} Byzantine of {n_accepted} accepted "
            f"gradients ({rule.assumption}), got {n_byzantine}"
        )


@jax.jit
def _row_health(grads_WxP: jax.Array) -> tuple[jax.Array, jax.Array]:
    acc = _acc_dtype(grads_WxP.dtype)
    finite_W = jnp.all(jnp.isfinite(grads_WxP), axis=1)
    sq_norm_W = jnp.sum(jnp.square(grads_WxP.astype(acc)), axis=1)
    # The Gram-based rules square entries in the input dtype's range.
    return finite_W, jnp.isfinite(sq_norm_W.astype(grads_WxP.dtype))


def aggregate_checked(
    rule: AggregationRule, grads_WxP: Any, mask_W: Any, *, n_byzantine: int
) -> jax.Array:
    """Validates inputs and the rule's assumption host side, then aggregates.

    Raises ``ValueError`` naming the problem: shapes or dtypes, no accepted
    row, the assumption (:func:`check_assumption`), or the first accepted
    worker whose gradient is not finite or whose squared norm overflows.
    """
    grads_WxP = jnp.asarray(grads_WxP)
    mask_W = jnp.asarray(mask_W)
    _check_inputs(grads_WxP, mask_W)
    mask_host = np.asarray(mask_W)
    n_accepted = int(mask_host.sum())
    num_workers = grads_WxP.shape[0]
    if n_accepted == 0:
        raise ValueError(
            f"no accepted gradients: mask_W rejects all {num_workers} workers; "
            + _needs_at_least(rule.label, rule.requirement, rule.min_accepted, 0)
        )
    check_assumption(rule, n_accepted, n_byzantine)
    finite_W, norm_ok_W = (np.asarray(v) for v in _row_health(grads_WxP))
    bad = np.flatnonzero(mask_host & ~finite_W)
    if bad.size:
        raise ValueError(
            f"gradient from accepted worker {bad[0]} has NaN or Inf entries "
            f"({bad.size} accepted workers do); accepted gradients must be finite"
        )
    bad = np.flatnonzero(mask_host & ~norm_ok_W)
    if bad.size:
        raise ValueError(
            f"gradient from accepted worker {bad[0]} has a squared norm that overflows "
            f"{grads_WxP.dtype}; accepted gradients must pass a norm bound"
        )
    return rule.aggregate(grads_WxP, mask_W)
