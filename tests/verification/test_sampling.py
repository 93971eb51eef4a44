"""VRF sampling: selections are verifiable, forgeries fail, detection matches the formula.

The written argument this checks: proofs/detection.md.
"""

import math

import numpy as np
import pytest
from scipy import stats
from tiny_round import N_VALIDATORS, VALIDATOR_PKS, VALIDATOR_SKS, make_ctx

from pot_jax.verification import (
    Selection,
    detection_probability,
    full_recompute,
    make_scheme,
    robust_only,
    spot_check,
    validator_fraction,
)

# Binomial tests reject at this p-value: a correct sampler fails with
# probability 1e-4 on a random seed (the seeds here are fixed).
P_THRESHOLD = 1e-4


def _ctx(round_: int, n_workers: int = 12):
    return make_ctx(round_=round_, n_workers=n_workers, worker_public_keys=None)


def test_selection_is_verifiable_and_forgeries_fail():
    scheme = spot_check(0.75)
    ctx, later = _ctx(4), _ctx(5)
    sel = [scheme.select(ctx, v, N_VALIDATORS, VALIDATOR_SKS[v]) for v in range(N_VALIDATORS)]
    for v, s in enumerate(sel):
        # 0.75 / 4 * 12 = 2.25 workers on average: two or three.
        assert len(s.workers) in (math.floor(2.25), math.ceil(2.25))
        assert scheme.verify_selection(ctx, v, N_VALIDATORS, VALIDATOR_PKS[v], s)
    s0, s1 = sel[0], sel[1]
    spare = next(w for w in range(12) if w not in s0.workers)
    forgeries = {
        "swapped worker": s0._replace(workers=tuple(sorted((*s0.workers[1:], spare)))),
        "dropped worker": s0._replace(workers=s0.workers[1:]),
        "unsorted": s0._replace(workers=s0.workers[::-1]),
        "other validator's proof": s1._replace(validator=0),
        "output not the proof's": s0._replace(vrf_output=s1.vrf_output),
        "truncated proof": s0._replace(vrf_proof=s0.vrf_proof[:-1]),
        "no proof": Selection(0, s0.workers),
        "list of workers": s0._replace(workers=list(s0.workers)),
        "str output": s0._replace(vrf_output="output"),
        "bool validator": s0._replace(validator=False),
    }
    for name, forged in forgeries.items():
        assert not scheme.verify_selection(ctx, 0, N_VALIDATORS, VALIDATOR_PKS[0], forged), name
    assert not scheme.verify_selection(later, 0, N_VALIDATORS, VALIDATOR_PKS[0], s0)
    assert not scheme.verify_selection(ctx, 1, N_VALIDATORS, VALIDATOR_PKS[1], s0)
    assert not scheme.verify_selection(ctx, 0, N_VALIDATORS, VALIDATOR_PKS[1], s0)
    # Claiming a smaller committee would mean a bigger sample: 0.75 / 2 * 12 = 4.5 workers.
    assert not scheme.verify_selection(ctx, 0, 2, VALIDATOR_PKS[0], s0)
    for garbage in (None, (), "selection", (0, (1,), b"", b"")):
        assert not scheme.verify_selection(ctx, 0, N_VALIDATORS, VALIDATOR_PKS[0], garbage)
    for pk in (None, b"", "key", 12):
        assert not scheme.verify_selection(ctx, 0, N_VALIDATORS, pk, s0)
    assert not scheme.verify_selection(
        ctx, 7, N_VALIDATORS, VALIDATOR_PKS[0], s0._replace(validator=7)
    )


def test_selection_depends_on_key_and_round_only():
    scheme = spot_check(0.5)
    a = scheme.select(_ctx(4), 0, N_VALIDATORS, VALIDATOR_SKS[0])
    assert a == scheme.select(_ctx(4), 0, N_VALIDATORS, VALIDATOR_SKS[0])
    assert a.vrf_output != scheme.select(_ctx(5), 0, N_VALIDATORS, VALIDATOR_SKS[0]).vrf_output
    with pytest.raises(ValueError, match="validator_index"):
        scheme.select(_ctx(4), N_VALIDATORS, N_VALIDATORS, VALIDATOR_SKS[0])


