"""QuantFormer tokenizer pretraining: pure train/eval steps, metrics, plots, `train_and_evaluate`.

REFERENCE.md sections 2.5-2.6 with the decisions of section 7:
* loss = recon + vq + beta * commit + masked recon on masked-input rows (P3), every term logged
  together with the true total (P7);
* dead-code replacement after the optimizer update, inside the train step only (P9, P10), with
  the key of that step; the Adam moments of replaced codes are kept (faithful to torch);
* selection by validation reconstruction MSE on unmasked input (P5, D8), final test evaluation;
* Pearson r signed and |r| reported separately, constant series guarded (P13);
* codebook health from code histograms summed over the whole logging window / split.

Rows are neuron-trials flattened by `pipeline.pretraining_batches` and padded to a bucket size
(`row_valid`); padded rows count nowhere. On the pmap path each device sees its rows: the mask is
drawn for the global batch and sliced, and the dead-code update sees the gathered global batch,
so both parallel paths reproduce one device.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from quantformer_jax import checkpointing, metrics, parallel
from quantformer_jax.data import datasets, pipeline
from quantformer_jax.metric_writer import MetricWriter, figure_to_image
from quantformer_jax.models import masking, tokenizer, vector_quantizer
from quantformer_jax.training import accumulation, loop, losses, optimizers
from quantformer_jax.training.train_state import TrainState, norm_metrics, split_variables

SELECTION_METRIC = "val_recon_mse"


@dataclasses.dataclass(frozen=True)
class LossSettings:
    """The pretraining objective (from `config.model`)."""

    mask_ratio: float = 0.2
    masking: str = "random"  # random | causal | peaks
    beta: float = 1.0
    vq_loss: str = "reference"  # reference | textbook

    @classmethod
    def from_config(cls, model_cfg: ml_collections.ConfigDict) -> LossSettings:
        return cls(
            mask_ratio=float(model_cfg.mask_ratio),
            masking=str(model_cfg.masking),
            beta=float(model_cfg.beta),
            vq_loss=str(model_cfg.vq_loss),
        )


def _patch_mask(key: jax.Array, patches: jax.Array, settings: LossSettings, axis_name):
    """The mask of this device's rows, drawn for the global batch (pmap = one device)."""
    global_patches = parallel.all_gather(patches, axis_name)
    mask = masking.make_patch_mask(settings.masking, key, global_patches, settings.mask_ratio)
    return None if mask is None else parallel.local_rows(mask, axis_name)


def _recon_sums(
    recon: jax.Array,
    patches: jax.Array,
    row_valid: jax.Array,
    labels: jax.Array,
    codes: jax.Array,
    num_codes: int,
) -> dict[str, Any]:
    """Reconstruction quality and code usage as (sum, count) pairs and a code histogram.

    `pearson_active` is restricted to active neuron-trials (label 1): inactive rows are mostly
    recording noise, which bounds the all-row Pearson of any reconstruction through the codebook.
    """
    pred, target = masking.unpatchify(recon), masking.unpatchify(patches)  # [M, T]
    valid = row_valid.astype(jnp.float32)
    sse = jnp.sum(jnp.sum(jnp.square(pred - target), axis=-1) * valid)
    r, degenerate = metrics.pearson_per_series(pred, target)  # [M]
    ok = (row_valid & ~degenerate).astype(jnp.float32)
    active = ok * (labels == 1)
    n_rows = jnp.sum(valid)
    return {
        "recon_mse": (sse, n_rows * target.shape[-1]),
        "pearson": (jnp.sum(r * ok), jnp.sum(ok)),
        "pearson_active": (jnp.sum(r * active), jnp.sum(active)),
        "abs_pearson": (jnp.sum(jnp.abs(r) * ok), jnp.sum(ok)),
        "constant_rows": (jnp.sum(degenerate * valid), n_rows),
        "code_hist": vector_quantizer.code_histogram(codes, num_codes, row_valid),
    }


