"""QuantFormer tokenizer: patch encoder -> vector quantizer -> patch decoder; encode/decode by code.

REFERENCE.md sections 2.2-2.4. Rows are independent sequences of patch tokens: `patches [M, L, P]`
for any M (neuron-rows of any number of windows and experiments).

Variables: 'params' {encoder, quantizer {codebook, affine_scale, affine_bias}, decoder} and
'vq_state' {quantizer {counts [K]}}. The train step applies `update_dead_codes` (a pure function)
after the optimizer update; evaluation never touches the counters (REFERENCE P9, P10).
The original's unused parameters (stimulus Embedding, decoder [STIM] slot, learnable mask token)
are omitted (REFERENCE P11).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from quantformer_jax import constants
from quantformer_jax.models import masking, vector_quantizer
from quantformer_jax.models.transformer import PatchDecoder, PatchEncoder


@dataclasses.dataclass(frozen=True)
class TokenizerConfig:
    """Architecture of the VQ tokenizer (and of the QuantCoder encoder built from it)."""

    patch_len: int = constants.PATCH_LEN  # P: frames per token
    num_patches: int = constants.NUM_PATCHES  # L of a full window; positional tables have L + 1
    d_model: int = 128  # token width d (= code width)
    num_heads: int = 8  # attention heads (head_dim = d / heads)
    num_layers: int = 2  # TST layers in the encoder and, separately, in the decoder
    d_ff: int = 512  # feed-forward hidden width
    dropout: float = 0.0  # every dropout (0 in the original)
    codebook_size: int = 512  # K
    affine_lr: float = 10.0  # codebook affine reparameterisation factor (vqtorch affine_lr)
    sync_nu: float = 0.2  # synchronized straight-through weight (vqtorch sync_nu)
    replace_timeout: int = 20  # dead-code counter reset value (vqtorch lru timeout)
    replace_rho: float = 0.01  # dead-code re-seeding noise, relative to ||z|| (vqtorch rho)
    ablate_quantizer: bool = False  # z_q = z_e (the original's --ablate-quantizer)
    dtype: str = "float32"  # computation dtype (params stay float32); e.g. "bfloat16"
    precision: str = "default"  # matmul precision: default | high | highest

    def __post_init__(self):
        if self.d_model % self.num_heads:
            raise ValueError(
                f"config.model.d_model={self.d_model} must be divisible by "
                f"config.model.num_heads={self.num_heads}"
            )
        if self.precision not in ("default", "high", "highest"):
            raise ValueError(f"config.model.precision={self.precision!r}: default|high|highest")

    @classmethod
    def from_config(cls, section: Any, **overrides: Any) -> TokenizerConfig:
        """Builds the config from `config.model` (unknown keys, e.g. loss settings, are ignored).

        Args:
            section: an ml_collections ConfigDict (or mapping) such as `config.model`.
            **overrides: field values that take precedence over the section.
        """
        values = {}
        for field in dataclasses.fields(cls):
            if field.name in overrides:
                values[field.name] = overrides.pop(field.name)
            elif field.name in section:
                values[field.name] = section[field.name]
        if overrides:
            raise KeyError(f"TokenizerConfig has no fields {sorted(overrides)}")
        return cls(**values)

    @property
    def compute_dtype(self) -> Any:
        return jnp.dtype(self.dtype)

    @property
    def matmul_precision(self) -> str | None:
        return None if self.precision == "default" else self.precision


def _backbone_kwargs(config: TokenizerConfig) -> dict[str, Any]:
    """Transformer hyperparameters shared by the encoder and the decoder."""
    return dict(
        d_model=config.d_model,
        num_heads=config.num_heads,
        d_ff=config.d_ff,
        num_layers=config.num_layers,
        max_patches=config.num_patches,
        dropout=config.dropout,
        dtype=config.compute_dtype,
        precision=config.matmul_precision,
    )


def build_encoder(config: TokenizerConfig, name: str = "encoder") -> PatchEncoder:
    """The patch encoder of `config` (shared by the tokenizer and QuantCoder so params copy)."""
    return PatchEncoder(**_backbone_kwargs(config), name=name)


def build_quantizer(
    config: TokenizerConfig, *, frozen: bool = False, name: str = "quantizer"
) -> vector_quantizer.VectorQuantizer:
    """The quantizer of `config`; `frozen` puts its params in a 'frozen' collection, no counters."""
    return vector_quantizer.VectorQuantizer(
        codebook_size=config.codebook_size,
        dim=config.d_model,
        affine_lr=config.affine_lr,
        sync_nu=config.sync_nu,
        replace_timeout=config.replace_timeout,
        track_usage=not frozen,
        param_collection="frozen" if frozen else "params",
        name=name,
    )


class VQTokenizer(nn.Module):
    """Masked VQ autoencoder over patch tokens (QuantFormer pretraining model).

    Attributes:
        config: the architecture.
    """

    config: TokenizerConfig

    def setup(self):
        c = self.config
        self.encoder = build_encoder(c)
        self.quantizer = build_quantizer(c)
        self.decoder = PatchDecoder(patch_len=c.patch_len, **_backbone_kwargs(c))

    def encode(
        self,
        patches: jax.Array,
        mask: jax.Array | None = None,
        prompts: jax.Array | None = None,
        *,
        train: bool = False,
    ) -> jax.Array:
        """Continuous embeddings of the patch positions.

        Args:
            patches: [M, L, P].
            mask: optional bool [M, L]; masked patches are zero-filled first.
            prompts: optional [M, n, d] prompt tokens (their outputs are dropped).
            train: enables dropout.

        Returns:
            z_e [M, L, d] (float32).
        """
        self._check_patches(patches)
        h = self.encoder(masking.apply_mask(patches, mask), prompts, train=train)
        n_prompts = 0 if prompts is None else prompts.shape[1]
        return h[:, n_prompts:].astype(jnp.float32)

    def quantize(self, z_e: jax.Array) -> dict[str, jax.Array]:
        """z_e [..., d] -> dict(z_q STE output, z_q_raw code vectors, codes int32 [...])."""
        out = self.quantizer(z_e)
        if self.config.ablate_quantizer:
            out = dict(out, z_q=z_e, z_q_raw=z_e)
        return out

    def tokenize(self, patches: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        """Codes of patches [M, L, P] -> int32 [M, L] (eval mode; the frozen-teacher path)."""
        return self.quantizer.codes(self.encode(patches, mask, train=False))

    def decode(self, z_q: jax.Array, *, train: bool = False) -> jax.Array:
        """Token embeddings [M, L, d] -> reconstructed patches [M, L, P]."""
        return self.decoder(z_q, train=train)

    def decode_codes(
        self, codes: jax.Array, *, raw_codebook: bool = False, train: bool = False
    ) -> jax.Array:
        """Decodes code indices int [M, L] -> patches [M, L, P].

        Args:
            codes: code indices.
            raw_codebook: look up the raw codebook C instead of the affine C' the decoder was
                trained on. Only for `faithful` mode: it reproduces the original's bug
                (REFERENCE F1).
            train: enables dropout.
        """
        return self.decode(self.quantizer.lookup(codes, raw_codebook=raw_codebook), train=train)

    def effective_codebook(self) -> jax.Array:
        """[K, d] the affine-transformed codebook."""
        return self.quantizer.effective_codebook()

    def __call__(
        self, patches: jax.Array, mask: jax.Array | None = None, *, train: bool
    ) -> dict[str, jax.Array]:
        """Masked autoencoding pass.

        Args:
            patches: [M, L, P] ground-truth patches.
            mask: bool [M, L], True = masked (zero-filled before encoding); None = no masking.
            train: enables dropout. Dead-code replacement is NOT done here (see module docstring).

        Returns:
            dict(recon [M, L, P], z_e [M, L, d], z_q [M, L, d] straight-through output,
                 z_q_raw [M, L, d] selected code vectors, codes int32 [M, L]).
        """
        z_e = self.encode(patches, mask, train=train)
        q = self.quantize(z_e)
        recon = self.decode(q["z_q"], train=train)
        return {
            "recon": recon,
            "z_e": z_e,
            "z_q": q["z_q"],
            "z_q_raw": q["z_q_raw"],
            "codes": q["codes"],
        }

    def _check_patches(self, patches: jax.Array) -> None:
        if patches.ndim != 3 or patches.shape[-1] != self.config.patch_len:
            raise ValueError(
                f"VQTokenizer expects patches [M, L, {self.config.patch_len}] "
                f"(config.model.patch_len), got {patches.shape}"
            )


def update_dead_codes(
    config: TokenizerConfig,
    params: dict,
    vq_state: dict,
    z_e: jax.Array,
    codes: jax.Array,
    row_valid: jax.Array | None,
    key: jax.Array,
) -> tuple[dict, dict]:
    """Applies `vector_quantizer.replace_dead_codes` to a tokenizer's variables (pure).

    Call it in the train step AFTER the optimizer update, with the z_e and codes of that step's
    forward pass (the quantizer input, as vqtorch's hook sees it).

    Args:
        config: the tokenizer config (timeout, rho).
        params: the 'params' collection of a VQTokenizer.
        vq_state: the 'vq_state' collection of a VQTokenizer ({'quantizer': {'counts': [K]}}).
        z_e: [M, L, d] encoder outputs.
        codes: int32 [M, L].
        row_valid: bool [M] (padded rows neither refresh counters nor seed codes) or None.
        key: PRNG key.

    Returns:
        (new params, new vq_state); only the raw codebook and the counters change.
    """
    if config.ablate_quantizer:
        return params, vq_state
    codebook = params["quantizer"]["codebook"]
    counts = vq_state["quantizer"]["counts"]
    new_codebook, new_counts = vector_quantizer.replace_dead_codes(
        codebook,
        counts,
        z_e,
        codes,
        row_valid,
        key,
        timeout=config.replace_timeout,
        rho=config.replace_rho,
    )
    new_params = {**params, "quantizer": {**params["quantizer"], "codebook": new_codebook}}
    new_state = {**vq_state, "quantizer": {**vq_state["quantizer"], "counts": new_counts}}
    return new_params, new_state
