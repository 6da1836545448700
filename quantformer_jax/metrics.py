"""Forecasting and classification metrics: the one definition of each, for every model.

Every metric is computed in two halves (STYLE.md point 11):

* a jit-friendly `*_sums` function returns a dict of SUMS and COUNTS (jnp arrays) for one batch;
  dicts of the same kind add up over batches with `accumulate` (on device, inside or outside jit);
* a host-side `finalize` divides them, giving Python floats (scalars), numpy vectors (per horizon
  step `*_step` [F], per neuron `*_neuron` [N]) and integer counts.

`forecast_metrics`, `binary_metrics`, ... are one-shot conveniences (`finalize(*_sums(...))`).

Forecasting definitions (REFERENCE.md 5.1 and 7.F8; on the F forecast frames only). pred, target
[B, N, F]; source [B, N, S]; `valid` [B] marks real windows (a padded window counts for nothing).
One (window, neuron) pair is a "series" of F frames.

* mae, mse = mean |t - p|, mean (t - p)^2 over valid elements; rmse = sqrt(mse) of the pooled mse
  (not the mean of per-batch rmse, which the original QuantCoder logged).
* mase = MAE / MAE of the source-mean naive forecast (mean_t source repeated F times), both pooled
  over the same elements. A zero denominator (every target equals its source mean) gives NaN and
  is counted in `mase_undefined` (overall, per step, per neuron); the original returned 0, which
  reads as a perfect forecast.
* smape = mean |t - p| / ((|t| + |p|) / 2 + 1e-8), range [0, 2]; 0 where t = p = 0.
* corr = Pearson r per series over time, SIGNED, averaged over series; abs_corr = mean |r| (the
  original's "correlation"). A series whose prediction or target is constant (max == min) has no
  defined r: it counts as r = 0 (the original's nan_to_num) and is counted in `constant_series`.
* ssim = global (non-windowed) SSIM per series, as the original's compute_ssim_3d: means, UNBIASED
  variances, BIASED covariance, c1 = 0.01^2, c2 = 0.03^2 (value range 1), averaged over series.
  The mixed variance/covariance normalisation means a perfect non-constant prediction scores
  (2 v_b + c2) / (2 v_u + c2) < 1 (v_b, v_u = biased/unbiased variance), e.g. ~0.985 for
  F = 64; a constant perfect prediction scores exactly 1. Kept for comparability with the paper.
* psnr = 20 log10(mean over series of max_t(target) / rmse_series): the log of the MEAN RATIO, as
  the original's compute_psnr_3d. Series with rmse = 0 (ratio infinite) are left out of the mean and
  counted in `psnr_exact_series`; psnr is +inf when no series is left, -inf when the mean ratio
  is 0 and NaN when it is negative (a target whose maximum is negative).

Legacy variants (REFERENCE.md 5.1/5.2, 7.F8), for comparison with the paper only:
`legacy_forecast_sums` gives the QuantCoder whole-window MASE (naive = the window lagged by one
patch of 16 frames) and SMAPE (/((|p| + |t| + 1e-8)/2)), and the baselines' SMAPE
(/(|t| + |p|), range [0, 1]; its 0/0 elements, NaN in the original, are left out of the mean and
counted in `legacy_baseline_smape_nan`).
The original's mean |r| is `abs_corr` above. The original divided per batch and averaged the
ratios weighted by B; here ratios are of pooled sums.

Classification (REFERENCE.md 5.3): binary accuracy, precision, recall, F1 (positive = 1,
zero_division = 0) and balanced accuracy from confusion counts; multi-class accuracy and balanced
accuracy from a confusion matrix. Balanced accuracy equals sklearn's `balanced_accuracy_score`:
the mean recall over the classes PRESENT in the labels (a class absent from the labels is left out,
as sklearn does after its warning). With no samples at all, accuracy and balanced accuracy are NaN.

Forecast-derived activation (7.D6): `forecast_activation` uses the label criterion, mean |pred|
over the first 60 forecast frames > 0.1; `legacy_forecast_activation` is the original max > 0.1.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from quantformer_jax import constants

SMAPE_EPS = 1e-8  # canonical SMAPE denominator guard (7.F8)
SSIM_C1 = (0.01 * 1.0) ** 2  # value range 1, as compute_ssim_3d
SSIM_C2 = (0.03 * 1.0) ** 2
LEGACY_PATCH_LEN = constants.PATCH_LEN  # QuantCoder MASE naive lag (one patch)
RESPONSE_FRAMES = constants.STIM_RESPONSE_FRAMES["drifting_gratings"]

Sums = dict[str, jax.Array]


# --- Forecasting -------------------------------------------------------------------------------


def _window_mask(valid: jax.Array | None, batch: int, name: str) -> jax.Array:
    """Returns a bool [B] mask (all True when `valid` is None), checking its shape."""
    if valid is None:
        return jnp.ones((batch,), dtype=bool)
    if valid.shape != (batch,):
        raise ValueError(f"metrics: {name} must have shape ({batch},) (windows), got {valid.shape}")
    return valid.astype(bool)


def _check_forecast_shapes(pred: jax.Array, target: jax.Array, source: jax.Array) -> None:
    if target.ndim != 3 or pred.shape != target.shape:
        raise ValueError(
            f"metrics: pred and target must both be [B, N, F]; got pred {pred.shape}, "
            f"target {target.shape}"
        )
    if source.ndim != 3 or source.shape[:2] != target.shape[:2]:
        raise ValueError(
            f"metrics: source must be [B, N, S] with the target's B, N; got source {source.shape}, "
            f"target {target.shape}"
        )
    if target.shape[-1] < 2:
        raise ValueError(f"metrics: at least 2 forecast frames are needed, got {target.shape}")


def pearson_per_series(pred: jax.Array, target: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Pearson r over the last axis, with constant series guarded.

    Args:
        pred: [..., T] predictions.
        target: [..., T] targets.

    Returns:
        (r, degenerate): r [...] in [-1, 1], 0 where `degenerate`; degenerate [...] bool, True
        where the prediction or the target is constant over time (r undefined).
    """
    pc = pred - jnp.mean(pred, axis=-1, keepdims=True)
    tc = target - jnp.mean(target, axis=-1, keepdims=True)
    cov = jnp.sum(pc * tc, axis=-1)
    denom = jnp.sqrt(jnp.sum(pc * pc, axis=-1) * jnp.sum(tc * tc, axis=-1))
    # max == min is the exact test for "constant": the variance of a float32 constant series is
    # rounding noise, and testing it would turn noise into a spurious r. denom == 0: underflow.
    constant = (jnp.max(pred, -1) == jnp.min(pred, -1)) | (
        jnp.max(target, -1) == jnp.min(target, -1)
    )
    degenerate = constant | ~(denom > 0)
    r = jnp.where(degenerate, 0.0, cov / jnp.where(degenerate, 1.0, denom))
    return jnp.clip(r, -1.0, 1.0), degenerate


