"""Fraud proofs: canonical encoding, and verification that convicts only cheaters."""

import dataclasses
import struct

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from tiny_round import (
    LEARNER,
    SIGNATURES,
    WORKER_KEYS,
    W,
    batch_of,
    honest_grads,
    honest_submission,
    make_ctx,
    sign,
)

from pot_jax.crypto.worker_signatures import worker_message
from pot_jax.learning import flat_digest
from pot_jax.verification import (
    FraudProof,
    FraudProofDecodeError,
    batch_digest,
    check_fraud_proof,
    recheck,
    verify_fraud_proof,
)

CTX = make_ctx(round_=7)
GRADS = honest_grads(CTX)
WORKER = 3


def _proof_for(gradient: np.ndarray, *, worker: int = WORKER, mode="bitwise", threshold=0.0):
    """A well-signed proof claiming ``gradient`` (as sent by ``worker``) is wrong."""
    submission = honest_submission(CTX, worker, gradient)
    return FraudProof(
        chain_id=CTX.chain_id,
        round=CTX.round,
        worker=worker,
        commitment=submission.commitment,
        signature=submission.signature,
        public_key=submission.public_key,
        gradient=gradient.astype("<f4").tobytes(),
        hash_name=CTX.hash_name,
        params_digest=CTX.params_digest,
        batch_digest=batch_digest(*CTX.batch_of(worker)),
        mode=mode,
        threshold=threshold,
    )


@pytest.fixture(scope="module")
def cheat_proof() -> FraudProof:
    wrong = -GRADS[WORKER]
    verdict = recheck(CTX, honest_submission(CTX, WORKER, wrong))
    assert not verdict.accepted and verdict.fraud_proof is not None
    return verdict.fraud_proof


def test_proof_from_recheck_verifies(cheat_proof):
    assert verify_fraud_proof(cheat_proof, CTX, mode="bitwise")
    ok, reason = check_fraud_proof(cheat_proof, CTX)
    assert ok and "holds" in reason


def test_encode_decode_round_trip(cheat_proof):
    data = cheat_proof.encode()
    again = FraudProof.decode(data)
    assert again == cheat_proof
    assert again.encode() == data
    assert verify_fraud_proof(again, CTX, mode="bitwise")
    tolerance = dataclasses.replace(cheat_proof, mode="tolerance", threshold=1e-5)
    assert FraudProof.decode(tolerance.encode()) == tolerance


def test_every_truncation_is_rejected(cheat_proof):
    data = cheat_proof.encode()
    for n in range(len(data)):
        with pytest.raises(FraudProofDecodeError):
            FraudProof.decode(data[:n])


def test_trailing_bytes_and_non_bytes_are_rejected(cheat_proof):
    with pytest.raises(FraudProofDecodeError, match="trailing"):
        FraudProof.decode(cheat_proof.encode() + b"\x00")
    for value in (None, "proof", 12, [1, 2]):
        with pytest.raises(FraudProofDecodeError, match="bytes"):
            FraudProof.decode(value)


def _patched(data: bytes, offset: int, new: bytes) -> bytes:
    return data[:offset] + new + data[offset + len(new) :]


def test_corrupt_fields_are_rejected_with_the_field_named(cheat_proof):
    data = cheat_proof.encode()
    with pytest.raises(FraudProofDecodeError, match="expected b'POTJAXFP'"):
        FraudProof.decode(_patched(data, 0, b"X"))
    with pytest.raises(FraudProofDecodeError, match="version"):
        FraudProof.decode(_patched(data, 8, b"\x02"))
    # mode and threshold sit right before the u64 gradient length and the gradient.
    tail = 8 + len(cheat_proof.gradient)
    mode_at = len(data) - tail - 9
    with pytest.raises(FraudProofDecodeError, match="mode code"):
        FraudProof.decode(_patched(data, mode_at, b"\x07"))
    nan_tolerance = _patched(data, mode_at, b"\x01" + struct.pack(">d", float("nan")))
    with pytest.raises(FraudProofDecodeError, match="threshold"):
        FraudProof.decode(nan_tolerance)
    with pytest.raises(FraudProofDecodeError, match="bitwise mode expects 0.0"):
        FraudProof.decode(_patched(data, mode_at + 1, struct.pack(">d", 0.5)))
    odd_length = data[: len(data) - tail] + struct.pack(">Q", 3) + b"abc"
    with pytest.raises(FraudProofDecodeError, match="float32"):
        FraudProof.decode(odd_length)


@given(st.binary(max_size=300))
def test_random_bytes_never_decode_to_anything_but_an_error(data):
    with pytest.raises(FraudProofDecodeError):
        FraudProof.decode(data)


