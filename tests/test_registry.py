"""Tests of models/registry.py and configs/baseline.py: names, tasks, defaults, presets.

No model is initialised here (cheap): the factory must return the right class with the config
section's values, refuse unknown names / wrong tasks naming the config key, and the baseline
config must hold the original CLI defaults (REFERENCE 4.1, B10) and the crossformer sweep preset.
"""

import numpy as np
import pytest

from configs import baseline as baseline_config
from configs import forecast as forecast_config
from quantformer_jax.baselines import autoformer, crossformer, informer, lstm
from quantformer_jax.models import quantcoder, registry


def test_unknown_model_is_an_error_naming_the_config_key():
    config = baseline_config.get_config("model=informer")
    config.model_class = "transformerx"
    with pytest.raises(ValueError, match=r"config\.model_class='transformerx'"):
        registry.model_from_config(config, num_neurons=4)
    with pytest.raises(ValueError, match="model_class"):
        baseline_config.get_config("model=nope")


def test_a_model_cannot_run_a_task_it_does_not_support():
    with pytest.raises(ValueError, match="cannot run config.task='classify'"):
        baseline_config.get_config("model=autoregressive_lstm,task=classify")
    with pytest.raises(ValueError, match="cannot run config.task='forecast'"):
        baseline_config.get_config("model=majority,task=forecast")


def test_baseline_config_needs_a_model_and_rejects_unknown_switches():
    with pytest.raises(ValueError, match="model=<name>"):
        baseline_config.get_config()
    with pytest.raises(KeyError, match="unknown config argument 'modle'"):
        baseline_config.get_config("modle=informer")


@pytest.mark.parametrize(
    "name,cls,section,width",
    [
        ("informer", informer.Informer, "informer_config", "d_model"),
        ("autoformer", autoformer.Autoformer, "autoformer_config", "d_model"),
        ("crossformer", crossformer.Crossformer, "crossformer_config", "d_model"),
        ("autoregressive_lstm", lstm.AutoregressiveLSTM, "lstm_config", "hidden_size"),
    ],
)
def test_original_defaults_and_factory(name, cls, section, width):
    config = baseline_config.get_config(f"model={name},task=forecast")
    assert config[section][width] == 128  # REFERENCE 4.1 / B10
    assert config[section].get("num_layers", config[section].get("e_layers")) == 2
    assert config.optimizer.learning_rate == 1e-4 and config.optimizer.weight_decay == 5e-4
    assert config.training.batch_size == 32 and config.training.num_epochs == 200
    config[section][width] = 24
    model = registry.model_from_config(config, num_neurons=5)
    assert isinstance(model, cls)
    assert getattr(model.config, width) == 24  # the section's values reach the model
    assert model.config.forecast_frames == config.data.forecast_frames


def test_classifiers_get_the_classify_task():
    config = baseline_config.get_config("model=informer,task=classify")
    assert registry.model_from_config(config, num_neurons=5).task == "classify"
    config = baseline_config.get_config("model=lstm_classifier,task=classify")
    assert isinstance(registry.model_from_config(config, 5), lstm.LSTMClassifier)


def test_faithful_switch_reaches_the_lstm_rollout():
    config = baseline_config.get_config("model=autoregressive_lstm")
    assert not registry.model_from_config(config, 5).config.faithful_rollout
    config.faithful = True
    assert registry.model_from_config(config, 5).config.faithful_rollout  # REFERENCE B1


def test_crossformer_sweep_preset():
    config = baseline_config.get_config("model=crossformer,task=forecast,sweep")
    assert config.crossformer_config.d_model == 32
    assert config.training.batch_size == 128 and config.training.num_epochs == 250
    with pytest.raises(ValueError, match="crossformer only"):
        baseline_config.get_config("model=informer,sweep")


def test_quantcoder_from_the_forecast_config():
    config = forecast_config.get_config("runlocal")
    model = registry.model_from_config(config, num_neurons=7, num_classes=5)
    assert isinstance(model, quantcoder.QuantCoder)
    assert model.config.num_classes == 5 and model.config.num_neurons == 7
    assert model.config.tokenizer.d_model == config.model.d_model


def test_naive_models_share_the_call_surface():
    config = baseline_config.get_config("model=persistence")
    model = registry.model_from_config(config, num_neurons=3)
    assert isinstance(model, registry.NaiveModel) and registry.is_naive("persistence")
    assert model.init(None, {}) == {}
    src = np.arange(2 * 3 * 96, dtype=np.float32).reshape(2, 3, 96)
    out = model.apply({}, {"src": src, "stim": np.zeros((2, 4))}, train=False)
    np.testing.assert_array_equal(out["forecast"], np.repeat(src[..., -1:], 64, axis=-1))
    out, updated = model.apply({}, {"src": src}, train=True, mutable=["batch_stats"])
    assert updated == {}
    average = registry.model_from_config(baseline_config.get_config("model=trial_average"), 3)
    with pytest.raises(RuntimeError, match="before fit"):
        average.apply({}, {"src": src, "condition_id": np.zeros(2, np.int32)}, train=False)