def ssim_per_series(pred: jax.Array, target: jax.Array) -> jax.Array:
    """Global SSIM over the last axis, as compute_ssim_3d. [..., T] -> [...].

    Unbiased variances, biased covariance (see the module docstring for the consequence).
    """
    length = pred.shape[-1]
    mx = jnp.mean(pred, axis=-1)
    my = jnp.mean(target, axis=-1)
    xc = pred - mx[..., None]
    yc = target - my[..., None]
    vx = jnp.sum(xc * xc, axis=-1) / (length - 1)
    vy = jnp.sum(yc * yc, axis=-1) / (length - 1)
    cxy = jnp.sum(xc * yc, axis=-1) / length
    num = (2 * mx * my + SSIM_C1) * (2 * cxy + SSIM_C2)
    return num / ((mx * mx + my * my + SSIM_C1) * (vx + vy + SSIM_C2))


def forecast_sums(
    pred: jax.Array, target: jax.Array, source: jax.Array, valid: jax.Array | None = None
) -> Sums:
    """Sums and counts of every canonical forecasting metric for one batch (jit-friendly).

    Args:
        pred: [B, N, F] forecast.
        target: [B, N, F] true future frames.
        source: [B, N, S] source frames (for the MASE naive forecast only).
        valid: optional [B] bool; False windows contribute nothing (their values may be garbage).

    Returns:
        A dict of arrays; add batches with `accumulate`, divide with `finalize`.
    """
    _check_forecast_shapes(pred, target, source)
    pred = jnp.asarray(pred, jnp.float32)
    target = jnp.asarray(target, jnp.float32)
    source = jnp.asarray(source, jnp.float32)
    keep = _window_mask(valid, target.shape[0], "valid")
    keep_elem = keep[:, None, None]  # [B, 1, 1]
    keep_series = keep[:, None]  # [B, 1]

    def elementwise(x):  # [B, N, F] -> ([F], [N]) sums over valid windows
        x = jnp.where(keep_elem, x, 0.0)
        return jnp.sum(x, axis=(0, 1)), jnp.sum(x, axis=(0, 2))

    def series(x):  # [B, N] -> [N] sum over valid windows
        return jnp.sum(jnp.where(keep_series, x, 0.0), axis=0)

    abs_err = jnp.abs(target - pred)
    naive = jnp.mean(source, axis=-1, keepdims=True)  # [B, N, 1] source-mean forecast
    smape = abs_err / ((jnp.abs(target) + jnp.abs(pred)) / 2 + SMAPE_EPS)
    r, degenerate = pearson_per_series(pred, target)  # [B, N]
    rmse = jnp.sqrt(jnp.mean(jnp.square(target - pred), axis=-1))  # [B, N]
    exact = ~(rmse > 0)
    ratio = jnp.where(exact, 0.0, jnp.max(target, axis=-1) / jnp.where(exact, 1.0, rmse))

    out = {"windows": jnp.sum(keep.astype(jnp.int32))}
    out["abs_err"], out["abs_err_neuron"] = elementwise(abs_err)
    out["sq_err"], out["sq_err_neuron"] = elementwise(jnp.square(target - pred))
    out["naive_abs_err"], out["naive_abs_err_neuron"] = elementwise(jnp.abs(target - naive))
    out["smape"], _ = elementwise(smape)
    out["corr_neuron"] = series(r)
    out["abs_corr"] = jnp.sum(series(jnp.abs(r)))
    out["constant_series"] = jnp.sum(keep_series & degenerate, dtype=jnp.int32)
    out["ssim"] = jnp.sum(series(ssim_per_series(pred, target)))
    out["psnr_ratio"] = jnp.sum(series(ratio))
    out["psnr_exact_series"] = jnp.sum(keep_series & exact, dtype=jnp.int32)
    return out


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den, NaN where den == 0 (undefined), without numpy warnings."""
    num, den = np.asarray(num, np.float64), np.asarray(den, np.float64)
    return np.where(den != 0, num / np.where(den != 0, den, 1.0), np.nan)


def _finalize_forecast(s: Mapping[str, np.ndarray]) -> dict:
    windows = int(s["windows"])
    num_steps, num_neurons = len(s["abs_err"]), len(s["abs_err_neuron"])
    series = windows * num_neurons
    per_step, per_neuron, elements = windows * num_neurons, windows * num_steps, series * num_steps
    out: dict = {"windows": windows, "series": series}
    for name in ("abs_err", "sq_err"):
        metric = "mae" if name == "abs_err" else "mse"
        out[metric] = float(_ratio(np.sum(s[name]), elements))
        out[f"{metric}_step"] = _ratio(s[name], per_step)
        out[f"{metric}_neuron"] = _ratio(s[f"{name}_neuron"], per_neuron)
    out["rmse"] = float(np.sqrt(out["mse"]))
    out["rmse_step"] = np.sqrt(out["mse_step"])
    out["rmse_neuron"] = np.sqrt(out["mse_neuron"])
    out["mase"] = float(_ratio(np.sum(s["abs_err"]), np.sum(s["naive_abs_err"])))
    out["mase_step"] = _ratio(s["abs_err"], s["naive_abs_err"])
    out["mase_neuron"] = _ratio(s["abs_err_neuron"], s["naive_abs_err_neuron"])
    undefined = [np.isnan(out["mase"]), np.isnan(out["mase_step"]), np.isnan(out["mase_neuron"])]
    out["mase_undefined"] = int(sum(np.sum(u) for u in undefined)) if windows else 0
    out["smape"] = float(_ratio(np.sum(s["smape"]), elements))
    out["smape_step"] = _ratio(s["smape"], per_step)
    out["corr"] = float(_ratio(np.sum(s["corr_neuron"]), series))
    out["corr_neuron"] = _ratio(s["corr_neuron"], windows)
    out["abs_corr"] = float(_ratio(s["abs_corr"], series))
    out["constant_series"] = int(s["constant_series"])
    out["ssim"] = float(_ratio(s["ssim"], series))
    out["psnr_exact_series"] = int(s["psnr_exact_series"])
    out["psnr"] = _psnr(float(s["psnr_ratio"]), series - out["psnr_exact_series"], series)
    return out


def _psnr(ratio_sum: float, included: int, series: int) -> float:
    if series == 0:
        return float("nan")
    if included == 0:
        return float("inf")  # every series predicted exactly
    mean_ratio = ratio_sum / included
    if mean_ratio > 0:
        return float(20.0 * np.log10(mean_ratio))
    return float("-inf") if mean_ratio == 0 else float("nan")


def legacy_forecast_sums(
    pred: jax.Array,
    target: jax.Array,
    valid: jax.Array | None = None,
    *,
    patch_len: int = LEGACY_PATCH_LEN,
) -> Sums:
    """Sums of the original's legacy MASE/SMAPE variants (REFERENCE.md 5.1/5.2), for comparison.

    Args:
        pred: [B, N, T] prediction; for the QuantCoder numbers the whole reconstructed window
            (source patches included), for the baselines' SMAPE the forecast frames.
        target: [B, N, T] the true window (or forecast frames).
        valid: optional [B] bool window mask.
        patch_len: the naive lag of the QuantCoder MASE (one patch).

    Returns:
        A dict of sums for `finalize` (legacy_mase, legacy_smape, legacy_baseline_smape).
    """
    if pred.shape != target.shape or target.ndim != 3 or target.shape[-1] <= patch_len:
        raise ValueError(
            f"metrics: legacy pred/target must be equal [B, N, T] with T > patch_len={patch_len}; "
            f"got {pred.shape}, {target.shape}"
        )
    pred = jnp.asarray(pred, jnp.float32)
    target = jnp.asarray(target, jnp.float32)
    keep = _window_mask(valid, target.shape[0], "valid")[:, None, None]  # [B, 1, 1]
    abs_err = jnp.abs(pred - target)
    both = jnp.abs(target) + jnp.abs(pred)
    lagged = jnp.abs(target[..., patch_len:] - target[..., :-patch_len])  # naive = one patch back
    nan_elem = keep & (both == 0)  # the baselines' SMAPE is 0/0 there
    per_window = target.shape[1] * target.shape[2]

    def total(x, mask=keep):
        return jnp.sum(jnp.where(mask, x, 0.0))

    windows = jnp.sum(keep.astype(jnp.int32))
    return {
        "legacy_elements": windows * per_window,
        "legacy_mase_num": total(abs_err),
        "legacy_mase_den": total(lagged),
        "legacy_lag_elements": windows * target.shape[1] * (target.shape[2] - patch_len),
        "legacy_smape": total(abs_err / ((both + 1e-8) / 2)),
        "legacy_baseline_smape": total(
            abs_err / jnp.where(both == 0, 1.0, both), keep & (both > 0)
        ),
        "legacy_baseline_smape_nan": jnp.sum(nan_elem, dtype=jnp.int32),
    }


def _finalize_legacy(s: Mapping[str, np.ndarray]) -> dict:
    elements, lag_elements = int(s["legacy_elements"]), int(s["legacy_lag_elements"])
    nan_count = int(s["legacy_baseline_smape_nan"])
    mae = _ratio(s["legacy_mase_num"], elements)
    return {
        "legacy_mase": float(_ratio(mae, _ratio(s["legacy_mase_den"], lag_elements))),
        "legacy_smape": float(_ratio(s["legacy_smape"], elements)),
        # Mean over the defined elements; the original's 0/0 NaN elements are counted instead.
        "legacy_baseline_smape": float(_ratio(s["legacy_baseline_smape"], elements - nan_count)),
        "legacy_baseline_smape_nan": nan_count,
    }


# --- Classification ----------------------------------------------------------------------------


def _label_mask(valid: jax.Array | None, labels: jax.Array) -> jax.Array:
    """A bool mask of the labels' shape from an optional window mask [B] or a full mask."""
    if valid is None:
        return jnp.ones(labels.shape, dtype=bool)
    valid = jnp.asarray(valid).astype(bool)
    if valid.shape != labels.shape[: valid.ndim]:
        raise ValueError(
            f"metrics: valid {valid.shape} must be a leading part of labels {labels.shape}"
        )
    return jnp.broadcast_to(
        valid.reshape(valid.shape + (1,) * (labels.ndim - valid.ndim)), labels.shape
    )


