"""Tests for data/stimulus_features.py: the 161-row gratings table and condition-id lookup."""

import numpy as np
import pandas as pd
import pytest

from quantformer_jax.data import stimulus_features as sf
from quantformer_jax.data.experiment import DataError


def test_table_layout_matches_the_original_file():
    table = sf.gratings_table()
    assert table.shape == (161, 4)
    np.testing.assert_array_equal(table[sf.BLANK_CONDITION], 0.0)
    sg, dg = table[:120], table[[120, *range(122, 161)]]
    assert (sg[:, 3] == 0).all() and len({tuple(r) for r in sg}) == 120
    assert len(np.unique(sg[:, 0])) == 6 and len(np.unique(sg[:, 1])) == 5
    assert len(np.unique(sg[:, 2])) == 4
    assert (dg[:, 3] > 0).all() and len({tuple(r) for r in dg}) == 40
    np.testing.assert_array_equal(dg[:, 1], 0.04)
    np.testing.assert_array_equal(dg[:, 2], 0.0)
    assert sorted(np.unique(dg[:, 0])) == [0, 45, 90, 135, 180, 225, 270, 315]
    assert list(sf.gratings_dataframe().columns) == list(sf.GRATINGS_COLUMNS)
    with pytest.raises(ValueError):
        table[0, 0] = 1.0  # read-only: one copy, shared


def test_gratings4_features_are_scaled_and_blank_is_zero():
    feats = sf.feature_table("gratings4")
    assert feats.shape == (161, 4) and feats.dtype == np.float32
    assert feats.min() == 0.0 and feats.max() == 1.0
    ids = sf.condition_ids(
        pd.DataFrame({"orientation": [315.0, np.nan], "temporal_frequency": [15.0, np.nan]}),
        "drifting_gratings",
        source="t.nwb",
    )
    assert ids[1] == sf.BLANK_CONDITION
    np.testing.assert_allclose(sf.stimulus_features(ids, "gratings4")[0], [315 / 360, 0.125, 0, 1])
    np.testing.assert_array_equal(sf.stimulus_features(ids, "gratings4")[1], 0.0)


def test_static_grating_ids_tolerate_float32_table_values():
    table = pd.DataFrame(
        {
            "orientation": np.float32([30.0, 150.0, np.nan]).astype(float),
            "spatial_frequency": np.float32([0.04, 0.32, np.nan]).astype(float),
            "phase": np.float32([0.25, 0.75, np.nan]).astype(float),
        }
    )
    ids = sf.condition_ids(table, "static_gratings", source="t.nwb")
    np.testing.assert_allclose(sf.gratings_table()[ids[0]], [30, 0.04, 0.25, 0])
    np.testing.assert_allclose(sf.gratings_table()[ids[1]], [150, 0.32, 0.75, 0])
    assert ids[0] < 120 and ids[2] == sf.BLANK_CONDITION


def test_errors_name_the_file_or_key():
    with pytest.raises(DataError, match="t.nwb.*lacks column"):
        sf.condition_ids(pd.DataFrame({"orientation": [0.0]}), "drifting_gratings", source="t.nwb")
    with pytest.raises(DataError, match="data.stim_features"):
        sf.condition_ids(pd.DataFrame({"frame": [1]}), "natural_scenes", source="t.nwb")
    with pytest.raises(ValueError, match="data.stim_features='clip'"):
        sf.feature_table("clip")
