"""Patch-token transformer: post-LN TST layers with residual attention, patch encoder and decoder.

This is the PatchTST-style backbone of QuantFormer (REFERENCE.md section 2.4). Every neuron is an
independent sequence of patch tokens, so all modules take `[M, L, ...]` for any number of rows M
(neurons x windows, flattened) and one set of weights serves any neuron count.

Fidelity to the PyTorch original:
* Linear layers use torch's default init, U(+-1/sqrt(fan_in)) for weights and biases.
* LayerNorm eps is 1e-5; GELU is the exact erf form; there is no final norm after the stack.
* Attention scale is the constant head_dim**-0.5 (a non-trainable buffer in the original).
* Residual (RealFormer) attention: each layer adds the *cumulative* pre-softmax scores of the
  previous layers, i.e. layer l receives the scores that layer l-1 returned, which already
  include everything before it.
* The positional table has L + 1 rows initialised U(+-0.02) and is sliced to the tokens present;
  prompt tokens are prepended after the positional encoding and get none.

Speed (benchmarks/forecast_latency.py, benchmarks/tokenizer_step.py; CPU numbers in their output):
* Q, K and V are one [d, 3d] GEMM; the variables stay W_Q / W_K / W_V {kernel, bias} as before.
* GELU is evaluated as torch writes it, x/2 * (1 + erf(x/sqrt 2)): about half the CPU cost of
  the erfc form `jax.nn.gelu(approximate=False)` uses, equal to 1.1e-6 on [-12, 12].
  (In one unchunked pass over ~40k rows XLA moves it into a large YNNPACK fusion where the
  erfc form was ~15% faster; the pretraining step at 2048 rows and chunked inference favour erf.)
* `output_tokens` lets a caller that needs only some outputs (the forecast decoder: the last
  F/P patches) skip the queries, feed-forward and norms of the other positions in the last layer.
* The row layout [M, L, H, dh] is kept on purpose: XLA:CPU (jaxlib 0.10) hands the per-row
  attention dots + softmax to one fused YNNPACK kernel and the Dense layers to YNNPACK GEMMs; a
  feature-major [d, L, M] variant with elementwise attention measured ~10% slower end to end.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from quantformer_jax.models import attention_core, linear

LAYER_NORM_EPS = 1e-5  # torch.nn.LayerNorm default (flax's is 1e-6)
POS_INIT_RANGE = 0.02  # the original's `pe='zeros'` learned table: U(-0.02, 0.02)

Dtype = Any
Precision = Any  # None | str ('default', 'high', 'highest') | jax.lax.Precision


def torch_uniform_init(fan_in: int) -> nn.initializers.Initializer:
    """U(-1/sqrt(fan_in), 1/sqrt(fan_in)): torch.nn.Linear's default for weights and biases."""
    bound = 1.0 / math.sqrt(fan_in)

    def init(key: jax.Array, shape: tuple[int, ...], dtype: Dtype = jnp.float32) -> jax.Array:
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def torch_dense(
    features: int,
    fan_in: int,
    *,
    dtype: Dtype = jnp.float32,
    precision: Precision = None,
    name: str | None = None,
) -> nn.Dense:
    """A Dense layer initialised like torch.nn.Linear(fan_in, features) (weights and bias)."""
    init = torch_uniform_init(fan_in)
    return nn.Dense(
        features,
        kernel_init=init,
        bias_init=init,
        dtype=dtype,
        precision=precision,
        name=name,
    )


def _centered_uniform(key: jax.Array, shape: tuple[int, ...], dtype: Dtype = jnp.float32):
    """U(-0.02, 0.02) for the learned positional tables (flax's `uniform` starts at 0)."""
    return jax.random.uniform(key, shape, dtype, -POS_INIT_RANGE, POS_INIT_RANGE)


class _DenseParams(nn.Module):
    """The `kernel` [fan_in, features] and `bias` [features] of a torch-initialised Dense.

    Creates exactly the variables of `torch_dense` (names, shapes, init, RNG order), so
    checkpoints are interchangeable, and leaves applying them to the caller (fused Q/K/V).
    """

    features: int
    fan_in: int

    @nn.compact
    def __call__(self) -> tuple[jax.Array, jax.Array]:
        init = torch_uniform_init(self.fan_in)
        kernel = self.param("kernel", init, (self.fan_in, self.features), jnp.float32)
        bias = self.param("bias", init, (self.features,), jnp.float32)
        return kernel, bias


