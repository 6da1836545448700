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


def _key(seed: int) -> jax.Array:
    # The cheap-to-compile "rbg" PRNG: compilation dominates these tiny tests' runtime.
    return jax.random.key(seed, impl="rbg")


def _normal(shape: tuple[int, ...], seed: int) -> jax.Array:
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


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


def _jitted(model):
    """(init, apply): apply compiled once per model; init runs eagerly, so its many small
    random-number programs are shared by every model of the same sizes (compiles dominate)."""

    def init(key, inputs):
        return model.init(key, inputs, train=False)

    apply = jax.jit(
        lambda v, inputs, train=False: model.apply(v, inputs, train=train), static_argnames="train"
    )
    return init, apply


def _inputs(b, n, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "src": jnp.asarray(rng.normal(size=(b, n, S)), jnp.float32),
        "stim": jnp.asarray(rng.uniform(size=(b, 4)), jnp.float32),
    }


@pytest.fixture(scope="module")
def forecaster():
    init, apply = _jitted(_model("forecast"))
    inputs = _inputs(2, 3)
    return apply, init(_key(1), inputs), inputs


@pytest.mark.parametrize("b,n", [(1, 1), (2, 3)])
@pytest.mark.parametrize("task", ["forecast", "classify"])
def test_output_shapes(task, b, n):
    model = _model(task, n=n, return_all_logits=True)
    inputs = jax.eval_shape(lambda: _inputs(b, n))
    v = jax.eval_shape(lambda i: model.init(_key(0), i, train=False), inputs)
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
    apply, v, inputs = forecaster
    same_src = {**inputs, "src": jnp.broadcast_to(inputs["src"][:, :1], inputs["src"].shape)}
    logits = np.asarray(apply(v, same_src)["code_logits"])
    assert np.abs(logits[:, 0] - logits[:, 1]).max() > 1e-4  # only the neuron token differs
    other_stim = {**same_src, "stim": same_src["stim"] + 1.0}
    logits2 = np.asarray(apply(v, other_stim)["code_logits"])
    assert np.abs(logits2 - logits).max() > 1e-4


def test_future_frames_are_never_read(forecaster):
    apply, v, inputs = forecaster
    with_future = {**inputs, "future": _normal((2, 3, F), 5)}
    for train in (False, True):  # the teacher-forcing input is ignored in both modes
        a, b = apply(v, inputs, train=train), apply(v, with_future, train=train)
        np.testing.assert_array_equal(a["code_logits"], b["code_logits"])
        np.testing.assert_array_equal(a["source_codes"], b["source_codes"])
    # Eval skips the prompts' outputs in the last layer: the same values up to rounding.
    a, b = apply(v, inputs), apply(v, inputs, train=True)
    np.testing.assert_allclose(a["code_logits"], b["code_logits"], atol=1e-5)


@pytest.fixture(scope="module")
def shallow_forecaster():
    """A QuantCoder without attention layers: every output is its own token's embedding."""
    tok0 = dataclasses.replace(TOK, num_layers=0)
    init, apply = _jitted(_model("forecast", tok=tok0))
    return tok0, init, apply


def test_future_tokens_carry_no_input_data(shallow_forecaster):
    # With no attention layers each output is its own token: the future positions must then be
    # identical for every input, stimulus and neuron (bias + position only).
    _, init, apply = shallow_forecaster
    v = init(_key(0), _inputs(2, 3))
    a = np.asarray(apply(v, _inputs(2, 3, seed=1))["code_logits"])
    b = np.asarray(apply(v, _inputs(2, 3, seed=2))["code_logits"])
    np.testing.assert_allclose(a, b, atol=1e-6)
    np.testing.assert_allclose(a, np.broadcast_to(a[:1, :1], a.shape), atol=1e-6)


def test_copy_pretrained_and_source_codes_use_the_frozen_codebook(shallow_forecaster):
    tok0, init, apply = shallow_forecaster
    tok_model = tokenizer.VQTokenizer(tok0)
    patches = _normal((6, 10, 16), 0)
    tok_params = tok_model.init(_key(1), patches, None, train=False)["params"]
    inputs = _inputs(2, 3)
    fresh = init(_key(2), inputs)
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
    teacher = jax.jit(lambda p, x: quantcoder.teacher_codes(tok0, p, x))
    expected = teacher(tok_params, src_patches).reshape(2, 3, -1)
    out = apply(v, inputs)
    np.testing.assert_array_equal(out["source_codes"], expected)


def test_encoder_names_match_the_tokenizer_and_mismatch_is_an_error(forecaster):
    _, v, _ = forecaster
    patches = jax.ShapeDtypeStruct((2, 10, 16), jnp.float32)
    tok_shapes = jax.eval_shape(
        lambda p: tokenizer.VQTokenizer(TOK).init(_key(0), p, None, train=False), patches
    )["params"]
    assert jax.tree.structure(tok_shapes["encoder"]) == jax.tree.structure(v["params"]["encoder"])
    wider = jax.eval_shape(
        lambda p: tokenizer.VQTokenizer(dataclasses.replace(TOK, d_ff=64)).init(
            _key(0), p, None, train=False
        ),
        patches,
    )["params"]
    wider = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), wider)
    with pytest.raises(ValueError, match="encoder"):
        quantcoder.copy_pretrained(v, wider)


def test_classifier_eval_is_deterministic_and_reads_the_source():
    model = _model("classify", tok=dataclasses.replace(TOK, dropout=0.2))
    inputs = _inputs(2, 3)
    v = model.init(_key(0), inputs, train=False)
    apply = jax.jit(lambda v, i, k: model.apply(v, i, train=False, rngs={"dropout": k}))
    a = apply(v, inputs, _key(1))["logits"]
    b = apply(v, inputs, _key(2))["logits"]
    np.testing.assert_array_equal(a, b)
    c = apply(v, _inputs(2, 3, seed=9), _key(1))["logits"]
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
        jax.eval_shape(lambda: small.init(_key(0), _inputs(1, 4), train=False))
    with pytest.raises(ValueError, match="source_frames"):
        bad = {"src": jnp.ones((1, 3, 80)), "stim": jnp.ones((1, 4))}
        jax.eval_shape(lambda: small.init(_key(0), bad, train=False))
