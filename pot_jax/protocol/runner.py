"""The Proof-of-Training round end to end (docs/architecture.md, "One round, as implemented").

Three roles, kept apart so experiments can count, fault and cost each:

* **training nodes** (``TrainingNode``): compute ``worker_gradient`` on their
  public batch (or, if Byzantine, whatever their attack sends), commit to it
  and sign ``(chain id, round, worker, commitment)`` with Ed25519;
* **validators** (``Validator``): cheap-check every submission, recompute a
  VRF-chosen sample (the verification scheme), produce fraud proofs, and
  vote in PBFT only for a record they re-derived themselves;
* the **aggregation server** (``AggregationServer``), beside the primary:
  folds the validators' verdicts, aggregates the accepted gradients, applies
  the optax update and proposes the round record.

The committee is a real PBFT cluster (``pot_jax.consensus``) driven by the
deterministic simulator (``pot_jax.network``) with real BLS signatures; each
round's record is one PBFT sequence number and its commit QC goes into the
transcript with the record, the fraud proofs, the ledger entries and, every
``checkpoint_every`` rounds, the model.

Keys: every node's secret comes from ``config.keys`` (the OS by default, a key
directory, or the named simulation option ``derived``; ``protocol.keys``); the
run header holds the signed genesis (``protocol.genesis``) with public keys
only, and a finished run ends with a signed closing record.

Simulation shortcuts, all deterministic and documented: the application check
(``ReplicaConfig.validate``) is one function shared by the replicas, and an
honest validator's re-derivation of a record (aggregate, new model hash,
ledger digest) is computed once per distinct record and reused by the other
honest validators, who would compute the same bytes; Byzantine validators
neither verify nor report (their consensus misbehaviour comes from
``pot_jax.network.byzantine``).
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import struct
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from pot_jax.attacks import AttackContext, choose_byzantine, commitment_of
from pot_jax.attacks.workers import ATTACKS
from pot_jax.config import LOCAL_FIELDS, ProtocolConfig
from pot_jax.consensus.messages import value_digest
from pot_jax.crypto.quorum import QuorumCertificate, ValidatorSet, aggregate_votes
from pot_jax.crypto.worker_signatures import worker_message, worker_signature_scheme
from pot_jax.learning.assignment import BatchAssigner
from pot_jax.learning.encoding import encode_pytree, flat_digest, pytree_digest
from pot_jax.learning.trainer import build_learner, load_for, worker_shards
from pot_jax.network import byzantine
from pot_jax.network.scenario import make_cluster
from pot_jax.network.simulator import NetworkConfig, TimedNetwork
from pot_jax.protocol.genesis import (
    GENESIS_FORMAT,
    Closing,
    canonical_json,
    dataset_digest,
    encode_closing_record,
    genesis_digest,
    genesis_vote_message,
    sign_statement,
)
from pot_jax.protocol.keys import KeyRing, derived_keys, generate_keys, load_key_dir
from pot_jax.protocol.ledger import (
    Contribution,
    FraudProofRef,
    Ledger,
    LedgerConfig,
    RoundRewards,
    encode_entries,
    entries_digest,
)
from pot_jax.protocol.records import Accepted, RecordError, Rejected, RoundRecord
from pot_jax.protocol.transcript import (
    RecordKind,
    TranscriptReader,
    TranscriptWriter,
    encode_checkpoint_ref,
)
from pot_jax.runinfo import (
    JsonLines,
    TensorBoard,
    refuse_existing_run,
    run_metadata,
    show_progress,
    write_json,
)
from pot_jax.verification import (
    RoundContext,
    Submission,
    calibrate_threshold,
    combine_verdicts,
    verify_fraud_proof,
)

TRANSCRIPT_NAME = "transcript.log"
RUN_FILES = ("config.json", "metrics.jsonl", "summary.json", TRANSCRIPT_NAME)


UNITS = {
    "ledger_emitted, ledger_burned, worker_rewards, validator_rewards": (
        "base units of the reward token (10^6 per token)"
    ),
    "virtual_time": "network delays of the simulator (one delay = the mean message latency)",
    "wall_seconds": "seconds of this process's wall time",
    "wrong_gradients_accepted_unchecked": (
        "wrong gradients that no honest validator sampled, so the committee accepted them "
        "(ground truth the simulation knows; an audit with --recompute finds them)"
    ),
}


class NoQuorum(RuntimeError):
    """No round can commit: more than f validators are faulty. The transcript stays valid."""


class ResumeError(ValueError):
    """A run that cannot be resumed (finished, other keys, diverged), with why."""


class _ReplayWriter:
    """Appends to an interrupted run's transcript after proving it regenerates its records.

    While records of the interrupted run remain, each append must equal the next
    one byte for byte (a resumed run that diverged raises ``ResumeError`` and
    leaves the log as it was); after them, appends go to the log.
    """

    def __init__(self, writer: TranscriptWriter, existing: list):
        self.writer, self.existing, self.pos = writer, existing, 0

    @property
    def replaying(self) -> bool:
        return self.pos < len(self.existing)

    def _match(self, kind: int, payload: bytes) -> None:
        rec = self.existing[self.pos]
        if rec.kind != kind or rec.payload != payload:
            raise ResumeError(
                f"resuming diverged from the interrupted run at record seq {rec.seq} "
                f"(kind {rec.kind}): the run is not deterministic here (another jax build, "
                "device or code version?); nothing was appended"
            )
        self.pos += 1

    def append(self, kind: int, payload: bytes) -> None:
        if self.replaying:
            self._match(kind, payload)
        else:
            self.writer.append(kind, payload)

    def append_checkpoint(self, params: bytes) -> None:
        if self.replaying:
            digest = self.writer.checkpoints.put(params)  # restores a lost file, if any
            self._match(RecordKind.CHECKPOINT, encode_checkpoint_ref(digest, len(params)))
        else:
            self.writer.append_checkpoint(params)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.writer.close()


def _rounds_in(records) -> int:
    return sum(1 for rec in records if rec.kind == RecordKind.LEDGER)


def _kept_metric_rows(path: Path, *, committed: int) -> int:
    """Keep metrics rows of committed rounds (dropping a torn last line); the last kept round."""
    if not path.exists():
        return 0
    kept = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue  # a line cut by the crash
        if isinstance(row, dict) and isinstance(row.get("round"), int):
            if row["round"] <= committed:
                kept.append(row)
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in kept), encoding="utf-8")
    os.replace(tmp, path)
    return max((r["round"] for r in kept), default=0)


STALE_ROUNDS = 5  # how old the model a lazy worker trains on is
MAX_ROUND_VIRTUAL_TIME = 10_000.0


def encode_qc_record(view: int, seq: int, qc: QuorumCertificate) -> bytes:
    """Transcript payload of a commit QC: view and sequence, then the QC's own encoding."""
    return struct.pack(">QQ", view, seq) + qc.encode()


