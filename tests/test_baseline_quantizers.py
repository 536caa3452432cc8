"""LSQ+, PACT and DoReFa: forward values and gradients against hand-derived numbers, and
the quantizer kinds (initialisation from calibration, first/last layer kind)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxquant.quant import QUANTIZER_KINDS, Quantizer, QuantizerSpec, QuantPolicy
from jaxquant.quant.baselines import (
    dorefa_activation,
    dorefa_weight,
    fake_quantize_offset,
    pact_quantize,
    quantize_unit,
)
from jaxquant.quant.quantizers import fake_quantize


def test_kinds_are_registered():
    assert {"lsq_plus", "pact", "dorefa"} <= set(QUANTIZER_KINDS)


# LSQ+ with s = 0.5, β = −0.3, 2-bit unsigned grid {0, 1, 2, 3}: x̂ ∈ {−0.3, 0.2, 0.7, 1.2}.
LSQ_PLUS_X = jnp.array([-1.0, -0.3, 0.1, 0.9, 2.0])
# u = (x − β)/s = [−1.4, 0, 0.8, 2.4, 4.6] → clipped codes [0, 0, 1, 2, 3].
LSQ_PLUS_EXPECTED = np.array([-0.3, -0.3, 0.2, 0.7, 1.2])
# ∂x̂/∂s: q_min = 0 below; ⌊u⌉ − u inside: 0 − 0, 1 − 0.8, 2 − 2.4; q_max = 3 above.
LSQ_PLUS_DSTEP = np.array([0.0, 0.0, 0.2, -0.4, 3.0])
# ∂x̂/∂β: 1 outside (below, above), 0 inside — including u = q_min exactly (x = β).
LSQ_PLUS_DOFFSET = np.array([1.0, 0.0, 0.0, 0.0, 1.0])
LSQ_PLUS_DX = np.array([0.0, 1.0, 1.0, 1.0, 0.0])


def test_lsq_plus_forward_matches_formula():
    out = fake_quantize_offset(LSQ_PLUS_X, 0.5, -0.3, 0, 3)
    np.testing.assert_allclose(out, LSQ_PLUS_EXPECTED, atol=1e-6)


def test_lsq_plus_gradients_are_the_hand_derived_ones():
    per_element = lambda x, s, b: fake_quantize_offset(x, s, b, 0, 3)
    step, offset = jnp.full(5, 0.5), jnp.full(5, -0.3)
    d_x, d_step, d_offset = jax.jacfwd(per_element, argnums=(0, 1, 2))(LSQ_PLUS_X, step, offset)
    np.testing.assert_allclose(jnp.diag(d_step), LSQ_PLUS_DSTEP, atol=1e-5)
    np.testing.assert_allclose(jnp.diag(d_offset), LSQ_PLUS_DOFFSET, atol=1e-6)
    np.testing.assert_allclose(jnp.diag(d_x), LSQ_PLUS_DX, atol=1e-6)


@settings(max_examples=30, deadline=None)
@given(
    st.lists(st.floats(-3, 3), min_size=16, max_size=16),
    st.floats(0.05, 1.0),
    st.floats(-1.0, 1.0),
    st.integers(1, 6),
)
def test_lsq_plus_grid_properties(values, step, offset, bits):
    x = jnp.asarray(values, jnp.float32)
    q_max = 2**bits - 1
    out = np.asarray(fake_quantize_offset(x, step, offset, 0, q_max))
    codes = (out - offset) / step
    np.testing.assert_allclose(codes, np.round(codes), atol=1e-3)  # on the grid
    assert codes.min() >= -1e-3 and codes.max() <= q_max + 1e-3  # 2^b levels
    inside = (x >= offset) & (x <= offset + q_max * step)
    assert np.all(np.abs(out - np.asarray(x))[inside] <= step / 2 + 1e-5)
    np.testing.assert_allclose(fake_quantize_offset(jnp.asarray(out), step, offset, 0, q_max), out, atol=1e-5)


# PACT with α = 1, 2 bits (levels 0, 1/3, 2/3, 1).
PACT_X = jnp.array([-0.5, 0.0, 0.3, 0.9, 1.0, 1.5])
PACT_EXPECTED = np.array([0.0, 0.0, 1 / 3, 1.0, 1.0, 1.0])


def test_pact_forward_matches_formula():
    np.testing.assert_allclose(pact_quantize(PACT_X, 1.0, 2), PACT_EXPECTED, atol=1e-6)
    # α = 2: y·3/2 = [0.45, 1.35, 2.25, 3] → codes [0, 1, 2, 3] → ·2/3.
    x = jnp.array([0.3, 0.9, 1.5, 2.5])
    np.testing.assert_allclose(pact_quantize(x, 2.0, 2), [0.0, 2 / 3, 4 / 3, 2.0], atol=1e-6)


def test_pact_alpha_gradient_is_one_where_x_reaches_alpha():
    weights = jnp.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    loss = lambda x, alpha: jnp.sum(weights * pact_quantize(x, alpha, 2))
    d_x, d_alpha = jax.grad(loss, argnums=(0, 1))(PACT_X, 1.0)
    # x ≥ α for x = 1.0 and 1.5: ∂/∂α = 5 + 6.
    assert float(d_alpha) == pytest.approx(11.0)
    # ∂ŷ/∂x = 1 on [0, α), 0 below 0 and from α on.
    np.testing.assert_allclose(d_x, [0.0, 2.0, 3.0, 4.0, 0.0, 0.0])


def test_quantize_unit_and_dorefa_activation():
    np.testing.assert_allclose(
        quantize_unit(jnp.array([0.0, 0.2, 0.5, 0.9, 1.0]), 2), [0, 1 / 3, 2 / 3, 1, 1]
    )
    x = jnp.array([-0.3, 0.0, 0.4, 1.0, 1.7])
    np.testing.assert_allclose(dorefa_activation(x, 2), [0.0, 0.0, 1 / 3, 1.0, 1.0], atol=1e-6)
    np.testing.assert_allclose(jax.grad(lambda v: jnp.sum(dorefa_activation(v, 2)))(x), [0, 1, 1, 1, 0])


def test_dorefa_weight_forward_and_gradient():
    w = jnp.array([0.2, -1.0, 0.5])
    peak = np.tanh(1.0)
    # tanh(w)/(2·max|tanh w|) + 1/2 = [0.630, 0, 0.803] → ⌊3r⌉/3 = [2/3, 0, 2/3] → 2q − 1.
    np.testing.assert_allclose(dorefa_weight(w, 2), [1 / 3, -1.0, 1 / 3], atol=1e-6)
    c = np.array([1.0, 2.0, 3.0])
    grad = jax.grad(lambda v: jnp.sum(c * dorefa_weight(v, 2)))(w)
    # STE: the gradient of Σ c·tanh(w)/M with M = |tanh w₁| (w₁ = −1 is the max), so
    # cᵢ·sech²(wᵢ)/M, and for w₁ also −(Σ c·tanh w)/M² · ∂M/∂w₁ with ∂M/∂w₁ = −sech²(w₁).
    t = np.tanh(np.asarray(w))
    sech2 = 1.0 - t**2
    expected = c * sech2 / peak
    expected[1] += np.sum(c * t) / peak**2 * sech2[1]
    np.testing.assert_allclose(grad, expected, rtol=1e-5)


def test_dorefa_weight_per_channel_uses_each_channel_max():
    w = jnp.array([[0.1, 2.0], [-0.1, -1.0]])  # (in, out): column maxima differ
    out = dorefa_weight(w, 3, channel_axis=-1)
    assert np.allclose(np.max(np.abs(out), axis=0), 1.0)  # each column reaches ±1
    levels = (np.asarray(out) + 1) / 2 * 7
    np.testing.assert_allclose(levels, np.round(levels), atol=1e-5)


def init_quantizer(kind: str, x: jax.Array, is_activation: bool = True, bits: int = 4, **spec):
    quantizer = Quantizer(QuantizerSpec(bits=bits, signed=False, kind=kind, **spec), is_activation)
    variables = quantizer.init(jax.random.PRNGKey(0), x)
    return quantizer, variables


def test_lsq_plus_kind_initialises_from_the_calibration_range():
    x = jnp.linspace(-1.2, 3.3, 64).reshape(4, 16)  # signed input, like a normalised image
    quantizer, variables = init_quantizer("lsq_plus", x)
    step, offset = variables["params"]["step"], variables["params"]["offset"]
    assert float(step) == pytest.approx(4.5 / 15, rel=1e-5)
    assert float(offset) == pytest.approx(-1.2, rel=1e-5)
    x_hat, _ = quantizer.apply(variables, x)
    assert float(jnp.max(jnp.abs(x_hat - x))) <= float(step) / 2 + 1e-5  # nothing clipped


def test_lsq_plus_kind_with_lsq_init_starts_the_grid_at_the_minimum():
    x = jnp.linspace(-1.2, 3.3, 64).reshape(4, 16)
    _, variables = init_quantizer("lsq_plus", x, init="lsq")
    expected_step = 2.0 * float(jnp.mean(jnp.abs(x))) / np.sqrt(15)
    assert float(variables["params"]["step"]) == pytest.approx(expected_step, rel=1e-5)
    assert float(variables["params"]["offset"]) == pytest.approx(-1.2, rel=1e-5)


def test_lsq_plus_kind_scales_both_gradients():
    x = jnp.array([[-2.0, 0.3, 5.0]])
    quantizer, variables = init_quantizer("lsq_plus", x, bits=2)
    params = {"step": jnp.asarray(0.5), "offset": jnp.asarray(-0.3)}
    grads = jax.grad(lambda p: jnp.sum(quantizer.apply({"params": p}, x)[0]))(params)
    g = 1.0 / np.sqrt(3 * 3)  # N = 3 elements per sample, Q_P = 3
    # x = −2 below (∂s q_min = 0, ∂β 1), 0.3 inside (u = 1.2: ∂s −0.2), 5 above (∂s 3, ∂β 1).
    assert float(grads["step"]) == pytest.approx((0.0 - 0.2 + 3.0) * g, rel=1e-4)
    assert float(grads["offset"]) == pytest.approx(2.0 * g, rel=1e-4)


def test_pact_kind_initialises_alpha_at_the_maximum_and_reports_its_step():
    x = jnp.array([[0.0, 0.5, 2.5, 1.0]])
    quantizer, variables = init_quantizer("pact", x, bits=2)
    assert float(variables["params"]["alpha"]) == pytest.approx(2.5)
    x_hat, step = quantizer.apply(variables, x)
    assert float(step) == pytest.approx(2.5 / 3)
    np.testing.assert_allclose(x_hat, pact_quantize(x, 2.5, 2))


def test_dorefa_kind_has_no_variables_and_tells_weights_from_activations():
    w = jnp.array([[0.2], [-1.0], [0.5]])
    quantizer, variables = init_quantizer("dorefa", w, is_activation=False, bits=2, channel_axis=-1)
    assert "params" not in variables
    w_hat, step = quantizer.apply(variables, w)
    np.testing.assert_allclose(w_hat[:, 0], [1 / 3, -1.0, 1 / 3], atol=1e-6)
    assert float(step) == pytest.approx(2 / 3)
    act, _ = init_quantizer("dorefa", w, bits=2)
    x_hat, step = act.apply({}, w)
    np.testing.assert_allclose(x_hat[:, 0], [1 / 3, 0.0, 2 / 3], atol=1e-6)
    assert float(step) == pytest.approx(1 / 3)


def test_first_last_kind_replaces_both_kinds_at_the_ends_only():
    policy = QuantPolicy(w_bits=2, a_bits=2, weight_kind="dorefa", act_kind="pact", first_last_kind="lsq")
    for role in ("first", "last"):
        layer = policy.layer(role)
        assert (layer.weight.kind, layer.input.kind, layer.input.bits) == ("lsq", "lsq", 8)
    middle = policy.layer("middle")
    assert (middle.weight.kind, middle.input.kind, middle.input.bits) == ("dorefa", "pact", 2)
    assert QuantPolicy(w_bits=2, a_bits=2, act_kind="pact").layer("first").input.kind == "pact"


def test_lsq_counts_values_rounding_onto_a_grid_end_as_inside():
    """LSQ ``⌊clip(x/s, q_min − z, q_max − z)⌉ + z``: z = 1 on {0..3} represents {−1, 0, 1, 2}."""
    x = jnp.array([-1.4, -1.0, 0.5, 1.9, 2.5])
    out = fake_quantize(x, 1.0, 1.0, 0, 3)
    np.testing.assert_allclose(out, np.clip(np.round(np.asarray(x)) + 1, 0, 3) - 1)
    per_element = lambda v, s: fake_quantize(v, s, 1.0, 0, 3)
    d_x, d_step = jax.jacfwd(per_element, argnums=(0, 1))(x, jnp.ones(5))
    # Inside (grid ends included): ∂x̂/∂x = 1, ∂x̂/∂s = ⌊x/s⌉ − x/s; below q_min − z = −1,
    # above q_max − z = 2.
    np.testing.assert_allclose(jnp.diag(d_x), [0.0, 1.0, 1.0, 1.0, 0.0])
    np.testing.assert_allclose(jnp.diag(d_step), [-1.0, 0.0, -0.5, 0.1, 2.0], atol=1e-6)
