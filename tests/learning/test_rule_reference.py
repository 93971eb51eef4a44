"""Every JAX rule and pre-aggregator against its plain NumPy reference.

``pot_jax.learning.reference`` is written from the papers, in float64 on the
accepted rows only; here each jitted rule must equal it to float tolerance on
random inputs (several seeds, W = 7 and 16, rejected rows holding NaN or Inf)
and exactly where the papers leave ties open (small-integer inputs), and give
NaN where the reference says the paper's minimum is not met. A canary shows
the tie check can fail. The aggregation benchmark runs at a tiny size.
"""

from __future__ import annotations

import functools
import itertools
import json

import jax
import numpy as np
import pytest

from pot_jax.bench import aggregation as bench
from pot_jax.learning import aggregation as agg
from pot_jax.learning import reference

GARBAGE = (np.nan, np.inf, -np.inf, 1e30)
SEEDS = range(4)


def specs(num_workers: int) -> list[tuple[str, dict]]:
    """Each rule and pre-aggregator with f = 1 (W = 7) or 3 (W = 16)."""
    f = 1 if num_workers == 7 else 3
    return [
        ("mean", {}),
        ("coordinate_median", {}),
        ("trimmed_mean", {"trim": f}),
        ("krum", {"f": f}),
        ("multi_krum", {"f": f, "m": num_workers - 2 * f - 1}),
        ("geometric_median", {}),
        ("geometric_median", {"init": "mean", "iters": 4}),
        ("centered_clipping", {"tau": 1.0}),
        ("mda", {"f": f}),
        *([("mda", {"f": 2})] if num_workers == 7 else []),  # full ties need f = 2 at W = 7
        ("monna", {"f": f}),
        ("monna", {"f": f, "idx": 0}),
        ("meamed", {"f": f}),
        ("caf", {"f": f}),
        ("bulyan", {"f": 1 if num_workers == 7 else 3}),
        ("nnm+mean", {"f": f}),
        ("bucketing+mean", {"s": 2, "seed": 3}),
        ("clipping+mean", {"c": 1.0}),
        ("arc+mean", {"f": f}),
        ("nnm+krum", {"f": f}),
    ]


CASES = [
    pytest.param(w, name, params, id=f"W{w}-{name}-{','.join(map(str, params.values()))}")
    for w in (7, 16)
    for name, params in specs(w)
]
# Continuous rules: ties between inputs do not change which inputs they use.
# nnm+krum: Krum scores averaged rows (sums of fifths, say), which float32 and
# float64 round differently, so a tie in exact arithmetic is no tie in either.
NO_TIE_CHOICE = {"geometric_median", "centered_clipping", "caf", "nnm+krum"}


def jitted(name, params):
    return _jitted(name, tuple(sorted(params.items())))


@functools.cache
def _jitted(name, params):
    return jax.jit(agg.make_rule(name, **dict(params)).aggregate)


def close(actual, expected, scale, rtol=2e-4):
    np.testing.assert_allclose(
        np.asarray(actual, np.float64), expected, rtol=rtol, atol=rtol * scale
    )


def random_case(num_workers, seed, minimum):
    """float32 rows, n = max(minimum, W - seed) accepted, garbage in the rejected ones."""
    rng = np.random.default_rng(seed)
    num_params = 6 if num_workers == 7 else 10
    scale = (1.0, 1e-2, 1e2, 1.0)[seed % 4]
    grads = (scale * rng.standard_normal((num_workers, num_params))).astype(np.float32)
    mask = np.zeros(num_workers, dtype=bool)
    mask[rng.permutation(num_workers)[: max(minimum, num_workers - seed)]] = True
    if seed % 2:
        mask[0] = True  # monna(idx=0) trusts worker 0; the other seeds may reject it
    for k, i in enumerate(np.flatnonzero(~mask)):
        grads[i] = GARBAGE[(seed + k) % len(GARBAGE)]
    return grads, mask


def integer_case(num_workers, seed, minimum):
    """Values in {-1, 0, 1} (W = 7, P = 3) or {-2, ..., 2} (W = 16): exact ties everywhere."""
    rng = np.random.default_rng(1000 + seed)
    num_params, top = (3, 1) if num_workers == 7 else (10, 2)
    grads = rng.integers(-top, top + 1, (num_workers, num_params)).astype(np.float32)
    mask = np.ones(num_workers, dtype=bool)
    if minimum < num_workers:
        mask[rng.integers(1, num_workers)] = False
        grads[~mask] = np.nan
    return grads, mask


def test_every_rule_and_pre_aggregator_has_a_reference():
    """The reference covers the registry, and the tests cover the reference."""
    assert set(reference.RULES) == set(agg.RULE_NAMES)
    assert set(reference.PRE_AGGREGATORS) == set(agg.PRE_AGGREGATOR_NAMES)
    tested = {part for w in (7, 16) for name, _ in specs(w) for part in name.split("+")}
    assert tested == set(agg.RULE_NAMES) | set(agg.PRE_AGGREGATOR_NAMES)


@pytest.mark.parametrize("num_workers,name,params", CASES)
def test_rule_equals_its_numpy_reference(num_workers, name, params):
    """On random rows, with NaN/Inf in rejected ones, the jitted rule is the reference."""
    aggregate = jitted(name, params)
    minimum = agg.make_rule(name, **params).min_accepted
    for seed in SEEDS:
        grads, mask = random_case(num_workers, seed, minimum)
        expected = reference.aggregate(name, grads, mask, **params)
        close(aggregate(grads, mask), expected, float(np.max(np.abs(grads[mask]))))


