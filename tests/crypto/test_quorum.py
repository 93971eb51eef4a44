"""Quorum arithmetic, vote messages, validator sets and quorum certificates.

Keys, PoPs and votes are made once with arkworks (byte-identical to py_ecc);
registration and QC verification run on both backends.

The written argument this checks: proofs/pbft-safety.md (quorum intersection) and proofs/qc-unforgeability.md.
"""

import copy
import hashlib
import pickle
import random
import struct
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pot_jax.crypto import bls
from pot_jax.crypto.bench import bench_bls
from pot_jax.crypto.errors import CryptoError, DecodeError
from pot_jax.crypto.quorum import (
    QuorumCertificate,
    ValidatorSet,
    VoteMessage,
    aggregate_votes,
    fault_tolerance,
    quorum_size,
    sign_vote,
    verify_qc,
    vote_message,
)

R = bls.CURVE_ORDER
N = 10  # f = 3, quorum = 7; a 2-byte bitmap with 6 padding bits
CHAIN = b"pot-jax-test-chain"
DIGEST = hashlib.sha256(b"round record").digest()
MESSAGE = vote_message(CHAIN, "commit", 3, 17, DIGEST)


def _sk(i: int) -> int:
    return bls.KeyGen(hashlib.sha256(b"validator %d" % i).digest())


SKS = [_sk(i) for i in range(N)]
with bls.use_backend("arkworks"):
    REGISTRATIONS = [(bls.SkToPk(sk), bls.PopProve(sk)) for sk in SKS]
    VOTES = {i: sign_vote(sk, MESSAGE) for i, sk in enumerate(SKS)}
    ARK_SET = ValidatorSet.from_registrations(REGISTRATIONS)


@pytest.fixture(params=bls.BACKENDS)
def backend(request):
    with bls.use_backend(request.param) as active:
        yield active


@pytest.fixture
def vset(backend):
    """The arkworks-registered set; its key points are decoded lazily per backend."""
    return ARK_SET


def _qc(indices, message_votes=None) -> QuorumCertificate:
    votes = message_votes or VOTES
    with bls.use_backend("arkworks"):
        return aggregate_votes(ARK_SET, {i: votes[i] for i in indices})


# ---------------------------------------------------------------------------
# Quorum arithmetic


def test_quorum_size_table():
    expected = {1: 1, 2: 2, 3: 2, 4: 3, 5: 4, 6: 4, 7: 5, 8: 6, 9: 6, 10: 7, 100: 67, 1024: 683}
    assert {n: quorum_size(n) for n in expected} == expected
    with pytest.raises(ValueError, match=">= 1"):
        quorum_size(0)


@given(f=st.integers(0, 700))
def test_quorum_is_2f_plus_1_or_2f_plus_2(f):
    assert fault_tolerance(3 * f + 1) == f
    assert quorum_size(3 * f + 1) == 2 * f + 1
    assert quorum_size(3 * f + 2) == 2 * f + 2
    assert quorum_size(3 * f + 3) == 2 * f + 2


def _quorums_intersect_in_an_honest_validator(n: int, q: int) -> bool:
    """Worst-case overlap of two q-subsets of n validators exceeds f."""
    return 2 * q - n >= fault_tolerance(n) + 1


@given(n=st.integers(1, 2000), rng=st.randoms(use_true_random=False))
def test_any_two_quorums_intersect_in_at_least_f_plus_1(n, rng):
    """Safety: two quorums share f + 1 validators, so at least one honest one.

    Liveness: the n - f honest validators alone make a quorum.
    """
    q, f = quorum_size(n), fault_tolerance(n)
    assert _quorums_intersect_in_an_honest_validator(n, q)
    assert q <= n - f
    a, b = set(rng.sample(range(n), q)), set(rng.sample(range(n), q))
    assert len(a & b) >= f + 1
    # The adversarial pair: one quorum from the front, one from the back.
    assert len(set(range(q)) & set(range(n - q, n))) >= f + 1


