"""The transition: ``step``, ``recover`` and ``initial_state``, and ``_Step``,
which combines the seams and dispatches each event to them."""

from __future__ import annotations

import dataclasses

from pot_jax.crypto.errors import CryptoError

from ..messages import (
    CHECKPOINT,
    PREPARE,
    Bundle,
    Cert,
    Decided,
    Fetch,
    MalformedMessage,
    NewView,
    PrePrepare,
    ViewChange,
    Vote,
    decode_message,
    encode_message,
    message_kind,
)
from .checkpoints import Checkpoints
from .config import Replica
from .context import log
from .events import (
    FLUSH_TIMER,
    RECOVERY_TIMER,
    REQUEST_TIMER,
    VIEW_CHANGE_TIMER,
    Deliver,
    Dropped,
    Event,
    StepResult,
    Submit,
    TimerExpired,
)
from .normal import NormalCase
from .outbox import Outbox
from .state import DURABLE_FIELDS, DurableState, ReplicaState
from .view_change import ViewChanges
from .votes import Votes

__all__ = ["initial_state", "recover", "step"]


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
                run.state.view_changes[replica.index] = vc
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


class _Step(NormalCase, Checkpoints, ViewChanges, Votes, Outbox):
    """All seams of one step; dispatches deliveries (bundles unpacked) and timers."""

    def on_timer(self, name: str, token: int) -> None:
        if self.state.timers.get(name) != token:
            return  # superseded or cancelled
        del self.state.timers[name]
        if name == REQUEST_TIMER:
            if not self.active or not self.state.pending:
                return
            if not self.state.fetch_tried:
                # First expiry: maybe we only missed decisions, or checkpoint votes were lost
                # and the window is full; ask and re-vote before accusing the primary.
                self.state.fetch_tried = True
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
                    previous = self.state.last_view_change
                    if previous is not None:
                        self.broadcast(previous)
                    self.state.vc_attempts += 1
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
