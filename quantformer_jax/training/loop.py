"""The generic epoch loop shared by every trainer (pretrain, forecast, classify).

A trainer describes its task with a `Task` (state init, pure train/eval steps, batch iterators,
how to turn summed metrics into scalars, the selection metric) and calls `run(task, config,
workdir)`. The loop owns everything that is not task-specific:

* start: resume the latest checkpoint in the workdir, else `task.init_from(state,
  config.init_from)`, else scratch; re-running the same command resumes;
* epochs of train steps, the data iterator resuming at the saved (epoch, step_in_epoch);
* train metrics (device sums/counts) divided on the host every `log_every_steps`, with
  `steps_per_sec`; a non-finite value stops the run, naming the step window, before any
  checkpoint of the bad state is written (the last good one survives);
* validation every `eval_every_epochs` for selection (best checkpoint, optional patience),
  periodic / after-eval / last checkpoints, and a final evaluation on the test split.

It never branches on the task: losses, metrics and plots belong to the task.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from tqdm import tqdm

from quantformer_jax import checkpointing, parallel
from quantformer_jax.metric_writer import MetricWriter
from quantformer_jax.training.train_state import TrainState

PyTree = Any
Batch = dict[str, np.ndarray]


def summarize_pairs(sums: Mapping[str, Any]) -> dict[str, float]:
    """Divides every (sum, count) pair; other entries (e.g. histograms) are left to the task."""
    out = {}
    for name, value in sums.items():
        if isinstance(value, tuple | list) and len(value) == 2:
            total, count = (float(np.asarray(v)) for v in value)
            out[name] = total / count if count > 0 else float("nan")
    return out


@dataclasses.dataclass
class Task:
    """What a trainer supplies to `run`.

    Attributes:
        name: the task name (logs only).
        init_state: builds the fresh TrainState from the config seed; must be traceable
            (`jax.eval_shape` gives the restore target without running it).
        train_step: `(state, batch, *, axis_name) -> (state, metrics)`, pure; metrics are
            (sum, count) pairs or arrays to be summed over steps, already reduced over devices.
            `axis_name` is None on the jit path (the step sees the global batch) and 'data' on
            the pmap path (reduce with `parallel.weighted_mean` / `psum` / `all_gather`).
        eval_step: `(state, batch, *, axis_name) -> metrics`, pure, same conventions.
        train_batches: `(epoch, start_step) -> iterable of global host batches`; the order must
            be a function of (seed, epoch) and start at batch `start_step` of that epoch.
        eval_batches: `split -> iterable of global host batches`.
        architecture: JSON-able dict stored in checkpoints and checked on restore.
        summarize: summed metrics -> scalars (names without the split prefix).
        selection_metric: the validation scalar that selects the best checkpoint,
            with its split prefix (e.g. 'val_recon_mse').
        selection_mode: 'min' or 'max'.
        batch_key: the config key that sets the leading batch dimension (named in errors).
        batch_sizes: every leading batch size the task will use, checked against the device
            count before training starts.
        steps_per_epoch: for the progress bar only.
        init_from: `(fresh_state, path) -> state`, used when `config.init_from` is set and the
            workdir holds no checkpoint.
        on_eval: `(host_state, split, step, writer)`, e.g. reconstruction plots.
        val_split / test_split: split names given to `eval_batches`.
    """

    name: str
    init_state: Callable[[], TrainState]
    train_step: Callable[..., tuple[TrainState, PyTree]]
    eval_step: Callable[..., PyTree]
    train_batches: Callable[[int, int], Iterable[Batch]]
    eval_batches: Callable[[str], Iterable[Batch]]
    architecture: Mapping[str, Any]
    summarize: Callable[[Mapping[str, Any]], dict[str, float]] = summarize_pairs
    selection_metric: str = "val_loss"
    selection_mode: str = "min"
    batch_key: str = "training.batch_size"
    batch_sizes: tuple[int, ...] = ()
    steps_per_epoch: int | None = None
    init_from: Callable[[TrainState, str], TrainState] | None = None
    on_eval: Callable[[TrainState, str, int, MetricWriter], None] | None = None
    val_split: str = "val"
    test_split: str = "test"


class MetricAccumulator:
    """Collects per-step device metrics and sums them on the host when asked."""

    def __init__(self):
        self._pending: list[PyTree] = []

    def __len__(self) -> int:
        return len(self._pending)

    def add(self, metrics: PyTree) -> None:
        self._pending.append(metrics)  # no host sync here: steps keep running ahead

    def reduce(self) -> PyTree | None:
        if not self._pending:
            return None
        host = jax.device_get(self._pending)
        self._pending = []
        return jax.tree.map(lambda *xs: np.sum(np.stack(xs).astype(np.float64), axis=0), *host)


@dataclasses.dataclass
class _Progress:
    """The loop counters stored in the checkpoint meta."""

    epoch: int = 0  # the epoch the next train step belongs to
    step_in_epoch: int = 0  # the next batch of that epoch
    best_value: float | None = None
    best_step: int | None = None
    evals_without_improvement: int = 0
    stopped_early: bool = False


def _non_finite(scalars: Mapping[str, float]) -> list[str]:
    return sorted(k for k, v in scalars.items() if not math.isfinite(v))


def run(task: Task, config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Trains and evaluates `task`, resuming whatever the workdir already holds.

    Args:
        task: the task description.
        config: the run config (`config.training` drives the loop).
        workdir: checkpoints, TensorBoard events, metrics.jsonl and config.json go here.

    Returns:
        The last validation and the final test scalars (`val_*`, `test_*`).

    Raises:
        FloatingPointError: when a train metric becomes NaN or inf.
    """
    tcfg = config.training
    dp = parallel.from_config(tcfg, batch_key=task.batch_key)
    for size in task.batch_sizes:
        dp.check_batch_size(size)
    ckpt = checkpointing.Checkpointer(
        workdir,
        architecture=task.architecture,
        max_to_keep=tcfg.max_to_keep,
        best_metric=task.selection_metric,
        best_mode=task.selection_mode,
    )
    progress = _Progress()
    # The restore target needs shapes only: no init compile, and a mismatching architecture
    # fails before any work.
    restored = ckpt.restore(checkpointing.abstract_like(jax.eval_shape(task.init_state)))
    if restored is not None:
        host_state, meta = restored
        progress = _Progress(**meta["progress"])
        logging.info("Resuming at step %d (epoch %d, batch %d)", int(host_state.step),
                     progress.epoch, progress.step_in_epoch)  # fmt: skip
    elif config.get("init_from"):
        if task.init_from is None:
            raise ValueError(f"config.init_from is set but task {task.name!r} cannot use it")
        host_state = task.init_from(task.init_state(), config.init_from)
        logging.info("Initialised from %s", config.init_from)
    else:
        host_state = task.init_state()
        logging.info("Training %s from scratch", task.name)
    writer = MetricWriter(workdir)
    try:
        return _train_and_evaluate(task, config, dp, ckpt, writer, host_state, progress)
    finally:
        writer.close()
        ckpt.close()