def binary_counts(pred: jax.Array, labels: jax.Array, valid: jax.Array | None = None) -> Sums:
    """Confusion counts of binary predictions (positive = 1) for one batch (jit-friendly).

    Args:
        pred: [...] predicted classes in {0, 1} (bool or int).
        labels: [...] true classes in {0, 1}, same shape.
        valid: optional mask over leading axes (e.g. windows [B]) or of the labels' shape.

    Returns:
        dict(tp, fp, fn, tn) of int32 scalars.
    """
    if pred.shape != labels.shape:
        raise ValueError(f"metrics: pred {pred.shape} and labels {labels.shape} must match")
    keep = _label_mask(valid, labels)
    p = jnp.asarray(pred).astype(bool)
    t = jnp.asarray(labels).astype(bool)

    def count(x):
        return jnp.sum(keep & x, dtype=jnp.int32)

    return {"tp": count(p & t), "fp": count(p & ~t), "fn": count(~p & t), "tn": count(~p & ~t)}


def _finalize_binary(s: Mapping[str, np.ndarray]) -> dict:
    tp, fp, fn, tn = (int(s[k]) for k in ("tp", "fp", "fn", "tn"))
    total = tp + fp + fn + tn

    def div0(num, den):  # sklearn zero_division = 0
        return num / den if den else 0.0

    # sklearn: mean recall over the classes present in the labels.
    recalls = [div0(tp, tp + fn)] * bool(tp + fn) + [div0(tn, tn + fp)] * bool(tn + fp)
    return {
        "accuracy": (tp + tn) / total if total else float("nan"),
        "precision": div0(tp, tp + fp),
        "recall": div0(tp, tp + fn),
        "f1": div0(2 * tp, 2 * tp + fp + fn),
        "balanced_accuracy": float(np.mean(recalls)) if recalls else float("nan"),
        "count": total,
        "positives": tp + fn,
    }


