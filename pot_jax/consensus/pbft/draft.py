"""The draft of a ``ReplicaState`` that one step builds.

A step reads and writes the typed fields of a ``Draft``; ``Draft.finish``
makes the new frozen state. The state the step was given is never mutated:
its dicts are shared until the first write copies them (``CowDict``), and in
the vote tables an inner dict is copied on its own first write too, so a
step costs what it changes, not the size of the log.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from types import MappingProxyType
from typing import Any, Generic, TypeVar

from pot_jax.crypto.quorum import QuorumCertificate

from ..messages import ViewChange
from .state import Certified, PendingPrePrepare, ReplicaState, StableCheckpoint, VoteRecord

__all__ = ["EMPTY", "CowDict", "Draft", "Slot"]

EMPTY: Mapping = MappingProxyType({})

K = TypeVar("K")
V = TypeVar("V")

Slot = tuple[str, int, int]  # (kind, view, seq) of a vote


class CowDict(Generic[K, V]):
    """A dict field of the draft: reads see the given state's dict until the first
    write copies it; later writes change the copy."""

    __slots__ = ("_data", "_owned", "_owned_inner")

    def __init__(self, data: Mapping[K, V]) -> None:
        self._data = data
        self._owned = False
        self._owned_inner: set = set()  # keys whose inner dict this step copied

    @property
    def value(self) -> Mapping[K, V]:
        return self._data

    def _writable(self) -> dict[K, V]:
        if not self._owned:
            self._data = dict(self._data)
            self._owned = True
        return self._data  # type: ignore[return-value]

    def replace(self, data: dict[K, V]) -> None:
        """Make ``data``, a dict this step built, the whole field."""
        self._data = data
        self._owned = True
        self._owned_inner = set()  # its inner dicts may be the given state's

    def inner(self, key: K) -> dict:
        """A writable copy of the inner dict at ``key`` (empty if absent), for the
        fields that map a key to a dict (the vote tables)."""
        outer = self._writable()
        if key not in self._owned_inner:
            outer[key] = dict(outer.get(key, EMPTY))  # type: ignore[assignment, arg-type]
            self._owned_inner.add(key)
        return outer[key]  # type: ignore[return-value]

    # Reads see the current dict.

    def __getitem__(self, key: K) -> V:
        return self._data[key]

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def __iter__(self) -> Iterator[K]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def get(self, key: K, default: Any = None) -> Any:
        return self._data.get(key, default)

    def items(self):
        return self._data.items()

    def values(self):
        return self._data.values()

    # Writes: the first one copies.

    def __setitem__(self, key: K, value: V) -> None:
        self._writable()[key] = value

    def __delitem__(self, key: K) -> None:
        del self._writable()[key]

    def pop(self, key: K) -> V:
        return self._writable().pop(key)


_FIELDS = tuple(f.name for f in dataclasses.fields(ReplicaState))


class Draft:
    """The fields of ``ReplicaState`` (see there), writable for one step.

    ``__slots__`` are exactly ReplicaState's fields, so a misspelt write fails
    and ``finish`` fails if ``__init__`` missed a field.
    """

    __slots__ = ("old", *_FIELDS)

    def __init__(self, state: ReplicaState) -> None:
        self.old = state
        # durable
        self.view: int = state.view
        self.active: bool = state.active
        self.signed: CowDict[Slot, bytes] = CowDict(state.signed)
        self.prepared: CowDict[int, Certified] = CowDict(state.prepared)
        self.ledger: CowDict[int, Certified] = CowDict(state.ledger)
        self.last_executed: int = state.last_executed
        self.state_digest: bytes = state.state_digest
        self.stable: StableCheckpoint = state.stable
        self.last_view_change: bytes | None = state.last_view_change
        self.pending: CowDict[bytes, bytes] = CowDict(state.pending)
        self.last_new_view: bytes | None = state.last_new_view
        # volatile
        self.preprepares: CowDict[tuple[int, int], PendingPrePrepare] = CowDict(state.preprepares)
        self.votes: CowDict[Slot, Mapping[int, VoteRecord]] = CowDict(state.votes)
        self.certs: CowDict[Slot, tuple[bytes, QuorumCertificate]] = CowDict(state.certs)
        self.committed: CowDict[int, Certified] = CowDict(state.committed)
        self.checkpoint_votes: CowDict[int, Mapping[int, VoteRecord]] = CowDict(
            state.checkpoint_votes
        )
        self.view_changes: CowDict[int, ViewChange] = CowDict(state.view_changes)
        self.decided_digests: CowDict[bytes, int] = CowDict(state.decided_digests)
        self.proposed: CowDict[bytes, int] = CowDict(state.proposed)
        self.next_seq: int = state.next_seq
        self.timers: CowDict[str, int] = CowDict(state.timers)
        self.timer_counter: int = state.timer_counter
        self.vc_attempts: int = state.vc_attempts
        self.vc_quorum_view: int = state.vc_quorum_view
        self.fetch_tried: bool = state.fetch_tried
        self.fetch_target: int = state.fetch_target
        self.fetch_next: int = state.fetch_next
        self.recovery_round: int = state.recovery_round
        self.recovery_heard: frozenset[int] = state.recovery_heard
        self.recovery_mark: int = state.recovery_mark
        self.future: tuple[tuple[int, int, bytes], ...] = state.future
        self.suspects: frozenset[int] = state.suspects
        self.outbox: tuple[tuple[int | None, bytes], ...] = state.outbox

    def finish(self) -> ReplicaState:
        """The new state; the given one itself if no field changed."""
        changed = {}
        for name in _FIELDS:
            value = getattr(self, name)
            if isinstance(value, CowDict):
                value = value.value
            if value is not getattr(self.old, name):
                changed[name] = value
        return dataclasses.replace(self.old, **changed) if changed else self.old
