"""Cross-check: allensdk and the project's NWB reader must see the same data in a cache directory.

Run in the allensdk environment on a cache of simulated (or real) files:

    .venv-allen/bin/python -m quantformer_jax.allen.crosscheck --cache-dir DIR

For the cache index, allensdk's `BrainObservatoryCache` (offline, ALLEN_FORMAT.md 2.3) is compared
with `quantformer_jax.data.cache.read_cache_index`: containers, experiments, session types, cre
lines, areas, depths and NWB paths. For every experiment, allensdk's `BrainObservatoryNwbDataSet`
is compared with `quantformer_jax.data.nwb.load_experiment`: cell ids, fluorescence timestamps,
corrected fluorescence, dF/F and its timestamps, running speed, every stimulus table (columns,
row index, dtypes, values), the stimulus epoch table and the metadata. Ids, integers, strings and
timestamps must be equal; other floats must agree within `|ours - allensdk| <= tol * (1 +
|allensdk|)` (tol 1e-6), with NaNs at the same places.

Prints one line per check and a verdict; exits 0 when everything agrees, 1 on any mismatch.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

from quantformer_jax.allen.listing import offline_api, open_cache, require_allensdk
from quantformer_jax.data import cache, nwb

DEFAULT_TOL = 1e-6
# allensdk get_metadata() key for each ExperimentMetadata field compared as-is.
_METADATA_KEYS = {
    "ophys_experiment_id": "ophys_experiment_id",
    "experiment_container_id": "experiment_container_id",
    "session_type": "session_type",
    "targeted_structure": "targeted_structure",
    "imaging_depth_um": "imaging_depth_um",
    "cre_line": "cre_line",
    "genotype": "genotype",
    "indicator": "indicator",
    "age_days": "age_days",
    "sex": "sex",
    "pipeline_version": "pipeline_version",
}


def compare_arrays(field: str, ref, ours, tol: float = DEFAULT_TOL) -> list[str]:
    """Mismatches between allensdk's `ref` and our `ours` (shape, NaN places, values).

    Integer, boolean and string arrays must be equal; float arrays must agree within
    `tol * (1 + |ref|)` (tol 0: equal) with NaNs at the same places.
    """
    ref, ours = np.asarray(ref), np.asarray(ours)
    if ref.shape != ours.shape:
        return [f"{field}: shape allensdk {ref.shape} vs ours {ours.shape}"]
    exact = not (ref.dtype.kind == "f" or ours.dtype.kind == "f")  # ids, ints, strings
    if exact:
        if not np.array_equal(ref, ours):
            bad = np.argwhere(ref != ours)
            at = tuple(int(i) for i in bad[0])
            a, b = ref[at].item(), ours[at].item()
            return [
                f"{field}: {len(bad)} of {ref.size} values differ; first at {at}: {a!r} vs {b!r}"
            ]
        return []
    ref, ours = ref.astype(np.float64), ours.astype(np.float64)
    nan_ref, nan_ours = np.isnan(ref), np.isnan(ours)
    if not np.array_equal(nan_ref, nan_ours):
        n = int((nan_ref != nan_ours).sum())
        return [f"{field}: NaN at different places ({n} elements; allensdk {int(nan_ref.sum())} "
                f"NaN, ours {int(nan_ours.sum())})"]  # fmt: skip
    err = np.where(nan_ref, 0.0, np.abs(ours - ref) / (1.0 + np.abs(ref)))
    if err.size and err.max() > tol:
        at = np.unravel_index(int(err.argmax()), err.shape)
        at = tuple(int(i) for i in at)
        return [
            f"{field}: {int((err > tol).sum())} of {err.size} values differ beyond {tol:g}; worst "
            f"at {at}: allensdk {ref[at].item()!r} vs ours {ours[at].item()!r}"
        ]
    return []


def compare_tables(field: str, ref: pd.DataFrame, ours: pd.DataFrame, tol: float) -> list[str]:
    """Mismatches between two tables: column order, row index, per-column dtype and values."""
    if list(ref.columns) != list(ours.columns):
        return [f"{field}: columns allensdk {list(ref.columns)} vs ours {list(ours.columns)}"]
    problems = compare_arrays(f"{field} row index", ref.index.to_numpy(), ours.index.to_numpy())
    if problems:
        return problems
    for col in ref.columns:
        a, b = ref[col], ours[col]
        if a.dtype != b.dtype:
            problems.append(f"{field}[{col!r}]: dtype allensdk {a.dtype} vs ours {b.dtype}")
        problems += compare_arrays(f"{field}[{col!r}]", a.to_numpy(), b.to_numpy(), tol)
    return problems


def compare_experiment(path: str, tol: float = DEFAULT_TOL) -> tuple[list[str], str]:
    """Compares allensdk's BrainObservatoryNwbDataSet and `nwb.load_experiment` on one file.

    Returns:
      (mismatches, a one-line summary of what was compared).
    """
    from allensdk.core.brain_observatory_nwb_data_set import BrainObservatoryNwbDataSet
    from dateutil import parser as date_parser

    ds = BrainObservatoryNwbDataSet(path)
    ours = nwb.load_experiment(path)
    p = compare_arrays("cell_specimen_ids", ds.get_cell_specimen_ids(), ours.cell_specimen_ids)
    ts, corrected = ds.get_corrected_fluorescence_traces()
    p += compare_arrays("timestamps", ts, ours.timestamps, 0.0)  # same float64 dataset: equal
    p += compare_arrays("corrected_fluorescence", corrected, ours.corrected_fluorescence, tol)
    dff_ts, dff = ds.get_dff_traces()
    p += compare_arrays("dff_timestamps", dff_ts, ours.dff_timestamps, 0.0)
    p += compare_arrays("dff", dff, ours.dff, tol)
    speed, _ = ds.get_running_speed()
    p += compare_arrays("running_speed", speed, ours.running_speed, tol)
    names = ds.list_stimuli()
    if sorted(names) != ours.list_stimuli():
        p.append(f"stimuli: allensdk {sorted(names)} vs ours {ours.list_stimuli()}")
    for name in sorted(set(names) & set(ours.list_stimuli())):
        ref_table = ds.get_stimulus_table(name)
        p += compare_tables(f"stimulus_table({name!r})", ref_table, ours.stimulus_table(name), tol)
    epochs = ds.get_stimulus_epoch_table()
    p += compare_tables("epoch_table", epochs, ours.epoch_table, tol)
    meta = ds.get_metadata()
    for field, key in _METADATA_KEYS.items():
        if meta.get(key) != getattr(ours.metadata, field):
            p.append(
                f"metadata.{field}: allensdk {meta.get(key)!r} vs ours "
                f"{getattr(ours.metadata, field)!r}"
            )
    if date_parser.parse(ours.metadata.session_start_time) != meta.get("session_start_time"):
        p.append(
            f"metadata.session_start_time: allensdk {meta.get('session_start_time')!r} vs ours "
            f"{ours.metadata.session_start_time!r}"
        )
    summary = (
        f"{ours.num_cells} cells x {ours.num_frames} frames, {len(names)} stimulus tables, "
        f"{len(epochs)} epochs"
    )
    return p, summary


def compare_index(cache_dir: str) -> tuple[list[str], str]:
    """Compares allensdk's offline BrainObservatoryCache with `cache.read_cache_index`."""
    ours = cache.read_cache_index(cache_dir)
    boc = open_cache(cache_dir, offline_api())
    containers = {int(c["id"]): c for c in boc.get_experiment_containers(include_failed=True)}
    exps = {int(e["id"]): e for e in boc.get_ophys_experiments(include_failed=True)}
    p = []
    if set(containers) != {e.container_id for e in ours}:
        p.append(f"container ids: allensdk {sorted(containers)} vs ours "
                 f"{sorted({e.container_id for e in ours})}")  # fmt: skip
    if set(exps) != {e.experiment_id for e in ours}:
        p.append(f"experiment ids: allensdk {sorted(exps)} vs ours "
                 f"{sorted(e.experiment_id for e in ours)}")  # fmt: skip
    for entry in ours:
        ref = exps.get(entry.experiment_id)
        if ref is None:
            continue
        for field, key in (
            ("container_id", "experiment_container_id"),
            ("session_type", "session_type"),
            ("targeted_structure", "targeted_structure"),
            ("imaging_depth", "imaging_depth"),
            ("cre_line", "cre_line"),
        ):
            if ref[key] != getattr(entry, field):
                p.append(f"experiment {entry.experiment_id} {field}: allensdk {ref[key]!r} vs ours "
                         f"{getattr(entry, field)!r}")  # fmt: skip
        path = boc.get_cache_path(None, boc.EXPERIMENT_DATA_KEY, entry.experiment_id)
        if os.path.abspath(path) != os.path.abspath(entry.nwb_path):
            p.append(f"experiment {entry.experiment_id} NWB path: allensdk {path} vs ours "
                     f"{entry.nwb_path}")  # fmt: skip
        elif entry.exists:  # allensdk opens it from the cache without going online
            boc.get_ophys_experiment_data(entry.experiment_id)
    return p, f"{len(containers)} containers, {len(exps)} experiments"


