"""The typed record of one Brain Observatory ophys experiment, and the data-layer errors.

`quantformer_jax.data.nwb.load_experiment(path)` builds an `Experiment`; everything downstream
(windows, datasets, the simulator's round-trip tests) consumes this record, never h5py directly.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd


class DataError(ValueError):
    """Bad input data. The message always names the file and the field or HDF5 path."""


class MissingStimulusError(DataError):
    """A stimulus table that the run needs is not in the file."""


@dataclasses.dataclass(frozen=True)
class ExperimentMetadata:
    """What allensdk's `get_metadata()` exposes that the project uses (ALLEN_FORMAT.md 1.1)."""

    ophys_experiment_id: int
    experiment_container_id: int
    session_type: str  # "three_session_A" / "_B" / "_C" / "_C2"
    targeted_structure: str  # e.g. "VISp"
    imaging_depth_um: int
    cre_line: str  # genotype.split(';')[0], e.g. "Cux2-CreERT2/wt" (file-derived keeps "/wt")
    genotype: str
    indicator: str
    age_days: int
    sex: str
    pipeline_version: str  # generated_by[-1]; "0.9" when absent
    session_start_time: str


@dataclasses.dataclass(frozen=True, eq=False)
class Experiment:
    """One ophys experiment (one session of one container), as read from its NWB file.

    Trace arrays are [n_cells, n_frames], rows in `cell_specimen_ids` order.
    """

    path: str
    metadata: ExperimentMetadata
    cell_specimen_ids: np.ndarray  # int64 [N]
    timestamps: np.ndarray  # float64 [T] fluorescence timestamps (s)
    corrected_fluorescence: np.ndarray  # [N, T], computed exactly as allensdk does
    dff: np.ndarray  # [N, T'] the stored dF/F (T' may differ from T by one frame)
    dff_timestamps: np.ndarray  # float64 [T']
    running_speed: np.ndarray  # float [T] cm/s, NaN-padded to the fluorescence timestamps
    stimulus_tables: dict[str, pd.DataFrame]  # allensdk columns and row order, keyed by name
    epoch_table: pd.DataFrame  # columns stimulus, start, end (frames)

    @property
    def num_cells(self) -> int:
        return int(self.cell_specimen_ids.shape[0])

    @property
    def num_frames(self) -> int:
        return int(self.timestamps.shape[0])

    def list_stimuli(self) -> list[str]:
        return sorted(self.stimulus_tables)

    def stimulus_table(self, name: str) -> pd.DataFrame:
        """Returns the presentation table `name` (a copy), as allensdk's get_stimulus_table."""
        try:
            return self.stimulus_tables[name].copy()
        except KeyError:
            raise MissingStimulusError(
                f"{self.path}: no stimulus table {name!r} under stimulus/presentation "
                f"(present: {self.list_stimuli()})"
            ) from None
