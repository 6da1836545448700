#!/usr/bin/env bash
# Chains the QuantFormer stages by workdir: pretrain -> finetune (forecast, classify) -> evaluate.
#
#   launch/pretrain_finetune_evaluate.sh ROOT [--config.KEY=VALUE ...]
#
# Writes ROOT/pretrain, ROOT/quantformer_forecast, ROOT/quantformer_classify (each evaluated on
# the test split: metrics.json + plots/), then ROOT/report.md. Extra arguments are passed to
# every training stage (e.g. --config.data.cache_dir=/allen/cache --config.seed=1).
# The finetuning stages get the pretrained tokenizer's architecture from ROOT/pretrain/config.json,
# so any pretraining config chains. Config files (switches after the colon allowed):
#   PRETRAIN_CONFIG  (default configs/pretrain.py)
#   FORECAST_CONFIG  (default configs/forecast.py)
#   CLASSIFY_CONFIG  (default configs/classify.py)
#   SIZE=runlocal    appends :runlocal to the three configs (smoke test; tests/test_launch.py)
#   TASKS            finetuning tasks to run (default "forecast classify")
# A stage whose workdir holds metrics.json is skipped; an interrupted one resumes from its latest
# checkpoint when the script is run again.
set -euo pipefail

if [[ $# -lt 1 ]]; then
  sed -n '2,19p' "$0" >&2
  exit 2
fi
ROOT=$1
shift
PY=${PY:-.venv/bin/python}
PRETRAIN_CONFIG=${PRETRAIN_CONFIG:-configs/pretrain.py}
FORECAST_CONFIG=${FORECAST_CONFIG:-configs/forecast.py}
CLASSIFY_CONFIG=${CLASSIFY_CONFIG:-configs/classify.py}
if [[ "${SIZE:-}" == "runlocal" ]]; then
  PRETRAIN_CONFIG+=":runlocal"
  FORECAST_CONFIG+=":runlocal"
  CLASSIFY_CONFIG+=":runlocal"
fi

# Runs `main.py` then `evaluate.py` for one stage unless it is finished already.
stage() {
  local name=$1 workdir=$2
  shift 2
  if [[ -f "$workdir/metrics.json" ]]; then
    echo "[$name] done earlier ($workdir/metrics.json)"
    return
  fi
  echo "[$name] training in $workdir"
  "$PY" -m quantformer_jax.main --workdir="$workdir" "$@"
  echo "[$name] evaluating the selected checkpoint"
  "$PY" -m quantformer_jax.evaluate --workdir="$workdir"
}

stage pretrain "$ROOT/pretrain" --config="$PRETRAIN_CONFIG" "$@"

# The pretrained architecture as overrides (the finetuning encoder must match it).
mapfile -t MODEL_ARGS < <("$PY" - "$ROOT/pretrain/config.json" <<'PYEOF'
import json, sys
for key, value in json.load(open(sys.argv[1]))["model"].items():
    print(f"--config.model.{key}={value}")
PYEOF
)

for task in ${TASKS:-forecast classify}; do
  config=$FORECAST_CONFIG
  [[ $task == classify ]] && config=$CLASSIFY_CONFIG
  stage "quantformer_$task" "$ROOT/quantformer_$task" --config="$config" \
    --config.init_from="$ROOT/pretrain" "${MODEL_ARGS[@]}" "$@"
done

"$PY" -m quantformer_jax.report --root "$ROOT"
