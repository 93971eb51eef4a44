"""Every registered attack against every shipped scheme, on a tiny MLP round.

Properties: no exception escapes a scheme; malformed gradients are rejected by
the cheap checks with a reason naming the worker; well-formed wrong gradients
are rejected with a fraud proof that ``verify_fraud_proof`` accepts whenever
they are recomputed (always under ``full_recompute``), and accepted otherwise;
honest gradients are never rejected (bitwise mode with canonical gradients,
tolerance mode with the vmapped path's gradients and a calibrated threshold).
Per attack: it sends something other than its gradient, a spot check that
recomputes everything catches it (or it is honest whenever it may be
recomputed), what it sends is finite or the cheap checks reject it, and the
same seed gives the same rows. ``MATRIX`` must name every registered attack.
"""

import numpy as np
import pytest
from tiny_round import (
    LEARNER,
    N_VALIDATORS,
    NORM_BOUND,
    VALIDATOR_PKS,
    VALIDATOR_SKS,
    W,
    accepted_mask,
    attacked_round,
    by_worker,
    honest_grads,
    honest_submission,
    is_honest_output,
    make_ctx,
    round_batches,
    selections,
)

from pot_jax.attacks import ATTACKS as REGISTRY
from pot_jax.attacks import attack_defaults, build_attack, choose_byzantine
from pot_jax.learning import aggregate_checked
from pot_jax.registry import parse_spec
from pot_jax.verification import (
    calibrate_threshold,
    combine_verdicts,
    full_recompute,
    robust_only,
    spot_check,
    verify_fraud_proof,
)

BYZANTINE = choose_byzantine(W, 0.25, seed=7)

# Matrix entry -> attack spec, built as a run builds it (``build_attack``: an attack
# that searches against a rule targets the scheme's aggregation unless it names one).
# ``{threshold}`` is the calibrated tolerance threshold.
MATRIX = {
    "honest": "honest",
    "sign_flip": "sign_flip",
    "scaled": "scaled:factor=10.0",
    "scaled_down": "scaled:factor=0.5",
    "gaussian": "gaussian:sigma=1.0",
    "gaussian_around_honest": "gaussian:sigma=0.01,around_honest=true",
    "alie": "alie",
    "ipm": "ipm:epsilon=0.1",
    "label_flip": "label_flip",
    "lazy": "lazy",
    "free_rider_zero": "free_rider:mode=zero",
    "free_rider_copy": "free_rider:mode=copy",
    "garbage": "garbage",
    **{f"garbage_{k}": f"garbage:kind={k}" for k in ("bytes", "int32", "list", "none")},
    "nan": "nan_inf:kind=nan",
    "nan_inf_all_inf": "nan_inf:kind=inf,fraction=1.0",
    "wrong_shape": "wrong_shape",
    "wrong_shape_matrix": "wrong_shape:kind=matrix",
    "cheat_sometimes": "cheat_sometimes:attack=sign_flip,q=0.5",
    "cheat_sometimes_garbage": "cheat_sometimes:attack=garbage,q=0.5",
    "cheat_sometimes_optimal_ipm": "cheat_sometimes:attack=optimal_ipm,q=1.0",
    # ByzFL's set (pot_jax.attacks.robust) and beyond it
    "inf": "inf",
    "fall_of_empires": "fall_of_empires",
    "mimic": "mimic",
    "optimal_ipm": "optimal_ipm",
    "optimal_alie": "optimal_alie",
    "optimal_alie_named_rule": "optimal_alie:rule=krum:f=3",
    "min_max": "min_max",
    "min_sum": "min_sum:direction=std",
    "fang_krum": "fang_krum",
    "fang_trimmed_mean": "fang_trimmed_mean",
    "drift": "drift:threshold={threshold}",
    # pot_jax.attacks.sampling: the oracle also gets the validators' leaked keys
    "sample_aware_blind": "sample_aware:inner=min_max,knows=blind",
    "sample_aware_oracle": "sample_aware:inner=optimal_alie,knows=oracle",
}


