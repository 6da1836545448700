"""Trial windows of one experiment: per-window dF/F, activation labels, stimulus features, splits.

What the original code does (REFERENCE.md 1.3-1.8) and the decisions taken here (section 7, D1-D9):

* One window per trial of the stimulus table: frames [start - S, start + F) (S = 96 source, F = 64
  forecast frames, so the onset is window frame S). A trial whose window (or label frames) leaves
  the recording is counted in the summary (`dropped_out_of_recording`) and has no window; the
  original crashed on such a trial.
* `corrected_fluorescence_dff`: per window and neuron, f0 = mean of the `baseline_frames` frames
  just before onset, x = (F - f0) / f0 over the whole window (computed in float64, as the original's
  numpy code, then stored as float32). `dff`: Allen's stored dF/F window, as is.
  D5: windows with some f0 <= 0 (over all trials in the recording), non-finite values and
  |dF/F| > 100 (over the windows of the splits) are counted, never changed;
  `f0_eps > 0` excludes windows with any f0 <= f0_eps (counted). NaN in the input traces is an
  error naming the file and field.
* Labels (`tsai_wen`): mean |dF/F| over the STIM_RESPONSE_FRAMES frames from onset > threshold,
  with the same f0. They are always computed from corrected fluorescence (also when the model input
  is `dff`; the original asserted instead), so labels do not depend on the input format or horizon.
* Splits (D8): train = trials starting before the end of the stimulus's 2nd epoch, test = the
  others (epoch 3); a trial starting exactly at that frame goes to test (the original's `>` put it
  in no split). Validation = the last `val_fraction` of the train windows in time. With `leak_free`,
  windows sharing any frame with a window of a later split are dropped and counted: train windows
  overlapping test or val windows, and val windows overlapping test windows.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pandas as pd

from quantformer_jax import constants
from quantformer_jax.data import stimulus_features
from quantformer_jax.data.experiment import DataError, Experiment

SPLITS = ("train", "val", "test")
TRACE_FORMATS = ("corrected_fluorescence_dff", "dff")
LABEL_FORMATS = ("tsai_wen",)
LARGE_DFF = 100.0  # |dF/F| above this is counted as suspicious (D5)
_SPLIT_EPOCH = 1  # train = trials before the end of this (0-based) epoch of the stimulus


@dataclasses.dataclass(frozen=True)
class WindowSpec:
    """Every option that changes the windows of an experiment (all of it goes in the cache key)."""

    stimulus: str = "drifting_gratings"
    trace_format: str = "corrected_fluorescence_dff"
    source_frames: int = constants.SOURCE_FRAMES
    forecast_frames: int = constants.FORECAST_FRAMES
    baseline_frames: int = constants.BASELINE_FRAMES
    label_format: str = "tsai_wen"
    label_threshold: float = constants.ACTIVATION_THRESHOLD
    stim_features: str = "gratings4"
    val_fraction: float = 0.15
    leak_free: bool = True
    f0_eps: float = 0.0

    def __post_init__(self):
        checks = [
            (self.trace_format in TRACE_FORMATS, "trace_format", f"one of {TRACE_FORMATS}"),
            (self.label_format in LABEL_FORMATS, "label_format", f"one of {LABEL_FORMATS}"),
            (self.stimulus in constants.STIM_RESPONSE_FRAMES, "stimulus", "a known stimulus"),
            (self.source_frames > 0, "source_frames", "> 0"),
            (self.forecast_frames > 0, "forecast_frames", "> 0"),
            (
                0 < self.baseline_frames <= self.source_frames,
                "baseline_frames",
                "in (0, source_frames]",
            ),
            (0.0 <= self.val_fraction < 1.0, "val_fraction", "in [0, 1)"),
            (self.f0_eps >= 0.0, "f0_eps", ">= 0"),
        ]
        for ok, key, expected in checks:
            if not ok:
                raise ValueError(
                    f"config key data.{key}={getattr(self, key)!r} is invalid: expected {expected}"
                )
        stimulus_features.feature_table(self.stim_features)  # validates the key

    @classmethod
    def from_config(cls, data_cfg) -> WindowSpec:
        """Builds the spec from `config.data` (configs/common.py data_config)."""
        return cls(
            stimulus=str(data_cfg.stimulus),
            trace_format=str(data_cfg.trace_format),
            source_frames=int(data_cfg.source_frames),
            forecast_frames=int(data_cfg.forecast_frames),
            baseline_frames=int(data_cfg.baseline_frames),
            label_format=str(data_cfg.label_format),
            label_threshold=float(data_cfg.label_threshold),
            stim_features=str(data_cfg.stim_features),
            val_fraction=float(data_cfg.val_fraction),
            leak_free=bool(data_cfg.leak_free),
            f0_eps=float(data_cfg.f0_eps),
        )

    @property
    def window_frames(self) -> int:
        return self.source_frames + self.forecast_frames

    @property
    def response_frames(self) -> int:
        return constants.STIM_RESPONSE_FRAMES[self.stimulus]


@dataclasses.dataclass(frozen=True, eq=False)
class WindowSplit:
    """The windows of one split of one experiment, in time order."""

    traces: np.ndarray  # float32 [W, N, T]
    stim: np.ndarray  # float32 [W, D]
    labels: np.ndarray  # int32 [W, N]
    condition_id: np.ndarray  # int32 [W]
    trial_start: np.ndarray  # int64 [W], onset frame of each window's trial

    def __len__(self) -> int:
        return int(self.traces.shape[0])

    @property
    def num_neurons(self) -> int:
        return int(self.traces.shape[1])

    @property
    def window_frames(self) -> int:
        return int(self.traces.shape[2])

    def take(self, index: np.ndarray) -> WindowSplit:
        """The windows at `index` (an int array or bool mask over W)."""
        return WindowSplit(
            traces=self.traces[index],
            stim=self.stim[index],
            labels=self.labels[index],
            condition_id=self.condition_id[index],
            trial_start=self.trial_start[index],
        )


def _check_finite(trace: np.ndarray, path: str, field: str) -> None:
    bad = ~np.isfinite(trace)
    if bad.any():
        neuron, frame = (int(v[0]) for v in np.nonzero(bad))
        raise DataError(
            f"{path}: field {field!r} has {int(bad.sum())} non-finite values (first at neuron "
            f"{neuron}, frame {frame}); fix or exclude these ROIs before windowing"
        )


def split_offset(epoch_table: pd.DataFrame, stimulus: str, *, source: str) -> int:
    """The frame that separates train from test: the end of the stimulus's 2nd epoch (1.3)."""
    for col in ("stimulus", "start", "end"):
        if col not in epoch_table.columns:
            raise DataError(f"{source}: epoch table lacks column {col!r}")
    epochs = epoch_table[epoch_table["stimulus"] == stimulus].sort_values("start")
    if len(epochs) <= _SPLIT_EPOCH:
        raise DataError(
            f"{source}: epoch table has {len(epochs)} epoch(s) of {stimulus!r}; the temporal "
            f"train/test split needs at least {_SPLIT_EPOCH + 1}"
        )
    return int(epochs.iloc[_SPLIT_EPOCH]["end"])


