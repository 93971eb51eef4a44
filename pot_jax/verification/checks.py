"""Verdicts, the cheap checks every gradient gets, and recomputation.

The building blocks of every verification scheme. ``cheap_checks`` costs a
signature verification and a hash per worker and runs on every gradient;
``recheck`` adds one canonical recomputation and, on a mismatch, a fraud
proof; ``check_submissions`` runs both over a round for a chosen set of
workers. None of them raises on anything a worker sent: every problem
becomes a rejected ``Verdict`` whose reason names the worker and what was
wrong.
"""

from __future__ import annotations

import dataclasses
import enum
import hmac
import operator
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Any

import jax
import numpy as np

from pot_jax.crypto.worker_signatures import WorkerSignatureScheme, worker_message
from pot_jax.learning.encoding import DIGEST_SIZE, flat_digest, flat_row_bytes
from pot_jax.verification.context import RoundContext, Submission, batch_digest
from pot_jax.verification.fraud_proof import MODES, FraudProof, compare_gradients, l2_norm

__all__ = [
    "Category",
    "Verdict",
    "cheap_checks",
    "check_submissions",
    "combine_verdicts",
    "recheck",
]


class Category(enum.Enum):
    """Why a gradient was rejected: one enum for verdicts, records, summaries and the audit.

    The value is the name written in round records, ``summary.json`` and
    ``metrics.jsonl``; the free-text reason beside it is detail for people.
    """

    NO_SUBMISSION = "no_submission"  # nothing arrived before the validator reported
    MALFORMED = "malformed"  # wrong types, slot, index, commitment size, dtype or shape
    UNREGISTERED_KEY = "unregistered_key"  # signed under a key the genesis does not register
    BAD_SIGNATURE = "bad_signature"
    COMMITMENT_MISMATCH = "commitment_mismatch"  # the gradient does not hash to what was signed
    NON_FINITE = "non_finite"
    NORM_BOUND = "norm_bound"
    WRONG_GRADIENT = "wrong_gradient"  # recomputation differs: a fraud proof exists
    SLASHED = "slashed"  # caught by a fraud proof in an earlier round, excluded for good
    OTHER = "other"  # a custom scheme rejected it without naming a category

    @classmethod
    def parse(cls, value: str) -> Category:
        try:
            return cls(value)
        except ValueError:
            names = ", ".join(c.value for c in cls)
            raise ValueError(f"rejection category {value!r}: expected one of {names}") from None


@dataclasses.dataclass(frozen=True)
class Verdict:
    """A validator's decision on one worker's gradient.

    Attributes:
      worker: the worker (``-1`` only for an object that is not a
        ``Submission`` checked without naming its slot).
      accepted: whether the gradient may be aggregated.
      reason: starts with ``"worker <i>: "`` and says what passed or what was wrong.
      fraud_proof: set when recomputation showed the signed gradient is wrong.
      recomputed: whether the gradient was recomputed.
      validator: the validator that decided, when known.
      category: why it was rejected (None when accepted); a rejection built
        without one counts as ``Category.OTHER`` (see ``rejection``).
    """

    worker: int
    accepted: bool
    reason: str
    fraud_proof: FraudProof | None = None
    recomputed: bool = False
    validator: int | None = None
    category: Category | None = None

    @property
    def rejection(self) -> Category | None:
        """The rejection category; None for an accepted gradient."""
        if self.accepted:
            return None
        return self.category if self.category is not None else Category.OTHER


def _describe(value: Any) -> str:
    if value is None:
        return "None"
    name = type(value).__name__
    article = "an" if name[:1].lower() in "aeiou" else "a"
    if isinstance(value, np.ndarray | jax.Array):
        return f"{article} {name} of dtype {value.dtype} and shape {tuple(value.shape)}"
    return f"{article} {name}"


def _as_worker(value: Any) -> int | None:
    if isinstance(value, bool | np.bool_):
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None


def _as_array(value: Any) -> np.ndarray | None:
    if isinstance(value, np.ndarray):
        return value
    if isinstance(value, jax.Array):
        return np.asarray(value)
    return None


