"""Crossformer baseline (REFERENCE.md 4.6): segments, two-stage attention, multiscale decoder.

Each neuron's source is cut into S/seg_len segments (96/16 = 6; a shorter last segment would be
padded at the front with the first frame, as the original). Dimension-segment-wise embedding:
Linear(seg_len -> d) per (neuron, segment) + a learned position table [N, segments, d]
(N(0, 1), as torch.randn) + LayerNorm. The encoder is block 0 (two-stage attention, TSA) and
blocks 1.. (segment merging by `win_size`, then TSA): 6 segments -> padded to 8 -> 2 with
win 4. The scales [embedding, block 0, block 1, ...] feed e_layers + 1 decoder layers. The
decoder starts from learned positions [N, F/seg_len = 4, d] plus Linear(stim) added to every
token; each layer runs TSA, cross-attends to its encoder scale, and predicts seg_len values per
segment; the forecast is the sum of the layer predictions, [B, N, F]. Classify: Linear(F -> 2)
on each neuron's forecast gives the logits [B, N, 2].

TSA = cross-time attention within each neuron's segments, then cross-dimension attention
through `factor` learned router tokens per segment (routers gather from the N neurons, neurons
read back from the routers). Following REFERENCE 4.6, the attention layers use the original's
`mix` head/time reshape (`mix=True`); set it False for the standard head concatenation.
Per-layer predictions are recorded with `sow('intermediates', 'layer_predictions', ...)` and
the encoder scales with `sow('intermediates', 'encoder_scales', ...)`.
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
    AttentionLayer,
    dense,
    full_attention,
    gelu,
    layer_norm,
    normal_init,
)


@dataclasses.dataclass(frozen=True)
class CrossformerConfig:
    """Crossformer architecture; defaults are the original baseline run (REFERENCE 4.1, 4.6)."""

    d_model: int = 128  # token width d
    n_heads: int = 8  # attention heads
    e_layers: int = 2  # encoder blocks (block 0 without merging); decoder has e_layers + 1
    d_ff: int = 512  # TSA feed-forward width
    dropout: float = 0.0  # residual and feed-forward dropout
    factor: int = 10  # router tokens per segment in the cross-dimension stage
    seg_len: int = 16  # frames per segment (input and output)
    win_size: int = 4  # segments merged per coarser-scale segment
    mix: bool = True  # the original AttentionLayer(mix=True) head/time reshape
    forecast_frames: int = constants.FORECAST_FRAMES  # F

    def __post_init__(self):
        if self.d_model % self.n_heads:
            raise ValueError(
                f"CrossformerConfig.d_model={self.d_model} must be divisible by "
                f"n_heads={self.n_heads}"
            )
        for name in ("e_layers", "factor", "seg_len", "win_size", "forecast_frames"):
            if getattr(self, name) < 1:
                raise ValueError(f"CrossformerConfig.{name}={getattr(self, name)} must be >= 1")

    @classmethod
    def from_config(cls, section: Any, **overrides: Any) -> CrossformerConfig:
        """Builds the config from an ml_collections section (keys that are not fields ignored)."""
        return interface.config_from_section(cls, section, overrides)


def merge_segments(x: jax.Array, win_size: int) -> jax.Array:
    """Groups `win_size` consecutive segments: [B, N, L, d] -> [B, N, ceil(L / win), win * d].

    When L is not a multiple of win_size the last (win - L % win) segments are repeated at the
    end first (the original's padding), e.g. 6 segments [0..5] -> [0..5, 4, 5] -> 2 groups.
    """
    batch, neurons, length, width = x.shape
    pad = -length % win_size
    if pad:
        x = jnp.concatenate([x, x[:, :, length - pad :]], axis=2)
    groups = x.shape[2] // win_size
    return x.reshape(batch, neurons, groups, win_size * width)


class TwoStageAttention(nn.Module):
    """Cross-time then cross-dimension (router) attention: [B, N, L, d] -> [B, N, L, d]."""

    config: CrossformerConfig

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        cfg = self.config
        batch, neurons, segments, width = x.shape
        dropout = functools.partial(nn.Dropout(cfg.dropout), deterministic=not train)

        def attention(name: str) -> AttentionLayer:
            return AttentionLayer(cfg.d_model, cfg.n_heads, mix=cfg.mix, name=name)

        def mlp(y: jax.Array, name: str) -> jax.Array:
            y = gelu(dense(cfg.d_ff, width, name=f"{name}_1")(y))
            return dense(width, cfg.d_ff, name=f"{name}_2")(y)

        # Cross-time stage: each neuron attends over its own segments.
        time_in = x.reshape(batch * neurons, segments, width)
        time_out = attention("time_attention")(time_in, time_in, time_in, full_attention)
        dim_in = layer_norm("norm1")(time_in + dropout(time_out))
        dim_in = layer_norm("norm2")(dim_in + dropout(mlp(dim_in, "mlp1")))

        # Cross-dimension stage: per segment, routers gather from the neurons and send back.
        dim_send = dim_in.reshape(batch, neurons, segments, width).transpose(0, 2, 1, 3)
        dim_send = dim_send.reshape(batch * segments, neurons, width)  # [B L, N, d]
        router = self.param("router", normal_init(1.0), (segments, cfg.factor, width))
        router = jnp.broadcast_to(router, (batch, segments, cfg.factor, width))
        router = router.reshape(batch * segments, cfg.factor, width)
        buffer = attention("dim_sender")(router, dim_send, dim_send, full_attention)
        received = attention("dim_receiver")(dim_send, buffer, buffer, full_attention)
        dim_enc = layer_norm("norm3")(dim_send + dropout(received))
        dim_enc = layer_norm("norm4")(dim_enc + dropout(mlp(dim_enc, "mlp2")))
        out = dim_enc.reshape(batch, segments, neurons, width).transpose(0, 2, 1, 3)
        return out


class SegmentMerging(nn.Module):
    """merge_segments, then LayerNorm(win * d) and Linear(win * d -> d)."""

    win_size: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        merged = layer_norm("norm")(merge_segments(x, self.win_size))
        return dense(x.shape[-1], merged.shape[-1], name="linear")(merged)


class DecoderLayer(nn.Module):
    """TSA, cross-attention to one encoder scale, MLP; predicts seg_len values per segment.

    Returns (tokens [B, N, L_out, d], prediction [B, N, L_out, seg_len]).
    """

    config: CrossformerConfig

    @nn.compact
    def __call__(
        self, x: jax.Array, cross: jax.Array, *, train: bool
    ) -> tuple[jax.Array, jax.Array]:
        cfg = self.config
        dropout = functools.partial(nn.Dropout(cfg.dropout), deterministic=not train)
        batch, neurons, segments, width = x.shape
        x = TwoStageAttention(cfg, name="self_attention")(x, train=train)
        x = x.reshape(batch * neurons, segments, width)
        cross = cross.reshape(batch * neurons, cross.shape[2], width)
        attention = AttentionLayer(cfg.d_model, cfg.n_heads, mix=cfg.mix, name="cross_attention")
        x = layer_norm("norm1")(x + dropout(attention(x, cross, cross, full_attention)))
        y = dense(width, width, name="mlp_2")(gelu(dense(width, width, name="mlp_1")(x)))
        x = layer_norm("norm2")(x + y).reshape(batch, neurons, segments, width)
        return x, dense(cfg.seg_len, width, name="linear_pred")(x)


class Crossformer(nn.Module):
    """Crossformer forecaster / classifier with the stimulus added to the decoder tokens.

    Attributes:
        config: the architecture.
        task: 'forecast' -> {"forecast": [B, N, F]}; 'classify' -> {"logits": [B, N, 2]}.
    """

    config: CrossformerConfig = CrossformerConfig()
    task: str = "forecast"

    @nn.compact
    def __call__(self, inputs: Mapping[str, jax.Array], *, train: bool) -> dict[str, jax.Array]:
        """Runs the model on `inputs = dict(src [B, N, S], stim [B, stim_size])`."""
        cfg = self.config
        src, stim = interface.unpack_inputs(inputs, "Crossformer", self.task)
        batch, neurons, source = src.shape
        seg, d = cfg.seg_len, cfg.d_model
        in_segments = math.ceil(source / seg)
        out_segments = math.ceil(cfg.forecast_frames / seg)

        front = in_segments * seg - source
        if front:  # pad at the start with the first frame, as the original
            src = jnp.concatenate([jnp.repeat(src[:, :, :1], front, axis=2), src], axis=2)
        x = src.reshape(batch, neurons, in_segments, seg)  # [B, N, S / seg, seg]
        x = dense(d, seg, name="segment_embedding")(x)  # [B, N, L_in, d]
        x = x + self.param("enc_position", normal_init(1.0), (neurons, in_segments, d))
        x = layer_norm("pre_norm")(x)

        scales = [x]
        for i in range(cfg.e_layers):
            if i > 0:
                x = SegmentMerging(cfg.win_size, name=f"merge_{i}")(x)
            x = TwoStageAttention(cfg, name=f"encoder_{i}")(x, train=train)
            scales.append(x)
        for scale in scales:
            self.sow("intermediates", "encoder_scales", scale)

        stim_emb = dense(d, stim.shape[-1], name="stim_embedding")(stim)  # [B, d]
        dec = self.param("dec_position", normal_init(1.0), (neurons, out_segments, d))
        dec = dec[None] + stim_emb[:, None, None, :]  # [B, N, L_out, d]
        prediction = jnp.zeros((batch, neurons, out_segments, seg), src.dtype)
        for i, cross in enumerate(scales):
            dec, layer_prediction = DecoderLayer(cfg, name=f"decoder_{i}")(dec, cross, train=train)
            self.sow("intermediates", "layer_predictions", layer_prediction)
            prediction = prediction + layer_prediction
        forecast = prediction.reshape(batch, neurons, out_segments * seg)[
            :, :, : cfg.forecast_frames
        ]
        if self.task == "classify":
            logits = dense(2, cfg.forecast_frames, name="cls_head")(forecast)  # [B, N, 2]
            return {"logits": logits}
        return {"forecast": forecast}
