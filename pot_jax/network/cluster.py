"""A set of replica nodes and the bookkeeping around them, independent of time.

A ``Cluster`` owns the nodes (a node is one process running a replica; two
nodes may share one validator identity and key: *Twins*), feeds them events,
routes what they send through a ``Transport`` and records everything the
checkers need: decisions per node, proposals seen on the wire, drops by
reason, equivocation evidence, message counts by kind.

A node's new state (including its durable part) is stored before its
messages are handed to the transport: a vote is durable before it is sent.

Two transports exist: ``pot_jax.network.simulator.TimedNetwork`` (virtual
time, latency, drops, partitions, GST) and ``ManualNetwork`` below, where a
test chooses which in-flight message or timer goes next.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from pot_jax.consensus.evidence import EquivocationEvidence
from pot_jax.consensus.messages import PrePrepare, bundle_parts, decode_message, message_seq
from pot_jax.consensus.pbft import (
    Decision,
    Deliver,
    Replica,
    ReplicaState,
    Send,
    SetTimer,
    StepResult,
    Submit,
    TimerExpired,
    durable_state,
    initial_state,
    recover,
    step,
)

__all__ = ["Cluster", "ClusterStats", "ManualNetwork", "Node", "Transport"]


@dataclass
class Node:
    """One process: a replica's identity and state, whether it is up, and how it misbehaves."""

    id: int
    replica: Replica
    state: ReplicaState
    up: bool = True
    faulty: bool = False
    strategy: object | None = None  # a pot_jax.network.byzantine.Strategy
    incarnation: int = 0
    decisions: list[Decision] = field(default_factory=list)
    decision_times: list[float] = field(default_factory=list)

    @property
    def identity(self) -> int:
        return self.replica.index


@dataclass
class ClusterStats:
    sent: Counter = field(default_factory=Counter)
    sent_by_seq: Counter = field(default_factory=Counter)  # by the sequence a message is for
    network_dropped: Counter = field(default_factory=Counter)
    replica_dropped: Counter = field(default_factory=Counter)
    delivered: int = 0
    evidence: list[EquivocationEvidence] = field(default_factory=list)


class Transport(Protocol):
    """Moves a node's messages and timers; decides when (and whether) they arrive."""

    def send(self, src: Node, dst: Node, data: bytes) -> None: ...

    def timer(self, node: Node, timer: SetTimer) -> None: ...

    def now(self) -> float: ...


