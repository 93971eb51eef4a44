"""Node processes' handling of bad input, without a network: forged, misrouted, malformed.

Each test feeds a node the message an adversary could send and checks that
it is dropped with a reason, that the node keeps working, and (canary) that
the honest version of the same message is taken.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os

import numpy as np
import pytest

from pot_jax.config import ProtocolConfig
from pot_jax.consensus.pbft import durable_state, initial_state
from pot_jax.consensus.pbft.state import Certified
from pot_jax.deploy import wire
from pot_jax.deploy.cluster import read_key_file
from pot_jax.deploy.context import ContextError, load_context
from pot_jax.deploy.node import Endpoints, NodeError, ValidatorNode
from pot_jax.deploy.store import MAGIC, VoteLog, VoteLogError, encode_record, read_records
from pot_jax.deploy.worker_host import WorkerHost
from pot_jax.learning.encoding import encode_pytree, flat_digest
from pot_jax.protocol.keys import KeyFileError, generate_keys, report_key, write_key_dir
from pot_jax.protocol.messages import decode_submission, encode_submission
from pot_jax.protocol.runner import ProtocolRun
from pot_jax.verification import Submission

TINY = {
    "dataset": "teacher",
    "workers": 4,
    "batch_size": 8,
    "hidden": (16,),
    "learning_rate": 0.5,
    "rounds": 3,
    "byzantine_fraction": 0.0,
    "progress": False,
}
ENDPOINTS = Endpoints(
    ("127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3", "127.0.0.1:4"),
    (("127.0.0.1:5", (0, 2)), ("127.0.0.1:6", (1, 3))),
)


class FakeTransport:
    def __init__(self):
        self.sent = []

    def send(self, peer, data):
        self.sent.append((peer, data))

    def discard(self, peer, stale):
        return 0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    base = tmp_path_factory.mktemp("genesis")
    keys = generate_keys(4, 4)
    write_key_dir(base / "keys", keys)
    config = ProtocolConfig(**TINY, run_dir=str(base / "run"), keys=str(base / "keys"))
    header = ProtocolRun(config).header()
    return header, keys, base / "keys"


def _validator(cluster, tmp_path, index=1):
    header, keys, _ = cluster
    ctx = load_context(header)
    node = ValidatorNode(ctx, index, keys.validator_secret_keys[index], ENDPOINTS, tmp_path / "v")
    node.loop = asyncio.new_event_loop()
    node.transport = FakeTransport()
    node.begin()
    return node, ctx, keys


def _submission(ctx, keys, worker, round_=0, gradient=None, sign=True):
    x, y = ctx.batches(round_, worker)
    g = (
        np.asarray(ctx.learner.worker_gradient(ctx.state0.params, x, y))
        if gradient is None
        else gradient
    )
    commitment = flat_digest(ctx.learner.header, g)
    from pot_jax.crypto.worker_signatures import worker_message

    sk, pk = ctx.rules.signatures.keygen(keys.worker_secret_seeds[worker])
    message = worker_message(ctx.chain_id, round_, worker, commitment)
    signature = ctx.rules.signatures.sign(sk, message) if sign else b"\0" * 64
    return Submission(worker, g, commitment, signature, pk)


def _wire_submission(sub, round_=0):
    return wire.encode(wire.SUBMISSION, wire.round_body(round_, encode_submission(sub)))


def test_a_submission_is_heard_only_on_its_own_nodes_stream(cluster, tmp_path):
    node, ctx, keys = _validator(cluster, tmp_path)
    sub = _submission(ctx, keys, worker=1)  # node 1 runs on host 1
    for sender in ("workers/0", "workers/1", "worker/0"):  # another host, its host, another node
        node.on_message(sender, _wire_submission(sub))
    assert 1 not in node.validator.submissions
    assert node.stats["dropped: submission for another training node than the stream's"] == 3
    node.on_message("worker/1", _wire_submission(sub))  # canary: its own stream is heard
    assert 1 in node.validator.submissions
    # Nothing but submissions on a node's stream: a model request there is dropped, unanswered.
    ask = wire.encode(wire.MODEL_REQUEST, wire.round_body(0, ctx.state0.params_hash))
    node.on_message("worker/1", ask)
    assert node.stats["dropped: model_request on a training node's stream"] == 1
    assert node.stats["handler error"] == 0


def test_malformed_and_misrouted_messages_are_dropped_with_a_reason(cluster, tmp_path):
    node, ctx, keys = _validator(cluster, tmp_path)
    node.on_message("validator/2", b"")
    node.on_message("validator/2", bytes([99]) + b"x")
    node.on_message("workers/0", wire.encode(wire.SUBMISSION, b"\0\0"))
    node.on_message("workers/0", wire.encode(wire.PBFT, b"anything"))
    node.on_message("workers/0", wire.encode(wire.REPORT, b"junk"))
    dropped = {k: v for k, v in node.stats.items() if k.startswith("dropped")}
    assert any("empty message" in k for k in dropped)
    assert any("unknown message kind" in k for k in dropped)
    assert any("malformed submission" in k for k in dropped)
    assert dropped["dropped: consensus message from a non-validator"] == 1
    assert any("malformed report" in k for k in dropped)
    node.on_message("worker/0", _wire_submission(_submission(ctx, keys, worker=0)))
    assert 0 in node.validator.submissions  # still working


def test_a_fetched_gradient_must_be_signed_by_its_worker_for_that_round(cluster, tmp_path):
    node, ctx, keys = _validator(cluster, tmp_path)
    forged = _submission(
        ctx, keys, worker=2, gradient=np.ones(ctx.learner.num_params, np.float32), sign=False
    )
    body = wire.round_body(0, encode_submission(forged))
    node.on_message("validator/3", wire.encode(wire.GRADIENT, body))
    assert 2 not in node.fetched[0]
    assert node.stats["dropped: fetched gradient its worker did not sign for this round"] == 1
    other_round = _submission(ctx, keys, worker=2, round_=1)  # signed, but for round 1
    node.on_message(
        "validator/3",
        wire.encode(wire.GRADIENT, wire.round_body(0, encode_submission(other_round))),
    )
    assert 2 not in node.fetched[0]
    honest = _submission(ctx, keys, worker=2)
    node.on_message(
        "validator/3", wire.encode(wire.GRADIENT, wire.round_body(0, encode_submission(honest)))
    )
    assert 2 in node.fetched[0]  # canary


def test_the_wrong_key_for_a_validator_is_refused(cluster, tmp_path):
    header, keys, _ = cluster
    ctx = load_context(header)
    with pytest.raises(NodeError, match="not validator 2"):
        ValidatorNode(ctx, 2, keys.validator_secret_keys[1], ENDPOINTS, tmp_path / "v")


def _host(cluster, tmp_path):
    header, keys, _ = cluster
    ctx = load_context(header)
    node_keys = {w: keys.worker_secret_seeds[w] for w in (0, 2)}
    host = WorkerHost(ctx, 0, node_keys, ENDPOINTS, tmp_path / "w")
    host.loop = asyncio.new_event_loop()
    host.transport = FakeTransport()
    host.links = {w: FakeTransport() for w in node_keys}  # each node's own streams
    return host, ctx, keys


def _announce(ctx, keys, validator, round_, params_hash, signer=None):
    a = wire.Announce(round_, params_hash, validator)
    sk, _ = report_key(keys.validator_secret_keys[validator if signer is None else signer])
    signature = ctx.rules.report_scheme.sign(sk, a.signing_message(ctx.chain_id, ctx.genesis_hash))
    return wire.encode_announce(wire.Announce(round_, params_hash, validator, signature))


def test_a_worker_host_trains_only_on_a_model_f_plus_1_validators_announced(cluster, tmp_path):
    host, ctx, keys = _host(cluster, tmp_path)
    fake = bytes(32)  # a model nobody but a liar announced
    host.on_message("validator/1", _announce(ctx, keys, 1, 1, fake))
    assert not host.transport.sent  # f = 1: one announcement is not enough
    forged = _announce(ctx, keys, 2, 1, fake, signer=1)  # validator 1 signs as 2
    host.on_message("validator/2", forged)
    assert host.stats["dropped: announce with a bad signature"] == 1
    assert not host.transport.sent
    host.on_message("validator/1", _announce(ctx, keys, 3, 1, fake))  # relayed under 1's name
    assert host.stats["dropped: announce from another validator than its signer"] == 1
    assert not host.transport.sent
    # f + 1 honest announcements of round 1's model: the host asks one of them for it...
    wanted = bytes.fromhex("11" * 32)
    host.on_message("validator/2", _announce(ctx, keys, 2, 1, wanted))
    host.on_message("validator/3", _announce(ctx, keys, 3, 1, wanted))
    requests = [(p, d) for p, d in host.transport.sent if d[0] == wire.MODEL_REQUEST]
    assert requests and requests[0][0] in ("validator/2", "validator/3")
    # ... and refuses bytes that do not hash to the announced hash.
    params = encode_pytree(ctx.state0.params, ctx.learner.spec)
    host.on_message(requests[0][0], wire.encode_model(1, wanted, params))
    assert host.stats["dropped: model bytes that do not hash to the announced hash"] == 1
    assert not any(d[0] == wire.SUBMISSION for _, d in host.transport.sent)
    # Canary: the genesis model, announced by f + 1, is trained on at once (it is known).
    for v in (2, 3):
        host.on_message(f"validator/{v}", _announce(ctx, keys, v, 2, ctx.state0.params_hash))
    assert not any(d[0] == wire.SUBMISSION for _, d in host.transport.sent)
    for w in (0, 2):  # each node on its own streams, to each of the 4 validators
        submissions = [d for _, d in host.links[w].sent if d[0] == wire.SUBMISSION]
        assert len(submissions) == 4
        assert {decode_submission(wire.split_round(d[1:], "")[1]).worker for d in submissions} == {
            w
        }


def test_vote_log_round_trips_and_refuses_a_tampered_file(cluster, tmp_path):
    node, _, _ = _validator(cluster, tmp_path)
    cert = Certified(2, b"d" * 32, b"value", votes={0: b"s" * 96, 3: b"t" * 96})
    state = dataclasses.replace(
        durable_state(initial_state(node.replica)),
        view=2,
        signed={("prepare", 2, 1): b"d" * 32, ("commit", 2, 1): b"d" * 32},
        prepared={1: cert},
        ledger={1: cert},
        last_executed=1,
        pending={b"p" * 32: b"request"},
        last_new_view=b"nv",
    )
    log = VoteLog(tmp_path / "votes.json")
    log.save(state)
    assert log.load() == state
    assert os.stat(log.path).st_mode & 0o077 == 0
    assert b"request" not in log.path.read_bytes()  # values live beside it, written once
    (value,) = [p for p in log.values.iterdir() if p.read_bytes() == b"request"]
    value.write_bytes(b"forged")
    with pytest.raises(VoteLogError, match="does not hash to its name"):
        VoteLog(log.path).load()
    value.write_bytes(b"request")
    (payload,), _ = read_records(log.path.read_bytes())
    raw = json.loads(payload)
    raw["state"]["signed"] = [["prepare", "x", 1, "zz"]]
    log.path.write_bytes(MAGIC + encode_record(json.dumps(raw).encode()))
    with pytest.raises(VoteLogError, match="votes.json: the state at record 0 is malformed"):
        log.load()


def test_a_tampered_genesis_is_refused(cluster):
    header, _, _ = cluster
    tampered = json.loads(json.dumps(header))
    tampered["genesis"]["config"]["learning_rate"] = 5.0
    with pytest.raises(ContextError, match="does not hash"):
        load_context(tampered)
    forged_qc = json.loads(json.dumps(header))
    forged_qc["genesis_qc"] = header["genesis_qc"][:-4] + "0000"
    with pytest.raises(ContextError):
        load_context(forged_qc)


def test_key_files_are_checked(cluster, tmp_path):
    _, _, keys_dir = cluster
    path = keys_dir / "validator-00001.key"
    role, index, _ = read_key_file(path)
    assert (role, index) == ("validator", 1)
    loose = tmp_path / "loose.key"
    loose.write_bytes(path.read_bytes())
    os.chmod(loose, 0o644)
    with pytest.raises(KeyFileError, match="mode 600"):
        read_key_file(loose)


def test_a_restarted_validator_drops_a_round_torn_between_its_ledger_and_checkpoint(
    cluster, tmp_path
):
    """The crash hit after round 2's LEDGER record but before its checkpoint: round 2 is
    torn; the validator resumes after round 1 and commits round 2 again from consensus."""
    import shutil

    from pot_jax.protocol.runner import run_protocol
    from pot_jax.protocol.transcript import (
        TRANSCRIPT_NAME,
        RecordKind,
        TranscriptReader,
        decode_qc_record,
    )

    _, keys, keys_dir = cluster
    sim = tmp_path / "sim"
    config = ProtocolConfig(**{**TINY, "checkpoint_every": 3}, run_dir=str(sim), keys=str(keys_dir))
    run_protocol(config)
    data = tmp_path / "v"
    shutil.copytree(sim, data)
    (data / "summary.json").unlink()
    records = list(TranscriptReader(data / TRANSCRIPT_NAME))
    ledgers = [r for r in records if r.kind == RecordKind.LEDGER]
    qcs = [r for r in records if r.kind == RecordKind.QC]
    with open(data / TRANSCRIPT_NAME, "r+b") as f:
        f.truncate(ledgers[2].end)  # round 2's checkpoint and the closing never written
    ctx = load_context(json.loads((sim / "config.json").read_text()))  # that run's header
    node = ValidatorNode(ctx, 1, keys.validator_secret_keys[1], ENDPOINTS, data)
    node.loop = asyncio.new_event_loop()
    node.transport = FakeTransport()
    node.begin()
    assert node.state.round == 2
    assert node.app_seq == decode_qc_record(qcs[1].payload)[1]
    kept = list(TranscriptReader(data / TRANSCRIPT_NAME))
    assert kept[-1].offset == ledgers[1].offset  # round 2's records are gone
    node.writer.close()


def test_a_validator_missing_an_accepted_gradient_asks_its_peers_before_proposing(
    cluster, tmp_path
):
    """Worker 0's submission reached every validator but this one before its deadline; the
    others' reports accept it, so this validator cannot derive the round without it."""
    from pot_jax.protocol.roles import ReportDue, Validator

    node, ctx, keys = _validator(cluster, tmp_path)
    for w in (1, 2, 3):  # what reached validator 1 in time
        node.on_message(f"worker/{w}", _wire_submission(_submission(ctx, keys, w)))
    node.report()
    for v in (2, 3):  # what reached its peers: everything
        peer = Validator(
            v,
            keys.validator_secret_keys[v],
            report_key(keys.validator_secret_keys[v])[0],
            ctx.rules,
        )
        peer.start(ctx.state0)
        for w in range(4):
            peer.step(_submission(ctx, keys, w))
        (message,) = peer.step(ReportDue())
        node.on_message(f"validator/{v}", wire.encode(wire.REPORT, message.encode()))
    node.propose()  # the report deadline passed (validator 0 never reported)
    assert not node.validator.proposed
    asked = {
        wire.split_round(d[1:], "")[1]
        for p, d in node.transport.sent
        if d[0] == wire.GRADIENT_REQUEST
    }
    assert (0).to_bytes(4, "big") in asked  # worker 0's gradient, from the peers

    def asked_for_0():
        return [
            p
            for p, d in node.transport.sent
            if d[0] == wire.GRADIENT_REQUEST and d[-4:] == (0).to_bytes(4, "big")
        ]

    # ... from one peer whose report accepted it (2 or 3 hold it; 0 never reported), and on
    # a retry from the next one: not from every peer each time.
    assert asked_for_0() == ["validator/2"]
    node._retry_fetch()
    assert asked_for_0() == ["validator/2", "validator/3"]
    # The answer, signed by worker 0, lets it propose.
    honest = _submission(ctx, keys, worker=0)
    node.on_message(
        "validator/2", wire.encode(wire.GRADIENT, wire.round_body(0, encode_submission(honest)))
    )
    assert node.validator.proposed


