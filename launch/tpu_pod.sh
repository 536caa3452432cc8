#!/usr/bin/env bash
# Train on a multi-host Cloud TPU slice (e.g. v4-32, v5p-64): the same command runs on every
# host (gcloud ... ssh --worker=all) and jax.distributed.initialize() discovers the
# coordinator, the number of hosts and each host's index from the TPU metadata.
#
#   launch/tpu_pod.sh create                                   # create the slice
#   launch/tpu_pod.sh setup                                    # copy this repository to every host, install it
#   launch/tpu_pod.sh run CONFIG WORKDIR [--config.field=value ...]
#   launch/tpu_pod.sh delete
#
# Environment: TPU_NAME, ZONE (required); ACCELERATOR_TYPE=v4-32 and
# RUNTIME_VERSION=tpu-ubuntu2204-base (for create). WORKDIR and the data must be visible
# to every host under the same path (an NFS / Filestore or gcsfuse mount): orbax writes each
# host's part of a checkpoint there.
# Example:
#   TPU_NAME=quant ZONE=us-central2-b launch/tpu_pod.sh run configs/cifar.py:lsq,cifar10,resnet20 \
#       /mnt/shared/runs/c10 --config.data.data_dir=/mnt/shared/tensorflow_datasets
set -euo pipefail
usage() { sed -n '2,/^set /{/^#SBATCH/d;/^set /d;s/^# \{0,1\}//;p;}' "$0" >&2; exit 2; }
[[ $# -ge 1 && -n "${TPU_NAME:-}" && -n "${ZONE:-}" ]] || usage
tpu=(gcloud compute tpus tpu-vm)
repo=$(cd "$(dirname "$0")/.." && pwd)
command=$1
shift
case "$command" in
  create)
    "${tpu[@]}" create "$TPU_NAME" --zone="$ZONE" \
      --accelerator-type="${ACCELERATOR_TYPE:-v4-32}" --version="${RUNTIME_VERSION:-tpu-ubuntu2204-base}"
    ;;
  setup)
    archive=$(mktemp --suffix=.tar.gz)
    git -C "$repo" archive --format=tar.gz -o "$archive" HEAD
    "${tpu[@]}" scp "$archive" "$TPU_NAME":jaxquant.tar.gz --zone="$ZONE" --worker=all
    "${tpu[@]}" ssh "$TPU_NAME" --zone="$ZONE" --worker=all --command="
      mkdir -p ~/jaxquant && tar -xzf ~/jaxquant.tar.gz -C ~/jaxquant &&
      python3 -m pip install -U 'jax[tpu]' && python3 -m pip install -e ~/jaxquant"
    rm -f "$archive"
    ;;
  run)
    [[ $# -ge 2 ]] || usage
    config=$(printf '%q' "$1") workdir=$(printf '%q' "$2")
    shift 2
    overrides=""
    if [[ $# -gt 0 ]]; then overrides=$(printf ' %q' "$@"); fi
    "${tpu[@]}" ssh "$TPU_NAME" --zone="$ZONE" --worker=all --command="cd ~/jaxquant &&
      python3 -m jaxquant.main --config $config --workdir $workdir --config.distributed.initialize=always$overrides"
    ;;
  delete)
    "${tpu[@]}" delete "$TPU_NAME" --zone="$ZONE" --quiet
    ;;
  *) usage ;;
esac
