"""A tiny training round shared by the verification tests.

Teacher data (dim 8, 10 classes), an MLP with one hidden layer of 16 units
(P = 314), W = 12 workers with batches of 32, Ed25519 worker keys and four
BLS validator keys (arkworks backend), all generated once on import.
``PARAMS`` is the model after two SGD steps from ``STALE_PARAMS`` (the lazy
worker's cached model).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping

import jax
import numpy as np

from pot_jax.attacks import Attack, AttackContext, commitment_of
from pot_jax.crypto import bls
from pot_jax.crypto.worker_signatures import worker_message, worker_signature_scheme
from pot_jax.learning import (
    BatchAssigner,
    flat_digest,
    iid_partition,
    load_dataset,
    make_learner,
    make_model,
    make_optimizer,
)
from pot_jax.verification import RoundContext, Submission

CHAIN_ID = b"pot-jax-verification-test"
W = 12
B = 32
N_VALIDATORS = 4
NORM_BOUND = 100.0

DATASET = load_dataset("teacher", n_train=W * B * 4, n_test=64, dim=8)
MODEL = make_model(
    "mlp", input_shape=DATASET.input_shape, num_classes=DATASET.num_classes, hidden=(16,)
)
STALE_PARAMS = MODEL.init(jax.random.key(0))
LEARNER = make_learner(MODEL, make_optimizer("sgd", learning_rate=0.5), STALE_PARAMS, num_workers=W)
P = LEARNER.num_params
ASSIGNER = BatchAssigner(0, iid_partition(DATASET.n_train, W, 0), B)

SIGNATURES = worker_signature_scheme("ed25519")
WORKER_KEYS = [SIGNATURES.keygen(hashlib.sha256(b"worker %d" % i).digest()) for i in range(W)]
WORKER_PKS = tuple(pk for _, pk in WORKER_KEYS)
VALIDATOR_SKS = [
    bls.KeyGen(hashlib.sha256(b"validator %d" % v).digest()) for v in range(N_VALIDATORS)
]
VALIDATOR_PKS = [bls.SkToPk(sk) for sk in VALIDATOR_SKS]


def round_batches(round_: int) -> tuple[np.ndarray, np.ndarray]:
    """All workers' batches of a round: ``(x_WxBxD, y_WxB)``."""
    idx = ASSIGNER.round_indices(round_)
    return DATASET.x_train[idx], DATASET.y_train[idx]


def batch_of(round_: int) -> Callable[[int], tuple[np.ndarray, np.ndarray]]:
    def batch(worker: int) -> tuple[np.ndarray, np.ndarray]:
        idx = ASSIGNER.indices(round_, worker)
        return DATASET.x_train[idx], DATASET.y_train[idx]

    return batch


def _trained_params():
    params, opt_state = STALE_PARAMS, LEARNER.optimizer.init(STALE_PARAMS)
    for r in range(2):
        x, y = round_batches(1000 + r)
        agg = np.asarray(LEARNER.worker_gradients(params, x, y)).mean(axis=0)
        params, opt_state = LEARNER.apply_update(params, opt_state, agg)
    return params


PARAMS = _trained_params()


def make_ctx(round_: int = 0, params=None, **overrides) -> RoundContext:
    kwargs = dict(
        chain_id=CHAIN_ID,
        round=round_,
        params=PARAMS if params is None else params,
        learner=LEARNER,
        batch_of=batch_of(round_),
        n_workers=W,
        signature_scheme=SIGNATURES,
        norm_bound=NORM_BOUND,
        worker_public_keys=WORKER_PKS,
    )
    kwargs.update(overrides)
    return RoundContext(**kwargs)


def honest_grads(ctx: RoundContext, *, path: str = "single") -> np.ndarray:
    """Honest gradients W x P: ``single`` (canonical, bitwise) or ``vmapped`` (tolerance)."""
    if path == "single":
        rows = [np.asarray(LEARNER.worker_gradient(ctx.params, *ctx.batch_of(w))) for w in range(W)]
        return np.stack(rows)
    x, y = round_batches(ctx.round)
    return np.asarray(LEARNER.worker_gradients(ctx.params, x, y))


def sign(ctx: RoundContext, worker: int, gradient, commitment: bytes) -> Submission:
    sk, pk = WORKER_KEYS[worker]
    message = worker_message(ctx.chain_id, ctx.round, worker, commitment)
    return Submission(worker, gradient, commitment, SIGNATURES.sign(sk, message), pk)


def honest_submission(ctx: RoundContext, worker: int, gradient: np.ndarray) -> Submission:
    return sign(ctx, worker, gradient, flat_digest(LEARNER.header, gradient))


def attacked_round(
    ctx: RoundContext,
    attack: Attack,
    byzantine: tuple[int, ...],
    grads_WxP: np.ndarray,
    *,
    seed: int = 0,
    stale_params=None,
    n_validators: int = N_VALIDATORS,
) -> tuple[dict[int, Submission], dict[int, object]]:
    """Submissions of a round where ``byzantine`` run ``attack``; also what each sent.

    The attackers know the committee size ``n_validators`` and the chain id
    (public), as in a protocol run.
    """
    actx = AttackContext(
        learner=LEARNER,
        params=ctx.params,
        batch_of=ctx.batch_of,
        grads_WxP=grads_WxP,
        round=ctx.round,
        byzantine=byzantine,
        stale_params=STALE_PARAMS if stale_params is None else stale_params,
        n_validators=n_validators,
        chain_id=ctx.chain_id,
    )
    submissions, sent = {}, {}
    for w in range(W):
        if w in byzantine:
            rng = np.random.default_rng([seed, ctx.round, w])
            sent[w] = attack.apply(actx, w, rng)
            commitment = commitment_of(sent[w], LEARNER.header, rng)
            submissions[w] = sign(ctx, w, sent[w], commitment)
        else:
            sent[w] = grads_WxP[w]
            submissions[w] = honest_submission(ctx, w, grads_WxP[w])
    return submissions, sent


def is_honest_output(sent, honest_row: np.ndarray) -> bool:
    return (
        isinstance(sent, np.ndarray)
        and sent.dtype == np.float32
        and sent.shape == honest_row.shape
        and sent.tobytes() == honest_row.tobytes()
    )


def selections(scheme, ctx: RoundContext) -> list:
    return [scheme.select(ctx, v, N_VALIDATORS, VALIDATOR_SKS[v]) for v in range(N_VALIDATORS)]


def accepted_mask(verdicts, n: int = W) -> np.ndarray:
    mask = np.zeros(n, bool)
    for v in verdicts:
        mask[v.worker] = v.accepted
    return mask


def by_worker(verdicts) -> Mapping[int, object]:
    return {v.worker: v for v in verdicts}
