"""Device mesh, shardings and multi-host start-up: one code path for 1 CPU, 8 GPUs or a TPU pod.

Every step (train, eval, calibration, curvature probes) is one ``jax.jit`` over *global*
arrays placed with ``NamedSharding`` on a mesh with two ``AxisType.Auto`` axes:

* ``data`` (``config.mesh.data``, -1 = all devices left) splits the batch;
* ``model`` (``config.mesh.model``, default 1) is a fully-sharded-data-parallel (FSDP) axis:
  every parameter, optimiser-state or teacher leaf with at least ``config.mesh.fsdp_min_size``
  elements is split along its largest dimension that the axis divides; smaller leaves are
  replicated. The batch is split over ``model`` too, so no device repeats another's work;
  XLA gathers a sharded weight where it is used and reduce-scatters its gradient.

Which reductions are global, and why. The step is written for the whole batch and jit
partitions that one program (GSPMD): a ``jnp.mean``/``sum``/``min``/``max``/matmul over the
batch axis of a sharded array becomes a partial reduction per device plus an all-reduce,
never a per-shard value. There is no ``pmap``/``shard_map`` and no per-device Python code,
and array shapes inside the step are global, so ``x.shape[0]`` is the global batch size.
Hence these are all over the **global** batch:

* BatchNorm batch statistics (flax ``nn.BatchNorm`` reduces with ``jnp.mean`` over the batch
  axis; no ``axis_name`` is needed or used) and the running averages built from them;
* the CSD loss (per-channel mean and variance over batch, H, W; divided by the global batch
  size) and the consistency (KL / feature-MSE) losses, which are batch means;
* the MEC coding length: ``Z Zᵀ`` or ``Zᵀ Z`` contract over the sharded batch axis and the
  log-det series runs on the resulting global matrix, with ``m`` the global batch size;
* calibration min/max (and ``mean|x|`` of the LSQ init): observers reduce over the batch axis;
* eval accuracy and loss (masked sums), gradients and the Hutchinson/HVP estimates (the
  loss being differentiated is the global batch mean).

Random numbers (augmentation, FPQ/DNQ noise, Rademacher probes) are drawn for the global shape;
with ``jax_threefry_partitionable`` (on by default) the bits do not depend on the sharding, so a
run on 8 devices draws exactly what a run on 1 device draws.

What would become per-shard, and is avoided: reducing host-side over the part of the batch
that one process loaded, or over ``jax.Array.addressable_data``. Code that needs a
whole-batch statistic computes it inside the jitted step.

Input: each process reads only its block of every global batch
(:class:`~jaxquant.data.TrainBatches`) and :func:`shard_batch` assembles the global array
with ``jax.make_array_from_process_local_data``, which puts that block on the process's own
devices. With the process-major device order of CPU and GPU meshes the global batch is in
the same order as on one device. On a TPU pod ``jax.make_mesh`` may interleave hosts for the
interconnect; the rows of the global batch are then permuted: the same examples, and every
reduction above ignores order (only a per-row random draw moves with its row).

Multi-host: every process runs the same command; :func:`initialize_distributed` starts
``jax.distributed`` when the launcher announces more than one process (Slurm, Open MPI, the
``JAX_COORDINATOR_ADDRESS`` variable, explicit ``config.distributed`` fields) or when
``config.distributed.initialize = "always"`` (TPU pods, where JAX discovers the coordinator).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from jaxquant.checks import check_choice

DATA_AXIS = "data"
MODEL_AXIS = "model"
BATCH_AXES = (DATA_AXIS, MODEL_AXIS)
FSDP_MIN_SIZE = 2**18
INITIALIZE_CHOICES = ("auto", "always", "never")


# ----------------------------------------------------------------------------- multi-host


def launcher_process_count(environ: Mapping[str, str]) -> int:
    """Number of processes a launcher announces in ``environ`` (1 if none is recognised).

    ``SLURM_STEP_NUM_TASKS`` (inside an ``srun`` step), ``OMPI_COMM_WORLD_SIZE`` (``mpirun``),
    ``TPU_WORKER_HOSTNAMES`` (comma-separated hosts of a TPU slice on GKE).
    """
    for variable in ("SLURM_STEP_NUM_TASKS", "OMPI_COMM_WORLD_SIZE"):
        if environ.get(variable):
            return int(environ[variable])
    hosts = environ.get("TPU_WORKER_HOSTNAMES", "")
    return len([h for h in hosts.split(",") if h]) or 1


def distributed_kwargs(distributed: ml_collections.ConfigDict, environ: Mapping[str, str]) -> dict | None:
    """Arguments for ``jax.distributed.initialize``, or ``None`` for a single-process run.

    Explicit fields (``coordinator_address``, ``num_processes``, ``process_id``) are passed
    on; the ones left unset are discovered by JAX from the environment (TPU metadata, Slurm,
    Open MPI). ``initialize``: ``auto`` starts it when the fields or the launcher say there is
    more than one process, ``always`` starts it in any case, ``never`` does not.
    """
    mode = distributed.get("initialize", "auto")
    check_choice(mode, INITIALIZE_CHOICES, "distributed.initialize")
    kwargs: dict[str, Any] = {"initialization_timeout": int(distributed.get("initialization_timeout", 300))}
    if distributed.get("coordinator_address"):
        kwargs["coordinator_address"] = distributed.coordinator_address
    if distributed.get("num_processes", 0) > 0:
        kwargs["num_processes"] = int(distributed.num_processes)
    if distributed.get("process_id", -1) >= 0:
        kwargs["process_id"] = int(distributed.process_id)
    if mode == "never":
        return None
    if mode == "always":
        return kwargs
    processes = kwargs.get("num_processes") or launcher_process_count(environ)
    if processes > 1 or environ.get("JAX_COORDINATOR_ADDRESS"):
        return kwargs
    return None


def initialize_distributed(config: ml_collections.ConfigDict) -> bool:
    """Start ``jax.distributed`` if this run has several processes; return whether it did.

    Call once, before anything touches a device (``jaxquant.main`` does it first).
    """
    if jax.distributed.is_initialized():
        return False
    kwargs = distributed_kwargs(config.get("distributed", ml_collections.ConfigDict()), os.environ)
    if kwargs is None:
        return False
    jax.distributed.initialize(**kwargs)
    return True


def is_lead_process() -> bool:
    """Process 0 writes the run's files (config, metrics, summary); all take part in checkpoints."""
    return jax.process_index() == 0


