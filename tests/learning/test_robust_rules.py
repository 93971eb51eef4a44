"""Property tests for the ByzFL rules (mda, monna, meamed, caf) and Bulyan.

Each rule is compared with a direct float64 numpy reference; permuting the
accepted rows, filling rejected rows with NaN/Inf, or changing which mask a
jitted rule sees must not matter; breakdown canaries show f colluding rows
held within a bound while f+1 move the output arbitrarily far, which proves the
bound check can fail. Shapes come from a short list so that compiles stay few.
"""

from __future__ import annotations

import itertools

import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pot_jax.learning import aggregation as agg

# (W, P) pairs the property tests draw from: each new shape is a new compile.
SHAPES = ((7, 3), (9, 8), (12, 5))
GARBAGE = (np.nan, np.inf, -np.inf, 1e30, -3e38)
FEW = settings(max_examples=15)

RULES = {
    "mda": agg.mda(f=2),
    "monna": agg.monna(f=2),
    "monna_idx": agg.monna(f=2, idx=0),
    "meamed": agg.meamed(f=2),
    "caf": agg.caf(f=2),
    "bulyan": agg.bulyan(f=1),
}
DETERMINISTIC_SYMMETRIC = sorted(set(RULES) - {"monna_idx"})


# --------------------------------------------------------------------------- #
# numpy references (float64, straight from the papers)
# --------------------------------------------------------------------------- #


def np_meamed(x, f):
    med = np.median(x, axis=0)
    k = len(x) - f
    out = []
    for j in range(x.shape[1]):
        nearest = np.argsort(np.abs(x[:, j] - med[j]), kind="stable")[:k]
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
    return np_bulyan(x, 1)


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


@pytest.mark.parametrize("name", sorted(RULES))
@FEW
@given(data=st.data())
def test_rule_matches_its_paper_definition(name, data):
    """Each rule equals a direct float64 transcription of its paper's definition."""
    rule = RULES[name]
    grads, mask, x = data.draw(cases(rule.min_accepted, keep_first=name == "monna_idx"))
    close(rule.aggregate(grads, mask), reference(name, x), spread(x), rtol=2e-4)


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
