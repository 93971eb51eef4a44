"""Byzantine behaviours of a validator's Proof-of-Training role, selectable like worker attacks.

Each is registered as a validator strategy (``--validator-strategy NAME``,
``network.byzantine.BEHAVIOURS``) whose PBFT part is honest and whose
``role`` rewrites what the validator reports or what its aggregation server
proposes. Combine with consensus misbehaviour with ``+`` (for example
``censor:worker=3+double_voting``). What catches each one:

========================  ===============================================================
``skip_sample``           recomputes nothing, reports cheap checks only: ``skipped_sample``
``own_choice``            reports and recomputes workers of its own choosing instead of its
                          VRF sample: the selection does not verify, ``changed_sample``
``swap_sample``           reports its VRF sample but recomputes other workers instead:
                          ``skipped_sample``
``frame:worker=K``        cites a forged fraud proof against worker K (its real, correct
                          gradient): the proof fails, ``false_proof``; K stays accepted
``vouch``                 claims to have recomputed its sample without doing it: slashed
                          ``vouched_wrong`` when another validator proves one of them wrong
``vote_invalid``          its replica votes for any proposal, re-derived or not: alone it
                          cannot make a quorum (harmless while at most f are Byzantine)
``wrong_aggregate``       as primary, proposes a model update that is not the aggregate
``drop_accepted``         as primary, drops the lowest accepted worker
``include_rejected``      as primary, accepts a rejected, well-formed submission
``censor:worker=K``       as primary, leaves worker K out of every round it proposes
========================  ===============================================================

The four server faults are refused by every honest validator (the record
does not re-derive from its inputs), the request each honest validator
submitted stays pending, a view change follows and the next primary proposes
it. Equivocation (``double_voting``, ``equivocating_primary``) is caught by
the replicas' evidence and slashed through the next round's inputs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from pot_jax.learning.encoding import flat_row_bytes
from pot_jax.network.byzantine import Strategy, register_strategy
from pot_jax.protocol.ledger import Contribution
from pot_jax.protocol.messages import Check, encode_proposal
from pot_jax.protocol.records import Accepted, Rejected
from pot_jax.protocol.round import InputsError, finish, new_model
from pot_jax.verification import Selection, check_submissions
from pot_jax.verification.checks import Category
from pot_jax.verification.context import batch_digest
from pot_jax.verification.fraud_proof import FraudProof

__all__ = ["ROLE_BEHAVIOURS", "RoleBehaviour"]


class RoleBehaviour(NamedTuple):
    """Hooks into ``roles.Validator``; None leaves that part honest."""

    name: str
    check: Callable | None = None  # (validator, ctx, subs, selection) -> (selection, verdicts)
    forge: Callable | None = None  # (validator, ctx, subs, checks, proofs) -> (checks, proofs)
    propose: Callable | None = None  # (validator, inputs, proofs) -> value | None
    votes_anything: bool = False


def _scheme_mode(v):
    s = v.rules.scheme
    return {"mode": s.mode if s.mode != "none" else "bitwise", "threshold": s.threshold}


def skip_sample() -> RoleBehaviour:
    def check(v, ctx, subs, selection):
        return selection, check_submissions(ctx, subs, validator=v.index)

    return RoleBehaviour("skip_sample", check=check)


def _recompute_others(claim_them: bool):
    """Recompute the lowest-index workers outside the VRF sample (as many, at least one);
    report them as the sample (``claim_them``) or report the VRF sample anyway."""

    def check(v, ctx, subs, selection):
        k = max(1, len(selection.workers))
        chosen = tuple(w for w in range(ctx.n_workers) if w not in selection.workers)[:k]
        verdicts = check_submissions(
            ctx, subs, recompute=chosen, validator=v.index, **_scheme_mode(v)
        )
        if claim_them:
            selection = Selection(v.index, chosen, selection.vrf_output, selection.vrf_proof)
        return selection, verdicts

    return check


def own_choice() -> RoleBehaviour:
    """Recompute workers of its own choosing and claim them as its sample."""
    return RoleBehaviour("own_choice", check=_recompute_others(claim_them=True))


def swap_sample() -> RoleBehaviour:
    """Report the VRF sample honestly, but recompute workers outside it instead."""
    return RoleBehaviour("swap_sample", check=_recompute_others(claim_them=False))


def vouch() -> RoleBehaviour:
    """Lazy: reports its sample as recomputed and correct after the cheap checks only."""

    def check(v, ctx, subs, selection):
        verdicts = check_submissions(ctx, subs, validator=v.index)
        chosen = set(selection.workers)
        return selection, [
            dataclasses.replace(x, recomputed=True) if x.accepted and x.worker in chosen else x
            for x in verdicts
        ]

    return RoleBehaviour("vouch", check=check)


def frame(*, worker: int = 0) -> RoleBehaviour:
    """Cite a fraud proof against ``worker`` made from its real (correct) submission."""
    if isinstance(worker, bool) or not isinstance(worker, int) or worker < 0:
        raise ValueError(f"frame: worker = {worker!r}, expected a worker index >= 0")

    def forge(v, ctx, subs, checks, proofs):
        sub = subs.get(worker)
        if worker >= len(checks) or sub is None or not checks[worker].accepted:
            return checks, proofs
        x_B, y_B = ctx.batch_of(worker)
        proof = FraudProof(
            chain_id=ctx.chain_id,
            round=ctx.round,
            worker=worker,
            commitment=bytes(sub.commitment),
            signature=bytes(sub.signature),
            public_key=bytes(sub.public_key),
            gradient=flat_row_bytes(np.asarray(sub.gradient)).tobytes(),
            hash_name=ctx.hash_name,
            params_digest=ctx.params_digest,
            batch_digest=batch_digest(x_B, y_B),
            **_scheme_mode(v),
        )
        proof_bytes = proof.encode()
        digest = hashlib.sha256(proof_bytes).digest()
        old = checks[worker]
        checks = list(checks)
        checks[worker] = Check(
            worker, old.commitment, Category.WRONG_GRADIENT.value, old.recomputed, digest
        )
        return checks, [*proofs, proof_bytes]

    return RoleBehaviour("frame", forge=forge)


def vote_invalid() -> RoleBehaviour:
    return RoleBehaviour("vote_invalid", votes_anything=True)


def _faulty_server(name: str, rewrite) -> RoleBehaviour:
    """A server that derives the honest round, then proposes ``rewrite`` of it."""

    def propose(v, inputs, proofs):
        try:
            honest = v.derive(inputs, proofs)
        except InputsError:
            return None
        j = honest.judgement
        accepted, rejected, params, opt_state = rewrite(v, j, honest)
        taken = {a.worker for a in accepted}
        rewards = dataclasses.replace(
            j.rewards,
            accepted=tuple(Contribution(a.worker, a.examples) for a in accepted),
            fraud_proofs=tuple(p for p in j.rewards.fraud_proofs if p.worker not in taken),
        )
        j2 = dataclasses.replace(
            j,
            accepted=tuple(sorted(accepted, key=lambda a: a.worker)),
            rejected=tuple(sorted(rejected, key=lambda x: x.worker)),
            rewards=rewards,
        )
        if params is None:
            params, opt_state = new_model(v.rules, v.state, j2.accepted, v.gradients())
        outcome = finish(v.rules, v.state, inputs, j2, params, opt_state)
        return encode_proposal(outcome.record.encode(), inputs.encode())

    return RoleBehaviour(name, propose=propose, votes_anything=True)


def wrong_aggregate() -> RoleBehaviour:
    def rewrite(v, j, honest):
        # The update with the aggregate's sign flipped: a plausible model, not the round's.
        import jax

        flipped = jax.tree_util.tree_map(lambda p, q: 2 * p - q, v.state.params, honest.params)
        return list(j.accepted), list(j.rejected), flipped, honest.opt_state

    return _faulty_server("wrong_aggregate", rewrite)


def drop_accepted() -> RoleBehaviour:
    def rewrite(v, j, honest):
        if not j.accepted:
            return list(j.accepted), list(j.rejected), honest.params, honest.opt_state
        gone = j.accepted[0]
        dropped = Rejected(gone.worker, Category.OTHER.value, "left out by the proposer")
        return list(j.accepted[1:]), [*j.rejected, dropped], None, None

    return _faulty_server("drop_accepted", rewrite)


def include_rejected() -> RoleBehaviour:
    def rewrite(v, j, honest):
        subs = v.submissions
        for x in j.rejected:
            sub = subs.get(x.worker)
            g = getattr(sub, "gradient", None)
            if (
                x.category != Category.SLASHED.value
                and isinstance(g, np.ndarray)
                and g.dtype == np.float32
                and g.shape == (v.rules.learner.num_params,)
                and isinstance(sub.commitment, bytes)
                and len(sub.commitment) == 32
            ):
                accepted = [*j.accepted, Accepted(x.worker, sub.commitment, v.rules.batch_size)]
                rejected = [y for y in j.rejected if y.worker != x.worker]
                return accepted, rejected, None, None
        return list(j.accepted), list(j.rejected), honest.params, honest.opt_state

    return _faulty_server("include_rejected", rewrite)


def censor(*, worker: int = 0) -> RoleBehaviour:
    if isinstance(worker, bool) or not isinstance(worker, int) or worker < 0:
        raise ValueError(f"censor: worker = {worker!r}, expected a worker index >= 0")

    def rewrite(v, j, honest):
        if all(a.worker != worker for a in j.accepted):
            return list(j.accepted), list(j.rejected), honest.params, honest.opt_state
        accepted = [a for a in j.accepted if a.worker != worker]
        rejected = [*j.rejected, Rejected(worker, Category.OTHER.value, "censored")]
        return accepted, rejected, None, None

    return _faulty_server("censor", rewrite)


ROLE_BEHAVIOURS: dict[str, Callable[..., RoleBehaviour]] = {
    "skip_sample": skip_sample,
    "own_choice": own_choice,
    "swap_sample": swap_sample,
    "vouch": vouch,
    "frame": frame,
    "vote_invalid": vote_invalid,
    "wrong_aggregate": wrong_aggregate,
    "drop_accepted": drop_accepted,
    "include_rejected": include_rejected,
    "censor": censor,
}


def _as_strategy(name: str, factory):
    def build(**params) -> Strategy:
        return Strategy(name, role=(factory(**params),))

    build.__name__ = factory.__name__
    build.__doc__ = factory.__doc__
    build.__signature__ = inspect.signature(factory)
    return build


for _name, _factory in ROLE_BEHAVIOURS.items():
    register_strategy(_name, _as_strategy(_name, _factory))
