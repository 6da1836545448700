"""Tests for the Autoformer baseline (tiny dims): shapes, no future, decomposition, delays."""

import functools

import jax
import numpy as np
import pytest
from baseline_helpers import HORIZON, fast_variables, make_inputs, output_shapes, uses_input

from quantformer_jax.baselines import interface
from quantformer_jax.baselines.autoformer import (
    Autoformer,
    AutoformerConfig,
    auto_correlation,
    num_delays,
    series_decomp,
)

CONFIG = AutoformerConfig(d_model=16, n_heads=2, e_layers=1, d_layers=1, d_ff=32)
AUTO_CORRELATION = jax.jit(auto_correlation, static_argnames=("factor", "shared_delays"))


@pytest.mark.parametrize("task", interface.TASKS)
@pytest.mark.parametrize("batch,neurons,train", [(2, 3, False), (1, 1, True)])
def test_output_shapes(task, batch, neurons, train):
    shapes = output_shapes(Autoformer(CONFIG, task), make_inputs(batch, neurons), train=train)
    expected = (batch, neurons, HORIZON) if task == "forecast" else (batch, neurons, 2)
    assert shapes == {"forecast" if task == "forecast" else "logits": expected}


def test_faithful_fixed_time_embedding_traces_for_any_neuron_count():
    config = AutoformerConfig(d_model=16, n_heads=2, e_layers=1, d_layers=1, time_embedding="fixed")
    shapes = output_shapes(Autoformer(config), make_inputs(1, 1), train=False)
    assert shapes == {"forecast": (1, 1, HORIZON)}  # the original needed N >= 4


@pytest.mark.parametrize("task", interface.TASKS)
def test_never_reads_the_future_and_reads_the_stimulus(task):
    # Data flow of the traced train-mode step; eval mode is also checked numerically below.
    model = Autoformer(CONFIG, task)
    inputs = make_inputs(2, 3)
    variables = fast_variables(model, inputs)
    assert not uses_input(model, variables, inputs, "future", train=True)
    assert uses_input(model, variables, inputs, "stim", train=True)


def test_eval_is_deterministic_and_uses_the_stimulus():
    # Compiled once (forecast); the classifier is covered by the traced tests above.
    model = Autoformer(CONFIG, "forecast")
    inputs = make_inputs(2, 3)
    variables = fast_variables(model, inputs)
    apply = jax.jit(functools.partial(model.apply, train=False))
    out = np.asarray(apply(variables, inputs)["forecast"])
    assert np.isfinite(out).all()
    np.testing.assert_array_equal(out, apply(variables, inputs)["forecast"])
    other_future = {**inputs, "future": inputs["future"] * -5.0 + 1.0}
    np.testing.assert_array_equal(out, apply(variables, other_future)["forecast"])
    other_stim = {**inputs, "stim": inputs["stim"][::-1]}
    assert np.abs(out - np.asarray(apply(variables, other_stim)["forecast"])).max() > 1e-4


def test_series_decomposition_sums_back_to_the_input():
    x = np.random.default_rng(0).normal(size=(2, 96, 3)).astype(np.float32)
    seasonal, trend = jax.jit(series_decomp, static_argnums=1)(x, 3)
    seasonal, trend = np.asarray(seasonal), np.asarray(trend)
    np.testing.assert_allclose(seasonal + trend, x, rtol=0, atol=1e-6)
    # Trend = 3-point moving average, the ends padded by repeating the first / last step.
    np.testing.assert_allclose(trend[:, 1:-1], (x[:, :-2] + x[:, 1:-1] + x[:, 2:]) / 3, atol=1e-6)
    np.testing.assert_allclose(trend[:, 0], (2 * x[:, 0] + x[:, 1]) / 3, atol=1e-6)
    np.testing.assert_allclose(trend[:, -1], (x[:, -2] + 2 * x[:, -1]) / 3, atol=1e-6)


@pytest.mark.parametrize("shared_delays", [False, True])
def test_auto_correlation_finds_the_period(shared_delays):
    length, period = 64, 16
    t = np.arange(length)
    phases = np.array([0.0, 1.0, 2.5])  # channels: the same period, different phases
    wave = np.sin(2 * np.pi * t[:, None] / period + phases).astype(np.float32)  # [L, 3]
    x = np.broadcast_to(wave, (2, 2, length, 3)).copy()  # [B, H, L, dh]
    x[1] *= 2.0  # another window with the same period
    out, delays = AUTO_CORRELATION(x, x, x, factor=1, shared_delays=shared_delays)
    assert delays.shape == (2, num_delays(length, 1)) == (2, 4)
    # int(ln 64) = 4 delays: exactly the multiples of the period.
    for window in np.asarray(delays):
        assert sorted(window.tolist()) == [0, period, 2 * period, 3 * period]
    # Rolling a periodic signal by whole periods changes nothing: the weighted sum is itself.
    np.testing.assert_allclose(out, x, atol=1e-4)


def test_num_delays_matches_the_original_lengths():
    # factor 10: encoder 96, decoder 48 + 64 = 112, classifier 2 + 96 = 98 tokens.
    assert [num_delays(n, 10) for n in (96, 112, 98)] == [45, 47, 45]
    assert num_delays(16, 10) == 16  # capped at L (torch would fail)


def test_config_validation_and_from_config():
    config = AutoformerConfig.from_config({"d_model": 32, "moving_avg": 5, "other": 0})
    assert (config.d_model, config.moving_avg, config.label_len) == (32, 5, 48)
    with pytest.raises(ValueError, match="moving_avg"):
        AutoformerConfig(moving_avg=4)
    with pytest.raises(ValueError, match="time_embedding"):
        AutoformerConfig(time_embedding="none")
