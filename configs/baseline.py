"""Baselines through the finetuning trainers: `configs/baseline.py:model=<name>,task=<task>`.

Models (models/registry.py): trained `autoregressive_lstm` (forecast), `lstm_classifier`
(classify), `informer`, `autoformer`, `crossformer` (both tasks); parameter-free `persistence`,
`source_mean`, `trial_average` (forecast) and `majority` (classify), evaluated without training.
Defaults = the original CLI defaults (REFERENCE 4.1, B10): d_model 128, 8 heads, 2 layers,
d_ff 512, LSTM hidden 128 x 2 layers, Adam 1e-4, coupled weight decay 5e-4, batch 32, 200 epochs.

  python -m quantformer_jax.main --config=configs/baseline.py:model=informer,task=forecast \
      --workdir=runs/informer_forecast

Model hyperparameters live in the model's section, e.g. `--config.informer_config.d_model=64`
(`lstm_config` serves both LSTMs). Selection as the QuantCoder trainers (val MSE / val balanced
accuracy); `workdir/test_metrics.json` holds the selected checkpoint's test metrics.

Switches after the colon:
  model=<name>        required.
  task=forecast|classify (default forecast).
  sweep               the original sweep preset (crossformer: d_model 32, batch 128, 250 epochs).
  runlocal            tiny widths, 1 layer, 2 steps of 4 windows, 1 eval batch (tests).
"""

from __future__ import annotations

import ml_collections

from configs import common, forecast

# Tiny sizes of `runlocal` (compile time dominates tests), for the keys a section has.
_RUNLOCAL_SIZES = {"d_model": 8, "n_heads": 2, "d_ff": 16, "hidden_size": 8, "num_layers": 1,
                   "e_layers": 1, "d_layers": 1}  # fmt: skip


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    from quantformer_jax.models import registry

    arg = common.parse_arg(arg, model="", task="forecast", sweep=False, runlocal=False)
    if not arg.model:
        raise ValueError(
            "configs/baseline.py needs model=<name> after the colon; known: "
            + ", ".join(m for m in registry.MODEL_CLASSES if m != "quantcoder")
        )
    if arg.model == "quantcoder":
        raise ValueError("configs/baseline.py: use configs/forecast.py or configs/classify.py")
    registry.check_model_class(arg.model, arg.task)
    config = common.get_base_config()
    config.task = arg.task
    forecast.finetune_fields(config)
    config.model_class = arg.model
    section = registry.section_name(arg.model)
    if section:
        config[section] = registry.default_section(arg.model)
    if arg.sweep:
        if arg.model != "crossformer":
            raise ValueError("configs/baseline.py: the sweep preset exists for crossformer only")
        config[section].d_model = 32  # sweep_config.json (REFERENCE 0, B10)
        config.training.batch_size = 128
        config.training.num_epochs = 250
    if arg.runlocal:
        forecast.runlocal(config)
        for key, value in _RUNLOCAL_SIZES.items():
            if section and key in config[section]:
                config[section][key] = value
    return config
