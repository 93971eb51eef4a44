"""Tests for pot_jax.crypto.worker_signatures."""

import hashlib
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st
from py_arkworks_bls12381 import G2Point

from pot_jax.crypto import bls
from pot_jax.crypto.errors import DecodeError
from pot_jax.crypto.worker_signatures import (
    DEFAULT_WORKER_SCHEME,
    SCHEMES,
    WORKER_MESSAGE_TAG,
    WorkerMessage,
    bench_worker_signatures,
    worker_message,
    worker_signature_scheme,
)

COMMITMENT = hashlib.sha256(b"gradient").digest()

worker_messages = st.builds(
    WorkerMessage,
    chain_id=st.binary(min_size=1, max_size=255),
    round=st.integers(0, 2**64 - 1),
    worker_id=st.integers(0, 2**32 - 1),
    commitment=st.binary(min_size=32, max_size=32),
)


def _seed(i: int) -> bytes:
    return hashlib.sha256(b"test-worker" + i.to_bytes(4, "big")).digest()


# --- message encoding -------------------------------------------------------


def test_message_layout_is_the_documented_one():
    encoded = worker_message(b"chain", 7, 3, COMMITMENT)
    expected = (
        bytes([len(WORKER_MESSAGE_TAG)])
        + WORKER_MESSAGE_TAG
        + b"\x01"  # version
        + b"\x05chain"
        + struct.pack(">QI", 7, 3)
        + COMMITMENT
    )
    assert encoded == expected
    assert len(encoded) == 1 + 23 + 1 + 1 + 5 + 8 + 4 + 32


@given(worker_messages)
def test_message_encoding_round_trips(message):
    assert WorkerMessage.decode(message.encode()) == message


@given(worker_messages, worker_messages)
def test_message_encoding_is_injective(a, b):
    """Distinct (chain id, round, worker id, commitment) never encode to the same bytes."""
    assert (a == b) == (a.encode() == b.encode())


@given(worker_messages, st.data())
def test_decoding_rejects_every_truncation_and_any_trailing_bytes(message, data):
    encoded = message.encode()
    cut = data.draw(st.integers(0, len(encoded) - 1))
    with pytest.raises(DecodeError, match="truncated|empty chain id"):
        WorkerMessage.decode(encoded[:cut])
    extra = data.draw(st.binary(min_size=1, max_size=40))
    with pytest.raises(DecodeError, match=f"{len(extra)} trailing bytes"):
        WorkerMessage.decode(encoded + extra)


def test_decoding_rejects_malformed_headers_naming_the_problem():
    good = worker_message(b"chain", 7, 3, COMMITMENT)
    tag_end = 1 + len(WORKER_MESSAGE_TAG)
    cases = {
        "truncated: 0 bytes": b"",
        "truncated: 73 bytes, expected 75 for a 5-byte chain id": good[:-2],
        "2 trailing bytes after its 75 bytes": good + b"\x00\x00",
        "not a worker message": b"\x17POT_JAX_VOTE_MESSAGE_X" + good[tag_end:],
        "version 2, this decoder supports 1": good[:tag_end] + b"\x02" + good[tag_end + 1 :],
        "empty chain id": good[:tag_end] + b"\x01\x00" + good[tag_end + 2 + 5 :],
    }
    for match, data in cases.items():
        with pytest.raises(DecodeError, match=match):
            WorkerMessage.decode(data)
    # A longer chain-id length byte makes the same bytes a truncated message.
    longer = good[: tag_end + 1] + b"\x06" + good[tag_end + 2 :]
    with pytest.raises(DecodeError, match="expected 76 for a 6-byte chain id"):
        WorkerMessage.decode(longer)


