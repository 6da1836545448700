"""The benchmark report: every workdir's metrics.json -> `report.md`, a table and PNG plots.

  python -m quantformer_jax.report --root runs/demo

Collects `<root>/**/metrics.json` (written by quantformer_jax/evaluate.py) and writes
`<root>/report.md` with
* the table in the paper's form: one row per model, MAE, MSE, MASE, Pearson r (forecasting, test
  split) and balanced accuracy, F1 (activation classification, test split); with several seeds
  every cell is mean +- standard deviation (ddof 1) over the seeds;
* whether QuantFormer beats every baseline on MAE, Pearson r and balanced accuracy, per seed;
* plots (matplotlib Agg) in `<root>/plots/`: example forecasts of every model against the truth,
  MAE per horizon step of every model, codebook usage of the pretrained tokenizer;
* stage times (from demo.py's stages.json) and how to open TensorBoard.
Numbers are copied from metrics.json; no metric is computed here.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Mapping, Sequence

import numpy as np

from quantformer_jax import evaluate

REPORT_FILE = "report.md"
PLOTS_DIR = "plots"

# Table rows: (label, forecasting model_class, classification model_class).
ROWS = (
    ("QuantFormer", "quantcoder", "quantcoder"),
    ("Informer", "informer", "informer"),
    ("Autoformer", "autoformer", "autoformer"),
    ("Crossformer", "crossformer", "crossformer"),
    ("LSTM", "autoregressive_lstm", "lstm_classifier"),
    ("trial-average", "trial_average", None),
    ("persistence", "persistence", None),
    ("source-mean", "source_mean", None),
    ("majority", None, "majority"),
)
# (column, task, metric key, better): classification columns of forecast-only rows fall back to
# the activation derived from the forecast (`activation_*`, marked with a dagger).
COLUMNS = (
    ("MAE", "forecast", "mae", "min"),
    ("MSE", "forecast", "mse", "min"),
    ("MASE", "forecast", "mase", "min"),
    ("Pearson r", "forecast", "corr", "max"),
    ("balanced acc.", "classify", "balanced_accuracy", "max"),
    ("F1", "classify", "f1", "max"),
)
DETAIL_FORECAST = ("abs_corr", "smape", "ssim", "psnr", "activation_balanced_accuracy",
                   "activation_f1", "code_accuracy", "mae_q")  # fmt: skip
DETAIL_CLASSIFY = ("accuracy", "precision", "recall", "positives", "count")
QUALITY_BAR = (("MAE", "forecast", "mae", "min"), ("Pearson r", "forecast", "corr", "max"),
               ("balanced acc.", "classify", "balanced_accuracy", "max"))  # fmt: skip


# --- Collecting ----------------------------------------------------------------------------------


def collect(root: str) -> list[dict]:
    """Every metrics.json under `root` (the observatory is skipped), with `dir` added."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d != "observatory")
        if evaluate.METRICS_FILE in filenames:
            with open(os.path.join(dirpath, evaluate.METRICS_FILE)) as f:
                payload = json.load(f)
            payload["dir"] = os.path.relpath(dirpath, root)
            found.append(payload)
    return found


def index(runs: Sequence[dict]) -> dict[tuple[str, str], dict[int, dict]]:
    """(task, model_class) -> {seed: payload}.

    Raises:
        ValueError: two workdirs hold the same model, task and seed (ambiguous table cell).
    """
    out: dict[tuple[str, str], dict[int, dict]] = {}
    for run in runs:
        cell = out.setdefault((run["task"], run["model_class"]), {})
        if run["seed"] in cell:
            raise ValueError(
                f"{run['dir']} and {cell[run['seed']]['dir']}: both hold {run['model_class']} "
                f"{run['task']} seed {run['seed']}; give them different roots"
            )
        cell[run["seed"]] = run
    return out


def _value(payload: dict | None, key: str) -> float | None:
    if payload is None:
        return None
    value = payload["metrics"].get(key)
    return float(value) if isinstance(value, int | float) else None