def cheap_checks(
    ctx: RoundContext,
    submission: Submission,
    *,
    signature_scheme: WorkerSignatureScheme | None = None,
    norm_bound: float | None = None,
    worker: int | None = None,
    validator: int | None = None,
) -> Verdict | None:
    """The checks every gradient gets; None if it passes them all, else the rejection.

    In order: the submission's fields have the right types; the public key is
    the worker's registered one (when ``ctx.worker_public_keys`` is set); the
    signature verifies over ``worker_message(chain_id, round, worker,
    commitment)``; the gradient is a float32 array of shape (P,); it hashes
    to the commitment (``flat_digest(header, gradient)``); it is finite; its
    L2 norm is at most the bound. The reason names the first failure.

    Args:
      ctx: the round's public inputs.
      submission: what the worker sent (any field may hold anything).
      signature_scheme: overrides ``ctx.signature_scheme``.
      norm_bound: overrides ``ctx.norm_bound``.
      worker: the slot the submission arrived under; a submission claiming
        another worker is rejected. Default: the worker it claims.
      validator: recorded in the verdict.

    Returns:
      None, or a rejected ``Verdict`` with the reason. Never raises on bad input.
    """
    scheme = ctx.signature_scheme if signature_scheme is None else signature_scheme
    bound = ctx.norm_bound if norm_bound is None else norm_bound
    claimed = _as_worker(getattr(submission, "worker", None))
    who = worker if worker is not None else (claimed if claimed is not None else -1)

    def reject(reason: str, category: Category = Category.MALFORMED) -> Verdict:
        return Verdict(
            who, False, f"worker {who}: {reason}", validator=validator, category=category
        )

    if not isinstance(submission, Submission):
        return reject(f"sent {_describe(submission)}, expected a Submission")
    if claimed is None:
        return reject(f"submission names worker {submission.worker!r}, expected an int")
    if worker is not None and claimed != worker:
        return reject(f"submission arrived as worker {worker} but claims worker {claimed}")
    if not 0 <= claimed < ctx.n_workers:
        return reject(f"no such worker: expected an index in [0, {ctx.n_workers})")
    fields = {}
    for name in ("commitment", "signature", "public_key"):
        value = getattr(submission, name)
        if not isinstance(value, bytes | bytearray | memoryview):
            return reject(f"{name.replace('_', ' ')} is {_describe(value)}, expected bytes")
        fields[name] = bytes(value)
    commitment = fields["commitment"]
    if len(commitment) != DIGEST_SIZE:
        return reject(f"commitment has {len(commitment)} bytes, expected {DIGEST_SIZE}")
    keys = ctx.worker_public_keys
    if keys is not None and not hmac.compare_digest(fields["public_key"], bytes(keys[claimed])):
        return reject(
            f"signed under a key that is not worker {claimed}'s registered key",
            Category.UNREGISTERED_KEY,
        )
    message = worker_message(ctx.chain_id, ctx.round, claimed, commitment)
    try:
        signed = bool(scheme.verify(fields["public_key"], message, fields["signature"]))
    except (TypeError, ValueError, OverflowError):
        signed = False
    if not signed:
        return reject(
            f"{scheme.name} signature does not verify over (chain id, round {ctx.round}, "
            f"worker {claimed}, commitment)",
            Category.BAD_SIGNATURE,
        )
    P = ctx.num_params
    gradient = _as_array(submission.gradient)
    if gradient is None:
        return reject(
            f"gradient is {_describe(submission.gradient)}, model expects a float32 array "
            f"of shape ({P},)"
        )
    if gradient.dtype.kind != "f" or gradient.dtype.itemsize != 4:
        return reject(f"gradient has dtype {gradient.dtype}, model expects float32")
    if gradient.shape != (P,):
        return reject(f"gradient has shape {gradient.shape}, model expects ({P},)")
    digest = flat_digest(ctx.learner.header, gradient, hash_name=ctx.hash_name)
    if not hmac.compare_digest(digest, commitment):
        return reject(
            f"gradient does not hash to its signed commitment ({ctx.hash_name})",
            Category.COMMITMENT_MISMATCH,
        )
    finite = np.isfinite(gradient)
    if not finite.all():
        bad = int(np.count_nonzero(~finite))
        return reject(
            f"gradient holds {bad} non-finite entries (NaN or Inf), expected none",
            Category.NON_FINITE,
        )
    norm = l2_norm(gradient)
    if not norm <= bound:
        return reject(
            f"gradient norm {norm:.4g} exceeds the bound {bound:.4g}", Category.NORM_BOUND
        )
    return None


def _check_mode(mode: str, threshold: float) -> None:
    if mode not in MODES:
        raise ValueError(f"mode = {mode!r}: expected one of {MODES}")
    if mode == "tolerance" and not (isinstance(threshold, int | float) and threshold > 0):
        raise ValueError(f"threshold = {threshold!r}: tolerance mode expects a number > 0")


