"""Maximum entropy coding (MEC, Liu et al. 2022) and the MEC-Quant mixture-of-experts form
(docs/methods.md §4).

Notation: ``m`` samples, ``d`` feature dimensions, distortion ``ε``, ``μ = (m + d)/2``,
``λ = d/(m ε²)``. By Sylvester's identity ``logdet(I_m + λ Z₁Z₂ᵀ) = logdet(I_d + λ Z₂ᵀZ₁)``
and ``tr((Z₁Z₂ᵀ)^k) = tr((Z₂ᵀZ₁)^k)``, so every log-det here is computed on the smaller of
the ``m × m`` (batch-wise) and ``d × d`` (feature-wise) cross-Gram matrices: same value,
cost ``O(m·d·min(m, d) + min(m, d)³)``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def coding_length(z: jax.Array, eps_sq: float) -> jax.Array:
    """Exact coding length of ``m`` samples ``Z ∈ R^{m×d}`` at distortion ``ε``:

    ``L(Z) = (m + d)/2 · logdet(I_m + d/(m ε²) · Z Zᵀ)`` (``slogdet``).
    """
    m, d = z.shape
    gram = d / (m * eps_sq) * (z @ z.T)
    return (m + d) / 2 * jnp.linalg.slogdet(jnp.eye(m) + gram)[1]


def l2_normalize_rows(z: jax.Array, eps: float = 1e-12) -> jax.Array:
    """Each row divided by its L2 norm."""
    return z / jnp.sqrt(jnp.maximum(jnp.sum(z**2, axis=-1, keepdims=True), eps))


def cross_gram(z1: jax.Array, z2: jax.Array, lam: jax.Array | float) -> jax.Array:
    """``C = λ Z₁Z₂ᵀ`` (``m × m``) or, when ``d < m``, ``λ Z₂ᵀZ₁`` (``d × d``): the same
    log-det and the same traces of powers."""
    m, d = z1.shape
    return lam * (z1 @ z2.T if m <= d else z2.T @ z1)


def logdet_taylor(c: jax.Array, order: int) -> jax.Array:
    """``logdet(I + C) ≈ tr Σ_{k=1..n} (−1)^{k+1} C^k / k`` (order ``n``).

    Converges for ``‖C‖₂ < 1``; the truncation error of each eigenvalue ``c`` is at most
    ``|c|^{n+1}/((n+1)(1 − |c|))``. For ``n = 4`` that is below 1e-3 relative for
    ``|c| ≤ 0.25``; reaching 1e-3 at ``|c| = 0.5`` takes ``n ≥ 8``.
    """
    if order < 1:
        raise ValueError(f"method.taylor_order={order!r} must be a positive integer")
    power = c
    total = jnp.trace(c)
    for k in range(2, order + 1):
        power = power @ c
        total = total + (-1) ** (k + 1) * jnp.trace(power) / k
    return total


def cross_logdet(z1: jax.Array, z2: jax.Array, lam, order: int, exact: bool) -> jax.Array:
    """``logdet(I + λ Z₁Z₂ᵀ)``: exact (``slogdet``, log of ``|det|``) or by :func:`logdet_taylor`."""
    c = cross_gram(z1, z2, lam)
    if exact:
        return jnp.linalg.slogdet(jnp.eye(c.shape[0]) + c)[1]
    return logdet_taylor(c, order)


def mec_loss(
    z1: jax.Array,
    z2: jax.Array,
    eps_sq: float = 64.0,
    order: int = 4,
    lambda_scale: jax.Array | float = 1.0,
    exact: bool = False,
) -> jax.Array:
    """Two-view MEC loss ``L_MEC = −μ·logdet(I_m + λ' Z₁Z₂ᵀ)`` on L2-normalised rows,
    ``μ = (m + d)/2``, ``λ' = lambda_scale · d/(m ε²)`` (``lambda_scale`` is the warm-up
    factor of :func:`lambda_warmup`).

    The log-det is the order-``n`` Taylor series (``exact=False``) or ``slogdet``. The two
    orders of a pair, ``C = λ Z₁Z₂ᵀ`` and ``λ Z₂Z₁ᵀ = Cᵀ``, give identical traces of powers,
    so symmetrising over views means averaging the loss over view *pairs* with different
    features (student on view 1 vs teacher on view 2 and the reverse), as the caller does.
    """
    m, d = z1.shape
    lam = lambda_scale * d / (m * eps_sq)
    z1, z2 = l2_normalize_rows(z1), l2_normalize_rows(z2)
    return -(m + d) / 2 * cross_logdet(z1, z2, lam, order, exact)


def lambda_warmup(step: jax.Array, warmup_steps: int) -> jax.Array:
    """Warm-up factor of ``λ``: linear from ``1/8`` at step 0 to ``1`` at ``warmup_steps``
    (keeps ``‖C‖₂`` small while the Taylor series starts); ``1`` when ``warmup_steps = 0``."""
    if warmup_steps <= 0:
        return jnp.ones((), jnp.float32)
    progress = jnp.clip(jnp.asarray(step, jnp.float32) / warmup_steps, 0.0, 1.0)
    return 1.0 / 8 + (1.0 - 1.0 / 8) * progress


def expert_slices(d: int, experts: int) -> list[slice]:
    """``experts`` contiguous channel blocks covering ``0..d`` (sizes differ by at most 1)."""
    if not 1 <= experts <= d:
        raise ValueError(f"method.experts={experts!r} must lie in 1..{d} (the feature dimension)")
    bounds = np.cumsum([0] + [len(b) for b in np.array_split(np.arange(d), experts)])
    return [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def mec_moe_loss(
    z1: jax.Array,
    z2: jax.Array,
    gate_logits: jax.Array,
    eps_sq: float = 64.0,
    order: int = 4,
    lambda_scale: jax.Array | float = 1.0,
    exact: bool = False,
) -> jax.Array:
    """Mixture-of-experts MEC: ``Σ_k K·π_k · L_k``, ``π = softmax(gate_logits)``, ``K = len(π)``.

    Rows of ``Z₁, Z₂`` are L2-normalised as in :func:`mec_loss`, then split into ``K``
    contiguous channel groups ``Z_{·,k}`` of ``d_k`` dimensions (:func:`expert_slices`).
    Each group keeps its own share of the norm, and its distortion follows its scale:
    ``ε_k² = ε² · sg(mean_i ‖z_{i,k}‖²)`` (mean over the samples of both views), so a group
    carrying little energy (the tail of a long-tailed distribution) is not drowned by the
    others. Then ``L_k = −μ_k·logdet(I + λ_k Z_{1,k} Z_{2,k}ᵀ)`` with ``μ_k = (m + d_k)/2``,
    ``λ_k = lambda_scale · d_k/(m ε_k²)``, on the smaller of the ``d_k × d_k`` and ``m × m``
    Grams.

    The coding lengths of independent groups add (the log-det of a block-diagonal matrix is
    the sum of its blocks'), so the mixture weights ``K·π_k`` average 1: uniform gates give
    the plain sum ``Σ_k L_k``, of the size of :func:`mec_loss` (a convex mixture ``Σ π_k L_k``
    would be about ``1/K`` of it). With ``K = 1`` the group norm is 1, so ``ε_1 = ε`` and this
    is :func:`mec_loss`.
    """
    m, d = z1.shape
    z1, z2 = l2_normalize_rows(z1), l2_normalize_rows(z2)
    experts = gate_logits.shape[0]
    weights = experts * jax.nn.softmax(gate_logits)
    total = jnp.zeros(())
    for k, group in enumerate(expert_slices(d, experts)):
        g1, g2 = z1[:, group], z2[:, group]
        d_k = g1.shape[1]
        energy = jax.lax.stop_gradient((jnp.mean(jnp.sum(g1**2, -1)) + jnp.mean(jnp.sum(g2**2, -1))) / 2)
        lam = lambda_scale * d_k / (m * eps_sq * jnp.maximum(energy, 1e-12))
        total = total - weights[k] * (m + d_k) / 2 * cross_logdet(g1, g2, lam, order, exact)
    return total


def gate_balance(gate_logits: jax.Array) -> jax.Array:
    """``KL(π ‖ uniform) = Σ_k π_k·log(K·π_k)`` of the gates ``π = softmax(gate_logits)``:
    0 for uniform gates, ``log K`` when one expert takes all. Added to learned gates, it keeps
    them from collapsing onto the expert with the most negative coding length."""
    log_gates = jax.nn.log_softmax(gate_logits)
    return jnp.sum(jnp.exp(log_gates) * (log_gates + jnp.log(gate_logits.shape[0])))
