"""Deterministic discrete-event network simulator (virtual time, seeded).

``TimedNetwork`` is a ``Transport`` for a ``Cluster``: every message gets a
delivery time from a latency distribution; before the global stabilisation
time (GST) it may be dropped, and a message between the two sides of an
active partition is lost; any message may be duplicated. After GST nothing
is dropped and every message arrives within ``delta``, and a message sent
before GST that was not dropped arrives by GST + delta (partial synchrony).
Crashes, restarts (durable state kept, or wiped: the amnesia fault),
submissions and Byzantine actions are scheduled events. Every random choice
comes from one ``random.Random(seed)``: a run is a function of its inputs.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pot_jax.consensus.pbft import SetTimer

from .cluster import Cluster, Node

__all__ = ["Latency", "NetworkConfig", "Partition", "TimedNetwork"]


@dataclass(frozen=True)
class Latency:
    """A one-way delay distribution: constant, uniform(low, high), exponential(mean) or
    lognormal(mean, sigma) (``mean`` is the median exp(mu) for lognormal)."""

    kind: str = "uniform"
    low: float = 0.5
    high: float = 1.5
    mean: float = 1.0
    sigma: float = 0.5

    def sample(self, rng: random.Random) -> float:
        if self.kind == "constant":
            return self.mean
        if self.kind == "uniform":
            return rng.uniform(self.low, self.high)
        if self.kind == "exponential":
            return rng.expovariate(1.0 / self.mean)
        if self.kind == "lognormal":
            return rng.lognormvariate(math.log(self.mean), self.sigma)
        raise ValueError(
            f"latency kind {self.kind!r}; expected constant, uniform, exponential or lognormal"
        )


@dataclass(frozen=True)
class Partition:
    """From ``start`` to ``end`` only nodes within the same group can talk."""

    start: float
    end: float
    groups: tuple[frozenset[int], ...]

    def separates(self, a: int, b: int, t: float) -> bool:
        if not self.start <= t < self.end:
            return False
        return not any(a in g and b in g for g in self.groups)


@dataclass(frozen=True)
class NetworkConfig:
    """Network behaviour of one run; see the module docstring.

    ``random_partitions`` is the expected number of random two-way splits
    drawn in [0, GST), each lasting ``partition_duration``.
    """

    latency: Latency = Latency()
    drop_rate: float = 0.0
    duplicate_rate: float = 0.0
    gst: float = 0.0
    delta: float = 2.0
    partitions: tuple[Partition, ...] = ()
    random_partitions: float = 0.0
    partition_duration: float = 10.0


class TimedNetwork:
    """Virtual-time transport and event loop for a cluster."""

    def __init__(self, cluster: Cluster, config: NetworkConfig, *, seed: int = 0) -> None:
        self.cluster = cluster
        self.config = config
        self.rng = random.Random(seed)
        self.time = 0.0
        self.queue: list = []
        self.counter = itertools.count()
        self.events = 0
        self.events_capped = False
        cluster.transport = self
        self.partitions = list(config.partitions) + self._random_partitions()

    def _random_partitions(self) -> list[Partition]:
        cfg = self.config
        if cfg.random_partitions <= 0 or cfg.gst <= 0:
            return []
        out = []
        k = sum(1 for _ in range(100) if self.rng.random() < cfg.random_partitions / 100)
        ids = [node.id for node in self.cluster.nodes]
        for _ in range(k):
            start = self.rng.uniform(0, cfg.gst)
            side = frozenset(i for i in ids if self.rng.random() < 0.5)
            out.append(
                Partition(
                    start,
                    min(start + cfg.partition_duration, cfg.gst),
                    (side, frozenset(ids) - side),
                )
            )
        return out

    # -- Transport -----------------------------------------------------------------

    def now(self) -> float:
        return self.time

    def _push(self, at: float, action: Callable[[], None]) -> None:
        heapq.heappush(self.queue, (at, next(self.counter), action))

    def send(self, src: Node, dst: Node, data: bytes) -> None:
        cfg, t = self.config, self.time
        stats = self.cluster.stats
        if any(p.separates(src.id, dst.id, t) for p in self.partitions):
            stats.network_dropped["partition"] += 1
            return
        if t < cfg.gst and self.rng.random() < cfg.drop_rate:
            stats.network_dropped["random drop"] += 1
            return
        copies = 2 if self.rng.random() < cfg.duplicate_rate else 1
        for _ in range(copies):
            delay = cfg.latency.sample(self.rng)
            if t >= cfg.gst:
                at = t + min(delay, cfg.delta)
            else:
                at = min(t + delay, cfg.gst + cfg.delta)
            identity, dst_id = src.identity, dst.id
            self._push(at, lambda d=dst_id, s=identity, m=data: self.cluster.deliver(d, s, m))

    def timer(self, node: Node, timer: SetTimer) -> None:
        node_id, inc = node.id, node.incarnation
        self._push(
            self.time + timer.delay,
            lambda: self.cluster.fire_timer(node_id, timer.name, timer.token, inc),
        )

    def message_time(self) -> float | None:
        """When a message sent now arrives, by the same rules as ``send``; None if dropped.

        For messages outside the PBFT cluster (the protocol's role messages):
        latency, random drops before GST and the GST + delta bound apply;
        partitions, which name replica ids, do not.
        """
        cfg, t = self.config, self.time
        if t < cfg.gst and self.rng.random() < cfg.drop_rate:
            return None
        delay = cfg.latency.sample(self.rng)
        return t + min(delay, cfg.delta) if t >= cfg.gst else min(t + delay, cfg.gst + cfg.delta)

    def schedule(self, at: float, action: Callable[[], None]) -> None:
        """Run ``action()`` at virtual time ``at`` (an event of the same queue)."""
        self._push(at, action)

    # -- scheduling ---------------------------------------------------------------

    def submit_at(self, at: float, value: bytes, nodes: Sequence[int] | None = None) -> None:
        self._push(at, lambda: self.cluster.submit(value, nodes))

    def crash_at(self, at: float, node_id: int) -> None:
        self._push(at, lambda: self.cluster.crash(node_id))

    def restart_at(self, at: float, node_id: int, *, amnesia: bool = False) -> None:
        self._push(at, lambda: self.cluster.restart(node_id, amnesia=amnesia))

    def act_every(self, interval: float, node_id: int, until: float) -> None:
        """Let a Byzantine node act unprompted every ``interval`` until ``until``."""
        t = interval
        while t < until:
            self._push(t, lambda: self.cluster.act(node_id))
            t += interval

    def run(
        self,
        *,
        until: float = math.inf,
        max_events: int | None = None,
        stop: Callable[[], bool] | None = None,
    ) -> None:
        """Process events in time order until the queue empties, ``until``, ``stop()`` or
        ``max_events`` events in all (None: no cap); ``events_capped`` tells whether the
        cap, not the run, ended it."""
        self.events_capped = False
        while self.queue:
            if max_events is not None and self.events >= max_events:
                self.events_capped = True
                break
            at, _, action = self.queue[0]
            if at > until:
                break
            heapq.heappop(self.queue)
            self.time = max(self.time, at)
            action()
            self.events += 1
            if stop is not None and stop():
                break
