"""Tests of quantformer_jax/evaluate.py: example selection, run-config loading, and the whole
evaluation of parameter-free workdirs, whose metrics are pinned to numpy computations."""

import json
import os

import numpy as np
import pytest

from quantformer_jax import evaluate


def test_select_examples_ranks_true_response_and_prefers_new_neurons():
    target = np.zeros((3, 4, 8), np.float32)
    target[1, 2] = 5.0  # the strongest response
    target[2, 2] = 4.0  # same neuron, second strongest: skipped for a fresh neuron
    target[0, 1] = 3.0
    pairs = evaluate.select_examples(target, 3, response_frames=6)
    assert pairs.shape == (3, 2)
    assert tuple(pairs[0]) == (1, 2)
    assert len({int(n) for _, n in pairs}) == 3  # three different neurons
    assert len({tuple(p) for p in pairs.tolist()}) == 3
    # Only the target decides: the same data always gives the same examples.
    np.testing.assert_array_equal(pairs, evaluate.select_examples(target.copy(), 3, 6))
    assert evaluate.select_examples(target, 100, 6).shape == (12, 2)
    assert evaluate.select_examples(target, 0, 6).shape == (0, 2)


def test_load_run_config_restores_tuples_and_rejects_bad_workdirs(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        evaluate.load_run_config(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"task": "forecast", "data": {"b": [1, 2]}}))
    config = evaluate.load_run_config(str(tmp_path))
    assert config.data.b == (1, 2)
    (tmp_path / "config.json").write_text(json.dumps({"task": "dance"}))
    with pytest.raises(ValueError, match="task='dance'"):
        evaluate.load_run_config(str(tmp_path))


def _baseline_config(model, task, cache_dir):
    from configs import baseline

    config = baseline.get_config(f"model={model},task={task},runlocal")
    config.data.cache_dir = str(cache_dir)
    config.training.batch_size = 4
    return config


def test_persistence_workdir_metrics_match_numpy(mini_observatory, tmp_path):
    from quantformer_jax.data import datasets
    from quantformer_jax.training import forecast

    config = _baseline_config("persistence", "forecast", mini_observatory)
    workdir = str(tmp_path / "persistence")
    forecast.train_and_evaluate(config, workdir)
    payload = evaluate.evaluate_workdir(workdir, num_examples=3)

    test = datasets.load_experiment_dataset(config.data).splits["test"]
    s = config.data.source_frames
    src, target = test.traces[..., :s], test.traces[..., s:]
    pred = np.repeat(src[..., -1:], target.shape[-1], axis=-1)  # persistence: last frame
    m = payload["metrics"]
    # max_eval_steps=1 of runlocal is ignored: the whole test split is scored.
    assert m["windows"] == len(test)
    np.testing.assert_allclose(m["mae"], np.mean(np.abs(target - pred)), rtol=1e-5)
    np.testing.assert_allclose(m["mse"], np.mean((target - pred) ** 2), rtol=1e-5)
    naive = np.abs(target - src.mean(-1, keepdims=True)).mean()
    np.testing.assert_allclose(m["mase"], np.mean(np.abs(target - pred)) / naive, rtol=1e-5)
    assert len(m["mae_step"]) == target.shape[-1]

    stored = evaluate.read_metrics(workdir)
    assert stored["task"] == "forecast" and stored["model_class"] == "persistence"
    assert stored["split"] == "test" and stored["seed"] == config.seed
    for rel in stored["plots"].values():
        assert os.path.getsize(os.path.join(workdir, rel)) > 1000  # a real PNG
    with np.load(os.path.join(workdir, evaluate.EXAMPLES_FILE)) as ex:
        w, n = ex["pairs"][:, 0], ex["pairs"][:, 1]
        np.testing.assert_allclose(ex["target"], target[w, n])
        np.testing.assert_allclose(ex["forecast"], pred[w, n], rtol=1e-6)


def test_majority_classifier_confusion_matches_numpy(mini_observatory, tmp_path):
    from quantformer_jax.data import datasets
    from quantformer_jax.training import classify

    config = _baseline_config("majority", "classify", mini_observatory)
    workdir = str(tmp_path / "majority")
    classify.train_and_evaluate(config, workdir)
    m = evaluate.evaluate_workdir(workdir)["metrics"]

    ds = datasets.load_experiment_dataset(config.data)
    majority = (ds.splits["train"].labels.mean(axis=0) > 0.5).astype(int)  # per neuron
    labels = ds.splits["test"].labels
    pred = np.broadcast_to(majority, labels.shape)
    assert m["tp"] == np.sum((pred == 1) & (labels == 1))
    assert m["tn"] == np.sum((pred == 0) & (labels == 0))
    assert m["tp"] + m["fp"] + m["fn"] + m["tn"] == labels.size == m["count"]
    assert os.path.isfile(os.path.join(workdir, "plots", "confusion.png"))
