"""Property tests for the ByzFL rules (mda, monna, meamed, caf), Bulyan, the
pre-aggregators (nnm, bucketing, clipping, arc) and their compositions.

Each rule is compared with a direct float64 numpy reference; permuting the
accepted rows, filling rejected rows with NaN/Inf, or changing which mask a
jitted rule sees must not matter; breakdown canaries show f colluding rows
held within a bound while f+1 move the output arbitrarily far, which proves the
bound check can fail. Shapes come from a short list so that compiles stay few.
"""

from __future__ import annotations

import inspect
import itertools
import re

import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pot_jax.learning import aggregation as agg
from pot_jax.registry import ComponentSpec

# (W, P) pairs the property tests draw from: each new shape is a new compile.
SHAPES = ((7, 3), (9, 8), (12, 5))
GARBAGE = (np.nan, np.inf, -np.inf, 1e30, -3e38)
FEW = settings(max_examples=10)

RULES = {
    "mda": agg.mda(f=2),
    "monna": agg.monna(f=2),
    "monna_idx": agg.monna(f=2, idx=0),
    "meamed": agg.meamed(f=2),
    "caf": agg.caf(f=2),
    "bulyan": agg.bulyan(f=1),
    "nnm+krum": agg.make_rule("nnm+krum", f=1),
    "nnm+coordinate_median": agg.make_rule("nnm+coordinate_median", f=2),
    "clipping+mean": agg.make_rule("clipping+mean", c=1e5),
    "arc+coordinate_median": agg.make_rule("arc+coordinate_median", f=2),
    "bucketing+coordinate_median": agg.make_rule("bucketing+coordinate_median", s=2, seed=3),
}
# monna(idx=0) trusts worker 0 and bucketing shuffles worker slots: both depend
# on worker numbering by design. NNM often outputs equal rows (rows with the
# same neighbours), whose Krum scores tie, and Krum's ties go to the lowest index.
NUMBERED = {"monna_idx", "bucketing+coordinate_median", "nnm+krum"}
DETERMINISTIC_SYMMETRIC = sorted(set(RULES) - NUMBERED)


# --------------------------------------------------------------------------- #
# numpy references (float64, straight from the papers)
# --------------------------------------------------------------------------- #


def np_meamed(x, f):
    med = np.median(x, axis=0)
    k = len(x) - f
    out = []
    for j in range(x.shape[1]):
        nearest = np.lexsort((x[:, j], np.abs(x[:, j] - med[j])))[:k]  # ties: smaller value
        out.append(x[nearest, j].mean())
    return np.array(out)


def np_mda(x, f):
    """Smallest diameter; ties to the smallest sum of squared pairwise distances."""
    best = None
    for subset in itertools.combinations(range(len(x)), len(x) - f):
        rows = x[list(subset)]
        sq = ((rows[:, None] - rows[None]) ** 2).sum(-1)
        key = (np.max(sq), np.sum(sq))
        if best is None or key < best[0]:
            best = (key, rows.mean(0))
    return best[1]


def np_monna(x, f, ref):
    d = np.linalg.norm(x - ref, axis=1)
    return x[np.argsort(d, kind="stable")[: len(x) - f]].mean(0)


def np_caf(x, f):
    n = len(x)
    c = np.ones(n)
    best_lam, best_mu = np.inf, x.mean(0)
    while c.sum() > n - 2 * f:
        mu = (c[:, None] * x).sum(0) / c.sum()
        d = x - mu
        cov = np.einsum("i,ij,ik->jk", c, d, d) / c.sum()
        eigvals, eigvecs = np.linalg.eigh(cov)
        if eigvals[-1] < best_lam:
            best_lam, best_mu = eigvals[-1], mu
        tau = (d @ eigvecs[:, -1]) ** 2
        tau[c <= 0] = 0
        c = np.maximum(c * (1 - tau / tau.max()), 0)
    return best_mu


def np_bulyan(x, f):
    dist = ((x[:, None] - x[None]) ** 2).sum(-1)
    remaining, selected = list(range(len(x))), []
    for _ in range(len(x) - 2 * f):
        k = len(remaining) - f - 2
        # Krum score, then (ties) the sum of squared distances to all remaining rows.
        keys = [
            (
                np.sort([dist[i, j] for j in remaining if j != i])[: max(k, 0)].sum(),
                dist[i, remaining].sum(),
            )
            for i in remaining
        ]
        selected.append(remaining.pop(min(range(len(keys)), key=keys.__getitem__)))
    return np_meamed(x[selected], 2 * f)


