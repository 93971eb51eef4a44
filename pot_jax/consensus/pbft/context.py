"""``StepContext``: what every handler of one step shares.

The replica and its config, the draft state, the outputs collected so far,
and the small helpers all seams use: the view and window, dropping an input,
timers, signing a vote (recorded durably first), the view gate that buffers
messages for a future view.
"""

from __future__ import annotations

import logging

from pot_jax.crypto.quorum import QuorumCertificate, aggregate_votes, sign_vote, vote_message

from ..evidence import EquivocationEvidence
from .config import Replica
from .draft import Draft
from .events import Decision, Dropped, Send, SetTimer, StepResult
from .state import Certified, ReplicaState, StableCheckpoint

log = logging.getLogger("pot_jax.consensus")


class StepContext:
    """One step in progress; the seams (``outbox``, ``votes``, ...) are classes over it."""

    def __init__(self, replica: Replica, state: ReplicaState) -> None:
        self.r = replica
        self.c = replica.config
        self.me = replica.index
        self.state = Draft(state)  # the new state, built by this step
        self.sends: list[Send] = []
        self.timers: list[SetTimer] = []
        self.decisions: list[Decision] = []
        self.drops: list[Dropped] = []
        self.evidence: list[EquivocationEvidence] = []
        self.src: int | None = None
        self.kind = "event"

    def result(self) -> StepResult:
        return StepResult(
            self.state.finish(),
            tuple(self.sends),
            tuple(self.timers),
            tuple(self.decisions),
            tuple(self.drops),
            tuple(self.evidence),
        )

    # -- small helpers ------------------------------------------------------

    @property
    def view(self) -> int:
        return self.state.view

    @property
    def active(self) -> bool:
        return self.state.active

    @property
    def low(self) -> int:
        return self.state.stable.seq

    @property
    def high(self) -> int:
        return self.low + self.c.window

    @property
    def last_executed(self) -> int:
        return self.state.last_executed

    def in_window(self, seq: int) -> bool:
        return self.low < seq <= self.high

    def drop(self, reason: str, detail: str) -> None:
        log.debug(
            "replica %d dropped %s from %s: %s (%s)", self.me, self.kind, self.src, reason, detail
        )
        self.drops.append(Dropped(self.src, self.kind, reason, detail))

    def msg(self, kind: str, view: int, seq: int, digest: bytes) -> bytes:
        return vote_message(self.c.chain_id, kind, view, seq, digest)

    def set_timer(self, name: str, delay: float) -> None:
        token = self.state.timer_counter + 1
        self.state.timer_counter = token
        self.state.timers[name] = token
        self.timers.append(SetTimer(name, delay, token))

    def cancel_timer(self, name: str) -> None:
        if name in self.state.timers:
            del self.state.timers[name]

    def sign(self, kind: str, view: int, seq: int, digest: bytes) -> bytes | None:
        """Sign a vote after recording it durably; refuse a second digest for one slot."""
        key = (kind, view, seq)
        previous = self.state.signed.get(key)
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
            self.state.signed[key] = digest
        return sign_vote(self.r.secret_key, self.msg(kind, view, seq, digest))

    def qc_of(self, cert: Certified | StableCheckpoint) -> QuorumCertificate:
        if cert.qc is not None:
            return cert.qc
        return aggregate_votes(self.c.validators, cert.votes)

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
            future = self.state.future
            from_src = sum(1 for _, s, _ in future if s == self.src)
            if len(future) >= self.c.future_buffer or from_src >= max(
                4, self.c.future_buffer // self.c.n
            ):
                self.drop("future-buffer-full", f"message for view {view} while in {self.view}")
                return False
            self.state.future = (*future, (view, self.src, data))
            return False
        return True
