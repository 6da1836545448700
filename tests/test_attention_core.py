"""attention_core: the fused self-attention and its hand-written backward equal the einsum form."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from quantformer_jax.models import attention_core


def _inputs(m=3, length=5, heads=2, dh=4, seed=0):
    rs = np.random.RandomState(seed)
    qkv = jnp.asarray(rs.randn(m, length, 3 * heads * dh), jnp.float32)
    prev = jnp.asarray(rs.randn(m, heads, length, length), jnp.float32)
    return qkv, prev


def _reference(qkv, prev, heads):
    d = qkv.shape[-1] // 3
    return attention_core.attention(
        qkv[..., :d], qkv[..., d : 2 * d], qkv[..., 2 * d :], prev, heads
    )


def test_attention_matches_a_per_head_loop():
    qkv, prev = _inputs()
    heads, d = 2, qkv.shape[-1] // 3
    out, scores = _reference(qkv, prev, heads)
    q, k, v = np.split(np.asarray(qkv), 3, axis=-1)
    dh = d // heads
    for m in range(qkv.shape[0]):
        for h in range(heads):
            cols = slice(h * dh, (h + 1) * dh)
            s = q[m][:, cols] @ k[m][:, cols].T / np.sqrt(dh) + np.asarray(prev)[m, h]
            w = np.exp(s - s.max(-1, keepdims=True))
            w /= w.sum(-1, keepdims=True)
            np.testing.assert_allclose(scores[m, h], s, atol=1e-5)
            np.testing.assert_allclose(out[m][:, cols], w @ v[m][:, cols], atol=1e-5)


def test_fused_forward_equals_reference():
    qkv, prev = _inputs()
    got = attention_core.fused_self_attention(qkv, prev, 2)
    want = _reference(qkv, prev, 2)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("seed", [0, 1])
def test_fused_backward_equals_autodiff_of_reference(seed):
    qkv, prev = _inputs(seed=seed)
    rs = np.random.RandomState(10 + seed)
    w_out = jnp.asarray(rs.randn(*qkv.shape[:2], qkv.shape[-1] // 3), jnp.float32)
    w_scores = jnp.asarray(rs.randn(*prev.shape), jnp.float32)

    def loss(fn):
        def f(qkv, prev):
            out, scores = fn(qkv, prev)
            # Both outputs carry gradient, as in the stack (scores feed the next layer).
            return jnp.sum(out * w_out) + jnp.sum(jnp.tanh(scores) * w_scores)

        return jax.grad(f, argnums=(0, 1))

    got = loss(lambda a, b: attention_core.fused_self_attention(a, b, 2))(qkv, prev)
    want = loss(lambda a, b: _reference(a, b, 2))(qkv, prev)
    for a, b in zip(got, want, strict=True):
        assert np.abs(np.asarray(b)).max() > 1e-3  # a real gradient reaches both inputs
        np.testing.assert_allclose(a, b, atol=2e-5, rtol=1e-5)
