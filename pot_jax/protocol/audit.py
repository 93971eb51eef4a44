"""Offline audit of a run's transcript: ``pot-jax audit RUN_DIR [--recompute ...]``.

From the transcript alone (plus the run's public data, regenerated from the
config in its header), the auditor checks, round by round:

1. framing and checksums of every record (``TranscriptReader``);
2. the record decodes canonically, for this chain, with consecutive rounds;
3. the **QC chain**: each record's commit QC verifies against the genesis
   validator set (registered with proofs of possession) over
   ``vote_message(chain_id, "commit", view, seq, value_digest(record))``;
4. the **model-hash chain**: each record's input model hash is the previous
   record's output hash (the first is the genesis model's);
5. **fraud proofs**: every rejection that cites one has it in the transcript,
   signed by the worker's registered key, its gradient hashing to the signed
   commitment; re-executed rounds also recompute it;
6. the **ledger**: the auditor replays the rewards rule on what the records
   say (accepted workers, the previous QC's signers, proven cheaters) and
   compares with the recorded entries and the record's ledger digest, then
   checks conservation;
7. **checkpoints**: each stored model hashes to the record's output hash;
8. **re-execution** (``--recompute all`` or ``sample:F``): from a checkpoint,
   recompute every accepted worker's gradient with the canonical function,
   check it against the signed commitment, aggregate, update, and compare the
   new model's hash with the record. A mismatch here means the committee
   accepted a wrong gradient that its sampling missed: the transcript is
   authentic but the training history is not the honest one.

The audit stops at the first failure and names its round and reason.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field
from pathlib import Path

import jax

from pot_jax.config import ProtocolConfig
from pot_jax.consensus.messages import value_digest
from pot_jax.crypto.quorum import verify_qc, vote_message
from pot_jax.crypto.worker_signatures import worker_message, worker_signature_scheme
from pot_jax.learning.assignment import BatchAssigner
from pot_jax.learning.encoding import (
    EncodingError,
    decode_pytree,
    flat_digest,
    pytree_digest,
)
from pot_jax.learning.trainer import build_learner, load_for, worker_shards
from pot_jax.protocol.ledger import (
    Contribution,
    FraudProofRef,
    Ledger,
    LedgerConfig,
    LedgerError,
    RoundRewards,
    check_conservation,
    decode_entries,
    encode_entries,
    entries_digest,
)
from pot_jax.protocol.records import RecordError, RoundRecord
from pot_jax.protocol.runner import (
    TRANSCRIPT_NAME,
    AggregationServer,
    decode_fraud_record,
    decode_qc_record,
    honest_gradients,
    load_validator_set,
    make_verification,
)
from pot_jax.protocol.transcript import RecordKind, TranscriptError, TranscriptReader
from pot_jax.verification import RoundContext, Submission
from pot_jax.verification.fraud_proof import FraudProof, verify_fraud_proof


class AuditFailure(Exception):
    """The first check that failed, with its round (None: before any round)."""

    def __init__(self, round_: int | None, reason: str):
        super().__init__(reason if round_ is None else f"round {round_}: {reason}")
        self.round = round_
        self.reason = reason


@dataclass
class AuditReport:
    ok: bool
    rounds: int = 0
    reexecuted: int = 0
    fraud_proofs: int = 0
    checkpoints: int = 0
    first_bad_round: int | None = None
    reason: str = ""
    notes: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        head = "audit passed" if self.ok else f"audit FAILED: {self.reason}"
        body = (
            f"rounds verified {self.rounds}, re-executed {self.reexecuted}, "
            f"fraud proofs {self.fraud_proofs}, checkpoints {self.checkpoints}"
        )
        return "\n".join([head, body, *self.notes])


def parse_recompute(text: str) -> float:
    """``none`` -> 0, ``all`` -> 1, ``sample:F`` -> F in (0, 1]."""
    if text == "none":
        return 0.0
    if text == "all":
        return 1.0
    if text.startswith("sample:"):
        try:
            fraction = float(text.split(":", 1)[1])
        except ValueError:
            fraction = float("nan")
        if 0 < fraction <= 1:
            return fraction
    raise ValueError(f"--recompute {text!r}: expected none, all or sample:FRACTION with 0 < F <= 1")


@dataclass
class _Round:
    number: int
    record_bytes: bytes
    qc: bytes | None = None
    fraud: list[bytes] = field(default_factory=list)
    ledger: bytes | None = None
    checkpoint: bytes | None = None


def _group(records, reader) -> tuple[dict, bytes | None, list[_Round], list[str]]:
    """Split the record stream into header, genesis checkpoint and per-round groups."""
    it = iter(records)
    notes: list[str] = []
    try:
        first = next(it)
    except StopIteration:
        raise AuditFailure(None, "the transcript holds no records") from None
    if first.kind != RecordKind.HEADER:
        raise AuditFailure(None, f"the first record is kind {first.kind}, expected HEADER")
    try:
        header = json.loads(first.payload)
    except ValueError as err:
        raise AuditFailure(None, f"the header is not JSON: {err}") from None
    genesis = None
    rounds: list[_Round] = []
    for rec in it:
        kind = rec.kind
        if kind == RecordKind.CHECKPOINT:
            data = reader.checkpoint(rec)
            if not rounds:
                genesis = data
            else:
                rounds[-1].checkpoint = data
        elif kind == RecordKind.ROUND:
            rounds.append(_Round(len(rounds), rec.payload))
        elif not rounds:
            raise AuditFailure(None, f"record seq {rec.seq} (kind {kind}) comes before any round")
        elif kind == RecordKind.QC:
            rounds[-1].qc = rec.payload
        elif kind == RecordKind.FRAUD_PROOF:
            rounds[-1].fraud.append(rec.payload)
        elif kind == RecordKind.LEDGER:
            rounds[-1].ledger = rec.payload
        else:
            raise AuditFailure(len(rounds) - 1, f"record seq {rec.seq} has unknown kind {kind}")
    if rounds and (rounds[-1].qc is None or rounds[-1].ledger is None):
        notes.append(
            f"round {rounds[-1].number} is incomplete at the end of the transcript "
            "(a crash before its QC and ledger were written); it was never committed to "
            "the log and is ignored"
        )
        rounds.pop()
    return header, genesis, rounds, notes


class Auditor:
    def __init__(self, run_dir: str | Path, *, recompute: float = 0.0, seed: int = 0):
        self.run_dir = Path(run_dir)
        self.recompute = recompute
        self.seed = seed

    def run(self) -> AuditReport:
        report = AuditReport(ok=True)
        try:
            self._audit(report)
        except AuditFailure as failure:
            report.ok = False
            report.first_bad_round = failure.round
            report.reason = str(failure)
        except TranscriptError as err:
            report.ok = False
            report.reason = f"transcript is corrupt: {err}"
        except Exception as err:  # an auditor reports bad input, it never crashes on it
            report.ok = False
            report.reason = f"audit could not proceed: {type(err).__name__}: {err}"
        return report

    def _audit(self, report: AuditReport) -> None:
        path = self.run_dir / TRANSCRIPT_NAME
        if not path.exists():
            raise AuditFailure(None, f"{path} does not exist")
        reader = TranscriptReader(path, allow_torn_tail=True)
        header, genesis_ckpt, rounds, notes = _group(reader, reader)
        report.notes.extend(notes)
        try:
            config = ProtocolConfig(**_config_fields(header["config"]))
            validator_set = load_validator_set(header)
            chain_id = bytes.fromhex(header["chain_id"])
            worker_keys = tuple(bytes.fromhex(k) for k in header["worker_keys"])
            genesis_hash = bytes.fromhex(header["genesis_params_hash"])
            ledger = Ledger.genesis(
                LedgerConfig(**header["ledger_config"]),
                n_workers=config.workers,
                n_validators=config.validators,
            )
        except (KeyError, TypeError, ValueError) as err:
            raise AuditFailure(None, f"the header is invalid: {err}") from None
        if chain_id != config.chain_id.encode():
            raise AuditFailure(None, "the header's chain id differs from its config's")
        signatures = worker_signature_scheme(header.get("worker_signature_scheme", "ed25519"))

        # Public data and the canonical functions, rebuilt from the config.
        data = load_for(config)
        assigner = BatchAssigner(config.seed, worker_shards(config, data), config.batch_size)
        learner, params0 = build_learner(config, data)
        scheme = make_verification(config, header.get("tolerance_threshold") or None)
        server = AggregationServer(learner, scheme.aggregation)
        like = {"opt_state": learner.optimizer.init(params0), "params": params0}
        if genesis_ckpt is None:
            raise AuditFailure(None, "the genesis checkpoint is missing")
        state = self._load_checkpoint(genesis_ckpt, like, None)
        if pytree_digest(state["params"], learner.spec) != genesis_hash:
            raise AuditFailure(None, "the genesis checkpoint is not the genesis model")

        rng = random.Random(self.seed)
        replay = self.recompute >= 1.0 or (self.recompute > 0 and rng.random() < self.recompute)
        prev_hash, prev_signers = genesis_hash, ()
        for rnd in rounds:
            r = rnd.number
            try:
                record = RoundRecord.decode(rnd.record_bytes)
            except RecordError as err:
                raise AuditFailure(r, f"the round record is malformed: {err}") from None
            if record.round != r or record.chain_id != chain_id:
                raise AuditFailure(
                    r, f"record is for round {record.round} of chain {record.chain_id!r}"
                )
            if rnd.qc is None:
                raise AuditFailure(r, "the round has no commit QC record")
            if rnd.ledger is None:
                raise AuditFailure(r, "the round has no ledger record")
            # QC chain.
            try:
                view, seq, qc = decode_qc_record(rnd.qc)
            except ValueError as err:
                raise AuditFailure(r, f"the commit QC is malformed: {err}") from None
            message = vote_message(chain_id, "commit", view, seq, value_digest(rnd.record_bytes))
            if seq != r + 1 or not verify_qc(validator_set, message, qc):
                raise AuditFailure(
                    r, "the commit QC does not verify against the genesis validator set"
                )
            # Model-hash chain.
            if record.params_hash != prev_hash:
                raise AuditFailure(r, "the record's input model hash is not the previous output")
            # Fraud proofs.
            proofs = self._fraud_proofs(
                r, rnd, record, chain_id, worker_keys, signatures, config.validators
            )
            report.fraud_proofs += len(proofs)
            # Ledger.
            rewards = RoundRewards(
                r,
                tuple(Contribution(a.worker, a.examples) for a in record.accepted),
                prev_signers,
                tuple(FraudProofRef(v, p.worker) for v, p in proofs),
            )
            try:
                ledger = ledger.apply_round(rewards)
            except LedgerError as err:
                raise AuditFailure(r, f"the ledger rejects the round: {err}") from None
            expected_entries = ledger.round_entries(r)
            try:
                recorded = decode_entries(rnd.ledger)
            except (LedgerError, ValueError) as err:
                raise AuditFailure(r, f"the ledger entries are malformed: {err}") from None
            if encode_entries(recorded) != encode_entries(expected_entries):
                raise AuditFailure(r, "the recorded ledger entries differ from the rewards rule")
            if entries_digest(recorded) != record.ledger_digest:
                raise AuditFailure(r, "the record's ledger digest does not match its entries")
            # Re-execution.
            if replay:
                self._reexecute(
                    r, record, state, learner, assigner, data, server, scheme, proofs, config
                )
                report.reexecuted += 1
            # Checkpoint.
            if rnd.checkpoint is not None:
                loaded = self._load_checkpoint(rnd.checkpoint, like, r)
                if pytree_digest(loaded["params"], learner.spec) != record.new_params_hash:
                    raise AuditFailure(
                        r, "the checkpoint after this round is not the record's output model"
                    )
                report.checkpoints += 1
                if replay and pytree_digest(state["params"], learner.spec) != (
                    record.new_params_hash
                ):
                    raise AuditFailure(r, "re-execution diverged from the checkpoint")
                state = loaded
                replay = self.recompute >= 1.0 or (
                    self.recompute > 0 and rng.random() < self.recompute
                )
            prev_hash, prev_signers = record.new_params_hash, qc.signer_indices()
            report.rounds += 1
        if not check_conservation(ledger):
            raise AuditFailure(None, "the ledger does not conserve value")
        if self.recompute > 0 and report.reexecuted == 0 and rounds:
            report.notes.append("no checkpoint interval was drawn for re-execution")

    def _load_checkpoint(self, data: bytes, like, r):
        try:
            return decode_pytree(data, like)
        except EncodingError as err:
            raise AuditFailure(r, f"the checkpoint does not decode: {err}") from None

    def _fraud_proofs(self, r, rnd, record, chain_id, worker_keys, signatures, n_validators):
        by_digest = {}
        for payload in rnd.fraud:
            try:
                prover, proof_bytes = decode_fraud_record(payload)
                proof = FraudProof.decode(proof_bytes)
            except ValueError as err:
                raise AuditFailure(r, f"a fraud proof is malformed: {err}") from None
            by_digest[hashlib.sha256(proof_bytes).digest()] = (prover, proof)
        cited = [x for x in record.rejected if x.fraud_proof_digest]
        if len(cited) != len(by_digest):
            raise AuditFailure(
                r,
                f"the record cites {len(cited)} fraud proofs, the transcript holds {len(by_digest)}",
            )
        proofs = []
        for rejection in cited:
            found = by_digest.get(rejection.fraud_proof_digest)
            if found is None:
                raise AuditFailure(r, f"worker {rejection.worker}'s fraud proof is missing")
            prover, proof = found
            w = rejection.worker
            message = worker_message(chain_id, r, w, proof.commitment)
            if (
                proof.worker != w
                or proof.round != r
                or w >= len(worker_keys)
                or proof.public_key != worker_keys[w]
                or not signatures.verify(worker_keys[w], message, proof.signature)
            ):
                raise AuditFailure(r, f"worker {w}'s fraud proof is not signed by worker {w}")
            if prover >= n_validators:
                raise AuditFailure(
                    r, f"worker {w}'s fraud proof names prover {prover}, not a validator"
                )
            proofs.append((prover, proof))
        return proofs

    def _reexecute(self, r, record, state, learner, assigner, data, server, scheme, proofs, cfg):
        params = state["params"]
        if pytree_digest(params, learner.spec) != record.params_hash:
            raise AuditFailure(r, "re-execution starts from another model than the record's")

        def batch_of(worker: int):
            idx = assigner.indices(r, worker)
            return data.x_train[idx], data.y_train[idx]

        submissions = {}
        accepted = [a.worker for a in record.accepted]
        # Re-run the honest workers' own program (in tolerance mode, their "platform").
        rows = honest_gradients(learner, params, batch_of, cfg.workers, accepted, cfg.mode)
        for a in record.accepted:
            g = rows[a.worker]
            if flat_digest(learner.header, g) != a.commitment:
                raise AuditFailure(
                    r,
                    f"accepted worker {a.worker}'s signed commitment does not match its "
                    "recomputed gradient: the committee accepted a wrong gradient",
                )
            submissions[a.worker] = Submission(a.worker, g, a.commitment, b"", b"")
        ctx = RoundContext(
            chain_id=record.chain_id,
            round=r,
            params=params,
            learner=learner,
            batch_of=batch_of,
            n_workers=cfg.workers,
        )
        for _, proof in proofs:
            if not verify_fraud_proof(proof, ctx, mode=scheme.mode, threshold=scheme.threshold):
                raise AuditFailure(r, f"the fraud proof against worker {proof.worker} is false")
        new_params, new_opt = server.new_model(
            params,
            state["opt_state"],
            submissions,
            [a.worker for a in record.accepted],
            cfg.workers,
        )
        if pytree_digest(new_params, learner.spec) != record.new_params_hash:
            raise AuditFailure(r, "re-executing the round does not give the record's output model")
        state["params"], state["opt_state"] = jax.device_get(new_params), new_opt


def _config_fields(raw: dict) -> dict:
    """Header JSON back to ProtocolConfig arguments (lists back to tuples)."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()}


def audit(run_dir: str | Path, *, recompute: str = "none", seed: int = 0) -> AuditReport:
    """Audit ``run_dir``; see the module docstring for what is checked."""
    return Auditor(run_dir, recompute=parse_recompute(recompute), seed=seed).run()
