"""Evaluation of a finished workdir's selected checkpoint: `W/metrics.json` and plots in `W/plots/`.

  python -m quantformer_jax.evaluate --workdir=W [--split=test] [--examples=4]

The run config is read from the workdir (`config.json`, else the checkpoint meta), so every
model evaluates the same way: QuantFormer forecasting and classification, every trained
baseline, the parameter-free ones, and a pretraining (tokenizer) run. The model is built and
scored by its trainer (training/forecast.py, classify.py, pretrain.py); the metric formulas are
those of metrics.py. Evaluation always covers the whole split (`training.max_eval_steps` of a
smoke config is ignored here).

Outputs:
* `metrics.json`: task, model class, selected step, experiment, seed and every metric of the
  split (per horizon step `*_step` [F] and per neuron `*_neuron` [N] vectors included); a
  pretraining run adds the code histogram of the split (`code_hist` [K]).
* `plots/forecast_examples.png` (forecasting: source, truth, quantised truth for QuantFormer,
  prediction, for a few (window, neuron) pairs picked from the TRUE traces only, so every model
  shows the same examples), `plots/error_per_step.png`, `plots/confusion.png` (classification),
  `plots/codebook_usage.png` and `plots/reconstructions.png` (pretraining).
* `examples.npz`: the plotted examples' arrays, which report.py overlays across models.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping
from typing import Any

import ml_collections
import numpy as np

from quantformer_jax import runtime

METRICS_FILE = "metrics.json"
EXAMPLES_FILE = "examples.npz"
PLOTS_DIR = "plots"
TASKS = ("pretrain", "forecast", "classify")


# --- The run config ------------------------------------------------------------------------------


def _tuples(value: Any) -> Any:
    """JSON lists back to the tuples the config files use (e.g. `data.row_buckets`)."""
    if isinstance(value, Mapping):
        return {k: _tuples(v) for k, v in value.items()}
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    return value


def load_run_config(workdir: str) -> ml_collections.ConfigDict:
    """The config a workdir was trained with: `config.json`, else its checkpoint meta.

    Raises:
        FileNotFoundError: the workdir holds neither (it never started).
        ValueError: the stored config has no known `task`.
    """
    path = os.path.join(workdir, "config.json")
    if os.path.isfile(path):
        with open(path) as f:
            stored = json.load(f)
    else:
        from quantformer_jax import checkpointing

        try:
            stored = checkpointing.read_meta(workdir, best=False)["config"]
        except FileNotFoundError as e:
            raise FileNotFoundError(
                f"{workdir}: no config.json and no checkpoint; is this a training workdir?"
            ) from e
    config = ml_collections.ConfigDict(_tuples(stored))
    if config.get("task") not in TASKS:
        raise ValueError(f"{path}: task={config.get('task')!r} is not one of {TASKS}")
    return config


def eval_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A copy for evaluation: weights come from the checkpoint, the whole split is scored."""
    config = ml_collections.ConfigDict(config.to_dict())
    if config.task != "pretrain":
        config.init_from = ""  # the finetuning checkpoint holds the teacher and the model
    config.training.max_eval_steps = 0
    return config


# --- Example selection ---------------------------------------------------------------------------


