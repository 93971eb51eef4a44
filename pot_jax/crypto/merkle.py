"""Merkle trees over a round's commitments, as in RFC 6962 section 2.1.

The tree hash (RFC 6962 section 2.1, unchanged in RFC 9162 section 2.1.1):

    MTH({})      = SHA-256()
    MTH({d0})    = SHA-256(0x00 || d0)
    MTH(D[n])    = SHA-256(0x01 || MTH(D[0:k]) || MTH(D[k:n]))

with k the largest power of two smaller than n. The 0x00/0x01 prefixes keep a
leaf from ever hashing like an interior node (second-preimage resistance).
Inclusion proofs are RFC 6962's audit paths, ordered from the leaf's sibling up
to the root's child, and are verified with RFC 9162 section 2.1.3.2.

The root is computed bottom-up: pair neighbours at each level and carry an
unpaired last node up unchanged. That builds the same tree as the recursive
split (tests check it against the recursive definition).
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import struct
from collections.abc import Sequence

from pot_jax.crypto.errors import DecodeError

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "MerkleProof",
    "inclusion_proof",
    "leaf_hash",
    "merkle_root",
    "node_hash",
    "verify_inclusion",
]

HASH_SIZE = 32
_LEAF_PREFIX = b"\x00"
_NODE_PREFIX = b"\x01"
_MAX_TREE_SIZE = 2**64 - 1  # tree sizes and indices are encoded as u64

EMPTY_ROOT = hashlib.sha256(b"").digest()
"""Root of the empty tree, ``MTH({}) = SHA-256()``."""

_Bytes = bytes | bytearray | memoryview


def leaf_hash(data: _Bytes) -> bytes:
    """``SHA-256(0x00 || data)``, the hash of a leaf."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError(f"a Merkle leaf must be bytes, got {type(data).__name__}")
    return hashlib.sha256(_LEAF_PREFIX + bytes(data)).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """``SHA-256(0x01 || left || right)``, the hash of an interior node."""
    return hashlib.sha256(_NODE_PREFIX + left + right).digest()


def _levels(leaves: Sequence[_Bytes]) -> list[list[bytes]]:
    """All levels of the tree, from the leaf hashes up to ``[root]``."""
    level = [leaf_hash(leaf) for leaf in leaves]
    levels = [level]
    while len(level) > 1:
        paired = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            paired.append(level[-1])
        level = paired
        levels.append(level)
    return levels


def merkle_root(leaves: Sequence[_Bytes]) -> bytes:
    """RFC 6962 Merkle tree hash of ``leaves`` (``EMPTY_ROOT`` when there are none).

    Args:
      leaves: the leaf data in order, e.g. the round's accepted commitments.

    Returns:
      The 32-byte root.
    """
    if len(leaves) == 0:
        return EMPTY_ROOT
    return _levels(leaves)[-1][0]


def _path_length(index: int, tree_size: int) -> int:
    """Number of hashes in the audit path of leaf ``index`` in a tree of ``tree_size``."""
    length = 0
    while tree_size > 1:
        k = 1 << ((tree_size - 1).bit_length() - 1)  # largest power of two < tree_size
        length += 1
        if index < k:
            tree_size = k
        else:
            index, tree_size = index - k, tree_size - k
    return length


