#!/usr/bin/env bash
# Train on a Slurm GPU cluster: every task runs the same jaxquant command, and
# jax.distributed.initialize() takes the coordinator (first node of the step), the number of
# processes and each one's id from Slurm's environment. WORKDIR must be on a file system
# that every node sees: orbax writes each process's part of a checkpoint there.
#
#   sbatch --nodes=2 launch/slurm_gpu.sh CONFIG WORKDIR [--config.field=value ...]
#
# Environment (read when the job starts):
#   GPUS_PER_NODE=8   GPUs on each node (match --gpus-per-node below)
#   PER=gpu           one process per GPU (JAX gives task SLURM_LOCALID the GPU of that index),
#   PER=node          or one process per node driving all its GPUs
# Example:
#   sbatch --nodes=4 launch/slurm_gpu.sh configs/cifar.py:lsq,cifar10,resnet20 /shared/runs/c10 \
#       --config.data.data_dir=/shared/tensorflow_datasets --config.init_from=/shared/runs/c10_fp
#SBATCH --job-name=jaxquant
#SBATCH --nodes=1
#SBATCH --gpus-per-node=8
#SBATCH --ntasks-per-node=8
#SBATCH --output=%x-%j.out
set -euo pipefail
usage() { sed -n '2,/^set /{/^#SBATCH/d;/^set /d;s/^# \{0,1\}//;p;}' "$0" >&2; exit 2; }
[[ $# -ge 2 ]] || usage
config=$1 workdir=$2
shift 2
gpus_per_node=${GPUS_PER_NODE:-8}
case "${PER:-gpu}" in
  gpu) tasks_per_node=$gpus_per_node ;;
  node)
    tasks_per_node=1
    export JAX_LOCAL_DEVICE_IDS
    JAX_LOCAL_DEVICE_IDS=$(seq -s, 0 $((gpus_per_node - 1)))
    ;;
  *)
    echo "PER=${PER} is not allowed: choose gpu or node" >&2
    exit 2
    ;;
esac
srun --ntasks-per-node="$tasks_per_node" --kill-on-bad-exit=1 \
  python -m jaxquant.main --config "$config" --workdir "$workdir" \
  --config.distributed.initialize=always "$@"
