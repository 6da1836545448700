"""Forecasting trainer (task 'forecast'): QuantCoder code classification and the baselines.

One trainer for every forecasting model of `models/registry.py`; the model's outputs decide the
loss (STYLE.md 12):

* {"code_logits": [B, N, F // P, C], "source_codes": [B, N, S // P]} (QuantCoder, REFERENCE 3.2):
  class-weighted focal loss (gamma `config.focal_gamma`, default 0 = weighted CE, F4) over the
  future patches only, against the frozen teacher's codes of the FULL window mapped to classes
  (training/targets.py). Prediction (`config.decoding`, targets.forecast_embeddings): per
  future patch the expected code vector softmax(logits) @ C'[class codes] ("expected", the
  default) or the argmax class's code vector ("argmax", the paper), after the code vectors of
  the student's frozen-codebook codes of the source patches (F5), decoded by the pretrained
  decoder. Vectors come from the affine codebook C' (F1); `config.faithful` decodes the argmax
  class through the raw C, as the original. Code-class metrics always use the argmax class.
* {"forecast": [B, N, F]} (baselines): MSE on the F future frames.
* parameter-free models (persistence, source_mean, trial_average): no train step; the same
  evaluation.

Metrics (metrics.py only) on the F forecast frames: mae, mse, rmse, mase, smape, corr (signed),
abs_corr, ssim, psnr (+ per horizon step and per neuron in test_metrics.json), legacy_* variants
(F8), forecast-derived activation with the label criterion (`activation_*`, D6) and the max
criterion (`activation_max_*`); for code models also code-class accuracy / balanced accuracy
(`code_*`), errors against the quantised target (`*_q`), unseen test codes (`unseen_codes`), the
teacher-source-code decoding diagnostic (`teacher_source_mse`, F5) and, in faithful mode, the
original's source-region activation (`activation_faithful_*`, F7).

Selection: best `val_mse`; the selected checkpoint is evaluated once on the test split at the end
(`workdir/test_metrics.json`); faithful mode also logs the best-over-epochs test numbers
(`faithful_best_test_*`).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from quantformer_jax import metrics
from quantformer_jax.data import datasets
from quantformer_jax.models import registry, tokenizer
from quantformer_jax.training import finetune, loop, losses, optimizers, targets
from quantformer_jax.training.train_state import TrainState

SELECTION_METRIC = "val_mse"
CODE_CLASSES_FILE = "code_classes.json"
TEACHER_RECON_FILE = "teacher_reconstruction.json"
# Test metrics whose best over epochs faithful mode reports (the original's lowest/max test_*).
FAITHFUL_BEST = {"mae": "min", "mse": "min", "mase": "min", "smape": "min", "abs_corr": "max",
                 "ssim": "max", "psnr": "max", "code_accuracy": "max",
                 "code_balanced_accuracy": "max"}  # fmt: skip


# --- The frozen teacher -------------------------------------------------------------------------


@dataclasses.dataclass
class Teacher:
    """The pretrained tokenizer used as a frozen function, and the code classes built with it."""

    module: tokenizer.VQTokenizer
    classes: targets.CodeClasses
    params: Any | None  # pretrained tokenizer params when loaded (None: from the checkpoint)

    @property
    def config(self) -> tokenizer.TokenizerConfig:
        return self.module.config


def fit_code_classes(
    module: tokenizer.VQTokenizer, params: Any, setup: finetune.Setup
) -> targets.CodeClasses:
    """Counts the teacher's codes over the whole train split (all positions) and builds classes."""
    c = module.config
    codes_fn = jax.jit(functools.partial(targets.teacher_codes, module, patch_len=c.patch_len))
    batches = setup.eval_batches("train")
    counts = targets.count_codes(
        ((np.asarray(codes_fn(params, b["x"])), b["valid"]) for b in batches), c.codebook_size
    )
    classes = targets.build_code_classes(counts, targets.effective_codebook(module, params))
    unseen = c.codebook_size - classes.num_classes
    logging.info("Code classes: %d of %d codes occur in the train split (%d never seen)",
                 classes.num_classes, c.codebook_size, unseen)  # fmt: skip
    return classes


