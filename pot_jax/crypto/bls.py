"""BLS signatures: the IETF draft's proof-of-possession ciphersuite over BLS12-381.

Ciphersuite ``BLS_SIG_BLS12381G2_XMD:SHA-256_SSWU_RO_POP_`` of
draft-irtf-cfrg-bls-signature-05 (minimal-pubkey-size: public keys are 48-byte
compressed G1 points, signatures 96-byte compressed G2 points), hashing to G2
as in RFC 9380. This is what py_ecc's ``G2ProofOfPossession`` and Ethereum's
consensus layer implement; the Ethereum test vectors hold both backends to it.

The ciphersuite is written once, here, on top of a small ``BLSBackend`` of
group operations; two backends implement it: ``arkworks`` (Rust, default) and
``py_ecc`` (pure Python reference). Select one with ``set_backend`` /
``use_backend`` or the environment variable ``POT_JAX_BLS_BACKEND``.

Conventions follow the draft: secret keys are ints in [1, r-1]; decoding bad
bytes raises ``DecodeError``; the Verify family returns a bool and never raises
for a bad key or signature. Since this is the PoP ciphersuite,
``FastAggregateVerify`` is only safe over keys whose proof of possession was
checked (``PopVerify``); ``pot_jax.crypto.quorum.ValidatorSet`` does that.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import importlib
import os
import secrets
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

from ._bls_encoding import CURVE_ORDER, G1_COMPRESSED_SIZE, G2_COMPRESSED_SIZE
from .errors import CryptoError, DecodeError, InvalidKeyError

__all__ = [
    "AggregateVerify",
    "Aggregate",
    "BACKEND_ENV_VAR",
    "BACKENDS",
    "BLSBackend",
    "CIPHERSUITE_DST",
    "CURVE_ORDER",
    "DEFAULT_BACKEND",
    "FastAggregateVerify",
    "KeyGen",
    "KeyValidate",
    "POP_DST",
    "PUBLIC_KEY_SIZE",
    "PopProve",
    "PopVerify",
    "PublicKeyPoint",
    "SIGNATURE_SIZE",
    "Sign",
    "SignaturePoint",
    "SkToPk",
    "Verify",
    "batch_verify",
    "batch_verify_points",
    "batch_verify_with_dst",
    "decode_g1",
    "decode_g2",
    "decode_public_key",
    "decode_signature",
    "expand_message_xmd",
    "fast_aggregate_verify_points",
    "get_backend",
    "set_backend",
    "sign_with_dst",
    "use_backend",
    "verify_with_dst",
]

CIPHERSUITE_DST = b"BLS_SIG_BLS12381G2_XMD:SHA-256_SSWU_RO_POP_"
POP_DST = b"BLS_POP_BLS12381G2_XMD:SHA-256_SSWU_RO_POP_"
PUBLIC_KEY_SIZE = G1_COMPRESSED_SIZE
SIGNATURE_SIZE = G2_COMPRESSED_SIZE

BACKENDS = ("arkworks", "py_ecc")
DEFAULT_BACKEND = "arkworks"
BACKEND_ENV_VAR = "POT_JAX_BLS_BACKEND"
_BACKEND_MODULES = {
    "arkworks": ("pot_jax.crypto._bls_arkworks", "ArkworksBackend"),
    "py_ecc": ("pot_jax.crypto._bls_py_ecc", "PyEccBackend"),
}

# Random-linear-combination batch verification draws its scalars uniformly
# from [1, 2**64): a batch containing an invalid signature passes with
# probability at most 1 / (2**64 - 1) (as in blst and the Ethereum clients).
_BATCH_SCALAR_BITS = 64


# ---------------------------------------------------------------------------
# Backends


class BLSBackend(Protocol):
    """Group operations on BLS12-381 that the ciphersuite is composed from.

    Points are opaque backend objects. ``g1_decode``/``g2_decode`` accept
    exactly the valid compressed encodings of subgroup points (infinity
    included) and raise ``DecodeError`` otherwise. ``g1_msm``/``g2_msm`` are
    multi-scalar multiplications sum_i scalars[i] * points[i] over points of
    equal number (the identity for none); they raise ``CryptoError`` when the
    lengths differ.
    """

    name: str

    def g1_decode(self, data: bytes) -> object: ...
    def g2_decode(self, data: bytes) -> object: ...
    def g1_encode(self, point: object) -> bytes: ...
    def g2_encode(self, point: object) -> bytes: ...
    def g2_affine(self, point: object) -> tuple[tuple[int, int], tuple[int, int]]: ...
    def g1_is_identity(self, point: object) -> bool: ...
    def g2_is_identity(self, point: object) -> bool: ...
    def g1_generator_mul(self, scalar: int) -> object: ...
    def g1_neg_generator(self) -> object: ...
    def g1_mul(self, point: object, scalar: int) -> object: ...
    def g2_mul(self, point: object, scalar: int) -> object: ...
    def g1_msm(self, points: Sequence[object], scalars: Sequence[int]) -> object: ...
    def g2_msm(self, points: Sequence[object], scalars: Sequence[int]) -> object: ...
    def g1_sum(self, points: Sequence[object]) -> object: ...
    def g2_sum(self, points: Sequence[object]) -> object: ...
    def hash_to_g2(self, message: bytes, dst: bytes) -> object: ...
    def pairing_check(self, g1_points: Sequence[object], g2_points: Sequence[object]) -> bool: ...


_instances: dict[str, BLSBackend] = {}
_current: BLSBackend | None = None


def _load(name: str) -> BLSBackend:
    if name not in _BACKEND_MODULES:
        raise CryptoError(f"unknown BLS backend {name!r}; expected one of {', '.join(BACKENDS)}")
    if name not in _instances:
        module_name, class_name = _BACKEND_MODULES[name]
        _instances[name] = getattr(importlib.import_module(module_name), class_name)()
    return _instances[name]


def get_backend() -> BLSBackend:
    """The active backend: set_backend's choice, else $POT_JAX_BLS_BACKEND, else arkworks."""
    global _current
    if _current is None:
        _current = _load(os.environ.get(BACKEND_ENV_VAR) or DEFAULT_BACKEND)
    return _current


