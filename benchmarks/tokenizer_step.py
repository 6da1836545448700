"""Prints the tokenizer pretraining step time at the paper's size (never asserted in tests).

  python benchmarks/tokenizer_step.py [--rows 1024] [--steps 15] [--config-arg ''] [--chunk-rows N]

For each row bucket M (a batch of 32 windows becomes M neuron-rows of 160 frames after balancing
and padding; 1024 is the reference size), compiles the real `pretrain.train_step` (jit, one
device, d_model 128, K 512, 2+2 layers: forward + backward + Adam + dead-code replacement; the
forward + backward run over chunks of `config.training.chunk_rows` rows, `--chunk-rows 0` for one
pass) and reports the compile time, the median and minimum of `--steps` steps after one warm-up
step, the FLOPs XLA counts for the unchunked step and the achieved rate, and the page faults and
kernel time per step (what `runtime.tune_host_allocator` removes; `QUANTFORMER_MALLOC_TUNING=0`
to compare).

The last line is `tokenizer_step_ms=<median> gflops=<rate>` for the last row bucket.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchlib import load_average, xla_flops  # noqa: E402

from quantformer_jax import runtime  # noqa: E402

runtime.tune_host_allocator()  # before jax allocates anything

import jax  # noqa: E402
import numpy as np  # noqa: E402

from configs import pretrain as pretrain_config  # noqa: E402
from quantformer_jax.training import optimizers, pretrain  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="1024", help="comma-separated row buckets M")
    parser.add_argument("--steps", type=int, default=15, help="timed steps per bucket (>= 10)")
    parser.add_argument("--config-arg", default="", help="switches of configs/pretrain.py")
    parser.add_argument("--chunk-rows", type=int, default=None,
                        help="rows per gradient chunk (default: the config's training.chunk_rows; "
                        "0 = the whole batch at once)")  # fmt: skip
    args = parser.parse_args()

    config = pretrain_config.get_config(args.config_arg or None)
    if args.chunk_rows is not None:
        config.training.chunk_rows = args.chunk_rows
    model = pretrain.create_model(config)
    tx = optimizers.create_optimizer(config.optimizer)
    init_key, _, train_key = pretrain.seeds(config.seed)

    def make_step(chunk_rows: int):
        return jax.jit(
            lambda s, b: pretrain.train_step(
                s, b, model=model, tx=tx, settings=pretrain.LossSettings.from_config(config.model),
                learning_rate_fn=optimizers.learning_rate_fn(config.optimizer),
                chunk_rows=chunk_rows,
            ),
            donate_argnums=0,
        )  # fmt: skip

    step_fn = make_step(config.training.chunk_rows)
    c = model.config
    print(f"device {jax.devices()[0].device_kind}, {os.cpu_count()} cpus, load {load_average()}; "
          f"d_model {c.d_model}, heads {c.num_heads}, layers {c.num_layers}+{c.num_layers}, "
          f"d_ff {c.d_ff}, K {c.codebook_size}, chunk_rows {config.training.chunk_rows}; "
          f"allocator tuned: "
          f"{runtime.tune_host_allocator()}")  # fmt: skip
    rs = np.random.RandomState(0)
    med = rate = float("nan")
    for rows in (int(r) for r in args.rows.split(",")):
        state = pretrain.init_state(model, tx, init_key, train_key)
        batch = jax.device_put({
            "x": rs.randn(rows, c.num_patches * c.patch_len).astype(np.float32),
            "row_valid": np.ones(rows, bool),
            "labels": (np.arange(rows) % 2).astype(np.int32),
        })  # fmt: skip
        t0 = time.perf_counter()
        compiled = step_fn.lower(state, batch).compile()
        compile_s = time.perf_counter() - t0
        # XLA counts a loop body once: the FLOPs are those of the unchunked step (same work).
        flops = xla_flops(make_step(0).lower(state, batch))
        state, metrics = compiled(state, batch)  # warm-up
        jax.block_until_ready(metrics)
        times = []
        r0 = resource.getrusage(resource.RUSAGE_SELF)
        for _ in range(args.steps):
            t0 = time.perf_counter()
            state, metrics = compiled(state, batch)
            jax.block_until_ready(metrics)
            times.append(time.perf_counter() - t0)
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        med, best = float(np.median(times)), float(np.min(times))
        rate = flops / med / 1e9
        faults = (r1.ru_minflt - r0.ru_minflt) / args.steps
        sys_ms = 1e3 * (r1.ru_stime - r0.ru_stime) / args.steps
        print(f"M={rows:5d} rows: compile {compile_s:5.1f} s; median {1e3 * med:7.1f} ms/step, "
              f"min {1e3 * best:7.1f} ms ({args.steps} steps); {flops / 1e9:5.1f} GFLOP/step "
              f"(XLA count) = {rate:6.1f} GFLOP/s; {faults:8.0f} page faults and "
              f"{sys_ms:5.0f} ms kernel time per step; load {load_average()}")  # fmt: skip
    print(f"tokenizer_step_ms={1e3 * med:.1f} gflops={rate:.1f}")


if __name__ == "__main__":
    main()
