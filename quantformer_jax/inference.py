"""Real-time QuantCoder forecasting: one jitted function from (src, stim) to the forecast frames.

The computation is the forecasting trainer's prediction (training/forecast.py `Heads.decode`,
REFERENCE.md 3.2 step 5) with everything that only serves the metrics left out:

    src [B, N, S], stim [B, D] -> QuantCoder (eval) -> code-class logits of the F/P future
    patches -> their code vectors (the expected vector softmax @ C'[class codes], or the argmax
    class's vector: `decoding`), after the code vectors of the student's frozen-codebook codes of
    the S/P source patches (F5) -> the pretrained decoder (through C', or the raw C in faithful
    mode, F1) -> [B, N, F].

It reuses the modules themselves (QuantCoder.apply, the teacher's quantizer and decoder), so the
numbers are the trainer's. Two things make it cheaper than the trainer's path, without changing
the result:

* the decoder's last layer computes only the F/P forecast positions (`output_tokens`): the
  source positions still serve as keys and values, but their outputs were thrown away anyway;
* on CPU a batch of many trials runs as a loop over chunks of `chunk_trials` trials, so the
  [rows, d_ff] activations stay in cache instead of streaming hundreds of MB through memory (on
  GPUs the default is one pass: 3.8 ms for 32 trials on an H100, benchmarks/forecast_latency.py).

    forecaster = make_forecaster(model, teacher, variables, teacher_params, class_codes)
    frames = forecaster(src, stim)          # jitted; one compile per input shape

or, from a trained forecasting workdir, `forecaster_from_workdir(config, workdir)`.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from quantformer_jax.models.quantcoder import QuantCoder
from quantformer_jax.models.tokenizer import VQTokenizer
from quantformer_jax.training import targets

PyTree = Any
# Trials per loop iteration for large batches: one trial measured fastest on CPU
# (forecast_latency.py). AUTO = CPU_CHUNK_TRIALS on CPU, one pass on GPU/TPU.
AUTO = -1
CPU_CHUNK_TRIALS = 1
DEFAULT_CHUNK_TRIALS = AUTO


def resolve_chunk_trials(chunk_trials: int | None, backend: str | None = None) -> int | None:
    """`chunk_trials` as a trial count or None (one pass); AUTO depends on the backend."""
    if chunk_trials == AUTO:
        backend = backend or jax.default_backend()
        return CPU_CHUNK_TRIALS if backend == "cpu" else None
    if chunk_trials is not None and chunk_trials < 0:
        raise ValueError(f"chunk_trials={chunk_trials}: expected > 0, 0/None (one pass) or {AUTO}")
    return chunk_trials


def decode_future(
    teacher: VQTokenizer,
    teacher_params: PyTree,
    codes: jax.Array,
    num_future: int,
    *,
    raw_codebook: bool = False,
) -> jax.Array:
    """The teacher decoder's last `num_future` patches of code windows.

    Equal to `targets.decode_codes(...)[..., -num_future * P:]` (the decoder is bidirectional,
    so every code is still read), but the decoder's last layer skips the other positions.

    Args:
        teacher: the pretrained tokenizer module.
        teacher_params: its 'params'.
        codes: int [B, N, L] code windows.
        num_future: patches to decode at the end of the window.
        raw_codebook: look up the raw codebook C (faithful mode, REFERENCE F1) instead of C'.

    Returns:
        [B, N, num_future * P] frames.
    """
    z = targets.code_embeddings(teacher, teacher_params, codes, raw_codebook=raw_codebook)
    return targets.decode_embeddings(teacher, teacher_params, z, num_future=num_future)


def forecast(
    variables: PyTree,
    teacher_params: PyTree,
    class_codes: jax.Array,
    src: jax.Array,
    stim: jax.Array,
    *,
    model: QuantCoder,
    teacher: VQTokenizer,
    decoding: str = "argmax",
    raw_codebook: bool = False,
    chunk_trials: int | None = DEFAULT_CHUNK_TRIALS,
) -> jax.Array:
    """QuantCoder's decoded forecast (pure; jit it, or use `make_forecaster`).

    Args:
        variables: the QuantCoder's variables ({'params', 'frozen'}; no teacher).
        teacher_params: the pretrained tokenizer's 'params' (its decoder and codebook).
        class_codes: int [C] code of each class (`targets.CodeClasses.class_codes`).
        src: [B, N, S] source frames.
        stim: [B, D] stimulus features.
        model: the forecasting QuantCoder.
        teacher: the pretrained tokenizer.
        decoding: "argmax" | "expected" (targets.forecast_embeddings; a run's is
            `forecast.decoding_of(config)`).
        raw_codebook: decode through the raw codebook (faithful mode, `config.faithful`).
        chunk_trials: run batches larger than this as a loop over chunks of this many trials
            (None or 0: one pass; AUTO: one trial at a time on CPU, one pass on GPU/TPU).
            Trials are independent, so the result does not depend on it.

    Returns:
        [B, N, F] forecast frames.
    """
    if src.ndim != 3 or stim.ndim != 2 or stim.shape[0] != src.shape[0]:
        raise ValueError(f"forecast: src must be [B, N, S] and stim [B, D], got {src.shape}, "
                         f"{stim.shape}")  # fmt: skip
    b = src.shape[0]
    chunk_trials = resolve_chunk_trials(chunk_trials)
    one = functools.partial(
        _forecast_batch, variables, teacher_params, jnp.asarray(class_codes, jnp.int32),
        model=model, teacher=teacher, decoding=decoding, raw_codebook=raw_codebook,
    )  # fmt: skip
    if not chunk_trials or b <= chunk_trials:
        return one(src, stim)
    chunks = -(-b // chunk_trials)
    pad = chunks * chunk_trials - b  # padded trials are computed and dropped
    src_c = jnp.pad(src, ((0, pad), (0, 0), (0, 0))).reshape(chunks, chunk_trials, *src.shape[1:])
    stim_c = jnp.pad(stim, ((0, pad), (0, 0))).reshape(chunks, chunk_trials, stim.shape[1])
    out = jax.lax.map(lambda xs: one(*xs), (src_c, stim_c))  # [chunks, c, N, F]
    return out.reshape(chunks * chunk_trials, *out.shape[2:])[:b]


def _forecast_batch(
    variables: PyTree,
    teacher_params: PyTree,
    class_codes: jax.Array,
    src: jax.Array,
    stim: jax.Array,
    *,
    model: QuantCoder,
    teacher: VQTokenizer,
    decoding: str,
    raw_codebook: bool,
) -> jax.Array:
    """`forecast` of one chunk: [c, N, S], [c, D] -> [c, N, F]."""
    out = model.apply(variables, {"src": src, "stim": stim}, train=False)
    z = targets.forecast_embeddings(
        teacher, teacher_params, out["code_logits"], out["source_codes"], class_codes,
        decoding=decoding, raw_codebook=raw_codebook,
    )  # [B, N, L, d]  # fmt: skip
    num_future = out["code_logits"].shape[-2]
    return targets.decode_embeddings(teacher, teacher_params, z, num_future=num_future)


def make_forecaster(
    model: QuantCoder,
    teacher: VQTokenizer,
    variables: PyTree,
    teacher_params: PyTree,
    class_codes: np.ndarray | jax.Array,
    *,
    decoding: str = "argmax",
    raw_codebook: bool = False,
    chunk_trials: int | None = DEFAULT_CHUNK_TRIALS,
) -> Forecaster:
    """A jitted `(src [B, N, S], stim [B, D]) -> forecast [B, N, F]` with the weights bound.

    The weights are passed to the compiled function as arguments (not baked in as constants),
    so compiling is quick and the same executable serves new weights of the same shapes.

    Returns:
        The `Forecaster`.
    """
    fn = jax.jit(
        functools.partial(
            forecast, model=model, teacher=teacher, decoding=decoding,
            raw_codebook=raw_codebook, chunk_trials=chunk_trials,
        )
    )  # fmt: skip
    return Forecaster(fn, (variables, teacher_params, jnp.asarray(class_codes, jnp.int32)))


class Forecaster:
    """`forecast` jitted with its weights bound: call it with (src [B, N, S], stim [B, D])."""

    def __init__(self, fn: Any, bound: tuple[PyTree, PyTree, jax.Array]):
        self._fn, self._bound = fn, bound

    def __call__(self, src: jax.Array, stim: jax.Array) -> jax.Array:
        """[B, N, S], [B, D] -> [B, N, F]."""
        return self._fn(*self._bound, src, stim)

    def lower(self, src: jax.Array, stim: jax.Array) -> Any:
        """The lowered computation for these shapes (`.compile().cost_analysis()`)."""
        return self._fn.lower(*self._bound, src, stim)


def forecaster_from_workdir(
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    best: bool = True,
    chunk_trials: int | None = DEFAULT_CHUNK_TRIALS,
) -> Forecaster:
    """The forecaster of a trained QuantCoder forecasting workdir (selected or latest checkpoint).

    Builds the run as the evaluation does (the experiment's neuron count and the workdir's code
    classes), restores the checkpoint, and binds the student, the teacher and the classes.

    Raises:
        ValueError: the config is not a QuantCoder forecasting run.
        FileNotFoundError: the workdir has no checkpoint.
    """
    from quantformer_jax.training import finetune
    from quantformer_jax.training import forecast as forecast_task

    if config.task != "forecast" or config.get("model_class", "quantcoder") != "quantcoder":
        raise ValueError(
            f"forecaster_from_workdir needs a QuantCoder forecasting config (config.task="
            f"{config.task!r}, config.model_class={config.get('model_class')!r})"
        )
    eval_config = ml_collections.ConfigDict(config.to_dict())
    eval_config.init_from = ""  # the teacher comes from the finetuning checkpoint
    trainer = forecast_task.build(eval_config, workdir)
    state = finetune.restore_selected(trainer.task, workdir, best=best)
    teacher = trainer.heads.teacher
    variables = {"params": state.params, **finetune.student_state(state.model_state)}
    return make_forecaster(
        trainer.model,
        teacher.module,
        variables,
        state.model_state[finetune.TEACHER]["params"],
        teacher.classes.class_codes,
        decoding=forecast_task.decoding_of(config),
        raw_codebook=bool(config.faithful),
        chunk_trials=chunk_trials,
    )