def set_backend(name: str) -> None:
    """Select the backend ("arkworks" or "py_ecc") for every later call."""
    global _current
    _current = _load(name)


@functools.lru_cache(maxsize=4096)
def _hash_cached(backend_name: str, message: bytes, dst: bytes) -> object:
    return _instances[backend_name].hash_to_g2(message, dst)


def clear_hash_cache() -> None:
    """Forget memoised hash_to_G2 results (benchmarks time the uncached cost)."""
    _hash_cached.cache_clear()


def hash_to_g2(backend: BLSBackend, message: bytes, dst: bytes) -> object:
    """hash_to_curve (RFC 9380) into G2, memoised: the votes of one PBFT phase all sign
    the same message, so a replica that signs and checks them hashes it once. The
    result is a fresh immutable point; caching changes time only, never a value."""
    if _instances.get(backend.name) is not backend:  # a backend built outside _load
        return backend.hash_to_g2(message, dst)
    return _hash_cached(backend.name, bytes(message), bytes(dst))


@contextmanager
def use_backend(name: str) -> Iterator[BLSBackend]:
    """Run a block with another backend, restoring the previous one afterwards."""
    global _current
    previous = _current
    _current = _load(name)
    try:
        yield _current
    finally:
        _current = previous


# ---------------------------------------------------------------------------
# Input checks


def _as_bytes(value: object, what: str) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    raise TypeError(f"{what} must be bytes, got {type(value).__name__}")


def _check_secret_key(sk: object) -> int:
    if not isinstance(sk, int) or isinstance(sk, bool):
        raise InvalidKeyError(f"secret key must be an int, got {type(sk).__name__}")
    if not 0 < sk < CURVE_ORDER:
        raise InvalidKeyError(
            "secret key must be in [1, r-1] (r = BLS12-381 group order), got "
            + ("0" if sk == 0 else "a negative number" if sk < 0 else "a value >= r")
        )
    return sk


def _check_dst(dst: object) -> bytes:
    dst = _as_bytes(dst, "domain separation tag")
    if not 0 < len(dst) <= 255:
        raise CryptoError(f"domain separation tag must be 1..255 bytes, got {len(dst)}")
    return dst


# ---------------------------------------------------------------------------
# Hashing (RFC 9380 section 5.3.1, RFC 5869) in pure Python.


