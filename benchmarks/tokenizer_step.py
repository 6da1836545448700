"""Prints the tokenizer pretraining step time at the paper's size (never asserted in tests).

  python benchmarks/tokenizer_step.py [--rows 1024] [--steps 15] [--config-arg ''] \
      [--chunk-rows 256,0]

For each row bucket M (a batch of 32 windows becomes M neuron-rows of 160 frames after balancing
and padding; 1024 is the reference size), compiles the real `pretrain.train_step` (jit, one
device, d_model 128, K 512, 2+2 layers: forward + backward + Adam + dead-code replacement; the
forward + backward run over chunks of `config.training.chunk_rows` rows, `--chunk-rows 0` for one
pass) and reports the compile time, the median and minimum of `--steps` steps after one warm-up
step, the FLOPs XLA counts for the unchunked step and the achieved rate, and the page faults and
kernel time per step (what `runtime.tune_host_allocator` removes; `QUANTFORMER_MALLOC_TUNING=0`
to compare).

With several `--chunk-rows` values the variants are compiled side by side and their steps
interleaved (A/B/A/B), so that load on a shared machine hits all of them alike.

The last line is `tokenizer_step_ms=<median> gflops=<rate>` for the last row bucket and the
first `--chunk-rows` value.
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
from quantformer_jax.training import accumulation, optimizers, pretrain  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="1024", help="comma-separated row buckets M")
    parser.add_argument("--steps", type=int, default=15, help="timed steps per bucket (>= 10)")
    parser.add_argument("--config-arg", default="", help="switches of configs/pretrain.py")
    parser.add_argument("--chunk-rows", default="",
                        help="rows per gradient chunk, or a comma-separated list timed "
                        "interleaved (default: the config's training.chunk_rows; 0 = the whole "
                        "batch at once, -1 = auto)")  # fmt: skip
    args = parser.parse_args()

    config = pretrain_config.get_config(args.config_arg or None)
    variants = [int(v) for v in args.chunk_rows.split(",") if v] or [config.training.chunk_rows]
    variants = [accumulation.resolve_chunk_rows(v) for v in variants]
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

    c = model.config
    print(f"device {jax.devices()[0].device_kind}, {os.cpu_count()} cpus, load {load_average()}; "
          f"d_model {c.d_model}, heads {c.num_heads}, layers {c.num_layers}+{c.num_layers}, "
          f"d_ff {c.d_ff}, K {c.codebook_size}; chunk_rows {variants}; allocator tuned: "
          f"{runtime.tune_host_allocator()}")  # fmt: skip
    rs = np.random.RandomState(0)
    med = rate = float("nan")
    for rows in (int(r) for r in args.rows.split(",")):
        batch = jax.device_put({
            "x": rs.randn(rows, c.num_patches * c.patch_len).astype(np.float32),
            "row_valid": np.ones(rows, bool),
            "labels": (np.arange(rows) % 2).astype(np.int32),
        })  # fmt: skip
        runs = {}
        for chunk_rows in variants:
            state = pretrain.init_state(model, tx, init_key, train_key)
            t0 = time.perf_counter()
            compiled = make_step(chunk_rows).lower(state, batch).compile()
            compile_s = time.perf_counter() - t0
            state, metrics = compiled(state, batch)  # warm-up
            jax.block_until_ready(metrics)
            runs[chunk_rows] = {"fn": compiled, "state": state, "compile": compile_s,
                                "times": [], "faults": 0, "sys": 0.0}  # fmt: skip
        # XLA counts a loop body once: the FLOPs are those of the unchunked step (same work).
        flops = xla_flops(make_step(0).lower(state, batch))
        if np.isnan(flops):  # some backends (GPU) count only compiled programs
            flops = xla_flops(make_step(0).lower(state, batch).compile())
        for _ in range(args.steps):  # interleaved, so that load on a shared machine hits all
            for run in runs.values():
                r0 = resource.getrusage(resource.RUSAGE_SELF)
                t0 = time.perf_counter()
                run["state"], metrics = run["fn"](run["state"], batch)
                jax.block_until_ready(metrics)
                run["times"].append(time.perf_counter() - t0)
                r1 = resource.getrusage(resource.RUSAGE_SELF)
                run["faults"] += r1.ru_minflt - r0.ru_minflt
                run["sys"] += r1.ru_stime - r0.ru_stime
        for chunk_rows, run in runs.items():
            times = run["times"]
            med, best = float(np.median(times)), float(np.min(times))
            rate = flops / med / 1e9
            print(f"M={rows:5d} rows, chunk_rows {chunk_rows:4d}: compile {run['compile']:5.1f} s; "
                  f"median {1e3 * med:7.1f} ms/step, min {1e3 * best:7.1f} ms "
                  f"({args.steps} steps); {flops / 1e9:5.1f} GFLOP/step (XLA count) = "
                  f"{rate:6.1f} GFLOP/s; {run['faults'] / args.steps:8.0f} page faults and "
                  f"{1e3 * run['sys'] / args.steps:5.0f} ms kernel time per step; "
                  f"load {load_average()}")  # fmt: skip
        med = float(np.median(runs[variants[0]]["times"]))
        rate = flops / med / 1e9
    print(f"tokenizer_step_ms={1e3 * med:.1f} gflops={rate:.1f}")


if __name__ == "__main__":
    main()
