"""Pure quantizer functions of the baseline methods: LSQ+, PACT and DoReFa (docs/methods.md §1).

Same notation as :mod:`jaxquant.quant.quantizers`: ``s`` step, ``b`` bits, ``[q_min, q_max]``
the integer grid, ``sg`` stop-gradient, ``⌊.⌉`` round-to-nearest. The modules that own the
learned parameters (``offset``, ``alpha``) are registered in :mod:`jaxquant.quant.kinds`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxquant.quant.quantizers import clip_closed, int_range, reduce_axes, round_ste

EPS = 1e-8


def fake_quantize_offset(
    x: jax.Array, step: jax.Array, offset: jax.Array, q_min: int, q_max: int
) -> jax.Array:
    """LSQ+ fake quantization with a real-valued learned offset ``β``.

    ``x̂ = clip(⌊(x − β)/s⌉, q_min, q_max)·s + β``, the round passed straight through.
    With ``u = (x − β)/s`` autodiff gives (Bhalgat et al. 2020):

    * ``∂x̂/∂x = 1`` inside the range ``q_min ≤ u ≤ q_max``, ``0`` outside;
    * ``∂x̂/∂s = ⌊u⌉ − u`` inside, ``q_min`` below, ``q_max`` above;
    * ``∂x̂/∂β = 0`` inside, ``1`` outside (below or above).

    (Clipping ``u`` before rounding equals clipping after it, the grid ends being integers.)
    """
    x_int = round_ste(clip_closed((x - offset) / step, q_min, q_max))
    return x_int * step + offset


def step_and_offset(
    x_min: jax.Array, x_max: jax.Array, bits: int, signed: bool
) -> tuple[jax.Array, jax.Array]:
    """LSQ+ min/max initialisation: the grid spans exactly ``[min, max]``.

    ``s = (max − min)/(2^b − 1)``, ``β = min − q_min·s`` (so ``q_min ↦ min``, ``q_max ↦ max``).
    """
    rng = int_range(bits, signed)
    step = jnp.maximum((x_max - x_min) / max(rng.levels - 1, 1), EPS)
    return step, x_min - rng.q_min * step


def pact_quantize(x: jax.Array, alpha: jax.Array, bits: int) -> jax.Array:
    """PACT (Choi et al. 2018): clip to a learned level ``α``, then quantize ``[0, α]``.

    ``y = clip(x, 0, α)``, ``ŷ = ⌊y·(2^b − 1)/α⌉·α/(2^b − 1)``. The whole quantization of
    ``y`` is passed straight through (``∂ŷ/∂y = 1``), as in the paper, so

    * ``∂ŷ/∂x = 1`` for ``0 ≤ x < α``, else ``0``;
    * ``∂ŷ/∂α = 1`` for ``x ≥ α``, else ``0``.
    """
    levels = 2**bits - 1
    y = jnp.where(x < 0, 0.0, jnp.where(x < alpha, x, alpha))
    y_hat = jnp.round(y * levels / alpha) * alpha / levels
    return y + jax.lax.stop_gradient(y_hat - y)


def quantize_unit(r: jax.Array, bits: int) -> jax.Array:
    """DoReFa's ``q_b(r) = ⌊(2^b − 1)·r⌉/(2^b − 1)`` for ``r ∈ [0, 1]``, straight-through."""
    levels = 2**bits - 1
    return round_ste(r * levels) / levels


def dorefa_weight(w: jax.Array, bits: int, channel_axis: int | None = None) -> jax.Array:
    """DoReFa weights (Zhou et al. 2016): ``ŵ = 2·q_b(tanh(w)/(2·max|tanh w|) + 1/2) − 1``.

    ``ŵ ∈ [−1, 1]`` on ``2^b`` levels; the max is over the whole tensor (``channel_axis``
    ``None``, the paper) or per channel. Gradient (round straight through): that of
    ``tanh(w)/max|tanh w|``, e.g. ``sech²(wᵢ)/M`` for an element that is not the max.
    """
    t = jnp.tanh(w)
    peak = jnp.max(jnp.abs(t), axis=reduce_axes(w.ndim, channel_axis), keepdims=True)
    return 2.0 * quantize_unit(t / (2.0 * jnp.maximum(peak, EPS)) + 0.5, bits) - 1.0


def dorefa_activation(x: jax.Array, bits: int) -> jax.Array:
    """DoReFa activations: ``x̂ = q_b(clip(x, 0, 1))``; ``∂x̂/∂x = 1`` on ``[0, 1]``, else 0."""
    return quantize_unit(clip_closed(x, 0.0, 1.0), bits)
