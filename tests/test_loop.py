"""Tests for training/loop.py with a toy task: NaN stop, crash resume, selection, patience."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import common
from quantformer_jax import checkpointing, metric_writer
from quantformer_jax.training import loop
from quantformer_jax.training.train_state import TrainState

_TX = optax.adam(0.1)
_STEPS = 4  # batches per epoch


@jax.jit
def _init():
    params = {"w": jnp.zeros((3,), jnp.float32)}
    return TrainState.create(params=params, tx=_TX, rng=jax.random.PRNGKey(0))


def _train_step(state, batch, *, axis_name):
    del axis_name
    noise = 0.01 * jax.random.normal(state.step_keys(["n"])["n"], batch["y"].shape)

    def loss_fn(w):
        return jnp.mean(jnp.square(batch["x"] @ w - batch["y"] - noise)) + batch["poison"][0]

    loss, grads = jax.value_and_grad(loss_fn)(state.params["w"])
    state, _ = state.apply_gradients({"w": grads}, tx=_TX)
    return state, {"loss": (loss, jnp.ones(()))}


def _eval_step(state, batch, *, axis_name):
    del axis_name
    err = jnp.sum(jnp.square(batch["x"] @ state.params["w"] - batch["y"]))
    return {"mse": (err, jnp.asarray(batch["y"].size, jnp.float32))}


def _batch(epoch, step, poison=0.0):
    rs = np.random.RandomState(100 * epoch + step)
    x = rs.randn(4, 3).astype(np.float32)
    return {"x": x, "y": x @ np.array([1.0, -2.0, 0.5], np.float32), "poison": np.full(4, poison)}


def _task(poison_at=None, crash_at=None, val_sign=1.0):
    def train_batches(epoch, start):
        for step in range(start, _STEPS):
            if (epoch, step) == crash_at:
                raise KeyboardInterrupt("simulated crash")
            yield _batch(epoch, step, np.nan if (epoch, step) == poison_at else 0.0)

    def eval_batches(split):
        batch = _batch(99, 0)
        return [dict(batch, y=val_sign * batch["y"])]

    return loop.Task(
        name="toy",
        init_state=_init,
        train_step=_train_step,
        eval_step=_eval_step,
        train_batches=train_batches,
        eval_batches=eval_batches,
        architecture={"model": "toy", "width": 3},
        selection_metric="val_mse",
    )


def _config(**training):
    config = common.get_base_config()
    defaults = dict(num_epochs=2, log_every_steps=1, checkpoint_every_steps=3, num_devices=1)
    config.training.update({**defaults, "progress_bar": False, **training})
    return config


def _final_state(workdir):
    ckpt = checkpointing.Checkpointer(str(workdir), architecture={"model": "toy", "width": 3})
    state, meta = ckpt.restore(checkpointing.abstract_like(_init()))
    ckpt.close()
    return state, meta


def test_nan_stops_naming_the_steps_and_keeps_the_last_good_checkpoint(tmp_path):
    with pytest.raises(FloatingPointError, match=r"non-finite train_loss in train steps 6\.\.6 "
                       r"\(epoch 1\).*last good checkpoint \(step 4\)"):  # fmt: skip
        loop.run(_task(poison_at=(1, 1)), _config(), str(tmp_path))
    state, meta = _final_state(tmp_path)
    assert int(state.step) == 4  # the after-eval checkpoint of epoch 0 (step 4) is newest
    assert np.isfinite(np.asarray(state.params["w"])).all()
    assert meta["progress"]["epoch"] == 1


def test_crash_and_rerun_equals_uninterrupted_run(tmp_path):
    full = loop.run(_task(), _config(), str(tmp_path / "full"))
    with pytest.raises(KeyboardInterrupt):
        loop.run(_task(crash_at=(1, 2)), _config(), str(tmp_path / "crash"))
    assert _final_state(tmp_path / "crash")[1]["progress"]["step_in_epoch"] == 2  # mid-epoch
    resumed = loop.run(_task(), _config(), str(tmp_path / "crash"))
    a, b = _final_state(tmp_path / "full")[0], _final_state(tmp_path / "crash")[0]
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert full["test_mse"] == resumed["test_mse"]
    steps = [r["step"] for r in metric_writer.read_metrics(str(tmp_path / "crash")) if
             "train_loss" in r]  # fmt: skip
    assert steps == list(range(1, 9))  # the resumed run continued at step 5, nothing retrained


def test_best_checkpoint_and_patience(tmp_path):
    # Validation targets of the opposite sign: the val error grows as training fits the truth.
    out = loop.run(_task(val_sign=-1.0), _config(num_epochs=5, patience=1), str(tmp_path))
    _, meta = _final_state(tmp_path)
    assert meta["progress"]["stopped_early"] and meta["progress"]["best_step"] == 4
    ckpt = checkpointing.Checkpointer(str(tmp_path), architecture={"model": "toy", "width": 3})
    assert ckpt.best_step() == 4 and ckpt.latest_step() == 8
    ckpt.close()
    assert "test_mse" in out and "val_mse" in out
