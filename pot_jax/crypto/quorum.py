"""Validator sets, vote messages and BLS quorum certificates (QCs).

A validator set is admitted once: every public key arrives with a proof of
possession (PoP), checked at construction; this is what makes aggregating
public keys safe against rogue-key attacks. The decoded, subgroup-checked key
points are cached on the set, so checking a QC costs one G1 sum over the
signers plus one pairing check, with no key decoding.

A QC is an aggregate signature plus a signer bitmap over a ``vote_message``:
canonical, versioned, domain-separated bytes naming the chain, the vote kind
(PBFT phase), view, sequence number and record digest, so a QC for one of
them does not verify for any other.

Quorums: with n validators of which f = (n - 1) // 3 may be Byzantine, a
quorum is ceil((n + f + 1) / 2). Any two quorums then share at least f + 1
validators, hence an honest one, and the n - f honest validators alone form
a quorum.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from . import bls
from .errors import CryptoError, DecodeError

__all__ = [
    "MAX_VALIDATORS",
    "QC_VERSION",
    "QuorumCertificate",
    "VOTE_DOMAIN",
    "VOTE_VERSION",
    "ValidatorSet",
    "VoteMessage",
    "aggregate_votes",
    "fault_tolerance",
    "quorum_size",
    "sign_vote",
    "verify_qc",
    "vote_message",
]

MAX_VALIDATORS = 1 << 16
QC_VERSION = 1
VOTE_VERSION = 1
VOTE_DOMAIN = b"pot-jax/vote"
_MAX_BITMAP_BYTES = MAX_VALIDATORS // 8
_MAX_CHAIN_ID_BYTES = 64
_DIGEST_BYTES = 32
_KIND_PATTERN = re.compile(r"[A-Za-z0-9_.\-]{1,32}")
_U64_MAX = (1 << 64) - 1


# ---------------------------------------------------------------------------
# Quorum arithmetic: the only place a quorum is computed.


def fault_tolerance(n: int) -> int:
    """f = (n - 1) // 3: the most Byzantine validators n can tolerate."""
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"number of validators must be an int >= 1, got {n!r}")
    return (n - 1) // 3


def quorum_size(n: int) -> int:
    """ceil((n + f + 1) / 2): 2f+1 when n = 3f+1, 2f+2 when n = 3f+2 or 3f+3."""
    f = fault_tolerance(n)
    return (n + f + 2) // 2


# ---------------------------------------------------------------------------
# Length-prefixed canonical encoding