@dataclasses.dataclass(frozen=True)
class MerkleProof:
    """RFC 6962 audit path for the leaf at ``index`` in a tree of ``tree_size`` leaves.

    Attributes:
      index: position of the leaf, ``0 <= index < tree_size``.
      tree_size: number of leaves in the tree.
      path: sibling hashes from the leaf's level up to the root's child.
    """

    index: int
    tree_size: int
    path: tuple[bytes, ...]

    _MAGIC = b"POT_JAX_MERKLE_PROOF"
    _VERSION = 1
    _HEADER = struct.Struct(">BQQB")  # version, index, tree_size, path length

    def __post_init__(self):
        for name in ("index", "tree_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"MerkleProof.{name} must be an int, got {type(value).__name__}")
        if not 1 <= self.tree_size <= _MAX_TREE_SIZE:
            raise ValueError(
                f"MerkleProof.tree_size must be in [1, 2**64 - 1], got {self.tree_size}"
            )
        if not 0 <= self.index < self.tree_size:
            raise ValueError(
                f"MerkleProof.index must be in [0, tree_size={self.tree_size}), got {self.index}"
            )
        if not isinstance(self.path, tuple):
            raise TypeError(f"MerkleProof.path must be a tuple, got {type(self.path).__name__}")
        for position, node in enumerate(self.path):
            if not isinstance(node, bytes) or len(node) != HASH_SIZE:
                raise ValueError(
                    f"MerkleProof.path[{position}] must be {HASH_SIZE} bytes, got "
                    f"{len(node) if isinstance(node, bytes) else type(node).__name__}"
                )

    def encode(self) -> bytes:
        """Canonical bytes: magic, version, u64 index, u64 tree size, u8 count, the hashes."""
        header = self._HEADER.pack(self._VERSION, self.index, self.tree_size, len(self.path))
        return self._MAGIC + header + b"".join(self.path)

    @classmethod
    def decode(cls, data: bytes) -> MerkleProof:
        """Inverse of ``encode``; raises ``DecodeError`` naming what is wrong.

        Rejects a wrong magic or version, truncated or trailing bytes, an index
        outside the tree, and a path whose length is not the one RFC 6962
        gives for that index and tree size (so each proof has one encoding).
        """
        if not isinstance(data, bytes | bytearray | memoryview):
            raise TypeError(f"a Merkle proof decodes from bytes, got {type(data).__name__}")
        data = bytes(data)
        fixed = len(cls._MAGIC) + cls._HEADER.size
        if len(data) < fixed:
            raise DecodeError(
                f"Merkle proof is truncated: {len(data)} bytes, expected at least {fixed}"
            )
        if data[: len(cls._MAGIC)] != cls._MAGIC:
            raise DecodeError(f"Merkle proof does not start with the magic {cls._MAGIC!r}")
        version, index, tree_size, count = cls._HEADER.unpack_from(data, len(cls._MAGIC))
        if version != cls._VERSION:
            raise DecodeError(
                f"Merkle proof has version {version}, this decoder supports {cls._VERSION}"
            )
        if tree_size == 0:
            raise DecodeError("Merkle proof has tree size 0; a proof needs at least one leaf")
        if index >= tree_size:
            raise DecodeError(f"Merkle proof index {index} is outside a tree of {tree_size} leaves")
        expected = _path_length(index, tree_size)
        if count != expected:
            raise DecodeError(
                f"Merkle proof has {count} path hashes; leaf {index} of a tree of "
                f"{tree_size} needs {expected}"
            )
        size = fixed + count * HASH_SIZE
        if len(data) < size:
            raise DecodeError(f"Merkle proof is truncated: {len(data)} bytes, expected {size}")
        if len(data) > size:
            raise DecodeError(
                f"Merkle proof has {len(data) - size} trailing bytes after its {size} bytes"
            )
        path = tuple(data[i : i + HASH_SIZE] for i in range(fixed, size, HASH_SIZE))
        return cls(index=index, tree_size=tree_size, path=path)


def inclusion_proof(leaves: Sequence[_Bytes], index: int) -> MerkleProof:
    """Audit path proving that ``leaves[index]`` is in the tree of ``leaves``.

    Args:
      leaves: all leaf data of the tree, in order.
      index: the leaf to prove, ``0 <= index < len(leaves)``.

    Returns:
      A ``MerkleProof`` that ``verify_inclusion(merkle_root(leaves), leaves[index], proof)``
      accepts.
    """
    n = len(leaves)
    if isinstance(index, bool) or not isinstance(index, int):
        raise TypeError(f"index must be an int, got {type(index).__name__}")
    if not 0 <= index < n:
        raise ValueError(f"index must be in [0, {n}) for a tree of {n} leaves, got {index}")
    path = []
    position = index
    for level in _levels(leaves)[:-1]:
        sibling = position ^ 1
        if sibling < len(level):
            path.append(level[sibling])
        position >>= 1
    return MerkleProof(index=index, tree_size=n, path=tuple(path))


def verify_inclusion(
    root: bytes, leaf: _Bytes, proof: MerkleProof, *, tree_size: int | None = None
) -> bool:
    """Whether ``proof`` shows ``leaf`` at ``proof.index`` of a tree with this ``root``.

    RFC 9162 section 2.1.3.2. A proof verifies only for its own leaf data,
    index and root. As in RFC 6962, the root alone does not commit to the
    number of leaves: when two tree sizes give the leaf the same path shape
    (leaf 0 of 5 and of 6 leaves, say), the proof verifies under either claimed
    size. Pass the size the root was published with (the round record carries
    it) as ``tree_size`` to reject a proof for any other size.

    Args:
      root: the 32-byte tree root.
      leaf: the leaf data (not its hash).
      proof: the audit path, e.g. from ``inclusion_proof``.
      tree_size: if given, the proof must be for a tree of exactly this size.

    Returns:
      True iff the proof is valid.
    """
    if not isinstance(proof, MerkleProof):
        raise TypeError(f"proof must be a MerkleProof, got {type(proof).__name__}")
    if not isinstance(root, bytes | bytearray | memoryview) or len(root) != HASH_SIZE:
        return False
    if tree_size is not None and proof.tree_size != tree_size:
        return False
    fn, sn = proof.index, proof.tree_size - 1
    r = leaf_hash(leaf)
    for p in proof.path:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and hmac.compare_digest(r, bytes(root))
