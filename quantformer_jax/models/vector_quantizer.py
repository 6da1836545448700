"""Vector quantizer: nearest code, affine codebook, synchronized straight-through, dead codes.

Reproduces the vqtorch v0.1.0 `VectorQuant` configuration used by QuantFormer (REFERENCE.md
section 2.4): K codes of width d initialised N(0, 1); an affine reparameterisation of the whole
codebook; a synchronized straight-through estimator; and least-recently-used dead-code
replacement, which here is a pure function the train step applies after the optimizer update.

THE STRAIGHT-THROUGH ESTIMATOR is `straight_through_sync` below:
    out = z + sg(z_q - z) + nu * z_q - sg(nu * z_q)
forward value z_q; d out / d z = I (plain STE); d out / d z_q = nu (the selected codes follow the
encoder with nu = sync_nu = 0.2 times the task gradient).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

VQ_STATE = "vq_state"  # the collection holding the dead-code counters (never differentiated)


def affine_codebook(
    codebook: jax.Array, scale: jax.Array, bias: jax.Array, affine_lr: float
) -> jax.Array:
    """The codebook actually used, C' = (1 + lr * scale) * C + lr * bias.

    The raw `scale` and `bias` [d] start at 0 and are shared by all codes, so every code follows
    the global shift and scale of the encoder outputs (Huh et al. 2023). Multiplying the raw
    parameters by `affine_lr` (10) is exactly vqtorch's `lr_scale`: their gradients are 10x larger,
    and under Adam the effective step on C' is ~10x the learning rate.

    Args:
        codebook: [K, d] raw codebook.
        scale: [d] raw affine scale.
        bias: [d] raw affine bias.
        affine_lr: the reparameterisation factor.

    Returns:
        [K, d] effective codebook.
    """
    return (1.0 + affine_lr * scale) * codebook + affine_lr * bias


def nearest_codes(z: jax.Array, codebook: jax.Array) -> jax.Array:
    """Index of the nearest code (Euclidean, fp32) for every vector; no gradient flows.

    The original computes the distances in fp16 on CUDA; we use fp32 at full matmul precision
    (REFERENCE.md P4), so near-ties may resolve differently.

    Args:
        z: [..., d] vectors.
        codebook: [K, d] codes.

    Returns:
        int32 [...] code indices (the first minimum on exact ties).
    """
    z = jax.lax.stop_gradient(z).astype(jnp.float32)
    codebook = jax.lax.stop_gradient(codebook).astype(jnp.float32)
    flat = z.reshape(-1, z.shape[-1])  # [n, d]
    # ||z - c||^2 = ||z||^2 - 2 z.c + ||c||^2; ||z||^2 does not change the argmin.
    cross = jnp.einsum("nd,kd->nk", flat, codebook, precision=jax.lax.Precision.HIGHEST)
    dist = jnp.sum(codebook**2, axis=-1)[None, :] - 2.0 * cross  # [n, K]
    return jnp.argmin(dist, axis=-1).astype(jnp.int32).reshape(z.shape[:-1])


def straight_through_sync(z: jax.Array, z_q: jax.Array, nu: float) -> jax.Array:
    """Straight-through estimator with synchronized update (vqtorch `sync_nu`).

    out = z + sg(z_q - z) + nu * z_q - sg(nu * z_q)

    Forward: out == z_q. Backward: d out/d z = I, so the encoder receives the downstream gradient
    unchanged; d out/d z_q = nu, so the chosen codes (and the affine parameters) receive nu times
    the same gradient and move together with the encoder outputs.
    """
    sg = jax.lax.stop_gradient
    return z + sg(z_q - z) + nu * z_q - sg(nu * z_q)


class VectorQuantizer(nn.Module):
    """Codebook + affine transform + nearest-code search + synchronized straight-through.

    Variables: 'params' {codebook [K, d] ~ N(0, 1), affine_scale [d] = 0, affine_bias [d] = 0}
    and, when `track_usage`, VQ_STATE {counts [K] int32 = timeout} for `replace_dead_codes`.
    The module never changes `counts` itself: the train step does, with `replace_dead_codes`.

    Attributes:
        codebook_size: K.
        dim: code width d.
        affine_lr: affine reparameterisation factor (vqtorch affine_lr, 10).
        sync_nu: synchronized-update weight nu (vqtorch sync_nu, 0.2).
        replace_timeout: initial value of the dead-code counters (vqtorch timeout, 20).
        track_usage: create the VQ_STATE counters at init (False for frozen copies).
        param_collection: collection holding the codebook and affine parameters; a frozen copy
            (QuantCoder) keeps them outside 'params' so no gradient or optimizer touches them.
    """

    codebook_size: int
    dim: int
    affine_lr: float = 10.0
    sync_nu: float = 0.2
    replace_timeout: int = 20
    track_usage: bool = True
    param_collection: str = "params"

    def setup(self):
        def var(name, init_fn, shape):
            if self.param_collection == "params":
                return self.param(name, init_fn, shape, jnp.float32)
            rng_key = self.make_rng("params") if self.is_initializing() else None
            return self.variable(
                self.param_collection, name, lambda: init_fn(rng_key, shape, jnp.float32)
            ).value

        self.codebook = var(
            "codebook", nn.initializers.normal(stddev=1.0), (self.codebook_size, self.dim)
        )
        self.affine_scale = var("affine_scale", nn.initializers.zeros, (self.dim,))
        self.affine_bias = var("affine_bias", nn.initializers.zeros, (self.dim,))
        # Counters only exist where the train step keeps them; reading without them is fine.
        if self.track_usage and (self.is_initializing() or self.has_variable(VQ_STATE, "counts")):
            self.counts = self.variable(
                VQ_STATE,
                "counts",
                lambda: jnp.full((self.codebook_size,), self.replace_timeout, jnp.int32),
            )

    def effective_codebook(self) -> jax.Array:
        """[K, d] affine-transformed codebook C' (what the search and the decoder see)."""
        return affine_codebook(self.codebook, self.affine_scale, self.affine_bias, self.affine_lr)

    def lookup(self, codes: jax.Array, *, raw_codebook: bool = False) -> jax.Array:
        """Code vectors for indices: int [...] -> [..., d] (raw C only to emulate REFERENCE F1)."""
        table = self.codebook if raw_codebook else self.effective_codebook()
        return jnp.take(table, codes, axis=0)

    def codes(self, z: jax.Array) -> jax.Array:
        """Nearest code indices, int32 [...], for z [..., d] (no gradient)."""
        return nearest_codes(z, self.effective_codebook())

    def __call__(self, z: jax.Array) -> dict[str, jax.Array]:
        """Quantizes z [..., d].

        Returns:
            dict(z_q: [..., d] straight-through output (forward value = code vectors),
                 z_q_raw: [..., d] the selected code vectors of C' (differentiable w.r.t. the
                     codebook and affine parameters; used by the textbook VQ loss),
                 codes: int32 [...]).
        """
        table = self.effective_codebook()
        codes = nearest_codes(z, table)
        z_q_raw = jnp.take(table, codes, axis=0).astype(z.dtype)
        z_q = straight_through_sync(z, z_q_raw, self.sync_nu)
        return {"z_q": z_q, "z_q_raw": z_q_raw, "codes": codes}


