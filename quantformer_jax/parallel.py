"""Data parallelism (jit + Mesh by default, pmap on request) and multi-host initialisation.

Two ways to run the same pure step function on every local device:

* `jit` (default): one `Mesh(devices, ('data',))`; the batch is sharded along its leading axis,
  the state is replicated, and XLA inserts the gradient all-reduce. The step sees the *global*
  batch, so it is written exactly as for one device (`axis_name=None`).
* `pmap`: the step sees its device's shard and is called with `axis_name='data'`; it must
  reduce across devices itself with the helpers below (`weighted_mean`, `psum`, `all_gather`,
  `local_rows`). Both paths are tested equal to one device.

Steps take `axis_name: str | None` as a keyword, which `DataParallel.compile_*` binds.
Host batches are *global* (every process builds the same batch from the same seed) and each
process keeps its slice, so multi-host runs need no data-layer changes.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec

PyTree = Any
AXIS = "data"
MODES = ("jit", "pmap")

# --- Multi-host -----------------------------------------------------------------------------


def initialize_distributed() -> bool:
    """Calls `jax.distributed.initialize()` when the environment describes a multi-process job.

    Explicit: `JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES`, `JAX_PROCESS_ID`. Otherwise a
    SLURM or Open MPI job with more than one task uses jax's cluster auto-detection. A plain
    single-process run does nothing. Must run before any other jax call.

    Returns:
        True when the distributed runtime was initialised.
    """
    env = os.environ
    if env.get("JAX_COORDINATOR_ADDRESS"):
        jax.distributed.initialize(
            coordinator_address=env["JAX_COORDINATOR_ADDRESS"],
            num_processes=int(env.get("JAX_NUM_PROCESSES", "1")),
            process_id=int(env.get("JAX_PROCESS_ID", "0")),
        )
        return True
    if int(env.get("SLURM_NTASKS", "1")) > 1 or int(env.get("OMPI_COMM_WORLD_SIZE", "1")) > 1:
        jax.distributed.initialize()
        return True
    return False


def is_main_process() -> bool:
    """True on process 0, the only one that writes logs, metrics and plots."""
    return jax.process_index() == 0


# --- Reductions used inside steps (no-ops on the jit path) ------------------------------------


def psum(tree: PyTree, axis_name: str | None) -> PyTree:
    """Sums over devices (pmap path); identity when the step sees the global batch."""
    return tree if axis_name is None else jax.lax.psum(tree, axis_name)


def weighted_mean(tree: PyTree, weight: jax.Array, axis_name: str | None) -> PyTree:
    """Device-weighted mean: sum_d w_d x_d / sum_d w_d (identity on the jit path).

    With per-device losses that are means over `weight` rows, this makes the pmap gradient equal
    to the gradient of the global mean, even when padding leaves devices unequal valid rows.
    """
    if axis_name is None:
        return tree
    weight = jnp.asarray(weight, jnp.float32)
    total = jnp.maximum(jax.lax.psum(weight, axis_name), 1e-12)
    return jax.tree.map(lambda x: jax.lax.psum(x * weight, axis_name) / total, tree)


def all_gather(x: jax.Array, axis_name: str | None) -> jax.Array:
    """Concatenates every device's rows in device order (the global batch layout)."""
    return x if axis_name is None else jax.lax.all_gather(x, axis_name, tiled=True)


def num_shards(axis_name: str | None) -> int:
    """Number of devices sharing the batch inside a step (1 on the jit path)."""
    return 1 if axis_name is None else jax.lax.axis_size(axis_name)


def local_rows(x: jax.Array, axis_name: str | None) -> jax.Array:
    """This device's rows of an array built for the global batch (e.g. a global mask).

    Generating random numbers for the global batch and slicing makes the pmap path draw exactly
    what one device would.
    """
    if axis_name is None:
        return x
    rows = x.shape[0] // jax.lax.axis_size(axis_name)
    start = jax.lax.axis_index(axis_name) * rows
    return jax.lax.dynamic_slice_in_dim(x, start, rows, axis=0)


# --- Placement and compilation ----------------------------------------------------------------


