"""Tests for the Crossformer baseline (tiny dims): shapes, scales, no future, decoder sum."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from baseline_helpers import HORIZON, fast_variables, make_inputs, output_shapes, uses_input

from quantformer_jax.baselines import interface
from quantformer_jax.baselines.crossformer import (
    Crossformer,
    CrossformerConfig,
    merge_segments,
)

# The original depth (2 encoder blocks: 6 -> 2 segments) for traced tests; one block (no
# merging, 2 decoder layers) for the tests that compile.
CONFIG = CrossformerConfig(d_model=16, n_heads=2, e_layers=2, d_ff=32, factor=3)
SMALL = CrossformerConfig(d_model=16, n_heads=2, e_layers=1, d_ff=32, factor=3)


@pytest.fixture(scope="module")
def forecaster():
    model = Crossformer(SMALL, "forecast")
    inputs = make_inputs(2, 3)
    return model, inputs, fast_variables(model, inputs)


@pytest.mark.parametrize("task", interface.TASKS)
@pytest.mark.parametrize("batch,neurons,train", [(2, 3, False), (1, 1, True)])
def test_output_shapes(task, batch, neurons, train):
    shapes = output_shapes(Crossformer(SMALL, task), make_inputs(batch, neurons), train=train)
    expected = (batch, neurons, HORIZON) if task == "forecast" else (batch, neurons, 2)
    assert shapes == {"forecast" if task == "forecast" else "logits": expected}


def test_segment_counts_per_scale():
    e_layers, segments = CONFIG.e_layers, [6, 6, 2]  # embedding, block 0, block 1 (merged)
    model = Crossformer(CONFIG)
    inputs = make_inputs(2, 3)
    variables = jax.eval_shape(
        functools.partial(model.init, train=False), jax.random.key(0), inputs
    )
    apply = functools.partial(model.apply, train=False, mutable=["intermediates"])
    _, state = jax.eval_shape(apply, variables, inputs)
    scales = state["intermediates"]["encoder_scales"]
    assert [scale.shape for scale in scales] == [(2, 3, s, 16) for s in segments]
    # One router table per encoder block, sized to its segments.
    assert [variables["params"][f"encoder_{i}"]["router"].shape[0] for i in range(e_layers)] == (
        segments[1:]
    )
    layer_predictions = state["intermediates"]["layer_predictions"]
    assert [p.shape for p in layer_predictions] == [(2, 3, 4, 16)] * (e_layers + 1)


def test_merge_segments_pads_with_the_last_segments():
    x = jnp.broadcast_to(jnp.arange(6.0)[None, None, :, None], (1, 2, 6, 1))  # value = index
    merged = np.asarray(merge_segments(x, 4))
    assert merged.shape == (1, 2, 2, 4)
    np.testing.assert_array_equal(merged[0, 0], [[0, 1, 2, 3], [4, 5, 4, 5]])
    assert merge_segments(jnp.zeros((1, 1, 8, 3)), 4).shape == (1, 1, 2, 12)  # no padding


def test_never_reads_the_future(forecaster):
    # Eval mode is also checked numerically below.
    model, inputs, variables = forecaster
    assert not uses_input(model, variables, inputs, "future", train=True)


def test_forecast_is_the_sum_of_layer_predictions_and_uses_the_stimulus(forecaster):
    model, inputs, variables = forecaster
    apply = jax.jit(functools.partial(model.apply, train=False, mutable=["intermediates"]))
    out, state = apply(variables, inputs)
    forecast = np.asarray(out["forecast"])
    predictions = state["intermediates"]["layer_predictions"]  # [B, N, 4 segments, 16] each
    assert len(predictions) == SMALL.e_layers + 1
    total = sum(np.asarray(p) for p in predictions).reshape(2, 3, HORIZON)
    np.testing.assert_allclose(forecast, total, rtol=1e-6, atol=1e-6)
    assert np.abs(np.asarray(predictions[1])).max() > 1e-3  # every layer contributes
    # Deterministic, blind to the future, and the stimulus reaches the output.
    np.testing.assert_array_equal(forecast, apply(variables, inputs)[0]["forecast"])
    other_future = {**inputs, "future": inputs["future"] * -5.0 + 1.0}
    np.testing.assert_array_equal(forecast, apply(variables, other_future)[0]["forecast"])
    other_stim = {**inputs, "stim": inputs["stim"][::-1]}
    assert np.abs(forecast - np.asarray(apply(variables, other_stim)[0]["forecast"])).max() > 1e-4


def test_classifier_is_a_linear_head_on_each_neurons_forecast():
    # Traced only (its forecast path is the one computed above): Dense(F -> 2) per neuron.
    model = Crossformer(SMALL, "classify")
    inputs = make_inputs(2, 3)
    variables = jax.eval_shape(
        functools.partial(model.init, train=False), jax.random.key(0), inputs
    )
    head = variables["params"]["cls_head"]
    assert (head["kernel"].shape, head["bias"].shape) == ((HORIZON, 2), (2,))
    forecaster_params = Crossformer(SMALL, "forecast").init
    forecast_variables = jax.eval_shape(
        functools.partial(forecaster_params, train=False), jax.random.key(0), inputs
    )
    assert set(variables["params"]) - set(forecast_variables["params"]) == {"cls_head"}


def test_config_validation_and_from_config():
    config = CrossformerConfig.from_config({"d_model": 32, "seg_len": 8, "n_layers": 9})
    assert (config.d_model, config.seg_len, config.win_size) == (32, 8, 4)
    with pytest.raises(ValueError, match="n_heads"):
        CrossformerConfig(d_model=30, n_heads=4)
