"""Simulated Brain Observatory: a seeded cache directory of realistic three_session_A NWB files.

`build_observatory(out_dir, size, seed)` writes, in allensdk's cache layout (ALLEN_FORMAT.md 2):
manifest.json, experiment_containers.json, ophys_experiments.json (raw API records, so
`BrainObservatoryCache(manifest_file=..., api=OfflineApi())` works offline),
ophys_experiment_data/<id>.nwb (read by allensdk 2.16 and by `nwb.load_experiment`) and
ophys_experiment_data/<id>_ground_truth.npz (cell parameters, spikes, true dF/F, trial gains,
running speed, arousal state). The generative model lives in `calcium.py`, the stimulus layout in
`schedule.py`, the file writer in `nwb_writer.py`.

CLI: python -m quantformer_jax.data.simulate --out DIR --size mini|full --seed S [--containers N]
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import sys
import time

import numpy as np

from quantformer_jax.data import cache, calcium, schedule
from quantformer_jax.data.experiment import DataError
from quantformer_jax.data.nwb_writer import NwbContent, roi_masks, write_nwb

SIMULATION_FILE = "simulation.json"
SIMULATOR_VERSION = 1
SESSION_TYPE = "three_session_A"
CONTAINER_ID_BASE = 900_000_000  # fake id range, disjoint from real Allen ids (~5e8)
CELL_ID_BASE = 910_000_000
ROI_ID_BASE = 920_000_000
REPORTER = "Ai93(TITL-GCaMP6f)"

# (Cre driver, targeted area, imaging depth um, DG-responsive fraction); cycled over containers.
CONTAINER_PROFILES = (
    ("Cux2-CreERT2", "VISp", 175, 0.40),
    ("Rorb-IRES2-Cre", "VISl", 275, 0.32),
    ("Rbp4-Cre_KL100", "VISal", 375, 0.27),
    ("Emx1-IRES-Cre", "VISpm", 275, 0.24),
    ("Scnn1a-Tg3-Cre", "VISp", 350, 0.36),
    ("Nr5a1-Cre", "VISam", 350, 0.20),
)


@dataclasses.dataclass(frozen=True)
class ObservatorySpec:
    """How many containers, how many cells each, and the session sizes."""

    cells: tuple[int, ...]  # one entry per container
    session: schedule.SessionSpec
    compression: str | None = None


SIZES = {
    "mini": ObservatorySpec(
        cells=(12, 16, 20),
        session=schedule.SessionSpec(
            dg_repeats=3,
            nm1_frames=30,
            nm3_frames=60,
            spont_frames=600,
            lead_frames=150,
            gap_frames=120,
            tail_frames=150,
        ),
    ),
    "full": ObservatorySpec(cells=(220, 160, 120, 190), session=schedule.SessionSpec()),
}


def observatory_spec(
    size: str, containers: int | None = None, cells: int | tuple[int, ...] | None = None
) -> ObservatorySpec:
    """The named size, optionally with another container count or cell counts."""
    if size not in SIZES:
        raise ValueError(f"size {size!r}: expected one of {sorted(SIZES)}")
    spec = SIZES[size]
    counts = spec.cells
    if cells is not None:
        counts = (cells,) if isinstance(cells, int) else tuple(cells)
    if containers is not None:
        counts = tuple(counts[i % len(counts)] for i in range(containers))
    if not counts or min(counts) < 2:
        raise ValueError(f"cells per container must be >= 2, got {counts}")
    return dataclasses.replace(spec, cells=tuple(int(c) for c in counts))


def container_ids(index: int) -> tuple[int, int]:
    """(container id, session-A experiment id) of the index-th simulated container."""
    container = CONTAINER_ID_BASE + 1000 * (index + 1)
    return container, container + 1


def _records(index: int, age_days: int, start: datetime.datetime) -> tuple[dict, dict]:
    """Raw allensdk API records (ALLEN_FORMAT.md 2.3) of one container and its experiment."""
    cre, area, depth, _ = CONTAINER_PROFILES[index % len(CONTAINER_PROFILES)]
    cid, eid = container_ids(index)
    donor = f"{index + 1:06d}"
    birth = start - datetime.timedelta(days=age_days)
    specimen = {
        "name": f"{cre};Camk2a-tTA;Ai93-{donor}",
        "donor": {
            "external_donor_name": donor,
            "date_of_birth": birth.strftime("%Y-%m-%dT00:00:00Z"),
            "conditions": [],
            "transgenic_lines": [
                {"name": cre, "transgenic_line_type_name": "driver"},
                {"name": "Camk2a-tTA", "transgenic_line_type_name": "driver"},
                {"name": REPORTER, "transgenic_line_type_name": "reporter"},
            ],
        },
    }
    container = {
        "id": cid,
        "imaging_depth": depth,
        "failed": False,
        "targeted_structure": {"acronym": area},
        "specimen": specimen,
    }
    experiment = dict(container, id=eid, experiment_container_id=cid)
    experiment.update(
        stimulus_name=SESSION_TYPE,
        date_of_acquisition=start.strftime("%Y-%m-%dT%H:%M:%SZ"),
        experiment_container={"failed": False},
    )
    return container, experiment


def _stimulus_groups(sched: schedule.Schedule, ts: np.ndarray) -> dict[str, dict[str, np.ndarray]]:
    def group(data: np.ndarray, start: np.ndarray, end: np.ndarray, **extra) -> dict:
        frame_dur = np.stack([start, end], axis=1).astype(np.float64)
        out = {"data": data, "frame_duration": frame_dur, "timestamps": ts[start]}
        out["num_samples"] = np.int64(len(start))
        out.update(extra)
        return out

    features = np.array([b"temporal_frequency", b"orientation", b"blank_sweep"])
    dg = np.stack([sched.dg_tf, sched.dg_ori, sched.dg_blank], axis=1)
    groups = {
        "drifting_gratings_stimulus": group(dg, sched.dg_start, sched.dg_end, features=features)
    }
    for name, (movie_frame, frames) in sched.movies.items():
        groups[f"{name}_stimulus"] = group(movie_frame, frames, frames + 1)
    spont_frames = np.array([x for s, e in sched.spontaneous for x in (s, e)], dtype=np.int64)
    events = np.tile(np.array([1, -1], dtype=np.int64), len(sched.spontaneous))
    groups["spontaneous_stimulus"] = group(events, spont_frames, spont_frames + 1)
    return groups


def simulate_experiment(
    index: int, n_cells: int, session: schedule.SessionSpec, seed: int
) -> tuple[NwbContent, dict[str, np.ndarray], dict, dict]:
    """Draws one container's session A. Returns (file content, ground truth, records)."""
    rng = np.random.default_rng([seed, index])
    cre, area, depth, resp_frac = CONTAINER_PROFILES[index % len(CONTAINER_PROFILES)]
    cid, eid = container_ids(index)
    sched = schedule.build_schedule(rng, session)
    cells = calcium.sample_cells(rng, n_cells, resp_frac, movie_fraction=0.3)
    speed, state = calcium.running_and_state(rng, sched.n_frames)
    rates, gains = calcium.firing_rates(rng, cells, sched, speed, state)
    spikes = calcium.spikes_from_rates(rng, rates, cells["burst_lambda"])
    del rates
    dff_true = calcium.true_dff(spikes, cells)
    traces = calcium.fluorescence(rng, dff_true, cells)
    r = cells["neuropil_r"].astype(np.float64)
    corrected = traces["demixed"] - traces["neuropil"] * r[:, None]
    stored_dff = calcium.baseline_dff(corrected.astype(np.float32))
    dt = (1.0 / 30.0) * (1.0 + 2e-4 * rng.standard_normal(sched.n_frames))
    ts = rng.uniform(2.0, 8.0) + np.concatenate([[0.0], np.cumsum(dt[:-1])])
    masks, max_proj = roi_masks(rng, n_cells)
    motion = np.cumsum(0.05 * rng.standard_normal((sched.n_frames, 2)), axis=0)
    age = int(rng.integers(85, 130))
    start = datetime.datetime(2016, 3, 1, 9, 30) + datetime.timedelta(
        days=3 * index, minutes=7 * index
    )
    container_rec, experiment_rec = _records(index, age, start)
    general = {
        "session_type": SESSION_TYPE,
        "session_id": str(eid),
        "ophys_experiment_id": str(eid),
        "ophys_experiment_name": f"{eid}-{cre}-{area}-{depth}um-simulated",
        "experiment_container_id": str(cid),
        "targeted_structure": area,
        "specimen_name": container_rec["specimen"]["name"],
        "institution": "Allen Institute for Brain Science (simulated by quantformer_jax)",
        "fov": "400x400 microns (512 x 512 pixels)",
        "devices/2-photon microscope": (
            "Nikon A1R-MP multiphoton microscope. CAM2P.1 Please see the white paper for details"
        ),
        "subject/genotype": f"{cre}/wt;Camk2a-tTA/wt;{REPORTER}/{REPORTER}",
        "subject/age": f"{age} days",
        "subject/sex": "female" if rng.random() < 0.5 else "male",
        "subject/subject_id": container_rec["specimen"]["donor"]["external_donor_name"],
        "subject/species": "Mus musculus",
        "optophysiology/imaging_plane_1/imaging depth": f"{depth} microns",
        "optophysiology/imaging_plane_1/location": area,
        "optophysiology/imaging_plane_1/excitation_lambda": "910 nanometers",
        "optophysiology/imaging_plane_1/indicator": "GCaMP6f",
    }
    content = NwbContent(
        general=general,
        session_start_time=start.strftime("%a %b %d %H:%M:%S %Y"),
        timestamps=ts,
        cell_specimen_ids=CELL_ID_BASE + 10_000 * index + np.arange(n_cells, dtype=np.int64),
        roi_ids=ROI_ID_BASE + 10_000 * index + np.arange(n_cells, dtype=np.int64),
        raw=traces["raw"],
        demixed=traces["demixed"],
        neuropil=traces["neuropil"],
        neuropil_r=r,
        dff=stored_dff,
        running_speed=speed,
        motion_xy=motion.astype(np.float32),
        roi_masks=masks,
        max_projection=max_proj,
        stimuli=_stimulus_groups(sched, ts),
    )
    truth = {f"cell_{k}": np.asarray(v) for k, v in cells.items()}
    truth.update({k: v for k, v in gains.items()})
    truth.update(
        spikes=spikes,
        dff_true=dff_true,
        running_speed=speed,
        state=state,
        dg_temporal_frequency=sched.dg_tf,
        dg_orientation=sched.dg_ori,
        dg_blank_sweep=sched.dg_blank,
        dg_start=sched.dg_start,
        dg_end=sched.dg_end,
        cell_specimen_ids=content.cell_specimen_ids,
        seed=np.int64(seed),
    )
    return content, truth, container_rec, experiment_rec