def _gather(trace: np.ndarray, starts: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """Frames [start + lo, start + hi) of every neuron: [N, frames] -> [N, W, hi - lo] float64."""
    idx = starts[:, None] + np.arange(lo, hi)[None, :]  # [W, hi - lo]
    return np.asarray(trace[:, idx], dtype=np.float64)


def _dff(x: np.ndarray, f0: np.ndarray) -> np.ndarray:
    """(x - f0) / f0 in place, as the original (no guard): [N, W, L], [N, W] -> [N, W, L]."""
    with np.errstate(divide="ignore", invalid="ignore"):
        x -= f0[..., None]
        x /= f0[..., None]
    return x


def _window_traces(source, starts, f0, spec: WindowSpec, counts: dict) -> np.ndarray:
    """The model inputs of the windows at `starts`: float32 [W, N, T]; adds D5 flag counts."""
    out = np.empty((len(starts), source.shape[0], spec.window_frames), dtype=np.float32)
    chunk = 64  # bounds the float64 temporaries to 64 windows at a time
    for lo in range(0, len(starts), chunk):
        x = _gather(source, starts[lo : lo + chunk], -spec.source_frames, spec.forecast_frames)
        if spec.trace_format == "corrected_fluorescence_dff":
            x = _dff(x, f0[:, lo : lo + chunk])
        mag = np.abs(x)  # NaN stays NaN, so `mag < inf` is False exactly for non-finite values
        n_inf = int(np.count_nonzero(mag == np.inf))
        counts["nonfinite_values"] += int(x.size - np.count_nonzero(mag < np.inf))
        counts["large_dff_values"] += int(np.count_nonzero(mag > LARGE_DFF)) - n_inf
        out[lo : lo + chunk] = x.transpose(1, 0, 2)  # [N, w, T] -> [w, N, T]
    return out


def _overlaps(starts: np.ndarray, others: np.ndarray, length: int) -> np.ndarray:
    """bool [len(starts)]: the window at each start shares a frame with a window in `others`.

    All windows have the same length, so two overlap iff their starts differ by less than it.
    """
    if len(starts) == 0 or len(others) == 0:
        return np.zeros(len(starts), dtype=bool)
    others = np.sort(others)
    pos = np.searchsorted(others, starts)
    left = others[np.clip(pos - 1, 0, len(others) - 1)]
    right = others[np.clip(pos, 0, len(others) - 1)]
    return (np.abs(starts - left) < length) | (np.abs(starts - right) < length)


def _split_masks(starts: np.ndarray, keep: np.ndarray, offset: int, spec: WindowSpec, counts):
    """Assigns kept windows to train/val/test (in place counts); returns {split: bool [n]}."""
    train = keep & (starts < offset)
    test = keep & (starts >= offset)
    counts["trials_train_epochs"] = int((starts < offset).sum())
    counts["trials_test_epochs"] = int((starts >= offset).sum())
    # Validation = the last val_fraction of train windows, in time (D8).
    train_idx = np.flatnonzero(train)
    n_val = int(round(spec.val_fraction * len(train_idx)))
    val = np.zeros_like(train)
    if n_val:
        by_time = train_idx[np.argsort(starts[train_idx], kind="stable")]
        val[by_time[-n_val:]] = True
        train &= ~val
    length = spec.window_frames
    drops = {"leak_train_test": 0, "leak_val_test": 0, "leak_train_val": 0}
    if spec.leak_free:
        leak = train & _overlaps(starts, starts[test], length)
        drops["leak_train_test"] = int(leak.sum())
        train &= ~leak
        leak = val & _overlaps(starts, starts[test], length)
        drops["leak_val_test"] = int(leak.sum())
        val &= ~leak
        leak = train & _overlaps(starts, starts[val], length)
        drops["leak_train_val"] = int(leak.sum())
        train &= ~leak
    counts.update({f"dropped_{k}": v for k, v in drops.items()})
    return {"train": train, "val": val, "test": test}


def make_windows(experiment: Experiment, spec: WindowSpec) -> tuple[dict[str, WindowSplit], dict]:
    """Cuts, normalises, labels and splits the trial windows of one experiment.

    Args:
      experiment: the record from `nwb.load_experiment`.
      spec: the window options.

    Returns:
      ({'train'|'val'|'test': WindowSplit}, summary) where summary is a JSON-ready dict of counts:
      trials, windows per split, dropped windows by reason, flagged values, active fractions.

    Raises:
      MissingStimulusError: the experiment has no table for `spec.stimulus`.
      DataError: NaN traces, bad epoch table, unknown conditions (each message names the file).
    """
    path = experiment.path
    table = experiment.stimulus_table(spec.stimulus)
    if "start" not in table.columns:
        raise DataError(f"{path}: stimulus table {spec.stimulus!r} lacks column 'start'")
    starts = table["start"].to_numpy().astype(np.int64)  # [n_trials] onset frames
    cids = stimulus_features.condition_ids(table, spec.stimulus, source=path)
    offset = split_offset(experiment.epoch_table, spec.stimulus, source=path)

    corrected = experiment.corrected_fluorescence  # [N, frames]
    _check_finite(corrected, path, "corrected_fluorescence")
    if spec.trace_format == "dff":
        source, field = experiment.dff, "dff"
        _check_finite(source, path, field)
    else:
        source = corrected
    s, f, b, r = (
        spec.source_frames,
        spec.forecast_frames,
        spec.baseline_frames,
        spec.response_frames,
    )
    # The window must lie inside its trace; baseline + label frames inside corrected F.
    inside = (starts - s >= 0) & (starts + f <= source.shape[1])
    inside &= (starts - b >= 0) & (starts + r <= corrected.shape[1])
    counts: dict = {
        "experiment_id": int(experiment.metadata.ophys_experiment_id),
        "path": path,
        "num_neurons": int(experiment.num_cells),
        "num_trials": len(starts),
        "split_offset_frame": offset,
        "dropped_out_of_recording": int((~inside).sum()),
    }
    ok = np.flatnonzero(inside)
    # Baseline (f0) and label frames come from corrected F whatever the input format.
    f0 = np.zeros((experiment.num_cells, len(starts)))  # [N, n_trials]; 0 outside the recording
    f0[:, ok] = _gather(corrected, starts[ok], -b, 0).mean(axis=-1)
    response = np.abs(_dff(_gather(corrected, starts[ok], 0, r), f0[:, ok]))  # [N, W, R]
    labels = np.zeros((len(starts), experiment.num_cells), dtype=np.int32)  # [n_trials, N]
    labels[ok] = (response.mean(axis=-1) > spec.label_threshold).T
    f0_bad = f0[:, ok] <= 0.0
    counts["f0_nonpositive_neuron_windows"] = int(f0_bad.sum())
    counts["f0_nonpositive_windows"] = int(f0_bad.any(axis=0).sum())
    counts["f0_nonpositive_neurons"] = int(f0_bad.any(axis=1).sum())
    keep = inside.copy()
    below_eps = np.zeros(len(starts), dtype=bool)
    if spec.f0_eps > 0:
        below_eps[ok] = (f0[:, ok] <= spec.f0_eps).any(axis=0)
        keep &= ~below_eps
    counts["dropped_f0_eps"] = int(below_eps.sum())

    masks = _split_masks(starts, keep, offset, spec, counts)
    feats = stimulus_features.stimulus_features(cids, spec.stim_features)
    counts["nonfinite_values"] = counts["large_dff_values"] = 0  # over the windows of the splits
    splits = {}
    for name in SPLITS:
        trials = np.flatnonzero(masks[name])
        splits[name] = WindowSplit(
            traces=_window_traces(source, starts[trials], f0[:, trials], spec, counts),
            stim=feats[trials],
            labels=labels[trials],
            condition_id=cids[trials],
            trial_start=starts[trials],
        )
        counts[f"windows_{name}"] = len(trials)
        n_labels = splits[name].labels.size
        counts[f"active_fraction_{name}"] = float(splits[name].labels.mean()) if n_labels else None
    counts["responsive_neurons_train"] = int(splits["train"].labels.any(axis=0).sum())
    _log_flags(counts)
    return splits, counts


def _log_flags(counts: dict) -> None:
    """Logs every non-zero drop or flag count, so nothing is dropped or flagged silently."""
    problems = ("dropped_out_of_recording", "dropped_f0_eps", "f0_nonpositive_windows")
    problems += ("nonfinite_values", "large_dff_values")
    flagged = {k: counts[k] for k in problems if counts[k]}
    if flagged:
        logging.warning("%s: data problems (see the summary): %s", counts["path"], flagged)
    leaks = {k: v for k, v in counts.items() if k.startswith("dropped_leak") and v}
    if leaks:
        logging.info("%s: leak-free split dropped overlapping windows: %s", counts["path"], leaks)
