"""Device mesh and shardings: one code path for 1 CPU, 8 GPUs or a multi-host TPU pod.

The train step is a ``jax.jit`` over arrays placed with ``NamedSharding``: batches are split
over the mesh axis ``data``; parameters and optimiser state are replicated. Reductions
inside the step (BatchNorm statistics, batch means of losses) are over the *global* batch,
since jit partitions the global computation (GSPMD) rather than running per-shard code.
"""

from __future__ import annotations

import jax
import ml_collections
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec


def create_mesh(mesh_config: ml_collections.ConfigDict | None = None) -> Mesh:
    """A mesh with axis ``data`` over all devices (``mesh.data = -1``) or the given count."""
    devices = jax.devices()
    data = -1 if mesh_config is None else mesh_config.get("data", -1)
    data = len(devices) if data in (-1, None) else data
    if data > len(devices) or len(devices) % data:
        raise ValueError(f"mesh.data={data} does not fit the {len(devices)} available devices")
    grid = np.asarray(devices[:data]).reshape(data)
    return Mesh(grid, ("data",), axis_types=(AxisType.Auto,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec("data"))


def shard_batch(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Assemble the global batch from this process's part, split over ``data``."""
    sharding = batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()}


def replicate(tree, mesh: Mesh):
    return jax.device_put(tree, replicated(mesh))


def check_divisible_over_mesh(batch_size: int, mesh: Mesh, field: str) -> None:
    """A global batch must split evenly over the ``data`` axis (and over processes)."""
    devices = mesh.shape["data"]
    if batch_size % devices or batch_size % jax.process_count():
        raise ValueError(
            f"{field}={batch_size} does not divide evenly over {devices} devices "
            f"and {jax.process_count()} processes; choose a multiple"
        )
