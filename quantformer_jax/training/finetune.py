"""Plumbing shared by the forecasting and classification trainers (one experiment, fixed N).

Both trainers run every model of `models/registry.py` (QuantCoder, the trained baselines and the
parameter-free ones) through the same pure steps; what differs per task is only the loss and the
metric sums, which the trainers pass in:

* `loss_fn(outputs, batch, model_state) -> scalar` (a mean over the batch's valid windows);
* `sums_fn(outputs, batch, model_state) -> pytree of sums` (metrics.py sums, added over batches).

Variables: `TrainState.params` are the trainable 'params'; `model_state` holds the model's other
collections ('batch_stats' of BatchNorm models, updated in train mode, running averages in eval;
a frozen QuantCoder codebook) and, for forecasting, the frozen teacher tokenizer under 'teacher',
which the model never sees. Train steps draw dropout (and Informer's key sampling) from
`fold_in(rng, step)`.

Batches (`pipeline.window_batches`) carry x [B, N, T]; the model gets `src` = the first S frames,
`stim`, and `future` = the last F frames only in train mode (teacher forcing). Padded windows
(valid=False) count in no loss or metric; they do enter BatchNorm batch statistics of the last
partial batch of an epoch (the model has no mask input).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from quantformer_jax import checkpointing, parallel
from quantformer_jax.data import datasets, pipeline
from quantformer_jax.models import registry
from quantformer_jax.training import loop, optimizers
from quantformer_jax.training.train_state import TrainState, norm_metrics, split_variables

PyTree = Any
TEACHER = "teacher"  # model_state key of the frozen teacher variables (never given to the model)
MUTABLE_COLLECTIONS = ("batch_stats",)  # updated by train-mode applies
TEST_METRICS_FILE = "test_metrics.json"


def seeds(seed: int) -> tuple[jax.Array, int, jax.Array]:
    """`config.seed` split once into (init key, data seed for the numpy pipeline, train key)."""
    init_key, data_key, train_key = jax.random.split(jax.random.PRNGKey(seed), 3)
    data_seed = int(jax.random.randint(data_key, (), 0, np.iinfo(np.int32).max))
    return init_key, data_seed, train_key


def model_inputs(
    batch: Mapping[str, jax.Array], source_frames: int, *, train: bool, naive: bool = False
) -> dict[str, jax.Array]:
    """The model's inputs from a window batch: src [B, N, S], stim [B, D] (+ future if train).

    The future frames are only passed in train mode (teacher forcing): evaluation can never read
    them. Naive models also get `condition_id` (the per-condition train average).
    """
    x = batch["x"]  # [B, N, T]
    inputs = {"src": x[..., :source_frames], "stim": batch["stim"]}
    if train:
        inputs["future"] = x[..., source_frames:]
    if naive:
        inputs["condition_id"] = batch["condition_id"]
    return inputs


def student_state(model_state: Mapping[str, Any]) -> dict[str, Any]:
    """The model's own non-trainable collections (the teacher stays outside)."""
    return {k: v for k, v in model_state.items() if k != TEACHER}


def apply_model(
    model: Any,
    params: PyTree,
    model_state: Mapping[str, Any],
    inputs: Mapping[str, jax.Array],
    *,
    train: bool,
    key: jax.Array | None = None,
) -> tuple[dict[str, jax.Array], dict[str, Any]]:
    """Runs the model; returns (outputs, updated mutable collections) ({} in eval mode)."""
    variables = {"params": params, **student_state(model_state)}
    if not train:
        return model.apply(variables, inputs, train=False), {}
    mutable = [c for c in MUTABLE_COLLECTIONS if c in model_state]
    rngs = {"dropout": key} if key is not None else None
    if mutable:
        return model.apply(variables, inputs, train=True, rngs=rngs, mutable=mutable)
    return model.apply(variables, inputs, train=True, rngs=rngs), {}


def init_variables(
    model: Any, sample_inputs: Mapping[str, np.ndarray], key: jax.Array
) -> tuple[PyTree, dict[str, Any]]:
    """(params, other collections) of a fresh model for the sample batch's shapes (jitted)."""
    if isinstance(model, registry.NaiveModel):
        return {}, {}
    params_key, dropout_key = jax.random.split(key)

    @jax.jit
    def init(inputs):
        return model.init({"params": params_key, "dropout": dropout_key}, inputs, train=False)

    return split_variables(init(dict(sample_inputs)))