# ----------------------------------------------------------------------------- mesh


def create_mesh(mesh_config: ml_collections.ConfigDict | None = None) -> Mesh:
    """A ``(data, model)`` mesh of ``AxisType.Auto`` axes from ``config.mesh``.

    ``mesh.data = -1`` takes all devices that ``mesh.model`` leaves. Fewer devices than the
    host has are allowed only in a single-process run.
    """
    mesh_config = mesh_config or ml_collections.ConfigDict()
    devices = jax.devices()
    model = int(mesh_config.get("model", 1))
    if model < 1 or len(devices) % model:
        raise ValueError(f"mesh.model={model} must be a positive divisor of the {len(devices)} devices")
    data = int(mesh_config.get("data", -1))
    data = len(devices) // model if data == -1 else data
    if data < 1 or data * model > len(devices):
        raise ValueError(
            f"mesh.data={data} × mesh.model={model} does not fit the {len(devices)} devices; "
            "use mesh.data=-1 for all of them"
        )
    axis_types = (AxisType.Auto, AxisType.Auto)
    if data * model == len(devices):
        return jax.make_mesh((data, model), BATCH_AXES, axis_types=axis_types, devices=devices)
    if jax.process_count() > 1:
        raise ValueError(
            f"mesh.data={data} × mesh.model={model} uses only part of the {len(devices)} devices, "
            "which a multi-process run cannot do; use mesh.data=-1"
        )
    grid = np.asarray(devices[: data * model]).reshape(data, model)
    return Mesh(grid, BATCH_AXES, axis_types=axis_types)


