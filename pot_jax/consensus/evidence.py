"""Equivocation evidence: two conflicting signed votes from one validator.

An honest replica never signs two different digests for the same (kind,
view, sequence); two valid signatures that do are a self-contained proof of
misbehaviour that anyone holding the validator set can check, and that a
protocol layer can turn into slashing.
"""

from __future__ import annotations

from dataclasses import dataclass

from pot_jax.crypto.quorum import ValidatorSet, vote_message

from .verifier import Verifier

__all__ = ["EquivocationEvidence", "verify_evidence"]


@dataclass(frozen=True)
class EquivocationEvidence:
    """Validator ``signer`` signed both digests for (kind, view, seq)."""

    signer: int
    kind: str
    view: int
    seq: int
    digest_a: bytes
    signature_a: bytes
    digest_b: bytes
    signature_b: bytes


def verify_evidence(
    chain_id: bytes,
    validators: ValidatorSet,
    evidence: EquivocationEvidence,
    verifier: Verifier | None = None,
) -> bool:
    """True iff the evidence shows two valid signatures by one signer on different digests."""
    if evidence.digest_a == evidence.digest_b:
        return False
    if not 0 <= evidence.signer < validators.n:
        return False
    verifier = verifier or Verifier(validators)
    messages = [
        vote_message(chain_id, evidence.kind, evidence.view, evidence.seq, digest)
        for digest in (evidence.digest_a, evidence.digest_b)
    ]
    return verifier.verify_vote(
        evidence.signer, messages[0], evidence.signature_a
    ) and verifier.verify_vote(evidence.signer, messages[1], evidence.signature_b)