def _train_and_evaluate(
    task: Task,
    config: ml_collections.ConfigDict,
    dp: parallel.DataParallel,
    ckpt: checkpointing.Checkpointer,
    writer: MetricWriter,
    host_state: TrainState,
    progress: _Progress,
) -> dict[str, float]:
    tcfg = config.training
    writer.write_config(config)
    state = dp.put_state(host_state)
    del host_state
    train_step = dp.compile_train_step(task.train_step)
    eval_step = dp.compile_eval_step(task.eval_step)
    step = int(jax.device_get(dp.host_state(state).step))
    # tqdm: None = shown only on a terminal (quiet in tests, CI and log files).
    hide_bars = None if tcfg.get("progress_bar", True) and parallel.is_main_process() else True
    max_steps = tcfg.get("max_steps_per_epoch", 0)

    def meta() -> dict[str, Any]:
        return {"task": task.name, "progress": dataclasses.asdict(progress),
                "config": json.loads(config.to_json_best_effort())}  # fmt: skip

    last_saved = {}

    def save() -> None:
        current = meta()
        if last_saved.get(step) == current["progress"]:
            return  # nothing changed since the last save (e.g. after the final evaluation)
        ckpt.save(step, dp.host_state(state), current)
        last_saved.clear()
        last_saved[step] = current["progress"]

    def evaluate(split: str) -> dict[str, float]:
        acc = MetricAccumulator()
        max_eval = tcfg.get("max_eval_steps", 0)
        for i, batch in enumerate(task.eval_batches(split)):
            if max_eval and i >= max_eval:
                break
            acc.add(eval_step(state, dp.put_batch(batch)))
        sums = acc.reduce()
        if sums is None:
            raise ValueError(f"split {split!r} produced no evaluation batches")
        scalars = {f"{split}_{k}": v for k, v in task.summarize(sums).items()}
        writer.write_scalars(step, scalars)
        if task.on_eval is not None:
            task.on_eval(dp.host_state(state), split, step, writer)
        logging.info("step %d %s", step, _fmt(scalars))
        return scalars

    train_acc = MetricAccumulator()
    window = {"start_step": step, "start_time": time.perf_counter()}

    def log_train(epoch: int) -> None:
        sums = train_acc.reduce()
        if sums is None:
            return
        now = time.perf_counter()
        scalars = {f"train_{k}": v for k, v in task.summarize(sums).items()}
        bad = _non_finite(scalars)
        if bad:
            good = ckpt.latest_step()
            raise FloatingPointError(
                f"non-finite {', '.join(bad)} in train steps {window['start_step'] + 1}..{step} "
                f"(epoch {epoch}); stopping. The last good checkpoint (step {good}) is kept in "
                f"{ckpt.directory}"
            )
        scalars["steps_per_sec"] = (step - window["start_step"]) / max(
            now - window["start_time"], 1e-9
        )
        scalars["epoch"] = epoch
        writer.write_scalars(step, scalars)
        window.update(start_step=step, start_time=now)

    results: dict[str, float] = {}
    epochs = range(progress.epoch, 0 if progress.stopped_early else tcfg.num_epochs)
    epoch_bar = tqdm(epochs, desc="epochs", disable=hide_bars, initial=progress.epoch,
                     total=tcfg.num_epochs)  # fmt: skip
    for epoch in epoch_bar:
        start = progress.step_in_epoch
        bar = tqdm(total=task.steps_per_epoch, initial=start, desc=f"epoch {epoch}",
                   disable=hide_bars, leave=False)  # fmt: skip
        for batch in task.train_batches(epoch, start):
            if max_steps and progress.step_in_epoch >= max_steps:
                break
            logging.log_first_n(logging.INFO, "First train batch: %s", 1,
                                {k: (v.shape, v.dtype) for k, v in batch.items()})  # fmt: skip
            state, metrics = train_step(state, dp.put_batch(batch))
            train_acc.add(metrics)
            step += 1
            progress.step_in_epoch += 1
            bar.update()
            if step % tcfg.log_every_steps == 0:
                log_train(epoch)
            if step % tcfg.checkpoint_every_steps == 0:
                log_train(epoch)  # the NaN check must pass before a state is saved
                save()
        bar.close()
        log_train(epoch)
        progress.epoch, progress.step_in_epoch = epoch + 1, 0
        if (epoch + 1) % tcfg.eval_every_epochs == 0 or epoch + 1 == tcfg.num_epochs:
            results.update(evaluate(task.val_split))
            value = results[task.selection_metric]
            if ckpt.is_better(value, progress.best_value):
                progress.best_value, progress.best_step = value, step
                progress.evals_without_improvement = 0
                ckpt.save_best(step, dp.host_state(state), meta(), value)
            else:
                progress.evals_without_improvement += 1
            patience = tcfg.get("patience", 0)
            if patience and progress.evals_without_improvement >= patience:
                progress.stopped_early = True
                logging.info("Early stop: no %s improvement in %d evaluations",
                             task.selection_metric, patience)  # fmt: skip
        save()
        if progress.stopped_early:
            break

    results.update(evaluate(task.test_split))
    save()
    return results


def _fmt(scalars: Mapping[str, float]) -> str:
    return ", ".join(f"{k}={v:.4g}" for k, v in sorted(scalars.items()))
