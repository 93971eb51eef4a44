"""The BLS API on both backends: cross-backend identity, rejected edge cases, selection.

py_ecc's own ``G2ProofOfPossession`` serves as a third, independent oracle:
pot-jax composes the ciphersuite itself from group operations, so agreement
with py_ecc's ciphersuite code checks the composition, not just the curve.
"""

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from py_arkworks_bls12381 import G1Point, G2Point
from py_ecc.bls import G2ProofOfPossession as PyEccPoP
from py_ecc.bls.point_compression import compress_G2, modular_squareroot_in_FQ2
from py_ecc.fields import optimized_bls12_381_FQ2 as FQ2
from py_ecc.optimized_bls12_381 import b2

from pot_jax.crypto import bls
from pot_jax.crypto._bls_encoding import FIELD_MODULUS as P
from pot_jax.crypto.errors import CryptoError, DecodeError, InvalidKeyError

R = bls.CURVE_ORDER
MSG = b"pot-jax test message"
SK = bls.KeyGen(hashlib.sha256(b"pot-jax test key").digest())
SK2 = bls.KeyGen(hashlib.sha256(b"pot-jax test key 2").digest())
with bls.use_backend("arkworks"):
    PK, PK2 = bls.SkToPk(SK), bls.SkToPk(SK2)
    SIG = bls.Sign(SK, MSG)
    SIG2 = bls.Sign(SK2, MSG)
G1_INFINITY = bytes([0xC0]) + bytes(47)
G2_INFINITY = bytes([0xC0]) + bytes(95)


@pytest.fixture(params=bls.BACKENDS)
def backend(request):
    with bls.use_backend(request.param) as active:
        yield active


# ---------------------------------------------------------------------------
# Hand-made bad encodings


