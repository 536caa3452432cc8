"""BatchNorm re-estimation: running statistics recomputed from data after training.

During QAT the BatchNorm running statistics are an exponential average over the last
training batches, taken while the (quantized) weights were still changing and on augmented
images. Re-estimation replaces them by the statistics of the final network on a fixed set of
images (Nagel et al. 2022, *Overcoming Oscillations in Quantization-Aware Training*, use it
after low-bit QAT).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxquant.quant.gaussian_noise import NOISE_STATS

BATCH_STATS = "batch_stats"


def reestimate_batch_stats(
    model: nn.Module, params, model_state: dict[str, Any], images: jax.Array, rng: jax.Array | None = None
) -> dict[str, Any]:
    """``model_state`` with every BatchNorm's running ``mean``/``var`` set to the batch
    statistics of ``images`` (one training-mode pass over all of them).

    Flax updates ``r ← m·r + (1 − m)·b`` with the module's momentum ``m`` and the batch
    statistic ``b``. Two passes, from ``r = 0`` and from ``r = 1``, give ``u₀ = (1 − m)·b``
    and ``u₁ = m + (1 − m)·b``, so ``b = u₀ / (u₀ − u₁ + 1)`` whatever each module's ``m``.
    Every statistic of a layer sees the same input in both passes (BatchNorm normalises with
    the batch statistics in training mode, never with the running ones), and ``rng`` feeds
    a model's ``'noise'`` stream the same way in both. Other collections (quantizer state,
    DNQ's running ranges) are kept as they are.
    """
    if BATCH_STATS not in model_state:
        return model_state
    rngs = {"noise": rng} if rng is not None else {}

    def updated_from(fill: float):
        start = jax.tree_util.tree_map(lambda x: jnp.full_like(x, fill), model_state[BATCH_STATS])
        variables = {"params": params, **model_state, BATCH_STATS: start}
        _, updates = model.apply(variables, images, train=True, mutable=[BATCH_STATS, NOISE_STATS], rngs=rngs)
        return updates[BATCH_STATS]

    from_zero, from_one = updated_from(0.0), updated_from(1.0)
    batch = jax.tree_util.tree_map(lambda u0, u1: u0 / (u0 - u1 + 1.0), from_zero, from_one)
    return {**model_state, BATCH_STATS: batch}