def _attack(attack_id, scheme, threshold, *, n_validators=N_VALIDATORS):
    """The matrix entry built for a run of ``scheme`` with ``n_validators``."""
    spec = MATRIX[attack_id].format(threshold=threshold)
    if parse_spec(spec).kwargs.get("knows") != "oracle":
        return build_attack(spec, aggregation=scheme.aggregation)
    # Keys leak to the oracle (not expressible in a spec). A scheme that never
    # recomputes (budget 0) watches nobody: every validator is as good as a colluder.
    watched = scheme.budget > 0
    return REGISTRY.build(
        spec,
        flag="matrix",
        keys=tuple(VALIDATOR_SKS[:n_validators]),
        budget=scheme.budget if watched else 1.0,
        colluders="" if watched else ";".join(map(str, range(n_validators))),
        **attack_defaults(spec, aggregation=scheme.aggregation),
    )


@pytest.fixture(scope="module")
def tolerance_threshold():
    threshold, stats = calibrate_threshold(
        LEARNER,
        make_ctx().params,
        [round_batches(r) for r in range(100, 104)],
        fresh_batches=[round_batches(r) for r in range(200, 204)],
    )
    assert stats.false_rejections == 0
    return threshold


def _over_norm_bound(sent) -> bool:
    """A well-formed row the cheap checks still reject: its norm exceeds the round's bound."""
    return bool(np.linalg.norm(np.asarray(sent, np.float64)) > NORM_BOUND)


def _schemes(threshold):
    return {
        "spot_bitwise": (spot_check(0.5), "single"),
        "spot_tolerance": (spot_check(0.5, mode="tolerance", threshold=threshold), "vmapped"),
        "full_recompute": (full_recompute(), "single"),
        "robust_median": (robust_only("coordinate_median"), "single"),
    }


SCHEME_IDS = ("spot_bitwise", "spot_tolerance", "full_recompute", "robust_median")


def _outside_the_matrix() -> set[str]:
    """Registered attacks no matrix entry builds (and entries naming no registered attack)."""
    return {parse_spec(spec).name for spec in MATRIX.values()} ^ set(REGISTRY.names())


def test_every_registered_attack_is_in_the_matrix():
    """A new attack without a matrix entry fails here (compared against the registry)."""
    assert _outside_the_matrix() == set()


def test_an_attack_registered_without_a_matrix_entry_is_reported():
    """Canary: the coverage check sees a newly registered attack."""
    REGISTRY.register("unmatrixed_for_test", lambda: build_attack("honest", aggregation="mean"))
    try:
        assert _outside_the_matrix() == {"unmatrixed_for_test"}
    finally:
        REGISTRY._factories.pop("unmatrixed_for_test")


