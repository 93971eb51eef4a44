"""Property tests of PBFT safety and liveness under adversarial schedules.

* ``TestPBFTSafetyMachine``: a hypothesis RuleBasedStateMachine whose rules
  deliver, drop, delay, duplicate, partition, crash, restart (with or without
  amnesia), submit, fire timers and let Byzantine replicas act; agreement,
  integrity, validity and QC soundness are checked after every step. At
  teardown the client retransmits to the replicas that are up, the crashed
  ones restart after that submission (the client retransmits to everyone only
  what it has not seen decided), the network heals, and every submitted value
  must be decided and every live honest replica must hold every decision
  (liveness after GST with at most f faulty; proofs/liveness.md, step 4).
* ``test_liveness_after_gst_*``: seeded timed runs with pre-GST chaos and f
  faulty successive primaries; ``test_restarted_replica_*`` adds an honest
  replica that crashes and restarts after the last submission.
* Twins (n = 4): enumerated partition schedules with one twinned identity
  must be safe; canaries with two twinned identities (f + 1 faulty) or with
  the predecessor's quorum n * 2 // 3 must be caught violating agreement.

Sizes cover n = 3f+1, 3f+2, 3f+3 (4, 5, 6) and 7. Long run (5000 schedules
per pattern, 10,000 in all; about 35 minutes with one process per pattern on
2 cores)::

    HYPOTHESIS_PROFILE=dev POT_JAX_LONG_RUN_EXAMPLES=5000 \\
        pytest -m slow --hypothesis-seed=20261201 --hypothesis-show-statistics \\
        tests/consensus/test_pbft_properties.py -k "long_run and linear"
    # and the same with -k "long_run and all_to_all" in a second process

The written argument this checks: proofs/pbft-safety.md and proofs/liveness.md.
"""

import itertools
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from pot_jax.consensus.messages import value_digest
from pot_jax.consensus.pbft import ALL_TO_ALL, LINEAR
from pot_jax.crypto.quorum import fault_tolerance
from pot_jax.network import byzantine
from pot_jax.network.checker import SafetyChecker, undecided
from pot_jax.network.cluster import ManualNetwork
from pot_jax.network.scenario import ScenarioConfig, build, make_cluster, run_scenario
from pot_jax.network.simulator import NetworkConfig, Partition, TimedNetwork

MEMO: dict = {}  # verification results are deterministic; sharing them only saves time
BEHAVIOURS = ["none", "twins", *byzantine.STRATEGIES]


def _valid(value: bytes) -> bool:
    return not value.startswith(b"invalid")


