"""QuantCoder forecasting finetuning (REFERENCE.md 3.2): code classes of the next 64 frames.

Starts from a pretraining workdir (configs/pretrain.py) and predicts, for each neuron, the
teacher tokenizer's codes of the 4 future patches from its 96 source frames, the stimulus and
its identity; the codes are decoded into the 64-frame forecast. Paper settings (REFERENCE 3.1):
Adam 1e-4, coupled weight decay 5e-4 on the trainable params, batch 32, 200 epochs, focal loss
with gamma 0 and inverse-frequency class weights.

  python -m quantformer_jax.main --config=configs/forecast.py \
      --config.init_from=runs/pretrain --workdir=runs/forecast

Options: `--config.freeze_encoder` (pretrained encoder frozen), `--config.focal_gamma=2`,
`--config.loss=cross_entropy`, `--config.decoding=argmax` (decode the most likely code of each
future patch, as the paper, instead of the default expected code vector), `--config.faithful`
(argmax and raw-codebook decoding, F1; F7 activation; best-over-epochs test numbers),
`--config.init_from_checkpoint=latest`.
Selection: best `val_mse`; `workdir/test_metrics.json` holds the selected checkpoint's test
metrics (per horizon step and per neuron too).

Switches after the colon:
  runlocal  the pretraining runlocal model, 2 steps of 4 windows, 1 eval batch (tests, ~10 s).
"""

from __future__ import annotations

import ml_collections

from configs import common, pretrain


def finetune_fields(config: ml_collections.ConfigDict) -> None:
    """The fields every finetuning config (forecast, classify, baseline) shares."""
    config.model_class = "quantcoder"
    config.freeze_encoder = False  # freeze only the pretrained encoder weights (REFERENCE F13)
    config.init_from_checkpoint = "best"  # best | latest checkpoint of config.init_from
    config.focal_gamma = 0.0  # focal loss exponent for code classes (0 = weighted CE, F4)
    config.loss = "focal"  # code-class loss: focal (class-weighted) | cross_entropy
    config.optimizer.weight_decay = 5e-4  # torch-Adam coupled L2 (REFERENCE 3.1, F18)
    config.training.eval_every_epochs = 1


def quantcoder_section() -> ml_collections.ConfigDict:
    """`config.quantcoder_config`: QuantCoder's own fields (the encoder comes from config.model)."""
    from quantformer_jax.models import registry

    try:
        return registry.default_section("quantcoder")
    except ValueError:  # models/quantcoder.py not written yet
        return ml_collections.ConfigDict()


def runlocal(config: ml_collections.ConfigDict) -> None:
    """Shrinks a finetuning config to a CPU smoke run (the model = pretrain.py:runlocal's)."""
    config.data.simulated_size = "mini"
    config.model = pretrain.get_config("runlocal").model
    config.optimizer.learning_rate = 1e-3
    config.training.batch_size = 4
    config.training.num_epochs = 1
    config.training.max_steps_per_epoch = 2
    config.training.max_eval_steps = 1
    config.training.log_every_steps = 1
    config.training.checkpoint_every_steps = 2
    config.training.num_plot_examples = 0
    config.training.progress_bar = False


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    arg = common.parse_arg(arg, runlocal=False)
    config = common.get_base_config()
    config.task = "forecast"
    finetune_fields(config)
    config.quantcoder_config = quantcoder_section()
    # Decoder input per future patch (training/targets.py forecast_embeddings): "expected" =
    # softmax(code logits) @ C'[class codes], "argmax" = the most likely class's code (the paper;
    # forced by config.faithful). Measured on `make compare`: README "Measured results".
    config.decoding = "expected"
    if arg.runlocal:
        runlocal(config)
    return config
