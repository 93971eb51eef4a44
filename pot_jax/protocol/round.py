"""One round of Proof of Training as a pure function: ``transition(rules, state, inputs)``.

The aggregation server calls it to build its proposal, every validator calls
it to re-derive a proposal before voting for it, and the auditor calls it to
re-execute a committed round. There is no other copy of what a round does.

* ``RoundRules``: what the signed genesis fixes for every round (chain,
  keys, batch size, verification scheme, learner, aggregation rule, data).
* ``RoundState``: what every participant holds before round r (model,
  optimizer state, ledger, workers banned by fraud proofs, last QC's
  signers, equivocations already punished).
* ``RoundInputs`` (``protocol.messages``): the validators' signed reports,
  at least a quorum, and equivocation evidence, chosen by the proposer.

``judge`` decides, from the inputs alone, which workers are accepted (with
which commitment), which are rejected (with a ``Category``), which fraud
proofs hold, and which validators are slashed for what (``Fault``):

* every report must be for this chain, genesis, round and input model and
  signed by its validator's registered report key; the inputs must hold a
  quorum (2f+1) of them; any violation makes the inputs invalid
  (``InputsError``: no honest validator votes for such a proposal);
* a validator whose selection does not verify (``verify_selection``: not
  what its VRF gives) is slashed for ``changed_sample``; one that did not
  recompute a selected worker whose gradient passed the cheap checks, for
  ``skipped_sample`` (recomputing more than its sample is its own cost, and
  a wrong proof it makes from it is slashed as ``false_proof``);
* every cited fraud proof is verified in full (one recomputation); a false
  one gets its prover slashed (``false_proof``); a valid one rejects the
  worker for good, and every validator whose report says it recomputed that
  very commitment and found it correct is slashed (``vouched_wrong``);
* a worker with no valid proof is accepted iff at least f+1 reports accept
  the same commitment (so at least one honest validator checked it; an
  honest worker whose submission reached every validator is always
  accepted); otherwise it is rejected with the category most reports give;
* verified equivocation evidence slashes its signer once per (vote kind,
  view, sequence).

``transition`` then aggregates the accepted gradients (each must hash to its
accepted commitment), applies the optimizer update, replays the ledger and
returns the record. ``memo`` caches the pure, expensive checks (report
signatures, VRF selections, fraud proofs) by the bytes they depend on, so
validators in one simulation process do not repeat each other's pairings.
"""

from __future__ import annotations

import enum
import hashlib
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import jax.numpy as jnp
import numpy as np

from pot_jax.consensus.evidence import verify_evidence
from pot_jax.crypto.quorum import ValidatorSet
from pot_jax.crypto.worker_signatures import WorkerSignatureScheme, worker_signature_scheme
from pot_jax.learning.encoding import flat_digest, pytree_digest
from pot_jax.protocol.ledger import (
    Contribution,
    FraudProofRef,
    Ledger,
    LedgerEntry,
    LedgerError,
    RoundRewards,
    ValidatorFault,
    entries_digest,
)
from pot_jax.protocol.messages import RoundInputs, evidence_key
from pot_jax.protocol.records import Accepted, Rejected, RoundRecord, Slashed
from pot_jax.verification import RoundContext, Selection
from pot_jax.verification.checks import Category
from pot_jax.verification.fraud_proof import FraudProof, check_fraud_proof

__all__ = [
    "Fault",
    "InputsError",
    "Judgement",
    "Outcome",
    "RoundRules",
    "RoundState",
    "advance",
    "cited_proofs",
    "finish",
    "genesis_state",
    "judge",
    "new_model",
    "transition",
]


class Fault(enum.Enum):
    """Why a validator is slashed; each is shown by messages it signed."""

    CHANGED_SAMPLE = "changed_sample"  # its selection is not what its VRF gives
    SKIPPED_SAMPLE = "skipped_sample"  # a selected, well-formed gradient not recomputed
    FALSE_PROOF = "false_proof"  # cited a fraud proof that does not verify
    VOUCHED_WRONG = "vouched_wrong"  # reported recomputed-and-correct what was proven wrong
    EQUIVOCATION = "equivocation"  # signed two different digests for one vote