def select_examples(target: np.ndarray, num: int, response_frames: int) -> np.ndarray:
    """(window, neuron) pairs to plot, chosen from the true future only (model-independent).

    Pairs are ranked by their true response (mean |target| over the response frames, the label
    criterion); the strongest is taken, then pairs further down the ranking (quantiles 0..0.5),
    preferring neurons not yet shown, so the plot shows responding and quiet neurons alike.

    Args:
        target: [W, N, F] true future frames.
        num: how many pairs.
        response_frames: frames of the response window.

    Returns:
        int64 [k, 2] (window, neuron), k = min(num, W * N).
    """
    w, n, _ = target.shape
    num = min(num, w * n)
    if num <= 0:
        return np.zeros((0, 2), np.int64)
    response = np.mean(np.abs(target[..., :response_frames]), axis=-1).reshape(-1)  # [W*N]
    order = np.argsort(-response, kind="stable")
    picked: list[int] = []
    for q in np.linspace(0.0, 0.5, num):
        start = int(q * (len(order) - 1))
        candidates = [i for i in order[start:] if i not in picked]
        candidates = candidates or [i for i in order if i not in picked]
        shown = {p % n for p in picked}
        fresh = [i for i in candidates if i % n not in shown]
        picked.append(int((fresh or candidates)[0]))
    return np.stack([np.asarray(picked) // n, np.asarray(picked) % n], axis=1).astype(np.int64)


# --- Plots ---------------------------------------------------------------------------------------


def _save(fig: Any, path: str) -> str:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    os.makedirs(os.path.dirname(path), exist_ok=True)
    FigureCanvasAgg(fig).print_png(path)
    return path


def plot_forecast_examples(examples: Mapping[str, np.ndarray], title: str, path: str) -> str:
    """Source (grey), truth (black), quantised truth (green, if any), prediction (red)."""
    from matplotlib.figure import Figure

    source, target, forecast = examples["source"], examples["target"], examples["forecast"]
    quantized = examples.get("quantized")
    k = len(source)
    s, f = source.shape[-1], target.shape[-1]
    fig = Figure(figsize=(9, 1.9 * max(k, 1)))
    for i in range(k):
        ax = fig.add_subplot(k, 1, i + 1)
        ax.plot(np.arange(-s, 0), source[i], color="0.5", lw=0.9, label="input")
        ax.plot(np.arange(f), target[i], color="black", lw=1.0, label="truth")
        if quantized is not None:
            ax.plot(np.arange(f), quantized[i], color="tab:green", lw=0.9, ls="--",
                    label="quantised truth")  # fmt: skip
        ax.plot(np.arange(f), forecast[i], color="tab:red", lw=1.1, label="prediction")
        ax.axvline(0, color="0.7", lw=0.6)
        w, n = examples["pairs"][i]
        ax.set_ylabel(f"w{w} n{n}", fontsize=8)
        if i == 0:
            ax.legend(fontsize=7, ncol=4, loc="upper left")
    fig.axes[-1].set_xlabel("frame (0 = stimulus onset, 30 Hz)")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def plot_error_per_step(values: Mapping[str, np.ndarray], title: str, path: str) -> str:
    """MAE per horizon step (one curve per entry)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 3.6))
    ax = fig.add_subplot(1, 1, 1)
    for name, curve in values.items():
        ax.plot(np.arange(1, len(curve) + 1), curve, lw=1.2, label=name)
    ax.set_xlabel("horizon step (frames after the source window)")
    ax.set_ylabel("MAE (dF/F)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


def plot_confusion(values: Mapping[str, Any], title: str, path: str) -> str:
    """The binary confusion matrix (rows = truth) and the headline classification metrics."""
    from matplotlib.figure import Figure

    tp, fp, fn, tn = (int(values[k]) for k in ("tp", "fp", "fn", "tn"))
    cm = np.array([[tn, fp], [fn, tp]])
    fig = Figure(figsize=(6.2, 3.2))
    ax = fig.add_subplot(1, 2, 1)
    ax.imshow(cm, cmap="Blues")
    for (r, c), v in np.ndenumerate(cm):
        ax.text(c, r, str(v), ha="center", va="center",
                color="white" if v > cm.max() / 2 else "black")  # fmt: skip
    ax.set_xticks([0, 1], ["inactive", "active"])
    ax.set_yticks([0, 1], ["inactive", "active"])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    text = fig.add_subplot(1, 2, 2)
    text.axis("off")
    lines = [f"{k}: {values[k]:.4f}" for k in
             ("balanced_accuracy", "f1", "accuracy", "precision", "recall")]  # fmt: skip
    lines.append(f"pairs: {tp + fp + fn + tn} ({tp + fn} active)")
    text.text(0.0, 0.5, "\n".join(lines), va="center", fontsize=9, family="monospace")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def plot_codebook_usage(code_hist: np.ndarray, title: str, path: str) -> str:
    """Code frequencies sorted from the most used (log scale), with usage and perplexity."""
    from matplotlib.figure import Figure

    hist = np.asarray(code_hist, np.float64)
    freq = np.sort(hist)[::-1] / max(hist.sum(), 1.0)
    used = freq[freq > 0]
    perplexity = float(np.exp(-np.sum(used * np.log(used)))) if len(used) else 0.0
    fig = Figure(figsize=(7, 3.2))
    ax = fig.add_subplot(1, 1, 1)
    ax.bar(np.arange(len(freq)), np.where(freq > 0, freq, np.nan), width=1.0, color="tab:blue")
    ax.set_yscale("log")
    ax.set_xlim(-0.5, len(freq) - 0.5)
    ax.set_xlabel("code rank")
    ax.set_ylabel("share of tokens")
    ax.set_title(
        f"{title}: {len(used)}/{len(freq)} codes used, perplexity {perplexity:.1f}", fontsize=10
    )
    fig.tight_layout()
    return _save(fig, path)


# --- Evaluation per task -------------------------------------------------------------------------


def _finetune_trainer(config: ml_collections.ConfigDict, workdir: str):
    from quantformer_jax.training import classify, finetune, forecast

    module = forecast if config.task == "forecast" else classify
    trainer = module.build(config, workdir)
    state = finetune.restore_selected(trainer.task, workdir, best=True)
    return trainer, state


def _label(config: ml_collections.ConfigDict) -> str:
    name = str(config.get("model_class", "vq_tokenizer"))
    return f"{name} {config.task} (seed {config.seed})"


def _evaluate_forecast(config, workdir, split, num_examples) -> tuple[dict, dict]:
    from quantformer_jax import metrics as metrics_lib

    trainer, state = _finetune_trainer(config, workdir)
    values = trainer.evaluate(state, split)
    pred = trainer.predict(state, split)
    pairs = select_examples(pred["target"], num_examples, metrics_lib.RESPONSE_FRAMES)
    w, n = pairs[:, 0], pairs[:, 1]
    # predict() returns every window of the split in order, so `w` indexes the split too.
    trial_start = np.asarray(trainer.setup.dataset.splits[split].trial_start)
    examples = {"pairs": pairs, "trial_start": trial_start[w]}
    for key in ("source", "target", "forecast", "quantized"):
        if key in pred:
            examples[key] = np.asarray(pred[key])[w, n]
    plots = {}
    if len(pairs):
        plots["forecast_examples"] = plot_forecast_examples(
            examples, f"{_label(config)}, {split} split",
            os.path.join(workdir, PLOTS_DIR, "forecast_examples.png"),
        )  # fmt: skip
    plots["error_per_step"] = plot_error_per_step(
        {str(config.model_class): values["mae_step"]}, f"{_label(config)}, {split} MAE per step",
        os.path.join(workdir, PLOTS_DIR, "error_per_step.png"),
    )  # fmt: skip
    info = {"selected_step": int(state.step), "experiment_id": trainer.setup.dataset.experiment_id,
            "num_neurons": trainer.setup.num_neurons}  # fmt: skip
    return {"metrics": values, "plots": plots, **info}, examples


def _evaluate_classify(config, workdir, split) -> dict:
    trainer, state = _finetune_trainer(config, workdir)
    values = trainer.evaluate(state, split)
    pred = trainer.predict(state, split)
    labels, guess = np.asarray(pred["labels"]), np.asarray(pred["pred"])
    counts = {"tp": int(np.sum((guess == 1) & (labels == 1))),
              "fp": int(np.sum((guess == 1) & (labels == 0))),
              "fn": int(np.sum((guess == 0) & (labels == 1))),
              "tn": int(np.sum((guess == 0) & (labels == 0)))}  # fmt: skip
    # The counts come from the predictions; the metrics from the trainer: they must agree.
    if sum(counts.values()) != int(values["count"]):
        raise RuntimeError(
            f"{workdir}: {sum(counts.values())} predicted pairs but the evaluation counted "
            f"{int(values['count'])}"
        )
    values = {**values, **counts}
    path = os.path.join(workdir, PLOTS_DIR, "confusion.png")
    plots = {"confusion": plot_confusion(values, f"{_label(config)}, {split} split", path)}
    info = {"selected_step": int(state.step), "experiment_id": trainer.setup.dataset.experiment_id,
            "num_neurons": trainer.setup.num_neurons}  # fmt: skip
    return {"metrics": values, "plots": plots, **info}


def _evaluate_pretrain(config, workdir, split, num_examples) -> dict:
    from quantformer_jax.training import finetune, pretrain

    task = pretrain.make_task(config)
    state = finetune.restore_selected(task, workdir, best=True)
    sums = finetune.evaluate_split(finetune.compile_eval(task.eval_step), state,
                                   task.eval_batches(split))  # fmt: skip
    values = dict(task.summarize(sums))
    values["code_hist"] = np.asarray(sums["code_hist"], np.int64)
    plots = {"codebook_usage": plot_codebook_usage(
        values["code_hist"], f"tokenizer, {split} split",
        os.path.join(workdir, PLOTS_DIR, "codebook_usage.png"))}  # fmt: skip
    if num_examples:
        plots["reconstructions"] = _plot_reconstructions(
            config, task, state, split, num_examples, workdir
        )
    return {"metrics": values, "plots": plots, "selected_step": int(state.step)}


def _plot_reconstructions(config, task, state, split: str, num: int, workdir: str) -> str:
    """Original vs unmasked reconstruction of `2 * num` fixed rows of the split's first batch."""
    import jax

    from quantformer_jax.models import masking
    from quantformer_jax.training import pretrain

    model = pretrain.create_model(config)
    batch = next(iter(task.eval_batches(split)))
    valid = np.flatnonzero(batch["row_valid"])
    rows = np.sort(np.random.RandomState(int(config.seed)).permutation(valid)[: 2 * num])
    x = batch["x"][rows]  # [R, T]

    @jax.jit
    def recon(params, model_state, x):
        patches = masking.patchify(x, model.config.patch_len)
        out = model.apply({"params": params, **model_state}, patches, None, train=False)
        return masking.unpatchify(out["recon"])

    image = pretrain.plot_traces(x, np.asarray(recon(state.params, state.model_state, x)),
                                 int(state.step))  # fmt: skip
    path = os.path.join(workdir, PLOTS_DIR, "reconstructions.png")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    import matplotlib.image

    matplotlib.image.imsave(path, image)
    return path


def evaluate_workdir(workdir: str, split: str = "test", *, num_examples: int = 4) -> dict:
    """Evaluates a workdir's selected checkpoint on `split`; writes metrics.json and plots.

    Args:
        workdir: a finished (or interrupted: its best checkpoint so far) training workdir.
        split: 'train', 'val' or 'test'.
        num_examples: forecast examples to plot and store in examples.npz.

    Returns:
        The metrics.json payload (metrics as floats, vectors as numpy arrays).

    Raises:
        FileNotFoundError: no config or no checkpoint in the workdir.
    """
    from quantformer_jax.training import finetune

    config = eval_config(load_run_config(workdir))
    examples = None
    if config.task == "forecast":
        payload, examples = _evaluate_forecast(config, workdir, split, num_examples)
    elif config.task == "classify":
        payload = _evaluate_classify(config, workdir, split)
    else:
        payload = _evaluate_pretrain(config, workdir, split, num_examples)
    payload.update(
        task=str(config.task),
        model_class=str(config.get("model_class", "vq_tokenizer")),
        split=split,
        seed=int(config.seed),
        workdir=os.path.abspath(workdir),
    )
    payload["plots"] = {k: os.path.relpath(v, workdir) for k, v in payload["plots"].items()}
    if examples is not None:
        path = os.path.join(workdir, EXAMPLES_FILE)
        np.savez(path + ".tmp.npz", **examples)
        os.replace(path + ".tmp.npz", path)
    finetune.write_json(workdir, METRICS_FILE, payload)
    return payload


def read_metrics(workdir: str) -> dict | None:
    """A workdir's metrics.json (None if it was not evaluated yet)."""
    path = os.path.join(workdir, METRICS_FILE)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True, help="a training workdir")
    parser.add_argument("--split", default="test", choices=("train", "val", "test"))
    parser.add_argument("--examples", type=int, default=4, help="forecast examples to plot")
    args = parser.parse_args(argv)
    runtime.tune_host_allocator()  # before jax allocates anything (see runtime.py)
    runtime.request_deterministic_ops()  # before jax starts its backends
    payload = evaluate_workdir(args.workdir, args.split, num_examples=args.examples)
    scalars = {k: v for k, v in payload["metrics"].items() if isinstance(v, float | int)}
    shown = {k: round(v, 5) for k, v in sorted(scalars.items())}
    print(f"{args.workdir}: {payload['model_class']} {payload['task']} on {args.split}: {shown}")
    print(f"wrote {os.path.join(args.workdir, METRICS_FILE)}; plots: {payload['plots']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