def teacher_reconstruction(
    module: tokenizer.VQTokenizer, params: Any, setup: finetune.Setup, split: str = "val"
) -> dict[str, float]:
    """MSE of the teacher's own reconstruction via C' and via the raw C (REFERENCE F1), once."""
    c = module.config

    @jax.jit
    def sse(x, valid):
        codes = targets.teacher_codes(module, params, x, c.patch_len)
        out = []
        for raw in (False, True):
            rec = targets.decode_codes(module, params, codes, raw_codebook=raw)
            out.append(jnp.sum(jnp.square(rec - x) * valid[:, None, None]))
        return jnp.stack(out), jnp.sum(valid) * x.shape[1] * x.shape[2]

    total, count = np.zeros(2), 0.0
    for batch in setup.eval_batches(split):
        s, n = sse(batch["x"], batch["valid"])
        total += np.asarray(s)
        count += float(n)
    return {f"{split}_teacher_recon_mse": total[0] / count,
            f"{split}_teacher_recon_mse_raw_codebook": total[1] / count}  # fmt: skip


def make_teacher(
    config: ml_collections.ConfigDict, setup: finetune.Setup, workdir: str | None
) -> Teacher:
    """The teacher and its classes: cached in `workdir/code_classes.json` after the first build.

    The first build needs the pretrained run (`config.init_from`); a resumed run or an evaluation
    reads the workdir's classes, and the teacher params come from the finetuning checkpoint.
    """
    module = tokenizer.VQTokenizer(tokenizer.TokenizerConfig.from_config(config.model))
    if module.config.ablate_quantizer:
        raise ValueError("config.model.ablate_quantizer: code forecasting needs the quantizer")
    cached = os.path.join(workdir, CODE_CLASSES_FILE) if workdir else None
    params = None
    if config.init_from:
        params, _ = finetune.load_pretrained(config, module.config)
    if cached and os.path.isfile(cached):
        classes = targets.CodeClasses.load(cached)
        if params is None:
            return Teacher(module, classes, None)
        rebuilt = fit_code_classes(module, params, setup)
        if not rebuilt.same_as(classes):
            raise ValueError(
                f"{cached} was built from another teacher or train split than config.init_from="
                f"{config.init_from!r} gives now; use a new workdir"
            )
        return Teacher(module, classes, params)
    if params is None:
        raise ValueError(
            "config.init_from must name a pretraining workdir: QuantCoder forecasting needs the "
            "pretrained tokenizer (teacher targets, decoder)"
        )
    classes = fit_code_classes(module, params, setup)
    recon = teacher_reconstruction(module, params, setup)
    logging.info("Teacher reconstruction (REFERENCE F1): %s", recon)
    if workdir:
        classes.save(cached)
        finetune.write_json(workdir, TEACHER_RECON_FILE, recon)
    return Teacher(module, classes, params)


def decoding_of(config: ml_collections.ConfigDict) -> str:
    """The QuantCoder decoding a run uses: `config.decoding`, but always argmax when faithful.

    A config without the field (a workdir trained before it existed) decoded argmax.

    Raises:
        ValueError: `config.decoding` is not one of targets.DECODINGS.
    """
    decoding = targets.check_decoding(str(config.get("decoding", "argmax")))
    if config.faithful and decoding != "argmax":
        logging.info("config.faithful: decoding the argmax class as the original, not %r", decoding)
        return "argmax"
    return decoding


