"""A crashed replica recovers everything (proofs/liveness.md, step 4).

An honest replica that crashes and restarts with its durable state must end
up holding every decision its peers hold, with the same digests, even when it
restarts after the last submission, so that no new traffic will ever reach
it: on restart it asks its peers for their status and the decisions it lacks
(state transfer), and adopts only certificates that verify.
"""

import dataclasses

import pytest

from pot_jax.consensus.messages import (
    CHECKPOINT,
    Cert,
    Decided,
    Fetch,
    decode_message,
    encode_message,
    value_digest,
)
from pot_jax.consensus.pbft import (
    ALL_TO_ALL,
    LINEAR,
    RECOVERY_TIMER,
    REQUEST_TIMER,
    Deliver,
    Send,
    Submit,
    TimerExpired,
    durable_state,
    initial_state,
    recover,
    step,
)
from pot_jax.crypto.quorum import QuorumCertificate
from pot_jax.network import byzantine
from pot_jax.network.checker import SafetyChecker
from pot_jax.network.cluster import ManualNetwork
from pot_jax.network.scenario import ScenarioConfig, build, make_cluster
from pot_jax.network.simulator import NetworkConfig, TimedNetwork

PATTERNS = [ALL_TO_ALL, LINEAR]
MEMO: dict = {}
VALUES = 6
LAST_SUBMISSION = VALUES - 1.0  # one value per time unit from t = 0

# (crash, restart) in virtual time: decisions of the six values happen at about t = 2..9.
CRASH_TIMES = {
    "before-decisions": (0.5, LAST_SUBMISSION + 1.0),
    "during-decisions": (3.0, LAST_SUBMISSION + 1.0),
    "during-decisions-restart-late": (3.0, 40.0),
    "after-decisions": (20.0, 30.0),
}


def crash_restart_run(pattern, node, crash_at, restart_at, *, n=7, byzantine=(), max_time=2_000.0):
    """Submit six values, crash ``node`` and restart it (durable state kept), then run
    the network to quiescence: no stop condition, the run ends when nothing is left."""
    cfg = ScenarioConfig(n=n, pattern=pattern, values=VALUES, byzantine=byzantine)
    cluster, net, memo = build(cfg)
    values = [b"value-%d" % k for k in range(VALUES)]
    for k, v in enumerate(values):
        net.submit_at(float(k), v)
    net.crash_at(crash_at, node)
    net.restart_at(restart_at, node)
    for b, _ in byzantine:
        net.act_every(cfg.act_interval, b, max_time / 2)
    net.run(until=max_time)
    return cluster, net, memo, {value_digest(v) for v in values}


def assert_everyone_holds_every_decision(cluster, memo, digests, restarted):
    """Every live honest node holds the decisions of one that never crashed."""
    honest = [x for x in cluster.honest() if x.up]
    steady = next(x for x in honest if x.id != restarted)
    reference = {d.seq: d.digest for d in steady.decisions}
    for x in honest:
        got = {d.seq: d.digest for d in x.decisions}
        same = sum(got.get(s) == d for s, d in reference.items())
        assert got == reference, f"node {x.id} holds {same} of {len(reference)} decisions"
        assert digests <= set(got.values()), f"node {x.id} lacks submitted values"
    assert SafetyChecker(cluster, memo).violations() == []


@pytest.mark.parametrize("when", list(CRASH_TIMES))
@pytest.mark.parametrize("node", [0, 3], ids=["primary", "backup"])
@pytest.mark.parametrize("pattern", PATTERNS)
def test_restarted_replica_recovers_every_decision(pattern, node, when):
    """n = 7, no Byzantine validator: the restarted replica (the view-0 primary or a
    backup) ends with all six decisions, the same digests at the same sequence numbers
    as every other replica, and in their view (a NEW-VIEW it missed is relayed to it);
    the run ends with an empty event queue (recovery stops asking)."""
    crash_at, restart_at = CRASH_TIMES[when]
    cluster, net, memo, digests = crash_restart_run(pattern, node, crash_at, restart_at)
    assert not net.queue and not net.events_capped
    restarted = cluster.nodes[node]
    assert restarted.up and not restarted.faulty and restarted.state.recovery_round == 0
    assert_everyone_holds_every_decision(cluster, memo, digests, node)
    assert len({(x.state.view, x.state.active) for x in cluster.nodes}) == 1


# ---------------------------------------------------------------------------
# Byzantine peers during recovery


