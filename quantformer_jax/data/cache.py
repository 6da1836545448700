"""The allensdk BrainObservatoryCache directory layout: manifest, JSON indexes, NWB paths.

A cache directory (real Allen download or simulated) looks like (ALLEN_FORMAT.md 2.1):

    <dir>/manifest.json                 manifest_version "1.3", paths relative to <dir>
    <dir>/experiment_containers.json    raw API records of the containers
    <dir>/ophys_experiments.json        raw API records of the experiments (session types)
    <dir>/ophys_experiment_data/<id>.nwb

`read_cache_index` turns the JSON records into one row per experiment; `experiment_path` gives
the NWB path of one experiment. Both work without allensdk (plain json).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

from quantformer_jax.constants import MANIFEST_VERSION
from quantformer_jax.data.experiment import DataError

MANIFEST_FILE = "manifest.json"
CONTAINERS_FILE = "experiment_containers.json"
EXPERIMENTS_FILE = "ophys_experiments.json"
EXPERIMENT_DATA_DIR = "ophys_experiment_data"

# (key, relative spec, type) exactly as allensdk's BrainObservatoryCache.build_manifest writes them.
_MANIFEST_PATHS = (
    ("BASEDIR", ".", "dir"),
    ("EXPERIMENT_CONTAINERS", CONTAINERS_FILE, "file"),
    ("EXPERIMENTS", EXPERIMENTS_FILE, "file"),
    ("EXPERIMENT_DATA", EXPERIMENT_DATA_DIR + "/%d.nwb", "file"),
    ("ANALYSIS_DATA", "ophys_experiment_analysis/%d_%s_analysis.h5", "file"),
    ("EVENTS_DATA", "ophys_experiment_events/%d_events.npz", "file"),
    ("CELL_SPECIMENS", "cell_specimens.json", "file"),
    ("STIMULUS_MAPPINGS", "stimulus_mappings.json", "file"),
    ("EYE_GAZE_DATA", "ophys_eye_gaze_mapping/%d_eyetracking_dlc_to_screen_mapping.h5", "file"),
)


@dataclasses.dataclass(frozen=True)
class CacheEntry:
    """One ophys experiment listed in a cache directory's ophys_experiments.json."""

    experiment_id: int
    container_id: int
    session_type: str
    targeted_structure: str
    imaging_depth: int
    cre_line: str | None
    nwb_path: str
    exists: bool


def manifest_dict() -> dict[str, Any]:
    """The manifest.json content allensdk 2.16 builds for a BrainObservatoryCache.

    The version is an entry of the "manifest" list (`{"type": "manifest_version", ...}`), which
    is where allensdk's ManifestBuilder puts it and where its Cache reads it from.
    """
    entries: list[dict[str, str]] = [{"type": "manifest_version", "value": MANIFEST_VERSION}]
    for key, spec, typename in _MANIFEST_PATHS:
        entry = {"key": key, "type": typename, "spec": spec}
        if key != "BASEDIR":
            entry["parent_key"] = "BASEDIR"
        entries.append(entry)
    return {"manifest": entries}


def nwb_path(cache_dir: str | os.PathLike, experiment_id: int) -> str:
    """`<cache_dir>/ophys_experiment_data/<experiment_id>.nwb` (no existence check)."""
    return os.path.join(os.fspath(cache_dir), EXPERIMENT_DATA_DIR, f"{int(experiment_id)}.nwb")


def _read_json(path: str) -> Any:
    if not os.path.isfile(path):
        raise DataError(f"{path}: cache index file not found")
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: cannot parse JSON ({e})") from None


def _check_manifest(cache_dir: str) -> None:
    path = os.path.join(cache_dir, MANIFEST_FILE)
    manifest = _read_json(path)
    if not isinstance(manifest, dict) or not isinstance(manifest.get("manifest"), list):
        raise DataError(f"{path}: not an allensdk manifest (no 'manifest' list)")
    versions = [
        e.get("value")
        for e in manifest["manifest"]
        if isinstance(e, dict) and e.get("type") == "manifest_version"
    ]
    version = versions[0] if versions else None
    if version != MANIFEST_VERSION:
        raise DataError(
            f"{path}: manifest_version {version!r}, allensdk's BrainObservatoryCache needs "
            f"{MANIFEST_VERSION!r}"
        )


def _cre_line(record: dict[str, Any]) -> str | None:
    # allensdk: first driver line whose name contains "Cre".
    lines = record.get("specimen", {}).get("donor", {}).get("transgenic_lines", [])
    for line in lines:
        if line.get("transgenic_line_type_name") == "driver" and "Cre" in line.get("name", ""):
            return line["name"]
    return None


def read_cache_index(cache_dir: str | os.PathLike) -> list[CacheEntry]:
    """Lists the experiments of a cache directory, sorted by (container id, session type).

    Args:
      cache_dir: directory holding manifest.json and ophys_experiments.json.

    Returns:
      One `CacheEntry` per record of ophys_experiments.json, with its NWB path and whether that
      file exists.

    Raises:
      DataError: missing/unparseable manifest.json or ophys_experiments.json, a wrong manifest
        version, or a record without the fields allensdk needs.
    """
    cache_dir = os.fspath(cache_dir)
    _check_manifest(cache_dir)
    path = os.path.join(cache_dir, EXPERIMENTS_FILE)
    records = _read_json(path)
    if not isinstance(records, list):
        raise DataError(f"{path}: expected a JSON list of experiment records")
    entries = []
    for i, rec in enumerate(records):
        try:
            exp_id = int(rec["id"])
            entries.append(
                CacheEntry(
                    experiment_id=exp_id,
                    container_id=int(rec["experiment_container_id"]),
                    session_type=str(rec["stimulus_name"]),
                    targeted_structure=str(rec["targeted_structure"]["acronym"]),
                    imaging_depth=int(rec["imaging_depth"]),
                    cre_line=_cre_line(rec),
                    nwb_path=nwb_path(cache_dir, exp_id),
                    exists=os.path.isfile(nwb_path(cache_dir, exp_id)),
                )
            )
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(f"{path}: record {i} lacks or has a bad field {e}") from None
    return sorted(entries, key=lambda e: (e.container_id, e.session_type, e.experiment_id))


def experiment_path(cache_dir: str | os.PathLike, experiment_id: int) -> str:
    """The NWB path of `experiment_id`, checked against the index and the disk.

    Raises:
      DataError: the id is not in ophys_experiments.json, or its NWB file is missing.
    """
    entries = {e.experiment_id: e for e in read_cache_index(cache_dir)}
    index_file = os.path.join(os.fspath(cache_dir), EXPERIMENTS_FILE)
    if int(experiment_id) not in entries:
        raise DataError(
            f"{index_file}: experiment {experiment_id} not listed "
            f"(listed: {sorted(entries)[:10]}{' ...' if len(entries) > 10 else ''})"
        )
    entry = entries[int(experiment_id)]
    if not entry.exists:
        raise DataError(f"{entry.nwb_path}: NWB file of experiment {experiment_id} is missing")
    return entry.nwb_path


def container_experiments(cache_dir: str | os.PathLike) -> dict[int, dict[str, int]]:
    """{container id: {session type: experiment id}} of a cache directory."""
    out: dict[int, dict[str, int]] = {}
    for e in read_cache_index(cache_dir):
        out.setdefault(e.container_id, {})[e.session_type] = e.experiment_id
    return out


def write_json(path: str, obj: Any) -> None:
    """Writes `obj` as indented JSON (used for the manifest and the index files)."""
    with open(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=False)
        f.write("\n")
