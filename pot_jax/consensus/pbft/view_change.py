"""View change: starting one, verifying VIEW-CHANGE messages, the new
primary's NEW-VIEW (its re-proposals planned from a quorum of view changes),
checking a NEW-VIEW, and entering the new view.

Uses from the other seams: ``broadcast``/``flush_outbox`` (outbox),
``resend_checkpoint_votes``/``set_stable`` (checkpoints), ``on_preprepare``,
``arm_request_timer`` and ``propose`` (normal case), ``on_deliver`` (transition).
"""

from __future__ import annotations

import dataclasses

from ..evidence import EquivocationEvidence
from ..messages import (
    CHECKPOINT,
    PREPARE,
    VIEW_CHANGE,
    Cert,
    NewView,
    PreparedProof,
    PrePrepare,
    ViewChange,
    decode_message,
    encode_message,
    value_digest,
    view_change_digest,
)
from .config import LINEAR
from .context import StepContext
from .events import REQUEST_TIMER, VIEW_CHANGE_TIMER
from .state import StableCheckpoint


class ViewChanges(StepContext):
    """Start, verify and complete view changes."""

    def start_view_change(self, target: int) -> None:
        if target <= self.view:
            return
        self.flush_outbox()  # held QCs and votes are for the old view's primary: send them now
        if self.c.pattern == LINEAR:
            # The new view's primary collects checkpoint votes now; it may never have had ours.
            self.resend_checkpoint_votes(self.c.primary(target))
        attempts = self.state.vc_attempts
        self.state.view = target
        self.state.active = False
        self.state.vc_attempts = attempts + 1
        self.gc_views(target)
        previous = self.state.last_view_change
        vc = None
        if previous is not None:
            old = decode_message(previous)
            if isinstance(old, ViewChange) and old.new_view == target:
                vc, data = old, previous
        if vc is None:
            stable = self.state.stable
            checkpoint = None
            if stable.seq > 0:
                qc = self.qc_of(stable)
                checkpoint = Cert(CHECKPOINT, 0, stable.seq, stable.digest, qc)
            proofs = []
            for s in sorted(self.state.prepared):
                if not self.low < s <= self.high:
                    continue
                p = self.state.prepared[s]
                if p.qc is None:
                    p = dataclasses.replace(p, qc=self.qc_of(p), votes=None)
                    self.state.prepared[s] = p
                proofs.append(PreparedProof(p.view, s, p.value, p.qc))
            unsigned = ViewChange(target, checkpoint, tuple(proofs), self.me, b"")
            digest = view_change_digest(unsigned)
            sig = self.sign(VIEW_CHANGE, target, 0, digest)
            if sig is None:
                return
            vc = dataclasses.replace(unsigned, signature=sig)
            data = encode_message(vc)
            self.state.last_view_change = data
        self.state.view_changes[self.me] = vc
        self.broadcast(data)
        self.cancel_timer(REQUEST_TIMER)
        self.set_timer(VIEW_CHANGE_TIMER, self.view_change_timeout())
        if self.view_change_quorum():
            self.state.vc_quorum_view = target
        self.try_new_view()

    def view_change_timeout(self) -> float:
        """The base timeout doubled for each consecutive failed view, up to the cap."""
        attempts = max(self.state.vc_attempts - 1, 0)
        return self.c.view_change_timeout * (2 ** min(attempts, self.c.max_backoff_exponent))

    def view_change_quorum(self) -> bool:
        """q replicas (this one included) have asked for this view or a higher one."""
        v = self.view
        return sum(1 for x in self.state.view_changes.values() if x.new_view >= v) >= (
            self.c.quorum
        )

    def note_view_change_quorum(self) -> None:
        """PBFT's view-change timer runs from the moment q replicas have joined the view:
        restart it then, so the new primary gets the whole timeout."""
        if self.active or self.state.vc_quorum_view == self.view:
            return
        if self.view_change_quorum():
            self.state.vc_quorum_view = self.view
            self.set_timer(VIEW_CHANGE_TIMER, self.view_change_timeout())

    def gc_views(self, view: int) -> None:
        """Forget normal-case messages of views below ``view``."""
        st = self.state
        st.preprepares.replace({k: x for k, x in st.preprepares.items() if k[0] >= view})
        st.votes.replace({k: x for k, x in st.votes.items() if k[1] >= view})
        st.certs.replace({k: x for k, x in st.certs.items() if k[1] >= view})
        st.view_changes.replace({i: vc for i, vc in st.view_changes.items() if vc.new_view >= view})
        st.future = tuple(x for x in st.future if x[0] >= view)

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
        old = self.state.view_changes.get(src)
        if old is not None and old.new_view >= vc.new_view:
            if old.new_view == vc.new_view and old != vc and self.conflicting_view_change(old, vc):
                return
            self.drop("duplicate", f"view change to {vc.new_view} from {src}, have {old.new_view}")
            return
        err = self.verify_view_change(vc)
        if err is not None:
            self.drop("bad-view-change", err)
            return
        self.state.view_changes[src] = vc
        higher = sorted(
            x.new_view
            for i, x in self.state.view_changes.items()
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
            (x for x in self.state.view_changes.values() if x.new_view == v),
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
        if src != self.c.primary(v) and not self.state.recovery_round:
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
        self.state.view = v
        self.state.active = True
        self.state.last_new_view = data
        self.cancel_timer(VIEW_CHANGE_TIMER)
        self.gc_views(v)
        self.state.view_changes.replace(
            {i: x for i, x in self.state.view_changes.items() if x.new_view > v}
        )
        if checkpoint is not None and checkpoint.seq > self.low:
            self.set_stable(
                StableCheckpoint(checkpoint.seq, checkpoint.digest, None, checkpoint.qc), None
            )
        top = plan[-1][0] if plan else 0
        self.state.next_seq = max(top, self.low, self.last_executed) + 1
        self.state.proposed.replace(
            {p.digest: p.seq for p in nv.preprepares if p.value is not None}
        )
        self.state.fetch_tried = False
        primary = self.c.primary(v)
        for p in nv.preprepares:
            self.on_preprepare(primary, p, None, from_new_view=True)
        future = self.state.future
        self.state.future = tuple(x for x in future if x[0] != v)
        for fv, fsrc, fdata in future:
            if fv == v:
                saved = (self.src, self.kind)
                self.on_deliver(fsrc, fdata)
                self.src, self.kind = saved
        self.cancel_timer(REQUEST_TIMER)
        self.arm_request_timer()
        self.propose()
