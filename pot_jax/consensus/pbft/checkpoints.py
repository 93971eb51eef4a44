"""Checkpoints and state transfer.

Checkpoint votes and the stable checkpoint (the low watermark, with garbage
collection below it); fetching decisions and answering fetches with
decision proofs; the status rounds of a recovering replica.

Uses from the other seams: ``send``/``broadcast``/``hold`` (outbox),
``quorum_votes``/``conflicting_vote`` (votes), ``commit`` and ``propose``
(normal case).
"""

from __future__ import annotations

import dataclasses

from pot_jax.crypto.quorum import aggregate_votes

from ..messages import (
    CHECKPOINT,
    COMMIT,
    VIEW_CHANGE,
    Cert,
    Decided,
    Fetch,
    Vote,
    encode_message,
    value_digest,
)
from .config import ALL_TO_ALL, LINEAR
from .context import StepContext
from .draft import EMPTY
from .events import RECOVERY_TIMER
from .state import Certified, StableCheckpoint, VoteRecord


class Checkpoints(StepContext):
    """Checkpoints, the stable checkpoint, fetch and decision proofs, recovery rounds."""

    def checkpoint(self, s: int, digest: bytes) -> None:
        sig = self.sign(CHECKPOINT, 0, s, digest)
        if sig is None:
            return
        self.state.checkpoint_votes.inner(s)[self.me] = VoteRecord(digest, sig, True)
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
        signed = self.state.signed
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
        rec = self.state.checkpoint_votes.get(s, EMPTY).get(m.signer)
        if rec is not None:
            if rec.digest == m.digest:
                self.drop("duplicate", f"checkpoint vote from {m.signer} for seq {s}")
            else:
                self.conflicting_vote(
                    self.state.checkpoint_votes,
                    s,
                    (CHECKPOINT, 0, s),
                    m.signer,
                    rec,
                    m.digest,
                    m.signature,
                )
            return
        self.state.checkpoint_votes.inner(s)[m.signer] = VoteRecord(m.digest, m.signature, False)
        self.check_stable(s)

    def check_stable(self, s: int) -> None:
        slot = self.state.checkpoint_votes.get(s, EMPTY)
        counts: dict[bytes, int] = {}
        for r in slot.values():
            counts[r.digest] = counts.get(r.digest, 0) + 1
        for digest, count in counts.items():
            if count < self.c.quorum:
                continue
            votes = self.quorum_votes(
                self.state.checkpoint_votes, s, self.msg(CHECKPOINT, 0, s, digest), digest
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
        st = self.state
        st.stable = cp
        st.preprepares.replace({k: x for k, x in st.preprepares.items() if k[-1] > s})
        st.certs.replace({k: x for k, x in st.certs.items() if k[-1] > s})
        st.votes.replace({k: x for k, x in st.votes.items() if k[2] > s})
        st.prepared.replace({k: x for k, x in st.prepared.items() if k > s})
        st.checkpoint_votes.replace({k: x for k, x in st.checkpoint_votes.items() if k > s})
        st.signed.replace(
            {
                k: x
                for k, x in st.signed.items()
                if k[0] == VIEW_CHANGE and k[1] >= self.view or k[0] != VIEW_CHANGE and k[2] > s
            }
        )
        if s > self.last_executed:
            self.state.fetch_target = max(self.state.fetch_target, s)
            peers = list(cp.votes) if cp.votes is not None else list(cp.qc.signer_indices())
            if src is not None:
                peers = [src]
            self.fetch([p for p in peers if p != self.me][: self.c.f + 1])
        self.propose()

    def fetch(self, peers: list[int]) -> None:
        start = self.last_executed + 1
        self.state.fetch_next = start + self.c.fetch_batch - 1
        data = encode_message(Fetch(start))
        for p in peers:
            self.send(p, data)

    def on_fetch(self, src: int, m: Fetch) -> None:
        if m.from_seq < 1:
            self.drop("malformed", f"fetch from sequence {m.from_seq}, expected >= 1")
            return
        if self.state.recovery_round:
            self.state.recovery_heard |= {src}
        elif m.from_seq - 1 > self.last_executed:
            self.fetch([src])  # a fetch says where its sender is: ahead of us, so ask it
        stable = self.state.stable
        if 0 < stable.seq and stable.seq >= m.from_seq - 1:
            # The asker may lack this checkpoint's certificate (a lost QC broadcast, or
            # votes that never reached it): with it, it can move its window.
            if stable.qc is None:
                stable = dataclasses.replace(stable, qc=self.qc_of(stable), votes=None)
                self.state.stable = stable
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
            if self.state.last_new_view is not None:
                self.send(src, self.state.last_new_view)

    def decision_proof(self, s: int) -> bytes:
        """``Decided`` for executed sequence ``s``, its votes aggregated into a QC once."""
        c = self.state.ledger[s]
        if c.qc is None:
            c = dataclasses.replace(c, qc=self.qc_of(c), votes=None)
            self.state.ledger[s] = c
        return encode_message(Decided(s, c.view, c.value, c.qc))

    def on_decided(self, src: int, m: Decided) -> None:
        s = m.seq
        if s <= self.last_executed or s in self.state.committed:
            self.drop("late", f"decision proof for seq {s}, already committed")
            return
        if not self.value_ok(m.value):
            return
        d = value_digest(m.value)
        if not self.r.verifier.verify_qc(self.msg(COMMIT, m.view, s, d), m.qc, self.c.quorum):
            self.drop("bad-qc", f"commit QC in decision proof for seq {s} does not verify")
            return
        target = max(self.state.fetch_target, s)
        self.state.fetch_target = target
        if s <= self.last_executed + 4 * self.c.window + self.c.fetch_batch:
            self.commit(s, Certified(m.view, d, m.value, None, m.qc))
        # else: too far ahead to hold, but it proves how far to fetch.
        if self.last_executed < target and self.last_executed >= self.state.fetch_next:
            self.fetch([src])

    def start_recovery_round(self) -> None:
        """Ask every peer where it is and for the decisions after ours (a status round)."""
        k = self.state.recovery_round + 1
        self.state.recovery_round = k
        self.state.recovery_heard = frozenset()
        self.state.recovery_mark = self.last_executed
        start = self.last_executed + 1
        self.state.fetch_next = start + self.c.fetch_batch - 1
        self.broadcast(encode_message(Fetch(start, status=True)))
        exponent = min(k - 1, self.c.max_backoff_exponent)
        self.set_timer(RECOVERY_TIMER, self.c.request_timeout * (2**exponent))

    def end_recovery_round(self) -> None:
        """Recovered after a round, not the first, in which q - 1 peers answered and
        nothing was learned; else ask again. The first round may race with decisions
        that messages lost while the replica was down were completing."""
        quiet = (
            self.state.recovery_round >= 2
            and len(self.state.recovery_heard) >= self.c.quorum - 1
            and self.last_executed == self.state.recovery_mark
            and self.last_executed >= self.state.fetch_target
        )
        if quiet:
            self.state.recovery_round = 0
            self.state.recovery_heard = frozenset()
        else:
            self.start_recovery_round()
