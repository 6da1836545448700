"""Tests for the Informer baseline and the shared baseline layers (tiny dims)."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from baseline_helpers import HORIZON, fast_variables, make_inputs, output_shapes, uses_input

from quantformer_jax.baselines import interface
from quantformer_jax.baselines.informer import (
    DistilConv,
    Informer,
    InformerConfig,
    num_active_queries,
    prob_sparse_attention,
)
from quantformer_jax.baselines.layers import AttentionLayer, CircularConv1d, dense

CONFIG = InformerConfig(d_model=16, n_heads=2, e_layers=2, d_layers=1, d_ff=32)
# Numerical tests compile the model: one encoder layer keeps that short (distilling is covered by
# the traced shape tests and test_distilling_halves_the_sequence).
SMALL = InformerConfig(d_model=16, n_heads=2, e_layers=1, d_layers=1, d_ff=32)
PROB_SPARSE = jax.jit(prob_sparse_attention, static_argnames=("factor", "causal"))


@pytest.mark.parametrize("task", interface.TASKS)
@pytest.mark.parametrize("batch,neurons,train", [(2, 3, False), (1, 1, True)])
def test_output_shapes(task, batch, neurons, train):
    shapes = output_shapes(Informer(CONFIG, task), make_inputs(batch, neurons), train=train)
    expected = (batch, neurons, HORIZON) if task == "forecast" else (batch, neurons, 2)
    assert shapes == {"forecast" if task == "forecast" else "logits": expected}


@pytest.mark.parametrize("task", interface.TASKS)
def test_never_reads_the_future_and_reads_the_stimulus(task):
    # Data flow of the traced train-mode step; eval mode is also checked numerically below.
    model = Informer(SMALL, task)
    inputs = make_inputs(2, 3)
    variables = fast_variables(model, inputs)
    assert not uses_input(model, variables, inputs, "future", train=True)
    assert uses_input(model, variables, inputs, "stim", train=True)


def test_eval_is_deterministic_and_uses_the_stimulus():
    # Compiled once (forecast); the classifier is covered by the traced tests above.
    model = Informer(SMALL, "forecast")
    inputs = make_inputs(2, 3)
    variables = fast_variables(model, inputs)
    apply = jax.jit(functools.partial(model.apply, train=False))
    out = np.asarray(apply(variables, inputs)["forecast"])
    assert np.isfinite(out).all()
    np.testing.assert_array_equal(out, apply(variables, inputs)["forecast"])
    other_future = {**inputs, "future": inputs["future"] * -5.0 + 1.0}
    np.testing.assert_array_equal(out, apply(variables, other_future)["forecast"])
    other_stim = {**inputs, "stim": inputs["stim"][::-1]}
    assert np.abs(out - np.asarray(apply(variables, other_stim)["forecast"])).max() > 1e-4


def test_train_mode_needs_a_dropout_rng_for_key_sampling():
    model = Informer(CONFIG, "forecast")
    inputs = make_inputs(1, 2)
    variables = fast_variables(model, inputs)
    apply = functools.partial(model.apply, train=True, mutable=["batch_stats"])
    with pytest.raises(ValueError, match="rngs=\\{'dropout'"):
        jax.eval_shape(apply, variables, inputs)


def test_num_active_queries_matches_the_original_lengths():
    # factor 10: encoder 96 and distilled 48 frames, decoder 128 (+1 with the CLS token).
    assert [num_active_queries(n, 10) for n in (96, 48, 128, 129)] == [50, 40, 50, 50]
    assert num_active_queries(20, 10) == 20  # capped at L


def _spiky_queries(length, active, seed=0):
    """Keys ~ N(0, 1); queries zero except at `active`, where q = 4 * (a key): known top set."""
    rng = np.random.default_rng(seed)
    k = rng.normal(size=(1, 2, length, 4)).astype(np.float32)
    v = rng.normal(size=(1, 2, length, 4)).astype(np.float32)
    q = np.zeros_like(k)
    for head in range(2):
        for i, pos in enumerate(active[head]):
            q[0, head, pos] = 4.0 * k[0, head, (pos + 7 * i) % length]
    return q, k, v


def _attention(q, k, v, causal):
    scores = q @ np.swapaxes(k, -1, -2) / math.sqrt(q.shape[-1])
    if causal:
        scores = np.where(np.triu(np.ones(scores.shape[-2:], bool), 1), -np.inf, scores)
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    return (weights / weights.sum(-1, keepdims=True)) @ v


@pytest.mark.parametrize("causal", [False, True])
def test_prob_sparse_keeps_exactly_the_top_queries(causal):
    length, factor = 32, 1  # u = ceil(ln 32) = 4 active queries per head
    active = [[3, 10, 17, 29], [0, 5, 6, 31]]
    q, k, v = _spiky_queries(length, active)
    context, mask = PROB_SPARSE(q, k, v, factor=factor, causal=causal)
    context, mask = np.asarray(context), np.asarray(mask)
    assert mask.sum(-1).tolist() == [[num_active_queries(length, factor)] * 2]
    for head in range(2):
        assert np.flatnonzero(mask[0, head]).tolist() == active[head]
    lazy = np.cumsum(v, axis=2) if causal else np.broadcast_to(v.mean(2, keepdims=True), v.shape)
    expected = np.where(mask[..., None], _attention(q, k, v, causal), lazy)
    np.testing.assert_allclose(context, expected, rtol=1e-5, atol=1e-5)


def test_prob_sparse_measures_on_the_sampled_keys():
    rng = np.random.default_rng(1)
    q, k, v = (rng.normal(size=(1, 1, 24, 4)).astype(np.float32) for _ in range(3))
    sample_idx = np.tile(np.array([[0, 3, 3]]), (24, 1))  # every query sees keys 0, 3, 3
    _, mask = PROB_SPARSE(q, k, v, factor=1, causal=False, sample_idx=sample_idx)
    scores = (q @ np.swapaxes(k, -1, -2))[0, 0][:, [0, 3, 3]]
    sparsity = scores.max(-1) - scores.sum(-1) / 24  # the original divides by L_K
    expected = np.sort(np.argsort(-sparsity)[: num_active_queries(24, 1)])
    assert np.flatnonzero(np.asarray(mask)[0, 0]).tolist() == expected.tolist()


def test_distilling_halves_the_sequence():
    x = jnp.zeros((2, 96, 16))
    for norm in ("batch", "layer"):
        layer = DistilConv(norm)
        variables = jax.eval_shape(functools.partial(layer.init, train=False), jax.random.key(0), x)
        out = jax.eval_shape(functools.partial(layer.apply, train=False), variables, x)
        assert out.shape == (2, 48, 16)


def test_layers_use_torch_initialisation():
    x = jnp.zeros((1, 8, 16))

    def init(key):
        linear = dense(16, 16).init(key, x)["params"]
        conv = CircularConv1d(16, kaiming_normal=True).init(key, x)["params"]
        return linear, conv

    linear, conv = jax.jit(init)(jax.random.key(0))
    for leaf in linear.values():  # torch Linear: U(+-1/sqrt(fan_in)) for weights and bias
        assert 0.2 < np.abs(leaf).max() <= 1 / math.sqrt(16)
    assert conv["kernel"].shape == (3, 16, 16)  # kaiming_normal_(fan_in): N(0, 2 / (16 * 3))
    assert 0.8 < np.std(conv["kernel"]) / math.sqrt(2 / 48) < 1.2
    assert 0 < np.abs(conv["bias"]).max() <= 1 / math.sqrt(48)


@pytest.mark.parametrize("mix", [False, True])
def test_attention_mix_reads_the_head_major_context_as_time_major(mix):
    batch, length, heads, head_dim = 1, 4, 2, 3
    d = heads * head_dim
    context = np.arange(batch * heads * length * head_dim, dtype=np.float32)
    context = context.reshape(batch, heads, length, head_dim)  # what attend returns
    identity = {"kernel": np.eye(d, dtype=np.float32), "bias": np.zeros(d, np.float32)}
    params = {name: identity for name in ("query", "key", "value", "out")}
    x = np.zeros((batch, length, d), np.float32)
    layer = AttentionLayer(d, heads, mix=mix)
    out = jax.jit(layer.apply, static_argnums=4)(
        {"params": params}, x, x, x, lambda q, k, v: context
    )
    # mix=True (the original's decoder quirk) reads the [B, H, L, dh] memory as [B, L, H * dh].
    expected = context.reshape(batch, length, d) if mix else context.transpose(0, 2, 1, 3)
    np.testing.assert_array_equal(out, expected.reshape(batch, length, d))


def test_from_config_reads_known_fields():
    section = {"d_model": 32, "n_heads": 4, "unrelated": 1}
    config = InformerConfig.from_config(section, factor=5)
    assert (config.d_model, config.n_heads, config.factor, config.d_ff) == (32, 4, 5, 512)
    with pytest.raises(ValueError, match="n_heads"):
        InformerConfig(d_model=18, n_heads=4)
    with pytest.raises(ValueError, match="task"):
        output_shapes(Informer(CONFIG, "regress"), make_inputs(1, 1), train=False)
