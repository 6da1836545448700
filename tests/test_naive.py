"""Tests for quantformer_jax.baselines.naive: hand-computed forecasts, fallback, majority."""

import numpy as np
import pytest

from quantformer_jax.baselines import naive
from quantformer_jax.data.windows import WindowSplit

S, F = 3, 2


def _split(traces, condition_id, labels=None):
    traces = np.asarray(traces, np.float32)
    w, n, _ = traces.shape
    return WindowSplit(
        traces=traces,
        stim=np.zeros((w, 4), np.float32),
        labels=np.zeros((w, n), np.int32) if labels is None else np.asarray(labels, np.int32),
        condition_id=np.asarray(condition_id, np.int32),
        trial_start=np.arange(w, dtype=np.int64),
    )


def _inputs(src, **extra):
    src = np.asarray(src, np.float32)
    return {"src": src, "stim": np.zeros((src.shape[0], 4), np.float32), **extra}


@pytest.mark.parametrize("batch,neurons", [(1, 1), (2, 3)])
def test_persistence_and_source_mean(batch, neurons):
    src = np.arange(batch * neurons * S, dtype=np.float32).reshape(batch, neurons, S)
    persistence = naive.Persistence(forecast_frames=F).predict(_inputs(src))["forecast"]
    mean = naive.SourceMean(forecast_frames=F).predict(_inputs(src))["forecast"]
    assert persistence.shape == mean.shape == (batch, neurons, F)
    np.testing.assert_array_equal(persistence, np.repeat(src[..., -1:], F, axis=-1))
    np.testing.assert_allclose(mean, np.repeat(src[..., 1:2], F, axis=-1))  # mean of 3 = middle


def test_condition_average_table_and_fallback():
    # 3 train windows, N=1: condition 7 twice (futures [1, 2] and [3, 4]), condition 2 once.
    traces = [[[0, 0, 0, 1, 2]], [[0, 0, 0, 3, 4]], [[0, 0, 0, 10, 20]]]
    model = naive.ConditionAverage(source_frames=S).fit(_split(traces, [7, 7, 2]))
    np.testing.assert_array_equal(model.condition_ids, [2, 7])
    np.testing.assert_array_equal(model.windows_per_condition, [1, 2])
    out = model.predict(_inputs(np.zeros((3, 1, S)), condition_id=np.array([7, 2, 5])))
    np.testing.assert_allclose(out["forecast"][:, 0], [[2, 3], [10, 20], [14 / 3, 26 / 3]])
    np.testing.assert_array_equal(out["fallback"], [False, False, True])  # 5 unseen: overall mean


def test_condition_average_errors():
    with pytest.raises(ValueError, match="non-finite"):
        naive.ConditionAverage(source_frames=S).fit(_split([[[0, 0, 0, np.nan, 1]]], [1]))
    with pytest.raises(RuntimeError, match="before fit"):
        naive.ConditionAverage().predict({"condition_id": np.zeros(1)})
    model = naive.ConditionAverage(source_frames=S).fit(_split(np.zeros((1, 2, 5)), [1]))
    with pytest.raises(ValueError, match="N=2"):
        model.predict(_inputs(np.zeros((1, 3, S)), condition_id=np.zeros(1)))


def test_naive_forecasts_never_read_the_future():
    src = np.random.default_rng(0).normal(size=(2, 3, S)).astype(np.float32)
    future_a = np.zeros((2, 3, F), np.float32)
    future_b = np.full((2, 3, F), 9.0, np.float32)
    cond = naive.ConditionAverage(source_frames=S).fit(_split(np.ones((2, 3, S + F)), [0, 1]))
    for model in (naive.Persistence(F), naive.SourceMean(F), cond):
        a = model.predict(_inputs(src, future=future_a, condition_id=np.array([0, 1])))
        b = model.predict(_inputs(src, future=future_b, condition_id=np.array([0, 1])))
        c = model.predict(_inputs(src, condition_id=np.array([0, 1])))
        np.testing.assert_array_equal(a["forecast"], b["forecast"])
        np.testing.assert_array_equal(a["forecast"], c["forecast"])


def test_majority_per_neuron_and_global():
    # 3 windows x 3 neurons: neuron 0 always active, neuron 1 never, neuron 2 active once.
    labels = [[1, 0, 1], [1, 0, 0], [1, 0, 0]]
    split = _split(np.zeros((3, 3, S + F)), [0, 0, 0], labels)
    per_neuron = naive.MajorityClassifier().fit(split)
    np.testing.assert_array_equal(per_neuron.majority, [1, 0, 0])
    logits = per_neuron.predict(_inputs(np.zeros((2, 3, S))))["logits"]
    assert logits.shape == (2, 3, 2)
    np.testing.assert_array_equal(np.argmax(logits, -1), [[1, 0, 0], [1, 0, 0]])
    np.testing.assert_allclose(np.exp(logits[0, 2]), [3 / 5, 2 / 5], rtol=1e-6)  # (count+1)/(W+2)
    glob = naive.MajorityClassifier(per_neuron=False).fit(split)  # 4 of 9 labels active
    np.testing.assert_array_equal(glob.majority, [0])
    out = glob.predict(_inputs(np.zeros((1, 5, S))))["logits"]  # any N
    np.testing.assert_array_equal(np.argmax(out, -1), np.zeros((1, 5)))


def test_majority_tie_and_errors():
    tie = naive.MajorityClassifier().fit(_split(np.zeros((2, 1, S + F)), [0, 0], [[1], [0]]))
    np.testing.assert_array_equal(tie.majority, [0])  # equal logits -> argmax picks class 0
    with pytest.raises(ValueError, match="N=1"):
        tie.predict(_inputs(np.zeros((1, 2, S))))
    with pytest.raises(ValueError, match="0/1"):
        naive.MajorityClassifier().fit(_split(np.zeros((1, 1, S + F)), [0], [[2]]))
    with pytest.raises(RuntimeError, match="before fit"):
        naive.MajorityClassifier().predict(_inputs(np.zeros((1, 1, S))))