def decode_qc_record(payload: bytes) -> tuple[int, int, QuorumCertificate]:
    if len(payload) < 16:
        raise ValueError(f"QC record is {len(payload)} bytes, needs at least 16")
    view, seq = struct.unpack(">QQ", payload[:16])
    return view, seq, QuorumCertificate.decode(payload[16:])


def encode_fraud_record(prover: int, proof_bytes: bytes) -> bytes:
    """Transcript payload of a fraud proof: the proving validator's index, then the proof."""
    return struct.pack(">I", prover) + proof_bytes


def decode_fraud_record(payload: bytes) -> tuple[int, bytes]:
    if len(payload) < 4:
        raise ValueError(f"fraud-proof record is {len(payload)} bytes, needs at least 4")
    return struct.unpack(">I", payload[:4])[0], payload[4:]


CALIBRATION_ROUNDS = 4  # public batches of rounds 0-3 calibrate, rounds 4-7 measure


def make_verification(config: ProtocolConfig, threshold: float | None = None):
    """The configured scheme and rule (registries; ``threshold``: tolerance mode's)."""
    from pot_jax.learning.aggregation import RULES
    from pot_jax.verification.schemes import SCHEMES

    rule = RULES.build(config.aggregation, flag="--aggregation")
    extra = {"budget": config.budget, "mode": config.mode, "aggregation": rule}
    if config.mode == "tolerance":
        extra["threshold"] = threshold
    return SCHEMES.build(config.verification, flag="--verification", **extra)


def calibrate(config: ProtocolConfig, learner, params, assigner, data) -> tuple[float, dict]:
    """Tolerance mode's threshold from honest gradients at the genesis model.

    Honest workers' rows come from ``learner.worker_gradients`` (one vmapped
    program), validators recompute with ``learner.worker_gradient``: the two
    compile differently and agree only to float tolerance, as two hardware
    platforms would. Returns ``(threshold, stats)``; stats carry the measured
    false-rejection rate on fresh honest rounds.
    """
    if config.tolerance_threshold > 0:
        return config.tolerance_threshold, {"threshold": config.tolerance_threshold}

    def rounds(first: int):
        out = []
        for r in range(first, first + CALIBRATION_ROUNDS):
            idx = assigner.round_indices(r)
            out.append((data.x_train[idx], data.y_train[idx]))
        return out

    threshold, stats = calibrate_threshold(
        learner, params, rounds(0), fresh_batches=rounds(CALIBRATION_ROUNDS)
    )
    return threshold, {"threshold": threshold, **stats._asdict()}


