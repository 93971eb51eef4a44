"""Append-only, crash-safe on-disk transcript of a run.

A transcript is one log file of records (committed round records, QCs, fraud
proofs, ledger entries, checkpoint references) plus a directory of checkpoints
named by their SHA-256. It uses the standard library only, so a crashed or
killed process can be inspected without importing JAX.

File format (all integers big-endian)::

    file    = MAGIC (8 bytes, b"POTJAXTR") | u32 FORMAT_VERSION | record*
    record  = u32 length | u8 kind | u64 seq | u32 head_crc | payload | checksum
    head_crc = CRC-32 (zlib) of the 13 bytes length | kind | seq
    checksum = first 8 bytes of SHA-256(length | kind | seq | payload)

Sequence numbers start at 0 and increase by exactly 1. Kind 0 is never written
(so a zero-filled region is never a record); kinds 1..255 are allowed, the
protocol's are in ``RecordKind``.

Why ``head_crc``: without it a flipped bit in the *length* of a complete record
can make it claim to run past the end of the file, which is exactly what a torn
write looks like, and recovery would silently drop a record whose append had
returned. With the header checked on its own, the reader decides from the bytes
alone, never by guessing:

* **torn tail** (a crash mid-append; truncated away by ``TranscriptWriter.open``
  with a logged warning, reported by ``TranscriptReader.torn_tail``): the file
  ends inside the last record's 17-byte header, or that header is intact and the
  file ends before its payload and checksum do, or everything from the record
  to the end of file is zero bytes (a file system that grew the file but lost
  the data in a power cut). A strict prefix of the 12-byte file header is a torn
  file header.
* **corruption** (``TranscriptError`` naming the offset and the sequence number,
  nothing truncated): anything else, including a complete final record whose
  checksum fails. A complete record was fully written, so a bad checksum means
  its bytes changed afterwards; the auditor must see that, not lose the record.

Durability: each append is one ``write`` followed by ``fdatasync`` (``fsync``
where that is missing), so when ``append`` returns the record survives a process
crash and a power cut; the directory is fsynced when the file is created. With
``fsync_every=k`` the sync runs every k records: faster, and a process crash
still loses nothing (the kernel holds the data), but a power cut may lose up to
k records whose append returned. ``sync()`` and ``close()`` always sync.

Checkpoints (model parameters, MBs each) are not in the log. ``CheckpointStore``
keeps each one as ``<sha256 hex>.ckpt`` in ``<log>.checkpoints/``, written to a
temporary file, fsynced and renamed before the CHECKPOINT record (its digest and
size) is appended, so the log never points at a missing or partial file. Why
separate files: reopening for append must verify every record to find the tail,
and auditing the round chain reads every record; kept out of the log, model
size does not slow either, identical parameters are stored once, and the
auditor loads only the checkpoints it re-executes from. ``CheckpointStore.get``
re-hashes the file, so a swapped or corrupted checkpoint raises.
"""

from __future__ import annotations

import enum
import errno
import hashlib
import logging
import os
import stat
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

try:
    import fcntl
except ImportError:  # pragma: no cover - not on Windows
    fcntl = None

__all__ = [
    "CHECKPOINT_SUFFIX",
    "FILE_HEADER",
    "FORMAT_VERSION",
    "MAGIC",
    "MAX_PAYLOAD",
    "RECORD_OVERHEAD",
    "CheckpointStore",
    "Record",
    "RecordKind",
    "TornTail",
    "TranscriptError",
    "TranscriptReader",
    "TranscriptWriter",
    "checkpoint_directory",
    "decode_checkpoint_ref",
    "encode_checkpoint_ref",
    "frame_record",
]

_log = logging.getLogger(__name__)

MAGIC = b"POTJAXTR"
FORMAT_VERSION = 1
FILE_HEADER = MAGIC + struct.pack(">I", FORMAT_VERSION)

_HEAD = struct.Struct(">IBQ")  # length, kind, seq
_HEAD_CRC = struct.Struct(">I")
_HEAD_SIZE = _HEAD.size + _HEAD_CRC.size  # 17
_CHECKSUM_SIZE = 8
RECORD_OVERHEAD = _HEAD_SIZE + _CHECKSUM_SIZE
"""Bytes a record adds to its payload (25)."""
MAX_PAYLOAD = (1 << 32) - 1
_U64_MAX = (1 << 64) - 1

CHECKPOINT_SUFFIX = ".ckpt"
_CHECKPOINT_REF = struct.Struct(">32sQ")  # SHA-256, size in bytes
_READ_CHUNK = 1 << 20


TRANSCRIPT_NAME = "transcript.log"


