"""Tests for pot_jax.learning.aggregation.

Each rule is compared with a direct float64 numpy reference on random inputs;
rejected rows must never matter; robustness canaries show each robust rule
holding with its tolerated number of Byzantine rows while ``mean`` (and each
rule beyond its bound) is dragged away, which proves the closeness checks can
fail. Shapes come from a short list so that jit compiles stay few.
"""

from __future__ import annotations

import itertools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pot_jax.learning import aggregation as agg

# (W, P) pairs the property tests draw from: each new shape is a new compile.
SHAPES = ((1, 4), (2, 1), (3, 7), (5, 16), (8, 33), (11, 5))
GARBAGE = (np.nan, np.inf, -np.inf, 1e30, -3e38, 0.0)


# --------------------------------------------------------------------------- #
# numpy references (float64, direct formulas)
# --------------------------------------------------------------------------- #


def np_median(x):
    return np.median(x, axis=0)


def np_trimmed(x, trim):
    s = np.sort(x, axis=0)
    return s[trim : len(x) - trim].mean(axis=0)


def np_krum_scores(x, f):
    d = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    k = len(x) - f - 2
    return np.array([np.sort(np.delete(d[i], i))[:k].sum() for i in range(len(x))])


def np_geomed(x, iters, eps, init):
    z = np.median(x, axis=0) if init == "median" else x.mean(axis=0)
    for _ in range(iters):
        b = 1 / np.maximum(eps, np.linalg.norm(x - z, axis=1))
        z = (b[:, None] * x).sum(0) / b.sum()
    return z


def np_cc(x, tau, iters, center):
    v = x.mean(axis=0) if center is None else center.astype(np.float64)
    for _ in range(iters):
        diff = x - v
        d = np.linalg.norm(diff, axis=1)
        s = np.minimum(1, tau / np.maximum(d, 1e-300))
        v = v + (s[:, None] * diff).sum(0) / len(x)
    return v


# --------------------------------------------------------------------------- #
# strategies
# --------------------------------------------------------------------------- #


@st.composite
def cases(draw, min_accepted=1):
    """(grads_WxP float32 with garbage in rejected rows, mask_W, accepted rows float64)."""
    shapes = [s for s in SHAPES if s[0] >= min_accepted]
    num_workers, num_params = draw(st.sampled_from(shapes))
    n = draw(st.integers(min_accepted, num_workers))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    mask = np.zeros(num_workers, dtype=bool)
    mask[rng.permutation(num_workers)[:n]] = True
    scale = draw(st.sampled_from([1e-3, 1.0, 1e3]))
    grads = (scale * rng.standard_normal((num_workers, num_params))).astype(np.float32)
    grads[~mask] = draw(st.sampled_from(GARBAGE))
    return grads, mask, grads[mask].astype(np.float64)


def close(actual, expected, scale, rtol=1e-4):
    np.testing.assert_allclose(
        np.asarray(actual, np.float64), expected, rtol=rtol, atol=rtol * scale
    )


def spread(x):
    return float(np.max(np.abs(x))) + 1e-30


# --------------------------------------------------------------------------- #
# each rule against its reference
# --------------------------------------------------------------------------- #


@given(cases())
def test_mean_matches_numpy(case):
    """mean is the average of the accepted rows."""
    grads, mask, x = case
    close(agg.mean().aggregate(grads, mask), x.mean(0), spread(x), rtol=1e-5)


@given(cases())
def test_coordinate_median_matches_numpy(case):
    """coordinate_median is np.median over accepted rows (even n: mean of the middle two)."""
    grads, mask, x = case
    close(agg.coordinate_median().aggregate(grads, mask), np_median(x), spread(x), rtol=1e-6)


@given(cases(), st.integers(0, 2))
def test_trimmed_mean_matches_numpy(case, trim):
    """trimmed_mean drops `trim` values from each end of every coordinate."""
    grads, mask, x = case
    if len(x) <= 2 * trim:
        trim = (len(x) - 1) // 2
    rule = agg.trimmed_mean(trim=trim)
    close(rule.aggregate(grads, mask), np_trimmed(x, trim), spread(x), rtol=1e-5)