def cell_values(
    runs: Mapping[tuple[str, str], dict[int, dict]], row: tuple, column: tuple
) -> tuple[dict[int, float], bool]:
    """{seed: value} of a table cell, and whether it is forecast-derived (dagger)."""
    _, forecast_model, classify_model = row
    _, task, key, _ = column
    model = forecast_model if task == "forecast" else classify_model
    if model is not None:
        seeds = runs.get((task, model), {})
        return {s: v for s, p in seeds.items() if (v := _value(p, key)) is not None}, False
    if task == "classify" and forecast_model is not None:
        seeds = runs.get(("forecast", forecast_model), {})
        derived = {s: _value(p, f"activation_{key}") for s, p in seeds.items()}
        return {s: v for s, v in derived.items() if v is not None}, True
    return {}, False


def _mean_sd(values: Sequence[float]) -> tuple[float, float | None]:
    arr = np.asarray(values, np.float64)
    return float(np.mean(arr)), (float(np.std(arr, ddof=1)) if len(arr) > 1 else None)


def _fmt(values: Mapping[int, float], digits: int = 4) -> str:
    if not values:
        return "–"
    mean, sd = _mean_sd(list(values.values()))
    if sd is None and float(mean).is_integer() and abs(mean) >= 10:
        return str(int(mean))  # a count
    text = f"{mean:.{digits}f}"
    return text if sd is None else f"{text} ± {sd:.{digits}f}"


# --- Tables --------------------------------------------------------------------------------------


def main_table(runs: Mapping[tuple[str, str], dict[int, dict]]) -> str:
    """The paper-form table (markdown); the best mean of each column in bold."""
    cells = {(r[0], c[0]): cell_values(runs, r, c) for r in ROWS for c in COLUMNS}
    best = {}
    for column in COLUMNS:
        means = {r[0]: _mean_sd(list(v.values()))[0] for r in ROWS
                 if (v := cells[(r[0], column[0])][0])}  # fmt: skip
        if means:
            pick = min if column[3] == "min" else max
            best[column[0]] = pick(means.values())
    lines = ["| model | " + " | ".join(c[0] for c in COLUMNS) + " |",
             "|---|" + "---:|" * len(COLUMNS)]  # fmt: skip
    for row in ROWS:
        if not any(cells[(row[0], c[0])][0] for c in COLUMNS):
            continue
        out = []
        for column in COLUMNS:
            values, derived = cells[(row[0], column[0])]
            text = _fmt(values)
            if values and math.isclose(_mean_sd(list(values.values()))[0], best[column[0]]):
                text = f"**{text}**"
            out.append(text + (" †" if derived and values else ""))
        seeds = sorted({s for c in COLUMNS for s in cells[(row[0], c[0])][0]})
        label = row[0] if len(seeds) <= 1 else f"{row[0]} (n={len(seeds)})"
        lines.append(f"| {label} | " + " | ".join(out) + " |")
    return "\n".join(lines)


def detail_table(runs: Mapping[tuple[str, str], dict[int, dict]], task: str) -> str:
    keys = DETAIL_FORECAST if task == "forecast" else DETAIL_CLASSIFY
    models = [(model, seeds) for (t, model), seeds in sorted(runs.items()) if t == task]
    keys = tuple(k for k in keys if any(_value(p, k) is not None for _, s in models
                                        for p in s.values()))  # fmt: skip
    lines = [
        "| model | " + " | ".join(keys) + " | workdir |",
        "|---|" + "---:|" * len(keys) + "---|",
    ]
    for model, seeds in models:
        values = [_fmt({s: v for s, p in seeds.items() if (v := _value(p, k)) is not None})
                  for k in keys]  # fmt: skip
        dirs = ", ".join(f"`{p['dir']}`" for _, p in sorted(seeds.items()))
        lines.append(f"| {model} | " + " | ".join(values) + f" | {dirs} |")
    return "\n".join(lines)


def quality_bar(runs: Mapping[tuple[str, str], dict[int, dict]]) -> tuple[str, bool | None]:
    """Per seed and metric: QuantFormer's value against the best baseline (markdown lines)."""
    lines, verdicts = [], []
    for name, task, key, better in QUALITY_BAR:
        column = (name, task, key, better)
        ours, _ = cell_values(runs, ROWS[0], column)
        for seed in sorted(ours):
            rivals = {}
            for row in ROWS[1:]:
                values, _ = cell_values(runs, row, column)
                if seed in values:
                    rivals[row[0]] = values[seed]
            if not rivals:
                continue
            pick = min if better == "min" else max
            best_name = pick(rivals, key=rivals.get)
            wins = ours[seed] < rivals[best_name] if better == "min" else ours[seed] > rivals[
                best_name]  # fmt: skip
            verdicts.append(wins)
            lines.append(f"- seed {seed}, {name}: QuantFormer {ours[seed]:.4f} vs best baseline "
                         f"{best_name} {rivals[best_name]:.4f}: "
                         f"{'beats it' if wins else 'does NOT beat it'}")  # fmt: skip
    return "\n".join(lines), (all(verdicts) if verdicts else None)


