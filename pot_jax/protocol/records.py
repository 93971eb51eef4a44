"""The round record: what the committee commits for each training round.

A record binds the run's signed genesis (its digest), round r's input model
(its hash), the digest of the round's inputs (the validators' signed reports
and any equivocation evidence, ``protocol.messages.RoundInputs``), the
accepted workers and their commitments (and the Merkle root over them), every
rejection with its category (``verification.Category``), a free-text detail
and, for caught cheaters, the digest of the fraud proof, the validators
slashed this round and why, the aggregation rule, the output model's hash and
the digest of the round's ledger entries. Every field but the detail texts
is a function of the inputs (``protocol.round.transition``). Its canonical bytes are ``MAGIC`` followed by JSON with sorted
keys, no whitespace and bytes as lowercase hex; ``decode`` accepts only bytes
that re-encode identically, so one record has exactly one encoding and the
digest a QC signs is unambiguous.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from pot_jax.crypto.merkle import merkle_root
from pot_jax.verification.checks import Category

MAGIC = b"POTJAX-ROUND-RECORD/v3\n"
MAX_RECORD_BYTES = 1 << 22


class RecordError(ValueError):
    """Bytes that are not the canonical encoding of a round record."""


@dataclass(frozen=True)
class Accepted:
    worker: int
    commitment: bytes
    examples: int


@dataclass(frozen=True)
class Rejected:
    worker: int
    category: str  # a ``verification.Category`` value
    detail: str = ""  # for people; nothing parses it
    fraud_proof_digest: bytes = b""  # empty unless a fraud proof caught the worker


@dataclass(frozen=True)
class Slashed:
    """A validator slashed this round: ``fault`` names what its signed messages show."""

    validator: int
    fault: str  # a ``protocol.round.Fault`` value


@dataclass(frozen=True)
class RoundRecord:
    chain_id: bytes
    genesis: bytes  # the signed genesis's digest: a record belongs to exactly one run
    round: int
    params_hash: bytes
    inputs_digest: bytes  # sha256 of the round's encoded RoundInputs
    accepted: tuple[Accepted, ...]
    rejected: tuple[Rejected, ...]
    slashed: tuple[Slashed, ...]
    aggregation: str
    new_params_hash: bytes
    ledger_digest: bytes

    @property
    def commitments_root(self) -> bytes:
        """Merkle root (RFC 6962 hashing) over the accepted commitments, in worker order."""
        return merkle_root([a.commitment for a in self.accepted])

    def to_json(self) -> dict:
        return {
            "chain_id": self.chain_id.hex(),
            "genesis": self.genesis.hex(),
            "round": self.round,
            "params_hash": self.params_hash.hex(),
            "inputs_digest": self.inputs_digest.hex(),
            "accepted": [[a.worker, a.commitment.hex(), a.examples] for a in self.accepted],
            "rejected": [
                [r.worker, r.category, r.detail, r.fraud_proof_digest.hex()] for r in self.rejected
            ],
            "slashed": [[s.validator, s.fault] for s in self.slashed],
            "commitments_root": self.commitments_root.hex(),
            "aggregation": self.aggregation,
            "new_params_hash": self.new_params_hash.hex(),
            "ledger_digest": self.ledger_digest.hex(),
        }

    def encode(self) -> bytes:
        body = json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
        return MAGIC + body.encode("ascii")

    def digest(self) -> bytes:
        return hashlib.sha256(self.encode()).digest()

    @property
    def rejected_workers(self) -> frozenset[int]:
        return frozenset(r.worker for r in self.rejected)

    @classmethod
    def decode(cls, data: bytes) -> RoundRecord:
        """Parse canonical bytes; raise RecordError saying what is wrong otherwise."""
        if not isinstance(data, bytes | bytearray | memoryview):
            raise RecordError(f"record must be bytes, got {type(data).__name__}")
        data = bytes(data)
        if len(data) > MAX_RECORD_BYTES:
            raise RecordError(f"record is {len(data)} bytes, at most {MAX_RECORD_BYTES} allowed")
        if not data.startswith(MAGIC):
            raise RecordError(f"record does not start with {MAGIC!r}")
        try:
            obj = json.loads(data[len(MAGIC) :].decode("ascii"))
            record = cls(
                chain_id=bytes.fromhex(obj["chain_id"]),
                genesis=_hash(obj["genesis"], "genesis"),
                round=_int(obj["round"], "round"),
                params_hash=_hash(obj["params_hash"], "params_hash"),
                inputs_digest=_hash(obj["inputs_digest"], "inputs_digest"),
                accepted=tuple(
                    Accepted(_int(w, "worker"), _hash(c, "commitment"), _int(n, "examples"))
                    for w, c, n in obj["accepted"]
                ),
                rejected=tuple(
                    Rejected(
                        _int(w, "worker"),
                        _category(category),
                        _str(detail, "detail"),
                        bytes.fromhex(fp),
                    )
                    for w, category, detail, fp in obj["rejected"]
                ),
                slashed=tuple(
                    Slashed(_int(v, "validator"), _str(fault, "fault"))
                    for v, fault in obj["slashed"]
                ),
                aggregation=_str(obj["aggregation"], "aggregation"),
                new_params_hash=_hash(obj["new_params_hash"], "new_params_hash"),
                ledger_digest=_hash(obj["ledger_digest"], "ledger_digest"),
            )
        except RecordError:
            raise
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as err:
            raise RecordError(f"record is malformed: {type(err).__name__}: {err}") from None
        if record.to_json().get("commitments_root") != obj.get("commitments_root"):
            raise RecordError("record's commitments_root does not match its accepted commitments")
        if record.encode() != data:
            raise RecordError("record is not in canonical form (fields, order or spacing differ)")
        workers = [a.worker for a in record.accepted] + [r.worker for r in record.rejected]
        if len(set(workers)) != len(workers):
            raise RecordError("record lists a worker more than once")
        if [a.worker for a in record.accepted] != sorted(a.worker for a in record.accepted):
            raise RecordError("record's accepted workers are not in ascending order")
        return record


def _category(value) -> str:
    try:
        return Category.parse(value).value
    except (ValueError, TypeError) as err:
        raise RecordError(f"record field category: {err}") from None


def _int(value, field: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise RecordError(f"record field {field} = {value!r}: expected a non-negative integer")
    return value


def _str(value, field: str) -> str:
    if not isinstance(value, str):
        raise RecordError(f"record field {field} = {value!r}: expected a string")
    return value


def _hash(value, field: str) -> bytes:
    raw = bytes.fromhex(value) if isinstance(value, str) else b""
    if len(raw) != 32:
        raise RecordError(f"record field {field} = {value!r}: expected 32 bytes of hex")
    return raw