def test_only_validators_get_a_rounds_reports_or_gradients_on_request(cluster, tmp_path):
    node, ctx, keys = _validator(cluster, tmp_path)
    node.on_message("worker/1", _wire_submission(_submission(ctx, keys, 1)))
    node.report()
    node.transport.sent.clear()
    node.on_message("workers/0", wire.encode(wire.REPORTS_REQUEST, wire.round_body(0, b"")))
    node.on_message(
        "workers/0", wire.encode(wire.GRADIENT_REQUEST, wire.round_body(0, (1).to_bytes(4, "big")))
    )
    assert not node.transport.sent
    assert node.stats["dropped: reports request from a non-validator"] == 1
    node.on_message("validator/2", wire.encode(wire.REPORTS_REQUEST, wire.round_body(0, b"")))
    node.on_message(
        "validator/2",
        wire.encode(wire.GRADIENT_REQUEST, wire.round_body(0, (1).to_bytes(4, "big"))),
    )
    kinds = sorted(d[0] for p, d in node.transport.sent if p == "validator/2")
    assert kinds == [wire.REPORT, wire.GRADIENT]  # canary: a validator is answered


def test_requests_past_a_peers_budget_are_dropped_and_the_budget_refills(
    cluster, tmp_path, monkeypatch
):
    """A model reply is the whole model for a 40-byte request: one peer gets a bounded number
    per round. Reports and gradients are asked for again while a peer lacks them, for as long
    as that takes: their budget refills at the retry rate."""
    import time

    from pot_jax.deploy.node import FETCH_RETRY, MODEL_REQUESTS_PER_ROUND, REQUEST_BURST

    clock = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    node, ctx, keys = _validator(cluster, tmp_path)
    node.on_message("worker/1", _wire_submission(_submission(ctx, keys, 1)))
    node.report()
    node.transport.sent.clear()
    ask = wire.encode(wire.MODEL_REQUEST, wire.round_body(0, ctx.state0.params_hash))
    for _ in range(MODEL_REQUESTS_PER_ROUND + 3):
        node.on_message("workers/0", ask)
    models = [d for p, d in node.transport.sent if d[0] == wire.MODEL]
    assert len(models) == MODEL_REQUESTS_PER_ROUND  # canary: the first ones are answered
    assert sum(v for k, v in node.stats.items() if "rate limit: model_request" in k) == 3
    node.on_message("workers/1", ask)  # another peer has its own budget
    assert len([d for p, d in node.transport.sent if p == "workers/1"]) == 1
    far = wire.encode(wire.MODEL_REQUEST, wire.round_body(10**9, ctx.state0.params_hash))
    node.on_message("workers/0", far)
    assert node.stats["dropped: model_request for a round this validator does not keep"] == 1
    assert all(r == 0 for _, r in node.model_requests)  # a far round leaves no counter behind

    reports = wire.encode(wire.REPORTS_REQUEST, wire.round_body(0, b""))

    def answered():
        n = len([d for p, d in node.transport.sent if p == "validator/2"])
        node.transport.sent.clear()
        return n

    for _ in range(REQUEST_BURST + 5):
        node.on_message("validator/2", reports)
    assert answered() == REQUEST_BURST  # one report held, sent once per answered request
    clock[0] += FETCH_RETRY * node.scale  # one retry interval later: one more is answered
    node.on_message("validator/2", reports)
    node.on_message("validator/2", reports)
    assert answered() == 1
    gradient = wire.encode(wire.GRADIENT_REQUEST, wire.round_body(0, (1).to_bytes(4, "big")))
    for _ in range(REQUEST_BURST * node.W + 1):
        node.on_message("validator/2", gradient)
    assert answered() == REQUEST_BURST * node.W


