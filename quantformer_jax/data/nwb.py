"""Reader for Brain Observatory ophys NWB 1.x files (h5py only), with allensdk's semantics.

`load_experiment(path)` returns an `Experiment` whose arrays and tables equal what allensdk
2.16's `BrainObservatoryNwbDataSet` returns for the same file (ALLEN_FORMAT.md section 1):
metadata parsing, corrected fluorescence (pipeline >= 2.0: demixed - r * neuropil from the v2
paths; older: raw - r * neuropil), stored dF/F with its own timestamps, NaN-padded running speed,
stimulus tables (columns, sort by (start, end) keeping the original row index) and the stimulus
epoch table. Bad input raises `DataError` naming the file and the HDF5 path.
"""

from __future__ import annotations

import os
import re
from typing import Any

import h5py
import numpy as np
import pandas as pd

from quantformer_jax.constants import EPOCH_GAP_THRESHOLD_FRAMES, PIPELINE_GROUP
from quantformer_jax.data.experiment import (
    DataError,
    Experiment,
    ExperimentMetadata,
    MissingStimulusError,
)

PRESENTATION = "stimulus/presentation"
FLUO = PIPELINE_GROUP + "/Fluorescence"
# allensdk's stimulus table kinds (brain_observatory_nwb_data_set.STIMULUS_TABLE_TYPES).
ABSTRACT_FEATURE_STIMULI = ("drifting_gratings", "static_gratings")
INDEXED_STIMULI = (
    "natural_scenes",
    "locally_sparse_noise",
    "locally_sparse_noise_4deg",
    "locally_sparse_noise_8deg",
)
REPEATED_STIMULI = ("natural_movie_one", "natural_movie_two", "natural_movie_three")
SPONTANEOUS = "spontaneous"
MAX_EPOCHS_PER_STIMULUS = 3  # allensdk get_epoch_mask_list(max_cuts=2)

_METADATA_PATHS = {
    "age": "general/subject/age",
    "sex": "general/subject/sex",
    "imaging_depth": "general/optophysiology/imaging_plane_1/imaging depth",
    "targeted_structure": "general/optophysiology/imaging_plane_1/location",
    "ophys_experiment_id": "general/session_id",
    "experiment_container_id": "general/experiment_container_id",
    "device_string": "general/devices/2-photon microscope",
    "indicator": "general/optophysiology/imaging_plane_1/indicator",
    "genotype": "general/subject/genotype",
    "session_start_time": "session_start_time",
    "session_type": "general/session_type",
}


def _decode(value: Any) -> Any:
    if isinstance(value, bytes | np.bytes_):
        return value.decode("utf-8")
    if isinstance(value, np.ndarray) and value.dtype.kind in "SO":
        return [_decode(v) for v in value.reshape(-1)]
    return value


class _Reader:
    """Wraps an open h5py.File so every failure names the file and the HDF5 path."""

    def __init__(self, f: h5py.File, path: str):
        self.f = f
        self.path = path

    def error(self, hpath: str, what: str) -> DataError:
        return DataError(f"{self.path}: {hpath}: {what}")

    def has(self, hpath: str) -> bool:
        try:
            return hpath in self.f
        except (OSError, RuntimeError):
            return False

    def node(self, hpath: str) -> Any:
        try:
            return self.f[hpath]
        except KeyError:
            raise self.error(hpath, "missing group/dataset") from None
        except (OSError, RuntimeError) as e:
            raise self.error(hpath, f"unreadable (truncated or corrupt file?): {e}") from None

    def read(self, hpath: str) -> Any:
        ds = self.node(hpath)
        if not isinstance(ds, h5py.Dataset):
            raise self.error(hpath, "expected a dataset, found a group")
        try:
            return ds[()]
        except (OSError, RuntimeError, ValueError) as e:
            raise self.error(hpath, f"cannot read data (truncated or corrupt file?): {e}") from None

    def string(self, hpath: str) -> str:
        value = _decode(self.read(hpath))
        if not isinstance(value, str):
            raise self.error(hpath, f"expected a scalar string, found {value!r}")
        return value


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", version)) or (0,)


