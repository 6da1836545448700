"""Tests for parallel.py: jit+Mesh and pmap on 4 fake CPU devices equal one device."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import common
from quantformer_jax import parallel
from quantformer_jax.training import optimizers, train_state


class _Toy(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(1)(nn.gelu(nn.Dense(8)(x)))[..., 0]


_MODEL = _Toy()
_OPT = common.optimizer_config()
_OPT.learning_rate = 0.05
_TX = optimizers.create_optimizer(_OPT)


@jax.jit
def _init():
    params = _MODEL.init(jax.random.PRNGKey(0), jnp.zeros((1, 4)))["params"]
    return train_state.TrainState.create(params=params, tx=_TX, rng=jax.random.PRNGKey(1))


def _train_step(state, batch, *, axis_name):
    """A masked-mean regression with per-step noise drawn for the global batch."""
    keys = state.step_keys(["noise"])
    global_rows = batch["x"].shape[0] * parallel.num_shards(axis_name)
    noise = parallel.local_rows(jax.random.normal(keys["noise"], (global_rows,)), axis_name)
    valid = batch["valid"].astype(jnp.float32)

    def loss_fn(params):
        err = jnp.square(_MODEL.apply({"params": params}, batch["x"]) - batch["y"] - noise)
        return jnp.sum(err * valid) / jnp.maximum(jnp.sum(valid), 1.0)

    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    n = jnp.sum(valid)
    grads, loss = parallel.weighted_mean((grads, loss), n, axis_name)
    state, _ = state.apply_gradients(grads, tx=_TX)
    rows = parallel.all_gather(batch["valid"], axis_name).sum()
    return state, {"loss": loss, "valid_rows": rows, "n": parallel.psum(n, axis_name)}


def _eval_step(state, batch, *, axis_name):
    pred = _MODEL.apply({"params": state.params}, batch["x"])
    return {
        "sse": parallel.psum(jnp.sum(jnp.square(pred - batch["y"]) * batch["valid"]), axis_name)
    }


def _batches():
    rs = np.random.RandomState(0)
    # Padding rows at the end leave the devices unequal numbers of valid rows.
    return [
        {
            "x": rs.randn(8, 4).astype(np.float32),
            "y": rs.randn(8).astype(np.float32),
            "valid": np.arange(8) < 3 + i,
        }
        for i in range(3)
    ]


@functools.cache  # the one-device reference is shared by both modes
def _train(mode, num_devices):
    dp = parallel.DataParallel(mode, num_devices=num_devices)
    state = dp.put_state(_init())
    step = dp.compile_train_step(_train_step)
    evaluate = dp.compile_eval_step(_eval_step)
    losses = []
    for batch in _batches():
        state, metrics = step(state, dp.put_batch(batch))
        losses.append(float(metrics["loss"]))
        assert float(metrics["valid_rows"]) == float(metrics["n"]) == batch["valid"].sum()
    sse = float(evaluate(state, dp.put_batch(_batches()[0]))["sse"])
    return losses, jax.device_get(dp.host_state(state).params), sse


@pytest.mark.parametrize("mode", ["jit", "pmap"])
def test_four_devices_match_one_device(mode):
    assert jax.local_device_count() == 4
    ref_losses, ref_params, ref_sse = _train("jit", 1)
    losses, params, sse = _train(mode, 4)
    np.testing.assert_allclose(losses, ref_losses, atol=1e-5)
    np.testing.assert_allclose(sse, ref_sse, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ref_params), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_indivisible_batch_names_the_config_key():
    dp = parallel.DataParallel("jit", num_devices=4, batch_key="training.batch_size")
    batch = {"x": np.zeros((6, 4), np.float32)}
    with pytest.raises(ValueError, match=r"training.batch_size.*6.*4 devices"):
        dp.put_batch(batch)
    with pytest.raises(ValueError, match="config.training.parallel"):
        parallel.DataParallel("shard_map")
    assert parallel.is_main_process()
    assert not parallel.initialize_distributed()  # a plain run stays single-process
