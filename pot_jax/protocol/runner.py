"""The Proof-of-Training protocol run end to end (docs/architecture.md, "One round").

The runner is a driver: it owns no protocol logic. Each round it

1. asks every running **training node** (``roles.TrainingNode``) for its signed
   submission (one host computes the honest nodes' gradients; a Byzantine
   node computes its attack from its own gradient and public data, or, for a
   colluding attack, also from the honest gradients, a channel the genesis
   names);
2. sends every submission to every reporting **validator**
   (``roles.Validator``); at the deadline each checks what arrived,
   recomputes its VRF sample and broadcasts a signed report;
3. lets the **aggregation server** beside each validator derive the round
   with ``protocol.round.transition`` and submits that value to its own PBFT
   replica; the replicas order one value per round through the deterministic
   simulator (``pot_jax.network``) with real BLS signatures, and each honest
   replica votes only for a value its validator re-derives exactly;
4. writes the committed record, its QC, its inputs (the reports), the fraud
   proofs they cite, the ledger entries and, every ``checkpoint_every``
   rounds, the model; then trains the centralized baseline.

Keys: every node's secret comes from ``config.keys`` (the OS by default, a key
directory, or the named simulation option ``derived``; ``protocol.keys``); the
run header holds the signed genesis (``protocol.genesis``) with public keys
only, and a finished run ends with a signed closing record.

Role messages (submissions, reports) are events of the same simulator as
PBFT's: each reaches each validator after a sampled latency (and may be
dropped before GST); a submission that misses ``submission_deadline`` or a
node that is down (``worker_churn``) is rejected as ``no_submission``.

Simulation shortcuts, deterministic and documented: partitions (which name
replica ids) do not apply to role messages; a validator missing an accepted
worker's gradient fetches it from a peer that received it, untimed (it is
hashed against the accepted commitment); pure
checks (report signatures, VRF selections, fraud proofs, a re-derivation of
the same inputs with the same gradients) are computed once per process and
shared by the validators (``memo``), who would compute the same bytes; a
Byzantine validator whose strategy has no role behaviour neither verifies
nor reports (its consensus misbehaviour comes from ``network.byzantine``).
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from pot_jax.attacks import AttackContext, build_attack, choose_byzantine
from pot_jax.config import LOCAL_FIELDS, ProtocolConfig
from pot_jax.crypto.quorum import QuorumCertificate, ValidatorSet, aggregate_votes
from pot_jax.crypto.worker_signatures import worker_signature_scheme
from pot_jax.learning.assignment import BatchAssigner
from pot_jax.learning.encoding import encode_pytree, pytree_digest
from pot_jax.learning.trainer import build_learner, load_for, worker_shards
from pot_jax.network import byzantine
from pot_jax.network.scenario import make_cluster
from pot_jax.network.simulator import NetworkConfig, TimedNetwork
from pot_jax.protocol import behaviours  # noqa: F401  (registers the role behaviours)
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
from pot_jax.protocol.ledger import Ledger, LedgerConfig, encode_entries
from pot_jax.protocol.roles import (
    ProposeDue,
    ReportDue,
    RoundTask,
    TrainingNode,
    Validator,
    attack_knowledge,
    own_knowledge_context,
    worker_program,
)
from pot_jax.protocol.round import Fault, advance, genesis_state
from pot_jax.protocol.setup import Batches, make_rules, make_verification
from pot_jax.protocol.transcript import (  # noqa: F401  (codecs re-exported for callers)
    TRANSCRIPT_NAME,
    RecordKind,
    TranscriptReader,
    TranscriptWriter,
    decode_fraud_record,
    decode_qc_record,
    encode_checkpoint_ref,
    encode_fraud_record,
    encode_qc_record,
)
from pot_jax.runinfo import (
    JsonLines,
    TensorBoard,
    refuse_existing_run,
    run_metadata,
    show_progress,
    write_json,
)
from pot_jax.verification import calibrate_threshold
from pot_jax.verification.checks import Category

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


def _has_decided(node, seq: int) -> bool:
    """Whether ``node`` decided ``seq``; decisions are appended in sequence order."""
    d = node.decisions
    return bool(d) and d[-1].seq >= seq and any(x.seq == seq for x in reversed(d))


def _accept_anything(value: bytes) -> bool:
    return True


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

    def append(self, kind: int, payload: bytes, *, sync: bool = True) -> None:
        if self.replaying:
            self._match(kind, payload)
        else:
            self.writer.append(kind, payload, sync=sync)

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


def checkpoint_bytes(state) -> bytes:
    """A CHECKPOINT record's model: the optimizer state and the parameters."""
    return encode_pytree({"opt_state": state.opt_state, "params": state.params})


