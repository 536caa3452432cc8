"""BatchNorm re-estimation: running statistics recomputed from clean data.

During QAT the BatchNorm running statistics are an exponential average over the last
training batches, taken while the (quantized) weights were still changing and on augmented
images; at the start of QAT they are the FP network's, gathered under full-precision weights.
Re-estimation replaces them by the statistics of the current network on a fixed set of clean
images (Nagel et al. 2022, *Overcoming Oscillations in Quantization-Aware Training*, use it
after low-bit QAT). The training loop applies it per ``train.bn_reestimate``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxquant.models import without_perturbations

BATCH_STATS = "batch_stats"


def chunk_batch_stats(model: nn.Module, params, model_state: dict[str, Any], images: jax.Array):
    """Every BatchNorm's batch statistics on ``images`` (one training-mode pass): a tree like
    ``model_state['batch_stats']`` whose ``mean``/``var`` are those of this chunk.

    Flax updates ``r ← m·r + (1 − m)·b`` with the module's momentum ``m`` and the batch
    statistic ``b``. Two passes, from ``r = 0`` and from ``r = 1``, give ``u₀ = (1 − m)·b``
    and ``u₁ = m + (1 − m)·b``, so ``b = u₀ / (u₀ − u₁ + 1)`` whatever each module's ``m``.
    Every statistic of a layer sees the same input in both passes (BatchNorm normalises with
    the batch statistics in training mode, never with the running ones). ``model`` must carry
    no perturbation (see :func:`reestimate_batch_stats`).
    """

    def updated_from(fill: float):
        start = jax.tree_util.tree_map(lambda x: jnp.full_like(x, fill), model_state[BATCH_STATS])
        variables = {"params": params, **model_state, BATCH_STATS: start}
        _, updates = model.apply(variables, images, train=True, mutable=[BATCH_STATS])
        return updates[BATCH_STATS]

    from_zero, from_one = updated_from(0.0), updated_from(1.0)
    return jax.tree_util.tree_map(lambda u0, u1: u0 / (u0 - u1 + 1.0), from_zero, from_one)


def pooled_moments(chunks: list[dict[str, Any]]) -> dict[str, Any]:
    """The statistics of the union of equal-sized chunks from each chunk's ``mean``/``var``
    (law of total variance; BatchNorm's ``var`` is the biased ``E[x²] − E[x]²``):

    ``μ = mean_c μ_c``, ``σ² = mean_c (σ_c² + μ_c²) − μ²``.
    """

    def pool(node):
        if isinstance(node[0], dict) and set(node[0]) == {"mean", "var"}:
            means = jnp.stack([c["mean"] for c in node])
            second = jnp.stack([c["var"] + c["mean"] ** 2 for c in node])
            mean = jnp.mean(means, axis=0)
            return {"mean": mean, "var": jnp.maximum(jnp.mean(second, axis=0) - mean**2, 0.0)}
        if isinstance(node[0], dict):
            return {key: pool([c[key] for c in node]) for key in node[0]}
        return jnp.mean(jnp.stack(node), axis=0)

    return pool(chunks)


# compiled once per model (flax modules are hashable) and shapes, not at every re-estimation
jitted_chunk_batch_stats = jax.jit(chunk_batch_stats, static_argnums=0)
jitted_pooled_moments = jax.jit(pooled_moments)


def reestimate_batch_stats(
    model: nn.Module,
    params,
    model_state: dict[str, Any],
    images: np.ndarray | jax.Array,
    chunk_size: int = 0,
    place: Callable[[np.ndarray], jax.Array] | None = None,
) -> dict[str, Any]:
    """``model_state`` with every BatchNorm's running ``mean``/``var`` replaced by the
    statistics of the current network on ``images``.

    The model runs with every perturbation off (:func:`~jaxquant.models.without_perturbations`:
    no SFP or DNQ noise can fire) and no quantizer is recalibrated. ``images`` go through in
    chunks of ``chunk_size`` (0: one chunk; a remainder that does not fill a chunk is left
    out), each chunk's statistics taken in training mode as BatchNorm sees a batch, and the
    chunks pooled with :func:`pooled_moments`. ``place`` puts a chunk on the devices (e.g.
    split over a mesh); by default it is used as it is. Deterministic: the same inputs give
    the same statistics. Other collections (quantizer state, noise statistics) are kept.
    """
    if BATCH_STATS not in model_state:
        return model_state
    clean = without_perturbations(model)
    chunk_size = chunk_size or len(images)
    count = len(images) // chunk_size
    if count < 1:
        raise ValueError(f"BatchNorm re-estimation got {len(images)} images for chunks of {chunk_size}")
    place = place or jnp.asarray
    chunks = [
        jitted_chunk_batch_stats(
            clean, params, model_state, place(np.asarray(images[i * chunk_size : (i + 1) * chunk_size]))
        )
        for i in range(count)
    ]
    # pooled under jit: one SPMD program, which every process of a multi-process run executes
    # alike (eager ops on global arrays can deadlock there)
    return {**model_state, BATCH_STATS: jitted_pooled_moments(chunks)}