@dataclass(frozen=True)
class ProtocolSummary:
    rounds_committed: int
    pot_accuracy: float
    centralized_accuracy: float
    accuracy_ratio: float
    byzantine_workers: tuple[int, ...]
    cheaters_caught: tuple[int, ...]
    fraud_proofs: int
    rejected_gradients: int
    rejections_by_reason: dict
    wrong_gradients_checked: int
    wrong_gradients_caught: int
    wrong_gradients_accepted_unchecked: int
    honest_workers_slashed: int
    recomputed_gradients: int
    worker_gradients: int
    verification_compute_ratio: float
    max_view: int
    messages: int
    virtual_time: float
    ledger_emitted: int
    ledger_burned: int
    worker_rewards: int
    validator_rewards: int
    wall_seconds: float
    run_dir: str
    genesis: str  # the signed genesis's digest: what an auditor pins
    key_source: str


def honest_gradients(learner, params, batch_of, n_workers, active, mode) -> np.ndarray:
    """The honest workers' gradients, one row per worker (zero rows for inactive ones).

    Bitwise mode: each worker runs the canonical single-worker program, as the
    validators do. Tolerance mode: all workers' rows come from one vmapped
    program (``worker_gradients``), which XLA compiles differently: it stands in
    for workers on other hardware, whose results agree with the validators'
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


class TrainingNode:
    """A worker: honest, or Byzantine with an attack."""

    def __init__(self, index, sk, pk, scheme, attack=None):
        self.index, self.sk, self.public_key = index, sk, pk
        self.scheme, self.attack = scheme, attack

    def submit(self, ctx: RoundContext, honest_P, attack_ctx, rng) -> tuple[Submission, bool]:
        """The worker's signed submission, and whether its gradient is not the honest one."""
        if self.attack is None:
            sent, commitment = honest_P, flat_digest(ctx.learner.header, honest_P)
        else:
            sent = self.attack.apply(attack_ctx, self.index, rng)
            commitment = commitment_of(sent, ctx.learner.header, rng)
        message = worker_message(ctx.chain_id, ctx.round, self.index, commitment)
        signature = self.scheme.sign(self.sk, message)
        wrong = not (
            isinstance(sent, np.ndarray)
            and sent.dtype == honest_P.dtype
            and sent.shape == honest_P.shape
            and sent.tobytes() == honest_P.tobytes()
        )
        return Submission(self.index, sent, commitment, signature, self.public_key), wrong


class Validator:
    """A committee member's verification role (consensus runs in the PBFT replica)."""

    def __init__(self, index: int, sk: int, pk: bytes, honest: bool):
        self.index, self.sk, self.public_key, self.honest = index, sk, pk, honest

    def verify(self, scheme, ctx, submissions, n_validators):
        selection = scheme.select(ctx, self.index, n_validators, self.sk)
        return selection, scheme.check(ctx, submissions, selection)


class AggregationServer:
    """Folds verdicts, aggregates, updates the model and writes the proposal."""

    def __init__(self, learner, rule):
        self.learner = learner
        self.rule = rule
        self._aggregate = jax.jit(rule.aggregate)

    def new_model(self, params, opt_state, submissions, accepted, n_workers):
        rows = np.zeros((n_workers, self.learner.num_params), np.float32)
        for w in accepted:
            rows[w] = submissions[w].gradient
        mask = np.zeros((n_workers,), bool)
        mask[list(accepted)] = True
        if not accepted:
            return params, opt_state  # nothing to aggregate: the model stays
        agg = self._aggregate(jnp.asarray(rows), jnp.asarray(mask))
        return self.learner.apply_update(params, opt_state, agg)