def train_step(
    state: TrainState,
    batch: Mapping[str, jax.Array],
    *,
    model: Any,
    tx: Any,
    loss_fn: Callable[..., jax.Array],
    learning_rate_fn: Callable[[jax.Array], jax.Array],
    source_frames: int,
    axis_name: str | None = None,
) -> tuple[TrainState, dict[str, Any]]:
    """One optimizer update on a window batch (pure; jit or pmap).

    Args:
        state: the train state.
        batch: x [B, N, T], stim [B, D], labels [B, N], condition_id [B], valid [B].
        model: the model (flax module).
        tx: the optimizer.
        loss_fn: `(outputs, batch, model_state) -> scalar` mean over the valid windows.
        learning_rate_fn: step -> learning rate (logged).
        source_frames: S.
        axis_name: the pmap axis, None on the jit path.

    Returns:
        (new state, metrics as (sum, count) pairs).
    """
    keys = state.step_keys(("dropout",))
    inputs = model_inputs(batch, source_frames, train=True)

    def objective(params):
        out, updated = apply_model(
            model, params, state.model_state, inputs, train=True, key=keys["dropout"]
        )
        return loss_fn(out, batch, state.model_state), updated

    (loss, updated), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
    windows = jnp.sum(batch["valid"]).astype(jnp.float32)
    # Losses are means over valid windows: window-weighting the device means gives the global one.
    grads, loss, updated = parallel.weighted_mean((grads, loss, updated), windows, axis_name)
    new_state, updates = state.apply_gradients(grads, tx=tx)
    new_state = new_state.replace(model_state={**state.model_state, **updated})
    total = parallel.psum(windows, axis_name)
    step_metrics = {
        "loss": (loss * total, total),
        **norm_metrics(
            grads=grads,
            params=new_state.params,
            updates=updates,
            learning_rate=learning_rate_fn(state.step),
        ),
    }
    return new_state, step_metrics


def eval_step(
    state: TrainState,
    batch: Mapping[str, jax.Array],
    *,
    model: Any,
    sums_fn: Callable[..., PyTree],
    source_frames: int,
    naive: bool = False,
    axis_name: str | None = None,
) -> PyTree:
    """Metric sums of one batch in eval mode (never reads the future frames)."""
    inputs = model_inputs(batch, source_frames, train=False, naive=naive)
    out, _ = apply_model(model, state.params, state.model_state, inputs, train=False)
    return parallel.psum(sums_fn(out, batch, state.model_state), axis_name)