def read_metadata(r: _Reader) -> ExperimentMetadata:
    """Parses `general/...` as allensdk's get_metadata() does (age, depth, ids, cre line)."""
    m = {key: r.string(hpath) for key, hpath in _METADATA_PATHS.items()}
    age = re.match(r"(.*?) days", m["age"])
    try:
        age_days = int(age.groups()[0]) if age else None
    except ValueError:
        age_days = None
    if age_days is None:
        raise r.error(_METADATA_PATHS["age"], f"could not parse age {m['age']!r} (want 'N days')")
    try:
        depth = int(m["imaging_depth"].split()[0])
    except (ValueError, IndexError):
        raise r.error(
            _METADATA_PATHS["imaging_depth"],
            f"could not parse imaging depth {m['imaging_depth']!r} (want 'N microns')",
        ) from None
    ids = {}
    for key in ("ophys_experiment_id", "experiment_container_id"):
        try:
            ids[key] = int(m[key])
        except ValueError:
            raise r.error(_METADATA_PATHS[key], f"not an integer id: {m[key]!r}") from None
    if not re.match(r"(.*?)\.\s(.*?)\sPlease*", m["device_string"]):
        raise r.error(_METADATA_PATHS["device_string"], "could not parse device string")
    if m["session_type"] not in EPOCH_GAP_THRESHOLD_FRAMES:
        raise r.error(
            _METADATA_PATHS["session_type"],
            f"unknown session type {m['session_type']!r} "
            f"(known: {sorted(EPOCH_GAP_THRESHOLD_FRAMES)})",
        )
    version = "0.9"
    if r.has("general/generated_by"):
        generated_by = _decode(r.read("general/generated_by"))
        if isinstance(generated_by, str):
            generated_by = [generated_by]
        if generated_by:
            version = str(generated_by[-1])
    return ExperimentMetadata(
        ophys_experiment_id=ids["ophys_experiment_id"],
        experiment_container_id=ids["experiment_container_id"],
        session_type=m["session_type"],
        targeted_structure=m["targeted_structure"],
        imaging_depth_um=depth,
        cre_line=m["genotype"].split(";")[0],
        genotype=m["genotype"],
        indicator=m["indicator"],
        age_days=age_days,
        sex=m["sex"],
        pipeline_version=version,
        session_start_time=m["session_start_time"],
    )


def _trace(r: _Reader, hpath: str, n_cells: int, n_frames: int | None) -> np.ndarray:
    data = r.read(hpath)
    if data.ndim != 2 or data.shape[0] != n_cells:
        raise r.error(hpath, f"shape {data.shape}, expected ({n_cells}, n_frames)")
    if n_frames is not None and data.shape[1] != n_frames:
        raise r.error(hpath, f"{data.shape[1]} frames, timestamps have {n_frames}")
    return data


def _check_nan(r: _Reader, hpath: str, traces: np.ndarray, ids: np.ndarray) -> None:
    bad = np.isnan(traces)
    n_bad = int(bad.sum())
    if n_bad:
        cells = np.flatnonzero(bad.any(axis=1))
        shown = ", ".join(str(int(ids[i])) for i in cells[:10])
        more = f" and {len(cells) - 10} more" if len(cells) > 10 else ""
        raise r.error(
            hpath,
            f"{n_bad} NaN values in {len(cells)} of {len(ids)} cells (cell_specimen_ids "
            f"{shown}{more}); pass allow_nan=True to load them unchanged",
        )


def read_corrected_fluorescence(
    r: _Reader, version: str, n_cells: int, n_frames: int
) -> tuple[np.ndarray, str]:
    """allensdk's get_corrected_fluorescence_traces(); returns (traces, source HDF5 path)."""
    if _version_tuple(version) >= (2, 0):
        cell_path = FLUO + "/imaging_plane_1_demixed_signal/data"
        np_group = FLUO + "/imaging_plane_1_neuropil_response"
        np_path, r_path = np_group + "/data", np_group + "/r"
    else:
        cell_path = FLUO + "/imaging_plane_1/data"
        np_path = FLUO + "/imaging_plane_1/neuropil_traces"
        r_path = FLUO + "/imaging_plane_1/r"
    cell = _trace(r, cell_path, n_cells, n_frames)
    neuropil = _trace(r, np_path, n_cells, n_frames)
    ratio = np.asarray(r.read(r_path))
    if ratio.shape != (n_cells,):
        raise r.error(r_path, f"shape {ratio.shape}, expected ({n_cells},)")
    # Same expression and dtypes as allensdk, so the result matches it bit for bit.
    return cell - neuropil * ratio[:, np.newaxis], cell_path


