"""Weight and feature perturbations as pure functions (DNQ, docs/methods.md §5; SAM, §1).

DNQ models the rounding error of a uniform quantizer with step ``s`` as independent noise of
the same variance: rounding error is ``U[−s/2, s/2]``, whose variance is ``s²/12``. Training
the FP network under ``N(0, s²/12)`` noise seeks a minimum that the later post-training
quantization does not leave.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from jaxquant.objectives.ema import ema_update


def rounding_noise_std(step: jax.Array, noise_scale: float = 1.0) -> jax.Array:
    """``σ = c·s/sqrt(12)``: the std of rounding noise ``U[−s/2, s/2]`` times ``c = noise_scale``."""
    return noise_scale * step / jnp.sqrt(12.0)


def add_gaussian_rounding_noise(
    rng: jax.Array, x: jax.Array, step: jax.Array, noise_scale: float = 1.0
) -> jax.Array:
    """``x + ε``, ``ε ~ N(0, c²·s²/12)`` elementwise, independent draws.

    ``step`` (per tensor or broadcastable per channel) is held constant: ``sg(s)``, so no
    gradient flows into it; ``∂/∂x`` is the identity.
    """
    std = rounding_noise_std(jax.lax.stop_gradient(step), noise_scale)
    return x + std * jax.random.normal(rng, x.shape, x.dtype)


def with_probability(rng: jax.Array, p: float, perturbed: jax.Array, clean: jax.Array) -> jax.Array:
    """``perturbed`` with probability ``p``, else ``clean``: one Bernoulli(p) draw for the
    whole tensor (one decision per layer and step)."""
    return jnp.where(jax.random.bernoulli(rng, p), perturbed, clean)


def running_range_update(
    running_min: jax.Array,
    running_max: jax.Array,
    batch_min: jax.Array,
    batch_max: jax.Array,
    momentum: float,
    initialised: jax.Array,
) -> tuple[jax.Array, jax.Array]:
    """Exponential moving average of batch extremes: ``r ← m·r + (1 − m)·b``, and ``r ← b``
    on the first update (``initialised`` false), so the zero init does not bias the range."""
    new_min, new_max = ema_update((running_min, running_max), (batch_min, batch_max), momentum)
    return jnp.where(initialised, new_min, batch_min), jnp.where(initialised, new_max, batch_max)


def sam_weight_perturbation(params, grads, rho: float):
    """SAM's ascent point ``w + ρ·g/max(‖g‖, 10⁻¹²)`` (``‖g‖`` the global L2 norm over the
    pytree; the floor keeps a zero gradient finite)."""
    scale = rho / jnp.maximum(optax.tree.norm(grads), 1e-12)
    return jax.tree_util.tree_map(lambda w, g: w + scale * g, params, grads)