def _flat_valid(codes: jax.Array, valid: jax.Array | None) -> jax.Array:
    """Broadcasts a leading-dims validity mask (e.g. row_valid [M] for codes [M, L]) to [n]."""
    if valid is None:
        return jnp.ones((codes.size,), bool)
    valid = jnp.asarray(valid, bool)
    if valid.shape != codes.shape[: valid.ndim]:
        raise ValueError(
            f"validity mask shape {valid.shape} is not a prefix of the codes shape {codes.shape}"
        )
    valid = valid.reshape(valid.shape + (1,) * (codes.ndim - valid.ndim))
    return jnp.broadcast_to(valid, codes.shape).reshape(-1)


def replace_dead_codes(
    codebook: jax.Array,
    counts: jax.Array,
    z_e: jax.Array,
    codes: jax.Array,
    row_valid: jax.Array | None,
    key: jax.Array,
    *,
    timeout: int = 20,
    rho: float = 0.01,
) -> tuple[jax.Array, jax.Array]:
    """One step of vqtorch's LRU dead-code replacement, as a pure function.

    1. counts -= 1; every code used by a valid token is reset to `timeout`.
    2. Codes whose counter reached 0 (unused for `timeout` consecutive train steps) are re-seeded
       from randomly chosen current encoder outputs v (sampled without replacement among valid
       tokens, cycling when there are more dead codes than tokens, as vqtorch's shuffle-and-tile),
       plus noise rho * ||v|| * N(0, I); their counters get += timeout.

    The new value is written into the RAW codebook C, exactly as vqtorch writes
    `codebook.weight.data`: the code then actually used is the affine image
    (1 + lr*scale) * v + lr*bias, not v itself. This matches the original, so we keep it.
    The Adam moments of a replaced row are left as they are (torch keeps them; REFERENCE P9),
    which is why this runs after, and outside, the optimizer update.

    If the batch has no valid token, nothing changes (no counters tick).

    Args:
        codebook: [K, d] raw codebook (params).
        counts: int [K] counters (VQ_STATE collection).
        z_e: [..., d] encoder outputs of this step (the quantizer input; gradients stopped).
        codes: int [...] their codes.
        row_valid: bool mask over the leading dims of `codes` (e.g. [M] for codes [M, L]) or None.
        key: PRNG key; the result is a deterministic function of it.
        timeout: counter reset value (vqtorch timeout).
        rho: relative noise scale (vqtorch rho).

    Returns:
        (new_codebook [K, d], new_counts [K]).
    """
    num_codes, dim = codebook.shape
    z_flat = jax.lax.stop_gradient(z_e).reshape(-1, dim).astype(codebook.dtype)  # [n, d]
    codes_flat = codes.reshape(-1)
    if z_flat.shape[0] != codes_flat.shape[0]:
        raise ValueError(f"z_e {z_e.shape} and codes {codes.shape} have different token counts")
    valid = _flat_valid(codes, row_valid)  # [n]
    num_valid = jnp.sum(valid)

    # 1. Tick and reset the counters of codes used by valid tokens.
    used = jnp.zeros((num_codes,), bool).at[codes_flat].max(valid)
    ticked = jnp.where(used, timeout, counts - 1).astype(counts.dtype)
    dead = ticked <= 0  # vqtorch tests == 0; counters never go below 0 either way

    # 2. Random order of the valid tokens (invalid ones sorted last), then dead code j takes
    #    token order[j mod num_valid] (j = rank among dead codes, in index order).
    key_perm, key_noise = jax.random.split(key)
    sort_keys = jnp.where(valid, jax.random.uniform(key_perm, valid.shape), 2.0)
    order = jnp.argsort(sort_keys)
    dead_rank = jnp.cumsum(dead) - 1  # [K]
    pick = order[jnp.mod(dead_rank, jnp.maximum(num_valid, 1))]
    sampled = z_flat[pick]  # [K, d]
    norms = jnp.linalg.norm(sampled, axis=-1, keepdims=True)
    noise = jax.random.normal(key_noise, sampled.shape, codebook.dtype)
    sampled = sampled + rho * norms * noise

    new_codebook = jnp.where(dead[:, None], sampled, codebook)
    new_counts = jnp.where(dead, ticked + timeout, ticked).astype(counts.dtype)
    has_valid = num_valid > 0
    return (
        jnp.where(has_valid, new_codebook, codebook),
        jnp.where(has_valid, new_counts, counts),
    )