def read_running_speed(r: _Reader, timestamps: np.ndarray) -> np.ndarray:
    """Running speed (cm/s) NaN-padded to the fluorescence timestamps (allensdk's alignment)."""
    group = PIPELINE_GROUP + "/BehavioralTimeSeries/running_speed"
    speed = np.asarray(r.read(group + "/data"))
    times = np.asarray(r.read(group + "/timestamps"))
    if speed.ndim == 2:  # pipeline 0.9 stored an (N, 1) column
        speed = speed[:, 0]
    if len(times) == 0:
        raise r.error(group + "/timestamps", "empty")
    if times[0] != timestamps[0]:
        match = np.flatnonzero(timestamps == times[0])
        if len(match) == 0:
            raise r.error(
                group + "/timestamps",
                "first running timestamp is not one of the fluorescence timestamps",
            )
        speed = np.insert(speed, 0, np.full(match[0], np.nan))
        times = np.insert(times, 0, timestamps[: match[0]])
    missing = len(timestamps) - len(times)
    if missing > 0:
        speed = np.append(speed, np.full(missing, np.nan))
    return speed


def _find_stimulus_group(r: _Reader, name: str) -> h5py.Group:
    """The unique group named `name` or `name_stimulus` below stimulus/presentation."""
    wanted = {name, name + "_stimulus"}
    matches: list[Any] = []
    r.node(PRESENTATION).visititems(
        lambda key, obj: matches.append(obj) if key.split("/")[-1] in wanted else None
    )
    if len(matches) != 1:
        what = "not found" if not matches else f"several matches {[m.name for m in matches]}"
        raise MissingStimulusError(f"{r.path}: {PRESENTATION}: stimulus {name!r} {what}")
    return matches[0]


def _stimulus_dataset(r: _Reader, group: h5py.Group, relname: str) -> np.ndarray:
    if relname in group:
        return r.read(group.name + "/" + relname)
    found: list[str] = []
    group.visititems(lambda key, obj: found.append(key) if key.split("/")[-1] == relname else None)
    if not found:
        raise r.error(group.name + "/" + relname, "missing stimulus dataset")
    return r.read(group.name + "/" + found[0])


def _frames(r: _Reader, group: h5py.Group, n_rows: int) -> tuple[np.ndarray, np.ndarray]:
    frame_dur = np.asarray(_stimulus_dataset(r, group, "frame_duration"))
    if frame_dur.ndim != 2 or frame_dur.shape[1] < 2 or frame_dur.shape[0] != n_rows:
        raise r.error(
            group.name + "/frame_duration", f"shape {frame_dur.shape}, expected ({n_rows}, 2)"
        )
    return frame_dur[:, 0].astype(np.int64), frame_dur[:, 1].astype(np.int64)