def np_nnm(x, f):
    d = np.linalg.norm(x[:, None] - x[None], axis=-1)
    return np.stack(
        [x[np.argsort(d[i], kind="stable")[: len(x) - f]].mean(0) for i in range(len(x))]
    )


def np_arc(x, f):
    n = len(x)
    k = 2 * f * (n - f) // n
    norms = np.linalg.norm(x, axis=1)
    threshold = np.sort(norms)[::-1][k]
    return x * np.minimum(1, threshold / np.maximum(norms, 1e-300))[:, None]


def reference(name, x):
    if name == "mda":
        return np_mda(x, 2)
    if name == "monna":
        return np_monna(x, 2, np.median(x, axis=0))
    if name == "monna_idx":
        return np_monna(x, 2, x[0])
    if name == "meamed":
        return np_meamed(x, 2)
    if name == "caf":
        return np_caf(x, 2)
    if name == "bulyan":
        return np_bulyan(x, 1)
    if name == "nnm+coordinate_median":
        return np.median(np_nnm(x, 2), axis=0)
    if name == "arc+coordinate_median":
        return np.median(np_arc(x, 2), axis=0)
    assert name == "clipping+mean", name  # with c far above the test norms
    return x.mean(0)


# Krum's selection and the random buckets are checked in their own tests.
REFERENCED = sorted(set(RULES) - {"nnm+krum", "bucketing+coordinate_median"})


# --------------------------------------------------------------------------- #
# strategies
# --------------------------------------------------------------------------- #


@st.composite
def cases(draw, min_accepted, keep_first=False):
    """(grads_WxP float32 with garbage in rejected rows, mask_W, accepted rows float64)."""
    num_workers, num_params = draw(st.sampled_from(SHAPES))
    n = draw(st.integers(min_accepted, num_workers))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    mask = np.zeros(num_workers, dtype=bool)
    mask[rng.permutation(num_workers)[:n]] = True
    if keep_first:
        mask[0] = True
    scale = draw(st.sampled_from([1e-2, 1.0, 1e2]))
    grads = (scale * rng.standard_normal((num_workers, num_params))).astype(np.float32)
    grads[~mask] = draw(st.sampled_from(GARBAGE))
    return grads, mask, grads[mask].astype(np.float64)


def spread(x):
    return float(np.max(np.abs(x))) + 1e-30


def close(actual, expected, scale, rtol=1e-4):
    np.testing.assert_allclose(
        np.asarray(actual, np.float64), expected, rtol=rtol, atol=rtol * scale
    )


# --------------------------------------------------------------------------- #
# exact outputs
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("name", REFERENCED)
@FEW
@given(data=st.data())
def test_rule_matches_its_paper_definition(name, data):
    """Each rule equals a direct float64 transcription of its paper's definition."""
    rule = RULES[name]
    grads, mask, x = data.draw(cases(rule.min_accepted, keep_first=name == "monna_idx"))
    close(rule.aggregate(grads, mask), reference(name, x), spread(x), rtol=2e-4)


F_ZERO = {  # with f = 0 each of these is the plain mean
    "mda": agg.mda(f=0),
    "monna": agg.monna(f=0),
    "meamed": agg.meamed(f=0),
    "caf": agg.caf(f=0),
    "bulyan": agg.bulyan(f=0),
    "nnm+mean": agg.make_rule("nnm+mean", f=0),
    "arc+mean": agg.make_rule("arc+mean", f=0),
}


@pytest.mark.parametrize("name", sorted(F_ZERO))
@FEW
@given(data=st.data())
def test_with_no_byzantine_input_the_rule_is_the_mean(name, data):
    """f = 0 leaves nothing to drop, filter or clip: the output is the mean."""
    rule = F_ZERO[name]
    grads, mask, x = data.draw(cases(max(rule.min_accepted, 1)))
    close(rule.aggregate(grads, mask), x.mean(0), spread(x), rtol=1e-4)


def test_meamed_takes_the_values_closest_to_the_median():
    """Repeated values do not fool the window: [0, 0, 1, 1.1, 5] with f = 2 keeps 1, 1.1, 0."""
    column = np.array([[0.0], [5.0], [1.1], [0.0], [1.0], [np.nan]], np.float32)
    mask = np.arange(6) < 5
    close(agg.meamed(f=2).aggregate(column, mask), np.array([0.7]), 1.0, rtol=1e-6)
    close(agg.meamed(f=1).aggregate(column, mask), np.array([0.525]), 1.0, rtol=1e-6)