@pytest.mark.parametrize("scheme_id", SCHEME_IDS)
@pytest.mark.parametrize("attack_id", list(MATRIX))
def test_scheme_handles_attack(attack_id, scheme_id, tolerance_threshold):
    """No exception; malformed -> cheap rejection; wrong -> fraud proof iff recomputed
    (drift, in tolerance mode, is accepted); honest -> accepted."""
    scheme, path = _schemes(tolerance_threshold)[scheme_id]
    attack = _attack(attack_id, scheme, tolerance_threshold)
    tolerated = attack.name == "drift" and scheme.mode == "tolerance"
    ctx = make_ctx(round_=3)
    grads = honest_grads(ctx, path=path)
    submissions, sent = attacked_round(ctx, attack, BYZANTINE, grads, seed=11)
    chosen = selections(scheme, ctx)
    all_verdicts = []
    for v, selection in enumerate(chosen):
        assert scheme.verify_selection(ctx, v, N_VALIDATORS, VALIDATOR_PKS[v], selection)
        verdicts = scheme.check(ctx, submissions, selection)
        assert [x.worker for x in verdicts] == list(range(W))
        all_verdicts.append(verdicts)
        for w, verdict in by_worker(verdicts).items():
            assert verdict.validator == v
            assert verdict.reason.startswith(f"worker {w}: ")
            if is_honest_output(sent[w], grads[w]):
                assert verdict.accepted, verdict.reason
                assert verdict.fraud_proof is None
            elif attack.malformed:
                assert not verdict.accepted
                assert verdict.fraud_proof is None and not verdict.recomputed, verdict.reason
            elif _over_norm_bound(sent[w]):
                assert not verdict.accepted and verdict.fraud_proof is None, verdict.reason
                assert not verdict.recomputed and "norm" in verdict.reason
            elif tolerated:
                assert verdict.accepted and verdict.fraud_proof is None, verdict.reason
            elif w in selection.workers:
                assert not verdict.accepted, verdict.reason
                assert verdict.recomputed and verdict.fraud_proof is not None
                assert verify_fraud_proof(
                    verdict.fraud_proof, ctx, mode=scheme.mode, threshold=scheme.threshold
                )
            else:
                assert verdict.accepted, verdict.reason
                assert not verdict.recomputed
    if scheme.name == "full_recompute":
        for w in BYZANTINE:
            if not is_honest_output(sent[w], grads[w]):
                assert not by_worker(all_verdicts[0])[w].accepted
    combined = combine_verdicts(
        all_verdicts,
        verify_proof=lambda p: verify_fraud_proof(
            p, ctx, mode=scheme.mode, threshold=scheme.threshold
        ),
    )
    mask = accepted_mask(combined)
    assert all(mask[w] for w in range(W) if w not in BYZANTINE)
    if scheme.name == "robust_only":
        accepted_byzantine = sum(
            1 for w in BYZANTINE if mask[w] and not is_honest_output(sent[w], grads[w])
        )
        rows = np.stack([sent[w] if mask[w] else np.zeros_like(grads[0]) for w in range(W)])
        agg = aggregate_checked(scheme.aggregation, rows, mask, n_byzantine=accepted_byzantine)
        assert np.all(np.isfinite(np.asarray(agg)))


@pytest.mark.parametrize("attack_id", ["label_flip", "lazy"])
@pytest.mark.parametrize("mode", ["bitwise", "tolerance"])
def test_label_flip_and_lazy_are_caught_by_recomputation(attack_id, mode, tolerance_threshold):
    """Both pass the cheap checks; full recomputation rejects every one with a valid proof."""
    threshold = tolerance_threshold if mode == "tolerance" else None
    scheme = full_recompute(mode=mode, threshold=threshold)
    ctx = make_ctx(round_=5)
    grads = honest_grads(ctx, path="single" if mode == "bitwise" else "vmapped")
    submissions, _ = attacked_round(ctx, _attack(attack_id, scheme, threshold), BYZANTINE, grads)
    verdicts = by_worker(scheme.check(ctx, submissions, scheme.select(ctx, 0, 1, 0)))
    for w in range(W):
        if w in BYZANTINE:
            assert not verdicts[w].accepted and verdicts[w].fraud_proof is not None
            assert "gradient is wrong" in verdicts[w].reason
            assert verify_fraud_proof(verdicts[w].fraud_proof, ctx, mode=mode, threshold=threshold)
        else:
            assert verdicts[w].accepted and verdicts[w].recomputed


@pytest.mark.parametrize("mode", ["bitwise", "tolerance"])
def test_no_false_rejections_over_honest_rounds(mode, tolerance_threshold):
    """Across rounds, full recomputation accepts every honest worker."""
    threshold = tolerance_threshold if mode == "tolerance" else None
    scheme = full_recompute(mode=mode, threshold=threshold)
    for r in range(6):
        ctx = make_ctx(round_=20 + r)
        grads = honest_grads(ctx, path="single" if mode == "bitwise" else "vmapped")
        submissions = {w: honest_submission(ctx, w, grads[w]) for w in range(W)}
        verdicts = scheme.check(ctx, submissions, scheme.select(ctx, 0, 1, 0))
        assert all(v.accepted and v.recomputed for v in verdicts), [v.reason for v in verdicts]


def _same(a, b) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return (
            isinstance(a, np.ndarray)
            and isinstance(b, np.ndarray)
            and (a.dtype, a.shape, a.tobytes()) == (b.dtype, b.shape, b.tobytes())
        )
    # garbage's plain object() has no value to compare, only its type
    return type(a) is type(b) and (type(a) is object or a == b)


