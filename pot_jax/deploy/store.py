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
"""

from __future__ import annotations

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


def _certified(c: Certified) -> dict:
    return {
        "view": c.view,
        "digest": c.digest.hex(),
        "value": _b(c.value),
        "votes": _votes(c.votes),
        "qc": _qc(c.qc),
    }


def _uncertified(d: dict) -> Certified:
    return Certified(
        int(d["view"]),
        bytes.fromhex(d["digest"]),
        _unb(d["value"]),
        _unvotes(d["votes"]),
        _unqc(d["qc"]),
    )


def encode_durable(s: DurableState) -> bytes:
    obj = {
        "format": _FORMAT,
        "view": s.view,
        "active": s.active,
        "signed": [[k, v, q, d.hex()] for (k, v, q), d in sorted(s.signed.items())],
        "prepared": [[q, _certified(c)] for q, c in sorted(s.prepared.items())],
        "ledger": [[q, _certified(c)] for q, c in sorted(s.ledger.items())],
        "last_executed": s.last_executed,
        "state_digest": s.state_digest.hex(),
        "stable": {
            "seq": s.stable.seq,
            "digest": s.stable.digest.hex(),
            "votes": _votes(s.stable.votes),
            "qc": _qc(s.stable.qc),
        },
        "last_view_change": _b(s.last_view_change),
        "pending": [[k.hex(), v.hex()] for k, v in sorted(s.pending.items())],
        "last_new_view": _b(s.last_new_view),
    }
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def decode_durable(data: bytes) -> DurableState:
    try:
        o = json.loads(data)
        if o.get("format") != _FORMAT:
            raise VoteLogError(f"not a {_FORMAT} file")
        st = o["stable"]
        return DurableState(
            view=int(o["view"]),
            active=bool(o["active"]),
            signed={(str(k), int(v), int(q)): bytes.fromhex(d) for k, v, q, d in o["signed"]},
            prepared={int(q): _uncertified(c) for q, c in o["prepared"]},
            ledger={int(q): _uncertified(c) for q, c in o["ledger"]},
            last_executed=int(o["last_executed"]),
            state_digest=bytes.fromhex(o["state_digest"]),
            stable=StableCheckpoint(
                int(st["seq"]), bytes.fromhex(st["digest"]), _unvotes(st["votes"]), _unqc(st["qc"])
            ),
            last_view_change=_unb(o["last_view_change"]),
            pending={bytes.fromhex(k): bytes.fromhex(v) for k, v in o["pending"]},
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
        self.writes = 0

    def load(self) -> DurableState | None:
        """The last state written; None when the node never wrote one (a first start)."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            return decode_durable(data)
        except VoteLogError as err:
            raise VoteLogError(f"{self.path}: {err}") from None

    def save(self, state: DurableState) -> None:
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            data = encode_durable(state)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        dfd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
        self.writes += 1
