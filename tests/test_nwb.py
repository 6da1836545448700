"""Tests of the NWB reader (`data/nwb.py`) and the cache index (`data/cache.py`)."""

import json
import shutil

import h5py
import numpy as np
import pytest

from quantformer_jax.data import cache, nwb, schedule, simulate
from quantformer_jax.data.experiment import DataError, MissingStimulusError
from quantformer_jax.data.nwb_writer import write_nwb

FLUO = "processing/brain_observatory_pipeline/Fluorescence"
DFF = "processing/brain_observatory_pipeline/DfOverF/imaging_plane_1"
RUN = "processing/brain_observatory_pipeline/BehavioralTimeSeries/running_speed"
DG = "stimulus/presentation/drifting_gratings_stimulus"


@pytest.fixture(scope="module")
def first(mini_observatory):
    entry = cache.read_cache_index(mini_observatory)[0]
    return entry, nwb.load_experiment(entry.nwb_path)


@pytest.fixture
def nwb_copy(mini_observatory, tmp_path):
    """A writable copy of the first mini experiment's NWB file."""
    entry = cache.read_cache_index(mini_observatory)[0]
    path = tmp_path / "copy.nwb"
    shutil.copy(entry.nwb_path, path)
    return path


def test_metadata_matches_the_simulated_records(mini_observatory, first):
    entry, exp = first
    records = json.loads((mini_observatory / "ophys_experiments.json").read_text())
    rec = next(r for r in records if r["id"] == entry.experiment_id)
    md = exp.metadata
    assert md.ophys_experiment_id == entry.experiment_id == simulate.container_ids(0)[1]
    assert md.experiment_container_id == entry.container_id == rec["experiment_container_id"]
    assert md.session_type == "three_session_A"
    assert md.imaging_depth_um == rec["imaging_depth"] == 175
    assert md.targeted_structure == rec["targeted_structure"]["acronym"] == "VISp"
    assert md.cre_line == "Cux2-CreERT2/wt"  # the file keeps "/wt"; the cache's cre_line does not
    assert entry.cre_line == "Cux2-CreERT2"
    assert md.genotype.split(";")[2].startswith("Ai93")
    assert md.indicator == "GCaMP6f" and md.sex in ("female", "male")
    assert md.pipeline_version == "3.0"
    birth = np.datetime64(rec["specimen"]["donor"]["date_of_birth"][:10])
    acquired = np.datetime64(rec["date_of_acquisition"][:10])
    assert md.age_days == int((acquired - birth).astype(int))


def test_traces_ids_and_running_speed(mini_observatory, first):
    entry, exp = first
    truth = np.load(simulate.ground_truth_path(mini_observatory, entry.experiment_id))
    with h5py.File(entry.nwb_path, "r") as f:
        demixed = f[FLUO + "/imaging_plane_1_demixed_signal/data"][()]
        neuropil = f[FLUO + "/imaging_plane_1_neuropil_response/data"][()]
        r = f[FLUO + "/imaging_plane_1_neuropil_response/r"][()]
        dff = f[DFF + "/data"][()]
    n, t = 12, exp.num_frames
    assert exp.num_cells == n and exp.cell_specimen_ids.dtype == np.int64
    np.testing.assert_array_equal(exp.cell_specimen_ids, truth["cell_specimen_ids"])
    assert exp.corrected_fluorescence.shape == (n, t) == exp.dff.shape
    np.testing.assert_array_equal(exp.corrected_fluorescence, demixed - neuropil * r[:, None])
    np.testing.assert_array_equal(r, truth["cell_neuropil_r"])
    np.testing.assert_array_equal(exp.dff, dff)
    np.testing.assert_array_equal(exp.dff_timestamps, exp.timestamps)
    assert np.all(np.diff(exp.timestamps) > 0.03) and np.all(np.diff(exp.timestamps) < 0.037)
    np.testing.assert_array_equal(exp.running_speed, truth["running_speed"])
    # Corrected fluorescence sits at F0 (100-500) and the stored dF/F near 0 at rest.
    assert np.all(np.abs(np.median(exp.dff, axis=1)) < 0.05)
    f0 = truth["cell_f0"]
    assert np.all(np.abs(np.median(exp.corrected_fluorescence, axis=1) / f0 - 1) < 0.2)


