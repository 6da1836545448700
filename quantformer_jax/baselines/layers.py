"""Layers shared by Informer, Autoformer and Crossformer, initialised like their torch originals.

Circular Conv1d, multi-head attention projections (with the original `mix` head/time reshape),
full softmax attention, the sinusoidal table, and the DataEmbedding (token conv + optional
positional table + time-mark embedding). All sequences are time-major: `[B, L, C]`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from quantformer_jax.models.transformer import LAYER_NORM_EPS

# attend(q, k, v) with q [B, H, L, dh], k/v [B, H, S, dh] -> context [B, H, L, dh]
AttendFn = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]
Initializer = Callable[..., jax.Array]

TIME_EMBEDDINGS = ("timeF", "fixed", "none")


def _flat(draw: Callable[[jax.Array, tuple[int, ...], Any], jax.Array]) -> Initializer:
    """Draws a flat vector and reshapes it.

    Same distribution; but XLA:CPU compiles jax 0.10's partitionable threefry for 3-D shapes
    several times slower than for 1-D ones (about 3.4 s vs 0.5 s of CPU per initializer here).
    """

    def init(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
        return draw(key, (math.prod(shape),), dtype).reshape(shape)

    return init


def uniform_init(bound: float) -> Initializer:
    """U(-bound, bound): torch's Linear / Conv1d default with bound = 1 / sqrt(fan_in)."""
    return _flat(lambda key, shape, dtype: jax.random.uniform(key, shape, dtype, -bound, bound))


def normal_init(std: float) -> Initializer:
    """N(0, std^2): torch.randn parameters (std 1) and kaiming_normal_ (std sqrt(2 / fan_in))."""
    return _flat(lambda key, shape, dtype: std * jax.random.normal(key, shape, dtype))


def dense(
    features: int, fan_in: int, *, use_bias: bool = True, name: str | None = None
) -> nn.Dense:
    """nn.Dense initialised like torch.nn.Linear(fan_in, features)."""
    init = uniform_init(1.0 / math.sqrt(fan_in))
    return nn.Dense(features, use_bias=use_bias, kernel_init=init, bias_init=init, name=name)


def layer_norm(name: str | None = None) -> nn.LayerNorm:
    """torch.nn.LayerNorm semantics (eps 1e-5, unit scale, zero bias)."""
    return nn.LayerNorm(epsilon=LAYER_NORM_EPS, name=name)


def gelu(x: jax.Array) -> jax.Array:
    """Exact (erf) GELU, as torch's F.gelu / nn.GELU."""
    return jax.nn.gelu(x, approximate=False)


def sinusoid(positions: jax.Array, d_model: int) -> jax.Array:
    """Transformer sinusoids at (possibly non-integer) positions: [L] -> [L, d].

    Even columns hold sin(pos * w_i), odd columns cos(pos * w_i), w_i = 10000^(-2i/d).
    """
    if d_model % 2:
        raise ValueError(f"sinusoidal tables need an even d_model, got {d_model}")
    freqs = np.exp(np.arange(0, d_model, 2, dtype=np.float32) * -(math.log(10000.0) / d_model))
    angles = jnp.asarray(positions, jnp.float32)[:, None] * freqs[None, :]  # [L, d/2]
    return jnp.stack([jnp.sin(angles), jnp.cos(angles)], axis=-1).reshape(-1, d_model)


def full_attention(q: jax.Array, k: jax.Array, v: jax.Array, *, causal: bool = False) -> jax.Array:
    """Scaled dot-product attention: [B, H, L, dh] x [B, H, S, dh] -> [B, H, L, dh].

    Scale 1/sqrt(dh); `causal` masks keys after each query (needs L == S).
    """
    scores = jnp.einsum("bhld,bhsd->bhls", q, k) / math.sqrt(q.shape[-1])
    if causal:
        length = q.shape[2]
        if k.shape[2] != length:
            raise ValueError(f"causal attention needs as many keys as queries: {q.shape} {k.shape}")
        future = jnp.arange(length)[None, :] > jnp.arange(length)[:, None]  # [L, S]
        scores = jnp.where(future, jnp.finfo(scores.dtype).min, scores)
    return jnp.einsum("bhls,bhsd->bhld", jax.nn.softmax(scores, axis=-1), v)


