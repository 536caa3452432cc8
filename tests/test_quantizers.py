"""Quantizer maths (jaxquant/quant/quantizers.py) against the formulas of methods.md §0–§1."""

import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings

from jaxquant.quant import quantizers as qz
from jaxquant.quant.layers import Quantizer
from jaxquant.quant.policy import QuantizerSpec

BITS = st.integers(qz.MIN_BITS, qz.MAX_BITS)
# a quantizer calibrated on [lo, lo + width], signed or unsigned grid, any bit width
GRIDS = dict(
    bits=BITS,
    signed=st.booleans(),
    lo=st.floats(-100.0, 0.0, allow_subnormal=False),
    width=st.floats(1e-3, 200.0),
)


def grid_setup(bits, signed, lo, hi):
    """Step, zero point and integer range of a min/max-calibrated quantizer for [lo, hi]."""
    rng = qz.int_range(bits, signed)
    step, zero = qz.minmax_step_and_zero_point(jnp.float32(lo), jnp.float32(hi), bits, signed, False)
    return step, zero, rng


def representable_range(step, zero, rng):
    """``[(q_min − z)·s, (q_max − z)·s]``: the values the grid spans."""
    return (rng.q_min - zero) * step, (rng.q_max - zero) * step


@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize("bits", [1, 2, 3, 4, 8, 16])
def test_int_range_has_two_to_the_b_levels(bits, signed):
    rng = qz.int_range(bits, signed)
    assert rng.levels == 2**bits
    if signed:
        assert (rng.q_min, rng.q_max) == (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    else:
        assert (rng.q_min, rng.q_max) == (0, 2**bits - 1)


@pytest.mark.parametrize("bad", [0, 17, -3, 2.5, True, "4", None])
def test_check_bits_rejects_with_field_name(bad):
    with pytest.raises(ValueError, match=r"quant\.w_bits=.* out of range: allowed integers 1\.\.16"):
        qz.check_bits(bad, "quant.w_bits")


@pytest.mark.parametrize("bits", [1, 16])
def test_check_bits_accepts_the_limits(bits):
    assert qz.check_bits(bits) == bits


def test_round_ste_rounds_forward_and_passes_gradient_straight_through():
    x = jnp.array([-1.7, -0.2, 0.4, 0.6, 2.49])
    np.testing.assert_array_equal(qz.round_ste(x), jnp.round(x))
    np.testing.assert_array_equal(jax.grad(lambda v: qz.round_ste(v).sum())(x), jnp.ones_like(x))


def test_scale_gradient_is_identity_forward_and_scales_backward():
    s = jnp.array([0.3, 1.5])
    np.testing.assert_array_equal(qz.scale_gradient(s, 0.25), s)
    grad = jax.grad(lambda v: jnp.sum(qz.scale_gradient(v, 0.25) ** 2))(s)
    np.testing.assert_allclose(grad, 0.25 * 2 * s, rtol=1e-6)


def test_lsq_grad_scale_formula():
    assert qz.lsq_grad_scale(100, 15) == pytest.approx(1 / np.sqrt(100 * 15))


def test_minmax_step_and_zero_point_formula():
    """Asymmetric: ``s = (max − min)/(2^b − 1)``, ``z = ⌊−min/s⌉`` (unsigned grid)."""
    lo, hi = jnp.array([-1.0, -0.3, 0.2]), jnp.array([2.0, 0.9, 1.0])
    step, zero = qz.minmax_step_and_zero_point(lo, hi, 4, signed=False, symmetric=False)
    lo_with_zero = np.minimum(np.asarray(lo), 0.0)  # the range is widened to contain 0
    expected_step = (np.asarray(hi) - lo_with_zero) / 15
    np.testing.assert_allclose(step, expected_step, rtol=1e-6)
    np.testing.assert_array_equal(zero, np.round(-lo_with_zero / expected_step))


def test_minmax_symmetric_formula():
    step, zero = qz.minmax_step_and_zero_point(jnp.float32(-3.0), jnp.float32(1.0), 4, True, True)
    assert float(step) == pytest.approx(3.0 / 7)
    assert float(zero) == 0.0


def test_lsq_init_step_formula():
    x = jnp.array([[1.0, -2.0], [3.0, 0.0]])
    np.testing.assert_allclose(qz.lsq_init_step(x, 15, None), 2 * 1.5 / np.sqrt(15), rtol=1e-6)
    np.testing.assert_allclose(
        qz.lsq_init_step(x, 15, channel_axis=-1), 2 * np.array([2.0, 1.0]) / np.sqrt(15), rtol=1e-6
    )


def test_ste_gradient_is_one_inside_and_zero_outside():
    step, zero, q_min, q_max = jnp.float32(0.1), jnp.float32(2.0), 0, 7
    # x/s + z: -3, -0.6 (below) | 0, 0.2, 1.5, 5.1, 7 (inside, edges included) | 7.3, 9 (above)
    x = jnp.array([-0.5, -0.26, -0.2, -0.18, -0.05, 0.31, 0.5, 0.53, 0.7])
    inside = np.array([0, 0, 1, 1, 1, 1, 1, 0, 0], np.float32)
    grad = jax.grad(lambda v: qz.fake_quantize(v, step, zero, q_min, q_max).sum())(x)
    np.testing.assert_array_equal(grad, inside)
    assert float(qz.clipped_fraction(x, step, zero, q_min, q_max)) == pytest.approx(4 / 9)


@pytest.mark.parametrize("signed", [False, True])
def test_clipped_fraction_is_the_share_of_zero_straight_through_gradients(signed):
    """Per-channel steps and zero points: the fraction equals the share of entries whose
    autodiff gradient through :func:`fake_quantize` is zero."""
    rng = qz.int_range(2, signed)
    kernel = jax.random.normal(jax.random.PRNGKey(3), (3, 3, 4, 5))
    step = jnp.array([0.2, 0.5, 1.0, 0.05, 0.3]).reshape(1, 1, 1, 5)
    zero = jnp.array([0.0, 1.0, -1.0, 0.0, 2.0]).reshape(1, 1, 1, 5) * (not signed)
    grad = jax.grad(lambda v: qz.fake_quantize(v, step, zero, rng.q_min, rng.q_max).sum())(kernel)
    expected = float(np.mean(np.asarray(grad) == 0.0))
    assert 0.0 < expected < 1.0
    assert float(qz.clipped_fraction(kernel, step, zero, rng.q_min, rng.q_max)) == pytest.approx(expected)


def lsq_step_gradient_formula(x, step, zero, q_min, q_max):
    """methods.md §1: ``⌊x/s⌉ − x/s`` inside, ``q_min − z`` below, ``q_max − z`` above."""
    x, step = np.asarray(x, np.float64), float(step)
    scaled = x / step + zero
    return np.where(
        scaled < q_min, q_min - zero, np.where(scaled > q_max, q_max - zero, np.round(x / step) - x / step)
    )


@pytest.mark.parametrize(("signed", "zero"), [(False, 0.0), (False, 5.0), (True, 0.0), (True, -3.0)])
def test_lsq_step_gradient_matches_hand_derived_formula(signed, zero):
    rng = qz.int_range(3, signed)
    step = jnp.float32(0.25)
    x = jnp.asarray(np.random.default_rng(0).uniform(-4, 4, 400), jnp.float32)
    x = x[np.abs(np.asarray(x) / 0.25 % 1 - 0.5) > 1e-3]  # keep away from round-half ties
    step_grad = jax.grad(lambda s, v: qz.fake_quantize(v, s, zero, rng.q_min, rng.q_max))
    per_element = jax.vmap(step_grad, (None, 0))
    got = per_element(step, x)
    expected = lsq_step_gradient_formula(x, step, zero, rng.q_min, rng.q_max)
    assert np.any(expected == rng.q_min - zero) and np.any(expected == rng.q_max - zero)
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_lsq_quantizer_step_gradient_is_formula_times_grad_scale():
    """In the module, ``∂L/∂s`` of ``L = Σ x̂`` is ``g·Σ formula``, ``g = 1/sqrt(N·Q_P)``."""
    spec = QuantizerSpec(bits=4, signed=False, channel_axis=None)
    x = jnp.asarray(np.random.default_rng(1).uniform(-1, 3, (2, 5, 5, 3)), jnp.float32)
    quantizer = Quantizer(spec, is_activation=True)
    variables = quantizer.init(jax.random.PRNGKey(0), x)
    step = variables["params"]["step"]
    zero = variables["quant_state"]["zero_point"]

    def total(params):
        return quantizer.apply({**variables, "params": params}, x)[0].sum()

    grad = jax.grad(total)({"step": step})["step"]
    expected = lsq_step_gradient_formula(x, step, float(zero), 0, 15).sum() / np.sqrt(5 * 5 * 3 * 15)
    np.testing.assert_allclose(grad, expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("axis", [0, 2, -1])
def test_per_channel_equals_quantizing_each_channel_alone(axis):
    kernel = jnp.asarray(np.random.default_rng(2).normal(size=(3, 5, 4, 6)), jnp.float32)
    reduce = qz.reduce_axes(kernel.ndim, axis)
    step, zero = qz.minmax_step_and_zero_point(kernel.min(reduce), kernel.max(reduce), 2, False, False)
    shape = [1] * kernel.ndim
    shape[axis] = kernel.shape[axis]
    quantized = qz.fake_quantize(kernel, step.reshape(shape), zero.reshape(shape), 0, 3)
    for c in range(kernel.shape[axis]):
        alone = qz.fake_quantize(jnp.take(kernel, c, axis), step[c], zero[c], 0, 3)
        np.testing.assert_array_equal(jnp.take(quantized, c, axis), alone)
        assert len(np.unique(np.asarray(alone))) <= 4


@settings(max_examples=40, deadline=None)
@given(**GRIDS)
def test_grid_has_two_to_the_b_levels(bits, signed, lo, width):
    step, zero, rng = grid_setup(bits, signed, lo, lo + width)
    low, high = representable_range(step, zero, rng)
    span = float(high - low)
    # one fixed length for every bit width, so that each op compiles once
    x = jnp.linspace(float(low) - 0.5 * span, float(high) + 0.5 * span, 4 * 2**qz.MAX_BITS, dtype=jnp.float32)
    codes = qz.quantize_to_int(x, step, zero, rng.q_min, rng.q_max)
    assert len(np.unique(np.asarray(codes))) == 2**bits
    assert len(np.unique(np.asarray(qz.fake_quantize(x, step, zero, rng.q_min, rng.q_max)))) == 2**bits


@settings(max_examples=40, deadline=None)
@given(**GRIDS, seed=st.integers(0, 2**16))
def test_idempotent_on_grid_and_error_at_most_half_step_inside(bits, signed, lo, width, seed):
    step, zero, rng = grid_setup(bits, signed, lo, lo + width)
    low, high = representable_range(step, zero, rng)
    x = jnp.asarray(np.random.default_rng(seed).uniform(float(low), float(high), 256), jnp.float32)
    x_hat = qz.fake_quantize(x, step, zero, rng.q_min, rng.q_max)
    # float32 rounding of x/s allows a sliver beyond s/2, growing with the number of levels
    tolerance = float(step) * (0.5 + 2**bits * 1e-6) + 1e-6 * float(jnp.max(jnp.abs(x)))
    assert float(jnp.max(jnp.abs(x_hat - x))) <= tolerance
    np.testing.assert_array_equal(qz.fake_quantize(x_hat, step, zero, rng.q_min, rng.q_max), x_hat)
    levels = np.resize(np.arange(rng.q_min, rng.q_max + 1, dtype=np.float32), 2**qz.MAX_BITS)  # fixed shape
    grid = (jnp.asarray(levels) - zero) * step
    np.testing.assert_array_equal(qz.fake_quantize(grid, step, zero, rng.q_min, rng.q_max), grid)


@settings(max_examples=25, deadline=None)
@given(bits=BITS, lo=st.floats(-10.0, -0.01), hi=st.floats(0.01, 10.0))
def test_minmax_grid_covers_the_observed_range(bits, lo, hi):
    """Calibrated from [lo, hi], the grid reaches both ends to within half a step."""
    step, zero, rng = grid_setup(bits, False, lo, hi)
    low, high = representable_range(step, zero, rng)
    assert float(step) == pytest.approx((hi - lo) / (2**bits - 1), rel=1e-5)
    assert float(low) <= lo + float(step) / 2 + 1e-6
    assert float(high) >= hi - float(step) / 2 - 1e-6