class PBFTSafetyMachine(RuleBasedStateMachine):
    @initialize(
        n=st.sampled_from([4, 5, 6, 7]),
        pattern=st.sampled_from([ALL_TO_ALL, LINEAR]),
        behaviour=st.sampled_from(BEHAVIOURS),
        bad=st.integers(0, 6),
    )
    def setup(self, n, pattern, behaviour, bad):
        self.n, self.f = n, fault_tolerance(n)
        bad %= n
        twins = (bad,) if behaviour == "twins" else ()
        strategies = {}
        if behaviour not in ("none", "twins"):
            strategies = {bad: byzantine.STRATEGIES[behaviour]()}
        self.cluster = make_cluster(
            n,
            pattern,
            twins=twins,
            strategies=strategies,
            memo=MEMO,
            checkpoint_interval=2,
            window=4,
            validate=_valid,
        )
        self.net = ManualNetwork(self.cluster)
        self.checker = SafetyChecker(self.cluster, MEMO)
        self.values = 0
        self.submit_value()

    def faulty_count(self):
        identities = {x.identity for x in self.cluster.nodes if x.faulty}
        return len(identities)

    @rule()
    def submit_value(self):
        self.values += 1
        value = b"invalid-%d" % self.values if self.values % 5 == 0 else b"value-%d" % self.values
        self.cluster.submit(value)

    @precondition(lambda self: self.net.in_flight)
    @rule(i=st.integers(0, 10**6))
    def deliver(self, i):
        self.net.deliver(i)

    @precondition(lambda self: self.net.in_flight)
    @rule(i=st.integers(0, 10**6))
    def drop(self, i):
        self.net.drop(i)

    @precondition(lambda self: self.net.in_flight)
    @rule(i=st.integers(0, 10**6))
    def delay(self, i):
        self.net.delay(i)

    @precondition(lambda self: self.net.in_flight)
    @rule(i=st.integers(0, 10**6))
    def duplicate(self, i):
        self.net.duplicate(i)

    @precondition(lambda self: self.net.timers)
    @rule(i=st.integers(0, 10**6))
    def fire_timer(self, i):
        self.net.fire(i)

    @rule(side=st.sets(st.integers(0, 7)))
    def partition(self, side):
        ids = {x.id for x in self.cluster.nodes}
        side = frozenset(side & ids)
        self.net.groups = [side, frozenset(ids - side)]

    @rule()
    def heal(self):
        self.net.groups = None

    @rule(node=st.integers(0, 7))
    def crash(self, node):
        self.cluster.crash(node % len(self.cluster.nodes))

    @rule(node=st.integers(0, 7), amnesia=st.booleans())
    def restart(self, node, amnesia):
        node %= len(self.cluster.nodes)
        x = self.cluster.nodes[node]
        if amnesia and not x.faulty and self.faulty_count() >= self.f:
            amnesia = False  # keep at most f faulty identities
        self.cluster.restart(node, amnesia=amnesia)

    @rule(node=st.integers(0, 7))
    def byzantine_act(self, node):
        self.cluster.act(node % len(self.cluster.nodes))

    @invariant()
    def safe(self):
        assert self.checker.violations() == []
        assert self.cluster.stats.replica_dropped.get("internal-error", 0) == 0

    def teardown(self):
        """After GST the client retransmits to the replicas that are up; then the crashed
        ones restart, after that submission. The client keeps retransmitting only what it
        has not seen decided, so a restarted replica must learn every decision made before
        from its peers (proofs/liveness.md, step 4), with no traffic to prompt it."""
        if not hasattr(self, "cluster"):
            return
        c = self.cluster
        values = [v for v in c.proposals.values() if v is not None]
        values += [b"value-%d" % k for k in range(1, self.values + 1)]
        values = [v for v in dict.fromkeys(values) if _valid(v)]
        down = [node.id for node in c.nodes if not node.up]
        for value in values:
            c.submit(value)  # to the replicas that are up
        for node_id in down:
            c.restart(node_id)
        decided = {d for x in c.honest() for d in c.decided_digests(x)}
        for value in values:
            if value_digest(value) not in decided:
                c.submit(value)  # still undecided: the client retransmits to everyone
        wanted = {d for d, v in c.proposals.items()} & set(c.submitted)
        self.net.run_fair(
            max_steps=50_000,
            stop=lambda: not undecided(c, wanted) and not c.missing_decisions(),
        )
        assert self.checker.violations() == []
        assert undecided(c, wanted) == {}, "liveness after GST"
        assert c.missing_decisions() == {}, "a live honest replica lacks a decision"


PBFTSafetyMachine.TestCase.settings = settings(
    stateful_step_count=50,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    deadline=None,
)
TestPBFTSafetyMachine = PBFTSafetyMachine.TestCase


# ---------------------------------------------------------------------------
# Liveness with a timed network


@settings(max_examples=12, deadline=None)
@given(
    n=st.sampled_from([4, 5, 6, 7]),
    pattern=st.sampled_from([ALL_TO_ALL, LINEAR]),
    behaviour=st.sampled_from(
        ["silent", "equivocating_primary", "invalid_signatures", "view_change_spam"]
    ),
    seed=st.integers(0, 2**16),
)
def test_liveness_after_gst_with_f_faulty_successive_primaries(n, pattern, behaviour, seed):
    """Identities 0..f-1 (the primaries of views 0..f-1) are Byzantine; before GST the
    network drops, duplicates, reorders and partitions. Every value is decided, safely,
    within a bounded number of views after GST."""
    f = fault_tolerance(n)
    gst = 40.0
    cfg = ScenarioConfig(
        n=n,
        pattern=pattern,
        values=3,
        seed=seed,
        byzantine=tuple((i, behaviour) for i in range(f)),
        network=NetworkConfig(
            drop_rate=0.2,
            duplicate_rate=0.1,
            gst=gst,
            random_partitions=1.0,
            partition_duration=15.0,
        ),
        checkpoint_interval=2,
        window=4,
        max_time=5_000.0,
    )
    r = run_scenario(cfg)
    assert r["safety_violations"] == []
    assert r["all_decided"], r
    assert r["replica_drops"].get("internal-error", 0) == 0
    # Views: at most the pre-GST escalation (one per timeout) plus f faulty primaries and one
    # more for desynchronised timers.
    assert r["views"] <= gst / cfg.request_timeout + 2 * f + 2, r["views"]


