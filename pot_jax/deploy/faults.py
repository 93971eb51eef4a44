"""Network faults injected in user space, on the sending side, for deployed nodes.

The machines this project runs on have no ``netem`` queueing discipline, so a
deployed cluster cannot degrade its links in the kernel. Instead every
``Transport`` may hold a ``FaultLayer``, which decides the fate of each
message before it is queued for gRPC: drop it (``loss``, or a ``partitions``
window that separates sender and receiver), delay it (``delay``, constant or
exponential), or queue it twice (``duplicate``). The layer sits below the
protocol and above gRPC, so the protocol sees exactly the faults a lossy,
slow, partitioned network would cause, and gRPC's own streams stay healthy.

Guarantees:

* Deterministic per link: the fate of the k-th message from A to B depends
  only on the seed, A, B, k and (for partitions) the time it is sent, never on
  traffic between other pairs or on thread timing. Two runs with the same seed
  that send the same sequence on a link see the same losses and duplicates.
* A partition, as in ``pot_jax.network.simulator.Partition``: from ``start``
  to ``end`` seconds after the layer's start time, only endpoints within the
  same group can talk; an endpoint listed in no group is cut off from all.
* Exponential delays reorder messages; a constant delay keeps their order.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

__all__ = ["DELAY_KINDS", "FaultLayer", "FaultSchedule", "Fate", "PartitionWindow"]

DELAY_KINDS = ("constant", "exponential")
METHOD = "user-space sender-side fault layer"


@dataclass(frozen=True)
class PartitionWindow:
    """From ``start`` to ``end`` (seconds after the start time) only endpoints within a group talk."""

    start: float
    end: float
    groups: tuple[frozenset[str], ...]

    def separates(self, a: str, b: str, t: float) -> bool:
        if not self.start <= t < self.end:
            return False
        return not any(a in g and b in g for g in self.groups)


@dataclass(frozen=True)
class FaultSchedule:
    """What the network does to messages: the parsed form of a small JSON config.

    ``delay`` is the constant delay or the exponential mean, in seconds;
    ``loss`` and ``duplicate`` are probabilities per message.
    """

    delay: float = 0.0
    delay_kind: str = "constant"
    loss: float = 0.0
    duplicate: float = 0.0
    partitions: tuple[PartitionWindow, ...] = ()

    @classmethod
    def from_dict(cls, config: Mapping[str, Any]) -> FaultSchedule:
        """Parses ``config``; raises ``ValueError`` naming the first field that is wrong."""
        if not isinstance(config, Mapping):
            raise ValueError(f"fault schedule must be a JSON object, got {type(config).__name__}")
        unknown = sorted(set(config) - {f for f in cls.__dataclass_fields__})
        if unknown:
            raise ValueError(
                f"fault schedule has unknown field {unknown[0]!r}; expected delay, delay_kind, "
                "loss, duplicate, partitions"
            )
        delay_kind = config.get("delay_kind", "constant")
        if delay_kind not in DELAY_KINDS:
            raise ValueError(
                f"fault schedule field 'delay_kind' is {delay_kind!r}; expected constant or exponential"
            )
        return cls(
            delay=_number(config, "delay", 0.0, low=0.0, high=math.inf),
            delay_kind=delay_kind,
            loss=_number(config, "loss", 0.0, low=0.0, high=1.0),
            duplicate=_number(config, "duplicate", 0.0, low=0.0, high=1.0),
            partitions=_partitions(config.get("partitions", [])),
        )

    @classmethod
    def from_json(cls, text: str) -> FaultSchedule:
        try:
            config = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"fault schedule is not valid JSON: {e}") from e
        return cls.from_dict(config)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form ``from_dict`` reads back (groups sorted, so it is canonical)."""
        return {
            "delay": self.delay,
            "delay_kind": self.delay_kind,
            "loss": self.loss,
            "duplicate": self.duplicate,
            "partitions": [
                {"start": p.start, "end": p.end, "groups": [sorted(g) for g in p.groups]}
                for p in self.partitions
            ],
        }