def loss_pair(loss: jax.Array, batch: Mapping[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
    """(loss * valid windows, valid windows): a window-weighted mean after summing."""
    windows = jnp.sum(batch["valid"]).astype(jnp.float32)
    return loss * windows, windows


@dataclasses.dataclass
class Setup:
    """What both trainers build from the config before making their `loop.Task`."""

    config: ml_collections.ConfigDict
    dataset: datasets.ExperimentDataset
    model_name: str
    naive: bool
    init_key: jax.Array
    data_seed: int
    train_key: jax.Array

    @property
    def source_frames(self) -> int:
        return int(self.config.data.source_frames)

    @property
    def num_neurons(self) -> int:
        return int(self.dataset.num_neurons)

    def sample_inputs(self) -> dict[str, np.ndarray]:
        batch = next(self.eval_batches("val" if len(self.dataset.splits["val"]) else "train"))
        return model_inputs(batch, self.source_frames, train=False, naive=self.naive)

    def train_batches(self, epoch: int, start_step: int) -> Iterable[dict[str, np.ndarray]]:
        return pipeline.window_batches(
            self.dataset.splits["train"], self.config.training.batch_size, seed=self.data_seed,
            epoch=epoch, shuffle=True, start_step=start_step,
        )  # fmt: skip

    def eval_batches(self, split: str) -> Iterable[dict[str, np.ndarray]]:
        if split not in self.dataset.splits:
            raise ValueError(f"unknown split {split!r}; known: {sorted(self.dataset.splits)}")
        return pipeline.window_batches(
            self.dataset.splits[split], self.config.training.batch_size, seed=self.data_seed,
            epoch=0, shuffle=False,
        )  # fmt: skip

    def steps_per_epoch(self) -> int:
        train = self.dataset.splits["train"]
        return pipeline.num_batches(len(train), self.config.training.batch_size)


def make_setup(
    config: ml_collections.ConfigDict, dataset: datasets.ExperimentDataset | None = None
) -> Setup:
    """Checks the model/task pair and loads the experiment (unless one is given)."""
    name = str(config.model_class)
    registry.check_model_class(name, str(config.task))
    if dataset is None:
        dataset = datasets.load_experiment_dataset(config.data)
    for split in ("train", "val", "test"):
        if len(dataset.splits[split]) == 0:
            raise ValueError(
                f"experiment {dataset.experiment_id}: the {split} split has no windows "
                "(config key data.val_fraction controls the validation carve-out)"
            )
    logging.info("Experiment %d: %d neurons; %s", dataset.experiment_id, dataset.num_neurons,
                 {s: len(v) for s, v in dataset.splits.items()})  # fmt: skip
    init_key, data_seed, train_key = seeds(int(config.seed))
    return Setup(
        config=config,
        dataset=dataset,
        model_name=name,
        naive=registry.is_naive(name),
        init_key=init_key,
        data_seed=data_seed,
        train_key=train_key,
    )


def create_optimizer(
    config: ml_collections.ConfigDict, params: PyTree, frozen_prefixes: tuple[str, ...] = ()
) -> Any:
    """torch-style Adam with coupled L2 on the trainable params only (REFERENCE F18)."""
    trainable = optimizers.trainable_mask(params, frozen_prefixes) if frozen_prefixes else None
    return optimizers.create_optimizer(config.optimizer, trainable=trainable)


def naive_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A copy of the config with one epoch: parameter-free models take no train steps."""
    config = ml_collections.ConfigDict(config.to_dict())
    config.training.num_epochs = 1
    return config


# --- Evaluation outside the loop (selected checkpoint, faithful best-test tracking) ------------


def evaluate_split(
    eval_fn: Callable[[TrainState, dict], PyTree],
    state: TrainState,
    batches: Iterable[dict[str, np.ndarray]],
    max_steps: int = 0,
) -> PyTree:
    """Summed metrics of a split with a compiled single-device `eval_fn(state, batch)`."""
    acc = loop.MetricAccumulator()
    for i, batch in enumerate(batches):
        if max_steps and i >= max_steps:
            break
        acc.add(eval_fn(state, batch))
    sums = acc.reduce()
    if sums is None:
        raise ValueError("the split produced no evaluation batches")
    return sums


def compile_eval(step_fn: Callable[..., PyTree]) -> Callable[[TrainState, dict], PyTree]:
    return jax.jit(functools.partial(step_fn, axis_name=None))


def restore_selected(task: loop.Task, workdir: str, *, best: bool = True) -> TrainState:
    """The selected (best by validation) or latest state of a finished or running workdir.

    Raises:
        FileNotFoundError: the workdir holds no such checkpoint.
    """
    ckpt = checkpointing.Checkpointer(
        workdir,
        architecture=task.architecture,
        best_metric=task.selection_metric,
        best_mode=task.selection_mode,
    )
    try:
        target = checkpointing.abstract_like(jax.eval_shape(task.init_state))
        restored = ckpt.restore(target, best=best)
        if restored is None and best:
            restored = ckpt.restore(target)
    finally:
        ckpt.close()
    if restored is None:
        raise FileNotFoundError(f"no checkpoint in {os.path.join(workdir, 'checkpoints')}")
    return restored[0]


def load_run(
    build: Callable[..., Trainer],
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    best: bool = True,
    dataset: datasets.ExperimentDataset | None = None,
) -> tuple[Trainer, TrainState]:
    """A finetuning workdir's trainer and selected (or latest) state, for evaluation.

    The checkpoint holds every finetuned weight (and the forecasting teacher), so the pretraining
    run of `config.init_from` is not read again.
    """
    config = ml_collections.ConfigDict(config.to_dict())
    config.init_from = ""
    trainer = build(config, workdir, dataset)
    return trainer, restore_selected(trainer.task, workdir, best=best)


def to_json(value: Any) -> Any:
    """numpy arrays/scalars -> lists/floats (NaN/inf kept as JSON's NaN/Infinity)."""
    if isinstance(value, Mapping):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, list | tuple):
        return [to_json(v) for v in value]
    return value


def write_json(workdir: str, name: str, payload: Mapping[str, Any]) -> str:
    """Writes `workdir/name` atomically (process 0 only); returns the path."""
    path = os.path.join(workdir, name)
    if parallel.is_main_process():
        os.makedirs(workdir, exist_ok=True)
        with open(path + ".tmp", "w") as f:
            json.dump(to_json(payload), f, indent=1, sort_keys=True)
        os.replace(path + ".tmp", path)
    return path


def read_json(workdir: str, name: str) -> dict[str, Any] | None:
    path = os.path.join(workdir, name)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def scalars_only(values: Mapping[str, Any]) -> dict[str, float]:
    """The float/int entries of a metrics dict (vectors such as `mae_step` are left out)."""
    return {
        k: float(v)
        for k, v in values.items()
        if isinstance(v, int | float | np.integer | np.floating) and not isinstance(v, bool)
    }


class BestTestTracker:
    """The original's best-over-epochs TEST metrics (faithful mode only; REFERENCE D8, F11).

    Used as `Task.on_eval`: after each validation evaluation the test split is evaluated too,
    and for each tracked metric the best value so far is written as
    `faithful_best_test_<metric>`. The bests persist in `workdir/faithful_best_test.json`, so a
    resumed run continues them. Model selection never looks at these numbers.
    """

    FILE = "faithful_best_test.json"

    def __init__(
        self,
        workdir: str,
        evaluate_test: Callable[[TrainState], Mapping[str, Any]],
        modes: Mapping[str, str],
    ):
        self.workdir = workdir
        self.evaluate_test = evaluate_test
        self.modes = dict(modes)
        self.best = read_json(workdir, self.FILE) or {}

    def __call__(self, state: TrainState, split: str, step: int, writer: Any) -> None:
        if split != "val":
            return
        values = scalars_only(self.evaluate_test(state))
        for name, mode in self.modes.items():
            value = values.get(name)
            if value is None or not np.isfinite(value):
                continue
            old = self.best.get(name)
            if old is None or (value < old if mode == "min" else value > old):
                self.best[name] = value
        writer.write_scalars(step, self.results())
        write_json(self.workdir, self.FILE, self.best)

    def results(self) -> dict[str, float]:
        return {f"faithful_best_test_{k}": v for k, v in self.best.items()}


def param_shapes(params: PyTree) -> dict[str, list[int]]:
    """'/'-joined parameter path -> shape: the architecture record of a checkpoint."""
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    return {
        "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path): list(np.shape(v))
        for path, v in flat
    }


@dataclasses.dataclass
class Trainer:
    """A built finetuning run: the loop task plus what evaluation and prediction need.

    `heads` supplies `loss_fn`, `sums_fn` and `decode(outputs, batch, model_state) -> dict`;
    `summarize_full(sums)` turns summed metrics into every metric, vectors included.
    """

    setup: Setup
    task: loop.Task
    heads: Any
    model: Any
    summarize_full: Callable[[Mapping[str, Any]], dict[str, Any]]

    def __post_init__(self):
        self._eval_fn = None
        self._predict_fn = None

    def eval_fn(self) -> Callable[[TrainState, dict], PyTree]:
        if self._eval_fn is None:
            step = functools.partial(
                eval_step, model=self.model, sums_fn=self.heads.sums_fn,
                source_frames=self.setup.source_frames, naive=self.setup.naive,
            )  # fmt: skip
            self._eval_fn = compile_eval(step)
        return self._eval_fn

    def evaluate(self, state: TrainState, split: str) -> dict[str, Any]:
        """Every metric of `split` for `state` (respects `training.max_eval_steps`)."""
        max_steps = int(self.setup.config.training.get("max_eval_steps", 0))
        sums = evaluate_split(self.eval_fn(), state, self.setup.eval_batches(split), max_steps)
        return self.summarize_full(sums)

    def predict_batch(self, state: TrainState, batch: Mapping[str, Any]) -> dict[str, jax.Array]:
        """The decoded predictions of one batch (compiled once; eval mode, no future frames)."""
        if self._predict_fn is None:
            s, naive = self.setup.source_frames, self.setup.naive

            def fn(state, batch):
                inputs = model_inputs(batch, s, train=False, naive=naive)
                out, _ = apply_model(
                    self.model, state.params, state.model_state, inputs, train=False
                )
                return self.heads.decode(out, batch, state.model_state)

            self._predict_fn = jax.jit(fn)
        return self._predict_fn(state, dict(batch))

    def predict(self, state: TrainState, split: str) -> dict[str, np.ndarray]:
        """The decoded predictions of every valid window of `split`, in time order."""
        s = self.setup.source_frames
        parts: dict[str, list] = {}
        for batch in self.setup.eval_batches(split):
            keep = np.asarray(batch["valid"])
            out = dict(jax.device_get(self.predict_batch(state, batch)))
            out.update(source=batch["x"][..., :s], target=batch["x"][..., s:],
                       labels=batch["labels"], condition_id=batch["condition_id"])  # fmt: skip
            for k, v in out.items():
                parts.setdefault(k, []).append(np.asarray(v)[keep])
        return {k: np.concatenate(v) for k, v in parts.items()}


def run_and_test(
    trainer: Trainer,
    config: ml_collections.ConfigDict,
    workdir: str,
    faithful_best: Mapping[str, str],
) -> dict[str, Any]:
    """`loop.run`, then ONE test evaluation of the selected checkpoint -> test_metrics.json.

    Parameter-free models run one epoch of zero train steps (validation + test only).

    Returns:
        The loop's scalars plus `selected_test_*` (and `faithful_best_test_*` when faithful).
    """
    task = trainer.task
    tracker = None
    if config.faithful:
        tracker = BestTestTracker(
            workdir, lambda state: trainer.evaluate(state, task.test_split), faithful_best
        )
        task.on_eval = tracker
    run_config = naive_config(config) if trainer.setup.naive else config
    results = dict(loop.run(task, run_config, workdir))
    state = restore_selected(task, workdir, best=True)
    test = trainer.evaluate(state, task.test_split)
    payload = {
        "selected_step": int(state.step),
        "selection_metric": task.selection_metric,
        "model_class": trainer.setup.model_name,
        "experiment_id": trainer.setup.dataset.experiment_id,
        "metrics": test,
    }
    if tracker is not None:
        payload["faithful_best_test"] = tracker.results()
        results.update(tracker.results())
    write_json(workdir, TEST_METRICS_FILE, payload)
    results.update({f"selected_test_{k}": v for k, v in scalars_only(test).items()})
    logging.info("Selected checkpoint (step %d) on %s: %s", int(state.step), task.test_split,
                 {k: round(v, 5) for k, v in scalars_only(test).items()})  # fmt: skip
    return results


# --- Pretrained tokenizer (config.init_from) ----------------------------------------------------

# Tokenizer fields that must equal the pretrained run's (dtype, dropout, ... may differ).
ARCHITECTURE_FIELDS = ("patch_len", "num_patches", "d_model", "num_heads", "num_layers",
                       "d_ff", "codebook_size", "affine_lr", "ablate_quantizer")  # fmt: skip


def tokenizer_architecture(config: Any) -> dict[str, Any]:
    """The architecture fields of a TokenizerConfig (or of a stored architecture dict)."""
    values = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config)
    return {k: values.get(k) for k in ARCHITECTURE_FIELDS}


def load_pretrained(config: ml_collections.ConfigDict, tokenizer_config: Any) -> tuple[Any, dict]:
    """Restores the tokenizer params of `config.init_from` (a pretraining workdir).

    Its best checkpoint (by validation reconstruction), or the latest with
    `config.init_from_checkpoint='latest'`.

    Args:
        config: the finetuning config.
        tokenizer_config: the TokenizerConfig `config.model` builds (checked against the run's).

    Returns:
        (tokenizer params, the pretrained checkpoint's meta).

    Raises:
        FileNotFoundError: the workdir holds no such checkpoint.
        ValueError: the pretrained architecture differs from `config.model` (names the keys).
    """
    from quantformer_jax.training import pretrain  # the pretraining state's structure

    path = str(config.init_from)
    which = str(config.get("init_from_checkpoint", "best"))
    if which not in ("best", "latest"):
        raise ValueError(f"config.init_from_checkpoint={which!r}: expected best | latest")

    def template(meta: dict) -> Any:
        checkpointing.check_architecture(
            tokenizer_architecture(meta.get("architecture", {})),
            tokenizer_architecture(tokenizer_config),
            f"{path} (config.init_from; set config.model.* to the pretrained values)",
        )
        cfg = ml_collections.ConfigDict(meta["config"])
        model = pretrain.create_model(cfg)
        tx = optimizers.create_optimizer(cfg.optimizer)
        key = jax.random.PRNGKey(0)
        shapes = jax.eval_shape(lambda: pretrain.init_state(model, tx, key, key))
        return checkpointing.abstract_like(shapes)

    state, meta = checkpointing.restore_pretrained(path, template, best=which == "best")
    logging.info("Pretrained tokenizer from %s (%s checkpoint, step %d)", path, which,
                 int(state.step))  # fmt: skip
    return state.params, meta


def graft_pretrained(
    params: PyTree, model_state: Mapping[str, Any], pretrained: PyTree
) -> tuple[PyTree, dict[str, Any]]:
    """QuantCoder params/state with the pretrained encoder (and frozen codebook) copied in.

    Everything else (stimulus projection, neuron embedding, CLS token, head) keeps its fresh
    initialisation, as the original's strict=False load (REFERENCE 3.1); the teacher is untouched.

    Raises:
        ValueError: a pretrained subtree does not fit the model (names it).
    """
    from quantformer_jax.models import quantcoder

    # Own copies: the teacher holds the same arrays, and a donated state must not hold one
    # buffer twice.
    pretrained = jax.tree.map(lambda a: jnp.array(a, copy=True), pretrained)
    variables = quantcoder.copy_pretrained(
        {"params": params, **student_state(model_state)}, pretrained
    )
    params = variables.pop("params")
    return params, {**model_state, **variables}