def test_full_and_robust_selections():
    ctx = _ctx(1)
    full, robust = full_recompute(), robust_only("coordinate_median")
    s = full.select(ctx, 2, N_VALIDATORS, VALIDATOR_SKS[2])
    assert s == Selection(2, tuple(range(12)))
    assert full.verify_selection(ctx, 2, N_VALIDATORS, VALIDATOR_PKS[2], s)
    assert not full.verify_selection(
        ctx, 2, N_VALIDATORS, VALIDATOR_PKS[2], s._replace(workers=(0,))
    )
    r = robust.select(ctx, 1, N_VALIDATORS, VALIDATOR_SKS[1])
    assert r == Selection(1, ())
    assert robust.verify_selection(ctx, 1, N_VALIDATORS, VALIDATOR_PKS[1], r)
    assert not robust.verify_selection(
        ctx, 1, N_VALIDATORS, VALIDATOR_PKS[1], s._replace(validator=1)
    )
    assert not robust.verify_selection(ctx, 1, N_VALIDATORS, VALIDATOR_PKS[1], None)


def test_recomputation_cost():
    assert spot_check(0.1).recomputations(100, 4) == 10  # expected: 4 x 2.5
    assert spot_check(0.1).recomputations(16, 4) == pytest.approx(1.6)  # not 4 x ceil(0.4)
    assert spot_check(0.1).recomputations(1000, 4) == 100
    assert full_recompute().recomputations(100, 4) == 400
    assert robust_only("mean").recomputations(100, 4) == 0
    assert validator_fraction(0.1, 3) * 30 == 1  # exact: no float round-up to 2


def test_committee_recomputes_the_budget_on_average():
    """p = 0.1 over W = 16 and 4 validators: 1.6 recomputations a round, not 4 x ceil(0.4)."""
    scheme, rounds = spot_check(0.1), 400
    total = sum(
        len(scheme.select(_ctx(r, 16), v, N_VALIDATORS, VALIDATOR_SKS[v]).workers)
        for r in range(rounds)
        for v in range(N_VALIDATORS)
    )
    test = stats.binomtest(total, rounds * N_VALIDATORS, 0.4)  # each validator: 0 or 1, mean 0.4
    assert test.pvalue > P_THRESHOLD, total / rounds


def test_detection_probability_closed_form():
    assert detection_probability(0.2, 4, 3) == pytest.approx(1 - 0.95**3)
    assert detection_probability(0.2, 4, 0) == 0.0
    assert detection_probability(1.0, 1, 1) == 1.0
    assert detection_probability(0.2, 4, 3, cheat_rate=0.5, rounds=10) == pytest.approx(
        1 - (1 - 0.5 * (1 - 0.95**3)) ** 10
    )
    # Randomised rounding keeps each worker's inclusion probability at exactly p / n_v.
    assert detection_probability(0.2, 4, 3, n_workers=30) == pytest.approx(1 - 0.95**3)
    for kwargs, field in (
        (dict(budget=0.0, n_validators=4, honest=1), "budget"),
        (dict(budget=1.5, n_validators=4, honest=1), "budget"),
        (dict(budget=0.1, n_validators=0, honest=0), "n_validators"),
        (dict(budget=0.1, n_validators=4, honest=5), "honest"),
        (dict(budget=0.1, n_validators=4, honest=2, cheat_rate=1.5), "cheat_rate"),
        (dict(budget=0.1, n_validators=4, honest=2, rounds=0), "rounds"),
    ):
        with pytest.raises(ValueError, match=field):
            detection_probability(**kwargs)


