"""Unit tests of the PBFT replica: normal case, quorum arithmetic, bad input, signing
discipline, durable state, checkpoints and garbage collection, view change, evidence."""

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pot_jax.consensus.evidence import verify_evidence
from pot_jax.consensus.keys import simulation_keys
from pot_jax.consensus.messages import (
    CHECKPOINT,
    COMMIT,
    PREPARE,
    VIEW_CHANGE,
    Bundle,
    Cert,
    Decided,
    Fetch,
    PreparedProof,
    PrePrepare,
    ViewChange,
    Vote,
    bundle_parts,
    decode_message,
    encode_message,
    value_digest,
    view_change_digest,
)
from pot_jax.consensus.pbft import (
    ALL_TO_ALL,
    LINEAR,
    REQUEST_TIMER,
    VIEW_CHANGE_TIMER,
    Deliver,
    Replica,
    ReplicaConfig,
    Submit,
    TimerExpired,
    durable_state,
    initial_state,
    recover,
    step,
)
from pot_jax.crypto.quorum import QuorumCertificate, aggregate_votes, sign_vote, vote_message
from pot_jax.network import byzantine
from pot_jax.network.checker import SafetyChecker, undecided
from pot_jax.network.cluster import ManualNetwork
from pot_jax.network.scenario import ScenarioConfig, make_cluster, run_scenario

CHAIN = b"pot-jax/simulation"
MEMO: dict = {}
PATTERNS = [ALL_TO_ALL, LINEAR]


def cluster(n, pattern=ALL_TO_ALL, **kw):
    c = make_cluster(n, pattern, memo=MEMO, **kw)
    return c, ManualNetwork(c)


def run_values(n, pattern, values, **kw):
    c, net = cluster(n, pattern, **kw)
    for v in values:
        c.submit(v)
    net.run_fair(stop=lambda: not undecided(c))
    return c, net


@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("n", [4, 5, 6, 7])
def test_normal_case_decides_every_value_in_order_on_every_replica(n, pattern):
    values = [b"v%d" % k for k in range(3)]
    c, _ = run_values(n, pattern, values)
    for node in c.nodes:
        assert [d.value for d in node.decisions] == values
        assert [d.seq for d in node.decisions] == [1, 2, 3]
    assert SafetyChecker(c, MEMO).violations() == []
    assert c.stats.replica_dropped.get("internal-error", 0) == 0


@pytest.mark.parametrize(("n", "q"), [(4, 3), (5, 4), (6, 4), (7, 5), (10, 7)])
def test_replica_quorum_is_quorum_size_not_the_predecessors_two_thirds_floor(n, q):
    _, validators = simulation_keys(n)
    cfg = ReplicaConfig(chain_id=CHAIN, validators=validators)
    assert cfg.quorum == q
    if n == 10:
        assert n // 3 * 2 == 6 != cfg.quorum  # the predecessor committed with 6 of 10


def test_config_rejects_bad_parameters():
    _, validators = simulation_keys(4)
    with pytest.raises(ValueError, match="pattern"):
        ReplicaConfig(chain_id=CHAIN, validators=validators, pattern="gossip")
    with pytest.raises(ValueError, match="multiple"):
        ReplicaConfig(chain_id=CHAIN, validators=validators, checkpoint_interval=3, window=4)


@pytest.mark.parametrize("pattern", PATTERNS)
def test_linear_pattern_sends_at_most_5n_messages_per_decision(pattern):
    n = 7
    c, _ = run_values(n, pattern, [b"only"])
    total = sum(c.stats.sent.values())
    if pattern == LINEAR:
        assert total == 5 * (n - 1)
    else:
        assert total == (n - 1) + 2 * n * (n - 1) - (n - 1)


