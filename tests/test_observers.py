"""Calibration observers against their definitions."""

import jax.numpy as jnp
import numpy as np
import pytest

from jaxquant.quant.layers import calibrated_step_and_zero_point
from jaxquant.quant.observers import (
    get_observer,
    minmax_observer,
    mse_observer,
    percentile_observer,
    quantization_error,
)
from jaxquant.quant.policy import QuantizerSpec
from jaxquant.quant.quantizers import fake_quantize, int_range, minmax_step_and_zero_point


def test_minmax_covers_the_data_exactly():
    x = jnp.asarray(np.random.default_rng(0).normal(size=(50, 6)) * np.arange(1, 7), jnp.float32)
    lo, hi = minmax_observer(x, channel_axis=-1)
    np.testing.assert_array_equal(lo, x.min(axis=0))
    np.testing.assert_array_equal(hi, x.max(axis=0))
    step, zero = minmax_step_and_zero_point(lo, hi, 8, signed=False, symmetric=False)
    x_hat = fake_quantize(x, step, zero, 0, 255)
    # nothing is clipped: every value is within half a step of its quantized value
    assert np.all(np.abs(x - x_hat) <= step / 2 + 1e-6)


@pytest.mark.parametrize("percentile", [99.0, 99.9])
def test_percentile_clips_the_right_fraction(percentile):
    x = jnp.asarray(np.random.default_rng(1).standard_t(df=3, size=(100_000, 3)), jnp.float32)
    lo, hi = percentile_observer(x, channel_axis=-1, percentile=percentile)
    expected = 1 - percentile / 100
    tolerance = 4 * np.sqrt(expected * (1 - expected) / x.shape[0])  # 4 binomial standard errors
    np.testing.assert_allclose(np.mean(x > hi, axis=0), expected, atol=tolerance)
    np.testing.assert_allclose(np.mean(x < lo, axis=0), expected, atol=tolerance)


def test_percentile_100_is_minmax():
    x = jnp.asarray(np.random.default_rng(2).normal(size=(40, 5)), jnp.float32)
    for got, want in zip(percentile_observer(x, None, percentile=100), minmax_observer(x, None), strict=True):
        np.testing.assert_allclose(got, want)


def test_mse_finds_lower_error_than_minmax_on_heavy_tailed_data():
    x = jnp.asarray(np.random.default_rng(3).laplace(size=(4096, 4)), jnp.float32)
    axes = (0,)
    errors = {}
    for name, observer in [("minmax", minmax_observer), ("mse", mse_observer)]:
        lo, hi = observer(x, -1, bits=4, signed=False, symmetric=False)
        errors[name] = quantization_error(x, lo, hi, 4, False, False, axes)
    assert np.all(errors["mse"] < 0.7 * errors["minmax"]), errors


def test_mse_is_the_argmin_over_the_grid():
    x = np.random.default_rng(4).laplace(size=(2000,)).astype(np.float32)
    grid, bits = 20, 3
    lo, hi = mse_observer(jnp.asarray(x), None, bits=bits, grid=grid)
    rng = int_range(bits, signed=False)

    def error(ratio):  # the formula in numpy: s = (max − min)/(2^b − 1), z = ⌊−min/s⌉
        a, b = min(ratio * x.min(), 0.0), max(ratio * x.max(), 0.0)
        s = (b - a) / (2**bits - 1)
        z = np.clip(np.round(-a / s), rng.q_min, rng.q_max)
        return np.sum((x - (np.clip(np.round(x / s) + z, rng.q_min, rng.q_max) - z) * s) ** 2)

    ratios = np.arange(1, grid + 1) / grid
    best = ratios[np.argmin([error(r) for r in ratios])]
    np.testing.assert_allclose([lo, hi], [best * x.min(), best * x.max()], rtol=1e-5)


def test_quantizer_spec_selects_the_observer():
    x = jnp.asarray(np.random.default_rng(5).standard_t(df=2, size=(64, 8)), jnp.float32)
    plain = QuantizerSpec(bits=4, signed=False, channel_axis=-1)
    clipped = QuantizerSpec(
        bits=4, signed=False, channel_axis=-1, observer="percentile", observer_options=(("percentile", 90.0),)
    )
    step_minmax, _ = calibrated_step_and_zero_point(plain, x)
    step_percentile, _ = calibrated_step_and_zero_point(clipped, x)
    lo, hi = percentile_observer(x, -1, percentile=90.0)
    want, _ = minmax_step_and_zero_point(lo, hi, 4, False, False)
    np.testing.assert_allclose(step_percentile.ravel(), want, rtol=1e-6)
    assert np.all(step_percentile < step_minmax)


def test_bad_observer_options_are_one_line_errors():
    x = jnp.ones((4, 4))
    with pytest.raises(ValueError, match=r"percentile=40.0 is out of range"):
        percentile_observer(x, None, percentile=40.0)
    with pytest.raises(ValueError, match=r"^grid=0 is out of range"):
        mse_observer(x, None, grid=0)
    with pytest.raises(ValueError, match=r"observer='kl' is unknown: allowed values \['minmax', 'mse'"):
        get_observer("kl")
