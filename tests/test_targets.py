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
