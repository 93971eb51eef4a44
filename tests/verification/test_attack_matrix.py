"""Every attack against every shipped scheme, on a tiny MLP round.

Properties: no exception escapes a scheme; malformed gradients are rejected by
the cheap checks with a reason naming the worker; well-formed wrong gradients
are rejected with a fraud proof that ``verify_fraud_proof`` accepts whenever
they are recomputed (always under ``full_recompute``), and accepted otherwise;
honest gradients are never rejected (bitwise mode with canonical gradients,
tolerance mode with the vmapped path's gradients and a calibrated threshold).
"""

import numpy as np
import pytest
from tiny_round import (
    LEARNER,
    N_VALIDATORS,
    VALIDATOR_PKS,
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

from pot_jax.attacks import ATTACK_NAMES, choose_byzantine, make_attack
from pot_jax.learning import aggregate_checked
from pot_jax.verification import (
    calibrate_threshold,
    combine_verdicts,
    full_recompute,
    robust_only,
    spot_check,
    verify_fraud_proof,
)

BYZANTINE = choose_byzantine(W, 0.25, seed=7)

ATTACKS = {
    "honest": make_attack("honest"),
    "sign_flip": make_attack("sign_flip"),
    "scaled": make_attack("scaled", factor=10.0),
    "scaled_down": make_attack("scaled", factor=0.5),
    "gaussian": make_attack("gaussian", sigma=1.0),
    "gaussian_around_honest": make_attack("gaussian", sigma=0.01, around_honest=True),
    "alie": make_attack("alie"),
    "ipm": make_attack("ipm", epsilon=0.1),
    "label_flip": make_attack("label_flip"),
    "lazy": make_attack("lazy"),
    "free_rider_zero": make_attack("free_rider", mode="zero"),
    "free_rider_copy": make_attack("free_rider", mode="copy"),
    "garbage": make_attack("garbage"),
    **{f"garbage_{k}": make_attack("garbage", kind=k) for k in ("bytes", "int32", "list", "none")},
    "nan": make_attack("nan_inf", kind="nan"),
    "inf": make_attack("nan_inf", kind="inf", fraction=1.0),
    "wrong_shape": make_attack("wrong_shape"),
    "wrong_shape_matrix": make_attack("wrong_shape", kind="matrix"),
    "cheat_sometimes": make_attack("cheat_sometimes", attack="sign_flip", q=0.5),
    "cheat_sometimes_garbage": make_attack("cheat_sometimes", attack="garbage", q=0.5),
}


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


def _schemes(threshold):
    return {
        "spot_bitwise": (spot_check(0.5), "single"),
        "spot_tolerance": (spot_check(0.5, mode="tolerance", threshold=threshold), "vmapped"),
        "full_recompute": (full_recompute(), "single"),
        "robust_median": (robust_only("coordinate_median"), "single"),
    }


SCHEME_IDS = ("spot_bitwise", "spot_tolerance", "full_recompute", "robust_median")


def test_every_attack_name_is_exercised():
    assert {a.name for a in ATTACKS.values()} == set(ATTACK_NAMES)


@pytest.mark.parametrize("scheme_id", SCHEME_IDS)
@pytest.mark.parametrize("attack_id", list(ATTACKS))
def test_scheme_handles_attack(attack_id, scheme_id, tolerance_threshold):
    """No exception; malformed -> cheap rejection; wrong -> fraud proof iff recomputed; honest -> accepted."""
    scheme, path = _schemes(tolerance_threshold)[scheme_id]
    attack = ATTACKS[attack_id]
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
    submissions, _ = attacked_round(ctx, ATTACKS[attack_id], BYZANTINE, grads)
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