def code_histogram(codes: jax.Array, num_codes: int, valid: jax.Array | None = None) -> jax.Array:
    """float32 [K] number of valid tokens assigned to each code (`valid` over leading dims)."""
    weights = _flat_valid(codes, valid).astype(jnp.float32)
    return jnp.zeros((num_codes,), jnp.float32).at[codes.reshape(-1)].add(weights)


def codebook_usage(codes: jax.Array, num_codes: int, valid: jax.Array | None = None) -> jax.Array:
    """Fraction of the K codes used at least once by valid tokens (the original's `used_codes`)."""
    return jnp.mean(code_histogram(codes, num_codes, valid) > 0)


def codebook_perplexity(
    codes: jax.Array, num_codes: int, valid: jax.Array | None = None
) -> jax.Array:
    """exp(entropy) of the code distribution over valid tokens (1 = one code, K = uniform)."""
    hist = code_histogram(codes, num_codes, valid)
    probs = hist / jnp.maximum(jnp.sum(hist), 1.0)
    entropy = -jnp.sum(jnp.where(probs > 0, probs * jnp.log(jnp.where(probs > 0, probs, 1.0)), 0))
    return jnp.exp(entropy)


def max_code_ratio(codes: jax.Array, num_codes: int, valid: jax.Array | None = None) -> jax.Array:
    """Share of valid tokens taken by the most frequent code (collapse indicator)."""
    hist = code_histogram(codes, num_codes, valid)
    return jnp.max(hist) / jnp.maximum(jnp.sum(hist), 1.0)
