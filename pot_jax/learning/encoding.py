"""Canonical byte encoding of parameter and gradient pytrees.

The encoding is what a gradient commitment hashes, so it must be the same on
every machine: a header naming every leaf (its path, dtype and shape, in the
order of ``jax.tree_util.tree_flatten``, which sorts dict keys), then the leaves'
bytes, little-endian, concatenated in that order::

    b"POTJAXT1"                                    magic + version
    u32 leaf count
    per leaf: u16 len, path (utf-8) | u8 len, dtype ('<f4') | u8 ndim | ndim x u64 dims
    u64 payload length
    payload

All integers are little-endian. A model's header is fixed, so a worker's row of
the flat gradient matrix (the same leaves, raveled in the same order) is the
payload: ``flat_digest`` hashes header then row without copying either.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable
from concurrent.futures import Executor
from typing import NamedTuple

import blake3
import jax
import numpy as np

MAGIC = b"POTJAXT1"
DIGEST_SIZE = 32

# Commitment hashes, all 256-bit. SHA-256 is the default and what protocol runs
# commit with (docs/architecture.md, "One round, as implemented"); BLAKE3 is the
# measured-faster option for large gradients (see
# ``pot-jax bench throughput --commitment-hash``). Both release the GIL on
# large buffers, so rows hash in parallel on a thread pool.
COMMITMENT_HASHES: dict[str, Callable] = {"sha256": hashlib.sha256, "blake3": blake3.blake3}


class EncodingError(ValueError):
    """Bytes or a pytree that do not match the model's structure."""


class TreeSpec(NamedTuple):
    """The structure a pytree must have: treedef, leaf paths, dtypes and shapes."""

    treedef: jax.tree_util.PyTreeDef
    paths: tuple[str, ...]
    dtypes: tuple[np.dtype, ...]
    shapes: tuple[tuple[int, ...], ...]

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(int(np.prod(s, dtype=np.int64)) for s in self.shapes)

    @property
    def num_params(self) -> int:
        return sum(self.sizes)

    @property
    def payload_nbytes(self) -> int:
        return sum(n * d.itemsize for n, d in zip(self.sizes, self.dtypes, strict=True))


def tree_spec(like) -> TreeSpec:
    """The spec of ``like`` (any pytree of arrays, e.g. the model's params)."""
    leaves_with_path, treedef = jax.tree_util.tree_flatten_with_path(like)
    paths = tuple(jax.tree_util.keystr(p) for p, _ in leaves_with_path)
    dtypes = tuple(np.dtype(leaf.dtype).newbyteorder("<") for _, leaf in leaves_with_path)
    shapes = tuple(tuple(int(d) for d in np.shape(leaf)) for _, leaf in leaves_with_path)
    return TreeSpec(treedef, paths, dtypes, shapes)


def header_bytes(spec: TreeSpec) -> bytes:
    """The encoding's header for pytrees of this spec."""
    out = [MAGIC, struct.pack("<I", len(spec.paths))]
    for path, dtype, shape in zip(spec.paths, spec.dtypes, spec.shapes, strict=True):
        p = path.encode("utf-8")
        d = dtype.str.encode("ascii")
        out.append(struct.pack("<H", len(p)) + p + struct.pack("<B", len(d)) + d)
        out.append(struct.pack("<B", len(shape)) + struct.pack(f"<{len(shape)}Q", *shape))
    out.append(struct.pack("<Q", spec.payload_nbytes))
    return b"".join(out)


def _leaf_bytes(leaf, dtype: np.dtype) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(leaf), dtype=dtype).reshape(-1).view(np.uint8)


def check_pytree(tree, spec: TreeSpec, *, what: str = "pytree") -> None:
    """Raise EncodingError unless ``tree`` has exactly the structure of ``spec``."""
    leaves_with_path, treedef = jax.tree_util.tree_flatten_with_path(tree)
    paths = tuple(jax.tree_util.keystr(p) for p, _ in leaves_with_path)
    if treedef != spec.treedef:
        missing = sorted(set(spec.paths) - set(paths))
        extra = sorted(set(paths) - set(spec.paths))
        raise EncodingError(
            f"{what} has leaves {list(paths)}, model expects {list(spec.paths)}"
            f" (missing {missing}, unexpected {extra})"
        )
    for path, (_, leaf), dtype, shape in zip(
        spec.paths, leaves_with_path, spec.dtypes, spec.shapes, strict=True
    ):
        got_shape = tuple(np.shape(leaf))
        if got_shape != shape:
            raise EncodingError(f"{what} leaf {path} has shape {got_shape}, model expects {shape}")
        got_dtype = np.dtype(getattr(leaf, "dtype", np.asarray(leaf).dtype))
        if got_dtype.newbyteorder("<") != dtype:
            raise EncodingError(f"{what} leaf {path} has dtype {got_dtype}, model expects {dtype}")


def check_finite(tree, spec: TreeSpec, *, what: str = "pytree") -> None:
    """Raise EncodingError naming the first leaf that holds NaN or Inf."""
    for path, leaf in zip(spec.paths, jax.tree_util.tree_leaves(tree), strict=True):
        arr = np.asarray(leaf)
        if not np.all(np.isfinite(arr)):
            bad = int(np.count_nonzero(~np.isfinite(arr)))
            raise EncodingError(f"{what} leaf {path} holds {bad} non-finite values (NaN or Inf)")