def batch_shards(mesh: Mesh) -> int:
    """Number of parts a batch is split into (all devices of the mesh)."""
    return math.prod(mesh.shape[axis] for axis in BATCH_AXES)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over ``data`` and ``model``; other axes whole."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def leaf_sharding(shape: tuple[int, ...], mesh: Mesh, fsdp_min_size: int = FSDP_MIN_SIZE) -> NamedSharding:
    """FSDP rule for one leaf: split its largest dimension divisible by the ``model`` axis
    if it has at least ``fsdp_min_size`` elements; otherwise (or with ``model = 1``) replicate."""
    parts = mesh.shape[MODEL_AXIS]
    if parts == 1 or math.prod(shape) < fsdp_min_size:
        return replicated(mesh)
    for dim in sorted(range(len(shape)), key=lambda d: -shape[d]):
        if shape[dim] % parts == 0:
            spec = [None] * len(shape)
            spec[dim] = MODEL_AXIS
            return NamedSharding(mesh, PartitionSpec(*spec))
    return replicated(mesh)


def state_sharding(tree: Any, mesh: Mesh, fsdp_min_size: int = FSDP_MIN_SIZE) -> Any:
    """The sharding of every leaf of a state pytree (params, optimiser state, teachers, ...)."""
    return jax.tree.map(lambda x: leaf_sharding(np.shape(x), mesh, fsdp_min_size), tree)


def _place_leaf(value: Any, sharding: NamedSharding) -> jax.Array:
    """``value`` as a global array with ``sharding``: resharded on the devices if it is a
    jax array that the sharding can reach from here, else built from a host copy."""
    if isinstance(value, jax.Array) and (not value.is_fully_addressable or jax.process_count() == 1):
        return jax.device_put(value, sharding)
    host = np.asarray(value)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def place_state(tree: Any, mesh: Mesh, fsdp_min_size: int = FSDP_MIN_SIZE) -> Any:
    """``tree`` as global arrays on ``mesh`` with :func:`state_sharding`.

    Host values and single-device arrays must be equal on every process (they are: each
    process builds the state from the same seed and files); global arrays are resharded.
    """
    return jax.tree.map(_place_leaf, tree, state_sharding(tree, mesh, fsdp_min_size))


def replicate(tree: Any, mesh: Mesh) -> Any:
    """``tree`` fully replicated on ``mesh``."""
    return jax.tree.map(lambda x: _place_leaf(x, replicated(mesh)), tree)


# ----------------------------------------------------------------------------- batches


def check_divisible_over_mesh(batch_size: int, mesh: Mesh, field: str) -> None:
    """A global batch must split evenly over the mesh's devices and over the processes."""
    shards, processes = batch_shards(mesh), jax.process_count()
    if batch_size % shards or batch_size % processes:
        raise ValueError(
            f"{field}={batch_size} does not divide evenly over {shards} devices and {processes} "
            f"processes; choose a multiple of {math.lcm(shards, processes)}"
        )


def shard_batch(batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """The global batch, split over the mesh, from this process's part of it (its block of
    ``batch_size / process_count`` examples, which goes to this process's devices)."""
    sharding = batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()}


def place_global_batch(
    batch: Mapping[str, np.ndarray], mesh: Mesh, batch_axis: int = 0
) -> dict[str, jax.Array]:
    """A batch that every process holds in full, as global arrays.

    Split over the mesh along ``batch_axis`` (1 for stacked batches ``[K, B, ...]``) when
    that size divides the devices, otherwise replicated (e.g. 100 calibration images on 8
    devices); reductions over it are global either way.
    """
    sharding = NamedSharding(mesh, PartitionSpec(*[None] * batch_axis, BATCH_AXES))
    out = {}
    for key, value in batch.items():
        value = np.asarray(value)
        if value.shape[batch_axis] % batch_shards(mesh) == 0:
            out[key] = jax.make_array_from_process_local_data(sharding, value, value.shape)
        else:
            out[key] = _place_leaf(value, replicated(mesh))
    return out