def test_message_fields_are_validated_by_name():
    with pytest.raises(ValueError, match="chain_id must be 1 to 255 bytes, got 0"):
        worker_message(b"", 0, 0, COMMITMENT)
    with pytest.raises(ValueError, match="chain_id must be 1 to 255 bytes, got 256"):
        worker_message(b"c" * 256, 0, 0, COMMITMENT)
    with pytest.raises(ValueError, match=r"round must be in \[0, 18446744073709551615\], got -1"):
        worker_message(b"c", -1, 0, COMMITMENT)
    with pytest.raises(ValueError, match="worker_id must be in .*got 4294967296"):
        worker_message(b"c", 0, 2**32, COMMITMENT)
    with pytest.raises(ValueError, match="commitment must be 32 bytes, got 31"):
        worker_message(b"c", 0, 0, COMMITMENT[:31])
    with pytest.raises(TypeError, match="worker_id must be an int, got bool"):
        worker_message(b"c", 0, True, COMMITMENT)
    with pytest.raises(TypeError, match="chain_id must be bytes, got str"):
        worker_message("c", 0, 0, COMMITMENT)


def test_message_accepts_bytes_like_fields():
    message = WorkerMessage(bytearray(b"c"), 1, 2, memoryview(COMMITMENT))
    assert message.chain_id == b"c" and message.commitment == COMMITMENT
    assert hash(message) == hash(WorkerMessage(b"c", 1, 2, COMMITMENT))


# --- schemes ----------------------------------------------------------------


@pytest.fixture(params=sorted(SCHEMES))
def scheme(request):
    return worker_signature_scheme(request.param)


def test_default_scheme_is_ed25519_and_names_resolve():
    assert DEFAULT_WORKER_SCHEME == "ed25519"
    assert worker_signature_scheme().name == "ed25519"
    assert worker_signature_scheme("bls").name == "bls"
    with pytest.raises(ValueError, match=r"unknown worker signature scheme 'rsa'.*'bls'"):
        worker_signature_scheme("rsa")


def test_keygen_is_deterministic_and_sizes_match(scheme):
    sk, pk = scheme.keygen(_seed(0))
    _, pk_again = scheme.keygen(_seed(0))
    _, other_pk = scheme.keygen(_seed(1))
    assert pk == pk_again != other_pk
    assert len(pk) == scheme.public_key_size
    signature = scheme.sign(sk, b"message")
    assert len(signature) == scheme.signature_size
    assert scheme.sign(sk, b"message") == signature  # both schemes sign deterministically


def test_keygen_rejects_short_seeds(scheme):
    with pytest.raises(ValueError, match="seed must be .*32 bytes, got 31"):
        scheme.keygen(b"\x00" * 31)


def test_ed25519_keygen_needs_exactly_32_bytes():
    with pytest.raises(ValueError, match="Ed25519 seed must be 32 bytes, got 33"):
        worker_signature_scheme("ed25519").keygen(b"\x00" * 33)


@given(worker_messages)
def test_signed_worker_message_verifies_only_as_signed(message):
    """A signature verifies for its own key and message, and for nothing else."""
    for name in SCHEMES:
        scheme = worker_signature_scheme(name)
        sk, pk = scheme.keygen(_seed(message.worker_id % 4))
        _, other_pk = scheme.keygen(_seed(message.worker_id % 4 + 1))
        encoded = message.encode()
        signature = scheme.sign(sk, encoded)
        assert scheme.verify(pk, encoded, signature)
        assert not scheme.verify(other_pk, encoded, signature)
        next_round = WorkerMessage(
            message.chain_id, (message.round + 1) % 2**64, message.worker_id, message.commitment
        )
        assert not scheme.verify(pk, next_round.encode(), signature)
        tampered = bytearray(signature)
        tampered[-1] ^= 1
        assert not scheme.verify(pk, encoded, bytes(tampered))


def test_malformed_keys_and_signatures_verify_false(scheme):
    sk, pk = scheme.keygen(_seed(0))
    message = worker_message(b"chain", 0, 0, COMMITMENT)
    signature = scheme.sign(sk, message)
    assert scheme.verify(pk, message, signature)
    for bad_pk in (b"", pk[:-1], pk + b"\x00", b"\xff" * len(pk), b"\x00" * len(pk)):
        assert not scheme.verify(bad_pk, message, signature)
    for bad_sig in (b"", signature[:-1], signature + b"\x00", b"\xff" * len(signature)):
        assert not scheme.verify(pk, message, bad_sig)