def gelu_exact(x: jax.Array) -> jax.Array:
    """Exact (erf) GELU written as torch computes it: x / 2 * (1 + erf(x / sqrt(2))).

    `jax.nn.gelu(approximate=False)` evaluates the same function through erfc (better relative
    accuracy far in the negative tail) at about twice the cost on CPU. Both are within 1.1e-6
    (absolute) of the float64 GELU on [-12, 12].
    """
    return 0.5 * x * (1.0 + jax.lax.erf(x * jnp.asarray(math.sqrt(0.5), x.dtype)))


def _query_slice(output_tokens: slice | None, length: int) -> slice:
    """The (static) contiguous token positions a layer computes outputs for."""
    start, stop, step = (output_tokens or slice(None)).indices(length)
    if step != 1 or stop <= start:
        raise ValueError(f"output_tokens={output_tokens} must be a non-empty contiguous slice")
    return slice(start, stop)


class ResidualAttention(nn.Module):
    """Multi-head self-attention that also returns (and accepts) pre-softmax scores.

    Attributes:
        d_model: model width d; must be divisible by `num_heads`.
        num_heads: number of heads H (head_dim = d / H).
        attn_dropout: dropout on the attention weights (0 in the original).
        dtype: computation dtype.
        precision: matmul precision passed to XLA.
    """

    d_model: int
    num_heads: int
    attn_dropout: float = 0.0
    dtype: Dtype = jnp.float32
    precision: Precision = None

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        prev_scores: jax.Array | None,
        *,
        train: bool,
        output_tokens: slice | None = None,
    ) -> tuple[jax.Array, jax.Array]:
        """Attends within each row.

        Args:
            x: [M, L, d] tokens.
            prev_scores: [M, H, L, L] cumulative pre-softmax scores of earlier layers, or None.
            train: enables dropout.
            output_tokens: a contiguous slice of query positions to compute (all L tokens still
                serve as keys and values); None = all. Lq below is its length.

        Returns:
            (out [M, Lq, d], scores [M, H, Lq, L]); `scores` include `prev_scores`, so feeding
            them to the next layer accumulates them (RealFormer residual attention).
        """
        m, length, d = x.shape
        if d % self.num_heads:
            raise ValueError(f"d_model={d} is not divisible by num_heads={self.num_heads}")
        rows = _query_slice(output_tokens, length)
        (wq, bq), (wk, bk), (wv, bv) = (_DenseParams(d, d, name=n)() for n in ("W_Q", "W_K", "W_V"))
        x = x.astype(self.dtype)
        dropout = nn.Dropout(self.attn_dropout)
        if rows == slice(0, length):  # one [d, 3d] GEMM instead of three [d, d] ones
            qkv = self._dense(x, jnp.concatenate([wq, wk, wv], 1), jnp.concatenate([bq, bk, bv]))
            if not train or self.attn_dropout == 0:  # the hand-written backward (attention_core)
                prev = prev_scores
                if prev is None:
                    prev = jnp.zeros((m, self.num_heads, length, length), qkv.dtype)
                out, scores = attention_core.fused_self_attention(
                    qkv, prev, self.num_heads, self.precision
                )
                return self._dense(out, *_DenseParams(d, d, name="to_out")()), scores
            q, k, v = qkv[..., :d], qkv[..., d : 2 * d], qkv[..., 2 * d :]
        else:  # only the kept positions need queries
            q = self._dense(x[:, rows], wq, bq)
            kv = self._dense(x, jnp.concatenate([wk, wv], 1), jnp.concatenate([bk, bv]))
            k, v = kv[..., :d], kv[..., d:]
        out, scores = attention_core.attention(
            q,
            k,
            v,
            None if prev_scores is None else prev_scores[:, :, rows],
            self.num_heads,
            precision=self.precision,
            weights_fn=lambda w: dropout(w, deterministic=not train),
        )
        return self._dense(out, *_DenseParams(d, d, name="to_out")()), scores

    def _dense(self, x: jax.Array, kernel: jax.Array, bias: jax.Array) -> jax.Array:
        """x @ kernel + bias in the computation dtype (as nn.Dense; backward in linear.py)."""
        return linear.dense(x.astype(self.dtype), kernel, bias, self.precision)