class InputsError(ValueError):
    """Round inputs no honest validator may accept; the text says which rule they break."""


@dataclass(frozen=True, eq=False)
class RoundRules:
    """What the signed genesis fixes for every round (see the module docstring)."""

    chain_id: bytes
    genesis: bytes
    n_workers: int
    batch_size: int
    validator_set: ValidatorSet
    report_keys: tuple[bytes, ...]
    worker_keys: tuple[bytes, ...]
    scheme: Any  # VerificationScheme: verify_selection, mode, threshold, aggregation
    learner: Any
    batch_of: Callable[[int, int], tuple[np.ndarray, np.ndarray]]  # (round, worker) -> batch
    signatures: WorkerSignatureScheme = field(default_factory=worker_signature_scheme)
    report_scheme: WorkerSignatureScheme = field(
        default_factory=lambda: worker_signature_scheme("ed25519")
    )

    def __post_init__(self):
        import jax

        object.__setattr__(self, "_aggregate", jax.jit(self.scheme.aggregation.aggregate))

    @property
    def n_validators(self) -> int:
        return self.validator_set.n

    @property
    def f(self) -> int:
        return (self.n_validators - 1) // 3

    @property
    def quorum(self) -> int:
        return 2 * self.f + 1

    def context(self, round_: int, params) -> RoundContext:
        return RoundContext(
            chain_id=self.chain_id,
            round=round_,
            params=params,
            learner=self.learner,
            batch_of=lambda w: self.batch_of(round_, w),
            n_workers=self.n_workers,
            signature_scheme=self.signatures,
            worker_public_keys=self.worker_keys,
        )

    def aggregate(self, rows, mask):
        return self._aggregate(rows, mask)


@dataclass(frozen=True, eq=False)
class RoundState:
    """What every participant holds before round ``round``."""

    round: int
    params: Any
    opt_state: Any
    params_hash: bytes
    ledger: Ledger
    banned: Mapping[int, int] = field(
        default_factory=lambda: MappingProxyType({})
    )  # worker -> round
    previous_signers: tuple[int, ...] = ()
    punished: frozenset = frozenset()  # evidence keys already slashed


def genesis_state(params, opt_state, params_hash: bytes, ledger: Ledger) -> RoundState:
    return RoundState(0, params, opt_state, params_hash, ledger)


@dataclass(frozen=True)
class Judgement:
    """What ``judge`` decided (see the module docstring)."""

    accepted: tuple[Accepted, ...]
    rejected: tuple[Rejected, ...]
    slashed: tuple[Slashed, ...]
    cited: tuple[tuple[int, bytes], ...]  # (prover, proof digest): every proof the reports cite
    proven: Mapping[int, bytes]  # worker -> digest of the proof its rejection cites
    rewards: RoundRewards
    punished: frozenset  # evidence keys slashed this round


@dataclass(frozen=True, eq=False)
class Outcome:
    record: RoundRecord
    entries: tuple[LedgerEntry, ...]
    ledger: Ledger
    params: Any
    opt_state: Any
    judgement: Judgement


def _cached(memo: dict | None, key, compute):
    if memo is None:
        return compute()
    if key not in memo:
        memo[key] = compute()
    return memo[key]


