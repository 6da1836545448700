"""Tests for models/masking.py: patching, mask counts, causal and peak masks, zero-filling."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from quantformer_jax.models import masking


def _key(seed: int) -> jax.Array:
    # The cheap-to-compile "rbg" PRNG: compilation dominates these tiny tests' runtime.
    return jax.random.key(seed, impl="rbg")


def _normal(shape: tuple[int, ...], seed: int) -> jax.Array:
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


def test_patchify_shape_and_order():
    x = jnp.arange(2 * 160, dtype=jnp.float32).reshape(2, 160)
    p = masking.patchify(x, 16)
    assert p.shape == (2, 10, 16)
    np.testing.assert_array_equal(p[1, 3], x[1, 48:64])
    np.testing.assert_array_equal(masking.unpatchify(p), x)


def test_patchify_rejects_ragged_windows():
    with pytest.raises(ValueError, match="not a multiple"):
        masking.patchify(jnp.ones((2, 150)), 16)


def test_len_keep_uses_python_float_semantics():
    assert masking.num_kept(10, 0.2) == 8
    assert masking.num_kept(10, 0.4) == 6
    assert masking.num_kept(10, 0.3) == 7  # 10 * 0.7 = 7.000000000000001
    with pytest.raises(ValueError):
        masking.num_kept(10, 1.0)


def test_random_mask_masks_two_of_ten_per_row_independently():
    mask = masking.random_patch_mask(_key(0), 64, 10, 0.2)
    assert mask.shape == (64, 10) and mask.dtype == jnp.bool_
    np.testing.assert_array_equal(mask.sum(1), 2)
    assert len({tuple(r) for r in np.asarray(mask)}) > 10  # rows differ
    # every position gets masked sometimes (no positional bias)
    assert (np.asarray(mask).sum(0) > 0).all()
    again = masking.random_patch_mask(_key(0), 64, 10, 0.2)
    np.testing.assert_array_equal(mask, again)


def test_causal_mask_masks_the_last_four_of_ten():
    mask = masking.causal_patch_mask(3, 10, 0.4)
    expected = np.array([False] * 6 + [True] * 4)
    np.testing.assert_array_equal(mask, np.broadcast_to(expected, (3, 10)))


def test_peak_mask_masks_the_largest_peaks():
    patches = np.zeros((2, 10, 16), np.float32)
    patches[0, 3, 5] = 5.0
    patches[0, 7, 0] = -9.0  # |x| counts
    patches[0, 1, 2] = 1.0
    patches[1, 0, 0] = 2.0
    patches[1, 9, 9] = 3.0
    mask = masking.peak_patch_mask(jnp.asarray(patches), 0.2)
    np.testing.assert_array_equal(np.flatnonzero(mask[0]), [3, 7])
    np.testing.assert_array_equal(np.flatnonzero(mask[1]), [0, 9])


def test_apply_mask_zero_fills_only_masked_patches():
    patches = _normal((3, 10, 16), 0)
    mask = masking.random_patch_mask(_key(1), 3, 10, 0.4)
    out = masking.apply_mask(patches, mask)
    m = np.asarray(mask)
    assert (np.asarray(out)[m] == 0).all()
    np.testing.assert_array_equal(np.asarray(out)[~m], np.asarray(patches)[~m])
    assert masking.apply_mask(patches, None) is patches


def test_make_patch_mask_dispatch():
    patches = jnp.ones((2, 10, 16))
    assert masking.make_patch_mask("random", _key(0), patches, 0.0) is None
    assert int(masking.make_patch_mask("causal", _key(0), patches, 0.2).sum()) == 4
    with pytest.raises(ValueError, match="masking"):
        masking.make_patch_mask("bogus", _key(0), patches, 0.2)
