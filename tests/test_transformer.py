"""Tests for models/transformer.py: shapes, torch-like init, the TST layer, residual attention."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import erf

from quantformer_jax.models import transformer

D, H, DFF, P, L = 16, 4, 32, 16, 10


def _key(seed: int) -> jax.Array:
    # The cheap-to-compile "rbg" PRNG: compilation dominates these tiny tests' runtime.
    return jax.random.key(seed, impl="rbg")


def _normal(shape: tuple[int, ...], seed: int) -> jax.Array:
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


def _encoder(num_layers=1, dropout=0.0):
    return transformer.PatchEncoder(
        d_model=D, num_heads=H, num_layers=num_layers, d_ff=DFF, max_patches=L, dropout=dropout
    )


@pytest.fixture(scope="module")
def encoder_and_vars():
    """One dropout-enabled encoder, initialised once (compiles are the cost of these tests)."""
    enc = _encoder(dropout=0.3)
    return enc, enc.init(_key(0), jnp.ones((3, L, P)), train=False)


@pytest.mark.parametrize("m", [1, 3, 8])
def test_encoder_decoder_shapes_for_any_row_count(m):
    enc = _encoder()
    dec = transformer.PatchDecoder(
        patch_len=P, d_model=D, num_heads=H, num_layers=1, d_ff=DFF, max_patches=L
    )
    key = _key(0)
    x = jax.ShapeDtypeStruct((m, L, P), jnp.float32)
    prompts = jax.ShapeDtypeStruct((m, 2, D), jnp.float32)
    ve = jax.eval_shape(lambda x, p: enc.init(key, x, p, train=False), x, prompts)
    out = jax.eval_shape(lambda v, x, p: enc.apply(v, x, p, train=False), ve, x, prompts)
    assert out.shape == (m, 2 + L, D)
    short = jax.ShapeDtypeStruct((m, 6, P), jnp.float32)  # fewer patches, same params
    assert jax.eval_shape(lambda v, x: enc.apply(v, x, train=False), ve, short).shape == (m, 6, D)
    z = jax.ShapeDtypeStruct((m, L, D), jnp.float32)
    vd = jax.eval_shape(lambda z: dec.init(key, z, train=False), z)
    assert jax.eval_shape(lambda v, z: dec.apply(v, z, train=False), vd, z).shape == (m, L, P)


def test_too_many_patches_is_a_clear_error():
    enc = _encoder()
    with pytest.raises(ValueError, match="positional table"):
        jax.eval_shape(lambda x: enc.init(_key(0), x, train=False), jnp.ones((2, 12, P)))


def test_torch_like_initialisation(encoder_and_vars):
    params = encoder_and_vars[1]["params"]
    w_p = params["W_P"]
    assert np.abs(w_p["kernel"]).max() <= 1 / math.sqrt(P)
    assert np.abs(w_p["bias"]).max() <= 1 / math.sqrt(P)
    assert np.abs(w_p["bias"]).max() > 0.5 / math.sqrt(P)  # torch init: biases are not zero
    ff1 = params["stack"]["layers_0"]["ff_1"]
    assert np.abs(ff1["kernel"]).max() <= 1 / math.sqrt(DFF)
    assert np.abs(ff1["kernel"]).max() > 0.8 / math.sqrt(DFF)
    w_pos = params["W_pos"]
    assert w_pos.shape == (L + 1, D)
    assert w_pos.min() < 0 < w_pos.max() and np.abs(w_pos).max() <= 0.02


def test_prompts_are_prepended_after_the_positional_encoding():
    # With no layers the encoder output is the embedded input: prompts pass through untouched,
    # patch tokens are W_P x + W_pos[:L].
    enc = _encoder(num_layers=0)
    x = _normal((3, L, P), 0)
    prompts = _normal((3, 2, D), 1)
    v = enc.init(_key(2), x, prompts, train=False)
    out = enc.apply(v, x, prompts, train=False)
    p = v["params"]
    expected = x @ p["W_P"]["kernel"] + p["W_P"]["bias"] + p["W_pos"][:L]
    np.testing.assert_allclose(out[:, :2], prompts, atol=1e-6)
    np.testing.assert_allclose(out[:, 2:], expected, atol=1e-5)


def _layer_numpy(x, p, prev):
    """Reference post-LN TST layer in numpy (torch semantics)."""

    def lin(h, q):
        return h @ np.asarray(q["kernel"]) + np.asarray(q["bias"])

    def ln(h, q):
        mu = h.mean(-1, keepdims=True)
        var = h.var(-1, keepdims=True)
        return (h - mu) / np.sqrt(var + 1e-5) * np.asarray(q["scale"]) + np.asarray(q["bias"])

    a = p["self_attn"]
    m, length, d = x.shape
    dh = d // H

    def heads(h):
        return h.reshape(m, length, H, dh).transpose(0, 2, 1, 3)

    q, k, v = heads(lin(x, a["W_Q"])), heads(lin(x, a["W_K"])), heads(lin(x, a["W_V"]))
    scores = q @ k.transpose(0, 1, 3, 2) * dh**-0.5
    if prev is not None:
        scores = scores + prev
    w = np.exp(scores - scores.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    o = (w @ v).transpose(0, 2, 1, 3).reshape(m, length, d)
    x = ln(x + lin(o, a["to_out"]), p["norm_attn"])
    h = lin(x, p["ff_0"])
    h = 0.5 * h * (1 + erf(h / np.sqrt(2)))  # exact GELU
    x = ln(x + lin(h, p["ff_1"]), p["norm_ffn"])
    return x, scores


@pytest.fixture(scope="module")
def stack_and_vars():
    stack = transformer.TSTStack(num_layers=2, d_model=D, num_heads=H, d_ff=DFF)
    x = _normal((3, 7, D), 0)
    return stack, stack.init(_key(1), x, train=False), x


def test_two_layer_stack_matches_manual_residual_attention(stack_and_vars):
    stack, v, x = stack_and_vars
    p = jax.tree.map(np.asarray, v["params"])
    x1, s1 = _layer_numpy(np.asarray(x, np.float64), p["layers_0"], None)
    x2, _ = _layer_numpy(x1, p["layers_1"], s1)  # layer 2 receives layer 1's scores
    out = stack.apply(v, x, train=False)
    np.testing.assert_allclose(out, x2, atol=2e-5)
    # ... and this differs from a stack without residual attention.
    x2_plain, _ = _layer_numpy(x1, p["layers_1"], None)
    assert np.abs(x2_plain - x2).max() > 1e-3


def test_layer_returns_cumulative_scores(stack_and_vars):
    _, v, x = stack_and_vars
    layer = transformer.TSTEncoderLayer(d_model=D, num_heads=H, d_ff=DFF)
    layer_vars = {"params": v["params"]["layers_0"]}
    prev = _normal((3, H, 7, 7), 2)
    _, raw = layer.apply(layer_vars, x, None, train=False)
    _, cum = layer.apply(layer_vars, x, prev, train=False)
    np.testing.assert_allclose(cum, raw + prev, atol=1e-5)


def test_eval_is_deterministic_and_train_uses_dropout(encoder_and_vars):
    enc, v = encoder_and_vars
    x = _normal((3, L, P), 0)
    a = enc.apply(v, x, train=False, rngs={"dropout": _key(2)})
    b = enc.apply(v, x, train=False, rngs={"dropout": _key(3)})
    np.testing.assert_array_equal(a, b)
    c = enc.apply(v, x, train=True, rngs={"dropout": _key(2)})
    assert np.abs(np.asarray(c) - np.asarray(a)).max() > 1e-3


def test_bfloat16_compute_keeps_float32_params():
    enc = transformer.PatchEncoder(
        d_model=D, num_heads=H, num_layers=1, d_ff=DFF, max_patches=L, dtype=jnp.bfloat16
    )
    x = jax.ShapeDtypeStruct((2, L, P), jnp.float32)
    v = jax.eval_shape(lambda x: enc.init(_key(0), x, train=False), x)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(v))
    out = jax.eval_shape(lambda v, x: enc.apply(v, x, train=False), v, x)
    assert out.dtype == jnp.bfloat16
