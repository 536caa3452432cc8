"""Quantizer kinds of the baselines: ``lsq_plus``, ``pact``, ``dorefa``.

Each is ``fn(module, x, calibrating) -> (x̂, step)`` registered in
:data:`jaxquant.quant.layers.QUANTIZER_KINDS` (this module is imported by
:mod:`jaxquant.quant`, so the kinds always exist). The maths is in
:mod:`jaxquant.quant.baselines`; here only the learned variables live:

* ``lsq_plus``: ``params/step`` and ``params/offset`` (β), from the calibration range;
* ``pact``:     ``params/alpha`` (the clip level α), the observer's maximum on calibration;
* ``dorefa``:   no variables.

PACT and DoReFa activations are unsigned by construction (``[0, α]``, ``[0, 1]``): they
suit post-ReLU inputs, not the signed normalised image of the first layer — the methods
give first and last layers their own kind (``method.first_last_kind``, default ``lsq``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxquant.quant import baselines
from jaxquant.quant import quantizers as qz
from jaxquant.quant.layers import Quantizer, elements_per_step, register_quantizer_kind, stat_shape
from jaxquant.quant.observers import get_observer
from jaxquant.quant.policy import QuantizerSpec


def observed_range(spec: QuantizerSpec, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(lo, hi)`` of ``x`` from the spec's observer, shaped to broadcast against ``x``."""
    lo, hi = get_observer(spec.observer)(x, spec.channel_axis, **dict(spec.observer_options))
    shape = stat_shape(x, spec.channel_axis)
    return lo.reshape(shape), hi.reshape(shape)


def lsq_plus_init(spec: QuantizerSpec, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(s, β)``: grid over the observed ``[lo, hi]`` (``quant.init = minmax``), or the LSQ
    step ``2·mean|x|/sqrt(Q_P)`` with the grid starting at ``lo`` (``quant.init = lsq``)."""
    lo, hi = observed_range(spec, x)
    if spec.init == "lsq":
        rng = qz.int_range(spec.bits, spec.signed)
        step = qz.lsq_init_step(x, rng.q_max, spec.channel_axis).reshape(lo.shape)
        return step, lo - rng.q_min * step
    return baselines.step_and_offset(lo, hi, spec.bits, spec.signed)


@register_quantizer_kind("lsq_plus")
def lsq_plus_quantizer(module: Quantizer, x: jax.Array, calibrating: bool):
    """LSQ+: ``x̂ = clip(⌊(x − β)/s⌉, q_min, q_max)·s + β`` with learned ``s`` and ``β``.

    Both gradients are scaled by ``g = 1/sqrt(N·Q_P)`` when ``spec.grad_scale`` (as LSQ+).
    """
    spec = module.spec
    rng = qz.int_range(spec.bits, spec.signed)
    step = module.variable("params", "step", lambda: lsq_plus_init(spec, x)[0])
    offset = module.variable("params", "offset", lambda: lsq_plus_init(spec, x)[1])
    if calibrating:
        step.value, offset.value = lsq_plus_init(spec, x)
    s, beta = step.value, offset.value
    if spec.grad_scale:
        n = elements_per_step(x, spec.channel_axis, module.is_activation, spec.act_grad_scale_elements)
        g = qz.lsq_grad_scale(n, rng.q_max)
        s, beta = qz.scale_gradient(s, g), qz.scale_gradient(beta, g)
    s = jnp.abs(s) + 1e-12
    return baselines.fake_quantize_offset(x, s, beta, rng.q_min, rng.q_max), s


def pact_alpha_init(spec: QuantizerSpec, x: jax.Array) -> jax.Array:
    """``α`` = the observer's upper end of ``x`` (the maximum for ``minmax``)."""
    return jnp.maximum(observed_range(spec, x)[1], baselines.EPS)


@register_quantizer_kind("pact")
def pact_quantizer(module: Quantizer, x: jax.Array, calibrating: bool):
    """PACT: ``ŷ = ⌊clip(x, 0, α)·(2^b − 1)/α⌉·α/(2^b − 1)`` with learned ``α``; step ``α/(2^b − 1)``."""
    spec = module.spec
    alpha = module.variable("params", "alpha", lambda: pact_alpha_init(spec, x))
    if calibrating:
        alpha.value = pact_alpha_init(spec, x)
    a = jnp.maximum(alpha.value, baselines.EPS)
    return baselines.pact_quantize(x, a, spec.bits), a / (2**spec.bits - 1)


@register_quantizer_kind("dorefa")
def dorefa_quantizer(module: Quantizer, x: jax.Array, calibrating: bool):
    """DoReFa: weights ``2·q_b(tanh(w)/(2·max|tanh w|) + 1/2) − 1`` (max per
    ``spec.channel_axis``), activations ``q_b(clip(x, 0, 1))``; nothing is learned."""
    spec = module.spec
    levels = 2**spec.bits - 1
    if module.is_activation:
        return baselines.dorefa_activation(x, spec.bits), jnp.asarray(1.0 / levels)
    return baselines.dorefa_weight(x, spec.bits, spec.channel_axis), jnp.asarray(2.0 / levels)
