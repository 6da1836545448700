"""Tests for checkpointing.py: exact round trip, rotation + separate best, architecture check."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from quantformer_jax import checkpointing
from quantformer_jax.training.train_state import TrainState

_ARCH = {"model": "toy", "d_model": 8, "layers": (1, 2)}


def _state(value=1.0):
    tx = optax.adam(0.1)
    params = {"w": jnp.full((3,), value), "b": jnp.zeros((2,))}
    state = TrainState.create(
        params=params, tx=tx, rng=jax.random.PRNGKey(0), model_state={"vq": {"counts": jnp.ones(4)}}
    )
    return state.replace(step=jnp.asarray(int(value), jnp.int32))


def _assert_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_round_trip_rotation_and_best(tmp_path):
    ckpt = checkpointing.Checkpointer(str(tmp_path), architecture=_ARCH, max_to_keep=2,
                                      best_metric="val_mse")  # fmt: skip
    assert ckpt.restore(checkpointing.abstract_like(_state())) is None
    for step in (1, 2, 3):
        ckpt.save(step, _state(step), {"progress": {"epoch": step}})
    ckpt.save_best(1, _state(1), {"progress": {"epoch": 1}}, value=0.5)
    assert ckpt.latest_step() == 3 and ckpt.best_step() == 1
    assert sorted(
        int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()
    ) == [
        2,
        3,
    ]
    state, meta = ckpt.restore(checkpointing.abstract_like(_state()))
    _assert_equal(state, _state(3))
    assert isinstance(state.opt_state[0], optax.ScaleByAdamState)  # not plain lists
    assert meta["progress"] == {"epoch": 3} and meta["architecture"]["layers"] == [1, 2]
    best, _ = ckpt.restore(checkpointing.abstract_like(_state()), best=True)
    _assert_equal(best, _state(1))
    ckpt.save(3, _state(7), {"progress": {"epoch": 9}})  # same step: replaced, newest meta wins
    assert ckpt.restore(checkpointing.abstract_like(_state()))[1]["progress"] == {"epoch": 9}
    ckpt.close()
    assert checkpointing.read_meta(str(tmp_path))["progress"] == {"epoch": 1}
    restored, _ = checkpointing.restore_pretrained(
        str(tmp_path), lambda meta: checkpointing.abstract_like(_state())
    )
    _assert_equal(restored.params, _state(1).params)


def test_architecture_mismatch_names_the_keys(tmp_path):
    ckpt = checkpointing.Checkpointer(str(tmp_path), architecture=_ARCH)
    ckpt.save(1, _state(), {})
    ckpt.close()
    other = checkpointing.Checkpointer(
        str(tmp_path), architecture={"model": "toy", "d_model": 16, "layers": (1, 2), "k": 4}
    )
    with pytest.raises(ValueError, match=r"(?s)different architecture.*d_model: checkpoint=8 "
                       r"config=16.*k: checkpoint='<missing>'"):  # fmt: skip
        other.restore(checkpointing.abstract_like(_state()))
    assert other.is_better(0.1, 0.2) and not other.is_better(0.3, 0.2) and other.is_better(1, None)
