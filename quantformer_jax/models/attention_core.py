"""Scaled dot-product attention with residual (RealFormer) scores, in two equal implementations.

Both compute, per row m and head h, for tokens of width d = H * dh:

    scores = q k^T * dh**-0.5 + prev_scores          # [M, H, Lq, L], returned to the next layer
    out    = softmax(scores) v                        # [M, Lq, d] (heads concatenated)

* `attention` is the plain einsum form; autodiff gives its gradient. It serves every case
  (a query slice, dropout on the weights, any dtype).
* `fused_self_attention` takes the fused Q/K/V projection `qkv [M, L, 3d]` and has a hand-written
  backward pass (`jax.custom_vjp`). Sequences here are tiny (L = 10-12 tokens, dh = 16), so the
  cost is not arithmetic but data movement: XLA's autodiff of the einsum form transposes operands
  inside its batched dots, and assembles d(qkv) from the three slice gradients with a pad-and-add
  pass over a strided layout. The hand-written pass keeps every batched matrix product in the
  [M, H, rows, cols] layout with the contraction on the minor dimension and writes d(qkv) once.
  At the paper's size (1024 rows) one layer's attention forward + backward drops from ~40 ms to
  ~25 ms on the 2-core CPU (benchmarks/README.md). tests/test_attention_core.py checks values and
  gradients against `attention`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp


def split_heads(x: jax.Array, num_heads: int) -> jax.Array:
    """[M, L, d] -> [M, L, H, dh]."""
    m, length, d = x.shape
    return x.reshape(m, length, num_heads, d // num_heads)


def attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    prev_scores: jax.Array | None,
    num_heads: int,
    *,
    precision=None,
    weights_fn=None,
) -> tuple[jax.Array, jax.Array]:
    """Einsum attention (autodiff gradient).

    Args:
        q: [M, Lq, d] queries; k, v: [M, L, d] keys and values.
        prev_scores: [M, H, Lq, L] scores of the previous layers, or None.
        num_heads: H.
        precision: matmul precision.
        weights_fn: optional function applied to the softmax weights (dropout).

    Returns:
        (out [M, Lq, d], scores [M, H, Lq, L]).
    """
    m, lq, d = q.shape
    qh, kh, vh = (split_heads(t, num_heads) for t in (q, k, v))
    scale = (d // num_heads) ** -0.5  # a constant: not learned (a fixed buffer in the original)
    scores = jnp.einsum("mqhc,mkhc->mhqk", qh, kh, precision=precision) * scale
    if prev_scores is not None:
        scores = scores + prev_scores
    weights = jax.nn.softmax(scores.astype(jnp.float32), axis=-1).astype(q.dtype)
    if weights_fn is not None:
        weights = weights_fn(weights)
    out = jnp.einsum("mhqk,mkhc->mqhc", weights, vh, precision=precision)
    return out.reshape(m, lq, d), scores


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def fused_self_attention(
    qkv: jax.Array, prev_scores: jax.Array, num_heads: int, precision=None
) -> tuple[jax.Array, jax.Array]:
    """Self-attention of all L tokens from the fused projection, with a hand-written backward.

    Args:
        qkv: [M, L, 3d] = [q | k | v] along the last axis (the fused Q/K/V projection).
        prev_scores: [M, H, L, L] scores of the previous layers (zeros for the first layer).
        num_heads: H.
        precision: matmul precision (None, a string or a `jax.lax.Precision`; hashable).

    Returns:
        (out [M, L, d], scores [M, H, L, L]), equal to `attention` on the three slices.
    """
    return _fused_forward(qkv, prev_scores, num_heads, precision)[0]


def _heads_major(qkv: jax.Array, num_heads: int) -> jax.Array:
    """[M, L, 3d] -> [3, M, H, L, dh]."""
    m, length, d3 = qkv.shape
    return qkv.reshape(m, length, 3, num_heads, d3 // (3 * num_heads)).transpose(2, 0, 3, 1, 4)


def _swap_minor(x: jax.Array) -> jax.Array:
    """Transposes the two minor dims as a real copy: XLA cannot fold it back into the dot."""
    return jax.lax.optimization_barrier(jnp.swapaxes(x, -1, -2))


def _fused_forward(qkv, prev_scores, num_heads, precision):
    mm = functools.partial(jnp.matmul, precision=precision)
    m, length, d3 = qkv.shape
    d = d3 // 3
    dh = d // num_heads
    heads = _heads_major(qkv, num_heads)
    q, v = heads[0], heads[2]  # [M, H, L, dh]
    k_t = qkv[..., d : 2 * d].reshape(m, length, num_heads, dh).transpose(0, 2, 3, 1)  # [M,H,dh,L]
    scores = mm(q, k_t) * dh**-0.5 + prev_scores
    weights = jax.nn.softmax(scores.astype(jnp.float32), axis=-1).astype(qkv.dtype)
    out = mm(weights, v).transpose(0, 2, 1, 3).reshape(m, length, d)
    return (out, scores), (q, k_t, v, weights)


def _fused_backward(num_heads, precision, residuals, cotangents):
    mm = functools.partial(jnp.matmul, precision=precision)
    q, k_t, v, weights = residuals
    d_out, d_scores_next = cotangents  # [M, L, d], [M, H, L, L] (from the next layer)
    m, h, length, dh = q.shape
    d_out = d_out.reshape(m, length, h, dh).transpose(0, 2, 1, 3)  # [M, H, L, dh]
    d_weights = mm(d_out, _swap_minor(v))  # [M, H, Lq, Lk]
    d_v = mm(_swap_minor(weights), d_out)  # [M, H, Lk, dh]
    w32 = weights.astype(jnp.float32)
    dw32 = d_weights.astype(jnp.float32)
    d_scores = w32 * (dw32 - jnp.sum(dw32 * w32, axis=-1, keepdims=True))  # softmax backward
    d_scores = d_scores.astype(d_scores_next.dtype) + d_scores_next
    scale = dh**-0.5
    d_q = mm(d_scores.astype(q.dtype), _swap_minor(k_t)) * scale  # [M, H, Lq, dh]
    d_k = mm(_swap_minor(d_scores.astype(q.dtype)), q) * scale  # [M, H, Lk, dh]
    d_qkv = jnp.stack([d_q, d_k, d_v]).transpose(1, 3, 0, 2, 4).reshape(m, length, 3 * h * dh)
    return d_qkv, d_scores


fused_self_attention.defvjp(_fused_forward, _fused_backward)
