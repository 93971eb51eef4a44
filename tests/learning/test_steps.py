"""The jitted training functions: per-worker gradients, update, baseline."""

import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from pot_jax.learning.models import count_params, make_model
from pot_jax.learning.steps import make_learner, make_optimizer


def tiny(model="mlp", workers=4, batch=3, shape=(40, 1), seed=0):
    net = make_model(model, input_shape=shape, num_classes=10, hidden=(16,), channels=(4,), dense=8)
    params = net.init(jax.random.key(seed))
    opt = make_optimizer("sgd", learning_rate=0.1)
    learner = make_learner(net, opt, params, num_workers=workers)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((workers, batch, *shape), dtype=np.float32)
    y = rng.integers(0, 10, (workers, batch)).astype(np.int32)
    return learner, params, x, y


@pytest.mark.parametrize("model", ["mlp", "cnn"])
def test_worker_rows_are_each_workers_own_gradient(model):
    learner, params, x, y = tiny(model)

    def loss(p, xb, yb):
        return optax.softmax_cross_entropy_with_integer_labels(
            learner.model.apply(p, xb), yb
        ).mean()

    grads = np.asarray(learner.worker_gradients(params, x, y))
    assert grads.shape == (4, learner.num_params) and grads.dtype == np.float32
    for w in range(4):
        ref = jax.flatten_util.ravel_pytree(jax.grad(loss)(params, x[w], y[w]))[0]
        np.testing.assert_allclose(grads[w], ref, rtol=1e-5, atol=1e-6)


def test_mean_of_worker_gradients_step_equals_centralized_step():
    """Plain SGD with the mean rule is centralized SGD on the union batch."""
    learner, params, x, y = tiny()
    opt_state = learner.optimizer.init(params)
    grads = learner.worker_gradients(params, x, y)
    p_dp, _ = learner.apply_update(params, opt_state, jnp.mean(grads, axis=0))
    p_c, _, _ = learner.centralized_step(params, opt_state, x.reshape(12, 40, 1), y.reshape(-1))
    for a, b in zip(jax.tree_util.tree_leaves(p_dp), jax.tree_util.tree_leaves(p_c), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_worker_gradients_are_bitwise_deterministic():
    learner, params, x, y = tiny()
    a = np.asarray(learner.worker_gradients(params, x, y))
    b = np.asarray(learner.worker_gradients(params, x, y))
    assert a.tobytes() == b.tobytes()


def test_single_worker_gradient_is_bitwise_reproducible_and_close_to_batched_rows():
    learner, params, x, y = tiny()
    batched = np.asarray(learner.worker_gradients(params, x, y))
    for w in range(4):
        one = np.asarray(learner.worker_gradient(params, x[w], y[w]))
        again = np.asarray(learner.worker_gradient(params, x[w], y[w]))
        assert one.tobytes() == again.tobytes()
        np.testing.assert_allclose(one, batched[w], rtol=1e-5, atol=1e-6)


def test_accuracy_counts_correct_predictions():
    learner, params, x, y = tiny()
    xs, ys = x.reshape(12, 40, 1), y.reshape(-1)
    pred = np.argmax(np.asarray(learner.model.apply(params, xs)), axis=-1)
    assert learner.accuracy(params, xs, ys, batch=5) == pytest.approx(np.mean(pred == ys))


def test_models_and_optimizers_reject_unknown_names():
    with pytest.raises(ValueError, match="'resnet': unknown model; expected one of mlp"):
        make_model("resnet", input_shape=(4,), num_classes=2)
    with pytest.raises(ValueError, match="optimizer 'lbfgs' is unknown"):
        make_optimizer("lbfgs", learning_rate=0.1)
    with pytest.raises(ValueError, match="learning_rate = -1"):
        make_optimizer("sgd", learning_rate=-1)
    with pytest.raises(ValueError, match="model 'cnn' needs inputs"):
        make_model("cnn", input_shape=(784,), num_classes=10)


def test_default_benchmark_mlp_has_over_200k_parameters():
    net = make_model("mlp", input_shape=(28, 28, 1), num_classes=10, hidden=(256,))
    assert count_params(net.init(jax.random.key(0))) == 784 * 256 + 256 + 256 * 10 + 10


SHARDED = textwrap.dedent(
    """
    import json, sys
    import jax, numpy as np
    from pot_jax.learning.models import make_model
    from pot_jax.learning.steps import make_learner, make_optimizer
    net = make_model("mlp", input_shape=(40, 1), num_classes=10, hidden=(32,))
    params = net.init(jax.random.key(0))
    opt = make_optimizer("sgd", learning_rate=0.1)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 8, 40, 1), dtype=np.float32)
    y = rng.integers(0, 10, (16, 8)).astype(np.int32)
    one = make_learner(net, opt, params, num_workers=16, devices=jax.devices()[:1])
    many = make_learner(net, opt, params, num_workers=16)
    g1 = np.asarray(one.worker_gradients(params, x, y))
    g8 = many.worker_gradients(params, x, y)
    print(json.dumps({
        "devices": len(jax.devices()),
        "mesh": int(many.mesh.devices.size),
        "shards": len(g8.addressable_shards),
        "max_abs_diff": float(np.max(np.abs(np.asarray(g8) - g1))),
        "max_abs": float(np.max(np.abs(g1))),
    }))
    """
)


def test_worker_axis_sharded_over_8_cpu_devices_matches_one_device():
    env = dict(
        os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu"
    )
    out = subprocess.run(
        [sys.executable, "-c", SHARDED], env=env, check=True, capture_output=True, text=True
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["devices"] == 8 and result["mesh"] == 8 and result["shards"] == 8
    assert result["max_abs_diff"] <= 1e-6 * max(1.0, result["max_abs"])
