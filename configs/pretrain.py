"""Tokenizer pretraining (QuantFormer VQ autoencoder) on the drifting-gratings windows.

The paper's run (REFERENCE.md 2.1): d_model 128, 8 heads, 2 + 2 layers, K = 512, Adam 1e-4,
batch of 32 windows (neurons flattened and balanced into rows), 200 epochs, mask ratio 0.2,
beta 1, no weight decay, no scheduler. On the Allen cache:

  python -m quantformer_jax.main --config=configs/pretrain.py \
      --config.data.cache_dir=/path/to/allen_cache --workdir=runs/pretrain

Without `data.cache_dir` it runs on the simulated Observatory (built on first use).
Selection: best `val_recon_mse` (unmasked validation windows); final `test_*` metrics.
Step time at this size (benchmarks/tokenizer_step.py, 2 shared CPU cores under load ~7, so
roughly 3-4x slower than an idle machine): 1.28 s/step at M = 256 rows, 5.2 s at 1024,
10.4 s at 2048; ~37 s compile per row bucket. Use a GPU (requirements-cuda.txt) for real runs.

Switches after the colon:
  runlocal  tiny model, 2 steps of 8 windows, one row bucket: the smoke run the tests use
            (~30-90 s cold on 2 busy cores, dominated by XLA compiles).
  cpu       a CPU-sized schedule on the simulated mini Observatory:

  python -m quantformer_jax.main --config=configs/pretrain.py:cpu --workdir=runs/pretrain_cpu

  Measured (420 steps, 396 s wall / 143 s CPU on 2 shared cores): test Pearson 0.572
  (val 0.526), test Pearson on active neuron-trials 0.803, test recon MSE 0.0053, codebook
  usage 0.95 of K = 256 (perplexity 108). The brief's 0.9 Pearson over all held-out rows is not
  reachable on these data: most rows are inactive and mostly recording noise; even the
  noise-free simulated trace correlates only 0.54 with the observed test windows (0.87 on
  active rows), and 10 codes of 8 bits per window cannot encode the noise.
"""

from __future__ import annotations

from configs import common


def get_config(arg: str | None = None):
    arg = common.parse_arg(arg, runlocal=False, cpu=False)
    config = common.get_base_config()
    config.task = "pretrain"
    # The paper's settings live in configs/common.py (tokenizer_config, optimizer_config,
    # training_config); pretraining uses no weight decay (REFERENCE.md 2.1).
    config.optimizer.weight_decay = 0.0
    config.training.eval_every_epochs = 1
    config.training.checkpoint_every_steps = 1000

    if arg.cpu:
        config.data.simulated_size = "mini"
        config.model.d_model = 64
        config.model.num_heads = 4
        config.model.num_layers = 2
        config.model.d_ff = 256
        config.model.codebook_size = 256
        config.optimizer.learning_rate = 1e-3
        config.training.num_epochs = 60
        config.training.log_every_steps = 10
        config.training.checkpoint_every_steps = 200
        config.training.eval_every_epochs = 5

    if arg.runlocal:
        config.data.simulated_size = "mini"
        config.data.row_buckets = (256,)  # one shape: train and eval compile once each
        config.model.d_model = 16
        config.model.num_heads = 2
        config.model.num_layers = 1
        config.model.d_ff = 32
        config.model.codebook_size = 32
        config.optimizer.learning_rate = 1e-3
        config.training.batch_size = 8
        config.training.num_epochs = 1
        config.training.max_steps_per_epoch = 2
        config.training.max_eval_steps = 1
        config.training.log_every_steps = 1
        config.training.checkpoint_every_steps = 1
        config.training.num_plot_examples = 4
    return config
