"""PBFT wire messages and their canonical byte encoding.

Replicas exchange bytes, never Python objects: a message from the network is
decoded here, and anything that does not decode exactly (unknown tag, wrong
length, trailing garbage, a field out of range) raises ``MalformedMessage``,
which the replica turns into a counted drop. Signatures are over
``pot_jax.crypto.quorum.vote_message`` bytes, not over these encodings, so a
vote and the quorum certificate that aggregates it sign the same bytes.

Encoding: one tag byte, then the fields in order; integers are big-endian
u64 (views, sequence numbers) or u32 (indices, lengths); variable-length
fields are u32 length || bytes; an optional value is a u8 presence flag
(0 = null request, 1 = present) followed by the field.

A ``Bundle`` carries several encoded messages in one network message (the
linear pattern's piggybacking: a commit QC rides on the next proposal, as
HotStuff chains its QCs). Its parts are processed in order as if each had
arrived alone; a bundle inside a bundle, an empty bundle or more than
``MAX_BUNDLE_PARTS`` parts is malformed.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

from pot_jax.crypto.errors import DecodeError
from pot_jax.crypto.quorum import QuorumCertificate

__all__ = [
    "Bundle",
    "CHECKPOINT",
    "COMMIT",
    "Cert",
    "Decided",
    "Fetch",
    "MAX_BUNDLE_PARTS",
    "MESSAGE_KINDS",
    "MalformedMessage",
    "NewView",
    "PREPARE",
    "PrePrepare",
    "PreparedProof",
    "VIEW_CHANGE",
    "ViewChange",
    "Vote",
    "decode_message",
    "encode_message",
    "message_kind",
    "message_seq",
    "value_digest",
    "bundle_parts",
    "view_change_digest",
]

PREPARE = "prepare"
COMMIT = "commit"
CHECKPOINT = "checkpoint"
VIEW_CHANGE = "view-change"
_VOTE_KINDS = (PREPARE, COMMIT, CHECKPOINT)

MAX_BUNDLE_PARTS = 64
DIGEST_BYTES = 32
SIGNATURE_BYTES = 96
_U64_MAX = (1 << 64) - 1
_MAX_FIELD = 1 << 26


class MalformedMessage(ValueError):
    """Bytes that are not a well-formed PBFT message; the text says what is wrong."""


def value_digest(value: bytes | None) -> bytes:
    """SHA-256 digest of a proposed value; ``None`` is the null request of a new view."""
    if value is None:
        return hashlib.sha256(b"pot-jax/pbft/value/v1\x00").digest()
    return hashlib.sha256(b"pot-jax/pbft/value/v1\x01" + value).digest()


# ---------------------------------------------------------------------------
# Messages


@dataclass(frozen=True)
class PrePrepare:
    """The primary's proposal of ``value`` at (view, seq).

    ``signature`` is the primary's *prepare* vote on the value's digest, so the
    primary's endorsement counts towards the prepare quorum like any backup's.
    """

    view: int
    seq: int
    value: bytes | None
    signature: bytes

    @property
    def digest(self) -> bytes:
        return value_digest(self.value)


@dataclass(frozen=True)
class Vote:
    """One validator's signed vote: kind is prepare, commit or checkpoint (view 0)."""

    kind: str
    view: int
    seq: int
    digest: bytes
    signer: int
    signature: bytes


@dataclass(frozen=True)
class Cert:
    """A quorum certificate for (kind, view, seq, digest), as forwarded by a collector."""

    kind: str
    view: int
    seq: int
    digest: bytes
    qc: QuorumCertificate


@dataclass(frozen=True)
class PreparedProof:
    """A prepared certificate carried in a view change: the value and its prepare QC."""

    view: int
    seq: int
    value: bytes | None
    qc: QuorumCertificate


@dataclass(frozen=True)
class ViewChange:
    """A replica's request to move to ``new_view``, with its stable checkpoint and P-set."""

    new_view: int
    checkpoint: Cert | None
    prepared: tuple[PreparedProof, ...]
    signer: int
    signature: bytes


@dataclass(frozen=True)
class NewView:
    """The new primary's proof (a quorum of view changes) and its re-proposals."""

    view: int
    view_changes: tuple[ViewChange, ...]
    preprepares: tuple[PrePrepare, ...]