def forging_state_transfer() -> byzantine.Strategy:
    """Answer state transfer with certificates that do not match what they claim: the
    real commit QC under another value, for the next sequence or for another view, a
    doctored signer bitmap, and a checkpoint certificate for another state digest."""

    def forge(m):
        if isinstance(m, Decided):
            k = m.seq % 4
            if k == 0:
                return dataclasses.replace(m, value=b"forged-%d" % m.seq)
            if k == 1:
                return dataclasses.replace(m, seq=m.seq + 1)
            if k == 2:
                return dataclasses.replace(m, view=m.view + 1)
            bits = bytes(b | 0xFF for b in m.qc.signers[:1]) + m.qc.signers[1:]
            return dataclasses.replace(m, qc=QuorumCertificate(m.qc.signature, bits))
        if isinstance(m, Cert) and m.kind == CHECKPOINT:
            return dataclasses.replace(m, digest=value_digest(b"another state"))
        return m

    def outgoing(node, sends, cluster):
        return [Send(s.dest, encode_message(forge(decode_message(s.data)))) for s in sends]

    return byzantine.Strategy("forging-state-transfer", outgoing=outgoing)


def refusing_state_transfer() -> byzantine.Strategy:
    """Take part in consensus but never answer a fetch (no proofs, no status)."""

    def outgoing(node, sends, cluster):
        return [s for s in sends if s.kind not in ("decided", "fetch")]

    return byzantine.Strategy("refusing-state-transfer", outgoing=outgoing)


@pytest.mark.parametrize("pattern", PATTERNS)
def test_recovering_replica_adopts_no_forged_or_mismatched_certificate(pattern):
    """The Byzantine peer's answers reach the restarted replica before any honest one:
    each forged or mismatched certificate is dropped as bad-qc and nothing is adopted;
    the honest answers then bring every decision (n = 4, f = 1)."""
    c = make_cluster(
        4, pattern, strategies={1: forging_state_transfer()}, memo=MEMO, checkpoint_interval=2
    )
    net = ManualNetwork(c)
    c.crash(3)
    for k in range(5):
        c.submit(b"v%d" % k)
    net.run_fair(stop=lambda: len(c.nodes[0].decisions) == 5 and not net.in_flight)
    c.restart(3)
    to_3 = []
    while net.in_flight:  # the peers answer; hold what they send to node 3
        item = net.in_flight.pop(0)
        if item[2] == 3:
            to_3.append(item)
        else:
            net.in_flight.append(item)
            net.deliver(len(net.in_flight) - 1)
    forged = [x for x in to_3 if x[1] == 1]
    honest = [x for x in to_3 if x[1] != 1]
    before = c.stats.replica_dropped["bad-qc"]
    for _, identity, _, data in forged:
        c.deliver(3, identity, data)
    restarted = c.nodes[3].state
    assert c.stats.replica_dropped["bad-qc"] - before >= 6  # five decisions, one checkpoint
    assert restarted.last_executed == 0 and not restarted.committed
    assert restarted.stable.seq == 0 and restarted.fetch_target == 0
    for _, identity, _, data in honest:
        c.deliver(3, identity, data)
    net.run_fair()
    assert_everyone_holds_every_decision(c, MEMO, {value_digest(b"v%d" % k) for k in range(5)}, 3)


@pytest.mark.parametrize("pattern", PATTERNS)
def test_recovery_learns_from_f_plus_one_answers_and_ends_after_a_quorum(pattern):
    """n = 7, f = 2: two Byzantine peers never answer a fetch and replica 4 is down, so
    only f + 1 = 3 peers answer replica 3's status rounds. One honest answer is enough to
    learn every decision (certificates verify themselves); recovery goes on until q - 1
    peers have answered, that is until replica 4 is back."""
    refusing = {1: refusing_state_transfer(), 2: refusing_state_transfer()}
    cluster = make_cluster(7, pattern, strategies=refusing, memo=MEMO)
    net = TimedNetwork(cluster, NetworkConfig(), seed=0)
    for k in range(VALUES):
        net.submit_at(float(k), b"value-%d" % k)
    for node, restart_at in ((3, LAST_SUBMISSION + 1.0), (4, 200.0)):
        net.crash_at(0.5, node)
        net.restart_at(restart_at, node)
    net.run(until=150.0)
    recovering = cluster.nodes[3]
    assert len(recovering.decisions) == VALUES
    assert recovering.state.recovery_round > 0  # still asking: 3 < q - 1 = 4 answered
    net.run(until=2_000.0)
    assert not net.queue
    assert recovering.state.recovery_round == 0 and cluster.nodes[4].state.recovery_round == 0
    digests = {value_digest(b"value-%d" % k) for k in range(VALUES)}
    assert_everyone_holds_every_decision(cluster, MEMO, digests, 3)