def test_canary_two_thirds_floor_is_not_a_safe_quorum():
    """n * 2 // 3 fails the same check, so the checker can fail."""
    bad = [
        n for n in range(1, 2001) if not _quorums_intersect_in_an_honest_validator(n, n * 2 // 3)
    ]
    assert 4 in bad and len(bad) > 1000


# ---------------------------------------------------------------------------
# Vote messages


vote_fields = st.builds(
    VoteMessage,
    chain_id=st.binary(min_size=1, max_size=64),
    kind=st.from_regex(r"[A-Za-z0-9_.\-]{1,32}", fullmatch=True),
    view=st.integers(0, 2**64 - 1),
    sequence=st.integers(0, 2**64 - 1),
    digest=st.binary(min_size=32, max_size=32),
)


@given(vote=vote_fields)
def test_vote_message_round_trips(vote):
    data = vote.encode()
    assert data[0] == 1  # version byte
    assert VoteMessage.decode(data) == vote
    assert vote_message(vote.chain_id, vote.kind, vote.view, vote.sequence, vote.digest) == data


@given(a=vote_fields, b=vote_fields)
def test_distinct_votes_encode_to_distinct_bytes(a, b):
    assert (a.encode() == b.encode()) == (a == b)


def test_vote_message_decode_rejects_every_truncation():
    for cut in range(len(MESSAGE)):
        with pytest.raises(DecodeError, match="truncated|at least|domain"):
            VoteMessage.decode(MESSAGE[:cut])


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (MESSAGE + b"\x00", "trailing garbage"),
        (b"\x02" + MESSAGE[1:], "version 2, expected 1"),
        (MESSAGE[:1] + struct.pack(">I", 12) + b"pot-jax/VOTE" + MESSAGE[17:], "domain tag"),
        (MESSAGE[:1] + struct.pack(">I", 2**31) + MESSAGE[5:], "oversized"),
        (vote_message(CHAIN, "commit", 3, 17, DIGEST).replace(b"commit", b"comm\xfft"), "ASCII"),
        (vote_message(CHAIN, "commit", 3, 17, DIGEST).replace(b"commit", b"com it"), "kind"),
        (b"", "truncated"),
    ],
    ids=["trailing", "version", "domain", "oversized", "non_ascii_kind", "bad_kind", "empty"],
)
def test_vote_message_decode_rejects_malformed_input(data, reason):
    with pytest.raises(DecodeError, match=reason):
        VoteMessage.decode(data)


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"chain_id": b""}, "chain_id"),
        ({"kind": ""}, "kind"),
        ({"kind": "pre prepare"}, "kind"),
        ({"view": -1}, "view"),
        ({"sequence": 2**64}, "sequence"),
        ({"digest": b"short"}, "32-byte"),
    ],
)
def test_vote_message_rejects_bad_fields(kwargs, reason):
    fields = {"chain_id": CHAIN, "kind": "commit", "view": 0, "sequence": 0, "digest": DIGEST}
    with pytest.raises(CryptoError, match=reason):
        vote_message(**{**fields, **kwargs})


def test_sign_vote_only_signs_canonical_vote_messages():
    with pytest.raises(DecodeError):
        sign_vote(SKS[0], b"arbitrary bytes")


# ---------------------------------------------------------------------------
# Validator sets


def test_registration_verifies_proofs_of_possession(backend):
    vs = ValidatorSet.from_registrations(REGISTRATIONS[:4])
    assert (vs.n, vs.f, vs.quorum) == (4, 1, 3)
    assert vs.public_keys == tuple(pk for pk, _ in REGISTRATIONS[:4])
    assert vs == ValidatorSet.from_registrations(REGISTRATIONS[:4])


def test_registration_names_the_validator_with_a_bad_proof(backend):
    regs = list(REGISTRATIONS[:4])
    regs[2] = (regs[2][0], regs[1][1])  # validator 1's proof for validator 2's key
    with pytest.raises(CryptoError, match="validator 2: proof of possession does not verify"):
        ValidatorSet.from_registrations(regs)


def test_registration_rejects_a_signature_in_place_of_a_proof(backend):
    regs = list(REGISTRATIONS[:2])
    pk = regs[1][0]
    with bls.use_backend("arkworks"):
        regs[1] = (pk, bls.Sign(SKS[1], pk))  # right key, wrong domain tag
    with pytest.raises(CryptoError, match="validator 1: proof of possession"):
        ValidatorSet.from_registrations(regs)


def test_registration_rejects_bad_keys_and_shapes(backend):
    infinity = bytes([0xC0]) + bytes(47)
    with pytest.raises(DecodeError, match="validator 1: public key is the point at infinity"):
        ValidatorSet.from_registrations([REGISTRATIONS[0], (infinity, REGISTRATIONS[1][1])])
    with pytest.raises(CryptoError, match="validator 2 repeats the public key of validator 0"):
        ValidatorSet.from_registrations([*REGISTRATIONS[:2], REGISTRATIONS[0]])
    with pytest.raises(CryptoError, match="needs 1..65536 validators, got 0"):
        ValidatorSet.from_registrations([])
    with pytest.raises(CryptoError, match="2 public keys but 1 proofs"):
        ValidatorSet(
            public_keys=(REGISTRATIONS[0][0], REGISTRATIONS[1][0]),
            proofs_of_possession=(REGISTRATIONS[0][1],),
        )


def test_validator_set_copies_and_pickles():
    """Simulators deep-copy states: a set is immutable, and pickling re-checks the PoPs."""
    assert copy.deepcopy(ARK_SET) is ARK_SET
    restored = pickle.loads(pickle.dumps(ARK_SET))
    assert restored == ARK_SET
    assert verify_qc(restored, MESSAGE, _qc(range(7)))