def test_ed25519_matches_rfc_8032_test_1():
    """RFC 8032 section 7.1, TEST 1: the seed is the private key, the message empty."""
    scheme = worker_signature_scheme("ed25519")
    sk, pk = scheme.keygen(
        bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
    )
    assert pk.hex() == "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
    signature = scheme.sign(sk, b"")
    assert signature.hex() == (
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39"
        "701cf9b46bd25bf5f0595bbe24655141438e7a100b"
    )
    assert scheme.verify(pk, b"", signature)


def test_bls_scheme_is_the_bls_module():
    scheme = worker_signature_scheme("bls")
    sk, pk = scheme.keygen(_seed(0))
    assert sk == bls.KeyGen(_seed(0)) and pk == bls.SkToPk(sk)
    message = worker_message(b"chain", 0, 0, COMMITMENT)
    assert scheme.sign(sk, message) == bls.Sign(sk, message)
    assert bls.Verify(pk, message, scheme.sign(sk, message))


def _round(scheme, n):
    keys = [scheme.keygen(_seed(i)) for i in range(n)]
    messages = [
        worker_message(b"chain", 5, i, hashlib.sha256(bytes([i])).digest()) for i in range(n)
    ]
    signatures = [scheme.sign(sk, m) for (sk, _), m in zip(keys, messages, strict=True)]
    return [pk for _, pk in keys], messages, signatures


def test_verify_batch_accepts_a_valid_round_and_rejects_any_bad_signature(scheme):
    pks, messages, signatures = _round(scheme, 6)
    assert scheme.verify_batch(pks, messages, signatures)
    assert scheme.verify_batch([], [], [])
    for culprit in (0, 5):
        swapped = list(signatures)
        swapped[culprit] = signatures[(culprit + 1) % 6]
        assert not scheme.verify_batch(pks, messages, swapped)
        truncated = list(signatures)
        truncated[culprit] = signatures[culprit][:-1]
        assert not scheme.verify_batch(pks, messages, truncated)
    with pytest.raises(ValueError, match="6 public keys, 5 messages, 6 signatures"):
        scheme.verify_batch(pks, messages[:5], signatures)


def test_bls_verify_batch_is_not_fooled_by_cancelling_signatures():
    """Two colluding workers shift their signatures by +D and -D.

    The aggregate is unchanged, so Aggregate + AggregateVerify accepts the
    round although neither signature is valid; verify_batch (random linear
    combination) rejects it. This is why the BLS scheme's batch route is
    bls.batch_verify.
    """
    scheme = worker_signature_scheme("bls")
    pks, messages, signatures = _round(scheme, 4)
    delta = G2Point.hash_to_curve(b"TEST_DELTA_DST", b"delta")
    s0 = G2Point.from_compressed_bytes(signatures[0]) + delta
    s1 = G2Point.from_compressed_bytes(signatures[1]) - delta
    forged = [s0.to_compressed_bytes(), s1.to_compressed_bytes(), *signatures[2:]]
    assert not scheme.verify(pks[0], messages[0], forged[0])
    assert not scheme.verify(pks[1], messages[1], forged[1])
    assert bls.AggregateVerify(pks, messages, bls.Aggregate(forged))  # the trap
    assert not scheme.verify_batch(pks, messages, forged)


# --- benchmark --------------------------------------------------------------


def test_bench_reports_per_signature_and_per_round_costs():
    result = bench_worker_signatures(n=3)
    assert result["n"] == 3 and result["default"] == DEFAULT_WORKER_SCHEME
    assert result["bls_backend"] == bls.get_backend().name
    assert set(result["schemes"]) == set(SCHEMES)
    for name, stats in result["schemes"].items():
        for key in (
            "sign_ms_per_signature",
            "verify_ms_per_signature",
            "sign_ms_per_round",
            "verify_ms_per_round",
            "batch_verify_ms_per_round",
            "batch_verify_ms_per_signature",
        ):
            assert stats[key] > 0, (name, key)
        assert stats["verify_ms_per_round"] == pytest.approx(3 * stats["verify_ms_per_signature"])
    assert result["schemes"]["bls"]["aggregate_verify_ms_per_round"] > 0
    with pytest.raises(ValueError, match="n must be a positive int, got 0"):
        bench_worker_signatures(n=0)