class Cluster:
    """Nodes plus routing and records; see the module docstring."""

    def __init__(
        self,
        replicas: Sequence[Replica],
        *,
        strategies: Mapping[int, object] | None = None,
        faulty: Sequence[int] = (),
        seed: int = 0,
        validate: Callable[[bytes], bool] | None = None,
    ) -> None:
        strategies = dict(strategies or {})
        identities = Counter(r.index for r in replicas)
        self.nodes = [
            Node(
                i,
                r,
                initial_state(r),
                faulty=(i in faulty or i in strategies or identities[r.index] > 1),
                strategy=strategies.get(i),
            )
            for i, r in enumerate(replicas)
        ]
        self.config = replicas[0].config
        self.validate = validate or self.config.validate
        self.rng = random.Random(seed)
        self.stats = ClusterStats()
        self.decision_events = 0  # bumps whenever any node decides (cheap progress test)
        self.proposals: dict[bytes, bytes | None] = {}
        self.submitted: dict[bytes, float] = {}
        self.transport: Transport | None = None
        self.by_identity: dict[int, list[Node]] = {}
        for node in self.nodes:
            self.by_identity.setdefault(node.identity, []).append(node)

    # -- feeding events ---------------------------------------------------------

    def now(self) -> float:
        return self.transport.now() if self.transport is not None else 0.0

    def submit(self, value: bytes, nodes: Sequence[int] | None = None) -> None:
        """A client sends ``value`` to the given nodes (default: all)."""
        from pot_jax.consensus.messages import value_digest

        self.submitted.setdefault(value_digest(value), self.now())
        for i in nodes if nodes is not None else range(len(self.nodes)):
            node = self.nodes[i]
            if node.up:
                self._apply(node, step(node.replica, node.state, Submit(value)))

    def deliver(self, node_id: int, src_identity: int, data: bytes) -> None:
        node = self.nodes[node_id]
        if not node.up:
            self.stats.network_dropped["receiver down"] += 1
            return
        if node.strategy is not None:
            # A Byzantine node's strategy judges each bundled message on its own.
            for part in bundle_parts(data):
                if node.strategy.incoming(node, src_identity, part, self):
                    self.stats.delivered += 1
                    self._apply(node, step(node.replica, node.state, Deliver(src_identity, part)))
            return
        self.stats.delivered += 1
        self._apply(node, step(node.replica, node.state, Deliver(src_identity, data)))

    def fire_timer(self, node_id: int, name: str, token: int, incarnation: int) -> None:
        node = self.nodes[node_id]
        if node.up and node.incarnation == incarnation:
            self._apply(node, step(node.replica, node.state, TimerExpired(name, token)))

    def crash(self, node_id: int) -> None:
        node = self.nodes[node_id]
        node.up = False
        node.incarnation += 1

    def restart(self, node_id: int, *, amnesia: bool = False) -> None:
        """Bring a node back; with ``amnesia`` its durable state is lost (a fault)."""
        node = self.nodes[node_id]
        if node.up:
            return
        node.up = True
        if amnesia:
            node.faulty = True
            node.state = initial_state(node.replica)
            node.decisions = []
            node.decision_times = []
            return
        self._apply(node, recover(node.replica, durable_state(node.state)))

    def act(self, node_id: int) -> None:
        """Let a Byzantine node's strategy do something unprompted (spam, replay)."""
        node = self.nodes[node_id]
        if node.up and node.strategy is not None:
            self._route(node, node.strategy.act(node, self))

    # -- outputs -----------------------------------------------------------------

    def _apply(self, node: Node, result: StepResult) -> None:
        node.state = result.state  # durable before anything leaves the node
        if result.decisions:
            self.decision_events += 1
        for d in result.decisions:
            node.decisions.append(d)
            node.decision_times.append(self.now())
        for drop in result.drops:
            self.stats.replica_dropped[drop.reason] += 1
        self.stats.evidence.extend(result.evidence)
        sends = list(result.sends)
        if node.strategy is not None:
            # Strategies rewrite single messages: unbundle what the honest logic bundled.
            sends = [Send(s.dest, p) for s in sends for p in bundle_parts(s.data)]
            sends = node.strategy.outgoing(node, sends, self)
        self._route(node, sends)
        if node.strategy is None or node.strategy.runs_timers:
            for timer in result.timers:
                self.transport.timer(node, timer)

    def destinations(self, node: Node, dest: int | None) -> list[Node]:
        if dest is None:
            return [x for x in self.nodes if x.identity != node.identity]
        return list(self.by_identity.get(dest, ()))

    def _route(self, node: Node, sends: Sequence[Send]) -> None:
        for s in sends:
            parts = bundle_parts(s.data)  # decoded once: proposals and the carrier's seq
            for part in parts:
                if part[:1] == b"\x01":
                    self._record_proposal(part)
            seq = message_seq(parts[-1])
            for dst in self.destinations(node, s.dest):
                self.stats.sent[s.kind] += 1
                self.stats.sent_by_seq[seq] += 1
                self.transport.send(node, dst, s.data)

    def _record_proposal(self, data: bytes) -> None:
        try:
            m = decode_message(data)
        except ValueError:
            return
        if isinstance(m, PrePrepare) and m.value is not None:
            self.proposals.setdefault(m.digest, m.value)

    # -- queries -----------------------------------------------------------------

    def honest(self) -> list[Node]:
        return [x for x in self.nodes if not x.faulty]

    def decided_digests(self, node: Node) -> set[bytes]:
        return {d.digest for d in node.decisions}

    def missing_decisions(self) -> dict[int, list[int]]:
        """For each honest node that is up, the sequences that some honest node decided
        and it has not (a restarted replica must catch up on all of them)."""
        decided = {d.seq for x in self.honest() for d in x.decisions}
        out = {}
        for node in self.honest():
            if node.up:
                missing = sorted(decided - {d.seq for d in node.decisions})
                if missing:
                    out[node.id] = missing
        return out