@dataclass(frozen=True)
class Fetch:
    """Ask a peer for decision proofs from sequence ``from_seq`` on (state transfer).

    ``from_seq - 1`` is the asker's last executed sequence, so a fetch also says where
    the asker is. ``status`` (a restarted replica's status request) asks the peer to
    answer with a fetch of its own even when it has nothing newer: the asker counts
    who answered.
    """

    from_seq: int
    status: bool = False


@dataclass(frozen=True)
class Decided:
    """A decision proof: the value and a commit QC for (view, seq, digest(value))."""

    seq: int
    view: int
    value: bytes | None
    qc: QuorumCertificate


@dataclass(frozen=True)
class Bundle:
    """Several encoded messages sent as one, processed in order by the receiver."""

    parts: tuple[bytes, ...]


Message = PrePrepare | Vote | Cert | ViewChange | NewView | Fetch | Decided | Bundle

_TAGS: dict[type, int] = {
    PrePrepare: 1,
    Vote: 2,
    Cert: 3,
    ViewChange: 4,
    NewView: 5,
    Fetch: 6,
    Decided: 7,
    Bundle: 8,
}
MESSAGE_KINDS: dict[int, str] = {
    1: "pre-prepare",
    2: "vote",
    3: "cert",
    4: "view-change",
    5: "new-view",
    6: "fetch",
    7: "decided",
    8: "bundle",
}


def message_kind(data: bytes) -> str:
    """A short name for statistics: the tag's kind, refined by the vote/cert kind byte."""
    if not data:
        return "empty"
    name = MESSAGE_KINDS.get(data[0], "unknown")
    if name in ("vote", "cert") and len(data) > 1 and data[1] < len(_VOTE_KINDS):
        return f"{name}:{_VOTE_KINDS[data[1]]}"
    return name


# ---------------------------------------------------------------------------
# Encoding


def _u64(x: int) -> bytes:
    return struct.pack(">Q", x)


def _u32(x: int) -> bytes:
    return struct.pack(">I", x)


def _field(b: bytes) -> bytes:
    return _u32(len(b)) + b


def _opt_value(value: bytes | None) -> bytes:
    return b"\x00" if value is None else b"\x01" + _field(value)


def _kind_byte(kind: str) -> bytes:
    return bytes([_VOTE_KINDS.index(kind)])


def _enc_cert_body(c: Cert) -> bytes:
    return _kind_byte(c.kind) + _u64(c.view) + _u64(c.seq) + c.digest + _field(c.qc.encode())


def _enc_view_change_body(m: ViewChange, *, with_signature: bool = True) -> bytes:
    parts = [_u64(m.new_view)]
    if m.checkpoint is None:
        parts.append(b"\x00")
    else:
        parts.append(b"\x01" + _enc_cert_body(m.checkpoint))
    parts.append(_u32(len(m.prepared)))
    for p in m.prepared:
        parts += [_u64(p.view), _u64(p.seq), _opt_value(p.value), _field(p.qc.encode())]
    parts.append(_u32(m.signer))
    if with_signature:
        parts.append(m.signature)
    return b"".join(parts)


def _enc_preprepare_body(m: PrePrepare) -> bytes:
    return _u64(m.view) + _u64(m.seq) + _opt_value(m.value) + m.signature


def encode_message(m: Message) -> bytes:
    """Canonical bytes of a message (``decode_message`` inverts it exactly)."""
    tag = bytes([_TAGS[type(m)]])
    if isinstance(m, PrePrepare):
        return tag + _enc_preprepare_body(m)
    if isinstance(m, Vote):
        return (
            tag
            + _kind_byte(m.kind)
            + _u64(m.view)
            + _u64(m.seq)
            + m.digest
            + _u32(m.signer)
            + m.signature
        )
    if isinstance(m, Cert):
        return tag + _enc_cert_body(m)
    if isinstance(m, ViewChange):
        return tag + _enc_view_change_body(m)
    if isinstance(m, NewView):
        parts = [tag, _u64(m.view), _u32(len(m.view_changes))]
        parts += [_field(_enc_view_change_body(v)) for v in m.view_changes]
        parts.append(_u32(len(m.preprepares)))
        parts += [_field(_enc_preprepare_body(p)) for p in m.preprepares]
        return b"".join(parts)
    if isinstance(m, Fetch):
        return tag + _u64(m.from_seq) + (b"\x01" if m.status else b"\x00")
    if isinstance(m, Decided):
        return tag + _u64(m.seq) + _u64(m.view) + _opt_value(m.value) + _field(m.qc.encode())
    if isinstance(m, Bundle):
        _check_bundle_parts(m.parts)
        return b"".join([tag, _u32(len(m.parts)), *(_field(p) for p in m.parts)])
    raise TypeError(f"cannot encode {type(m).__name__}; expected a PBFT message")