def test_a_validator_asks_for_a_rounds_reports_at_most_once_per_retry_interval(
    cluster, tmp_path, monkeypatch
):
    import time

    from pot_jax.deploy.node import FETCH_RETRY

    clock = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    node, _, _ = _validator(cluster, tmp_path)
    node.transport.sent.clear()
    for _ in range(5):  # e.g. a commit retried on each fetched gradient
        node._request_reports(0)
    asked = [p for p, d in node.transport.sent if d[0] == wire.REPORTS_REQUEST]
    assert sorted(asked) == ["validator/0", "validator/2", "validator/3"]  # once each
    clock[0] += FETCH_RETRY * node.scale
    node._request_reports(0)
    assert len([p for p, d in node.transport.sent if d[0] == wire.REPORTS_REQUEST]) == 6


def _closed_run(cluster, tmp_path, checkpoint_every):
    import shutil

    from pot_jax.protocol.runner import run_protocol

    _, keys, keys_dir = cluster
    sim = tmp_path / "sim"
    config = ProtocolConfig(
        **{**TINY, "checkpoint_every": checkpoint_every}, run_dir=str(sim), keys=str(keys_dir)
    )
    run_protocol(config)
    data = tmp_path / "v"
    shutil.copytree(sim, data)
    ctx = load_context(json.loads((sim / "config.json").read_text()))
    return ctx, keys, data


