"""Centralized vs. data-parallel training, side by side, on one config.

Both runs start from the same initial parameters and see the same examples
each round: worker i's batch comes from the deterministic ``BatchAssigner``,
and the centralized baseline takes one step on the union of the workers'
batches. The data-parallel run computes per-worker gradients, commits to each
(SHA-256 of its canonical encoding), aggregates with the configured rule and
applies the update, which is the compute core of a Proof-of-Training round
without the consensus around it.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from pot_jax.config import TrainConfig
from pot_jax.learning.aggregation import RULES
from pot_jax.learning.assignment import BatchAssigner
from pot_jax.learning.datasets import Dataset, dirichlet_partition, iid_partition, load_dataset
from pot_jax.learning.encoding import flat_digests
from pot_jax.learning.models import make_model
from pot_jax.learning.steps import Learner, make_learner, make_optimizer
from pot_jax.registry import parse_spec
from pot_jax.runinfo import JsonLines, refuse_existing_run, run_metadata, write_json


@dataclass(frozen=True)
class TrainSummary:
    centralized_accuracy: float
    data_parallel_accuracy: float
    accuracy_ratio: float
    centralized_seconds: float
    data_parallel_seconds: float
    rounds: int
    params: int
    wall_seconds: float
    run_dir: str


def load_for(config: TrainConfig) -> Dataset:
    is_mnist1d = parse_spec(config.dataset, flag="--dataset").name == "mnist1d"
    options = {"num_samples": config.num_samples} if is_mnist1d else {}
    return load_dataset(config.dataset, data_dir=config.data_dir, seed=config.seed, **options)


def worker_shards(config: TrainConfig, data: Dataset) -> list[np.ndarray]:
    """Which examples each worker draws from: all of them (``shared``), or a shard."""
    if config.partition == "shared":
        return [np.arange(data.n_train)] * config.workers
    if config.partition == "dirichlet":
        return dirichlet_partition(
            data.y_train, config.workers, config.dirichlet_alpha, config.seed
        )
    return iid_partition(data.n_train, config.workers, config.seed)


def build_learner(config: TrainConfig, data: Dataset) -> tuple[Learner, object]:
    model = make_model(
        config.model,
        input_shape=data.input_shape,
        num_classes=data.num_classes,
        hidden=config.hidden,
        channels=config.channels,
    )
    params = model.init(jax.random.fold_in(jax.random.key(config.seed), 0))
    optimizer = make_optimizer(config.optimizer, learning_rate=config.learning_rate)
    return make_learner(model, optimizer, params, num_workers=config.workers), params


def train(config: TrainConfig) -> TrainSummary:
    """Run both trainings, write config, metrics and summary to ``config.run_dir``."""
    start = time.perf_counter()
    run_dir = Path(config.run_dir)
    refuse_existing_run(run_dir, ("config.json", "metrics.jsonl", "summary.json"))
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_dir / "config.json", {"config": config.to_dict(), **run_metadata()})

    data = load_for(config)
    assigner = BatchAssigner(config.seed, worker_shards(config, data), config.batch_size)
    learner, params = build_learner(config, data)
    rule = RULES.build(config.aggregation, flag="--aggregation")
    aggregate = jax.jit(rule.aggregate)
    mask_W = jnp.ones((config.workers,), dtype=bool)

    opt_state = learner.optimizer.init(params)
    params_c, opt_state_c = params, learner.optimizer.init(params)
    x_test, y_test = jnp.asarray(data.x_test), jnp.asarray(data.y_test)
    time_c = time_dp = 0.0
    hasher = ThreadPoolExecutor(max_workers=1)
    pending = None

    metrics = JsonLines(run_dir / "metrics.jsonl")
    bar = tqdm(range(config.rounds), disable=not config.progress, desc="train", unit="round")
    for r in bar:
        idx_WxB = assigner.round_indices(r)
        x_WxB = data.x_train[idx_WxB]
        y_WxB = data.y_train[idx_WxB]

        t0 = time.perf_counter()
        grads_WxP = learner.worker_gradients(params, x_WxB, y_WxB)
        # Round r's commitments are hashed while round r+1 computes; they are
        # collected before round r+1's update is applied.
        if pending is not None:
            pending.result()
        pending = hasher.submit(flat_digests, learner.header, np.asarray(grads_WxP))
        params, opt_state = learner.apply_update(params, opt_state, aggregate(grads_WxP, mask_W))
        jax.block_until_ready(params)
        t1 = time.perf_counter()
        params_c, opt_state_c, loss_c = learner.centralized_step(
            params_c,
            opt_state_c,
            x_WxB.reshape((-1, *data.input_shape)),
            y_WxB.reshape(-1),
        )
        jax.block_until_ready(params_c)
        time_c += time.perf_counter() - t1
        time_dp += t1 - t0

        if (r + 1) % config.eval_every == 0 or r + 1 == config.rounds:
            acc_c = learner.accuracy(params_c, x_test, y_test)
            acc_dp = learner.accuracy(params, x_test, y_test)
            metrics.write(
                {
                    "round": r + 1,
                    "centralized_loss": float(loss_c),
                    "centralized_test_accuracy": acc_c,
                    "data_parallel_test_accuracy": acc_dp,
                    "centralized_seconds": time_c,
                    "data_parallel_seconds": time_dp,
                }
            )
            bar.set_postfix(central=f"{acc_c:.3f}", parallel=f"{acc_dp:.3f}")
    if pending is not None:
        pending.result()
    hasher.shutdown()
    metrics.close()

    summary = TrainSummary(
        centralized_accuracy=acc_c,
        data_parallel_accuracy=acc_dp,
        accuracy_ratio=acc_dp / acc_c if acc_c > 0 else float("nan"),
        centralized_seconds=time_c,
        data_parallel_seconds=time_dp,
        rounds=config.rounds,
        params=learner.num_params,
        wall_seconds=time.perf_counter() - start,
        run_dir=str(run_dir),
    )
    write_json(run_dir / "summary.json", {**summary.__dict__, "seed": config.seed})
    return summary