def read_stimulus_table(r: _Reader, name: str) -> pd.DataFrame:
    """allensdk's get_stimulus_table(name) for one stimulus of the file."""
    group = _find_stimulus_group(r, name)
    if name == SPONTANEOUS:
        events = np.asarray(_stimulus_dataset(r, group, "data"))
        frame_dur = np.asarray(_stimulus_dataset(r, group, "frame_duration"))
        starts, stops = np.flatnonzero(events == 1), np.flatnonzero(events == -1)
        if len(starts) != len(stops) or frame_dur.ndim != 2 or len(frame_dur) < len(events):
            raise r.error(
                group.name + "/data",
                f"{len(starts)} start (1) and {len(stops)} end (-1) events for "
                f"frame_duration of shape {frame_dur.shape}",
            )
        table = pd.DataFrame(
            {
                "start": frame_dur[starts, 0].astype(np.int64),
                "end": frame_dur[stops, 0].astype(np.int64),
            }
        )
        return table.sort_values(["start", "end"])
    data = np.asarray(_stimulus_dataset(r, group, "data"))
    if name in ABSTRACT_FEATURE_STIMULI:
        features = _decode(np.asarray(_stimulus_dataset(r, group, "features")))
        if data.ndim != 2 or data.shape[1] != len(features):
            raise r.error(group.name + "/data", f"shape {data.shape} for features {features}")
        table = pd.DataFrame(data, columns=features)
    elif name in INDEXED_STIMULI or name in REPEATED_STIMULI:
        table = pd.DataFrame(data, columns=["frame"])
    else:
        raise r.error(group.name, f"unknown stimulus {name!r}: no allensdk table type")
    table["start"], table["end"] = _frames(r, group, len(table))
    table = table.sort_values(["start", "end"])
    if name in REPEATED_STIMULI:
        n_unique = table["frame"].nunique()
        if n_unique == 0 or len(table) % n_unique:
            raise r.error(
                group.name + "/data",
                f"{len(table)} rows are not complete repeats of {n_unique} movie frames",
            )
        table["repeat"] = np.repeat(np.arange(len(table) // n_unique), n_unique)
    return table


def stimulus_epoch_table(
    tables: dict[str, pd.DataFrame], session_type: str, path: str = "?"
) -> pd.DataFrame:
    """allensdk's get_stimulus_epoch_table(): contiguous epochs per stimulus, sorted by start.

    A stimulus table is cut where the gap between one row's end and the next row's start exceeds
    the session's threshold (A 39 frames, B 15, C/C2 7). `tables` must be in the file's
    list_stimuli() order (ties in start keep that order, as allensdk's stable sort does).
    """
    threshold = EPOCH_GAP_THRESHOLD_FRAMES.get(session_type)
    if threshold is None:
        raise DataError(
            f"{path}: general/session_type: no epoch gap threshold for {session_type!r}"
        )
    intervals: list[tuple[int, int, str]] = []
    for name, table in tables.items():
        if len(table) == 0:
            raise DataError(f"{path}: {PRESENTATION}/{name}: empty stimulus table")
        start, end = table["start"].to_numpy(), table["end"].to_numpy()
        cuts = np.flatnonzero(start[1:] - end[:-1] > threshold) + 1
        if len(cuts) + 1 > MAX_EPOCHS_PER_STIMULUS:
            raise DataError(
                f"{path}: {PRESENTATION}/{name}: {len(cuts) + 1} epochs (allensdk allows at most "
                f"{MAX_EPOCHS_PER_STIMULUS}; EpochSeparationException)"
            )
        bounds = np.concatenate([[0], cuts, [len(table)]])
        for a, b in zip(bounds[:-1], bounds[1:], strict=True):
            intervals.append((int(start[a]), int(end[b - 1]), name))
    intervals.sort(key=lambda x: x[0])  # stable, like allensdk's list.sort
    return pd.DataFrame(
        {
            "stimulus": [s for _, _, s in intervals],
            "start": np.array([a for a, _, _ in intervals], dtype=np.int64),
            "end": np.array([b for _, b, _ in intervals], dtype=np.int64),
        }
    )


def load_experiment(path: str | os.PathLike, *, allow_nan: bool = False) -> Experiment:
    """Reads one Brain Observatory ophys NWB file into an `Experiment`.

    Args:
      path: the .nwb file (NWB 1.x / HDF5, as in the Allen cache or written by the simulator).
      allow_nan: when False (default) NaN values in the corrected fluorescence or the stored
        dF/F raise a DataError naming the count and the cells; when True they are kept.

    Returns:
      The experiment with allensdk's values (see the module docstring).

    Raises:
      DataError: not a file, not HDF5 or truncated, missing group/dataset, unparseable
        metadata, inconsistent shapes, NaN traces, bad stimulus tables or epochs.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DataError(f"{path}: not a file")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise DataError(f"{path}: not a readable HDF5/NWB file ({e})") from None
    with f:
        r = _Reader(f, path)
        metadata = read_metadata(r)
        seg = PIPELINE_GROUP + "/ImageSegmentation/cell_specimen_ids"
        ids = np.asarray(r.read(seg)).astype(np.int64)
        if ids.ndim != 1:
            raise r.error(seg, f"shape {ids.shape}, expected (n_cells,)")
        ts_path = FLUO + "/imaging_plane_1/timestamps"
        timestamps = np.asarray(r.read(ts_path), dtype=np.float64)
        corrected, corrected_path = read_corrected_fluorescence(
            r, metadata.pipeline_version, len(ids), len(timestamps)
        )
        dff_group = PIPELINE_GROUP + "/DfOverF/imaging_plane_1"
        dff = _trace(r, dff_group + "/data", len(ids), None)
        dff_timestamps = np.asarray(r.read(dff_group + "/timestamps"), dtype=np.float64)
        if dff_timestamps.shape != (dff.shape[1],):
            raise r.error(dff_group + "/timestamps", f"{len(dff_timestamps)} != {dff.shape[1]}")
        if not allow_nan:
            _check_nan(r, corrected_path + " (corrected fluorescence)", corrected, ids)
            _check_nan(r, dff_group + "/data", dff, ids)
        running = read_running_speed(r, timestamps)
        names = [key.replace("_stimulus", "") for key in r.node(PRESENTATION).keys()]
        tables = {name: read_stimulus_table(r, name) for name in names}
        epochs = stimulus_epoch_table(tables, metadata.session_type, path)
    return Experiment(
        path=path,
        metadata=metadata,
        cell_specimen_ids=ids,
        timestamps=timestamps,
        corrected_fluorescence=corrected,
        dff=dff,
        dff_timestamps=dff_timestamps,
        running_speed=running,
        stimulus_tables=tables,
        epoch_table=epochs,
    )
