"""Tests for data/datasets.py: container lookup, splits, pretraining sets, the processed cache."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from test_windows import make_experiment

from configs import common
from quantformer_jax.data import cache, datasets, nwb, simulate
from quantformer_jax.data.experiment import DataError, MissingStimulusError
from quantformer_jax.data.windows import SPLITS, WindowSpec, make_windows

# experiment id -> (container, session, neurons); container 30 has no session A.
FAKE = {1: (10, "A", 3), 2: (10, "B", 3), 3: (20, "A", 5), 5: (30, "B", 2)}


@pytest.fixture
def fake_cache(tmp_path, monkeypatch):
    """A cache directory whose NWB files are stand-ins read by a patched `nwb.load_experiment`."""
    cache.write_json(str(tmp_path / cache.MANIFEST_FILE), cache.manifest_dict())
    records = [
        {
            "id": eid,
            "experiment_container_id": cid,
            "stimulus_name": f"three_session_{session}",
            "targeted_structure": {"acronym": "VISp"},
            "imaging_depth": 175,
        }
        for eid, (cid, session, _) in FAKE.items()
    ]
    cache.write_json(str(tmp_path / cache.EXPERIMENTS_FILE), records)
    os.makedirs(tmp_path / cache.EXPERIMENT_DATA_DIR)
    for eid in FAKE:
        (tmp_path / cache.EXPERIMENT_DATA_DIR / f"{eid}.nwb").write_bytes(b"stand-in")
    reads = []
    overrides = {}  # experiment id -> make_experiment kwargs

    def load(path):
        eid = int(os.path.basename(path).split(".")[0])
        reads.append(eid)
        cid, _, n = FAKE[eid]
        kw = dict(n_neurons=n, active_amp=30.0, noise=0.05, seed=eid, trials_per_epoch=12)
        kw.update(overrides.get(eid, {}))
        return make_experiment(experiment_id=eid, container_id=cid, path=path, **kw)

    monkeypatch.setattr(datasets.nwb, "load_experiment", load)
    cfg = common.data_config()
    cfg.cache_dir = str(tmp_path)
    return cfg, reads, overrides


def test_single_experiment_dataset(fake_cache):
    cfg, reads, _ = fake_cache
    ds = datasets.load_experiment_dataset(cfg)  # container 0 = the first container (10)
    assert (ds.experiment_id, ds.container_id, ds.num_neurons, ds.stim_size) == (1, 10, 3, 4)
    np.testing.assert_array_equal(ds.cell_specimen_ids, [1000, 1001, 1002])
    for s in SPLITS:
        sp = ds.splits[s]
        w = len(sp)
        assert sp.traces.shape == (w, 3, 160) and sp.traces.dtype == np.float32
        assert sp.stim.shape == (w, 4) and sp.labels.shape == (w, 3)
        assert sp.labels.dtype == np.int32 and sp.condition_id.dtype == np.int32
        assert sp.trial_start.dtype == np.int64 and ds.summary[f"windows_{s}"] == w > 0
    assert ds.summary["num_trials"] == 36 and reads == [1]
    assert datasets.load_experiment_dataset(cfg, container_id=20).num_neurons == 5


def test_processed_cache_hit_and_miss(fake_cache, tmp_path):
    cfg, reads, _ = fake_cache
    first = datasets.load_experiment_dataset(cfg)
    assert not first.cache_hit and os.path.isfile(first.cache_path)
    assert first.cache_path.startswith(str(tmp_path / "processed_windows"))
    again = datasets.load_experiment_dataset(cfg)
    assert again.cache_hit and reads == [1] and again.summary == first.summary
    for s in SPLITS:
        for f in ("traces", "stim", "labels", "condition_id", "trial_start"):
            np.testing.assert_array_equal(getattr(again.splits[s], f), getattr(first.splits[s], f))
    cfg.label_threshold = 0.2  # a changed option must miss
    changed = datasets.load_experiment_dataset(cfg)
    assert not changed.cache_hit and reads == [1, 1] and changed.cache_path != first.cache_path
    cfg.processed_cache_dir = str(tmp_path / "elsewhere")
    assert datasets.load_experiment_dataset(cfg).cache_path.startswith(cfg.processed_cache_dir)


@pytest.mark.parametrize(
    "change",
    [
        {"trace_format": "dff"},
        {"source_frames": 80},
        {"forecast_frames": 48},
        {"baseline_frames": 30},
        {"label_threshold": 0.11},
        {"stim_features": "onehot"},
        {"val_fraction": 0.1},
        {"leak_free": False},
        {"f0_eps": 1e-3},
        {"stimulus": "static_gratings"},
    ],
)
def test_cache_key_hashes_every_option(tmp_path, change):
    path = tmp_path / "7.nwb"
    path.write_bytes(b"x")
    base = datasets.processed_cache_key(str(path), 7, WindowSpec())
    assert datasets.processed_cache_key(str(path), 7, WindowSpec()) == base
    assert datasets.processed_cache_key(str(path), 7, WindowSpec(**change)) != base


def test_cache_key_follows_the_nwb_file(tmp_path):
    path = tmp_path / "7.nwb"
    path.write_bytes(b"x")
    base = datasets.processed_cache_key(str(path), 7, WindowSpec())
    assert datasets.processed_cache_key(str(path), 8, WindowSpec()) != base
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert datasets.processed_cache_key(str(path), 7, WindowSpec()) != base
    path.write_bytes(b"xy")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert datasets.processed_cache_key(str(path), 7, WindowSpec()) != base  # size


def test_pretraining_dataset_keeps_each_neuron_count(fake_cache):
    cfg, _, _ = fake_cache
    ds = datasets.load_pretraining_dataset(cfg)  # all containers with a session A: 10, 20
    assert ds.experiment_ids == [1, 3] and ds.summary["num_neurons"] == [3, 5]
    for s in SPLITS:
        assert [sp.num_neurons for sp in ds.splits[s]] == [3, 5]
        assert ds.summary[f"windows_{s}"] == sum(len(sp) for sp in ds.splits[s])
    cfg.container_ids = (20,)
    assert datasets.load_pretraining_dataset(cfg).experiment_ids == [3]
    cfg.container_ids = (20, 10)
    assert datasets.load_pretraining_dataset(cfg).experiment_ids == [3, 1]


def test_no_active_rows(fake_cache, caplog):
    cfg, _, overrides = fake_cache
    overrides[3] = {"active_amp": 0.0, "noise": 0.0}  # experiment 3 never responds
    ds = datasets.load_pretraining_dataset(cfg)
    assert ds.summary["experiments_without_active_train"] == [
        os.path.join(cfg.cache_dir, "ophys_experiment_data", "3.nwb")
    ]
    assert "no active neuron" in caplog.text
    cfg.container_ids = (20,)
    with pytest.raises(DataError, match="data.balance_pretraining"):
        datasets.load_pretraining_dataset(cfg)
    cfg.balance_pretraining = False
    assert datasets.load_pretraining_dataset(cfg).summary["active_rows_train"] == 0


def test_bad_lookups_give_clear_errors(fake_cache, tmp_path):
    cfg, _, overrides = fake_cache
    with pytest.raises(DataError, match="ophys_experiments.json.*container 30"):
        datasets.load_experiment_dataset(cfg, container_id=30)
    cfg.container_ids = (10, 30)
    with pytest.raises(DataError, match="container 30"):
        datasets.load_pretraining_dataset(cfg)
    overrides[1] = {"with_dg": False}
    with pytest.raises(MissingStimulusError, match="1.nwb.*drifting_gratings"):
        datasets.load_experiment_dataset(cfg, container_id=10)
    os.remove(tmp_path / cache.EXPERIMENT_DATA_DIR / "3.nwb")
    with pytest.raises(DataError, match="3.nwb.*missing"):
        datasets.load_experiment_dataset(cfg, container_id=20)
    cfg.cache_dir = str(tmp_path / "nowhere")
    with pytest.raises(DataError, match="data.cache_dir"):
        datasets.load_experiment_dataset(cfg)
    records = json.loads((tmp_path / cache.EXPERIMENTS_FILE).read_text())
    assert len(records) == len(FAKE)


def test_empty_cache_dir_builds_the_simulated_observatory(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(
        simulate, "build_observatory", lambda out, size, seed: calls.append((out, size, seed))
    )
    monkeypatch.chdir(tmp_path)
    cfg = common.data_config()
    cfg.simulated_size, cfg.simulated_seed = "full", 3
    expected = os.path.join("runs", "observatory", "full-seed3")
    assert datasets.resolve_cache_dir(cfg) == expected and calls == [(expected, "full", 3)]


def test_simulated_experiment_end_to_end(mini_observatory, tmp_path):
    mini_cache = str(mini_observatory)
    cfg = common.data_config()
    cfg.cache_dir, cfg.processed_cache_dir = mini_cache, str(tmp_path)
    ds = datasets.load_experiment_dataset(cfg)
    entry = min(
        (e for e in cache.read_cache_index(mini_cache) if e.session_type == "three_session_A"),
        key=lambda e: e.container_id,
    )
    assert (ds.experiment_id, ds.container_id) == (entry.experiment_id, entry.container_id)
    experiment = nwb.load_experiment(entry.nwb_path)
    splits, summary = make_windows(experiment, WindowSpec.from_config(cfg))
    assert summary["num_trials"] == len(experiment.stimulus_table("drifting_gratings"))
    for s in SPLITS:
        assert len(ds.splits[s]) > 0
        np.testing.assert_array_equal(ds.splits[s].traces, splits[s].traces)
        np.testing.assert_array_equal(ds.splits[s].labels, splits[s].labels)
    assert 0 < summary["active_fraction_train"] < 1
    assert datasets.load_experiment_dataset(cfg).cache_hit
    pre = datasets.load_pretraining_dataset(cfg)
    assert pre.summary["num_neurons"] == [12, 16, 20] and pre.summary["active_rows_train"] > 0


def test_defaults_use_only_containers_with_files_like_a_partial_real_cache(fake_cache, tmp_path):
    """A real index lists the whole Observatory; only downloaded experiments are selected."""
    cfg, reads, _ = fake_cache
    os.remove(tmp_path / cache.EXPERIMENT_DATA_DIR / "1.nwb")  # container 10 not downloaded
    records = json.loads((tmp_path / cache.EXPERIMENTS_FILE).read_text())
    records.append(dict(records[0], id=7, experiment_container_id=40))  # 2nd DG experiment of 40
    records.append(dict(records[0], id=8, experiment_container_id=40))
    cache.write_json(str(tmp_path / cache.EXPERIMENTS_FILE), records)
    assert datasets.load_experiment_dataset(cfg).container_id == 20
    assert datasets.load_pretraining_dataset(cfg).summary["container_ids"] == [20]
    assert reads == [3]
    cfg.container_ids = (40,)
    with pytest.raises(DataError, match="container 40 has several experiments"):
        datasets.load_pretraining_dataset(cfg)