@pytest.mark.parametrize(
    "num_workers,name,params", [c for c in CASES if c.values[1] not in NO_TIE_CHOICE]
)
def test_ties_are_broken_as_the_reference_says(num_workers, name, params):
    """Small-integer rows tie in distances, scores, diameters and ranks; the choices agree."""
    aggregate = jitted(name, params)
    minimum = agg.make_rule(name, **params).min_accepted
    for seed in range(12):
        grads, mask = integer_case(num_workers, seed, minimum)
        expected = reference.aggregate(name, grads, mask, **params)
        close(aggregate(grads, mask), expected, 2.0, rtol=1e-5)


def test_tie_check_can_fail():
    """Canary: the other tie rule (meamed keeping larger values, MDA keeping the first
    subset in kept-set order) disagrees with the rule on some integer case."""

    def mda_first_kept(x, f):
        dist = reference._sq_distances(x)
        keys = [
            (dist[np.ix_(kept, kept)].max(), dist[np.ix_(kept, kept)].sum(), kept)
            for kept in itertools.combinations(range(len(x)), len(x) - f)
        ]
        return x[list(min(keys, key=lambda k: k[:2])[2])].mean(axis=0)

    meamed, mda = jitted("meamed", {"f": 1}), jitted("mda", {"f": 2})
    meamed_differs = mda_differs = False
    for seed in range(12):
        grads, mask = integer_case(7, seed, 7)
        x = grads[mask].astype(np.float64)
        larger = -reference.meamed(-x, f=1)
        meamed_differs |= not np.allclose(np.asarray(meamed(grads, mask)), larger, atol=1e-5)
        other = mda_first_kept(x, 2)
        mda_differs |= not np.allclose(np.asarray(mda(grads, mask)), other, atol=1e-5)
    assert meamed_differs and mda_differs


@pytest.mark.parametrize("num_workers,name,params", [c for c in CASES if c.values[0] == 16])
def test_below_the_papers_minimum_both_give_nan(num_workers, name, params):
    """With one row fewer than the paper needs, the rule and the reference are all NaN."""
    minimum = agg.make_rule(name, **params).min_accepted
    grads, _ = random_case(num_workers, 0, minimum)
    mask = np.arange(num_workers) < minimum - 1
    assert np.all(np.isnan(reference.aggregate(name, grads, mask, **params)))
    assert np.all(np.isnan(np.asarray(jitted(name, params)(grads, mask))))


def test_reference_rejects_a_parameter_no_part_takes():
    """Parameters route as in make_rule; one that no part takes is an error."""
    grads, mask = random_case(7, 0, 7)
    with pytest.raises(ValueError, match=r"nnm\+krum takes no parameter \['m'\]"):
        reference.aggregate("nnm+krum", grads, mask, f=1, m=2)


# --------------------------------------------------------------------------- #
# the benchmark, at a tiny size (no timing assertions)
# --------------------------------------------------------------------------- #


@pytest.fixture(scope="module")
def tiny_result():
    return bench.measure_aggregation(
        workers=(8,),
        params=100,
        repeats=1,
        numpy_repeats=1,
        min_sample_ms=0,
        mda_grid=((8, 2), (64, 9)),
    )


def test_benchmark_emits_every_rule_and_pre_aggregator(tiny_result):
    """Each rule and each pre-aggregator (with the mean) has a row with both timings."""
    rows = {r["rule"]: r for r in tiny_result["results"]}
    assert set(agg.RULE_NAMES) <= set(rows)
    assert {f"{pre}+mean" for pre in agg.PRE_AGGREGATOR_NAMES} <= set(rows)
    for row in rows.values():
        assert row["W"] == 8 and row["P"] == 100 and row["cost"]
        assert row["jax_ms"] > 0 and row["numpy_ms"] > 0 and row["ratio_to_mean"] > 0
        assert row["rel_diff"] < 1e-4, row  # at full size too, the rule is its reference
    assert rows["mean"]["ratio_to_mean"] == 1.0
    assert rows["bulyan"]["f"] == 1  # W // 4 = 2 is too many for Bulyan with 8 rows
    for key in ("jax_version", "device", "numpy_version", "cpu_count", "settings"):
        assert key in tiny_result
    json.dumps(tiny_result)


def test_benchmark_reports_an_infeasible_mda_search_as_skipped(tiny_result):
    """MDA past its exact-search bound is listed as skipped with the reason."""
    feasible, infeasible = tiny_result["mda_cost"]
    assert (feasible["subsets"], feasible["jax_ms"] > 0) == (28, True)
    assert "C(W, f) = 27540584512 subsets" in infeasible["skipped"]


def test_benchmark_refuses_to_overwrite_a_result(tmp_path, capsys):
    """An existing result file is kept unless --force; one line says what is there."""
    out = tmp_path / "aggregation.json"
    out.write_text(
        json.dumps(
            {"utc_time": "then", "git_commit": "abc", "settings": {"workers": [16], "params": 5}}
        )
    )
    assert bench.main(["--out", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert "holds the aggregation benchmark of then" in err and "--force" in err
