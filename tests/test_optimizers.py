"""Tests for training/optimizers.py: torch-style coupled L2, frozen leaves, clipping, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import common
from quantformer_jax.training import optimizers


def _params():
    return {"enc": {"w": jnp.array([1.0, -2.0, 3.0])}, "head": {"w": jnp.array([0.5, 0.5])}}


def _grads():
    return {"enc": {"w": jnp.array([0.1, 0.2, -0.3])}, "head": {"w": jnp.array([-0.4, 0.0])}}


def _run(tx, steps=3):
    @jax.jit  # one compiled program instead of hundreds of eager ops
    def run(params):
        state = tx.init(params)
        for _ in range(steps):
            updates, state = tx.update(_grads(), state, params)
            params = optax.apply_updates(params, updates)
        return params

    return run(_params())


def test_coupled_weight_decay_is_l2_before_adam_not_adamw():
    cfg = common.optimizer_config(weight_decay=0.1)
    cfg.learning_rate = 0.01
    ours = _run(optimizers.create_optimizer(cfg))
    # torch Adam(weight_decay): g + wd * p enters the moments.
    manual = _run(optax.chain(optax.add_decayed_weights(0.1), optax.adam(0.01)))
    adamw = _run(optax.adamw(0.01, weight_decay=0.1))
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(manual), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    diff = max(float(jnp.max(jnp.abs(a - b))) for a, b in
               zip(jax.tree.leaves(ours), jax.tree.leaves(adamw), strict=True))  # fmt: skip
    assert diff > 1e-4


def test_frozen_params_do_not_move_and_get_no_decay():
    cfg = common.optimizer_config(weight_decay=0.5)
    cfg.learning_rate = 0.1
    params = _params()
    mask = optimizers.trainable_mask(params, ["enc"])
    assert mask == {"enc": {"w": False}, "head": {"w": True}}
    out = _run(optimizers.create_optimizer(cfg, trainable=mask))
    np.testing.assert_array_equal(out["enc"]["w"], params["enc"]["w"])
    assert not np.allclose(out["head"]["w"], params["head"]["w"])


def test_grad_clipping_comes_before_the_l2_term():
    cfg = common.optimizer_config(weight_decay=0.1)
    cfg.grad_clip_norm = 1e-3
    cfg.learning_rate = 0.01
    ours = _run(optimizers.create_optimizer(cfg))
    clip, decay = optax.clip_by_global_norm(1e-3), optax.add_decayed_weights(0.1)
    torch_order = _run(optax.chain(clip, decay, optax.adam(0.01)))  # clip_grad_norm_ then step
    other_order = _run(optax.chain(decay, clip, optax.adam(0.01)))
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(torch_order), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    assert not np.allclose(ours["enc"]["w"], other_order["enc"]["w"])


def test_bad_settings_name_the_config_key():
    cfg = common.optimizer_config()
    cfg.name = "sgd"
    with pytest.raises(ValueError, match="config.optimizer.name"):
        optimizers.create_optimizer(cfg)
    with pytest.raises(ValueError, match="match no parameter"):
        optimizers.trainable_mask(_params(), ["encoder"])
