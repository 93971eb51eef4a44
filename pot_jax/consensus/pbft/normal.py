"""The normal case: client requests, pre-prepare, prepare and commit votes,
execution in sequence order, the primary's proposals, and the linear
pattern's prepare and commit certificates.

Uses from the other seams: ``send``/``broadcast``/``hold`` (outbox),
``quorum_votes``/``conflicting_vote`` (votes), ``checkpoint``, ``fetch`` and
``start_recovery_round`` (checkpoints).
"""

from __future__ import annotations

import hashlib
import struct

from pot_jax.crypto.quorum import aggregate_votes

from ..evidence import EquivocationEvidence
from ..messages import (
    CHECKPOINT,
    COMMIT,
    PREPARE,
    Cert,
    PrePrepare,
    Vote,
    encode_message,
    value_digest,
)
from .config import ALL_TO_ALL, LINEAR
from .context import StepContext
from .draft import EMPTY
from .events import REQUEST_TIMER, Decision
from .state import Certified, PendingPrePrepare, StableCheckpoint, VoteRecord


class NormalCase(StepContext):
    """Pre-prepare, prepare, commit, execute and propose."""

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
        if d in self.state.decided_digests or d in self.state.pending:
            return
        self.state.pending[d] = value
        self.arm_request_timer()
        self.propose()

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
        existing = self.state.preprepares.get((v, s))
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
        decided = self.state.ledger.get(s)
        if decided is not None and decided.digest != d:
            self.drop("conflicts-decided", f"pre-prepare for seq {s} conflicts with its decision")
            return
        if m.value is not None and self.me != primary and not self.c.validate(m.value):
            self.drop("app-rejected", f"application check rejected the value for seq {s}")
            return
        self.state.preprepares[(v, s)] = PendingPrePrepare(d, m.value, m.signature)
        self.state.votes.inner((PREPARE, v, s))[primary] = VoteRecord(d, m.signature, True)
        if self.me != primary:
            sig = self.sign(PREPARE, v, s, d)
            if sig is None:
                return
            self.state.votes.inner((PREPARE, v, s))[self.me] = VoteRecord(d, sig, True)
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
            p = self.state.prepared.get(s)
            return p is not None and p.view == v
        return s <= self.last_executed or s in self.state.committed

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
        rec = self.state.votes.get(key, EMPTY).get(m.signer)
        if rec is not None:
            if rec.digest == m.digest:
                self.drop("duplicate", f"{m.kind} vote from {m.signer} for seq {s} already counted")
            else:
                self.conflicting_vote(
                    self.state.votes, key, key, m.signer, rec, m.digest, m.signature
                )
            return
        if self.phase_complete(m.kind, v, s):
            # Kept (unverified, never counted) so that a conflicting vote from the same
            # signer still yields equivocation evidence.
            self.state.votes.inner(key)[m.signer] = VoteRecord(m.digest, m.signature, False)
            self.drop("late", f"{m.kind} for seq {s} after its quorum formed")
            return
        verified = False
        if m.signer in self.state.suspects:
            if not self.r.verifier.verify_vote(
                m.signer, self.msg(m.kind, v, s, m.digest), m.signature
            ):
                self.drop("bad-signature", f"{m.kind} vote from {m.signer} does not verify")
                return
            verified = True
        self.state.votes.inner(key)[m.signer] = VoteRecord(m.digest, m.signature, verified)
        if m.kind == COMMIT and (v, s) not in self.state.preprepares:
            self.decided_unseen(v, s, m.digest)
            return
        self.advance(v, s)

    def decided_unseen(self, v: int, s: int, d: bytes) -> None:
        """q commit votes for a proposal this replica never received (lost while it was
        down, say): s is decided, so catch up by status rounds instead of waiting for
        traffic that may never come (the linear pattern fetches on the commit QC)."""
        if s <= self.state.fetch_target:
            return
        if (
            self.quorum_votes(self.state.votes, (COMMIT, v, s), self.msg(COMMIT, v, s, d), d)
            is None
        ):
            return
        self.state.fetch_target = s
        if not self.state.recovery_round:
            self.start_recovery_round()

    def advance(self, v: int, s: int) -> None:
        """Move (v, s) through prepared and committed as far as the collected evidence allows."""
        if v != self.view or not self.active:
            return
        pp = self.state.preprepares.get((v, s))
        if pp is None:
            return
        d, value = pp.digest, pp.value
        primary = self.c.primary(v)
        linear = self.c.pattern == LINEAR
        if not linear or self.me == primary:
            if not self.phase_complete(PREPARE, v, s):
                votes = self.quorum_votes(
                    self.state.votes, (PREPARE, v, s), self.msg(PREPARE, v, s, d), d
                )
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
                self.state.votes.inner((COMMIT, v, s))[self.me] = VoteRecord(d, sig, True)
                if not linear:
                    self.broadcast(encode_message(Vote(COMMIT, v, s, d, self.me, sig)))
            if not self.phase_complete(COMMIT, v, s):
                votes = self.quorum_votes(
                    self.state.votes, (COMMIT, v, s), self.msg(COMMIT, v, s, d), d
                )
                if votes is None:
                    return
                if linear:
                    qc = aggregate_votes(self.c.validators, votes)
                    self.hold(None, encode_message(Cert(COMMIT, v, s, d, qc)))
                    self.commit(s, Certified(v, d, value, None, qc))
                else:
                    self.commit(s, Certified(v, d, value, votes, None))
            return
        certs = self.state.certs
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
        self.state.prepared[s] = cert

    def commit(self, s: int, cert: Certified) -> None:
        if s <= self.last_executed or s in self.state.committed:
            return
        self.state.committed[s] = cert
        self.execute()

    def execute(self) -> None:
        committed = self.state.committed
        progressed = False
        while self.last_executed + 1 in committed:
            s = self.last_executed + 1
            c = self.state.committed.pop(s)
            committed = self.state.committed
            self.state.ledger[s] = c
            self.state.last_executed = s
            digest = hashlib.sha256(
                self.state.state_digest + struct.pack(">Q", s) + c.digest
            ).digest()
            self.state.state_digest = digest
            self.decisions.append(Decision(s, c.view, c.digest, c.value))
            if c.digest in self.state.pending:
                del self.state.pending[c.digest]
            if self.c.supersedes is not None and c.value is not None:
                for d, value in list(self.state.pending.items()):
                    if self.c.supersedes(c.value, value):
                        del self.state.pending[d]
            self.state.decided_digests[c.digest] = s
            if s % self.c.checkpoint_interval == 0:
                self.checkpoint(s, digest)
            progressed = True
        if not progressed:
            return
        self.state.vc_attempts = 0
        self.state.fetch_tried = False
        self.cancel_timer(REQUEST_TIMER)
        self.arm_request_timer()
        self.propose()

    def arm_request_timer(self) -> None:
        if self.active and self.state.pending and REQUEST_TIMER not in self.state.timers:
            self.set_timer(REQUEST_TIMER, self.c.request_timeout)

    def propose(self) -> None:
        """As primary, assign sequence numbers to pending requests while the window allows."""
        v = self.view
        if not self.active or self.c.primary(v) != self.me:
            return
        for d, value in list(self.state.pending.items()):
            s = max(self.state.next_seq, self.last_executed + 1)
            if s > self.high:
                return
            if d in self.state.proposed or d in self.state.decided_digests:
                continue
            self.state.next_seq = s + 1
            sig = self.sign(PREPARE, v, s, d)
            if sig is None:
                continue
            self.state.proposed[d] = s
            self.state.preprepares[(v, s)] = PendingPrePrepare(d, value, sig)
            self.state.votes.inner((PREPARE, v, s))[self.me] = VoteRecord(d, sig, True)
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
            if s <= self.last_executed or s in self.state.committed:
                self.drop("late", f"commit cert for seq {s}, already committed")
                return
            if s > self.high:
                self.drop("out-of-window", f"commit cert for seq {s} above {self.high}")
                return
            if not self.r.verifier.verify_qc(self.msg(COMMIT, v, s, m.digest), m.qc, self.c.quorum):
                self.drop("bad-qc", f"commit QC for view {v} seq {s} does not verify")
                return
            pp = self.state.preprepares.get((v, s))
            if pp is not None and pp.digest == m.digest:
                self.state.certs[(COMMIT, v, s)] = (m.digest, m.qc)
                if v == self.view and self.active:
                    self.advance(v, s)
                else:
                    self.commit(s, Certified(v, m.digest, pp.value, None, m.qc))
                return
            # Decided, but we lack the value: fetch it (state transfer).
            self.state.fetch_target = max(self.state.fetch_target, s)
            self.fetch([src])
            return
        if not self.gate_view(v, data):
            return
        if not self.in_window(s):
            self.drop("out-of-window", f"sequence {s} outside ({self.low}, {self.high}]")
            return
        existing = self.state.certs.get((PREPARE, v, s))
        if existing is not None:
            self.drop("duplicate", f"prepare cert for view {v} seq {s} already held")
            return
        if not self.r.verifier.verify_qc(self.msg(PREPARE, v, s, m.digest), m.qc, self.c.quorum):
            self.drop("bad-qc", f"prepare QC for view {v} seq {s} does not verify")
            return
        self.state.certs[(PREPARE, v, s)] = (m.digest, m.qc)
        self.advance(v, s)