def _legendre(a: int) -> int:
    return pow(a % P, (P - 1) // 2, P)


def _g1_x_on_curve(on_curve: bool) -> int:
    """Smallest x >= 1 with x^3 + 4 a square (on_curve) or a non-square (off the curve)."""
    x = 1
    while (_legendre(x**3 + 4) == 1) != on_curve:
        x += 1
    return x


def _g1_bytes(x: int, flags: int = 0x80) -> bytes:
    out = bytearray(x.to_bytes(48, "big"))
    out[0] |= flags
    return bytes(out)


G1_NOT_ON_CURVE = _g1_bytes(_g1_x_on_curve(False))
# Almost every curve point lies outside the order-r subgroup (cofactor ~ 2**126).
G1_NOT_IN_SUBGROUP = _g1_bytes(_g1_x_on_curve(True))


def _g2_points(on_curve: bool) -> bytes:
    x0 = 1
    while True:
        x = FQ2([x0, 1])
        y = modular_squareroot_in_FQ2(x**3 + b2)
        if (y is not None) == on_curve:
            break
        x0 += 1
    if on_curve:
        z1, z2 = compress_G2((x, y, FQ2.one()))
        return z1.to_bytes(48, "big") + z2.to_bytes(48, "big")
    return bytes([0x80]) + (1).to_bytes(47, "big") + x0.to_bytes(48, "big")


G2_NOT_ON_CURVE = _g2_points(False)
G2_NOT_IN_SUBGROUP = _g2_points(True)


def _with_first_byte(data: bytes, first: int) -> bytes:
    return bytes([first]) + data[1:]


G1_BAD = {
    "too_short": (PK[:47], "48 bytes"),
    "too_long": (PK + b"\x00", "48 bytes"),
    "compression_flag_clear": (_with_first_byte(PK, PK[0] & 0x7F), "compression flag"),
    "infinity_flag_on_a_point": (_with_first_byte(PK, PK[0] | 0x40), "infinity flag"),
    "infinity_with_sign_flag": (_with_first_byte(G1_INFINITY, 0xE0), "infinity flag"),
    "infinity_with_x_bits": (G1_INFINITY[:-1] + b"\x01", "infinity flag"),
    "zero_x_without_infinity_flag": (bytes([0x80]) + bytes(47), "infinity flag is not set"),
    "x_equal_p": (_g1_bytes(P), ">= the field modulus"),
    "x_above_p": (_g1_bytes(P + 1), ">= the field modulus"),
    "x_all_ones": (_g1_bytes((1 << 381) - 1), ">= the field modulus"),
    "not_on_curve": (G1_NOT_ON_CURVE, "not the x-coordinate"),
    "not_in_subgroup": (G1_NOT_IN_SUBGROUP, "not in the prime-order subgroup"),
}

G2_BAD = {
    "too_short": (SIG[:95], "96 bytes"),
    "too_long": (SIG + b"\x00", "96 bytes"),
    "compression_flag_clear": (_with_first_byte(SIG, SIG[0] & 0x7F), "compression flag"),
    "infinity_flag_on_a_point": (_with_first_byte(SIG, SIG[0] | 0x40), "infinity flag"),
    "infinity_with_sign_flag": (_with_first_byte(G2_INFINITY, 0xE0), "infinity flag"),
    "infinity_with_x_bits": (G2_INFINITY[:-1] + b"\x01", "infinity flag"),
    "x_c1_equal_p": (_g1_bytes(P) + SIG[48:], "x.c1"),
    "x_c0_equal_p": (SIG[:48] + P.to_bytes(48, "big"), "x.c0"),
    "x_c0_flag_bits_set": (SIG[:48] + bytes([SIG[48] | 0xE0]) + SIG[49:], "x.c0"),
    "not_on_curve": (G2_NOT_ON_CURVE, "not the x-coordinate"),
    "not_in_subgroup": (G2_NOT_IN_SUBGROUP, "not in the prime-order subgroup"),
}


def test_hand_made_points_are_what_their_names_say():
    """The subgroup cases are curve points (decodable unchecked) outside the subgroup."""
    assert not G1Point.from_compressed_bytes_unchecked(G1_NOT_IN_SUBGROUP).is_in_subgroup()
    assert not G2Point.from_compressed_bytes_unchecked(G2_NOT_IN_SUBGROUP).is_in_subgroup()
    for off_curve in (G1_NOT_ON_CURVE, G2_NOT_ON_CURVE):
        cls = G1Point if len(off_curve) == 48 else G2Point
        with pytest.raises(ValueError):
            cls.from_compressed_bytes_unchecked(off_curve)


@pytest.mark.parametrize("case", sorted(G1_BAD))
def test_bad_g1_encoding_raises_decode_error_naming_the_problem(case, backend):
    data, reason = G1_BAD[case]
    with pytest.raises(DecodeError, match=reason):
        bls.decode_g1(data)
    with pytest.raises(DecodeError, match=reason):
        bls.decode_public_key(data)
    assert bls.KeyValidate(data) is False


@pytest.mark.parametrize("case", sorted(G2_BAD))
def test_bad_g2_encoding_raises_decode_error_naming_the_problem(case, backend):
    data, reason = G2_BAD[case]
    with pytest.raises(DecodeError, match=reason):
        bls.decode_g2(data)
    with pytest.raises(DecodeError, match=f"signature 1: .*{reason}"):
        bls.Aggregate([SIG, data])


@pytest.mark.parametrize("case", ["not_on_curve", "not_in_subgroup", "x_c1_equal_p"])
def test_verify_returns_false_for_a_bad_signature_encoding(case, backend):
    assert bls.Verify(PK, MSG, G2_BAD[case][0]) is False


@pytest.mark.parametrize("case", ["not_on_curve", "not_in_subgroup", "x_equal_p"])
def test_verify_returns_false_for_a_bad_public_key_encoding(case, backend):
    assert bls.Verify(G1_BAD[case][0], MSG, SIG) is False


# ---------------------------------------------------------------------------
# Infinity, empty signer lists, secret key range


def test_infinity_public_key_is_rejected(backend):
    assert backend.g1_is_identity(bls.decode_g1(G1_INFINITY))  # a valid encoding...
    assert bls.KeyValidate(G1_INFINITY) is False  # ...but never a key
    with pytest.raises(DecodeError, match="infinity"):
        bls.decode_public_key(G1_INFINITY)
    assert bls.Verify(G1_INFINITY, MSG, G2_INFINITY) is False
    assert bls.FastAggregateVerify([PK, G1_INFINITY], MSG, SIG) is False
    assert bls.AggregateVerify([G1_INFINITY], [MSG], G2_INFINITY) is False
    assert bls.PopVerify(G1_INFINITY, G2_INFINITY) is False
    assert bls.batch_verify([G1_INFINITY], [MSG], [G2_INFINITY]) is False


def test_aggregate_key_at_infinity_is_rejected(backend):
    """pk + (-pk) sums to infinity; FastAggregateVerify must not accept the infinity signature."""
    neg_pk = backend.g1_encode(backend.g1_mul(bls.decode_g1(PK), R - 1))
    assert bls.FastAggregateVerify([PK, neg_pk], MSG, G2_INFINITY) is False


def test_empty_signer_lists_are_rejected(backend):
    assert bls.FastAggregateVerify([], MSG, SIG) is False
    assert bls.FastAggregateVerify([], MSG, G2_INFINITY) is False
    assert bls.fast_aggregate_verify_points([], MSG, G2_INFINITY) is False
    assert bls.AggregateVerify([], [], G2_INFINITY) is False
    assert bls.batch_verify([], [], []) is False
    with pytest.raises(CryptoError, match="at least one signature"):
        bls.Aggregate([])


def test_mismatched_lengths_are_rejected(backend):
    assert bls.AggregateVerify([PK, PK2], [MSG], SIG) is False
    assert bls.batch_verify([PK, PK2], [MSG, MSG], [SIG]) is False


BAD_SECRET_KEYS = {
    "zero": (0, "got 0"),
    "order": (R, ">= r"),
    "order_plus_one": (R + 1, ">= r"),
    "two_to_256": (2**256, ">= r"),
    "negative": (-1, "negative"),
    "bool": (True, "must be an int"),
    "bytes": (b"\x01", "must be an int"),
}


@pytest.mark.parametrize("case", sorted(BAD_SECRET_KEYS))
def test_out_of_range_secret_key_is_rejected(case, backend):
    sk, reason = BAD_SECRET_KEYS[case]
    for operation in (
        lambda: bls.SkToPk(sk),
        lambda: bls.Sign(sk, MSG),
        lambda: bls.sign_with_dst(sk, MSG, b"OTHER-TAG"),
        lambda: bls.PopProve(sk),
    ):
        with pytest.raises(InvalidKeyError, match=reason):
            operation()


def test_keygen_rejects_short_keying_material():
    with pytest.raises(InvalidKeyError, match="at least 32 bytes"):
        bls.KeyGen(bytes(31))


def test_domain_separation_tag_length_is_checked():
    with pytest.raises(CryptoError, match="1..255 bytes"):
        bls.sign_with_dst(SK, MSG, b"")
    with pytest.raises(CryptoError, match="1..255 bytes"):
        bls.verify_with_dst(PK, MSG, SIG, b"x" * 256)


def test_secret_key_bounds_are_accepted(backend):
    assert bls.SkToPk(1) == PyEccPoP.SkToPk(1)
    assert bls.SkToPk(R - 1) == PyEccPoP.SkToPk(R - 1)


# ---------------------------------------------------------------------------
# Behaviour on both backends


def test_sign_verify_and_domain_separation(backend):
    assert bls.Sign(SK, MSG) == SIG
    assert bls.Verify(PK, MSG, SIG)
    assert not bls.Verify(PK, MSG + b"!", SIG)
    assert not bls.Verify(PK2, MSG, SIG)
    other = bls.sign_with_dst(SK, MSG, b"POT-JAX-OTHER-TAG")
    assert other != SIG
    assert bls.verify_with_dst(PK, MSG, other, b"POT-JAX-OTHER-TAG")
    assert not bls.Verify(PK, MSG, other)
    assert not bls.verify_with_dst(PK, MSG, SIG, b"POT-JAX-OTHER-TAG")


def test_proof_of_possession(backend):
    pop = bls.PopProve(SK)
    assert pop == PyEccPoP.PopProve(SK)
    assert bls.PopVerify(PK, pop)
    assert not bls.PopVerify(PK2, pop)
    # A PoP is not a signature on the key under the signing tag, and vice versa.
    assert not bls.Verify(PK, PK, pop)
    assert not bls.PopVerify(PK, bls.Sign(SK, PK))


def test_aggregate_and_fast_aggregate_verify(backend):
    agg = bls.Aggregate([SIG, SIG2])
    assert agg == PyEccPoP.Aggregate([SIG, SIG2])
    assert bls.FastAggregateVerify([PK, PK2], MSG, agg)
    assert not bls.FastAggregateVerify([PK], MSG, agg)
    assert not bls.FastAggregateVerify([PK, PK2], MSG + b"!", agg)
    points = [bls.decode_public_key(PK), bls.decode_public_key(PK2)]
    assert bls.fast_aggregate_verify_points(points, MSG, agg)
    assert not bls.fast_aggregate_verify_points(points[:1], MSG, agg)
    assert bls.Aggregate([G2_INFINITY]) == G2_INFINITY


def test_aggregate_verify_distinct_and_repeated_messages(backend):
    other = bls.Sign(SK2, b"another message")
    agg = bls.Aggregate([SIG, other])
    assert bls.AggregateVerify([PK, PK2], [MSG, b"another message"], agg)
    assert not bls.AggregateVerify([PK2, PK], [MSG, b"another message"], agg)
    # The PoP ciphersuite allows repeated messages.
    assert bls.AggregateVerify([PK, PK2], [MSG, MSG], bls.Aggregate([SIG, SIG2]))


def test_batch_verify_rejects_signatures_that_cancel_in_a_plain_sum(backend):
    """batch_verify uses random linear combination: a forged pair (sig1 + D, sig2 - D).

    The canary: the same pair passes the naive check of the sum (an
    aggregate signature), so only the random scalars catch it.
    """
    d = backend.hash_to_g2(b"forgery offset", bls.CIPHERSUITE_DST)
    s1, s2 = bls.decode_g2(SIG), bls.decode_g2(bls.Sign(SK2, b"second"))
    forged1 = backend.g2_encode(backend.g2_sum([s1, d]))
    forged2 = backend.g2_encode(backend.g2_sum([s2, backend.g2_mul(d, R - 1)]))
    assert not bls.Verify(PK, MSG, forged1)
    assert bls.AggregateVerify([PK, PK2], [MSG, b"second"], bls.Aggregate([forged1, forged2]))
    assert not bls.batch_verify([PK, PK2], [MSG, b"second"], [forged1, forged2])
    assert bls.batch_verify([PK, PK2], [MSG, b"second"], [SIG, bls.Sign(SK2, b"second")])


def test_batch_verify_groups_repeated_messages(backend):
    assert bls.batch_verify([PK, PK2, PK], [MSG, MSG, b"x"], [SIG, SIG2, bls.Sign(SK, b"x")])
    assert not bls.batch_verify([PK, PK2], [MSG, MSG], [SIG2, SIG])


def test_public_key_points_are_tied_to_their_backend():
    with bls.use_backend("arkworks"):
        point = bls.decode_public_key(PK)
    with bls.use_backend("py_ecc"):
        with pytest.raises(CryptoError, match="decoded by backend 'arkworks'"):
            bls.fast_aggregate_verify_points([point], MSG, SIG)


# ---------------------------------------------------------------------------
# Cross-backend identity


@settings(max_examples=6)
@given(
    sk=st.one_of(st.integers(1, R - 1), st.sampled_from([1, 2, R - 2, R - 1])),
    message=st.binary(max_size=80),
)
def test_backends_give_byte_identical_keys_and_signatures(sk, message):
    """arkworks, py_ecc (via pot-jax) and py_ecc's own ciphersuite agree byte for byte."""
    outputs = {}
    for name in bls.BACKENDS:
        with bls.use_backend(name):
            outputs[name] = (bls.SkToPk(sk), bls.Sign(sk, message))
    reference = (PyEccPoP.SkToPk(sk), PyEccPoP.Sign(sk, message))
    assert outputs["arkworks"] == outputs["py_ecc"] == reference
    with bls.use_backend("arkworks"):
        assert bls.Verify(reference[0], message, reference[1])


@settings(max_examples=10)
@given(ikm=st.binary(min_size=32, max_size=96), key_info=st.binary(max_size=16))
def test_keygen_matches_py_ecc(ikm, key_info):
    sk = bls.KeyGen(ikm, key_info)
    assert sk == PyEccPoP.KeyGen(ikm, key_info)
    assert 0 < sk < R


@settings(max_examples=4)
@given(sks=st.lists(st.integers(1, R - 1), min_size=1, max_size=3), message=st.binary(max_size=32))
def test_backends_aggregate_identically(sks, message):
    with bls.use_backend("arkworks"):
        sigs = [bls.Sign(sk, message) for sk in sks]
        ark = bls.Aggregate(sigs)
    with bls.use_backend("py_ecc"):
        assert bls.Aggregate(sigs) == ark
    assert PyEccPoP.Aggregate(sigs) == ark


# ---------------------------------------------------------------------------
# Backend selection


def test_default_backend_is_arkworks(monkeypatch):
    monkeypatch.delenv(bls.BACKEND_ENV_VAR, raising=False)
    monkeypatch.setattr(bls, "_current", None)
    assert bls.get_backend().name == "arkworks"


def test_environment_variable_selects_backend(monkeypatch):
    monkeypatch.setenv(bls.BACKEND_ENV_VAR, "py_ecc")
    monkeypatch.setattr(bls, "_current", None)
    assert bls.get_backend().name == "py_ecc"


def test_set_backend_and_use_backend(monkeypatch):
    monkeypatch.setattr(bls, "_current", None)
    bls.set_backend("py_ecc")
    assert bls.get_backend().name == "py_ecc"
    with bls.use_backend("arkworks") as active:
        assert active.name == bls.get_backend().name == "arkworks"
    assert bls.get_backend().name == "py_ecc"


def test_unknown_backend_is_rejected(monkeypatch):
    with pytest.raises(CryptoError, match="expected one of arkworks, py_ecc"):
        bls.set_backend("blst")
    monkeypatch.setenv(bls.BACKEND_ENV_VAR, "blst")
    monkeypatch.setattr(bls, "_current", None)
    with pytest.raises(CryptoError, match="unknown BLS backend 'blst'"):
        bls.get_backend()


@pytest.mark.parametrize("name", ["arkworks", "py_ecc"])
def test_memoised_hash_to_g2_equals_the_backends_own_result(name):
    """The hash_to_G2 memo changes time only: same point as an uncached call, and a
    signature made from a cached hash still verifies."""
    with bls.use_backend(name) as backend:
        msg, dst = b"pot-jax memo test", bls.CIPHERSUITE_DST
        bls.clear_hash_cache()
        first = bls.hash_to_g2(backend, msg, dst)
        again = bls.hash_to_g2(backend, msg, dst)
        direct = backend.hash_to_g2(msg, dst)
        assert backend.g2_encode(first) == backend.g2_encode(again) == backend.g2_encode(direct)
        sk = bls.KeyGen(b"\x01" * 32)
        sig = bls.Sign(sk, msg)
        assert bls.Verify(bls.SkToPk(sk), msg, sig)
        bls.clear_hash_cache()
        assert bls.Sign(sk, msg) == sig
