"""Gradient commitments: SHA-256 over a canonical byte encoding.

A worker commits to its gradient by hashing the canonical encoding of the
gradient pytree (leaf paths, dtypes, shapes, little-endian bytes). The encoding
itself lives in ``pot_jax.learning.encoding``; crypto depends on nothing inside
the package, so this module holds only the hash-level pieces. The commitment is
plain SHA-256 with no domain prefix, so that
``commit(encode_pytree(g)) == pytree_digest(g) == hashlib.sha256(encode_pytree(g)).digest()``
and anyone can recompute it with a stock SHA-256. Domain separation happens
where commitments are used: in the worker's signed message and in the Merkle
tree's leaf hash.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

__all__ = ["COMMITMENT_SIZE", "commit", "commit_buffers"]

COMMITMENT_SIZE = 32
"""Size in bytes of a gradient commitment (a SHA-256 digest)."""


def commit(encoded: bytes | bytearray | memoryview) -> bytes:
    """Commitment to an encoded gradient.

    Args:
      encoded: the canonical encoding of a gradient pytree.

    Returns:
      ``hashlib.sha256(encoded).digest()``, 32 bytes.
    """
    return hashlib.sha256(encoded).digest()


def commit_buffers(buffers: Iterable[bytes | bytearray | memoryview]) -> bytes:
    """Commitment to the concatenation of ``buffers``, without concatenating them.

    Large gradients are encoded as a sequence of buffers (a header, then each
    leaf's array bytes); hashing them one by one avoids a copy of the whole
    gradient. Each buffer must be C-contiguous (any ``bytes``, or a
    ``memoryview`` of a contiguous array).

    Args:
      buffers: the pieces of the canonical encoding, in order.

    Returns:
      ``commit(b"".join(buffers))``, 32 bytes.
    """
    h = hashlib.sha256()
    for position, buffer in enumerate(buffers):
        if isinstance(buffer, str):
            raise TypeError(
                f"buffer {position} is a str; expected bytes, bytearray or memoryview "
                "(encode text before committing to it)"
            )
        h.update(buffer)
    return h.digest()
