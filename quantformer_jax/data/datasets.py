"""Single-experiment and pretraining datasets for a `config.data`, with a processed-window cache.

* `load_experiment_dataset(data_cfg, container_id)`: the windows of one container's experiment for
  the configured stimulus (finetuning and baselines), split into train / val / test.
* `load_pretraining_dataset(data_cfg)`: the same for several containers; each experiment keeps its
  own neuron count, and `pipeline.pretraining_batches` flattens neurons into rows.

Data come from an allensdk-layout cache directory (`data.cache_dir`); an empty value means the
simulated Observatory at `runs/observatory/<simulated_size>-seed<simulated_seed>`, built on first
use. Windowed experiments are cached as .npz files under `data.processed_cache_dir` (default
`<cache_dir>/processed_windows`); the file name carries a hash of every option that changes the
windows, of the NWB file's name, size and mtime, and of PROCESSED_FORMAT_VERSION, so a changed
option or file never reads stale windows (the original's cache key ignored most of them, D4).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import zipfile

import numpy as np

from quantformer_jax import constants
from quantformer_jax.data import cache, nwb
from quantformer_jax.data.experiment import DataError
from quantformer_jax.data.windows import SPLITS, WindowSpec, WindowSplit, make_windows

# Bump whenever windows.py changes what it computes: old cache files then miss.
PROCESSED_FORMAT_VERSION = 1
_SPLIT_FIELDS = ("traces", "stim", "labels", "condition_id", "trial_start")

__all__ = [
    "ExperimentDataset",
    "PretrainingDataset",
    "WindowSplit",
    "load_experiment_dataset",
    "load_pretraining_dataset",
]


@dataclasses.dataclass(frozen=True, eq=False)
class ExperimentDataset:
    """The trial windows of one experiment, split into 'train', 'val' and 'test'."""

    experiment_id: int
    container_id: int
    cell_specimen_ids: np.ndarray  # int64 [N]
    splits: dict[str, WindowSplit]
    summary: dict  # JSON-ready counts (see windows.make_windows)
    cache_path: str = ""  # the processed-window file ('' when it could not be written)
    cache_hit: bool = False

    @property
    def num_neurons(self) -> int:
        return int(self.cell_specimen_ids.shape[0])

    @property
    def stim_size(self) -> int:
        return int(self.splits["train"].stim.shape[1])


@dataclasses.dataclass(frozen=True, eq=False)
class PretrainingDataset:
    """Windows of several experiments (each with its own N), per split."""

    experiments: tuple[ExperimentDataset, ...]
    summary: dict

    @property
    def splits(self) -> dict[str, list[WindowSplit]]:
        """{split: one WindowSplit per experiment}, in `experiments` order."""
        return {s: [e.splits[s] for e in self.experiments] for s in SPLITS}

    @property
    def experiment_ids(self) -> list[int]:
        return [e.experiment_id for e in self.experiments]


def resolve_cache_dir(data_cfg) -> str:
    """The Allen cache directory of `data_cfg`; builds the simulated one when it is empty/absent."""
    if data_cfg.cache_dir:
        cache_dir = os.fspath(data_cfg.cache_dir)
        if not os.path.isfile(os.path.join(cache_dir, cache.EXPERIMENTS_FILE)):
            raise DataError(
                f"{cache_dir}: config key data.cache_dir names no allensdk cache directory "
                f"(no {cache.EXPERIMENTS_FILE})"
            )
        return cache_dir
    from quantformer_jax.data import simulate  # only for the simulated observatory

    size, seed = str(data_cfg.simulated_size), int(data_cfg.simulated_seed)
    cache_dir = os.path.join("runs", "observatory", f"{size}-seed{seed}")
    # Idempotent: a complete build of the same (size, seed) is reused, a partial one is finished.
    simulate.build_observatory(cache_dir, size=size, seed=seed)
    return cache_dir


def _session_matches(session_type: str, stimulus: str) -> bool:
    # three_session_C2 also holds the C stimuli.
    return session_type.startswith("three_session_" + constants.STIMULUS_SESSION[stimulus])


def _stimulus_entries(cache_dir: str, stimulus: str) -> dict[int, list[cache.CacheEntry]]:
    """{container id: the cache entries of its experiments that show `stimulus`}."""
    if stimulus not in constants.STIMULUS_SESSION:
        raise ValueError(
            f"config key data.stimulus={stimulus!r}: expected one of "
            f"{sorted(constants.STIMULUS_SESSION)}"
        )
    out: dict[int, list[cache.CacheEntry]] = {}
    for entry in cache.read_cache_index(cache_dir):
        if _session_matches(entry.session_type, stimulus):
            out.setdefault(entry.container_id, []).append(entry)
    return out


def _downloaded(entries: dict[int, list[cache.CacheEntry]]) -> list[int]:
    """Containers whose experiment file is present (a real index lists the whole Observatory)."""
    return sorted(c for c, es in entries.items() if any(e.exists for e in es))


def _select(entries: dict[int, list[cache.CacheEntry]], container_id: int, cache_dir: str):
    index_file = os.path.join(cache_dir, cache.EXPERIMENTS_FILE)
    if container_id not in entries:
        raise DataError(
            f"{index_file}: no experiment for container {container_id} with the configured "
            f"stimulus (containers with one and a file present: {_downloaded(entries)})"
        )
    candidates = entries[container_id]
    if len(candidates) > 1:
        raise DataError(
            f"{index_file}: container {container_id} has several experiments showing the "
            f"stimulus ({[e.experiment_id for e in candidates]})"
        )
    entry = candidates[0]
    if not entry.exists:
        raise DataError(f"{entry.nwb_path}: NWB file of experiment {entry.experiment_id} missing")
    return entry


def processed_cache_key(nwb_path: str, experiment_id: int, spec: WindowSpec) -> str:
    """Hash of everything that determines an experiment's windows (see the module docstring)."""
    stat = os.stat(nwb_path)
    payload = {
        "format_version": PROCESSED_FORMAT_VERSION,
        "experiment_id": int(experiment_id),
        "nwb": [os.path.basename(nwb_path), stat.st_size, stat.st_mtime_ns],
        "spec": dataclasses.asdict(spec),
    }
    text = json.dumps(payload, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _processed_dir(data_cfg, cache_dir: str) -> str:
    if data_cfg.processed_cache_dir:
        return os.fspath(data_cfg.processed_cache_dir)
    return os.path.join(cache_dir, "processed_windows")


def _save(path: str, ds: ExperimentDataset) -> bool:
    arrays = {f"{s}.{k}": getattr(ds.splits[s], k) for s in SPLITS for k in _SPLIT_FIELDS}
    arrays["cell_specimen_ids"] = ds.cell_specimen_ids
    arrays["summary_json"] = np.array(json.dumps(ds.summary))
    arrays["container_id"] = np.array(ds.container_id, dtype=np.int64)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)  # atomic: a reader never sees half a file
        return True
    except OSError as e:
        logging.warning("%s: cannot write the processed-window cache (%s); continuing", path, e)
        if os.path.exists(tmp):
            os.remove(tmp)
        return False


