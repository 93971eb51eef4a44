"""The pure training functions, jitted once here where they are owned.

Workers, validators (spot-check recomputation) and the auditor all call the
same ``Learner.worker_gradient``, so they cannot drift. XLA compiles a
vmapped batch of workers differently from a single worker, so the rows of the
batched ``Learner.worker_gradients`` (the fast path for simulations and
benchmarks) agree with ``worker_gradient`` only to float tolerance (~1e-7),
not bit for bit: bitwise spot checks must compare outputs of the same function. Gradients travel as
one flat float32 row per worker (``grads_WxP``): the model's leaves raveled
in canonical order (``encoding.tree_spec``), so a row's bytes are the payload
of the canonical encoding and aggregation is a matrix product.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from pot_jax.learning.encoding import TreeSpec, header_bytes, tree_spec
from pot_jax.learning.models import Model

OPTIMIZER_NAMES = ("sgd", "momentum", "adam")


def make_optimizer(name: str, *, learning_rate: float, momentum: float = 0.9):
    """An optax optimizer by name: ``sgd`` (the paper's rule), ``momentum`` or ``adam``."""
    if not (learning_rate > 0 and np.isfinite(learning_rate)):
        raise ValueError(f"learning_rate = {learning_rate}: expected a positive finite number")
    if name == "sgd":
        return optax.sgd(learning_rate)
    if name == "momentum":
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum = {momentum}: expected a value in [0, 1)")
        return optax.sgd(learning_rate, momentum=momentum)
    if name == "adam":
        return optax.adam(learning_rate)
    raise ValueError(f"optimizer {name!r} is unknown; expected one of {OPTIMIZER_NAMES}")


def worker_mesh(num_workers: int, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh over the largest number of devices that divides ``num_workers``."""
    devices = list(jax.devices() if devices is None else devices)
    count = max(d for d in range(1, len(devices) + 1) if num_workers % d == 0)
    return Mesh(np.array(devices[:count]), ("workers",))


class Learner(NamedTuple):
    """A model with its loss, optimizer and jitted pure steps.

    Shapes: W workers, B examples per worker, P parameters, ``...`` the
    example shape.
    """

    model: Model
    optimizer: optax.GradientTransformation
    spec: TreeSpec
    header: bytes
    unravel: Callable[[jax.Array], Any]
    mesh: Mesh
    # (params, x_Bx..., y_B) -> grad_P: one worker, the canonical computation
    worker_gradient: Callable
    # (params, x_WxBx..., y_WxB) -> grads_WxP: all workers at once (vmapped, sharded)
    worker_gradients: Callable
    # (params, opt_state, agg_P) -> (params, opt_state)
    apply_update: Callable
    # (params, opt_state, x_Nx..., y_N) -> (params, opt_state, loss)
    centralized_step: Callable
    # (params, x_Nx..., y_N) -> number of correct predictions
    count_correct: Callable
    # (params, x_Nx..., y_N) -> mean cross-entropy (for logging; no gradient)
    loss: Callable

    @property
    def num_params(self) -> int:
        return self.spec.num_params

    def accuracy(self, params, x, y, *, batch: int = 2048) -> float:
        """Test accuracy, evaluated in fixed-size chunks (one compile per chunk size)."""
        correct = 0
        for start in range(0, len(y), batch):
            correct += int(
                self.count_correct(params, x[start : start + batch], y[start : start + batch])
            )
        return correct / len(y)


def make_learner(
    model: Model,
    optimizer: optax.GradientTransformation,
    params_like,
    *,
    num_workers: int,
    devices: Sequence[jax.Device] | None = None,
) -> Learner:
    """Build and jit the training functions for ``model``.

    With several devices, the worker axis of ``worker_gradients`` is sharded
    across them (``jax.sharding``); parameters are replicated.
    """
    spec = tree_spec(params_like)
    if any(d != np.dtype("<f4") for d in spec.dtypes):
        raise ValueError(f"model parameters must all be float32, got dtypes {set(spec.dtypes)}")
    _, unravel = ravel_pytree(params_like)

    def loss_fn(params, x, y):
        logits = model.apply(params, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    def flat_grad(params, x_Bx, y_B):
        grads = jax.grad(loss_fn)(params, x_Bx, y_B)
        return jnp.concatenate([leaf.reshape(-1) for leaf in jax.tree_util.tree_leaves(grads)])

    mesh = worker_mesh(num_workers, devices)
    replicated = NamedSharding(mesh, P())
    by_worker = NamedSharding(mesh, P("workers"))
    worker_gradients = jax.jit(
        jax.vmap(flat_grad, in_axes=(None, 0, 0)),
        in_shardings=(replicated, by_worker, by_worker),
        out_shardings=NamedSharding(mesh, P("workers", None)),
    )

    def apply_update(params, opt_state, agg_P):
        grads = unravel(agg_P)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    def centralized_step(params, opt_state, x, y):
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    def count_correct(params, x, y):
        return jnp.sum(jnp.argmax(model.apply(params, x), axis=-1) == y)

    return Learner(
        model=model,
        optimizer=optimizer,
        spec=spec,
        header=header_bytes(spec),
        unravel=unravel,
        mesh=mesh,
        worker_gradient=jax.jit(flat_grad),
        worker_gradients=worker_gradients,
        apply_update=jax.jit(apply_update),
        centralized_step=jax.jit(centralized_step),
        count_correct=jax.jit(count_correct),
        loss=jax.jit(loss_fn),
    )
