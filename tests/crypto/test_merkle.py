"""Tests for pot_jax.crypto.merkle against RFC 6962's recursive definitions."""

import dataclasses
import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pot_jax.crypto.errors import DecodeError
from pot_jax.crypto.merkle import (
    EMPTY_ROOT,
    MerkleProof,
    inclusion_proof,
    leaf_hash,
    merkle_root,
    node_hash,
    verify_inclusion,
)


def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _split(n: int) -> int:
    """RFC 6962: the largest power of two smaller than n (n > 1)."""
    k = 1
    while 2 * k < n:
        k *= 2
    return k


def _rfc_mth(leaves: list[bytes]) -> bytes:
    """RFC 6962 section 2.1, MTH, transcribed literally."""
    n = len(leaves)
    if n == 0:
        return _sha256(b"")
    if n == 1:
        return _sha256(b"\x00" + leaves[0])
    k = _split(n)
    return _sha256(b"\x01" + _rfc_mth(leaves[:k]) + _rfc_mth(leaves[k:]))


def _rfc_path(m: int, leaves: list[bytes]) -> list[bytes]:
    """RFC 6962 section 2.1.1, PATH(m, D[n]), transcribed literally."""
    n = len(leaves)
    if n == 1:
        return []
    k = _split(n)
    if m < k:
        return _rfc_path(m, leaves[:k]) + [_rfc_mth(leaves[k:])]
    return _rfc_path(m - k, leaves[k:]) + [_rfc_mth(leaves[:k])]


def _leaves(n: int) -> list[bytes]:
    return [_sha256(i.to_bytes(4, "big")) for i in range(n)]


leaf_lists = st.lists(st.binary(max_size=40), min_size=1, max_size=70)


def test_empty_tree_root_is_sha256_of_nothing():
    assert merkle_root([]) == EMPTY_ROOT == _sha256(b"")
    assert EMPTY_ROOT.hex() == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def test_leaf_and_node_hashes_are_domain_separated():
    """A leaf whose data is `left || right` does not hash like the node over them."""
    left, right = _sha256(b"l"), _sha256(b"r")
    assert leaf_hash(left + right) != node_hash(left, right)
    assert leaf_hash(b"x") == _sha256(b"\x00x")
    assert node_hash(left, right) == _sha256(b"\x01" + left + right)


def test_known_root_of_two_leaves():
    """Worked by hand: MTH({a, b}) = H(0x01 || H(0x00 || a) || H(0x00 || b))."""
    expected = _sha256(b"\x01" + _sha256(b"\x00a") + _sha256(b"\x00b"))
    assert merkle_root([b"a", b"b"]) == expected


def test_exhaustive_small_trees_match_rfc_6962():
    """For every size 1..64 and every index: root, audit path, and verification."""
    for n in range(1, 65):
        leaves = _leaves(n)
        root = merkle_root(leaves)
        assert root == _rfc_mth(leaves), n
        for m in range(n):
            proof = inclusion_proof(leaves, m)
            assert proof.index == m and proof.tree_size == n
            assert list(proof.path) == _rfc_path(m, leaves), (n, m)
            assert verify_inclusion(root, leaves[m], proof), (n, m)
            assert MerkleProof.decode(proof.encode()) == proof


@given(leaf_lists, st.data())
def test_root_and_path_match_rfc_recursive_definition(leaves, data):
    """The bottom-up tree equals RFC 6962's recursive split for any leaves."""
    assert merkle_root(leaves) == _rfc_mth(leaves)
    m = data.draw(st.integers(0, len(leaves) - 1))
    assert list(inclusion_proof(leaves, m).path) == _rfc_path(m, leaves)


@given(leaf_lists, st.data())
def test_proof_fails_for_wrong_leaf_index_size_or_root(leaves, data):
    """A proof verifies only for its own leaf data, index, tree size and root."""
    n = len(leaves)
    m = data.draw(st.integers(0, n - 1))
    root = merkle_root(leaves)
    proof = inclusion_proof(leaves, m)
    assert verify_inclusion(root, leaves[m], proof)

    assert not verify_inclusion(root, leaves[m] + b"\x00", proof)
    assert not verify_inclusion(_sha256(root), leaves[m], proof)
    assert not verify_inclusion(root[:31], leaves[m], proof)
    for other in range(n):
        # A duplicate leaf really is at the other index too, so only distinct data must fail.
        if leaves[other] != leaves[m]:
            assert not verify_inclusion(root, leaves[other], proof)
            moved = dataclasses.replace(proof, index=other)
            assert not verify_inclusion(root, leaves[m], moved)
    assert verify_inclusion(root, leaves[m], proof, tree_size=n)
    for size in {n - 1, n + 1, 2 * n, n + 7} - {n}:
        if m < size:
            resized = dataclasses.replace(proof, tree_size=size)
            assert not verify_inclusion(root, leaves[m], resized, tree_size=n)
            if _path_shape(m, size) != _path_shape(m, n):
                assert not verify_inclusion(root, leaves[m], resized)


def _path_shape(m: int, n: int) -> list[bool]:
    """Which side each audit-path hash joins on (True: the sibling is on the right)."""
    if n == 1:
        return []
    k = _split(n)
    return _path_shape(m, k) + [True] if m < k else _path_shape(m - k, n - k) + [False]