def train_step(
    state: TrainState,
    batch: Mapping[str, jax.Array],
    *,
    model: tokenizer.VQTokenizer,
    tx: Any,
    settings: LossSettings,
    learning_rate_fn: Any,
    chunk_rows: int = 0,
    axis_name: str | None = None,
) -> tuple[TrainState, dict[str, Any]]:
    """One masked-autoencoding update, then dead-code replacement (pure; jit or pmap).

    Args:
        state: the train state (params, Adam state, {'vq_state': counters}).
        batch: x float32 [M, T], row_valid bool [M], labels int32 [M] (this device's rows on
            the pmap path).
        model: the tokenizer.
        tx: the optimizer.
        settings: mask ratio/kind, beta and VQ-loss variant.
        learning_rate_fn: step -> learning rate (logged).
        chunk_rows: >0: forward + backward over chunks of about this many rows, gradients
            summed (`config.training.chunk_rows`, training/accumulation.py); 0 = all at once.
        axis_name: the pmap axis, None when the step sees the global batch.

    Returns:
        (new state, metrics as (sum, count) pairs and a code histogram, reduced over devices).
    """
    config = model.config
    keys = state.step_keys(("mask", "replace", "dropout"))
    row_valid = batch["row_valid"]
    patches = masking.patchify(batch["x"], config.patch_len)  # [M, T] -> [M, L, P]
    mask = _patch_mask(keys["mask"], patches, settings, axis_name)  # [M, L] True = masked

    den = losses.tokenizer_loss_denominators(patches, mask, row_valid, config.d_model)
    chunks = accumulation.num_chunks(patches.shape[0], chunk_rows)

    def loss_fn(params, rows, index):
        variables = {"params": params, **state.model_state}
        # One chunk: the step's key itself, so chunk_rows=0 draws the same dropout as before.
        dropout_key = keys["dropout"] if chunks == 1 else jax.random.fold_in(keys["dropout"], index)
        out = model.apply(
            variables, rows["patches"], rows["mask"], train=True, rngs={"dropout": dropout_key}
        )
        total, terms = losses.tokenizer_losses(
            out, rows["patches"], rows["mask"], rows["row_valid"], beta=settings.beta,
            vq_loss=settings.vq_loss, denominators=den,
        )  # fmt: skip
        return total, (terms, {k: out[k] for k in ("z_e", "codes", "recon")})

    inputs = {"patches": patches, "mask": mask, "row_valid": row_valid}
    _, grads, terms, out = accumulation.chunked_value_and_grad(
        loss_fn, state.params, inputs, chunks
    )
    # Every loss term is a mean over valid rows (fixed tokens per row): row-weighting the device
    # means gives the global mean exactly.
    grads, terms = parallel.weighted_mean((grads, terms), jnp.sum(row_valid), axis_name)
    new_state, updates = state.apply_gradients(grads, tx=tx)

    # Dead codes are re-seeded from the global batch's encoder outputs, identically on all devices.
    params, vq_state = tokenizer.update_dead_codes(
        config,
        new_state.params,
        new_state.model_state["vq_state"],
        parallel.all_gather(out["z_e"], axis_name),
        parallel.all_gather(out["codes"], axis_name),
        parallel.all_gather(row_valid, axis_name),
        keys["replace"],
    )
    old_codebook = new_state.params["quantizer"]["codebook"]
    replaced = jnp.sum(jnp.any(params["quantizer"]["codebook"] != old_codebook, axis=-1))
    new_state = new_state.replace(
        params=params, model_state={**new_state.model_state, "vq_state": vq_state}
    )

    one = jnp.ones((), jnp.float32)
    sums = _recon_sums(
        out["recon"], patches, row_valid, batch["labels"], out["codes"], config.codebook_size
    )
    step_metrics = {
        **{name: (value, one) for name, value in terms.items()},
        **parallel.psum(sums, axis_name),
        **norm_metrics(
            grads=grads,
            params=new_state.params,
            updates=updates,
            learning_rate=learning_rate_fn(state.step),
        ),
        "replaced_codes": (replaced.astype(jnp.float32), one),
    }
    return new_state, step_metrics