@dataclass
class ManualNetwork:
    """A transport where the caller picks what happens next (for stateful tests).

    Messages wait in ``in_flight`` and timers in ``timers`` until the test
    delivers, drops or duplicates them. ``groups`` is an optional partition:
    a message between nodes in different groups is dropped on delivery.
    Each timer keeps its deadline (the clock when set plus its delay), which
    ``run_fair`` honours; ``fire`` lets a test fire any timer early.
    """

    cluster: Cluster
    in_flight: list[tuple[int, int, int, bytes]] = field(default_factory=list)
    timers: list[tuple[int, str, int, int, float]] = field(default_factory=list)
    groups: list[frozenset[int]] | None = None
    clock: float = 0.0

    def __post_init__(self) -> None:
        self.cluster.transport = self

    def now(self) -> float:
        return self.clock

    def send(self, src: Node, dst: Node, data: bytes) -> None:
        self.in_flight.append((src.id, src.identity, dst.id, data))

    def timer(self, node: Node, timer: SetTimer) -> None:
        self.timers = [t for t in self.timers if not (t[0] == node.id and t[1] == timer.name)]
        self.timers.append(
            (node.id, timer.name, timer.token, node.incarnation, self.clock + timer.delay)
        )

    def connected(self, a: int, b: int) -> bool:
        if self.groups is None:
            return True
        return any(a in g and b in g for g in self.groups)

    def deliver(self, i: int, *, tick: float = 1.0) -> None:
        src, identity, dst, data = self.in_flight.pop(i % len(self.in_flight))
        self.clock += tick
        if not self.connected(src, dst):
            self.cluster.stats.network_dropped["partition"] += 1
            return
        self.cluster.deliver(dst, identity, data)

    def drop(self, i: int) -> None:
        self.in_flight.pop(i % len(self.in_flight))
        self.cluster.stats.network_dropped["dropped"] += 1

    def duplicate(self, i: int) -> None:
        self.in_flight.append(self.in_flight[i % len(self.in_flight)])

    def delay(self, i: int) -> None:
        self.in_flight.append(self.in_flight.pop(i % len(self.in_flight)))

    def fire(self, i: int) -> None:
        node_id, name, token, incarnation, _ = self.timers.pop(i % len(self.timers))
        self.clock += 1.0
        self.cluster.fire_timer(node_id, name, token, incarnation)

    def run_fair(self, max_steps: int = 100_000, stop: Callable[[], bool] | None = None) -> int:
        """After GST: heal the partition, deliver everything in FIFO order without letting
        time pass, and when nothing is in flight advance the clock to the earliest timer
        deadline and fire that timer; return early when idle and ``stop()`` holds.

        Message delays are thus negligible next to timeouts, the synchrony PBFT's
        liveness assumes after GST; firing timers in the order they were *set* instead
        would ignore the view-change backoff and can keep replicas in different views
        forever."""
        self.groups = None
        steps = 0
        while steps < max_steps and (self.in_flight or self.timers):
            if self.in_flight:
                self.deliver(0, tick=0.0)
            elif stop is not None and stop():
                break
            else:
                k = min(range(len(self.timers)), key=lambda j: (self.timers[j][4], j))
                node_id, name, token, incarnation, deadline = self.timers.pop(k)
                self.clock = max(self.clock, deadline)
                self.cluster.fire_timer(node_id, name, token, incarnation)
            steps += 1
        return steps
