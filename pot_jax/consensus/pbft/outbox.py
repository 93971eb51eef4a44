"""Sending, and holding messages to piggyback them (linear pattern).

A held message rides in a ``Bundle`` on the next message to the same
destination; at the end of a step it is kept only while a carrier is
expected, and a flush timer sends it alone after ``piggyback_delay``.
"""

from __future__ import annotations

from ..messages import MAX_BUNDLE_PARTS, Bundle, encode_message
from .config import LINEAR
from .context import StepContext
from .events import FLUSH_TIMER, Send


class Outbox(StepContext):
    """Send, broadcast, hold, and settle or flush the held messages."""

    def send(self, dest: int, data: bytes) -> None:
        if dest != self.me:
            self.sends.append(Send(dest, self.with_held(dest, data)))

    def broadcast(self, data: bytes) -> None:
        self.sends.append(Send(None, self.with_held(None, data)))

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
        self.state.outbox = (*self.state.outbox, (dest, data))

    def with_held(self, dest: int | None, data: bytes) -> bytes:
        """``data``, bundled after the held messages for the same destination, if any."""
        outbox = self.state.outbox
        if not outbox:
            return data
        mine = [x for x in outbox if x[0] == dest]
        if not mine:
            return data
        carried, rest = mine[: MAX_BUNDLE_PARTS - 1], mine[MAX_BUNDLE_PARTS - 1 :]
        self.state.outbox = tuple(x for x in outbox if x[0] != dest) + tuple(rest)
        return encode_message(Bundle((*(d for _, d in carried), data)))

    def carrier_expected(self) -> bool:
        """A message to the primary, or from it, will soon go out anyway."""
        if not self.active:
            return False
        if self.state.pending:
            return True
        done = self.last_executed
        committed = self.state.committed
        return any(
            v == self.view and s > done and s not in committed for v, s in self.state.preprepares
        )

    def settle_outbox(self) -> None:
        """At the end of a step: keep held messages only while a carrier is expected."""
        if not self.state.outbox:
            if FLUSH_TIMER in self.state.timers:
                self.cancel_timer(FLUSH_TIMER)
            return
        if self.carrier_expected():
            if FLUSH_TIMER not in self.state.timers:
                self.set_timer(FLUSH_TIMER, self.c.piggyback_delay)
            return
        self.flush_outbox()

    def flush_outbox(self) -> None:
        outbox = self.state.outbox
        self.state.outbox = ()
        self.cancel_timer(FLUSH_TIMER)
        for dest in dict.fromkeys(x for x, _ in outbox):
            held = [d for x, d in outbox if x == dest]
            for k in range(0, len(held), MAX_BUNDLE_PARTS):
                chunk = held[k : k + MAX_BUNDLE_PARTS]
                data = chunk[0] if len(chunk) == 1 else encode_message(Bundle(tuple(chunk)))
                self.sends.append(Send(dest, data))