@pytest.mark.parametrize("n", [4, 7, 10])
def test_linear_stream_costs_4_messages_per_validator_per_decision_in_steady_state(n):
    """Piggybacking: in a stream the commit QC rides on the next proposal, so a decision
    costs pre-prepare + prepare votes + prepare QC + commit votes = 4(n - 1) messages;
    without it, 5(n - 1). Checkpoints ride along too."""
    cfg = ScenarioConfig(n=n, pattern=LINEAR, values=16, submit_interval=1.0)
    chained, plain = run_scenario(cfg), run_scenario(dataclasses.replace(cfg, piggyback_delay=None))
    for r in (chained, plain):
        assert r["all_decided"] and r["safety_violations"] == []
    assert chained["steady_state_messages_per_decision"] == 4 * (n - 1)
    assert plain["steady_state_messages_per_decision"] == 5 * (n - 1) + 2 * (n - 1) / 8
    assert chained["messages"].get("bundle", 0) > 0 and "bundle" not in plain["messages"]
    assert chained["messages_per_decision"] < plain["messages_per_decision"]


def test_held_qcs_without_a_carrier_are_flushed_by_the_timer():
    """Submissions further apart than the piggyback delay: nothing carries the held commit
    QCs, the flush timer sends them, and every value is still decided within one delay."""
    cfg = ScenarioConfig(n=4, pattern=LINEAR, values=6, submit_interval=12.0)
    r, plain = run_scenario(cfg), run_scenario(dataclasses.replace(cfg, piggyback_delay=None))
    assert r["all_decided"] and r["views"] == 0
    assert r["virtual_latency_max"] <= plain["virtual_latency_max"] + cfg.piggyback_delay


def test_a_bundle_is_handled_part_by_part_like_separate_messages():
    """Bad parts are dropped with their reasons; good parts act as if sent alone."""
    sks, validators = simulation_keys(4)
    cfg = ReplicaConfig(chain_id=CHAIN, validators=validators, pattern=LINEAR)
    backup = Replica(cfg, 1, sks[1])
    d = value_digest(b"x")
    good = encode_message(
        PrePrepare(0, 1, b"x", sign_vote(sks[0], vote_message(CHAIN, PREPARE, 0, 1, d)))
    )
    bad = encode_message(
        PrePrepare(
            0, 2, b"y", sign_vote(sks[2], vote_message(CHAIN, PREPARE, 0, 2, value_digest(b"y")))
        )
    )
    state = initial_state(backup)
    alone = step(backup, state, Deliver(0, good))
    bundled = step(backup, state, Deliver(0, encode_message(Bundle((bad, b"\x09junk", good)))))
    assert [x.reason for x in bundled.drops] == ["bad-signature", "malformed"]
    assert bundled.sends == alone.sends and bundled.state == alone.state


def test_application_hook_blocks_invalid_values():
    c, _ = run_values(4, ALL_TO_ALL, [b"bad-1", b"good"], validate=lambda v: v.startswith(b"good"))
    for node in c.nodes:
        assert [d.value for d in node.decisions] == [b"good"]
    assert c.stats.replica_dropped["app-rejected"] == 4


def test_backups_refuse_to_prepare_a_value_the_application_rejects():
    sks, validators = simulation_keys(4)
    cfg = ReplicaConfig(chain_id=CHAIN, validators=validators, validate=lambda v: v != b"evil")
    backup = Replica(cfg, 1, sks[1])
    d = value_digest(b"evil")
    sig = sign_vote(sks[0], vote_message(CHAIN, PREPARE, 0, 1, d))
    data = encode_message(PrePrepare(0, 1, b"evil", sig))
    state = initial_state(backup)
    r = step(backup, state, Deliver(0, data))
    assert r.state is state and r.sends == ()
    assert r.drops[0].reason == "app-rejected"


# ---------------------------------------------------------------------------
# Bad input never changes state or raises


def _backup_with_history():
    """Replica 1 of 4 after deciding two values (so windows and views are non-trivial)."""
    c, net = run_values(4, ALL_TO_ALL, [b"a", b"b"])
    node = c.nodes[1]
    return node.replica, node.state, c