def _load(path: str, experiment_id: int) -> ExperimentDataset | None:
    if not os.path.isfile(path):
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            splits = {s: WindowSplit(**{k: z[f"{s}.{k}"] for k in _SPLIT_FIELDS}) for s in SPLITS}
            return ExperimentDataset(
                experiment_id=experiment_id,
                container_id=int(z["container_id"]),
                cell_specimen_ids=z["cell_specimen_ids"],
                splits=splits,
                summary=json.loads(str(z["summary_json"])),
                cache_path=path,
                cache_hit=True,
            )
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
        logging.warning("%s: unreadable processed-window cache (%s); recomputing", path, e)
        return None


def load_windows(
    entry: cache.CacheEntry, spec: WindowSpec, processed_dir: str
) -> ExperimentDataset:
    """The windows of one cache entry: from the processed cache, else read, windowed and cached."""
    key = processed_cache_key(entry.nwb_path, entry.experiment_id, spec)
    path = os.path.join(processed_dir, f"{entry.experiment_id}-{key}.npz")
    cached = _load(path, entry.experiment_id)
    if cached is not None:
        # The key holds the file's name, size and mtime, not its directory: a copied cache
        # (same mtimes) still hits, and the summary names the file where it is now.
        cached.summary["path"] = entry.nwb_path
        return cached
    experiment = nwb.load_experiment(entry.nwb_path)
    splits, summary = make_windows(experiment, spec)
    summary["container_id"] = entry.container_id
    ds = ExperimentDataset(
        experiment_id=entry.experiment_id,
        container_id=entry.container_id,
        cell_specimen_ids=np.asarray(experiment.cell_specimen_ids, dtype=np.int64),
        splits=splits,
        summary=summary,
    )
    written = _save(path, ds)
    return dataclasses.replace(ds, cache_path=path if written else "")