def stage_table(stage_times: Mapping[str, dict]) -> str:
    lines = ["| stage | status | wall time | runs |", "|---|---|---:|---:|"]
    total = 0.0
    for name, entry in stage_times.items():
        total += float(entry.get("seconds", 0.0))
        lines.append(f"| {name} | {entry.get('status', '?')} | {entry.get('seconds', 0):.0f} s | "
                     f"{entry.get('runs', 0)} |")  # fmt: skip
    lines.append(f"| total | | {total:.0f} s ({total / 60:.1f} min) | |")
    return "\n".join(lines)


# --- Plots ---------------------------------------------------------------------------------------


def _first_seed(seeds: Mapping[int, dict]) -> dict:
    return seeds[min(seeds)]


def plot_examples(root: str, runs: Mapping[tuple[str, str], dict[int, dict]], path: str):
    """Every forecasting model's prediction of the same examples (first seed) vs the truth."""
    from matplotlib.figure import Figure

    loaded = {}
    for (task, model), seeds in sorted(runs.items()):
        file = os.path.join(root, _first_seed(seeds)["dir"], evaluate.EXAMPLES_FILE)
        if task == "forecast" and os.path.isfile(file):
            with np.load(file) as data:
                loaded[model] = {k: data[k] for k in data.files}
    if not loaded:
        return None
    ref_name = "quantcoder" if "quantcoder" in loaded else next(iter(loaded))
    ref = loaded[ref_name]
    same = {m: e for m, e in loaded.items() if np.array_equal(e["pairs"], ref["pairs"])}
    k = len(ref["pairs"])
    s, f = ref["source"].shape[-1], ref["target"].shape[-1]
    fig = Figure(figsize=(10, 2.2 * max(k, 1)))
    colors = {m: c for m, c in zip(sorted(same), _palette(len(same)), strict=True)}
    for i in range(k):
        ax = fig.add_subplot(k, 1, i + 1)
        ax.plot(np.arange(-s, 0), ref["source"][i], color="0.55", lw=0.9, label="input")
        ax.plot(np.arange(f), ref["target"][i], color="black", lw=1.6, label="truth")
        if "quantized" in ref:
            ax.plot(np.arange(f), ref["quantized"][i], color="black", ls=":", lw=1.0,
                    label="quantised truth")  # fmt: skip
        for model, ex in sorted(same.items()):
            ax.plot(np.arange(f), ex["forecast"][i], color=colors[model], lw=1.0, label=model)
        ax.axvline(0, color="0.7", lw=0.6)
        ax.set_xlim(-min(s, 48), f)
        w, n = ref["pairs"][i]
        ax.set_ylabel(f"window {w}\nneuron {n}", fontsize=8)
        if i == 0:
            ax.legend(fontsize=7, ncol=5, loc="upper left")
    fig.axes[-1].set_xlabel("frame (0 = first forecast frame, 30 Hz)")
    fig.suptitle("Test-split forecasts (examples ranked by the true response)", fontsize=10)
    fig.tight_layout()
    return evaluate._save(fig, path)


