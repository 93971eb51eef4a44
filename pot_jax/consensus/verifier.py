"""Signature checks for replicas: batched, cached, and counted.

With real BLS a single Verify costs milliseconds, so all-to-all PBFT, where
every replica checks every vote, would spend most of its time in pairings.
Two remedies:

* **Batching.** The votes of one phase sign the *same* vote message, so a
  quorum of them is checked with one pairing check over a random linear
  combination (``bls.batch_verify_points``): fresh 64-bit scalars r_i per
  check, sum r_i sig_i against sum r_i pk_i. A plain sum would not do: two
  colluders sending sig_5 + X and sig_6 - X pass it with two invalid votes.
  A batch that fails is halved and each half checked with fresh scalars, down
  to single votes, so k bad votes among n cost O(k log n) checks.
* **Caching.** Results are memoised on (signer, message, signature) and
  (message, QC signature, signer bitmap), and an entry is written only after
  a check that decides it: True after a passing batch or single check, False
  after a failing single check or an undecodable signature. Every entry is
  therefore what a sound check returns, except with probability at most
  1/(2**64 - 1) per passing batch check, so a memo shared between the
  replicas of one simulation (``Verifier.shared``) changes wall time only,
  never an outcome; proofs/qc-unforgeability.md ("Batched and cached vote
  checks") gives the argument and names the tests that check it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from pot_jax.crypto import bls
from pot_jax.crypto.errors import CryptoError, DecodeError
from pot_jax.crypto.quorum import QuorumCertificate, ValidatorSet

__all__ = ["Verifier", "VerifierStats"]

# (signer, signature bytes, decoded signature) for one vote still to decide.
_Pending = tuple[int, bytes, bls.SignaturePoint]


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

    def _well_formed(self, signer: int, signature: bytes) -> bool:
        return 0 <= signer < self.validators.n and len(signature) == bls.SIGNATURE_SIZE

    def _check_one(self, signer: int, message: bytes, signature: bytes) -> bool:
        self.stats.single_checks += 1
        return bls.fast_aggregate_verify_points([self._points()[signer]], message, signature)

    def verify_vote(self, signer: int, message: bytes, signature: bytes) -> bool:
        """True iff ``signature`` is validator ``signer``'s signature on ``message``."""
        if not self._well_formed(signer, signature):
            return False
        key = ("v", signer, message, signature)
        ok = self.memo.get(key)
        if ok is None:
            ok = self.memo[key] = self._check_one(signer, message, signature)
        return ok

    def verify_votes(self, message: bytes, votes: Mapping[int, bytes]) -> dict[int, bool]:
        """Each signer's vote on one message checked: a random-linear-combination batch
        check, bisected on failure. A vote counts as valid only once a check proves it."""
        result: dict[int, bool] = {}
        pending: list[_Pending] = []
        for signer, signature in votes.items():
            key = ("v", signer, message, signature)
            cached = self.memo.get(key)
            if cached is not None:
                result[signer] = cached
            elif not self._well_formed(signer, signature):
                result[signer] = False
            else:
                try:
                    pending.append((signer, signature, bls.decode_signature(signature)))
                except DecodeError:
                    result[signer] = self.memo[key] = False
        if pending:
            self._settle(message, pending, result)
        return result

    def _settle(
        self,
        message: bytes,
        batch: list[_Pending],
        result: dict[int, bool],
        *,
        known_bad: bool = False,
    ) -> bool:
        """Decide every vote of ``batch`` into ``result`` and the memo; True iff all are valid.

        ``known_bad``: the parent batch failed and this half's sibling passed, so
        this half holds a bad vote and its own batch check is skipped (a lone
        vote is still checked: only a check writes a result).
        """
        if len(batch) == 1 or not known_bad:
            ok = self._batch_holds(message, batch)
            if ok or len(batch) == 1:
                for signer, signature, _ in batch:
                    result[signer] = self.memo[("v", signer, message, signature)] = ok
                return ok
        half = len(batch) // 2
        first = self._settle(message, batch[:half], result)
        second = self._settle(message, batch[half:], result, known_bad=first)
        return first and second

    def _batch_holds(self, message: bytes, batch: list[_Pending]) -> bool:
        if len(batch) == 1:
            self.stats.single_checks += 1
        else:
            self.stats.batch_checks += 1
        points = self._points()
        ok = bls.batch_verify_points(
            [points[signer] for signer, _, _ in batch], message, [p for _, _, p in batch]
        )
        if not ok and len(batch) > 1:
            self.stats.batch_failures += 1
        return ok

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
