"""Vote collection: a quorum of matching votes (new ones batch-verified, bad
ones dropped and their signers suspected) and conflicting votes from one
signer (equivocation evidence, or a forgery replaced by the valid vote)."""

from __future__ import annotations

from ..evidence import EquivocationEvidence
from .context import StepContext
from .draft import EMPTY, CowDict, Slot
from .events import Dropped
from .state import VoteRecord


class Votes(StepContext):
    """Quorums and conflicting votes, for normal-case and checkpoint votes."""

    def conflicting_vote(
        self,
        table: CowDict,
        key,
        slot: Slot,
        signer: int,
        rec: VoteRecord,
        digest: bytes,
        signature: bytes,
    ) -> None:
        """``signer`` voted ``digest`` where ``table[key]`` holds ``rec`` for another digest;
        ``slot`` is what the votes are for: (kind, view, seq)."""
        kind, view, seq = slot
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
            table.inner(key)[signer] = VoteRecord(digest, signature, True)
            self.state.suspects |= {signer}
            self.drop("bad-signature", f"earlier {kind} vote from {signer} did not verify")

    def quorum_votes(self, table: CowDict, key, msg: bytes, digest: bytes) -> dict | None:
        """Verified votes for ``digest`` in ``table[key]`` if they reach a quorum
        (batch-checking new ones)."""
        q = self.c.quorum
        slot = table.get(key, EMPTY)
        matching = {i: r for i, r in slot.items() if r.digest == digest}
        if len(matching) < q:
            return None
        unverified = {i: r.signature for i, r in matching.items() if not r.verified}
        if unverified:
            results = self.r.verifier.verify_votes(msg, unverified)
            w = table.inner(key)
            bad = []
            for i, ok in results.items():
                if ok:
                    w[i] = VoteRecord(digest, unverified[i], True)
                else:
                    del w[i]
                    bad.append(i)
            if bad:
                self.state.suspects |= set(bad)
                for i in bad:
                    self.drops.append(
                        Dropped(i, "vote", "bad-signature", f"vote from {i} failed verification")
                    )
            matching = {i: r for i, r in w.items() if r.digest == digest}
            if len(matching) < q:
                return None
        return {i: r.signature for i, r in matching.items()}
