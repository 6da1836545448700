"""`x @ kernel + bias` over token rows, with a hand-written backward pass that transposes less.

The weight gradient dW = x^T dy contracts over the token rows, the major dimension of both
operands. XLA:CPU's GEMM kernels want the contraction on a minor dimension, so autodiff's version
copies one operand into a transposed layout first, and it picks the wide one: for the
feed-forward input layer that is dy [rows, 4d], 21 MB at the paper's size, once per layer and
step. Here the narrower operand is transposed instead (and, when that is dy, the small [out, in]
product is transposed back), a quarter of the memory traffic. Values are unchanged
(tests/test_linear.py); only the order of the work differs.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def dense(x: jax.Array, kernel: jax.Array, bias: jax.Array, precision=None) -> jax.Array:
    """[..., in] @ [in, out] + [out] -> [..., out] (all in x's dtype).

    Args:
        x: [..., in] inputs (any leading dims: token rows).
        kernel: [in, out].
        bias: [out].
        precision: matmul precision (None, a string or a `jax.lax.Precision`; hashable).
    """
    return _forward(x, kernel, bias, precision)[0]


def _forward(x, kernel, bias, precision):
    y = jnp.matmul(x, kernel.astype(x.dtype), precision=precision) + bias.astype(x.dtype)
    return y, (x, kernel, bias)


def _swap(x: jax.Array) -> jax.Array:
    """A real transposed copy (XLA cannot fold it back into the dot's operand layout)."""
    return jax.lax.optimization_barrier(x.T)


def _backward(precision, residuals, dy):
    x, kernel, bias = residuals
    mm = functools.partial(jnp.matmul, precision=precision)
    x2 = x.reshape(-1, x.shape[-1])  # [N, in]
    dy2 = dy.reshape(-1, dy.shape[-1])  # [N, out]
    dx = jnp.matmul(dy, kernel.astype(dy.dtype).T, precision=precision)  # [..., in]
    if x2.shape[1] <= dy2.shape[1]:
        d_kernel = mm(_swap(x2), dy2)  # [in, N] @ [N, out]
    else:
        d_kernel = mm(_swap(dy2), x2).T  # ([out, N] @ [N, in])^T
    d_bias = jnp.sum(dy2, axis=0)
    return dx, d_kernel.astype(kernel.dtype), d_bias.astype(bias.dtype)


dense.defvjp(_forward, _backward)