def _run(name: str, check: Callable[[], tuple[list[str], str]]) -> list[str]:
    """Runs one check; an exception in either reader is a mismatch, reported in one line."""
    t0 = time.perf_counter()
    try:
        problems, summary = check()
    except Exception as e:  # noqa: BLE001 (any failure of either side is a finding)
        where = traceback.extract_tb(e.__traceback__)[-1]
        problems = [
            f"raised {type(e).__name__}: {e} (at {os.path.basename(where.filename)}:{where.lineno})"
        ]
        summary = ""
    verdict = "OK" if not problems else f"MISMATCH ({len(problems)})"
    print(f"  {name}: {verdict}  {summary}  [{time.perf_counter() - t0:.1f} s]")
    for problem in problems:
        print(f"    - {problem}")
    return problems


def crosscheck(
    cache_dir: str, experiment_ids: Sequence[int] | None = None, tol: float = DEFAULT_TOL
) -> int:
    """Runs every check on `cache_dir` and prints the results. Returns the mismatch count."""
    require_allensdk()
    import allensdk

    entries = [e for e in cache.read_cache_index(cache_dir) if e.exists]
    if experiment_ids:
        entries = [e for e in entries if e.experiment_id in set(experiment_ids)]
    if not entries:
        raise FileNotFoundError(f"{cache_dir}: no NWB file to cross-check")
    print(
        f"allensdk {allensdk.__version__} vs quantformer_jax.data.nwb on {cache_dir} "
        f"({len(entries)} experiments, tol {tol:g})"
    )
    problems = _run("cache index", lambda: compare_index(cache_dir))
    for e in entries:
        problems += _run(
            f"experiment {e.experiment_id}", lambda e=e: compare_experiment(e.nwb_path, tol)
        )
    return len(problems)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m quantformer_jax.allen.crosscheck", description=__doc__.splitlines()[0]
    )
    p.add_argument("--cache-dir", required=True, help="allensdk-layout cache (e.g. simulated)")
    p.add_argument("--experiments", nargs="+", type=int, help="only these experiment ids")
    p.add_argument("--tol", type=float, default=DEFAULT_TOL)
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    try:
        n = crosscheck(args.cache_dir, args.experiments, args.tol)
    except (OSError, ValueError, RuntimeError) as e:  # DataError is a ValueError
        print(f"cross-check FAILED: cannot read the cache index: {e}")
        return 1
    took = f"{time.perf_counter() - t0:.1f} s"
    if n:
        print(f"cross-check FAILED: {n} mismatches between allensdk and our reader ({took})")
        return 1
    print(f"cross-check PASSED: allensdk and our reader agree ({took})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
