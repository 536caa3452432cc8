"""Exponential moving average of a pytree (the EMA teacher of CR and MEC-Quant)."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def ema_update(average, current, decay: float):
    """``θ_T ← α·θ_T + (1 − α)·θ_S`` leaf by leaf (``α = decay``; trees of equal structure)."""
    return jax.tree_util.tree_map(lambda a, c: decay * a + (1.0 - decay) * c, average, current)


def horizon_decay(total_steps: int, horizon_fraction: float, min_horizon: float = 1.0) -> float:
    """The decay whose time constant ``1/(1 − α)`` is ``horizon_fraction`` of the run, and at
    least ``min_horizon`` steps: ``α = 1 − 1/max(h_min, f·T)`` (``f = horizon_fraction``,
    ``T = total_steps``, ``h_min = min_horizon``, itself at least 1)."""
    return 1.0 - 1.0 / max(1.0, min_horizon, horizon_fraction * total_steps)


def warmup_decay(step: jax.Array, decay: float) -> jax.Array:
    """Mean-Teacher warm-up (Tarvainen & Valpola 2017): ``α_t = min(1 − 1/(t + 1), α)`` at
    update ``t`` (``t = 1`` after the first optimiser step), so an early teacher averages the
    student's few states so far instead of staying at its start."""
    t = jnp.asarray(step, jnp.float32)
    return jnp.minimum(1.0 - 1.0 / (t + 1.0), decay)
