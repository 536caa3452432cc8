"""Calibration observers: pure functions from a tensor to the range ``(lo, hi)`` to quantize.

An observer reduces over every axis except ``channel_axis`` (``None`` = one range for the
whole tensor). :func:`jaxquant.quant.quantizers.minmax_step_and_zero_point` turns the range
into a step size and zero point.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from jaxquant.quant.quantizers import reduce_axes

Observer = Callable[..., tuple[jax.Array, jax.Array]]


def minmax_observer(x: jax.Array, channel_axis: int | None, **unused) -> tuple[jax.Array, jax.Array]:
    """``(min x, max x)`` over the reduced axes: covers the data exactly."""
    axes = reduce_axes(x.ndim, channel_axis)
    return jnp.min(x, axis=axes), jnp.max(x, axis=axes)


OBSERVERS: dict[str, Observer] = {"minmax": minmax_observer}


def get_observer(name: str) -> Observer:
    if name not in OBSERVERS:
        raise ValueError(f"observer={name!r} is unknown: allowed values {sorted(OBSERVERS)}")
    return OBSERVERS[name]