def append_round(writer, outcome, inputs, proofs, view, seq, qc, state) -> None:
    """A committed round's records, as every writer of a transcript writes them.

    Record, QC, inputs, [theta_r and every cited proof], ledger entries; one
    fdatasync per round, by the LEDGER record that completes it (an audit or a
    resume treats a round without its LEDGER record as not written). ``state``
    is the round's input state (theta_r).
    """
    j = outcome.judgement
    writer.append(RecordKind.ROUND, outcome.record.encode(), sync=False)
    writer.append(RecordKind.QC, encode_qc_record(view, seq, qc), sync=False)
    writer.append(RecordKind.INPUTS, inputs.encode(), sync=False)
    if j.cited:  # theta_r, so that anyone can check each proof with one recomputation
        writer.append_checkpoint(checkpoint_bytes(state))
    for prover, digest in j.cited:
        writer.append(
            RecordKind.FRAUD_PROOF, encode_fraud_record(prover, proofs[digest]), sync=False
        )
    writer.append(RecordKind.LEDGER, encode_entries(outcome.entries))


def round_facts(outcome, view: int) -> dict:
    """What a metrics row says about a committed round (the audit checks each of these)."""
    record, j = outcome.record, outcome.judgement
    by_category = collections.Counter(
        x.category for x in record.rejected if x.category != Category.SLASHED.value
    )
    return {
        "accepted": len(record.accepted),
        "rejected": sum(by_category.values()),
        "rejected_by_category": dict(sorted(by_category.items())),
        "fraud_proofs": len(j.rewards.fraud_proofs),
        "false_fraud_proofs": sum(1 for s in j.slashed if s.fault == Fault.FALSE_PROOF.value),
        "slashed_validators": [[s.validator, s.fault] for s in j.slashed],
        "view": view,
    }


