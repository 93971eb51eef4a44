"""Components that live outside the package, loaded by import path (tests/test_registry.py)."""

import numpy as np

from pot_jax.attacks import Attack
from pot_jax.learning.aggregation import mean
from pot_jax.verification.schemes import full_recompute


def shifted(*, shift: float = 1.0) -> Attack:
    """Sends the honest gradient plus ``shift`` in every coordinate."""

    def apply(ctx, worker, rng):
        return (np.asarray(ctx.grads_WxP[worker]) + np.float32(shift)).astype(np.float32)

    return Attack("shifted", apply, params=(("shift", shift),))


def half_mean():
    """Half the mean: a rule the package does not have, so re-execution must rebuild this one."""
    rule = mean()
    return rule._replace(name="half_mean", aggregate=lambda g, m: 0.5 * rule.aggregate(g, m))


def every_gradient(*, aggregation, mode="bitwise", threshold=None, tag: str = "x"):
    """full_recompute under another name, with a parameter of its own."""
    scheme = full_recompute(mode=mode, threshold=threshold, aggregation=aggregation)
    return scheme._replace(name="every_gradient", params=(*scheme.params, ("tag", tag)))


def wide_mlp(*, input_shape, num_classes, hidden=(8,), factor: int = 2):
    """The package's MLP with every hidden width multiplied by ``factor``."""
    from pot_jax.learning.models import make_model

    model = make_model(
        "mlp", input_shape=input_shape, num_classes=num_classes,
        hidden=tuple(factor * w for w in hidden),
    )  # fmt: skip
    return model._replace(name="wide_mlp")


def tiny_teacher(*, data_dir=None, seed=0, dim: int = 6):
    """The teacher dataset, small, from a factory outside the package."""
    from pot_jax.learning.datasets import load_dataset

    return load_dataset("teacher", seed=seed, n_train=400, n_test=100, dim=dim)
