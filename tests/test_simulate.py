"""Tests of the simulated Brain Observatory (`data/simulate.py`, `calcium.py`, `schedule.py`)."""

import json
import math
import os

import numpy as np
import pytest
from scipy import stats

from quantformer_jax.data import cache, calcium, nwb, response_stats, schedule, simulate
from quantformer_jax.data.experiment import DataError

# 15 DG repeats (the real protocol) but few cells and short movies: ~57 k frames, about 1 s.
REALISTIC = schedule.SessionSpec(
    dg_repeats=15,
    nm1_frames=30,
    nm3_frames=60,
    spont_frames=3000,
    lead_frames=150,
    gap_frames=120,
    tail_frames=150,
)
TINY = schedule.SessionSpec(
    dg_repeats=1, nm1_frames=10, nm3_frames=10, spont_frames=200, gap_frames=60, lead_frames=100
)


@pytest.fixture(scope="module")
def realistic():
    content, truth, _, _ = simulate.simulate_experiment(0, 30, REALISTIC, seed=3)
    corrected = content.demixed - content.neuropil * content.neuropil_r[:, None]
    spont = content.stimuli["spontaneous_stimulus"]["frame_duration"][:, 0].astype(int)
    return content, truth, corrected, (spont[0], spont[1])


def test_same_seed_same_arrays_other_seed_other_data():
    a, ta, _, _ = simulate.simulate_experiment(1, 4, TINY, seed=7)
    b, tb, _, _ = simulate.simulate_experiment(1, 4, TINY, seed=7)
    c, _, _, _ = simulate.simulate_experiment(1, 4, TINY, seed=8)
    for key in ("raw", "demixed", "neuropil", "dff", "timestamps", "running_speed"):
        assert getattr(a, key).tobytes() == getattr(b, key).tobytes(), key
    assert ta["spikes"].tobytes() == tb["spikes"].tobytes()
    assert not np.array_equal(a.demixed, c.demixed)
    assert a.raw.dtype == np.float32 and a.dff.dtype == np.float32


def test_observatory_layout_and_records(mini_observatory):
    index = cache.read_cache_index(mini_observatory)
    assert [e.experiment_id for e in index] == [simulate.container_ids(i)[1] for i in range(3)]
    record = json.loads((mini_observatory / simulate.SIMULATION_FILE).read_text())
    assert record["size"] == "mini" and record["seed"] == 0 and record["cells"] == [12, 16, 20]
    containers = json.loads((mini_observatory / "experiment_containers.json").read_text())
    experiments = json.loads((mini_observatory / "ophys_experiments.json").read_text())
    for c in containers:  # the fields allensdk's simplify_experiment_containers reads
        assert {"id", "imaging_depth", "failed", "targeted_structure", "specimen"} <= set(c)
        assert (
            c["specimen"]["donor"]["transgenic_lines"][0]["transgenic_line_type_name"] == "driver"
        )
    for e in experiments:
        assert e["stimulus_name"] == "three_session_A" and e["date_of_acquisition"].endswith("Z")
        assert e["experiment_container_id"] in {c["id"] for c in containers}
    for entry, n in zip(index, (12, 16, 20), strict=True):
        exp = nwb.load_experiment(entry.nwb_path)
        truth = np.load(simulate.ground_truth_path(mini_observatory, entry.experiment_id))
        assert exp.num_cells == n and truth["spikes"].shape == (n, exp.num_frames)
        assert truth["dg_trial_gain"].shape == (n, len(exp.stimulus_table("drifting_gratings")))


def test_build_is_idempotent_and_refuses_mismatches(tmp_path):
    out = tmp_path / "obs"
    simulate.build_observatory(out, "mini", seed=1, containers=1, cells=3)
    nwb_file = cache.read_cache_index(out)[0].nwb_path
    stamp = os.stat(nwb_file).st_mtime_ns
    simulate.build_observatory(out, "mini", seed=1, containers=1, cells=3)
    assert os.stat(nwb_file).st_mtime_ns == stamp  # reused, not rewritten
    with pytest.raises(DataError, match="different simulated build"):
        simulate.build_observatory(out, "mini", seed=2, containers=1, cells=3)
    simulate.build_observatory(out, "mini", seed=2, containers=1, cells=3, overwrite=True)
    assert json.loads((out / simulate.SIMULATION_FILE).read_text())["seed"] == 2
    stamp = os.stat(nwb_file).st_mtime_ns
    record = json.loads((out / simulate.SIMULATION_FILE).read_text())
    (out / simulate.SIMULATION_FILE).write_text(json.dumps(dict(record, complete=False)))
    simulate.build_observatory(out, "mini", seed=2, containers=1, cells=3)  # interrupted: redone
    assert os.stat(nwb_file).st_mtime_ns != stamp
    assert json.loads((out / simulate.SIMULATION_FILE).read_text())["complete"] is True
    foreign = tmp_path / "allen_cache"
    foreign.mkdir()
    (foreign / "manifest.json").write_text(json.dumps(cache.manifest_dict()))
    with pytest.raises(DataError, match="did not write"):
        simulate.build_observatory(foreign, "mini", seed=0)


def test_cli_writes_a_cache_and_prints_a_summary(tmp_path, capsys):
    out = tmp_path / "cli"
    assert (
        simulate.main(["--out", str(out), "--size", "mini", "--seed", "4", "--containers", "1"])
        == 0
    )
    printed = capsys.readouterr().out
    assert "1 experiments" in printed and "responsive_fraction" in printed
    assert len(cache.read_cache_index(out)) == 1


