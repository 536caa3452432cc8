"""The pure terms of FPQ, CR and MEC-Quant (and KD) against their formulas, on small arrays."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxquant.data.augment import random_cutout
from jaxquant.methods.cr import labelled_mask
from jaxquant.objectives.coding_length import (
    coding_length,
    cross_gram,
    expert_slices,
    lambda_warmup,
    logdet_taylor,
    mec_loss,
    mec_moe_loss,
)
from jaxquant.objectives.consistency import consistency_kl, feature_consistency, ramp_weight
from jaxquant.objectives.distillation import channel_standardize, csd_loss, kd_loss
from jaxquant.objectives.ema import ema_update
from jaxquant.objectives.feature_noise import uniform_feature_noise

RNG = np.random.default_rng(0)


def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_kd_loss_formula_and_teacher_stop_gradient():
    s, t, tau = RNG.normal(size=(5, 7)), RNG.normal(size=(5, 7)), 3.0
    p, q = softmax(t / tau), softmax(s / tau)
    expected = tau**2 * np.mean(np.sum(p * (np.log(p) - np.log(q)), -1))
    np.testing.assert_allclose(kd_loss(jnp.asarray(s), jnp.asarray(t), tau), expected, rtol=1e-5)
    grad_s, grad_t = jax.grad(kd_loss, argnums=(0, 1))(jnp.asarray(s), jnp.asarray(t), tau)
    np.testing.assert_allclose(grad_s, tau * (q - p) / 5, rtol=1e-4, atol=1e-7)
    assert not np.any(np.asarray(grad_t))
    assert float(kd_loss(jnp.asarray(t), jnp.asarray(t), tau)) == pytest.approx(0.0, abs=1e-6)


def test_channel_standardize_per_channel_over_batch_and_space():
    z = RNG.normal(size=(4, 3, 3, 5)) * np.arange(1, 6) + np.arange(5)
    out = np.asarray(channel_standardize(jnp.asarray(z), eps=1e-5))
    np.testing.assert_allclose(out.mean(axis=(0, 1, 2)), 0.0, atol=1e-5)
    var = z.var(axis=(0, 1, 2))
    np.testing.assert_allclose(out.var(axis=(0, 1, 2)), var / (var + 1e-5), rtol=1e-5)


def csd_reference(student, teacher, eps, reduction):
    total = 0.0
    for s, t in zip(student, teacher, strict=True):
        norm = lambda z: (z - z.mean((0, 1, 2))) / np.sqrt(z.var((0, 1, 2)) + eps)
        per_channel = ((norm(t) - norm(s)) ** 2).sum(axis=(0, 1, 2))  # ‖.‖² over (B, H, W)
        divisor = s.shape[0] * (1 if reduction == "batch" else s.shape[1] * s.shape[2])
        total += per_channel.sum() / divisor
    return total


@pytest.mark.parametrize("reduction", ["batch", "elements"])
def test_csd_loss_formula_and_teacher_stop_gradient(reduction):
    student = [RNG.normal(size=(3, 4, 4, 2)), RNG.normal(size=(3, 2, 2, 5))]
    teacher = [s + 0.5 * RNG.normal(size=s.shape) for s in student]
    as_jax = lambda maps: [jnp.asarray(m) for m in maps]
    value = csd_loss(as_jax(student), as_jax(teacher), 1e-5, reduction)
    np.testing.assert_allclose(value, csd_reference(student, teacher, 1e-5, reduction), rtol=1e-5)
    grad_t = jax.grad(lambda t: csd_loss(as_jax(student), t, 1e-5, reduction))(as_jax(teacher))
    assert not any(np.any(np.asarray(g)) for g in grad_t)
    assert float(csd_loss(as_jax(student), as_jax(student))) == pytest.approx(0.0, abs=1e-8)
    with pytest.raises(ValueError, match="one teacher map per student map"):
        csd_loss(as_jax(student), as_jax(teacher[:1]))
    with pytest.raises(ValueError, match=r"method.csd_reduction='mean'.*\['batch', 'elements'\]"):
        csd_loss(as_jax(student), as_jax(teacher), reduction="mean")


def test_consistency_terms():
    s, t = jnp.asarray(RNG.normal(size=(6, 4))), jnp.asarray(RNG.normal(size=(6, 4)))
    assert float(consistency_kl(s, t, 2.0)) == pytest.approx(float(kd_loss(s, t, 2.0)))
    fs, ft = RNG.normal(size=(8, 3)), RNG.normal(size=(8, 3)) * 4 + 1
    norm = lambda f: (f - f.mean(0)) / np.sqrt(f.var(0) + 1e-5)
    expected = np.mean((norm(ft) - norm(fs)) ** 2)
    np.testing.assert_allclose(feature_consistency(jnp.asarray(fs), jnp.asarray(ft)), expected, rtol=1e-5)
    grad_t = jax.grad(lambda f: feature_consistency(jnp.asarray(fs), f))(jnp.asarray(ft))
    assert not np.any(np.asarray(grad_t))


def test_ramp_weight():
    for step, expected in [(0, 2 * np.exp(-5)), (50, 2 * np.exp(-5 / 4)), (99, 2 * np.exp(-5e-4)), (100, 2)]:
        assert float(ramp_weight(step, 2.0, 100)) == pytest.approx(expected, rel=1e-5)
    assert float(ramp_weight(10**6, 2.0, 100)) == pytest.approx(2.0)
    assert float(ramp_weight(0, 2.0, 0)) == pytest.approx(2.0)


def test_ema_update_rule():
    old = {"a": jnp.asarray([1.0, 2.0]), "b": {"c": jnp.asarray(4.0)}}
    new = {"a": jnp.asarray([3.0, 0.0]), "b": {"c": jnp.asarray(0.0)}}
    out = ema_update(old, new, 0.9)
    np.testing.assert_allclose(out["a"], [0.9 * 1 + 0.1 * 3, 0.9 * 2])
    np.testing.assert_allclose(out["b"]["c"], 3.6, rtol=1e-6)


def test_coding_length_exact_formula():
    z = RNG.normal(size=(6, 4))
    m, d, eps_sq = 6, 4, 0.5
    expected = (m + d) / 2 * np.linalg.slogdet(np.eye(m) + d / (m * eps_sq) * z @ z.T)[1]
    np.testing.assert_allclose(coding_length(jnp.asarray(z), eps_sq), expected, rtol=1e-5)


def mec_reference(z1, z2, eps_sq):
    """``−(m+d)/2 · log det(I_m + d/(m ε²) Z₁Z₂ᵀ)`` on L2-normalised rows, always m × m."""
    m, d = z1.shape
    n1 = z1 / np.linalg.norm(z1, axis=1, keepdims=True)
    n2 = z2 / np.linalg.norm(z2, axis=1, keepdims=True)
    return -(m + d) / 2 * np.linalg.slogdet(np.eye(m) + d / (m * eps_sq) * n1 @ n2.T)[1]


@pytest.mark.parametrize("shape", [(6, 20), (20, 6)], ids=["batch_gram", "feature_gram"])
def test_mec_loss_exact_formula_on_either_gram_side(shape):
    z1 = RNG.normal(size=shape)
    z2 = z1 + 0.3 * RNG.normal(size=shape)
    c = cross_gram(jnp.asarray(z1), jnp.asarray(z2), 1.0)
    assert c.shape == (min(shape),) * 2
    value = mec_loss(jnp.asarray(z1), jnp.asarray(z2), eps_sq=0.5, exact=True)
    np.testing.assert_allclose(value, mec_reference(z1, z2, 0.5), rtol=1e-5)


def spectral_matrix(n, norm, seed):
    """A random PSD matrix with spectral norm ``norm``."""
    a = np.random.default_rng(seed).normal(size=(n, n))
    c = a @ a.T
    return c * norm / np.linalg.norm(c, 2)


@pytest.mark.parametrize(("order", "norm"), [(4, 0.25), (8, 0.49)])
def test_taylor_logdet_matches_exact_within_1e_3(order, norm):
    """Order 4 reaches 1e-3 up to ‖C‖ = 0.25; at ‖C‖ < 0.5 it takes order 8."""
    for seed in range(3):
        c = spectral_matrix(8, norm, seed)
        exact = np.linalg.slogdet(np.eye(8) + c)[1]
        assert abs(float(logdet_taylor(jnp.asarray(c), order)) - exact) <= 1e-3 * abs(exact)


def test_order_4_taylor_is_not_within_1e_3_at_half_norm():
    c = spectral_matrix(8, 0.49, 0)
    exact = np.linalg.slogdet(np.eye(8) + c)[1]
    assert abs(float(logdet_taylor(jnp.asarray(c), 4)) - exact) > 1e-3 * abs(exact)


def test_mec_loss_taylor_matches_exact_when_cross_gram_is_small():
    z1 = RNG.normal(size=(16, 8))
    z2 = z1 + 0.2 * RNG.normal(size=z1.shape)
    eps_sq = 6.0
    normalize = lambda z: z / np.linalg.norm(z, axis=1, keepdims=True)
    c = 8 / (16 * eps_sq) * normalize(z2).T @ normalize(z1)
    assert np.linalg.norm(c, 2) < 0.5
    args = jnp.asarray(z1), jnp.asarray(z2), eps_sq
    exact = float(mec_loss(*args, exact=True))
    assert float(mec_loss(*args, order=8)) == pytest.approx(exact, rel=1e-3)
    assert float(mec_loss(*args, order=4)) == pytest.approx(exact, rel=1e-2)


def test_lambda_warmup():
    assert float(lambda_warmup(0, 100)) == pytest.approx(1 / 8)
    assert float(lambda_warmup(50, 100)) == pytest.approx(1 / 8 + 7 / 16)
    assert float(lambda_warmup(100, 100)) == pytest.approx(1.0)
    assert float(lambda_warmup(500, 100)) == pytest.approx(1.0)
    assert float(lambda_warmup(0, 0)) == pytest.approx(1.0)


@pytest.mark.parametrize("exact", [True, False])
def test_moe_with_one_expert_is_plain_mec(exact):
    z1, z2 = jnp.asarray(RNG.normal(size=(10, 6)) * 3), jnp.asarray(RNG.normal(size=(10, 6)))
    plain = mec_loss(z1, z2, 8.0, 4, 0.5, exact)
    moe = mec_moe_loss(z1, z2, jnp.asarray([0.7]), 8.0, 4, 0.5, exact)
    np.testing.assert_allclose(moe, plain, rtol=1e-5)


def test_moe_formula_with_two_experts():
    m, d, eps_sq = 5, 7, 2.0
    z1 = RNG.normal(size=(m, d)) * np.linspace(0.2, 3.0, d)
    z2 = z1 + 0.5 * RNG.normal(size=(m, d))
    logits = np.asarray([0.3, -0.4])
    n1 = z1 / np.linalg.norm(z1, axis=1, keepdims=True)
    n2 = z2 / np.linalg.norm(z2, axis=1, keepdims=True)
    gates = softmax(logits)
    expected = 0.0
    for k, group in enumerate([slice(0, 4), slice(4, 7)]):
        g1, g2 = n1[:, group], n2[:, group]
        d_k = g1.shape[1]
        eps_k_sq = eps_sq * ((g1**2).sum(1).mean() + (g2**2).sum(1).mean()) / 2
        lam = d_k / (m * eps_k_sq)
        # mixture weights K·π_k (K = 2): uniform gates sum the experts' coding lengths
        expected -= 2 * gates[k] * (m + d_k) / 2 * np.linalg.slogdet(np.eye(m) + lam * g1 @ g2.T)[1]
    value = jax.jit(mec_moe_loss, static_argnums=(3, 4, 5, 6))(
        jnp.asarray(z1), jnp.asarray(z2), jnp.asarray(logits), eps_sq, 4, 1.0, True
    )
    np.testing.assert_allclose(value, expected, rtol=1e-5)
    grad_logits = jax.jit(jax.grad(lambda g: mec_moe_loss(jnp.asarray(z1), jnp.asarray(z2), g, eps_sq)))(
        jnp.asarray(logits)
    )
    assert np.all(np.isfinite(grad_logits)) and np.any(np.asarray(grad_logits) != 0)


def test_expert_slices():
    assert [(s.start, s.stop) for s in expert_slices(10, 4)] == [(0, 3), (3, 6), (6, 8), (8, 10)]
    with pytest.raises(ValueError, match="method.experts=5 must lie in 1..4"):
        expert_slices(4, 5)


def test_feature_noise_is_bounded_by_half_step_and_fires_with_rate_p():
    x = jnp.asarray(RNG.normal(size=(4, 3, 3, 2)), jnp.float32)
    step, p, draws = 0.3, 0.25, 2000
    keys = jax.random.split(jax.random.PRNGKey(0), draws)
    noisy = jax.jit(
        jax.vmap(uniform_feature_noise, in_axes=(0, None, None, None, None)), static_argnums=(3, 4)
    )
    out = noisy(keys, x, jnp.asarray(step), p, "layer")
    delta = np.asarray(out - x)
    assert np.abs(delta).max() <= step / 2 + 1e-6
    fired = np.any(delta != 0, axis=(1, 2, 3, 4))
    assert np.all(np.all(delta[fired] != 0, axis=(1, 2, 3, 4)))  # a layer fires as a whole
    assert fired.mean() == pytest.approx(p, abs=0.03)
    values = delta[fired].ravel()
    assert values.var() == pytest.approx(step**2 / 12, rel=0.05)  # variance of U[−s/2, s/2]
    samples = noisy(keys, x, jnp.asarray(step), p, "sample")
    per_sample = np.any(np.asarray(samples - x) != 0, axis=(2, 3, 4))
    assert per_sample.mean() == pytest.approx(p, abs=0.02)
    assert 0 < per_sample.sum(1).max() and per_sample.sum(1).min() < 4  # draws differ across samples


def test_feature_noise_gradient_passes_x_and_stops_at_step():
    x = jnp.ones((2, 2, 2, 1))
    grad_x, grad_s = jax.grad(
        lambda x, s: jnp.sum(uniform_feature_noise(jax.random.PRNGKey(3), x, s, 1.0)), argnums=(0, 1)
    )(x, jnp.asarray(0.5))
    np.testing.assert_allclose(grad_x, 1.0)
    assert float(grad_s) == 0.0


def test_feature_noise_bad_granularity():
    with pytest.raises(ValueError, match=r"method.granularity='channel'.*\['layer', 'sample'\]"):
        uniform_feature_noise(jax.random.PRNGKey(0), jnp.ones(3), jnp.asarray(1.0), 0.1, "channel")


def test_labelled_mask_hides_a_fixed_fraction():
    indices = jnp.arange(4000)
    mask = np.asarray(labelled_mask(indices, 0.3, seed=1))
    assert 1 - mask.mean() == pytest.approx(0.3, abs=0.03)
    np.testing.assert_array_equal(np.asarray(labelled_mask(indices[::7], 0.3, seed=1)), mask[::7])
    assert np.any(np.asarray(labelled_mask(indices, 0.3, seed=2)) != mask)


def test_random_cutout_zeroes_one_clipped_square():
    images = jnp.ones((64, 8, 8, 2))
    out = np.asarray(random_cutout(jax.random.PRNGKey(0), images, 4))
    zeros = (out[..., 0] == 0).sum(axis=(1, 2))
    assert zeros.max() == 16 and zeros.min() >= 4  # 4×4, clipped at a border at most to 2×2
    assert np.array_equal(out[..., 0] == 0, out[..., 1] == 0)
    assert np.array_equal(np.asarray(random_cutout(jax.random.PRNGKey(0), images, 0)), images)
