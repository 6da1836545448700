"""Loss terms: QuantFormer pretraining (recon, masked recon, VQ, commitment), focal/CE, masked MSE.

Every mean respects a validity mask (padded rows or ignored positions contribute nothing) and a
batch with nothing valid gives 0, never NaN.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

IGNORE_INDEX = -100  # torch's ignore_index convention, used for non-target patch positions


def _weighted_mean(
    values: jax.Array, weights: jax.Array, denominator: jax.Array | None = None
) -> jax.Array:
    """sum(values * weights) / max(sum(weights), 1), with `weights` broadcast to `values`.

    `denominator` replaces max(sum(weights), 1) (a whole batch's, when `values` is a chunk).
    """
    weights = jnp.broadcast_to(weights.astype(jnp.float32), values.shape)
    if denominator is None:
        denominator = _denominator(weights)
    return jnp.sum(values * weights) / denominator


def _denominator(weights: jax.Array) -> jax.Array:
    return jnp.maximum(jnp.sum(weights), 1.0)


def _row_weights(row_valid: jax.Array | None, num_rows: int, ndim: int) -> jax.Array:
    """bool [M] -> float [M, 1, ...] with `ndim` total dims (all ones when None)."""
    if row_valid is None:
        row_valid = jnp.ones((num_rows,), bool)
    if row_valid.shape != (num_rows,):
        raise ValueError(f"row_valid must be [{num_rows}], got {row_valid.shape}")
    return row_valid.astype(jnp.float32).reshape((num_rows,) + (1,) * (ndim - 1))


def masked_mse(pred: jax.Array, target: jax.Array, valid: jax.Array | None = None) -> jax.Array:
    """Mean of (pred - target)^2 over the elements where `valid` (broadcastable) is True."""
    sq = jnp.square(pred.astype(jnp.float32) - target.astype(jnp.float32))
    if valid is None:
        return jnp.mean(sq)
    return _weighted_mean(sq, valid)


def tokenizer_losses(
    outputs: dict[str, jax.Array],
    patches: jax.Array,
    mask: jax.Array | None,
    row_valid: jax.Array | None,
    *,
    beta: float,
    vq_loss: str = "reference",
    denominators: dict[str, jax.Array] | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """QuantFormer pretraining loss (REFERENCE.md section 2.5).

    `vq_loss='reference'` (default, what produced the paper's checkpoints):
        vq = MSE(z_q, sg z_e), commit = MSE(z_e, sg z_q), both on the straight-through OUTPUT z_q.
        The encoder's net VQ gradient is (1 - beta) * 2 (z_q - z_e) / n: zero at beta = 1. The
        codes get nu x the textbook codebook gradient (through the STE's nu path).
    `vq_loss='textbook'` (VQ-VAE): vq = MSE(z_q_raw, sg z_e) (codebook loss on the code vectors),
        commit = MSE(z_e, sg z_q_raw).
    total = recon + vq + beta * commit + masked (masked patches are counted twice, as in the
    original).

    Args:
        outputs: VQTokenizer outputs (recon [M, L, P], z_e, z_q, z_q_raw [M, L, d]).
        patches: [M, L, P] unmasked ground truth.
        mask: bool [M, L] True = masked, or None (masked term = 0).
        row_valid: bool [M] (padded rows ignored) or None.
        beta: commitment weight (config.model.beta, 1.0).
        vq_loss: 'reference' | 'textbook'.
        denominators: `tokenizer_loss_denominators` of the whole batch when these rows are one
            chunk of it (training/accumulation.py): the terms are then this chunk's share and
            add up over chunks to the whole batch's. None = these rows are the batch.

    Returns:
        (total, dict(loss, recon_loss, masked_recon_loss, vq_loss, commit_loss)).
    """
    recon = outputs["recon"].astype(jnp.float32)
    m = patches.shape[0]
    rows3 = _row_weights(row_valid, m, 3)
    den = denominators or tokenizer_loss_denominators(
        patches, mask, row_valid, outputs["z_e"].shape[-1]
    )
    sq = jnp.square(recon - patches.astype(jnp.float32))  # [M, L, P]
    loss_recon = _weighted_mean(sq, rows3, den["recon"])
    if mask is None:
        loss_masked = jnp.zeros((), jnp.float32)
    else:
        per_patch = jnp.mean(sq, axis=-1)  # [M, L]
        loss_masked = _weighted_mean(
            per_patch, mask.astype(jnp.float32) * rows3[..., 0], den["masked"]
        )

    sg = jax.lax.stop_gradient
    z_e = outputs["z_e"].astype(jnp.float32)
    if vq_loss == "reference":
        z_q = outputs["z_q"].astype(jnp.float32)
    elif vq_loss == "textbook":
        z_q = outputs["z_q_raw"].astype(jnp.float32)
    else:
        raise ValueError(f"config.model.vq_loss={vq_loss!r}: expected reference | textbook")
    loss_vq = _weighted_mean(jnp.square(z_q - sg(z_e)), rows3, den["latent"])
    loss_commit = _weighted_mean(jnp.square(z_e - sg(z_q)), rows3, den["latent"])

    total = loss_recon + loss_vq + beta * loss_commit + loss_masked
    terms = {
        "loss": total,
        "recon_loss": loss_recon,
        "masked_recon_loss": loss_masked,
        "vq_loss": loss_vq,
        "commit_loss": loss_commit,
    }
    return total, terms


def tokenizer_loss_denominators(
    patches: jax.Array, mask: jax.Array | None, row_valid: jax.Array | None, d_model: int
) -> dict[str, jax.Array]:
    """What each `tokenizer_losses` term divides by, for the batch of `patches` [M, L, P].

    recon: valid rows x L x P values; masked: masked patches of valid rows; latent (vq and
    commit): valid rows x L x d_model values. Each is at least 1 (an empty batch gives 0 loss).
    """
    m, length, patch_len = patches.shape
    rows = _row_weights(row_valid, m, 2)  # [M, 1]
    per_row = jnp.sum(rows)
    out = {
        "recon": jnp.maximum(per_row * (length * patch_len), 1.0),
        "latent": jnp.maximum(per_row * (length * d_model), 1.0),
    }
    if mask is not None:
        out["masked"] = _denominator(mask.astype(jnp.float32) * rows)
    return out


def focal_loss(
    logits: jax.Array,
    labels: jax.Array,
    class_weights: jax.Array | None = None,
    gamma: float = 0.0,
    ignore_index: int = IGNORE_INDEX,
    valid: jax.Array | None = None,
) -> jax.Array:
    """Mean over valid positions of w_y * (1 - p_y)^gamma * (-log p_y).

    A plain mean over valid positions, NOT normalised by the sum of the weights (unlike torch's
    weighted `CrossEntropyLoss`): this is the original's FocalLoss with alpha = class weights
    (REFERENCE F4).

    Args:
        logits: [..., C].
        labels: int [...]; `ignore_index` positions are skipped.
        class_weights: [C] per-class weights, or None (all 1).
        gamma: focusing exponent (0 = weighted cross-entropy).
        ignore_index: label value to skip.
        valid: optional bool [...] extra validity mask (e.g. padded windows).

    Returns:
        scalar loss (0 when nothing is valid).
    """
    if logits.shape[:-1] != labels.shape:
        raise ValueError(f"logits {logits.shape} and labels {labels.shape} do not match")
    keep = labels != ignore_index
    if valid is not None:
        keep = keep & jnp.broadcast_to(valid, labels.shape)
    safe = jnp.where(keep, labels, 0)
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    logp_y = jnp.take_along_axis(logp, safe[..., None], axis=-1)[..., 0]
    loss = -logp_y
    if gamma != 0:
        # Skipped at gamma = 0: the (1 - p)^0 factor's gradient is NaN where p == 1.
        loss = jnp.power(1.0 - jnp.exp(logp_y), gamma) * loss
    if class_weights is not None:
        loss = jnp.asarray(class_weights, jnp.float32)[safe] * loss
    return _weighted_mean(loss, keep)


def cross_entropy(
    logits: jax.Array,
    labels: jax.Array,
    valid: jax.Array | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> jax.Array:
    """Unweighted mean cross-entropy over valid positions (torch CrossEntropyLoss, ignore -100)."""
    return focal_loss(logits, labels, None, 0.0, ignore_index, valid)
