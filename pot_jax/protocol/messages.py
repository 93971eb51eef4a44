"""The typed messages of a round, with one canonical binary encoding each.

What the roles send each other (``protocol.roles``) and what the transcript
keeps (``protocol.transcript``):

* ``Report``: one validator's account of a round, signed with its Ed25519
  report key (``KeyRing.validator_report_keys``, registered in the genesis):
  the input model it checked against, its VRF selection with the proof, and
  one ``Check`` per worker (the commitment it received, the rejection
  category or acceptance, whether it recomputed the gradient, and the digest
  of the fraud proof it produced). A report is evidence against its signer:
  a sample it skipped or changed, a gradient it vouched for that someone
  proved wrong, or a proof that does not verify gets it slashed.
* ``ReportMessage``: a report and the fraud proofs it cites, as a validator
  broadcasts it (the proofs travel beside the report, not inside the
  proposal: only their digests are committed).
* a **submission** (``encode_submission``): a worker's signed gradient on
  the wire (worker, commitment, signature, public key, the gradient as
  little-endian float32 of any length); whatever a Byzantine worker puts in
  it, the decoder gives a ``Submission`` for the cheap checks to judge,
  or a ``MessageError`` for bytes that are not one.
* ``RoundInputs``: what the proposer put into a round, the reports (at least
  a quorum) and any equivocation evidence (``consensus.evidence``). Its
  digest is in the round record, so the QC signs the inputs too.
* the **proposal value** PBFT orders: the encoded record, then the inputs.

Every decoder accepts only bytes that re-encode identically and raises
``MessageError`` saying what is wrong.
"""

from __future__ import annotations

import functools
import hashlib
import struct
from dataclasses import dataclass

import numpy as np

from pot_jax.consensus.evidence import EquivocationEvidence
from pot_jax.verification.checks import Category
from pot_jax.verification.context import Submission

__all__ = [
    "Check",
    "MessageError",
    "Report",
    "ReportMessage",
    "RoundInputs",
    "decode_proposal",
    "decode_submission",
    "encode_proposal",
    "encode_submission",
]

_REPORT_MAGIC = b"PJRP\x01"
_INPUTS_MAGIC = b"PJRI\x01"
_PROPOSAL_MAGIC = b"PJPR\x01"
_REPORT_MESSAGE_MAGIC = b"PJRM\x01"
_SUBMISSION_MAGIC = b"PJSB\x01"
MAX_GRADIENT_BYTES = 1 << 30
_REPORT_TAG = b"pot-jax/validator-report/v1\x00"
MAX_REPORTS = 1 << 12
MAX_WORKERS = 1 << 20
MAX_EVIDENCE = 1 << 12

_CATEGORIES = tuple(Category)  # code i + 1; 0 means accepted
_RECOMPUTED, _HAS_COMMITMENT, _HAS_PROOF = 1, 2, 4


class MessageError(ValueError):
    """Bytes that are not the canonical encoding of a round message."""


class _Reader:
    def __init__(self, data: bytes, what: str):
        self.data, self.pos, self.what = bytes(data), 0, what

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise MessageError(f"{self.what} is truncated at byte {self.pos} (needs {n} more)")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def uint(self, fmt: str) -> int:
        size = struct.calcsize(fmt)
        return struct.unpack(fmt, self.take(size))[0]

    def short_bytes(self) -> bytes:
        return self.take(self.uint(">B"))

    def long_bytes(self) -> bytes:
        return self.take(self.uint(">I"))

    def count(self, limit: int, what: str) -> int:
        n = self.uint(">I")
        if n > limit:
            raise MessageError(f"{self.what} holds {n} {what}, at most {limit} allowed")
        return n

    def end(self) -> None:
        if self.pos != len(self.data):
            raise MessageError(f"{self.what} has {len(self.data) - self.pos} trailing bytes")


def _short(b: bytes) -> bytes:
    if len(b) > 255:
        raise MessageError(f"field of {len(b)} bytes, at most 255")
    return struct.pack(">B", len(b)) + b


