"""The roles of a round as sans-IO state machines: training node, validator, aggregation server.

Each role sees only what it receives and answers events with outputs; none
sends anything itself (the runner, or a network, delivers). The messages are
``protocol.messages`` (reports) and ``verification.Submission`` (a worker's
signed gradient); what a round *does* is ``protocol.round.transition``.

* ``TrainingNode.step(RoundTask) -> Submission``: its gradient on its public
  batch, committed and signed; a Byzantine node runs its attack instead, with
  what it can know: its own honest gradient and public data; an attack whose
  ``knowledge`` is ``"colluding"`` also gets the round's honest gradients
  through the collusion channel the genesis names (``collusion``).
* ``Validator.step(event)``: ``Submission`` (kept), ``ReportDue`` (checks
  every submission, recomputes its VRF sample, outputs its signed
  ``ReportMessage``), ``ReportMessage`` from others (kept), ``ProposeDue``
  (its aggregation server derives the round with ``transition`` and outputs
  ``Propose(value)``, which the runner submits to this validator's own PBFT
  replica as a client request), and ``validate(value)``, the application
  check its replica runs on every proposal: the value must be exactly what
  ``transition`` gives on the proposal's own inputs, with the gradients this
  validator received. ``Committed`` moves it to the next round.
* the **aggregation server** is ``Validator.propose``: one beside every
  validator, so that when a primary's server misbehaves, the request every
  honest validator submitted is still pending and the next primary proposes it.

A Byzantine validator's behaviour (``protocol.behaviours``) rewrites what its
validator reports or what its server proposes; its PBFT misbehaviour comes
from ``network.byzantine`` as before.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from pot_jax.attacks import AttackContext, commitment_of
from pot_jax.crypto.worker_signatures import worker_message
from pot_jax.learning.encoding import flat_digest
from pot_jax.protocol.messages import (
    Check,
    MessageError,
    Report,
    ReportMessage,
    RoundInputs,
    canonical_evidence,
    decode_proposal,
    encode_proposal,
    evidence_key,
)
from pot_jax.protocol.records import RecordError, RoundRecord
from pot_jax.protocol.round import InputsError, RoundRules, RoundState, transition
from pot_jax.verification import Submission

__all__ = [
    "Propose",
    "ProposeDue",
    "ReportDue",
    "RoundTask",
    "TrainingNode",
    "Validator",
    "attack_knowledge",
    "proposal_round",
    "supersedes",
    "worker_program",
]


def worker_program(learner, params, batch_of, n_workers, active, mode) -> np.ndarray:
    """The honest workers' gradients, one row per worker (zero rows for inactive ones).

    What a host of training nodes computes for the nodes it runs. Bitwise
    mode: each node runs the canonical single-worker program, as validators
    do. Tolerance mode: the host's nodes run one vmapped program
    (``worker_gradients``), which XLA compiles differently: it stands in for
    workers on other hardware, whose results agree with the validators'
    recomputation only to float tolerance.
    """
    rows = np.zeros((n_workers, learner.num_params), np.float32)
    if mode == "tolerance":
        batches = [batch_of(w) for w in range(n_workers)]
        x = np.stack([b[0] for b in batches])
        y = np.stack([b[1] for b in batches])
        full = np.asarray(learner.worker_gradients(params, x, y))
        rows[active] = full[active]
        return rows
    for w in active:
        x_B, y_B = batch_of(w)
        rows[w] = np.asarray(learner.worker_gradient(params, x_B, y_B))
    return rows


def proposal_round(value: bytes) -> int | None:
    """The round a proposal value is for (None: not a proposal)."""
    try:
        return RoundRecord.decode(decode_proposal(value)[0]).round
    except (MessageError, RecordError):
        return None


def supersedes(decided: bytes, pending: bytes) -> bool:
    """PBFT's ``supersedes`` hook: once round r's value is decided, every other value for
    round r or earlier (another validator's derivation from other reports) is moot."""
    r = proposal_round(decided)
    p = proposal_round(pending)
    return r is not None and (p is None or p <= r)


def attack_knowledge(attack) -> str:
    """``"own"`` or ``"colluding"``; an attack that does not say is treated as colluding."""
    return getattr(attack, "knowledge", "colluding")


@dataclass(frozen=True)
class RoundTask:
    """The start of round r: the model every node trains on (public)."""

    round: int
    params: Any
    chain_id: bytes


class TrainingNode:
    """A worker: honest, or Byzantine with an attack."""

    def __init__(self, index, sk, pk, signatures, attack=None):
        self.index, self.sk, self.public_key = index, sk, pk
        self.signatures, self.attack = signatures, attack

    def step(self, task: RoundTask, header, own_row, attack_ctx, rng) -> Submission:
        """The signed submission for ``task``.

        ``own_row`` is this node's honest gradient (its host computed it);
        ``attack_ctx`` is what a Byzantine node knows (None for honest ones).
        """
        if self.attack is None:
            sent, commitment = own_row, flat_digest(header, own_row)
        else:
            sent = self.attack.apply(attack_ctx, self.index, rng)
            commitment = commitment_of(sent, header, rng)
        message = worker_message(task.chain_id, task.round, self.index, commitment)
        signature = self.signatures.sign(self.sk, message)
        return Submission(self.index, sent, commitment, signature, self.public_key)


def own_knowledge_context(ctx: AttackContext, worker: int, honest_WxP, buffer) -> AttackContext:
    """The attack context of a non-colluding node: every other worker's row is NaN."""
    buffer[worker] = honest_WxP[worker]
    return ctx._replace(grads_WxP=buffer)


class _Gradients(dict):
    def __init__(self, held, fetch):
        super().__init__(held)
        self._fetch = fetch

    def get(self, worker, default=None):
        if worker in self:
            return self[worker]
        if self._fetch is not None:
            fetched = self._fetch(worker)
            if fetched is not None:
                return fetched
        return default


@dataclass(frozen=True)
class ReportDue:
    """Deadline for the round's submissions: check them and report."""


@dataclass(frozen=True)
class ProposeDue:
    """Deadline for the round's reports: derive the round and propose it."""

    evidence: tuple = ()  # equivocation evidence not yet punished


@dataclass(frozen=True)
class Propose:
    """Output: submit ``value`` to this validator's own PBFT replica."""

    value: bytes


@dataclass(frozen=True)
class Committed:
    """Round ``state.round - 1`` committed; ``state`` is the next round's."""

    state: RoundState


class Validator:
    """A committee member's verification role and the aggregation server beside it."""

    def __init__(
        self,
        index,
        sk,
        report_sk,
        rules: RoundRules,
        behaviours=(),
        memo=None,
        faulty=False,
        fetch=None,
    ):
        self.index, self.sk, self.report_sk = index, sk, report_sk
        # fetch(worker) -> the gradient a peer holds for it (None: nobody does); used
        # for an accepted worker whose submission missed this validator's deadline.
        self.fetch = fetch
        self.faulty = faulty or bool(behaviours)
        self.rules, self.behaviours = rules, tuple(behaviours)
        self.memo = {} if memo is None else memo
        self.state: RoundState | None = None
        self.submissions: dict[int, Submission] = {}
        self.reports: dict[int, ReportMessage] = {}
        self.own_report: ReportMessage | None = None
        self.recomputed: set[int] = set()
        self.proposed = False

    @property
    def honest(self) -> bool:
        return not self.faulty

    def start(self, state: RoundState) -> None:
        self.state, self.submissions, self.reports = state, {}, {}
        self.own_report, self.recomputed, self.proposed = None, set(), False

    def step(self, event) -> list:
        if isinstance(event, Submission):
            w = event.worker
            if self.own_report is None and isinstance(w, int) and 0 <= w < self.rules.n_workers:
                self.submissions.setdefault(w, event)  # after its report: too late to count
            return []
        if isinstance(event, ReportMessage):
            if event.report.round == self.state.round:
                self.reports.setdefault(event.report.validator, event)
            return []
        if isinstance(event, ReportDue):
            message = self.report()
            self.own_report = message
            self.reports[self.index] = message
            return [message]
        if isinstance(event, ProposeDue):
            value = self.propose(event.evidence)
            self.proposed = value is not None
            return [] if value is None else [Propose(value)]
        if isinstance(event, Committed):
            self.start(event.state)
            return []
        raise TypeError(f"validator {self.index}: unknown event {type(event).__name__}")

    # -- the verification role ------------------------------------------------------------

    def context(self):
        return self.rules.context(self.state.round, self.state.params)

    def report(self) -> ReportMessage:
        rules, ctx = self.rules, self.context()
        scheme, n = rules.scheme, rules.n_validators
        selection = scheme.select(ctx, self.index, n, self.sk)
        subs = {w: s for w, s in self.submissions.items() if w not in self.state.banned}
        verdicts = None
        for b in self.behaviours:
            if b.check is not None:
                selection, verdicts = b.check(self, ctx, subs, selection)
        if verdicts is None:
            verdicts = scheme.check(ctx, subs, selection)
        checks, proofs = [], []
        for v in verdicts:
            sub = subs.get(v.worker)
            commitment = getattr(sub, "commitment", b"")
            if not isinstance(commitment, bytes) or len(commitment) != 32:
                commitment = b""
            digest = b""
            if v.fraud_proof is not None:
                proof_bytes = v.fraud_proof.encode()
                digest = hashlib.sha256(proof_bytes).digest()
                proofs.append(proof_bytes)
            category = "" if v.accepted else v.rejection.value
            checks.append(Check(v.worker, commitment, category, bool(v.recomputed), digest))
        for b in self.behaviours:
            if b.forge is not None:
                checks, proofs = b.forge(self, ctx, subs, checks, proofs)
        self.recomputed = {c.worker for c in checks if c.recomputed}
        unsigned = Report(
            chain_id=rules.chain_id,
            genesis=rules.genesis,
            round=self.state.round,
            validator=self.index,
            params_hash=self.state.params_hash,
            selection=tuple(selection.workers),
            vrf_output=selection.vrf_output,
            vrf_proof=selection.vrf_proof,
            checks=tuple(checks),
        )
        signature = rules.report_scheme.sign(self.report_sk, unsigned.signing_message())
        report = dataclasses.replace(unsigned, signature=signature)
        return ReportMessage(report, tuple(proofs))

    # -- the aggregation server -----------------------------------------------------------

    def inputs(self, evidence=()) -> tuple[RoundInputs, dict[bytes, bytes]]:
        """Every report received, in validator order, and the proofs they carry."""
        messages = [self.reports[v] for v in sorted(self.reports)]
        proofs = {hashlib.sha256(p).digest(): p for m in messages for p in m.proofs}
        fresh = {}
        for ev in evidence:
            ev = canonical_evidence(ev)
            key = evidence_key(ev)
            if key not in self.state.punished and key not in fresh:
                fresh[key] = ev
        inputs = RoundInputs(
            tuple(m.report for m in messages), tuple(fresh[k] for k in sorted(fresh))
        )
        return inputs, proofs

    def gradients(self) -> Mapping[int, Any]:
        """The gradients this validator received; others are fetched from a peer on demand
        (``new_model`` hashes a fetched one against the accepted commitment)."""
        return _Gradients({w: s.gradient for w, s in self.submissions.items()}, self.fetch)

    def known_digests(self) -> dict[int, bytes]:
        """Commitments this validator's cheap checks hashed the received gradient to."""
        if self.own_report is None:
            return {}
        passed = ("", "wrong_gradient")
        return {
            c.worker: c.commitment
            for c in self.own_report.report.checks
            if c.commitment and c.category in passed and c.worker in self.submissions
        }

    def propose(self, evidence=()) -> bytes | None:
        inputs, proofs = self.inputs(evidence)
        if evidence:
            inputs = self._verified_evidence(inputs, proofs)
        for b in self.behaviours:
            if b.propose is not None:
                return b.propose(self, inputs, proofs)
        try:
            outcome = self.derive(inputs, proofs)
        except InputsError:
            return None  # not enough reports yet: nothing to propose
        return encode_proposal(outcome.record.encode(), inputs.encode())

    def _verified_evidence(self, inputs, proofs):
        """Drop evidence that does not verify (a forger's), so the proposal stays valid."""
        from pot_jax.consensus.evidence import verify_evidence

        kept = tuple(
            ev
            for ev in inputs.evidence
            if verify_evidence(self.rules.chain_id, self.rules.validator_set, ev)
        )
        return RoundInputs(inputs.reports, kept)

    def derive(self, inputs: RoundInputs, proofs: Mapping[bytes, bytes]):
        # Validators holding the same submissions compute the same outcome.
        held = tuple(sorted(self.submissions))
        key = ("derive", self.state.round, self.state.params_hash, inputs.digest(), held)
        gradients = self.gradients()

        def compute():
            return transition(
                self.rules,
                self.state,
                inputs,
                proofs,
                gradients,
                memo=self.memo,
                known=self.known_digests() if self.honest else None,
            )

        # Honest validators that received the same submissions compute the same bytes;
        # in one simulation process they share the result (``memo``).
        if key in self.memo:
            return self.memo[key]
        outcome = compute()
        self.memo[key] = outcome
        return outcome

    # -- the application check its PBFT replica runs ---------------------------------------

    def validate(self, value: bytes) -> bool:
        """True iff ``value`` is exactly what ``transition`` gives on its own inputs."""
        if self.state is None:
            return False
        if not self.honest:
            return self._validate(value)
        # Honest validators holding the same submissions and reports give the same
        # answer; in one simulation process they share it (``memo``).
        held = tuple(sorted(self.submissions))
        key = ("validate", self.state.round, hashlib.sha256(value).digest(), held)
        if key not in self.memo:
            self.memo[key] = self._validate(value)
        return self.memo[key]

    def _validate(self, value: bytes) -> bool:
        try:
            record_bytes, inputs_bytes = decode_proposal(value)
            record = RoundRecord.decode(record_bytes)
            inputs = RoundInputs.decode(inputs_bytes)
        except (MessageError, RecordError):
            return False
        if record.round != self.state.round or record.params_hash != self.state.params_hash:
            return False
        proofs = {hashlib.sha256(p).digest(): p for m in self.reports.values() for p in m.proofs}
        try:
            outcome = self.derive(inputs, proofs)
        except InputsError:
            return False
        return outcome.record.encode() == record_bytes

    def outcome_of(self, value: bytes):
        """The derived outcome of a committed value (it passed ``validate``)."""
        record_bytes, inputs_bytes = decode_proposal(value)
        inputs = RoundInputs.decode(inputs_bytes)
        proofs = {hashlib.sha256(p).digest(): p for m in self.reports.values() for p in m.proofs}
        outcome = self.derive(inputs, proofs)
        if outcome.record.encode() != record_bytes:
            raise RuntimeError(f"round {self.state.round}: the committed record does not re-derive")
        return outcome, inputs, proofs