def test_direct_construction_also_checks_proofs():
    with pytest.raises(CryptoError, match="validator 0: proof of possession"):
        ValidatorSet(
            public_keys=(REGISTRATIONS[0][0],), proofs_of_possession=(REGISTRATIONS[1][1],)
        )


def test_rogue_key_attack_needs_the_missing_proof_of_possession():
    """Canary: without PoPs, a rogue key pk_r = x*P1 - pk_0 forges a 'QC' of {0, r}.

    The attacker knows x but not pk_r's discrete log, so it cannot produce
    pk_r's proof of possession and registration refuses the key.
    """
    with bls.use_backend("arkworks") as ark:
        x = 123456789
        honest = bls.decode_g1(REGISTRATIONS[0][0])
        rogue_point = ark.g1_sum([ark.g1_generator_mul(x), ark.g1_mul(honest, R - 1)])
        rogue = ark.g1_encode(rogue_point)
        forged = bls.Sign(x, MESSAGE)  # x * H(m) = signature of pk_0 + pk_r
        assert bls.FastAggregateVerify([REGISTRATIONS[0][0], rogue], MESSAGE, forged)
        best_effort_pop = bls.sign_with_dst(x, rogue, bls.POP_DST)
        with pytest.raises(CryptoError, match="validator 1: proof of possession"):
            ValidatorSet.from_registrations([REGISTRATIONS[0], (rogue, best_effort_pop)])


# ---------------------------------------------------------------------------
# Quorum certificates


def test_qc_at_quorum_verifies(vset):
    qc = _qc(range(7))
    assert qc.signer_indices() == tuple(range(7))
    assert len(qc.signers) == 2
    assert verify_qc(vset, MESSAGE, qc)


def test_qc_below_quorum_fails_unless_a_lower_quorum_is_asked(vset):
    qc = _qc([1, 4, 9, 5])  # f + 1 = 4 signers
    assert not verify_qc(vset, MESSAGE, qc)
    assert verify_qc(vset, MESSAGE, qc, quorum=vset.f + 1)
    with pytest.raises(ValueError, match=r"quorum must be an int in \[1, 10\]"):
        verify_qc(vset, MESSAGE, qc, quorum=0)


@pytest.mark.parametrize(
    "field_change",
    [
        {"view": 4},
        {"sequence": 18},
        {"kind": "prepare"},
        {"chain_id": b"another-chain"},
        {"digest": hashlib.sha256(b"another record").digest()},
    ],
    ids=["view", "sequence", "kind", "chain", "digest"],
)
def test_qc_replayed_onto_another_vote_fails(field_change, vset):
    fields = {"chain_id": CHAIN, "kind": "commit", "view": 3, "sequence": 17, "digest": DIGEST}
    other = vote_message(**{**fields, **field_change})
    assert other != MESSAGE
    assert not verify_qc(vset, other, _qc(range(7)))


def test_qc_bitmap_must_match_the_signatures(vset):
    good = _qc(range(7))
    # Claims validator 7 instead of 6: same count, wrong keys.
    swapped = QuorumCertificate(good.signature, bytes([0b10111111, 0]))
    assert not verify_qc(vset, MESSAGE, swapped)
    # Claims an eighth signer whose vote is not in the aggregate.
    extra = QuorumCertificate(good.signature, bytes([0xFF, 0]))
    assert not verify_qc(vset, MESSAGE, extra)


def test_qc_bitmap_length_and_padding_bits_are_checked(vset):
    qc = _qc(range(7))
    assert verify_qc(vset, MESSAGE, qc)
    assert not verify_qc(vset, MESSAGE, QuorumCertificate(qc.signature, qc.signers + b"\x00"))
    assert not verify_qc(vset, MESSAGE, QuorumCertificate(qc.signature, qc.signers[:1]))
    padded = _qc([*range(6), 9])
    assert verify_qc(vset, MESSAGE, padded)
    for bit in range(2, 8):  # bits for validators 10..15, which do not exist
        bitmap = bytes([padded.signers[0], padded.signers[1] | 1 << bit])
        assert not verify_qc(vset, MESSAGE, QuorumCertificate(padded.signature, bitmap))


def test_qc_with_tampered_signature_fails(vset):
    qc = _qc(range(7))
    other = _qc(range(1, 8))
    assert not verify_qc(vset, MESSAGE, QuorumCertificate(other.signature, qc.signers))
    bad = bytearray(qc.signature)
    bad[-1] ^= 1
    assert not verify_qc(vset, MESSAGE, QuorumCertificate(bytes(bad), qc.signers))


