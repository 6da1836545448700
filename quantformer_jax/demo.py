"""`make demo`: every stage of the benchmark on the simulated Observatory, resumable, one line each.

  python -m quantformer_jax.demo --workdir runs/demo [--scale demo|full] [--seeds 0,1,2]

Stages (configs/demo.py holds their configs and both scales): build the simulated Observatory,
pretrain the tokenizer, finetune QuantFormer for forecasting and classification, train every
baseline, evaluate each run's selected checkpoint on the same test split
(quantformer_jax/evaluate.py), and write `<workdir>/report.md` with its plots
(quantformer_jax/report.py).

Each stage trains through the trainers' `train_and_evaluate` (the same code path as
`python -m quantformer_jax.main`; the equivalent command is written to `<stage>/command.txt`, its
full log to `<stage>/log.txt`), each in a fresh child process (`--in-process` runs them all in
this one): each stage starts from a fresh heap, JAX caches and thread pools, and a stage killed
by the OS (e.g. out of memory) is recorded as failed instead of ending the demo (README
"Measured results" compares the wall times). A stage is finished when its workdir holds
`metrics.json`; finished stages are skipped, an interrupted one resumes from its latest
checkpoint. Several seeds (`make compare`) go to `<workdir>/seed<k>/<stage>` and share one
Observatory; the report then gives mean +- standard deviation over seeds.
Compiled programs are cached in `<workdir>/.jax_cache`, so a resumed run or a second seed does
not compile again.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import logging
import multiprocessing
import os
import sys
import time
import traceback
from collections.abc import Iterator, Sequence
from typing import Any

import ml_collections

from quantformer_jax import runtime

STAGES_FILE = "stages.json"
OBSERVATORY_DIR = "observatory"


# --- Configs -------------------------------------------------------------------------------------


def load_config_file(spec: str) -> ml_collections.ConfigDict:
    """`path.py[:switches]` -> its `get_config(switches)`, as `--config=` does."""
    path, _, switches = spec.partition(":")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config file {path} not found (run from the repository root)")
    module_spec = importlib.util.spec_from_file_location(f"_demo_cfg_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(switches or None)


def apply_overrides(config: ml_collections.ConfigDict, overrides: Sequence[tuple[str, Any]]):
    """Sets dotted keys (`training.num_epochs`) like `--config.training.num_epochs=` does.

    Raises:
        KeyError: a key the config does not have (named).
    """
    for key, value in overrides:
        node = config
        *path, last = key.split(".")
        for part in path:
            if part not in node:
                raise KeyError(f"demo override {key!r}: the config has no {part!r}")
            node = node[part]
        if last not in node:
            raise KeyError(f"demo override {key!r}: the config has no {last!r}")
        node[last] = value
    return config


def stage_dirs(root: str, order: Sequence[str], seed: int, num_seeds: int) -> dict[str, str]:
    """Workdir of every stage: `root/<stage>`, or `root/seed<k>/<stage>` with several seeds."""
    base = root if num_seeds == 1 else os.path.join(root, f"seed{seed}")
    return {name: os.path.join(base, name) for name in order}


def run_config(
    demo: ml_collections.ConfigDict, name: str, *, seed: int, cache_dir: str, dirs: dict
) -> ml_collections.ConfigDict:
    """The training config of stage `name` (its file, the demo's data and seed, overrides)."""
    stage = demo.stages[name]
    config = load_config_file(stage.config)
    config.data.cache_dir = cache_dir
    config.seed = seed
    if stage.init_from:
        pretrained = run_config(demo, stage.init_from, seed=seed, cache_dir=cache_dir, dirs=dirs)
        config.init_from = dirs[stage.init_from]
        # The finetuning encoder/teacher is the pretrained tokenizer: same architecture.
        config.model = ml_collections.ConfigDict(pretrained.model.to_dict())
    return apply_overrides(config, stage.overrides)


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out = {}
        for k, v in d.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: d}


def command_line(stage: ml_collections.ConfigDict, config: ml_collections.ConfigDict, workdir):
    """The `python -m quantformer_jax.main` command equivalent to the stage's config."""
    base = _flat(load_config_file(stage.config).to_dict())
    args = []
    for key, value in sorted(_flat(config.to_dict()).items()):
        if key in base and base[key] == value:
            continue
        text = (
            f"({', '.join(map(str, value))}{',' if len(value) == 1 else ''})"
            if isinstance(value, tuple)
            else str(value)
        )
        args.append(f"--config.{key}={text!r}" if " " in text or "(" in text else
                    f"--config.{key}={text}")  # fmt: skip
    return " \\\n  ".join(
        [f"python -m quantformer_jax.main --config={stage.config}", f"--workdir={workdir}", *args]
    )


# --- Stage bookkeeping ---------------------------------------------------------------------------