def _restarted(ctx, keys, data, index=1):
    node = ValidatorNode(ctx, index, keys.validator_secret_keys[index], ENDPOINTS, data)
    node.loop = asyncio.new_event_loop()
    node.transport = FakeTransport()
    node.begin()
    return node


def test_a_restarted_validator_re_executes_only_the_rounds_since_its_last_checkpoint(
    cluster, tmp_path
):
    from pot_jax.protocol.audit import Auditor
    from pot_jax.protocol.transcript import TRANSCRIPT_NAME, RecordKind, TranscriptReader

    ctx, keys, data = _closed_run(cluster, tmp_path, checkpoint_every=2)
    (data / "summary.json").unlink()
    records = list(TranscriptReader(data / TRANSCRIPT_NAME))
    ledgers = [r for r in records if r.kind == RecordKind.LEDGER]
    with open(data / TRANSCRIPT_NAME, "r+b") as f:
        f.truncate(ledgers[2].end)  # crashed before closing; last checkpoint: after round 1
    node = _restarted(ctx, keys, data)
    assert node.state.round == 3 and not node.closed
    assert node.stats["rounds re-executed at restart"] == 1  # round 2 only, not 0 and 1
    full = Auditor(tmp_path / "sim", recompute=1.0)  # canary: the whole run re-executed
    assert full.run().ok and full.state.params_hash == node.state.params_hash
    node.writer.close()