def test_measured_detection_matches_detection_probability():
    """Over many rounds of real VRF sampling, detection frequencies match the formula.

    W = 20 workers, 4 validators of which 3 are honest, budget 0.3: each
    validator samples 0.075 * 20 = 1.5 workers on average (one or two), so a
    given worker is caught in a round with probability 1 - 0.925^3 = 0.209. Checked for one
    fixed worker (independent rounds, exact binomial test), pooled over all
    workers, and for a worker that cheats in 40% of rounds, over windows of
    5 rounds.
    """
    n_workers, budget, honest, rounds = 20, 0.3, 3, 800
    scheme = spot_check(budget)
    caught = np.zeros((rounds, n_workers), bool)
    for r in range(rounds):
        ctx = _ctx(r, n_workers)
        for v in range(honest):
            caught[r, list(scheme.select(ctx, v, N_VALIDATORS, VALIDATOR_SKS[v]).workers)] = True
    p = detection_probability(budget, N_VALIDATORS, honest, n_workers=n_workers)
    assert p == pytest.approx(1 - 0.925**3)
    fixed = stats.binomtest(int(caught[:, 0].sum()), rounds, p)
    assert fixed.pvalue > P_THRESHOLD, (caught[:, 0].mean(), p)
    # Pooled over workers: within a round the indicators are negatively
    # correlated (samples without replacement), so the binomial test is conservative.
    pooled = stats.binomtest(int(caught.sum()), caught.size, p)
    assert pooled.pvalue > P_THRESHOLD, (caught.mean(), p)

    cheat_rate, window = 0.4, 5
    cheats = np.random.default_rng(0).random(caught.shape) < cheat_rate
    per_window = (caught & cheats).reshape(rounds // window, window, n_workers).any(axis=1)
    p_window = detection_probability(
        budget, N_VALIDATORS, honest, cheat_rate, window, n_workers=n_workers
    )
    windowed = stats.binomtest(int(per_window.sum()), per_window.size, p_window)
    assert windowed.pvalue > P_THRESHOLD, (per_window.mean(), p_window)
    print(
        f"measured per-round detection {caught[:, 0].mean():.4f} (worker 0), "
        f"{caught.mean():.4f} (pooled) vs {p:.4f}; cheat 40% over 5 rounds "
        f"{per_window.mean():.4f} vs {p_window:.4f}"
    )


def test_scheme_factories_validate_their_arguments():
    for kwargs, fragment in (
        (dict(budget=0.0), "budget"),
        (dict(budget=float("nan")), "budget"),
        (dict(budget="0.1"), "budget"),
        (dict(mode="fuzzy"), "mode"),
        (dict(mode="tolerance"), "threshold"),
        (dict(mode="tolerance", threshold=-1.0), "threshold"),
        (dict(mode="bitwise", threshold=1e-6), "bitwise mode takes no threshold"),
        (dict(aggregation="median"), "aggregation"),
    ):
        with pytest.raises(ValueError, match=fragment):
            spot_check(**kwargs)
    with pytest.raises(ValueError, match="unknown verification scheme 'spot'"):
        make_scheme("spot")
    with pytest.raises(ValueError, match="has no parameter 'p'"):
        make_scheme("spot_check", p=0.1)
    with pytest.raises(ValueError, match="rule_name"):
        make_scheme("robust_only")
    with pytest.raises(ValueError, match="krum needs parameter 'f'"):
        make_scheme("robust_only", rule_name="krum")
    assert make_scheme("robust_only", rule_name="krum", f=2).aggregation.label == "krum(f=2)"
    assert make_scheme("spot_check", budget=0.2).label == "spot_check(budget=0.2, mode=bitwise)"
    tol = spot_check(0.2, mode="tolerance", threshold=1e-5)
    assert (tol.mode, tol.threshold) == ("tolerance", 1e-5)
    assert robust_only("coordinate_median").mode == "none"
