"""linear.dense: values and hand-written gradients equal x @ kernel + bias under autodiff."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from quantformer_jax.models import linear


@pytest.mark.parametrize("fan_in,features", [(4, 12), (12, 4), (6, 6)])
def test_dense_value_and_gradients_match_autodiff(fan_in, features):
    # Both branches of the weight gradient: transpose x (narrow input) or dy (narrow output).
    rs = np.random.RandomState(fan_in)
    x = jnp.asarray(rs.randn(3, 5, fan_in), jnp.float32)
    kernel = jnp.asarray(rs.randn(fan_in, features), jnp.float32)
    bias = jnp.asarray(rs.randn(features), jnp.float32)
    target = jnp.asarray(rs.randn(3, 5, features), jnp.float32)

    def loss(fn):
        return jax.grad(lambda *a: jnp.sum(jnp.sin(fn(*a)) * target), argnums=(0, 1, 2))

    def plain(x, k, b):
        return x @ k + b

    np.testing.assert_allclose(linear.dense(x, kernel, bias), plain(x, kernel, bias), atol=1e-6)
    got = loss(linear.dense)(x, kernel, bias)
    want = loss(plain)(x, kernel, bias)
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape
        np.testing.assert_allclose(g, w, atol=1e-5, rtol=1e-5)