# --- Loss and metric sums -----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Heads:
    """How a model's outputs become a loss, a forecast and metric sums."""

    source_frames: int
    teacher: Teacher | None = None
    gamma: float = 0.0
    loss: str = "focal"  # focal | cross_entropy (code models)
    faithful: bool = False
    # targets.DECODINGS; `build` passes `decoding_of(config)` (config default "expected").
    decoding: str = "argmax"

    def __post_init__(self):
        targets.check_decoding(self.decoding)
        if self.faithful and self.decoding != "argmax":
            raise ValueError(
                f"config.faithful decodes the argmax class (the original's prediction), not "
                f"config.decoding={self.decoding!r}"
            )

    def _codes(self, batch: Mapping[str, jax.Array], model_state: Mapping[str, Any]):
        t = self.teacher
        params = model_state[finetune.TEACHER]["params"]
        codes = targets.teacher_codes(t.module, params, batch["x"], t.config.patch_len)
        n_src = self.source_frames // t.config.patch_len
        labels = targets.class_targets(codes, jnp.asarray(t.classes.code_to_class), n_src)
        return codes, labels, params, n_src

    def loss_fn(self, out, batch, model_state) -> jax.Array:
        valid = batch["valid"]
        if "forecast" in out:
            future = batch["x"][..., self.source_frames :]
            return losses.masked_mse(out["forecast"], future, valid[:, None, None])
        if self.teacher is None:
            raise ValueError("a code-logit model needs the teacher (config.init_from)")
        _, labels, _, _ = self._codes(batch, model_state)
        weights = None
        if self.loss == "focal":
            weights = jnp.asarray(self.teacher.classes.class_weights)
        elif self.loss != "cross_entropy":
            raise ValueError(f"config.loss={self.loss!r}: expected focal | cross_entropy")
        return losses.focal_loss(
            out["code_logits"], labels, weights, self.gamma, valid=valid[:, None, None]
        )

    def decode(self, out, batch, model_state) -> dict[str, jax.Array]:
        """The forecast [B, N, F] (and, for code models, classes and the quantised target)."""
        if "forecast" in out:
            return {"forecast": out["forecast"]}
        t = self.teacher
        codes, labels, params, n_src = self._codes(batch, model_state)
        logits = out["code_logits"]  # [B, N, Lf, C]
        pred_classes = jnp.argmax(logits, axis=-1).astype(jnp.int32)  # [B, N, Lf]
        raw = self.faithful
        # [B, N, L, d]: the student's source codes' vectors (F5), then the future patches'.
        z = targets.forecast_embeddings(
            t.module, params, logits, out["source_codes"][..., :n_src], t.classes.class_codes,
            decoding=self.decoding, raw_codebook=raw,
        )  # fmt: skip
        window = targets.decode_embeddings(t.module, params, z)  # [B, N, T]
        quantized = targets.decode_codes(t.module, params, codes, raw_codebook=raw)
        # F5 diagnostic: the same future embeddings after the teacher's own source codes.
        teacher_src_z = jnp.concatenate(
            [targets.code_embeddings(t.module, params, codes[..., :n_src], raw_codebook=raw),
             z[..., n_src:, :]], axis=-2,
        )  # fmt: skip
        teacher_src = targets.decode_embeddings(t.module, params, teacher_src_z)
        s = self.source_frames
        return {
            "forecast": window[..., s:],
            "window": window,
            "quantized": quantized[..., s:],
            "teacher_source_forecast": teacher_src[..., s:],
            "code_logits": out["code_logits"],
            "pred_classes": pred_classes,
            "target_classes": labels,
            "codes": codes,
        }

    def sums_fn(self, out, batch, model_state) -> dict[str, Any]:
        s = self.source_frames
        x, valid, labels = batch["x"], batch["valid"], batch["labels"]
        src, future = x[..., :s], x[..., s:]
        dec = self.decode(out, batch, model_state)
        forecast = dec["forecast"]
        sums = {
            "loss": finetune.loss_pair(self.loss_fn(out, batch, model_state), batch),
            "forecast": metrics.forecast_sums(forecast, future, src, valid),
            "legacy": metrics.legacy_forecast_sums(forecast, future, valid),
            "activation": metrics.binary_counts(
                metrics.forecast_activation(forecast), labels, valid
            ),
            "activation_max": metrics.binary_counts(
                metrics.legacy_forecast_activation(forecast), labels, valid
            ),
        }
        if "fallback" in out:  # trial_average: conditions never seen in train
            n = jnp.sum(valid).astype(jnp.float32)
            sums["condition_fallback"] = (jnp.sum(out["fallback"] & valid), n)
        if "code_logits" not in out:
            return sums
        t = self.teacher
        n_src = s // t.config.patch_len
        sums["forecast_q"] = metrics.forecast_sums(forecast, dec["quantized"], src, valid)
        sums["codes"] = metrics.confusion_matrix(
            dec["pred_classes"], dec["target_classes"], t.classes.num_classes, valid
        )
        positions = jnp.sum(valid).astype(jnp.float32) * dec["codes"][..., n_src:][0].size
        unseen = targets.unseen_count(dec["codes"], jnp.asarray(t.classes.known), n_src, valid)
        sums["unseen_codes"] = (unseen.astype(jnp.float32), positions)
        diff = jnp.square(dec["teacher_source_forecast"] - future) * valid[:, None, None]
        sums["teacher_source_mse"] = (jnp.sum(diff), jnp.sum(valid) * future[0].size)
        if self.faithful:  # F7: the original's activation from window frames 0..59
            sums["activation_faithful"] = metrics.binary_counts(
                metrics.legacy_forecast_activation(dec["window"]), labels, valid
            )
        return sums