def test_running_speed_is_nan_padded_like_allensdk(nwb_copy):
    with h5py.File(nwb_copy, "a") as f:
        speed, times = f[RUN + "/data"][()], f[RUN + "/timestamps"][()]
        del f[RUN + "/data"], f[RUN + "/timestamps"]
        f[RUN + "/data"] = speed[5:-7, None]  # pipeline-0.9 style (N, 1) column
        f[RUN + "/timestamps"] = times[5:-7]
    out = nwb.load_experiment(nwb_copy).running_speed
    assert out.shape == speed.shape
    assert np.isnan(out[:5]).all() and np.isnan(out[-7:]).all()
    np.testing.assert_array_equal(out[5:-7], speed[5:-7])


def test_stimulus_tables_have_allensdk_columns_and_order(first):
    _, exp = first
    assert exp.list_stimuli() == [
        "drifting_gratings",
        "natural_movie_one",
        "natural_movie_three",
        "spontaneous",
    ]
    dg = exp.stimulus_table("drifting_gratings")
    assert list(dg.columns) == ["temporal_frequency", "orientation", "blank_sweep", "start", "end"]
    assert len(dg) == 126 and dg["start"].dtype == np.int64
    assert (dg["end"] - dg["start"] == 60).all() and dg["start"].is_monotonic_increasing
    blank = dg["blank_sweep"] == 1.0
    assert blank.sum() == 6
    assert dg.loc[blank, ["temporal_frequency", "orientation"]].isna().all().all()
    assert not dg.loc[~blank, ["temporal_frequency", "orientation"]].isna().any().any()
    counts = dg[~blank].groupby(["orientation", "temporal_frequency"]).size()
    assert len(counts) == 40 and (counts == 3).all()
    nm3 = exp.stimulus_table("natural_movie_three")
    assert list(nm3.columns) == ["frame", "start", "end", "repeat"]
    np.testing.assert_array_equal(nm3["repeat"], np.arange(600) // 60)
    np.testing.assert_array_equal(nm3["frame"], np.tile(np.arange(60), 10))
    spont = exp.stimulus_table("spontaneous")
    assert list(spont.columns) == ["start", "end"] and len(spont) == 1
    assert spont["end"].iloc[0] - spont["start"].iloc[0] == 600


def test_tables_are_sorted_keeping_the_original_row_index(nwb_copy):
    with h5py.File(nwb_copy, "a") as f:
        data, frames = f[DG + "/data"][()], f[DG + "/frame_duration"][()]
        order = np.random.default_rng(0).permutation(len(data))
        f[DG + "/data"][...] = data[order]
        f[DG + "/frame_duration"][...] = frames[order]
    dg = nwb.load_experiment(nwb_copy).stimulus_table("drifting_gratings")
    assert dg["start"].is_monotonic_increasing
    np.testing.assert_array_equal(dg.index.to_numpy(), np.argsort(order))  # original rows


def test_epoch_table_has_seven_epochs_with_gratings_in_three(first):
    _, exp = first
    ep = exp.epoch_table
    assert list(ep.columns) == ["stimulus", "start", "end"]
    assert list(ep["stimulus"]) == list(schedule.EPOCH_ORDER)
    assert ep["start"].is_monotonic_increasing and (ep["end"] > ep["start"]).all()
    dg = exp.stimulus_table("drifting_gratings")
    dg_epochs = ep[ep["stimulus"] == "drifting_gratings"]
    assert dg_epochs["start"].iloc[0] == dg["start"].iloc[0]
    assert dg_epochs["end"].iloc[-1] == dg["end"].iloc[-1]
    inside = sum(
        ((dg["start"] >= a) & (dg["end"] <= b)).sum() for a, b in dg_epochs[["start", "end"]].values
    )
    assert inside == len(dg)


def test_pipeline_09_file_uses_raw_minus_r_neuropil(tmp_path):
    spec = schedule.SessionSpec(
        dg_repeats=1, nm1_frames=10, nm3_frames=10, spont_frames=100, gap_frames=60, lead_frames=100
    )
    content, _, _, _ = simulate.simulate_experiment(0, 3, spec, seed=5)
    path = tmp_path / "v09.nwb"
    write_nwb(path, content, pipeline_version=None)
    exp = nwb.load_experiment(path)
    assert exp.metadata.pipeline_version == "0.9"
    expected = content.raw - content.neuropil * content.neuropil_r[:, None]
    np.testing.assert_array_equal(exp.corrected_fluorescence, expected)
    assert not np.array_equal(content.raw, content.demixed)  # so the two paths really differ


def _edit(path, fn):
    with h5py.File(path, "a") as f:
        fn(f)


def _replace(f, key, value):
    del f[key]
    f[key] = value


@pytest.mark.parametrize(
    "edit, where",
    [
        (lambda f: f.__delitem__(DFF), DFF),
        (lambda f: f.__delitem__(FLUO + "/imaging_plane_1_demixed_signal"), "demixed_signal"),
        (
            lambda f: _replace(f, "general/subject/age", np.bytes_(b"unknown")),
            "general/subject/age",
        ),
        (
            lambda f: _replace(f, "general/session_type", np.bytes_(b"three_session_X")),
            "general/session_type",
        ),
        (lambda f: _replace(f, "general/session_id", np.bytes_(b"abc")), "general/session_id"),
        (lambda f: f.__delitem__("stimulus/presentation"), "stimulus/presentation"),
    ],
)
def test_bad_content_names_file_and_path(nwb_copy, edit, where):
    _edit(nwb_copy, edit)
    with pytest.raises(DataError) as err:
        nwb.load_experiment(nwb_copy)
    assert str(nwb_copy) in str(err.value) and where in str(err.value)


def test_nan_traces_are_counted_not_dropped(nwb_copy, first):
    _, exp = first
    path = FLUO + "/imaging_plane_1_demixed_signal/data"

    def put_nan(f):
        data = f[path][()]
        data[[2, 5], 10:13] = np.nan  # 6 values in 2 cells
        f[path][...] = data

    _edit(nwb_copy, put_nan)
    with pytest.raises(DataError, match="6 NaN values in 2 of 12 cells") as err:
        nwb.load_experiment(nwb_copy)
    message = str(err.value)
    assert str(nwb_copy) in message and "demixed_signal" in message
    assert str(exp.cell_specimen_ids[2]) in message and str(exp.cell_specimen_ids[5]) in message
    kept = nwb.load_experiment(nwb_copy, allow_nan=True)
    assert kept.num_cells == 12 and np.isnan(kept.corrected_fluorescence).sum() == 6


def test_too_many_epochs_is_a_clear_error(nwb_copy):
    def split(f):
        frames = f[DG + "/frame_duration"][()]
        frames[10:] += 100  # a fourth gap > 39 frames inside the first epoch
        f[DG + "/frame_duration"][...] = frames

    _edit(nwb_copy, split)
    with pytest.raises(DataError, match="4 epochs"):
        nwb.load_experiment(nwb_copy)


def test_missing_stimulus_table(first):
    _, exp = first
    with pytest.raises(MissingStimulusError, match="static_gratings") as err:
        exp.stimulus_table("static_gratings")
    assert exp.path in str(err.value)


def test_not_a_file_not_hdf5_and_truncated(nwb_copy, tmp_path):
    with pytest.raises(DataError, match="not a file"):
        nwb.load_experiment(tmp_path / "missing.nwb")
    text = tmp_path / "text.nwb"
    text.write_text("this is not HDF5\n")
    with pytest.raises(DataError, match="not a readable HDF5") as err:
        nwb.load_experiment(text)
    assert str(text) in str(err.value)
    truncated = tmp_path / "truncated.nwb"
    truncated.write_bytes(nwb_copy.read_bytes()[: nwb_copy.stat().st_size // 2])
    with pytest.raises(DataError) as err:
        nwb.load_experiment(truncated)
    assert str(truncated) in str(err.value)


def test_cache_index_and_paths(mini_observatory, tmp_path):
    index = cache.read_cache_index(mini_observatory)
    assert [e.session_type for e in index] == ["three_session_A"] * 3
    assert len({e.container_id for e in index}) == 3 and all(e.exists for e in index)
    assert len({(e.cre_line, e.targeted_structure, e.imaging_depth) for e in index}) == 3
    eid = index[1].experiment_id
    assert cache.experiment_path(mini_observatory, eid) == index[1].nwb_path
    assert cache.container_experiments(mini_observatory)[index[1].container_id] == {
        "three_session_A": eid
    }
    with pytest.raises(DataError, match="not listed"):
        cache.experiment_path(mini_observatory, 123)
    with pytest.raises(DataError, match="manifest.json"):
        cache.read_cache_index(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps(cache.manifest_dict()))
    with pytest.raises(DataError, match="ophys_experiments.json"):
        cache.read_cache_index(tmp_path)
    (tmp_path / "ophys_experiments.json").write_text("[{")
    with pytest.raises(DataError, match="cannot parse JSON"):
        cache.read_cache_index(tmp_path)