STALE_ROUNDS = 5  # how old the model a lazy worker trains on is
MAX_ROUND_VIRTUAL_TIME = 10_000.0
CALIBRATION_ROUNDS = 4  # public batches of rounds 0-3 calibrate, rounds 4-7 measure


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
    rounds_committed: int  # decisions taken, counted as they commit
    pot_accuracy: float
    centralized_accuracy: float
    accuracy_ratio: float
    byzantine_workers: tuple[int, ...]
    cheaters_caught: tuple[int, ...]
    fraud_proofs: int  # valid fraud proofs committed (two validators proving one worker: 2)
    false_fraud_proofs: int  # cited proofs that did not verify (their provers are slashed)
    rejected_gradients: int
    rejections_by_category: dict  # verification.Category value -> count
    slashed_validators: dict  # validator index (str) -> the faults it was slashed for
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
        self.batches = Batches(self.assigner, self.data)
        self.learner, params = build_learner(config, self.data)
        self.params_c, self.opt_state_c = params, self.learner.optimizer.init(params)
        # Wall seconds spent in the centralized baseline's steps (batch gather + step,
        # synchronised), so accuracy can be plotted against each side's own compute time.
        self.centralized_seconds = 0.0
        self.calibration: dict = {}
        threshold = None
        if config.mode == "tolerance" and scheme is None:
            threshold, self.calibration = calibrate(
                config, self.learner, params, self.assigner, self.data
            )
        self.scheme = make_verification(config, threshold) if scheme is None else scheme

        W, n = config.workers, config.validators
        self.signature_scheme = worker_signature_scheme()
        self.byzantine_workers = choose_byzantine(W, config.byzantine_fraction, config.seed)
        attack = (
            build_attack(config.attack, aggregation=config.aggregation)
            if self.byzantine_workers
            else None
        )
        # What the Byzantine workers run, searched-against rule included (signed in the genesis).
        self.attack_label = None if attack is None else attack.label
        self.collusion = (
            "honest_gradients"
            if attack is not None and attack_knowledge(attack) == "colluding"
            else "none"
        )
        self.keys = self._keys(keys)
        worker_sks = self.keys.worker_signing_keys(self.signature_scheme)
        self.workers = [
            TrainingNode(
                i,
                worker_sks[i],
                self.keys.worker_public_keys[i],
                self.signature_scheme,
                attack if i in self.byzantine_workers else None,
            )
            for i in range(W)
        ]
        self.worker_keys = tuple(w.public_key for w in self.workers)
        sks, self.validator_set = self.keys.validator_secret_keys, self.keys.validator_set
        report_keys = self.keys.validator_report_keys()
        self.report_public_keys = tuple(pk for _, pk in report_keys)

        ledger = Ledger.genesis(LedgerConfig(), n_workers=W, n_validators=n)
        params_hash = pytree_digest(params, self.learner.spec)
        self.genesis = self._genesis(params_hash, ledger)
        self.genesis_hash = genesis_digest(self.genesis)
        self.rules = make_rules(
            config,
            genesis=self.genesis_hash,
            validator_set=self.validator_set,
            report_keys=self.report_public_keys,
            worker_keys=self.worker_keys,
            signatures=self.signature_scheme,
            scheme=self.scheme,
            learner=self.learner,
            batches=self.batches,
        )
        self.state = genesis_state(params, self.learner.optimizer.init(params), params_hash, ledger)

        bad = set(config.byzantine_validator_ids)
        strategies = {i: byzantine.build_strategy(config.validator_strategy) for i in bad}
        self.memo: dict = {}  # pure checks shared by the validators of this process
        self.validators = [
            Validator(
                i,
                sks[i],
                report_keys[i][0],
                self.rules,
                behaviours=strategies[i].role if i in bad else (),
                memo=self.memo,
                faulty=i in bad,
                fetch=self._fetch,
            )
            for i in range(n)
        ]
        # Who verifies and reports: honest validators, and Byzantine ones whose strategy
        # has a role behaviour (a purely consensus-level Byzantine validator does not).
        self.reporting = [v for v in self.validators if v.index not in bad or v.behaviours]
        self.cluster = make_cluster(
            n,
            config.pattern,
            strategies=strategies,
            seed=config.seed,
            chain_id=self.chain_id,
            keys=(sks, self.validator_set),
            max_value_bytes=1 << 22,
        )
        for node, v in zip(self.cluster.nodes, self.validators, strict=True):
            votes_anything = any(b.votes_anything for b in v.behaviours)
            check = _accept_anything if votes_anything else v.validate
            config_i = dataclasses.replace(node.replica.config, validate=check)
            node.replica = dataclasses.replace(node.replica, config=config_i)
        self.net = TimedNetwork(self.cluster, NetworkConfig(), seed=config.seed)
        self.stale = collections.deque(maxlen=STALE_ROUNDS)
        self._nan_rows = None
        self.counts = collections.Counter()
        self.rejections = collections.Counter()
        self.slashed: dict[int, list[str]] = {}
        self.slashed_honest = 0

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

    def _genesis(self, params_hash: bytes, ledger: Ledger) -> dict:
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
            "validator_report_keys": [pk.hex() for pk in self.report_public_keys],
            "worker_keys": [pk.hex() for pk in self.worker_keys],
            "worker_signature_scheme": self.signature_scheme.name,
            "key_source": self.keys.source,
            "genesis_params_hash": params_hash.hex(),
            "ledger_config": asdict(ledger.config),
            "verification": self.scheme.label,
            "tolerance_threshold": self.scheme.threshold,
            "calibration": self.calibration,
            "byzantine_workers": list(self.byzantine_workers),
            "attack": self.attack_label,
            "collusion": self.collusion,
            "data_digest": dataset_digest(self.data),
        }

    def _sign(self, message: bytes, *, everyone: bool = False):
        """A QC over ``message`` from the honest validators (``everyone``: all of them)."""
        bad = set(self.config.byzantine_validator_ids)
        signers = {v.index: v.sk for v in self.validators if everyone or v.index not in bad}
        return sign_statement(self.validator_set, signers, message)

    # -- one round --

    def _submissions(self, r: int, batch_of) -> tuple[dict, set[int], set[int]]:
        """Every running training node's signed submission; (ground truth) the wrong ones;
        the nodes down this round (``worker_churn``)."""
        config, W, state = self.config, self.config.workers, self.state
        churn = np.random.default_rng([config.seed, r, 0xC0FFEE])  # public, like the batches
        down = {w for w in range(W) if churn.random() < config.worker_churn}
        active = [w for w in range(W) if w not in state.banned and w not in down]
        # Each node's host computes its honest gradient (one host in this simulation).
        honest = worker_program(self.learner, state.params, batch_of, W, active, config.mode)
        task = RoundTask(r, state.params, self.chain_id)
        shared = AttackContext(
            learner=self.learner,
            params=state.params,
            batch_of=batch_of,
            grads_WxP=honest,  # through the collusion channel, for colluding attacks only
            round=r,
            byzantine=self.byzantine_workers,
            stale_params=self.stale[0] if len(self.stale) == STALE_ROUNDS else None,
            num_classes=self.data.num_classes,
            n_validators=config.validators,
            chain_id=self.chain_id,
        )
        submissions, wrong = {}, set()
        for w in active:
            node, ctx = self.workers[w], None
            if node.attack is not None:
                ctx = shared
                if self.collusion == "none":
                    if self._nan_rows is None:
                        self._nan_rows = np.full_like(honest, np.nan)
                    ctx = own_knowledge_context(shared, w, honest, self._nan_rows)
            rng = np.random.default_rng([config.seed, r, w])
            sub = node.step(task, self.learner.header, honest[w], ctx, rng)
            if self._nan_rows is not None:
                self._nan_rows[w] = np.nan
            submissions[w] = sub
            sent = sub.gradient
            if not (
                isinstance(sent, np.ndarray)
                and sent.dtype == honest.dtype
                and sent.shape == honest[w].shape
                and sent.tobytes() == honest[w].tobytes()
            ):
                wrong.add(w)
        self.counts["worker_gradients"] += len(active)
        return submissions, wrong, down

    def _fetch(self, worker: int):
        """A missing accepted gradient, from a validator that received it (not timed)."""
        for v in self.reporting:
            sub = v.submissions.get(worker)
            if sub is not None:
                return sub.gradient
        return None

    def _send(self, deliver) -> None:
        """A role message: ``deliver()`` runs when the simulator's latency says it arrives."""
        at = self.net.message_time()
        self.counts["role_messages"] += 1
        if at is None:
            self.counts["role_messages_dropped"] += 1
            return
        self.net.schedule(at, deliver)

    def _pending_evidence(self) -> tuple:
        """Equivocation evidence the honest replicas collected and nobody was slashed for."""
        return tuple(self.cluster.stats.evidence)

    def run_round(self, r: int, writer: TranscriptWriter) -> dict:
        """Run round r; return its metrics row (what metrics.jsonl and ``on_commit`` get)."""
        config, n = self.config, self.config.validators
        state = self.state
        round_start = time.perf_counter()
        messages_before = int(sum(self.cluster.stats.sent.values()))
        self.memo.clear()
        for v in self.validators:
            v.start(state)
        batch_of = self.batches.of_round(r)

        # The round's role messages are events of the simulator: each submission and
        # report reaches each validator after a sampled latency; what has not arrived
        # by its deadline is not there (a late or crashed node is a protocol event).
        net, t0 = self.net, self.net.time
        report_due = t0 + config.submission_deadline
        propose_due = report_due + net.config.delta
        submissions, wrong, down = self._submissions(r, batch_of)
        for sub in submissions.values():
            for v in self.reporting:
                self._send(lambda v=v, sub=sub: v.step(sub))

        recomputed: set[int] = set()

        def report() -> None:
            for v in self.reporting:
                if not self.cluster.nodes[v.index].up:
                    continue
                for message in v.step(ReportDue()):
                    for other in self.reporting:
                        if other is not v:
                            self._send(lambda o=other, m=message: o.step(m))
                if v.honest:
                    self.counts["recomputed"] += len(v.recomputed)
                    recomputed.update(v.recomputed)

        def propose() -> None:
            # Every reporting validator's server derives the round and submits it to its
            # own replica; the primary proposes, the others keep it pending (a view change
            # after a faulty primary then commits it). Too few reports yet: try again.
            evidence = self._pending_evidence()
            waiting = False
            for v in self.reporting:
                if not self.cluster.nodes[v.index].up or v.proposed:
                    continue
                outs = v.step(ProposeDue(evidence))
                waiting |= not v.proposed
                for out in outs:
                    self.cluster.submit(out.value, nodes=[v.index])
            if waiting and net.time < t0 + MAX_ROUND_VIRTUAL_TIME:
                net.schedule(net.time + net.config.delta, propose)

        net.schedule(report_due, report)
        net.schedule(propose_due, propose)

        # Agreement: PBFT with BLS quorum certificates.
        seq = r + 1
        honest_nodes = [x for x in self.cluster.nodes if not x.faulty]

        def decided() -> bool:  # called after every event: O(1) until the round is decided
            return all(_has_decided(x, seq) for x in honest_nodes if x.up)

        # A Byzantine validator whose strategy acts unprompted (spam, replayed or forged
        # certificates, garbage) acts once a network delay while the round runs.
        def act(i: int) -> None:
            if decided():
                return  # a tick left over from a round that is over
            self.cluster.act(i)
            net.schedule(net.time + net.config.delta, lambda: act(i))

        for x in self.cluster.nodes:
            if x.strategy is not None and getattr(x.strategy, "acts", True):
                net.schedule(t0 + net.config.delta / 2, lambda i=x.id: act(i))

        self.net.run(until=t0 + MAX_ROUND_VIRTUAL_TIME, stop=decided)
        if not decided():
            faulty = len(self.config.byzantine_validator_ids)
            raise NoQuorum(
                f"no quorum from round {r}: more than f validators faulty ({faulty} of {n}, "
                f"f = {(n - 1) // 3}); nothing committed within {MAX_ROUND_VIRTUAL_TIME:g} "
                f"network delays. The transcript keeps the {r} committed rounds (pot-jax audit "
                f"{self.run_dir} reports it unfinished)"
            )
        decision = next(d for d in honest_nodes[0].decisions if d.seq == seq)
        judge_by = next(v for v in self.reporting if v.honest)
        outcome, inputs, proofs = judge_by.outcome_of(decision.value)
        record, j = outcome.record, outcome.judgement
        view, qc = self._commit_qc(seq)

        append_round(writer, outcome, inputs, proofs, view, seq, qc, state)

        # Update.
        self.stale.append(state.params)
        self.state = advance(state, outcome, qc.signer_indices())
        for w in j.proven:
            if w not in self.byzantine_workers:
                self.slashed_honest += 1
        for s in j.slashed:
            self.slashed.setdefault(s.validator, []).append(s.fault)
        if (r + 1) % config.checkpoint_every == 0:
            writer.append_checkpoint(self._checkpoint_bytes(self.state))

        facts = round_facts(outcome, view)
        by_category = collections.Counter(facts["rejected_by_category"])
        self.rejections.update(by_category)
        valid_proofs, false_proofs = facts["fraud_proofs"], facts["false_fraud_proofs"]
        self.counts["fraud_proofs"] += valid_proofs
        self.counts["false_proofs"] += false_proofs
        self.counts["rejected"] += facts["rejected"]
        accepted = {a.worker for a in record.accepted}
        self.counts["wrong_checked"] += len(wrong & recomputed)
        self.counts["wrong_caught"] += len(wrong & set(j.proven))
        self.counts["wrong_accepted"] += len(wrong & accepted)
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
        loss = float(self.learner.loss(state.params, x_all, y_all))
        return {
            "round": r + 1,
            "loss": loss,
            "centralized_loss": float(loss_c),
            **facts,
            "caught": len(self.state.banned),
            "recomputed": len(recomputed),
            "messages": int(sum(self.cluster.stats.sent.values())) - messages_before,
            "workers_down": len(down),
            "virtual_time": self.net.time,
            "round_wall_seconds": time.perf_counter() - round_start,
        }

    def _checkpoint_bytes(self, state) -> bytes:
        return checkpoint_bytes(state)

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
            writer.append_checkpoint(self._checkpoint_bytes(self.state))
            bar = tqdm(
                range(config.rounds), disable=not show_progress(config), desc="pot", unit="round"
            )
            for r in bar:
                row = self.run_round(r, writer)
                if (r + 1) % config.eval_every == 0 or r + 1 == config.rounds:
                    acc = self.learner.accuracy(self.state.params, x_test, y_test)
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
            writer.append_checkpoint(self._checkpoint_bytes(self.state))
        closing = Closing(
            chain_id=self.chain_id,
            genesis=self.genesis_hash,
            rounds=self.counts["committed"],
            final_params_hash=self.state.params_hash,
            ledger_digest=self.state.ledger.ledger_digest(),
        )
        qc = self._sign(closing.vote_message())
        writer.append(RecordKind.CLOSING, encode_closing_record(closing, qc))

    def _summary(self, acc: float, acc_c: float, wall: float) -> ProtocolSummary:
        ledger = self.state.ledger
        workers = sum(ledger.balance(f"worker:{i}") for i in range(self.config.workers))
        validators = sum(ledger.balance(f"validator:{i}") for i in range(self.config.validators))
        c = self.counts
        return ProtocolSummary(
            rounds_committed=c["committed"],
            pot_accuracy=acc,
            centralized_accuracy=acc_c,
            accuracy_ratio=acc / acc_c if acc_c else float("nan"),
            byzantine_workers=self.byzantine_workers,
            cheaters_caught=tuple(sorted(self.state.banned)),
            fraud_proofs=c["fraud_proofs"],
            false_fraud_proofs=c["false_proofs"],
            rejected_gradients=c["rejected"],
            rejections_by_category=dict(sorted(self.rejections.items())),
            slashed_validators={str(v): f for v, f in sorted(self.slashed.items())},
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
