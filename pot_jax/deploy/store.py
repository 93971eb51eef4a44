"""A validator's vote log on disk: its PBFT durable state, written before it sends.

PBFT's safety rests on a replica never signing two digests for one (kind,
view, sequence), across crashes too. The replica's ``DurableState`` (its
signed votes, prepared and committed certificates, view and pending client
requests) is therefore written here, and synced, before any message it
produced leaves the node; a restarted validator reads it back and
``consensus.pbft.recover`` rebuilds the replica from it.

The file is JSON with a closed set of tagged types (bytes as hex, the PBFT
state records, quorum certificates): nothing in it names code to run, and a
file that does not decode to exactly these types is refused with the reason.
It is replaced atomically (write, fsync, rename, fsync the directory), so a
crash leaves either the old or the new state, never a torn one.

Values (proposals: a round record and the round's signed reports, about
0.6 MB at 1000 training nodes) are not in the JSON, which is rewritten on
every vote: each is written once, synced, to ``values/<sha256>`` beside it
and referenced by digest; a value file that does not hash to its name is
refused on load. Files no state refers to any more are removed.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from pot_jax.consensus.pbft.state import Certified, DurableState, StableCheckpoint
from pot_jax.crypto.quorum import QuorumCertificate

__all__ = ["VoteLog", "VoteLogError"]

_FORMAT = "pot-jax/vote-log/v1"


class VoteLogError(ValueError):
    """A vote log that cannot be read back, with what is wrong."""


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


def _inline(value: bytes | None):
    return _b(value)


def _uninline(x):
    return _unb(x)


def encode_durable(s: DurableState, ref=_inline) -> bytes:
    """The state as JSON; ``ref(value)`` says how a value is stored (default: inline hex)."""
    obj = {
        "format": _FORMAT,
        "view": s.view,
        "active": s.active,
        "signed": [[k, v, q, d.hex()] for (k, v, q), d in sorted(s.signed.items())],
        "prepared": [[q, _certified(c, ref)] for q, c in sorted(s.prepared.items())],
        "ledger": [[q, _certified(c, ref)] for q, c in sorted(s.ledger.items())],
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
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def decode_durable(data: bytes, deref=_uninline) -> DurableState:
    try:
        o = json.loads(data)
        if o.get("format") != _FORMAT:
            raise VoteLogError(f"not a {_FORMAT} file")
        st = o["stable"]
        return DurableState(
            view=int(o["view"]),
            active=bool(o["active"]),
            signed={(str(k), int(v), int(q)): bytes.fromhex(d) for k, v, q, d in o["signed"]},
            prepared={int(q): _uncertified(c, deref) for q, c in o["prepared"]},
            ledger={int(q): _uncertified(c, deref) for q, c in o["ledger"]},
            last_executed=int(o["last_executed"]),
            state_digest=bytes.fromhex(o["state_digest"]),
            stable=StableCheckpoint(
                int(st["seq"]), bytes.fromhex(st["digest"]), _unvotes(st["votes"]), _unqc(st["qc"])
            ),
            last_view_change=_unb(o["last_view_change"]),
            pending={bytes.fromhex(k): deref(v) for k, v in o["pending"]},
            last_new_view=_unb(o["last_new_view"]),
        )
    except VoteLogError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise VoteLogError(f"the vote log is malformed: {err!r}") from None


class VoteLog:
    """The durable state of one validator's replica, in ``path``."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.values = self.path.parent / "values"
        self.writes = 0
        self._stored: set[str] = set()

    def load(self) -> DurableState | None:
        """The last state written; None when the node never wrote one (a first start)."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            return decode_durable(data, self._read_value)
        except VoteLogError as err:
            raise VoteLogError(f"{self.path}: {err}") from None

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

    def _store_value(self, value):
        """Write ``value`` once (synced) and return its reference."""
        if value is None:
            return None
        ref = hashlib.sha256(value).hexdigest()
        if ref not in self._stored:
            self.values.mkdir(exist_ok=True)
            _write_synced(self.values / ref, value)
            self._stored.add(ref)
            self._new_values = True
        self._referenced.add(ref)
        return ref

    def save(self, state: DurableState) -> None:
        self._referenced: set[str] = set()
        self._new_values = False
        data = encode_durable(state, self._store_value)
        if self._new_values:
            _fsync_dir(self.values)  # the values' names are durable before the state names them
        tmp = self.path.with_suffix(".tmp")
        _write_synced(tmp, data)
        os.replace(tmp, self.path)
        _fsync_dir(self.path.parent)
        self.writes += 1
        stale = self._stored - self._referenced
        if len(stale) > 32:  # the state no longer names them: remove them, now and then
            for ref in stale:
                (self.values / ref).unlink(missing_ok=True)
            self._stored -= stale


def _write_synced(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(directory: Path) -> None:
    dfd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