def _bad_inputs(replica, state):
    sks, _ = simulation_keys(4)
    d = value_digest(b"x")
    good_sig = sign_vote(sks[0], vote_message(CHAIN, PREPARE, 0, 3, d))
    wrong_sig = sign_vote(sks[2], vote_message(CHAIN, PREPARE, 0, 3, d))
    qc = aggregate_votes(
        replica.config.validators,
        {i: sign_vote(sks[i], vote_message(CHAIN, COMMIT, 0, 3, d)) for i in range(2)},
    )
    forged_bitmap = QuorumCertificate(qc.signature, bytes([0b0111]))
    return [
        ("malformed", 0, b"\x09garbage"),
        ("malformed", 0, b""),
        ("malformed", 0, encode_message(PrePrepare(0, 3, b"x", good_sig))[:-1]),
        ("oversized", 0, b"\x01" + b"\x00" * replica.config.max_message_bytes),
        ("bad-signature", 0, encode_message(PrePrepare(0, 3, b"x", wrong_sig))),
        ("not-primary", 2, encode_message(PrePrepare(0, 3, b"x", wrong_sig))),
        ("out-of-window", 0, encode_message(PrePrepare(0, 10**6, b"x", good_sig))),
        ("signer-mismatch", 2, encode_message(Vote(PREPARE, 0, 3, d, 3, good_sig))),
        ("bad-qc", 0, encode_message(Decided(3, 0, b"x", qc))),
        ("bad-qc", 0, encode_message(Decided(3, 0, b"x", forged_bitmap))),
        ("late", 0, encode_message(Decided(1, 0, b"x", qc))),
        ("bad-qc", 0, encode_message(Cert(CHECKPOINT, 0, 8, d, forged_bitmap))),
        ("bad-view-change", 2, encode_message(ViewChange(1, None, (), 2, wrong_sig))),
        ("malformed", 0, encode_message(Fetch(0))),
        ("malformed", 0, b"\x08\x00\x00\x00\x01\x00\x00\x00\x02\x08\x00"),  # nested bundle
        (
            "bad-signature",
            0,
            encode_message(Bundle((encode_message(PrePrepare(0, 3, b"x", wrong_sig)),))),
        ),
    ]


def test_each_kind_of_bad_input_is_dropped_with_its_reason_and_changes_nothing():
    replica, state, _ = _backup_with_history()
    for reason, src, data in _bad_inputs(replica, state):
        r = step(replica, state, Deliver(src, data))
        assert r.state is state, reason
        assert r.sends == () and r.decisions == (), reason
        assert [x.reason for x in r.drops] == [reason], (reason, r.drops)


def test_messages_for_an_old_view_are_dropped_as_stale():
    replica, state, _ = _backup_with_history()
    state = dataclasses.replace(state, view=5)
    sks, _ = simulation_keys(4)
    d = value_digest(b"x")
    data = encode_message(
        Vote(PREPARE, 0, 3, d, 2, sign_vote(sks[2], vote_message(CHAIN, PREPARE, 0, 3, d)))
    )
    r = step(replica, state, Deliver(2, data))
    assert r.state is state and r.drops[0].reason == "stale-view"


@settings(max_examples=50)
@given(st.binary(max_size=400), st.integers(-2, 6))
def test_random_bytes_never_raise_or_change_state(data, src):
    replica, state, _ = _backup_with_history()
    r = step(replica, state, Deliver(src, data))
    assert r.drops and r.drops[0].reason != "internal-error"
    assert r.state is state


# ---------------------------------------------------------------------------
# Signing discipline and durable state


def test_a_replica_never_signs_two_digests_for_one_slot():
    sks, validators = simulation_keys(4)
    cfg = ReplicaConfig(chain_id=CHAIN, validators=validators)
    backup = Replica(cfg, 1, sks[1])
    state = initial_state(backup)
    pps = []
    for value in (b"x", b"y"):
        d = value_digest(value)
        pps.append(
            PrePrepare(0, 1, value, sign_vote(sks[0], vote_message(CHAIN, PREPARE, 0, 1, d)))
        )
    r1 = step(backup, state, Deliver(0, encode_message(pps[0])))
    assert len(r1.sends) == 1
    assert r1.state.signed[(PREPARE, 0, 1)] == pps[0].digest  # durable before sending
    r2 = step(backup, r1.state, Deliver(0, encode_message(pps[1])))
    assert r2.sends == ()
    assert r2.drops[0].reason == "equivocation"
    (ev,) = r2.evidence
    assert ev.signer == 0 and verify_evidence(CHAIN, validators, ev)
    # Even after losing volatile state, the durable log prevents the second vote.
    restarted = recover(backup, durable_state(r1.state)).state
    r3 = step(backup, restarted, Deliver(0, encode_message(pps[1])))
    assert all(decode_message(s.data).digest != pps[1].digest for s in r3.sends)


