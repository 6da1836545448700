"""The grating condition table (REFERENCE.md 1.7, decisions D1/D2) and per-trial stimulus features.

The original code indexes a 161-row `gratings.csv` (orientation, spatial_frequency, phase,
temporal_frequency): rows 0-119 are the static-grating conditions (6 orientations x 5 spatial
frequencies x 4 phases), row 120 and rows 122-160 the 40 drifting-grating conditions (8 directions x
5 temporal frequencies at 0.04 cpd, phase 0), and row 121 the blank sweep (all zeros). A trial's
condition id is its row index. The file is not needed here: the table is built once, in code, from
the protocol constants, with that layout. Within each block the rows are in sorted order (the
original file's within-block order is arbitrary), so a condition's *features* match the original
exactly while its integer id may differ from the original file's row number.

Feature kinds (`config.data.stim_features`):
  * `gratings4`: `[orientation/360, spatial_frequency/0.32, phase, temporal_frequency/15]`,
    blank = zeros.
  * `onehot`: one-hot of the condition id over the 161 rows.
"""

from __future__ import annotations

import functools
import itertools

import numpy as np
import pandas as pd

from quantformer_jax import constants
from quantformer_jax.data.experiment import DataError

GRATINGS_COLUMNS = ("orientation", "spatial_frequency", "phase", "temporal_frequency")
NUM_CONDITIONS = 161
NUM_SG_CONDITIONS = 120
BLANK_CONDITION = 121  # the blank sweep's row: all features zero
# Divisors that bring each gratings4 column to [0, 1] (REFERENCE.md D1).
GRATINGS4_SCALE = np.array([360.0, 0.32, 1.0, 15.0])
STIM_FEATURE_KINDS = ("gratings4", "onehot")
GRATING_STIMULI = ("drifting_gratings", "static_gratings")


@functools.lru_cache(maxsize=1)
def gratings_table() -> np.ndarray:
    """The 161 grating conditions, float64 [161, 4] in GRATINGS_COLUMNS order (read-only)."""
    sg = [
        (ori, sf, phase, 0.0)
        for ori, sf, phase in itertools.product(
            constants.SG_ORIENTATIONS_DEG,
            constants.SG_SPATIAL_FREQUENCIES_CPD,
            constants.SG_PHASES,
        )
    ]
    dg = [
        (ori, constants.DG_SPATIAL_FREQUENCY_CPD, 0.0, tf)
        for ori, tf in itertools.product(
            constants.DG_DIRECTIONS_DEG, constants.DG_TEMPORAL_FREQUENCIES_HZ
        )
    ]
    # Layout of the original file: the first DG condition sits at 120, the blank at 121.
    rows = sg + dg[:1] + [(0.0, 0.0, 0.0, 0.0)] + dg[1:]
    table = np.asarray(rows, dtype=np.float64)
    assert table.shape == (NUM_CONDITIONS, 4), table.shape
    table.setflags(write=False)
    return table


def gratings_dataframe() -> pd.DataFrame:
    """The condition table as a DataFrame with gratings.csv's column names (row = condition id)."""
    return pd.DataFrame(gratings_table(), columns=list(GRATINGS_COLUMNS))


@functools.lru_cache(maxsize=1)
def _condition_lookup() -> tuple[dict, dict]:
    """(DG key -> id, SG key -> id); keys are rounded so float32-stored table values still match."""
    table = gratings_table()
    dg, sg = {}, {}
    for cid, (ori, sf, phase, tf) in enumerate(table):
        if cid == BLANK_CONDITION:
            continue
        if tf > 0:
            dg[_dg_key(ori, tf)] = cid
        else:
            sg[_sg_key(ori, sf, phase)] = cid
    return dg, sg


def _dg_key(orientation: float, temporal_frequency: float) -> tuple[float, float]:
    return round(float(orientation), 2), round(float(temporal_frequency), 3)


def _sg_key(orientation: float, spatial_frequency: float, phase: float) -> tuple[float, ...]:
    return round(float(orientation), 2), round(float(spatial_frequency), 4), round(float(phase), 3)


def _require_columns(table: pd.DataFrame, columns: tuple[str, ...], source: str, stimulus: str):
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise DataError(
            f"{source}: stimulus table {stimulus!r} lacks column(s) {missing} "
            f"(has {list(table.columns)})"
        )


def condition_ids(table: pd.DataFrame, stimulus: str, *, source: str) -> np.ndarray:
    """Maps each trial of an allensdk-layout stimulus table to its gratings row id.

    Blank sweeps (NaN condition values, or `blank_sweep == 1` for drifting gratings) map to
    BLANK_CONDITION, as in the original code.

    Args:
      table: the stimulus table (one row per trial).
      stimulus: 'drifting_gratings' or 'static_gratings'.
      source: the file the table came from, for error messages.

    Returns:
      int32 [n_trials] condition ids in [0, 161).

    Raises:
      DataError: a column is missing, or a trial's condition is not in the protocol table.
    """
    if stimulus not in GRATING_STIMULI:
        raise DataError(
            f"stimulus {stimulus!r} has no grating condition table; config key data.stim_features "
            f"supports {GRATING_STIMULI} only"
        )
    dg_lookup, sg_lookup = _condition_lookup()
    if stimulus == "drifting_gratings":
        columns = ("orientation", "temporal_frequency")
        lookup, make_key = dg_lookup, _dg_key
    else:
        columns = ("orientation", "spatial_frequency", "phase")
        lookup, make_key = sg_lookup, _sg_key
    _require_columns(table, columns, source, stimulus)
    values = table[list(columns)].to_numpy(dtype=np.float64)  # [n, len(columns)]
    nan = np.isnan(values)
    blank = nan.all(axis=1)
    if "blank_sweep" in table.columns:
        blank |= table["blank_sweep"].to_numpy(dtype=np.float64) > 0.5
    ids = np.full(len(table), BLANK_CONDITION, dtype=np.int32)
    for i in np.flatnonzero(~blank):
        key = make_key(*values[i])
        if key not in lookup:
            raise DataError(
                f"{source}: stimulus table {stimulus!r} row {i} has condition "
                f"{dict(zip(columns, values[i].tolist(), strict=True))}, which is not in the "
                "grating protocol table"
            )
        ids[i] = lookup[key]
    return ids


@functools.lru_cache(maxsize=4)
def feature_table(kind: str) -> np.ndarray:
    """Returns the feature row of every condition id, float32 [161, D] (read-only).

    Raises:
      ValueError: unknown kind (names the config key).
    """
    if kind == "gratings4":
        table = (gratings_table() / GRATINGS4_SCALE).astype(np.float32)  # blank row stays 0
    elif kind == "onehot":
        table = np.eye(NUM_CONDITIONS, dtype=np.float32)
    else:
        raise ValueError(
            f"config key data.stim_features={kind!r} is not supported; use one of "
            f"{STIM_FEATURE_KINDS}"
        )
    table.setflags(write=False)
    return table


def stimulus_features(condition_id: np.ndarray, kind: str) -> np.ndarray:
    """Feature vectors of the given condition ids: int [W] -> float32 [W, D]."""
    return feature_table(kind)[np.asarray(condition_id, dtype=np.int64)]