def _long(b: bytes) -> bytes:
    return struct.pack(">I", len(b)) + b


@dataclass(frozen=True)
class Check:
    """What one validator found for one worker's submission."""

    worker: int
    commitment: bytes  # the 32-byte commitment received; b"" if none was well-formed
    category: str  # "" when accepted, else a ``Category`` value
    recomputed: bool
    proof: bytes = b""  # sha256 of the fraud proof this validator produced, or b""

    @property
    def accepted(self) -> bool:
        return self.category == ""


@dataclass(frozen=True)
class Report:
    """One validator's signed account of one round (see the module docstring)."""

    chain_id: bytes
    genesis: bytes
    round: int
    validator: int
    params_hash: bytes
    selection: tuple[int, ...]
    vrf_output: bytes
    vrf_proof: bytes
    checks: tuple[Check, ...]
    signature: bytes = b""

    def body(self) -> bytes:
        """The canonical bytes the signature covers (everything but the signature)."""
        return self._body

    @functools.cached_property
    def _body(self) -> bytes:  # a frozen dataclass: the bytes never change
        out = [
            _REPORT_MAGIC,
            _short(self.chain_id),
            _fixed(self.genesis, "genesis"),
            struct.pack(">QI", self.round, self.validator),
            _fixed(self.params_hash, "params_hash"),
            struct.pack(">I", len(self.selection)),
            *(struct.pack(">I", w) for w in self.selection),
            _short(self.vrf_output),
            _short(self.vrf_proof),
            struct.pack(">I", len(self.checks)),
        ]
        for c in self.checks:
            flags = (
                (_RECOMPUTED if c.recomputed else 0)
                | (_HAS_COMMITMENT if c.commitment else 0)
                | (_HAS_PROOF if c.proof else 0)
            )
            code = 0 if c.category == "" else _CATEGORIES.index(Category.parse(c.category)) + 1
            out.append(struct.pack(">IBB", c.worker, flags, code))
            if c.commitment:
                out.append(_fixed(c.commitment, "commitment"))
            if c.proof:
                out.append(_fixed(c.proof, "proof digest"))
        return b"".join(out)

    def signing_message(self) -> bytes:
        return _REPORT_TAG + hashlib.sha256(self.body()).digest()

    def encode(self) -> bytes:
        return self.body() + _short(self.signature)

    def check_for(self, worker: int) -> Check | None:
        if 0 <= worker < len(self.checks) and self.checks[worker].worker == worker:
            return self.checks[worker]
        return None

    @classmethod
    def decode(cls, data: bytes) -> Report:
        r = _Reader(data, "report")
        if r.take(len(_REPORT_MAGIC)) != _REPORT_MAGIC:
            raise MessageError("report does not start with the report magic")
        chain_id = r.short_bytes()
        genesis = r.take(32)
        round_, validator = r.uint(">Q"), r.uint(">I")
        params_hash = r.take(32)
        selection = tuple(r.uint(">I") for _ in range(r.count(MAX_WORKERS, "selected workers")))
        vrf_output, vrf_proof = r.short_bytes(), r.short_bytes()
        checks = []
        for _ in range(r.count(MAX_WORKERS, "checks")):
            worker, flags, code = r.uint(">I"), r.uint(">B"), r.uint(">B")
            if flags & ~(_RECOMPUTED | _HAS_COMMITMENT | _HAS_PROOF):
                raise MessageError(f"report check for worker {worker} has unknown flags {flags}")
            if code > len(_CATEGORIES):
                raise MessageError(f"report check for worker {worker}: unknown category {code}")
            commitment = r.take(32) if flags & _HAS_COMMITMENT else b""
            proof = r.take(32) if flags & _HAS_PROOF else b""
            category = "" if code == 0 else _CATEGORIES[code - 1].value
            checks.append(Check(worker, commitment, category, bool(flags & _RECOMPUTED), proof))
        signature = r.short_bytes()
        r.end()
        report = cls(
            chain_id,
            genesis,
            round_,
            validator,
            params_hash,
            selection,
            vrf_output,
            vrf_proof,
            tuple(checks),
            signature,
        )
        if [c.worker for c in checks] != list(range(len(checks))):
            raise MessageError("a report must hold one check per worker, in worker order")
        if list(selection) != sorted(set(selection)):
            raise MessageError("a report's selection must be distinct workers in ascending order")
        if report.encode() != bytes(data):
            raise MessageError("report is not in canonical form")
        return report