def load_experiment_dataset(data_cfg, container_id: int | None = None) -> ExperimentDataset:
    """Loads the windows of one container's experiment for `data_cfg.stimulus`.

    Args:
      data_cfg: `config.data` (configs/common.py).
      container_id: the container; None = `data_cfg.container_id`; 0 = the first container of the
        cache (by id) whose experiment for the stimulus has its NWB file present.

    Returns:
      The dataset with `.splits['train'|'val'|'test']`, `.num_neurons` and `.summary`.

    Raises:
      DataError: no such container/experiment, missing NWB file, bad data (names the file).
      ValueError: an invalid option (names the config key).
    """
    spec = WindowSpec.from_config(data_cfg)
    cache_dir = resolve_cache_dir(data_cfg)
    entries = _stimulus_entries(cache_dir, spec.stimulus)
    cid = int(data_cfg.container_id if container_id is None else container_id)
    if cid == 0:
        present = _downloaded(entries)
        if not present:
            raise DataError(f"{cache_dir}: no experiment file shows {spec.stimulus!r}")
        cid = present[0]
    entry = _select(entries, cid, cache_dir)
    return load_windows(entry, spec, _processed_dir(data_cfg, cache_dir))


def load_pretraining_dataset(data_cfg) -> PretrainingDataset:
    """Loads the windows of `data_cfg.container_ids` (empty = every container with a file present).

    An experiment with no active train window is kept (its rows still serve as inactive rows) and
    reported in the log and `summary['experiments_without_active_train']`; with balanced
    pretraining, no active train window at all is an error, since every batch would be empty.

    Raises:
      DataError: a listed container has no experiment for the stimulus, an experiment has no
        stimulus table (MissingStimulusError), or balanced pretraining has no active rows.
    """
    spec = WindowSpec.from_config(data_cfg)
    cache_dir = resolve_cache_dir(data_cfg)
    entries = _stimulus_entries(cache_dir, spec.stimulus)
    ids = [int(c) for c in data_cfg.container_ids] or _downloaded(entries)
    if not ids:
        raise DataError(f"{cache_dir}: no experiment shows {spec.stimulus!r}")
    selected = [_select(entries, c, cache_dir) for c in ids]  # every lookup error before any load
    processed_dir = _processed_dir(data_cfg, cache_dir)
    experiments = tuple(load_windows(entry, spec, processed_dir) for entry in selected)
    no_active = [e.summary["path"] for e in experiments if not e.splits["train"].labels.any()]
    for path in no_active:
        logging.warning("%s: no active neuron in any train window", path)
    summary = {
        "experiment_ids": [e.experiment_id for e in experiments],
        "container_ids": [e.container_id for e in experiments],
        "num_neurons": [e.num_neurons for e in experiments],
        "experiments_without_active_train": no_active,
    }
    for s in SPLITS:
        summary[f"windows_{s}"] = sum(len(e.splits[s]) for e in experiments)
        summary[f"rows_{s}"] = sum(len(e.splits[s]) * e.num_neurons for e in experiments)
        summary[f"active_rows_{s}"] = sum(int(e.splits[s].labels.sum()) for e in experiments)
    if data_cfg.balance_pretraining and summary["active_rows_train"] == 0:
        raise DataError(
            f"{cache_dir}: no active neuron-trial in the train windows of experiments "
            f"{summary['experiment_ids']}; balanced pretraining (config key "
            "data.balance_pretraining) would have no batch"
        )
    return PretrainingDataset(experiments=experiments, summary=summary)