@pytest.mark.parametrize("pattern", PATTERNS)
def test_every_vote_sent_is_in_the_senders_durable_signed_log(pattern):
    c, net = cluster(4, pattern)
    c.submit(b"a")
    c.submit(b"b")
    while net.in_flight:
        _, identity, _, data = net.in_flight[0]
        m = decode_message(data)
        if isinstance(m, Vote):
            sender = c.nodes[identity].state
            assert sender.signed[(m.kind, m.view, m.seq)] == m.digest
        net.deliver(0)


@pytest.mark.parametrize("pattern", PATTERNS)
def test_crash_and_restart_with_durable_state_keeps_safety_and_liveness(pattern):
    c, net = cluster(4, pattern)
    c.submit(b"a")
    for _ in range(5):
        net.deliver(0)
    c.crash(2)
    c.submit(b"b")
    for _ in range(8):
        if net.in_flight:
            net.deliver(0)
    c.restart(2)
    for v in (b"a", b"b"):
        c.submit(v)  # client retransmission
    net.run_fair(stop=lambda: not undecided(c))
    assert SafetyChecker(c, MEMO).violations() == []
    assert undecided(c) == {}
    assert not c.nodes[2].faulty


def test_amnesia_restart_marks_the_node_faulty():
    c, net = cluster(4)
    c.submit(b"a")
    net.run_fair(stop=lambda: not undecided(c))
    c.crash(3)
    c.restart(3, amnesia=True)
    assert c.nodes[3].faulty and c.nodes[3].state.last_executed == 0


# ---------------------------------------------------------------------------
# Checkpoints, watermarks, garbage collection


@pytest.mark.parametrize("pattern", PATTERNS)
def test_checkpoints_become_stable_and_garbage_collect_the_log(pattern):
    c, net = run_values(
        4, pattern, [b"v%d" % k for k in range(10)], checkpoint_interval=4, window=8
    )
    for node in c.nodes:
        st_ = node.state
        assert st_.stable.seq == 8 and st_.last_executed == 10
        assert all(s > 8 for (_, s) in st_.preprepares)
        assert all(k[2] > 8 for k in st_.votes)
        assert all(s > 8 for s in st_.prepared)
        assert all(k[2] > 8 for k in st_.signed if k[0] != "view-change")
    # Below the low watermark, and beyond the high one, a message is out of the window.
    node = c.nodes[1]
    sks, _ = simulation_keys(4)
    for seq in (8, 8 + 8 + 1):
        d = value_digest(b"z")
        sig = sign_vote(sks[0], vote_message(CHAIN, PREPARE, 0, seq, d))
        r = step(
            node.replica, node.state, Deliver(0, encode_message(PrePrepare(0, seq, b"z", sig)))
        )
        assert r.drops[0].reason == "out-of-window" and r.state is node.state


@pytest.mark.parametrize("pattern", PATTERNS)
def test_primary_stops_at_the_high_watermark_until_a_checkpoint_is_stable(pattern):
    c, net = cluster(4, pattern, checkpoint_interval=2, window=4)
    for k in range(7):
        c.submit(b"v%d" % k)
    proposed = [decode_message(d).seq for _, _, _, d in net.in_flight if d[:1] == b"\x01"]
    assert max(proposed) == 4
    net.run_fair(stop=lambda: not undecided(c))
    assert undecided(c) == {}


def test_a_replica_that_missed_decisions_catches_up_by_state_transfer():
    c, net = cluster(4, ALL_TO_ALL, checkpoint_interval=2, window=4)
    net.groups = [frozenset({0, 1, 2}), frozenset({3})]
    for k in range(6):
        c.submit(b"v%d" % k, nodes=[0, 1, 2])
    while net.in_flight:
        net.deliver(0)
    assert c.nodes[3].state.last_executed == 0
    net.groups = None
    for k in range(6):
        c.submit(b"v%d" % k)  # the client retransmits to everyone
    net.run_fair(stop=lambda: not undecided(c))
    assert len(c.nodes[3].decisions) == 6
    assert SafetyChecker(c, MEMO).violations() == []


# ---------------------------------------------------------------------------
# View change