def ground_truth_path(cache_dir: str | os.PathLike, experiment_id: int) -> str:
    """`<cache_dir>/ophys_experiment_data/<id>_ground_truth.npz`."""
    return os.path.join(
        os.fspath(cache_dir), cache.EXPERIMENT_DATA_DIR, f"{experiment_id}_ground_truth.npz"
    )


def _build_record(size: str, seed: int, spec: ObservatorySpec) -> dict:
    return {
        "simulator_version": SIMULATOR_VERSION,
        "size": size,
        "seed": int(seed),
        "cells": list(spec.cells),
        "session": dataclasses.asdict(spec.session),
        "experiment_ids": [container_ids(i)[1] for i in range(len(spec.cells))],
    }


def build_observatory(
    out_dir: str | os.PathLike,
    size: str = "mini",
    seed: int = 0,
    *,
    containers: int | None = None,
    cells: int | tuple[int, ...] | None = None,
    overwrite: bool = False,
    verbose: bool = False,
) -> list[cache.CacheEntry]:
    """Writes (or reuses) a simulated observatory cache directory.

    Idempotent: if `out_dir/simulation.json` records a complete build of the same size, seed and
    shapes and every file exists, nothing is rewritten; an interrupted build of the same spec is
    redone. A directory holding a different build, or any other cache
    (e.g. real Allen data), is an error unless `overwrite=True` (only the simulator's own files
    are then replaced).

    Args:
      out_dir: cache directory to create.
      size: "mini" (tests: 3 containers of 12/16/20 cells, ~14 k frames) or "full" (4 containers
        of 120-220 cells, ~115 k frames, 15 DG repeats).
      seed: the build is a pure function of (size, containers, cells, seed).
      containers: number of containers (cell counts cycle through the size's list).
      cells: cell count(s) per container, overriding the size's.
      overwrite: replace a mismatching build.
      verbose: print one line per experiment.

    Returns:
      The cache index (`cache.read_cache_index(out_dir)`).
    """
    out_dir = os.fspath(out_dir)
    spec = observatory_spec(size, containers, cells)
    record = _build_record(size, seed, spec)
    record_path = os.path.join(out_dir, SIMULATION_FILE)
    if os.path.exists(record_path):
        with open(record_path) as f:
            existing = json.load(f)
        complete = existing.pop("complete", False)
        if existing == record and complete:
            index = cache.read_cache_index(out_dir)
            if all(e.exists for e in index) and all(
                os.path.isfile(ground_truth_path(out_dir, e.experiment_id)) for e in index
            ):
                return index
        elif existing != record and not overwrite:
            raise DataError(
                f"{record_path}: holds a different simulated build (size {existing.get('size')}, "
                f"seed {existing.get('seed')}, cells {existing.get('cells')}); pass overwrite=True "
                "(--overwrite) or choose another directory"
            )
    elif os.path.exists(os.path.join(out_dir, cache.MANIFEST_FILE)):
        raise DataError(
            f"{out_dir}: holds a cache that the simulator did not write; refusing to touch it"
        )
    os.makedirs(os.path.join(out_dir, cache.EXPERIMENT_DATA_DIR), exist_ok=True)
    # Marked incomplete until the last file is written: an interrupted build is redone.
    cache.write_json(record_path, dict(record, complete=False))
    containers_json, experiments_json = [], []
    for i, n_cells in enumerate(spec.cells):
        t0 = time.perf_counter()
        content, truth, c_rec, e_rec = simulate_experiment(i, n_cells, spec.session, seed)
        eid = e_rec["id"]
        write_nwb(cache.nwb_path(out_dir, eid), content, compression=spec.compression)
        np.savez(ground_truth_path(out_dir, eid), **truth)
        containers_json.append(c_rec)
        experiments_json.append(e_rec)
        if verbose:
            print(
                f"experiment {eid}: {n_cells} cells x {content.timestamps.shape[0]} frames "
                f"in {time.perf_counter() - t0:.1f} s"
            )
    cache.write_json(os.path.join(out_dir, cache.MANIFEST_FILE), cache.manifest_dict())
    cache.write_json(os.path.join(out_dir, cache.CONTAINERS_FILE), containers_json)
    cache.write_json(os.path.join(out_dir, cache.EXPERIMENTS_FILE), experiments_json)
    cache.write_json(record_path, dict(record, complete=True))
    return cache.read_cache_index(out_dir)


def list_cache(cache_dir: str | os.PathLike) -> list[cache.CacheEntry]:
    """The experiments of a cache directory (simulated or real); see `cache.read_cache_index`."""
    return cache.read_cache_index(cache_dir)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="cache directory to write")
    parser.add_argument("--size", choices=sorted(SIZES), default="mini")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--containers", type=int, default=None)
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    from quantformer_jax.data import nwb, response_stats  # only the CLI prints summaries

    t0 = time.perf_counter()
    index = build_observatory(
        args.out,
        args.size,
        args.seed,
        containers=args.containers,
        overwrite=args.overwrite,
        verbose=True,
    )
    print(f"{len(index)} experiments in {args.out} ({time.perf_counter() - t0:.1f} s)")
    for entry in index:
        exp = nwb.load_experiment(entry.nwb_path)
        print(
            f"container {entry.container_id} experiment {entry.experiment_id} "
            f"{entry.cre_line} {entry.targeted_structure} {entry.imaging_depth} um"
        )
        print(response_stats.format_summary(response_stats.dg_summary(exp)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
