"""Tests for quantformer_jax.metrics: hand-computed values, guards, accumulation, masks."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from quantformer_jax import metrics as m

# Few distinct shapes: each one costs a compilation.
SHAPE, SRC = (2, 3, 8), (2, 3, 4)


def _rand(seed, shape):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


# --- Forecasting -------------------------------------------------------------------------------


def test_hand_computed_single_series():
    target = np.array([[[1.0, 2.0, 3.0, 4.0]]], np.float32)
    pred = np.full_like(target, 2.0)  # constant prediction
    source = np.array([[[-1.0, 1.0]]], np.float32)  # naive forecast = 0
    out = m.forecast_metrics(pred, target, source)
    assert out["mae"] == pytest.approx(1.0)
    assert out["mse"] == pytest.approx(1.5)
    assert out["rmse"] == pytest.approx(math.sqrt(1.5))
    np.testing.assert_allclose(out["mae_step"], [1, 0, 1, 2])
    np.testing.assert_allclose(out["mse_step"], [1, 0, 1, 4])
    assert out["mase"] == pytest.approx(1.0 / 2.5)  # naive MAE = mean(1, 2, 3, 4)
    np.testing.assert_allclose(out["mase_step"], [1 / 1, 0 / 2, 1 / 3, 2 / 4], rtol=1e-6)
    smape = np.mean([1 / 1.5, 0.0, 1 / 2.5, 2 / 3])
    assert out["smape"] == pytest.approx(smape, rel=1e-6)
    # Constant prediction: r undefined -> 0, counted.
    assert out["corr"] == 0.0 and out["abs_corr"] == 0.0 and out["constant_series"] == 1
    var_u = np.var([1, 2, 3, 4], ddof=1)
    ssim = (2 * 2 * 2.5 + m.SSIM_C1) * m.SSIM_C2 / ((4 + 6.25 + m.SSIM_C1) * (var_u + m.SSIM_C2))
    assert out["ssim"] == pytest.approx(ssim, rel=1e-5)
    assert out["psnr"] == pytest.approx(20 * math.log10(4 / math.sqrt(1.5)), rel=1e-6)
    assert out["windows"] == 1 and out["series"] == 1


def test_perfect_prediction():
    target = _rand(0, SHAPE)
    source = _rand(1, SRC)
    out = m.forecast_metrics(target, target, source)
    assert out["mse"] == 0.0 and out["mae"] == 0.0 and out["mase"] == 0.0
    assert out["corr"] == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose(out["corr_neuron"], 1.0, atol=1e-6)
    # The original's SSIM mixes unbiased variance and biased covariance: a perfect prediction
    # scores (2 v_b + c2) / (2 v_u + c2) per series, not 1.
    v_b, v_u = np.var(target, axis=-1), np.var(target, axis=-1, ddof=1)
    expected = np.mean((2 * v_b + m.SSIM_C2) / (2 * v_u + m.SSIM_C2))
    assert out["ssim"] == pytest.approx(expected, rel=1e-5)
    assert out["ssim"] < 1.0
    assert out["psnr"] == math.inf and out["psnr_exact_series"] == 6
    # A constant perfect prediction scores SSIM exactly 1.
    flat = np.full(SHAPE, 0.3, np.float32)
    assert m.forecast_metrics(flat, flat, source)["ssim"] == pytest.approx(1.0)


def test_anti_correlated_signed_and_abs():
    target = _rand(2, SHAPE)
    out = m.forecast_metrics(1.0 - 2.0 * target, target, _rand(3, SRC))
    assert out["corr"] == pytest.approx(-1.0, abs=1e-6)
    assert out["abs_corr"] == pytest.approx(1.0, abs=1e-6)
    assert out["constant_series"] == 0


def test_all_zero_target():
    target = np.zeros(SHAPE, np.float32)
    pred = _rand(4, SHAPE)
    out = m.forecast_metrics(pred, target, np.zeros(SRC, np.float32))
    assert out["constant_series"] == 6 and out["corr"] == 0.0
    # Naive MAE is 0: MASE undefined (NaN) everywhere, counted (overall + 8 steps + 3 neurons).
    assert math.isnan(out["mase"]) and out["mase_undefined"] == 1 + 8 + 3
    assert out["smape"] == pytest.approx(2.0, rel=1e-5)  # |p| / (|p| / 2)
    assert out["psnr"] == -math.inf  # max(target) = 0 -> mean ratio 0
    assert out["mae"] == pytest.approx(np.mean(np.abs(pred)), rel=1e-6)


def test_per_neuron_values():
    target = np.zeros(SHAPE, np.float32)
    pred = np.zeros_like(target)
    pred[:, 1] = 1.0  # only neuron 1 is wrong, by 1 everywhere
    out = m.forecast_metrics(pred, target, np.ones(SRC, np.float32))
    np.testing.assert_allclose(out["mae_neuron"], [0, 1, 0])
    np.testing.assert_allclose(out["mase_neuron"], [0, 1, 0])
    assert out["mae"] == pytest.approx(1 / 3)


def test_batch_accumulation_equals_one_shot_and_jit():
    pred, target, source = _rand(5, (3, 3, 8)), _rand(6, (3, 3, 8)), _rand(7, (3, 3, 4))
    one_shot = m.forecast_metrics(pred, target, source)
    # Two batches of 2 windows, the second padded with one garbage window marked invalid.
    pad = lambda x: np.concatenate([x[2:], np.full_like(x[:1], np.nan)])  # noqa: E731
    sums_fn = jax.jit(m.forecast_sums)
    total = m.accumulate(None, sums_fn(pred[:2], target[:2], source[:2], jnp.ones(2, bool)))
    valid = jnp.array([True, False])
    total = m.accumulate(total, sums_fn(pad(pred), pad(target), pad(source), valid))
    acc = m.finalize(total)
    assert acc["windows"] == 3
    for key, value in one_shot.items():
        np.testing.assert_allclose(acc[key], value, rtol=2e-5, err_msg=key)


def test_valid_mask_excludes_windows():
    pred, target, source = _rand(8, (3, 3, 8)), _rand(9, (3, 3, 8)), _rand(10, (3, 3, 4))
    garbage_pred = pred.copy()
    garbage_pred[1] = 1e6  # an invalid window with absurd values
    masked = m.forecast_metrics(garbage_pred, target, source, np.array([True, False, True]))
    kept = m.forecast_metrics(pred[[0, 2]], target[[0, 2]], source[[0, 2]])
    for key, value in kept.items():
        np.testing.assert_allclose(masked[key], value, rtol=1e-6, err_msg=key)


def test_shape_errors_name_the_argument():
    with pytest.raises(ValueError, match="pred and target"):
        m.forecast_sums(np.zeros((1, 2, 4)), np.zeros((1, 2, 5)), np.zeros((1, 2, 3)))
    with pytest.raises(ValueError, match="source"):
        m.forecast_sums(np.zeros((1, 2, 4)), np.zeros((1, 2, 4)), np.zeros((1, 3, 3)))
    with pytest.raises(ValueError, match="valid"):
        m.forecast_sums(np.zeros((2, 2, 4)), np.zeros((2, 2, 4)), np.zeros((2, 2, 3)), jnp.ones(3))


def test_legacy_variants():
    target = np.array([[[1.0, 2.0, 4.0, 0.0]]], np.float32)
    pred = np.array([[[1.0, 1.0, 2.0, 0.0]]], np.float32)
    out = m.legacy_forecast_metrics(pred, target, patch_len=2)
    # Whole-window MAE 3/4; naive lag-2 MAE = mean(|4 - 1|, |0 - 2|) = 2.5.
    assert out["legacy_mase"] == pytest.approx(0.75 / 2.5)
    assert out["legacy_smape"] == pytest.approx(np.mean([0, 1 / 1.5, 2 / 3, 0]), rel=1e-6)
    # Baselines' SMAPE: no factor 2; the 0/0 element is left out and counted.
    assert out["legacy_baseline_smape"] == pytest.approx(np.mean([0, 1 / 3, 2 / 6]), rel=1e-6)
    assert out["legacy_baseline_smape_nan"] == 1


# --- Classification ----------------------------------------------------------------------------


def test_binary_matches_sklearn_by_hand():
    labels = jnp.array([0, 0, 0, 1, 1])
    pred = jnp.array([0, 1, 0, 1, 0])
    out = m.binary_metrics(pred, labels)
    # sklearn: accuracy 3/5; precision 1/2; recall 1/2; f1 1/2; balanced (1/2 + 2/3) / 2.
    assert out["accuracy"] == pytest.approx(0.6)
    assert out["precision"] == pytest.approx(0.5)
    assert out["recall"] == pytest.approx(0.5)
    assert out["f1"] == pytest.approx(0.5)
    assert out["balanced_accuracy"] == pytest.approx(7 / 12)


def test_binary_absent_class_like_sklearn():
    # No positive label: sklearn's balanced accuracy is the recall of class 0 only (3/4);
    # precision, recall and f1 fall back to zero_division = 0.
    out = m.binary_metrics(jnp.array([0, 1, 0, 0]), jnp.array([0, 0, 0, 0]))
    assert out["balanced_accuracy"] == pytest.approx(0.75)
    assert out["precision"] == 0.0 and out["recall"] == 0.0 and out["f1"] == 0.0
    all_negative = m.binary_metrics(jnp.zeros(3, int), jnp.zeros(3, int))
    assert all_negative["balanced_accuracy"] == 1.0 and all_negative["accuracy"] == 1.0


def test_binary_valid_mask_and_accumulation():
    labels = jnp.array([[1, 0], [1, 1], [0, 0]])
    pred = jnp.array([[1, 1], [0, 0], [0, 1]])
    counts = m.binary_counts(pred, labels, jnp.array([True, False, True]))
    assert {k: int(v) for k, v in counts.items()} == {"tp": 1, "fp": 2, "fn": 0, "tn": 1}
    total = m.accumulate(
        m.binary_counts(pred[:1], labels[:1]), m.binary_counts(pred[2:], labels[2:])
    )
    assert m.finalize(total) == m.finalize(counts)


def test_multiclass_balanced_accuracy():
    labels = jnp.array([0, 0, 1, 2, 2, 2, -100])
    pred = jnp.array([0, 1, 1, 2, 0, 0, 1])
    out = m.multiclass_metrics(pred, labels, num_classes=4)
    assert out["count"] == 6 and out["classes_present"] == 3  # -100 is ignored
    assert out["accuracy"] == pytest.approx(3 / 6)
    assert out["balanced_accuracy"] == pytest.approx((1 / 2 + 1 + 1 / 3) / 3)
    # A class seen only in the predictions does not enter the mean (sklearn drops its NaN recall).
    only_pred = m.multiclass_metrics(jnp.array([0, 3, 1]), jnp.array([0, 0, 1]), num_classes=4)
    assert only_pred["balanced_accuracy"] == pytest.approx(0.75)
    bad = m.multiclass_metrics(jnp.array([0, 7]), jnp.array([0, 1]), num_classes=2)
    assert bad["out_of_range"] == 1 and bad["count"] == 1


def test_forecast_activation_label_criterion_vs_max():
    forecast = np.zeros((1, 3, 64), np.float32)
    forecast[0, 0, 10] = 1.0  # one spike: max > 0.1 but mean |.| = 1/60
    forecast[0, 1, :60] = -0.2  # a negative response: mean |.| = 0.2, max < 0.1
    forecast[0, 2, 60:] = 5.0  # after the response window: ignored by both
    np.testing.assert_array_equal(m.forecast_activation(forecast), [[0, 1, 0]])
    np.testing.assert_array_equal(m.legacy_forecast_activation(forecast), [[1, 0, 0]])
    with pytest.raises(ValueError, match="response_frames"):
        m.forecast_activation(forecast[..., :30])