def test_a_validator_restarted_after_closing_serves_its_peers_and_writes_nothing(cluster, tmp_path):
    """Its transcript passed the audit already: it is kept byte for byte, and the validator
    sends its closing vote again and answers a peer's vote with its own (a peer that was
    down when the votes went round needs a quorum of them to close)."""
    from pot_jax.protocol.transcript import TRANSCRIPT_NAME

    ctx, keys, data = _closed_run(cluster, tmp_path, checkpoint_every=2)
    before = (data / TRANSCRIPT_NAME).read_bytes()
    node = _restarted(ctx, keys, data)
    assert node.closed and node.state.round == TINY["rounds"]
    assert node.stats["rounds re-executed at restart"] == 0  # the run ends in a checkpoint
    votes = [(p, d) for p, d in node.transport.sent if d[0] == wire.CLOSING_VOTE]
    assert sorted(p for p, _ in votes) == ["validator/0", "validator/2", "validator/3"]
    node.transport.sent.clear()
    peer_vote = [d for p, d in _restarted(ctx, keys, data, index=2).transport.sent if d[0] == wire.CLOSING_VOTE][0]  # fmt: skip
    node.on_message("validator/2", peer_vote)
    node.on_message("validator/2", peer_vote)  # a vote it already has is not answered again
    assert [p for p, d in node.transport.sent if d[0] == wire.CLOSING_VOTE] == ["validator/2"]
    assert (data / TRANSCRIPT_NAME).read_bytes() == before