@given(st.data())
def test_random_corruption_either_raises_or_decodes_canonically(cheat_proof, data):
    """Any byte flip gives an error or a proof whose encoding is exactly the corrupted bytes."""
    original = cheat_proof.encode()
    i = data.draw(st.integers(0, len(original) - 1))
    b = data.draw(st.integers(0, 255).filter(lambda b: b != original[i]))
    corrupted = _patched(original, i, bytes([b]))
    try:
        proof = FraudProof.decode(corrupted)
    except FraudProofDecodeError:
        return
    assert proof.encode() == corrupted


def test_constructor_rejects_bad_fields(cheat_proof):
    for field, value in (
        ("commitment", b"short"),
        ("round", -1),
        ("worker", True),
        ("mode", "fuzzy"),
        ("hash_name", "md5"),
        ("chain_id", b""),
        ("gradient", b"abc"),
        ("params_digest", "not bytes"),
    ):
        with pytest.raises((ValueError, TypeError)):
            dataclasses.replace(cheat_proof, **{field: value})
    with pytest.raises(ValueError, match="tolerance mode expects"):
        dataclasses.replace(cheat_proof, mode="tolerance", threshold=0.0)


def test_proof_against_an_honest_worker_fails():
    """The signed gradient is the canonical one, so the recomputation matches."""
    for mode, threshold in (("bitwise", 0.0), ("tolerance", 1e-6)):
        proof = _proof_for(GRADS[WORKER], mode=mode, threshold=threshold)
        ok, reason = check_fraud_proof(proof, CTX)
        assert not ok and "fails" in reason, reason


def test_tolerance_proof_must_use_the_runs_threshold():
    """A near-honest gradient convicted under a tiny threshold only if the verifier lets the proof choose."""
    nudged = GRADS[WORKER].copy()
    nudged[0] = np.nextafter(nudged[0], np.float32(np.inf))
    proof = _proof_for(nudged, mode="tolerance", threshold=1e-12)
    assert verify_fraud_proof(proof, CTX)  # the proof's own rule
    assert not verify_fraud_proof(proof, CTX, mode="tolerance", threshold=1e-6)
    assert not verify_fraud_proof(proof, CTX, mode="bitwise")


def test_tampered_proofs_fail(cheat_proof):
    wrong = np.frombuffer(cheat_proof.gradient, "<f4")
    cases = {
        "gradient not the committed one": dataclasses.replace(
            cheat_proof, gradient=(wrong * 2).astype("<f4").tobytes()
        ),
        "other round": dataclasses.replace(cheat_proof, round=CTX.round + 1),
        "other chain": dataclasses.replace(cheat_proof, chain_id=b"other-chain"),
        "other worker": dataclasses.replace(cheat_proof, worker=(WORKER + 1) % W),
        "no such worker": dataclasses.replace(cheat_proof, worker=W + 5),
        "other params": dataclasses.replace(cheat_proof, params_digest=bytes(32)),
        "other batch": dataclasses.replace(
            cheat_proof, batch_digest=batch_digest(*batch_of(CTX.round + 1)(WORKER))
        ),
        "bad signature": dataclasses.replace(cheat_proof, signature=bytes(64)),
        "unregistered key": dataclasses.replace(
            cheat_proof, public_key=WORKER_KEYS[(WORKER + 1) % W][1]
        ),
        "other hash": dataclasses.replace(cheat_proof, hash_name="blake3"),
        "truncated gradient": dataclasses.replace(cheat_proof, gradient=cheat_proof.gradient[:-4]),
    }
    for name, proof in cases.items():
        ok, reason = check_fraud_proof(proof, CTX)
        assert not ok, name
        assert reason
    assert not verify_fraud_proof("not a proof", CTX)
    assert not verify_fraud_proof(cheat_proof, CTX, mode="tolerance", threshold=1e-6)


def test_a_key_the_context_does_not_pin_is_still_signature_checked(cheat_proof):
    """Without a key registry the proof's own key is used, but only with a valid signature."""
    ctx = make_ctx(round_=CTX.round, worker_public_keys=None)
    assert verify_fraud_proof(cheat_proof, ctx)
    other_sk, other_pk = WORKER_KEYS[0]
    resigned = dataclasses.replace(
        cheat_proof,
        public_key=other_pk,
        signature=b"\x00" * 64,
    )
    assert not verify_fraud_proof(resigned, ctx)
    message = worker_message(CTX.chain_id, CTX.round, WORKER, cheat_proof.commitment)
    forged = dataclasses.replace(
        resigned, signature=SIGNATURES.sign(other_sk, message)
    )  # a self-signed claim: anyone can sign under their own key
    assert verify_fraud_proof(forged, ctx)
    assert not verify_fraud_proof(forged, CTX)  # the registry pins the worker's key


def test_big_endian_gradient_commits_like_little_endian():
    """The commitment hashes the canonical little-endian bytes, whatever the array's byte order."""
    g = GRADS[WORKER]
    big = g.astype(">f4")
    assert flat_digest(LEARNER.header, big) == flat_digest(LEARNER.header, g)
    submission = sign(CTX, WORKER, big, flat_digest(LEARNER.header, big))
    assert recheck(CTX, submission).accepted