def confusion_matrix(
    pred: jax.Array,
    labels: jax.Array,
    num_classes: int,
    valid: jax.Array | None = None,
    *,
    ignore_index: int = -100,
) -> Sums:
    """Multi-class confusion matrix (rows = true class, columns = prediction), jit-friendly.

    Args:
        pred: [...] int predicted classes.
        labels: [...] int true classes; `ignore_index` positions are skipped.
        num_classes: C.
        valid: optional mask over leading axes or of the labels' shape.
        ignore_index: label value to skip (the -100 of the code-class labels).

    Returns:
        dict(confusion [C, C] int32, out_of_range int32): a non-ignored label or a prediction
        outside [0, C) is not counted in the matrix but in `out_of_range`.
    """
    if pred.shape != labels.shape:
        raise ValueError(f"metrics: pred {pred.shape} and labels {labels.shape} must match")
    keep = _label_mask(valid, labels) & (labels != ignore_index)
    in_range = (labels >= 0) & (labels < num_classes) & (pred >= 0) & (pred < num_classes)
    index = jnp.clip(labels, 0, num_classes - 1) * num_classes + jnp.clip(pred, 0, num_classes - 1)
    counts = jnp.zeros((num_classes * num_classes,), jnp.int32)
    counts = counts.at[index.reshape(-1)].add((keep & in_range).reshape(-1).astype(jnp.int32))
    return {
        "confusion": counts.reshape(num_classes, num_classes),
        "out_of_range": jnp.sum(keep & ~in_range, dtype=jnp.int32),
    }