class RecordKind(enum.IntEnum):
    """Kind tags of the records the protocol writes (other values 1..255 are allowed)."""

    HEADER = 1  # run config, seed, versions
    ROUND = 2  # a committed round record
    QC = 3  # a quorum certificate
    FRAUD_PROOF = 4
    CHECKPOINT = 5  # encode_checkpoint_ref(sha256, size) of a CheckpointStore file
    LEDGER = 6  # pot_jax.protocol.ledger.encode_entries(...)
    CLOSING = 7  # pot_jax.protocol.genesis.encode_closing_record(...): the signed end of a run
    INPUTS = 8  # pot_jax.protocol.messages.RoundInputs: the reports a round is derived from


class TranscriptError(ValueError):
    """A transcript that is corrupt (not merely torn at its tail) or misused.

    ``offset`` is the byte offset of the offending record in the log (0 for the
    file header) and ``seq`` its sequence number (the expected one when the
    record's own header cannot be trusted); both ``None`` when not about a record.
    """

    def __init__(self, message: str, *, offset: int | None = None, seq: int | None = None):
        super().__init__(message)
        self.offset = offset
        self.seq = seq


@dataclass(frozen=True)
class Record:
    """One verified record and where it sits in the log."""

    seq: int
    kind: int
    payload: bytes
    offset: int

    @property
    def end(self) -> int:
        """Offset just past this record."""
        return self.offset + RECORD_OVERHEAD + len(self.payload)


@dataclass(frozen=True)
class TornTail:
    """An incomplete tail: ``length`` bytes from ``offset`` to the end of the file."""

    offset: int
    length: int
    reason: str


def frame_record(kind: int, seq: int, payload: bytes) -> bytes:
    """The exact bytes of one framed record."""
    if not isinstance(kind, int) or isinstance(kind, bool) or not 1 <= kind <= 255:
        raise TranscriptError(f"record kind {kind!r}: expected an int in [1, 255]")
    if not isinstance(seq, int) or not 0 <= seq <= _U64_MAX:
        raise TranscriptError(f"sequence number {seq!r}: expected a u64")
    if not isinstance(payload, bytes | bytearray | memoryview):
        raise TranscriptError(f"record payload must be bytes, got {type(payload).__name__}")
    payload = bytes(payload)
    if len(payload) > MAX_PAYLOAD:
        raise TranscriptError(f"payload of {len(payload)} bytes exceeds MAX_PAYLOAD {MAX_PAYLOAD}")
    head = _HEAD.pack(len(payload), kind, seq)
    checksum = hashlib.sha256(head + payload).digest()[:_CHECKSUM_SIZE]
    return head + _HEAD_CRC.pack(zlib.crc32(head)) + payload + checksum


def encode_checkpoint_ref(digest: bytes, size: int) -> bytes:
    """Payload of a CHECKPOINT record: ``sha256 (32 bytes) | u64 size``."""
    if len(digest) != 32:
        raise TranscriptError(f"checkpoint digest is {len(digest)} bytes, expected 32")
    return _CHECKPOINT_REF.pack(digest, size)


def decode_checkpoint_ref(payload: bytes) -> tuple[bytes, int]:
    """``(sha256, size)`` from a CHECKPOINT record's payload."""
    if len(payload) != _CHECKPOINT_REF.size:
        raise TranscriptError(
            f"checkpoint reference is {len(payload)} bytes, expected {_CHECKPOINT_REF.size}"
        )
    digest, size = _CHECKPOINT_REF.unpack(payload)
    return digest, size


# ---------------------------------------------------------------------------
# Scanning


