"""Informer baseline (REFERENCE.md 4.4): ProbSparse encoder with distilling, generative decoder.

Forecast: x_enc = src^T [B, S=96, N] with marks t[:S]; the decoder reads the last
`decoder_context` (64) source frames followed by F=64 zeros (128 tokens, marks t[S-64:S+F]),
masked ProbSparse self-attention (with the original's `mix` reshape) and full cross-attention;
the stimulus enters late, cat(dec_out, Linear(stim)) -> Linear(2d -> N); the last F tokens,
transposed, are the forecast [B, N, F]. Classify: a learned CLS token (N(0, 1)) is prepended
to the decoder tokens; its output, with the stimulus embedding, gives one logit per neuron,
returned as [0, l] pairs [B, N, 2] (REFERENCE 7.B4: explicit reshapes; under the causal
decoder self-attention the CLS token only sees itself, as in the original).

ProbSparse key sampling (a decision; the original samples random keys in train and eval alike):
in train mode with `sample_keys_in_train`, each attention call samples factor*ceil(ln L_K) keys
per query with replacement from the 'dropout' RNG stream, so training needs
`rngs={'dropout': key}`; in eval mode the sparsity measurement uses every key (the quantity the
sample estimates), so evaluation is deterministic. M = max - sum / L_K over the keys used, the
original's formula (it divides the sampled sum by L_K, not by the sample size).

Distilling uses BatchNorm by default as the original (`distil_norm='batch'`): its statistics live
in the 'batch_stats' collection, which train-mode apply must list in `mutable`.
Time marks: t = arange(T)/30 s through a Linear(1 -> d) (REFERENCE 7.B5).
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
    AttendFn,
    AttentionLayer,
    CircularConv1d,
    DataEmbedding,
    dense,
    full_attention,
    gelu,
    layer_norm,
    normal_init,
)

DISTIL_NORMS = ("batch", "layer")


@dataclasses.dataclass(frozen=True)
class InformerConfig:
    """Informer architecture; defaults are the original baseline run (REFERENCE 4.1, 4.4)."""

    d_model: int = 128  # token width d
    n_heads: int = 8  # attention heads
    e_layers: int = 2  # encoder attention layers (e_layers - 1 distilling convs between them)
    d_layers: int = 2  # decoder layers
    d_ff: int = 512  # feed-forward width
    dropout: float = 0.0  # residual, feed-forward and embedding dropout
    factor: int = 10  # ProbSparse: factor * ceil(ln L) active queries and sampled keys
    distil: bool = True  # halve the sequence between encoder layers (96 -> 48)
    distil_norm: str = "batch"  # batch (original BatchNorm1d) | layer
    mix: bool = True  # decoder self-attention's head/time `mix` reshape (original)
    decoder_context: int = 64  # source frames given to the decoder before the F zeros
    forecast_frames: int = constants.FORECAST_FRAMES  # F
    frame_rate_hz: float = constants.SAMPLING_RATE_HZ  # for the time marks
    sample_keys_in_train: bool = True  # random key sampling in train (False: all keys, always)

    def __post_init__(self):
        if self.d_model % self.n_heads or self.d_model % 2:
            raise ValueError(
                f"InformerConfig.d_model={self.d_model} must be even and divisible by "
                f"n_heads={self.n_heads}"
            )
        if self.distil_norm not in DISTIL_NORMS:
            raise ValueError(f"InformerConfig.distil_norm={self.distil_norm!r}; {DISTIL_NORMS}")
        for name in ("e_layers", "d_layers", "factor", "decoder_context", "forecast_frames"):
            if getattr(self, name) < 1:
                raise ValueError(f"InformerConfig.{name}={getattr(self, name)} must be >= 1")

    @classmethod
    def from_config(cls, section: Any, **overrides: Any) -> InformerConfig:
        """Builds the config from an ml_collections section (keys that are not fields ignored)."""
        return interface.config_from_section(cls, section, overrides)


def num_active_queries(length: int, factor: int) -> int:
    """factor * ceil(ln L), capped to [1, L]: the active queries (and sampled keys) per head."""
    return max(1, min(factor * math.ceil(math.log(length)), length))


def sample_key_indices(key: jax.Array, num_queries: int, num_keys: int, factor: int) -> jax.Array:
    """[L_Q, U] key indices drawn uniformly with replacement, U = num_active_queries(L_K)."""
    sample = num_active_queries(num_keys, factor)
    return jax.random.randint(key, (num_queries, sample), 0, num_keys)


def prob_sparse_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    factor: int,
    causal: bool,
    sample_idx: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """ProbSparse attention: only the top-u queries by sparsity measurement attend.

    Args:
        q: [B, H, L_Q, dh] queries; k, v: [B, H, L_K, dh].
        factor: u = factor * ceil(ln L_Q) active queries (num_active_queries).
        causal: masked self-attention: active queries see keys up to their own position and the
            lazy queries get cumsum(V) (the original's initial context); otherwise lazy queries get
            mean(V).
        sample_idx: [L_Q, U] key indices used for the measurement M (shared over batch and
            heads, as the original); None uses every key.

    Returns:
        (context [B, H, L_Q, dh], active [B, H, L_Q] bool marking the u active queries).
    """
    length_q, length_k = q.shape[2], k.shape[2]
    if causal and length_q != length_k:
        raise ValueError(f"causal ProbSparse needs L_Q == L_K, got {length_q}, {length_k}")
    # The full score matrix is cheap at these lengths, and dense masks compile much faster than
    # gathers and scatters; the result equals computing only the sampled and active products.
    scores = jnp.einsum("bhld,bhsd->bhls", q, k)  # [B, H, L_Q, L_K]
    if sample_idx is None:
        sparsity = scores.max(-1) - scores.sum(-1) / length_k  # [B, H, L_Q]
    else:
        # times[i, j] = how often key j was drawn for query i (sampling is with replacement).
        times = jax.nn.one_hot(sample_idx, length_k, dtype=scores.dtype).sum(axis=1)  # [L_Q, L_K]
        drawn_max = jnp.where(times > 0, scores, -jnp.inf).max(-1)
        sparsity = drawn_max - (scores * times).sum(-1) / length_k
    _, top = jax.lax.top_k(sparsity, num_active_queries(length_q, factor))  # [B, H, u]
    active = jax.nn.one_hot(top, length_q, dtype=jnp.int32).sum(axis=-2) > 0  # [B, H, L_Q]
    scores = scores / math.sqrt(q.shape[-1])
    if causal:
        future = jnp.arange(length_k)[None, :] > jnp.arange(length_q)[:, None]  # [L_Q, L_K]
        scores = jnp.where(future, jnp.finfo(scores.dtype).min, scores)
        # cumsum(V) as a lower-triangular matmul: same values, and XLA:CPU compiles it far faster.
        lazy = jnp.einsum("ls,bhsd->bhld", (~future).astype(v.dtype), v)
    else:
        lazy = jnp.broadcast_to(v.mean(axis=2, keepdims=True), (*q.shape[:3], v.shape[-1]))
    attended = jnp.einsum("bhls,bhsd->bhld", jax.nn.softmax(scores, axis=-1), v)
    return jnp.where(active[..., None], attended, lazy), active


def _prob_attend(
    module: nn.Module, config: InformerConfig, length: int, *, causal: bool, train: bool
) -> AttendFn:
    """The ProbSparse attention function of one layer call (draws its key-sampling RNG)."""
    sample_idx = None
    if train and config.sample_keys_in_train:
        if not module.has_rng("dropout"):
            raise ValueError(
                "Informer: train=True samples ProbSparse keys and needs rngs={'dropout': key} "
                "(or InformerConfig.sample_keys_in_train=False)"
            )
        sample_idx = sample_key_indices(module.make_rng("dropout"), length, length, config.factor)

    def attend(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
        return prob_sparse_attention(
            q, k, v, factor=config.factor, causal=causal, sample_idx=sample_idx
        )[0]

    return attend


def _feed_forward(x: jax.Array, config: InformerConfig, dropout: nn.Dropout) -> jax.Array:
    """Two position-wise layers (the original's kernel-1 convs) with GELU: [B, L, d] -> same."""
    y = dropout(gelu(dense(config.d_ff, config.d_model, name="ff1")(x)))
    return dropout(dense(config.d_model, config.d_ff, name="ff2")(y))


class DistilConv(nn.Module):
    """Distilling layer: circular Conv1d k3 + norm + ELU + MaxPool(3, stride 2, pad 1)."""

    norm: str = "batch"

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        """[B, L, d] -> [B, floor((L - 1) / 2) + 1, d] (96 -> 48)."""
        x = CircularConv1d(x.shape[-1], 3, name="conv")(x)
        if self.norm == "batch":
            # torch BatchNorm1d: momentum 0.1 (flax 0.9), eps 1e-5, stats over batch and time.
            x = nn.BatchNorm(
                use_running_average=not train, momentum=0.9, epsilon=1e-5, name="norm"
            )(x)
        else:
            x = layer_norm("norm")(x)
        x = jax.nn.elu(x)
        return nn.max_pool(x, (3,), strides=(2,), padding=((1, 1),))  # pads with -inf


class EncoderLayer(nn.Module):
    """ProbSparse self-attention + feed-forward, post-norm."""

    config: InformerConfig

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        cfg = self.config
        dropout = functools.partial(nn.Dropout(cfg.dropout), deterministic=not train)
        attend = _prob_attend(self, cfg, x.shape[1], causal=False, train=train)
        x = x + dropout(AttentionLayer(cfg.d_model, cfg.n_heads, name="attention")(x, x, x, attend))
        x = layer_norm("norm1")(x)
        return layer_norm("norm2")(x + _feed_forward(x, cfg, dropout))


class DecoderLayer(nn.Module):
    """Masked ProbSparse self-attention (mix), full cross-attention, feed-forward; post-norm."""

    config: InformerConfig

    @nn.compact
    def __call__(self, x: jax.Array, cross: jax.Array, *, train: bool) -> jax.Array:
        cfg = self.config
        dropout = functools.partial(nn.Dropout(cfg.dropout), deterministic=not train)
        attend = _prob_attend(self, cfg, x.shape[1], causal=True, train=train)
        self_attention = AttentionLayer(cfg.d_model, cfg.n_heads, mix=cfg.mix, name="self_attn")
        x = layer_norm("norm1")(x + dropout(self_attention(x, x, x, attend)))
        cross_attention = AttentionLayer(cfg.d_model, cfg.n_heads, name="cross_attn")
        x = layer_norm("norm2")(x + dropout(cross_attention(x, cross, cross, full_attention)))
        return layer_norm("norm3")(x + _feed_forward(x, cfg, dropout))


class Informer(nn.Module):
    """Informer forecaster / classifier with late stimulus fusion.

    Attributes:
        config: the architecture.
        task: 'forecast' -> {"forecast": [B, N, F]}; 'classify' -> {"logits": [B, N, 2]}.
    """

    config: InformerConfig = InformerConfig()
    task: str = "forecast"

    @nn.compact
    def __call__(self, inputs: Mapping[str, jax.Array], *, train: bool) -> dict[str, jax.Array]:
        """Runs the model on `inputs = dict(src [B, N, S], stim [B, stim_size])`."""
        cfg = self.config
        src, stim = interface.unpack_inputs(inputs, "Informer", self.task)
        batch, neurons, source = src.shape
        context, horizon = cfg.decoder_context, cfg.forecast_frames
        if context > source:
            raise ValueError(f"InformerConfig.decoder_context={context} > source frames {source}")
        marks = interface.time_marks(source + horizon, cfg.frame_rate_hz)  # [T]

        def embedding(name: str) -> DataEmbedding:
            return DataEmbedding(cfg.d_model, positional=True, dropout=cfg.dropout, name=name)

        x_enc = src.transpose(0, 2, 1)  # [B, N, S] -> [B, S, N]
        enc = embedding("enc_embedding")(x_enc, marks[:source], train=train)  # [B, S, d]
        for i in range(cfg.e_layers):
            enc = EncoderLayer(cfg, name=f"encoder_{i}")(enc, train=train)
            if cfg.distil and i < cfg.e_layers - 1:
                enc = DistilConv(cfg.distil_norm, name=f"distil_{i}")(enc, train=train)
        enc = layer_norm("encoder_norm")(enc)  # [B, S / 2^(e_layers - 1), d]

        zeros = jnp.zeros((batch, horizon, neurons), src.dtype)
        x_dec = jnp.concatenate([x_enc[:, source - context :], zeros], axis=1)  # [B, C + F, N]
        dec = embedding("dec_embedding")(x_dec, marks[source - context :], train=train)
        if self.task == "classify":
            cls = self.param("cls_token", normal_init(1.0), (cfg.d_model,))
            cls = jnp.broadcast_to(cls, (batch, 1, cfg.d_model))
            dec = jnp.concatenate([cls, dec], axis=1)  # [B, 1 + C + F, d]
        for i in range(cfg.d_layers):
            dec = DecoderLayer(cfg, name=f"decoder_{i}")(dec, enc, train=train)
        dec = layer_norm("decoder_norm")(dec)

        stim_emb = dense(cfg.d_model, stim.shape[-1], name="stim_embedding")(stim)  # [B, d]
        head = dense(neurons, 2 * cfg.d_model, name="projection_with_stim")
        if self.task == "classify":
            logit = head(jnp.concatenate([dec[:, 0], stim_emb], axis=-1))  # [B, N]
            return {"logits": interface.two_class_logits(logit)}
        # The head is position-wise, so projecting only the last F tokens is the same output.
        out = dec[:, -horizon:]  # [B, F, d]
        stim_tokens = jnp.broadcast_to(stim_emb[:, None], out.shape)
        out = head(jnp.concatenate([out, stim_tokens], axis=-1))  # [B, F, N]
        return {"forecast": out.transpose(0, 2, 1)}
