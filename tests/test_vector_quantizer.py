"""Tests for models/vector_quantizer.py: nearest code, affine codebook, STE gradients, LRU."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from quantformer_jax.models import vector_quantizer as vq

K, D = 12, 8


def _key(seed: int) -> jax.Array:
    # The cheap-to-compile "rbg" PRNG: compilation dominates these tiny tests' runtime.
    return jax.random.key(seed, impl="rbg")


def _normal(shape: tuple[int, ...], seed: int) -> jax.Array:
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


def _quantizer_vars(scale=0.0, bias=0.0, seed=0):
    module = vq.VectorQuantizer(codebook_size=K, dim=D)
    v = module.init(_key(seed), jnp.zeros((1, D)))
    params = dict(v["params"])
    params["affine_scale"] = jnp.full((D,), scale, jnp.float32)
    params["affine_bias"] = jnp.full((D,), bias, jnp.float32)
    return module, {"params": params, "vq_state": v["vq_state"]}


def test_init_codebook_normal_affine_zero_counts_timeout():
    module = vq.VectorQuantizer(codebook_size=256, dim=16)
    v = module.init(_key(0), jnp.zeros((1, 16)))
    cb = np.asarray(v["params"]["codebook"])
    assert abs(cb.mean()) < 0.05 and abs(cb.std() - 1.0) < 0.05
    assert not np.asarray(v["params"]["affine_scale"]).any()
    assert not np.asarray(v["params"]["affine_bias"]).any()
    np.testing.assert_array_equal(v["vq_state"]["counts"], 20)


def test_affine_transform_is_applied_to_the_codebook():
    module, v = _quantizer_vars(scale=0.03, bias=-0.1)
    cb = v["params"]["codebook"]
    eff = module.apply(v, method="effective_codebook")
    np.testing.assert_allclose(eff, (1 + 10 * 0.03) * cb + 10 * -0.1, rtol=1e-6)
    z = _normal((5, 3, D), 1)
    out = module.apply(v, z)
    np.testing.assert_allclose(out["z_q_raw"], eff[out["codes"]], rtol=1e-6)
    raw = module.apply(v, out["codes"], raw_codebook=True, method="lookup")
    np.testing.assert_allclose(raw, cb[out["codes"]])


def test_nearest_code_matches_brute_force():
    module, v = _quantizer_vars(scale=0.02, bias=0.05)
    z = 1.5 * _normal((40, D), 2)
    codes = module.apply(v, z)["codes"]
    eff = np.asarray(module.apply(v, method="effective_codebook"), np.float64)
    dist = ((np.asarray(z, np.float64)[:, None, :] - eff[None]) ** 2).sum(-1)
    np.testing.assert_array_equal(codes, dist.argmin(1))
    assert codes.dtype == jnp.int32


def test_forward_value_is_the_code_and_input_gradient_is_identity():
    module, v = _quantizer_vars()
    z = _normal((6, D), 3)
    out = module.apply(v, z)
    np.testing.assert_allclose(out["z_q"], out["z_q_raw"], atol=1e-6)
    g = _normal((6, D), 4)
    grad_z = jax.grad(lambda zz: jnp.sum(g * module.apply(v, zz)["z_q"]))(z)
    np.testing.assert_allclose(grad_z, g, atol=1e-6)


@pytest.mark.parametrize("scale", [0.0, 0.04])
def test_codebook_receives_nu_times_the_task_gradient(scale):
    module, v = _quantizer_vars(scale=scale)
    z = _normal((9, D), 5)
    g = _normal((9, D), 6)
    codes = np.asarray(module.apply(v, z)["codes"])

    def task(params):
        return jnp.sum(g * module.apply({**v, "params": params}, z)["z_q"])

    grads = jax.grad(task)(v["params"])
    expected = np.zeros((K, D), np.float32)
    np.add.at(expected, codes, np.asarray(g))
    expected *= 0.2 * (1 + 10 * scale)  # nu x task gradient, through C' = (1 + 10 s) C + 10 b
    np.testing.assert_allclose(grads["codebook"], expected, atol=1e-5)
    np.testing.assert_allclose(grads["affine_bias"], 10 * 0.2 * np.asarray(g).sum(0), atol=1e-4)


def _lru_inputs():
    codebook = jnp.arange(K * D, dtype=jnp.float32).reshape(K, D) / 10
    counts = jnp.array([1, 1, 5, 1, 20, 3, 1, 2, 9, 1, 4, 6], jnp.int32)
    z_e = jnp.concatenate(
        [100 + jnp.arange(4 * 2 * D, dtype=jnp.float32).reshape(4, 2, D), -50 * jnp.ones((2, 2, D))]
    )  # rows 0-3 valid and distinct, rows 4-5 padded
    codes = jnp.array([[0, 0], [2, 2], [0, 2], [2, 0], [3, 6], [3, 6]], jnp.int32)
    row_valid = jnp.array([1, 1, 1, 1, 0, 0], bool)
    return codebook, counts, z_e, codes, row_valid


def test_only_dead_codes_are_replaced_from_valid_rows():
    codebook, counts, z_e, codes, row_valid = _lru_inputs()
    new_cb, new_counts = vq.replace_dead_codes(
        codebook, counts, z_e, codes, row_valid, _key(0), timeout=20, rho=0.0
    )
    # codes 0, 2 used by valid rows -> 20; codes 3, 6 used only by padded rows do not count.
    dead = np.array([c == 1 and i not in (0, 2) for i, c in enumerate(np.asarray(counts))])
    assert np.flatnonzero(dead).tolist() == [1, 3, 6, 9]
    expected_counts = np.asarray(counts) - 1
    expected_counts[[0, 2]] = 20
    expected_counts[dead] = 20  # 0 + timeout
    np.testing.assert_array_equal(new_counts, expected_counts)
    np.testing.assert_array_equal(np.asarray(new_cb)[~dead], np.asarray(codebook)[~dead])
    valid_z = np.asarray(z_e)[:4].reshape(-1, D)
    replaced = np.asarray(new_cb)[dead]
    for row in replaced:  # each replacement is exactly one of the valid encoder outputs
        assert (np.abs(valid_z - row).max(1) == 0).any()
    assert len({tuple(r) for r in replaced}) == dead.sum()  # sampled without replacement


def test_replacement_noise_is_relative_and_deterministic_given_the_key():
    codebook, counts, z_e, codes, row_valid = _lru_inputs()
    a, _ = vq.replace_dead_codes(codebook, counts, z_e, codes, row_valid, _key(1))
    b, _ = vq.replace_dead_codes(codebook, counts, z_e, codes, row_valid, _key(1))
    c, _ = vq.replace_dead_codes(codebook, counts, z_e, codes, row_valid, _key(2))
    np.testing.assert_array_equal(a, b)
    assert np.abs(np.asarray(a) - np.asarray(c)).max() > 0
    valid_z = np.asarray(z_e)[:4].reshape(-1, D)
    for row in np.asarray(a)[[1, 3, 6, 9]]:
        nearest = valid_z[np.abs(valid_z - row).sum(1).argmin()]
        rel = np.linalg.norm(row - nearest) / np.linalg.norm(nearest)
        assert 0 < rel < 0.1  # rho = 0.01 times ||v|| times a D-dim standard normal


def test_more_dead_codes_than_tokens_cycles_and_empty_batch_changes_nothing():
    codebook = jnp.zeros((K, D))
    counts = jnp.ones((K,), jnp.int32)
    z_e = jnp.arange(2 * D, dtype=jnp.float32).reshape(2, 1, D) + 1
    codes = jnp.zeros((2, 1), jnp.int32)
    new_cb, new_counts = vq.replace_dead_codes(
        codebook, counts, z_e, codes, jnp.array([True, False]), _key(0), rho=0.0
    )
    np.testing.assert_array_equal(new_counts, 20)
    np.testing.assert_array_equal(np.asarray(new_cb)[1:], np.broadcast_to(z_e[0, 0], (K - 1, D)))
    same_cb, same_counts = vq.replace_dead_codes(
        codebook, counts, z_e, codes, jnp.array([False, False]), _key(0)
    )
    np.testing.assert_array_equal(same_cb, codebook)
    np.testing.assert_array_equal(same_counts, counts)


def test_usage_and_perplexity_helpers():
    codes = jnp.array([[0, 0, 0, 0], [1, 2, 3, 4]], jnp.int32)
    only_first = jnp.array([True, False])
    assert float(vq.codebook_usage(codes, 8, only_first)) == pytest.approx(1 / 8)
    assert float(vq.codebook_perplexity(codes, 8, only_first)) == pytest.approx(1.0)
    assert float(vq.codebook_perplexity(codes[1:], 8)) == pytest.approx(4.0, rel=1e-5)
    assert float(vq.codebook_usage(codes, 8)) == pytest.approx(5 / 8)
    assert float(vq.max_code_ratio(codes, 8)) == pytest.approx(4 / 8)
    none = jnp.array([False, False])
    assert np.isfinite(float(vq.codebook_perplexity(codes, 8, none)))