class _Scan:
    """One pass over a log: yields verified records, then records where the valid prefix ends."""

    def __init__(self, f: BinaryIO, path: Path):
        self.f, self.path = f, path
        self.size = os.fstat(f.fileno()).st_size
        self.end = 0  # offset just past the last valid record (or the file header)
        self.next_seq = 0
        self.torn: TornTail | None = None

    def _tail_is_zero(self, offset: int) -> bool:
        self.f.seek(offset)
        while chunk := self.f.read(_READ_CHUNK):
            if chunk.count(0) != len(chunk):
                return False
        return True

    def _torn(self, offset: int, reason: str) -> None:
        self.torn = TornTail(offset, self.size - offset, reason)

    def records(self) -> Iterator[Record]:
        f, size = self.f, self.size
        f.seek(0)
        header = f.read(len(FILE_HEADER))
        if header != FILE_HEADER:
            if len(header) < len(FILE_HEADER) and FILE_HEADER.startswith(header):
                self._torn(0, f"incomplete file header ({len(header)} of {len(FILE_HEADER)} bytes)")
                return
            if self._tail_is_zero(0):
                self._torn(0, "zero-filled file")
                return
            if header[: len(MAGIC)] != MAGIC:
                raise TranscriptError(
                    f"{self.path}: not a pot-jax transcript, starts with {header[:8]!r}, "
                    f"expected {MAGIC!r}",
                    offset=0,
                )
            version = int.from_bytes(header[len(MAGIC) :], "big")
            raise TranscriptError(
                f"{self.path}: transcript format version {version}, "
                f"this reader understands {FORMAT_VERSION}",
                offset=0,
            )
        pos = self.end = len(FILE_HEADER)
        seq = 0
        while pos < size:
            if size - pos < _HEAD_SIZE:
                self._torn(pos, f"incomplete record header ({size - pos} of {_HEAD_SIZE} bytes)")
                return
            f.seek(pos)
            raw = f.read(_HEAD_SIZE)
            head = raw[: _HEAD.size]
            (crc,) = _HEAD_CRC.unpack(raw[_HEAD.size :])
            length, kind, record_seq = _HEAD.unpack(head)
            where = f"{self.path}: record at offset {pos} (seq {seq})"
            if zlib.crc32(head) != crc:
                if self._tail_is_zero(pos):
                    self._torn(pos, "zero-filled tail")
                    return
                raise TranscriptError(
                    f"{where}: header checksum mismatch (stored {crc:#010x}, computed "
                    f"{zlib.crc32(head):#010x}); the log is corrupt here, not torn",
                    offset=pos,
                    seq=seq,
                )
            if kind == 0:
                raise TranscriptError(f"{where}: kind 0 is never written", offset=pos, seq=seq)
            if record_seq != seq:
                raise TranscriptError(
                    f"{where}: sequence number {record_seq}, expected {seq}", offset=pos, seq=seq
                )
            end = pos + RECORD_OVERHEAD + length
            if end > size:
                self._torn(
                    pos, f"record seq {seq} needs {end - pos} bytes, the file has {size - pos}"
                )
                return
            payload = f.read(length)
            checksum = f.read(_CHECKSUM_SIZE)
            digest = hashlib.sha256(head)
            digest.update(payload)
            if digest.digest()[:_CHECKSUM_SIZE] != checksum:
                raise TranscriptError(
                    f"{where}: payload checksum mismatch in a complete record "
                    f"({length}-byte payload, kind {kind}); the log is corrupt here, not torn",
                    offset=pos,
                    seq=seq,
                )
            yield Record(seq=seq, kind=_kind(kind), payload=payload, offset=pos)
            pos = self.end = end
            seq = self.next_seq = seq + 1


def _kind(kind: int) -> int:
    try:
        return RecordKind(kind)
    except ValueError:
        return kind


# ---------------------------------------------------------------------------
# Reading


class TranscriptReader:
    """Iterates the verified records of a log; raises ``TranscriptError`` on corruption.

    A torn tail ends the iteration: with ``allow_torn_tail=True`` (default) it is
    logged and left in ``torn_tail``; with ``False`` it raises, for an auditor that
    expects a cleanly closed transcript. Each iteration re-reads the file.
    """

    def __init__(self, path: str | os.PathLike, *, allow_torn_tail: bool = True):
        self.path = Path(path)
        self.allow_torn_tail = allow_torn_tail
        self.torn_tail: TornTail | None = None
        self.checkpoints = CheckpointStore(checkpoint_directory(self.path))

    def __iter__(self) -> Iterator[Record]:
        with open(self.path, "rb") as f:
            scan = _Scan(f, self.path)
            yield from scan.records()
            self.torn_tail = scan.torn
        if scan.torn is not None:
            message = (
                f"{self.path}: torn tail of {scan.torn.length} bytes at offset "
                f"{scan.torn.offset}: {scan.torn.reason}"
            )
            if not self.allow_torn_tail:
                raise TranscriptError(message, offset=scan.torn.offset, seq=scan.next_seq)
            _log.warning("%s (ignored by the reader)", message)

    def records(self) -> list[Record]:
        return list(self)

    def checkpoint(self, record: Record) -> bytes:
        """The parameters bytes a CHECKPOINT record points at, verified against its hash."""
        if record.kind != RecordKind.CHECKPOINT:
            raise TranscriptError(
                f"record seq {record.seq} has kind {record.kind}, expected CHECKPOINT",
                offset=record.offset,
                seq=record.seq,
            )
        digest, size = decode_checkpoint_ref(record.payload)
        data = self.checkpoints.get(digest)
        if len(data) != size:  # only reachable with a SHA-256 collision or a forged record
            raise TranscriptError(
                f"checkpoint {digest.hex()} has {len(data)} bytes, record seq {record.seq} "
                f"says {size}",
                offset=record.offset,
                seq=record.seq,
            )
        return data


