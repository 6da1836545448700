"""QuantCoder: the pretrained patch encoder with stimulus, neuron and CLS prompts, plus heads.

REFERENCE.md sections 3.1-3.3. Every neuron is its own sequence [prompts ; patch tokens] (no
attention across neurons); its identity enters only through a per-session neuron embedding
(Embedding(N, d), REFERENCE F16: a new session needs a new table).

* task 'forecast': per neuron [stim, neuron, L patch tokens] where the F / P future patches are
  zero-filled (they carry only the patch-embedding bias and their position). The head reads the
  continuous encoder output of the future positions (F6): {"code_logits": [B, N, F // P, C]}.
  "source_codes" [B, N, S // P] are the frozen codebook's codes of the student's z_e at the source
  positions, used to decode the forecast (F5).
* task 'classify': [cls, stim, neuron] + the S / P source patch tokens; the CLS output goes
  through Linear(d -> 2): {"logits": [B, N, 2]}.

Variables: 'params' {encoder (same names as the tokenizer's, so pretrained weights copy over),
stim_proj, neuron_embedding, cls_token (classify), head} and, in forecasting, 'frozen'
{quantizer {codebook, affine_scale, affine_bias}}: the codebook is a pure frozen function with no
dead-code replacement (F2) and never receives gradients or optimizer updates.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from quantformer_jax.models import masking
from quantformer_jax.models.tokenizer import (
    TokenizerConfig,
    VQTokenizer,
    build_encoder,
    build_quantizer,
)
from quantformer_jax.models.transformer import torch_dense

TASKS = ("forecast", "classify")
FROZEN = "frozen"  # collection of the frozen codebook (outside 'params')
CLASSIFY_CLASSES = 2


@dataclasses.dataclass(frozen=True)
class QuantCoderConfig:
    """QuantCoder architecture; fields without defaults come from the run, not from a section."""

    tokenizer: TokenizerConfig  # the pretrained encoder/codebook architecture (config.model)
    task: str  # forecast | classify
    num_neurons: int  # N of this session (rows of the neuron embedding)
    num_classes: int  # C: code classes (forecast) or 2 (classify)
    source_frames: int  # S: frames the model sees (config.data.source_frames)
    forecast_frames: int  # F: frames forecast as F / P code classes (config.data.forecast_frames)
    use_neuron_embedding: bool = True  # the neuron-identity prompt (the README runs use it)
    use_stim_prompt: bool = True  # the stimulus prompt Linear(stim_size -> d)
    return_all_logits: bool = False  # forecast: also "all_code_logits" [B, N, L, C]

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(f"QuantCoder task {self.task!r}: expected one of {TASKS}")
        p = self.tokenizer.patch_len
        for name in ("source_frames", "forecast_frames"):
            if getattr(self, name) % p:
                raise ValueError(
                    f"config.data.{name}={getattr(self, name)} is not a multiple of "
                    f"config.model.patch_len={p}"
                )
        if self.task == "classify" and self.num_classes != CLASSIFY_CLASSES:
            raise ValueError(f"QuantCoder classification has 2 classes, got {self.num_classes}")
        if self.num_neurons < 1 or self.num_classes < 1:
            raise ValueError(
                f"QuantCoder needs num_neurons >= 1 and num_classes >= 1, got "
                f"{self.num_neurons} and {self.num_classes}"
            )

    @classmethod
    def from_config(cls, section: Any, **required: Any) -> QuantCoderConfig:
        """Optional fields from `config.quantcoder_config`; the others passed as keywords."""
        values = dict(required)
        for field in dataclasses.fields(cls):
            if field.name not in values and section is not None and field.name in section:
                values[field.name] = section[field.name]
        return cls(**values)

    @property
    def source_patches(self) -> int:
        return self.source_frames // self.tokenizer.patch_len

    @property
    def forecast_patches(self) -> int:
        return self.forecast_frames // self.tokenizer.patch_len


def from_config(
    config: Any, *, num_neurons: int, num_classes: int | None = None, task: str | None = None
) -> QuantCoder:
    """The QuantCoder of a run config (`model`, `data`, optional `quantcoder_config`, `task`).

    Args:
        config: the run config.
        num_neurons: N of the experiment.
        num_classes: code classes C (forecast; from the teacher's train codes). Classification
            always has 2.
        task: 'forecast' | 'classify' (default `config.task`).
    """
    task = str(task or config.task)
    if task == "classify":
        num_classes = CLASSIFY_CLASSES
    elif num_classes is None:
        raise ValueError("QuantCoder forecasting needs num_classes (the teacher's code classes)")
    qc = QuantCoderConfig.from_config(
        config.get("quantcoder_config"),
        tokenizer=TokenizerConfig.from_config(config.model),
        task=task,
        num_neurons=int(num_neurons),
        num_classes=int(num_classes),
        source_frames=int(config.data.source_frames),
        forecast_frames=int(config.data.forecast_frames),
    )
    return QuantCoder(qc)


class QuantCoder(nn.Module):
    """Finetuning model: `apply(variables, inputs, train=...)` with inputs {src [B, N, S], stim}.

    Attributes:
        config: the architecture and task.
    """

    config: QuantCoderConfig

    def setup(self):
        c, t = self.config, self.config.tokenizer
        self.encoder = build_encoder(t)
        if c.task == "forecast":
            self.quantizer = build_quantizer(t, frozen=True)
        if c.use_neuron_embedding:
            self.neuron_embedding = nn.Embed(
                c.num_neurons, t.d_model, embedding_init=nn.initializers.normal(stddev=1.0)
            )
        if c.task == "classify":
            self.cls_token = self.param(
                "cls_token", nn.initializers.normal(stddev=1.0), (t.d_model,), jnp.float32
            )
        self.head = torch_dense(
            c.num_classes, t.d_model, dtype=t.compute_dtype, precision=t.matmul_precision
        )
        self.head_dropout = nn.Dropout(t.dropout)

    def _prompts(self, stim: jax.Array, b: int, n: int) -> jax.Array:
        """[B*N, n_prompts, d] in the original's order (cls?, stim, neuron)."""
        c, d = self.config, self.config.tokenizer.d_model
        tokens = []
        if c.task == "classify":
            tokens.append(jnp.broadcast_to(self.cls_token, (b, n, d)))
        if c.use_stim_prompt:
            # Built here (not in setup) so its fan-in follows the stimulus features (4 for
            # gratings4); torch-like init like the original's nn.Linear.
            stim_proj = torch_dense(
                d,
                stim.shape[-1],
                dtype=c.tokenizer.compute_dtype,
                precision=c.tokenizer.matmul_precision,
                name="stim_proj",
            )
            tokens.append(jnp.broadcast_to(stim_proj(stim)[:, None, :], (b, n, d)))  # [B, N, d]
        if c.use_neuron_embedding:
            tokens.append(jnp.broadcast_to(self.neuron_embedding(jnp.arange(n)), (b, n, d)))
        if not tokens:
            return None
        prompts = jnp.stack(tokens, axis=2).astype(c.tokenizer.compute_dtype)  # [B, N, n_p, d]
        return prompts.reshape(b * n, len(tokens), d)

    @nn.compact
    def __call__(self, inputs: Mapping[str, jax.Array], *, train: bool) -> dict[str, jax.Array]:
        """Runs the task head.

        Args:
            inputs: dict(src [B, N, S], stim [B, D_stim]); a `future` entry (teacher forcing in
                train mode) is ignored: the model never reads the forecast frames.
            train: enables dropout.

        Returns:
            forecast: {"code_logits": [B, N, F // P, C], "source_codes": int32 [B, N, S // P]}
            (+ "all_code_logits" [B, N, L, C] with `return_all_logits`);
            classify: {"logits": [B, N, 2]}.
        """
        c = self.config
        src, stim = inputs["src"], inputs["stim"]
        b, n, s = self._check_inputs(src, stim)
        prompts = self._prompts(stim, b, n)
        n_prompts = 0 if prompts is None else prompts.shape[1]
        p = c.tokenizer.patch_len
        if c.task == "classify":
            patches = masking.patchify(src.reshape(b * n, s), p)  # [B*N, S/P, P]
            h = self.encoder(patches, prompts, train=train)  # [B*N, 3 + S/P, d]
            cls_out = self.head_dropout(h[:, 0], deterministic=not train)  # [B*N, d]
            logits = self.head(cls_out).astype(jnp.float32)
            return {"logits": logits.reshape(b, n, CLASSIFY_CLASSES)}

        # Forecast: the future patches are zero-filled, i.e. causally masked (REFERENCE 3.2).
        future = jnp.zeros((b * n, c.forecast_frames), src.dtype)
        window = jnp.concatenate([src.reshape(b * n, s), future], axis=1)  # [B*N, T]
        patches = masking.patchify(window, p)  # [B*N, L, P]
        # The prompts' outputs are never read: in eval (the real-time path) the last encoder
        # layer skips them (same values). Training keeps all rows for the fused attention
        # backward, which is cheaper than what skipping two rows would save.
        keep = None if train else slice(n_prompts, None)
        h = self.encoder(patches, prompts, train=train, output_tokens=keep)
        z_e = h if keep is not None else h[:, n_prompts:]  # [B*N, L, d], prompts stripped
        ls = c.source_patches
        z_future = self.head_dropout(z_e[:, ls:], deterministic=not train)
        logits = self.head(z_future).astype(jnp.float32)  # [B*N, F/P, C]
        out = {
            "code_logits": logits.reshape(b, n, c.forecast_patches, c.num_classes),
            "source_codes": self.quantizer.codes(z_e[:, :ls]).reshape(b, n, ls),
        }
        if c.return_all_logits:
            all_logits = self.head(self.head_dropout(z_e, deterministic=not train))
            out["all_code_logits"] = all_logits.astype(jnp.float32).reshape(b, n, -1, c.num_classes)
        return out

    def _check_inputs(self, src: jax.Array, stim: jax.Array) -> tuple[int, int, int]:
        c = self.config
        if src.ndim != 3:
            raise ValueError(f"QuantCoder: inputs['src'] must be [B, N, S], got {src.shape}")
        b, n, s = src.shape
        if s != c.source_frames:
            raise ValueError(
                f"QuantCoder: inputs['src'] has {s} frames, config.data.source_frames="
                f"{c.source_frames}"
            )
        if c.use_neuron_embedding and n != c.num_neurons:
            raise ValueError(
                f"QuantCoder: inputs['src'] has {n} neurons but the neuron embedding was built "
                f"for {c.num_neurons} (one table per session, REFERENCE F16)"
            )
        if stim.ndim != 2 or stim.shape[0] != b:
            raise ValueError(f"QuantCoder: inputs['stim'] must be [{b}, D], got {stim.shape}")
        return b, n, s


def teacher_codes(
    tokenizer_config: TokenizerConfig, tokenizer_params: Mapping[str, Any], patches: jax.Array
) -> jax.Array:
    """The frozen teacher: codes int32 [M, L] of unmasked patches [M, L, P] (pure, no LRU)."""
    model = VQTokenizer(tokenizer_config)
    codes = model.apply({"params": tokenizer_params}, patches, method=VQTokenizer.tokenize)
    return jax.lax.stop_gradient(codes)


def copy_pretrained(
    variables: Mapping[str, Any], tokenizer_params: Mapping[str, Any]
) -> dict[str, Any]:
    """QuantCoder variables with the pretrained encoder and (forecast) frozen codebook copied in.

    Everything else (stim projection, neuron embedding, CLS token, head) keeps its fresh
    initialisation, as the original's strict=False load that skips `stimulus_embedding`.

    Args:
        variables: QuantCoder variables ({'params': ..., optionally 'frozen': ...}).
        tokenizer_params: the 'params' collection of a pretrained VQTokenizer.

    Returns:
        New variables (inputs are not modified).

    Raises:
        ValueError: a subtree's structure or shapes differ (names it).
    """

    def checked(name: str, mine: Any, theirs: Any) -> Any:
        shape = lambda tree: jax.tree.map(lambda v: tuple(jnp.shape(v)), tree)  # noqa: E731
        if jax.tree.structure(mine) != jax.tree.structure(theirs) or shape(mine) != shape(theirs):
            raise ValueError(
                f"pretrained {name!r} does not fit the QuantCoder: check config.model against "
                "the pretraining run's"
            )
        return theirs

    out = {k: dict(v) for k, v in variables.items()}
    out["params"]["encoder"] = checked(
        "encoder", variables["params"]["encoder"], tokenizer_params["encoder"]
    )
    if FROZEN in variables and "quantizer" in variables[FROZEN]:
        out[FROZEN]["quantizer"] = checked(
            "quantizer", variables[FROZEN]["quantizer"], tokenizer_params["quantizer"]
        )
    return out


def trainable_mask(params: Mapping[str, Any], *, freeze_encoder: bool) -> dict[str, Any]:
    """Bool pytree over `params`, False = frozen: only the pretrained encoder, and only when
    `freeze_encoder` (the stim projection, neuron embedding, CLS and head always train, F13).
    The frozen codebook is not in 'params' at all."""
    return {
        name: jax.tree.map(lambda _, frozen=(freeze_encoder and name == "encoder"): not frozen, sub)
        for name, sub in params.items()
    }