@pytest.mark.parametrize("pattern", PATTERNS)
def test_silent_primary_is_replaced_and_values_are_decided(pattern):
    c, net = cluster(4, pattern, strategies={0: byzantine.silent()})
    c.submit(b"a")
    net.run_fair(stop=lambda: not undecided(c))
    assert undecided(c) == {}
    assert all(node.state.view == 1 for node in c.honest())
    assert SafetyChecker(c, MEMO).violations() == []


@pytest.mark.parametrize("pattern", PATTERNS)
def test_value_prepared_by_a_quorum_survives_the_view_change(pattern):
    """Commits are all lost in view 0; after the view change the prepared value is decided
    at the same sequence number even though the new primary has another request first."""
    c, net = cluster(4, pattern)
    c.submit(b"first")
    while net.in_flight:
        _, _, _, data = net.in_flight[0]
        m = decode_message(data)
        if (isinstance(m, Vote) and m.kind == COMMIT) or (isinstance(m, Cert) and m.kind == COMMIT):
            net.drop(0)
        else:
            net.deliver(0)
    assert all(
        node.state.prepared.get(1) is not None
        for node in c.nodes
        if node.id != 0 or pattern == ALL_TO_ALL
    )
    assert all(not node.decisions for node in c.nodes)
    c.crash(0)
    c.submit(b"second", nodes=[1, 2, 3])
    net.run_fair(stop=lambda: not undecided(c))
    for node in c.honest():
        if node.up:
            assert node.decisions[0].seq == 1 and node.decisions[0].value == b"first"
            assert node.state.view >= 1
    assert SafetyChecker(c, MEMO).violations() == []


def test_request_timer_asks_peers_first_then_view_change_timers_back_off():
    """First expiry: fetch; second: view change. Once q replicas have joined a view, its
    timer restarts (the new primary gets the whole timeout) and its expiry moves on to the
    next view, each failed view doubling the timeout (proofs/liveness.md, steps 1-2)."""
    sks, validators = simulation_keys(4)
    cfg = ReplicaConfig(chain_id=CHAIN, validators=validators, view_change_timeout=3.0)
    r = Replica(cfg, 0, sks[0])  # primary of view 0, not of views 1..3
    res = step(r, initial_state(r), Submit(b"a"))
    (timer,) = res.timers
    res = step(r, res.state, TimerExpired(timer.name, timer.token))
    assert [decode_message(s.data) for s in res.sends] == [Fetch(1)]
    (timer,) = res.timers
    assert timer.name == REQUEST_TIMER
    delays = []
    for view in (1, 2, 3):
        res = step(r, res.state, TimerExpired(timer.name, timer.token))
        assert res.state.view == view and not res.state.active
        assert any(isinstance(decode_message(x.data), ViewChange) for x in res.sends)
        for i in (2, 3):
            vc = _signed_view_change(sks[i], ViewChange(view, None, (), i, b""))
            res = step(r, res.state, Deliver(i, encode_message(vc)))
        (timer,) = [t for t in res.timers if t.name == VIEW_CHANGE_TIMER]  # at the quorum
        delays.append(timer.delay)
    assert delays == [3.0, 6.0, 12.0]
    stale = step(r, res.state, TimerExpired(timer.name, timer.token - 1))
    assert stale.state is res.state


def test_a_view_change_timer_without_a_quorum_resends_and_waits():
    """Fewer than q replicas asked for the view: on expiry the replica fetches and sends its
    view change again, backing off, but stays in the view (proofs/liveness.md, step 2)."""
    sks, validators = simulation_keys(4)
    cfg = ReplicaConfig(chain_id=CHAIN, validators=validators, view_change_timeout=3.0)
    r = Replica(cfg, 1, sks[1])
    res = step(r, initial_state(r), Submit(b"a"))
    for _ in range(2):
        (timer,) = res.timers
        res = step(r, res.state, TimerExpired(timer.name, timer.token))
    vc = res.state.last_view_change
    assert res.state.view == 1 and res.timers[0].delay == 3.0
    delays = []
    for _ in range(3):
        (timer,) = res.timers
        res = step(r, res.state, TimerExpired(timer.name, timer.token))
        assert res.state.view == 1 and not res.state.active
        assert [s.data for s in res.sends] == [encode_message(Fetch(1)), vc]
        delays.append(res.timers[0].delay)
    assert delays == [6.0, 12.0, 24.0]