def _check_bundle_parts(parts) -> None:
    if not 1 <= len(parts) <= MAX_BUNDLE_PARTS:
        raise MalformedMessage(f"bundle of {len(parts)} parts, expected 1..{MAX_BUNDLE_PARTS}")
    for i, p in enumerate(parts):
        if not isinstance(p, bytes) or not p:
            raise MalformedMessage(f"bundle part {i} is empty or not bytes")
        if p[0] == _TAGS[Bundle]:
            raise MalformedMessage(f"bundle part {i} is itself a bundle")


def message_seq(data: bytes) -> int | None:
    """The sequence number in the header of a pre-prepare, vote, cert or decision proof
    (of a bundle: of its last part, the carrier), read without decoding; else None."""
    parts = bundle_parts(data)
    data = parts[-1]
    tag = data[:1]
    if tag == b"\x01" and len(data) >= 17:
        return struct.unpack_from(">Q", data, 9)[0]
    if tag in (b"\x02", b"\x03") and len(data) >= 18:
        return struct.unpack_from(">Q", data, 10)[0]
    if tag == b"\x07" and len(data) >= 9:
        return struct.unpack_from(">Q", data, 1)[0]
    return None


def bundle_parts(data: bytes) -> tuple[bytes, ...]:
    """The messages inside ``data`` if it is a well-formed bundle, else ``(data,)``."""
    if data[:1] != bytes([_TAGS[Bundle]]):
        return (data,)
    try:
        m = decode_message(data)
    except MalformedMessage:
        return (data,)
    return m.parts


def view_change_digest(m: ViewChange) -> bytes:
    """What a view-change signature covers: SHA-256 of its encoding without the signature."""
    return hashlib.sha256(
        b"pot-jax/pbft/view-change/v1" + _enc_view_change_body(m, with_signature=False)
    ).digest()


# ---------------------------------------------------------------------------
# Decoding


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int, what: str) -> bytes:
        if self.pos + n > len(self.data):
            raise MalformedMessage(
                f"truncated: {what} needs {n} bytes, {len(self.data) - self.pos} remain"
            )
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def u8(self, what: str) -> int:
        return self.take(1, what)[0]

    def u32(self, what: str) -> int:
        return struct.unpack(">I", self.take(4, what))[0]

    def u64(self, what: str) -> int:
        x = struct.unpack(">Q", self.take(8, what))[0]
        if x > _U64_MAX >> 1:
            raise MalformedMessage(f"{what} is {x}, expected below 2**63")
        return x

    def field(self, what: str) -> bytes:
        n = self.u32(f"length of {what}")
        if n > _MAX_FIELD:
            raise MalformedMessage(f"{what} declares {n} bytes, at most {_MAX_FIELD}")
        return self.take(n, what)

    def opt_value(self, what: str) -> bytes | None:
        flag = self.u8(f"presence flag of {what}")
        if flag == 0:
            return None
        if flag != 1:
            raise MalformedMessage(f"presence flag of {what} is {flag}, expected 0 or 1")
        return self.field(what)

    def kind(self) -> str:
        k = self.u8("vote kind")
        if k >= len(_VOTE_KINDS):
            raise MalformedMessage(f"vote kind byte {k}, expected 0..{len(_VOTE_KINDS) - 1}")
        return _VOTE_KINDS[k]

    def qc(self, what: str) -> QuorumCertificate:
        raw = self.field(what)
        try:
            return QuorumCertificate.decode(raw)
        except DecodeError as exc:
            raise MalformedMessage(f"{what}: {exc}") from exc

    def count(self, what: str, item_min_bytes: int) -> int:
        c = self.u32(what)
        if c * item_min_bytes > len(self.data) - self.pos:
            raise MalformedMessage(f"{what} is {c}, more than the remaining bytes can hold")
        return c

    def finish(self, what: str) -> None:
        if self.pos != len(self.data):
            raise MalformedMessage(
                f"{what} has {len(self.data) - self.pos} bytes of trailing garbage"
            )


