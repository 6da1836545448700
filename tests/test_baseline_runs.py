"""Every registered baseline through the SAME forecasting / classification trainers, tiny size.

`configs/baseline.py:model=<name>,task=<task>,runlocal` on the mini Observatory. Full
`train_and_evaluate` runs (2 steps + selected-checkpoint test) for the LSTMs and the
parameter-free models (0 steps; their numbers are pinned to metrics.py on the raw data); for the
transformer baselines (marked slow: their compiles dominate) one jitted train step of the
trainer's own `train_step` followed by its evaluation.
"""

import functools
import json
import os

import jax
import numpy as np
import pytest

from configs import baseline as baseline_config
from quantformer_jax import metrics
from quantformer_jax.data import pipeline
from quantformer_jax.training import classify, finetune, forecast

pytestmark = pytest.mark.usefixtures("jax_cache")


def _config(observatory, model, task):
    config = baseline_config.get_config(f"model={model},task={task},runlocal")
    config.data.cache_dir = str(observatory)
    config.training.num_devices = 1
    return config


def _first_test_batch(trainer):
    return next(iter(trainer.setup.eval_batches("test")))


def _one_step_then_evaluate(trainer):
    state = trainer.task.init_state()
    step = jax.jit(functools.partial(trainer.task.train_step, axis_name=None))
    batch = next(iter(trainer.setup.train_batches(0, 0)))
    new_state, train_metrics = step(state, batch)
    assert int(new_state.step) == 1 and np.isfinite(float(train_metrics["loss"][0]))
    changed = jax.tree.map(lambda a, b: not np.array_equal(a, b), state.params, new_state.params)
    assert any(jax.tree.leaves(changed))
    return new_state, trainer.evaluate(new_state, "test")


def test_forecasting_baselines(mini_observatory, tmp_path):
    # Trained, full run: MSE loss on the forecast, teacher forcing in train mode.
    workdir = str(tmp_path / "autoregressive_lstm")
    results = forecast.train_and_evaluate(
        _config(mini_observatory, "autoregressive_lstm", "forecast"), workdir
    )
    assert results["selected_test_loss"] == pytest.approx(results["selected_test_mse"], rel=1e-5)
    payload = json.load(open(os.path.join(workdir, finetune.TEST_METRICS_FILE)))
    assert payload["selected_step"] == 2 and len(payload["metrics"]["mse_step"]) == 64

    # Parameter-free: 0 train steps through the loop (persistence), the same evaluation for all;
    # the numbers are pinned to metrics.py applied to forecasts built here with numpy.
    workdir = str(tmp_path / "persistence")
    results = forecast.train_and_evaluate(
        _config(mini_observatory, "persistence", "forecast"), workdir
    )
    payload = json.load(open(os.path.join(workdir, finetune.TEST_METRICS_FILE)))
    assert payload["selected_step"] == 0
    for name in ("persistence", "source_mean", "trial_average"):
        trainer = forecast.build(_config(mini_observatory, name, "forecast"))
        values = trainer.evaluate(trainer.task.init_state(), "test")  # runlocal: one batch
        batch = _first_test_batch(trainer)
        s = trainer.setup.source_frames
        src, future = batch["x"][..., :s], batch["x"][..., s:]
        if name == "persistence":
            expected_forecast = np.repeat(src[..., -1:], 64, axis=-1)
            assert values["mse"] == pytest.approx(results["selected_test_mse"], rel=1e-6)
        elif name == "source_mean":
            expected_forecast = np.repeat(src.mean(-1, keepdims=True), 64, axis=-1)
            assert values["mase"] == pytest.approx(1.0, rel=1e-5)  # MASE's own naive forecast
        else:
            train = trainer.setup.dataset.splits["train"]
            expected_forecast = np.stack([
                train.traces[train.condition_id == c][..., s:].mean(0)
                if np.any(train.condition_id == c) else train.traces[..., s:].mean(0)
                for c in batch["condition_id"]
            ])  # fmt: skip
        expected = metrics.forecast_metrics(expected_forecast, future, src, batch["valid"])
        assert values["mse"] == pytest.approx(expected["mse"], rel=1e-4), name
        assert values["mae"] == pytest.approx(expected["mae"], rel=1e-4), name


def test_classification_baselines(mini_observatory, tmp_path):
    # LSTM classifier: BatchNorm statistics change in train mode and are used in eval.
    workdir = str(tmp_path / "lstm_classifier")
    config = _config(mini_observatory, "lstm_classifier", "classify")
    results = classify.train_and_evaluate(config, workdir)
    assert 0.0 <= results["selected_test_balanced_accuracy"] <= 1.0
    trainer, state = finetune.load_run(classify.build, config, workdir)
    fresh = trainer.task.init_state()
    assert "batch_stats" in state.model_state
    moved = jax.tree.map(lambda a, b: not np.allclose(a, b), state.model_state["batch_stats"],
                         fresh.model_state["batch_stats"])  # fmt: skip
    assert any(jax.tree.leaves(moved))

    # Majority: per-neuron train majority, no train step, accuracy pinned to the labels.
    config = _config(mini_observatory, "majority", "classify")
    trainer = classify.build(config)
    results = {f"selected_test_{k}": v
               for k, v in trainer.evaluate(trainer.task.init_state(), "test").items()}  # fmt: skip
    train_labels = trainer.setup.dataset.splits["train"].labels
    majority = (2 * train_labels.sum(axis=0) > len(train_labels)).astype(np.int32)  # [N]
    batch = _first_test_batch(trainer)
    keep = batch["valid"]
    expected = np.mean(batch["labels"][keep] == majority[None])
    assert results["selected_test_accuracy"] == pytest.approx(expected)


@pytest.mark.slow  # the transformers' train-step compiles are ~half of this file's time
def test_transformer_baselines_train_and_evaluate(mini_observatory):
    """Each transformer baseline: one step of the trainer's train_step, then its evaluation.

    Informer runs the classification task; Autoformer and Crossformer forecasting (Crossformer's
    classifier is a head on this same forecast, covered by test_crossformer.py).
    """
    for name in ("autoformer", "crossformer"):
        trainer = forecast.build(_config(mini_observatory, name, "forecast"))
        _, values = _one_step_then_evaluate(trainer)
        assert np.isfinite(values["mse"]) and len(values["mae_step"]) == 64, name
    trainer = classify.build(_config(mini_observatory, "informer", "classify"))
    _, values = _one_step_then_evaluate(trainer)
    assert 0.0 <= values["balanced_accuracy"] <= 1.0
    assert values["count"] == pipeline.num_batches(4, 4) * 4 * trainer.setup.num_neurons
