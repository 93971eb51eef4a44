"""Flax models chosen by name in the config.

Both models take inputs of shape ``(batch, *input_shape)`` and return logits of
shape ``(batch, num_classes)``. The MLP flattens its input; the CNN convolves
over the spatial axes of NHWC images (2-D) or NWC sequences (1-D, as MNIST-1D).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from pot_jax.registry import Registry

MODEL_NAMES = ("mlp", "cnn")


class MLP(nn.Module):
    """Fully connected ReLU network; ``hidden`` lists the hidden widths."""

    hidden: Sequence[int]
    num_classes: int

    @nn.compact
    def __call__(self, x_BxI: jax.Array) -> jax.Array:
        h = x_BxI.reshape((x_BxI.shape[0], -1))
        for width in self.hidden:
            h = nn.relu(nn.Dense(width)(h))
        return nn.Dense(self.num_classes)(h)


class CNN(nn.Module):
    """Small convolutional network: conv-relu-pool blocks, then a dense head.

    Works on 1-D sequences (``x`` of rank 3, NWC) and 2-D images (rank 4, NHWC).
    """

    channels: Sequence[int]
    dense: int
    num_classes: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        spatial = x.ndim - 2
        kernel, window = (5,) * spatial, (2,) * spatial
        h = x
        for ch in self.channels:
            h = nn.relu(nn.Conv(ch, kernel)(h))
            h = nn.max_pool(h, window, strides=window)
        h = h.reshape((h.shape[0], -1))
        h = nn.relu(nn.Dense(self.dense)(h))
        return nn.Dense(self.num_classes)(h)


class Model(NamedTuple):
    """A built model: the flax module and its example input shape."""

    name: str
    module: nn.Module
    input_shape: tuple[int, ...]

    def init(self, key: jax.Array):
        """Initial parameters for one example of ``input_shape``."""
        return self.module.init(key, jnp.zeros((1, *self.input_shape), jnp.float32))["params"]

    def apply(self, params, x: jax.Array) -> jax.Array:
        return self.module.apply({"params": params}, x)


def _mlp(
    *, input_shape: tuple[int, ...], num_classes: int, hidden: Sequence[int] = (256,)
) -> Model:
    if not hidden or any(int(w) <= 0 for w in hidden):
        raise ValueError(f"model.hidden = {tuple(hidden)!r}: expected positive widths")
    module = MLP(hidden=tuple(int(w) for w in hidden), num_classes=num_classes)
    return Model(name="mlp", module=module, input_shape=tuple(input_shape))


def _cnn(
    *,
    input_shape: tuple[int, ...],
    num_classes: int,
    channels: Sequence[int] = (16, 32),
    dense: int = 64,
) -> Model:
    if len(input_shape) not in (2, 3):
        raise ValueError(
            f"model 'cnn' needs inputs of shape (length, channels) or (height, width, "
            f"channels), got input_shape {input_shape}"
        )
    if not channels or any(int(c) <= 0 for c in channels) or dense <= 0:
        raise ValueError(
            f"model.channels = {tuple(channels)!r}, model.dense = {dense}: expected positive sizes"
        )
    module = CNN(
        channels=tuple(int(c) for c in channels), dense=int(dense), num_classes=num_classes
    )
    return Model(name="cnn", module=module, input_shape=tuple(input_shape))


# A model factory takes input_shape, num_classes and the size fields (hidden, channels,
# dense) as keywords, and returns a Model; register yours with register_model.
MODELS = Registry("model", {"mlp": _mlp, "cnn": _cnn})


def register_model(name: str, factory: Callable[..., Model]) -> None:
    """Make a model factory selectable as ``--model NAME[:params]`` (and in audits)."""
    MODELS.register(name, factory)


def make_model(
    name: str,
    *,
    input_shape: tuple[int, ...],
    num_classes: int,
    hidden: Sequence[int] = (256,),
    channels: Sequence[int] = (16, 32),
    dense: int = 64,
) -> Model:
    """Build the model ``name`` (a registered name or import path, with parameters)."""
    return MODELS.build(
        name,
        flag="--model",
        input_shape=tuple(input_shape),
        num_classes=num_classes,
        hidden=hidden,
        channels=channels,
        dense=dense,
    )


def count_params(params) -> int:
    return int(sum(leaf.size for leaf in jax.tree_util.tree_leaves(params)))