class _TSTModule(nn.Module):
    """Hyperparameters shared by the TST layer, the stack, the encoder and the decoder.

    Attributes:
        d_model: model width d.
        num_heads: attention heads.
        d_ff: hidden width of the feed-forward block.
        num_layers: TST layers in a stack.
        max_patches: patches per full window (L); positional tables have L + 1 rows as in the
            original, so sequences of up to L + 1 patches are accepted.
        dropout: dropout after attention, inside and after the feed-forward block, on the
            attention weights and on the embeddings (0 in the original).
        dtype: computation dtype (parameters stay float32).
        precision: matmul precision.
    """

    d_model: int
    num_heads: int
    d_ff: int
    num_layers: int = 1
    max_patches: int = 10
    dropout: float = 0.0
    dtype: Dtype = jnp.float32
    precision: Precision = None

    def _dense(self, features: int, fan_in: int, name: str) -> nn.Dense:
        return torch_dense(features, fan_in, dtype=self.dtype, precision=self.precision, name=name)

    def _ff_dense(self, x: jax.Array, features: int, fan_in: int, name: str) -> jax.Array:
        """`torch_dense(features, fan_in)` applied to x, through linear.dense's backward (the
        variables are nn.Dense's: `_DenseParams` creates the same ones)."""
        kernel, bias = _DenseParams(features, fan_in, name=name)()
        return linear.dense(x.astype(self.dtype), kernel, bias, self.precision)

    def _add_positions(self, x: jax.Array, *, train: bool) -> jax.Array:
        """[M, L, d] + the learned positional table W_pos[:L], then embedding dropout."""
        length = x.shape[1]
        if length > self.max_patches + 1:
            raise ValueError(
                f"{type(self).__name__}: {length} patches exceed the positional table "
                f"({self.max_patches + 1} rows, config.model.num_patches={self.max_patches})"
            )
        w_pos = self.param("W_pos", _centered_uniform, (self.max_patches + 1, self.d_model))
        x = x.astype(self.dtype) + w_pos[:length].astype(self.dtype)
        return nn.Dropout(self.dropout)(x, deterministic=not train)

    def _stack(self, x: jax.Array, *, train: bool, output_tokens: slice | None) -> jax.Array:
        """The TST stack as a submodule named 'stack'."""
        return TSTStack(
            d_model=self.d_model,
            num_heads=self.num_heads,
            d_ff=self.d_ff,
            num_layers=self.num_layers,
            dropout=self.dropout,
            dtype=self.dtype,
            precision=self.precision,
            name="stack",
        )(x, train=train, output_tokens=output_tokens)


class TSTEncoderLayer(_TSTModule):
    """One post-norm TST layer: x = LN(x + attn(x)); x = LN(x + FF(x)) (see `_TSTModule`)."""

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        prev_scores: jax.Array | None,
        *,
        train: bool,
        output_tokens: slice | None = None,
    ) -> tuple[jax.Array, jax.Array]:
        """[M, L, d], [M, H, L, L] | None -> ([M, Lq, d], cumulative scores [M, H, Lq, L]).

        `output_tokens` (a contiguous slice, default all) selects the Lq positions whose outputs
        are computed; every token is still attended to, so the kept outputs are unchanged.
        """
        deterministic = not train
        rows = _query_slice(output_tokens, x.shape[1])
        attn, scores = ResidualAttention(
            self.d_model,
            self.num_heads,
            attn_dropout=self.dropout,
            dtype=self.dtype,
            precision=self.precision,
            name="self_attn",
        )(x, prev_scores, train=train, output_tokens=rows)
        x = x[:, rows] + nn.Dropout(self.dropout)(attn, deterministic=deterministic)
        x = nn.LayerNorm(epsilon=LAYER_NORM_EPS, dtype=self.dtype, name="norm_attn")(x)

        h = self._ff_dense(x, self.d_ff, self.d_model, "ff_0")
        h = gelu_exact(h)  # torch's nn.GELU() is the exact erf form
        h = nn.Dropout(self.dropout)(h, deterministic=deterministic)
        h = self._ff_dense(h, self.d_model, self.d_ff, "ff_1")
        x = x + nn.Dropout(self.dropout)(h, deterministic=deterministic)
        x = nn.LayerNorm(epsilon=LAYER_NORM_EPS, dtype=self.dtype, name="norm_ffn")(x)
        return x, scores