def run_with_restarts(cfg: ScenarioConfig) -> dict:
    """Run ``cfg`` as ``run_scenario`` does, but stop only once every scheduled restart has
    happened and every live honest replica holds every submitted value and every decision
    (``run_scenario`` stops when the replicas that are up agree, which can be before a
    restart)."""
    cluster, net, memo = build(cfg)
    values = [b"value-%d-%d" % (cfg.seed, k) for k in range(cfg.values)]
    for k, v in enumerate(values):
        net.submit_at(k * cfg.submit_interval, v)
    for at, node in cfg.crashes:
        net.crash_at(at, node)
    for at, node, amnesia in cfg.restarts:
        net.restart_at(at, node, amnesia=amnesia)
    for node, _ in cfg.byzantine:
        net.act_every(cfg.act_interval, node, cfg.max_time / 2)
    digests = {value_digest(v) for v in values}
    last_restart = max((at for at, _, _ in cfg.restarts), default=0.0)
    seen = [-1]

    def done() -> bool:
        if net.time < last_restart or cluster.decision_events == seen[0]:
            return False
        seen[0] = cluster.decision_events
        return not undecided(cluster, digests) and not cluster.missing_decisions()

    net.run(until=cfg.max_time, stop=done)
    return {
        "safety_violations": SafetyChecker(cluster, memo).violations(),
        "undecided": undecided(cluster, digests),
        "missing_decisions": cluster.missing_decisions(),
        "views": max(x.state.view for x in cluster.honest() if x.up),
        "internal_errors": cluster.stats.replica_dropped.get("internal-error", 0),
        "virtual_time": net.time,
    }


RESTART_SCHEDULES = {
    "n": st.sampled_from([4, 5, 6, 7]),
    "pattern": st.sampled_from([ALL_TO_ALL, LINEAR]),
    "behaviour": st.sampled_from(["none", "silent", "equivocating_primary", "invalid_signatures"]),
    "crashed": st.integers(0, 6),
    "crash_at": st.floats(0.0, 30.0),
    "restart_after": st.floats(0.5, 60.0),
    "seed": st.integers(0, 2**16),
}


def check_restart_schedule(n, pattern, behaviour, crashed, crash_at, restart_after, seed):
    """One schedule of ``test_restarted_replica_holds_every_decision_after_gst``."""
    f = fault_tolerance(n)
    byz = () if behaviour == "none" else tuple((i, behaviour) for i in range(f))
    node = len(byz) + crashed % (n - len(byz))
    values, interval = 4, 1.0
    restart_at = max(crash_at, (values - 1) * interval) + restart_after
    r = run_with_restarts(
        ScenarioConfig(
            n=n,
            pattern=pattern,
            values=values,
            submit_interval=interval,
            seed=seed,
            byzantine=byz,
            crashes=((crash_at, node),),
            restarts=((restart_at, node, False),),
            network=NetworkConfig(
                drop_rate=0.2, duplicate_rate=0.1, gst=40.0, random_partitions=1.0
            ),
            checkpoint_interval=2,
            window=4,
            max_time=5_000.0,
        )
    )
    assert r["safety_violations"] == [] and r["internal_errors"] == 0, r
    assert r["undecided"] == {} and r["missing_decisions"] == {}, r


@settings(max_examples=12, deadline=None)
@given(**RESTART_SCHEDULES)
def test_restarted_replica_holds_every_decision_after_gst(
    n, pattern, behaviour, crashed, crash_at, restart_after, seed
):
    """Four values, one per time unit; an honest replica crashes before, during or after
    the decisions and restarts after the last submission; identities 0..f-1 are Byzantine
    (or none is); before GST the network drops, duplicates and partitions. After GST every
    live honest replica, the restarted one included, holds every decision
    (proofs/liveness.md, step 4)."""
    check_restart_schedule(n, pattern, behaviour, crashed, crash_at, restart_after, seed)


# ---------------------------------------------------------------------------
# Twins (n = 4)


def _split(nodes_a, nodes_b):
    return (frozenset(nodes_a), frozenset(nodes_b))


def twins_run(twinned, first, second, *, quorum_fn=None, pattern=ALL_TO_ALL, n=4):
    """Twins of ``twinned`` identities get node ids n, n+1, ...; ``first`` and ``second``
    assign the other nodes to side 0 or 1 of two successive partitions (twin a on side 0,
    twin b on side 1); then the network heals. Client x goes to side 0, y to side 1."""
    extra = {} if quorum_fn is None else {"quorum_fn": quorum_fn}
    c = make_cluster(n, pattern, twins=twinned, memo=MEMO, **extra)
    twin_nodes = {n + k for k in range(len(twinned))}
    others = [i for i in range(n) if i not in twinned]
    parts = []
    for k, assign in enumerate((first, second)):
        side0 = set(twinned) | {o for o, s in zip(others, assign, strict=True) if s == 0}
        side1 = twin_nodes | {o for o, s in zip(others, assign, strict=True) if s == 1}
        parts.append(Partition(20.0 * k, 20.0 * (k + 1), _split(side0, side1)))
    net = TimedNetwork(c, NetworkConfig(partitions=tuple(parts), gst=40.0), seed=0)
    side0 = sorted(parts[0].groups[0])
    side1 = sorted(parts[0].groups[1])
    net.submit_at(0.0, b"x", side0)
    net.submit_at(0.0, b"y", side1)
    net.submit_at(41.0, b"x")
    net.submit_at(41.0, b"y")
    net.run(until=2_000.0, stop=lambda: net.time > 41 and not undecided(c))
    return c