def _finalize_multiclass(s: Mapping[str, np.ndarray]) -> dict:
    cm = np.asarray(s["confusion"], np.int64)
    total = int(cm.sum())
    support = cm.sum(axis=1)
    present = support > 0
    recalls = np.diag(cm)[present] / support[present]
    return {
        "accuracy": float(np.trace(cm) / total) if total else float("nan"),
        "balanced_accuracy": float(recalls.mean()) if present.any() else float("nan"),
        "count": total,
        "classes_present": int(present.sum()),
        "out_of_range": int(s["out_of_range"]),
    }


# --- Forecast-derived activation (7.D6) ---------------------------------------------------------


def _response(forecast: jax.Array, response_frames: int) -> jax.Array:
    if forecast.shape[-1] < response_frames:
        raise ValueError(
            f"metrics: response_frames={response_frames} exceeds the forecast length "
            f"{forecast.shape[-1]}"
        )
    return forecast[..., :response_frames]


def forecast_activation(
    forecast: jax.Array,
    *,
    threshold: float = constants.ACTIVATION_THRESHOLD,
    response_frames: int = RESPONSE_FRAMES,
) -> jax.Array:
    """Activation predicted from a forecast with the label criterion. [B, N, F] -> [B, N] int32.

    mean |forecast| over forecast frames 0..response_frames-1 > threshold, as tsai_wen labels.
    """
    resp = _response(forecast, response_frames)
    return (jnp.mean(jnp.abs(resp), axis=-1) > threshold).astype(jnp.int32)


