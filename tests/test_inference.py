"""Tests for inference.py: the fast forecaster equals the trainer's prediction; no leakage."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from quantformer_jax import inference
from quantformer_jax.models import quantcoder, tokenizer
from quantformer_jax.training import finetune, targets
from quantformer_jax.training import forecast as forecast_task

N, S, F, P = 3, 96, 64, 16
TOKENIZER = tokenizer.TokenizerConfig(
    d_model=16, num_heads=2, num_layers=2, d_ff=32, codebook_size=16, patch_len=P
)


def _normal(shape, seed):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


@pytest.fixture(scope="module")
def setup():
    """A tiny QuantCoder, its teacher with a perturbed affine codebook, and 6 of 16 code classes."""
    qc_config = quantcoder.QuantCoderConfig(
        tokenizer=TOKENIZER, task="forecast", num_neurons=N, num_classes=6,
        source_frames=S, forecast_frames=F,
    )  # fmt: skip
    model = quantcoder.QuantCoder(qc_config)
    teacher = tokenizer.VQTokenizer(TOKENIZER)
    k1, k2 = jax.random.split(jax.random.key(0, impl="rbg"))
    sample = {"src": jnp.zeros((1, N, S)), "stim": jnp.zeros((1, 4))}
    variables = jax.jit(lambda k: model.init(k, sample, train=False))(k1)
    teacher_params = jax.jit(lambda k: teacher.init(k, jnp.zeros((1, 10, P)), train=False))(k2)
    teacher_params = dict(teacher_params["params"])
    # Non-zero affine parameters, so C' differs from the raw C (faithful decoding differs).
    teacher_params["quantizer"] = dict(
        teacher_params["quantizer"],
        affine_scale=_normal((16,), 1) * 0.05,
        affine_bias=_normal((16,), 2) * 0.05,
    )
    # The student's frozen codebook is the teacher's, as after `copy_pretrained`.
    variables = dict(variables, frozen={"quantizer": teacher_params["quantizer"]})
    counts = np.zeros(16, np.int64)
    counts[[1, 3, 4, 8, 9, 15]] = [5, 1, 2, 7, 3, 1]
    book = targets.effective_codebook(teacher, teacher_params)
    classes = targets.build_code_classes(counts, book)
    return model, teacher, variables, teacher_params, classes


def _trainer_forecast(setup, src, stim, faithful, decoding):
    """The forecasting trainer's prediction: `Heads.decode(...)["forecast"]`."""
    model, teacher, variables, teacher_params, classes = setup
    heads = forecast_task.Heads(
        source_frames=S,
        teacher=forecast_task.Teacher(teacher, classes, teacher_params),
        faithful=faithful,
        decoding=decoding,
    )
    model_state = {"frozen": variables["frozen"], finetune.TEACHER: {"params": teacher_params}}

    @jax.jit
    def run(src, stim):
        inputs = {"src": src, "stim": stim}
        out, _ = finetune.apply_model(model, variables["params"], model_state, inputs, train=False)
        x = jnp.concatenate([src, jnp.zeros(src.shape[:2] + (F,))], axis=-1)
        return heads.decode(out, {"x": x}, model_state)["forecast"]

    return np.asarray(run(src, stim))


# chunk_trials=2 with 3 trials runs the padded per-chunk loop; None runs one pass.
@pytest.mark.parametrize(
    "faithful, chunk, decoding",
    [(False, None, "expected"), (False, 2, "argmax"), (True, 2, "argmax")],
)
def test_fast_forecast_equals_the_trainers_prediction(setup, faithful, chunk, decoding):
    model, teacher, variables, teacher_params, classes = setup
    src, stim = _normal((3, N, S), 3), _normal((3, 4), 4)
    expected = _trainer_forecast(setup, src, stim, faithful, decoding)
    fast = inference.make_forecaster(
        model, teacher, variables, teacher_params, classes.class_codes,
        decoding=decoding, raw_codebook=faithful, chunk_trials=chunk,
    )  # fmt: skip
    got = np.asarray(fast(src, stim))
    assert got.shape == (3, N, F)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert np.abs(expected).max() > 1e-2  # a real forecast, not zeros


def test_expected_and_argmax_decoding_differ(setup):
    # The option reaches the computation (a forecaster ignoring it would pass the test above
    # only if both trainer paths agreed, which this rules out).
    model, teacher, variables, teacher_params, classes = setup
    src, stim = _normal((2, N, S), 11), _normal((2, 4), 12)
    outs = [
        np.asarray(inference.make_forecaster(
            model, teacher, variables, teacher_params, classes.class_codes, decoding=d,
        )(src, stim))
        for d in ("argmax", "expected")
    ]  # fmt: skip
    assert np.abs(outs[0] - outs[1]).max() > 1e-4


def test_decode_future_equals_full_decoding_sliced(setup):
    _, teacher, _, teacher_params, _ = setup
    codes = jnp.asarray(np.random.default_rng(5).integers(0, 16, (2, N, 10)), jnp.int32)
    full = targets.decode_codes(teacher, teacher_params, codes)  # [B, N, 160]
    last = inference.decode_future(teacher, teacher_params, codes, 4)
    np.testing.assert_allclose(last, full[..., -F:], atol=1e-5)
    # The source codes still matter (the decoder is bidirectional): it is not a 4-token decode.
    alone = inference.decode_future(teacher, teacher_params, codes[..., -4:], 4)
    assert np.abs(np.asarray(alone) - np.asarray(last)).max() > 1e-4


def test_trials_are_independent_and_eval_is_deterministic(setup):
    model, teacher, variables, teacher_params, classes = setup
    fast = jax.jit(
        functools.partial(inference.forecast, model=model, teacher=teacher, chunk_trials=2)
    )
    args = (variables, teacher_params, jnp.asarray(classes.class_codes))
    src, stim = _normal((3, N, S), 6), _normal((3, 4), 7)
    a = np.asarray(fast(*args, src, stim))
    np.testing.assert_array_equal(a, np.asarray(fast(*args, src, stim)))
    # Changing trial 2 (the padded chunk) and trial 1 leaves trial 0 exactly as it was.
    src2 = src.at[1:].set(_normal((2, N, S), 8))
    stim2 = stim.at[1:].set(_normal((2, 4), 9))
    b = np.asarray(fast(*args, src2, stim2))
    np.testing.assert_array_equal(a[0], b[0])
    assert np.abs(a[1:] - b[1:]).max() > 1e-4
    # ... and a trial's forecast is the same alone as within a batch.
    np.testing.assert_allclose(np.asarray(fast(*args, src[:1], stim[:1])), a[:1], atol=1e-6)


def test_bad_shapes_are_a_clear_error(setup):
    model, teacher, variables, teacher_params, classes = setup
    fast = inference.make_forecaster(model, teacher, variables, teacher_params,
                                     classes.class_codes)  # fmt: skip
    with pytest.raises(ValueError, match=r"src must be \[B, N, S\]"):
        fast(jnp.zeros((N, S)), jnp.zeros((1, 4)))


def test_auto_chunk_trials_loops_on_cpu_only():
    assert inference.resolve_chunk_trials(inference.AUTO, "cpu") == inference.CPU_CHUNK_TRIALS
    assert inference.resolve_chunk_trials(inference.AUTO, "gpu") is None
    assert inference.resolve_chunk_trials(4, "gpu") == 4
    assert inference.resolve_chunk_trials(None, "cpu") is None
    with pytest.raises(ValueError, match="chunk_trials=-2"):
        inference.resolve_chunk_trials(-2)