def _dec_cert_body(r: _Reader) -> Cert:
    kind = r.kind()
    view = r.u64("view")
    seq = r.u64("sequence")
    digest = r.take(DIGEST_BYTES, "digest")
    return Cert(kind, view, seq, digest, r.qc("quorum certificate"))


def _dec_preprepare_body(r: _Reader) -> PrePrepare:
    view = r.u64("view")
    seq = r.u64("sequence")
    value = r.opt_value("value")
    return PrePrepare(view, seq, value, r.take(SIGNATURE_BYTES, "signature"))


def _dec_view_change_body(r: _Reader) -> ViewChange:
    new_view = r.u64("new view")
    flag = r.u8("checkpoint presence flag")
    if flag not in (0, 1):
        raise MalformedMessage(f"checkpoint presence flag is {flag}, expected 0 or 1")
    checkpoint = _dec_cert_body(r) if flag else None
    if checkpoint is not None and checkpoint.kind != CHECKPOINT:
        raise MalformedMessage(f"view change carries a {checkpoint.kind} cert as its checkpoint")
    prepared = []
    for _ in range(r.count("prepared proof count", 8 + 8 + 1 + 4)):
        view = r.u64("prepared view")
        seq = r.u64("prepared sequence")
        value = r.opt_value("prepared value")
        prepared.append(PreparedProof(view, seq, value, r.qc("prepared QC")))
    signer = r.u32("signer")
    return ViewChange(
        new_view, checkpoint, tuple(prepared), signer, r.take(SIGNATURE_BYTES, "signature")
    )


def _sub(r: _Reader, what: str, fn):
    sub = _Reader(r.field(what))
    out = fn(sub)
    sub.finish(what)
    return out


def decode_message(data: bytes) -> Message:
    """Parse canonical bytes into a message; raise MalformedMessage on anything else."""
    if not isinstance(data, bytes):
        raise MalformedMessage(f"message must be bytes, got {type(data).__name__}")
    r = _Reader(data)
    tag = r.u8("tag")
    if tag == 1:
        m: Message = _dec_preprepare_body(r)
    elif tag == 2:
        kind = r.kind()
        view = r.u64("view")
        seq = r.u64("sequence")
        digest = r.take(DIGEST_BYTES, "digest")
        signer = r.u32("signer")
        m = Vote(kind, view, seq, digest, signer, r.take(SIGNATURE_BYTES, "signature"))
    elif tag == 3:
        m = _dec_cert_body(r)
    elif tag == 4:
        m = _dec_view_change_body(r)
    elif tag == 5:
        view = r.u64("view")
        vcs = tuple(
            _sub(r, "view change", _dec_view_change_body)
            for _ in range(r.count("view change count", 4))
        )
        pps = tuple(
            _sub(r, "pre-prepare", _dec_preprepare_body)
            for _ in range(r.count("pre-prepare count", 4))
        )
        m = NewView(view, vcs, pps)
    elif tag == 6:
        from_seq = r.u64("from sequence")
        flag = r.u8("status flag")
        if flag not in (0, 1):
            raise MalformedMessage(f"status flag of fetch is {flag}, expected 0 or 1")
        m = Fetch(from_seq, flag == 1)
    elif tag == 7:
        seq = r.u64("sequence")
        view = r.u64("view")
        value = r.opt_value("value")
        m = Decided(seq, view, value, r.qc("commit QC"))
    elif tag == 8:
        count = r.count("bundle part count", 4)
        if not 1 <= count <= MAX_BUNDLE_PARTS:
            raise MalformedMessage(f"bundle of {count} parts, expected 1..{MAX_BUNDLE_PARTS}")
        parts = tuple(r.field("bundle part") for _ in range(count))
        _check_bundle_parts(parts)
        m = Bundle(parts)
    else:
        raise MalformedMessage(f"unknown message tag {tag}, expected 1..8")
    r.finish(MESSAGE_KINDS[tag])
    return m