def legacy_forecast_activation(
    forecast: jax.Array,
    *,
    threshold: float = constants.ACTIVATION_THRESHOLD,
    response_frames: int = RESPONSE_FRAMES,
) -> jax.Array:
    """The original's activation criterion, max over the response frames > threshold (faithful).

    [B, N, F] -> [B, N] int32. Which frames are passed (F7's source-region bug) is the caller's.
    """
    return (jnp.max(_response(forecast, response_frames), axis=-1) > threshold).astype(jnp.int32)


# --- Accumulation and finalisation ---------------------------------------------------------------


def accumulate(total: Sums | None, sums: Sums) -> Sums:
    """Adds one batch's sums to a running total (None = start). Works inside jit too."""
    if total is None:
        return sums
    if set(total) != set(sums):
        raise ValueError(f"metrics: cannot add sums with keys {sorted(sums)} to {sorted(total)}")
    return jax.tree.map(jnp.add, total, sums)


_FINALIZERS = (
    ("abs_err", _finalize_forecast),
    ("legacy_mase_num", _finalize_legacy),
    ("tp", _finalize_binary),
    ("confusion", _finalize_multiclass),
)


def finalize(sums: Mapping[str, jax.Array]) -> dict:
    """Divides accumulated sums on the host (one device-to-host transfer).

    Args:
        sums: the output (or accumulation) of one of `forecast_sums`, `legacy_forecast_sums`,
            `binary_counts`, `confusion_matrix`.

    Returns:
        Metric name -> float (scalar metrics), np.ndarray (`*_step` [F], `*_neuron` [N]) or int
        (counts).
    """
    host = jax.device_get(dict(sums))
    for key, fn in _FINALIZERS:
        if key in host:
            return fn(host)
    raise ValueError(f"metrics: unknown sums with keys {sorted(host)}")


def finalize_groups(groups: Mapping[str, Mapping[str, jax.Array]]) -> dict:
    """Finalizes several named groups into one flat dict, '<group>_<metric>' ('' = no prefix)."""
    out = {}
    for name, sums in groups.items():
        for key, value in finalize(sums).items():
            out[f"{name}_{key}" if name else key] = value
    return out


# --- One-shot conveniences ------------------------------------------------------------------------
# Jitted once per shape: op-by-op dispatch of the sums would compile every primitive separately.
_forecast_sums_jit = jax.jit(forecast_sums)
_legacy_sums_jit = jax.jit(legacy_forecast_sums, static_argnames="patch_len")
_binary_counts_jit = jax.jit(binary_counts)
_confusion_jit = jax.jit(confusion_matrix, static_argnames=("num_classes", "ignore_index"))


def forecast_metrics(
    pred: jax.Array, target: jax.Array, source: jax.Array, valid: jax.Array | None = None
) -> dict:
    """`finalize(forecast_sums(...))` for one set of windows."""
    if valid is None:  # one compiled version per shape, with or without a mask
        valid = np.ones(np.shape(target)[:1], bool)
    return finalize(_forecast_sums_jit(pred, target, source, valid))


def legacy_forecast_metrics(
    pred: jax.Array,
    target: jax.Array,
    valid: jax.Array | None = None,
    *,
    patch_len: int = LEGACY_PATCH_LEN,
) -> dict:
    """`finalize(legacy_forecast_sums(...))` for one set of windows."""
    return finalize(_legacy_sums_jit(pred, target, valid, patch_len=patch_len))


def binary_metrics(pred: jax.Array, labels: jax.Array, valid: jax.Array | None = None) -> dict:
    """`finalize(binary_counts(...))`: accuracy, precision, recall, f1, balanced_accuracy."""
    return finalize(_binary_counts_jit(pred, labels, valid))


def multiclass_metrics(
    pred: jax.Array,
    labels: jax.Array,
    num_classes: int,
    valid: jax.Array | None = None,
    *,
    ignore_index: int = -100,
) -> dict:
    """`finalize(confusion_matrix(...))`: accuracy and balanced accuracy over C classes."""
    return finalize(_confusion_jit(pred, labels, num_classes, valid, ignore_index=ignore_index))