def test_sparse_poisson_matches_the_poisson_distribution():
    rng = np.random.default_rng(0)
    lam = np.full(100_000, 0.7, dtype=np.float32)
    idx, counts = calcium.sparse_poisson(rng, lam)
    full = np.zeros(lam.size, dtype=np.int64)
    full[idx] = counts
    observed = np.bincount(full, minlength=5)[:5] / lam.size
    expected = [math.exp(-0.7) * 0.7**k / math.factorial(k) for k in range(5)]
    np.testing.assert_allclose(observed, expected, atol=0.005)
    # Large means (exp(-lam) underflows for lam > 745) are drawn directly, still >= 1 event.
    idx, counts = calcium.sparse_poisson(rng, np.array([40.0, 2000.0, 0.0], dtype=np.float32))
    assert list(idx) == [0, 1] and abs(counts[1] - 2000) < 200 and counts[0] >= 1


def test_calcium_kernel_rises_fast_and_decays_with_tau():
    b, a = calcium.calcium_kernel_filter(0.03, 0.4)
    from scipy import signal

    h = signal.lfilter(b, a, np.r_[1.0, np.zeros(89)])
    assert np.argmax(h) <= 3 and 0.85 < h.max() <= 1.0  # peak ~ 1 within 100 ms
    tau = -1 / np.polyfit(np.arange(10, 60) / 30, np.log(h[10:60]), 1)[0]
    assert tau == pytest.approx(0.4, rel=0.02)


def test_single_trial_responses_are_sparse_and_heavy_tailed(realistic):
    _, truth, corrected, _ = realistic
    grating = truth["dg_blank_sweep"] == 0
    resp = response_stats.sweep_responses(corrected, truth["dg_start"][grating]).ravel()
    assert abs(np.median(resp)) < 2.0  # percent dF/F: most trials near zero
    assert np.percentile(resp, 99) > 20.0 and stats.kurtosis(resp) > 10
    assert 0.005 < np.mean(resp > 20.0) < 0.1


def test_a_minority_of_cells_are_responsive_and_match_ground_truth(realistic):
    _, truth, corrected, (s0, s1) = realistic
    grating = truth["dg_blank_sweep"] == 0
    resp = response_stats.sweep_responses(corrected, truth["dg_start"][grating])
    cond = truth["dg_orientation"][grating] * 100 + truth["dg_temporal_frequency"][grating]
    null = response_stats.sweep_responses(corrected, np.arange(s0 + 30, s1 - 60, 10))
    responsive = response_stats.responsive_cells(resp, cond, null)
    cls = truth["cell_response_class"]
    assert 0.25 <= responsive.mean() <= 0.85
    assert responsive[cls == 2].mean() >= 0.7 and responsive[cls == 0].mean() <= 0.4
    assert (cls == 0).mean() >= 0.3  # unresponsive cells are the largest class


def test_tuned_cells_prefer_their_ground_truth_direction(realistic):
    _, truth, corrected, _ = realistic
    grating = truth["dg_blank_sweep"] == 0
    resp = response_stats.sweep_responses(corrected, truth["dg_start"][grating])
    ori = truth["dg_orientation"][grating]
    dirs = np.arange(0, 360, 45)
    best = dirs[np.argmax(np.stack([resp[:, ori == d].mean(1) for d in dirs], 1), axis=1)]
    err = np.abs((best - truth["cell_pref_direction_deg"] + 90) % 180 - 90)
    strong = (truth["cell_response_class"] == 2) & (truth["cell_peak_rate_hz"] > 5)
    assert strong.sum() >= 3 and np.mean(err[strong] <= 30) >= 0.7


def test_dff_decay_noise_and_neuropil_look_like_gcamp6f(realistic):
    content, truth, _, (s0, s1) = realistic
    x = content.dff[:, s0:s1].astype(np.float64)
    x -= x.mean(axis=1, keepdims=True)
    lags = np.arange(2, 10)
    taus = []
    for row in x:  # per-cell exponential fit of the autocorrelation (noise only hits lag 0)
        acf = np.array([np.sum(row[:-k] * row[k:]) / np.sum(row * row) for k in lags])
        if np.all(acf > 0.02):
            taus.append(-1 / np.polyfit(lags / 30, np.log(acf), 1)[0])
    assert len(taus) >= 10 and 0.3 < np.median(taus) < 0.55
    noise = np.median(np.abs(np.diff(content.dff[:, s0:s1], axis=1)), axis=1) / 0.6745 / np.sqrt(2)
    assert 0.03 <= np.median(noise) <= 0.1
    r = truth["cell_neuropil_r"]
    assert r.min() >= 0 and r.max() <= 1 and 0.6 < r.mean() < 0.8
    assert np.all(np.abs(np.median(content.dff, axis=1)) < 0.05)  # baseline removed


def test_arousal_state_shows_before_onset_and_scales_responses(realistic):
    content, truth, corrected, _ = realistic
    starts, state = truth["dg_start"], truth["state"]
    state_at = np.array([state[s - 30 : s + 30].mean() for s in starts])
    pre_onset = np.array([content.dff[:, s - 30 : s].mean() for s in starts])
    assert np.corrcoef(pre_onset, state_at)[0, 1] > 0.3
    grating = truth["dg_blank_sweep"] == 0
    resp = response_stats.sweep_responses(corrected, starts[grating])
    tuned = resp[truth["cell_response_class"] == 2]
    high = state_at[grating] > np.quantile(state_at[grating], 2 / 3)
    low = state_at[grating] < np.quantile(state_at[grating], 1 / 3)
    assert tuned[:, high].mean() > 1.2 * tuned[:, low].mean()
