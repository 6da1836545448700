"""Tests for quantformer_jax.baselines.lstm: shapes, causality, rollout feedback, B1, BatchNorm."""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from quantformer_jax.baselines import lstm

S, F = 5, 3
CFG = lstm.LSTMConfig(hidden_size=8, num_layers=1, forecast_frames=F)


@functools.cache
def _fns(model):
    """Jitted init/apply per model (eager apply would recompile the scans on every call)."""
    init = jax.jit(model.init, static_argnames="train")
    apply = jax.jit(model.apply, static_argnames=("train", "mutable"))
    return init, apply


def _init(model, inputs, seed=0):
    # The rbg generator compiles about twice as fast as threefry; the model code is the same.
    return _fns(model)[0](jax.random.key(seed, impl="rbg"), inputs, train=False)


def _apply(model, variables, inputs, **kwargs):
    return _fns(model)[1](variables, inputs, **kwargs)


def _inputs(batch, neurons, seed=0, future=True):
    rng = np.random.default_rng(seed)
    out = {
        "src": jnp.asarray(rng.normal(size=(batch, neurons, S)), jnp.float32),
        "stim": jnp.asarray(rng.uniform(size=(batch, 4)), jnp.float32),
    }
    if future:
        out["future"] = jnp.asarray(rng.normal(size=(batch, neurons, F)), jnp.float32)
    return out


@pytest.fixture(scope="module")
def forecaster():
    model = lstm.AutoregressiveLSTM(CFG)
    return model, _init(model, _inputs(2, 3))


@pytest.fixture(scope="module")
def classifier():
    model = lstm.LSTMClassifier(CFG)  # its parameters do not depend on B or N
    return model, _init(model, _inputs(2, 3), seed=2)


@pytest.mark.parametrize("batch,neurons", [(1, 1), (2, 3)])
def test_shapes(batch, neurons, forecaster, classifier):
    inputs = _inputs(batch, neurons)
    model = forecaster[0]
    variables = forecaster[1] if neurons == 3 else _init(model, inputs)
    for train in (False, True):
        forecast = _apply(model, variables, inputs, train=train)["forecast"]
        assert forecast.shape == (batch, neurons, F)
    clf, cvars = classifier
    assert _apply(clf, cvars, inputs, train=False)["logits"].shape == (batch, neurons, 2)


def test_eval_forecast_never_reads_the_future(forecaster):
    model, variables = forecaster
    inputs = _inputs(2, 3)
    base = _apply(model, variables, inputs, train=False)["forecast"]
    changed = dict(inputs, future=inputs["future"] + 100.0)
    absent = {k: v for k, v in inputs.items() if k != "future"}
    np.testing.assert_array_equal(_apply(model, variables, changed, train=False)["forecast"], base)
    np.testing.assert_array_equal(_apply(model, variables, absent, train=False)["forecast"], base)
    # Teacher forcing does read it (the last future frame is never an input).
    forced = _apply(model, variables, inputs, train=True)["forecast"]
    assert not np.allclose(_apply(model, variables, changed, train=True)["forecast"], forced)
    last_only = inputs["future"].at[..., -1].add(100.0)
    np.testing.assert_allclose(
        _apply(model, variables, dict(inputs, future=last_only), train=True)["forecast"], forced
    )
    with pytest.raises(KeyError, match="future"):
        _apply(model, variables, absent, train=True)


def test_rollout_feeds_back_its_own_predictions(forecaster):
    model, variables = forecaster
    inputs = _inputs(2, 3, seed=1)
    rollout = _apply(model, variables, inputs, train=False)["forecast"]
    # Teacher forcing with the rollout as the "true" future reproduces the rollout exactly: each
    # step t saw the source and the model's own predictions < t, and nothing else.
    forced = _apply(model, variables, dict(inputs, future=rollout), train=True)["forecast"]
    np.testing.assert_allclose(forced, rollout, rtol=1e-5, atol=1e-6)
    # With the true future fed instead, frames after the first differ: the feedback matters.
    truth_fed = _apply(model, variables, inputs, train=True)["forecast"]
    np.testing.assert_allclose(truth_fed[..., 0], rollout[..., 0], rtol=1e-5, atol=1e-6)
    assert not np.allclose(truth_fed[..., 1:], rollout[..., 1:])


