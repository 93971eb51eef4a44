"""Tolerance mode: a calibrated threshold passes honest noise and catches small cheats."""

import numpy as np
import pytest
from tiny_round import (
    LEARNER,
    PARAMS,
    W,
    honest_grads,
    honest_submission,
    make_ctx,
    round_batches,
)

from pot_jax.verification import (
    DEFAULT_FLOOR,
    calibrate_threshold,
    full_recompute,
    gradient_distance,
    verify_fraud_proof,
)


@pytest.fixture(scope="module")
def calibrated():
    return calibrate_threshold(
        LEARNER,
        PARAMS,
        [round_batches(r) for r in range(300, 306)],
        fresh_batches=[round_batches(r) for r in range(400, 406)],
    )


def test_calibration_has_no_false_rejections_on_fresh_honest_data(calibrated):
    threshold, stats = calibrated
    assert stats.n_calibration == stats.n_fresh == 6 * W
    assert stats.false_rejections == 0 and stats.false_rejection_rate == 0.0
    assert threshold == max(stats.multiple * stats.max_distance, stats.floor)
    assert stats.fresh_max_distance <= threshold
    # The vmapped path really differs from the canonical one here (reduction order).
    assert stats.max_distance > 0
    print(f"threshold {threshold:.3g}; {stats}")


def test_fresh_honest_vmapped_gradients_pass_and_a_1e3_perturbation_is_caught(calibrated):
    threshold, _ = calibrated
    scheme = full_recompute(mode="tolerance", threshold=threshold)
    ctx = make_ctx(round_=500)
    grads = honest_grads(ctx, path="vmapped")
    canonical = honest_grads(ctx)
    assert any(grads[w].tobytes() != canonical[w].tobytes() for w in range(W))
    submissions = {w: honest_submission(ctx, w, grads[w]) for w in range(W)}
    rng = np.random.default_rng(0)
    cheated = grads[4].astype(np.float64)
    delta = rng.standard_normal(cheated.size)
    cheated += 1e-3 * np.linalg.norm(cheated) * delta / np.linalg.norm(delta)
    cheated = cheated.astype(np.float32)
    assert 0.5e-3 < gradient_distance(cheated, canonical[4]) < 2e-3
    submissions[4] = honest_submission(ctx, 4, cheated)
    verdicts = scheme.check(ctx, submissions, scheme.select(ctx, 0, 1, 0))
    for w, verdict in enumerate(verdicts):
        if w == 4:
            assert not verdict.accepted and "normalised distance" in verdict.reason
            assert verify_fraud_proof(
                verdict.fraud_proof, ctx, mode="tolerance", threshold=threshold
            )
        else:
            assert verdict.accepted, verdict.reason


def test_identical_paths_give_the_floor():
    """When the honest path is the canonical one, distances are 0 and the floor applies."""

    def canonical(params, x, y):
        return np.stack(
            [np.asarray(LEARNER.worker_gradient(params, x[w], y[w])) for w in range(len(y))]
        )

    threshold, stats = calibrate_threshold(
        LEARNER,
        PARAMS,
        [round_batches(0)],
        fresh_batches=[round_batches(1)],
        submitted_fn=canonical,
    )
    assert stats.max_distance == 0.0 and threshold == DEFAULT_FLOOR


def test_calibration_arguments_are_checked():
    batches = [round_batches(0)]
    with pytest.raises(ValueError, match="multiple"):
        calibrate_threshold(LEARNER, PARAMS, batches, fresh_batches=batches, multiple=0.5)
    with pytest.raises(ValueError, match="floor"):
        calibrate_threshold(LEARNER, PARAMS, batches, fresh_batches=batches, floor=0.0)
    with pytest.raises(ValueError, match="fresh_batches is empty"):
        calibrate_threshold(LEARNER, PARAMS, batches, fresh_batches=[])
    with pytest.raises(ValueError, match="submitted_fn returned shape"):
        calibrate_threshold(
            LEARNER,
            PARAMS,
            batches,
            fresh_batches=batches,
            submitted_fn=lambda p, x, y: np.zeros(3),
        )
