"""Benchmark: reading and windowing one full-size simulated experiment (NWB -> train/val/test).

    .venv/bin/python benchmarks/data_loading.py [--cache-dir DIR] [--repeats 5]

(DIR defaults to runs/observatory/full-seed0.)

Builds the full simulated observatory once (not timed; reused when it exists), then times, for the
first container's drifting-gratings experiment, `nwb.load_experiment` + `windows.make_windows`
(what a processed-cache miss costs), and separately a processed-cache hit. Prints the figures and
ends with exactly one line `load_window_s=<median seconds>`. Target: <= 10 s on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

from quantformer_jax.data import datasets, nwb, simulate
from quantformer_jax.data.windows import SPLITS, WindowSpec, make_windows


def _median_time(fn, repeats: int) -> tuple[float, list[float]]:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache-dir", default=os.path.join("runs", "observatory", "full-seed0"))
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    t0 = time.perf_counter()
    index = simulate.build_observatory(args.cache_dir, size="full", seed=0)
    print(f"observatory ready in {time.perf_counter() - t0:.1f} s (not timed): {args.cache_dir}")
    entry = min(
        (e for e in index if e.session_type == "three_session_A"), key=lambda e: e.container_id
    )
    spec = WindowSpec()
    size_mb = os.path.getsize(entry.nwb_path) / 2**20

    load_s, _ = _median_time(lambda: nwb.load_experiment(entry.nwb_path), args.repeats)
    experiment = nwb.load_experiment(entry.nwb_path)
    window_s, _ = _median_time(lambda: make_windows(experiment, spec), args.repeats)
    total_s, totals = _median_time(
        lambda: make_windows(nwb.load_experiment(entry.nwb_path), spec), args.repeats
    )
    splits, summary = make_windows(experiment, spec)
    with tempfile.TemporaryDirectory() as processed:
        datasets.load_windows(entry, spec, processed)  # writes the processed file
        hit_s, _ = _median_time(lambda: datasets.load_windows(entry, spec, processed), args.repeats)

    print(f"experiment {entry.experiment_id}: {experiment.num_cells} cells x "
          f"{experiment.num_frames} frames, NWB {size_mb:.0f} MiB")  # fmt: skip
    print("windows per split: " + ", ".join(f"{s} {len(splits[s])}" for s in SPLITS))
    print(f"dropped/flagged: leak {summary['dropped_leak_train_val']}, "
          f"out of recording {summary['dropped_out_of_recording']}, "
          f"f0<=0 windows {summary['f0_nonpositive_windows']}")  # fmt: skip
    print(f"nwb.load_experiment      median {load_s:.3f} s")
    print(f"windows.make_windows     median {window_s:.3f} s")
    print(f"processed-cache hit      median {hit_s:.3f} s")
    print(f"load + window ({args.repeats} runs): " + " ".join(f"{t:.3f}" for t in totals))
    print(f"load_window_s={total_s:.3f}")


if __name__ == "__main__":
    main()
