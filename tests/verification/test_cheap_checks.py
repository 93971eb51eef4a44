"""Cheap checks: every malformed submission is a rejection with a reason, never an exception."""

import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from tiny_round import (
    LEARNER,
    NORM_BOUND,
    WORKER_KEYS,
    P,
    W,
    honest_grads,
    honest_submission,
    make_ctx,
    sign,
)

from pot_jax.crypto.worker_signatures import bls_scheme, worker_message
from pot_jax.learning import flat_digest
from pot_jax.verification import (
    Submission,
    Verdict,
    cheap_checks,
    check_submissions,
    combine_verdicts,
    full_recompute,
    recheck,
)

CTX = make_ctx(round_=2)
GRADS = honest_grads(CTX)
W0 = 5


def _reason(submission, **kw) -> str:
    verdict = cheap_checks(CTX, submission, **kw)
    assert isinstance(verdict, Verdict) and not verdict.accepted
    assert verdict.fraud_proof is None and not verdict.recomputed
    return verdict.reason


def test_honest_submission_passes():
    assert cheap_checks(CTX, honest_submission(CTX, W0, GRADS[W0])) is None
    as_jax = honest_submission(CTX, W0, jnp.asarray(GRADS[W0]))
    assert cheap_checks(CTX, as_jax) is None


def test_reasons_name_the_worker_and_the_problem():
    g = GRADS[W0]
    good = honest_submission(CTX, W0, g)
    sk, pk = WORKER_KEYS[W0]
    cases = [
        (Submission(W0, g, good.commitment, good.signature[:-1] + b"\x00", pk), "signature"),
        (Submission(W0, g, good.commitment, good.signature, WORKER_KEYS[0][1]), "registered key"),
        (Submission(W0, g, good.commitment[:31], good.signature, pk), "31 bytes, expected 32"),
        (Submission(W0, g, "commit", good.signature, pk), "commitment is a str"),
        (Submission(W0, g, good.commitment, None, pk), "signature is None"),
        (Submission(W0, g, good.commitment, good.signature, 17), "public key is an int"),
        (Submission(W0, g * 2, good.commitment, good.signature, pk), "does not hash"),
        (Submission(W + 3, g, good.commitment, good.signature, pk), "no such worker"),
        (Submission("five", g, good.commitment, good.signature, pk), "expected an int"),
        (Submission(True, g, good.commitment, good.signature, pk), "expected an int"),
        (
            sign(CTX, W0, g[:10], flat_digest(LEARNER.header, g[:10])),
            f"shape (10,), model expects ({P},)",
        ),
        (sign(CTX, W0, g.astype(np.float64), flat_digest(LEARNER.header, g)), "dtype float64"),
        (sign(CTX, W0, g.tobytes(), bytes(32)), "gradient is a bytes"),
        (sign(CTX, W0, None, bytes(32)), "gradient is None"),
        (sign(CTX, W0, list(g), bytes(32)), "gradient is a list"),
    ]
    nan = g.copy()
    nan[[1, 7]] = [np.nan, np.inf]
    cases.append((honest_submission(CTX, W0, nan), "2 non-finite entries"))
    big = np.full(P, NORM_BOUND, np.float32)
    cases.append((honest_submission(CTX, W0, big), "exceeds the bound"))
    for submission, fragment in cases:
        reason = _reason(submission)
        assert fragment in reason, (fragment, reason)
        assert reason.startswith("worker ")
    assert _reason("garbage", worker=4).startswith("worker 4: sent a str")
    assert _reason(good, worker=4) == "worker 4: submission arrived as worker 4 but claims worker 5"


def test_overrides_of_the_context():
    big = np.full(P, 1.0, np.float32)  # norm sqrt(P) ~ 17.7
    submission = honest_submission(CTX, W0, big)
    assert cheap_checks(CTX, submission) is None
    assert "exceeds the bound 1" in _reason(submission, norm_bound=1.0)


_anything = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True),
    st.binary(max_size=80),
    st.text(max_size=8),
    st.lists(st.floats(), max_size=4),
    st.builds(lambda n: np.zeros(n, np.float32), st.integers(0, P + 2)),
    st.builds(lambda n: np.full(P, n, np.float32), st.floats(width=32)),
    st.just(object()),
)