def _field(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


class _Reader:
    """Reads a canonical encoding; every failure is a DecodeError naming the problem."""

    def __init__(self, data: bytes, what: str) -> None:
        if not isinstance(data, bytes | bytearray | memoryview):
            raise TypeError(f"{what} must be bytes, got {type(data).__name__}")
        self._data = bytes(data)
        self._pos = 0
        self._what = what

    def take(self, n: int, name: str) -> bytes:
        remaining = len(self._data) - self._pos
        if n > remaining:
            raise DecodeError(
                f"{self._what} is truncated: {name} needs {n} bytes, {remaining} remain"
            )
        out = self._data[self._pos : self._pos + n]
        self._pos += n
        return out

    def u8(self, name: str) -> int:
        return self.take(1, name)[0]

    def u64(self, name: str) -> int:
        return struct.unpack(">Q", self.take(8, name))[0]

    def field(self, name: str, *, max_len: int, min_len: int = 0) -> bytes:
        (length,) = struct.unpack(">I", self.take(4, f"length prefix of {name}"))
        if length > max_len:
            raise DecodeError(
                f"{self._what} is oversized: {name} declares {length} bytes, at most {max_len}"
            )
        if length < min_len:
            raise DecodeError(
                f"{self._what}: {name} declares {length} bytes, at least {min_len} expected"
            )
        return self.take(length, name)

    def finish(self) -> None:
        extra = len(self._data) - self._pos
        if extra:
            raise DecodeError(
                f"{self._what} has {extra} bytes of trailing garbage after its last field"
            )


# ---------------------------------------------------------------------------
# Vote messages


@dataclass(frozen=True)
class VoteMessage:
    """What a validator signs: (chain id, kind, view, sequence, record digest).

    Encoding (version 1): version u8 | field(VOTE_DOMAIN) | field(chain_id) |
    field(kind, ASCII) | view u64 | sequence u64 | field(digest), where
    field(x) = u32 big-endian length || x.
    """

    chain_id: bytes
    kind: str
    view: int
    sequence: int
    digest: bytes

    def __post_init__(self) -> None:
        if (
            not isinstance(self.chain_id, bytes)
            or not 0 < len(self.chain_id) <= _MAX_CHAIN_ID_BYTES
        ):
            raise CryptoError(
                f"chain_id must be 1..{_MAX_CHAIN_ID_BYTES} bytes, got {self.chain_id!r}"
            )
        if not isinstance(self.kind, str) or not _KIND_PATTERN.fullmatch(self.kind):
            raise CryptoError(
                f"vote kind must be 1..32 characters from [A-Za-z0-9_.-], got {self.kind!r}"
            )
        for name in ("view", "sequence"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= _U64_MAX:
                raise CryptoError(f"{name} must be an int in [0, 2**64), got {value!r}")
        if not isinstance(self.digest, bytes) or len(self.digest) != _DIGEST_BYTES:
            raise CryptoError(
                f"digest must be a {_DIGEST_BYTES}-byte SHA-256 digest, got {self.digest!r}"
            )

    def encode(self) -> bytes:
        return b"".join(
            [
                bytes([VOTE_VERSION]),
                _field(VOTE_DOMAIN),
                _field(self.chain_id),
                _field(self.kind.encode("ascii")),
                struct.pack(">QQ", self.view, self.sequence),
                _field(self.digest),
            ]
        )

    @classmethod
    def decode(cls, data: bytes) -> VoteMessage:
        """Parse canonical bytes; raise DecodeError on any other input."""
        reader = _Reader(data, "vote message")
        version = reader.u8("version byte")
        if version != VOTE_VERSION:
            raise DecodeError(f"vote message version {version}, expected {VOTE_VERSION}")
        domain = reader.field("domain tag", max_len=len(VOTE_DOMAIN))
        if domain != VOTE_DOMAIN:
            raise DecodeError(f"vote message domain tag is {domain!r}, expected {VOTE_DOMAIN!r}")
        chain_id = reader.field("chain_id", max_len=_MAX_CHAIN_ID_BYTES, min_len=1)
        kind = reader.field("kind", max_len=32, min_len=1)
        view = reader.u64("view")
        sequence = reader.u64("sequence")
        digest = reader.field("digest", max_len=_DIGEST_BYTES, min_len=_DIGEST_BYTES)
        reader.finish()
        try:
            kind_str = kind.decode("ascii")
        except UnicodeDecodeError as exc:
            raise DecodeError(f"vote message: kind {kind!r} is not ASCII") from exc
        try:
            return cls(chain_id, kind_str, view, sequence, digest)
        except CryptoError as exc:
            raise DecodeError(f"vote message: {exc}") from exc


def vote_message(chain_id: bytes, kind: str, view: int, sequence: int, digest: bytes) -> bytes:
    """The canonical bytes validators sign for a vote; see VoteMessage."""
    return VoteMessage(chain_id, kind, view, sequence, digest).encode()


# ---------------------------------------------------------------------------
# Validator sets


@dataclass(frozen=True)
class ValidatorSet:
    """Registered validators: public keys, each admitted with a proof of possession.

    Construction verifies every PoP (one randomized batch check, then one by
    one to name the culprit if the batch fails) and rejects duplicate keys, so
    no instance holds an unproven key. Build one with ``from_registrations``.
    Decoded key points are cached per backend; a QC check never decodes keys.
    """

    public_keys: tuple[bytes, ...]
    proofs_of_possession: tuple[bytes, ...]
    _points: dict[str, tuple[bls.PublicKeyPoint, ...]] = field(
        default_factory=dict, init=False, repr=False, compare=False, hash=False
    )

    def __post_init__(self) -> None:
        pks, pops = self.public_keys, self.proofs_of_possession
        if not isinstance(pks, tuple) or not isinstance(pops, tuple):
            raise TypeError("public_keys and proofs_of_possession must be tuples of bytes")
        n = len(pks)
        if not 1 <= n <= MAX_VALIDATORS:
            raise CryptoError(f"a validator set needs 1..{MAX_VALIDATORS} validators, got {n}")
        if len(pops) != n:
            raise CryptoError(f"{n} public keys but {len(pops)} proofs of possession")
        first_index: dict[bytes, int] = {}
        for i, pk in enumerate(pks):
            if not isinstance(pk, bytes) or not isinstance(pops[i], bytes):
                raise TypeError(f"validator {i}: public key and proof must be bytes")
            if pk in first_index:
                raise CryptoError(
                    f"validator {i} repeats the public key of validator {first_index[pk]}"
                )
            first_index[pk] = i
        self.public_key_points()  # decodes and KeyValidates, naming a bad index
        if not bls.batch_verify_with_dst(pks, pks, pops, bls.POP_DST):
            for i, (pk, pop) in enumerate(zip(pks, pops, strict=True)):
                if not bls.PopVerify(pk, pop):
                    raise CryptoError(
                        f"validator {i}: proof of possession does not verify for "
                        f"public key {pk.hex()}"
                    )
            raise CryptoError("proofs of possession failed the batch check but each verifies")

    @classmethod
    def from_registrations(cls, registrations: Sequence[tuple[bytes, bytes]]) -> ValidatorSet:
        """Admit (public_key, proof_of_possession) pairs; raise CryptoError naming a bad one."""
        return cls(
            public_keys=tuple(bytes(pk) for pk, _ in registrations),
            proofs_of_possession=tuple(bytes(pop) for _, pop in registrations),
        )

    def __copy__(self) -> ValidatorSet:
        return self  # immutable; the point cache may be shared

    def __deepcopy__(self, memo: dict) -> ValidatorSet:
        return self

    def __reduce__(self):
        # Backend points do not pickle; rebuild through the constructor, which
        # checks the proofs of possession again.
        return (type(self), (self.public_keys, self.proofs_of_possession))

    @property
    def n(self) -> int:
        return len(self.public_keys)

    @property
    def f(self) -> int:
        return fault_tolerance(self.n)

    @property
    def quorum(self) -> int:
        return quorum_size(self.n)

    def public_key_points(self) -> tuple[bls.PublicKeyPoint, ...]:
        """Decoded keys for the active backend (decoded on first use, then cached)."""
        name = bls.get_backend().name
        points = self._points.get(name)
        if points is None:
            decoded = []
            for i, pk in enumerate(self.public_keys):
                try:
                    decoded.append(bls.decode_public_key(pk))
                except DecodeError as exc:
                    raise DecodeError(f"validator {i}: {exc}") from exc
            points = self._points[name] = tuple(decoded)
        return points


# ---------------------------------------------------------------------------
# Quorum certificates


@dataclass(frozen=True)
class QuorumCertificate:
    """Aggregate signature of the signers plus their bitmap.

    Bit i (little-endian within each byte: byte i // 8, bit i % 8) is set iff
    validator i signed; the bitmap is ceil(n / 8) bytes. Encoding (version 1):
    version u8 | field(signature) | field(signers), field = u32 length || bytes.
    """

    signature: bytes
    signers: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.signature, bytes) or len(self.signature) != bls.SIGNATURE_SIZE:
            raise DecodeError(
                f"QC signature must be {bls.SIGNATURE_SIZE} bytes, got {self.signature!r:.40}"
            )
        if not isinstance(self.signers, bytes) or not 0 < len(self.signers) <= _MAX_BITMAP_BYTES:
            raise DecodeError(
                f"QC signer bitmap must be 1..{_MAX_BITMAP_BYTES} bytes, got {self.signers!r:.40}"
            )

    def signer_indices(self) -> tuple[int, ...]:
        return tuple(
            8 * byte_index + bit
            for byte_index, byte in enumerate(self.signers)
            if byte
            for bit in range(8)
            if byte >> bit & 1
        )

    def encode(self) -> bytes:
        return bytes([QC_VERSION]) + _field(self.signature) + _field(self.signers)

    @classmethod
    def decode(cls, data: bytes) -> QuorumCertificate:
        """Parse canonical bytes; raise DecodeError on any other input."""
        reader = _Reader(data, "quorum certificate")
        version = reader.u8("version byte")
        if version != QC_VERSION:
            raise DecodeError(f"quorum certificate version {version}, expected {QC_VERSION}")
        signature = reader.field(
            "signature", max_len=bls.SIGNATURE_SIZE, min_len=bls.SIGNATURE_SIZE
        )
        signers = reader.field("signer bitmap", max_len=_MAX_BITMAP_BYTES, min_len=1)
        reader.finish()
        return cls(signature, signers)


def _bitmap_len(n: int) -> int:
    return (n + 7) // 8


def sign_vote(sk: int, message: bytes) -> bytes:
    """A validator's vote: Sign over a canonical vote message (checked by decoding it)."""
    VoteMessage.decode(message)
    return bls.Sign(sk, message)


def aggregate_votes(validator_set: ValidatorSet, votes: Mapping[int, bytes]) -> QuorumCertificate:
    """Aggregate individual votes {validator index: signature} into a QC.

    Does not verify the votes (a collector verifies each on arrival, or the
    QC as a whole); raises CryptoError on an empty vote set, an index outside
    the set or a signature that does not decode.
    """
    if not votes:
        raise CryptoError("cannot build a quorum certificate from zero votes")
    n = validator_set.n
    bitmap = bytearray(_bitmap_len(n))
    indices = sorted(votes)
    for i in indices:
        if not isinstance(i, int) or not 0 <= i < n:
            raise CryptoError(f"vote from validator index {i!r}; the set has indices 0..{n - 1}")
        bitmap[i // 8] |= 1 << (i % 8)
    try:
        signature = bls.Aggregate([votes[i] for i in indices])
    except DecodeError as exc:
        for i in indices:  # name the validator whose vote does not decode
            try:
                bls.decode_g2(votes[i])
            except DecodeError as inner:
                raise DecodeError(f"vote of validator {i}: {inner}") from exc
        raise
    return QuorumCertificate(signature, bytes(bitmap))


def verify_qc(
    validator_set: ValidatorSet,
    message: bytes,
    qc: QuorumCertificate,
    quorum: int | None = None,
) -> bool:
    """True iff qc is a valid certificate for message from >= quorum distinct validators.

    Checks the bitmap length against the set, that no padding bit beyond the
    last validator is set, the signer count (default: validator_set.quorum;
    pass f + 1 for certificates that need only one honest signer), and the
    aggregate signature against the cached keys of the signers.
    """
    n = validator_set.n
    if quorum is None:
        quorum = validator_set.quorum
    if not isinstance(quorum, int) or not 1 <= quorum <= n:
        raise ValueError(f"quorum must be an int in [1, {n}], got {quorum!r}")
    if len(qc.signers) != _bitmap_len(n):
        return False
    if n % 8 and qc.signers[-1] >> (n % 8):
        return False  # a bit for a validator index >= n
    indices = qc.signer_indices()
    if len(indices) < quorum:
        return False
    points = validator_set.public_key_points()
    return bls.fast_aggregate_verify_points([points[i] for i in indices], message, qc.signature)
