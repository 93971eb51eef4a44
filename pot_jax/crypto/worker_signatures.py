"""Worker signatures over ``(chain id, round, worker id, commitment)``.

Each worker signs the canonical bytes of a ``WorkerMessage`` with its own key.
Two schemes sit behind one small interface, a factory returning a record of
functions (optax style): Ed25519 from ``cryptography`` and BLS via
``pot_jax.crypto.bls`` (IETF draft, proof-of-possession ciphersuite).

The default is chosen by measurement (``bench_worker_signatures(1000)``: a
round of 1000 workers, single-threaded CPython, arkworks BLS backend, on the
2-core development machine; milliseconds, ranges over runs under load):

    scheme    sign/sig   verify/sig   verify/round   batch/round   aggregate/round
    ed25519   0.03-0.07  0.11-0.27    110-270        105-250       -
    bls       1.2-2.7    2.5-4.9      2500-4900      1400-2400     1200-2600

(batch: Ed25519 one by one, BLS ``bls.batch_verify``; aggregate: BLS
``Aggregate`` + ``AggregateVerify`` over the round's distinct messages.)
Validators check every worker's signature every round, so verification
decides: Ed25519 is 20-30x faster per signature than BLS Verify and 10-20x
faster than either BLS batch route. BLS would pay off only if a round's
worker signatures had to be stored or forwarded as one 96-byte aggregate; the
round record carries the Merkle root of the commitments instead.
So ``DEFAULT_WORKER_SCHEME = "ed25519"``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import struct
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from pot_jax.crypto import bls
from pot_jax.crypto.commitments import COMMITMENT_SIZE
from pot_jax.crypto.errors import CryptoError, DecodeError

__all__ = [
    "DEFAULT_WORKER_SCHEME",
    "SCHEMES",
    "WORKER_MESSAGE_TAG",
    "WORKER_MESSAGE_VERSION",
    "WorkerMessage",
    "WorkerSignatureScheme",
    "bench_worker_signatures",
    "bls_scheme",
    "ed25519_scheme",
    "worker_message",
    "worker_signature_scheme",
]

WORKER_MESSAGE_TAG = b"POT_JAX_WORKER_GRADIENT"
"""Domain tag that starts every worker message (length-prefixed)."""

WORKER_MESSAGE_VERSION = 1

_MAX_CHAIN_ID = 255
_MAX_ROUND = 2**64 - 1
_MAX_WORKER_ID = 2**32 - 1
_PREFIX = bytes([len(WORKER_MESSAGE_TAG)]) + WORKER_MESSAGE_TAG
_TAIL = struct.Struct(">QI")  # round, worker id; the commitment follows


def _as_bytes(name: str, value: Any) -> bytes:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    raise TypeError(f"{name} must be bytes, got {type(value).__name__}")


def _check_int(name: str, value: Any, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if not 0 <= value <= high:
        raise ValueError(f"{name} must be in [0, {high}], got {value}")


@dataclasses.dataclass(frozen=True)
class WorkerMessage:
    """What a worker signs for one round.

    Encoding (all integers big-endian)::

        u8 len(tag) || tag || u8 version || u8 len(chain_id) || chain_id
        || u64 round || u32 worker_id || 32-byte commitment

    The length-prefixed tag separates worker messages from every other message
    pot-jax signs; the version lets the layout change without ambiguity.

    Attributes:
      chain_id: identifies the training run, 1 to 255 bytes.
      round: the round number, ``0 <= round < 2**64``.
      worker_id: the worker's index, ``0 <= worker_id < 2**32``.
      commitment: the 32-byte gradient commitment.
    """

    chain_id: bytes
    round: int
    worker_id: int
    commitment: bytes

    def __post_init__(self):
        chain_id = _as_bytes("chain_id", self.chain_id)
        commitment = _as_bytes("commitment", self.commitment)
        if not 1 <= len(chain_id) <= _MAX_CHAIN_ID:
            raise ValueError(f"chain_id must be 1 to {_MAX_CHAIN_ID} bytes, got {len(chain_id)}")
        _check_int("round", self.round, _MAX_ROUND)
        _check_int("worker_id", self.worker_id, _MAX_WORKER_ID)
        if len(commitment) != COMMITMENT_SIZE:
            raise ValueError(f"commitment must be {COMMITMENT_SIZE} bytes, got {len(commitment)}")
        object.__setattr__(self, "chain_id", chain_id)
        object.__setattr__(self, "commitment", commitment)

    def encode(self) -> bytes:
        """The canonical bytes that the worker signs."""
        return b"".join(
            (
                _PREFIX,
                bytes([WORKER_MESSAGE_VERSION, len(self.chain_id)]),
                self.chain_id,
                _TAIL.pack(self.round, self.worker_id),
                self.commitment,
            )
        )

    @classmethod
    def decode(cls, data: bytes) -> WorkerMessage:
        """Inverse of ``encode``.

        Raises:
          DecodeError: naming the problem: a wrong tag or version, an empty
            chain id, truncated data, or trailing bytes.
        """
        data = _as_bytes("data", data)
        header = len(_PREFIX) + 2
        if len(data) < header:
            raise DecodeError(
                f"worker message is truncated: {len(data)} bytes, expected at least {header} "
                "for the tag, version and chain id length"
            )
        if data[: len(_PREFIX)] != _PREFIX:
            raise DecodeError(
                f"not a worker message: expected it to start with the tag {WORKER_MESSAGE_TAG!r}"
            )
        version, chain_len = data[len(_PREFIX)], data[len(_PREFIX) + 1]
        if version != WORKER_MESSAGE_VERSION:
            raise DecodeError(
                f"worker message has version {version}, this decoder supports "
                f"{WORKER_MESSAGE_VERSION}"
            )
        if chain_len == 0:
            raise DecodeError("worker message has an empty chain id; expected 1 to 255 bytes")
        size = header + chain_len + _TAIL.size + COMMITMENT_SIZE
        if len(data) < size:
            raise DecodeError(
                f"worker message is truncated: {len(data)} bytes, expected {size} for a "
                f"{chain_len}-byte chain id"
            )
        if len(data) > size:
            raise DecodeError(
                f"worker message has {len(data) - size} trailing bytes after its {size} bytes"
            )
        chain_id = data[header : header + chain_len]
        round_, worker_id = _TAIL.unpack_from(data, header + chain_len)
        commitment = data[header + chain_len + _TAIL.size :]
        return cls(chain_id=chain_id, round=round_, worker_id=worker_id, commitment=commitment)


def worker_message(chain_id: bytes, round: int, worker_id: int, commitment: bytes) -> bytes:
    """Canonical bytes of ``WorkerMessage(chain_id, round, worker_id, commitment)``."""
    return WorkerMessage(chain_id, round, worker_id, commitment).encode()


KeygenFn = Callable[[bytes], tuple[Any, bytes]]
SignFn = Callable[[Any, bytes], bytes]
VerifyFn = Callable[[bytes, bytes, bytes], bool]
VerifyBatchFn = Callable[[Sequence[bytes], Sequence[bytes], Sequence[bytes]], bool]


class WorkerSignatureScheme(NamedTuple):
    """A signature scheme for worker messages, as a record of pure functions.

    Attributes:
      name: the scheme's name, a key of ``SCHEMES``.
      public_key_size: bytes in a public key.
      signature_size: bytes in a signature.
      keygen: ``keygen(seed) -> (sk, pk)``; deterministic in the secret ``seed``;
        ``sk`` is opaque, ``pk`` is bytes.
      sign: ``sign(sk, message) -> signature`` bytes, deterministic.
      verify: ``verify(pk, message, signature) -> bool``; malformed keys or
        signatures give False.
      verify_batch: ``verify_batch(pks, messages, signatures) -> bool``, True iff
        every signature is valid; the fastest way the scheme has to check a
        whole round (find the culprits with ``verify`` when it says False).
    """

    name: str
    public_key_size: int
    signature_size: int
    keygen: KeygenFn
    sign: SignFn
    verify: VerifyFn
    verify_batch: VerifyBatchFn


def _check_batch(pks: Sequence[bytes], messages: Sequence[bytes], signatures: Sequence[bytes]):
    if not len(pks) == len(messages) == len(signatures):
        raise ValueError(
            f"verify_batch needs one public key and one signature per message, got "
            f"{len(pks)} public keys, {len(messages)} messages, {len(signatures)} signatures"
        )


def ed25519_scheme() -> WorkerSignatureScheme:
    """Ed25519 (RFC 8032) from ``cryptography``.

    ``keygen`` takes a 32-byte seed, which is the RFC 8032 private key itself.
    There is no batch verification in ``cryptography``; ``verify_batch`` checks
    the signatures one by one.
    """

    def keygen(seed: bytes) -> tuple[Ed25519PrivateKey, bytes]:
        seed = _as_bytes("seed", seed)
        if len(seed) != 32:
            raise ValueError(f"an Ed25519 seed must be 32 bytes, got {len(seed)}")
        sk = Ed25519PrivateKey.from_private_bytes(seed)
        return sk, sk.public_key().public_bytes_raw()

    def sign(sk: Ed25519PrivateKey, message: bytes) -> bytes:
        if not isinstance(sk, Ed25519PrivateKey):
            raise TypeError(f"sk must be an Ed25519PrivateKey, got {type(sk).__name__}")
        return sk.sign(_as_bytes("message", message))

    def verify(pk: bytes, message: bytes, signature: bytes) -> bool:
        if len(pk) != 32 or len(signature) != 64:
            return False
        try:
            Ed25519PublicKey.from_public_bytes(bytes(pk)).verify(bytes(signature), message)
        except (InvalidSignature, ValueError):
            return False
        return True

    def verify_batch(pks, messages, signatures) -> bool:
        _check_batch(pks, messages, signatures)
        return all(verify(*args) for args in zip(pks, messages, signatures, strict=True))

    return WorkerSignatureScheme(
        name="ed25519",
        public_key_size=32,
        signature_size=64,
        keygen=keygen,
        sign=sign,
        verify=verify,
        verify_batch=verify_batch,
    )


def bls_scheme() -> WorkerSignatureScheme:
    """BLS signatures (IETF draft, PoP ciphersuite) through ``pot_jax.crypto.bls``.

    ``keygen`` takes at least 32 bytes of seed (the draft's KeyGen IKM).
    ``verify_batch`` is ``bls.batch_verify``: one multi-pairing over random
    linear combinations, which, unlike checking one aggregate signature,
    cannot be fooled by two invalid signatures that cancel in a plain sum.
    """

    def keygen(seed: bytes) -> tuple[int, bytes]:
        seed = _as_bytes("seed", seed)
        if len(seed) < 32:
            raise ValueError(f"a BLS seed must be at least 32 bytes, got {len(seed)}")
        sk = bls.KeyGen(seed)
        return sk, bls.SkToPk(sk)

    def sign(sk: int, message: bytes) -> bytes:
        return bls.Sign(sk, _as_bytes("message", message))

    def verify(pk: bytes, message: bytes, signature: bytes) -> bool:
        if len(pk) != bls.PUBLIC_KEY_SIZE or len(signature) != bls.SIGNATURE_SIZE:
            return False
        try:
            return bool(bls.Verify(pk, message, signature))
        except CryptoError:
            return False

    def verify_batch(pks, messages, signatures) -> bool:
        _check_batch(pks, messages, signatures)
        if not messages:
            return True
        try:
            return bool(bls.batch_verify(pks, messages, signatures))
        except CryptoError:
            return False

    return WorkerSignatureScheme(
        name="bls",
        public_key_size=bls.PUBLIC_KEY_SIZE,
        signature_size=bls.SIGNATURE_SIZE,
        keygen=keygen,
        sign=sign,
        verify=verify,
        verify_batch=verify_batch,
    )


SCHEMES: dict[str, Callable[[], WorkerSignatureScheme]] = {
    "ed25519": ed25519_scheme,
    "bls": bls_scheme,
}

DEFAULT_WORKER_SCHEME = "ed25519"
"""Chosen by ``bench_worker_signatures`` (see the module docstring)."""


def worker_signature_scheme(name: str = DEFAULT_WORKER_SCHEME) -> WorkerSignatureScheme:
    """The worker signature scheme called ``name`` (default: the measured fastest)."""
    try:
        factory = SCHEMES[name]
    except KeyError:
        raise ValueError(
            f"unknown worker signature scheme {name!r}; expected one of {sorted(SCHEMES)}"
        ) from None
    return factory()


def _ms_since(start: float) -> float:
    return 1e3 * (time.perf_counter() - start)


def bench_worker_signatures(n: int = 1000) -> dict:
    """Measure signing and verifying one round of ``n`` worker messages per scheme.

    Keys and messages are deterministic; key generation is not timed. Each
    worker signs once, so a round's signing cost is spread over ``n`` workers;
    verification is what every validator pays for the whole round. For BLS it
    also times the aggregate route: ``Aggregate`` of the round's signatures and
    one ``AggregateVerify`` over its distinct messages.

    Args:
      n: workers in the round.

    Returns:
      ``{"n": n, "default": DEFAULT_WORKER_SCHEME, "bls_backend": name,
      "schemes": {scheme: stats}}`` where ``stats`` has, in milliseconds,
      ``sign_ms_per_signature``, ``verify_ms_per_signature``,
      ``sign_ms_per_round``, ``verify_ms_per_round`` (one ``verify`` per
      signature), ``batch_verify_ms_per_round`` and
      ``batch_verify_ms_per_signature`` (``verify_batch``), plus
      ``public_key_bytes`` and ``signature_bytes``; BLS adds
      ``aggregate_verify_ms_per_round`` and ``aggregate_verify_ms_per_signature``.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    messages = [
        worker_message(b"pot-jax-bench", 0, i, hashlib.sha256(i.to_bytes(4, "big")).digest())
        for i in range(n)
    ]
    seeds = [hashlib.sha256(b"pot-jax-bench-key" + i.to_bytes(4, "big")).digest() for i in range(n)]
    schemes = {}
    for name in SCHEMES:
        scheme = worker_signature_scheme(name)
        keys = [scheme.keygen(seed) for seed in seeds]
        pks = [pk for _, pk in keys]

        start = time.perf_counter()
        signatures = [scheme.sign(sk, m) for (sk, _), m in zip(keys, messages, strict=True)]
        sign_ms = _ms_since(start)
        start = time.perf_counter()
        valid = [
            scheme.verify(pk, m, s) for pk, m, s in zip(pks, messages, signatures, strict=True)
        ]
        verify_ms = _ms_since(start)
        start = time.perf_counter()
        batch_valid = scheme.verify_batch(pks, messages, signatures)
        batch_ms = _ms_since(start)
        checks = {"verify": all(valid), "verify_batch": batch_valid}
        stats = {
            "sign_ms_per_signature": sign_ms / n,
            "verify_ms_per_signature": verify_ms / n,
            "sign_ms_per_round": sign_ms,
            "verify_ms_per_round": verify_ms,
            "batch_verify_ms_per_round": batch_ms,
            "batch_verify_ms_per_signature": batch_ms / n,
            "public_key_bytes": scheme.public_key_size,
            "signature_bytes": scheme.signature_size,
        }
        if name == "bls":
            start = time.perf_counter()
            checks["AggregateVerify"] = bls.AggregateVerify(
                pks, messages, bls.Aggregate(signatures)
            )
            aggregate_ms = _ms_since(start)
            stats["aggregate_verify_ms_per_round"] = aggregate_ms
            stats["aggregate_verify_ms_per_signature"] = aggregate_ms / n
        failed = [check for check, ok in checks.items() if not ok]
        if failed:
            raise RuntimeError(
                f"{name}: benchmark signatures failed {', '.join(failed)} "
                f"({valid.count(False)} of {n} failed verify); the scheme is broken"
            )
        schemes[name] = stats
    return {
        "n": n,
        "default": DEFAULT_WORKER_SCHEME,
        "bls_backend": bls.get_backend().name,
        "schemes": schemes,
    }