@given(
    worker=_anything, gradient=_anything, commitment=_anything, signature=_anything, key=_anything
)
def test_cheap_checks_never_raise_on_arbitrary_fields(worker, gradient, commitment, signature, key):
    submission = Submission(worker, gradient, commitment, signature, key)
    verdict = cheap_checks(CTX, submission)
    assert verdict is not None and not verdict.accepted and verdict.reason


@given(gradient=_anything)
def test_a_signed_garbage_gradient_is_rejected_by_the_gradient_checks(gradient):
    """Signature and commitment valid where possible: the gradient checks must still catch it."""
    if isinstance(gradient, np.ndarray):
        commitment = flat_digest(LEARNER.header, gradient)
    else:
        commitment = bytes(32)
    submission = sign(CTX, W0, gradient, commitment)
    verdict = recheck(CTX, submission)
    if (
        isinstance(gradient, np.ndarray)
        and gradient.shape == (P,)
        and np.all(np.isfinite(gradient))
    ):
        ok_norm = float(np.linalg.norm(gradient.astype(np.float64))) <= NORM_BOUND
        assert verdict.recomputed == ok_norm
        assert not verdict.accepted  # a constant vector is not the gradient
    else:
        assert not verdict.accepted and not verdict.recomputed


def test_check_submissions_covers_every_worker():
    submissions = {w: honest_submission(CTX, w, GRADS[w]) for w in range(W) if w != 2}
    submissions["junk"] = "junk"
    submissions[W + 1] = honest_submission(CTX, 0, GRADS[0])
    verdicts = check_submissions(CTX, submissions, recompute={1, 2, 3, 99})
    assert [v.worker for v in verdicts] == list(range(W))
    assert verdicts[2].reason == "worker 2: sent no gradient this round"
    assert [v.recomputed for v in verdicts[:5]] == [False, True, False, True, False]
    assert all(v.accepted for i, v in enumerate(verdicts) if i != 2)
    with pytest.raises(ValueError, match="mode"):
        check_submissions(CTX, submissions, mode="fuzzy")
    with pytest.raises(ValueError, match="threshold"):
        check_submissions(CTX, submissions, mode="tolerance", threshold=0.0)


def test_the_signature_scheme_comes_from_the_context():
    """A BLS-signed round verifies when the context names the BLS scheme, not under Ed25519."""
    scheme = bls_scheme()
    sk, pk = scheme.keygen(b"b" * 32)
    bls_ctx = make_ctx(round_=2, signature_scheme=scheme, worker_public_keys=None)
    commitment = flat_digest(LEARNER.header, GRADS[0])
    signature = scheme.sign(sk, worker_message(bls_ctx.chain_id, 2, 0, commitment))
    submission = Submission(0, GRADS[0], commitment, signature, pk)
    assert cheap_checks(bls_ctx, submission) is None
    ed_ctx = make_ctx(round_=2, worker_public_keys=None)
    assert cheap_checks(ed_ctx, submission, signature_scheme=scheme) is None
    rejection = cheap_checks(ed_ctx, submission)
    assert "ed25519 signature does not verify" in rejection.reason
    assert "registered key" in _reason(submission, signature_scheme=scheme)


def test_combine_verdicts_prefers_valid_proofs_then_own_verdicts():
    wrong = -GRADS[1]
    submissions = {w: honest_submission(CTX, w, GRADS[w]) for w in range(W)}
    submissions[1] = honest_submission(CTX, 1, wrong)
    scheme = full_recompute()
    checked = scheme.check(CTX, submissions, scheme.select(CTX, 1, 2, 0))
    cheap_only = check_submissions(CTX, submissions, validator=0)
    assert cheap_only[1].accepted
    combined = combine_verdicts([cheap_only, checked])
    assert not combined[1].accepted and combined[1].fraud_proof is not None
    assert combined[0].recomputed  # an acceptance that recomputed is preferred
    assert combine_verdicts([cheap_only, checked], verify_proof=lambda p: False)[1].accepted
    only_proofs = [v for v in checked if v.fraud_proof is not None]
    folded = combine_verdicts([only_proofs], verify_proof=lambda p: False)
    assert folded[0].accepted and "no valid fraud proof" in folded[0].reason
