"""Node processes of a real cluster: what both kinds share, and the validator (with its server).

The roles are the sans-IO state machines of ``protocol.roles`` and the PBFT
replica of ``consensus.pbft``; this module only drives them from real time
and a real transport (``deploy.transport``, gRPC streams), exactly as the
simulator's runner drives them from virtual time:

* **ValidatorNode**: at the start of round r it announces the round's model
  hash to the worker hosts (signed with its report key), collects
  submissions until the submission deadline (or until every unbanned worker
  submitted), reports, collects reports until the report deadline (or until
  every validator reported), lets its aggregation server derive the round
  and submits that value to its own PBFT replica. Every PBFT output is
  applied in order: its durable state goes to the vote log (``store``)
  before any message it produced is sent. A committed value is re-derived
  (``Validator.outcome_of``) and written to this validator's own transcript
  as the simulator writes it (ROUND, QC, INPUTS, [CKPT, FRAUD_PROOF...],
  LEDGER, every ``checkpoint_every`` rounds a CKPT), then the next round
  starts. After the last round the validators exchange BLS votes on the
  closing statement and each writes the CLOSING record with a quorum of them.
* **WorkerHost** (``deploy.worker_host``) hosts training nodes; each node
  sends its submissions on its own streams, opened with its own key, and
  validators accept a node's submission only on that node's stream, so no
  host or node can pre-empt another node with a forged submission.

Time: every delay of the simulator (one unit = the mean message latency)
is ``time_scale`` seconds here (``--time-scale``); that covers the
submission deadline, the report deadline and PBFT's timers.

Bad input: a message that does not decode, is for another round, comes
from the wrong sender or does not verify is dropped, counted by reason in
``stats`` (written to ``node-stats.json``), and the node keeps running.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import hashlib
import json
import logging
import os
import random
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from pot_jax.consensus.messages import bundle_parts
from pot_jax.consensus.pbft import (
    Decision,
    Deliver,
    Replica,
    ReplicaConfig,
    Send,
    Submit,
    TimerExpired,
    durable_state,
    initial_state,
    recover,
    step,
)
from pot_jax.consensus.verifier import Verifier
from pot_jax.crypto.quorum import aggregate_votes, sign_vote, verify_qc
from pot_jax.crypto.worker_signatures import worker_message
from pot_jax.deploy import wire
from pot_jax.deploy.context import RunContext, header_bytes
from pot_jax.deploy.store import VoteLog
from pot_jax.deploy.transfer import StateTransfer, TransferError
from pot_jax.learning.encoding import decode_pytree, encode_pytree, flat_digest, pytree_digest
from pot_jax.network import byzantine
from pot_jax.protocol import behaviours  # noqa: F401  (registers the role behaviours)
from pot_jax.protocol.genesis import Closing, encode_closing_record
from pot_jax.protocol.keys import report_key
from pot_jax.protocol.messages import (
    MessageError,
    ReportMessage,
    RoundInputs,
    decode_proposal,
    decode_submission,
    encode_submission,
)
from pot_jax.protocol.records import RecordError, RoundRecord
from pot_jax.protocol.roles import (
    Committed,
    ProposeDue,
    ReportDue,
    Validator,
    supersedes,
)
from pot_jax.protocol.round import InputsError, advance
from pot_jax.protocol.runner import append_round, checkpoint_bytes, round_facts
from pot_jax.protocol.transcript import (
    TRANSCRIPT_NAME,
    CheckpointStore,
    RecordKind,
    TranscriptError,
    TranscriptWriter,
    checkpoint_directory,
    decode_checkpoint_ref,
    encode_fraud_record,
)
from pot_jax.runinfo import JsonLines, write_json

__all__ = ["Endpoints", "NodeError", "ValidatorNode", "one_compute_thread"]

log = logging.getLogger(__name__)
FETCH_RETRY = 4.0  # network delays before missing gradients and reports are asked for again
STATS_EVERY = 5.0  # seconds between refreshes of node-stats.json
HISTORY_ROUNDS = 64  # rounds of submissions and reports kept for peers that fall behind
# A validator this many rounds behind (or further than its peers' history) adopts the
# certified state of a checkpoint round (deploy.transfer) instead of re-deriving each round
# from gradients fetched one by one: at 1000 training nodes that took ~1 min a round, longer
# than the cluster takes, so a validator down for a while never caught up.
TRANSFER_AFTER = 16
STATE_BATCH = 8  # rounds of checkpoints and proofs a transfer asks for at a time
# What a validator answers, per peer (a model reply is the whole model, ~0.3 MB for a 40-byte
# request; without a bound one peer could make it send that without end). A round's model is
# asked for once, and again on a loss: MODEL_REQUESTS_PER_ROUND per peer and round. Reports
# and gradients are asked for again every FETCH_RETRY delays while a peer still lacks them,
# for as long as that takes: a bucket per peer holds a burst of REQUEST_BURST requests
# (gradient requests: per worker) and refills one every FETCH_RETRY delays.
MODEL_REQUESTS_PER_ROUND = 4
REQUEST_BURST = 4
ACT_EVERY = 1.0  # network delays between a Byzantine strategy's unprompted acts
STALE_ROUNDS = 5  # as the simulator's runner: how old the model a lazy worker trains on is


class NodeError(ValueError):
    """A node that cannot start (keys, peers, config), with what is wrong."""


def one_compute_thread() -> None:
    """Give this process's XLA CPU client one intra-op thread; call it before any jax array.

    XLA sizes its CPU thread pools by the CPUs this process may run on when
    the client is created. Node processes share the machine's cores with each
    other, so a pool of one thread per core splits each of a node's tiny
    kernels across threads that wait for each other: on 2 shared cores that
    made the same 16 gradients cost 3 ms or 400 ms of CPU (both pool threads
    spinning), run to run. With one thread every kernel runs where it is
    called, and the bits are the same (the kernels do not split a reduction
    across threads). The process is restricted to one CPU only while the
    client is created: the client's threads are then allowed on every CPU
    again, so the scheduler still spreads the processes. A client that
    already exists is left as it is (a no-op); so is a platform without
    ``sched_setaffinity``.
    """
    if not hasattr(os, "sched_setaffinity"):
        return
    import jax

    cpus = os.sched_getaffinity(0)
    before = set(os.listdir("/proc/self/task"))
    os.sched_setaffinity(0, {min(cpus)})
    try:
        jax.devices("cpu")
    finally:
        for tid in set(os.listdir("/proc/self/task")) - before:
            try:
                os.sched_setaffinity(int(tid), cpus)
            except ProcessLookupError:
                pass  # a thread that already ended
        os.sched_setaffinity(0, cpus)


@dataclass(frozen=True)
class Endpoints:
    """Who is where: every validator's address and every worker host's address and nodes.

    The peers file is JSON: ``{"validators": ["host:port", ...], "worker_hosts":
    [{"address": "host:port", "nodes": [0, 1, ...]}, ...]}``. Endpoint ids are
    ``validator/i`` and ``workers/k``.
    """

    validators: tuple[str, ...]
    worker_hosts: tuple[tuple[str, tuple[int, ...]], ...]

    @classmethod
    def load(cls, path: str | os.PathLike, *, n_validators: int, n_workers: int) -> Endpoints:
        try:
            raw = json.loads(Path(path).read_text())
            validators = tuple(str(a) for a in raw["validators"])
            hosts = tuple(
                (str(h["address"]), tuple(int(w) for w in h["nodes"])) for h in raw["worker_hosts"]
            )
        except OSError as err:
            raise NodeError(f"--peers {path}: cannot read it ({err.strerror})") from None
        except (ValueError, KeyError, TypeError) as err:
            raise NodeError(f"--peers {path}: not a peers file ({err!r})") from None
        if len(validators) != n_validators:
            raise NodeError(
                f"--peers {path}: {len(validators)} validators, the genesis has {n_validators}"
            )
        nodes = [w for _, ws in hosts for w in ws]
        if sorted(nodes) != list(range(n_workers)):
            raise NodeError(
                f"--peers {path}: the worker hosts must host each of the {n_workers} training "
                "nodes exactly once"
            )
        return cls(validators, hosts)

    def to_json(self) -> dict:
        return {
            "validators": list(self.validators),
            "worker_hosts": [{"address": a, "nodes": list(ws)} for a, ws in self.worker_hosts],
        }

    def host_of(self) -> dict[int, int]:
        return {w: k for k, (_, ws) in enumerate(self.worker_hosts) for w in ws}

    def peers_of(self, me: str) -> dict[str, str]:
        """The endpoints ``me`` sends to: validators reach everyone, hosts reach validators."""
        out = {f"validator/{i}": a for i, a in enumerate(self.validators)}
        if me.startswith("validator/"):
            out.update({f"workers/{k}": a for k, (a, _) in enumerate(self.worker_hosts)})
        out.pop(me, None)
        return out


def _hello_verifier(ctx: RunContext, endpoints: Endpoints):
    """verify(peer_id, message, signature): validators sign with their report key, a
    training node (``worker/w``, its own stream) with its own key, a worker host with the
    key of the first training node it hosts."""
    report_scheme = ctx.rules.report_scheme
    signatures = ctx.rules.signatures

    def verify(peer: str, message: bytes, signature: bytes) -> bool:
        role, _, index = peer.partition("/")
        if not index.isdigit():
            return False
        i = int(index)
        if role == "validator" and i < len(ctx.report_keys):
            return report_scheme.verify(ctx.report_keys[i], message, signature)
        if role == "worker" and i < len(ctx.worker_keys):
            return signatures.verify(ctx.worker_keys[i], message, signature)
        if role == "workers" and i < len(endpoints.worker_hosts):
            first = endpoints.worker_hosts[i][1][0]
            return signatures.verify(ctx.worker_keys[first], message, signature)
        return False

    return verify


class _Base:
    """What both node kinds share: the transport, counters, timers in scaled time."""

    def __init__(self, ctx: RunContext, me: str, endpoints: Endpoints, data_dir, time_scale):
        self.ctx, self.me, self.endpoints = ctx, me, endpoints
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.scale = float(time_scale)
        self.stats: collections.Counter = collections.Counter()
        self.transport = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.done = asyncio.Event()

    def later(self, delays: float, callback, *args):
        return self.loop.call_later(delays * self.scale, self._guarded, callback, *args)

    def _guarded(self, callback, *args):
        try:
            callback(*args)
        except Exception:  # a bug in one handler must not stop the node; it is logged
            log.exception("%s: handler %s failed", self.me, getattr(callback, "__name__", callback))
            self.stats["handler error"] += 1

    def drop(self, reason: str) -> None:
        self.stats[f"dropped: {reason}"] += 1

    def on_message(self, sender: str, data: bytes) -> None:
        try:
            kind, body = wire.decode(data)
        except wire.WireError as err:
            self.drop(f"malformed envelope ({err})")
            return
        self.stats[f"received: {wire.KIND_NAMES[kind]}"] += 1
        try:
            self.handle(sender, kind, body)
        except (wire.WireError, MessageError, RecordError) as err:
            self.drop(f"malformed {wire.KIND_NAMES[kind]} ({err})")

    def progress(self) -> dict:
        """Where the node is (written with its counters; overridden by the node kinds)."""
        return {}

    def _stats_loop(self) -> None:
        self.write_stats()
        self.later(STATS_EVERY / self.scale, self._stats_loop)

    def write_stats(self) -> None:
        stats = dict(self.stats)
        stats["progress"] = self.progress()
        if self.transport is not None:
            stats["transport"] = {
                k: (dict(v) if isinstance(v, collections.Counter) else v)
                for k, v in dataclasses.asdict(self.transport.stats).items()
            }
        write_json(self.data_dir / "node-stats.json", _jsonable(stats))

    async def serve(self, transport_factory, start_file: str | None = None) -> None:
        """Start the transport, warm up, wait for ``start_file`` (if any), run until done."""
        self.loop = asyncio.get_running_loop()
        self.transport = transport_factory(self.on_message)
        await self.transport.start()
        await self.open_links(transport_factory)
        self.warm_up()
        (self.data_dir / "ready").write_text(str(os.getpid()))
        while start_file is not None and not Path(start_file).exists():
            await asyncio.sleep(0.05)
        self.begin()
        self._stats_loop()
        try:
            await self.done.wait()
        finally:
            self.write_stats()
            await self.close_links()
            await self.transport.stop()

    async def open_links(self, transport_factory) -> None:
        """Start the transports a node kind has besides its own listener (none here)."""

    async def close_links(self) -> None:
        """Stop what ``open_links`` started."""


class ValidatorNode(_Base):
    """One validator process: verification role, aggregation server and PBFT replica."""

    def __init__(
        self,
        ctx,
        index,
        secret_key,
        endpoints,
        data_dir,
        *,
        time_scale=0.25,
        linger=None,
        request_timeout=None,
        history_rounds=HISTORY_ROUNDS,
        transfer_after=TRANSFER_AFTER,
    ):
        super().__init__(ctx, f"validator/{index}", endpoints, data_dir, time_scale)
        config = ctx.config
        self.index, self.sk = index, secret_key
        self.report_sk, report_pk = report_key(secret_key)
        if report_pk != ctx.report_keys[index]:
            raise NodeError(f"this key is not validator {index}'s (its report key differs)")
        self.n, self.W = config.validators, config.workers
        self.host_of = endpoints.host_of()
        bad = index in config.byzantine_validator_ids
        strategy = byzantine.build_strategy(config.validator_strategy) if bad else None
        self.silent = bad and strategy.name == "silent"
        # A Byzantine validator's consensus misbehaviour (network.byzantine), run on the real
        # messages as the simulator runs it: its outgoing PBFT messages rewritten, its incoming
        # ones filtered, and now and then an unprompted act. None: honest PBFT.
        self.strategy = strategy if bad and not self.silent and not _only_role(strategy) else None
        self.byzantine_view = (
            _ByzantineView(self, config, strategy) if self.strategy is not None else None
        )
        roles = strategy.role if bad else ()
        self.validator = Validator(
            index,
            secret_key,
            self.report_sk,
            ctx.rules,
            behaviours=roles,
            memo={},
            faulty=bad,
            fetch=self._fetched,
        )
        # Gradients of accepted workers this validator did not receive in time, fetched from
        # peers: round -> worker -> gradient; the workers a derivation missed; the consensus
        # messages it could not validate for want of them, delivered again once they arrive.
        self.fetched: dict[int, dict[int, np.ndarray]] = collections.defaultdict(dict)
        self.fetched_subs: dict[int, dict] = {}
        self.requested: dict[int, set[int]] = {}
        # This round's asked-for gradients: requests sent per worker, and those not yet here.
        self.fetch_attempts: dict[int, int] = {}
        self.awaited: set[int] = set()
        self.missing: set[int] = set()
        self.stashed: collections.deque = collections.deque(maxlen=16)
        self.pending_commit = None
        self.current_pbft = None
        self.queue: collections.deque = collections.deque()  # decisions not yet applied
        self.app_seq = 0  # the last sequence whose round is in the transcript
        # What peers that fall behind (a restarted validator) may ask for: each recent
        # round's submissions and reports.
        self.history: collections.OrderedDict = collections.OrderedDict()
        self.history_rounds, self.transfer_after = int(history_rounds), int(transfer_after)
        if self.history_rounds < 1 or self.transfer_after < 1:
            raise NodeError(
                f"history_rounds = {history_rounds}, transfer_after = {transfer_after}: "
                "expected at least 1 round each"
            )
        # What a peer that is further behind may ask for (state transfer): this validator's
        # checkpoint of each round's state it stored (round -> sha256 in its checkpoint
        # store) and the fraud proof records of each round that cites some.
        self.ckpt_refs: dict[int, bytes] = {}
        self.proof_records: dict[int, list[bytes]] = {}
        self.transfer: StateTransfer | None = None
        self.transfer_failed = False  # certified rounds did not follow from its own state
        votes_anything = any(b.votes_anything for b in roles)
        rc = ReplicaConfig(
            chain_id=ctx.chain_id,
            validators=ctx.validator_set,
            pattern=config.pattern,
            max_value_bytes=1 << 22,
            validate=(lambda value: True) if votes_anything else self._validate,
            supersedes=supersedes,
            # Node-local timing (not part of the signed run): a round's honest work must fit.
            **(
                {}
                if request_timeout is None
                else {"request_timeout": request_timeout, "view_change_timeout": request_timeout}
            ),
        )
        self.replica = Replica(rc, index, secret_key, Verifier(ctx.validator_set))
        self.votelog = VoteLog(self.data_dir / "votes.log", legacy=self.data_dir / "votes.json")
        self.linger = linger
        self.pstate = None
        self.state = ctx.state0
        self.evidence: list = []
        self.future: dict[int, list] = collections.defaultdict(list)
        self.timers: dict[str, asyncio.TimerHandle] = {}
        self.reported = self.proposing = False
        self.round_started = 0.0
        self.stale = collections.deque(maxlen=STALE_ROUNDS)
        self.closing_votes: dict[int, bytes] = {}
        self.model_requests: collections.Counter = collections.Counter()  # (peer, round) -> n
        self.reports_asked: dict[int, float] = {}  # round -> when this validator last asked
        self.buckets: dict[tuple[str, int], tuple[float, float]] = {}  # -> (tokens, time)
        self.closed = False
        self.writer: TranscriptWriter | None = None
        self.metrics: JsonLines | None = None
        self.tally = {
            "rejections": collections.Counter(),
            "fraud_proofs": 0,
            "false_fraud_proofs": 0,
            "max_view": 0,
            "slashed": {},
        }

    # -- setup ---------------------------------------------------------------------------------

    def warm_up(self) -> None:
        """Compile the recomputation, the aggregate and the update before round 0 starts
        (compiling them in round 0 made its deadlines miss)."""
        import jax.numpy as jnp

        ctx, state = self.ctx, self.ctx.state0
        x, y = ctx.batches(0, 0)
        ctx.learner.worker_gradient(state.params, x, y)
        rows = jnp.zeros((self.W, ctx.learner.num_params), jnp.float32)
        agg = ctx.rules.aggregate(rows, jnp.ones((self.W,), bool))
        params, _ = ctx.learner.apply_update(state.params, state.opt_state, agg)
        pytree_digest(params, ctx.learner.spec)

    def begin(self) -> None:
        if self.silent:
            return  # a crashed-like Byzantine validator: it takes part in nothing
        path = self.data_dir / TRANSCRIPT_NAME
        self.run_started = time.perf_counter()
        if path.exists():
            self._restore(path)  # sets closed when the transcript already is
        else:
            write_json(self.data_dir / "config.json", self.ctx.header)
            self.writer = TranscriptWriter(path)
            self.writer.append(RecordKind.HEADER, header_bytes(self.ctx.header))
            self._append_checkpoint(0, self._checkpoint_bytes(self.state))
        self.metrics = JsonLines(self.data_dir / "metrics.jsonl")
        durable = self.votelog.load()
        self.pstate = initial_state(self.replica)
        self.enter_round(self.state)
        if durable is not None:
            # Decisions this replica executed before the crash but the transcript lacks
            # (it died between the two) are applied first, then it recovers from its peers.
            for seq in sorted(durable.ledger):
                cert = durable.ledger[seq]
                if seq > self.app_seq:
                    self.queue.append(Decision(seq, cert.view, cert.digest, cert.value))
            self._apply(recover(self.replica, durable))
            self._drain()
        if self.strategy is not None and getattr(self.strategy, "acts", True):
            self.later(ACT_EVERY, self._act)

    def _restore(self, path: Path) -> None:
        """Resume from this validator's own transcript after a crash.

        Every complete round is checked as the auditor checks it (QCs, hashes,
        fraud proofs, ledger), and the rounds since the last checkpoint are
        re-executed from it (``--recompute all`` on that interval: the state
        must be exactly what the records say; recomputing every gradient since
        the genesis instead took the CPU the other validators needed to keep
        committing). A round whose records were torn by the crash is cut away
        and will be committed again from the consensus log or the peers. A
        transcript that is already closed is kept as it is: the validator
        serves its peers (its closing vote, decisions, the final model) and
        writes nothing more.
        """
        from pot_jax.protocol.audit import Auditor, Status
        from pot_jax.protocol.runner import _kept_metric_rows
        from pot_jax.protocol.transcript import TranscriptReader, decode_qc_record

        records = list(TranscriptReader(path, allow_torn_tail=True))
        if not records or records[0].payload != header_bytes(self.ctx.header):
            raise NodeError(f"{path} is the transcript of another run (its header differs)")
        auditor = Auditor(
            self.data_dir,
            recompute=1.0,
            genesis=self.ctx.genesis_hash.hex(),
            data_dir=self.ctx.config.data_dir,
            replay_from=_last_checkpoint_round(records),
        )
        report = auditor.run()
        self.stats["rounds re-executed at restart"] += report.reexecuted
        if report.status == Status.PASSED and auditor.state is not None:
            self._restore_closed(records, auditor)
            return
        if report.status != Status.UNFINISHED or auditor.state is None:
            raise NodeError(
                f"{path}: this validator's own transcript does not re-execute: {report.reason}"
            )
        # Keep exactly the rounds the re-execution accepted (a round whose LEDGER made it
        # to disk but whose checkpoint did not is torn too); their last QC gives the seq.
        done = auditor.state.round
        ledgers = [i for i, rec in enumerate(records) if rec.kind == RecordKind.LEDGER]
        cut = records[ledgers[done - 1]].end if done else records[min(1, len(records) - 1)].end
        qcs = [rec for rec in records if rec.kind == RecordKind.QC and rec.offset < cut]
        self.app_seq = decode_qc_record(qcs[-1].payload)[1] if qcs else 0
        with open(path, "r+b") as f:  # the records of a round the crash tore are cut away
            f.truncate(cut)
            os.fsync(f.fileno())
        self._index(rec for rec in records if rec.offset < cut)
        self.state = auditor.state
        facts = auditor.facts
        if facts is not None:
            self.tally["rejections"].update(facts.by_category)
            self.tally["fraud_proofs"] = facts.fraud_proofs
            self.tally["false_fraud_proofs"] = facts.false_proofs
            self.tally["max_view"] = facts.max_view
            self.tally["slashed"] = {str(k): list(v) for k, v in facts.slashed.items()}
        _kept_metric_rows(self.data_dir / "metrics.jsonl", committed=self.state.round)
        self.writer = TranscriptWriter.open(path)
        config = self.ctx.config
        if self.state.round and self.state.round % config.checkpoint_every == 0:
            self._append_checkpoint(self.state.round, self._checkpoint_bytes(self.state))
        self.stats["restarts"] += 1
        log.warning("%s: resumed after round %d (seq %d)", self.me, self.state.round, self.app_seq)

    def _restore_closed(self, records, auditor) -> None:
        from pot_jax.protocol.transcript import decode_qc_record

        self.state = auditor.state
        qcs = [rec for rec in records if rec.kind == RecordKind.QC]
        self.app_seq = decode_qc_record(qcs[-1].payload)[1] if qcs else 0
        self._index(records)
        self.closed = True  # enter_round signs and sends its closing vote again, for its peers
        self.stats["restarts"] += 1
        log.warning("%s: restarted after closing its transcript; serving peers", self.me)
        if self.linger is not None:
            self.later(self.linger / self.scale, self.done.set)

    # -- rounds --------------------------------------------------------------------------------

    def enter_round(self, state) -> None:
        self.state = state
        if self.validator.state is None:
            self.validator.start(state)
        else:
            self.validator.step(Committed(state))
        self.fetched = collections.defaultdict(dict, {state.round: {}})
        self.fetched_subs = {r: v for r, v in self.fetched_subs.items() if r >= state.round}
        self.model_requests = collections.Counter(
            {k: n for k, n in self.model_requests.items() if k[1] >= state.round}
        )
        self.requested.clear()
        self.fetch_attempts.clear()
        self.awaited.clear()
        self.reported = self.proposing = False
        self.round_started = time.perf_counter()
        r = state.round
        if r == self.ctx.config.rounds:
            self.announce(r, state.params_hash)
            self.close_run()
            return
        self.announce(r, state.params_hash)
        self._set_timer("report", self.ctx.config.submission_deadline, self.report)
        for sender, kind, body in self.future.pop(r, ()):
            self.handle(sender, kind, body)
        self._redeliver()

    def announce(self, r: int, params_hash: bytes) -> None:
        a = wire.Announce(r, params_hash, self.index)
        message = a.signing_message(self.ctx.chain_id, self.ctx.genesis_hash)
        signed = dataclasses.replace(
            a, signature=self.ctx.rules.report_scheme.sign(self.report_sk, message)
        )
        data = wire.encode_announce(signed)
        for k in range(len(self.endpoints.worker_hosts)):
            self.transport.send(f"workers/{k}", data)

    def _set_timer(self, name, delays, callback) -> None:
        old = self.timers.pop(name, None)
        if old is not None:
            old.cancel()
        self.timers[name] = self.later(delays, callback)

    def report(self) -> None:
        if self.reported or self.closed:
            return
        self.reported = True
        for message in self.validator.step(ReportDue()):
            data = wire.encode(wire.REPORT, message.encode())
            for j in range(self.n):
                if j != self.index:
                    self.transport.send(f"validator/{j}", data)
        self._set_timer("propose", 2.0, self.propose)  # one network delta, as the runner
        self._maybe_propose_early()

    def propose(self) -> None:
        if self.validator.proposed or self.closed:
            return
        outs = self.validator.step(ProposeDue(tuple(self.evidence)))
        for out in outs:
            self._apply(step(self.replica, self.pstate, Submit(out.value)))
        if not self.validator.proposed:
            # Too few reports yet, or an accepted gradient that reached this validator after
            # its deadline: ask the peers for it, and try again.
            self._fetch_missing()
            self._set_timer("propose", 2.0, self.propose)

    def _maybe_propose_early(self) -> None:
        if self.reported and len(self.validator.reports) == self.n:
            self.propose()

    # -- messages ------------------------------------------------------------------------------

    def handle(self, sender: str, kind: int, body: bytes) -> None:
        if self.silent or self.pstate is None:
            self.drop("not running")
            return
        if sender.startswith("worker/") and kind != wire.SUBMISSION:
            # A node's own stream carries its submissions only (and this validator has no
            # address to answer it on: a model request there would raise, once per request).
            self.drop(f"{wire.KIND_NAMES[kind]} on a training node's stream")
            return
        if kind == wire.PBFT:
            src = _validator_index(sender)
            if src is None:
                self.drop("consensus message from a non-validator")
                return
            if self.strategy is not None:  # judged one bundled message at a time, as simulated
                view = self.byzantine_view
                for part in bundle_parts(body):
                    if self.strategy.incoming(view, src, part, view):
                        self._deliver_pbft(src, part)
            else:
                self._deliver_pbft(src, body)
            self._fetch_missing()
        elif kind in (
            wire.REPORTS_REQUEST,
            wire.GRADIENT_REQUEST,
            wire.MODEL_REQUEST,
            wire.STATE_REQUEST,
        ):
            if self._within_budget(sender, kind, body):
                {
                    wire.REPORTS_REQUEST: self._reports_request,
                    wire.GRADIENT_REQUEST: self._gradient_request,
                    wire.MODEL_REQUEST: self._model_request,
                    wire.STATE_REQUEST: self._state_request,
                }[kind](sender, body)
        elif kind == wire.STATE:
            self._state(sender, body)
        elif kind == wire.GRADIENT:
            self._gradient(sender, body)
        elif kind == wire.SUBMISSION:
            self._submission(sender, body)
        elif kind == wire.REPORT:
            self._report(sender, body)
        elif kind == wire.CLOSING_VOTE:
            self._closing_vote(sender, body)
        else:
            self.drop(f"{wire.KIND_NAMES[kind]} is not for a validator")

    def _deliver_pbft(self, src: int, data: bytes) -> None:
        self.current_pbft = (src, data)
        try:
            self._apply(step(self.replica, self.pstate, Deliver(src, data)))
        finally:
            self.current_pbft = None

    def _within_budget(self, sender: str, kind: int, body: bytes) -> bool:
        """Count a request against its peer's budget; False: dropped, with the reason."""
        name = wire.KIND_NAMES[kind]
        r, _ = wire.split_round(body, name)
        kept = self.state.round - self.history_rounds < r <= self.state.round
        if kind != wire.STATE_REQUEST and not kept:  # checkpoints are kept for every round
            self.drop(f"{name} for a round this validator does not keep")
            return False
        if kind == wire.MODEL_REQUEST:
            self.model_requests[(sender, r)] += 1
            if self.model_requests[(sender, r)] > MODEL_REQUESTS_PER_ROUND:
                self.drop(f"rate limit: {name} for one round more than {MODEL_REQUESTS_PER_ROUND}x")
                return False
            return True
        per = {wire.GRADIENT_REQUEST: self.W, wire.STATE_REQUEST: STATE_BATCH}.get(kind, 1)
        burst = REQUEST_BURST * per
        now = time.monotonic()
        tokens, then = self.buckets.get((sender, kind), (float(burst), now))
        tokens = min(
            burst, tokens + (now - then) / (FETCH_RETRY * self.scale) * burst / REQUEST_BURST
        )
        if tokens < 1.0:
            self.buckets[(sender, kind)] = (tokens, now)
            self.drop(f"rate limit: {name}s faster than one every {FETCH_RETRY:g} delays")
            return False
        self.buckets[(sender, kind)] = (tokens - 1.0, now)
        return True

    def _defer(self, r: int, sender, kind, body) -> bool:
        """Keep a message of the next round (a faster peer); True when it was handled so."""
        if r == self.state.round + 1 and len(self.future[r]) < self.W + 4 * self.n:
            self.future[r].append((sender, kind, body))
            return True
        return False

    def _submission(self, sender: str, body: bytes) -> None:
        r, payload = wire.split_round(body, "submission")
        sub = decode_submission(payload)
        if not isinstance(sub.worker, int) or not 0 <= sub.worker < self.W:
            self.drop("submission of an unregistered worker")
            return
        if sender != f"worker/{sub.worker}":  # each node's own stream, opened with its key
            self.drop("submission for another training node than the stream's")
            return
        if r != self.state.round:
            if not self._defer(r, sender, wire.SUBMISSION, body):
                self.drop("submission for another round")
            return
        if self.reported:
            self.drop("submission after the deadline")
            return
        self.validator.step(sub)
        held = self.validator.submissions
        if all(w in held for w in range(self.W) if w not in self.state.banned):
            self.report()  # everyone who may submit did: no need to wait for the deadline

    def _report(self, sender: str, body: bytes) -> None:
        message = ReportMessage.decode(body)
        rep = message.report  # signed by its validator: a peer may relay it (catch-up)
        if _validator_index(sender) is None:
            self.drop("report from a non-validator")
            return
        if rep.round != self.state.round:
            if not self._defer(rep.round, sender, wire.REPORT, body):
                self.drop("report for another round")
            return
        self.validator.step(message)
        self._maybe_propose_early()
        if self.stashed:
            self._redeliver()
        if self.pending_commit is not None:
            self._retry_commit()

    def _model_request(self, sender: str, body: bytes) -> None:
        r, params_hash = wire.split_round(body, "model request")
        if r != self.state.round or params_hash != self.state.params_hash:
            self.drop("model request for a model this validator does not hold")
            return
        params = encode_pytree(self.state.params, self.ctx.learner.spec)
        self.transport.send(sender, wire.encode_model(r, params_hash, params))

    # -- gradients a validator missed --------------------------------------------------------

    def _fetched(self, worker: int):
        """``Validator``'s fetch hook: a gradient fetched from a peer, or None (then asked for)."""
        g = self.fetched[self.state.round].get(worker)
        if g is None:
            self.missing.add(worker)
        return g

    def _validate(self, value: bytes) -> bool:
        """The replica's application check; a proposal it cannot accept *yet* (for the next
        round, or short of a gradient or a report) is kept and delivered again later."""
        ok = self.validator.validate(value)
        if not ok and self.current_pbft is not None and self.current_pbft not in self.stashed:
            self.stashed.append(self.current_pbft)
        return ok

    def _redeliver(self) -> None:
        """Deliver the kept consensus messages again (something they waited for arrived)."""
        while self.stashed:
            src, data = self.stashed.popleft()
            self.current_pbft = (src, data)
            try:
                self._apply(step(self.replica, self.pstate, Deliver(src, data)))
            finally:
                self.current_pbft = None
            if (src, data) in self.stashed:
                break  # still not acceptable: the rest stays kept too

    def _fetch_missing(self) -> None:
        if not self.missing:
            return
        r = self.state.round
        # Ask for every gradient this validator lacks, not only the first one a derivation
        # missed: a validator that was down misses them all.
        self.missing |= self._wanted() - self.requested.get(r, set())
        self.requested.setdefault(r, set()).update(self.missing)
        holders = self._holders()
        for w in sorted(self.missing):
            # One peer at a time, one whose signed report accepted the gradient (it holds
            # it), the next one on each retry: asking every peer made a validator catching
            # up on a 1000-node run receive each gradient 6 times (29,399 dropped answers).
            peers = holders.get(w) or [j for j in range(self.n) if j != self.index]
            attempt = self.fetch_attempts.get(w, 0)
            self.fetch_attempts[w] = attempt + 1
            self.awaited.add(w)
            j = peers[(w + attempt) % len(peers)]  # spread over the holders
            request = wire.encode(wire.GRADIENT_REQUEST, wire.round_body(r, struct.pack(">I", w)))
            self.transport.send(f"validator/{j}", request)
        self.stats["gradient requests"] += len(self.missing)
        self.missing.clear()
        # Requests and answers can be lost: ask again while something still waits.
        self._set_timer("fetch", FETCH_RETRY, self._retry_fetch)

    def _round_reports(self) -> list:
        """The signed reports of the current round this validator knows (its own included)."""
        reports = [m.report for m in self.validator.reports.values()]
        if self.pending_commit is not None:
            reports += RoundInputs.decode(decode_proposal(self.pending_commit.value)[1]).reports
        return reports

    def _holders(self) -> dict[int, list[int]]:
        """worker -> the peers whose report accepted its gradient (so they hold it), sorted."""
        out: dict[int, set[int]] = {}
        for rep in self._round_reports():
            if rep.validator == self.index or not 0 <= rep.validator < self.n:
                continue
            for c in rep.checks:
                if c.commitment and c.accepted:
                    out.setdefault(c.worker, set()).add(rep.validator)
        return {w: sorted(vs) for w, vs in out.items()}

    def _wanted(self) -> set[int]:
        """Gradients this validator lacks that some signed report accepted: only those can
        be needed (asking for every missing one, a killed host's 250 nodes included, flooded
        the peers with requests nobody could answer)."""
        reports = self._round_reports()
        accepted = {c.worker for rep in reports for c in rep.checks if c.commitment and c.accepted}
        return accepted - self._held()

    def _held(self) -> set[int]:
        """Workers whose gradient this round this validator has, or needs no longer."""
        r = self.state.round
        return set(self.validator.submissions) | set(self.fetched[r]) | set(self.state.banned)

    def _retry_fetch(self) -> None:
        if self.pending_commit is not None:
            self._maybe_transfer()  # more rounds may have committed meanwhile
        waiting_to_propose = self.reported and not self.validator.proposed
        if self.pending_commit is None and not self.stashed and not waiting_to_propose:
            return
        r = self.state.round
        self.requested.pop(r, None)
        # Ask again for what the reports say is needed, and for every gradient asked for
        # and not received (the one peer asked may be down or may have lost it; a
        # derivation may want a gradient no report this validator holds accepted).
        self.missing |= self._wanted() | (self.awaited - self._held())
        if self.pending_commit is not None:
            self._request_reports(r)
        if self.fetched[r]:
            # Once a retry interval, what arrived so far is tried (an asked-for gradient
            # that never comes may not be needed after all).
            self._after_fetch()
            if self.pending_commit is None and not self.stashed and self.validator.proposed:
                return  # it was enough
        if self.missing:
            self._fetch_missing()
        else:
            self._set_timer("fetch", FETCH_RETRY, self._retry_fetch)

    def _request_reports(self, r: int) -> None:
        # Asked again at most every FETCH_RETRY delays: a commit retried on each fetched
        # gradient asked again with every one (1,800 requests to each peer in one catch-up).
        now = time.monotonic()
        asked = self.reports_asked.get(r)
        if asked is not None and now - asked < 0.9 * FETCH_RETRY * self.scale:
            return
        self.reports_asked = {r: now}
        request = wire.encode(wire.REPORTS_REQUEST, wire.round_body(r, b""))
        for j in range(self.n):
            if j != self.index:
                self.transport.send(f"validator/{j}", request)

    def _signed_by_worker(self, r: int, sub) -> bool:
        rules = self.ctx.rules
        if not isinstance(sub.worker, int) or not 0 <= sub.worker < self.W:
            return False
        digest = flat_digest(self.ctx.learner.header, np.asarray(sub.gradient, np.float32))
        if digest != sub.commitment or sub.public_key != rules.worker_keys[sub.worker]:
            return False
        message = worker_message(rules.chain_id, r, sub.worker, sub.commitment)
        return rules.signatures.verify(sub.public_key, message, sub.signature)

    def _gradient_request(self, sender: str, body: bytes) -> None:
        r, payload = wire.split_round(body, "gradient request")
        if _validator_index(sender) is None or len(payload) != 4:
            self.drop("gradient request from a non-validator or malformed")
            return
        w = struct.unpack(">I", payload)[0]
        held = self.history.get(r)
        if held is not None:
            sub = held[0].get(w)
        else:
            sub = self.validator.submissions.get(w) if r == self.state.round else None
        if sub is None:
            self.drop("gradient request for a submission this validator does not hold")
            return
        self.transport.send(
            sender, wire.encode(wire.GRADIENT, wire.round_body(r, encode_submission(sub)))
        )

    def _gradient(self, sender: str, body: bytes) -> None:
        r, payload = wire.split_round(body, "gradient")
        sub = decode_submission(payload)
        if r != self.state.round or _validator_index(sender) is None:
            self.drop("gradient for another round or from a non-validator")
            return
        if sub.worker in self.fetched[r] or sub.worker in self.validator.submissions:
            return
        # Keep it only if its worker signed it for this round: the signed commitment binds
        # the bytes (a relaying peer cannot change them; new_model checks the commitment
        # against the one the reports accepted).
        if not self._signed_by_worker(r, sub):
            self.drop("fetched gradient its worker did not sign for this round")
            return
        self.fetched[r][sub.worker] = sub.gradient
        self.fetched_subs.setdefault(r, {})[sub.worker] = sub
        self.stats["gradients fetched"] += 1
        self.awaited.discard(sub.worker)
        if any(w not in self.validator.submissions for w in self.awaited):
            # More asked-for gradients are on their way: derive once they are all here (or
            # at the next retry), not once per arrival. Deriving the round again on every
            # fetched gradient made a validator catching up on a 1000-node round derive it
            # ~1000 times, about 2 minutes a round.
            return
        self._after_fetch()

    def _after_fetch(self) -> None:
        """Try again what waited for fetched gradients: kept messages, the commit, the proposal."""
        self.validator.memo.clear()  # its answers assumed the gradient was missing
        self._redeliver()
        self._retry_commit()
        if self.reported and not self.validator.proposed:
            self.propose()
        self._fetch_missing()

    def _retry_commit(self) -> None:
        if self.pending_commit is not None:
            self.queue.appendleft(self.pending_commit)
            self.pending_commit = None
            self.validator.memo.clear()
            self._drain()

    def _reports_request(self, sender: str, body: bytes) -> None:
        r, _ = wire.split_round(body, "reports request")
        if _validator_index(sender) is None:  # a host could make it send reports for ever
            self.drop("reports request from a non-validator")
            return
        held = self.history.get(r)
        reports = (
            held[1]
            if held is not None
            else (self.validator.reports if r == self.state.round else {})
        )
        for message in reports.values():
            self.transport.send(sender, wire.encode(wire.REPORT, message.encode()))

    # -- PBFT ----------------------------------------------------------------------------------

    def _apply(self, result) -> None:
        old = self.pstate
        self.pstate = result.state
        if old is None or _durable_changed(old, result.state):
            self.votelog.save(durable_state(result.state))  # durable before anything is sent
        for drop in result.drops:
            self.drop(f"pbft: {drop.reason}")
        self.evidence.extend(result.evidence)
        sends = result.sends
        if self.strategy is not None:
            # Strategies rewrite single messages: unbundle what the honest logic bundled.
            sends = [Send(s.dest, p) for s in sends for p in bundle_parts(s.data)]
            sends = self.strategy.outgoing(self.byzantine_view, sends, self.byzantine_view)
        self._send_pbft(sends)
        if self.strategy is None or self.strategy.runs_timers:
            for t in result.timers:
                self.later(t.delay, self._timer, t.name, t.token)
        self.queue.extend(result.decisions)
        if result.decisions and self.pending_commit is not None:
            # Stuck on a round while more commit: far enough behind now to adopt a state?
            # (Not left to the fetch retry: every message that asks for a gradient again
            # postpones that timer.)
            self._maybe_transfer()
        self._drain()

    def _send_pbft(self, sends) -> None:
        for s in sends:
            data = wire.encode(wire.PBFT, s.data)
            targets = range(self.n) if s.dest is None else (s.dest,)
            for j in targets:
                if j != self.index:
                    self.transport.send(f"validator/{j}", data)

    def _act(self) -> None:
        """A Byzantine strategy's unprompted act (spam, replays, forgeries), once a delay."""
        if self.closed:
            return
        view = self.byzantine_view
        sends = self.strategy.act(view, view)
        self.stats["byzantine acts"] += 1
        self.stats["byzantine messages sent"] += len(sends)
        self._send_pbft(sends)
        self.later(ACT_EVERY, self._act)

    def _timer(self, name: str, token: int) -> None:
        self._apply(step(self.replica, self.pstate, TimerExpired(name, token)))

    def progress(self) -> dict:
        p = self.pstate
        return {
            "round": None if self.state is None else self.state.round,
            "app_seq": self.app_seq,
            "view": None if p is None else p.view,
            "last_executed": None if p is None else p.last_executed,
            "pending_requests": None if p is None else len(p.pending),
            "queued_decisions": len(self.queue),
            "waiting_to_commit": None if self.pending_commit is None else self.pending_commit.seq,
            "submissions": len(self.validator.submissions),
            "reports": sorted(self.validator.reports),
            "reported": self.reported,
            "proposed": self.validator.proposed,
            "stashed": len(self.stashed),
            "closed": self.closed,
        }

    def _drain(self) -> None:
        """Apply decided rounds in order; stop at one that waits for a gradient or a report."""
        while self.queue and self.pending_commit is None and not self.closed:
            decision = self.queue.popleft()
            if decision.value is None or decision.seq <= self.app_seq:
                continue  # a null request after a view change, or a round already written
            record = RoundRecord.decode(decode_proposal(decision.value)[0])
            if record.round != self.state.round:
                self.stats["decision for another round"] += 1
                log.warning(
                    "%s: decided round %d in round %d", self.me, record.round, self.state.round
                )
                continue
            self._commit(decision)

    def _commit(self, decision) -> None:
        state = self.state
        try:
            outcome, inputs, proofs = self.validator.outcome_of(decision.value)
        except InputsError:
            # Committed by a quorum, but this validator lacks an accepted gradient or a cited
            # proof (it missed the round): fetch them from the peers, then commit; or, far
            # behind, adopt the certified state of a later checkpoint round.
            self.pending_commit = decision
            self._maybe_transfer()
            self._request_reports(state.round)
            self._fetch_missing()
            self._set_timer("fetch", FETCH_RETRY, self._retry_fetch)
            return
        self.app_seq = decision.seq
        self.history[state.round] = (dict(self.validator.submissions), dict(self.validator.reports))
        for w, sub in self.fetched_subs.get(state.round, {}).items():
            self.history[state.round][0].setdefault(w, sub)
        while len(self.history) > self.history_rounds:
            self.history.popitem(last=False)
        self.enter_round(self._write_round(decision, outcome, inputs, proofs, state))

    def _qc_of(self, decision):
        cert = self.pstate.ledger[decision.seq]
        if cert.qc is not None:
            return cert.qc
        return aggregate_votes(self.ctx.validator_set, dict(cert.votes))

    def _write_round(self, decision, outcome, inputs, proofs, state, *, qc=None, adopted=None):
        """Write a committed round to the transcript and the metrics; the state after it.

        ``adopted``: for a round adopted by state transfer (its ``outcome`` has no model),
        the checkpoint bytes of the state after it when that is a checkpoint round (or the
        run's last), else None."""
        writer, config = self.writer, self.ctx.config
        qc = self._qc_of(decision) if qc is None else qc
        view = self.pstate.ledger[decision.seq].view
        append_round(writer, outcome, inputs, proofs, view, decision.seq, qc, state)
        if outcome.judgement.cited:  # what a peer that falls behind may ask for
            self.ckpt_refs[state.round] = hashlib.sha256(checkpoint_bytes(state)).digest()
            self.proof_records[state.round] = [
                encode_fraud_record(prover, proofs[digest])
                for prover, digest in outcome.judgement.cited
            ]
        new_state = advance(state, outcome, qc.signer_indices())
        r = state.round
        if adopted is not None:
            loaded = decode_pytree(adopted, self._checkpoint_like())
            new_state = dataclasses.replace(
                new_state, params=loaded["params"], opt_state=loaded["opt_state"]
            )
        if (r + 1) % config.checkpoint_every == 0:
            self._append_checkpoint(r + 1, adopted or checkpoint_bytes(new_state))
        facts = round_facts(outcome, view)
        tally = self.tally
        tally["rejections"].update(facts["rejected_by_category"])
        tally["fraud_proofs"] += facts["fraud_proofs"]
        tally["false_fraud_proofs"] += facts["false_fraud_proofs"]
        tally["max_view"] = max(tally["max_view"], view)
        for v, fault in facts["slashed_validators"]:
            tally["slashed"].setdefault(str(v), []).append(fault)
        row = {
            "round": r + 1,
            "params_hash": new_state.params_hash.hex(),
            **facts,
            "caught": len(new_state.banned),
            "seq": decision.seq,
            "round_wall_seconds": time.perf_counter() - self.round_started,
            "wall_seconds": time.perf_counter() - self.run_started,
        }
        if self.transfer is not None:
            row["state_transfer"] = True  # adopted, not re-derived: no gradient was seen
        evaluate = (r + 1) % config.eval_every == 0 or r + 1 == config.rounds
        if evaluate and new_state.params is not None:
            data = self.ctx.data
            row["pot_test_accuracy"] = float(
                self.ctx.learner.accuracy(new_state.params, data.x_test, data.y_test)
            )
        self.metrics.write(row)
        self.stats["rounds committed"] += 1
        return new_state

    def _append_checkpoint(self, round_: int, data: bytes) -> None:
        _, digest = self.writer.append_checkpoint(data)
        self.ckpt_refs[round_] = digest

    def _checkpoint_like(self) -> dict:
        state0 = self.ctx.state0
        return {"opt_state": state0.opt_state, "params": state0.params}

    def _index(self, records) -> None:
        """What this validator's transcript can give a peer that falls behind: the round of
        each stored checkpoint (the state before that round) and each round's proofs."""
        rounds = 0
        for rec in records:
            if rec.kind == RecordKind.CHECKPOINT:
                self.ckpt_refs[rounds] = decode_checkpoint_ref(rec.payload)[0]
            elif rec.kind == RecordKind.FRAUD_PROOF:
                self.proof_records.setdefault(rounds, []).append(rec.payload)
            elif rec.kind == RecordKind.LEDGER:
                rounds += 1

    # -- state transfer (deploy.transfer) ------------------------------------------------------

    def _decided(self) -> list:
        """The committed decisions this validator has not written yet, in order."""
        pending = [] if self.pending_commit is None else [self.pending_commit]
        return [
            d for d in pending + list(self.queue) if d.value is not None and d.seq > self.app_seq
        ]

    def _maybe_transfer(self) -> None:
        """Far behind (or behind further than its peers keep gradients), with the committed
        values of the rounds up to a checkpoint round at hand: adopt that round's state."""
        if self.transfer is not None or self.transfer_failed or self.closed:
            return
        config, a = self.ctx.config, self.state.round
        decided = self._decided()
        top = a + len(decided)
        if top - a < min(self.transfer_after, self.history_rounds):
            return
        targets = [
            k
            for k in range(a + 1, top + 1)
            if k % config.checkpoint_every == 0 or k == config.rounds
        ]
        if not targets:
            return  # no checkpoint round yet: re-derive meanwhile, or wait for one
        try:
            self.transfer = StateTransfer(
                a,
                max(targets),
                decided,
                checkpoint_every=config.checkpoint_every,
                f=self.ctx.validator_set.f,
                like=self._checkpoint_like(),
                spec=self.ctx.learner.spec,
            )
        except (TransferError, MessageError, RecordError) as err:
            self.stats[f"state transfer refused: {err}"] += 1
            log.error("%s: cannot transfer state: %s", self.me, err)
            return
        self.stats["state transfers begun"] += 1
        log.warning(
            "%s: %d rounds behind; adopting round %d's state", self.me, top - a, max(targets)
        )
        self._ask_state()

    def _ask_state(self) -> None:
        """Ask for the next rounds' checkpoints and proofs: first from f + 1 peers (f + 1
        identical copies are needed), on every retry from each peer that has not answered."""
        t = self.transfer
        peers = [(self.index + k) % self.n for k in range(1, self.n)]
        batch = t.wanted()[:STATE_BATCH]
        t.asked = set(batch)
        t.attempt += 1
        for r in batch:
            ask = peers[: t.f + 1] if t.attempt == 1 else peers
            request = wire.encode(wire.STATE_REQUEST, wire.round_body(r, b""))
            for j in ask:
                if j not in t.offers.get(r, {}):
                    self.transport.send(f"validator/{j}", request)
                    self.stats["state requests"] += 1
        self._set_timer("transfer", FETCH_RETRY, self._retry_transfer)

    def _retry_transfer(self) -> None:
        if self.transfer is not None and not self.closed:
            self._ask_state()

    def _state_request(self, sender: str, body: bytes) -> None:
        r, _ = wire.split_round(body, "state request")
        if _validator_index(sender) is None:
            self.drop("state request from a non-validator")
            return
        digest = self.ckpt_refs.get(r)
        checkpoint = b""
        if digest is not None:
            store = CheckpointStore(checkpoint_directory(self.data_dir / TRANSCRIPT_NAME))
            try:
                checkpoint = store.get(digest)
            except TranscriptError as err:  # its own store lost a file: say so, keep serving
                log.error("%s: cannot serve round %d's checkpoint: %s", self.me, r, err)
                self.drop("state request for a checkpoint missing from this validator's store")
                return
        proofs = self.proof_records.get(r, [])
        if not checkpoint and not proofs:
            self.drop("state request for a round this validator keeps no checkpoint of")
            return
        self.transport.send(sender, wire.encode_state(r, checkpoint, proofs))

    def _state(self, sender: str, body: bytes) -> None:
        src = _validator_index(sender)
        r, checkpoint, proofs = wire.decode_state(body)
        if src is None or self.transfer is None:
            self.drop("state from a non-validator or that nobody asked for")
            return
        for reason in self.transfer.offer(src, r, checkpoint, proofs):
            self.drop(reason)
        if self.transfer.complete():
            self._adopt()
        elif not self.transfer.asked & set(self.transfer.wanted()):
            self._ask_state()  # this batch is here: the next one

    def _adopt(self) -> None:
        """Write the adopted rounds (all derived first: a failure writes nothing) and go on
        from the target round's state."""
        t = self.transfer
        if self.state.round >= t.target:  # it re-derived its way there meanwhile
            self.transfer = None
            return
        try:
            derived = t.derive(self.ctx.rules, self.state, self._qc_of)
        except TransferError as err:
            # Certified rounds that do not follow from this validator's own state: its state
            # or the certificates are wrong, and no peer can fix that. Say so and stop trying.
            self.stats[f"state transfer failed: {err}"] += 1
            log.error("%s: state transfer failed: %s", self.me, err)
            self.transfer, self.transfer_failed = None, True
            return
        state = self.state
        for r, outcome, proofs, judged, qc in derived:
            d = t.rounds[r].decision
            due = (r + 1) % self.ctx.config.checkpoint_every == 0 or r + 1 == t.target
            adopted = t.checkpoints[r + 1] if due else None
            state = self._write_round(
                d, outcome, t.rounds[r].inputs, proofs, judged, qc=qc, adopted=adopted
            )
            self.app_seq = d.seq
        self.stats["state transfers"] += 1
        self.stats["rounds adopted by state transfer"] += len(derived)
        log.warning("%s: adopted rounds %d..%d", self.me, derived[0][0], t.target - 1)
        self.transfer = None
        self.pending_commit = None
        timer = self.timers.pop("transfer", None)
        if timer is not None:
            timer.cancel()
        self.enter_round(state)
        self._drain()

    # -- the end of the run --------------------------------------------------------------------

    def _closing(self) -> Closing:
        return Closing(
            chain_id=self.ctx.chain_id,
            genesis=self.ctx.genesis_hash,
            rounds=self.state.round,
            final_params_hash=self.state.params_hash,
            ledger_digest=self.state.ledger.ledger_digest(),
        )

    def close_run(self) -> None:
        signature = sign_vote(self.sk, self._closing().vote_message())
        self.closing_votes[self.index] = signature
        data = wire.encode_closing_vote(self.index, signature)
        for j in range(self.n):
            if j != self.index:
                self.transport.send(f"validator/{j}", data)
        self._maybe_close()

    def _closing_vote(self, sender: str, body: bytes) -> None:
        validator, signature = wire.decode_closing_vote(body)
        if sender != f"validator/{validator}":
            self.drop("closing vote relayed by another validator")
            return
        new = validator not in self.closing_votes
        self.closing_votes.setdefault(validator, signature)
        mine = self.closing_votes.get(self.index)
        if new and mine is not None:
            # A peer that was down when we voted (or restarted) needs our vote to close; a
            # vote it already had is not answered, so two validators exchange one each.
            self.transport.send(sender, wire.encode_closing_vote(self.index, mine))
        self._maybe_close()

    def _maybe_close(self) -> None:
        if self.closed or self.state.round != self.ctx.config.rounds:
            return
        if len(self.closing_votes) < self.ctx.validator_set.quorum:
            return
        closing = self._closing()
        message = closing.vote_message()
        votes = dict(self.closing_votes)
        qc = aggregate_votes(self.ctx.validator_set, votes)
        if not verify_qc(self.ctx.validator_set, message, qc):
            # Some vote is for another statement or forged: keep only those that verify.
            scheme_ok = {
                i: s for i, s in votes.items() if _vote_ok(self.ctx.validator_set, i, message, s)
            }
            self.stats["dropped: closing vote that does not verify"] += len(votes) - len(scheme_ok)
            self.closing_votes = scheme_ok
            if len(scheme_ok) < self.ctx.validator_set.quorum:
                return
            qc = aggregate_votes(self.ctx.validator_set, scheme_ok)
        config = self.ctx.config
        if config.rounds % config.checkpoint_every:
            self._append_checkpoint(config.rounds, self._checkpoint_bytes(self.state))
        self.writer.append(RecordKind.CLOSING, encode_closing_record(closing, qc))
        self.writer.close()
        self.metrics.close()
        self.closed = True
        write_json(self.data_dir / "closed.json", self.summary())
        self.write_stats()
        if self.linger is not None:
            self.later(self.linger / self.scale, self.done.set)

    def summary(self) -> dict:
        """What this validator's transcript says, in the simulator's summary fields."""
        ctx, state, tally = self.ctx, self.state, self.tally
        ledger, config = state.ledger, ctx.config
        data = ctx.data
        caught = sorted(state.banned)
        return {
            "rounds_committed": state.round,
            "final_params_hash": state.params_hash.hex(),
            "pot_accuracy": float(ctx.learner.accuracy(state.params, data.x_test, data.y_test)),
            "cheaters_caught": caught,
            "fraud_proofs": tally["fraud_proofs"],
            "false_fraud_proofs": tally["false_fraud_proofs"],
            "rejected_gradients": sum(tally["rejections"].values()),
            "rejections_by_category": dict(sorted(tally["rejections"].items())),
            "slashed_validators": dict(sorted(tally["slashed"].items(), key=lambda kv: int(kv[0]))),
            "honest_workers_slashed": len(set(caught) - set(ctx.byzantine_workers)),
            "byzantine_workers": sorted(ctx.byzantine_workers),
            "max_view": tally["max_view"],
            "ledger_emitted": ledger.total_emitted,
            "ledger_burned": ledger.total_burned,
            "worker_rewards": sum(ledger.balance(f"worker:{i}") for i in range(config.workers)),
            "validator_rewards": sum(
                ledger.balance(f"validator:{i}") for i in range(config.validators)
            ),
            "seed": config.seed,
            "genesis": ctx.genesis_hash.hex(),
            "key_source": str(ctx.genesis.get("key_source", "")),
            "wall_seconds": time.perf_counter() - self.run_started,
        }

    def _checkpoint_bytes(self, state) -> bytes:
        return checkpoint_bytes(state)


