"""Autoformer baseline (REFERENCE.md 4.5): series decomposition and auto-correlation attention.

Forecast: x_enc = src^T [B, S=96, N] is split into seasonal + trend by a moving average
(kernel 3, replicate padding). The decoder starts from seasonal_init = cat(seasonal[-48:],
zeros F) and trend_init = cat(trend[-48:], mean(x_enc) repeated F) (112 steps, marks
t[48:160]); every encoder/decoder layer decomposes progressively, decoder layers add their
projected trends to the trend, and the stimulus enters late on the seasonal part:
Linear(2d -> N) of cat(seasonal, Linear(stim)). Output = trend + seasonal, last F steps,
transposed to [B, N, F]. Classify: encoder over [CLS, stim token, value-embedded source]
(no time marks) -> CLS -> GELU -> Linear(d -> N), returned as [0, l] pairs [B, N, 2].

Auto-correlation (as the original): per head and channel, corr = irfft(Q_f * conj(K_f)); the
mean over heads and channels scores each delay; the top k = int(factor * ln L) delays (capped
to L; torch would fail when k > L) are softmax-weighted and the values, rolled by each delay,
are summed. In train mode the delays are chosen once for the whole batch (the batch-mean
score, `time_delay_agg_training`); in eval mode per window (`time_delay_agg_inference`).
Set `shared_delays_in_train=False` to use per-window delays in both.

Time marks (REFERENCE 7.B5): 'timeF' (default) embeds t = arange(T)/30 s by a Linear(1 -> d);
'fixed' reproduces the original's calendar tables reading floor(seconds) (without its N >= 4
requirement, which came from replicating the marks over N columns).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from quantformer_jax import constants
from quantformer_jax.baselines import interface
from quantformer_jax.baselines.layers import (
    TIME_EMBEDDINGS,
    AttendFn,
    AttentionLayer,
    CircularConv1d,
    DataEmbedding,
    dense,
    gelu,
    layer_norm,
    normal_init,
)


@dataclasses.dataclass(frozen=True)
class AutoformerConfig:
    """Autoformer architecture; defaults are the original baseline run (REFERENCE 4.1, 4.5)."""

    d_model: int = 128  # token width d
    n_heads: int = 8  # attention heads
    e_layers: int = 2  # encoder layers
    d_layers: int = 2  # decoder layers
    d_ff: int = 512  # feed-forward width
    dropout: float = 0.0  # residual, feed-forward, embedding and classifier dropout
    factor: int = 10  # auto-correlation keeps int(factor * ln L) delays
    moving_avg: int = 3  # odd moving-average kernel of the series decomposition
    label_len: int = 48  # source steps the decoder starts from
    forecast_frames: int = constants.FORECAST_FRAMES  # F
    frame_rate_hz: float = constants.SAMPLING_RATE_HZ  # for the time marks
    time_embedding: str = "timeF"  # timeF (REFERENCE 7.B5) | fixed (original floor-seconds)
    shared_delays_in_train: bool = True  # original: batch-shared delays in train mode

    def __post_init__(self):
        if self.d_model % self.n_heads or self.d_model % 2:
            raise ValueError(
                f"AutoformerConfig.d_model={self.d_model} must be even and divisible by "
                f"n_heads={self.n_heads}"
            )
        if self.moving_avg < 1 or self.moving_avg % 2 == 0:
            raise ValueError(f"AutoformerConfig.moving_avg={self.moving_avg} must be odd")
        if self.time_embedding not in TIME_EMBEDDINGS[:2]:
            raise ValueError(
                f"AutoformerConfig.time_embedding={self.time_embedding!r}; {TIME_EMBEDDINGS[:2]}"
            )
        for name in ("e_layers", "d_layers", "factor", "label_len", "forecast_frames"):
            if getattr(self, name) < 1:
                raise ValueError(f"AutoformerConfig.{name}={getattr(self, name)} must be >= 1")

    @classmethod
    def from_config(cls, section: Any, **overrides: Any) -> AutoformerConfig:
        """Builds the config from an ml_collections section (keys that are not fields ignored)."""
        return interface.config_from_section(cls, section, overrides)


def series_decomp(x: jax.Array, kernel_size: int) -> tuple[jax.Array, jax.Array]:
    """Moving-average decomposition over time: [B, L, C] -> (seasonal, trend), x = sum of both.

    The trend is the mean of `kernel_size` (odd) steps, the ends padded by repeating the first
    and last step; seasonal = x - trend.
    """
    pad = (kernel_size - 1) // 2
    length = x.shape[1]
    padded = jnp.concatenate(
        [jnp.repeat(x[:, :1], pad, axis=1), x, jnp.repeat(x[:, -1:], pad, axis=1)], axis=1
    )
    trend = sum(padded[:, j : j + length] for j in range(kernel_size)) / kernel_size
    return x - trend, trend


def num_delays(length: int, factor: int) -> int:
    """int(factor * ln L) delays, capped to [1, L]."""
    return max(1, min(int(factor * math.log(length)), length))


def auto_correlation(
    q: jax.Array, k: jax.Array, v: jax.Array, *, factor: int, shared_delays: bool
) -> tuple[jax.Array, jax.Array]:
    """Auto-correlation with time-delay aggregation.

    Args:
        q: [B, H, L, dh]; k, v: [B, H, S, dh] (zero-padded or truncated to L, as the original).
        factor: keeps int(factor * ln L) delays.
        shared_delays: choose the delays from the batch-mean score (original train mode);
            otherwise per window (original eval mode).

    Returns:
        (aggregated values [B, H, L, dh], delays [B, k] int32).
    """
    batch, _, length, _ = q.shape
    source = k.shape[2]
    if length > source:
        pad = ((0, 0), (0, 0), (0, length - source), (0, 0))
        k, v = jnp.pad(k, pad), jnp.pad(v, pad)
    else:
        k, v = k[:, :, :length], v[:, :, :length]
    spectrum = jnp.fft.rfft(q, axis=2) * jnp.conj(jnp.fft.rfft(k, axis=2))
    corr = jnp.fft.irfft(spectrum, n=length, axis=2)  # [B, H, L(delay), dh]
    score = corr.mean(axis=(1, 3))  # [B, L]
    top_k = num_delays(length, factor)
    if shared_delays:
        _, delays = jax.lax.top_k(score.mean(axis=0), top_k)  # [k]
        delays = jnp.broadcast_to(delays, (batch, top_k))
        weights = jnp.take_along_axis(score, delays, axis=1)  # [B, k]
    else:
        weights, delays = jax.lax.top_k(score, top_k)  # [B, k]
    weights = jax.nn.softmax(weights, axis=-1)
    # out[t] = sum_i w_i v[(t + delay_i) mod L] = circulant(c) @ v with c[tau] = sum of the
    # weights of delay tau; a dense [B, L, L] matrix compiles and runs fast at these lengths.
    per_delay = jnp.einsum("bk,bkl->bl", weights, jax.nn.one_hot(delays, length, dtype=v.dtype))
    offsets = (jnp.arange(length)[None, :] - jnp.arange(length)[:, None]) % length  # [t, s]
    mixing = per_delay[:, offsets]  # [B, L(t), L(s)]: weight of v[s] in out[t]
    return jnp.einsum("bts,bhsd->bhtd", mixing, v), delays


def my_layernorm(x: jax.Array, name: str) -> jax.Array:
    """LayerNorm followed by subtracting its mean over time (the original's my_Layernorm)."""
    x_hat = layer_norm(name)(x)
    return x_hat - x_hat.mean(axis=1, keepdims=True)


def _feed_forward(x: jax.Array, config: AutoformerConfig, dropout: nn.Dropout) -> jax.Array:
    """Two bias-free position-wise layers (kernel-1 convs) with GELU: [B, L, d] -> same."""
    y = dropout(gelu(dense(config.d_ff, config.d_model, use_bias=False, name="ff1")(x)))
    return dropout(dense(config.d_model, config.d_ff, use_bias=False, name="ff2")(y))


class EncoderLayer(nn.Module):
    """Auto-correlation + decomposition, feed-forward + decomposition (trends dropped)."""

    config: AutoformerConfig

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        cfg = self.config
        dropout = functools.partial(nn.Dropout(cfg.dropout), deterministic=not train)
        attend = _correlation_fn(cfg, train)
        x = x + dropout(AttentionLayer(cfg.d_model, cfg.n_heads, name="attention")(x, x, x, attend))
        x, _ = series_decomp(x, cfg.moving_avg)
        x, _ = series_decomp(x + _feed_forward(x, cfg, dropout), cfg.moving_avg)
        return x


class DecoderLayer(nn.Module):
    """Self and cross auto-correlation and feed-forward, each followed by a decomposition.

    Returns the seasonal part [B, L, d] and the layer's trend projected to the N channels by a
    bias-free circular Conv1d (k3) [B, L, N].
    """

    config: AutoformerConfig
    channels: int

    @nn.compact
    def __call__(
        self, x: jax.Array, cross: jax.Array, *, train: bool
    ) -> tuple[jax.Array, jax.Array]:
        cfg = self.config
        dropout = functools.partial(nn.Dropout(cfg.dropout), deterministic=not train)
        attend = _correlation_fn(cfg, train)
        self_attention = AttentionLayer(cfg.d_model, cfg.n_heads, name="self_attn")
        x, trend1 = series_decomp(x + dropout(self_attention(x, x, x, attend)), cfg.moving_avg)
        cross_attention = AttentionLayer(cfg.d_model, cfg.n_heads, name="cross_attn")
        x = x + dropout(cross_attention(x, cross, cross, attend))
        x, trend2 = series_decomp(x, cfg.moving_avg)
        x, trend3 = series_decomp(x + _feed_forward(x, cfg, dropout), cfg.moving_avg)
        trend = CircularConv1d(self.channels, 3, use_bias=False, name="trend_projection")(
            trend1 + trend2 + trend3
        )
        return x, trend


def _correlation_fn(config: AutoformerConfig, train: bool) -> AttendFn:
    """The auto-correlation attention of a layer call (batch-shared delays in train mode)."""
    shared = train and config.shared_delays_in_train

    def attend(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
        return auto_correlation(q, k, v, factor=config.factor, shared_delays=shared)[0]

    return attend


class Autoformer(nn.Module):
    """Autoformer forecaster / classifier with late stimulus fusion.

    Attributes:
        config: the architecture.
        task: 'forecast' -> {"forecast": [B, N, F]}; 'classify' -> {"logits": [B, N, 2]}.
    """

    config: AutoformerConfig = AutoformerConfig()
    task: str = "forecast"

    @nn.compact
    def __call__(self, inputs: Mapping[str, jax.Array], *, train: bool) -> dict[str, jax.Array]:
        """Runs the model on `inputs = dict(src [B, N, S], stim [B, stim_size])`."""
        cfg = self.config
        src, stim = interface.unpack_inputs(inputs, "Autoformer", self.task)
        batch, neurons, source = src.shape
        x_enc = src.transpose(0, 2, 1)  # [B, N, S] -> [B, S, N]
        stim_emb = dense(cfg.d_model, stim.shape[-1], name="stim_embedding")(stim)  # [B, d]

        def embedding(name: str) -> DataEmbedding:
            return DataEmbedding(
                cfg.d_model,
                positional=False,
                time_embedding=cfg.time_embedding,
                value_bias=False,
                time_bias=False,
                dropout=cfg.dropout,
                name=name,
            )

        def encoder(x: jax.Array) -> jax.Array:
            for i in range(cfg.e_layers):
                x = EncoderLayer(cfg, name=f"encoder_{i}")(x, train=train)
            return my_layernorm(x, "encoder_norm")

        if self.task == "classify":
            cls = self.param("cls_token", normal_init(1.0), (cfg.d_model,))
            tokens = jnp.concatenate(
                [
                    jnp.broadcast_to(cls, (batch, 1, cfg.d_model)),
                    stim_emb[:, None],
                    embedding("enc_embedding")(x_enc, None, train=train),
                ],
                axis=1,
            )  # [B, 2 + S, d]
            out = gelu(encoder(tokens)[:, 0])
            out = nn.Dropout(cfg.dropout)(out, deterministic=not train)
            logit = dense(neurons, cfg.d_model, name="projection")(out)  # [B, N]
            return {"logits": interface.two_class_logits(logit)}

        label, horizon = cfg.label_len, cfg.forecast_frames
        if label > source:
            raise ValueError(f"AutoformerConfig.label_len={label} > source frames {source}")
        marks = interface.time_marks(source + horizon, cfg.frame_rate_hz)  # [T]
        seasonal, trend = series_decomp(x_enc, cfg.moving_avg)
        mean = jnp.broadcast_to(x_enc.mean(axis=1, keepdims=True), (batch, horizon, neurons))
        trend = jnp.concatenate([trend[:, -label:], mean], axis=1)  # [B, label + F, N]
        zeros = jnp.zeros((batch, horizon, neurons), src.dtype)
        seasonal = jnp.concatenate([seasonal[:, -label:], zeros], axis=1)

        enc = encoder(embedding("enc_embedding")(x_enc, marks[:source], train=train))
        dec = embedding("dec_embedding")(seasonal, marks[source - label :], train=train)
        for i in range(cfg.d_layers):
            dec, layer_trend = DecoderLayer(cfg, neurons, name=f"decoder_{i}")(
                dec, enc, train=train
            )
            trend = trend + layer_trend
        dec = my_layernorm(dec, "decoder_norm")  # [B, label + F, d]
        stim_tokens = jnp.broadcast_to(stim_emb[:, None], dec.shape)
        seasonal_out = dense(neurons, 2 * cfg.d_model, name="projection_with_stim")(
            jnp.concatenate([dec, stim_tokens], axis=-1)
        )  # [B, label + F, N]
        out = (trend + seasonal_out)[:, -horizon:]  # [B, F, N]
        return {"forecast": out.transpose(0, 2, 1)}
