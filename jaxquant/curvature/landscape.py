"""Loss-landscape slices: ``L(θ + α d₁ + β d₂)`` on a grid of ``(α, β)``.

Directions are either random and **filter-normalised** (Li et al. 2018, "Visualizing the
loss landscape of neural nets"), so that slices of networks with different weight scales
are comparable, or the **line between two checkpoints**.

All slices evaluate the loss function they are given; for a trained model that is
:func:`jaxquant.curvature.hvp.model_loss` (eval mode, BatchNorm running statistics, the
quantizers of a quantized model on) on a fixed stack of batches.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from jaxquant.curvature.hvp import SEPARATOR, LossFn


@functools.partial(jax.jit, static_argnames="kernels_only")
def filter_normalized_direction(key: jax.Array, params, kernels_only: bool = True):
    """A random direction ``d`` like ``params``, normalised filter by filter.

    ``d ~ N(0, I)``; for each filter ``f`` of a ``kernel`` leaf (a slice along its last
    axis: one output channel of an HWIO conv kernel, one output unit of a dense kernel)
    ``d_f ← d_f · ‖θ_f‖ / ‖d_f‖``. Other leaves (biases, BatchNorm scale and shift,
    quantizer steps) get ``d = 0`` when ``kernels_only`` (Li et al.'s default), else are
    normalised as one filter each.
    """
    paths_and_leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
    keys = list(jax.random.split(key, len(paths_and_leaves))) if paths_and_leaves else []
    directions = []
    for leaf_key, (path, leaf) in zip(keys, paths_and_leaves, strict=True):
        leaf = jnp.asarray(leaf)
        is_kernel = str(getattr(path[-1], "key", path[-1])) == "kernel" and leaf.ndim >= 2
        if not is_kernel and kernels_only:
            directions.append(jnp.zeros_like(leaf))
            continue
        noise = jax.random.normal(leaf_key, leaf.shape, leaf.dtype)
        axes = tuple(range(leaf.ndim - 1)) if is_kernel else tuple(range(leaf.ndim))
        weight_norm = jnp.sqrt(jnp.sum(leaf**2, axis=axes, keepdims=True))
        noise_norm = jnp.sqrt(jnp.sum(noise**2, axis=axes, keepdims=True))
        directions.append(noise * weight_norm / jnp.maximum(noise_norm, 1e-12))
    return jax.tree.unflatten(treedef, directions)


@functools.partial(jax.jit, static_argnums=0)
def losses_at(loss_fn: LossFn, params, data, directions: tuple, coordinates: jax.Array) -> jax.Array:
    """``[P]`` losses ``L(θ + Σ_i c_pi d_i)`` for the ``[P, D]`` ``coordinates`` of ``D``
    directions, evaluated one point after another (``lax.map``)."""

    def loss_at(point):
        moved = jax.tree.map(
            lambda theta, *ds: theta + sum(c * d for c, d in zip(point, ds, strict=True)),
            params,
            *directions,
        )
        return loss_fn(moved, data)

    return jax.lax.map(loss_at, coordinates)


def slice_1d(loss_fn: LossFn, params, data, direction, alphas) -> np.ndarray:
    """``L(θ + α d)`` for each ``α`` in ``alphas``."""
    coordinates = jnp.asarray(alphas, jnp.float32)[:, None]
    return np.asarray(losses_at(loss_fn, params, data, (direction,), coordinates))


def slice_2d(loss_fn: LossFn, params, data, directions: tuple, alphas, betas) -> np.ndarray:
    """``[len(alphas), len(betas)]`` losses ``L(θ + α d₁ + β d₂)``."""
    grid_a, grid_b = np.meshgrid(np.asarray(alphas), np.asarray(betas), indexing="ij")
    coordinates = jnp.asarray(np.stack([grid_a.ravel(), grid_b.ravel()], axis=1), jnp.float32)
    losses = losses_at(loss_fn, params, data, tuple(directions), coordinates)
    return np.asarray(losses).reshape(grid_a.shape)


def checkpoint_line(start, end):
    """``(origin, direction)`` with ``θ(α) = origin + α·direction`` from ``start`` (α = 0) to
    ``end`` (α = 1), for two variable trees that need not have the same leaves.

    Leaves both trees have are interpolated. Leaves only ``end`` has (the quantizer steps
    and zero points when ``start`` is a full-precision model and ``end`` a quantized one)
    keep ``end``'s value all along the line, and the line is evaluated with ``end``'s
    model, so its quantizers are on everywhere. Leaves only ``start`` has are dropped. A
    shared leaf with two shapes is an error: the checkpoints come from different models.
    """
    flat_start = traverse_util.flatten_dict(start, sep=SEPARATOR)
    flat_end = traverse_util.flatten_dict(end, sep=SEPARATOR)
    origin, direction = {}, {}
    for name, end_value in flat_end.items():
        start_value = flat_start.get(name, end_value)
        if np.shape(start_value) != np.shape(end_value):
            raise ValueError(
                f"{name}: shape {np.shape(start_value)} in the first checkpoint, {np.shape(end_value)} "
                "in the second; a line needs two checkpoints of the same model"
            )
        origin[name] = jnp.asarray(start_value, jnp.result_type(end_value))
        direction[name] = jnp.asarray(end_value) - origin[name]
    unflatten = lambda flat: traverse_util.unflatten_dict(flat, sep=SEPARATOR)
    return unflatten(origin), unflatten(direction)


def interpolate(loss_fn: LossFn, start, end, data, alphas) -> np.ndarray:
    """``L((1 − α)·start + α·end)`` on the shared leaves (see :func:`checkpoint_line`)."""
    origin, direction = checkpoint_line(start, end)
    return slice_1d(loss_fn, origin, data, direction, alphas)
