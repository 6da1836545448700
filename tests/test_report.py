"""Tests of quantformer_jax/report.py on synthetic metrics.json workdirs (no training)."""

import json
import os

import numpy as np
import pytest

from quantformer_jax import evaluate, report

F = 8  # forecast frames of the fake runs


def _write(root, rel, task, model, seed, metrics, examples=None):
    workdir = os.path.join(root, rel)
    os.makedirs(workdir, exist_ok=True)
    payload = {"task": task, "model_class": model, "seed": seed, "split": "test",
               "experiment_id": 1, "metrics": metrics, "plots": {}}  # fmt: skip
    with open(os.path.join(workdir, evaluate.METRICS_FILE), "w") as f:
        json.dump(payload, f)
    if examples is not None:
        np.savez(os.path.join(workdir, evaluate.EXAMPLES_FILE), **examples)


def _forecast(mae, corr, act_ba=0.5):
    return {"mae": mae, "mse": mae**2, "mase": mae / 0.2, "corr": corr,
            "mae_step": [mae] * F, "activation_balanced_accuracy": act_ba,
            "activation_f1": 0.3}  # fmt: skip


def _examples(offset):
    rng = np.random.default_rng(0)
    target = rng.normal(size=(2, F))
    return {"pairs": np.array([[0, 1], [3, 2]]), "source": rng.normal(size=(2, 16)),
            "target": target, "forecast": target + offset}  # fmt: skip


@pytest.fixture
def two_seed_root(tmp_path):
    root = str(tmp_path)
    for seed, shift in ((0, 0.0), (1, 0.02)):
        base = f"seed{seed}"
        _write(root, f"{base}/qf_f", "forecast", "quantcoder", seed,
               _forecast(0.10 + shift, 0.5), _examples(0.1))  # fmt: skip
        _write(root, f"{base}/qf_c", "classify", "quantcoder", seed,
               {"balanced_accuracy": 0.8, "f1": 0.6})  # fmt: skip
        _write(root, f"{base}/inf_f", "forecast", "informer", seed, _forecast(0.2, 0.1),
               _examples(0.5))  # fmt: skip
        _write(root, f"{base}/inf_c", "classify", "informer", seed,
               {"balanced_accuracy": 0.6, "f1": 0.4})  # fmt: skip
        _write(root, f"{base}/ta", "forecast", "trial_average", seed,
               _forecast(0.11, 0.6, act_ba=0.7), _examples(0.05))  # fmt: skip
        _write(root, f"{base}/pt", "pretrain", "vq_tokenizer", seed,
               {"code_hist": [5, 0, 3, 1], "recon_mse": 0.01})  # fmt: skip
    os.makedirs(os.path.join(root, "observatory"))  # never scanned
    return root


def _row(text, label):
    return next(line for line in text.splitlines() if line.startswith(f"| {label}"))


def test_report_table_aggregates_seeds_and_marks_best(two_seed_root):
    path = report.write_report(two_seed_root, scale="demo")
    text = open(path).read()
    qf = _row(text, "QuantFormer (n=2)")
    # MAE over seeds: 0.10, 0.12 -> 0.1100 ± 0.0141 (ddof 1); best MAE in bold.
    assert "**0.1100 ± 0.0141**" in qf
    assert "**0.8000 ± 0.0000**" in qf  # balanced accuracy, best
    ta = _row(text, "trial-average")
    assert "**0.6000 ± 0.0000**" in ta  # best Pearson r
    assert "0.7000 ± 0.0000 †" in ta  # balanced accuracy derived from the forecast
    assert "| majority" not in text  # no result -> no row
    # The quality bar compares with the best baseline per seed: trial-average wins on r.
    assert "seed 0, Pearson r: QuantFormer 0.5000 vs best baseline trial-average 0.6000: " \
           "does NOT beat it" in text  # fmt: skip
    assert "seed 1, MAE: QuantFormer 0.1200 vs best baseline trial-average 0.1100" in text
    assert "Overall: no." in text
    for png in ("forecast_examples.png", "error_per_step.png", "codebook_usage.png"):
        assert f"(plots/{png})" in text
        assert os.path.getsize(os.path.join(two_seed_root, "plots", png)) > 1000
    assert "tensorboard --logdir" in text


def test_report_single_seed_plain_values_and_duplicates(tmp_path):
    root = str(tmp_path)
    _write(root, "a", "forecast", "quantcoder", 0, _forecast(0.1, 0.5))
    _write(root, "b", "forecast", "persistence", 0, _forecast(0.3, 0.0))
    text = open(report.write_report(root, stage_times={"a": {"seconds": 90, "status": "done",
                                                             "runs": 1}})).read()  # fmt: skip
    assert "| QuantFormer | **0.1000** |" in text
    assert "seed 0, MAE: QuantFormer 0.1000 vs best baseline persistence 0.3000: beats it" in text
    assert "| a | done | 90 s | 1 |" in text
    _write(root, "c", "forecast", "persistence", 0, _forecast(0.3, 0.0))
    with pytest.raises(ValueError, match="both hold persistence forecast seed 0"):
        report.write_report(root)