_GROUPS = {  # sums group -> (prefix, suffix) of its metric names
    "forecast": ("", ""),
    "forecast_q": ("", "_q"),
    "legacy": ("", ""),
    "activation": ("activation_", ""),
    "activation_max": ("activation_max_", ""),
    "activation_faithful": ("activation_faithful_", ""),
    "codes": ("code_", ""),
}


def summarize_full(sums: Mapping[str, Any]) -> dict[str, Any]:
    """Every metric, vectors included (`mae_step` [F], `mae_neuron` [N], ...)."""
    out: dict[str, Any] = loop.summarize_pairs(sums)
    for group, (prefix, suffix) in _GROUPS.items():
        if group in sums:
            for key, value in metrics.finalize(sums[group]).items():
                out[f"{prefix}{key}{suffix}"] = value
    if "unseen_codes" in sums:  # a count and a fraction of the future positions
        count, positions = (float(np.asarray(v)) for v in sums["unseen_codes"])
        out["unseen_codes"] = count
        out["unseen_code_fraction"] = count / positions if positions else float("nan")
    return out


def summarize(sums: Mapping[str, Any]) -> dict[str, float]:
    """The scalars the loop logs (per-step and per-neuron vectors go to test_metrics.json)."""
    return finetune.scalars_only(summarize_full(sums))


# --- Task ---------------------------------------------------------------------------------------


