"""The stimulus schedule of a simulated three_session_A: epochs, trials and per-frame indices.

Layout (7 epochs, as in real A sessions; ALLEN_FORMAT.md 1.6 and 3.3):
DG, NM3, NM1, DG, spontaneous, NM3, DG, separated by grey gaps longer than allensdk's 39-frame
epoch threshold. Drifting gratings: 8 directions x 5 TFs x `dg_repeats` in random order, about one
blank sweep per 20 gratings, 60 frames on + 30 frames grey; natural movies one frame per 2p frame,
complete repeats; spontaneous one block of grey.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from quantformer_jax.constants import (
    DG_DIRECTIONS_DEG,
    DG_OFF_FRAMES,
    DG_ON_FRAMES,
    DG_TEMPORAL_FREQUENCIES_HZ,
)

DG_TRIAL_FRAMES = DG_ON_FRAMES + DG_OFF_FRAMES  # 90: onset to next onset
EPOCH_ORDER = (
    "drifting_gratings",
    "natural_movie_three",
    "natural_movie_one",
    "drifting_gratings",
    "spontaneous",
    "natural_movie_three",
    "drifting_gratings",
)


@dataclasses.dataclass(frozen=True)
class SessionSpec:
    """Sizes of one simulated session A (frames at 30 Hz)."""

    dg_repeats: int = 15  # trials per (direction, TF) condition
    dg_blank_every: int = 20  # one blank sweep per this many gratings
    nm1_frames: int = 900  # natural movie one length (30 s), shown 10 times in one epoch
    nm1_repeats: int = 10
    nm3_frames: int = 3600  # natural movie three length (120 s), 5 repeats in each of 2 epochs
    nm3_repeats_per_epoch: int = 5
    spont_frames: int = 9000  # 5 min grey
    lead_frames: int = 600  # grey before the first epoch (> the 96 source frames)
    gap_frames: int = 450  # grey between epochs (> the 39-frame epoch threshold)
    tail_frames: int = 600


@dataclasses.dataclass(frozen=True)
class Schedule:
    """Where every stimulus sits in the session. Frame indices are 2p frames."""

    n_frames: int
    dg_tf: np.ndarray  # float64 [K] Hz, NaN for blank sweeps
    dg_ori: np.ndarray  # float64 [K] drift direction (deg), NaN for blank sweeps
    dg_blank: np.ndarray  # float64 [K] 1.0 for blank sweeps
    dg_start: np.ndarray  # int64 [K] onset frame
    dg_end: np.ndarray  # int64 [K] = start + 60
    movies: dict[str, tuple[np.ndarray, np.ndarray]]  # name -> (movie frame [R], 2p frame [R])
    spontaneous: list[tuple[int, int]]  # (start, end) frames
    epochs: list[tuple[str, int, int]]  # (stimulus, first frame, end frame) in time order

    @property
    def num_trials(self) -> int:
        return int(self.dg_start.shape[0])


def _dg_conditions(rng: np.random.Generator, spec: SessionSpec) -> np.ndarray:
    """[K, 3] rows (tf, direction, blank) in presentation order."""
    tf, ori = np.meshgrid(DG_TEMPORAL_FREQUENCIES_HZ, DG_DIRECTIONS_DEG, indexing="ij")
    grid = np.stack([tf.ravel(), ori.ravel(), np.zeros(tf.size)], axis=1)
    gratings = np.tile(grid, (spec.dg_repeats, 1))
    n_blank = max(1, round(len(gratings) / spec.dg_blank_every))
    blanks = np.tile([np.nan, np.nan, 1.0], (n_blank, 1))
    rows = np.concatenate([gratings, blanks])
    return rows[rng.permutation(len(rows))]


def build_schedule(rng: np.random.Generator, spec: SessionSpec) -> Schedule:
    """Lays out the 7 epochs of session A in time; the DG order is drawn from `rng`."""
    dg_rows = _dg_conditions(rng, spec)
    dg_parts = np.array_split(np.arange(len(dg_rows)), 3)
    movie_parts = {"natural_movie_three": [], "natural_movie_one": []}
    dg_start: list[np.ndarray] = []
    spontaneous: list[tuple[int, int]] = []
    epochs: list[tuple[str, int, int]] = []
    t = spec.lead_frames
    dg_epoch = 0
    for i, name in enumerate(EPOCH_ORDER):
        if i:
            t += spec.gap_frames
        if name == "drifting_gratings":
            n = len(dg_parts[dg_epoch])
            starts = t + DG_TRIAL_FRAMES * np.arange(n)
            dg_start.append(starts)
            epochs.append((name, t, int(starts[-1] + DG_ON_FRAMES)))
            t += DG_TRIAL_FRAMES * n
            dg_epoch += 1
        elif name == "spontaneous":
            spontaneous.append((t, t + spec.spont_frames))
            epochs.append((name, t, t + spec.spont_frames))
            t += spec.spont_frames
        else:
            length = spec.nm3_frames if name == "natural_movie_three" else spec.nm1_frames
            reps = spec.nm3_repeats_per_epoch if name == "natural_movie_three" else spec.nm1_repeats
            frames = np.tile(np.arange(length), reps)
            movie_parts[name].append((frames, t + np.arange(length * reps)))
            # allensdk's epoch end is the last row's end = last frame + 1
            epochs.append((name, t, t + length * reps))
            t += length * reps
    t += spec.tail_frames
    starts = np.concatenate(dg_start).astype(np.int64)
    movies = {
        name: (
            np.concatenate([p[0] for p in parts]).astype(np.int64),
            np.concatenate([p[1] for p in parts]).astype(np.int64),
        )
        for name, parts in movie_parts.items()
    }
    return Schedule(
        n_frames=int(t),
        dg_tf=dg_rows[:, 0].copy(),
        dg_ori=dg_rows[:, 1].copy(),
        dg_blank=dg_rows[:, 2].copy(),
        dg_start=starts,
        dg_end=starts + DG_ON_FRAMES,
        movies=movies,
        spontaneous=spontaneous,
        epochs=epochs,
    )


def dg_frame_index(schedule: Schedule) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Frames covered by DG trials: (frame [M], trial [M], phase [M]) with phase in [0, 90)."""
    k = schedule.num_trials
    phase = np.tile(np.arange(DG_TRIAL_FRAMES), k)
    trial = np.repeat(np.arange(k), DG_TRIAL_FRAMES)
    frame = schedule.dg_start[trial] + phase
    keep = frame < schedule.n_frames
    return frame[keep], trial[keep], phase[keep]