class ProtocolRun:
    """One run of the protocol; ``run()`` executes every round."""

    def __init__(
        self,
        config: ProtocolConfig,
        *,
        on_commit=None,
        scheme=None,
        keys: KeyRing | None = None,
        tensorboard: bool = False,
    ):
        self.config = config
        # on_commit(r, row): round r is durably in the transcript; row is its metrics.
        self.on_commit = on_commit
        self.tensorboard = tensorboard
        self.chain_id = config.chain_id.encode()
        self.run_dir = Path(config.run_dir)
        self.data = load_for(config)
        self.assigner = BatchAssigner(
            config.seed, worker_shards(config, self.data), config.batch_size
        )
        self.learner, self.params = build_learner(config, self.data)
        self.opt_state = self.learner.optimizer.init(self.params)
        self.params_c, self.opt_state_c = self.params, self.learner.optimizer.init(self.params)
        # Wall seconds spent in the centralized baseline's steps (batch gather + step,
        # synchronised), so accuracy can be plotted against each side's own compute time.
        self.centralized_seconds = 0.0
        self.calibration: dict = {}
        threshold = None
        if config.mode == "tolerance" and scheme is None:
            threshold, self.calibration = calibrate(
                config, self.learner, self.params, self.assigner, self.data
            )
        self.scheme = make_verification(config, threshold) if scheme is None else scheme
        self.server = AggregationServer(self.learner, self.scheme.aggregation)

        W, n = config.workers, config.validators
        self.signature_scheme = worker_signature_scheme()
        self.byzantine_workers = choose_byzantine(W, config.byzantine_fraction, config.seed)
        attack = ATTACKS.build(config.attack, flag="--attack") if self.byzantine_workers else None
        self.keys = self._keys(keys)
        worker_sks = self.keys.worker_signing_keys(self.signature_scheme)
        self.workers = []
        for i in range(W):
            node_attack = attack if i in self.byzantine_workers else None
            self.workers.append(
                TrainingNode(
                    i,
                    worker_sks[i],
                    self.keys.worker_public_keys[i],
                    self.signature_scheme,
                    node_attack,
                )
            )
        self.worker_keys = tuple(w.public_key for w in self.workers)

        sks, self.validator_set = self.keys.validator_secret_keys, self.keys.validator_set
        bad = set(config.byzantine_validator_ids)
        self.validators = [
            Validator(i, sks[i], self.validator_set.public_keys[i], i not in bad) for i in range(n)
        ]
        strategies = {i: byzantine.build_strategy(config.validator_strategy) for i in bad}
        self.cluster = make_cluster(
            n,
            config.pattern,
            strategies=strategies,
            seed=config.seed,
            chain_id=self.chain_id,
            keys=(sks, self.validator_set),
            validate=self._validate,
            max_value_bytes=1 << 22,
        )
        self.net = TimedNetwork(self.cluster, NetworkConfig(), seed=config.seed)
        self.ledger = Ledger.genesis(LedgerConfig(), n_workers=W, n_validators=n)
        self.banned: dict[int, int] = {}  # worker -> round of its first fraud proof
        self.previous_signers: tuple[int, ...] = ()
        self._derived: dict[bytes, bool] = {}
        self._round_state = None
        self.stale = collections.deque(maxlen=STALE_ROUNDS)
        self.counts = collections.Counter()
        self.rejections = collections.Counter()
        self.slashed_honest = 0
        self.genesis = self._genesis()
        self.genesis_hash = genesis_digest(self.genesis)

    def _keys(self, keys: KeyRing | None) -> KeyRing:
        """Every node's keys: given, generated from the OS, loaded from files, or derived."""
        config = self.config
        W, n = config.workers, config.validators
        scheme = self.signature_scheme.name
        if keys is None and config.keys == "random":
            keys = generate_keys(n, W, worker_scheme=scheme)
        elif keys is None and config.keys == "derived":
            keys = derived_keys(
                n, W, chain_id=self.chain_id, seed=config.seed, worker_scheme=scheme
            )
        elif keys is None:
            keys = load_key_dir(config.keys, n_validators=n, n_workers=W, worker_scheme=scheme)
        keys.check_sizes(n, W)
        return keys

    def _genesis(self) -> dict:
        """Everything the validators sign before round 0 (see ``protocol.genesis``)."""
        return {
            "format": GENESIS_FORMAT,
            "config": {k: v for k, v in self.config.to_dict().items() if k not in LOCAL_FIELDS},
            "chain_id": self.chain_id.hex(),
            "validators": [
                [pk.hex(), pop.hex()]
                for pk, pop in zip(
                    self.validator_set.public_keys,
                    self.validator_set.proofs_of_possession,
                    strict=True,
                )
            ],
            "worker_keys": [pk.hex() for pk in self.worker_keys],
            "worker_signature_scheme": self.signature_scheme.name,
            "key_source": self.keys.source,
            "genesis_params_hash": pytree_digest(self.params, self.learner.spec).hex(),
            "ledger_config": asdict(self.ledger.config),
            "verification": self.scheme.label,
            "tolerance_threshold": self.scheme.threshold,
            "calibration": self.calibration,
            "byzantine_workers": list(self.byzantine_workers),
            "data_digest": dataset_digest(self.data),
        }

    def _sign(self, message: bytes, *, everyone: bool = False):
        """A QC over ``message`` from the honest validators (``everyone``: all of them)."""
        signers = {v.index: v.sk for v in self.validators if everyone or v.honest}
        return sign_statement(self.validator_set, signers, message)

    # -- the application check every honest replica runs before preparing --

    def _validate(self, value: bytes) -> bool:
        digest = hashlib.sha256(value).digest()
        if digest not in self._derived:
            self._derived[digest] = self._rederive(value)
        return self._derived[digest]

    def _rederive(self, value: bytes) -> bool:
        state = self._round_state
        if state is None:
            return False
        try:
            record = RoundRecord.decode(value)
        except RecordError:
            return False
        expected = state["record"]
        if (record.chain_id, record.genesis, record.round, record.params_hash) != (
            expected.chain_id,
            expected.genesis,
            expected.round,
            expected.params_hash,
        ):
            return False
        # Every worker with a known fraud proof must be excluded, with its proof.
        rejected = {r.worker: r for r in record.rejected}
        for worker, proof_digest in state["fraud"].items():
            if worker not in rejected or rejected[worker].fraud_proof_digest != proof_digest:
                return False
        # Accepted workers must have passed the cheap checks, with the commitment received.
        for a in record.accepted:
            sub = state["submissions"].get(a.worker)
            if a.worker not in state["passed"] or sub is None or sub.commitment != a.commitment:
                return False
        if record.aggregation != self.scheme.aggregation.label:
            return False
        if tuple(a.worker for a in record.accepted) == tuple(a.worker for a in expected.accepted):
            # Same accepted set as the one this validator derived: same model and ledger.
            return record.encode() == expected.encode()
        return False

    # -- one round --

    def _batch_of(self, round_: int):
        cache = {}

        def batch_of(worker: int):
            if worker not in cache:
                idx = self.assigner.indices(round_, worker)
                cache[worker] = (self.data.x_train[idx], self.data.y_train[idx])
            return cache[worker]

        return batch_of

    def run_round(self, r: int, writer: TranscriptWriter) -> dict:
        """Run round r; return its metrics row (what metrics.jsonl and ``on_commit`` get)."""
        config, W, n = self.config, self.config.workers, self.config.validators
        round_start = time.perf_counter()
        messages_before = int(sum(self.cluster.stats.sent.values()))
        recomputed_before = self.counts["recomputed"]
        batch_of = self._batch_of(r)
        ctx = RoundContext(
            chain_id=self.chain_id,
            round=r,
            params=self.params,
            learner=self.learner,
            batch_of=batch_of,
            n_workers=W,
            signature_scheme=self.signature_scheme,
            worker_public_keys=self.worker_keys,
        )
        params_hash = ctx.params_digest

        # Work: every worker's canonical gradient (Byzantine ones need it for their attack).
        active = [w for w in range(W) if w not in self.banned]
        honest_WxP = honest_gradients(self.learner, self.params, batch_of, W, active, config.mode)
        attack_ctx = AttackContext(
            learner=self.learner,
            params=self.params,
            batch_of=batch_of,
            grads_WxP=honest_WxP,
            round=r,
            byzantine=self.byzantine_workers,
            stale_params=self.stale[0] if len(self.stale) == STALE_ROUNDS else None,
            num_classes=self.data.num_classes,
            n_validators=n,
            chain_id=self.chain_id,
        )
        submissions, wrong = {}, set()
        for w in active:
            rng = np.random.default_rng([config.seed, r, w])
            submissions[w], is_wrong = self.workers[w].submit(ctx, honest_WxP[w], attack_ctx, rng)
            if is_wrong:
                wrong.add(w)
        self.counts["worker_gradients"] += len(active)

        # Verification: each honest validator checks everything cheaply and its sample fully.
        verdict_lists, recomputed = [], set()
        for v in self.validators:
            if not v.honest:
                continue
            selection, verdicts = v.verify(self.scheme, ctx, submissions, n)
            verdict_lists.append(verdicts)
            self.counts["recomputed"] += sum(1 for x in verdicts if x.recomputed)
            recomputed.update(x.worker for x in verdicts if x.recomputed)

        def check_proof(proof):
            return verify_fraud_proof(
                proof, ctx, mode=self.scheme.mode, threshold=self.scheme.threshold
            )

        combined = {x.worker: x for x in combine_verdicts(verdict_lists, verify_proof=check_proof)}

        # Proposal (aggregation server beside the primary).
        accepted, rejected, fraud, proofs = [], [], {}, []
        for w in range(W):
            if w in self.banned:
                rejected.append(
                    Rejected(w, f"worker {w}: slashed for fraud in round {self.banned[w]}")
                )
                continue
            verdict = combined[w]
            if verdict.accepted:
                accepted.append(w)
            elif verdict.fraud_proof is not None:
                proof_bytes = verdict.fraud_proof.encode()
                digest = hashlib.sha256(proof_bytes).digest()
                fraud[w] = digest
                proofs.append((w, verdict.validator, proof_bytes))
                rejected.append(Rejected(w, verdict.reason, digest))
            else:
                rejected.append(Rejected(w, verdict.reason))
        new_params, new_opt = self.server.new_model(
            self.params, self.opt_state, submissions, accepted, W
        )
        new_hash = pytree_digest(new_params, self.learner.spec)
        rewards = RoundRewards(
            r,
            tuple(Contribution(w, config.batch_size) for w in accepted),
            self.previous_signers,
            tuple(FraudProofRef(v, w) for w, v, _ in proofs),
        )
        next_ledger = self.ledger.apply_round(rewards)
        round_entries = next_ledger.round_entries(r)
        primary = next(x for x in self.cluster.nodes if not x.faulty).state.view % n
        record = RoundRecord(
            chain_id=self.chain_id,
            genesis=self.genesis_hash,
            round=r,
            params_hash=params_hash,
            accepted=tuple(
                Accepted(w, submissions[w].commitment, config.batch_size) for w in accepted
            ),
            rejected=tuple(sorted(rejected, key=lambda x: x.worker)),
            aggregation=self.scheme.aggregation.label,
            new_params_hash=new_hash,
            ledger_digest=entries_digest(round_entries),
            proposer=primary,
        )
        passed = {w for w, x in combined.items() if x.accepted}
        self._round_state = {
            "record": record,
            "fraud": fraud,
            "submissions": submissions,
            "passed": passed,
        }

        # Agreement: PBFT with BLS quorum certificates.
        value = record.encode()
        seq = r + 1
        self.cluster.submit(value)
        honest_nodes = [x for x in self.cluster.nodes if not x.faulty]

        def decided() -> bool:
            return all(any(d.seq == seq for d in x.decisions) for x in honest_nodes if x.up)

        self.net.run(until=self.net.time + MAX_ROUND_VIRTUAL_TIME, stop=decided)
        if not decided():
            faulty = len(self.config.byzantine_validator_ids)
            raise NoQuorum(
                f"no quorum from round {r}: more than f validators faulty ({faulty} of {n}, "
                f"f = {(n - 1) // 3}); nothing committed within {MAX_ROUND_VIRTUAL_TIME:g} "
                f"network delays. The transcript keeps the {r} committed rounds (pot-jax audit "
                f"{self.run_dir} reports it unfinished)"
            )
        decision = next(d for d in honest_nodes[0].decisions if d.seq == seq)
        if decision.digest != value_digest(value) or decision.value != value:
            raise RuntimeError(f"round {r}: the committee committed another record than proposed")
        view, qc = self._commit_qc(seq)

        # Transcript: the record and its QC, fraud proofs, ledger entries, checkpoint.
        writer.append(RecordKind.ROUND, value)
        writer.append(RecordKind.QC, encode_qc_record(view, seq, qc))
        if proofs:  # theta_r, so that anyone can check each proof with one recomputation
            writer.append_checkpoint(self._checkpoint_bytes())
        for _, prover, proof_bytes in proofs:
            writer.append(RecordKind.FRAUD_PROOF, encode_fraud_record(prover, proof_bytes))
        writer.append(RecordKind.LEDGER, encode_entries(round_entries))

        # Update.
        self.stale.append(self.params)
        self.params, self.opt_state = new_params, new_opt
        self.ledger = next_ledger
        self.previous_signers = qc.signer_indices()
        for w in fraud:
            self.banned[w] = r
            if w not in self.byzantine_workers:
                self.slashed_honest += 1
        if (r + 1) % config.checkpoint_every == 0:
            writer.append_checkpoint(self._checkpoint_bytes())

        by_reason = collections.Counter()
        for x in rejected:
            if x.worker not in self.banned or self.banned[x.worker] == r:
                by_reason[x.reason.split(": ", 1)[-1].split(":")[0].split(" (")[0]] += 1
        self.rejections.update(by_reason)
        self.counts["rejected"] += sum(1 for x in rejected if self.banned.get(x.worker, r) == r)
        self.counts["wrong_checked"] += len(wrong & recomputed)
        self.counts["wrong_caught"] += len(wrong & set(fraud))
        self.counts["wrong_accepted"] += len(wrong & set(accepted))
        self.counts["max_view"] = max(self.counts["max_view"], view)
        self.counts["committed"] += 1

        # The centralized baseline on the union of the round's batches.
        t0 = time.perf_counter()
        idx = self.assigner.round_indices(r)
        x_all = self.data.x_train[idx].reshape((-1, *self.data.input_shape))
        y_all = self.data.y_train[idx].reshape(-1)
        self.params_c, self.opt_state_c, loss_c = self.learner.centralized_step(
            self.params_c, self.opt_state_c, x_all, y_all
        )
        jax.block_until_ready(self.params_c)
        self.centralized_seconds += time.perf_counter() - t0
        # theta_r's loss on the round's batches (the honest workers' examples).
        loss = float(self.learner.loss(self.stale[-1], x_all, y_all))
        return {
            "round": r + 1,
            "loss": loss,
            "centralized_loss": float(loss_c),
            "accepted": len(accepted),
            "rejected": sum(by_reason.values()),
            "rejected_by_reason": dict(sorted(by_reason.items())),
            "fraud_proofs": len(proofs),
            "caught": len(self.banned),
            "recomputed": self.counts["recomputed"] - recomputed_before,
            "view": view,
            "messages": int(sum(self.cluster.stats.sent.values())) - messages_before,
            "virtual_time": self.net.time,
            "round_wall_seconds": time.perf_counter() - round_start,
        }

    def _checkpoint_bytes(self) -> bytes:
        return encode_pytree({"opt_state": self.opt_state, "params": self.params})

    def _commit_qc(self, seq: int) -> tuple[int, QuorumCertificate]:
        for node in self.cluster.nodes:
            if node.faulty:
                continue
            cert = node.state.ledger.get(seq)
            if cert is None:
                continue
            if cert.qc is not None:
                return cert.view, cert.qc
            return cert.view, aggregate_votes(self.validator_set, dict(cert.votes))
        raise RuntimeError(f"sequence {seq}: no honest replica holds its commit certificate")

    # -- the whole run --

    def header(self) -> dict:
        """The HEADER record (also ``config.json``): the signed genesis, its QC, metadata.

        ``metadata`` (versions, device, time) is informational and unsigned;
        everything that changes training is in ``genesis``.
        """
        qc = self._sign(genesis_vote_message(self.chain_id, self.genesis_hash), everyone=True)
        return {
            "genesis": self.genesis,
            "genesis_digest": self.genesis_hash.hex(),
            "genesis_qc": qc.encode().hex(),
            "metadata": {
                **run_metadata(),
                "local": {k: getattr(self.config, k) for k in LOCAL_FIELDS},
            },
        }

    def run(self, *, resume: bool = False) -> ProtocolSummary:
        """Run every round; with ``resume``, continue the interrupted run in ``run_dir``.

        Resuming re-executes the committed rounds (training and consensus are
        deterministic given the config, the seed and the keys), checks that each
        regenerated record is byte-identical to the one on disk, and appends from
        where the interrupted run stopped, so the result equals an uninterrupted run.
        """
        start = time.perf_counter()
        config = self.config
        if self.tensorboard:
            TensorBoard.require()
        if resume:
            writer, done_rows = self._reopen()
        else:
            refuse_existing_run(self.run_dir, RUN_FILES)
            header = self.header()
            self.run_dir.mkdir(parents=True, exist_ok=True)
            writer, done_rows = TranscriptWriter(self.run_dir / TRANSCRIPT_NAME), 0
            write_json(self.run_dir / "config.json", header)
            writer.append(RecordKind.HEADER, canonical_json(header))
        x_test, y_test = jnp.asarray(self.data.x_test), jnp.asarray(self.data.y_test)
        acc, acc_c = 0.0, 0.0
        board = TensorBoard(self.run_dir / "tensorboard") if self.tensorboard else None
        with writer:
            metrics = JsonLines(self.run_dir / "metrics.jsonl")
            writer.append_checkpoint(self._checkpoint_bytes())
            bar = tqdm(
                range(config.rounds), disable=not show_progress(config), desc="pot", unit="round"
            )
            for r in bar:
                row = self.run_round(r, writer)
                if (r + 1) % config.eval_every == 0 or r + 1 == config.rounds:
                    acc = self.learner.accuracy(self.params, x_test, y_test)
                    acc_c = self.learner.accuracy(self.params_c, x_test, y_test)
                    row["pot_test_accuracy"] = acc
                    row["centralized_test_accuracy"] = acc_c
                    bar.set_postfix(pot=f"{acc:.3f}", central=f"{acc_c:.3f}")
                row["wall_seconds"] = time.perf_counter() - start
                row["centralized_wall_seconds"] = self.centralized_seconds
                if r + 1 > done_rows:  # rows of the interrupted run stay as written
                    metrics.write(row)
                    if board is not None:
                        board.write(row)
                if self.on_commit is not None and not getattr(writer, "replaying", False):
                    self.on_commit(r, row)
            metrics.close()
            if board is not None:
                board.close()
            self._close(writer)
        summary = self._summary(acc, acc_c, time.perf_counter() - start)
        write_json(
            self.run_dir / "summary.json", {**asdict(summary), "seed": config.seed, "units": UNITS}
        )
        return summary

    def _reopen(self) -> tuple[_ReplayWriter, int]:
        """The interrupted run's transcript (torn tail truncated) and its metrics rows kept."""
        path = self.run_dir / TRANSCRIPT_NAME
        if not path.is_file():
            raise ResumeError(f"--resume {self.run_dir}: no {TRANSCRIPT_NAME} to resume")
        if (self.run_dir / "summary.json").exists():
            raise ResumeError(f"--resume {self.run_dir}: the run is finished (summary.json)")
        # Check before writing: TranscriptWriter.open truncates a torn tail, and
        # _kept_metric_rows rewrites metrics.jsonl; neither may touch another run.
        records = list(TranscriptReader(path))
        if not records or records[0].kind != RecordKind.HEADER:
            raise ResumeError(f"{path} has no header record; start a new run")
        header = json.loads(records[0].payload)
        if header.get("genesis_digest") != self.genesis_hash.hex():
            raise ResumeError(
                f"{self.run_dir}: this config and these keys make genesis "
                f"{self.genesis_hash.hex()}, the run was made with "
                f"{header.get('genesis_digest')}; resume with the run's own keys (--keys)"
            )
        if any(rec.kind == RecordKind.CLOSING for rec in records):
            raise ResumeError(f"--resume {self.run_dir}: the run is finished (closing record)")
        writer = TranscriptWriter.open(path)  # the records read above; a torn tail goes
        rows = _kept_metric_rows(self.run_dir / "metrics.jsonl", committed=_rounds_in(records))
        return _ReplayWriter(writer, records[1:]), rows

    def _close(self, writer: TranscriptWriter) -> None:
        """The final model's checkpoint and the signed closing record."""
        if self.config.rounds % self.config.checkpoint_every:
            writer.append_checkpoint(self._checkpoint_bytes())
        closing = Closing(
            chain_id=self.chain_id,
            genesis=self.genesis_hash,
            rounds=self.counts["committed"],
            final_params_hash=pytree_digest(self.params, self.learner.spec),
            ledger_digest=self.ledger.ledger_digest(),
        )
        qc = self._sign(closing.vote_message())
        writer.append(RecordKind.CLOSING, encode_closing_record(closing, qc))

    def _summary(self, acc: float, acc_c: float, wall: float) -> ProtocolSummary:
        ledger = self.ledger
        workers = sum(ledger.balance(f"worker:{i}") for i in range(self.config.workers))
        validators = sum(ledger.balance(f"validator:{i}") for i in range(self.config.validators))
        c = self.counts
        return ProtocolSummary(
            rounds_committed=c["committed"],
            pot_accuracy=acc,
            centralized_accuracy=acc_c,
            accuracy_ratio=acc / acc_c if acc_c else float("nan"),
            byzantine_workers=self.byzantine_workers,
            cheaters_caught=tuple(sorted(self.banned)),
            fraud_proofs=len(self.banned),
            rejected_gradients=c["rejected"],
            rejections_by_reason=dict(self.rejections.most_common()),
            wrong_gradients_checked=c["wrong_checked"],
            wrong_gradients_caught=c["wrong_caught"],
            wrong_gradients_accepted_unchecked=c["wrong_accepted"],
            honest_workers_slashed=self.slashed_honest,
            recomputed_gradients=c["recomputed"],
            worker_gradients=c["worker_gradients"],
            verification_compute_ratio=c["recomputed"] / max(1, c["worker_gradients"]),
            max_view=c["max_view"],
            messages=int(sum(self.cluster.stats.sent.values())),
            virtual_time=self.net.time,
            ledger_emitted=ledger.total_emitted,
            ledger_burned=ledger.total_burned,
            worker_rewards=workers,
            validator_rewards=validators,
            wall_seconds=wall,
            run_dir=str(self.run_dir),
            genesis=self.genesis_hash.hex(),
            key_source=self.keys.source,
        )