class AttentionLayer(nn.Module):
    """Query/key/value projections, an attention function, and the output projection.

    Attributes:
        d_model: model width d (heads of width d / n_heads).
        n_heads: number of heads H.
        mix: reproduce the original `mix=True` reshape, which reads the [B, H, L, dh] context
            memory as [B, L, H * dh] (mixing heads and time) instead of transposing first.
    """

    d_model: int
    n_heads: int
    mix: bool = False

    @nn.compact
    def __call__(
        self, queries: jax.Array, keys: jax.Array, values: jax.Array, attend: AttendFn
    ) -> jax.Array:
        """[B, L, d] queries, [B, S, d] keys and values -> [B, L, d]."""
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}")
        heads, head_dim = self.n_heads, self.d_model // self.n_heads
        batch, length = queries.shape[:2]

        def split(name: str, x: jax.Array) -> jax.Array:
            y = dense(self.d_model, x.shape[-1], name=name)(x)
            return y.reshape(x.shape[0], x.shape[1], heads, head_dim).transpose(0, 2, 1, 3)

        context = attend(split("query", queries), split("key", keys), split("value", values))
        if self.mix:
            out = context.reshape(batch, length, self.d_model)  # [B, H, L, dh] read as [B, L, d]
        else:
            out = context.transpose(0, 2, 1, 3).reshape(batch, length, self.d_model)
        return dense(self.d_model, self.d_model, name="out")(out)


class CircularConv1d(nn.Module):
    """'Same'-length Conv1d with circular padding over time: [..., L, C] -> [..., L, features].

    Attributes:
        features: output channels.
        kernel_size: odd kernel width (padding (k - 1) / 2 on each side, wrapped around).
        use_bias: add a bias (torch init U(+-1/sqrt(C k))).
        kaiming_normal: weights N(0, 2 / (C k)) as the token embeddings' kaiming_normal_
            (fan_in, leaky_relu); otherwise torch's default U(+-1/sqrt(C k)).
    """

    features: int
    kernel_size: int = 3
    use_bias: bool = True
    kaiming_normal: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if self.kernel_size % 2 == 0:
            raise ValueError(f"CircularConv1d needs an odd kernel_size, got {self.kernel_size}")
        c_in = x.shape[-1]
        fan_in = c_in * self.kernel_size
        if self.kaiming_normal:
            kernel_init = normal_init(math.sqrt(2.0 / fan_in))
        else:
            kernel_init = uniform_init(1.0 / math.sqrt(fan_in))
        kernel = self.param("kernel", kernel_init, (self.kernel_size, c_in, self.features))
        pad = self.kernel_size // 2
        # Tap j reads x[t + j - pad] (cross-correlation, as torch), wrapped around the ends.
        out = sum(
            jnp.einsum("...lc,co->...lo", jnp.roll(x, pad - j, axis=-2), kernel[j])
            for j in range(self.kernel_size)
        )
        if self.use_bias:
            out = out + self.param("bias", uniform_init(1.0 / math.sqrt(fan_in)), (self.features,))
        return out


class DataEmbedding(nn.Module):
    """Token conv embedding + optional sinusoidal positions + time-mark embedding.

    Attributes:
        d_model: embedding width d.
        positional: add the sinusoidal position table (Informer yes, Autoformer no).
        time_embedding: 'timeF' = Linear(1 -> d) of the mark in seconds (REFERENCE 7.B5);
            'fixed' = the original Autoformer's calendar tables, which read floor(seconds) four
            times (month, day, weekday, hour), i.e. 4 x sinusoid(floor(t)); 'none' = no marks.
        value_bias: bias in the token conv (Informer's has one, Autoformer's not).
        time_bias: bias in the timeF Linear (Informer's has one, Autoformer's not).
        dropout: dropout on the sum.
    """

    d_model: int
    positional: bool
    time_embedding: str = "timeF"
    value_bias: bool = True
    time_bias: bool = True
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x: jax.Array, marks: jax.Array | None, *, train: bool) -> jax.Array:
        """x [B, L, C], marks [L] seconds (or None: value embedding only) -> [B, L, d]."""
        if self.time_embedding not in TIME_EMBEDDINGS:
            raise ValueError(f"time_embedding={self.time_embedding!r}; one of {TIME_EMBEDDINGS}")
        out = CircularConv1d(
            self.d_model, 3, use_bias=self.value_bias, kaiming_normal=True, name="value"
        )(x)
        if self.positional:
            out = out + sinusoid(jnp.arange(x.shape[1]), self.d_model)[None]
        if marks is not None and self.time_embedding != "none":
            if marks.shape != (x.shape[1],):
                raise ValueError(f"time marks must be [L={x.shape[1]}], got {marks.shape}")
            if self.time_embedding == "timeF":
                time = dense(self.d_model, 1, use_bias=self.time_bias, name="time")
                out = out + time(marks[:, None])[None]
            else:
                out = out + 4.0 * sinusoid(jnp.floor(marks), self.d_model)[None]
        return nn.Dropout(self.dropout)(out, deterministic=not train)