def judge(
    rules: RoundRules,
    state: RoundState,
    inputs: RoundInputs,
    proofs: Mapping[bytes, bytes],
    *,
    memo: dict | None = None,
) -> Judgement:
    """Decide the round from its inputs; ``proofs`` maps each cited digest to the proof bytes.

    Raises ``InputsError`` for inputs no honest validator may accept.
    """
    r, n, W = state.round, rules.n_validators, rules.n_workers
    validators = [rep.validator for rep in inputs.reports]
    if validators != sorted(set(validators)):
        raise InputsError(f"round {r}: the reports must be one per validator, in order")
    if len(inputs.reports) < rules.quorum:
        raise InputsError(
            f"round {r}: {len(inputs.reports)} reports, a quorum is {rules.quorum} of {n}"
        )
    ctx = rules.context(r, state.params)
    faults: set[tuple[int, Fault]] = set()
    selections = _selections_hold(rules, ctx, state, inputs, memo)
    for rep in inputs.reports:
        v = rep.validator
        if (rep.chain_id, rep.genesis, rep.round, rep.params_hash) != (
            rules.chain_id,
            rules.genesis,
            r,
            state.params_hash,
        ):
            raise InputsError(f"round {r}: validator {v}'s report is for another round or model")
        if v >= n:
            raise InputsError(f"round {r}: a report names validator {v}, not registered")
        if len(rep.checks) != W:
            raise InputsError(f"round {r}: validator {v}'s report has {len(rep.checks)} checks")
        message = rep.signing_message()
        signed = _cached(
            memo,
            ("report", rules.report_keys[v], message, rep.signature),
            lambda v=v, m=message, sig=rep.signature: rules.report_scheme.verify(
                rules.report_keys[v], m, sig
            ),
        )
        if not signed:
            raise InputsError(f"round {r}: validator {v}'s report is not signed by its report key")
        for c in rep.checks:
            if c.proof and c.proof not in proofs:
                raise InputsError(
                    f"round {r}: validator {v} cites a fraud proof against worker {c.worker} "
                    "that the proposal does not carry"
                )
        faults.update((v, fault) for fault in _sample_faults(state, rep, selections[rep.validator]))

    punished = set()
    for ev in inputs.evidence:
        key = evidence_key(ev)
        if key in state.punished:
            raise InputsError(f"round {r}: equivocation {key} was already punished")
        ok = _cached(
            memo,
            ("evidence", key, ev.digest_a, ev.signature_a, ev.digest_b, ev.signature_b),
            lambda ev=ev: verify_evidence(rules.chain_id, rules.validator_set, ev),
        )
        if not ok:
            raise InputsError(f"round {r}: equivocation evidence against {ev.signer} is false")
        faults.add((ev.signer, Fault.EQUIVOCATION))
        punished.add(key)

    # Fraud proofs: each cited proof verified once; provers per worker.
    cited, provers = cited_proofs(inputs), {}
    for v, worker, digest in _citations(inputs):
        valid = worker not in state.banned and _cached(
            memo,
            ("proof", state.params_hash, worker, digest),
            lambda w=worker, d=digest: _proof_holds(rules, ctx, proofs[d], w),
        )
        if valid:
            provers.setdefault(worker, {})[v] = digest
        else:
            faults.add((v, Fault.FALSE_PROOF))

    accepted, rejected, proven = [], [], {}
    for w in range(W):
        if w in state.banned:
            rejected.append(
                Rejected(w, Category.SLASHED.value, f"caught in round {state.banned[w]}")
            )
            continue
        if w in provers:
            first = min(provers[w])
            digest = provers[w][first]
            proven[w] = digest
            wrong = FraudProof.decode(proofs[digest]).commitment
            for rep in inputs.reports:
                c = rep.checks[w]
                if c.recomputed and c.accepted and c.commitment == wrong:
                    faults.add((rep.validator, Fault.VOUCHED_WRONG))
            rejected.append(
                Rejected(
                    w,
                    Category.WRONG_GRADIENT.value,
                    "recomputation differs from the signed gradient (fraud proof)",
                    digest,
                )
            )
            continue
        votes = Counter(
            rep.checks[w].commitment for rep in inputs.reports if rep.checks[w].accepted
        )
        best = max(votes.items(), key=lambda kv: (kv[1], kv[0]), default=(b"", 0))
        if best[1] >= rules.f + 1:
            accepted.append(Accepted(w, best[0], rules.batch_size))
            continue
        categories = Counter(
            rep.checks[w].category for rep in inputs.reports if not rep.checks[w].accepted
        )
        order = [c.value for c in Category]
        if categories:
            category = min(categories, key=lambda c: (-categories[c], order.index(c)))
        else:
            category = Category.OTHER.value
        rejected.append(
            Rejected(
                w,
                category,
                f"{categories.get(category, 0)} of {len(inputs.reports)} reports; "
                f"{best[1]} accepted one commitment, {rules.f + 1} needed",
            )
        )

    slashed = tuple(Slashed(v, fault.value) for v, fault in sorted(faults, key=_fault_order))
    rewards = RoundRewards(
        r,
        tuple(Contribution(a.worker, a.examples) for a in accepted),
        state.previous_signers,
        tuple(FraudProofRef(v, w) for w in sorted(provers) for v in sorted(provers[w])),
        tuple(ValidatorFault(s.validator, s.fault) for s in slashed),
    )
    return Judgement(
        tuple(accepted),
        tuple(rejected),
        slashed,
        tuple(cited),
        MappingProxyType(proven),
        rewards,
        frozenset(punished),
    )