@pytest.mark.parametrize("name", sorted(RULES))
@FEW
@given(num_workers=st.sampled_from([9, 12]), value=st.floats(-1e3, 1e3, width=32))
def test_equal_rows_give_that_row(name, num_workers, value):
    """When every accepted row is the same vector, every rule returns it."""
    row = value * np.linspace(-1, 2, 5, dtype=np.float32)
    grads = np.tile(row, (num_workers, 1))
    mask = np.ones(num_workers, dtype=bool)
    mask[-1] = False
    grads[-1] = np.nan
    close(RULES[name].aggregate(grads, mask), row.astype(np.float64), spread(row), rtol=1e-5)


@pytest.mark.parametrize("name", DETERMINISTIC_SYMMETRIC)
@FEW
@given(data=st.data())
def test_output_is_invariant_to_permuting_accepted_rows(name, data):
    """Reordering the workers (rows and mask together) leaves the output unchanged."""
    rule = RULES[name]
    grads, mask, x = data.draw(cases(rule.min_accepted))
    perm = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1))).permutation(len(mask))
    close(rule.aggregate(grads[perm], mask[perm]), rule.aggregate(grads, mask), spread(x))


@pytest.mark.parametrize("name", sorted(RULES))
@FEW
@given(data=st.data())
def test_nan_and_inf_in_rejected_rows_never_leak(name, data):
    """Replacing rejected rows by zeros, NaN or Inf leaves the output bit-identical and finite."""
    rule = RULES[name]
    grads, mask, _ = data.draw(cases(rule.min_accepted, keep_first=name == "monna_idx"))
    out = np.asarray(rule.aggregate(grads, mask))
    assert np.all(np.isfinite(out))
    clean = np.where(mask[:, None], grads, 0).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(rule.aggregate(clean, mask)), out)


# --------------------------------------------------------------------------- #
# breakdown canaries
# --------------------------------------------------------------------------- #


def colluding(num_byzantine, magnitude, n=11, num_params=6, seed=0):
    """n rows: honest N(0, 1) rows, then num_byzantine identical rows at magnitude * e."""
    rng = np.random.default_rng(seed)
    grads = rng.standard_normal((n, num_params)).astype(np.float32)
    grads[n - num_byzantine :] = magnitude * np.ones(num_params, np.float32) / num_params**0.5
    return (
        grads,
        np.ones(n, dtype=bool),
        float(np.max(np.linalg.norm(grads[: n - num_byzantine], axis=1))),
    )


BREAKDOWN = {  # rule with f = 2 at n = 11: f rows are held, f + 1 rows win
    "mda": agg.mda(f=2),
    "monna": agg.monna(f=2),
    "meamed": agg.meamed(f=2),
}
HELD_ONLY = {  # f rows are held; beyond f the theory gives no sharp break
    "caf": agg.caf(f=2),
    "bulyan": agg.bulyan(f=2),
    "nnm+krum": agg.make_rule("nnm+krum", f=2),
    "arc+trimmed_mean": agg.make_rule("arc+trimmed_mean", f=2, trim=2),
}


@pytest.mark.parametrize("name", sorted(BREAKDOWN | HELD_ONLY))
@pytest.mark.parametrize("magnitude", [1e3, 1e6, -1e6])
def test_f_colluding_rows_cannot_move_the_output(name, magnitude):
    """f identical far rows leave the output within the honest rows' norm."""
    rule = (BREAKDOWN | HELD_ONLY)[name]
    grads, mask, honest_norm = colluding(2, magnitude)
    agg.check_assumption(rule, n_accepted=11, n_byzantine=2)
    assert np.linalg.norm(np.asarray(rule.aggregate(grads, mask))) <= honest_norm


@pytest.mark.parametrize("name", sorted(BREAKDOWN))
@pytest.mark.parametrize("magnitude", [1e3, 1e6])
def test_f_plus_one_colluding_rows_move_the_output_arbitrarily(name, magnitude):
    """Canary: f + 1 identical rows drag the output in proportion to their magnitude."""
    rule = BREAKDOWN[name]
    grads, mask, _ = colluding(3, magnitude)
    with pytest.raises(ValueError, match="tolerates at most 2 Byzantine"):
        agg.check_assumption(rule, n_accepted=11, n_byzantine=3)
    assert np.linalg.norm(np.asarray(rule.aggregate(grads, mask))) >= magnitude / 11