def eval_step(
    state: TrainState,
    batch: Mapping[str, jax.Array],
    *,
    model: tokenizer.VQTokenizer,
    settings: LossSettings,
    axis_name: str | None = None,
) -> dict[str, Any]:
    """Unmasked reconstruction of a batch (no dead-code bookkeeping): summed metrics."""
    config = model.config
    row_valid = batch["row_valid"]
    patches = masking.patchify(batch["x"], config.patch_len)
    out = model.apply({"params": state.params, **state.model_state}, patches, None, train=False)
    _, terms = losses.tokenizer_losses(
        out, patches, None, row_valid, beta=settings.beta, vq_loss=settings.vq_loss
    )
    n_rows = jnp.sum(row_valid).astype(jnp.float32)
    # No mask at evaluation; recon_loss is recon_mse (reported below).
    skip = ("masked_recon_loss", "recon_loss")
    sums = {k: (v * n_rows, n_rows) for k, v in terms.items() if k not in skip}
    sums.update(
        _recon_sums(
            out["recon"], patches, row_valid, batch["labels"], out["codes"], config.codebook_size
        )
    )
    return parallel.psum(sums, axis_name)


def summarize(sums: Mapping[str, Any]) -> dict[str, float]:
    """Host-side scalars: pair ratios plus codebook usage, perplexity and max-code share."""
    scalars = loop.summarize_pairs(sums)
    if "code_hist" in sums:
        hist = np.asarray(sums["code_hist"], np.float64)
        total = max(hist.sum(), 1.0)
        probs = hist[hist > 0] / total
        scalars["codebook_usage"] = float(np.mean(hist > 0))
        scalars["codebook_perplexity"] = float(np.exp(-np.sum(probs * np.log(probs))))
        scalars["max_code_ratio"] = float(hist.max() / total)
    return scalars


def create_model(config: ml_collections.ConfigDict) -> tokenizer.VQTokenizer:
    return tokenizer.VQTokenizer(tokenizer.TokenizerConfig.from_config(config.model))


def seeds(seed: int) -> tuple[jax.Array, int, jax.Array]:
    """`config.seed` split once into (init key, data seed for the numpy pipeline, train key)."""
    init_key, data_key, train_key = jax.random.split(jax.random.PRNGKey(seed), 3)
    data_seed = int(jax.random.randint(data_key, (), 0, np.iinfo(np.int32).max))
    return init_key, data_seed, train_key


def init_state(
    model: tokenizer.VQTokenizer, tx: Any, init_key: jax.Array, train_key: jax.Array
) -> TrainState:
    """The step-0 state (jitted init: one compiled program instead of many eager ops)."""
    c = model.config

    @jax.jit
    def init():
        dummy = jnp.zeros((1, c.num_patches, c.patch_len), jnp.float32)
        params, model_state = split_variables(model.init({"params": init_key}, dummy, train=False))
        return TrainState.create(params=params, tx=tx, rng=train_key, model_state=model_state)

    return init()


def architecture(model: tokenizer.VQTokenizer) -> dict[str, Any]:
    """The dict stored in checkpoints and compared on restore."""
    return {"model": "VQTokenizer", **dataclasses.asdict(model.config)}


class ReconstructionPlotter:
    """`Task.on_eval`: original vs reconstruction of fixed rows of each split, as an image."""

    def __init__(self, model, eval_batches, num_examples: int, seed: int):
        self._model = model
        self._eval_batches = eval_batches
        self._num = num_examples
        self._seed = seed
        self._rows: dict[str, np.ndarray] = {}
        self._recon = jax.jit(
            lambda params, model_state, x: masking.unpatchify(
                model.apply(
                    {"params": params, **model_state},
                    masking.patchify(x, model.config.patch_len),
                    None,
                    train=False,
                )["recon"]
            )
        )

    def _fixed_rows(self, split: str) -> np.ndarray:
        if split not in self._rows:
            batch = next(iter(self._eval_batches(split)))
            valid = np.flatnonzero(batch["row_valid"])
            pick = np.random.RandomState(self._seed).permutation(valid)[: self._num]
            self._rows[split] = batch["x"][np.sort(pick)]
        return self._rows[split]

    def __call__(self, state: TrainState, split: str, step: int, writer: MetricWriter) -> None:
        if not self._num or not writer.enabled:
            return
        x = self._fixed_rows(split)
        recon = np.asarray(self._recon(state.params, state.model_state, x))
        writer.write_images(step, {f"{split}_reconstructions": plot_traces(x, recon, step)})


