#!/usr/bin/env bash
# Run jaxquant on this machine.
#
#   launch/local.sh CONFIG WORKDIR [--config.field=value ...]
#
# One process on every local device (all GPUs or TPU chips; a CPU counts as one device), with
# the batch split over them. Optional environment:
#   CPU_DEVICES=N   N forced CPU devices (try sharding and mesh.model without accelerators)
#   PROCESSES=N     N processes joined by jax.distributed over 127.0.0.1:$PORT (a rehearsal of
#                   a multi-host run); with GPUs, process i drives GPU i
#   PORT=12355      coordinator port for PROCESSES
# Examples:
#   launch/local.sh configs/digits.py:lsq runs/lsq --config.init_from=runs/fp
#   CPU_DEVICES=8 launch/local.sh configs/digits.py:lsq runs/lsq8 --config.init_from=runs/fp
#   PROCESSES=2 CPU_DEVICES=2 launch/local.sh configs/digits.py:lsq runs/lsq2x2 --config.init_from=runs/fp
set -euo pipefail
usage() { sed -n '2,/^set /{/^#SBATCH/d;/^set /d;s/^# \{0,1\}//;p;}' "$0" >&2; exit 2; }
[[ $# -ge 2 ]] || usage
config=$1 workdir=$2
shift 2
if [[ -n "${CPU_DEVICES:-}" ]]; then
  export JAX_PLATFORMS=cpu XLA_FLAGS="--xla_force_host_platform_device_count=${CPU_DEVICES} ${XLA_FLAGS:-}"
fi
processes=${PROCESSES:-1}
if [[ "$processes" -le 1 ]]; then
  exec python -m jaxquant.main --config "$config" --workdir "$workdir" "$@"
fi
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT INT TERM
for ((i = 0; i < processes; i++)); do
  if [[ -z "${CPU_DEVICES:-}" ]]; then export JAX_LOCAL_DEVICE_IDS=$i; fi
  python -m jaxquant.main --config "$config" --workdir "$workdir" "$@" \
    --config.distributed.coordinator_address="127.0.0.1:${PORT:-12355}" \
    --config.distributed.num_processes="$processes" --config.distributed.process_id="$i" &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
trap - EXIT
exit "$status"
