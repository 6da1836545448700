"""Tests of training/targets.py: code classes from the train split, unseen codes, class weights.

The mapping is checked on hand-made counts and codebooks (unseen code -> nearest KNOWN code in
the affine codebook space, class weights sum/(C * count)); the teacher functions on a tiny
random tokenizer (codes per patch of the full window, raw vs affine decoding, C' formula).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from quantformer_jax.models import tokenizer
from quantformer_jax.training import targets


def test_classes_are_the_seen_codes_in_sorted_order_with_inverse_frequency_weights():
    counts = np.array([0, 3, 0, 1, 2, 0])
    book = np.arange(6, dtype=np.float32)[:, None] * np.ones((1, 2), np.float32)  # code k at k
    classes = targets.build_code_classes(counts, book)
    np.testing.assert_array_equal(classes.class_codes, [1, 3, 4])
    np.testing.assert_array_equal(classes.counts, [3, 1, 2])
    assert classes.num_classes == 3 and classes.codebook_size == 6
    np.testing.assert_allclose(classes.class_weights, 6 / (3 * np.array([3, 1, 2])), rtol=1e-6)
    assert classes.most_frequent_class == 0
    np.testing.assert_array_equal(classes.known, counts > 0)


def test_unseen_codes_map_to_the_nearest_known_code_in_the_given_space():
    counts = np.array([0, 3, 0, 1, 2, 0])
    # Code 0 sits next to code 4, code 2 next to code 3, code 5 next to code 1.
    book = np.array([[9.0], [0.0], [5.1], [5.0], [10.0], [0.2]], np.float32)
    classes = targets.build_code_classes(counts, book)
    # classes: code 1 -> 0, code 3 -> 1, code 4 -> 2
    np.testing.assert_array_equal(classes.code_to_class, [2, 0, 1, 1, 2, 0])


def test_known_codes_keep_their_own_class_even_with_identical_vectors():
    counts = np.array([2, 5])
    book = np.zeros((2, 3), np.float32)
    classes = targets.build_code_classes(counts, book)
    np.testing.assert_array_equal(classes.code_to_class, [0, 1])


def test_build_rejects_empty_counts_and_shape_mismatch():
    with pytest.raises(ValueError, match="no codes"):
        targets.build_code_classes(np.zeros(4, int), np.zeros((4, 2)))
    with pytest.raises(ValueError, match="disagree on K"):
        targets.build_code_classes(np.ones(4, int), np.zeros((5, 2)))


def test_json_round_trip(tmp_path):
    classes = targets.build_code_classes(np.array([0, 3, 1]), np.eye(3, dtype=np.float32))
    path = str(tmp_path / "classes.json")
    classes.save(path)
    back = targets.CodeClasses.load(path)
    assert back.same_as(classes)
    other = targets.build_code_classes(np.array([1, 3, 1]), np.eye(3, dtype=np.float32))
    assert not back.same_as(other)


def test_count_codes_skips_padded_windows():
    codes = np.array([[[0, 1]], [[2, 2]]])  # [B=2, N=1, L=2]
    valid = np.array([True, False])
    np.testing.assert_array_equal(targets.count_codes([(codes, valid)], 4), [1, 1, 0, 0])


def test_class_targets_take_future_patches_and_unseen_count():
    book = np.array([[0.0], [1.0], [2.6], [3.0]])  # unseen 0 -> code 1, unseen 2 -> code 3
    classes = targets.build_code_classes(np.array([0, 3, 0, 1]), book)
    codes = jnp.array([[[1, 3, 0, 2]], [[0, 0, 0, 0]]])  # [B=2, N=1, L=4], 2 source patches
    got = targets.class_targets(codes, jnp.asarray(classes.code_to_class), 2)
    np.testing.assert_array_equal(got, [[[0, 1]], [[0, 0]]])
    unseen = targets.unseen_count(codes, jnp.asarray(classes.known), 2, jnp.array([True, False]))
    assert int(unseen) == 2  # codes 0 and 2 of the valid window; the padded one is ignored


@pytest.fixture(scope="module")
def tiny_teacher():
    cfg = tokenizer.TokenizerConfig(d_model=8, num_heads=2, num_layers=1, d_ff=16, codebook_size=8)
    module = tokenizer.VQTokenizer(cfg)
    dummy = jnp.zeros((1, cfg.num_patches, cfg.patch_len), jnp.float32)
    params = jax.jit(lambda k: module.init(k, dummy, train=False)["params"])(jax.random.PRNGKey(0))
    q = dict(params["quantizer"])
    q["affine_scale"] = jnp.full_like(q["affine_scale"], 0.05)
    q["affine_bias"] = jnp.full_like(q["affine_bias"], -0.1)
    params = {**params, "quantizer": q}
    return module, params


def test_teacher_codes_match_the_tokenizer_per_row(tiny_teacher):
    module, params = tiny_teacher
    x = np.random.RandomState(0).randn(2, 3, 160).astype(np.float32)
    codes = jax.jit(targets.teacher_codes, static_argnums=(0, 3))(module, params, x, 16)
    assert codes.shape == (2, 3, 10) and codes.dtype == jnp.int32
    apply = jax.jit(lambda p, x: module.apply({"params": p}, x, None, train=False))
    rows = apply(params, x.reshape(6, 10, 16))
    np.testing.assert_array_equal(codes.reshape(6, 10), rows["codes"])


def test_effective_codebook_is_affine_and_raw_decoding_differs(tiny_teacher):
    module, params = tiny_teacher
    q = params["quantizer"]
    expected = (1 + 10 * q["affine_scale"]) * q["codebook"] + 10 * q["affine_bias"]
    np.testing.assert_allclose(targets.effective_codebook(module, params), expected, rtol=1e-5)
    codes = jnp.arange(20).reshape(1, 2, 10) % 8
    decode = jax.jit(targets.decode_codes, static_argnums=0, static_argnames="raw_codebook")
    affine = decode(module, params, codes)
    raw = decode(module, params, codes, raw_codebook=True)
    assert affine.shape == (1, 2, 160)
    assert not np.allclose(affine, raw)


# --- Forecast decoding: argmax vs expected code vector ------------------------------------------

CLASS_CODES = np.array([1, 4, 6], np.int32)  # 3 classes of the 8 codes


def _window(module, params, logits, source_codes, decoding, raw=False):
    z = targets.forecast_embeddings(
        module, params, logits, source_codes, CLASS_CODES, decoding=decoding, raw_codebook=raw
    )
    return targets.decode_embeddings(module, params, z)


@pytest.fixture(scope="module")
def decoding_inputs():
    rng = np.random.RandomState(1)
    logits = jnp.asarray(rng.randn(2, 3, 4, 3), jnp.float32)  # [B, N, Lf=4, C=3]
    source = jnp.asarray(rng.randint(0, 8, (2, 3, 6)), jnp.int32)  # [B, N, Ls=6]
    return logits, source


def test_expected_decoding_is_probs_times_class_code_vectors_decoded(tiny_teacher, decoding_inputs):
    module, params = tiny_teacher
    logits, source = decoding_inputs
    got = jax.jit(_window, static_argnums=(0, 4))(module, params, logits, source, "expected")
    # By hand: softmax in numpy, C' rows of the class codes, the decoder on the mixed vectors.
    book = targets.effective_codebook(module, params).astype(np.float64)  # [8, d]
    lg = np.asarray(logits, np.float64)
    probs = np.exp(lg - lg.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    future = probs @ book[CLASS_CODES]  # [B, N, 4, d]
    z = np.concatenate([book[np.asarray(source)], future], axis=-2).astype(np.float32)
    want = module.apply(
        {"params": params}, z.reshape(6, 10, -1), method=tokenizer.VQTokenizer.decode
    )
    assert got.shape == (2, 3, 160)
    np.testing.assert_allclose(got, np.asarray(want).reshape(2, 3, 160), atol=1e-5)
    # ... and it is not the argmax forecast (the check has teeth), while the source part is the
    # same vectors: the decoder is bidirectional, so only the inputs are compared there.
    argmax = _window(module, params, logits, source, "argmax")
    assert not np.allclose(got[..., 96:], argmax[..., 96:], atol=1e-4)


def test_peaked_logits_make_expected_equal_argmax_and_argmax_equals_decode_codes(
    tiny_teacher, decoding_inputs
):
    module, params = tiny_teacher
    logits, source = decoding_inputs
    peaked = logits * 1e4  # softmax is one-hot in fp32
    for raw in (False, True):
        argmax = _window(module, params, peaked, source, "argmax", raw)
        expected = _window(module, params, peaked, source, "expected", raw)
        np.testing.assert_allclose(expected, argmax, atol=1e-6)
        codes = jnp.concatenate([source, CLASS_CODES[np.argmax(logits, -1)]], axis=-1)
        plain = targets.decode_codes(module, params, codes, raw_codebook=raw)
        np.testing.assert_allclose(argmax, plain, atol=1e-6)


def test_unknown_decoding_is_an_error_naming_the_config_key(tiny_teacher, decoding_inputs):
    module, params = tiny_teacher
    logits, source = decoding_inputs
    with pytest.raises(ValueError, match="config.decoding='mean'"):
        _window(module, params, logits, source, "mean")
