"""Throughput of the Proof-of-Training compute core against centralized SGD.

``pot_core`` is what every round costs beyond the consensus: per-worker
gradients (vmapped, one row per worker), the canonical encoding of each
worker's gradient, its SHA-256 commitment, aggregation and the optax update,
on the same total batch (W workers x B examples) as one centralized step.

Both are measured in one process, interleaved, as the median of repeated
timed loops. Commitment hashing of round r runs on a host thread while round
r+1's gradients compute in the ``pipelined`` loop (the protocol only needs
round r's commitments before round r+1 is accepted); the ``serial`` loop
hashes each round before its update. ``ratio`` uses the faster of the two and
names it: on a 2-core CPU, XLA already keeps both cores busy, so overlapping
the hashing only adds contention and the serial loop wins.
"""

from __future__ import annotations

import os
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import jax
import jax.numpy as jnp
import numpy as np

from pot_jax.learning.aggregation import make_rule
from pot_jax.learning.encoding import flat_digests, flat_row_bytes
from pot_jax.learning.models import make_model
from pot_jax.learning.steps import make_learner, make_optimizer
from pot_jax.runinfo import device_description

MNIST_SHAPE = (28, 28, 1)


def _timed(fn, repeats: int) -> float:
    """Median seconds of ``fn()`` over ``repeats`` runs (``0``: one run, no warm-up)."""
    if repeats == 0:
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0
    fn()
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def _encode_rows(header: bytes, grads_WxP: np.ndarray) -> list[tuple[bytes, np.ndarray]]:
    """The canonical encoding of each worker's gradient: header + little-endian row view."""
    return [(header, flat_row_bytes(row)) for row in grads_WxP]


