"""What a validator knows about a round, and what a worker sent it.

``RoundContext`` holds the round's public inputs: everything anyone needs to
recompute any worker's gradient (the model ``theta_r``, the learner whose
``worker_gradient`` is the canonical computation, and each worker's public
batch). ``Submission`` holds one worker's message exactly as received: a
Byzantine worker may put anything in any field, so nothing is validated when
it is built; ``cheap_checks`` does that and turns every problem into a
rejection.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
import struct
from collections.abc import Callable, Sequence
from numbers import Real
from typing import Any

import numpy as np

from pot_jax.crypto.worker_signatures import WorkerSignatureScheme, worker_signature_scheme
from pot_jax.learning.encoding import COMMITMENT_HASHES, pytree_digest
from pot_jax.learning.steps import Learner

__all__ = ["RoundContext", "Submission", "batch_digest", "expected_gradient"]

_BATCH_TAG = b"POT_JAX_BATCH_V1"


@dataclasses.dataclass(frozen=True, eq=False)
class RoundContext:
    """The public inputs of round ``round`` of run ``chain_id``.

    Attributes:
      chain_id: identifies the run, 1 to 255 bytes (what workers sign).
      round: the round number, ``>= 0``.
      params: the model ``theta_r`` (a pytree of the learner's spec).
      learner: whose ``worker_gradient`` is the canonical gradient.
      batch_of: ``worker -> (x_Bx..., y_B)``, the worker's public batch this
        round (e.g. from ``BatchAssigner.indices(round, worker)``).
      n_workers: W, the number of workers in the round.
      hash_name: the commitment hash (``"sha256"`` or ``"blake3"``).
      signature_scheme: the workers' signature scheme (Ed25519 by default).
      norm_bound: the largest L2 norm a gradient may have (``inf``: no bound).
      worker_public_keys: the registered key of each worker; when given, a
        submission signed under any other key is rejected. Without it a
        submission's own ``public_key`` is trusted (simulations only).
    """

    chain_id: bytes
    round: int
    params: Any
    learner: Learner
    batch_of: Callable[[int], tuple[np.ndarray, np.ndarray]]
    n_workers: int
    hash_name: str = "sha256"
    signature_scheme: WorkerSignatureScheme = dataclasses.field(
        default_factory=worker_signature_scheme
    )
    norm_bound: float = math.inf
    worker_public_keys: Sequence[bytes] | None = None

    def __post_init__(self):
        if not isinstance(self.chain_id, bytes) or not 1 <= len(self.chain_id) <= 255:
            raise ValueError(f"chain_id = {self.chain_id!r}: expected 1 to 255 bytes")
        if isinstance(self.round, bool) or not isinstance(self.round, int) or self.round < 0:
            raise ValueError(f"round = {self.round!r}: expected an int >= 0")
        if (
            isinstance(self.n_workers, bool)
            or not isinstance(self.n_workers, int)
            or self.n_workers < 1
        ):
            raise ValueError(f"n_workers = {self.n_workers!r}: expected an int >= 1")
        if self.hash_name not in COMMITMENT_HASHES:
            raise ValueError(
                f"hash_name = {self.hash_name!r}: expected one of {sorted(COMMITMENT_HASHES)}"
            )
        if isinstance(self.norm_bound, bool) or not (
            isinstance(self.norm_bound, Real) and self.norm_bound > 0
        ):
            raise ValueError(f"norm_bound = {self.norm_bound!r}: expected a number > 0 (or inf)")
        if self.worker_public_keys is not None:
            keys = tuple(self.worker_public_keys)
            if len(keys) != self.n_workers:
                raise ValueError(
                    f"worker_public_keys holds {len(keys)} keys, expected one per worker "
                    f"(n_workers = {self.n_workers})"
                )
            object.__setattr__(self, "worker_public_keys", keys)

    @functools.cached_property
    def params_digest(self) -> bytes:
        """SHA-256 of the canonical encoding of ``params`` (the chain's model hash)."""
        return pytree_digest(self.params, self.learner.spec)

    @functools.cached_property
    def num_params(self) -> int:
        return self.learner.num_params


@dataclasses.dataclass(frozen=True, eq=False)
class Submission:
    """One worker's message for a round, exactly as received (never validated here).

    Attributes:
      worker: the worker index it claims to come from.
      gradient: what it sent as its flat gradient; honest: float32 of shape (P,).
      commitment: ``flat_digest(header, gradient)``, 32 bytes, when honest.
      signature: over ``worker_message(chain_id, round, worker, commitment)``.
      public_key: the key the signature verifies under.
    """

    worker: Any
    gradient: Any
    commitment: Any
    signature: Any
    public_key: Any


def expected_gradient(ctx: RoundContext, worker: int) -> np.ndarray:
    """The canonical gradient of ``worker`` this round: one ``worker_gradient`` call."""
    x_B, y_B = ctx.batch_of(worker)
    return np.asarray(ctx.learner.worker_gradient(ctx.params, x_B, y_B))


def batch_digest(x_B: np.ndarray, y_B: np.ndarray) -> bytes:
    """SHA-256 over a batch's arrays (dtype, shape and little-endian bytes of each).

    A fraud proof carries it so that a verifier whose data differ from the
    prover's sees the disagreement instead of a spurious mismatch.
    """
    h = hashlib.sha256(_BATCH_TAG)
    for array in (np.asarray(x_B), np.asarray(y_B)):
        dtype = array.dtype.newbyteorder("<") if array.dtype.byteorder != "|" else array.dtype
        code = dtype.str.encode("ascii")
        h.update(struct.pack("<B", len(code)) + code)
        h.update(struct.pack(f"<B{array.ndim}Q", array.ndim, *array.shape))
        h.update(np.ascontiguousarray(array, dtype=dtype).reshape(-1).view(np.uint8))
    return h.digest()