def expand_message_xmd(message: bytes, dst: bytes, len_in_bytes: int) -> bytes:
    """expand_message_xmd with SHA-256 (RFC 9380 5.3.1), oversized DSTs per 5.3.3."""
    message = _as_bytes(message, "message")
    dst = _as_bytes(dst, "dst")
    if len(dst) > 255:
        dst = hashlib.sha256(b"H2C-OVERSIZE-DST-" + dst).digest()
    b_in_bytes, s_in_bytes = 32, 64
    ell = -(-len_in_bytes // b_in_bytes)
    if ell > 255 or len_in_bytes > 65535 or len_in_bytes < 0:
        raise CryptoError(f"expand_message_xmd: len_in_bytes={len_in_bytes} is out of range")
    dst_prime = dst + bytes([len(dst)])
    b_0 = hashlib.sha256(
        bytes(s_in_bytes) + message + len_in_bytes.to_bytes(2, "big") + b"\x00" + dst_prime
    ).digest()
    blocks = [hashlib.sha256(b_0 + b"\x01" + dst_prime).digest()]
    for i in range(2, ell + 1):
        mixed = bytes(a ^ b for a, b in zip(b_0, blocks[-1], strict=True))
        blocks.append(hashlib.sha256(mixed + bytes([i]) + dst_prime).digest())
    return b"".join(blocks)[:len_in_bytes]


def _hkdf_extract(salt: bytes, ikm: bytes) -> bytes:
    return hmac.new(salt, ikm, hashlib.sha256).digest()


def _hkdf_expand(prk: bytes, info: bytes, length: int) -> bytes:
    okm, block = b"", b""
    for counter in range(1, -(-length // 32) + 1):
        block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha256).digest()
        okm += block
    return okm[:length]


# ---------------------------------------------------------------------------
# Keys (draft section 2.3 - 2.5)


def KeyGen(ikm: bytes, key_info: bytes = b"") -> int:
    """KeyGen (draft 2.3): a secret key from >= 32 bytes of keying material."""
    ikm = _as_bytes(ikm, "IKM")
    key_info = _as_bytes(key_info, "key_info")
    if len(ikm) < 32:
        raise InvalidKeyError(f"KeyGen needs at least 32 bytes of IKM, got {len(ikm)}")
    length = 48  # ceil(3 * ceil(log2(r)) / 16)
    salt = b"BLS-SIG-KEYGEN-SALT-"
    sk = 0
    while sk == 0:
        salt = hashlib.sha256(salt).digest()
        prk = _hkdf_extract(salt, ikm + b"\x00")
        okm = _hkdf_expand(prk, key_info + length.to_bytes(2, "big"), length)
        sk = int.from_bytes(okm, "big") % CURVE_ORDER
    return sk


def SkToPk(sk: int) -> bytes:
    """SkToPk (draft 2.4): the 48-byte compressed public key sk * P1."""
    backend = get_backend()
    return backend.g1_encode(backend.g1_generator_mul(_check_secret_key(sk)))


@dataclass(frozen=True, slots=True, eq=False)
class PublicKeyPoint:
    """A public key decoded and validated once (KeyValidate) by one backend."""

    backend: str
    point: object


def decode_g1(data: bytes) -> object:
    """Decode a compressed G1 point in the subgroup (infinity allowed); raise DecodeError."""
    return get_backend().g1_decode(_as_bytes(data, "G1 point"))


def decode_g2(data: bytes) -> object:
    """Decode a compressed G2 point in the subgroup (infinity allowed); raise DecodeError."""
    return get_backend().g2_decode(_as_bytes(data, "G2 point"))


def _pk_point(backend: BLSBackend, pk: bytes) -> object:
    point = backend.g1_decode(_as_bytes(pk, "public key"))
    if backend.g1_is_identity(point):
        raise DecodeError("public key is the point at infinity; expected a nonzero G1 point")
    return point


def decode_public_key(pk: bytes) -> PublicKeyPoint:
    """KeyValidate (draft 2.5) that keeps the point; raise DecodeError on a bad key."""
    backend = get_backend()
    return PublicKeyPoint(backend.name, _pk_point(backend, pk))


@dataclass(frozen=True, slots=True, eq=False)
class SignaturePoint:
    """A signature decoded and subgroup-checked once by one backend."""

    backend: str
    point: object


def decode_signature(signature: bytes) -> SignaturePoint:
    """Decode a signature (a G2 subgroup point) and keep it; raise DecodeError on bad bytes."""
    backend = get_backend()
    return SignaturePoint(backend.name, backend.g2_decode(_as_bytes(signature, "signature")))


def _raw(backend: BLSBackend, points: Sequence[PublicKeyPoint | SignaturePoint]) -> list[object]:
    """The backend points inside decoded keys or signatures; raise if another backend made one."""
    name = backend.name
    raw = [p.point for p in points if p.backend == name]
    if len(raw) != len(points):
        wrong = next(p for p in points if p.backend != name)
        what = "public key" if isinstance(wrong, PublicKeyPoint) else "signature"
        raise CryptoError(
            f"{what} point was decoded by backend {wrong.backend!r} but the active backend "
            f"is {name!r}; decode keys and signatures with the backend that verifies"
        )
    return raw


def KeyValidate(pk: bytes) -> bool:
    """KeyValidate (draft 2.5): a valid encoding of a nonzero point in G1's subgroup."""
    try:
        decode_public_key(pk)
    except DecodeError:
        return False
    return True


# ---------------------------------------------------------------------------
# Core operations (draft section 2.6 - 2.9)


def sign_with_dst(sk: int, message: bytes, dst: bytes) -> bytes:
    """CoreSign (draft 2.6) under an explicit domain separation tag."""
    backend = get_backend()
    sk = _check_secret_key(sk)
    h = hash_to_g2(backend, _as_bytes(message, "message"), _check_dst(dst))
    return backend.g2_encode(backend.g2_mul(h, sk))


def _core_verify_points(
    backend: BLSBackend, pk: object, message: bytes, signature: object, dst: bytes
) -> bool:
    # e(PK, H(m)) * e(-P1, sig) == 1
    h = hash_to_g2(backend, message, dst)
    return backend.pairing_check([pk, backend.g1_neg_generator()], [h, signature])


def verify_with_dst(pk: bytes, message: bytes, signature: bytes, dst: bytes) -> bool:
    """CoreVerify (draft 2.7) under an explicit domain separation tag."""
    backend = get_backend()
    message = _as_bytes(message, "message")
    dst = _check_dst(dst)
    try:
        pk_point = _pk_point(backend, pk)
        sig_point = backend.g2_decode(_as_bytes(signature, "signature"))
    except DecodeError:
        return False
    return _core_verify_points(backend, pk_point, message, sig_point, dst)


def Sign(sk: int, message: bytes) -> bytes:
    """Sign (draft 3.1): CoreSign with the ciphersuite's DST."""
    return sign_with_dst(sk, message, CIPHERSUITE_DST)


def Verify(pk: bytes, message: bytes, signature: bytes) -> bool:
    """Verify (draft 3.1): CoreVerify with the ciphersuite's DST."""
    return verify_with_dst(pk, message, signature, CIPHERSUITE_DST)


def Aggregate(signatures: Sequence[bytes]) -> bytes:
    """Aggregate (draft 2.8): sum of signatures; raise CryptoError if empty or invalid.

    Each signature is fully decoded (flags, x < p, on curve, in the subgroup);
    a bad one raises DecodeError naming its index.
    """
    if len(signatures) == 0:
        raise CryptoError("Aggregate needs at least one signature, got none")
    backend = get_backend()
    points = []
    for i, signature in enumerate(signatures):
        try:
            points.append(backend.g2_decode(_as_bytes(signature, f"signature {i}")))
        except DecodeError as exc:
            raise DecodeError(f"signature {i}: {exc}") from exc
    return backend.g2_encode(backend.g2_sum(points))


def AggregateVerify(pks: Sequence[bytes], messages: Sequence[bytes], signature: bytes) -> bool:
    """AggregateVerify (draft 3.3.4 for PoP: CoreAggregateVerify, messages need not differ)."""
    if len(pks) == 0 or len(pks) != len(messages):
        return False
    backend = get_backend()
    msgs = [_as_bytes(m, "message") for m in messages]
    try:
        pk_points = [_pk_point(backend, pk) for pk in pks]
        sig_point = backend.g2_decode(_as_bytes(signature, "signature"))
    except DecodeError:
        return False
    g2s = [hash_to_g2(backend, m, CIPHERSUITE_DST) for m in msgs]
    return backend.pairing_check([*pk_points, backend.g1_neg_generator()], [*g2s, sig_point])


def fast_aggregate_verify_points(
    points: Sequence[PublicKeyPoint], message: bytes, signature: bytes
) -> bool:
    """FastAggregateVerify over keys already decoded and validated by decode_public_key.

    One G1 sum and one pairing check; no key is decoded or subgroup-checked
    again. The caller must have checked every key's proof of possession.
    """
    if len(points) == 0:
        return False
    backend = get_backend()
    raw = _raw(backend, points)
    message = _as_bytes(message, "message")
    aggregate = backend.g1_sum(raw)
    if backend.g1_is_identity(aggregate):
        # The draft's CoreVerify runs KeyValidate on the aggregate key.
        return False
    try:
        sig_point = backend.g2_decode(_as_bytes(signature, "signature"))
    except DecodeError:
        return False
    return _core_verify_points(backend, aggregate, message, sig_point, CIPHERSUITE_DST)


def FastAggregateVerify(pks: Sequence[bytes], message: bytes, signature: bytes) -> bool:
    """FastAggregateVerify (draft 3.3.4): many signers, one message."""
    if len(pks) == 0:
        return False
    try:
        points = [decode_public_key(pk) for pk in pks]
    except DecodeError:
        return False
    return fast_aggregate_verify_points(points, message, signature)


def PopProve(sk: int) -> bytes:
    """PopProve (draft 3.3.2): sign one's own public key under the PoP tag."""
    return sign_with_dst(sk, SkToPk(sk), POP_DST)


def PopVerify(pk: bytes, proof: bytes) -> bool:
    """PopVerify (draft 3.3.3)."""
    pk = _as_bytes(pk, "public key")
    return verify_with_dst(pk, pk, proof, POP_DST)


# ---------------------------------------------------------------------------
# Batch verification (not in the draft)


def _batch_scalars(n: int) -> list[int]:
    """n fresh scalars, uniform in [1, 2**64), from the operating system's CSPRNG."""
    return [secrets.randbelow((1 << _BATCH_SCALAR_BITS) - 1) + 1 for _ in range(n)]


def batch_verify_points(
    points: Sequence[PublicKeyPoint], message: bytes, signatures: Sequence[SignaturePoint]
) -> bool:
    """True iff every signatures[i] is points[i]'s signature on ``message``, by random
    linear combination: e(sum r_i PK_i, H(m)) * e(-P1, sum r_i sig_i) == 1.

    The r_i are drawn afresh on every call (``_batch_scalars``), after the
    signatures are fixed, so a batch holding an invalid signature passes with
    probability at most 1 / (2**64 - 1); a plain sum would accept invalid
    signatures that cancel (sig_1 + X, sig_2 - X). All valid: always True. A
    single pair is checked exactly, without scalars. Keys must come from
    ``decode_public_key`` with a checked proof of possession, signatures from
    ``decode_signature`` (both subgroup-checked: the combination is only sound
    in the prime-order groups). Empty or mismatched inputs return False.
    """
    n = len(points)
    if n == 0 or len(signatures) != n:
        return False
    backend = get_backend()
    pk_raw, sig_raw = _raw(backend, points), _raw(backend, signatures)
    message = _as_bytes(message, "message")
    if n == 1:
        return _core_verify_points(backend, pk_raw[0], message, sig_raw[0], CIPHERSUITE_DST)
    scalars = _batch_scalars(n)
    combined_pk = backend.g1_msm(pk_raw, scalars)
    combined_sig = backend.g2_msm(sig_raw, scalars)
    return _core_verify_points(backend, combined_pk, message, combined_sig, CIPHERSUITE_DST)


def batch_verify_with_dst(
    pks: Sequence[bytes],
    messages: Sequence[bytes],
    signatures: Sequence[bytes],
    dst: bytes,
) -> bool:
    """True iff every (pk_i, message_i, signature_i) verifies, by random linear combination.

    Checks prod_m e(sum_{i: m_i = m} r_i PK_i, H(m)) * e(-P1, sum_i r_i sig_i) == 1
    with fresh random r_i in [1, 2**64): one multi-pairing over the distinct
    messages instead of a pairing check per signature. Every key and
    signature is decoded and subgroup-checked individually first (the
    combination is only sound inside the prime-order subgroups). A batch with
    any invalid triple is accepted with probability <= 1 / (2**64 - 1); the
    random scalars defeat pairs of invalid signatures that cancel in a plain
    sum. An empty batch or mismatched lengths return False.
    """
    n = len(pks)
    if n == 0 or len(messages) != n or len(signatures) != n:
        return False
    backend = get_backend()
    dst = _check_dst(dst)
    msgs = [_as_bytes(m, "message") for m in messages]
    try:
        pk_points = [_pk_point(backend, pk) for pk in pks]
        sig_points = [backend.g2_decode(_as_bytes(s, "signature")) for s in signatures]
    except DecodeError:
        return False
    scalars = _batch_scalars(n)
    by_message: dict[bytes, tuple[list[object], list[int]]] = {}
    for pk_point, message, r in zip(pk_points, msgs, scalars, strict=True):
        group_points, group_scalars = by_message.setdefault(message, ([], []))
        group_points.append(pk_point)
        group_scalars.append(r)
    combined_sig = backend.g2_msm(sig_points, scalars)
    g1s = [
        backend.g1_msm(group_points, group_scalars)
        for group_points, group_scalars in by_message.values()
    ]
    g2s = [hash_to_g2(backend, m, dst) for m in by_message]
    return backend.pairing_check([*g1s, backend.g1_neg_generator()], [*g2s, combined_sig])


def batch_verify(
    pks: Sequence[bytes], messages: Sequence[bytes], signatures: Sequence[bytes]
) -> bool:
    """Batch-verify ciphersuite signatures; see batch_verify_with_dst."""
    return batch_verify_with_dst(pks, messages, signatures, CIPHERSUITE_DST)
