"""A validator's vote log on disk: its PBFT durable state, written before it sends.

PBFT's safety rests on a replica never signing two digests for one (kind,
view, sequence), across crashes too. The replica's ``DurableState`` (its
signed votes, prepared and committed certificates, view and pending client
requests) is therefore written here, and synced, before any message it
produced leaves the node; a restarted validator reads it back and
``consensus.pbft.recover`` rebuilds the replica from it.

The log (format v2) is append-only, so a save costs the same at round 1000 as
at round 4: the file is a magic line and then records, each ``u32 length |
4-byte check of the length | sha256(payload) | payload``. A save appends one
record and syncs the file once: every durable field but the ledger (the
small part, bounded by the checkpoint window) plus the ledger's delta since
the previous record (entries added or changed, e.g. votes replaced by a QC,
and any removed). Loading replays the deltas up to the last complete record.
A torn or checksum-failing last record is a crash mid-append (that save never
returned, so nothing it guarded was sent): it is ignored and cut off by the
next save. A bad record with bytes after it is corruption, and the log is
refused (a validator that cannot trust its votes must not start). When the
file passes ``max(1 MiB, 4 x a full snapshot)`` it is rewritten as one
snapshot record, atomically (write, fsync, rename, fsync the directory), as
is a new file; so the rewrite is amortised over the appends it replaces.

Record payloads are JSON with a closed set of tagged types (bytes as hex,
the PBFT state records, quorum certificates): nothing in them names code to
run, and a file that does not decode to exactly these types is refused with
the reason.

Values (proposals: a round record and the round's signed reports, about
0.6 MB at 1000 training nodes) are not in the records: each is written once,
synced, to ``values/<sha256>`` beside the log and referenced by digest; a
value file that does not hash to its name is refused on load. Files no state
refers to any more are removed (references are counted as the ledger changes,
not re-walked on each save).

A v1 log (one JSON document, rewritten whole on every save) is still read,
at ``path`` (told apart by its content) or at ``legacy``; the first save
then writes a v2 snapshot, durably, before the v1 file is removed.
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import struct
from collections.abc import Mapping
from pathlib import Path

from pot_jax.consensus.pbft.state import Certified, DurableState, StableCheckpoint
from pot_jax.crypto.quorum import QuorumCertificate

__all__ = ["VoteLog", "VoteLogError"]

_V1 = "pot-jax/vote-log/v1"
MAGIC = b"pot-jax/vote-log/v2\n"
_HEADER = struct.Struct(">I4s32s")  # payload length, check of the length, sha256(payload)
COMPACT_MIN_BYTES = 1 << 20
COMPACT_FACTOR = 4
_GC_BATCH = 32  # unreferenced value files are removed in batches of this many
_sync = getattr(os, "fdatasync", os.fsync)  # an append needs the data and the size, not mtime


class VoteLogError(ValueError):
    """A vote log that cannot be read back, with what is wrong."""


# -- the closed set of types -------------------------------------------------------------------


def _b(x: bytes | None):
    return None if x is None else x.hex()


def _unb(x):
    return None if x is None else bytes.fromhex(x)


def _votes(votes):
    return None if votes is None else [[i, s.hex()] for i, s in sorted(votes.items())]


def _unvotes(votes):
    return None if votes is None else {int(i): bytes.fromhex(s) for i, s in votes}


def _qc(qc):
    return None if qc is None else qc.encode().hex()


def _unqc(x):
    return None if x is None else QuorumCertificate.decode(bytes.fromhex(x))


def _certified(c: Certified, ref) -> dict:
    return {
        "view": c.view,
        "digest": c.digest.hex(),
        "value": ref(c.value),
        "votes": _votes(c.votes),
        "qc": _qc(c.qc),
    }


def _uncertified(d: dict, deref) -> Certified:
    return Certified(
        int(d["view"]),
        bytes.fromhex(d["digest"]),
        deref(d["value"]),
        _unvotes(d["votes"]),
        _unqc(d["qc"]),
    )


def _small(s: DurableState, ref) -> dict:
    """Every durable field but the ledger."""
    return {
        "view": s.view,
        "active": s.active,
        "signed": [[k, v, q, d.hex()] for (k, v, q), d in sorted(s.signed.items())],
        "prepared": [[q, _certified(c, ref)] for q, c in sorted(s.prepared.items())],
        "last_executed": s.last_executed,
        "state_digest": s.state_digest.hex(),
        "stable": {
            "seq": s.stable.seq,
            "digest": s.stable.digest.hex(),
            "votes": _votes(s.stable.votes),
            "qc": _qc(s.stable.qc),
        },
        "last_view_change": _b(s.last_view_change),
        "pending": [[k.hex(), ref(v)] for k, v in sorted(s.pending.items())],
        "last_new_view": _b(s.last_new_view),
    }


def _unsmall(o: dict, deref, ledger: dict[int, Certified]) -> DurableState:
    st = o["stable"]
    return DurableState(
        view=int(o["view"]),
        active=bool(o["active"]),
        signed={(str(k), int(v), int(q)): bytes.fromhex(d) for k, v, q, d in o["signed"]},
        prepared={int(q): _uncertified(c, deref) for q, c in o["prepared"]},
        ledger=ledger,
        last_executed=int(o["last_executed"]),
        state_digest=bytes.fromhex(o["state_digest"]),
        stable=StableCheckpoint(
            int(st["seq"]), bytes.fromhex(st["digest"]), _unvotes(st["votes"]), _unqc(st["qc"])
        ),
        last_view_change=_unb(o["last_view_change"]),
        pending={bytes.fromhex(k): deref(v) for k, v in o["pending"]},
        last_new_view=_unb(o["last_new_view"]),
    )


def _dumps(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


_MALFORMED = (ValueError, KeyError, TypeError, AttributeError)


def _decode_v1(data: bytes, deref) -> DurableState:
    try:
        o = json.loads(data)
        if not isinstance(o, dict) or o.get("format") != _V1:
            raise VoteLogError(f"not a {_V1} file")
        ledger = {int(q): _uncertified(c, deref) for q, c in o["ledger"]}
        return _unsmall(o, deref, ledger)
    except VoteLogError:
        raise
    except _MALFORMED as err:
        raise VoteLogError(f"the v1 vote log is malformed: {err!r}") from None


# -- records -----------------------------------------------------------------------------------


def _length_check(n: int) -> bytes:
    return hashlib.sha256(b"pot-jax/vote-log/v2/length" + n.to_bytes(4, "big")).digest()[:4]


def encode_record(payload: bytes) -> bytes:
    n = len(payload)
    return _HEADER.pack(n, _length_check(n), hashlib.sha256(payload).digest()) + payload


def _record_payload(full: bool, ledger: list[tuple[int, str]], removed: list[int], small: str):
    entries = ",".join(f"[{q},{frag}]" for q, frag in ledger)
    return (
        f'{{"full":{"true" if full else "false"},"ledger":[{entries}],'
        f'"removed":{_dumps(removed)},"state":{small}}}'
    ).encode()


def read_records(data: bytes) -> tuple[list[bytes], int]:
    """The complete records' payloads after the magic line, and where the last one ends.

    A last record that is torn (short, or failing its checks, or zeros to the
    end of the file) is left out; a failing record with more bytes after it
    raises ``VoteLogError`` naming it.
    """
    if not data.startswith(MAGIC):
        raise VoteLogError(f"it does not start with {MAGIC!r}")
    payloads: list[bytes] = []
    off, end = len(MAGIC), len(data)
    while off < end:
        problem = None
        if end - off < _HEADER.size:
            problem = "its header is cut short"
            torn = True
        else:
            n, check, digest = _HEADER.unpack_from(data, off)
            stop = off + _HEADER.size + n
            if check != _length_check(n):
                problem = f"its length field ({n}) fails its check"
                torn = False
            elif stop > end:
                problem = f"it needs {n} payload bytes, {end - off - _HEADER.size} remain"
                torn = True
            else:
                payload = data[off + _HEADER.size : stop]
                if hashlib.sha256(payload).digest() == digest:
                    payloads.append(payload)
                    off = stop
                    continue
                problem = "its sha256 does not match its payload"
                torn = stop == end
        if torn or not data[off:].strip(b"\0"):
            return payloads, off  # a crash mid-append: that save never returned
        raise VoteLogError(
            f"record {len(payloads)} at byte {off}: {problem}, and {end - off} bytes "
            "follow from its start (only the last record can be torn by a crash): the log is corrupt"
        )
    return payloads, off


def _entries(x, what: str) -> list:
    if not isinstance(x, list):
        raise VoteLogError(f"{what} is {type(x).__name__}, expected a list")
    return x


class VoteLog:
    """The durable state of one validator's replica, in ``path``.

    ``legacy`` names a v1 log to read when ``path`` does not exist yet (it is
    removed once the state is in ``path``).
    """

    def __init__(self, path: str | os.PathLike, *, legacy: str | os.PathLike | None = None):
        self.path = Path(path)
        self.legacy = None if legacy is None else Path(legacy)
        self.values = self.path.parent / "values"
        self.writes = 0
        self._stored: set[str] = set()
        self._ref_of: dict[bytes, str] = {}  # value -> its sha256, hashed once
        self._reset()

    def _reset(self) -> None:
        """Forget what the file holds: the next save writes a full snapshot."""
        self._ledger: dict[int, Certified] | None = None  # the ledger as last written
        self._frags: dict[int, str] = {}  # each entry's JSON, for snapshots
        self._frag_bytes = 0
        self._entry_ref: dict[int, str | None] = {}  # each entry's value reference
        self._ledger_refs: collections.Counter[str] = collections.Counter()  # entries per value
        self._small_refs: set[str] = set()
        self._stale: set[str] = set()  # value files that may no longer be referenced
        self._size = 0  # where the last complete record ends
        self._tail_ok = True  # nothing after _size
        self._remove_legacy: Path | None = None

    # -- load ----------------------------------------------------------------------------------

    def load(self) -> DurableState | None:
        """The last state written; None when the node never wrote one (a first start)."""
        self._reset()
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            data = None
        legacy = self.legacy if self.legacy is not None and self.legacy != self.path else None
        if data is None:
            if legacy is None or not legacy.exists():
                return None
            self._remove_legacy = legacy
            return self._load_v1(legacy, legacy.read_bytes())
        if legacy is not None and legacy.exists():
            self._remove_legacy = legacy  # a crash came between writing v2 and removing v1
        if data.startswith(b"{"):
            return self._load_v1(self.path, data)
        try:
            return self._load_v2(data)
        except VoteLogError as err:
            raise VoteLogError(f"{self.path}: {err}") from None

    def _load_v1(self, path: Path, data: bytes) -> DurableState:
        try:
            return _decode_v1(data, self._read_value)
        except VoteLogError as err:
            raise VoteLogError(f"{path}: {err}") from None

    def _load_v2(self, data: bytes) -> DurableState:
        payloads, good_end = read_records(data)
        if not payloads:
            raise VoteLogError("it holds no complete record (the first is written atomically)")
        ledger: dict[int, dict] = {}
        small = None
        for i, payload in enumerate(payloads):
            try:
                o = json.loads(payload)
                if not isinstance(o, dict) or set(o) != {"full", "ledger", "removed", "state"}:
                    raise VoteLogError("its payload is not a {full, ledger, removed, state} object")
                if not isinstance(o["full"], bool) or not isinstance(o["state"], dict):
                    raise VoteLogError("its 'full' is not a boolean or its 'state' not an object")
                if i == 0 and not o["full"]:
                    raise VoteLogError("the first record is a delta, not a snapshot")
                if o["full"]:
                    ledger = {}
                for q in _entries(o["removed"], "'removed'"):
                    del ledger[int(q)]
                for q, c in _entries(o["ledger"], "'ledger'"):
                    if not isinstance(c, dict):
                        raise VoteLogError(f"ledger entry {q} is not an object")
                    ledger[int(q)] = c
                small = o["state"]
            except VoteLogError as err:
                raise VoteLogError(f"record {i}: {err}") from None
            except _MALFORMED as err:
                raise VoteLogError(f"record {i} is malformed: {err!r}") from None
        try:
            entries = {q: _uncertified(c, self._read_value) for q, c in sorted(ledger.items())}
            state = _unsmall(small, self._read_value, entries)
        except VoteLogError as err:
            raise VoteLogError(f"the state at record {len(payloads) - 1}: {err}") from None
        except _MALFORMED as err:
            raise VoteLogError(
                f"the state at record {len(payloads) - 1} is malformed: {err!r}"
            ) from None
        # What the file holds, so the next save appends only what changed.
        self._ledger = dict(entries)
        for q, c in ledger.items():
            frag = _dumps(c)
            self._frags[q] = frag
            self._frag_bytes += len(frag) + 24
            self._entry_ref[q] = c["value"]
            if c["value"] is not None:
                self._ledger_refs[c["value"]] += 1
        self._small_refs = {c["value"] for _, c in small["prepared"] if c["value"] is not None}
        self._small_refs |= {v for _, v in small["pending"] if v is not None}
        self._size = good_end
        self._tail_ok = good_end == len(data)
        return state

    def _read_value(self, ref):
        if ref is None:
            return None
        if not isinstance(ref, str) or len(ref) != 64:
            raise VoteLogError(f"a value reference {ref!r} is not a sha256 digest")
        try:
            value = (self.values / ref).read_bytes()
        except OSError as err:
            raise VoteLogError(f"value {ref} is missing ({err.strerror})") from None
        if hashlib.sha256(value).hexdigest() != ref:
            raise VoteLogError(f"value file {ref} does not hash to its name")
        self._stored.add(ref)
        return value

    # -- save ----------------------------------------------------------------------------------

    def _store_value(self, value: bytes | None) -> str | None:
        """Write ``value`` once (synced) and return its reference."""
        if value is None:
            return None
        ref = self._ref_of.get(value)  # the same bytes object: its hash is cached, no sha256
        if ref is None:
            ref = self._ref_of[value] = hashlib.sha256(value).hexdigest()
        if ref not in self._stored:
            self.values.mkdir(parents=True, exist_ok=True)
            _write_synced(self.values / ref, value)
            self._stored.add(ref)
            self._new_values = True
        self._stale.discard(ref)
        return ref

    def save(self, state: DurableState) -> None:
        """Make ``state`` durable: one appended record and one sync (plus new values)."""
        self._new_values = False
        small_refs: set[str] = set()

        def ref_small(value):
            r = self._store_value(value)
            if r is not None:
                small_refs.add(r)
            return r

        small = _dumps(_small(state, ref_small))
        full = self._ledger is None
        prev: Mapping[int, Certified] = {} if self._ledger is None else self._ledger
        changed: list[tuple[int, Certified]] = []
        for q, c in state.ledger.items():  # identity first: an unchanged entry is the same object
            was = prev.get(q)
            if was is not c and was != c:
                changed.append((q, c))
        added = sum(1 for q, _ in changed if q not in prev)
        removed = (
            sorted(q for q in prev if q not in state.ledger)
            if len(prev) + added != len(state.ledger)
            else []
        )
        encoded = [(q, _certified(c, self._store_value)) for q, c in changed]
        frags = [(q, _dumps(d)) for q, d in encoded]
        if self._new_values:
            _fsync_dir(self.values)  # the values' names are durable before a record names them

        frag_bytes = self._frag_bytes
        for q in removed:
            frag_bytes -= len(self._frags[q]) + 24
        for q, frag in frags:
            frag_bytes += len(frag) + 24 - (len(self._frags[q]) + 24 if q in self._frags else 0)
        record = None
        if not full:
            record = encode_record(_record_payload(False, frags, removed, small))
            snapshot_bytes = len(small) + frag_bytes + _HEADER.size + 64
            if self._size + len(record) > max(COMPACT_MIN_BYTES, COMPACT_FACTOR * snapshot_bytes):
                record = None  # compact: the whole state as one record, in a fresh file
        if record is not None:
            self._append(record)
        else:
            frag_of = dict(self._frags)
            for q in removed:
                del frag_of[q]
            frag_of.update(frags)
            payload = _record_payload(True, sorted(frag_of.items()), [], small)
            self._rewrite(MAGIC + encode_record(payload))
        self.writes += 1

        # Durable: the file now holds ``state``; update what we know it holds.
        ledger = {} if self._ledger is None else self._ledger
        dropped: list[str | None] = [self._entry_ref.pop(q) for q in removed]
        for q in removed:
            del ledger[q], self._frags[q]
        for (q, c), (_, d), (_, frag) in zip(changed, encoded, frags, strict=True):
            dropped.append(self._entry_ref.get(q))
            ledger[q], self._frags[q], self._entry_ref[q] = c, frag, d["value"]
            if d["value"] is not None:
                self._ledger_refs[d["value"]] += 1
        for r in dropped:
            if r is not None:
                self._ledger_refs[r] -= 1
                if self._ledger_refs[r] <= 0:
                    del self._ledger_refs[r]
                    self._stale.add(r)
        self._ledger, self._frag_bytes = ledger, frag_bytes
        self._stale |= self._small_refs - small_refs
        self._small_refs = small_refs
        if self._remove_legacy is not None:
            self._remove_legacy.unlink(missing_ok=True)
            _fsync_dir(self._remove_legacy.parent)
            self._remove_legacy = None
        self._collect()

    def _append(self, record: bytes) -> None:
        fd = os.open(self.path, os.O_WRONLY)
        try:
            if not self._tail_ok:
                os.ftruncate(fd, self._size)  # cut off the record a crash tore
            self._tail_ok = False
            _write_all(fd, record, self._size)
            _sync(fd)
        finally:
            os.close(fd)
        self._size += len(record)
        self._tail_ok = True

    def _rewrite(self, data: bytes) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        _write_synced(tmp, data)
        os.replace(tmp, self.path)
        _fsync_dir(self.path.parent)
        self._size, self._tail_ok = len(data), True

    def _collect(self) -> None:
        """Remove, now and then, the value files no state refers to any more."""
        if len(self._stale) <= _GC_BATCH:
            return
        gone = {r for r in self._stale if r not in self._small_refs and r not in self._ledger_refs}
        for r in gone:
            (self.values / r).unlink(missing_ok=True)
        self._stored -= gone
        self._ref_of = {v: r for v, r in self._ref_of.items() if r not in gone}
        self._stale = set()


def _write_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


def _write_synced(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        _write_all(fd, data, 0)
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(directory: Path) -> None:
    dfd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