def _last_checkpoint_round(records) -> int:
    """The round whose input model the transcript's last stored checkpoint is (0: genesis)."""
    rounds, last, previous = 0, 0, None
    for rec in records:
        if rec.kind == RecordKind.LEDGER:
            rounds += 1
        elif rec.kind == RecordKind.CHECKPOINT and previous == RecordKind.LEDGER:
            last = rounds  # the output checkpoint after round rounds - 1
        previous = rec.kind
    return last


def _vote_ok(validator_set, i, message, signature) -> bool:
    try:
        qc = aggregate_votes(validator_set, {i: signature})
    except Exception:  # not a signature point at all
        return False
    return verify_qc(validator_set, message, qc, quorum=1)


def _only_role(strategy) -> bool:
    """Whether a Byzantine strategy changes only what its roles do, not PBFT messages."""
    honest = byzantine.Strategy()
    return (
        strategy.outgoing is honest.outgoing
        and strategy.incoming is honest.incoming
        and strategy.act is honest.act
    )


class _ByzantineView:
    """What a ``network.byzantine`` strategy reads of its node and of the cluster, here.

    A strategy takes ``(node, sends, cluster)``: of the node it reads ``identity``,
    ``replica`` and ``state``; of the cluster ``nodes`` (each peer's identity, and the
    strategy of the colluders, who share the run's config) and ``rng``, seeded from the
    run's seed and this validator's index so that a rerun misbehaves the same way.
    """

    def __init__(self, owner: ValidatorNode, config, strategy) -> None:
        self._owner = owner
        self.identity = owner.index
        self.strategy = strategy
        bad = set(config.byzantine_validator_ids)
        self.nodes = [
            SimpleNamespace(identity=j, strategy=strategy if j in bad else None)
            for j in range(config.validators)
        ]
        self.rng = random.Random(f"pot-jax/byzantine/{config.seed}/{owner.index}")

    @property
    def replica(self):
        return self._owner.replica

    @property
    def state(self):
        return self._owner.pstate


def _durable_changed(old, new) -> bool:
    from pot_jax.consensus.pbft.state import DURABLE_FIELDS

    return any(getattr(old, f) is not getattr(new, f) for f in DURABLE_FIELDS)


def _validator_index(sender: str) -> int | None:
    role, _, index = sender.partition("/")
    return int(index) if role == "validator" and index.isdigit() else None


def _jsonable(obj):
    """``obj`` with every mapping key a string (counters may be keyed by tuples)."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    return obj
