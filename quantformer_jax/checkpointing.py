"""Orbax checkpoints of a run: resume the latest, keep the best, load a pretrained run.

Layout of `workdir/checkpoints/`:
  `<step>/`          periodic, after-eval and last checkpoints (the newest `max_to_keep`);
  `best/<step>/`     the single best checkpoint by the selection metric (kept apart, so the
                     periodic rotation never deletes it).
Each checkpoint is a composite of `state` (the TrainState, restored into an abstract target) and
`meta` (JSON): the run config, the architecture dict, the data-iterator position
(`epoch`, `step_in_epoch` = the next batch of that epoch), the best metric so far and counters.

On restore the stored architecture is compared with the current one; any difference is an error
that names the keys (a checkpoint of another model is never silently loaded).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging

PyTree = Any
STATE = "state"
META = "meta"


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Hides orbax's per-save INFO chatter (dozens of lines per checkpoint) from the run log."""
    level = logging.get_verbosity()
    logging.set_verbosity(min(level, logging.WARNING))
    try:
        yield
    finally:
        logging.set_verbosity(level)


def abstract_like(state: PyTree) -> PyTree:
    """The restore target for `state` (arrays or `jax.eval_shape` output): shapes, dtypes and
    shardings, no values. Leaves without a sharding go to the first local device."""
    default = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(
            x.shape, x.dtype, sharding=getattr(x, "sharding", None) or default
        ),
        state,
    )