class StageLog:
    """`root/stages.json`: status and accumulated wall seconds of every stage (all resumes)."""

    def __init__(self, root: str):
        self.path = os.path.join(root, STAGES_FILE)
        self.stages: dict[str, dict] = {}
        if os.path.isfile(self.path):
            with open(self.path) as f:
                self.stages = json.load(f)

    def record(self, key: str, status: str, seconds: float, **extra) -> None:
        entry = self.stages.setdefault(key, {"seconds": 0.0, "runs": 0})
        entry["seconds"] = round(entry["seconds"] + seconds, 1)
        entry["runs"] += 1
        entry["status"] = status
        entry.update(extra)
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        with open(self.path + ".tmp", "w") as f:
            json.dump(self.stages, f, indent=1, sort_keys=True)
        os.replace(self.path + ".tmp", self.path)


@contextlib.contextmanager
def stage_logging(path: str) -> Iterator[None]:
    """INFO logs of a stage into `path`; only warnings reach the console (plus progress bars)."""
    from absl import logging as absl_logging

    os.makedirs(os.path.dirname(path), exist_ok=True)
    root = logging.getLogger()
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(logging.WARNING)
    # orbax warns about its own read-only restore options on every pretrained load: log file only.
    console.addFilter(lambda record: "orbax" not in record.pathname)
    old_level, old_verbosity = root.level, absl_logging.get_verbosity()
    root.addHandler(handler)
    root.addHandler(console)
    root.setLevel(logging.INFO)
    absl_logging.set_verbosity(absl_logging.INFO)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.removeHandler(console)
        handler.close()
        root.setLevel(old_level)
        absl_logging.set_verbosity(old_verbosity)


def _fmt_seconds(seconds: float) -> str:
    return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"


def _headline(payload: dict) -> str:
    m = payload["metrics"]
    if payload["task"] == "forecast":
        return f"test mae={m['mae']:.4f} mse={m['mse']:.4f} corr={m['corr']:.3f}"
    if payload["task"] == "classify":
        return f"test balanced_accuracy={m['balanced_accuracy']:.3f} f1={m['f1']:.3f}"
    return f"test recon_mse={m['recon_mse']:.5f} codebook_usage={m['codebook_usage']:.2f}"


# --- Stages --------------------------------------------------------------------------------------


def build_observatory(demo: ml_collections.ConfigDict, root: str) -> str:
    """Builds (or reuses: the simulator is idempotent) the demo's simulated Observatory."""
    from quantformer_jax.data import simulate

    obs = demo.observatory
    cache_dir = os.path.join(root, OBSERVATORY_DIR)
    simulate.build_observatory(
        cache_dir,
        size=str(obs.size),
        seed=int(obs.seed),
        containers=int(obs.containers) or None,
        cells=tuple(obs.cells) or None,
    )
    return cache_dir