def measure_throughput(
    *,
    model: str = "mlp",
    batch: int = 32,
    workers: int = 16,
    hidden: tuple[int, ...] = (256,),
    aggregation: str = "mean",
    commitment_hash: str = "sha256",
    hash_threads: int | None = None,
    rounds: int = 20,
    repeats: int = 5,
    seed: int = 0,
) -> dict:
    """Examples per second of centralized SGD and of the PoT core; see module doc."""
    net = make_model(model, input_shape=MNIST_SHAPE, num_classes=10, hidden=hidden)
    params = net.init(jax.random.key(seed))
    optimizer = make_optimizer("sgd", learning_rate=0.01)
    learner = make_learner(net, optimizer, params, num_workers=workers)
    rule = make_rule(aggregation)
    aggregate = jax.jit(rule.aggregate)
    mask_W = jnp.ones((workers,), dtype=bool)

    rng = np.random.default_rng(seed)
    x_WxB = rng.standard_normal((workers, batch, *MNIST_SHAPE), dtype=np.float32)
    y_WxB = rng.integers(0, 10, size=(workers, batch), dtype=np.int32)
    x_N = x_WxB.reshape((-1, *MNIST_SHAPE))
    y_N = y_WxB.reshape(-1)
    x_WxB_dev, y_WxB_dev = jnp.asarray(x_WxB), jnp.asarray(y_WxB)
    x_N_dev, y_N_dev = jnp.asarray(x_N), jnp.asarray(y_N)
    opt_state = optimizer.init(params)

    state = {"c": (params, opt_state), "p": (params, opt_state)}

    def centralized_loop():
        p, s = state["c"]
        for _ in range(rounds):
            p, s, _ = learner.centralized_step(p, s, x_N_dev, y_N_dev)
        jax.block_until_ready(p)
        state["c"] = (p, s)

    threads = hash_threads or min(4, os.cpu_count() or 1)
    hasher = ThreadPoolExecutor(max_workers=threads)
    pipeline = ThreadPoolExecutor(max_workers=1)

    def commit(host):
        return flat_digests(learner.header, host, hash_name=commitment_hash, executor=hasher)

    def pot_loop(pipelined: bool):
        p, s = state["p"]
        pending = None
        for _ in range(rounds):
            grads = learner.worker_gradients(p, x_WxB_dev, y_WxB_dev)
            host = np.asarray(grads)
            if pipelined:
                # Round r's commitments hash on host threads while round r+1 computes;
                # they are collected before round r+1's update is applied.
                if pending is not None:
                    pending.result()
                pending = pipeline.submit(commit, host)
            else:
                commit(host)
            p, s = learner.apply_update(p, s, aggregate(grads, mask_W))
        if pending is not None:
            pending.result()
        jax.block_until_ready(p)
        state["p"] = (p, s)

    loops = {
        "centralized": centralized_loop,
        "serial": lambda: pot_loop(False),
        "pipelined": lambda: pot_loop(True),
    }
    samples = {name: [] for name in loops}
    for loop in loops.values():
        loop()  # compile and warm up
    for _ in range(repeats):  # interleaved, so drift hits all alike
        for name, loop in loops.items():
            samples[name].append(_timed(loop, 0) / rounds)
    t_central = statistics.median(samples["centralized"])
    t_serial = statistics.median(samples["serial"])
    t_pipelined = statistics.median(samples["pipelined"])
    t_pot = min(t_serial, t_pipelined)

    # The parts, each timed on its own (blocking between parts).
    p, s = params, opt_state
    grads = learner.worker_gradients(p, x_WxB_dev, y_WxB_dev)
    host = np.asarray(grads)
    agg = aggregate(grads, mask_W)
    reps = max(5, repeats * 4)
    breakdown = {
        "gradients": _timed(
            lambda: jax.block_until_ready(learner.worker_gradients(p, x_WxB_dev, y_WxB_dev)), reps
        ),
        "device_to_host": _timed(lambda: np.asarray(jnp.copy(grads)), reps)
        - _timed(lambda: jax.block_until_ready(jnp.copy(grads)), reps),
        "encoding": _timed(lambda: _encode_rows(learner.header, host), reps),
        "commitment_hashing": _timed(lambda: commit(host), reps),
        "aggregation": _timed(lambda: jax.block_until_ready(aggregate(grads, mask_W)), reps),
        "update": _timed(lambda: jax.block_until_ready(learner.apply_update(p, s, agg)), reps),
        "centralized_step": _timed(
            lambda: jax.block_until_ready(learner.centralized_step(p, s, x_N_dev, y_N_dev)), reps
        ),
    }
    hasher.shutdown()
    pipeline.shutdown()
    breakdown_ms = {k: round(max(v, 0.0) * 1e3, 4) for k, v in breakdown.items()}
    serial = sum(
        breakdown[k]
        for k in (
            "gradients",
            "device_to_host",
            "encoding",
            "commitment_hashing",
            "aggregation",
            "update",
        )
    )
    examples = workers * batch
    return {
        "model": model,
        "batch": batch,
        "workers": workers,
        "params": learner.num_params,
        "aggregation": aggregation,
        "gradient_bytes_per_round": int(host.nbytes),
        "centralized_examples_per_s": round(examples / t_central, 1),
        "pot_core_examples_per_s": round(examples / t_pot, 1),
        "ratio": round(t_central / t_pot, 4),
        "pot_core_strategy": "serial" if t_serial <= t_pipelined else "pipelined",
        "ratio_serial": round(t_central / t_serial, 4),
        "ratio_pipelined": round(t_central / t_pipelined, 4),
        "ratio_sum_of_parts": round(breakdown["centralized_step"] / serial, 4),
        "centralized_ms": round(t_central * 1e3, 4),
        "pot_core_ms": round(t_pot * 1e3, 4),
        "breakdown_ms": breakdown_ms,
        "commitment_hash": commitment_hash,
        "hash_threads": threads,
        "rounds_per_loop": rounds,
        "repeats": repeats,
        "seed": seed,
        "jax_version": jax.__version__,
        "device": device_description(),
    }
