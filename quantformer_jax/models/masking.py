"""Patching and patch masks: random (pretraining), causal (forecasting) and peak masking.

REFERENCE.md section 2.3. A mask is bool [M, L] with True = masked; masked patches are zero-filled
before the patch embedding, so a masked token is the embedding bias plus its position.
`len_keep = int(L * (1 - ratio))` with Python float semantics: L = 10 keeps 8 at ratio 0.2 and
6 at ratio 0.4.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def patchify(x: jax.Array, patch_len: int = 16) -> jax.Array:
    """Cuts each row into non-overlapping patches (stride = patch length).

    Args:
        x: [M, T] traces.
        patch_len: P frames per patch.

    Returns:
        [M, T // P, P].

    Raises:
        ValueError: T is not a multiple of P (the original silently relied on this, REFERENCE P2).
    """
    if x.ndim != 2:
        raise ValueError(f"patchify expects [M, T], got shape {x.shape}")
    m, t = x.shape
    if t % patch_len:
        raise ValueError(f"patchify: T={t} frames is not a multiple of patch_len={patch_len}")
    return x.reshape(m, t // patch_len, patch_len)


def unpatchify(patches: jax.Array) -> jax.Array:
    """[M, L, P] -> [M, L * P]."""
    m, length, patch_len = patches.shape
    return patches.reshape(m, length * patch_len)


def num_kept(num_patches: int, ratio: float) -> int:
    """Patches kept by a mask of `ratio` (Python float semantics, as the original)."""
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"mask ratio must be in [0, 1), got {ratio}")
    return int(num_patches * (1 - ratio))


def random_patch_mask(key: jax.Array, num_rows: int, num_patches: int, ratio: float) -> jax.Array:
    """Independent random mask per row: the `len_keep` lowest-noise positions are kept.

    Args:
        key: PRNG key.
        num_rows: M.
        num_patches: L.
        ratio: masked fraction.

    Returns:
        bool [M, L], True = masked; exactly L - len_keep True per row.
    """
    len_keep = num_kept(num_patches, ratio)
    noise = jax.random.uniform(key, (num_rows, num_patches))
    # Rank of each position in its row's noise order; the smallest len_keep ranks are kept.
    rank = jnp.argsort(jnp.argsort(noise, axis=1), axis=1)
    return rank >= len_keep


def causal_patch_mask(num_rows: int, num_patches: int, ratio: float) -> jax.Array:
    """Masks the last L - len_keep patches of every row (forecasting: the future). bool [M, L]."""
    len_keep = num_kept(num_patches, ratio)
    row = jnp.arange(num_patches) >= len_keep
    return jnp.broadcast_to(row, (num_rows, num_patches))


def peak_patch_mask(patches: jax.Array, ratio: float) -> jax.Array:
    """Masks, per row, the patches with the highest max |x| (the original's --mask-on-peaks).

    Args:
        patches: [M, L, P].
        ratio: masked fraction.

    Returns:
        bool [M, L], True = masked (ties broken by position, lower index kept first).
    """
    length = patches.shape[1]
    len_keep = num_kept(length, ratio)
    peak = jnp.max(jnp.abs(patches), axis=-1)  # [M, L]
    rank = jnp.argsort(jnp.argsort(peak, axis=1, stable=True), axis=1)  # ascending peaks
    return rank >= len_keep


def make_patch_mask(
    kind: str, key: jax.Array, patches: jax.Array, ratio: float
) -> jax.Array | None:
    """The pretraining mask named by `config.model.masking` (random | causal | peaks).

    Returns None when `ratio == 0` (the original's unmasked training loop).
    """
    m, length, _ = patches.shape
    if ratio == 0:
        return None
    if kind == "random":
        return random_patch_mask(key, m, length, ratio)
    if kind == "causal":
        return causal_patch_mask(m, length, ratio)
    if kind == "peaks":
        return peak_patch_mask(patches, ratio)
    raise ValueError(f"config.model.masking={kind!r}: expected random | causal | peaks")


def apply_mask(patches: jax.Array, mask: jax.Array | None) -> jax.Array:
    """Zero-fills masked patches: [M, L, P] with bool [M, L] (None = unchanged)."""
    if mask is None:
        return patches
    if mask.shape != patches.shape[:2]:
        raise ValueError(f"mask shape {mask.shape} does not match patches {patches.shape[:2]}")
    return jnp.where(mask[..., None], jnp.zeros((), patches.dtype), patches)
