"""Activation classification trainer (task 'classify'): QuantCoder CLS mode and the baselines.

Will neuron n respond to the upcoming stimulus (the tsai_wen label of the window, REFERENCE 1.8),
given its S source frames, the stimulus features and its identity? Every classifier of
`models/registry.py` returns {"logits": [B, N, 2]} and is trained with the unweighted
cross-entropy (REFERENCE 3.3, 4.3; single-logit BCE models return [0, l], which is the same
loss). The LSTM classifier's BatchNorm statistics ('batch_stats') are updated in train mode and
its running averages used in evaluation. `majority` takes no train step.

Metrics (metrics.py): accuracy, precision, recall, f1 (positive = active) and balanced accuracy
over all (window, neuron) pairs of a split. Selection: best `val_balanced_accuracy`; the selected
checkpoint is evaluated once on the test split (`workdir/test_metrics.json`); faithful mode also
logs the original's best-over-epochs test numbers (`faithful_best_test_*`).

QuantCoder: `config.init_from` (a pretraining workdir) initialises the encoder (and the frozen
codebook when the model has one); the teacher is not built (REFERENCE F15).
`config.freeze_encoder` freezes only the pretrained encoder weights (F13).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from quantformer_jax import metrics
from quantformer_jax.data import datasets
from quantformer_jax.models import registry, tokenizer
from quantformer_jax.training import finetune, loop, losses, optimizers
from quantformer_jax.training.train_state import TrainState

SELECTION_METRIC = "val_balanced_accuracy"
FAITHFUL_BEST = {"accuracy": "max", "precision": "max", "recall": "max", "f1": "max",
                 "balanced_accuracy": "max"}  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Heads:
    """Cross-entropy loss, argmax prediction and binary confusion counts."""

    def loss_fn(self, out, batch, model_state) -> jax.Array:
        del model_state
        logits = _logits(out)
        return losses.cross_entropy(logits, batch["labels"], valid=batch["valid"][:, None])

    def decode(self, out, batch, model_state) -> dict[str, jax.Array]:
        del batch, model_state
        logits = _logits(out)
        return {"logits": logits, "pred": jnp.argmax(logits, axis=-1).astype(jnp.int32)}

    def sums_fn(self, out, batch, model_state) -> dict[str, Any]:
        pred = self.decode(out, batch, model_state)["pred"]
        return {
            "loss": finetune.loss_pair(self.loss_fn(out, batch, model_state), batch),
            "binary": metrics.binary_counts(pred, batch["labels"], batch["valid"]),
        }


def _logits(out: Mapping[str, jax.Array]) -> jax.Array:
    if "logits" not in out:
        raise ValueError(f"a classifier must return 'logits' [B, N, 2], got keys {sorted(out)}")
    logits = out["logits"]
    if logits.ndim != 3 or logits.shape[-1] != 2:
        raise ValueError(f"classifier logits must be [B, N, 2], got {logits.shape}")
    return logits


def summarize_full(sums: Mapping[str, Any]) -> dict[str, Any]:
    """Loss plus accuracy, precision, recall, f1, balanced_accuracy, count, positives."""
    out: dict[str, Any] = loop.summarize_pairs(sums)
    if "binary" in sums:  # evaluation only (train steps log the loss and norms)
        out.update(metrics.finalize(sums["binary"]))
    return out


def summarize(sums: Mapping[str, Any]) -> dict[str, float]:
    return finetune.scalars_only(summarize_full(sums))


def build(
    config: ml_collections.ConfigDict,
    workdir: str | None = None,
    dataset: datasets.ExperimentDataset | None = None,
) -> finetune.Trainer:
    """Builds the classification run of `config` (loads the data and the model)."""
    del workdir  # nothing is cached per workdir for classification
    if config.task != "classify":
        raise ValueError(
            f"config.task={config.task!r}: the classification trainer needs 'classify'"
        )
    setup = finetune.make_setup(config, dataset)
    name = setup.model_name
    if config.init_from and name != "quantcoder":
        raise ValueError(f"config.init_from is only used by model_class=quantcoder, not {name!r}")
    model = registry.model_from_config(config, setup.num_neurons)
    if setup.naive:
        model = model.fit(setup.dataset.splits["train"])
    heads = Heads()
    freeze = ("encoder",) if config.get("freeze_encoder", False) and name == "quantcoder" else ()
    make_variables = functools.partial(
        finetune.init_variables, model, setup.sample_inputs(), setup.init_key
    )
    params_shape, _ = jax.eval_shape(make_variables)  # a resumed run never compiles the init
    tx = finetune.create_optimizer(config, params_shape, freeze)

    def init_state() -> TrainState:
        params, model_state = make_variables()
        return TrainState.create(params=params, tx=tx, rng=setup.train_key, model_state=model_state)

    def init_from(state: TrainState, path: str) -> TrainState:
        del path
        tok_config = tokenizer.TokenizerConfig.from_config(config.model)
        pretrained, _ = finetune.load_pretrained(config, tok_config)
        params, model_state = finetune.graft_pretrained(state.params, state.model_state, pretrained)
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
    task = loop.Task(
        name="classify",
        init_state=init_state,
        train_step=train_step,
        eval_step=eval_step,
        train_batches=(lambda e, s: iter(())) if setup.naive else setup.train_batches,
        eval_batches=setup.eval_batches,
        architecture={
            "model_class": name,
            "num_neurons": setup.num_neurons,
            "params": finetune.param_shapes(params_shape),
        },  # fmt: skip
        summarize=summarize,
        selection_metric=SELECTION_METRIC,
        selection_mode="max",
        steps_per_epoch=0 if setup.naive else setup.steps_per_epoch(),
        init_from=init_from if name == "quantcoder" else None,
    )
    return finetune.Trainer(setup=setup, task=task, heads=heads, model=model,
                            summarize_full=summarize_full)  # fmt: skip


def evaluate_checkpoint(
    config: ml_collections.ConfigDict,
    workdir: str,
    split: str = "test",
    *,
    best: bool = True,
    dataset: datasets.ExperimentDataset | None = None,
) -> dict[str, Any]:
    """Metrics of a classification workdir's selected (best val balanced accuracy) checkpoint."""
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
    """Predictions of a split (valid windows, time order): logits [W, N, 2], pred, labels
    [W, N], source [W, N, S], target [W, N, F], condition_id [W]."""
    trainer, state = finetune.load_run(build, config, workdir, best=best, dataset=dataset)
    return trainer.predict(state, split)


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str,
    dataset: datasets.ExperimentDataset | None = None,
) -> dict[str, Any]:
    """Trains (resuming what the workdir holds), then evaluates the selected checkpoint on test.

    Returns:
        The loop's `val_*` / final-state `test_*` scalars plus `selected_test_*` (also in
        `workdir/test_metrics.json`) and, in faithful mode, `faithful_best_test_*`.
    """
    trainer = build(config, workdir, dataset)
    return finetune.run_and_test(trainer, config, workdir, FAITHFUL_BEST)
