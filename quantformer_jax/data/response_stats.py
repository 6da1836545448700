"""Drifting-grating response statistics of one experiment (real or simulated).

Used to check that simulated sessions look like real ones (ALLEN_FORMAT.md 3.6): single-trial
responses mostly near zero with a heavy tail, a minority of responsive cells, and the fraction of
(cell, trial) pairs that QuantFormer's tsai_wen rule labels active.
"""

from __future__ import annotations

import numpy as np

from quantformer_jax.constants import ACTIVATION_THRESHOLD, BASELINE_FRAMES, DG_ON_FRAMES
from quantformer_jax.data.experiment import Experiment

SDK_BASELINE_FRAMES = 30  # allensdk get_sweep_response: 1 s before onset
RESPONSIVE_TRIAL_FRACTION = 0.25  # de Vries 2020: >= 25% of preferred-condition trials


def _windows(traces: np.ndarray, starts: np.ndarray, before: int, after: int) -> np.ndarray:
    """[N, K, before + after] slices traces[:, s - before : s + after] for each start s."""
    idx = starts[:, None] + np.arange(-before, after)[None, :]
    return traces[:, idx]


def sweep_responses(corrected: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """allensdk-style single-trial DG response (percent dF/F), float [N, K].

    Mean over the 2 s grating of 100 * (F / mean(F over the 1 s before onset) - 1).
    """
    w = _windows(corrected, starts, SDK_BASELINE_FRAMES, DG_ON_FRAMES)
    f0 = w[:, :, :SDK_BASELINE_FRAMES].mean(axis=2, keepdims=True)
    return 100.0 * (w[:, :, SDK_BASELINE_FRAMES:] / f0 - 1.0).mean(axis=2)


def tsai_wen_labels(
    corrected: np.ndarray, starts: np.ndarray, threshold: float = ACTIVATION_THRESHOLD
) -> np.ndarray:
    """QuantFormer's default label, bool [N, K]: mean |dF/F| over the 60 frames after onset >
    threshold, with f0 = mean of the 60 frames before onset (REFERENCE.md 1.8)."""
    w = _windows(corrected, starts, BASELINE_FRAMES, DG_ON_FRAMES)
    f0 = w[:, :, :BASELINE_FRAMES].mean(axis=2, keepdims=True)
    return np.abs(w[:, :, BASELINE_FRAMES:] / f0 - 1.0).mean(axis=2) > threshold


def responsive_cells(
    responses: np.ndarray, condition: np.ndarray, null: np.ndarray, alpha: float = 0.05
) -> np.ndarray:
    """de Vries-style responsiveness, bool [N].

    A trial is significant when its response exceeds the (1 - alpha) quantile of the cell's
    null distribution (the same statistic on spontaneous-activity windows); a cell is responsive
    when >= 25% of the trials of its preferred condition (largest mean response) are significant.

    Args:
      responses: [N, K] single-trial responses of non-blank trials.
      condition: [K] condition index of each trial.
      null: [N, M] the statistic on M spontaneous windows.
    """
    thresh = np.quantile(null, 1 - alpha, axis=1)[:, None]
    conds = np.unique(condition)
    means = np.stack([responses[:, condition == c].mean(axis=1) for c in conds], axis=1)
    pref = conds[np.argmax(means, axis=1)]
    out = np.zeros(responses.shape[0], dtype=bool)
    for i, c in enumerate(pref):
        trials = responses[i, condition == c]
        out[i] = np.mean(trials > thresh[i]) >= RESPONSIVE_TRIAL_FRACTION
    return out


def dg_summary(exp: Experiment) -> dict[str, float]:
    """Summary numbers of the drifting-grating responses of `exp` (see module docstring).

    The responsive fraction follows de Vries' criterion, which assumes ~15 trials per condition:
    with the `mini` simulator's 3 repeats a single noisy trial makes a cell "responsive", so only
    read it on full-protocol sessions.
    """
    table = exp.stimulus_table("drifting_gratings")
    table = table[table["start"] >= BASELINE_FRAMES]
    grating = (table["blank_sweep"] == 0).to_numpy()
    starts = table["start"].to_numpy().astype(np.int64)
    f = np.asarray(exp.corrected_fluorescence, dtype=np.float64)
    resp = sweep_responses(f, starts[grating])
    cond = (
        table["orientation"].to_numpy()[grating] * 100
        + table["temporal_frequency"].to_numpy()[grating]
    ).round()
    spont = exp.stimulus_table("spontaneous")
    null_starts = np.concatenate(
        [
            np.arange(s + SDK_BASELINE_FRAMES, e - DG_ON_FRAMES, 10)
            for s, e in zip(spont["start"], spont["end"], strict=True)
        ]
    ).astype(np.int64)
    null = sweep_responses(f, null_starts)
    responsive = responsive_cells(resp, cond, null)
    labels = tsai_wen_labels(f, starts)
    flat = resp.ravel()
    dff = np.asarray(exp.dff, dtype=np.float64)
    noise = np.median(np.abs(np.diff(dff, axis=1)), axis=1) / np.sqrt(30.0) * 100.0
    return {
        "cells": float(exp.num_cells),
        "frames": float(exp.num_frames),
        "dg_trials": float(len(table)),
        "responsive_fraction": float(responsive.mean()),
        "tsai_wen_active_fraction": float(labels.mean()),
        "response_median_pct": float(np.median(flat)),
        "response_mean_pct": float(flat.mean()),
        "response_sd_pct": float(flat.std()),
        "response_p95_pct": float(np.percentile(flat, 95)),
        "response_p99_pct": float(np.percentile(flat, 99)),
        "frac_trials_over_10pct": float(np.mean(flat > 10)),
        "frac_trials_over_20pct": float(np.mean(flat > 20)),
        "noise_nu_median": float(np.median(noise)),
    }


def format_summary(summary: dict[str, float]) -> str:
    """One line per number, aligned, for printing."""
    return "\n".join(f"  {k:<26} {v:10.4g}" for k, v in summary.items())