def run_stage(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains (resuming) and evaluates one stage; returns its metrics.json payload."""
    from quantformer_jax import evaluate, main

    main.trainer_module(config.task).train_and_evaluate(config, workdir)
    return evaluate.evaluate_workdir(workdir)


class StageError(RuntimeError):
    """A stage that failed in its child process (the child wrote the traceback to log.txt)."""


def _stage_child(config: ml_collections.ConfigDict, workdir: str, jax_cache: str, conn) -> None:
    """Child process body of `run_stage_isolated`: one stage, logged into its log.txt."""
    runtime.tune_host_allocator()
    runtime.request_deterministic_ops()  # before jax starts its backends
    if jax_cache:
        enable_compilation_cache(jax_cache)
    try:
        with stage_logging(os.path.join(workdir, "log.txt")):
            conn.send(("done", run_stage(config, workdir)))
    except BaseException as e:  # reported to the parent, which records the failure
        with open(os.path.join(workdir, "log.txt"), "a") as f:
            f.write(traceback.format_exc())
        conn.send(("failed", f"{type(e).__name__}: {e}"))
    finally:
        conn.close()


def run_stage_isolated(config: ml_collections.ConfigDict, workdir: str, jax_cache: str) -> dict:
    """`run_stage` in a fresh (spawned) Python process; returns its payload.

    Raises:
        StageError: the stage raised (its traceback is in `workdir/log.txt`) or the child died.
    """
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    process = ctx.Process(target=_stage_child, args=(config, workdir, jax_cache, child))
    process.start()
    child.close()
    try:
        status, value = parent.recv()
    except EOFError:  # killed (e.g. out of memory) before it could report
        status, value = "failed", "the stage's process died without reporting"
    finally:
        process.join()
    if status != "done":
        raise StageError(f"{value} (exit code {process.exitcode})")
    return value


def run(
    root: str,
    demo: ml_collections.ConfigDict,
    seeds: Sequence[int],
    only: Sequence[str] = (),
    *,
    isolate: bool = False,
    jax_cache: str = "",
) -> bool:
    """Runs every stage of every seed (skipping finished ones) and writes the report.

    Args:
        isolate: run each stage in a fresh child process (`run_stage_isolated`), which then
            uses the persistent compilation cache `jax_cache` if given; else in this process.

    Returns:
        True when every stage finished.
    """
    from quantformer_jax import evaluate, report

    os.makedirs(root, exist_ok=True)
    log = StageLog(root)
    order = [n for n in demo.order if not only or n in only]
    total = 1 + len(order) * len(seeds)
    t0 = time.perf_counter()
    print(f"demo: scale={demo.scale}, seeds {list(seeds)}, {total} stages -> {root}", flush=True)
    start = time.perf_counter()
    cache_dir = build_observatory(demo, root)
    seconds = time.perf_counter() - start
    log.record("observatory", "done", seconds)
    print(f"[ 1/{total}] observatory            done in {_fmt_seconds(seconds)}  {cache_dir}",
          flush=True)  # fmt: skip
    failed: set[tuple[int, str]] = set()
    i = 1
    for seed in seeds:
        dirs = stage_dirs(root, demo.order, seed, len(seeds))
        for name in order:
            i += 1
            key = name if len(seeds) == 1 else f"seed{seed}/{name}"
            prefix = f"[{i:2d}/{total}] {key:<{22 if len(seeds) == 1 else 28}}"
            workdir = dirs[name]
            done = evaluate.read_metrics(workdir)
            if done is not None:
                print(f"{prefix} done earlier: {_headline(done)}", flush=True)
                continue
            parent = demo.stages[name].init_from
            if parent and (seed, parent) in failed:
                failed.add((seed, name))
                log.record(key, "skipped", 0.0, reason=f"{parent} failed")
                print(f"{prefix} SKIPPED: {parent} failed", flush=True)
                continue
            config = run_config(demo, name, seed=seed, cache_dir=cache_dir, dirs=dirs)
            os.makedirs(workdir, exist_ok=True)
            with open(os.path.join(workdir, "command.txt"), "w") as f:
                f.write(command_line(demo.stages[name], config, workdir) + "\n")
            resumed = os.path.isdir(os.path.join(workdir, "checkpoints"))
            print(f"{prefix} {'resuming' if resumed else 'running'} "
                  f"({demo.stages[name].config}; log {workdir}/log.txt)", flush=True)  # fmt: skip
            start = time.perf_counter()
            try:
                if isolate:
                    payload = run_stage_isolated(config, workdir, jax_cache)
                else:
                    with stage_logging(os.path.join(workdir, "log.txt")):
                        payload = run_stage(config, workdir)
            except Exception as e:  # one failed stage must not stop the others
                seconds = time.perf_counter() - start
                failed.add((seed, name))
                if not isinstance(e, StageError):  # a child writes its own traceback
                    with open(os.path.join(workdir, "log.txt"), "a") as f:
                        f.write(traceback.format_exc())
                log.record(key, "failed", seconds, error=f"{type(e).__name__}: {e}")
                print(f"{prefix} FAILED after {_fmt_seconds(seconds)}: {type(e).__name__}: "
                      f"{str(e)[:200]} (see {workdir}/log.txt)", flush=True)  # fmt: skip
                continue
            seconds = time.perf_counter() - start
            log.record(key, "done", seconds)
            print(f"{prefix} done in {_fmt_seconds(seconds)}: {_headline(payload)}", flush=True)
    path = report.write_report(root, stage_times=log.stages, scale=str(demo.scale))
    print(f"report: {path}  (total {_fmt_seconds(time.perf_counter() - t0)} this run)")
    print(f"TensorBoard: .venv/bin/tensorboard --logdir {root}")
    return not failed


def enable_compilation_cache(directory: str) -> None:
    """Persistent XLA cache: a resumed stage or another seed reuses compiled programs."""
    import jax

    jax.config.update("jax_compilation_cache_dir", os.path.abspath(directory))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="runs/demo")
    parser.add_argument("--scale", default="demo", choices=("demo", "full", "runlocal"))
    parser.add_argument("--seeds", default="0", help="comma-separated, e.g. 0,1,2")
    parser.add_argument("--only", default="", help="comma-separated stage names (default all)")
    parser.add_argument("--config", default="configs/demo.py", help="the stage presets file")
    parser.add_argument(
        "--in-process", action="store_true", help="run all stages in this process (not one each)"
    )
    args = parser.parse_args(argv)
    runtime.tune_host_allocator()  # before jax allocates anything (see runtime.py)
    runtime.request_deterministic_ops()  # before jax starts its backends
    switch = "runlocal" if args.scale == "runlocal" else f"scale={args.scale}"
    demo = load_config_file(f"{args.config}:{switch}")
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    only = [s for s in args.only.split(",") if s]
    unknown = sorted(set(only) - set(demo.order))
    if unknown:
        parser.error(f"--only: unknown stage(s) {unknown}; known: {list(demo.order)}")
    jax_cache = os.path.join(args.workdir, ".jax_cache")
    enable_compilation_cache(jax_cache)
    isolate = not args.in_process
    return 0 if run(args.workdir, demo, seeds, only, isolate=isolate, jax_cache=jax_cache) else 1


if __name__ == "__main__":
    sys.exit(main())
