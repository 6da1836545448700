"""Tests for models/quantcoder.py: shapes, prompts, no future leak, frozen codebook, param copy."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import common
from quantformer_jax.models import quantcoder, tokenizer

TOK = tokenizer.TokenizerConfig(d_model=16, num_heads=4, num_layers=1, d_ff=32, codebook_size=16)
S, F, C = 96, 64, 7


def _model(task="forecast", n=3, tok=TOK, **kw):
    cfg = quantcoder.QuantCoderConfig(
        tokenizer=tok,
        task=task,
        num_neurons=n,
        num_classes=C if task == "forecast" else 2,
        source_frames=S,
        forecast_frames=F,
        **kw,
    )
    return quantcoder.QuantCoder(cfg)


def _inputs(b, n, seed=0):
    k1, k2 = jax.random.split(jax.random.key(seed))
    return {"src": jax.random.normal(k1, (b, n, S)), "stim": jax.random.uniform(k2, (b, 4))}


@pytest.fixture(scope="module")
def forecaster():
    model = _model("forecast")
    inputs = _inputs(2, 3)
    return model, model.init(jax.random.key(1), inputs, train=False), inputs


@pytest.mark.parametrize("b,n", [(1, 1), (2, 3)])
@pytest.mark.parametrize("task", ["forecast", "classify"])
def test_output_shapes(task, b, n):
    model = _model(task, n=n, return_all_logits=True)
    inputs = jax.eval_shape(lambda: _inputs(b, n))
    v = jax.eval_shape(lambda i: model.init(jax.random.key(0), i, train=False), inputs)
    out = jax.eval_shape(lambda v, i: model.apply(v, i, train=True), v, inputs)
    if task == "forecast":
        assert out["code_logits"].shape == (b, n, F // 16, C)
        assert out["source_codes"].shape == (b, n, S // 16)
        assert out["source_codes"].dtype == jnp.int32
        assert out["all_code_logits"].shape == (b, n, (S + F) // 16, C)
        assert set(v) == {"params", quantcoder.FROZEN}
        assert "quantizer" not in v["params"] and "cls_token" not in v["params"]
    else:
        assert set(out) == {"logits"} and out["logits"].shape == (b, n, 2)
        assert set(v) == {"params"} and v["params"]["cls_token"].shape == (16,)


def test_logits_depend_on_stimulus_and_neuron_identity(forecaster):
    model, v, inputs = forecaster
    same_src = {**inputs, "src": jnp.broadcast_to(inputs["src"][:, :1], inputs["src"].shape)}
    logits = np.asarray(model.apply(v, same_src, train=False)["code_logits"])
    assert np.abs(logits[:, 0] - logits[:, 1]).max() > 1e-4  # only the neuron token differs
    other_stim = {**same_src, "stim": same_src["stim"] + 1.0}
    logits2 = np.asarray(model.apply(v, other_stim, train=False)["code_logits"])
    assert np.abs(logits2 - logits).max() > 1e-4


def test_future_frames_are_never_read(forecaster):
    model, v, inputs = forecaster
    a = model.apply(v, inputs, train=False)
    with_future = {**inputs, "future": jax.random.normal(jax.random.key(5), (2, 3, F))}
    b = model.apply(v, with_future, train=True)  # teacher-forcing input is ignored
    np.testing.assert_array_equal(a["code_logits"], b["code_logits"])
    np.testing.assert_array_equal(a["source_codes"], b["source_codes"])


def test_future_tokens_carry_no_input_data():
    # With no attention layers each output is its own token: the future positions must then be
    # identical for every input, stimulus and neuron (bias + position only).
    model = _model("forecast", tok=dataclasses.replace(TOK, num_layers=0))
    v = model.init(jax.random.key(0), _inputs(2, 3), train=False)
    a = np.asarray(model.apply(v, _inputs(2, 3, seed=1), train=False)["code_logits"])
    b = np.asarray(model.apply(v, _inputs(2, 3, seed=2), train=False)["code_logits"])
    np.testing.assert_allclose(a, b, atol=1e-6)
    np.testing.assert_allclose(a, np.broadcast_to(a[:1, :1], a.shape), atol=1e-6)


def test_copy_pretrained_and_source_codes_use_the_frozen_codebook():
    tok0 = dataclasses.replace(TOK, num_layers=0)
    tok_model = tokenizer.VQTokenizer(tok0)
    patches = jax.random.normal(jax.random.key(0), (6, 10, 16))
    tok_params = tok_model.init(jax.random.key(1), patches, None, train=False)["params"]
    model = _model("forecast", tok=tok0)
    inputs = _inputs(2, 3)
    fresh = model.init(jax.random.key(2), inputs, train=False)
    v = quantcoder.copy_pretrained(fresh, tok_params)
    jax.tree.map(np.testing.assert_array_equal, v["params"]["encoder"], tok_params["encoder"])
    jax.tree.map(
        np.testing.assert_array_equal, v[quantcoder.FROZEN]["quantizer"], tok_params["quantizer"]
    )
    for name in ("stim_proj", "neuron_embedding", "head"):
        assert v["params"][name] is fresh["params"][name]
    # Without attention, source z_e = W_P x + W_pos: the student's source codes must equal the
    # frozen teacher's codes of the same source patches (the codebook is the pretrained one).
    src_patches = inputs["src"].reshape(6, S // 16, 16)
    expected = quantcoder.teacher_codes(tok0, tok_params, src_patches).reshape(2, 3, -1)
    out = model.apply(v, inputs, train=False)
    np.testing.assert_array_equal(out["source_codes"], expected)


def test_encoder_names_match_the_tokenizer_and_mismatch_is_an_error(forecaster):
    _, v, _ = forecaster
    patches = jax.ShapeDtypeStruct((2, 10, 16), jnp.float32)
    tok_shapes = jax.eval_shape(
        lambda p: tokenizer.VQTokenizer(TOK).init(jax.random.key(0), p, None, train=False), patches
    )["params"]
    assert jax.tree.structure(tok_shapes["encoder"]) == jax.tree.structure(v["params"]["encoder"])
    wider = jax.eval_shape(
        lambda p: tokenizer.VQTokenizer(dataclasses.replace(TOK, d_ff=64)).init(
            jax.random.key(0), p, None, train=False
        ),
        patches,
    )["params"]
    wider = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), wider)
    with pytest.raises(ValueError, match="encoder"):
        quantcoder.copy_pretrained(v, wider)


def test_classifier_eval_is_deterministic_and_reads_the_source():
    model = _model("classify", tok=dataclasses.replace(TOK, dropout=0.2))
    inputs = _inputs(2, 3)
    v = model.init(jax.random.key(0), inputs, train=False)
    a = model.apply(v, inputs, train=False, rngs={"dropout": jax.random.key(1)})["logits"]
    b = model.apply(v, inputs, train=False, rngs={"dropout": jax.random.key(2)})["logits"]
    np.testing.assert_array_equal(a, b)
    c = model.apply(v, _inputs(2, 3, seed=9), train=False)["logits"]
    assert np.abs(np.asarray(a) - np.asarray(c)).max() > 1e-5


def test_trainable_mask_freezes_only_the_encoder(forecaster):
    _, v, _ = forecaster
    mask = quantcoder.trainable_mask(v["params"], freeze_encoder=True)
    assert not any(jax.tree.leaves(mask["encoder"]))
    for name in ("stim_proj", "neuron_embedding", "head"):
        assert all(jax.tree.leaves(mask[name]))
    assert all(jax.tree.leaves(quantcoder.trainable_mask(v["params"], freeze_encoder=False)))


def test_from_run_config_and_input_errors():
    config = common.get_base_config()
    config.task = "forecast"
    model = quantcoder.from_config(config, num_neurons=5, num_classes=9)
    assert model.config.tokenizer.d_model == 128 and model.config.num_classes == 9
    assert model.config.source_frames == 96 and model.config.forecast_patches == 4
    cls_model = quantcoder.from_config(config, num_neurons=5, task="classify")
    assert cls_model.config.num_classes == 2
    with pytest.raises(ValueError, match="num_classes"):
        quantcoder.from_config(config, num_neurons=5)
    small = _model("forecast", n=3)
    with pytest.raises(ValueError, match="neuron embedding"):
        jax.eval_shape(lambda: small.init(jax.random.key(0), _inputs(1, 4), train=False))
    with pytest.raises(ValueError, match="source_frames"):
        bad = {"src": jnp.ones((1, 3, 80)), "stim": jnp.ones((1, 4))}
        jax.eval_shape(lambda: small.init(jax.random.key(0), bad, train=False))
