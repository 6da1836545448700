"""Prints the tokenizer pretraining step time at the paper's size (never asserted in tests).

  python benchmarks/pretrain_step.py [--rows 256,1024,2048] [--steps 20] [--config-arg '']

For each row bucket M (a batch of 32 windows becomes M neuron-rows after balancing and padding),
compiles the real `pretrain.train_step` (jit, one device) and reports the compile time and the
median time of `--steps` steps (after one warm-up step).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import pretrain as pretrain_config  # noqa: E402
from quantformer_jax.training import optimizers, pretrain  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="256,1024,2048")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--config-arg", default="", help="switches of configs/pretrain.py")
    args = parser.parse_args()

    config = pretrain_config.get_config(args.config_arg or None)
    model = pretrain.create_model(config)
    tx = optimizers.create_optimizer(config.optimizer)
    init_key, _, train_key = pretrain.seeds(config.seed)
    step_fn = jax.jit(
        lambda s, b: pretrain.train_step(
            s, b, model=model, tx=tx, settings=pretrain.LossSettings.from_config(config.model),
            learning_rate_fn=optimizers.learning_rate_fn(config.optimizer),
        ),
        donate_argnums=0,
    )  # fmt: skip
    c = model.config
    print(f"device {jax.devices()[0].device_kind}; d_model {c.d_model}, heads {c.num_heads}, "
          f"layers {c.num_layers}+{c.num_layers}, K {c.codebook_size}")  # fmt: skip
    rs = np.random.RandomState(0)
    for rows in (int(r) for r in args.rows.split(",")):
        state = pretrain.init_state(model, tx, init_key, train_key)
        batch = {
            "x": rs.randn(rows, c.num_patches * c.patch_len).astype(np.float32),
            "row_valid": np.ones(rows, bool),
            "labels": (np.arange(rows) % 2).astype(np.int32),
        }
        t0 = time.perf_counter()
        state, metrics = step_fn(state, batch)
        jax.block_until_ready(metrics)
        compile_s = time.perf_counter() - t0
        times = []
        for _ in range(args.steps):
            t0 = time.perf_counter()
            state, metrics = step_fn(state, batch)
            jax.block_until_ready(metrics)
            times.append(time.perf_counter() - t0)
        med = float(np.median(times))
        print(f"M={rows:5d} rows: first step (compile) {compile_s:6.1f} s, median "
              f"{1e3 * med:7.1f} ms/step = {1 / med:6.2f} steps/s")  # fmt: skip


if __name__ == "__main__":
    main()