def test_a_replica_alone_in_a_higher_view_waits_so_views_do_not_leapfrog():
    """Replica 3 timed out alone many times; the others time out later. With capped
    timeouts a replica that kept moving on would stay ahead of them forever (f + 1 view
    changes are needed to pull them up, and the silent validator sends none); waiting for a
    quorum in its view lets them meet and decide."""
    c, net = cluster(4, ALL_TO_ALL, strategies={2: byzantine.silent()})
    c.submit(b"a", nodes=[3])
    for _ in range(9):  # fetch, view change to 1, then seven view-change timer expiries
        (t,) = [x for x in net.timers if x[0] == 3]
        net.fire(net.timers.index(t))
    assert c.nodes[3].state.view == 1
    c.submit(b"a")
    net.run_fair(max_steps=20_000, stop=lambda: not undecided(c))
    assert undecided(c) == {}
    assert {x.state.view for x in c.honest()} == {1}
    assert SafetyChecker(c, MEMO).violations() == []


def test_f_plus_one_view_changes_make_a_replica_join():
    c, net = cluster(4)
    c.submit(b"a", nodes=[1, 2])
    for node_id in (1, 2):  # only two replicas time out (fetch first, then view change)
        for _ in range(2):
            (t,) = [x for x in net.timers if x[0] == node_id]
            net.fire(net.timers.index(t))
    vcs = [i for i, x in enumerate(net.in_flight) if x[3][:1] == b"\x04" and x[2] == 3]
    for _ in vcs:
        i = next(i for i, x in enumerate(net.in_flight) if x[3][:1] == b"\x04" and x[2] == 3)
        net.deliver(i)
    assert c.nodes[3].state.view == 1


@pytest.mark.parametrize("pattern", PATTERNS)
def test_double_voting_yields_verifiable_equivocation_evidence(pattern):
    c, net = run_values(4, pattern, [b"a"], strategies={1: byzantine.double_voting()})
    assert c.stats.evidence
    _, validators = simulation_keys(4)
    assert all(verify_evidence(CHAIN, validators, ev) for ev in c.stats.evidence)
    assert {ev.signer for ev in c.stats.evidence} == {1}
    assert undecided(c) == {}


def _signed_view_change(sk, view_change):
    msg = vote_message(CHAIN, VIEW_CHANGE, view_change.new_view, 0, view_change_digest(view_change))
    return dataclasses.replace(view_change, signature=sign_vote(sk, msg))


def test_two_different_view_changes_to_one_view_are_equivocation_evidence():
    replica, state, c = _backup_with_history()
    sks, validators = simulation_keys(4)
    first = _signed_view_change(sks[2], ViewChange(1, None, (), 2, b""))
    r1 = step(replica, state, Deliver(2, encode_message(first)))
    assert not r1.drops and not r1.evidence
    r2 = step(replica, r1.state, Deliver(2, encode_message(first)))
    assert [x.reason for x in r2.drops] == ["duplicate"] and not r2.evidence
    # Another view change to view 1 from the same signer, carrying a valid prepared proof.
    decided = state.ledger[1]
    votes = {
        i: sign_vote(sks[i], vote_message(CHAIN, PREPARE, 0, 1, decided.digest)) for i in range(3)
    }
    proof = PreparedProof(0, 1, decided.value, aggregate_votes(validators, votes))
    second = _signed_view_change(sks[2], ViewChange(1, None, (proof,), 2, b""))
    r3 = step(replica, r1.state, Deliver(2, encode_message(second)))
    assert [x.reason for x in r3.drops] == ["equivocation"]
    (ev,) = r3.evidence
    assert ev.signer == 2 and ev.kind == VIEW_CHANGE and verify_evidence(CHAIN, validators, ev)
    assert r3.state == r1.state