# --------------------------------------------------------------------------- #
# jit, assumptions and limits
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("name", sorted(RULES))
def test_rule_compiles_once_for_different_masks(name):
    """The accepted count is data: two masks of the same W reuse one trace."""
    rule = RULES[name]
    traces = []

    def traced(grads, mask):
        traces.append(1)
        return rule.aggregate(grads, mask)

    jitted = jax.jit(traced)
    grads = np.random.default_rng(1).standard_normal((9, 4)).astype(np.float32)
    first = np.arange(9) != 3
    second = np.arange(9) < rule.min_accepted
    for mask in (first, second):
        close(jitted(grads, mask), np.asarray(rule.aggregate(grads, mask)), 1.0, rtol=1e-5)
    assert len(traces) == 1


@pytest.mark.parametrize("name", sorted(RULES))
def test_below_min_accepted_gives_nan(name):
    """Inside jit nothing can raise: below min_accepted every coordinate is NaN."""
    rule = RULES[name]
    grads = np.random.default_rng(2).standard_normal((12, 3)).astype(np.float32)
    mask = np.arange(12) < rule.min_accepted - 1
    assert np.all(np.isnan(np.asarray(rule.aggregate(grads, mask))))


def test_assumptions_are_stated():
    """Each rule states its requirement; check_assumption enforces it."""
    assert [(RULES[k].requirement, RULES[k].min_accepted) for k in ("mda", "caf", "bulyan")] == [
        ("2f+1", 5),
        ("2f+1", 5),
        ("4f+3", 7),
    ]
    with pytest.raises(ValueError, match=r"bulyan\(f=1\) needs at least 4f\+3 = 7"):
        agg.check_assumption(RULES["bulyan"], n_accepted=6, n_byzantine=1)
    assert agg.make_rule("monna", f=1).label == "monna(f=1, idx=median)"


def test_mda_refuses_an_exponential_search():
    """MDA's exact search is bounded: too many subsets raise a ValueError at trace time."""
    grads = np.zeros((40, 2), np.float32)
    with pytest.raises(ValueError, match=r"C\(W, f\) = 76904685 subsets for W = 40"):
        agg.mda(f=8).aggregate(grads, np.ones(40, dtype=bool))


def test_monna_index_must_name_a_worker():
    """monna(idx=i) needs a row i; a rejected reference gives NaN."""
    grads = np.ones((7, 2), np.float32)
    with pytest.raises(ValueError, match="idx = 9 names no worker"):
        agg.monna(f=1, idx=9).aggregate(grads, np.ones(7, dtype=bool))
    mask = np.arange(7) != 0
    assert np.all(np.isnan(np.asarray(agg.monna(f=1, idx=0).aggregate(grads, mask))))


# --------------------------------------------------------------------------- #
# pre-aggregators and composition
# --------------------------------------------------------------------------- #


def accepted_out(pre, grads, mask):
    out, out_mask = (np.asarray(a) for a in pre.transform(grads, mask))
    assert np.all(out[~out_mask] == 0), "rows outside the output mask must be 0"
    return out[out_mask].astype(np.float64), out_mask


@FEW
@given(data=st.data(), f=st.integers(0, 2))
def test_nnm_averages_each_rows_nearest_neighbours(data, f):
    """nnm replaces each accepted row by the mean of its n - f nearest accepted rows."""
    grads, mask, x = data.draw(cases(2 * f + 1))
    out, out_mask = accepted_out(agg.nnm(f=f), grads, mask)
    np.testing.assert_array_equal(out_mask, mask)
    close(out, np_nnm(x, f), spread(x), rtol=1e-4)


@FEW
@given(data=st.data(), f=st.integers(0, 2))
def test_arc_clips_the_k_largest_norms_to_the_next_one(data, f):
    """arc clips every row to the (k+1)-th largest norm, k = floor(2 (f/n) (n - f))."""
    grads, mask, x = data.draw(cases(2 * f + 1))
    out, _ = accepted_out(agg.arc(f=f), grads, mask)
    close(out, np_arc(x, f), spread(x), rtol=1e-5)
    k = 2 * f * (len(x) - f) // len(x)
    norms = np.sort(np.linalg.norm(out, axis=1))[::-1]
    np.testing.assert_allclose(norms[: k + 1], norms[k], rtol=1e-5)


@FEW
@given(data=st.data(), c=st.sampled_from([1e-3, 0.5, 3.0, 1e4]))
def test_clipping_bounds_norms_and_keeps_directions(data, c):
    """clipping scales rows above norm c down to c and leaves the others as they are."""
    grads, mask, x = data.draw(cases(1))
    out, _ = accepted_out(agg.clipping(c=c), grads, mask)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    close(out, x * np.minimum(1, c / norms), spread(x), rtol=1e-5)