def recheck(
    ctx: RoundContext,
    submission: Submission,
    *,
    mode: str = "bitwise",
    threshold: float = 0.0,
    worker: int | None = None,
    validator: int | None = None,
) -> Verdict:
    """Cheap checks, then one canonical recomputation and comparison.

    A gradient that fails the cheap checks is rejected without recomputation.
    One that passes is recomputed with ``ctx.learner.worker_gradient`` on the
    worker's public batch and compared (``compare_gradients``); a mismatch is
    rejected with a ``FraudProof``.
    """
    _check_mode(mode, threshold)
    rejection = cheap_checks(ctx, submission, worker=worker, validator=validator)
    if rejection is not None:
        return rejection
    w = operator.index(submission.worker)
    gradient = _as_array(submission.gradient)
    x_B, y_B = ctx.batch_of(w)
    expected = np.asarray(ctx.learner.worker_gradient(ctx.params, x_B, y_B))
    matches, detail = compare_gradients(gradient, expected, mode=mode, threshold=threshold)
    if matches:
        return Verdict(w, True, f"worker {w}: {detail}", recomputed=True, validator=validator)
    proof = FraudProof(
        chain_id=ctx.chain_id,
        round=ctx.round,
        worker=w,
        commitment=bytes(submission.commitment),
        signature=bytes(submission.signature),
        public_key=bytes(submission.public_key),
        gradient=flat_row_bytes(gradient).tobytes(),
        hash_name=ctx.hash_name,
        params_digest=ctx.params_digest,
        batch_digest=batch_digest(x_B, y_B),
        mode=mode,
        threshold=float(threshold) if mode == "tolerance" else 0.0,
    )
    return Verdict(
        w,
        False,
        f"worker {w}: gradient is wrong: {detail}",
        fraud_proof=proof,
        recomputed=True,
        validator=validator,
        category=Category.WRONG_GRADIENT,
    )


def check_submissions(
    ctx: RoundContext,
    submissions: Mapping[int, Submission],
    *,
    recompute: Collection[int] = (),
    mode: str = "bitwise",
    threshold: float = 0.0,
    validator: int | None = None,
) -> list[Verdict]:
    """One verdict per worker ``0..W-1``: cheap checks for all, recomputation for ``recompute``.

    A worker with no entry in ``submissions`` is rejected ("sent no
    gradient"); entries under other keys are not this round's workers and are
    ignored.
    """
    _check_mode(mode, threshold)
    chosen = set(recompute)
    verdicts = []
    for w in range(ctx.n_workers):
        submission = submissions.get(w)
        if submission is None:
            verdicts.append(
                Verdict(
                    w,
                    False,
                    f"worker {w}: sent no gradient this round",
                    validator=validator,
                    category=Category.NO_SUBMISSION,
                )
            )
        elif w in chosen:
            verdicts.append(
                recheck(
                    ctx, submission, mode=mode, threshold=threshold, worker=w, validator=validator
                )
            )
        else:
            rejection = cheap_checks(ctx, submission, worker=w, validator=validator)
            verdicts.append(
                rejection
                or Verdict(w, True, f"worker {w}: passed the cheap checks", validator=validator)
            )
    return verdicts


def combine_verdicts(
    verdict_lists: Iterable[Sequence[Verdict]],
    *,
    verify_proof: Callable[[FraudProof], bool] | None = None,
) -> list[Verdict]:
    """Fold several validators' verdicts into one per worker, sorted by worker.

    A rejection carrying a fraud proof wins (only if ``verify_proof`` accepts
    the proof, when given: pass it for proofs from other validators, which
    may be Byzantine). Otherwise the first list's verdict is kept (put your
    own first): the cheap checks are a deterministic function of the round,
    so honest validators agree on them. Among acceptances, one that
    recomputed is preferred, so the result records that the gradient was
    checked.
    """
    by_worker: dict[int, list[Verdict]] = {}
    for verdicts in verdict_lists:
        for verdict in verdicts:
            by_worker.setdefault(verdict.worker, []).append(verdict)
    combined = []
    for w in sorted(by_worker):
        candidates = by_worker[w]
        proven = [
            v
            for v in candidates
            if v.fraud_proof is not None and (verify_proof is None or verify_proof(v.fraud_proof))
        ]
        if proven:
            combined.append(proven[0])
            continue
        first = next((v for v in candidates if v.fraud_proof is None), None)
        if first is None:
            # Only invalid proofs: the gradient passed the proof-makers' cheap checks.
            combined.append(
                Verdict(w, True, f"worker {w}: passed the cheap checks; no valid fraud proof")
            )
            continue
        if first.accepted:
            first = next((v for v in candidates if v.accepted and v.recomputed), first)
        combined.append(first)
    return combined