def _palette(n: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    colors = [cmap(i) for i in range(10) if i != 7]  # grey is the input trace's colour
    return [colors[i % len(colors)] for i in range(n)]


def plot_error_per_step(runs: Mapping[tuple[str, str], dict[int, dict]], path: str):
    """MAE per horizon step of every forecasting model (mean over seeds)."""
    curves = {}
    for (task, model), seeds in sorted(runs.items()):
        steps = [p["metrics"].get("mae_step") for p in seeds.values()]
        steps = [np.asarray(v, np.float64) for v in steps if v is not None]
        if task == "forecast" and steps:
            curves[model] = np.mean(np.stack(steps), axis=0)
    if not curves:
        return None
    return evaluate.plot_error_per_step(curves, "Test MAE per horizon step", path)


def plot_codebook(runs: Mapping[tuple[str, str], dict[int, dict]], path: str):
    seeds = runs.get(("pretrain", "vq_tokenizer"))
    if not seeds:
        return None
    payload = _first_seed(seeds)
    hist = payload["metrics"].get("code_hist")
    if hist is None:
        return None
    title = f"Tokenizer codebook usage (test split, seed {payload['seed']})"
    return evaluate.plot_codebook_usage(np.asarray(hist), title, path)


# --- The report ----------------------------------------------------------------------------------


def write_report(
    root: str, *, stage_times: Mapping[str, dict] | None = None, scale: str = ""
) -> str:
    """Writes `<root>/report.md` and `<root>/plots/*.png`; returns the report's path."""
    runs = index(collect(root))
    plots_dir = os.path.join(root, PLOTS_DIR)
    plots = {
        "Example forecasts against the truth": plot_examples(
            root, runs, os.path.join(plots_dir, "forecast_examples.png")
        ),
        "MAE per horizon step": plot_error_per_step(
            runs, os.path.join(plots_dir, "error_per_step.png")
        ),
        "Codebook usage": plot_codebook(runs, os.path.join(plots_dir, "codebook_usage.png")),
    }
    seeds = sorted({s for cell in runs.values() for s in cell})
    bar_text, bar = quality_bar(runs)
    experiment = sorted({p.get("experiment_id") for c in runs.values() for p in c.values()
                         if p.get("experiment_id") is not None})  # fmt: skip
    parts = [
        "# QuantFormer benchmark report",
        "",
        f"Scale: `{scale or '?'}`; seeds: {seeds}; test split of experiment(s) {experiment}; "
        f"{len(runs)} (task, model) results from `{root}`.",
        "",
        "## Results (test split)",
        "",
        "Forecasting: MAE, MSE, MASE (vs the source-mean forecast), Pearson r (signed, mean over "
        "(window, neuron) series) on the 64 forecast frames. Activation classification: "
        "balanced accuracy and F1 over (window, neuron) pairs. "
        + ("Cells are mean ± standard deviation over seeds. " if len(seeds) > 1 else "")
        + "Best mean per column in bold. † = derived from the model's forecast (mean |forecast| "
        "over the response frames > threshold, the label criterion): the model has no "
        "classifier.",
        "",
        main_table(runs),
        "",
        "## Does QuantFormer beat every baseline?",
        "",
        bar_text or "(no QuantFormer result yet)",
        "",
        f"Overall: {'yes' if bar else 'no' if bar is not None else 'not measured'}.",
        "",
        "## Plots",
        "",
    ]
    for title, path in plots.items():
        if path:
            rel = os.path.relpath(path, root)
            parts += [f"### {title}", "", f"![{title}]({rel})", ""]
    parts += ["## More metrics", "", "Forecasting:", "", detail_table(runs, "forecast"), "",
              "Classification:", "", detail_table(runs, "classify"), ""]  # fmt: skip
    per_run = [f"- `{p['dir']}`: " + ", ".join(f"[{k}]({os.path.join(p['dir'], v)})"
               for k, v in sorted(p.get("plots", {}).items()))
               for c in runs.values() for p in c.values() if p.get("plots")]  # fmt: skip
    if per_run:
        parts += ["Per-run plots:", "", *sorted(per_run), ""]
    if stage_times:
        parts += ["## Stage times (wall clock, summed over resumes)", "", stage_table(stage_times),
                  ""]  # fmt: skip
    parts += [
        "## TensorBoard",
        "",
        "Every stage logs its training curves, hyperparameters and (pretraining) reconstructions "
        "to `<stage>/tensorboard`. Open them all at once with",
        "",
        f"    .venv/bin/tensorboard --logdir {root}",
        "",
        "and browse to http://localhost:6006. `metrics.jsonl` in each stage holds the same "
        "scalars for scripts; `metrics.json` the selected checkpoint's test metrics.",
        "",
    ]
    path = os.path.join(root, REPORT_FILE)
    with open(path + ".tmp", "w") as f:
        f.write("\n".join(parts))
    os.replace(path + ".tmp", path)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, help="directory holding evaluated workdirs")
    args = parser.parse_args(argv)
    times_path = os.path.join(args.root, "stages.json")
    times = None
    if os.path.isfile(times_path):
        with open(times_path) as f:
            times = json.load(f)
    print(write_report(args.root, stage_times=times))
    return 0


if __name__ == "__main__":
    sys.exit(main())