# ---------------------------------------------------------------------------
# Writing


def checkpoint_directory(path: str | os.PathLike) -> Path:
    """Where the checkpoints of the log at ``path`` live: ``<path>.checkpoints``."""
    path = Path(path)
    return path.with_name(path.name + ".checkpoints")


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


_datasync = getattr(os, "fdatasync", os.fsync)


class TranscriptWriter:
    """Appends records durably; ``TranscriptWriter(path)`` creates a new log.

    Use ``TranscriptWriter.open(path)`` to continue an existing log (it truncates
    a torn tail, with a warning). One writer per log: the file is locked.
    If a write or sync fails the writer refuses further appends; reopen it.

    Args:
      path: the log file; must not exist.
      fsync_every: sync after every this many records (default 1: every record).
    """

    def __init__(self, path: str | os.PathLike, *, fsync_every: int = 1):
        self._setup(path, fsync_every)
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            raise TranscriptError(
                f"{self.path} already exists; use TranscriptWriter.open(path) to append to it"
            ) from None
        self._fd = fd
        self._lock()
        try:
            self._write_file_header()
        except BaseException:
            self.close()
            raise
        self._end, self._next_seq = len(FILE_HEADER), 0

    @classmethod
    def open(
        cls, path: str | os.PathLike, *, fsync_every: int = 1, create: bool = False
    ) -> TranscriptWriter:
        """Reopen a log for appending after verifying it.

        Raises ``TranscriptError`` if any complete record is corrupt; a torn tail
        is truncated away. With ``create=True`` a missing log is created.
        """
        if create and not os.path.exists(path):
            return cls(path, fsync_every=fsync_every)
        self = cls.__new__(cls)
        self._setup(path, fsync_every)
        self._fd = os.open(self.path, os.O_RDWR)
        try:
            self._lock()
            with os.fdopen(os.dup(self._fd), "rb") as f:
                scan = _Scan(f, self.path)
                for _ in scan.records():
                    pass
            if scan.torn is not None:
                _log.warning(
                    "%s: truncating torn tail of %d bytes at offset %d (%s); records 0..%d kept",
                    self.path,
                    scan.torn.length,
                    scan.torn.offset,
                    scan.torn.reason,
                    scan.next_seq - 1,
                )
                os.ftruncate(self._fd, scan.torn.offset)
                os.fsync(self._fd)
                if scan.torn.offset == 0:
                    self._write_file_header()
                    scan.end = len(FILE_HEADER)
            self._end, self._next_seq = scan.end, scan.next_seq
            self.torn_tail = scan.torn
        except BaseException:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
            raise
        if self.checkpoints.directory.is_dir():
            self.checkpoints.remove_temporaries()
        return self

    def _setup(self, path: str | os.PathLike, fsync_every: int) -> None:
        if not isinstance(fsync_every, int) or isinstance(fsync_every, bool) or fsync_every < 1:
            raise TranscriptError(f"fsync_every = {fsync_every!r}: expected an int >= 1")
        self.path = Path(path)
        self.fsync_every = fsync_every
        self.checkpoints = CheckpointStore(checkpoint_directory(self.path))
        self.torn_tail: TornTail | None = None
        self._fd: int | None = None
        self._unsynced = 0
        self._failed: BaseException | None = None

    def _lock(self) -> None:
        if fcntl is None:
            return
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(self._fd)
            self._fd = None
            if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise TranscriptError(
                    f"{self.path} is already open for writing by another writer"
                ) from None
            raise

    def _write_file_header(self) -> None:
        os.lseek(self._fd, 0, os.SEEK_SET)
        _write_all(self._fd, FILE_HEADER)
        os.fsync(self._fd)
        _fsync_directory(self.path.parent.absolute())

    @property
    def next_seq(self) -> int:
        """Sequence number the next ``append`` will return."""
        return self._next_seq

    @property
    def closed(self) -> bool:
        return self._fd is None

    def append(self, kind: int, payload: bytes, *, sync: bool = True) -> int:
        """Append one record and return its sequence number (durable per ``fsync_every``).

        ``sync=False`` leaves the record for the next synced append (the records
        of one round are made durable together, by its last one).
        """
        if self._fd is None:
            raise TranscriptError(f"{self.path}: append to a closed transcript writer")
        if self._failed is not None:
            raise TranscriptError(
                f"{self.path}: an earlier write failed ({self._failed}); reopen with "
                "TranscriptWriter.open to recover"
            )
        frame = frame_record(kind, self._next_seq, payload)
        try:
            os.lseek(self._fd, self._end, os.SEEK_SET)
            _write_all(self._fd, frame)
            self._unsynced += 1
            if sync and self._unsynced >= self.fsync_every:
                _datasync(self._fd)
                self._unsynced = 0
        except OSError as exc:
            self._failed = exc
            raise
        self._end += len(frame)
        self._next_seq += 1
        return self._next_seq - 1

    def append_checkpoint(self, params: bytes) -> tuple[int, bytes]:
        """Store ``params`` in the checkpoint store, then log a CHECKPOINT record.

        Returns ``(seq, sha256)``. The file is durable before the record exists.
        """
        digest = self.checkpoints.put(params)
        seq = self.append(RecordKind.CHECKPOINT, encode_checkpoint_ref(digest, len(params)))
        return seq, digest

    def sync(self) -> None:
        """Make every appended record durable now."""
        if self._fd is not None and self._unsynced:
            _datasync(self._fd)
            self._unsynced = 0

    def close(self) -> None:
        if self._fd is None:
            return
        try:
            if self._failed is None:
                self.sync()
        finally:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> TranscriptWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