@given(cases(min_accepted=3), st.integers(0, 2))
def test_krum_scores_and_selection_match_numpy(case, f):
    """Krum scores equal the direct sums of squared distances; Krum returns,
    bit for bit, an accepted row whose exact score is minimal."""
    grads, mask, x = case
    f = min(f, (len(x) - 3) // 2)
    scores = np.asarray(agg.krum_scores(grads, mask, f=f))
    assert np.all(np.isinf(scores[~mask]))
    ref = np_krum_scores(x, f)
    close(scores[mask], ref, float(ref.max()) + 1e-30, rtol=1e-4)
    out = np.asarray(agg.krum(f=f).aggregate(grads, mask))
    hits = [i for i in range(len(x)) if np.array_equal(out, grads[mask][i])]
    assert hits, "Krum's output is not one of the accepted gradients"
    assert min(ref[i] for i in hits) <= ref.min() * (1 + 1e-4) + 1e-30


@given(cases(min_accepted=3), st.integers(0, 2), st.sampled_from([1, 3]))
def test_multi_krum_averages_the_m_lowest_scores(case, f, m):
    """Multi-Krum is the mean of the m rows with the lowest scores."""
    grads, mask, x = case
    f = min(f, (len(x) - 3) // 2)
    m = min(m, len(x) - f)
    scores = np.asarray(agg.krum_scores(grads, mask, f=f))[mask]
    chosen = np.argsort(scores, kind="stable")[:m]
    ref = np_krum_scores(x, f)
    np.testing.assert_allclose(
        np.sort(ref[chosen]), np.sort(ref)[:m], rtol=1e-4, atol=1e-4 * ref.max()
    )
    out = agg.multi_krum(f=f, m=m).aggregate(grads, mask)
    close(out, x[chosen].mean(0), spread(x), rtol=1e-5)


@given(cases(), st.sampled_from([("median", 8), ("mean", 3), ("median", 1)]))
def test_geometric_median_matches_numpy_weiszfeld(case, init_iters):
    """W-space smoothed Weiszfeld equals the direct P-space iteration."""
    grads, mask, x = case
    init, iters = init_iters
    eps = 1e-6 * spread(x)
    rule = agg.geometric_median(iters=iters, eps=eps, init=init)
    close(rule.aggregate(grads, mask), np_geomed(x, iters, eps, init), spread(x), rtol=2e-3)


@given(cases(), st.floats(0.05, 5.0), st.sampled_from([(3, False), (3, True), (1, True)]))
def test_centered_clipping_matches_numpy(case, tau_unit, iters_center):
    """W-space centered clipping equals the direct P-space iteration."""
    grads, mask, x = case
    iters, given_center = iters_center
    tau = tau_unit * spread(x)
    center = (x.mean(0) + spread(x) * 0.3).astype(np.float32) if given_center else None
    rule = agg.centered_clipping(tau=tau, iters=iters, center=center)
    close(rule.aggregate(grads, mask), np_cc(x, tau, iters, center), spread(x), rtol=2e-3)


def test_geometric_median_minimises_sum_of_distances():
    """Enough iterations reach the minimiser: no small step lowers the objective."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((9, 6)).astype(np.float32)
    z = np.asarray(agg.geometric_median(iters=200).aggregate(x, np.ones(9, bool)), np.float64)

    def objective(p):
        return np.linalg.norm(x.astype(np.float64) - p, axis=1).sum()

    for step in 1e-2 * np.concatenate([np.eye(6), -np.eye(6)]):
        assert objective(z) <= objective(z + step) + 1e-6


def test_large_worker_counts_use_layered_sort_and_matmul_sum():
    """W above the unrolling thresholds (layered network over column blocks,
    matrix-product sum) agrees too; P spans full blocks and a remainder."""
    rng = np.random.default_rng(4)
    for num_workers, num_params in ((40, 2 * 3200 + 5), (70, 1792 + 8)):
        grads = rng.standard_normal((num_workers, num_params)).astype(np.float32)
        mask = rng.random(num_workers) < 0.8
        grads[~mask] = np.nan
        x = grads[mask].astype(np.float64)
        close(agg.mean().aggregate(grads, mask), x.mean(0), 10.0, rtol=1e-5)
        close(agg.coordinate_median().aggregate(grads, mask), np_median(x), 10.0, rtol=1e-6)
        close(agg.trimmed_mean(trim=5).aggregate(grads, mask), np_trimmed(x, 5), 10.0, 1e-5)


@pytest.mark.parametrize("n", [*range(1, 13), 31, 33, 40, 64, 100])
def test_merge_sort_network_sorts(n):
    """The pruned Batcher network sorts every 0-1 input (n <= 12, which proves it
    sorts everything) and random inputs with ties (larger n)."""
    layers = agg._merge_sort_layers(n)
    if n <= 12:
        x = np.array(list(itertools.product([0, 1], repeat=n)), dtype=np.int8).T
    else:
        x = np.random.default_rng(n).integers(0, 5, size=(n, 300))
    y = x.copy()
    for layer in layers:
        for lo, hi in layer:
            y[lo], y[hi] = np.minimum(y[lo], y[hi]), np.maximum(y[lo], y[hi])
        touched = [i for pair in layer for i in pair]
        assert len(touched) == len(set(touched)), "a layer reuses an index"
    np.testing.assert_array_equal(y, np.sort(x, axis=0))


# --------------------------------------------------------------------------- #
# rejected rows never matter
# --------------------------------------------------------------------------- #


def all_rules(num_accepted=7):
    """One instance of every rule whose assumption holds for num_accepted rows."""
    return {
        "mean": agg.mean(),
        "coordinate_median": agg.coordinate_median(),
        "trimmed_mean": agg.trimmed_mean(trim=2),
        "krum": agg.krum(f=2),
        "multi_krum": agg.multi_krum(f=1, m=3),
        "geometric_median": agg.geometric_median(),
        "geometric_median_mean_init": agg.geometric_median(init="mean"),
        "centered_clipping": agg.centered_clipping(tau=2.0),
        "centered_clipping_center": agg.centered_clipping(tau=2.0, center=np.ones(13, np.float32)),
    }


RULES_7 = all_rules()


@pytest.mark.parametrize("name", sorted(RULES_7))
@given(seed=st.integers(0, 2**32 - 1), data=st.data())
def test_rejected_rows_never_influence_the_output(name, seed, data):
    """Changing rejected rows arbitrarily (NaN, Inf, huge) leaves the output bit-identical."""
    rng = np.random.default_rng(seed)
    grads = rng.standard_normal((9, 13)).astype(np.float32)
    mask = np.zeros(9, dtype=bool)
    mask[rng.permutation(9)[:7]] = True
    other = grads.copy()
    for i in np.flatnonzero(~mask):
        other[i] = data.draw(st.sampled_from(GARBAGE))
        other[i, :: data.draw(st.integers(2, 5))] = rng.standard_normal() * 1e6
    rule = RULES_7[name]
    a, b = rule.aggregate(grads, mask), rule.aggregate(other, mask)
    assert np.all(np.isfinite(np.asarray(a)))
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


# --------------------------------------------------------------------------- #
# robustness canaries
# --------------------------------------------------------------------------- #

N_ACCEPTED, N_PARAMS = 11, 20
HONEST_MU = 3.0


def attacked(n_byzantine, attack, magnitude, seed=0):
    """11 accepted rows (the last n_byzantine Byzantine) plus 2 rejected garbage rows."""
    rng = np.random.default_rng(seed)
    honest = HONEST_MU + rng.standard_normal((N_ACCEPTED - n_byzantine, N_PARAMS))
    if attack == "same_point":
        byz = np.full((n_byzantine, N_PARAMS), magnitude)
    elif attack == "random_signs":
        byz = magnitude * rng.choice([-1.0, 1.0], size=(n_byzantine, N_PARAMS))
    else:  # "one_coordinate": a single huge coordinate, the rest honest-looking
        byz = HONEST_MU + rng.standard_normal((n_byzantine, N_PARAMS))
        byz[:, 0] = magnitude
    grads = np.concatenate([honest, byz, np.full((2, N_PARAMS), np.nan)]).astype(np.float32)
    mask = np.arange(N_ACCEPTED + 2) < N_ACCEPTED
    return grads, mask, honest.mean(0)


# Each robust rule with the number of Byzantine rows it tolerates among 11.
ROBUST = {
    "coordinate_median": (agg.coordinate_median(), 5),
    "trimmed_mean": (agg.trimmed_mean(trim=3), 3),
    "krum": (agg.krum(f=4), 4),
    "multi_krum": (agg.multi_krum(f=4, m=7), 4),
    "geometric_median": (agg.geometric_median(), 5),
    "centered_clipping": (
        agg.centered_clipping(tau=5.0, center=np.full(N_PARAMS, HONEST_MU, np.float32)),
        5,
    ),
}
# Honest rows spread about sqrt(P) around their mean; 4 sqrt(P) is "close".
CLOSE = 4 * np.sqrt(N_PARAMS)


@pytest.mark.parametrize("name", sorted(ROBUST))
@pytest.mark.parametrize("attack", ["same_point", "random_signs", "one_coordinate"])
@pytest.mark.parametrize("magnitude", [1e4, 1e12])
def test_robust_rules_hold_within_their_bound(name, attack, magnitude):
    """With the tolerated number of Byzantine rows sending huge values, the
    output stays near the honest mean, while mean is dragged away."""
    rule, f = ROBUST[name]
    assert f == rule.max_byzantine(N_ACCEPTED)
    agg.check_assumption(rule, N_ACCEPTED, f)
    grads, mask, honest_mean = attacked(f, attack, magnitude)
    out = np.asarray(agg.aggregate_checked(rule, grads, mask, n_byzantine=f))
    assert np.linalg.norm(out - honest_mean) < CLOSE
    dragged = np.asarray(agg.mean().aggregate(grads, mask))
    assert np.linalg.norm(dragged - honest_mean) > 100 * CLOSE


def test_mean_is_dragged_by_one_byzantine_row():
    """The canary's closeness check can fail: one huge row moves mean far away,
    and check_assumption refuses mean with any Byzantine row."""
    grads, mask, honest_mean = attacked(1, "same_point", 1e4)
    out = np.asarray(agg.mean().aggregate(grads, mask))
    assert np.linalg.norm(out - honest_mean) > 100 * CLOSE
    with pytest.raises(ValueError, match="mean tolerates at most 0 Byzantine of 11"):
        agg.check_assumption(agg.mean(), N_ACCEPTED, 1)


@pytest.mark.parametrize(
    "rule, f",
    [
        (agg.coordinate_median(), 6),
        (agg.trimmed_mean(trim=3), 4),
        (agg.krum(f=4), 6),
        (agg.multi_krum(f=4, m=7), 6),
        (agg.geometric_median(), 6),
    ],
    ids=lambda v: getattr(v, "label", str(v)),
)
def test_rules_break_beyond_their_bound(rule, f):
    """One Byzantine row past the bound (or a Byzantine majority) breaks each
    rule, so the bounds in max_byzantine are not vacuous."""
    with pytest.raises(ValueError, match="tolerates at most"):
        agg.check_assumption(rule, N_ACCEPTED, f)
    grads, mask, honest_mean = attacked(f, "same_point", 1e4)
    out = np.asarray(rule.aggregate(grads, mask))
    assert np.linalg.norm(out - honest_mean) > 100 * CLOSE


def test_centered_clipping_from_a_dragged_center_stays_dragged():
    """Documented limitation: the default center (the mean) is itself dragged by
    huge values, and each iteration moves by at most tau."""
    grads, mask, honest_mean = attacked(3, "same_point", 1e4)
    out = np.asarray(agg.centered_clipping(tau=5.0).aggregate(grads, mask))
    assert np.linalg.norm(out - honest_mean) > 100 * CLOSE


def test_geometric_median_mean_init_converges_slowly_against_far_outliers():
    """Documented: from the mean (RFA's start) 8 iterations leave the output far
    from the honest cluster; the default median start does not."""
    grads, mask, honest_mean = attacked(5, "same_point", 1e6)
    slow = np.asarray(agg.geometric_median(init="mean").aggregate(grads, mask))
    fast = np.asarray(agg.geometric_median().aggregate(grads, mask))
    assert np.linalg.norm(slow - honest_mean) > 100 * CLOSE
    assert np.linalg.norm(fast - honest_mean) < CLOSE


# --------------------------------------------------------------------------- #
# assumptions, parameters, registry
# --------------------------------------------------------------------------- #


def test_check_assumption_messages():
    """Violations raise ValueError saying what was needed and what was given."""
    with pytest.raises(
        ValueError, match=r"^krum\(f=3\) needs at least 2f\+3 = 9 accepted gradients, got 7$"
    ):
        agg.check_assumption(agg.krum(f=3), 7, 3)
    with pytest.raises(ValueError, match=r"krum\(f=3\) tolerates at most 3 Byzantine of 9"):
        agg.check_assumption(agg.krum(f=3), 9, 4)
    with pytest.raises(ValueError, match=r"multi_krum\(f=1, m=6\) needs at least f\+m = 7"):
        agg.check_assumption(agg.multi_krum(f=1, m=6), 6, 1)
    with pytest.raises(ValueError, match=r"trimmed_mean\(trim=2\) needs at least 2\*trim\+1 = 5"):
        agg.check_assumption(agg.trimmed_mean(trim=2), 4, 0)
    with pytest.raises(ValueError, match=r"coordinate_median tolerates at most 4 Byzantine of 10"):
        agg.check_assumption(agg.coordinate_median(), 10, 5)
    with pytest.raises(ValueError, match=r"^mean needs at least 1 accepted gradient, got 0$"):
        agg.check_assumption(agg.mean(), 0, 0)
    with pytest.raises(ValueError, match="n_byzantine = 5 exceeds n_accepted = 4"):
        agg.check_assumption(agg.geometric_median(), 4, 5)
    with pytest.raises(ValueError, match=r"n_byzantine must be an integer >= 0, got -1"):
        agg.check_assumption(agg.mean(), 3, -1)
    agg.check_assumption(agg.krum(f=3), 9, 3)
    agg.check_assumption(agg.centered_clipping(tau=1.0), 9, 4)


def test_max_byzantine_values():
    """max_byzantine states each rule's tolerance for n accepted inputs."""
    table = [
        (agg.mean(), {1: 0, 10: 0}),
        (agg.coordinate_median(), {1: 0, 2: 0, 3: 1, 10: 4, 11: 5}),
        (agg.trimmed_mean(trim=2), {5: 2, 100: 2}),
        (agg.krum(f=2), {7: 2, 50: 2}),
        (agg.multi_krum(f=1, m=6), {7: 1}),
        (agg.geometric_median(), {1: 0, 9: 4, 10: 4}),
        (agg.centered_clipping(tau=1.0), {1: 0, 9: 4}),
    ]
    for rule, expected in table:
        assert {n: rule.max_byzantine(n) for n in expected} == expected, rule.label
    with pytest.raises(ValueError, match=r"krum\(f=2\) needs at least 2f\+3 = 7"):
        agg.krum(f=2).max_byzantine(6)


@pytest.mark.parametrize(
    "name, params, message",
    [
        ("trimmed_mean", {"trim": -1}, "trim must be an integer >= 0, got -1"),
        ("trimmed_mean", {"trim": 1.5}, "trim must be an integer >= 0, got 1.5"),
        ("trimmed_mean", {"trim": True}, "trim must be an integer >= 0, got True"),
        ("krum", {"f": -2}, "f must be an integer >= 0, got -2"),
        ("multi_krum", {"f": 1, "m": 0}, "m must be an integer >= 1, got 0"),
        ("multi_krum", {"f": -1, "m": 2}, "f must be an integer >= 0, got -1"),
        ("centered_clipping", {"tau": 0.0}, "tau must be a finite number > 0, got 0.0"),
        ("centered_clipping", {"tau": -1}, "tau must be a finite number > 0, got -1"),
        ("centered_clipping", {"tau": float("inf")}, "tau must be a finite number > 0, got inf"),
        ("centered_clipping", {"tau": 1.0, "iters": 0}, "iters must be an integer >= 1, got 0"),
        ("centered_clipping", {"tau": 1.0, "center": np.ones((2, 2))}, "must be a 1-D floating"),
        ("centered_clipping", {"tau": 1.0, "center": np.array([np.nan])}, "must be finite"),
        ("geometric_median", {"eps": 0.0}, "eps must be a finite number > 0, got 0.0"),
        ("geometric_median", {"iters": -3}, "iters must be an integer >= 1, got -3"),
        ("geometric_median", {"init": "zero"}, "init must be 'median' or 'mean', got 'zero'"),
        ("krum", {}, "krum needs parameter 'f'; it takes f"),
        ("krum", {"f": 1, "trim": 2}, "krum has no parameter 'trim'; it takes f"),
        ("mean", {"f": 1}, "mean has no parameter 'f'; it takes no parameters"),
        (
            "median",
            {},
            "unknown aggregation rule 'median'; expected one of mean, coordinate_median",
        ),
    ],
)
def test_invalid_parameters_raise(name, params, message):
    """Unknown names and invalid parameters raise ValueError naming field, value and expectation."""
    with pytest.raises(ValueError, match=re.escape(message)):
        agg.make_rule(name, **params)


def test_make_rule_builds_every_registered_rule():
    """make_rule covers RULE_NAMES, and labels carry the parameters."""
    params = {"trimmed_mean": {"trim": 1}, "krum": {"f": 1}, "multi_krum": {"f": 1, "m": 2}}
    params["centered_clipping"] = {"tau": 1.5}
    originals = {
        "mean": "mean",
        "coordinate_median": "coordinate_median",
        "trimmed_mean": "trimmed_mean(trim=1)",
        "krum": "krum(f=1)",
        "multi_krum": "multi_krum(f=1, m=2)",
        "geometric_median": "geometric_median(iters=8, eps=1e-06, init=median)",
        "centered_clipping": "centered_clipping(tau=1.5, iters=3, center=mean)",
    }
    for name in agg.RULE_NAMES:
        try:
            label = agg.make_rule(name, **params.get(name, {})).label
        except ValueError as err:  # the new rules take f
            assert "needs parameter 'f'" in str(err)
            label = agg.make_rule(name, f=1).label
        if name in originals:
            assert label == originals[name]
        else:  # the ByzFL rules (tests/learning/test_robust_rules.py checks them in depth)
            assert label.startswith(name)
    assert set(originals) <= set(agg.RULE_NAMES)


# --------------------------------------------------------------------------- #
# aggregate_checked and jit
# --------------------------------------------------------------------------- #


def test_aggregate_checked_validates_inputs():
    """Host-side validation names the problem; NaN in a rejected row is fine."""
    grads = np.arange(20, dtype=np.float32).reshape(5, 4)
    mask = np.array([True, True, True, False, True])
    rule = agg.coordinate_median()
    with pytest.raises(ValueError, match=r"must be 2-D .* got shape \(20,\)"):
        agg.aggregate_checked(rule, grads.ravel(), mask, n_byzantine=0)
    with pytest.raises(ValueError, match=r"mask_W must have shape \(5,\) .* got \(4,\)"):
        agg.aggregate_checked(rule, grads, mask[:4], n_byzantine=0)
    with pytest.raises(ValueError, match="floating dtype, got int32"):
        agg.aggregate_checked(rule, grads.astype(np.int32), mask, n_byzantine=0)
    with pytest.raises(ValueError, match="bool array, got dtype int32"):
        agg.aggregate_checked(rule, grads, mask.astype(np.int32), n_byzantine=0)
    with pytest.raises(ValueError, match="no accepted gradients: mask_W rejects all 5 workers"):
        agg.aggregate_checked(rule, grads, np.zeros(5, bool), n_byzantine=0)
    with pytest.raises(ValueError, match="tolerates at most 1 Byzantine of 4"):
        agg.aggregate_checked(rule, grads, mask, n_byzantine=2)
    bad = grads.copy()
    bad[3] = np.nan  # rejected: fine
    bad[4, 2] = np.inf
    bad[1, 0] = np.nan
    with pytest.raises(ValueError, match="accepted worker 1 has NaN or Inf entries"):
        agg.aggregate_checked(rule, bad, mask, n_byzantine=0)
    bad[1, 0] = 0
    with pytest.raises(ValueError, match="accepted worker 4 has NaN or Inf"):
        agg.aggregate_checked(rule, bad, mask, n_byzantine=0)
    bad[4, 2] = 3e20
    with pytest.raises(ValueError, match="worker 4 has a squared norm that overflows float32"):
        agg.aggregate_checked(rule, bad, mask, n_byzantine=0)
    bad[4, 2] = 1.0
    out = agg.aggregate_checked(rule, bad, mask, n_byzantine=1)
    np.testing.assert_array_equal(np.asarray(out), np.median(bad[mask], axis=0))


def test_too_few_accepted_rows_give_nan_inside_jit():
    """Inside jit nothing can raise: below min_accepted every coordinate is NaN."""
    grads = np.ones((6, 3), np.float32)
    for rule, n in [
        (agg.mean(), 0),
        (agg.coordinate_median(), 0),
        (agg.trimmed_mean(trim=1), 2),
        (agg.krum(f=1), 4),
        (agg.multi_krum(f=0, m=4), 3),
        (agg.geometric_median(), 0),
        (agg.centered_clipping(tau=1.0), 0),
    ]:
        mask = np.arange(6) < n
        assert np.all(np.isnan(np.asarray(rule.aggregate(grads, mask)))), rule.label
        mask = np.arange(6) < rule.min_accepted
        assert np.all(np.isfinite(np.asarray(rule.aggregate(grads, mask)))), rule.label


@pytest.mark.parametrize("name", sorted(RULES_7))
def test_rules_work_under_jit_with_static_parameters(name):
    """rule.aggregate traces under an outer jit (mask traced, rule static) and
    agrees with the direct call."""
    rule = RULES_7[name]
    rng = np.random.default_rng(5)
    grads = rng.standard_normal((9, 13)).astype(np.float32)
    mask = np.arange(9) % 4 != 1
    direct = np.asarray(rule.aggregate(grads, mask))

    @jax.jit
    def jitted(g, m):
        return rule.aggregate(g, m)

    apply = jax.jit(lambda r, g, m: r.aggregate(g, m), static_argnums=0)
    np.testing.assert_allclose(np.asarray(jitted(grads, mask)), direct, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.asarray(apply(rule, grads, mask)), direct, rtol=1e-6, atol=1e-6)
    stacked = jax.vmap(rule.aggregate, in_axes=(None, 0))(grads, jnp.stack([mask, mask]))
    np.testing.assert_allclose(np.asarray(stacked[1]), direct, rtol=1e-6, atol=1e-6)


def test_krum_ties_go_to_the_lowest_index():
    """Rows 2 (at 1) and 3 (at -1) have equal scores; Krum takes the lower index."""
    grads = np.array([[-1.0], [-10.0], [1.0], [-1.0], [10.0]], np.float32)
    mask = np.array([False, True, True, True, True])
    scores = np.asarray(agg.krum_scores(grads, mask, f=0))
    assert scores[2] == scores[3] == 85.0
    out = np.asarray(agg.krum(f=0).aggregate(grads, mask))
    np.testing.assert_array_equal(out, grads[2])


def test_low_precision_inputs_keep_their_dtype():
    """bfloat16 gradients aggregate in float32 and come back as bfloat16."""
    grads = jnp.asarray(np.random.default_rng(6).standard_normal((5, 8)), jnp.bfloat16)
    mask = jnp.ones(5, bool)
    for rule in (agg.mean(), agg.coordinate_median(), agg.krum(f=1), agg.geometric_median()):
        out = rule.aggregate(grads, mask)
        assert out.dtype == jnp.bfloat16 and out.shape == (8,)
        assert np.all(np.isfinite(np.asarray(out, np.float32)))
