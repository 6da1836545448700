"""Tests for data/windows.py and the synthetic `Experiment` builder the data-layer tests share."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from quantformer_jax import constants
from quantformer_jax.data import windows
from quantformer_jax.data.experiment import (
    DataError,
    Experiment,
    ExperimentMetadata,
    MissingStimulusError,
)

S, F, T = constants.SOURCE_FRAMES, constants.FORECAST_FRAMES, constants.WINDOW_FRAMES
DG = "drifting_gratings"


def make_experiment(
    *,
    n_neurons: int = 3,
    trials_per_epoch: int = 10,
    epoch_gap: int = 400,
    spacing: int = 90,
    lead: int = 200,
    tail: int = 200,
    baseline: float = 100.0,
    active_amp: float = 0.0,
    noise: float = 0.0,
    seed: int = 0,
    experiment_id: int = 1,
    container_id: int = 10,
    path: str = "/fake/1.nwb",
    with_dg: bool = True,
) -> Experiment:
    """A tiny three_session_A-like experiment: 3 DG epochs with other stimuli in the gaps.

    Corrected F is `baseline` everywhere (+ Gaussian `noise` x baseline); with `active_amp`,
    neuron n responds to trial k (+amp over the 60 post-onset frames) iff (k + n) % 3 == 0.
    Every 4th trial is a blank sweep.
    """
    starts, epochs, t = [], [], lead
    for e in range(3):
        first = t
        starts += [t + i * spacing for i in range(trials_per_epoch)]
        t = starts[-1] + constants.DG_ON_FRAMES
        epochs.append((DG, first, t))
        if e < 2:
            epochs.append(("natural_movie_three", t + 10, t + epoch_gap - 10))
            t += epoch_gap
    n_frames = t + tail
    starts = np.asarray(starts, dtype=np.int64)
    rng = np.random.default_rng(seed)
    trace = np.full((n_neurons, n_frames), baseline) + noise * baseline * rng.standard_normal(
        (n_neurons, n_frames)
    )
    for k, st in enumerate(starts):
        for n in range(n_neurons):
            if active_amp and (k + n) % 3 == 0:
                trace[n, st : st + constants.DG_ON_FRAMES] += active_amp
    ori = np.array([constants.DG_DIRECTIONS_DEG[k % 8] for k in range(len(starts))])
    tf = np.array([constants.DG_TEMPORAL_FREQUENCIES_HZ[k % 5] for k in range(len(starts))])
    blank = np.arange(len(starts)) % 4 == 3
    ori[blank], tf[blank] = np.nan, np.nan
    dg_table = pd.DataFrame(
        {
            "temporal_frequency": tf,
            "orientation": ori,
            "blank_sweep": blank.astype(float),
            "start": starts,
            "end": starts + constants.DG_ON_FRAMES,
        }
    )
    meta = ExperimentMetadata(
        ophys_experiment_id=experiment_id,
        experiment_container_id=container_id,
        session_type="three_session_A",
        targeted_structure="VISp",
        imaging_depth_um=175,
        cre_line="Cux2-CreERT2",
        genotype="Cux2-CreERT2/wt",
        indicator="GCaMP6f",
        age_days=100,
        sex="male",
        pipeline_version="3.0",
        session_start_time="2016-01-01",
    )
    timestamps = np.arange(n_frames) / constants.SAMPLING_RATE_HZ
    return Experiment(
        path=path,
        metadata=meta,
        cell_specimen_ids=np.arange(n_neurons, dtype=np.int64) + 1000,
        timestamps=timestamps,
        corrected_fluorescence=trace,
        dff=trace / baseline - 1.0,
        dff_timestamps=timestamps,
        running_speed=np.zeros(n_frames),
        stimulus_tables={DG: dg_table} if with_dg else {},
        epoch_table=pd.DataFrame(epochs, columns=["stimulus", "start", "end"]),
    )


def dg_starts(exp: Experiment) -> np.ndarray:
    return exp.stimulus_tables[DG]["start"].to_numpy()


def spec(**kw) -> windows.WindowSpec:
    return windows.WindowSpec(**{"val_fraction": 0.0, "leak_free": False, **kw})


def all_windows(splits):
    """Concatenates the splits back into time order (trial_start sorted)."""
    cat = {
        k: np.concatenate([getattr(splits[s], k) for s in windows.SPLITS])
        for k in ("traces", "labels", "condition_id", "trial_start", "stim")
    }
    order = np.argsort(cat["trial_start"])
    return {k: v[order] for k, v in cat.items()}


def test_shapes_and_onset_alignment():
    exp = make_experiment(n_neurons=2)
    starts = dg_starts(exp)
    spikes = [(k % 2, st + (k % 7) - 3) for k, st in enumerate(starts)]  # near each onset
    for neuron, frame in spikes:
        exp.corrected_fluorescence[neuron, frame] = 200.0
    splits, summary = windows.make_windows(exp, spec())
    w = all_windows(splits)
    assert w["traces"].shape == (len(starts), 2, T) and w["traces"].dtype == np.float32
    assert w["labels"].shape == (len(starts), 2) and w["labels"].dtype == np.int32
    np.testing.assert_array_equal(w["trial_start"], starts)
    for k, st in enumerate(starts):
        # A spike at frame st + j lands at window frame S + j (also in the next trial's window).
        expected = sorted([n, f - st + S] for n, f in spikes if 0 <= f - st + S < T)
        assert [k % 2, spikes[k][1] - st + S] in expected
        assert sorted(np.argwhere(w["traces"][k] > 0.5).tolist()) == expected
    assert summary["num_trials"] == len(starts) and summary["dropped_out_of_recording"] == 0


def test_dff_exact_on_hand_case():
    exp = make_experiment(n_neurons=1)
    st = dg_starts(exp)[5]
    tr = exp.corrected_fluorescence
    tr[0, st - S : st - 60] = 80.0  # before the baseline
    tr[0, st - 60 : st] = np.tile([90.0, 110.0], 30)  # f0 = 100
    tr[0, st : st + F] = 150.0
    splits, _ = windows.make_windows(exp, spec())
    x = all_windows(splits)["traces"][5, 0]
    np.testing.assert_array_equal(x[: S - 60], np.float32(-0.2))
    np.testing.assert_array_equal(x[S - 60 : S], np.tile(np.float32([-0.1, 0.1]), 30))
    np.testing.assert_array_equal(x[S:], np.float32(0.5))


def test_labels_threshold_boundary_and_abs():
    exp = make_experiment(n_neurons=3)
    st = dg_starts(exp)[4]
    r = constants.STIM_RESPONSE_FRAMES[DG]
    exp.corrected_fluorescence[0, st : st + r] = 125.0  # mean |dF/F| = 0.25 exactly: not active
    exp.corrected_fluorescence[1, st : st + r] = 126.0  # 0.26 > 0.25: active
    exp.corrected_fluorescence[2, st : st + r] = 70.0  # |-0.3| > 0.25: active
    splits, _ = windows.make_windows(exp, spec(label_threshold=0.25))
    labels = all_windows(splits)["labels"]
    assert labels[4].tolist() == [0, 1, 1]
    assert labels.sum() == 2  # every other window sits at the baseline


def test_labels_do_not_depend_on_horizon_or_input_format():
    exp = make_experiment(n_neurons=4, active_amp=40.0, noise=0.05)
    ref = all_windows(windows.make_windows(exp, spec())[0])
    short = all_windows(windows.make_windows(exp, spec(forecast_frames=32))[0])
    dff = all_windows(windows.make_windows(exp, spec(trace_format="dff"))[0])
    assert short["traces"].shape[-1] == S + 32
    np.testing.assert_array_equal(short["traces"], ref["traces"][..., : S + 32])
    np.testing.assert_array_equal(short["labels"], ref["labels"])
    np.testing.assert_array_equal(dff["labels"], ref["labels"])
    assert 0 < ref["labels"].mean() < 1


def test_dff_format_is_the_stored_trace():
    exp = make_experiment(n_neurons=2, noise=0.1)
    w = all_windows(windows.make_windows(exp, spec(trace_format="dff"))[0])
    st = dg_starts(exp)[3]
    np.testing.assert_array_equal(w["traces"][3], exp.dff[:, st - S : st + F].astype(np.float32))


def test_stim_features_of_dg_condition_and_blank():
    exp = make_experiment()
    w = all_windows(windows.make_windows(exp, spec())[0])
    # Trial 2: orientation 90, TF 4 Hz (see make_experiment); trial 3 is a blank sweep.
    np.testing.assert_allclose(w["stim"][2], [0.25, 0.04 / 0.32, 0.0, 4 / 15], rtol=1e-6)
    np.testing.assert_array_equal(w["stim"][3], np.zeros(4, np.float32))
    assert w["condition_id"][3] == 121 and w["stim"].dtype == np.float32
    onehot = all_windows(windows.make_windows(exp, spec(stim_features="onehot"))[0])
    assert onehot["stim"].shape == (len(dg_starts(exp)), 161)
    np.testing.assert_array_equal(onehot["stim"].argmax(axis=1), w["condition_id"])


def test_temporal_split_validation_and_leak_free():
    exp = make_experiment(trials_per_epoch=20)
    starts = dg_starts(exp)
    offset = int(exp.epoch_table[exp.epoch_table.stimulus == DG].iloc[1]["end"])
    splits, summary = windows.make_windows(exp, windows.WindowSpec())  # defaults: 15 %, leak-free
    tr, va, te = (splits[s].trial_start for s in windows.SPLITS)
    assert (tr < offset).all() and (va < offset).all() and (te >= offset).all()
    np.testing.assert_array_equal(te, starts[starts >= offset])  # epoch 3 = test, all of it
    n_train_trials = int((starts < offset).sum())
    assert len(va) == round(0.15 * n_train_trials) == 6
    np.testing.assert_array_equal(va, starts[starts < offset][-6:])  # the last ones in time
    # Leak-free: the last train window overlapped the first val window and was dropped.
    assert summary["dropped_leak_train_val"] == 1 and tr.max() + T <= va.min()
    assert len(tr) == n_train_trials - 6 - 1 == summary["windows_train"]
    for a, b in [(tr, te), (va, te), (tr, va)]:
        assert (np.abs(a[:, None] - b[None, :]) >= T).all()
    first = splits["train"].take(np.arange(2))
    assert len(first) == 2 and first.num_neurons == 3 and first.window_frames == T
    np.testing.assert_array_equal(first.trial_start, tr[:2])


def test_overlap_across_close_epochs_only_without_leak_free():
    exp = make_experiment(epoch_gap=50)  # epoch 3 starts 110 frames after epoch 2's last trial

    def min_gap(splits, a, b):
        return np.abs(splits[a].trial_start[:, None] - splits[b].trial_start[None, :]).min()

    leaky, summary = windows.make_windows(exp, spec(leak_free=False))
    assert min_gap(leaky, "train", "test") < T and summary["dropped_leak_train_test"] == 0
    clean, summary = windows.make_windows(exp, spec(leak_free=True))
    assert summary["dropped_leak_train_test"] == 1 and min_gap(clean, "train", "test") >= T
    clean, summary = windows.make_windows(exp, spec(leak_free=True, val_fraction=0.2))
    assert summary["dropped_leak_val_test"] == 1 and summary["dropped_leak_train_val"] == 1
    for a, b in [("train", "test"), ("val", "test"), ("train", "val")]:
        assert min_gap(clean, a, b) >= T, (a, b)


def test_windows_leaving_the_recording_are_counted():
    exp = make_experiment(lead=50, tail=0)  # first window starts before frame 0, last ends late
    splits, summary = windows.make_windows(exp, spec())
    assert summary["dropped_out_of_recording"] == 2
    assert sum(len(splits[s]) for s in windows.SPLITS) == len(dg_starts(exp)) - 2


def test_nonpositive_f0_counted_and_f0_eps_excludes():
    exp = make_experiment(n_neurons=2)
    st = dg_starts(exp)[2]
    exp.corrected_fluorescence[1, st - 60 : st] = 0.0  # f0 = 0 -> inf / nan dF/F
    exp.corrected_fluorescence[1, st : st + 5] = 1.0
    exp.corrected_fluorescence[0, st + 10] = 100.0 + 101 * 100.0  # dF/F = 101 > 100
    splits, summary = windows.make_windows(exp, spec())
    assert summary["f0_nonpositive_windows"] == 1 and summary["f0_nonpositive_neurons"] == 1
    # The large value also sits in the next trial's window.
    assert summary["nonfinite_values"] == T and summary["large_dff_values"] == 2
    assert summary["dropped_f0_eps"] == 0  # kept, as the original
    _, summary = windows.make_windows(exp, spec(f0_eps=1.0))
    assert summary["dropped_f0_eps"] == 1
    assert summary["windows_train"] + summary["windows_test"] == len(dg_starts(exp)) - 1


def test_bad_inputs_give_clear_errors():
    exp = make_experiment()
    exp.corrected_fluorescence[1, 700] = np.nan
    with pytest.raises(
        DataError, match=r"/fake/1.nwb.*corrected_fluorescence.*neuron 1, frame 700"
    ):
        windows.make_windows(exp, spec())
    with pytest.raises(MissingStimulusError, match="/fake/1.nwb.*drifting_gratings"):
        windows.make_windows(make_experiment(with_dg=False), spec())
    one_epoch = dataclasses.replace(
        make_experiment(),
        epoch_table=pd.DataFrame([(DG, 0, 10)], columns=["stimulus", "start", "end"]),
    )
    with pytest.raises(DataError, match="/fake/1.nwb.*1 epoch"):
        windows.make_windows(one_epoch, spec())
    bad = make_experiment()
    bad.stimulus_tables[DG].loc[0, "orientation"] = 10.0
    with pytest.raises(DataError, match="row 0.*not in the grating protocol"):
        windows.make_windows(bad, spec())


@pytest.mark.parametrize(
    "key,value",
    [
        ("label_format", "events"),
        ("trace_format", "corrected_fluorescence_std"),
        ("stim_features", "file"),
        ("baseline_frames", 200),
        ("val_fraction", 1.0),
    ],
)
def test_bad_options_name_the_config_key(key, value):
    with pytest.raises(ValueError, match=f"data.{key}"):
        windows.WindowSpec(**{key: value})