def _citations(inputs: RoundInputs):
    """``(validator, worker, digest)`` for every proof a report cites, each pair once."""
    seen = set()
    for rep in inputs.reports:
        for c in rep.checks:
            if c.proof and (rep.validator, c.proof) not in seen:
                seen.add((rep.validator, c.proof))
                yield rep.validator, c.worker, c.proof


def cited_proofs(inputs: RoundInputs) -> tuple[tuple[int, bytes], ...]:
    """``(validator, proof digest)`` of every proof the inputs cite, in the transcript's order."""
    return tuple((v, d) for v, _, d in _citations(inputs))


def _fault_order(item):
    v, fault = item
    return v, list(Fault).index(fault)


def _selections_hold(rules, ctx, state, inputs, memo) -> dict[int, bool]:
    """Whether each report's selection is what its validator's VRF gives (one batch)."""
    key = ("selections", rules.chain_id, state.round) + tuple(
        (rep.validator, rep.selection, rep.vrf_output, rep.vrf_proof) for rep in inputs.reports
    )

    def compute():
        items = [
            (
                rep.validator,
                rules.n_validators,
                rules.validator_set.public_keys[rep.validator],
                Selection(rep.validator, rep.selection, rep.vrf_output, rep.vrf_proof),
            )
            for rep in inputs.reports
            if rep.validator < rules.n_validators
        ]
        answers = rules.scheme.check_selections(ctx, items)
        return {item[0]: bool(ok) for item, ok in zip(items, answers, strict=True)}

    return _cached(memo, key, compute)


def _sample_faults(state, rep, honest_selection: bool) -> list[Fault]:
    """What a report shows about its validator's sample (see the module docstring)."""
    out = []
    chosen = set(rep.selection)
    if not honest_selection:
        out.append(Fault.CHANGED_SAMPLE)
    eligible = ("", Category.WRONG_GRADIENT.value)
    for w in sorted(chosen):
        if w >= len(rep.checks) or w in state.banned:
            continue
        c = rep.checks[w]
        if c.category in eligible and not c.recomputed:
            out.append(Fault.SKIPPED_SAMPLE)
            break
    return out


def _proof_holds(rules: RoundRules, ctx: RoundContext, proof_bytes: bytes, worker: int) -> bool:
    try:
        proof = FraudProof.decode(proof_bytes)
    except ValueError:
        return False
    if proof.worker != worker:
        return False
    ok, _ = check_fraud_proof(proof, ctx, mode=rules.scheme.mode, threshold=rules.scheme.threshold)
    return ok


