#!/usr/bin/env bash
# One training run data-parallel over all local devices (every GPU/TPU of this host).
#
#   launch/data_parallel.sh CONFIG WORKDIR [--config.KEY=VALUE ...]
#   e.g. launch/data_parallel.sh configs/pretrain.py runs/pretrain_dp
#
# The global batch (training.batch_size windows; for pretraining the row buckets,
# data.row_buckets) is split over the devices, so it must divide by their number; the run stops
# with an error naming that config key otherwise. The state is replicated.
#   PARALLEL=jit|pmap   jit + Mesh + NamedSharding (default) or the pmap path
#   DEVICES=K           use only the first K local devices (default 0 = all)
#   CPU_DEVICES=K       on a CPU-only host, simulate K devices (XLA host platform) to try it out
set -euo pipefail

if [[ $# -lt 2 ]]; then
  sed -n '2,13p' "$0" >&2
  exit 2
fi
CONFIG=$1
WORKDIR=$2
shift 2
PY=${PY:-.venv/bin/python}
if [[ -n "${CPU_DEVICES:-}" ]]; then
  export JAX_PLATFORMS=cpu
  export XLA_FLAGS="${XLA_FLAGS:-} --xla_force_host_platform_device_count=$CPU_DEVICES"
fi
"$PY" -c "import jax; print(f'{jax.local_device_count()} local devices: {jax.local_devices()}')"
exec "$PY" -m quantformer_jax.main --config="$CONFIG" --workdir="$WORKDIR" \
  --config.training.parallel="${PARALLEL:-jit}" --config.training.num_devices="${DEVICES:-0}" "$@"
