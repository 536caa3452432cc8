"""Pure fake-quantization functions and straight-through estimators.

Notation (docs/methods.md): ``s`` step size, ``z`` zero point, ``b`` bit width,
``[q_min, q_max]`` the integer range, ``sg`` stop-gradient, ``⌊.⌉`` round-to-nearest.

Every function here is a plain function of arrays, so it can be jitted, differentiated
and tested against its formula in isolation. Modules in :mod:`jaxquant.quant.layers`
only own the variables and call these.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

MIN_BITS = 1
MAX_BITS = 16


def check_bits(bits: int, field: str = "bits") -> int:
    """Return ``bits`` if it lies in ``[MIN_BITS, MAX_BITS]``, else raise a clear error."""
    if not isinstance(bits, int) or isinstance(bits, bool) or not MIN_BITS <= bits <= MAX_BITS:
        raise ValueError(f"{field}={bits!r} is out of range: allowed integers {MIN_BITS}..{MAX_BITS}")
    return bits


@dataclasses.dataclass(frozen=True)
class IntRange:
    """The integer grid ``{q_min, ..., q_max}`` of a ``b``-bit quantizer."""

    q_min: int
    q_max: int

    @property
    def levels(self) -> int:
        return self.q_max - self.q_min + 1


def int_range(bits: int, signed: bool) -> IntRange:
    """Integer range of a ``b``-bit quantizer.

    signed:   ``[-2^(b-1), 2^(b-1) - 1]`` (``Q_N = 2^(b-1)``, ``Q_P = 2^(b-1) - 1``);
    unsigned: ``[0, 2^b - 1]`` (``Q_N = 0``, ``Q_P = 2^b - 1``).
    Both have exactly ``2^b`` levels.
    """
    check_bits(bits)
    if signed:
        return IntRange(-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    return IntRange(0, 2**bits - 1)


def round_ste(x: jax.Array) -> jax.Array:
    """Round to nearest with a straight-through gradient: ``x + sg(⌊x⌉ − x)``.

    Forward ``⌊x⌉``; backward ``∂/∂x = 1``.
    """
    return x + jax.lax.stop_gradient(jnp.round(x) - x)


def clip_closed(x: jax.Array, lo: jax.Array | float, hi: jax.Array | float) -> jax.Array:
    """``clip(x, lo, hi)`` whose gradient is 1 on the closed interval ``[lo, hi]``, 0 outside.

    ``jnp.clip`` gives ``1/2`` at ``x = lo`` or ``x = hi``, which would halve the gradient of
    every value that sits exactly on a grid end (ReLU zeros, values rounding to ``q_max``).
    """
    return jnp.where(x < lo, lo, jnp.where(x > hi, hi, x))


def scale_gradient(x: jax.Array, scale: float | jax.Array) -> jax.Array:
    """Identity forward, gradient multiplied by ``scale``: ``x·g + sg(x − x·g)`` (LSQ)."""
    scaled = x * scale
    return scaled + jax.lax.stop_gradient(x - scaled)


def fake_quantize(x: jax.Array, step: jax.Array, zero_point: jax.Array, q_min: int, q_max: int) -> jax.Array:
    """Uniform fake quantization with a learnable step (LSQ estimator).

    ``x_int = ⌊clip(x/s + z, q_min, q_max)⌉``, ``x̂ = (x_int − z)·s``, the round passed
    straight through. For an integer ``z`` the forward value equals
    ``clip(⌊x/s⌉ + z, q_min, q_max)`` (docs/methods.md §0); clipping before rounding (as in
    LSQ, §1) makes the range test act on ``x/s + z`` itself, so autodiff gives exactly the
    LSQ gradients, with "inside" meaning ``q_min ≤ x/s + z ≤ q_max``:

    * ``∂x̂/∂x = 1`` inside the range, ``0`` outside (clipped);
    * ``∂x̂/∂s = ⌊x/s⌉ − x/s`` inside, ``q_min − z`` below, ``q_max − z`` above
      (``−Q_N`` and ``Q_P`` for ``z = 0``).

    Computed as ``⌊clip(x/s, q_min − z, q_max − z)⌉ + z`` (the same values, the bounds being
    integers), with the clip's gradient 1 on the closed range: a value that rounds onto a
    grid end counts as inside, as in LSQ's ``⌊clip(x/s, −Q_N, Q_P)⌉``.

    ``step`` and ``zero_point`` broadcast against ``x`` (scalars for per-tensor, shaped
    with singleton axes for per-channel). ``zero_point`` is treated as a constant.
    """
    zero_point = jax.lax.stop_gradient(zero_point)
    x_int = round_ste(clip_closed(x / step, q_min - zero_point, q_max - zero_point)) + zero_point
    return (x_int - zero_point) * step


def quantize_to_int(
    x: jax.Array, step: jax.Array, zero_point: jax.Array, q_min: int, q_max: int
) -> jax.Array:
    """Integer codes ``clip(⌊x/s⌉ + z, q_min, q_max)`` (no gradient), for export and tests."""
    return jnp.clip(jnp.round(x / step) + zero_point, q_min, q_max)


def clipped_fraction(
    x: jax.Array, step: jax.Array, zero_point: jax.Array, q_min: int, q_max: int
) -> jax.Array:
    """The fraction of ``x`` outside the grid, the entries whose straight-through gradient
    :func:`fake_quantize` makes zero: ``mean[x/s + z < q_min or x/s + z > q_max]``.

    A clipped latent weight gets no gradient from the loss (``∂x̂/∂x = 0``), so it adds
    nothing to a Hessian taken with respect to the latent weights. ``step`` and
    ``zero_point`` broadcast against ``x`` as in :func:`fake_quantize`.
    """
    scaled = x / step + zero_point
    return jnp.mean((scaled < q_min) | (scaled > q_max))


def lsq_grad_scale(num_elements_per_step: int, q_max: int) -> float:
    """LSQ gradient scale ``g = 1/sqrt(N·Q_P)`` with ``N`` elements sharing one step."""
    return 1.0 / float(max(num_elements_per_step * max(q_max, 1), 1)) ** 0.5


def reduce_axes(ndim: int, channel_axis: int | None) -> tuple[int, ...]:
    """Axes to reduce over for per-tensor (``channel_axis=None``) or per-channel statistics."""
    if channel_axis is None:
        return tuple(range(ndim))
    channel_axis = channel_axis % ndim
    return tuple(a for a in range(ndim) if a != channel_axis)


def minmax_step_and_zero_point(
    x_min: jax.Array, x_max: jax.Array, bits: int, signed: bool, symmetric: bool
) -> tuple[jax.Array, jax.Array]:
    """Step and zero point from an observed range (the group's min/max init).

    asymmetric: ``s = (max − min)/(2^b − 1)``, ``z = q_min + ⌊−min/s⌉`` (for unsigned
    grids ``z = ⌊−min/s⌉``, as in docs/methods.md §0), clipped into the grid;
    symmetric:  ``s = max(|min|, |max|)/Q_P``, ``z = 0``.
    The range is first widened to contain 0, so that 0 is exactly representable.
    """
    rng = int_range(bits, signed)
    x_min = jnp.minimum(x_min, 0.0)
    x_max = jnp.maximum(x_max, 0.0)
    eps = jnp.finfo(jnp.float32).tiny * 1e6
    if symmetric:
        bound = jnp.maximum(-x_min, x_max)
        step = jnp.maximum(bound / max(rng.q_max, 1), eps)
        return step, jnp.zeros_like(step)
    step = jnp.maximum((x_max - x_min) / (rng.levels - 1 if rng.levels > 1 else 1), eps)
    zero_point = jnp.clip(rng.q_min + jnp.round(-x_min / step), rng.q_min, rng.q_max)
    return step, zero_point


def lsq_init_step(x: jax.Array, q_max: int, channel_axis: int | None) -> jax.Array:
    """LSQ step initialisation ``s = 2·mean|x| / sqrt(Q_P)`` (per tensor or per channel)."""
    axes = reduce_axes(x.ndim, channel_axis)
    mean_abs = jnp.mean(jnp.abs(x), axis=axes)
    return jnp.maximum(2.0 * mean_abs / max(q_max, 1) ** 0.5, 1e-8)