# ---------------------------------------------------------------------------
# The replica's side, step by step


def _sends(result):
    return [(s.dest, decode_message(s.data)) for s in result.sends]


def test_recover_keeps_pending_requests_and_asks_every_peer_for_its_status():
    """Pending requests are durable; a restarted replica broadcasts a status request for
    the decisions after its last one and re-arms its request timer."""
    c = make_cluster(4, ALL_TO_ALL, memo=MEMO)
    replica = c.nodes[1].replica
    state = step(replica, initial_state(replica), Submit(b"a")).state
    r = recover(replica, durable_state(state))
    assert r.state.pending == {value_digest(b"a"): b"a"}
    assert _sends(r) == [(None, Fetch(1, status=True))]
    assert {t.name for t in r.timers} == {RECOVERY_TIMER, REQUEST_TIMER}
    assert r.state.recovery_round == 1


def test_a_status_request_is_answered_with_proofs_the_head_and_the_position():
    """A peer more than a batch ahead answers with the batch, the proof of its last
    decision (how far to fetch) and, for a status request only, a fetch of its own."""
    c = make_cluster(4, ALL_TO_ALL, memo=MEMO, fetch_batch=1)
    net = ManualNetwork(c)
    for v in (b"a", b"b", b"c"):
        c.submit(v)
    net.run_fair()
    node = c.nodes[1]
    r = step(node.replica, node.state, Deliver(3, encode_message(Fetch(1, status=True))))
    sent = _sends(r)
    assert [(d, type(m).__name__, getattr(m, "seq", None)) for d, m in sent] == [
        (3, "Decided", 1),
        (3, "Decided", 3),
        (3, "Fetch", None),
    ]
    assert sent[-1][1] == Fetch(4)
    plain = step(node.replica, node.state, Deliver(3, encode_message(Fetch(1))))
    assert [type(m).__name__ for _, m in _sends(plain)] == ["Decided", "Decided"]


def test_recovery_ends_after_a_second_quiet_round_answered_by_a_quorum():
    """Round 1 never ends recovery (it may race with decisions completing from messages
    lost while down); a round in which q - 1 peers answered and nothing was learned does."""
    c = make_cluster(4, ALL_TO_ALL, memo=MEMO)
    replica = c.nodes[3].replica
    r = recover(replica, durable_state(initial_state(replica)))
    delays = [r.timers[0].delay]

    def round_trip(state, answering):
        for peer in answering:
            state = step(replica, state, Deliver(peer, encode_message(Fetch(1)))).state
        return step(replica, state, TimerExpired(RECOVERY_TIMER, state.timers[RECOVERY_TIMER]))

    r = round_trip(r.state, [0, 1, 2])
    assert r.state.recovery_round == 2 and _sends(r) == [(None, Fetch(1, status=True))]
    delays.append(r.timers[0].delay)
    r = round_trip(r.state, [0])  # one answer: fewer than q - 1 = 2
    assert r.state.recovery_round == 3
    delays.append(r.timers[0].delay)
    r = round_trip(r.state, [0, 2])
    assert r.state.recovery_round == 0 and r.sends == () and r.timers == ()
    assert delays == [8.0, 16.0, 32.0]  # rounds back off like view changes


def test_a_relayed_new_view_is_taken_only_while_recovering():
    """A replica left in an old view by its crash gets the NEW-VIEW of the current one from
    a peer's status answer; it is verified in full, and outside recovery a NEW-VIEW still
    counts only from the new primary."""
    c = make_cluster(4, ALL_TO_ALL, strategies={0: byzantine.silent()}, memo=MEMO)
    net = ManualNetwork(c)
    c.submit(b"a")
    net.run_fair(stop=lambda: all(x.decisions for x in c.honest()))
    relayed = c.nodes[2].state.last_new_view
    assert decode_message(relayed).view == 1
    replica = c.nodes[3].replica
    fresh = initial_state(replica)
    r = step(replica, fresh, Deliver(2, relayed))  # from 2; the primary of view 1 is 1
    assert [x.reason for x in r.drops] == ["not-primary"] and r.state is fresh
    recovering = recover(replica, durable_state(fresh)).state
    r = step(replica, recovering, Deliver(2, relayed))
    assert r.drops == () and r.state.view == 1 and r.state.active
    assert r.state.last_new_view == relayed
    answer = step(c.nodes[2].replica, c.nodes[2].state, Deliver(3, encode_message(Fetch(2, True))))
    assert [s.data for s in answer.sends][-2:] == [encode_message(Fetch(2)), relayed]
