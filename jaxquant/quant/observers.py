"""Calibration observers: pure functions from a tensor to the range ``(lo, hi)`` to quantize.

An observer reduces over every axis except ``channel_axis`` (``None`` = one range for the
whole tensor). :func:`jaxquant.quant.quantizers.minmax_step_and_zero_point` turns the range
into a step size and zero point. Every observer is called as
``observer(x, channel_axis, bits=, signed=, symmetric=, **options)``; the quantizer fields
are there for observers that measure the quantization error (``mse``), the others ignore them.

Which observer a quantizer uses is ``QuantizerSpec.observer`` (``QuantPolicy.observer``),
its options ``QuantizerSpec.observer_options`` (a tuple of ``(name, value)`` pairs).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from jaxquant.quant.quantizers import int_range, minmax_step_and_zero_point, quantize_to_int, reduce_axes

Observer = Callable[..., tuple[jax.Array, jax.Array]]


def minmax_observer(x: jax.Array, channel_axis: int | None, **unused) -> tuple[jax.Array, jax.Array]:
    """``(min x, max x)`` over the reduced axes: covers the data exactly."""
    axes = reduce_axes(x.ndim, channel_axis)
    return jnp.min(x, axis=axes), jnp.max(x, axis=axes)


def check_percentile(percentile: float, field: str = "percentile") -> float:
    """``percentile`` must lie in ``(50, 100]`` (it is the upper quantile, in percent)."""
    if isinstance(percentile, bool) or not isinstance(percentile, int | float) or not 50 < percentile <= 100:
        raise ValueError(f"{field}={percentile!r} is out of range: allowed numbers in (50, 100]")
    return float(percentile)


def check_grid(grid: int, field: str = "grid") -> int:
    """The ``mse`` observer's grid size must be a positive integer."""
    if isinstance(grid, bool) or not isinstance(grid, int) or grid < 1:
        raise ValueError(f"{field}={grid!r} is out of range: allowed integers >= 1")
    return grid


def percentile_observer(
    x: jax.Array, channel_axis: int | None, percentile: float = 99.99, **unused
) -> tuple[jax.Array, jax.Array]:
    """``(P_{100−p}(x), P_p(x))``: the ``(100 − p)``-th and ``p``-th percentiles (linear
    interpolation) over the reduced axes.

    A fraction ``1 − p/100`` of the values lies above ``hi`` and the same fraction below
    ``lo``; quantization clips them. ``p = 100`` is :func:`minmax_observer`.
    """
    p = check_percentile(percentile)
    axes = reduce_axes(x.ndim, channel_axis)
    return jnp.percentile(x, 100.0 - p, axis=axes), jnp.percentile(x, p, axis=axes)


def quantization_error(
    x: jax.Array, lo: jax.Array, hi: jax.Array, bits: int, signed: bool, symmetric: bool, axes
) -> jax.Array:
    """``Σ (x − Q(x))²`` over ``axes``, ``Q`` the min/max quantizer of the range ``[lo, hi]``.

    ``Q(x) = (clip(⌊x/s⌉ + z, q_min, q_max) − z)·s`` with ``(s, z)`` from
    :func:`~jaxquant.quant.quantizers.minmax_step_and_zero_point`; ``lo``/``hi`` broadcast
    against ``x`` (reduced axes kept with size 1).
    """
    rng = int_range(bits, signed)
    step, zero = minmax_step_and_zero_point(lo, hi, bits, signed, symmetric)
    x_hat = (quantize_to_int(x, step, zero, rng.q_min, rng.q_max) - zero) * step
    return jnp.sum((x - x_hat) ** 2, axis=axes)


def mse_observer(
    x: jax.Array,
    channel_axis: int | None,
    bits: int = 8,
    signed: bool = False,
    symmetric: bool = False,
    grid: int = 100,
    **unused,
) -> tuple[jax.Array, jax.Array]:
    """The clip range that minimises the squared quantization error, per channel.

    ``(lo, hi) = α*·(min x, max x)`` with
    ``α* = argmin_{α ∈ {1/G, 2/G, ..., 1}} Σ (x − Q_α(x))²`` (``G = grid``), where ``Q_α`` is
    the ``bits``-bit min/max quantizer of the range ``α·(min x, max x)`` and the sum runs over
    the reduced axes, so each channel gets its own ``α*``. ``α = 1`` is the min/max range, so
    the error found is never above :func:`minmax_observer`'s.
    """
    check_grid(grid)
    axes = reduce_axes(x.ndim, channel_axis)
    lo = jnp.min(x, axis=axes, keepdims=True)
    hi = jnp.max(x, axis=axes, keepdims=True)
    ratios = jnp.arange(1, grid + 1, dtype=jnp.float32) / grid
    errors = jax.lax.map(
        lambda ratio: quantization_error(x, ratio * lo, ratio * hi, bits, signed, symmetric, axes), ratios
    )
    best = ratios[jnp.argmin(errors, axis=0)]
    return best * jnp.squeeze(lo, axes), best * jnp.squeeze(hi, axes)


OBSERVERS: dict[str, Observer] = {
    "minmax": minmax_observer,
    "percentile": percentile_observer,
    "mse": mse_observer,
}


def get_observer(name: str) -> Observer:
    if name not in OBSERVERS:
        raise ValueError(f"observer={name!r} is unknown: allowed values {sorted(OBSERVERS)}")
    return OBSERVERS[name]
