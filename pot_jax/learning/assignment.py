"""Deterministic batch assignment: worker i's batch in round r from (seed, r, i).

Anyone holding the run's seed and the workers' shards recomputes every batch.
Each worker walks its shard in epochs; the order within an epoch is a
permutation drawn from a Philox stream keyed by SHA-256 of
``(b"pot-jax/batch", seed, epoch, worker)``. Philox's raw output is fixed by its
specification (Salmon et al. 2011), unlike ``Generator`` methods, whose
algorithms numpy may change between versions.
"""

from __future__ import annotations

import functools
import hashlib
import struct
from collections.abc import Sequence

import numpy as np

_DOMAIN = b"pot-jax/batch/v1"


def _philox_key(seed: int, epoch: int, worker: int) -> int:
    digest = hashlib.sha256(_DOMAIN + struct.pack("<qqq", seed, epoch, worker)).digest()
    return int.from_bytes(digest[:16], "little")


@functools.lru_cache(maxsize=4096)
def epoch_permutation(seed: int, epoch: int, worker: int, shard_size: int) -> np.ndarray:
    """The order in which ``worker`` visits its shard in ``epoch``."""
    raw = np.random.Philox(key=_philox_key(seed, epoch, worker)).random_raw(shard_size)
    perm = np.argsort(raw, kind="stable")
    perm.setflags(write=False)
    return perm


class BatchAssigner:
    """Maps (round, worker) to example indices, deterministically.

    Args:
      seed: the run seed.
      shards: per worker, the indices of the training examples it may draw
        (disjoint IID shards by default, Dirichlet shards for non-IID runs).
      batch_size: examples per worker per round; every shard must hold at
        least this many.
    """

    def __init__(self, seed: int, shards: Sequence[np.ndarray], batch_size: int):
        if batch_size <= 0:
            raise ValueError(f"batch_size = {batch_size}: expected a positive integer")
        self.seed = int(seed)
        self.shards = tuple(np.asarray(s, dtype=np.int64) for s in shards)
        self.batch_size = int(batch_size)
        for i, shard in enumerate(self.shards):
            if len(shard) < batch_size:
                raise ValueError(
                    f"worker {i}'s shard holds {len(shard)} examples, fewer than "
                    f"batch_size = {batch_size}; use fewer workers or a smaller batch"
                )

    @property
    def num_workers(self) -> int:
        return len(self.shards)

    def indices(self, round_: int, worker: int) -> np.ndarray:
        """Dataset indices of ``worker``'s batch in round ``round_``."""
        if not 0 <= worker < len(self.shards):
            raise ValueError(f"worker {worker} is out of range [0, {len(self.shards)})")
        if round_ < 0:
            raise ValueError(f"round {round_} is negative")
        shard = self.shards[worker]
        per_epoch = len(shard) // self.batch_size
        epoch, pos = divmod(round_, per_epoch)
        perm = epoch_permutation(self.seed, epoch, worker, len(shard))
        return shard[perm[pos * self.batch_size : (pos + 1) * self.batch_size]]

    def round_indices(self, round_: int) -> np.ndarray:
        """All workers' batches for a round, shape (workers, batch_size)."""
        return np.stack([self.indices(round_, w) for w in range(len(self.shards))])