@dataclass(frozen=True)
class ReportMessage:
    """A report and the fraud proofs it cites (what a validator broadcasts)."""

    report: Report
    proofs: tuple[bytes, ...] = ()

    def encode(self) -> bytes:
        parts = [_REPORT_MESSAGE_MAGIC, _long(self.report.encode())]
        parts.append(struct.pack(">I", len(self.proofs)))
        parts.extend(_long(p) for p in self.proofs)
        return b"".join(parts)

    @classmethod
    def decode(cls, data: bytes) -> ReportMessage:
        r = _Reader(data, "report message")
        if r.take(len(_REPORT_MESSAGE_MAGIC)) != _REPORT_MESSAGE_MAGIC:
            raise MessageError("report message does not start with its magic")
        report = Report.decode(r.long_bytes())
        proofs = tuple(r.long_bytes() for _ in range(r.count(MAX_WORKERS, "proofs")))
        r.end()
        return cls(report, proofs)


def _encode_evidence(ev: EquivocationEvidence) -> bytes:
    return b"".join(
        (
            struct.pack(">I", ev.signer),
            _short(ev.kind.encode("ascii")),
            struct.pack(">QQ", ev.view, ev.seq),
            _fixed(ev.digest_a, "evidence digest"),
            _short(ev.signature_a),
            _fixed(ev.digest_b, "evidence digest"),
            _short(ev.signature_b),
        )
    )


def _decode_evidence(data: bytes) -> EquivocationEvidence:
    r = _Reader(data, "equivocation evidence")
    signer = r.uint(">I")
    try:
        kind = r.short_bytes().decode("ascii")
    except UnicodeDecodeError:
        raise MessageError("equivocation evidence names a non-ASCII vote kind") from None
    view, seq = r.uint(">Q"), r.uint(">Q")
    da, sa = r.take(32), r.short_bytes()
    db, sb = r.take(32), r.short_bytes()
    r.end()
    return EquivocationEvidence(signer, kind, view, seq, da, sa, db, sb)


def canonical_evidence(ev: EquivocationEvidence) -> EquivocationEvidence:
    """The same evidence with its two votes in digest order (one encoding per pair)."""
    if ev.digest_a <= ev.digest_b:
        return ev
    return EquivocationEvidence(
        ev.signer,
        ev.kind,
        ev.view,
        ev.seq,
        ev.digest_b,
        ev.signature_b,
        ev.digest_a,
        ev.signature_a,
    )


def evidence_key(ev: EquivocationEvidence) -> tuple[int, str, int, int]:
    """What one slashing is for: a validator is slashed once per (kind, view, seq)."""
    return (ev.signer, ev.kind, ev.view, ev.seq)