def encode_pytree(tree, spec: TreeSpec | None = None) -> bytes:
    """Canonical bytes of ``tree`` (checked against ``spec`` when given)."""
    spec = tree_spec(tree) if spec is None else spec
    check_pytree(tree, spec)
    leaves = jax.tree_util.tree_leaves(tree)
    body = [_leaf_bytes(leaf, d).tobytes() for leaf, d in zip(leaves, spec.dtypes, strict=True)]
    return header_bytes(spec) + b"".join(body)


def pytree_digest(tree, spec: TreeSpec | None = None, *, hash_name: str = "sha256") -> bytes:
    """Hash (SHA-256 by default) of the canonical encoding, leaf by leaf without concatenating."""
    spec = tree_spec(tree) if spec is None else spec
    check_pytree(tree, spec)
    h = _hasher(hash_name)()
    h.update(header_bytes(spec))
    for leaf, d in zip(jax.tree_util.tree_leaves(tree), spec.dtypes, strict=True):
        h.update(_leaf_bytes(leaf, d))
    return h.digest()


def decode_pytree(data: bytes, like):
    """Decode bytes made by ``encode_pytree`` into a pytree shaped like ``like``.

    Raises EncodingError naming the first field that differs from ``like``'s
    structure (magic, leaf count, a leaf's path, dtype or shape, payload length).
    """
    spec = like if isinstance(like, TreeSpec) else tree_spec(like)
    view = memoryview(data)
    pos = 0

    def take(n: int, field: str) -> memoryview:
        nonlocal pos
        if pos + n > len(view):
            raise EncodingError(
                f"encoding truncated in {field}: needs {n} bytes at offset {pos}, "
                f"only {len(view) - pos} left"
            )
        out = view[pos : pos + n]
        pos += n
        return out

    if bytes(take(len(MAGIC), "magic")) != MAGIC:
        raise EncodingError(f"encoding starts with {bytes(view[:8])!r}, expected magic {MAGIC!r}")
    (count,) = struct.unpack("<I", take(4, "leaf count"))
    if count != len(spec.paths):
        raise EncodingError(f"encoding has {count} leaves, model expects {len(spec.paths)}")
    for path, dtype, shape in zip(spec.paths, spec.dtypes, spec.shapes, strict=True):
        (plen,) = struct.unpack("<H", take(2, f"path length of {path}"))
        got_path = bytes(take(plen, f"path of {path}")).decode("utf-8", errors="replace")
        if got_path != path:
            raise EncodingError(f"encoding has leaf {got_path!r} where the model has {path!r}")
        (dlen,) = struct.unpack("<B", take(1, f"dtype length of {path}"))
        got_dtype = bytes(take(dlen, f"dtype of {path}")).decode("ascii", errors="replace")
        if got_dtype != dtype.str:
            raise EncodingError(f"leaf {path} has dtype {got_dtype!r}, model expects {dtype.str!r}")
        (ndim,) = struct.unpack("<B", take(1, f"rank of {path}"))
        got_shape = struct.unpack(f"<{ndim}Q", take(8 * ndim, f"shape of {path}"))
        if tuple(got_shape) != shape:
            raise EncodingError(f"leaf {path} has shape {tuple(got_shape)}, model expects {shape}")
    (nbytes,) = struct.unpack("<Q", take(8, "payload length"))
    if nbytes != spec.payload_nbytes:
        raise EncodingError(
            f"payload length is {nbytes} bytes, model expects {spec.payload_nbytes}"
        )
    if len(view) - pos != nbytes:
        raise EncodingError(
            f"payload has {len(view) - pos} bytes after the header, expected exactly {nbytes}"
        )
    leaves = []
    for dtype, shape, size in zip(spec.dtypes, spec.shapes, spec.sizes, strict=True):
        raw = take(size * dtype.itemsize, "payload")
        leaves.append(
            np.frombuffer(raw, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="))
        )
    return jax.tree_util.tree_unflatten(spec.treedef, leaves)


def flat_row_bytes(row_P: np.ndarray) -> np.ndarray:
    """A flat float row as little-endian bytes, without copying on little-endian hosts."""
    row = np.asarray(row_P)
    if row.dtype.byteorder == ">" or (row.dtype.byteorder == "=" and np.little_endian is False):
        row = row.astype(row.dtype.newbyteorder("<"))
    return np.ascontiguousarray(row).reshape(-1).view(np.uint8)


def _hasher(name: str) -> Callable:
    try:
        return COMMITMENT_HASHES[name]
    except KeyError:
        raise ValueError(
            f"commitment hash {name!r} is unknown; expected one of {sorted(COMMITMENT_HASHES)}"
        ) from None


def flat_digest(header: bytes, row_P: np.ndarray, *, hash_name: str = "sha256") -> bytes:
    """Digest of the pytree whose canonical leaves, raveled in order, are ``row_P``.

    Equal to ``pytree_digest(unravel(row_P))`` for a spec whose leaves all share
    ``row_P``'s dtype; this is the commitment hot path (no concatenation).
    """
    h = _hasher(hash_name)()
    h.update(header)
    h.update(flat_row_bytes(row_P))  # update() releases the GIL on large buffers
    return h.digest()


def flat_digests(
    header: bytes,
    grads_WxP: np.ndarray,
    *,
    hash_name: str = "sha256",
    executor: Executor | None = None,
) -> list[bytes]:
    """One commitment per worker row, on ``executor``'s threads when given."""
    _hasher(hash_name)
    rows = np.asarray(grads_WxP)
    if executor is None:
        return [flat_digest(header, row, hash_name=hash_name) for row in rows]
    return list(executor.map(lambda row: flat_digest(header, row, hash_name=hash_name), rows))