class TSTStack(_TSTModule):
    """`num_layers` TST layers sharing residual attention scores; no final norm."""

    @nn.compact
    def __call__(
        self, x: jax.Array, *, train: bool, output_tokens: slice | None = None
    ) -> jax.Array:
        """[M, L, d] -> [M, Lq, d]; `output_tokens` (default all) as in `TSTEncoderLayer`.

        Only the last layer is restricted to `output_tokens`: earlier layers feed every token.
        """
        rows = _query_slice(output_tokens, x.shape[1])
        scores = None  # the first layer gets no previous scores
        for i in range(self.num_layers):
            x, scores = TSTEncoderLayer(
                d_model=self.d_model,
                num_heads=self.num_heads,
                d_ff=self.d_ff,
                dropout=self.dropout,
                dtype=self.dtype,
                precision=self.precision,
                name=f"layers_{i}",
            )(x, scores, train=train, output_tokens=rows if i == self.num_layers - 1 else None)
        return x[:, rows] if self.num_layers == 0 else x


class PatchEncoder(_TSTModule):
    """Patch tokens -> contextual embeddings (the QuantFormer / QuantCoder encoder)."""

    @nn.compact
    def __call__(
        self,
        patches: jax.Array,
        prompts: jax.Array | None = None,
        *,
        train: bool,
        output_tokens: slice | None = None,
    ) -> jax.Array:
        """Embeds patches, adds positions, prepends prompts, runs the TST stack.

        Args:
            patches: [M, L, P] patch values (masked patches already zero-filled).
            prompts: optional [M, n_prompts, d] tokens prepended after the positional encoding.
            train: enables dropout.
            output_tokens: a contiguous slice of the n_prompts + L output positions to compute
                (e.g. `slice(n_prompts, None)`: the patch outputs only); None = all. The kept
                outputs are the same; the last layer just skips the other positions.

        Returns:
            [M, n_prompts + L, d] (or the `output_tokens` positions): prompt outputs first,
            then one output per patch.
        """
        m, _, patch_len = patches.shape
        x = self._dense(self.d_model, patch_len, "W_P")(patches)  # [M, L, P] -> [M, L, d]
        x = self._add_positions(x, train=train)
        if prompts is not None:
            if prompts.ndim != 3 or prompts.shape[0] != m or prompts.shape[2] != self.d_model:
                raise ValueError(
                    f"PatchEncoder: prompts must be [{m}, n_prompts, {self.d_model}], "
                    f"got {prompts.shape}"
                )
            x = jnp.concatenate([prompts.astype(self.dtype), x], axis=1)
        return self._stack(x, train=train, output_tokens=output_tokens)


class PatchDecoder(_TSTModule):
    """Token embeddings -> patch values: own positional table, TST stack, Linear(d -> P).

    Attributes:
        patch_len: output frames per token (P); the rest as in `_TSTModule`.
    """

    patch_len: int = 16

    @nn.compact
    def __call__(
        self, z: jax.Array, *, train: bool, output_tokens: slice | None = None
    ) -> jax.Array:
        """[M, L, d] -> [M, L, P] (float32); `output_tokens` as in `PatchEncoder` (e.g.
        `slice(-4, None)` decodes only the last 4 patches, still attending to all L tokens)."""
        x = self._stack(
            self._add_positions(z, train=train), train=train, output_tokens=output_tokens
        )
        return self._dense(self.patch_len, self.d_model, "W_P")(x).astype(jnp.float32)