def new_model(
    rules: RoundRules,
    state: RoundState,
    accepted,
    gradients: Mapping[int, Any],
    known: Mapping[int, bytes] | None = None,
):
    """Aggregate the accepted gradients (each must hash to its commitment) and update.

    ``known`` maps a worker to the digest its gradient was already hashed to
    (by the caller's cheap checks of the very same array); it spares the hash.
    """
    if not accepted:
        return state.params, state.opt_state  # nothing to aggregate: the model stays
    P = rules.learner.num_params
    rows = np.zeros((rules.n_workers, P), np.float32)
    mask = np.zeros((rules.n_workers,), bool)
    for a in accepted:
        g = gradients.get(a.worker)
        if g is None:
            raise InputsError(f"round {state.round}: no gradient for accepted worker {a.worker}")
        g = np.asarray(g)
        digest = (known or {}).get(a.worker)
        if g.dtype == np.float32 and g.shape == (P,) and digest is None:
            digest = flat_digest(rules.learner.header, g)
        if g.dtype != np.float32 or g.shape != (P,) or digest != a.commitment:
            raise InputsError(
                f"round {state.round}: worker {a.worker}'s gradient does not hash to the "
                "accepted commitment"
            )
        rows[a.worker] = g
        mask[a.worker] = True
    agg = rules.aggregate(jnp.asarray(rows), jnp.asarray(mask))
    return rules.learner.apply_update(state.params, state.opt_state, agg)


def transition(
    rules: RoundRules,
    state: RoundState,
    inputs: RoundInputs,
    proofs: Mapping[bytes, bytes],
    gradients: Mapping[int, Any],
    *,
    memo: dict | None = None,
    judgement: Judgement | None = None,
    known: Mapping[int, bytes] | None = None,
) -> Outcome:
    """The round: judge the inputs, aggregate, update, replay the ledger, build the record."""
    j = judge(rules, state, inputs, proofs, memo=memo) if judgement is None else judgement
    params, opt_state = new_model(rules, state, j.accepted, gradients, known)
    return finish(rules, state, inputs, j, params, opt_state)


def finish(rules, state, inputs, j: Judgement, params, opt_state, *, new_params_hash=None):
    """The record and ledger of a judged round whose output model is ``params``.

    The auditor, when it does not re-execute, passes the record's own
    ``new_params_hash`` (and no params): everything else is still derived.
    """
    try:
        ledger = state.ledger.apply_round(j.rewards)
    except LedgerError as err:
        raise InputsError(f"round {state.round}: the ledger rejects the round: {err}") from None
    entries = ledger.round_entries(state.round)
    if new_params_hash is None:
        new_params_hash = pytree_digest(params, rules.learner.spec)
    record = RoundRecord(
        chain_id=rules.chain_id,
        genesis=rules.genesis,
        round=state.round,
        params_hash=state.params_hash,
        inputs_digest=inputs.digest(),
        accepted=j.accepted,
        rejected=j.rejected,
        slashed=j.slashed,
        aggregation=rules.scheme.aggregation.label,
        new_params_hash=new_params_hash,
        ledger_digest=entries_digest(entries),
    )
    return Outcome(record, entries, ledger, params, opt_state, j)


def advance(state: RoundState, outcome: Outcome, qc_signers: tuple[int, ...]) -> RoundState:
    """The state after ``outcome`` committed with a QC signed by ``qc_signers``."""
    banned = dict(state.banned)
    for w in outcome.judgement.proven:
        banned.setdefault(w, state.round)
    return RoundState(
        round=state.round + 1,
        params=outcome.params,
        opt_state=outcome.opt_state,
        params_hash=outcome.record.new_params_hash,
        ledger=outcome.ledger,
        banned=MappingProxyType(banned),
        previous_signers=tuple(qc_signers),
        punished=state.punished | outcome.judgement.punished,
    )


def proof_digest(proof_bytes: bytes) -> bytes:
    return hashlib.sha256(proof_bytes).digest()
