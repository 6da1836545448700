"""Parameter-free baselines: persistence, source mean, per-condition train average, majority class.

They give the "naive baseline rows" of REFERENCE.md 7.B3 (the original only had the source-mean
forecast, reachable by no CLI path). Each is a small object with `fit(train_split)` where it needs
training data and `predict(inputs)` returning the same dict as the trained models:
`{"forecast": [B, N, F]}` or `{"logits": [B, N, 2]}`. `inputs` is the finetuning batch dict
(`src` [B, N, S], `stim` [B, D], and `condition_id` [B] for `ConditionAverage`). None of them
reads `future`: a forecast depends only on the source frames and the train split.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np

from quantformer_jax import constants

if TYPE_CHECKING:
    from quantformer_jax.data.windows import WindowSplit


def _source(inputs: Mapping[str, jax.Array], model: str) -> jax.Array:
    if "src" not in inputs:
        raise KeyError(f"{model}: inputs need 'src' [B, N, S]; got keys {sorted(inputs)}")
    src = jnp.asarray(inputs["src"], jnp.float32)
    if src.ndim != 3:
        raise ValueError(f"{model}: inputs['src'] must be [B, N, S], got shape {src.shape}")
    return src


class Persistence:
    """Repeats the last source frame F times."""

    def __init__(self, forecast_frames: int = constants.FORECAST_FRAMES):
        self.forecast_frames = forecast_frames

    def predict(self, inputs: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
        """inputs['src'] [B, N, S] -> {"forecast": [B, N, F]}."""
        src = _source(inputs, "Persistence")
        return {"forecast": jnp.repeat(src[..., -1:], self.forecast_frames, axis=-1)}


class SourceMean:
    """Repeats the mean of the source frames F times (the naive forecast of MASE, REFERENCE 5.1)."""

    def __init__(self, forecast_frames: int = constants.FORECAST_FRAMES):
        self.forecast_frames = forecast_frames

    def predict(self, inputs: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
        """inputs['src'] [B, N, S] -> {"forecast": [B, N, F]}."""
        src = _source(inputs, "SourceMean")
        mean = jnp.mean(src, axis=-1, keepdims=True)  # [B, N, 1]
        return {"forecast": jnp.repeat(mean, self.forecast_frames, axis=-1)}


def _check_train(split: WindowSplit, model: str) -> None:
    if len(split) == 0:
        raise ValueError(f"{model}.fit: the train split has no windows")


class ConditionAverage:
    """Per-condition trial average of the train split's forecast frames.

    fit: table[c] = mean over train windows of condition c of traces[:, :, S:] ([N, F]); the
    overall train mean is the fallback for a condition id never seen in train.
    predict: {"forecast": [B, N, F], "fallback": [B] bool}. `fallback` marks the windows that used
    the overall mean, so the caller can count them (AND it with the batch's `valid` mask: padded
    windows may carry any condition id). The source frames are not used.
    """

    def __init__(self, source_frames: int = constants.SOURCE_FRAMES):
        self.source_frames = source_frames
        self.condition_ids: np.ndarray | None = None  # int32 [C], sorted
        self.table: np.ndarray | None = None  # float32 [C, N, F]
        self.overall: np.ndarray | None = None  # float32 [N, F]
        self.windows_per_condition: np.ndarray | None = None  # int64 [C]

    def fit(self, train_split: WindowSplit) -> ConditionAverage:
        """Builds the per-condition table from the train split's windows; returns self."""
        _check_train(train_split, "ConditionAverage")
        traces = np.asarray(train_split.traces, np.float64)
        if traces.shape[-1] <= self.source_frames:
            raise ValueError(
                f"ConditionAverage.fit: train_split.traces has {traces.shape[-1]} frames, not more "
                f"than source_frames={self.source_frames}"
            )
        future = traces[..., self.source_frames :]  # [W, N, F]
        bad = int(np.size(future) - np.count_nonzero(np.isfinite(future)))
        if bad:
            raise ValueError(
                f"ConditionAverage.fit: train_split.traces has {bad} non-finite forecast values"
            )
        ids, inverse, counts = np.unique(
            np.asarray(train_split.condition_id), return_inverse=True, return_counts=True
        )
        sums = np.zeros((len(ids),) + future.shape[1:])
        np.add.at(sums, inverse.reshape(-1), future)
        self.condition_ids = ids.astype(np.int32)
        self.table = (sums / counts[:, None, None]).astype(np.float32)
        self.overall = future.mean(axis=0).astype(np.float32)
        self.windows_per_condition = counts
        return self

    def predict(self, inputs: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
        """inputs['condition_id'] [B] -> {"forecast": [B, N, F], "fallback": [B] bool}."""
        if self.table is None:
            raise RuntimeError("ConditionAverage.predict called before fit")
        if "condition_id" not in inputs:
            raise KeyError(f"ConditionAverage: inputs need 'condition_id'; got {sorted(inputs)}")
        if "src" in inputs and np.shape(inputs["src"])[1] != self.table.shape[1]:
            raise ValueError(
                f"ConditionAverage: fitted on N={self.table.shape[1]} neurons, inputs['src'] has "
                f"shape {np.shape(inputs['src'])}"
            )
        cid = jnp.asarray(inputs["condition_id"], jnp.int32)  # [B]
        ids = jnp.asarray(self.condition_ids)
        pos = jnp.clip(jnp.searchsorted(ids, cid), 0, len(self.condition_ids) - 1)
        seen = ids[pos] == cid
        table = jnp.asarray(self.table)[pos]  # [B, N, F]
        forecast = jnp.where(seen[:, None, None], table, jnp.asarray(self.overall)[None])
        return {"forecast": forecast, "fallback": ~seen}


class MajorityClassifier:
    """Predicts the majority activation label of the train split.

    per_neuron=True (default): each neuron's own majority label over the train windows (neurons
    differ a lot in how often they respond, so this is the stronger trivial baseline).
    per_neuron=False: one global majority over all (window, neuron) labels.
    The logits are log Laplace-smoothed train frequencies, log((count_c + 1) / (W + 2)): their
    argmax is the majority class, and a tie gives equal logits, hence class 0 under argmax.
    """

    def __init__(self, per_neuron: bool = True):
        self.per_neuron = per_neuron
        self.log_freq: np.ndarray | None = None  # float32 [N, 2] or [1, 2]

    def fit(self, train_split: WindowSplit) -> MajorityClassifier:
        """Counts the train labels; returns self."""
        _check_train(train_split, "MajorityClassifier")
        labels = np.asarray(train_split.labels)
        if not np.isin(labels, (0, 1)).all():
            raise ValueError(
                f"MajorityClassifier.fit: train_split.labels must be 0/1, got values "
                f"{np.unique(labels)[:10]}"
            )
        if not self.per_neuron:
            labels = labels.reshape(-1, 1)  # [W * N, 1]
        positives = labels.sum(axis=0).astype(np.float64)  # [N] or [1]
        total = labels.shape[0]
        counts = np.stack([total - positives, positives], axis=-1)  # [N, 2]
        self.log_freq = np.log((counts + 1.0) / (total + 2.0)).astype(np.float32)
        return self

    @property
    def majority(self) -> np.ndarray:
        """The predicted class per neuron ([N], or [1] for the global majority)."""
        if self.log_freq is None:
            raise RuntimeError("MajorityClassifier used before fit")
        return np.argmax(self.log_freq, axis=-1)

    def predict(self, inputs: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
        """inputs['src'] [B, N, S] (for B and N only) -> {"logits": [B, N, 2]}."""
        if self.log_freq is None:
            raise RuntimeError("MajorityClassifier.predict called before fit")
        batch, neurons, _ = _source(inputs, "MajorityClassifier").shape
        if self.per_neuron and neurons != self.log_freq.shape[0]:
            raise ValueError(
                f"MajorityClassifier: fitted per neuron on N={self.log_freq.shape[0]}, "
                f"inputs['src'] has N={neurons}"
            )
        logits = jnp.broadcast_to(jnp.asarray(self.log_freq), (neurons, 2))
        return {"logits": jnp.broadcast_to(logits[None], (batch, neurons, 2))}