def test_faithful_rollout_reproduces_the_original_loop(forecaster):
    _, variables = forecaster
    inputs = _inputs(2, 3, seed=2, future=False)
    faithful = lstm.AutoregressiveLSTM(CFG.replace(faithful_rollout=True))
    got = _apply(faithful, variables, inputs, train=False)["forecast"]
    # The original eval loop (REFERENCE.md 4.2): tgt_tmp = src[-1:]; at step t the teacher-forced
    # forward runs on cat(src[:-1], tgt_tmp[:-1]) and its last output is appended to tgt_tmp.
    # Our teacher-forced forward with forecast_frames = len(tgt_tmp) is that forward.
    tgt_tmp = inputs["src"][..., -1:]
    expected = []
    for k in range(1, F + 1):
        step_model = lstm.AutoregressiveLSTM(CFG.replace(forecast_frames=k))
        batch = {"src": inputs["src"][..., :-1], "stim": inputs["stim"], "future": tgt_tmp}
        out = _apply(step_model, variables, batch, train=True)["forecast"][..., -1:]
        expected.append(out)
        tgt_tmp = jnp.concatenate([tgt_tmp, out], axis=-1)
    np.testing.assert_allclose(got, jnp.concatenate(expected, -1), rtol=1e-5, atol=1e-6)
    correct = _apply(lstm.AutoregressiveLSTM(CFG), variables, inputs, train=False)["forecast"]
    assert not np.allclose(got, correct)
    # The original's frame 1 is our correct frame 0 (the one-step shift of B1).
    np.testing.assert_allclose(got[..., 1], correct[..., 0], rtol=1e-5, atol=1e-6)


def test_classifier_ignores_future_and_batchnorm_updates_only_in_train(classifier):
    clf, variables = classifier
    inputs = _inputs(2, 3, seed=3)
    changed = dict(inputs, future=inputs["future"] * 7.0)
    out, new_state = _apply(clf, variables, inputs, train=True, mutable="batch_stats")
    out_changed, _ = _apply(clf, variables, changed, train=True, mutable="batch_stats")
    np.testing.assert_array_equal(out["logits"], out_changed["logits"])
    stats_before = jax.tree.leaves(variables["batch_stats"])
    stats_after = jax.tree.leaves(new_state["batch_stats"])
    assert any(not np.allclose(a, b) for a, b in zip(stats_before, stats_after, strict=True))
    # Eval uses the running averages and leaves them untouched (and reads no future).
    eval_out, eval_state = _apply(clf, variables, inputs, train=False, mutable="batch_stats")
    for a, b in zip(stats_before, jax.tree.leaves(eval_state["batch_stats"]), strict=True):
        np.testing.assert_array_equal(a, b)
    no_future = {k: v for k, v in inputs.items() if k != "future"}
    np.testing.assert_array_equal(
        _apply(clf, variables, no_future, train=False)["logits"], eval_out["logits"]
    )


def test_config_from_section():
    section = ml_collections.ConfigDict({"hidden_size": 16, "num_layers": 1, "other_key": 3})
    config = lstm.LSTMConfig.from_config(section, faithful_rollout=True)
    assert (config.hidden_size, config.num_layers, config.faithful_rollout) == (16, 1, True)
    assert config.forecast_frames == 64  # default
    with pytest.raises(KeyError):
        lstm.LSTMConfig.from_config(section, hiden_size=4)
    with pytest.raises(ValueError, match="hidden_size"):
        lstm.LSTMConfig.from_config({"hidden_size": 4})