def test_root_does_not_bind_tree_size_unless_the_verifier_gives_it():
    """RFC 6962 behaviour: leaf 0 has the same path shape in trees of 5 and 6 leaves.

    The 5-leaf proof therefore also verifies as a claim about a 6-leaf tree;
    passing the published size closes that gap.
    """
    leaves = _leaves(5)
    root = merkle_root(leaves)
    proof = inclusion_proof(leaves, 0)
    claimed_six = dataclasses.replace(proof, tree_size=6)
    assert verify_inclusion(root, leaves[0], claimed_six)
    assert not verify_inclusion(root, leaves[0], claimed_six, tree_size=5)
    assert verify_inclusion(root, leaves[0], proof, tree_size=5)
    assert not verify_inclusion(root, leaves[0], proof, tree_size=6)


@given(leaf_lists, st.data())
def test_tampered_paths_fail(leaves, data):
    """Flipping a bit, dropping, adding, reordering or swapping a path hash breaks the proof."""
    n = len(leaves)
    m = data.draw(st.integers(0, n - 1))
    root = merkle_root(leaves)
    path = inclusion_proof(leaves, m).path

    def check(bad_path):
        bad = MerkleProof(index=m, tree_size=n, path=tuple(bad_path))
        assert not verify_inclusion(root, leaves[m], bad)

    check(path + (_sha256(b"extra"),))
    if path:
        position = data.draw(st.integers(0, len(path) - 1))
        bit = data.draw(st.integers(0, 255))
        flipped = bytearray(path[position])
        flipped[bit // 8] ^= 1 << (bit % 8)
        check(path[:position] + (bytes(flipped),) + path[position + 1 :])
        check(path[:-1])
        check(path[1:])
    if len(path) >= 2 and path[0] != path[1]:
        check((path[1], path[0]) + path[2:])


def test_proof_from_another_tree_fails():
    leaves = _leaves(10)
    other = leaves[:5] + [b"forged"] + leaves[6:]
    proof = inclusion_proof(other, 5)
    assert verify_inclusion(merkle_root(other), b"forged", proof)
    assert not verify_inclusion(merkle_root(leaves), b"forged", proof)


def test_single_leaf_tree_has_empty_path():
    proof = inclusion_proof([b"only"], 0)
    assert proof.path == ()
    assert verify_inclusion(leaf_hash(b"only"), b"only", proof)
    assert not verify_inclusion(
        leaf_hash(b"only"), b"only", dataclasses.replace(proof, tree_size=2)
    )


def test_inclusion_proof_rejects_out_of_range_index():
    with pytest.raises(ValueError, match=r"index must be in \[0, 3\).*got 3"):
        inclusion_proof(_leaves(3), 3)
    with pytest.raises(ValueError, match="got -1"):
        inclusion_proof(_leaves(3), -1)
    with pytest.raises(ValueError, match=r"\[0, 0\)"):
        inclusion_proof([], 0)


def test_leaves_must_be_bytes():
    """An int leaf would silently become zero bytes under bytes(); it is refused."""
    with pytest.raises(TypeError, match="a Merkle leaf must be bytes, got int"):
        merkle_root([b"a", 5])
    with pytest.raises(TypeError, match="decodes from bytes, got int"):
        MerkleProof.decode(60)


def test_merkle_proof_validates_its_fields():
    with pytest.raises(ValueError, match="index must be in"):
        MerkleProof(index=4, tree_size=4, path=())
    with pytest.raises(ValueError, match="tree_size must be in"):
        MerkleProof(index=0, tree_size=0, path=())
    with pytest.raises(ValueError, match=r"path\[0\] must be 32 bytes, got 31"):
        MerkleProof(index=0, tree_size=2, path=(b"\x00" * 31,))
    with pytest.raises(TypeError, match="path must be a tuple"):
        MerkleProof(index=0, tree_size=2, path=[b"\x00" * 32])


@given(leaf_lists, st.data())
def test_proof_encoding_round_trips(leaves, data):
    m = data.draw(st.integers(0, len(leaves) - 1))
    proof = inclusion_proof(leaves, m)
    encoded = proof.encode()
    assert MerkleProof.decode(encoded) == proof
    assert MerkleProof.decode(bytearray(encoded)) == proof


def test_proof_decoding_rejects_malformed_bytes():
    """Truncated, oversized, trailing garbage and inconsistent headers raise DecodeError."""
    proof = inclusion_proof(_leaves(13), 6)
    good = proof.encode()
    magic = b"POT_JAX_MERKLE_PROOF"
    cases = {
        "truncated: 10 bytes": good[:10],
        "truncated": good[:-1],
        "1 trailing bytes": good + b"\x00",
        "33 trailing bytes": good + b"\x00" * 33,
        "magic": b"X" + good[1:],
        "version 2": magic + b"\x02" + good[len(magic) + 1 :],
    }
    for match, data in cases.items():
        with pytest.raises(DecodeError, match=match):
            MerkleProof.decode(data)

    def with_header(index, tree_size, count):
        header = index.to_bytes(8, "big") + tree_size.to_bytes(8, "big") + bytes([count])
        return magic + b"\x01" + header + b"\x00" * 32 * count

    with pytest.raises(DecodeError, match="tree size 0"):
        MerkleProof.decode(with_header(0, 0, 0))
    with pytest.raises(DecodeError, match="index 13 is outside a tree of 13"):
        MerkleProof.decode(with_header(13, 13, 4))
    with pytest.raises(DecodeError, match="has 3 path hashes; leaf 6 of a tree of 13 needs 4"):
        MerkleProof.decode(with_header(6, 13, 3))
    assert MerkleProof.decode(with_header(6, 13, 4)).tree_size == 13


def test_large_tree_proof_verifies():
    """A round of 1000 commitments: every tenth proof verifies, with 10 hashes each."""
    leaves = _leaves(1000)
    root = merkle_root(leaves)
    for m in range(0, 1000, 10):
        proof = inclusion_proof(leaves, m)
        assert len(proof.path) == 10
        assert verify_inclusion(root, leaves[m], proof)