def build(
    config: ml_collections.ConfigDict,
    workdir: str | None = None,
    dataset: datasets.ExperimentDataset | None = None,
) -> finetune.Trainer:
    """Builds the forecasting run of `config` (loads the data, the teacher and the model)."""
    if config.task != "forecast":
        raise ValueError(f"config.task={config.task!r}: the forecasting trainer needs 'forecast'")
    setup = finetune.make_setup(config, dataset)
    name = setup.model_name
    if config.init_from and name != "quantcoder":
        raise ValueError(f"config.init_from is only used by model_class=quantcoder, not {name!r}")
    teacher = make_teacher(config, setup, workdir) if name == "quantcoder" else None
    if setup.naive:
        registry_model = registry.model_from_config(config, setup.num_neurons)
        model = registry_model.fit(setup.dataset.splits["train"])
    else:
        num_classes = teacher.classes.num_classes if teacher else None
        model = registry.model_from_config(config, setup.num_neurons, num_classes=num_classes)
    heads = Heads(
        source_frames=setup.source_frames,
        teacher=teacher,
        gamma=float(config.get("focal_gamma", 0.0)),
        loss=str(config.get("loss", "focal")),
        faithful=bool(config.faithful),
        decoding=decoding_of(config) if name == "quantcoder" else "argmax",
    )
    freeze = ("encoder",) if config.get("freeze_encoder", False) and name == "quantcoder" else ()
    make_variables = functools.partial(
        finetune.init_variables, model, setup.sample_inputs(), setup.init_key
    )
    # Shapes only: a resumed or evaluated run never compiles the init.
    params_shape, _ = jax.eval_shape(make_variables)
    tx = finetune.create_optimizer(config, params_shape, freeze)
    teacher_shape = None
    if teacher is not None and teacher.params is None:
        # Resumed/evaluated run: the checkpoint holds the teacher; zeros of its shape suffice.
        c = teacher.config
        dummy = jnp.zeros((1, c.num_patches, c.patch_len), jnp.float32)
        teacher_shape = jax.eval_shape(
            lambda: teacher.module.init(setup.init_key, dummy, train=False)["params"]
        )

    def init_state() -> TrainState:
        params, model_state = make_variables()
        if teacher is not None:
            if teacher.params is not None:
                teacher_params = teacher.params
            else:
                teacher_params = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), teacher_shape)
            model_state = {**model_state, finetune.TEACHER: {"params": teacher_params}}
        return TrainState.create(params=params, tx=tx, rng=setup.train_key, model_state=model_state)

    def init_from(state: TrainState, path: str) -> TrainState:
        del path  # loaded once by make_teacher
        params, model_state = finetune.graft_pretrained(
            state.params, state.model_state, teacher.params
        )
        return state.replace(params=params, model_state=model_state, opt_state=tx.init(params))

    train_step = functools.partial(
        finetune.train_step, model=model, tx=tx, loss_fn=heads.loss_fn,
        learning_rate_fn=optimizers.learning_rate_fn(config.optimizer),
        source_frames=setup.source_frames,
    )  # fmt: skip
    eval_step = functools.partial(
        finetune.eval_step, model=model, sums_fn=heads.sums_fn,
        source_frames=setup.source_frames, naive=setup.naive,
    )  # fmt: skip
    architecture = {"model_class": name, "num_neurons": setup.num_neurons,
                    "params": finetune.param_shapes(params_shape)}  # fmt: skip
    if teacher is not None:
        architecture["num_classes"] = teacher.classes.num_classes
    task = loop.Task(
        name="forecast",
        init_state=init_state,
        train_step=train_step,
        eval_step=eval_step,
        train_batches=(lambda e, s: iter(())) if setup.naive else setup.train_batches,
        eval_batches=setup.eval_batches,
        architecture=architecture,
        summarize=summarize,
        selection_metric=SELECTION_METRIC,
        selection_mode="min",
        steps_per_epoch=0 if setup.naive else setup.steps_per_epoch(),
        init_from=init_from if teacher is not None else None,
    )
    return finetune.Trainer(setup=setup, task=task, heads=heads, model=model,
                            summarize_full=summarize_full)  # fmt: skip


# --- Public API ---------------------------------------------------------------------------------


def evaluate_checkpoint(
    config: ml_collections.ConfigDict,
    workdir: str,
    split: str = "test",
    *,
    best: bool = True,
    dataset: datasets.ExperimentDataset | None = None,
) -> dict[str, Any]:
    """Metrics of a forecasting workdir's selected (best `val_mse`) or latest checkpoint.

    Returns:
        Metric name -> float, or np.ndarray for `*_step` [F] / `*_neuron` [N] vectors.
    """
    trainer, state = finetune.load_run(build, config, workdir, best=best, dataset=dataset)
    return trainer.evaluate(state, split)


def predict(
    config: ml_collections.ConfigDict,
    workdir: str,
    split: str = "test",
    *,
    best: bool = True,
    dataset: datasets.ExperimentDataset | None = None,
) -> dict[str, np.ndarray]:
    """Forecasts of a split (valid windows only, in time order) from a workdir's checkpoint.

    Returns:
        dict(forecast, target [W, N, F], source [W, N, S], labels [W, N], condition_id [W]) and,
        for QuantCoder, quantized [W, N, F], pred_classes / target_classes [W, N, F // P],
        codes [W, N, L] (the teacher's), code_logits [W, N, F // P, C], window [W, N, T] and
        teacher_source_forecast [W, N, F].
    """
    trainer, state = finetune.load_run(build, config, workdir, best=best, dataset=dataset)
    return trainer.predict(state, split)


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str,
    dataset: datasets.ExperimentDataset | None = None,
) -> dict[str, Any]:
    """Trains (resuming what the workdir holds) and evaluates the selected checkpoint on test.

    Returns:
        The loop's last `val_*` / final-state `test_*` scalars, plus `selected_test_*` (the best
        `val_mse` checkpoint on the test split, also written to `workdir/test_metrics.json`)
        and, in faithful mode, `faithful_best_test_*`.
    """
    trainer = build(config, workdir, dataset)
    return finetune.run_and_test(trainer, config, workdir, FAITHFUL_BEST)