def plot_traces(x: np.ndarray, recon: np.ndarray, step: int) -> np.ndarray:
    """A grid of original (black) vs reconstructed (red) rows [n, T] -> uint8 image."""
    from matplotlib.figure import Figure

    n = len(x)
    cols = min(4, n)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(3 * cols, 1.8 * rows))
    for i in range(n):
        ax = fig.add_subplot(rows, cols, i + 1)
        ax.plot(x[i], color="black", lw=0.8, label="original")
        ax.plot(recon[i], color="tab:red", lw=0.8, label="reconstruction")
        ax.set_xticks([])
    fig.suptitle(f"step {step}: original (black) vs reconstruction (red)", fontsize=9)
    fig.tight_layout()
    return figure_to_image(fig)


def _init_from(tx, template_fn):
    """`config.init_from` for pretraining: continue from another run's best params (new Adam)."""

    def init_from(state: TrainState, path: str) -> TrainState:
        restored, _ = checkpointing.restore_pretrained(
            path, lambda meta: checkpointing.abstract_like(template_fn())
        )
        return state.replace(
            params=restored.params,
            model_state=restored.model_state,
            opt_state=tx.init(restored.params),
        )

    return init_from


def make_task(
    config: ml_collections.ConfigDict, dataset: datasets.PretrainingDataset | None = None
) -> loop.Task:
    """The pretraining `loop.Task` for `config` (loads the dataset unless one is given)."""
    model = create_model(config)
    tx = optimizers.create_optimizer(config.optimizer)
    settings = LossSettings.from_config(config.model)
    init_key, data_seed, train_key = seeds(config.seed)
    if dataset is None:
        dataset = datasets.load_pretraining_dataset(config.data)
    logging.info("Pretraining data: %s", dataset.summary)
    splits = dataset.splits
    batch_windows = config.training.batch_size
    buckets = tuple(config.data.row_buckets)
    balance = bool(config.data.balance_pretraining)

    def train_batches(epoch: int, start_step: int):
        return pipeline.pretraining_batches(
            splits["train"], batch_windows, seed=data_seed, epoch=epoch, shuffle=True,
            balance=balance, buckets=buckets, start_step=start_step,
        )  # fmt: skip

    def eval_batches(split: str):
        return pipeline.pretraining_batches(
            splits[split], batch_windows, seed=data_seed, epoch=0, shuffle=False,
            balance=False, buckets=buckets,
        )  # fmt: skip

    plan = pipeline.pretraining_plan(
        splits["train"], batch_windows, seed=data_seed, epoch=0, shuffle=True, balance=balance,
        buckets=buckets,
    )  # fmt: skip
    logging.info("Epoch 0: %d steps, %d empty groups skipped, %d groups split",
                 plan.num_steps, plan.skipped_empty, plan.split_groups)  # fmt: skip
    template = functools.partial(init_state, model, tx, init_key, train_key)
    return loop.Task(
        name="pretrain",
        init_state=template,
        train_step=functools.partial(
            train_step,
            model=model,
            tx=tx,
            settings=settings,
            learning_rate_fn=optimizers.learning_rate_fn(config.optimizer),
            chunk_rows=accumulation.resolve_chunk_rows(config.training.chunk_rows),
        ),
        eval_step=functools.partial(eval_step, model=model, settings=settings),
        train_batches=train_batches,
        eval_batches=eval_batches,
        architecture=architecture(model),
        summarize=summarize,
        selection_metric=SELECTION_METRIC,
        selection_mode="min",
        batch_key="data.row_buckets",
        batch_sizes=buckets,
        steps_per_epoch=plan.num_steps,
        init_from=_init_from(tx, template),
        on_eval=ReconstructionPlotter(
            model, eval_batches, config.training.num_plot_examples, config.seed
        ),
    )


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Pretrains the tokenizer of `config` in `workdir` (resuming what is there).

    Returns:
        The last validation and the final test scalars (`val_recon_mse`, `test_pearson`, ...).
    """
    return loop.run(make_task(config), config, workdir)
