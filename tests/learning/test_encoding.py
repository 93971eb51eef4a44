"""Canonical encoding of pytrees: round trip, digests, and named rejections."""

import hashlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pot_jax.learning.encoding import (
    EncodingError,
    check_finite,
    check_pytree,
    decode_pytree,
    encode_pytree,
    flat_digest,
    header_bytes,
    pytree_digest,
    tree_spec,
)


def small_tree(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "Dense_0": {
            "kernel": rng.standard_normal((4, 3)).astype(np.float32),
            "bias": rng.standard_normal(3).astype(np.float32),
        },
        "Dense_1": {"kernel": rng.standard_normal((3, 2)).astype(np.float32)},
    }


def test_round_trip_is_exact():
    tree = small_tree()
    back = decode_pytree(encode_pytree(tree), tree)
    for a, b in zip(jax.tree_util.tree_leaves(tree), jax.tree_util.tree_leaves(back), strict=True):
        np.testing.assert_array_equal(a, b)
        assert a.dtype == b.dtype


def test_digest_is_sha256_of_encoding():
    tree = small_tree()
    assert pytree_digest(tree) == hashlib.sha256(encode_pytree(tree)).digest()


def test_encoding_names_paths_and_is_little_endian():
    tree = {"w": np.array([1.0], dtype=np.float32)}
    data = encode_pytree(tree)
    assert b"['w']" in data and b"<f4" in data
    assert data.endswith(np.array([1.0], dtype="<f4").tobytes())


def test_flat_digest_equals_pytree_digest_of_raveled_leaves():
    tree = small_tree(3)
    spec = tree_spec(tree)
    row = np.concatenate([leaf.reshape(-1) for leaf in jax.tree_util.tree_leaves(tree)])
    assert flat_digest(header_bytes(spec), row) == pytree_digest(tree)


def test_jax_arrays_encode_like_numpy():
    tree = small_tree(1)
    as_jax = jax.tree.map(jnp.asarray, tree)
    assert encode_pytree(as_jax) == encode_pytree(tree)


@given(st.binary(min_size=1, max_size=16), st.integers(0, 200))
def test_any_single_byte_change_changes_digest(delta, pos):
    data = bytearray(encode_pytree(small_tree()))
    before = hashlib.sha256(data).digest()
    pos %= len(data)
    data[pos] ^= delta[0] | 1
    assert hashlib.sha256(data).digest() != before


def test_decode_rejects_wrong_shape_with_names():
    tree = small_tree()
    other = small_tree()
    other["Dense_0"]["kernel"] = np.zeros((3, 4), np.float32)
    with pytest.raises(EncodingError, match=r"\['Dense_0'\]\['kernel'\].*\(3, 4\).*\(4, 3\)"):
        decode_pytree(encode_pytree(other), tree)


def test_decode_rejects_wrong_dtype():
    tree = small_tree()
    other = jax.tree.map(lambda a: a.astype(np.float64), tree)
    with pytest.raises(EncodingError, match="dtype '<f8'.*'<f4'"):
        decode_pytree(encode_pytree(other), tree)


def test_decode_rejects_missing_leaf_and_renamed_leaf():
    tree = small_tree()
    fewer = {"Dense_0": tree["Dense_0"]}
    with pytest.raises(EncodingError, match="2 leaves, model expects 3"):
        decode_pytree(encode_pytree(fewer), tree)
    renamed = {"Dense_0": tree["Dense_0"], "Dense_9": tree["Dense_1"]}
    with pytest.raises(EncodingError, match="Dense_9"):
        decode_pytree(encode_pytree(renamed), tree)


def test_decode_rejects_truncation_trailing_garbage_and_bad_magic():
    tree = small_tree()
    data = encode_pytree(tree)
    with pytest.raises(EncodingError, match="payload has"):
        decode_pytree(data[:-1], tree)
    with pytest.raises(EncodingError, match="payload has"):
        decode_pytree(data + b"\x00", tree)
    with pytest.raises(EncodingError, match="truncated"):
        decode_pytree(data[:10], tree)
    with pytest.raises(EncodingError, match="magic"):
        decode_pytree(b"XXXXXXXX" + data[8:], tree)


@given(st.integers(0, 400))
def test_decode_of_any_truncation_raises_encoding_error(cut):
    tree = small_tree()
    data = encode_pytree(tree)
    with pytest.raises(EncodingError):
        decode_pytree(data[: cut % len(data)], tree)


def test_check_pytree_names_gradient_mismatch():
    spec = tree_spec(small_tree())
    bad = small_tree()
    bad["Dense_1"]["kernel"] = np.zeros((2, 3), np.float32)
    with pytest.raises(
        EncodingError, match=r"gradient leaf \['Dense_1'\]\['kernel'\] has shape \(2, 3\)"
    ):
        check_pytree(bad, spec, what="gradient")
    check_pytree(small_tree(), spec)


def test_check_finite_names_leaf():
    spec = tree_spec(small_tree())
    bad = small_tree()
    bad["Dense_0"]["bias"][1] = np.nan
    with pytest.raises(EncodingError, match=r"\['Dense_0'\]\['bias'\] holds 1 non-finite"):
        check_finite(bad, spec, what="gradient")
    bad["Dense_0"]["bias"][1] = np.inf
    with pytest.raises(EncodingError, match="non-finite"):
        check_finite(bad, spec)


@pytest.mark.parametrize("hash_name", ["sha256", "blake3"])
def test_flat_digests_on_threads_match_pytree_digests(hash_name):
    from concurrent.futures import ThreadPoolExecutor

    from pot_jax.learning.encoding import flat_digests

    trees = [small_tree(s) for s in range(5)]
    spec = tree_spec(trees[0])
    rows = np.stack(
        [np.concatenate([x.reshape(-1) for x in jax.tree_util.tree_leaves(t)]) for t in trees]
    )
    expected = [pytree_digest(t, hash_name=hash_name) for t in trees]
    with ThreadPoolExecutor(2) as pool:
        got = flat_digests(header_bytes(spec), rows, hash_name=hash_name, executor=pool)
    assert got == expected
    assert flat_digests(header_bytes(spec), rows, hash_name=hash_name) == expected
    assert len(set(expected)) == 5


def test_unknown_commitment_hash_is_named():
    with pytest.raises(ValueError, match="commitment hash 'md5' is unknown"):
        pytree_digest(small_tree(), hash_name="md5")
