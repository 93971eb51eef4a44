"""Multi-scalar multiplication and same-message batch verification on both backends.

``g1_msm``/``g2_msm`` are what ``batch_verify_points`` (and through it the
consensus verifier's vote batches; proofs/qc-unforgeability.md, "Batched and
cached vote checks") is built from: arkworks' multiexp is held to py_ecc's
one-by-one products, byte for byte.
"""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pot_jax.crypto import bls
from pot_jax.crypto.errors import CryptoError

R = bls.CURVE_ORDER
MSG = b"pot-jax batch message"
SKS = [11, 22, 33]
# Import py_ecc before hypothesis runs: the import raises the recursion limit, which
# hypothesis would warn about inside a test.
with bls.use_backend("py_ecc"):
    pass
SCALARS = st.one_of(
    st.integers(0, 2**64 - 1), st.integers(0, R - 1), st.sampled_from([0, 1, R - 1])
)


def _base(backend, group: int):
    if group == 1:
        return backend.g1_generator_mul(1)
    return backend.hash_to_g2(b"msm base", bls.CIPHERSUITE_DST)


def _encoded_msm(name: str, group: int, factors: list[int], scalars: list[int]) -> bytes:
    """sum scalars[i] * (factors[i] * base), computed and encoded by one backend."""
    with bls.use_backend(name) as backend:
        mul, msm, encode = (
            (backend.g1_mul, backend.g1_msm, backend.g1_encode)
            if group == 1
            else (backend.g2_mul, backend.g2_msm, backend.g2_encode)
        )
        base = _base(backend, group)
        return encode(msm([mul(base, k) for k in factors], scalars))


@settings(max_examples=6)
@given(
    group=st.sampled_from([1, 2]),
    pairs=st.lists(st.tuples(st.integers(1, R - 1), SCALARS), max_size=3),
)
def test_backends_agree_on_multi_scalar_multiplication(group, pairs):
    """arkworks' multiexp equals py_ecc's one-by-one products in G1 and G2, for 64-bit
    and full-size scalars, zero and r - 1 included, and an empty sum."""
    factors = [k for k, _ in pairs]
    scalars = [r for _, r in pairs]
    ark = _encoded_msm("arkworks", group, factors, scalars)
    assert ark == _encoded_msm("py_ecc", group, factors, scalars)
    # Both are (sum_i secrets[i] * scalars[i]) * base: one multiplication by py_ecc.
    combined = sum(k * r for k, r in pairs) % R
    assert ark == _encoded_msm("py_ecc", group, [1], [combined])


@pytest.mark.parametrize("name", bls.BACKENDS)
def test_msm_rejects_mismatched_lengths(name):
    with bls.use_backend(name) as backend:
        g1 = backend.g1_generator_mul(1)
        with pytest.raises(CryptoError, match="2 points by 1 scalars"):
            backend.g1_msm([g1, g1], [1])
        assert backend.g1_is_identity(backend.g1_msm([], []))


@pytest.mark.parametrize("name", bls.BACKENDS)
def test_batch_verify_points_rejects_a_cancelling_pair_on_both_backends(name):
    """The same verdicts from both backends: valid batches pass, a pair sig + X, sig - X
    (which a plain sum accepts) fails, a lone pair member fails."""
    with bls.use_backend(name):
        keys = [bls.decode_public_key(bls.SkToPk(sk)) for sk in SKS]
        sigs = [bls.Sign(sk, MSG) for sk in SKS]
        x = bls.sign_with_dst(1, b"offset X", b"pot-jax/test/offset")
        minus_x = bls.sign_with_dst(R - 1, b"offset X", b"pot-jax/test/offset")
        forged = [sigs[0], bls.Aggregate([sigs[1], x]), bls.Aggregate([sigs[2], minus_x])]
        assert bls.fast_aggregate_verify_points(keys, MSG, bls.Aggregate(forged))

        def batch(signatures):
            return bls.batch_verify_points(
                keys[: len(signatures)], MSG, [bls.decode_signature(s) for s in signatures]
            )

        assert batch(sigs)
        assert not batch(forged)
        assert not batch(forged[:2])
        assert batch(sigs[:1]) and not batch(forged[1:2])
        assert not bls.batch_verify_points([], MSG, [])
        assert not bls.batch_verify_points(keys, MSG, [bls.decode_signature(sigs[0])])


def test_decoded_signatures_are_tied_to_their_backend():
    with bls.use_backend("arkworks"):
        sig = bls.decode_signature(bls.Sign(SKS[0], MSG))
    with bls.use_backend("py_ecc"):
        key = bls.decode_public_key(bls.SkToPk(SKS[0]))
        with pytest.raises(CryptoError, match="signature point was decoded by backend 'arkworks'"):
            bls.batch_verify_points([key], MSG, [sig])
