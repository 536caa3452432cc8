"""FPQ's stochastic feature perturbation (SFP, docs/methods.md §2)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxquant.checks import check_choice

NOISE_GRANULARITIES = ("layer", "sample")


def uniform_feature_noise(
    rng: jax.Array, x: jax.Array, step: jax.Array, p: float, granularity: str = "layer"
) -> jax.Array:
    """``x + b·δ`` with ``δ ~ U[−s/2, s/2]`` elementwise, ``s = sg(step)`` and ``b ~ Bernoulli(p)``.

    ``granularity='layer'`` draws one ``b`` for the whole tensor (one draw per layer per
    step), ``'sample'`` one per sample (leading axis). ``|x_out − x| ≤ s/2`` everywhere.
    """
    check_choice(granularity, NOISE_GRANULARITIES, "method.granularity")
    fire_rng, noise_rng = jax.random.split(rng)
    half_step = jax.lax.stop_gradient(step) / 2
    noise = jax.random.uniform(noise_rng, x.shape, x.dtype, -1.0, 1.0) * half_step
    fire_shape = () if granularity == "layer" else (x.shape[0],) + (1,) * (x.ndim - 1)
    fire = jax.random.bernoulli(fire_rng, p, fire_shape)
    return x + jnp.where(fire, noise, 0.0)