def flatten_dict(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}; sequences become lists so JSON round trips compare."""
    out = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten_dict(value, name + "."))
        else:
            out[name] = list(value) if isinstance(value, tuple | list) else value
    return out


def check_architecture(stored: Mapping[str, Any], current: Mapping[str, Any], where: str) -> None:
    """Raises ValueError naming every architecture key that differs between two runs.

    Args:
        stored: the architecture dict saved in a checkpoint.
        current: the architecture the current config builds.
        where: the checkpoint path, for the message.
    """
    a, b = flatten_dict(stored), flatten_dict(json.loads(json.dumps(dict(current))))
    diffs = [
        f"{k}: checkpoint={a.get(k, '<missing>')!r} config={b.get(k, '<missing>')!r}"
        for k in sorted(set(a) | set(b))
        if a.get(k, "<missing>") != b.get(k, "<missing>")
    ]
    if diffs:
        raise ValueError(
            f"checkpoint {where} was written for a different architecture; differing keys:\n  "
            + "\n  ".join(diffs)
        )


def _manager(directory: str, max_to_keep: int, best_metric: str | None = None, mode: str = "min"):
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep,
        best_fn=(lambda m: m[best_metric]) if best_metric else None,
        best_mode=mode,
        create=True,
        cleanup_tmp_directories=True,  # a SIGKILL mid-save leaves a tmp dir; never load it
        # Synchronous saves: the next step donates the state buffers the save reads.
        enable_async_checkpointing=False,
    )
    return ocp.CheckpointManager(directory, options=options, item_names=(STATE, META))


class Checkpointer:
    """Saves and restores a run's `state` + `meta` composite under `workdir/checkpoints`.

    Args:
        workdir: the run directory.
        architecture: JSON-able dict describing the model; checked on every restore.
        max_to_keep: how many periodic/last checkpoints to keep.
        best_metric: name of the selection metric (e.g. 'val_recon_mse').
        best_mode: 'min' or 'max'.
    """

    def __init__(
        self,
        workdir: str,
        *,
        architecture: Mapping[str, Any],
        max_to_keep: int = 3,
        best_metric: str = "val_loss",
        best_mode: str = "min",
    ):
        if best_mode not in ("min", "max"):
            raise ValueError(f"best_mode must be 'min' or 'max', got {best_mode!r}")
        self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
        self.architecture = json.loads(json.dumps(dict(architecture)))
        self.best_metric = best_metric
        self.best_mode = best_mode
        with _quiet():
            self._latest = _manager(self.directory, max_to_keep)
            self._best = _manager(os.path.join(self.directory, "best"), 1, best_metric, best_mode)

    def latest_step(self) -> int | None:
        return self._latest.latest_step()

    def best_step(self) -> int | None:
        return self._best.latest_step()

    def is_better(self, value: float, best: float | None) -> bool:
        """Whether `value` of the selection metric improves on `best` (None = no best yet)."""
        if best is None:
            return True
        return value < best if self.best_mode == "min" else value > best

    def save(self, step: int, state: PyTree, meta: Mapping[str, Any]) -> None:
        """Saves a periodic/last checkpoint at `step`, replacing one already at that step.

        Replacing keeps the newest meta (e.g. a mid-epoch checkpoint followed by the after-eval
        one at the same step); a kill in between leaves older checkpoints, which replay exactly.
        """
        meta = {**meta, "architecture": self.architecture}
        with _quiet():
            if step in self._latest.all_steps():
                self._latest.delete(step)
            self._latest.save(
                step,
                args=ocp.args.Composite(
                    **{STATE: ocp.args.StandardSave(state), META: ocp.args.JsonSave(meta)}
                ),
                force=True,
            )
        logging.info("Saved checkpoint %s/%d", self.directory, step)

    def save_best(self, step: int, state: PyTree, meta: Mapping[str, Any], value: float) -> None:
        """Replaces the best checkpoint by this one (the caller decided it improved)."""
        meta = {**meta, "architecture": self.architecture}
        with _quiet():
            if step in self._best.all_steps():
                self._best.delete(step)  # a resumed run re-evaluating the same step
            self._best.save(
                step,
                args=ocp.args.Composite(
                    **{STATE: ocp.args.StandardSave(state), META: ocp.args.JsonSave(meta)}
                ),
                metrics={self.best_metric: float(value)},
                force=True,
            )
        logging.info("New best %s=%.6g: checkpoint %s/best/%d", self.best_metric, value,
                     self.directory, step)  # fmt: skip

    def restore(
        self, abstract_state: PyTree, *, best: bool = False, step: int | None = None
    ) -> tuple[PyTree, dict[str, Any]] | None:
        """Restores (state, meta) from the latest (or best) checkpoint, or None if there is none.

        Raises:
            ValueError: if the stored architecture differs from this run's.
        """
        manager = self._best if best else self._latest
        step = manager.latest_step() if step is None else step
        if step is None:
            return None
        return _restore(manager, step, abstract_state, self.architecture)

    def close(self) -> None:
        with _quiet():
            self._latest.close()
            self._best.close()


def _restore(manager, step: int, abstract_state: PyTree, architecture: Mapping[str, Any] | None):
    where = os.path.join(str(manager.directory), str(step))
    with _quiet():
        meta = manager.restore(step, args=ocp.args.Composite(**{META: ocp.args.JsonRestore()}))
    meta = meta[META]
    if architecture is not None:
        check_architecture(meta.get("architecture", {}), architecture, where)
    with _quiet():
        restored = manager.restore(
            step, args=ocp.args.Composite(**{STATE: ocp.args.StandardRestore(abstract_state)})
        )
    logging.info("Restored checkpoint %s", where)
    return restored[STATE], meta


def read_meta(workdir: str, *, best: bool = True) -> dict[str, Any]:
    """The JSON meta (config, architecture, counters) of a run's best (or latest) checkpoint.

    Raises:
        FileNotFoundError: if the workdir holds no such checkpoint.
    """
    manager = _open_readonly(workdir, best)
    step = manager.latest_step()
    if step is None:
        raise FileNotFoundError(f"no {'best' if best else 'latest'} checkpoint in {workdir}")
    with _quiet():
        return manager.restore(step, args=ocp.args.Composite(**{META: ocp.args.JsonRestore()}))[
            META
        ]


def restore_pretrained(
    workdir: str,
    abstract_state_fn: Callable[[dict[str, Any]], PyTree],
    *,
    best: bool = True,
) -> tuple[PyTree, dict[str, Any]]:
    """Loads another run's state, e.g. a pretrained tokenizer for `config.init_from`.

    Args:
        workdir: the pretraining run directory.
        abstract_state_fn: builds the restore target from that run's meta (its stored config and
            architecture), e.g. by initialising the pretraining model and calling `abstract_like`.
        best: the best checkpoint (default) or the latest one.

    Returns:
        (the restored state, its meta). Graft the subtrees you need into a fresh state.
    """
    manager = _open_readonly(workdir, best)
    step = manager.latest_step()
    if step is None:
        raise FileNotFoundError(
            f"config.init_from: no {'best' if best else 'latest'} checkpoint in {workdir}"
        )
    with _quiet():
        meta = manager.restore(step, args=ocp.args.Composite(**{META: ocp.args.JsonRestore()}))
    return _restore(manager, step, abstract_state_fn(meta[META]), None)


def _open_readonly(workdir: str, best: bool):
    directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
    if best:
        directory = os.path.join(directory, "best")
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"no checkpoint directory {directory}")
    options = ocp.CheckpointManagerOptions(create=False, read_only=True)
    with _quiet():
        return ocp.CheckpointManager(directory, options=options, item_names=(STATE, META))
