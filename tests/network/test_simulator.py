"""The discrete-event simulator: determinism, network faults, GST, crashes, strategies."""

import random

import pytest

from pot_jax.consensus.pbft import ALL_TO_ALL, LINEAR
from pot_jax.network import byzantine
from pot_jax.network.checker import undecided
from pot_jax.network.scenario import (
    ScenarioConfig,
    bench_consensus,
    build,
    make_cluster,
    run_scenario,
)
from pot_jax.network.simulator import Latency, NetworkConfig, Partition, TimedNetwork

MEMO: dict = {}


def _strip_wall(r):
    return {k: v for k, v in r.items() if "wall" not in k}


def test_same_seed_same_run_different_seed_different_schedule():
    cfg = ScenarioConfig(
        n=4, values=3, seed=7, network=NetworkConfig(drop_rate=0.2, duplicate_rate=0.2, gst=30.0)
    )
    a, b = run_scenario(cfg), run_scenario(cfg)
    assert _strip_wall(a) == _strip_wall(b)
    c = run_scenario(ScenarioConfig(**{**cfg.__dict__, "seed": 8}))
    assert c["virtual_time"] != a["virtual_time"]


@pytest.mark.parametrize("kind", ["constant", "uniform", "exponential", "lognormal"])
def test_latency_distributions_sample_positive_delays(kind):
    rng = random.Random(0)
    xs = [Latency(kind=kind, mean=2.0).sample(rng) for _ in range(200)]
    assert all(x > 0 for x in xs)
    if kind == "uniform":
        assert all(0.5 <= x <= 1.5 for x in xs)


def test_unknown_latency_kind_is_rejected():
    with pytest.raises(ValueError, match="latency kind"):
        Latency(kind="pareto").sample(random.Random(0))


def test_after_gst_nothing_is_dropped_and_delay_is_bounded_by_delta():
    c = make_cluster(4, memo=MEMO)
    net = TimedNetwork(
        c,
        NetworkConfig(
            latency=Latency("exponential", mean=50.0), drop_rate=1.0, gst=10.0, delta=2.0
        ),
    )
    net.submit_at(0.0, b"before")
    net.submit_at(11.0, b"after")
    net.run(until=10_000.0, stop=lambda: not undecided(c))
    assert c.stats.network_dropped["random drop"] > 0
    assert undecided(c) == {}
    # "before" is only learnt via retransmission after GST; "after" within a few deltas.
    d_after = [
        t
        for node in c.nodes
        for d, t in zip(node.decisions, node.decision_times, strict=True)
        if d.value == b"after"
    ]
    assert len(d_after) == 4 and max(d_after) < 11.0 + 60.0


def test_partition_drops_messages_between_sides_until_it_ends():
    c = make_cluster(4, memo=MEMO)
    part = Partition(0.0, 30.0, (frozenset({0, 1}), frozenset({2, 3})))
    net = TimedNetwork(c, NetworkConfig(partitions=(part,), gst=30.0))
    net.submit_at(0.0, b"x")
    net.run(until=29.0)
    assert all(not node.decisions for node in c.nodes)  # no side has a quorum of 3
    assert c.stats.network_dropped["partition"] > 0
    net.submit_at(31.0, b"x")
    net.run(until=10_000.0, stop=lambda: not undecided(c))
    assert undecided(c) == {}


def test_random_partitions_are_drawn_before_gst_only():
    c = make_cluster(4, memo=MEMO)
    net = TimedNetwork(c, NetworkConfig(gst=100.0, random_partitions=5.0), seed=3)
    assert net.partitions
    assert all(0 <= p.start < p.end <= 100.0 for p in net.partitions)


@pytest.mark.parametrize("amnesia", [False, True])
def test_scheduled_crash_and_restart(amnesia):
    cfg = ScenarioConfig(
        n=4, values=4, submit_interval=5.0, crashes=((3.0, 2),), restarts=((12.0, 2, amnesia),)
    )
    r = run_scenario(cfg)
    assert r["safety_violations"] == []
    assert r["all_decided"]


@pytest.mark.parametrize("pattern", [ALL_TO_ALL, LINEAR])
@pytest.mark.parametrize("name", sorted(byzantine.STRATEGIES))
def test_each_byzantine_strategy_is_tolerated_and_its_bad_messages_counted(name, pattern):
    r = run_scenario(
        ScenarioConfig(n=4, pattern=pattern, values=3, byzantine=((1, name),), act_interval=2.0)
    )
    assert r["safety_violations"] == []
    assert r["all_decided"], r
    assert r["replica_drops"].get("internal-error", 0) == 0
    expected = {
        "invalid_signatures": {"bad-signature", "bad-view-change"},
        "forged_bitmaps": {"bad-qc", "malformed", "late"},
        "garbage": {"malformed", "oversized"},
        "replay_old_qcs": {"late", "bad-qc", "duplicate", "stale-view", "out-of-window"},
    }.get(name)
    if expected:
        assert expected & set(r["replica_drops"]), r["replica_drops"]


def test_composed_strategies_and_twins_in_a_scenario():
    r = run_scenario(
        ScenarioConfig(
            n=7, values=3, byzantine=((1, "double_voting+view_change_spam"),), twins=(2,)
        )
    )
    assert r["safety_violations"] == [] and r["all_decided"]
    assert r["evidence"] > 0


def test_view_change_spam_alone_cannot_move_honest_replicas():
    c = make_cluster(4, strategies={3: byzantine.view_change_spam()}, memo=MEMO)
    net = TimedNetwork(c, NetworkConfig())
    net.act_every(1.0, 3, 20.0)
    net.run(until=30.0)
    assert all(node.state.view == 0 and node.state.active for node in c.honest())


def test_run_scenario_reports_the_promised_fields():
    r = run_scenario(ScenarioConfig(n=4, pattern=LINEAR, values=2))
    for key in (
        "commits",
        "views",
        "messages",
        "virtual_latency_mean",
        "wall_seconds",
        "messages_per_decision",
    ):
        assert key in r
    assert r["commits"] == 2 and r["messages"]["pre-prepare"] == 6


def test_bench_consensus_small_and_explicit_skips():
    out = bench_consensus(ns=(4, 8), patterns=(ALL_TO_ALL, LINEAR), all_to_all_max_n=4)
    rows = {(r["pattern"], r["n"]): r for r in out["results"]}
    assert "skipped" in rows[(ALL_TO_ALL, 8)]
    lin = rows[(LINEAR, 8)]
    assert lin["decided"] == 16 and lin["steady_state_messages_per_decision"] == 4 * 7
    assert 4 * 7 < lin["messages_per_decision"] < 5 * 7  # the stream's tail is not chained
    lone = bench_consensus(ns=(8,), patterns=(LINEAR,), values=1)["results"][0]
    assert lone["decided"] == 1 and lone["messages_per_decision"] == 5 * 7
    assert rows[(ALL_TO_ALL, 4)]["safety_violations"] == []
    assert out["bls_backend"]


def test_an_event_cap_is_reported_never_silent():
    """Found at n = 256: the old default cap of 10^6 events ended all-to-all runs
    mid-stream and the bench reported 7 of 16 values decided. No cap by default now;
    a cap that ends a run says so."""
    cluster, net, _ = build(ScenarioConfig(n=4, values=1))
    net.submit_at(0.0, b"v")
    net.run(max_events=10)
    assert net.events == 10 and net.events_capped
    net.run()
    assert not net.events_capped and not net.queue
    assert run_scenario(ScenarioConfig(n=4, values=2))["events_capped"] is False