def resume_protocol(
    run_dir: str | Path, *, keys: str | None = None, on_commit=None, progress: bool | None = None
) -> ProtocolSummary:
    """Continue the interrupted run in ``run_dir`` from its own signed config.

    ``keys`` overrides where the key directory is now. A run made with
    in-memory keys (``keys = random``) cannot resume: its secret keys are gone.
    """
    run_dir = Path(run_dir)
    try:
        header = json.loads((run_dir / "config.json").read_text())
        genesis, local = header["genesis"], header["metadata"]["local"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ResumeError(f"--resume {run_dir}: no readable run config.json ({err})") from None
    if genesis.get("key_source") == "random":
        raise ResumeError(
            f"--resume {run_dir}: the run's keys were generated in memory (keys = random) and "
            "no longer exist, so no one can sign its remaining rounds; start runs you may "
            "resume with --keys DIR (made by pot-jax keygen)"
        )
    fields = {**genesis["config"], **local, "run_dir": str(run_dir)}
    if keys is not None:
        fields["keys"] = keys
    if progress is not None:
        fields["progress"] = progress
    config = ProtocolConfig(
        **{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}
    )
    return ProtocolRun(config, on_commit=on_commit).run(resume=True)


def run_protocol(
    config: ProtocolConfig,
    *,
    on_commit=None,
    scheme=None,
    keys: KeyRing | None = None,
    tensorboard: bool = False,
) -> ProtocolSummary:
    """Run every round of ``config``; the run directory is what ``pot-jax audit`` reads.

    ``on_commit(r, row)`` is called once round r's records are durably appended,
    with the round's metrics row (the one written to metrics.jsonl).
    ``scheme`` replaces the configured verification scheme with your own
    ``VerificationScheme`` (see ``pot_jax.verification.scheme``). ``keys``
    replaces the keys ``config.keys`` names (see ``pot_jax.protocol.keys``).
    """
    return ProtocolRun(
        config, on_commit=on_commit, scheme=scheme, keys=keys, tensorboard=tensorboard
    ).run()


def load_validator_set(header: dict) -> ValidatorSet:
    """The genesis validator set a transcript header registers (PoPs checked)."""
    return ValidatorSet.from_registrations(
        [(bytes.fromhex(pk), bytes.fromhex(pop)) for pk, pop in header["validators"]]
    )