def _assignments(k):
    return list(itertools.product((0, 1), repeat=k))


@pytest.mark.parametrize("pattern", [ALL_TO_ALL, LINEAR])
@pytest.mark.parametrize("twinned", [0, 1])
def test_twins_enumerated_partitions_n4_are_safe_and_live(twinned, pattern):
    """One twinned identity (f = 1) as primary or backup, every pair of partitions."""
    assignments = _assignments(3)
    for first in assignments:
        for second in assignments:
            c = twins_run((twinned,), first, second, pattern=pattern)
            assert SafetyChecker(c, MEMO).violations() == [], (first, second)
            assert undecided(c) == {}, (first, second)


def _find_violation(twinned, **kw):
    k = 4 - len(twinned)
    for first in _assignments(k):
        for second in _assignments(k):
            c = twins_run(twinned, first, second, **kw)
            found = [v for v in SafetyChecker(c, MEMO).violations() if v.startswith("agreement")]
            if found:
                return found
    return []


def test_canary_two_twinned_identities_among_four_break_agreement():
    """f + 1 = 2 Byzantine identities: the checker must find an agreement violation."""
    assert _find_violation((0, 1))


def test_canary_two_thirds_floor_quorum_breaks_agreement():
    """The predecessor's quorum n * 2 // 3 (2 of 4) with one twin (f = 1): a violation."""
    assert _find_violation((0,), quorum_fn=lambda n: n * 2 // 3)


def test_canary_six_of_ten_breaks_agreement_with_only_f_faulty():
    """n = 10, f = 3 twinned identities (within tolerance): 6 of 10 forks, 7 of 10 does not."""
    first = (0, 0, 0, 1, 1, 1, 1)  # side 0: three twins + 3 honest = 6; side 1: 3 twins + 4
    broken = twins_run((0, 1, 2), first, first, quorum_fn=lambda n: n // 3 * 2, n=10)
    assert any(v.startswith("agreement") for v in SafetyChecker(broken, MEMO).violations())
    correct = twins_run((0, 1, 2), first, first, n=10)
    assert SafetyChecker(correct, MEMO).violations() == []


# ---------------------------------------------------------------------------
# Long run


@pytest.mark.slow
@pytest.mark.parametrize("pattern", [ALL_TO_ALL, LINEAR])
def test_long_run_random_schedules(pattern):
    """Random timed schedules, 5000 per pattern by default (POT_JAX_LONG_RUN_EXAMPLES).
    Half of them crash an honest replica and restart it after the last submission; every
    live honest replica must end with every value and every decision."""
    examples = int(os.environ.get("POT_JAX_LONG_RUN_EXAMPLES", "5000"))
    ran = []

    @settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck))
    @given(
        n=st.sampled_from([4, 5, 6, 7]),
        behaviour=st.sampled_from(list(byzantine.STRATEGIES)),
        seed=st.integers(0, 2**32 - 1),
        drop=st.floats(0, 0.5),
        crash=st.none() | st.tuples(st.integers(0, 6), st.floats(0, 40), st.floats(0.5, 60)),
    )
    def run(n, behaviour, seed, drop, crash):
        f = fault_tolerance(n)
        crashes, restarts = (), ()
        if crash is not None:  # values are all submitted at t = 0: any restart is after
            node, at, after = f + crash[0] % (n - f), crash[1], crash[2]
            crashes, restarts = ((at, node),), ((at + after, node, False),)
        r = run_with_restarts(
            ScenarioConfig(
                n=n,
                pattern=pattern,
                values=3,
                seed=seed,
                byzantine=tuple((i, behaviour) for i in range(f)),
                crashes=crashes,
                restarts=restarts,
                network=NetworkConfig(
                    drop_rate=drop, duplicate_rate=0.1, gst=40.0, random_partitions=1.0
                ),
                checkpoint_interval=2,
                window=4,
                max_time=5_000.0,
            )
        )
        assert r["safety_violations"] == [] and r["internal_errors"] == 0, r
        assert r["undecided"] == {} and r["missing_decisions"] == {}, r
        ran.append(r["views"])

    run()
    print(
        f"\nlong run ({pattern}): {len(ran)} schedules, 0 safety or liveness violations, "
        f"max view {max(ran)}, mean view {sum(ran) / len(ran):.2f}"
    )
    assert len(ran) >= examples
