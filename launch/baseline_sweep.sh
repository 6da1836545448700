#!/usr/bin/env bash
# Trains and evaluates every baseline (both tasks where the model has both) into ROOT/<model>_<task>.
#
#   launch/baseline_sweep.sh ROOT [--config.KEY=VALUE ...]
#
# Extra arguments go to every run (e.g. --config.data.cache_dir=... --config.seed=1).
#   MODELS    space-separated subset, default: all (registry names)
#   SWITCHES  extra switches for configs/baseline.py, e.g. SWITCHES=runlocal or SWITCHES=sweep
# Finished runs (metrics.json present) are skipped; interrupted ones resume. Ends with
# ROOT/report.md (which also picks up a QuantFormer run in the same ROOT).
set -euo pipefail

if [[ $# -lt 1 ]]; then
  sed -n '2,11p' "$0" >&2
  exit 2
fi
ROOT=$1
shift
PY=${PY:-.venv/bin/python}
RUNS=(
  "informer forecast" "informer classify"
  "autoformer forecast" "autoformer classify"
  "crossformer forecast" "crossformer classify"
  "autoregressive_lstm forecast" "lstm_classifier classify"
  "trial_average forecast" "persistence forecast" "source_mean forecast" "majority classify"
)
for run in "${RUNS[@]}"; do
  read -r model task <<<"$run"
  if [[ -n "${MODELS:-}" && " $MODELS " != *" $model "* ]]; then
    continue
  fi
  workdir="$ROOT/${model}_$task"
  if [[ -f "$workdir/metrics.json" ]]; then
    echo "[$model $task] done earlier"
    continue
  fi
  switches="model=$model,task=$task${SWITCHES:+,$SWITCHES}"
  echo "[$model $task] $workdir"
  "$PY" -m quantformer_jax.main --config="configs/baseline.py:$switches" --workdir="$workdir" "$@"
  "$PY" -m quantformer_jax.evaluate --workdir="$workdir"
done
"$PY" -m quantformer_jax.report --root "$ROOT"
