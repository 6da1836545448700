"""QuantCoder activation classification (REFERENCE.md 3.3): will each neuron respond?

From a neuron's 96 source frames, the stimulus and its identity (prompts CLS, stim, neuron),
predict its tsai_wen activation label for the upcoming stimulus. Unweighted cross-entropy;
Adam 1e-4, coupled weight decay 5e-4, batch 32, 200 epochs (REFERENCE 3.1).

  python -m quantformer_jax.main --config=configs/classify.py \
      --config.init_from=runs/pretrain --workdir=runs/classify

`--config.freeze_encoder` freezes the pretrained encoder only (F13). Without `init_from` the
encoder starts from scratch. Selection: best `val_balanced_accuracy`; `workdir/test_metrics.json`
holds the selected checkpoint's test metrics.

Switches after the colon:
  runlocal  the pretraining runlocal model, 2 steps of 4 windows, 1 eval batch (tests).
"""

from __future__ import annotations

import ml_collections

from configs import common, forecast


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    arg = common.parse_arg(arg, runlocal=False)
    config = common.get_base_config()
    config.task = "classify"
    forecast.finetune_fields(config)
    config.quantcoder_config = forecast.quantcoder_section()
    if arg.runlocal:
        forecast.runlocal(config)
    return config