def _well_formed(sent, honest_row) -> bool:
    return (
        isinstance(sent, np.ndarray)
        and sent.dtype == np.float32
        and sent.shape == honest_row.shape
        and bool(np.all(np.isfinite(sent)))
    )


@pytest.mark.parametrize("attack_id", [a for a in MATRIX if a != "honest"])
def test_attack_sends_something_other_than_its_gradient(attack_id, tolerance_threshold):
    """Unwatched (no recomputation), every attack changes some Byzantine row: it attacks."""
    scheme = robust_only("coordinate_median")
    ctx = make_ctx(round_=3)
    grads = honest_grads(ctx)
    _, sent = attacked_round(
        ctx, _attack(attack_id, scheme, tolerance_threshold), BYZANTINE, grads, seed=11
    )
    assert any(not is_honest_output(sent[w], grads[w]) for w in BYZANTINE)


@pytest.mark.parametrize("attack_id", list(MATRIX))
def test_a_spot_check_recomputing_everything_catches_the_attack(attack_id, tolerance_threshold):
    """spot_check(1.0) with one validator recomputes all W: every wrong row is rejected with a
    fraud proof that verifies (malformed ones and ones over the norm bound by the cheap
    checks); the oracle, which knows it is watched, stays honest; honest workers are accepted."""
    scheme = spot_check(1.0)
    ctx = make_ctx(round_=3)
    grads = honest_grads(ctx)
    attack = _attack(attack_id, scheme, tolerance_threshold, n_validators=1)
    submissions, sent = attacked_round(ctx, attack, BYZANTINE, grads, seed=11, n_validators=1)
    selection = scheme.select(ctx, 0, 1, VALIDATOR_SKS[0])
    assert selection.workers == tuple(range(W))
    verdicts = by_worker(scheme.check(ctx, submissions, selection))
    cheated = {w for w in BYZANTINE if not is_honest_output(sent[w], grads[w])}
    if attack_id == "sample_aware_oracle":
        assert not cheated
    for w in range(W):
        verdict = verdicts[w]
        if w not in cheated:
            assert verdict.accepted, verdict.reason
        elif attack.malformed or _over_norm_bound(sent[w]):
            assert not verdict.accepted and verdict.fraud_proof is None, verdict.reason
        else:
            assert not verdict.accepted and verdict.fraud_proof is not None, verdict.reason
            assert verify_fraud_proof(verdict.fraud_proof, ctx, mode="bitwise")


@pytest.mark.parametrize("attack_id", list(MATRIX))
def test_rows_are_finite_or_rejected_by_the_cheap_checks(attack_id, tolerance_threshold):
    """Without recomputation, a row that is not a finite float32 (P,) vector is rejected by the
    cheap checks, and an attack that says it is well-formed (``malformed=False``) never sends one."""
    scheme = robust_only("coordinate_median")
    ctx = make_ctx(round_=3)
    grads = honest_grads(ctx)
    attack = _attack(attack_id, scheme, tolerance_threshold)
    submissions, sent = attacked_round(ctx, attack, BYZANTINE, grads, seed=11)
    verdicts = by_worker(scheme.check(ctx, submissions, scheme.select(ctx, 0, 1, VALIDATOR_SKS[0])))
    for w in BYZANTINE:
        if _well_formed(sent[w], grads[w]):
            continue
        assert attack.malformed, f"{attack.label} sent a malformed row but says it is well-formed"
        assert not verdicts[w].accepted and not verdicts[w].recomputed, verdicts[w].reason


@pytest.mark.parametrize("attack_id", list(MATRIX))
def test_same_seed_same_rows(attack_id, tolerance_threshold):
    """An attack is a function of the round and its seed: two builds send identical rows."""
    scheme = spot_check(0.5)
    ctx = make_ctx(round_=3)
    grads = honest_grads(ctx)
    runs = [
        attacked_round(
            ctx, _attack(attack_id, scheme, tolerance_threshold), BYZANTINE, grads, seed=11
        )[1]
        for _ in range(2)
    ]
    assert all(_same(runs[0][w], runs[1][w]) for w in BYZANTINE)
