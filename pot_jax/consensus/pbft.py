"""A PBFT replica (Castro and Liskov, OSDI 1999) as a sans-IO state machine.

A replica is a frozen ``ReplicaState`` and a pure transition

    step(replica, state, event) -> StepResult(state, sends, timers, decisions, drops, evidence)

where events are ``Deliver`` (bytes from a peer, with the authenticated
channel's sender index), ``Submit`` (a client request) and ``TimerExpired``.
Nothing here does I/O or reads a clock: a simulator or a transport moves the
bytes and fires the timers. ``step`` never mutates its input state.

Protocol, for n >= 4 validators, f = (n - 1) // 3 and q = quorum_size(n):

* Normal case: the primary of view v (v mod n) sends PRE-PREPARE(v, s, value);
  backups check it with the application hook ``ReplicaConfig.validate`` and
  vote PREPARE; q matching prepares (the primary's pre-prepare signature is
  its prepare vote) make (v, s, d) *prepared*; replicas then vote COMMIT; q
  commits make s *committed*, and it is executed (decided) in sequence
  order. Two message patterns: ``all_to_all`` (votes are broadcast; O(n^2)
  messages a phase) and ``linear`` (votes go to the primary, which
  aggregates a quorum into a QC and broadcasts it; O(n) messages a phase).
* Piggybacking (linear pattern, ``ReplicaConfig.piggyback_delay``): a
  message nobody waits on at once (the primary's commit and checkpoint QCs,
  a backup's checkpoint vote) is held while a carrier is expected (another
  request pending or in progress) and rides in a ``Bundle`` on the next
  message to the same destination, as HotStuff chains a QC onto the next
  proposal; a flush timer sends it alone after ``piggyback_delay``. In a
  stream of requests a decision then costs 4(n - 1) messages instead of
  5(n - 1). Holding a message is indistinguishable from a slow link, so
  safety does not depend on it; liveness is kept by the flush timer.
* Checkpoints: every ``checkpoint_interval`` decisions a replica signs its
  state digest; q matching ones (a QC in linear mode) make a stable
  checkpoint, which moves the low watermark and garbage-collects the log.
  Messages for sequences outside (low, low + window] are dropped.
* View change: when a request stays pending past its timer, a replica first
  asks its peers for decisions it may have missed, then sends VIEW-CHANGE
  with its stable checkpoint and a prepare QC for every sequence it
  prepared. The new primary gathers q of them into NEW-VIEW and re-proposes,
  for each sequence above the highest checkpoint, the value prepared in the
  highest view (null where none was): a value prepared by a quorum survives.
  The view-change timer doubles with each consecutive failed view and, as
  in PBFT, runs from the moment q replicas have asked for the view; before
  that quorum a replica re-sends its view change instead of moving further
  (one that timed out alone would otherwise stay ahead of the others for
  ever). f + 1 view changes for higher views make a replica join the
  smallest of them.
* Safety of signing: every vote is recorded in the durable part of the state
  before the message carrying it is returned, and a replica refuses to sign
  a second digest for the same (kind, view, sequence). Durable state
  (``DurableState``, including the pending client requests) survives a
  crash; ``recover`` rebuilds a replica from it.
* Recovery: a restarted replica cannot count on new traffic to learn what
  it missed (it may restart after the last request), so it runs status
  rounds: it broadcasts ``Fetch(last_executed + 1, status=True)``; each peer
  answers with its stable checkpoint certificate, the decision proofs (value
  and commit QC) of a batch it has from there, the proof of its own last
  decision when it has more than the batch, a fetch of its own that says
  where it is, and the NEW-VIEW of its view. Every certificate is verified
  before it is adopted. Recovery ends after a round, not the first, in which
  q - 1 peers answered and the replica learned nothing (proofs/liveness.md,
  step 4). A replica that sees q commit votes for a proposal it never
  received runs the same rounds.
* Bad input (malformed, oversized, wrongly signed, wrong view, outside the
  window, a forged QC) is dropped with a ``Dropped`` record saying why,
  logged at DEBUG level, and never changes the state or raises.

``ReplicaConfig.quorum_fn`` exists only so canary tests can break the quorum
and show that the safety checker notices; production code must leave it at
``quorum_size``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from pot_jax.crypto.errors import CryptoError
from pot_jax.crypto.quorum import (
    QuorumCertificate,
    ValidatorSet,
    aggregate_votes,
    fault_tolerance,
    quorum_size,
    sign_vote,
    vote_message,
)

from .evidence import EquivocationEvidence
from .messages import (
    CHECKPOINT,
    COMMIT,
    MAX_BUNDLE_PARTS,
    PREPARE,
    VIEW_CHANGE,
    Bundle,
    Cert,
    Decided,
    Fetch,
    MalformedMessage,
    NewView,
    PreparedProof,
    PrePrepare,
    ViewChange,
    Vote,
    decode_message,
    encode_message,
    message_kind,
    value_digest,
    view_change_digest,
)
from .verifier import Verifier

__all__ = [
    "ALL_TO_ALL",
    "LINEAR",
    "Certified",
    "Decision",
    "Deliver",
    "Dropped",
    "DurableState",
    "Replica",
    "ReplicaConfig",
    "ReplicaState",
    "Send",
    "SetTimer",
    "StableCheckpoint",
    "StepResult",
    "Submit",
    "TimerExpired",
    "VoteRecord",
    "durable_state",
    "initial_state",
    "recover",
    "step",
]

log = logging.getLogger("pot_jax.consensus")

ALL_TO_ALL = "all_to_all"
LINEAR = "linear"
PATTERNS = (ALL_TO_ALL, LINEAR)
REQUEST_TIMER = "request"
VIEW_CHANGE_TIMER = "view-change"
FLUSH_TIMER = "flush"
RECOVERY_TIMER = "recovery"
GENESIS_DIGEST = hashlib.sha256(b"pot-jax/pbft/genesis/v1").digest()


def _accept_all(value: bytes) -> bool:
    return True


# ---------------------------------------------------------------------------
# Configuration


@dataclass(frozen=True)
class ReplicaConfig:
    """Everything the replicas of one run agree on.

    Times are in the driver's (virtual) time units. ``window`` is the log
    size L (high watermark = low watermark + L), a multiple of
    ``checkpoint_interval`` K; PBFT's usual choice is L = 2K.
    ``validate(value) -> bool`` is the application check a backup runs on a
    proposal before it prepares it. ``quorum_fn`` is for canary tests only.
    ``piggyback_delay`` (linear pattern only; None turns it off) bounds how
    long a held QC or checkpoint vote waits for a carrier.
    """

    chain_id: bytes
    validators: ValidatorSet
    pattern: str = ALL_TO_ALL
    checkpoint_interval: int = 8
    window: int = 16
    request_timeout: float = 8.0
    view_change_timeout: float = 8.0
    max_backoff_exponent: int = 6
    max_message_bytes: int = 16 << 20
    max_value_bytes: int = 1 << 16
    fetch_batch: int = 16
    future_buffer: int = 256
    piggyback_delay: float | None = 1.0
    validate: Callable[[bytes], bool] = _accept_all
    quorum_fn: Callable[[int], int] = quorum_size

    def __post_init__(self) -> None:
        if self.pattern not in PATTERNS:
            raise ValueError(f"pattern must be one of {PATTERNS}, got {self.pattern!r}")
        if self.n < 4:
            raise ValueError(f"PBFT needs n >= 4 validators to tolerate a fault, got {self.n}")
        if self.checkpoint_interval < 1 or self.window < self.checkpoint_interval:
            raise ValueError(
                f"need 1 <= checkpoint_interval <= window, got K={self.checkpoint_interval}, "
                f"L={self.window}"
            )
        if self.window % self.checkpoint_interval:
            raise ValueError(
                f"window {self.window} must be a multiple of checkpoint_interval "
                f"{self.checkpoint_interval}"
            )
        if self.piggyback_delay is not None and not self.piggyback_delay > 0:
            raise ValueError(f"piggyback_delay must be > 0 or None, got {self.piggyback_delay}")
        q = self.quorum_fn(self.n)
        if not 1 <= q <= self.n:
            raise ValueError(f"quorum_fn({self.n}) = {q}, expected 1..{self.n}")

    @property
    def n(self) -> int:
        return self.validators.n

    @property
    def f(self) -> int:
        return fault_tolerance(self.n)

    @property
    def quorum(self) -> int:
        return self.quorum_fn(self.n)

    def primary(self, view: int) -> int:
        return view % self.n


@dataclass(frozen=True)
class Replica:
    """One validator's identity: configuration, index, secret key and signature checker."""

    config: ReplicaConfig
    index: int
    secret_key: int = field(repr=False)
    verifier: Verifier = field(repr=False, compare=False, default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if not 0 <= self.index < self.config.n:
            raise ValueError(f"replica index {self.index} outside 0..{self.config.n - 1}")
        if self.verifier is None:
            object.__setattr__(self, "verifier", Verifier(self.config.validators))


# ---------------------------------------------------------------------------
# Events and outputs


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


# ---------------------------------------------------------------------------
# State


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


_EMPTY: Mapping = MappingProxyType({})


@dataclass(frozen=True)
class ReplicaState:
    """A replica's whole state; the fields in ``DURABLE_FIELDS`` survive a crash.

    Containers are plain dicts that are never mutated once the state exists
    (``step`` copies what it changes).
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


@dataclass(frozen=True)
class StepResult:
    state: ReplicaState
    sends: tuple[Send, ...] = ()
    timers: tuple[SetTimer, ...] = ()
    decisions: tuple[Decision, ...] = ()
    drops: tuple[Dropped, ...] = ()
    evidence: tuple[EquivocationEvidence, ...] = ()


def initial_state(replica: Replica) -> ReplicaState:
    """The state of a replica at genesis (view 0, nothing decided)."""
    return ReplicaState()


def recover(replica: Replica, durable: DurableState) -> StepResult:
    """Restart after a crash from durable state; volatile state starts empty.

    A replica that crashed during a view change re-sends its (durably
    recorded) view-change message and re-arms the view-change timer. Every
    restarted replica starts status rounds to learn the decisions it missed
    (see the module docstring), and re-arms the request timer for its pending
    requests; a primary skips the values it already proposed in this view.
    """
    base = ReplicaState(**{name: getattr(durable, name) for name in DURABLE_FIELDS})
    prepares = {
        s: d for (kind, v, s), d in durable.signed.items() if kind == PREPARE and v == durable.view
    }
    base = dataclasses.replace(
        base,
        decided_digests={c.digest: s for s, c in durable.ledger.items()},
        proposed={d: s for s, d in prepares.items()},
        next_seq=max(durable.last_executed, durable.stable.seq, *prepares) + 1,
    )
    run = _Step(replica, base)
    try:
        if not durable.active and durable.last_view_change is not None:
            run.broadcast(durable.last_view_change)
            run.set_timer(VIEW_CHANGE_TIMER, replica.config.view_change_timeout)
            vc = decode_message(durable.last_view_change)
            if isinstance(vc, ViewChange):
                run.t.wi("view_changes", None)[replica.index] = vc
    except (MalformedMessage, CryptoError):
        pass
    run.start_recovery_round()
    run.arm_request_timer()
    run.propose()
    run.settle_outbox()
    return run.result()


def step(replica: Replica, state: ReplicaState, event: Event) -> StepResult:
    """The pure transition: never raises, never mutates ``state``."""
    run = _Step(replica, state)
    try:
        if isinstance(event, Deliver):
            run.on_deliver(event.src, event.data)
            run.settle_outbox()
        elif isinstance(event, Submit):
            run.on_submit(event.value)
            run.settle_outbox()
        elif isinstance(event, TimerExpired):
            run.on_timer(event.name, event.token)
            run.settle_outbox()
        else:
            return StepResult(
                state,
                drops=(
                    Dropped(None, "event", "malformed", f"unknown event {type(event).__name__}"),
                ),
            )
    except Exception as exc:  # noqa: BLE001 - a replica must not crash on any input
        log.exception("replica %d: internal error on %r", replica.index, event)
        src = event.src if isinstance(event, Deliver) else None
        return StepResult(state, drops=(Dropped(src, "event", "internal-error", repr(exc)),))
    return run.result()


# ---------------------------------------------------------------------------
# The transition


class _Tx:
    """Copy-on-write view of a ReplicaState: reads see writes; the original is untouched."""

    __slots__ = ("old", "new", "copied")

    def __init__(self, state: ReplicaState) -> None:
        self.old = state
        self.new: dict[str, object] = {}
        self.copied: set = set()

    def get(self, name: str):
        return self.new[name] if name in self.new else getattr(self.old, name)

    def set(self, name: str, value) -> None:
        self.new[name] = value

    def w(self, name: str) -> dict:
        """A writable copy of dict field ``name``."""
        if name not in self.copied:
            self.new[name] = dict(self.get(name))
            self.copied.add(name)
        return self.new[name]  # type: ignore[return-value]

    def wi(self, name: str, key) -> dict:
        """A writable copy of the inner dict at ``name[key]`` (``key`` None: the outer dict)."""
        outer = self.w(name)
        if key is None:
            return outer
        tag = (name, key)
        if tag not in self.copied:
            outer[key] = dict(outer.get(key, _EMPTY))
            self.copied.add(tag)
        return outer[key]

    def finish(self) -> ReplicaState:
        return dataclasses.replace(self.old, **self.new) if self.new else self.old


class _Step:
    def __init__(self, replica: Replica, state: ReplicaState) -> None:
        self.r = replica
        self.c = replica.config
        self.me = replica.index
        self.t = _Tx(state)
        self.sends: list[Send] = []
        self.timers: list[SetTimer] = []
        self.decisions: list[Decision] = []
        self.drops: list[Dropped] = []
        self.evidence: list[EquivocationEvidence] = []
        self.src: int | None = None
        self.kind = "event"

    def result(self) -> StepResult:
        return StepResult(
            self.t.finish(),
            tuple(self.sends),
            tuple(self.timers),
            tuple(self.decisions),
            tuple(self.drops),
            tuple(self.evidence),
        )

    # -- small helpers ------------------------------------------------------

    @property
    def view(self) -> int:
        return self.t.get("view")

    @property
    def active(self) -> bool:
        return self.t.get("active")

    @property
    def low(self) -> int:
        return self.t.get("stable").seq

    @property
    def high(self) -> int:
        return self.low + self.c.window

    @property
    def last_executed(self) -> int:
        return self.t.get("last_executed")

    def in_window(self, seq: int) -> bool:
        return self.low < seq <= self.high

    def drop(self, reason: str, detail: str) -> None:
        log.debug(
            "replica %d dropped %s from %s: %s (%s)", self.me, self.kind, self.src, reason, detail
        )
        self.drops.append(Dropped(self.src, self.kind, reason, detail))

    def msg(self, kind: str, view: int, seq: int, digest: bytes) -> bytes:
        return vote_message(self.c.chain_id, kind, view, seq, digest)

    def send(self, dest: int, data: bytes) -> None:
        if dest != self.me:
            self.sends.append(Send(dest, self.with_held(dest, data)))

    def broadcast(self, data: bytes) -> None:
        self.sends.append(Send(None, self.with_held(None, data)))

    # -- piggybacking (linear pattern) -------------------------------------------

    def hold(self, dest: int | None, data: bytes) -> None:
        """Send ``data`` on the next message to ``dest``, or alone if none comes soon."""
        if self.c.pattern != LINEAR or self.c.piggyback_delay is None:
            if dest is None:
                self.broadcast(data)
            else:
                self.send(dest, data)
            return
        if dest == self.me:
            return
        self.t.set("outbox", (*self.t.get("outbox"), (dest, data)))

    def with_held(self, dest: int | None, data: bytes) -> bytes:
        """``data``, bundled after the held messages for the same destination, if any."""
        outbox = self.t.get("outbox")
        if not outbox:
            return data
        mine = [x for x in outbox if x[0] == dest]
        if not mine:
            return data
        carried, rest = mine[: MAX_BUNDLE_PARTS - 1], mine[MAX_BUNDLE_PARTS - 1 :]
        self.t.set("outbox", tuple(x for x in outbox if x[0] != dest) + tuple(rest))
        return encode_message(Bundle((*(d for _, d in carried), data)))

    def carrier_expected(self) -> bool:
        """A message to the primary, or from it, will soon go out anyway."""
        if not self.active:
            return False
        if self.t.get("pending"):
            return True
        done = self.last_executed
        committed = self.t.get("committed")
        return any(
            v == self.view and s > done and s not in committed for v, s in self.t.get("preprepares")
        )

    def settle_outbox(self) -> None:
        """At the end of a step: keep held messages only while a carrier is expected."""
        if not self.t.get("outbox"):
            if FLUSH_TIMER in self.t.get("timers"):
                self.cancel_timer(FLUSH_TIMER)
            return
        if self.carrier_expected():
            if FLUSH_TIMER not in self.t.get("timers"):
                self.set_timer(FLUSH_TIMER, self.c.piggyback_delay)
            return
        self.flush_outbox()

    def flush_outbox(self) -> None:
        outbox = self.t.get("outbox")
        self.t.set("outbox", ())
        self.cancel_timer(FLUSH_TIMER)
        for dest in dict.fromkeys(x for x, _ in outbox):
            held = [d for x, d in outbox if x == dest]
            for k in range(0, len(held), MAX_BUNDLE_PARTS):
                chunk = held[k : k + MAX_BUNDLE_PARTS]
                data = chunk[0] if len(chunk) == 1 else encode_message(Bundle(tuple(chunk)))
                self.sends.append(Send(dest, data))

    def set_timer(self, name: str, delay: float) -> None:
        token = self.t.get("timer_counter") + 1
        self.t.set("timer_counter", token)
        self.t.w("timers")[name] = token
        self.timers.append(SetTimer(name, delay, token))

    def cancel_timer(self, name: str) -> None:
        if name in self.t.get("timers"):
            del self.t.w("timers")[name]

    def sign(self, kind: str, view: int, seq: int, digest: bytes) -> bytes | None:
        """Sign a vote after recording it durably; refuse a second digest for one slot."""
        key = (kind, view, seq)
        previous = self.t.get("signed").get(key)
        if previous is not None and previous != digest:
            log.warning(
                "replica %d refuses to sign %s for view %d seq %d: already signed another digest",
                self.me,
                kind,
                view,
                seq,
            )
            return None
        if previous is None:
            self.t.w("signed")[key] = digest
        return sign_vote(self.r.secret_key, self.msg(kind, view, seq, digest))

    def qc_of(self, cert: Certified | StableCheckpoint) -> QuorumCertificate:
        if cert.qc is not None:
            return cert.qc
        return aggregate_votes(self.c.validators, cert.votes)

    # -- inputs --------------------------------------------------------------

    def on_submit(self, value: bytes) -> None:
        self.kind = "submit"
        if not isinstance(value, bytes) or len(value) > self.c.max_value_bytes:
            self.drop(
                "oversized",
                f"request of {len(value) if isinstance(value, bytes) else type(value).__name__} "
                f"bytes, at most {self.c.max_value_bytes}",
            )
            return
        if not self.c.validate(value):
            self.drop("app-rejected", "the application check rejected the submitted value")
            return
        d = value_digest(value)
        if d in self.t.get("decided_digests") or d in self.t.get("pending"):
            return
        self.t.w("pending")[d] = value
        self.arm_request_timer()
        self.propose()

    def on_timer(self, name: str, token: int) -> None:
        if self.t.get("timers").get(name) != token:
            return  # superseded or cancelled
        del self.t.w("timers")[name]
        if name == REQUEST_TIMER:
            if not self.active or not self.t.get("pending"):
                return
            if not self.t.get("fetch_tried"):
                # First expiry: maybe we only missed decisions, or checkpoint votes were lost
                # and the window is full; ask and re-vote before accusing the primary.
                self.t.set("fetch_tried", True)
                self.broadcast(encode_message(Fetch(self.last_executed + 1)))
                self.resend_checkpoint_votes()
                self.set_timer(REQUEST_TIMER, self.c.request_timeout)
                return
            self.start_view_change(self.view + 1)
        elif name == FLUSH_TIMER:
            self.flush_outbox()
        elif name == RECOVERY_TIMER:
            self.end_recovery_round()
        elif name == VIEW_CHANGE_TIMER:
            if not self.active:
                # A replica alone in a higher view must not go back to a lower one (its
                # view change promised not to), but it can still learn decisions.
                self.broadcast(encode_message(Fetch(self.last_executed + 1)))
                if self.view_change_quorum():
                    self.start_view_change(self.view + 1)
                else:
                    # Fewer than q replicas have reached this view: moving further would
                    # only leapfrog those still on their way (they never catch up once
                    # the timeouts are capped). Say it again, back off and wait for them.
                    previous = self.t.get("last_view_change")
                    if previous is not None:
                        self.broadcast(previous)
                    self.t.set("vc_attempts", self.t.get("vc_attempts") + 1)
                    self.set_timer(VIEW_CHANGE_TIMER, self.view_change_timeout())

    def on_deliver(self, src: int, data: bytes) -> None:
        self.src = src
        self.kind = message_kind(data) if isinstance(data, bytes) else "garbage"
        if not isinstance(src, int) or not 0 <= src < self.c.n:
            self.drop("malformed", f"sender index {src!r} outside 0..{self.c.n - 1}")
            return
        if not isinstance(data, bytes):
            self.drop("malformed", f"message is {type(data).__name__}, expected bytes")
            return
        if len(data) > self.c.max_message_bytes:
            self.drop("oversized", f"{len(data)} bytes, at most {self.c.max_message_bytes}")
            return
        try:
            m = decode_message(data)
        except MalformedMessage as exc:
            self.drop("malformed", str(exc))
            return
        if isinstance(m, PrePrepare):
            self.on_preprepare(src, m, data)
        elif isinstance(m, Vote):
            if m.signer != src:
                self.drop("signer-mismatch", f"vote signed as {m.signer} arrived from {src}")
            elif m.kind == CHECKPOINT:
                self.on_checkpoint_vote(m)
            else:
                self.on_vote(m, data)
        elif isinstance(m, Cert):
            self.on_cert(src, m, data)
        elif isinstance(m, ViewChange):
            self.on_view_change(src, m)
        elif isinstance(m, NewView):
            self.on_new_view(src, m, data)
        elif isinstance(m, Fetch):
            self.on_fetch(src, m)
        elif isinstance(m, Decided):
            self.on_decided(src, m)
        elif isinstance(m, Bundle):
            for part in m.parts:  # the decoder guarantees no bundle inside a bundle
                self.on_deliver(src, part)

    def value_ok(self, value: bytes | None) -> bool:
        if value is not None and len(value) > self.c.max_value_bytes:
            self.drop("oversized", f"value of {len(value)} bytes, at most {self.c.max_value_bytes}")
            return False
        return True

    def gate_view(self, view: int, data: bytes | None, *, need_active: bool = True) -> bool:
        """True if a message for ``view`` can be handled now; buffer or drop it otherwise."""
        if view < self.view:
            self.drop("stale-view", f"message for view {view}, replica is in view {self.view}")
            return False
        if view > self.view or (need_active and not self.active):
            if data is None:
                return False
            future = self.t.get("future")
            from_src = sum(1 for _, s, _ in future if s == self.src)
            if len(future) >= self.c.future_buffer or from_src >= max(
                4, self.c.future_buffer // self.c.n
            ):
                self.drop("future-buffer-full", f"message for view {view} while in {self.view}")
                return False
            self.t.set("future", (*future, (view, self.src, data)))
            return False
        return True

    # -- normal case ---------------------------------------------------------

    def on_preprepare(
        self, src: int, m: PrePrepare, data: bytes | None, *, from_new_view: bool = False
    ) -> None:
        v, s = m.view, m.seq
        primary = self.c.primary(v)
        if not from_new_view:
            if src != primary:
                self.drop(
                    "not-primary", f"pre-prepare for view {v} from {src}, primary is {primary}"
                )
                return
            if not self.gate_view(v, data):
                return
        if not self.in_window(s):
            self.drop("out-of-window", f"sequence {s} outside ({self.low}, {self.high}]")
            return
        if not self.value_ok(m.value):
            return
        d = m.digest
        existing = self.t.get("preprepares").get((v, s))
        if existing is not None:
            if existing.digest == d:
                self.drop("duplicate", f"pre-prepare for view {v} seq {s} already received")
                return
            if self.r.verifier.verify_vote(primary, self.msg(PREPARE, v, s, d), m.signature):
                self.evidence.append(
                    EquivocationEvidence(
                        primary, PREPARE, v, s, existing.digest, existing.signature, d, m.signature
                    )
                )
                self.drop("equivocation", f"primary {primary} proposed two values for seq {s}")
            else:
                self.drop("bad-signature", f"conflicting pre-prepare for seq {s} is not signed")
            return
        if not from_new_view and not self.r.verifier.verify_vote(
            primary, self.msg(PREPARE, v, s, d), m.signature
        ):
            self.drop("bad-signature", f"pre-prepare for view {v} seq {s} not signed by {primary}")
            return
        decided = self.t.get("ledger").get(s)
        if decided is not None and decided.digest != d:
            self.drop("conflicts-decided", f"pre-prepare for seq {s} conflicts with its decision")
            return
        if m.value is not None and self.me != primary and not self.c.validate(m.value):
            self.drop("app-rejected", f"application check rejected the value for seq {s}")
            return
        self.t.w("preprepares")[(v, s)] = PendingPrePrepare(d, m.value, m.signature)
        self.t.wi("votes", (PREPARE, v, s))[primary] = VoteRecord(d, m.signature, True)
        if self.me != primary:
            sig = self.sign(PREPARE, v, s, d)
            if sig is None:
                return
            self.t.wi("votes", (PREPARE, v, s))[self.me] = VoteRecord(d, sig, True)
            vote = encode_message(Vote(PREPARE, v, s, d, self.me, sig))
            if self.c.pattern == ALL_TO_ALL:
                self.broadcast(vote)
            else:
                self.send(primary, vote)
        self.advance(v, s)

    def phase_complete(self, kind: str, v: int, s: int) -> bool:
        """Prepared in view v (prepare), or committed at all (commit).

        A replica that already executed s still prepares and commit-votes a
        re-proposal of it in a new view, so that replicas behind it can commit.
        """
        if kind == PREPARE:
            p = self.t.get("prepared").get(s)
            return p is not None and p.view == v
        return s <= self.last_executed or s in self.t.get("committed")

    def on_vote(self, m: Vote, data: bytes) -> None:
        v, s = m.view, m.seq
        if not self.gate_view(v, data):
            return
        if not self.in_window(s):
            self.drop("out-of-window", f"sequence {s} outside ({self.low}, {self.high}]")
            return
        if self.c.pattern == LINEAR and self.c.primary(v) != self.me:
            self.drop("not-collector", f"{m.kind} vote sent to {self.me}, collector is the primary")
            return
        key = (m.kind, v, s)
        rec = self.t.get("votes").get(key, _EMPTY).get(m.signer)
        if rec is not None:
            if rec.digest == m.digest:
                self.drop("duplicate", f"{m.kind} vote from {m.signer} for seq {s} already counted")
            else:
                self.conflicting_vote("votes", key, m.signer, rec, m.digest, m.signature)
            return
        if self.phase_complete(m.kind, v, s):
            # Kept (unverified, never counted) so that a conflicting vote from the same
            # signer still yields equivocation evidence.
            self.t.wi("votes", key)[m.signer] = VoteRecord(m.digest, m.signature, False)
            self.drop("late", f"{m.kind} for seq {s} after its quorum formed")
            return
        verified = False
        if m.signer in self.t.get("suspects"):
            if not self.r.verifier.verify_vote(
                m.signer, self.msg(m.kind, v, s, m.digest), m.signature
            ):
                self.drop("bad-signature", f"{m.kind} vote from {m.signer} does not verify")
                return
            verified = True
        self.t.wi("votes", key)[m.signer] = VoteRecord(m.digest, m.signature, verified)
        if m.kind == COMMIT and (v, s) not in self.t.get("preprepares"):
            self.decided_unseen(v, s, m.digest)
            return
        self.advance(v, s)

    def decided_unseen(self, v: int, s: int, d: bytes) -> None:
        """q commit votes for a proposal this replica never received (lost while it was
        down, say): s is decided, so catch up by status rounds instead of waiting for
        traffic that may never come (the linear pattern fetches on the commit QC)."""
        if s <= self.t.get("fetch_target"):
            return
        if self.quorum_votes("votes", (COMMIT, v, s), self.msg(COMMIT, v, s, d), d) is None:
            return
        self.t.set("fetch_target", s)
        if not self.t.get("recovery_round"):
            self.start_recovery_round()

    def conflicting_vote(
        self, field_name: str, key, signer: int, rec: VoteRecord, digest: bytes, signature: bytes
    ) -> None:
        kind, view, seq = key if field_name == "votes" else (CHECKPOINT, 0, key)
        ver = self.r.verifier
        ok_new = ver.verify_vote(signer, self.msg(kind, view, seq, digest), signature)
        ok_old = rec.verified or ver.verify_vote(
            signer, self.msg(kind, view, seq, rec.digest), rec.signature
        )
        if ok_new and ok_old:
            self.evidence.append(
                EquivocationEvidence(
                    signer, kind, view, seq, rec.digest, rec.signature, digest, signature
                )
            )
            self.drop("equivocation", f"{signer} signed two {kind} digests for seq {seq}")
        elif not ok_new:
            self.drop("bad-signature", f"{kind} vote from {signer} does not verify")
        else:
            # The stored vote was a forgery; keep the valid one instead.
            self.t.wi(field_name, key)[signer] = VoteRecord(digest, signature, True)
            self.t.set("suspects", self.t.get("suspects") | {signer})
            self.drop("bad-signature", f"earlier {kind} vote from {signer} did not verify")

    def quorum_votes(self, field_name: str, key, msg: bytes, digest: bytes) -> dict | None:
        """Verified votes for ``digest`` if they reach a quorum (batch-checking new ones)."""
        q = self.c.quorum
        slot = self.t.get(field_name).get(key, _EMPTY)
        matching = {i: r for i, r in slot.items() if r.digest == digest}
        if len(matching) < q:
            return None
        unverified = {i: r.signature for i, r in matching.items() if not r.verified}
        if unverified:
            results = self.r.verifier.verify_votes(msg, unverified)
            w = self.t.wi(field_name, key)
            bad = []
            for i, ok in results.items():
                if ok:
                    w[i] = VoteRecord(digest, unverified[i], True)
                else:
                    del w[i]
                    bad.append(i)
            if bad:
                self.t.set("suspects", self.t.get("suspects") | set(bad))
                for i in bad:
                    self.drops.append(
                        Dropped(i, "vote", "bad-signature", f"vote from {i} failed verification")
                    )
            matching = {i: r for i, r in w.items() if r.digest == digest}
            if len(matching) < q:
                return None
        return {i: r.signature for i, r in matching.items()}

    def advance(self, v: int, s: int) -> None:
        """Move (v, s) through prepared and committed as far as the collected evidence allows."""
        if v != self.view or not self.active:
            return
        pp = self.t.get("preprepares").get((v, s))
        if pp is None:
            return
        d, value = pp.digest, pp.value
        primary = self.c.primary(v)
        linear = self.c.pattern == LINEAR
        if not linear or self.me == primary:
            if not self.phase_complete(PREPARE, v, s):
                votes = self.quorum_votes("votes", (PREPARE, v, s), self.msg(PREPARE, v, s, d), d)
                if votes is None:
                    return
                if linear:
                    qc = aggregate_votes(self.c.validators, votes)
                    self.broadcast(encode_message(Cert(PREPARE, v, s, d, qc)))
                    self.set_prepared(s, Certified(v, d, value, None, qc))
                else:
                    self.set_prepared(s, Certified(v, d, value, votes, None))
                sig = self.sign(COMMIT, v, s, d)
                if sig is None:
                    return
                self.t.wi("votes", (COMMIT, v, s))[self.me] = VoteRecord(d, sig, True)
                if not linear:
                    self.broadcast(encode_message(Vote(COMMIT, v, s, d, self.me, sig)))
            if not self.phase_complete(COMMIT, v, s):
                votes = self.quorum_votes("votes", (COMMIT, v, s), self.msg(COMMIT, v, s, d), d)
                if votes is None:
                    return
                if linear:
                    qc = aggregate_votes(self.c.validators, votes)
                    self.hold(None, encode_message(Cert(COMMIT, v, s, d, qc)))
                    self.commit(s, Certified(v, d, value, None, qc))
                else:
                    self.commit(s, Certified(v, d, value, votes, None))
            return
        certs = self.t.get("certs")
        cert = certs.get((PREPARE, v, s))
        if cert is not None and cert[0] == d and not self.phase_complete(PREPARE, v, s):
            self.set_prepared(s, Certified(v, d, value, None, cert[1]))
            sig = self.sign(COMMIT, v, s, d)
            if sig is not None:
                self.send(primary, encode_message(Vote(COMMIT, v, s, d, self.me, sig)))
        cert = certs.get((COMMIT, v, s))
        if cert is not None and cert[0] == d and not self.phase_complete(COMMIT, v, s):
            self.commit(s, Certified(v, d, value, None, cert[1]))

    def set_prepared(self, s: int, cert: Certified) -> None:
        self.t.w("prepared")[s] = cert

    def commit(self, s: int, cert: Certified) -> None:
        if s <= self.last_executed or s in self.t.get("committed"):
            return
        self.t.w("committed")[s] = cert
        self.execute()

    def execute(self) -> None:
        committed = self.t.get("committed")
        progressed = False
        while self.last_executed + 1 in committed:
            s = self.last_executed + 1
            c = self.t.w("committed").pop(s)
            committed = self.t.get("committed")
            self.t.w("ledger")[s] = c
            self.t.set("last_executed", s)
            digest = hashlib.sha256(
                self.t.get("state_digest") + struct.pack(">Q", s) + c.digest
            ).digest()
            self.t.set("state_digest", digest)
            self.decisions.append(Decision(s, c.view, c.digest, c.value))
            if c.digest in self.t.get("pending"):
                del self.t.w("pending")[c.digest]
            self.t.w("decided_digests")[c.digest] = s
            if s % self.c.checkpoint_interval == 0:
                self.checkpoint(s, digest)
            progressed = True
        if not progressed:
            return
        self.t.set("vc_attempts", 0)
        self.t.set("fetch_tried", False)
        self.cancel_timer(REQUEST_TIMER)
        self.arm_request_timer()
        self.propose()

    def arm_request_timer(self) -> None:
        if self.active and self.t.get("pending") and REQUEST_TIMER not in self.t.get("timers"):
            self.set_timer(REQUEST_TIMER, self.c.request_timeout)

    def propose(self) -> None:
        """As primary, assign sequence numbers to pending requests while the window allows."""
        v = self.view
        if not self.active or self.c.primary(v) != self.me:
            return
        for d, value in list(self.t.get("pending").items()):
            s = max(self.t.get("next_seq"), self.last_executed + 1)
            if s > self.high:
                return
            if d in self.t.get("proposed") or d in self.t.get("decided_digests"):
                continue
            self.t.set("next_seq", s + 1)
            sig = self.sign(PREPARE, v, s, d)
            if sig is None:
                continue
            self.t.w("proposed")[d] = s
            self.t.w("preprepares")[(v, s)] = PendingPrePrepare(d, value, sig)
            self.t.wi("votes", (PREPARE, v, s))[self.me] = VoteRecord(d, sig, True)
            self.broadcast(encode_message(PrePrepare(v, s, value, sig)))
            self.advance(v, s)

    # -- linear-mode certificates -----------------------------------------------

    def on_cert(self, src: int, m: Cert, data: bytes) -> None:
        if m.kind == CHECKPOINT:
            if m.view != 0:
                self.drop("malformed", f"checkpoint cert with view {m.view}, expected 0")
            elif m.seq <= self.low:
                self.drop("late", f"checkpoint {m.seq} not above stable checkpoint {self.low}")
            elif not self.r.verifier.verify_qc(
                self.msg(CHECKPOINT, 0, m.seq, m.digest), m.qc, self.c.quorum
            ):
                self.drop("bad-qc", f"checkpoint QC for seq {m.seq} does not verify")
            else:
                self.set_stable(StableCheckpoint(m.seq, m.digest, None, m.qc), src)
            return
        v, s = m.view, m.seq
        if m.kind == COMMIT:
            if s <= self.last_executed or s in self.t.get("committed"):
                self.drop("late", f"commit cert for seq {s}, already committed")
                return
            if s > self.high:
                self.drop("out-of-window", f"commit cert for seq {s} above {self.high}")
                return
            if not self.r.verifier.verify_qc(self.msg(COMMIT, v, s, m.digest), m.qc, self.c.quorum):
                self.drop("bad-qc", f"commit QC for view {v} seq {s} does not verify")
                return
            pp = self.t.get("preprepares").get((v, s))
            if pp is not None and pp.digest == m.digest:
                self.t.w("certs")[(COMMIT, v, s)] = (m.digest, m.qc)
                if v == self.view and self.active:
                    self.advance(v, s)
                else:
                    self.commit(s, Certified(v, m.digest, pp.value, None, m.qc))
                return
            # Decided, but we lack the value: fetch it (state transfer).
            self.t.set("fetch_target", max(self.t.get("fetch_target"), s))
            self.fetch([src])
            return
        if not self.gate_view(v, data):
            return
        if not self.in_window(s):
            self.drop("out-of-window", f"sequence {s} outside ({self.low}, {self.high}]")
            return
        existing = self.t.get("certs").get((PREPARE, v, s))
        if existing is not None:
            self.drop("duplicate", f"prepare cert for view {v} seq {s} already held")
            return
        if not self.r.verifier.verify_qc(self.msg(PREPARE, v, s, m.digest), m.qc, self.c.quorum):
            self.drop("bad-qc", f"prepare QC for view {v} seq {s} does not verify")
            return
        self.t.w("certs")[(PREPARE, v, s)] = (m.digest, m.qc)
        self.advance(v, s)

    # -- checkpoints and state transfer ----------------------------------------

    def checkpoint(self, s: int, digest: bytes) -> None:
        sig = self.sign(CHECKPOINT, 0, s, digest)
        if sig is None:
            return
        self.t.wi("checkpoint_votes", s)[self.me] = VoteRecord(digest, sig, True)
        vote = encode_message(Vote(CHECKPOINT, 0, s, digest, self.me, sig))
        if self.c.pattern == ALL_TO_ALL:
            self.broadcast(vote)
        else:
            self.hold(self.c.primary(self.view), vote)
        self.check_stable(s)

    def resend_checkpoint_votes(self, collector: int | None = None) -> None:
        """Vote again for every checkpoint above the stable one (same digest, so no new
        commitment): a lost checkpoint vote must not leave the window full forever.
        Linear pattern: to ``collector`` (default: the current primary)."""
        k = self.c.checkpoint_interval
        signed = self.t.get("signed")
        for s in range(self.low + k, self.last_executed + 1, k):
            digest = signed.get((CHECKPOINT, 0, s))
            sig = None if digest is None else self.sign(CHECKPOINT, 0, s, digest)
            if sig is None:
                continue
            vote = encode_message(Vote(CHECKPOINT, 0, s, digest, self.me, sig))
            if self.c.pattern == ALL_TO_ALL:
                self.broadcast(vote)
            else:
                self.send(self.c.primary(self.view) if collector is None else collector, vote)

    def on_checkpoint_vote(self, m: Vote) -> None:
        s = m.seq
        if m.view != 0:
            self.drop("malformed", f"checkpoint vote with view {m.view}, expected 0")
            return
        if s <= self.low:
            self.drop("late", f"checkpoint {s} not above stable checkpoint {self.low}")
            return
        if s > self.high + self.c.window or s % self.c.checkpoint_interval:
            self.drop(
                "out-of-window",
                f"checkpoint for seq {s} (interval {self.c.checkpoint_interval}, high {self.high})",
            )
            return
        rec = self.t.get("checkpoint_votes").get(s, _EMPTY).get(m.signer)
        if rec is not None:
            if rec.digest == m.digest:
                self.drop("duplicate", f"checkpoint vote from {m.signer} for seq {s}")
            else:
                self.conflicting_vote("checkpoint_votes", s, m.signer, rec, m.digest, m.signature)
            return
        self.t.wi("checkpoint_votes", s)[m.signer] = VoteRecord(m.digest, m.signature, False)
        self.check_stable(s)

    def check_stable(self, s: int) -> None:
        slot = self.t.get("checkpoint_votes").get(s, _EMPTY)
        counts: dict[bytes, int] = {}
        for r in slot.values():
            counts[r.digest] = counts.get(r.digest, 0) + 1
        for digest, count in counts.items():
            if count < self.c.quorum:
                continue
            votes = self.quorum_votes(
                "checkpoint_votes", s, self.msg(CHECKPOINT, 0, s, digest), digest
            )
            if votes is None:
                continue
            if self.c.pattern == LINEAR:
                qc = aggregate_votes(self.c.validators, votes)
                if self.c.primary(self.view) == self.me:
                    self.hold(None, encode_message(Cert(CHECKPOINT, 0, s, digest, qc)))
                self.set_stable(StableCheckpoint(s, digest, None, qc), None)
            else:
                self.set_stable(StableCheckpoint(s, digest, votes, None), None)
            return

    def set_stable(self, cp: StableCheckpoint, src: int | None) -> None:
        """Adopt a stable checkpoint: move the low watermark and garbage-collect below it."""
        s = cp.seq
        if s <= self.low:
            return
        self.t.set("stable", cp)
        for name in ("preprepares", "certs"):
            kept = {k: x for k, x in self.t.get(name).items() if k[-1] > s}
            self.t.set(name, kept)
            self.t.copied.add(name)
        self.t.set("votes", {k: x for k, x in self.t.get("votes").items() if k[2] > s})
        self.t.copied.add("votes")
        self.t.copied = {
            c
            for c in self.t.copied
            if not (isinstance(c, tuple) and c[0] in ("votes", "checkpoint_votes"))
        }
        self.t.set("prepared", {k: x for k, x in self.t.get("prepared").items() if k > s})
        self.t.copied.add("prepared")
        self.t.set(
            "checkpoint_votes", {k: x for k, x in self.t.get("checkpoint_votes").items() if k > s}
        )
        self.t.copied.add("checkpoint_votes")
        self.t.set(
            "signed",
            {
                k: x
                for k, x in self.t.get("signed").items()
                if k[0] == VIEW_CHANGE and k[1] >= self.view or k[0] != VIEW_CHANGE and k[2] > s
            },
        )
        self.t.copied.add("signed")
        if s > self.last_executed:
            self.t.set("fetch_target", max(self.t.get("fetch_target"), s))
            peers = list(cp.votes) if cp.votes is not None else list(cp.qc.signer_indices())
            if src is not None:
                peers = [src]
            self.fetch([p for p in peers if p != self.me][: self.c.f + 1])
        self.propose()

    def fetch(self, peers: list[int]) -> None:
        start = self.last_executed + 1
        self.t.set("fetch_next", start + self.c.fetch_batch - 1)
        data = encode_message(Fetch(start))
        for p in peers:
            self.send(p, data)

    def on_fetch(self, src: int, m: Fetch) -> None:
        if m.from_seq < 1:
            self.drop("malformed", f"fetch from sequence {m.from_seq}, expected >= 1")
            return
        if self.t.get("recovery_round"):
            self.t.set("recovery_heard", self.t.get("recovery_heard") | {src})
        elif m.from_seq - 1 > self.last_executed:
            self.fetch([src])  # a fetch says where its sender is: ahead of us, so ask it
        stable = self.t.get("stable")
        if 0 < stable.seq and stable.seq >= m.from_seq - 1:
            # The asker may lack this checkpoint's certificate (a lost QC broadcast, or
            # votes that never reached it): with it, it can move its window.
            if stable.qc is None:
                stable = dataclasses.replace(stable, qc=self.qc_of(stable), votes=None)
                self.t.set("stable", stable)
            self.send(
                src, encode_message(Cert(CHECKPOINT, 0, stable.seq, stable.digest, stable.qc))
            )
        end = min(self.last_executed, m.from_seq + self.c.fetch_batch - 1)
        for s in range(m.from_seq, end + 1):
            self.send(src, self.decision_proof(s))
        if self.last_executed > end:
            # More than a batch ahead: prove how far, so the asker keeps fetching.
            self.send(src, self.decision_proof(self.last_executed))
        if m.status:
            # Where we are: our position, and the NEW-VIEW of our view for one left behind.
            self.send(src, encode_message(Fetch(self.last_executed + 1)))
            if self.t.get("last_new_view") is not None:
                self.send(src, self.t.get("last_new_view"))

    def decision_proof(self, s: int) -> bytes:
        """``Decided`` for executed sequence ``s``, its votes aggregated into a QC once."""
        c = self.t.get("ledger")[s]
        if c.qc is None:
            c = dataclasses.replace(c, qc=self.qc_of(c), votes=None)
            self.t.w("ledger")[s] = c
        return encode_message(Decided(s, c.view, c.value, c.qc))

    def on_decided(self, src: int, m: Decided) -> None:
        s = m.seq
        if s <= self.last_executed or s in self.t.get("committed"):
            self.drop("late", f"decision proof for seq {s}, already committed")
            return
        if not self.value_ok(m.value):
            return
        d = value_digest(m.value)
        if not self.r.verifier.verify_qc(self.msg(COMMIT, m.view, s, d), m.qc, self.c.quorum):
            self.drop("bad-qc", f"commit QC in decision proof for seq {s} does not verify")
            return
        target = max(self.t.get("fetch_target"), s)
        self.t.set("fetch_target", target)
        if s <= self.last_executed + 4 * self.c.window + self.c.fetch_batch:
            self.commit(s, Certified(m.view, d, m.value, None, m.qc))
        # else: too far ahead to hold, but it proves how far to fetch.
        if self.last_executed < target and self.last_executed >= self.t.get("fetch_next"):
            self.fetch([src])

    def start_recovery_round(self) -> None:
        """Ask every peer where it is and for the decisions after ours (a status round)."""
        k = self.t.get("recovery_round") + 1
        self.t.set("recovery_round", k)
        self.t.set("recovery_heard", frozenset())
        self.t.set("recovery_mark", self.last_executed)
        start = self.last_executed + 1
        self.t.set("fetch_next", start + self.c.fetch_batch - 1)
        self.broadcast(encode_message(Fetch(start, status=True)))
        exponent = min(k - 1, self.c.max_backoff_exponent)
        self.set_timer(RECOVERY_TIMER, self.c.request_timeout * (2**exponent))

    def end_recovery_round(self) -> None:
        """Recovered after a round, not the first, in which q - 1 peers answered and
        nothing was learned; else ask again. The first round may race with decisions
        that messages lost while the replica was down were completing."""
        quiet = (
            self.t.get("recovery_round") >= 2
            and len(self.t.get("recovery_heard")) >= self.c.quorum - 1
            and self.last_executed == self.t.get("recovery_mark")
            and self.last_executed >= self.t.get("fetch_target")
        )
        if quiet:
            self.t.set("recovery_round", 0)
            self.t.set("recovery_heard", frozenset())
        else:
            self.start_recovery_round()

    # -- view change -----------------------------------------------------------

    def start_view_change(self, target: int) -> None:
        if target <= self.view:
            return
        self.flush_outbox()  # held QCs and votes are for the old view's primary: send them now
        if self.c.pattern == LINEAR:
            # The new view's primary collects checkpoint votes now; it may never have had ours.
            self.resend_checkpoint_votes(self.c.primary(target))
        attempts = self.t.get("vc_attempts")
        self.t.set("view", target)
        self.t.set("active", False)
        self.t.set("vc_attempts", attempts + 1)
        self.gc_views(target)
        previous = self.t.get("last_view_change")
        vc = None
        if previous is not None:
            old = decode_message(previous)
            if isinstance(old, ViewChange) and old.new_view == target:
                vc, data = old, previous
        if vc is None:
            stable = self.t.get("stable")
            checkpoint = None
            if stable.seq > 0:
                qc = self.qc_of(stable)
                checkpoint = Cert(CHECKPOINT, 0, stable.seq, stable.digest, qc)
            proofs = []
            for s in sorted(self.t.get("prepared")):
                if not self.low < s <= self.high:
                    continue
                p = self.t.get("prepared")[s]
                if p.qc is None:
                    p = dataclasses.replace(p, qc=self.qc_of(p), votes=None)
                    self.t.w("prepared")[s] = p
                proofs.append(PreparedProof(p.view, s, p.value, p.qc))
            unsigned = ViewChange(target, checkpoint, tuple(proofs), self.me, b"")
            digest = view_change_digest(unsigned)
            sig = self.sign(VIEW_CHANGE, target, 0, digest)
            if sig is None:
                return
            vc = dataclasses.replace(unsigned, signature=sig)
            data = encode_message(vc)
            self.t.set("last_view_change", data)
        self.t.wi("view_changes", None)[self.me] = vc
        self.broadcast(data)
        self.cancel_timer(REQUEST_TIMER)
        self.set_timer(VIEW_CHANGE_TIMER, self.view_change_timeout())
        if self.view_change_quorum():
            self.t.set("vc_quorum_view", target)
        self.try_new_view()

    def view_change_timeout(self) -> float:
        """The base timeout doubled for each consecutive failed view, up to the cap."""
        attempts = max(self.t.get("vc_attempts") - 1, 0)
        return self.c.view_change_timeout * (2 ** min(attempts, self.c.max_backoff_exponent))

    def view_change_quorum(self) -> bool:
        """q replicas (this one included) have asked for this view or a higher one."""
        v = self.view
        return sum(1 for x in self.t.get("view_changes").values() if x.new_view >= v) >= (
            self.c.quorum
        )

    def note_view_change_quorum(self) -> None:
        """PBFT's view-change timer runs from the moment q replicas have joined the view:
        restart it then, so the new primary gets the whole timeout."""
        if self.active or self.t.get("vc_quorum_view") == self.view:
            return
        if self.view_change_quorum():
            self.t.set("vc_quorum_view", self.view)
            self.set_timer(VIEW_CHANGE_TIMER, self.view_change_timeout())

    def gc_views(self, view: int) -> None:
        """Forget normal-case messages of views below ``view``."""
        self.t.set(
            "preprepares", {k: x for k, x in self.t.get("preprepares").items() if k[0] >= view}
        )
        self.t.set("votes", {k: x for k, x in self.t.get("votes").items() if k[1] >= view})
        self.t.set("certs", {k: x for k, x in self.t.get("certs").items() if k[1] >= view})
        self.t.copied = {c for c in self.t.copied if not (isinstance(c, tuple) and c[0] == "votes")}
        self.t.copied |= {"preprepares", "votes", "certs"}
        self.t.set(
            "view_changes",
            {i: vc for i, vc in self.t.get("view_changes").items() if vc.new_view >= view},
        )
        self.t.copied.add("view_changes")
        self.t.set("future", tuple(x for x in self.t.get("future") if x[0] >= view))

    def verify_view_change(self, vc: ViewChange) -> str | None:
        """None if ``vc`` is valid, else what is wrong with it."""
        if not 0 <= vc.signer < self.c.n:
            return f"signer {vc.signer} outside 0..{self.c.n - 1}"
        ver = self.r.verifier
        if not ver.verify_vote(
            vc.signer, self.msg(VIEW_CHANGE, vc.new_view, 0, view_change_digest(vc)), vc.signature
        ):
            return f"view change from {vc.signer} is not signed by it"
        h = 0
        if vc.checkpoint is not None:
            ck = vc.checkpoint
            if ck.kind != CHECKPOINT or ck.view != 0 or ck.seq % self.c.checkpoint_interval:
                return f"checkpoint cert ({ck.kind}, view {ck.view}, seq {ck.seq}) is malformed"
            if not ver.verify_qc(self.msg(CHECKPOINT, 0, ck.seq, ck.digest), ck.qc, self.c.quorum):
                return f"checkpoint QC for seq {ck.seq} does not verify"
            h = ck.seq
        last = h
        for p in vc.prepared:
            if p.seq <= last or p.seq > h + self.c.window:
                return f"prepared proof for seq {p.seq} not increasing within ({h}, {h + self.c.window}]"
            if p.view >= vc.new_view:
                return f"prepared proof from view {p.view}, not below new view {vc.new_view}"
            if p.value is not None and len(p.value) > self.c.max_value_bytes:
                return f"prepared value of {len(p.value)} bytes is oversized"
            msg = self.msg(PREPARE, p.view, p.seq, value_digest(p.value))
            if not ver.verify_qc(msg, p.qc, self.c.quorum):
                return f"prepare QC for view {p.view} seq {p.seq} does not verify"
            last = p.seq
        return None

    def on_view_change(self, src: int, vc: ViewChange) -> None:
        if vc.signer != src:
            self.drop("signer-mismatch", f"view change signed as {vc.signer} arrived from {src}")
            return
        if vc.new_view < self.view or (vc.new_view == self.view and self.active):
            self.drop("stale-view", f"view change to {vc.new_view}, replica is in view {self.view}")
            return
        old = self.t.get("view_changes").get(src)
        if old is not None and old.new_view >= vc.new_view:
            if old.new_view == vc.new_view and old != vc and self.conflicting_view_change(old, vc):
                return
            self.drop("duplicate", f"view change to {vc.new_view} from {src}, have {old.new_view}")
            return
        err = self.verify_view_change(vc)
        if err is not None:
            self.drop("bad-view-change", err)
            return
        self.t.wi("view_changes", None)[src] = vc
        higher = sorted(
            x.new_view
            for i, x in self.t.get("view_changes").items()
            if i != self.me and x.new_view > self.view
        )
        if len(higher) >= self.c.f + 1:
            self.start_view_change(higher[0])
        self.note_view_change_quorum()
        self.try_new_view()

    def conflicting_view_change(self, old: ViewChange, vc: ViewChange) -> bool:
        """Two validly signed, different view changes to one view: equivocation evidence
        (an honest replica signs one view change per view, durably)."""
        d_old, d_new = view_change_digest(old), view_change_digest(vc)
        if d_old == d_new:
            return False
        if not self.r.verifier.verify_vote(
            vc.signer, self.msg(VIEW_CHANGE, vc.new_view, 0, d_new), vc.signature
        ):
            self.drop("bad-view-change", f"view change from {vc.signer} is not signed by it")
            return True
        self.evidence.append(
            EquivocationEvidence(
                vc.signer, VIEW_CHANGE, vc.new_view, 0, d_old, old.signature, d_new, vc.signature
            )
        )
        self.drop("equivocation", f"{vc.signer} signed two view changes to view {vc.new_view}")
        return True

    def plan(
        self, vcs: tuple[ViewChange, ...]
    ) -> tuple[Cert | None, list[tuple[int, bytes | None]]]:
        """The new view's starting checkpoint and re-proposals, from a quorum of view changes."""
        best = None
        for vc in vcs:
            if vc.checkpoint is not None and (best is None or vc.checkpoint.seq > best.seq):
                best = vc.checkpoint
        h = best.seq if best is not None else 0
        chosen: dict[int, PreparedProof] = {}
        for vc in vcs:
            for p in vc.prepared:
                if p.seq > h and (p.seq not in chosen or p.view > chosen[p.seq].view):
                    chosen[p.seq] = p
        top = max(chosen, default=h)
        return best, [(s, chosen[s].value if s in chosen else None) for s in range(h + 1, top + 1)]

    def try_new_view(self) -> None:
        v = self.view
        if self.active or self.c.primary(v) != self.me:
            return
        vcs = sorted(
            (x for x in self.t.get("view_changes").values() if x.new_view == v),
            key=lambda x: x.signer,
        )
        if len(vcs) < self.c.quorum:
            return
        vcs = tuple(vcs[: self.c.quorum])
        checkpoint, plan = self.plan(vcs)
        pps = []
        for s, value in plan:
            sig = self.sign(PREPARE, v, s, value_digest(value))
            if sig is None:
                return
            pps.append(PrePrepare(v, s, value, sig))
        nv = NewView(v, vcs, tuple(pps))
        data = encode_message(nv)
        self.broadcast(data)
        self.enter_view(nv, checkpoint, plan, data)

    def on_new_view(self, src: int, nv: NewView, data: bytes) -> None:
        v = nv.view
        if v < self.view or (v == self.view and self.active):
            self.drop("stale-view", f"new view {v}, replica is active in view {self.view}")
            return
        if src != self.c.primary(v) and not self.t.get("recovery_round"):
            # While recovering, a NEW-VIEW relayed by a peer is accepted: it is verified
            # in full below (view changes, re-proposals, the primary's signatures).
            self.drop("not-primary", f"new view {v} from {src}, primary is {self.c.primary(v)}")
            return
        signers = {vc.signer for vc in nv.view_changes}
        if len(signers) != len(nv.view_changes) or len(signers) < self.c.quorum:
            self.drop(
                "bad-new-view",
                f"{len(signers)} distinct view changes of {len(nv.view_changes)}, need {self.c.quorum}",
            )
            return
        for vc in nv.view_changes:
            if vc.new_view != v:
                self.drop("bad-new-view", f"carries a view change to {vc.new_view}, not {v}")
                return
            err = self.verify_view_change(vc)
            if err is not None:
                self.drop("bad-new-view", err)
                return
        checkpoint, plan = self.plan(nv.view_changes)
        got = [(p.view, p.seq, p.value) for p in nv.preprepares]
        if got != [(v, s, value) for s, value in plan]:
            self.drop("bad-new-view", "re-proposals differ from those the view changes determine")
            return
        primary = self.c.primary(v)
        for p in nv.preprepares:
            if not self.r.verifier.verify_vote(
                primary, self.msg(PREPARE, v, p.seq, p.digest), p.signature
            ):
                self.drop("bad-new-view", f"re-proposal for seq {p.seq} not signed by {primary}")
                return
        self.enter_view(nv, checkpoint, plan, data)

    def enter_view(self, nv: NewView, checkpoint: Cert | None, plan, data: bytes) -> None:
        v = nv.view
        self.t.set("view", v)
        self.t.set("active", True)
        self.t.set("last_new_view", data)
        self.cancel_timer(VIEW_CHANGE_TIMER)
        self.gc_views(v)
        self.t.set(
            "view_changes", {i: x for i, x in self.t.get("view_changes").items() if x.new_view > v}
        )
        if checkpoint is not None and checkpoint.seq > self.low:
            self.set_stable(
                StableCheckpoint(checkpoint.seq, checkpoint.digest, None, checkpoint.qc), None
            )
        top = plan[-1][0] if plan else 0
        self.t.set("next_seq", max(top, self.low, self.last_executed) + 1)
        self.t.set("proposed", {p.digest: p.seq for p in nv.preprepares if p.value is not None})
        self.t.set("fetch_tried", False)
        primary = self.c.primary(v)
        for p in nv.preprepares:
            self.on_preprepare(primary, p, None, from_new_view=True)
        future = self.t.get("future")
        self.t.set("future", tuple(x for x in future if x[0] != v))
        for fv, fsrc, fdata in future:
            if fv == v:
                saved = (self.src, self.kind)
                self.on_deliver(fsrc, fdata)
                self.src, self.kind = saved
        self.cancel_timer(REQUEST_TIMER)
        self.arm_request_timer()
        self.propose()
