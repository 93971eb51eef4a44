"""Batch assignment is a public function of (seed, round, worker)."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pot_jax.learning.assignment import BatchAssigner


def shards(n=100, w=4):
    return np.array_split(np.arange(n), w)


def test_same_inputs_same_batch_from_a_fresh_assigner():
    a = BatchAssigner(7, shards(), 5)
    b = BatchAssigner(7, shards(), 5)
    for r in range(12):
        for w in range(4):
            np.testing.assert_array_equal(a.indices(r, w), b.indices(r, w))


def test_batches_change_with_seed_round_and_worker():
    a = BatchAssigner(7, shards(), 5)
    c = BatchAssigner(8, shards(), 5)
    assert not np.array_equal(a.indices(0, 0), c.indices(0, 0))
    assert not np.array_equal(a.indices(0, 0), a.indices(1, 0))


@given(st.integers(0, 2**31), st.integers(1, 8), st.integers(0, 50))
def test_an_epoch_visits_each_shard_example_at_most_once(seed, batch, epoch):
    shard_list = shards(80, 4)
    a = BatchAssigner(seed, shard_list, batch)
    per_epoch = 20 // batch
    for w, shard in enumerate(shard_list):
        seen = np.concatenate([a.indices(epoch * per_epoch + k, w) for k in range(per_epoch)])
        assert len(set(seen.tolist())) == len(seen)
        assert set(seen.tolist()) <= set(shard.tolist())


def test_round_indices_stacks_workers():
    a = BatchAssigner(0, shards(), 5)
    idx = a.round_indices(3)
    assert idx.shape == (4, 5)
    np.testing.assert_array_equal(idx[2], a.indices(3, 2))


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="worker 1's shard holds 2 examples"):
        BatchAssigner(0, [np.arange(10), np.arange(2)], 5)
    with pytest.raises(ValueError, match="batch_size = 0"):
        BatchAssigner(0, shards(), 0)
    a = BatchAssigner(0, shards(), 5)
    with pytest.raises(ValueError, match="worker 4 is out of range"):
        a.indices(0, 4)
    with pytest.raises(ValueError, match="round -1"):
        a.indices(-1, 0)
