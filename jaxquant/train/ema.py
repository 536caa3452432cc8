"""Exponential moving average of a pytree (the EMA teacher of CR and MEC-Quant)."""

from __future__ import annotations

import jax


def ema_update(average, current, decay: float):
    """``θ_T ← α·θ_T + (1 − α)·θ_S`` leaf by leaf (``α = decay``; trees of equal structure)."""
    return jax.tree_util.tree_map(lambda a, c: decay * a + (1.0 - decay) * c, average, current)