class DataParallel:
    """Places states and batches on the local devices and compiles steps for them.

    Args:
        mode: 'jit' (Mesh + NamedSharding) or 'pmap' (`config.training.parallel`).
        num_devices: how many local devices to use (0 = all).
        batch_key: the config key that sets the leading batch dimension, named in errors.
    """

    def __init__(self, mode: str = "jit", *, num_devices: int = 0, batch_key: str = "batch"):
        if mode not in MODES:
            raise ValueError(f"config.training.parallel must be one of {MODES}, got {mode!r}")
        devices = jax.local_devices()
        if num_devices:
            if num_devices > len(devices):
                raise ValueError(
                    f"config.training.num_devices={num_devices} but only {len(devices)} "
                    "local devices exist"
                )
            devices = devices[:num_devices]
        if jax.process_count() > 1 and num_devices:
            raise ValueError("config.training.num_devices must be 0 (all) in multi-host runs")
        self.mode = mode
        self.batch_key = batch_key
        self.local_devices = devices
        self.num_processes = jax.process_count()
        if mode == "jit":
            all_devices = jax.devices() if self.num_processes > 1 else devices
            self.mesh = Mesh(np.asarray(all_devices), (AXIS,))
            self.replicated = NamedSharding(self.mesh, PartitionSpec())
            self.batch_sharding = NamedSharding(self.mesh, PartitionSpec(AXIS))
        self.num_devices = len(devices) * self.num_processes

    def check_batch_size(self, size: int, key: str | None = None) -> None:
        """Raises a readable error when a global batch does not split evenly over devices."""
        if size % self.num_devices:
            raise ValueError(
                f"{key or self.batch_key}: global batch dimension {size} does not divide by "
                f"the {self.num_devices} devices; choose a multiple of {self.num_devices}"
            )

    # States ------------------------------------------------------------------------------

    def put_state(self, state: PyTree) -> PyTree:
        """Replicates a host (or single-device) state on every device."""
        if self.mode == "jit":
            return jax.device_put(state, self.replicated)
        return _replicate(state, self.local_devices)

    def host_state(self, state: PyTree) -> PyTree:
        """The state as one logical copy, for checkpointing (drops the pmap device axis)."""
        if self.mode == "jit":
            return state
        return jax.tree.map(lambda x: x[0], state)

    # Batches -----------------------------------------------------------------------------

    def put_batch(self, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        """Turns a global host batch into device arrays sharded along the leading axis.

        Every process holds the same global batch; each keeps its own contiguous slice.
        """
        sizes = {k: v.shape[0] for k, v in batch.items()}
        size = next(iter(sizes.values()))
        if any(s != size for s in sizes.values()):
            raise ValueError(f"batch arrays disagree on the leading dimension: {sizes}")
        self.check_batch_size(size)
        per_process = size // self.num_processes
        start = jax.process_index() * per_process
        local = {k: np.asarray(v[start : start + per_process]) for k, v in batch.items()}
        if self.mode == "jit":
            return {
                k: jax.make_array_from_process_local_data(
                    self.batch_sharding, v, (size,) + v.shape[1:]
                )
                for k, v in local.items()
            }
        n = len(self.local_devices)
        return {k: v.reshape((n, per_process // n) + v.shape[1:]) for k, v in local.items()}

    # Steps -------------------------------------------------------------------------------

    def compile_train_step(self, step_fn: Callable[..., tuple[PyTree, PyTree]]) -> Callable:
        """Compiles `step_fn(state, batch, *, axis_name) -> (state, metrics)`; donates state."""
        if self.mode == "jit":
            return jax.jit(
                functools.partial(step_fn, axis_name=None),
                in_shardings=(self.replicated, self.batch_sharding),
                out_shardings=(self.replicated, self.replicated),
                donate_argnums=0,
            )
        pmapped = jax.pmap(
            functools.partial(step_fn, axis_name=AXIS),
            axis_name=AXIS,
            devices=self.local_devices,
            donate_argnums=0,
        )
        return lambda state, batch: _first_replica_metrics(*pmapped(state, batch))

    def compile_eval_step(self, step_fn: Callable[..., PyTree]) -> Callable:
        """Compiles `step_fn(state, batch, *, axis_name) -> metrics` (no donation)."""
        if self.mode == "jit":
            return jax.jit(
                functools.partial(step_fn, axis_name=None),
                in_shardings=(self.replicated, self.batch_sharding),
                out_shardings=self.replicated,
            )
        pmapped = jax.pmap(
            functools.partial(step_fn, axis_name=AXIS), axis_name=AXIS, devices=self.local_devices
        )
        return lambda state, batch: jax.tree.map(lambda x: x[0], pmapped(state, batch))


def _replicate(tree: PyTree, devices: list) -> PyTree:
    """One copy per device along a new leading axis, placed by pmap itself.

    A hand-made sharding (or host arrays) differs from what pmap returns, and the step would
    compile a second time on its own outputs.
    """
    stacked = jax.tree.map(lambda x: np.stack([np.asarray(x)] * len(devices)), tree)
    return jax.pmap(lambda x: x, axis_name=AXIS, devices=devices)(stacked)


def _first_replica_metrics(state: PyTree, metrics: PyTree) -> tuple[PyTree, PyTree]:
    # Metrics are already reduced across devices inside the step; keep one copy.
    return state, jax.tree.map(lambda x: x[0], metrics)


def from_config(training_cfg: Any, *, batch_key: str) -> DataParallel:
    """`DataParallel` for `config.training` (parallel mode and number of devices)."""
    dp = DataParallel(
        training_cfg.parallel, num_devices=training_cfg.get("num_devices", 0), batch_key=batch_key
    )
    logging.info(
        "Data parallel: mode=%s, %d device(s) over %d process(es)",
        dp.mode,
        dp.num_devices,
        dp.num_processes,
    )
    return dp