def test_conflicting_late_votes_still_yield_evidence():
    """Votes that arrive after their quorum are kept (never counted), so a second,
    conflicting vote from the same signer is caught."""
    replica, state, _ = _backup_with_history()
    sks, validators = simulation_keys(4)
    # As if signer 3's commit vote for seq 1 had not arrived before the quorum formed.
    key = (COMMIT, 0, 1)
    votes = dict(state.votes)
    votes[key] = {i: r for i, r in votes[key].items() if i != 3}
    state = dataclasses.replace(state, votes=votes)
    d, other = state.ledger[1].digest, value_digest(b"other")

    def vote(digest):
        sig = sign_vote(sks[3], vote_message(CHAIN, COMMIT, 0, 1, digest))
        return encode_message(Vote(COMMIT, 0, 1, digest, 3, sig))

    r1 = step(replica, state, Deliver(3, vote(d)))
    r2 = step(replica, r1.state, Deliver(3, vote(other)))
    assert [x.reason for x in r1.drops] == ["late"]
    assert [x.reason for x in r2.drops] == ["equivocation"]
    assert verify_evidence(CHAIN, validators, r2.evidence[0])


@pytest.mark.parametrize(
    ("pattern", "lost"), [(ALL_TO_ALL, "votes"), (LINEAR, "votes"), (LINEAR, "certificate")]
)
def test_lost_checkpoint_messages_are_recovered_so_a_full_window_moves_on(pattern, lost):
    """Found by the long run: every checkpoint vote lost before GST left the window full
    (no stable checkpoint, so no new sequence numbers) and views changed forever. A
    replica whose request times out now votes again for its unstable checkpoints, and a
    peer answering its fetch sends its stable checkpoint certificate (for a lost QC)."""
    c, net = cluster(4, pattern, checkpoint_interval=2, window=2)
    for v in (b"a", b"b"):
        c.submit(v)
    qc = QuorumCertificate(b"\0" * 96, b"\x0f")
    prefix = {
        "votes": encode_message(Vote(CHECKPOINT, 0, 2, b"\0" * 32, 0, b"\0" * 96))[:2],
        "certificate": encode_message(Cert(CHECKPOINT, 0, 2, b"\0" * 32, qc))[:2],
    }[lost]
    while net.in_flight:
        data = net.in_flight[0][3]
        if any(p[:2] == prefix for p in bundle_parts(data)):
            net.drop(0)
        else:
            net.deliver(0)
    behind = [x for x in c.nodes if x.state.stable.seq == 0]
    assert all(x.state.last_executed == 2 for x in c.nodes) and len(behind) >= 3
    c.submit(b"c")
    net.run_fair(stop=lambda: not undecided(c))
    assert undecided(c) == {}
    assert all(x.state.stable.seq == 2 for x in c.nodes)
    assert SafetyChecker(c, MEMO).violations() == []


def test_more_held_messages_than_a_bundle_holds_wait_for_the_next_carrier():
    """A carrier takes at most MAX_BUNDLE_PARTS - 1 held messages; the rest stay held
    (none is dropped) until the next carrier or the flush timer."""
    from pot_jax.consensus.messages import MAX_BUNDLE_PARTS

    sks, validators = simulation_keys(4)
    cfg = ReplicaConfig(chain_id=CHAIN, validators=validators, pattern=LINEAR)
    backup = Replica(cfg, 1, sks[1])
    held = tuple((0, encode_message(Fetch(k))) for k in range(1, MAX_BUNDLE_PARTS + 8))
    state = dataclasses.replace(initial_state(backup), outbox=held)
    d = value_digest(b"x")
    sig = sign_vote(sks[0], vote_message(CHAIN, PREPARE, 0, 1, d))
    r = step(backup, state, Deliver(0, encode_message(PrePrepare(0, 1, b"x", sig))))
    (send,) = r.sends
    parts = bundle_parts(send.data)
    assert send.dest == 0 and len(parts) == MAX_BUNDLE_PARTS
    assert parts[:-1] == tuple(data for _, data in held[: MAX_BUNDLE_PARTS - 1])
    assert decode_message(parts[-1]).kind == PREPARE
    assert r.state.outbox == held[MAX_BUNDLE_PARTS - 1 :]
    flushed = step(backup, r.state, TimerExpired("flush", r.state.timers["flush"]))
    assert [p for s in flushed.sends for p in bundle_parts(s.data)] == [
        data for _, data in held[MAX_BUNDLE_PARTS - 1 :]
    ]
    assert flushed.state.outbox == ()