def _number(
    config: Mapping[str, Any],
    field: str,
    default: float,
    *,
    low: float,
    high: float,
    where: str = "",
) -> float:
    """``config[field]`` as a float in [low, high]; ``where`` locates ``config`` in the schedule."""
    name = f"{where}.{field}" if where else field
    value = config.get(field, default)
    # bool is an int to Python, but `"loss": true` is a mistake, not a probability of 1.
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        raise ValueError(f"fault schedule field {name!r} is {value!r}; expected a number")
    if not low <= value <= high:
        raise ValueError(
            f"fault schedule field {name!r} is {value}; expected a number in [{low}, {high}]"
        )
    return float(value)


def _partitions(windows: Any) -> tuple[PartitionWindow, ...]:
    if not isinstance(windows, list):
        raise ValueError(f"fault schedule field 'partitions' is {windows!r}; expected a list")
    parsed = []
    for i, window in enumerate(windows):
        where = f"partitions[{i}]"
        if not isinstance(window, Mapping) or set(window) != {"start", "end", "groups"}:
            raise ValueError(
                f"fault schedule field {where!r} is {window!r}; expected {{start, end, groups}}"
            )
        start = _number(window, "start", 0.0, low=0.0, high=math.inf, where=where)
        end = _number(window, "end", 0.0, low=0.0, high=math.inf, where=where)
        if end <= start:
            raise ValueError(
                f"fault schedule field '{where}.end' is {end}; expected more than start {start}"
            )
        groups = window["groups"]
        if not isinstance(groups, list) or not all(
            isinstance(g, list) and all(isinstance(e, str) for e in g) for g in groups
        ):
            raise ValueError(
                f"fault schedule field '{where}.groups' is {groups!r}; expected a list of lists of endpoint ids"
            )
        seen: set[str] = set()
        for g in groups:
            twice = seen.intersection(g)
            if twice:
                raise ValueError(
                    f"fault schedule field '{where}.groups' lists {sorted(twice)[0]!r} in two groups"
                )
            seen.update(g)
        parsed.append(PartitionWindow(start, end, tuple(frozenset(g) for g in groups)))
    return tuple(parsed)


class Fate(NamedTuple):
    """What happens to one message: one delay per copy queued (none if dropped, and why)."""

    delays: tuple[float, ...]
    dropped: str | None = None


class FaultLayer:
    """Decides, deterministically per (sender, receiver) link, what happens to each message.

    ``start`` is the time (by ``clock``, wall-clock seconds by default, so that
    separate processes given the same start agree) that partition windows are
    measured from; it defaults to the moment the layer is made.
    """

    def __init__(
        self,
        schedule: FaultSchedule,
        seed: int = 0,
        *,
        start: float | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.schedule = schedule
        self.seed = seed
        self.clock = clock
        self.start = clock() if start is None else start
        self._links: dict[tuple[str, str], random.Random] = {}

    def _rng(self, sender: str, receiver: str) -> random.Random:
        rng = self._links.get((sender, receiver))
        if rng is None:
            # hashlib, not hash(): Python salts str hashes per process.
            key = f"pot-jax/faults/v1\n{self.seed}\n{sender}\n{receiver}".encode()
            rng = random.Random(hashlib.sha256(key).digest())
            self._links[(sender, receiver)] = rng
        return rng

    def _delay(self, rng: random.Random) -> float:
        s = self.schedule
        if s.delay_kind == "exponential" and s.delay > 0:
            return rng.expovariate(1.0 / s.delay)
        return s.delay

    def decide(self, sender: str, receiver: str, now: float | None = None) -> Fate:
        """The fate of the next message from ``sender`` to ``receiver``.

        Every call draws the same four numbers from the link's generator, so a
        partition (which depends on time) never shifts later losses.
        """
        rng = self._rng(sender, receiver)
        lose, double = rng.random(), rng.random()
        delays = (self._delay(rng), self._delay(rng))
        t = (self.clock() if now is None else now) - self.start
        if any(p.separates(sender, receiver, t) for p in self.schedule.partitions):
            return Fate((), "partition")
        if lose < self.schedule.loss:
            return Fate((), "loss")
        return Fate(delays if double < self.schedule.duplicate else delays[:1])

    def describe(self) -> dict[str, Any]:
        """How faults were injected, for a benchmark's record."""
        return {"method": METHOD, "seed": self.seed, "schedule": self.schedule.to_dict()}
