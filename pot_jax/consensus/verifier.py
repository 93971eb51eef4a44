"""Signature checks for replicas: batched, cached, and counted.

With real BLS a single Verify costs milliseconds, so all-to-all PBFT, where
every replica checks every vote, would spend most of its time in pairings.
Two remedies, both semantically transparent:

* **Batching.** The votes of one phase sign the *same* vote message, so a
  quorum of them is checked with one aggregate: sum the signatures, sum the
  (pre-decoded) keys, one pairing check. Only if that fails are the votes
  checked one by one to find the bad ones. The aggregate check accepts a
  set whose signatures sum correctly; that is exactly what a quorum
  certificate needs, and equivocation evidence is always checked per vote.
* **Caching.** Verification is deterministic, so results are memoised on
  (signer, message, signature) and (message, QC, quorum). A memo may be
  shared between replicas of one simulation (``shared_memo``); that changes
  wall time only, never an outcome.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from pot_jax.crypto import bls
from pot_jax.crypto.errors import CryptoError
from pot_jax.crypto.quorum import QuorumCertificate, ValidatorSet

__all__ = ["Verifier", "VerifierStats"]


@dataclass
class VerifierStats:
    """How much cryptography actually ran (cache hits do not count)."""

    single_checks: int = 0
    batch_checks: int = 0
    batch_failures: int = 0
    qc_checks: int = 0


@dataclass
class Verifier:
    """Checks votes and QCs against one validator set; see the module docstring."""

    validators: ValidatorSet
    memo: dict = field(default_factory=dict)
    stats: VerifierStats = field(default_factory=VerifierStats)

    @classmethod
    def shared(cls, validators: ValidatorSet, memo: dict) -> Verifier:
        """A verifier whose results cache is ``memo``, shared with other verifiers."""
        return cls(validators, memo)

    def _points(self):
        return self.validators.public_key_points()

    def _check_one(self, signer: int, message: bytes, signature: bytes) -> bool:
        self.stats.single_checks += 1
        return bls.fast_aggregate_verify_points([self._points()[signer]], message, signature)

    def verify_vote(self, signer: int, message: bytes, signature: bytes) -> bool:
        """True iff ``signature`` is validator ``signer``'s signature on ``message``."""
        if not 0 <= signer < self.validators.n or len(signature) != bls.SIGNATURE_SIZE:
            return False
        key = ("v", signer, message, signature)
        ok = self.memo.get(key)
        if ok is None:
            ok = self.memo[key] = self._check_one(signer, message, signature)
        return ok

    def verify_votes(self, message: bytes, votes: Mapping[int, bytes]) -> dict[int, bool]:
        """Check many signers' votes on one message: one aggregate check, then one by one."""
        result: dict[int, bool] = {}
        todo: dict[int, bytes] = {}
        for signer, signature in votes.items():
            cached = self.memo.get(("v", signer, message, signature))
            if cached is not None:
                result[signer] = cached
            elif not 0 <= signer < self.validators.n or len(signature) != bls.SIGNATURE_SIZE:
                result[signer] = False
            else:
                todo[signer] = signature
        if len(todo) > 1:
            self.stats.batch_checks += 1
            points = self._points()
            try:
                aggregate = bls.Aggregate(list(todo.values()))
                ok = bls.fast_aggregate_verify_points([points[i] for i in todo], message, aggregate)
            except CryptoError:
                ok = False
            if ok:
                for signer, signature in todo.items():
                    result[signer] = True
                    self.memo[("v", signer, message, signature)] = True
                return result
            self.stats.batch_failures += 1
        for signer, signature in todo.items():
            result[signer] = self.verify_vote(signer, message, signature)
        return result

    def verify_qc(self, message: bytes, qc: QuorumCertificate, quorum: int) -> bool:
        """True iff ``qc`` holds >= ``quorum`` distinct valid signers of ``message``."""
        n = self.validators.n
        if len(qc.signers) != (n + 7) // 8:
            return False
        if n % 8 and qc.signers[-1] >> (n % 8):
            return False
        indices = qc.signer_indices()
        if len(indices) < quorum:
            return False
        key = ("q", message, qc.signature, qc.signers)
        ok = self.memo.get(key)
        if ok is None:
            self.stats.qc_checks += 1
            points = self._points()
            try:
                ok = bls.fast_aggregate_verify_points(
                    [points[i] for i in indices], message, qc.signature
                )
            except CryptoError:
                ok = False
            self.memo[key] = ok
        return ok
