"""Prints the latency of a complete QuantCoder forecast at the paper's size (never asserted).

  python benchmarks/forecast_latency.py [--neurons 200] [--classes 512] [--reps 30] \
      [--reps-batch 5] [--batch 32] [--chunk-trials 2] [--no-reference]

One trial = a 200-neuron session: stimulus + 96 source frames in -> encoder (2 prompts + 10
patch tokens per neuron) -> code classes -> decoder (10 tokens) -> 64 forecast frames out,
jitted, batch 1; then a batch of `--batch` trials. Weights are random (the time does not depend
on their values). `fast` is quantformer_jax/inference.py; `reference` is the forecasting
trainer's own prediction path (training/forecast.py `Heads.decode(...)["forecast"]`, whose
metric-only outputs XLA drops), timed interleaved with it (A/B/A/B) so that load on a shared
machine hits both alike. FLOPs: XLA's cost analysis of each compiled function at batch 1,
times the batch.
The last line is `forecast_1trial_ms=<median> forecast_32trials_ms=<median>` (fast path;
the reference with `--reference-only`).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchlib import load_average, xla_flops  # noqa: E402

from quantformer_jax import runtime  # noqa: E402

runtime.tune_host_allocator()  # before jax allocates anything

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from configs import forecast as forecast_config  # noqa: E402
from quantformer_jax import inference  # noqa: E402
from quantformer_jax.models import quantcoder, tokenizer  # noqa: E402
from quantformer_jax.training import finetune, targets  # noqa: E402
from quantformer_jax.training import forecast as forecast_task  # noqa: E402


def _time(fns: dict, args: dict, reps: int) -> dict[str, np.ndarray]:
    """Interleaved wall times in ms (one warm-up call each first)."""
    for name, fn in fns.items():
        jax.block_until_ready(fn(*args[name]))
    times = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            jax.block_until_ready(fn(*args[name]))
            times[name].append(1e3 * (time.perf_counter() - t0))
    return {k: np.asarray(v) for k, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--neurons", type=int, default=200)
    parser.add_argument("--classes", type=int, default=512, help="code classes C (<= K)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--reps", type=int, default=30, help="timed calls at batch 1")
    parser.add_argument("--reps-batch", type=int, default=5, help="timed calls at --batch")
    parser.add_argument("--chunk-trials", type=int, default=inference.DEFAULT_CHUNK_TRIALS,
                        help="trials per loop iteration; 0 = one pass, -1 = auto (1 on CPU, "
                        "one pass on GPU)")  # fmt: skip
    parser.add_argument("--no-reference", action="store_true", help="time the fast path only")
    parser.add_argument("--reference-only", action="store_true", help="time the trainer's path")
    parser.add_argument("--decoding", default=None, help="argmax | expected (default: config's)")
    args = parser.parse_args()

    config = forecast_config.get_config()
    if args.decoding:
        config.decoding = args.decoding
    decoding = forecast_task.decoding_of(config)
    n, c = args.neurons, args.classes
    model = quantcoder.from_config(config, num_neurons=n, num_classes=c)
    teacher = tokenizer.VQTokenizer(tokenizer.TokenizerConfig.from_config(config.model))
    s, f = int(config.data.source_frames), int(config.data.forecast_frames)
    tc = teacher.config
    if c > tc.codebook_size:
        raise ValueError(f"--classes {c} exceeds the codebook size {tc.codebook_size}")
    key_student, key_teacher = jax.random.split(jax.random.PRNGKey(0))
    sample = {"src": jnp.zeros((1, n, s)), "stim": jnp.zeros((1, 4))}
    variables = jax.jit(lambda k: model.init(k, sample, train=False))(key_student)
    patches = jnp.zeros((1, tc.num_patches, tc.patch_len))
    teacher_params = jax.jit(lambda k: teacher.init(k, patches, train=False)["params"])(key_teacher)
    # C classes = the first C codes (which codes does not change the cost).
    counts = np.zeros(tc.codebook_size, np.int64)
    counts[:c] = 1
    classes = targets.build_code_classes(
        counts, targets.effective_codebook(teacher, teacher_params)
    )
    fast = inference.make_forecaster(
        model, teacher, variables, teacher_params, classes.class_codes,
        decoding=decoding, chunk_trials=args.chunk_trials,
    )  # fmt: skip

    heads = forecast_task.Heads(
        source_frames=s,
        teacher=forecast_task.Teacher(teacher, classes, teacher_params),
        decoding=decoding,
    )
    model_state = {**{k: v for k, v in variables.items() if k != "params"},
                   finetune.TEACHER: {"params": teacher_params}}  # fmt: skip

    @jax.jit
    def reference(variables, model_state, src, stim):
        out = model.apply(variables, {"src": src, "stim": stim}, train=False)
        x = jnp.concatenate([src, jnp.zeros(src.shape[:2] + (f,), src.dtype)], axis=-1)
        return heads.decode(out, {"x": x}, model_state)["forecast"]

    print(f"device {jax.devices()[0].device_kind}, {os.cpu_count()} cpus, load {load_average()}; "
          f"d_model {tc.d_model}, heads {tc.num_heads}, layers {tc.num_layers}+{tc.num_layers}, "
          f"d_ff {tc.d_ff}, K {tc.codebook_size}, C {c}, N {n}; {decoding} decoding; "
          f"chunk_trials {inference.resolve_chunk_trials(args.chunk_trials)}")  # fmt: skip
    rs = np.random.RandomState(0)
    medians, trial_flops = {}, {}
    for batch, reps in ((1, args.reps), (args.batch, args.reps_batch)):
        src = jnp.asarray(rs.randn(batch, n, s), jnp.float32)
        stim = jnp.asarray(rs.rand(batch, 4), jnp.float32)
        fns, call_args = {}, {}
        if not args.reference_only:
            fns["fast"] = fast.lower(src, stim).compile()
            call_args["fast"] = (variables, teacher_params, jnp.asarray(classes.class_codes), src,
                                 stim)  # fmt: skip
        if not args.no_reference:
            fns["reference"] = reference.lower(variables, model_state, src, stim).compile()
            call_args["reference"] = (variables, model_state, src, stim)
        if len(fns) == 2:
            outs = [np.asarray(fns[k](*call_args[k])) for k in ("fast", "reference")]
            diff = np.abs(outs[0] - outs[1]).max()
            print(f"batch {batch}: max |fast - reference| = {diff:.2e}")
        times = _time(fns, call_args, reps)
        for name, t in times.items():
            if batch == 1:
                trial_flops[name] = xla_flops(fns[name])
            # XLA counts one iteration of the fast path's loop over trials: scale trial 1's count.
            flops = trial_flops[name] * batch
            med = float(np.median(t))
            print(f"batch {batch:3d} {name:9s}: median {med:8.1f} ms  min {t.min():8.1f} ms "
                  f"({reps} calls)  {flops / 1e9:7.2f} GFLOP = {flops / batch / 1e9:5.2f}/trial  "
                  f"{flops / 1e6 / med:6.1f} GFLOP/s (median)  load {load_average()}")  # fmt: skip
        medians[batch] = float(np.median(times["reference" if args.reference_only else "fast"]))
    print(f"forecast_1trial_ms={medians[1]:.1f} forecast_{args.batch}trials_ms="
          f"{medians[args.batch]:.1f}")  # fmt: skip


if __name__ == "__main__":
    main()