# ---------------------------------------------------------------------------
# Checkpoints


class CheckpointStore:
    """Content-addressed files ``<sha256 hex>.ckpt``, written atomically and durably."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)

    def path_for(self, digest: bytes) -> Path:
        if len(digest) != 32:
            raise TranscriptError(f"checkpoint digest is {len(digest)} bytes, expected 32")
        return self.directory / (digest.hex() + CHECKPOINT_SUFFIX)

    def put(self, data: bytes) -> bytes:
        """Store ``data`` (if not already stored intact) and return its SHA-256."""
        data = bytes(data)
        digest = hashlib.sha256(data).digest()
        final = self.path_for(digest)
        if final.exists():
            if _file_sha256(final) == digest:
                return digest
            _log.warning("%s: stored checkpoint does not match its name; rewriting it", final)
        if not self.directory.is_dir():
            self.directory.mkdir(parents=True, exist_ok=True)
            _fsync_directory(self.directory.parent.absolute())
        tmp = self.directory / f".{digest.hex()}.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, final)
        _fsync_directory(self.directory)
        return digest

    def get(self, digest: bytes) -> bytes:
        """The stored bytes for ``digest``; raises ``TranscriptError`` if missing or altered."""
        path = self.path_for(digest)
        try:
            st = os.stat(path)
        except FileNotFoundError:
            raise TranscriptError(f"checkpoint {digest.hex()} is missing: no {path}") from None
        if not stat.S_ISREG(st.st_mode):  # a FIFO would block, a device never end
            raise TranscriptError(f"checkpoint {path} is not a regular file")
        data = path.read_bytes()
        actual = hashlib.sha256(data).digest()
        if actual != digest:
            raise TranscriptError(
                f"checkpoint file {path} hashes to {actual.hex()}, expected {digest.hex()}: "
                "the checkpoint was swapped or corrupted"
            )
        return data

    def remove_temporaries(self) -> None:
        """Delete temporary files a crash left behind (call only while holding the log)."""
        for tmp in self.directory.glob(".*.tmp"):
            tmp.unlink(missing_ok=True)


def _file_sha256(path: Path) -> bytes:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_READ_CHUNK):
            h.update(chunk)
    return h.digest()


def encode_qc_record(view: int, seq: int, qc) -> bytes:
    """Transcript payload of a commit QC: view and sequence, then the QC's own encoding."""
    return struct.pack(">QQ", view, seq) + qc.encode()


def decode_qc_record(payload: bytes):
    """``(view, seq, QuorumCertificate)`` of a QC record; ValueError if malformed."""
    from pot_jax.crypto.quorum import QuorumCertificate

    if len(payload) < 16:
        raise ValueError(f"QC record is {len(payload)} bytes, needs at least 16")
    view, seq = struct.unpack(">QQ", payload[:16])
    return view, seq, QuorumCertificate.decode(payload[16:])


def encode_fraud_record(prover: int, proof_bytes: bytes) -> bytes:
    """Transcript payload of a fraud proof: the citing validator's index, then the proof."""
    return struct.pack(">I", prover) + proof_bytes


def decode_fraud_record(payload: bytes) -> tuple[int, bytes]:
    if len(payload) < 4:
        raise ValueError(f"fraud-proof record is {len(payload)} bytes, needs at least 4")
    return struct.unpack(">I", payload[:4])[0], payload[4:]
