"""A replica's state: ``ReplicaState``, its durable part ``DurableState`` and
the records they hold (votes, certified values, checkpoints, pre-prepares)."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field

from pot_jax.crypto.quorum import QuorumCertificate

from ..messages import ViewChange

__all__ = [
    "DURABLE_FIELDS",
    "GENESIS_DIGEST",
    "Certified",
    "DurableState",
    "PendingPrePrepare",
    "ReplicaState",
    "StableCheckpoint",
    "VoteRecord",
    "durable_state",
]

GENESIS_DIGEST = hashlib.sha256(b"pot-jax/pbft/genesis/v1").digest()


@dataclass(frozen=True)
class VoteRecord:
    digest: bytes
    signature: bytes
    verified: bool


@dataclass(frozen=True)
class Certified:
    """A value with a certificate for (view, digest): individual votes or an aggregated QC."""

    view: int
    digest: bytes
    value: bytes | None
    votes: Mapping[int, bytes] | None = None
    qc: QuorumCertificate | None = None


@dataclass(frozen=True)
class StableCheckpoint:
    seq: int
    digest: bytes
    votes: Mapping[int, bytes] | None = None
    qc: QuorumCertificate | None = None


@dataclass(frozen=True)
class PendingPrePrepare:
    digest: bytes
    value: bytes | None
    signature: bytes


@dataclass(frozen=True)
class ReplicaState:
    """A replica's whole state; the fields in ``DURABLE_FIELDS`` survive a crash.

    Containers are plain dicts that are never mutated once the state exists
    (``step`` copies what it changes: ``draft.Draft``).
    """

    # durable
    view: int = 0
    active: bool = True
    signed: Mapping[tuple[str, int, int], bytes] = field(default_factory=dict)
    prepared: Mapping[int, Certified] = field(default_factory=dict)
    ledger: Mapping[int, Certified] = field(default_factory=dict)
    last_executed: int = 0
    state_digest: bytes = GENESIS_DIGEST
    stable: StableCheckpoint = StableCheckpoint(0, GENESIS_DIGEST)
    last_view_change: bytes | None = None
    pending: Mapping[bytes, bytes] = field(default_factory=dict)  # client requests, by digest
    last_new_view: bytes | None = None  # the NEW-VIEW that started the current view
    # volatile
    preprepares: Mapping[tuple[int, int], PendingPrePrepare] = field(default_factory=dict)
    votes: Mapping[tuple[str, int, int], Mapping[int, VoteRecord]] = field(default_factory=dict)
    certs: Mapping[tuple[str, int, int], tuple[bytes, QuorumCertificate]] = field(
        default_factory=dict
    )
    committed: Mapping[int, Certified] = field(default_factory=dict)
    checkpoint_votes: Mapping[int, Mapping[int, VoteRecord]] = field(default_factory=dict)
    view_changes: Mapping[int, ViewChange] = field(default_factory=dict)
    decided_digests: Mapping[bytes, int] = field(default_factory=dict)
    proposed: Mapping[bytes, int] = field(default_factory=dict)
    next_seq: int = 1
    timers: Mapping[str, int] = field(default_factory=dict)
    timer_counter: int = 0
    vc_attempts: int = 0
    vc_quorum_view: int = -1  # the view whose view-change quorum restarted the timer
    fetch_tried: bool = False
    fetch_target: int = 0
    fetch_next: int = 0
    recovery_round: int = 0  # 0: not recovering; k: in status round k since the restart
    recovery_heard: frozenset[int] = frozenset()  # peers that said where they are this round
    recovery_mark: int = 0  # last_executed when the round began
    future: tuple[tuple[int, int, bytes], ...] = ()
    suspects: frozenset[int] = frozenset()
    outbox: tuple[tuple[int | None, bytes], ...] = ()


DURABLE_FIELDS = (
    "view",
    "active",
    "signed",
    "prepared",
    "ledger",
    "last_executed",
    "state_digest",
    "stable",
    "last_view_change",
    "pending",
    "last_new_view",
)


@dataclass(frozen=True)
class DurableState:
    """What a replica writes to stable storage before sending anything.

    ``pending`` holds the client requests not yet decided: a request is logged when
    it is accepted, so it stays pending across a crash (proofs/liveness.md, step 4).
    ``last_new_view`` is kept to be relayed to a restarted peer left in an older view.
    """

    view: int
    active: bool
    signed: Mapping[tuple[str, int, int], bytes]
    prepared: Mapping[int, Certified]
    ledger: Mapping[int, Certified]
    last_executed: int
    state_digest: bytes
    stable: StableCheckpoint
    last_view_change: bytes | None
    pending: Mapping[bytes, bytes]
    last_new_view: bytes | None


def durable_state(state: ReplicaState) -> DurableState:
    """The part of ``state`` that survives a crash."""
    return DurableState(**{name: getattr(state, name) for name in DURABLE_FIELDS})