@FEW
@given(data=st.data(), s=st.sampled_from([1, 3]), seed=st.sampled_from([0, 7]))
def test_bucketing_partitions_the_accepted_rows(data, s, seed):
    """ceil(n / s) bucket means, full buckets first, whose size-weighted sum is the total."""
    grads, mask, x = data.draw(cases(1))
    out, _ = accepted_out(agg.bucketing(s=s, seed=seed), grads, mask)
    n = len(x)
    sizes = [min(s, n - b * s) for b in range(-(-n // s))]
    assert len(out) == len(sizes)
    close((np.array(sizes)[:, None] * out).sum(0), x.sum(0), spread(x) * n, rtol=1e-5)
    if s == 1:  # a permutation of the accepted rows
        np.testing.assert_array_equal(np.sort(out, axis=0), np.sort(x, axis=0))


def test_bucketing_with_a_divisor_keeps_the_mean():
    """When s divides n, bucketing+mean is the mean, whatever the seed."""
    grads = np.random.default_rng(4).standard_normal((9, 5)).astype(np.float32)
    mask = np.arange(9) != 4
    for seed in (0, 1):
        rule = agg.make_rule("bucketing+mean", s=4, seed=seed)
        close(rule.aggregate(grads, mask), grads[mask].mean(0), 1.0, rtol=1e-5)


def test_compositions_by_name_route_parameters():
    """make_rule("pre+rule") gives each part the parameters it takes."""
    rule = agg.make_rule("nnm+krum", f=3)
    assert (rule.name, rule.label, rule.min_accepted, rule.requirement) == (
        "nnm+krum",
        "nnm+krum(f=3)",
        9,
        "2f+3",
    )
    chained = agg.make_rule("clipping+nnm+krum", c=2.0, f=1)
    assert chained.label == "clipping+nnm+krum(c=2.0, f=1)"
    bucketed = agg.make_rule("bucketing+krum", s=2, f=1)
    assert (bucketed.min_accepted, bucketed.max_byzantine(9)) == (9, 1)
    mixed = agg.compose(agg.nnm(f=2), agg.krum(f=1))
    assert mixed.label == "nnm+krum(nnm.f=2, krum.f=1)"
    assert (mixed.min_accepted, mixed.max_byzantine(5)) == (5, 1)


@pytest.mark.parametrize(
    "name,params,message",
    [
        ("nnm+krum", {"f": 1, "g": 2}, "nnm+krum has no parameter 'g'; nnm takes f; krum takes f"),
        ("bucketing+krum", {"f": 1}, "bucketing+krum needs parameter 's' (for bucketing)"),
        ("krum+nnm", {"f": 1}, "'krum' is not a pre-aggregator"),
        ("nnm+median", {"f": 1}, "'median' is not an aggregation rule"),
        ("nnm", {"f": 1}, "nnm is a pre-aggregator, not a rule; compose it with one"),
        ("arc+mean", {"f": -1}, "arc: f must be an integer >= 0, got -1"),
    ],
)
def test_bad_compositions_raise(name, params, message):
    """A parameter no part takes, a missing one, or parts in the wrong role raise ValueError."""
    with pytest.raises(ValueError, match=re.escape(message)):
        agg.make_rule(name, **params)


def test_composed_specs_build_through_the_registry():
    """nnm+krum:f=3 works wherever a rule spec does: RULES.build, RULES.check, the config."""
    from pot_jax.config import ProtocolConfig

    assert agg.RULES.build("nnm+krum:f=3", flag="--aggregation").label == "nnm+krum(f=3)"
    text = "clipping+nnm+krum: c=2, f=1"
    assert agg.RULES.check(text, flag="--aggregation") == "clipping+nnm+krum:c=2,f=1"
    assert ProtocolConfig(aggregation="nnm+krum:f=1").aggregation == "nnm+krum:f=1"
    assert agg.RULES.build("krum:f=1", flag="--aggregation").label == "krum(f=1)"
    with pytest.raises(ValueError, match=r"--aggregation nnm\+krum:f=1,g=2: .* no parameter 'g'"):
        agg.RULES.build("nnm+krum:f=1,g=2", flag="--aggregation")
    with pytest.raises(ValueError, match="a composition is PRE\\+RULE of registered names"):
        agg.RULES.check("nnm+pkg.mod:fn", flag="--aggregation")
    factory = agg.RULES.factory(ComponentSpec("nnm+krum"), flag="--aggregation")
    assert list(inspect.signature(factory).parameters) == ["f"]