# A node process's XLA client, made with one intra-op thread (``one_compute_thread``): its
# thread count, where its threads may run, and what it computes, printed as JSON.
_ONE_THREAD_PROBE = """
import hashlib, json, os, sys
from pot_jax.deploy.node import one_compute_thread
if sys.argv[1] == "one":
    one_compute_thread()
import numpy as np
from pot_jax.config import ProtocolConfig
from pot_jax.learning.aggregation import RULES
from pot_jax.protocol.setup import Batches
from pot_jax.learning.assignment import BatchAssigner
from pot_jax.learning.trainer import build_learner, load_for, worker_shards
from pot_jax.protocol.roles import worker_program
config = ProtocolConfig(dataset="mnist1d", hidden=(256, 256), workers=16, batch_size=8,
                        progress=False)
data = load_for(config)
learner, params = build_learner(config, data)
batches = Batches(BatchAssigner(0, worker_shards(config, data), 8), data)
h = hashlib.sha256()
opt_state = learner.optimizer.init(params)
for r in range(3):
    grads_WxP = worker_program(learner, params, batches.of_round(r), 16, range(16), "bitwise")
    h.update(grads_WxP.tobytes())
    for rule in ("mean", "trimmed_mean:trim=2", "multi_krum:f=3,m=8", "geometric_median"):
        agg_P = RULES.build(rule, flag="--aggregation").aggregate(grads_WxP, np.ones(16, bool))
        h.update(np.asarray(agg_P).tobytes())
    params, opt_state = learner.apply_update(params, opt_state, agg_P)
tasks = os.listdir("/proc/self/task")
names = [open(f"/proc/self/task/{t}/comm").read().strip() for t in tasks]
print(json.dumps({
    "xla_threads": names.count("tf_XLAEigen"),
    "cpus": sorted(os.sched_getaffinity(0)),
    "thread_cpus": sorted({tuple(sorted(os.sched_getaffinity(int(t)))) for t in tasks}),
    "digest": h.hexdigest(),
}))
"""