def test_verify_qc_uses_cached_key_points(vset, backend, monkeypatch):
    """After the first check no key is decoded again (only the signature is)."""
    qc = _qc(range(7))
    assert verify_qc(vset, MESSAGE, qc)

    def refuse(*args):
        raise AssertionError("verify_qc decoded a public key")

    monkeypatch.setattr(bls, "decode_public_key", refuse)
    monkeypatch.setattr(backend, "g1_decode", refuse)
    assert verify_qc(vset, MESSAGE, qc)


def test_aggregate_votes_rejects_bad_input():
    with pytest.raises(CryptoError, match="zero votes"):
        aggregate_votes(ARK_SET, {})
    with pytest.raises(CryptoError, match="index 10; the set has indices 0..9"):
        aggregate_votes(ARK_SET, {0: VOTES[0], 10: VOTES[1]})
    with pytest.raises(DecodeError, match="vote of validator 3: G2 point must be 96 bytes"):
        aggregate_votes(ARK_SET, {0: VOTES[0], 3: VOTES[3][:95]})


def test_aggregate_votes_matches_on_both_backends(backend):
    assert aggregate_votes(ARK_SET, {i: VOTES[i] for i in (0, 2, 5)}) == _qc([0, 2, 5])


# ---------------------------------------------------------------------------
# QC encoding


@given(
    signature=st.binary(min_size=96, max_size=96),
    signers=st.binary(min_size=1, max_size=200),
)
def test_qc_encoding_round_trips(signature, signers):
    qc = QuorumCertificate(signature, signers)
    data = qc.encode()
    assert data[0] == 1
    assert QuorumCertificate.decode(data) == qc


def test_qc_decode_rejects_every_truncation():
    data = _qc(range(7)).encode()
    for cut in range(len(data)):
        with pytest.raises(DecodeError, match="truncated|at least"):
            QuorumCertificate.decode(data[:cut])


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda d: d + b"\x00", "trailing garbage"),
        (lambda d: b"\x07" + d[1:], "version 7, expected 1"),
        (lambda d: d[:1] + struct.pack(">I", 97) + d[5:], "oversized: signature declares 97"),
        (
            lambda d: d[:1] + struct.pack(">I", 95) + d[5:],
            "signature declares 95 bytes, at least 96",
        ),
        (lambda d: d[:101] + struct.pack(">I", 8193) + d[105:], "oversized: signer bitmap"),
        (lambda d: d[:101] + struct.pack(">I", 0), "signer bitmap declares 0 bytes"),
    ],
    ids=["trailing", "version", "long_signature", "short_signature", "huge_bitmap", "empty_bitmap"],
)
def test_qc_decode_rejects_malformed_input(mutate, reason):
    with pytest.raises(DecodeError, match=reason):
        QuorumCertificate.decode(mutate(_qc(range(7)).encode()))


def test_qc_constructor_checks_field_sizes():
    with pytest.raises(DecodeError, match="96 bytes"):
        QuorumCertificate(b"\x00" * 95, b"\x01")
    with pytest.raises(DecodeError, match="bitmap must be 1..8192 bytes"):
        QuorumCertificate(b"\x00" * 96, b"")


# ---------------------------------------------------------------------------
# Scale and benchmark


def test_large_committee_qc_is_checked_against_cached_points():
    """1024 validators on arkworks: registration, a 683-signer QC, replay rejected."""
    n = 1024
    with bls.use_backend("arkworks"):
        rng = random.Random(0)
        sks = [rng.randrange(1, R) for _ in range(n)]
        vs = ValidatorSet.from_registrations([(bls.SkToPk(sk), bls.PopProve(sk)) for sk in sks])
        signers = rng.sample(range(n), vs.quorum)
        qc = aggregate_votes(vs, {i: bls.Sign(sks[i], MESSAGE) for i in signers})
        assert vs.quorum == 683 and len(qc.signers) == 128
        assert verify_qc(vs, MESSAGE, qc)
        assert not verify_qc(vs, vote_message(CHAIN, "commit", 4, 17, DIGEST), qc)
    # Spot-check a few of the generated keys against the reference backend.
    with bls.use_backend("py_ecc"):
        for i in signers[:2]:
            assert bls.SkToPk(sks[i]) == vs.public_keys[i]


@pytest.mark.parametrize("name", bls.BACKENDS)
def test_bench_bls_reports_every_figure(name):
    start = time.perf_counter()
    result = bench_bls(name, (4,), aggregate_count=2, budget_s=0.0, max_repeats=1)
    assert result["backend"] == name
    for key in ("sign_ms", "verify_ms", "aggregate_ms"):
        assert result[key]["min"] > 0 and result[key]["repeats"] == 1
    assert set(result["qc_verify_ms"]) == {4} and result["qc_signers"] == {4: 3}
    assert time.perf_counter() - start < 60
