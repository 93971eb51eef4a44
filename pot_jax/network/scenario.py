"""One-call consensus runs and the consensus benchmark.

``run_scenario(ScenarioConfig(...))`` builds validators (deterministic keys,
real BLS), a cluster, optional Byzantine nodes and Twins, a timed network,
submits values, runs to completion or ``max_time`` and returns a JSON-ready
dict: commits, views, message counts by kind, virtual latency, wall time,
drops by reason, evidence and safety violations.

``bench_consensus()`` runs, per (pattern, n) on a clean network, a stream
of values submitted one every ``submit_interval`` (a steady load, as a
training run's rounds are) and reports messages per decision over the whole
run (the tail's unpiggybacked QCs and checkpoint included) and in steady
state (the mean number of messages sent for the middle half of the stream's
sequence numbers), simulator wall seconds per decision and
virtual latency. ``values=1`` measures a lone decision; all-to-all streams
are ``all_to_all_values`` long (nothing is chained there, and each value
costs ~2n^2 signature-checked votes). All-to-all runs
above ``all_to_all_max_n`` are returned as an explicit ``skipped`` entry
with the reason (O(n^2) messages, each a real signature check).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field

from pot_jax.consensus.keys import simulation_keys
from pot_jax.consensus.messages import value_digest
from pot_jax.consensus.pbft import ALL_TO_ALL, LINEAR, Replica, ReplicaConfig
from pot_jax.consensus.verifier import Verifier
from pot_jax.crypto import bls

from . import byzantine
from .checker import SafetyChecker, undecided
from .cluster import Cluster
from .simulator import NetworkConfig, TimedNetwork

__all__ = ["ScenarioConfig", "bench_consensus", "run_scenario"]


@dataclass(frozen=True)
class ScenarioConfig:
    """One simulated consensus run.

    ``byzantine`` maps node ids to strategy names from
    ``pot_jax.network.byzantine.STRATEGIES`` (combine with ``+``); ``twins``
    lists identities that get a second node (node ids n, n+1, ...);
    ``crashes`` are (time, node) and ``restarts`` (time, node, amnesia).
    ``piggyback_delay`` is ``ReplicaConfig.piggyback_delay`` (None: off).
    ``shared_verification`` lets all replicas share one signature-result
    memo: outcomes are identical (an entry is only written after a sound
    check; proofs/qc-unforgeability.md), wall time is not (each real node
    would verify for itself). The safety checker never reads it.
    """

    n: int = 4
    pattern: str = ALL_TO_ALL
    values: int = 4
    seed: int = 0
    network: NetworkConfig = field(default_factory=NetworkConfig)
    byzantine: tuple[tuple[int, str], ...] = ()
    twins: tuple[int, ...] = ()
    crashes: tuple[tuple[float, int], ...] = ()
    restarts: tuple[tuple[float, int, bool], ...] = ()
    submit_interval: float = 0.0
    max_time: float = 10_000.0
    act_interval: float = 5.0
    checkpoint_interval: int = 8
    window: int = 16
    request_timeout: float = 8.0
    view_change_timeout: float = 8.0
    piggyback_delay: float | None = 1.0
    shared_verification: bool = True
    chain_id: bytes = b"pot-jax/simulation"


def build(config: ScenarioConfig) -> tuple[Cluster, TimedNetwork, dict]:
    """The cluster and network of a scenario, before anything runs."""
    sks, validators = simulation_keys(config.n)
    rc = ReplicaConfig(
        chain_id=config.chain_id,
        validators=validators,
        pattern=config.pattern,
        checkpoint_interval=config.checkpoint_interval,
        window=config.window,
        request_timeout=config.request_timeout,
        view_change_timeout=config.view_change_timeout,
        piggyback_delay=config.piggyback_delay,
    )
    memo: dict = {}

    def verifier() -> Verifier:
        return Verifier(validators, memo if config.shared_verification else {})

    replicas = [Replica(rc, i, sks[i], verifier()) for i in range(config.n)]
    replicas = byzantine.twins(replicas, config.twins)
    strategies = {
        node: byzantine.compose(*(byzantine.STRATEGIES[s]() for s in name.split("+")))
        for node, name in config.byzantine
    }
    cluster = Cluster(replicas, strategies=strategies, seed=config.seed)
    net = TimedNetwork(cluster, config.network, seed=config.seed)
    return cluster, net, memo


def run_scenario(config: ScenarioConfig) -> dict:
    """Run one scenario; see the module docstring for the returned fields."""
    cluster, net, _ = build(config)
    values = [b"value-%d-%d" % (config.seed, k) for k in range(config.values)]
    for k, v in enumerate(values):
        net.submit_at(k * config.submit_interval, v)
    for at, node in config.crashes:
        net.crash_at(at, node)
    for at, node, amnesia in config.restarts:
        net.restart_at(at, node, amnesia=amnesia)
    for node, _ in config.byzantine:
        net.act_every(config.act_interval, node, config.max_time / 2)
    digests = {value_digest(v) for v in values}

    seen = [-1]

    def done() -> bool:
        if cluster.decision_events == seen[0]:
            return False
        seen[0] = cluster.decision_events
        if any(len(x.decisions) < len(digests) for x in cluster.nodes if x.up and not x.faulty):
            return False  # cheap early exit: some node cannot have decided everything yet
        return not undecided(cluster, digests)

    start = time.perf_counter()
    net.run(until=config.max_time, stop=done)
    wall = time.perf_counter() - start
    checker = SafetyChecker(cluster)  # its own verifier: never the replicas' memo
    honest = [x for x in cluster.honest() if x.up]
    latencies = []
    for d in sorted(digests):  # fixed order: the mean is bit-reproducible across hash seeds
        times = [
            t
            for x in honest
            for dec, t in zip(x.decisions, x.decision_times, strict=True)
            if dec.digest == d
        ]
        if len(times) == len(honest) and honest:
            latencies.append(max(times) - cluster.submitted[d])
    decided = min((len(digests & cluster.decided_digests(x)) for x in honest), default=0)
    total = sum(cluster.stats.sent.values())
    steady = steady_state_messages(cluster, len(values)) if decided == len(digests) else None
    return {
        "n": config.n,
        "pattern": config.pattern,
        "values": config.values,
        "decided": decided,
        "all_decided": decided == len(digests),
        "commits": max((len(x.decisions) for x in honest), default=0),
        "views": max((x.state.view for x in honest), default=0),
        "messages": dict(sorted(cluster.stats.sent.items())),
        "messages_total": total,
        "messages_per_decision": total / decided if decided else None,
        "steady_state_messages_per_decision": steady,
        "virtual_latency_mean": sum(latencies) / len(latencies) if latencies else None,
        "virtual_latency_max": max(latencies, default=None),
        "virtual_time": net.time,
        "wall_seconds": wall,
        "wall_seconds_per_decision": wall / decided if decided else None,
        "events": net.events,
        "events_capped": net.events_capped,
        "replica_drops": dict(sorted(cluster.stats.replica_dropped.items())),
        "network_drops": dict(sorted(cluster.stats.network_dropped.items())),
        "evidence": len(cluster.stats.evidence),
        "safety_violations": checker.violations(),
        "bls_backend": bls.get_backend().name,
    }


def steady_state_messages(cluster: Cluster, n_values: int) -> float | None:
    """Mean messages sent for sequences n/4 .. 3n/4 - 1 of a stream of n values (a
    message counts for the sequence in its header, a bundle for its carrier's); None
    for fewer than 4 values. The stream's start and its unpiggybacked tail are left out."""
    if n_values < 4:
        return None
    seqs = range(n_values // 4 + 1, 3 * n_values // 4 + 1)
    return sum(cluster.stats.sent_by_seq[s] for s in seqs) / len(seqs)


def bench_consensus(
    ns=(4, 16, 64, 256, 1024),
    patterns=(ALL_TO_ALL, LINEAR),
    *,
    values: int = 16,
    all_to_all_values: int = 4,
    submit_interval: float = 1.0,
    all_to_all_max_n: int = 256,
    shared_verification: bool = True,
    seed: int = 0,
) -> dict:
    """Messages and time per decided value for each (pattern, n); see the module docstring."""
    results = []
    for pattern in patterns:
        for n in ns:
            if pattern == ALL_TO_ALL and n > all_to_all_max_n:
                results.append(
                    {
                        "pattern": pattern,
                        "n": n,
                        "skipped": (
                            f"all-to-all sends ~2n^2 = {2 * n * n} votes per decision, each "
                            f"signature-checked; above n={all_to_all_max_n} a run takes minutes"
                        ),
                    }
                )
                continue
            simulation_keys(n)  # key generation and PoP checks are setup, not consensus
            cfg = ScenarioConfig(
                n=n,
                pattern=pattern,
                values=all_to_all_values if pattern == ALL_TO_ALL else values,
                submit_interval=submit_interval,
                seed=seed,
                shared_verification=shared_verification,
                network=NetworkConfig(),
            )
            r = run_scenario(cfg)
            results.append(
                {
                    "pattern": pattern,
                    "n": n,
                    "values": cfg.values,
                    "decided": r["decided"],
                    "messages_per_decision": r["messages_per_decision"],
                    "messages_per_decision_over_n": (
                        r["messages_per_decision"] / n if r["messages_per_decision"] else None
                    ),
                    "steady_state_messages_per_decision": r["steady_state_messages_per_decision"],
                    "steady_state_over_n": (
                        r["steady_state_messages_per_decision"] / n
                        if r["steady_state_messages_per_decision"]
                        else None
                    ),
                    "wall_seconds_per_decision": r["wall_seconds_per_decision"],
                    "virtual_latency": r["virtual_latency_mean"],
                    "messages": r["messages"],
                    "safety_violations": r["safety_violations"],
                }
            )
    return {
        "benchmark": "consensus",
        "bls_backend": bls.get_backend().name,
        "values_per_run": {LINEAR: values, ALL_TO_ALL: all_to_all_values},
        "submit_interval": submit_interval,
        "shared_verification": shared_verification,
        "results": results,
        "config": dataclasses.asdict(ScenarioConfig(values=values, submit_interval=submit_interval))
        | {"network": "default"},
    }


def make_cluster(
    n: int,
    pattern: str = ALL_TO_ALL,
    *,
    twins: tuple[int, ...] = (),
    strategies: dict | None = None,
    memo: dict | None = None,
    seed: int = 0,
    chain_id: bytes = b"pot-jax/simulation",
    keys: tuple | None = None,
    **replica_options,
) -> Cluster:
    """A cluster of n validators (plus Twins), not yet attached to a transport.

    ``keys`` is ``(secret keys, validator set)``, one secret per replica;
    default: deterministic simulation keys. ``replica_options`` go to
    ``ReplicaConfig`` (``quorum_fn`` there is for canary tests only)."""
    sks, validators = simulation_keys(n) if keys is None else keys
    rc = ReplicaConfig(chain_id=chain_id, validators=validators, pattern=pattern, **replica_options)
    memo = {} if memo is None else memo
    replicas = [Replica(rc, i, sks[i], Verifier(validators, memo)) for i in range(n)]
    return Cluster(byzantine.twins(replicas, twins), strategies=strategies or {}, seed=seed)
