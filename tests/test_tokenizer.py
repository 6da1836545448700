"""Tests for models/tokenizer.py: config, shapes, masking, decode by code, dead-code update."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import common
from quantformer_jax.models import masking, tokenizer

CFG = tokenizer.TokenizerConfig(d_model=16, num_heads=4, num_layers=1, d_ff=32, codebook_size=16)
M, L, P = 4, 10, 16
NO_MASK = jnp.zeros((M, L), bool)  # one compiled forward serves masked and unmasked calls


def _key(seed: int) -> jax.Array:
    # The cheap-to-compile "rbg" PRNG: compilation dominates these tiny tests' runtime.
    return jax.random.key(seed, impl="rbg")


def _normal(shape: tuple[int, ...], seed: int) -> jax.Array:
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


def _apply(model):
    """model.apply compiled once per model: compiles dominate these tests' runtime."""

    @jax.jit
    def forward(v, patches, mask):
        return model.apply(v, patches, mask, train=False)

    return forward


@pytest.fixture(scope="module")
def model_and_vars():
    model = tokenizer.VQTokenizer(CFG)
    patches = _normal((M, L, P), 0)
    v = model.init(_key(1), patches, None, train=False)  # eager: shares small compiles
    return model, v, patches, _apply(model)


def test_config_from_the_base_config_and_overrides():
    cfg = tokenizer.TokenizerConfig.from_config(common.tokenizer_config())
    assert (cfg.d_model, cfg.num_heads, cfg.num_layers, cfg.codebook_size) == (128, 8, 2, 512)
    assert cfg.affine_lr == 10.0 and cfg.sync_nu == 0.2 and cfg.replace_timeout == 20
    small = tokenizer.TokenizerConfig.from_config(common.tokenizer_config(), d_model=32)
    assert small.d_model == 32
    with pytest.raises(ValueError, match="num_heads"):
        tokenizer.TokenizerConfig(d_model=30, num_heads=8)
    with pytest.raises(KeyError):
        tokenizer.TokenizerConfig.from_config(common.tokenizer_config(), bogus=1)


@pytest.mark.parametrize("m", [1, 3, 8])
def test_output_shapes_for_any_row_count(m):
    model = tokenizer.VQTokenizer(CFG)
    patches = jax.ShapeDtypeStruct((m, L, P), jnp.float32)
    mask = jax.ShapeDtypeStruct((m, L), jnp.bool_)
    v = jax.eval_shape(lambda p, k: model.init(_key(0), p, k, train=False), patches, mask)
    assert v["vq_state"]["quantizer"]["counts"].shape == (16,)
    out = jax.eval_shape(lambda v, p, k: model.apply(v, p, k, train=True), v, patches, mask)
    assert out["recon"].shape == (m, L, P)
    for key in ("z_e", "z_q", "z_q_raw"):
        assert out[key].shape == (m, L, 16)
    assert out["codes"].shape == (m, L) and out["codes"].dtype == jnp.int32


def test_variables_and_initial_counters(model_and_vars):
    _, v, _, _ = model_and_vars
    assert set(v) == {"params", "vq_state"}
    assert set(v["params"]) == {"encoder", "quantizer", "decoder"}
    np.testing.assert_array_equal(v["vq_state"]["quantizer"]["counts"], CFG.replace_timeout)


def test_masked_patch_content_does_not_reach_the_encoder(model_and_vars):
    _, v, patches, forward = model_and_vars
    mask = masking.causal_patch_mask(M, L, 0.2)
    altered = jnp.where(mask[..., None], 123.0, patches)
    a = forward(v, patches, mask)
    b = forward(v, altered, mask)
    np.testing.assert_allclose(a["z_e"], b["z_e"], atol=1e-6)
    unmasked = forward(v, patches, NO_MASK)
    assert np.abs(np.asarray(unmasked["z_e"]) - np.asarray(a["z_e"])).max() > 1e-4


def test_forward_is_quantize_then_decode_and_decode_codes_uses_affine_codebook(model_and_vars):
    model, v, patches, forward = model_and_vars
    out = forward(v, patches, NO_MASK)
    np.testing.assert_allclose(out["z_q"], out["z_q_raw"], atol=1e-5)

    # The same through the methods, and decoding the codes reproduces the reconstruction.
    @jax.jit
    def via_methods(v, patches):
        z_e = model.apply(v, patches, method="encode")
        codes = model.apply(v, z_e, method="quantize")["codes"]
        return z_e, codes, model.apply(v, patches, method="tokenize")

    z_e, codes, tokens = via_methods(v, patches)
    np.testing.assert_allclose(z_e, out["z_e"], atol=1e-6)
    np.testing.assert_array_equal(codes, out["codes"])
    np.testing.assert_array_equal(tokens, out["codes"])

    @jax.jit
    def decode(v, codes):  # (through C', through the raw C)
        return tuple(
            model.apply(v, codes, raw_codebook=raw, method="decode_codes") for raw in (False, True)
        )

    np.testing.assert_allclose(decode(v, codes)[0], out["recon"], atol=1e-5)
    # With a non-trivial affine transform the raw-codebook decode (REFERENCE F1) differs.
    params = jax.tree.map(lambda x: x, v["params"])
    params["quantizer"] = dict(params["quantizer"], affine_scale=jnp.full((16,), 0.05))
    v2 = {**v, "params": params}
    eff, raw = decode(v2, codes)
    assert np.abs(np.asarray(eff) - np.asarray(raw)).max() > 1e-3


def test_ablate_quantizer_passes_z_e_through(model_and_vars):
    _, v, patches, _ = model_and_vars
    model = tokenizer.VQTokenizer(dataclasses.replace(CFG, ablate_quantizer=True))
    out = _apply(model)(v, patches, NO_MASK)
    np.testing.assert_array_equal(out["z_q"], out["z_e"])


def test_update_dead_codes_touches_only_codebook_and_counters(model_and_vars):
    _, v, patches, forward = model_and_vars
    out = forward(v, patches, NO_MASK)
    state = {"quantizer": {"counts": jnp.ones((16,), jnp.int32)}}  # every unused code dies
    row_valid = jnp.array([True, True, False, False])
    update = jax.jit(lambda *a: tokenizer.update_dead_codes(CFG, *a))
    params, new_state = update(v["params"], state, out["z_e"], out["codes"], row_valid, _key(3))
    used = np.unique(np.asarray(out["codes"])[:2])
    counts = np.asarray(new_state["quantizer"]["counts"])
    np.testing.assert_array_equal(counts, CFG.replace_timeout)  # used: reset; dead: 0 + timeout
    old_cb = np.asarray(v["params"]["quantizer"]["codebook"])
    new_cb = np.asarray(params["quantizer"]["codebook"])
    np.testing.assert_array_equal(new_cb[used], old_cb[used])
    dead = np.setdiff1d(np.arange(16), used)
    assert (np.abs(new_cb[dead] - old_cb[dead]).max(1) > 0).all()
    for name in ("encoder", "decoder"):
        jax.tree.map(np.testing.assert_array_equal, params[name], v["params"][name])
    for name in ("affine_scale", "affine_bias"):
        np.testing.assert_array_equal(params["quantizer"][name], v["params"]["quantizer"][name])


def test_bad_patch_shape_is_a_clear_error(model_and_vars):
    model, v, _, _ = model_and_vars
    with pytest.raises(ValueError, match="patch_len"):
        model.apply(v, jnp.ones((2, 10, 8)), None, train=False)