def _probe(mode: str) -> dict:
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", _ONE_THREAD_PROBE, mode],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(
    not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2,
    reason="needs Linux and at least 2 CPUs to tell one XLA thread from several",
)
def test_one_compute_thread_gives_xla_one_thread_keeps_every_cpu_and_the_same_bits():
    """A node process's XLA client gets one intra-op thread, its threads may still run on
    every CPU, and the worker gradients, the aggregation rules and the update it computes
    have the bits of a default client's (the auditor and the simulator run default clients,
    and bitwise mode compares their recomputation with the nodes')."""
    one, default = _probe("one"), _probe("default")
    assert one["xla_threads"] == 1
    assert default["xla_threads"] > 1  # canary: the probe can see a pool of several
    assert one["thread_cpus"] == [one["cpus"]]  # JSON: one list per distinct CPU set
    assert one["digest"] == default["digest"]


def test_a_validators_pbft_timers_follow_its_request_timeout(cluster, tmp_path):
    """Node-local timing: the request and view-change timers, in delays; not in the genesis."""
    from pot_jax.deploy.cluster import _node_parser

    header, keys, _ = cluster
    ctx = load_context(header)
    node = ValidatorNode(
        ctx, 1, keys.validator_secret_keys[1], ENDPOINTS, tmp_path / "v", request_timeout=24.0
    )
    assert node.replica.config.request_timeout == 24.0
    assert node.replica.config.view_change_timeout == 24.0
    default = ValidatorNode(ctx, 2, keys.validator_secret_keys[2], ENDPOINTS, tmp_path / "w")
    assert default.replica.config.request_timeout == 8.0  # canary: the default is PBFT's
    base = ["--role", "validator", "--key", "k", "--genesis", "g", "--peers", "p"]
    base += ["--listen", "127.0.0.1:1", "--data-dir", "d"]
    assert _node_parser().parse_args([*base, "--request-timeout", "16"]).request_timeout == 16.0
    for bad in ("0", "-3", "nan", "soon"):
        with pytest.raises(SystemExit):
            _node_parser().parse_args([*base, "--request-timeout", bad])
