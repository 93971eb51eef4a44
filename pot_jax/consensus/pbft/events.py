"""The events a replica steps on and the outputs a step returns.

Inputs: ``Deliver``, ``Submit`` and ``TimerExpired``. Outputs, collected in a
``StepResult``: ``Send``, ``SetTimer``, ``Decision``, ``Dropped`` (and
equivocation evidence). The timer names a replica sets are here too.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..evidence import EquivocationEvidence
from ..messages import message_kind
from .state import ReplicaState

__all__ = [
    "FLUSH_TIMER",
    "RECOVERY_TIMER",
    "REQUEST_TIMER",
    "VIEW_CHANGE_TIMER",
    "Decision",
    "Deliver",
    "Dropped",
    "Event",
    "Send",
    "SetTimer",
    "StepResult",
    "Submit",
    "TimerExpired",
]

REQUEST_TIMER = "request"
VIEW_CHANGE_TIMER = "view-change"
FLUSH_TIMER = "flush"
RECOVERY_TIMER = "recovery"


@dataclass(frozen=True)
class Deliver:
    """Bytes ``data`` arrived on the authenticated channel from validator ``src``."""

    src: int
    data: bytes


@dataclass(frozen=True)
class Submit:
    """A client asks for ``value`` to be decided."""

    value: bytes


@dataclass(frozen=True)
class TimerExpired:
    """A timer set by ``SetTimer(name, delay, token)`` fired."""

    name: str
    token: int


Event = Deliver | Submit | TimerExpired


@dataclass(frozen=True)
class Send:
    """Send ``data`` to validator ``dest``, or to every other validator if ``dest`` is None."""

    dest: int | None
    data: bytes

    @property
    def kind(self) -> str:
        return message_kind(self.data)


@dataclass(frozen=True)
class SetTimer:
    """Fire ``TimerExpired(name, token)`` after ``delay``; a newer token for a name supersedes."""

    name: str
    delay: float
    token: int


@dataclass(frozen=True)
class Decision:
    """Sequence ``seq`` decided ``value`` (None: the null request) in ``view``."""

    seq: int
    view: int
    digest: bytes
    value: bytes | None


@dataclass(frozen=True)
class Dropped:
    """An input was discarded: ``reason`` is a short category, ``detail`` says what was wrong."""

    src: int | None
    kind: str
    reason: str
    detail: str


@dataclass(frozen=True)
class StepResult:
    state: ReplicaState
    sends: tuple[Send, ...] = ()
    timers: tuple[SetTimer, ...] = ()
    decisions: tuple[Decision, ...] = ()
    drops: tuple[Dropped, ...] = ()
    evidence: tuple[EquivocationEvidence, ...] = ()
