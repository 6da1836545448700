"""Tests for training/train_state.py: creation, update, per-step keys, split of variables."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from quantformer_jax.training import train_state


def _state():
    tx = optax.sgd(0.5)
    params = {"w": jnp.array([1.0, 2.0])}
    return tx, train_state.TrainState.create(
        params=params, tx=tx, rng=jax.random.PRNGKey(3), model_state={"vq_state": {"c": 1}}
    )


def test_create_and_apply_gradients():
    tx, state = _state()
    assert int(state.step) == 0 and state.rng.dtype == jnp.uint32
    new, updates = state.apply_gradients({"w": jnp.array([1.0, -1.0])}, tx=tx)
    assert int(new.step) == 1
    np.testing.assert_allclose(new.params["w"], [0.5, 2.5])
    np.testing.assert_allclose(updates["w"], [-0.5, 0.5])
    assert new.model_state == state.model_state  # gradients never touch model_state


def test_step_keys_depend_only_on_rng_and_step():
    tx, state = _state()
    a = state.step_keys(["mask", "replace"])
    b = state.replace(params={"w": jnp.zeros(2)}).step_keys(["mask", "replace"])
    np.testing.assert_array_equal(a["mask"], b["mask"])  # same (rng, step) -> same draws
    assert not np.array_equal(a["mask"], a["replace"])
    later = state.replace(step=state.step + 1).step_keys(["mask", "replace"])
    assert not np.array_equal(a["mask"], later["mask"])


def test_state_is_a_pytree_that_jit_can_donate():
    tx, state = _state()

    @jax.jit
    def step(s):
        return s.apply_gradients(jax.tree.map(jnp.ones_like, s.params), tx=tx)[0]

    out = step(step(state))
    assert int(out.step) == 2
    metrics = train_state.norm_metrics(
        grads=out.params, params=out.params, updates=out.params, learning_rate=0.1
    )
    np.testing.assert_allclose(metrics["l2_params"][0], np.linalg.norm([0.0, 1.0]), rtol=1e-6)


def test_split_variables():
    params, rest = train_state.split_variables({"params": {"a": 1}, "vq_state": {"c": 2}})
    assert params == {"a": 1} and rest == {"vq_state": {"c": 2}}
    assert train_state.param_count({"a": jnp.zeros((2, 3)), "b": jnp.zeros(4)}) == 10