@dataclass(frozen=True)
class RoundInputs:
    """The reports and the equivocation evidence one round's record is derived from."""

    reports: tuple[Report, ...]
    evidence: tuple[EquivocationEvidence, ...] = ()

    def encode(self) -> bytes:
        return self._encoded

    @functools.cached_property
    def _encoded(self) -> bytes:  # a frozen dataclass: the bytes never change
        parts = [_INPUTS_MAGIC, struct.pack(">I", len(self.reports))]
        parts.extend(_long(rep.encode()) for rep in self.reports)
        parts.append(struct.pack(">I", len(self.evidence)))
        parts.extend(_long(_encode_evidence(ev)) for ev in self.evidence)
        return b"".join(parts)

    def digest(self) -> bytes:
        return hashlib.sha256(self.encode()).digest()

    @classmethod
    def decode(cls, data: bytes) -> RoundInputs:
        r = _Reader(data, "round inputs")
        if r.take(len(_INPUTS_MAGIC)) != _INPUTS_MAGIC:
            raise MessageError("round inputs do not start with their magic")
        reports = tuple(
            Report.decode(r.long_bytes()) for _ in range(r.count(MAX_REPORTS, "reports"))
        )
        evidence = tuple(
            _decode_evidence(r.long_bytes()) for _ in range(r.count(MAX_EVIDENCE, "evidence"))
        )
        r.end()
        inputs = cls(reports, evidence)
        validators = [rep.validator for rep in reports]
        if validators != sorted(set(validators)):
            raise MessageError("round inputs must hold one report per validator, in order")
        keys = [evidence_key(ev) for ev in evidence]
        if keys != sorted(set(keys)) or any(canonical_evidence(ev) != ev for ev in evidence):
            raise MessageError("round inputs' evidence must be distinct, canonical and in order")
        if inputs.encode() != bytes(data):
            raise MessageError("round inputs are not in canonical form")
        return inputs


def encode_proposal(record: bytes, inputs: bytes) -> bytes:
    """The value PBFT orders for a round: the record, then its inputs."""
    return _PROPOSAL_MAGIC + _long(record) + inputs


def decode_proposal(value: bytes) -> tuple[bytes, bytes]:
    """``(record bytes, inputs bytes)`` of a proposal value (each still to be decoded)."""
    r = _Reader(value, "proposal")
    if r.take(len(_PROPOSAL_MAGIC)) != _PROPOSAL_MAGIC:
        raise MessageError("proposal does not start with the proposal magic")
    record = r.long_bytes()
    return record, r.data[r.pos :]


def _fixed(b: bytes, what: str) -> bytes:
    if len(b) != 32:
        raise MessageError(f"{what} is {len(b)} bytes, expected 32")
    return b


def encode_submission(sub: Submission) -> bytes:
    """A worker's submission on the wire; ``MessageError`` if a field cannot travel.

    The gradient travels as little-endian float32 of its own length (a
    wrong-length gradient is the cheap checks' to reject); one of another
    dtype or rank cannot be sent as a gradient at all.
    """
    gradient = np.asarray(sub.gradient) if isinstance(sub.gradient, np.ndarray) else None
    if gradient is None or gradient.dtype != np.float32 or gradient.ndim != 1:
        raise MessageError(
            f"worker {sub.worker!r}: a submission's gradient travels as a 1-D float32 array"
        )
    fields = (sub.commitment, sub.signature, sub.public_key)
    if not isinstance(sub.worker, int) or not all(isinstance(b, bytes) for b in fields):
        raise MessageError("a submission's worker is an int and its other fields are bytes")
    data = gradient.astype("<f4").tobytes()
    return b"".join(
        (
            _SUBMISSION_MAGIC,
            struct.pack(">I", sub.worker),
            _short(sub.commitment),
            _short(sub.signature),
            _short(sub.public_key),
            _long(data),
        )
    )


def decode_submission(data: bytes) -> Submission:
    """The submission in ``data`` (fields unchecked: that is ``cheap_checks``' job)."""
    r = _Reader(data, "submission")
    if r.take(len(_SUBMISSION_MAGIC)) != _SUBMISSION_MAGIC:
        raise MessageError("submission does not start with the submission magic")
    worker = r.uint(">I")
    commitment, signature, public_key = r.short_bytes(), r.short_bytes(), r.short_bytes()
    n = r.uint(">I")
    if n % 4 or n > MAX_GRADIENT_BYTES:
        raise MessageError(f"submission gradient of {n} bytes: expected float32, at most 1 GiB")
    gradient = np.frombuffer(r.take(n), dtype="<f4").astype(np.float32)
    r.end()
    return Submission(worker, gradient, commitment, signature, public_key)
