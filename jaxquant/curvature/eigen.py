"""Top eigenvalues of the Hessian by the Lanczos method with full reorthogonalisation.

Lanczos builds an orthonormal basis ``Q = [q_1..q_m]`` of the Krylov space
``span{v, Hv, ..., H^{m−1}v}`` and the tridiagonal ``T = Qᵀ H Q`` one HVP at a time:

``w = H q_i``, ``α_i = q_iᵀ w``, ``w ← w − Q Qᵀ w`` (twice: classical Gram-Schmidt with
reorthogonalisation against every earlier ``q``), ``β_i = ‖w‖``, ``q_{i+1} = w/β_i``.

The eigenvalues ``θ_j`` of ``T`` (Ritz values) approximate those of ``H``, the extreme ones
first; ``Q s_j`` are the Ritz vectors. Each pair's residual is
``‖H Q s_j − θ_j Q s_j‖ = β_m |s_j[m]|``, an a-posteriori check of convergence. Full
reorthogonalisation keeps ``Q`` orthonormal in floating point at a memory cost of
``(m + 1)·n`` numbers for ``n`` parameters. If ``β_i`` vanishes, the Krylov space is
invariant and the run stops early with exact Ritz values.

This replaces PyHessian's power iteration with deflation: one run gives all top-k values,
converges faster for the extremes, and reports how far each has converged. "Top" means the
largest (algebraic) eigenvalues, the sharpest directions of a minimum.

Why not ``matfree`` (which has Lanczos and SLQ in JAX, installable from PyPI): it runs the
whole recurrence as one compiled ``fori_loop``. XLA:CPU runs convolution gradients inside a
loop body 10–60× slower than outside one (jax issue #12868; measured here: one HVP of the
digits CNN 0.1 s straight, 4–5 s inside a loop), which made a 64-step Lanczos on that CNN
take minutes instead of seconds on the CPUs this project's small studies run on. Here the
host drives the iterations, each one call of the compiled HVP (the same compilation the
Hutchinson estimator uses on CPU) and one of a small compiled update; this runs at full
speed on every backend (an HVP dominates a step, so the dispatch costs nothing) and can
print progress.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from jaxquant.curvature.hutchinson import LOG_SECONDS, check_has_parameters, rademacher_like
from jaxquant.curvature.hvp import LossFn, jitted_hvp


@functools.partial(jax.jit, donate_argnums=0)
def lanczos_update(basis: jax.Array, index: jax.Array, product: jax.Array):
    """Given ``w = H q_index`` (flat ``product``), return ``(basis with row index + 1 set,
    α_index, β_index)``; ``basis`` is the flat ``[m + 1, n]`` basis, rows past ``index`` 0."""
    alpha = jnp.vdot(basis[index], product)
    w = product
    for _ in range(2):
        w = w - basis.T @ (basis @ w)
    beta = jnp.linalg.norm(w)
    next_q = jnp.where(beta > 0, w / jnp.where(beta > 0, beta, 1.0), 0.0)
    return basis.at[index + 1].set(next_q), alpha, beta


@dataclasses.dataclass
class LanczosResult:
    """``T`` (``m × m`` tridiagonal), the last ``β`` and the basis ``Q`` (``[m, n]`` rows)."""

    tridiagonal: np.ndarray
    last_beta: float
    basis: jax.Array
    unravel: Callable


def lanczos(
    loss_fn: LossFn,
    params,
    data,
    key: jax.Array,
    num_iterations: int,
    log: Callable[[str], None] | None = None,
) -> LanczosResult:
    """``m = min(num_iterations, n)`` Lanczos steps on ``∇²L(params; data)`` from a
    Rademacher start vector drawn with ``key``; stops early on an invariant subspace."""
    if num_iterations < 1:
        raise ValueError(f"curvature.lanczos_iterations={num_iterations} must be a positive integer")
    size = check_has_parameters(params, "lanczos")
    steps = min(num_iterations, size)
    start, unravel = ravel_pytree(rademacher_like(key, params))
    basis = jnp.zeros((steps + 1, size), start.dtype).at[0].set(start / jnp.linalg.norm(start))
    alphas, betas = [], []
    scale, last_log, began = 0.0, time.time(), time.time()
    for index in range(steps):
        product = jitted_hvp(loss_fn, params, data, unravel(basis[index]))
        basis, alpha, beta = lanczos_update(basis, jnp.asarray(index), ravel_pytree(product)[0])
        alphas.append(float(alpha))
        betas.append(float(beta))
        scale = max(scale, abs(alphas[-1]), betas[-1])
        finished = betas[-1] <= 1e-6 * scale or index == steps - 1
        if log is not None and (finished or time.time() - last_log >= LOG_SECONDS):
            last_log = time.time()
            log(f"lanczos: iteration {index + 1}/{steps} ({time.time() - began:.1f} s)")
        if betas[-1] <= 1e-6 * scale:
            break
    m = len(alphas)
    tridiagonal = np.diag(alphas) + np.diag(betas[: m - 1], 1) + np.diag(betas[: m - 1], -1)
    return LanczosResult(tridiagonal, betas[-1], basis[:m], unravel)


@dataclasses.dataclass
class Eigenvalues:
    """Top-k Ritz values (descending), their residual norms, and optionally the vectors."""

    values: np.ndarray
    residuals: np.ndarray
    num_iterations: int
    vectors: object = None

    def to_dict(self) -> dict:
        return {
            "values": self.values.tolist(),
            "residuals": self.residuals.tolist(),
            "lanczos_iterations": self.num_iterations,
        }


def top_eigenvalues(
    loss_fn: LossFn,
    params,
    data,
    key: jax.Array,
    *,
    k: int = 5,
    num_iterations: int = 64,
    return_vectors: bool = False,
    log: Callable[[str], None] | None = None,
) -> Eigenvalues:
    """The ``k`` largest eigenvalues of ``∇²L`` at ``params`` from one Lanczos run of up to
    ``num_iterations`` HVPs; ``vectors`` (if asked) is a pytree like ``params`` with a
    leading axis of ``k``, unit norm."""
    if k < 1:
        raise ValueError(f"curvature.top_k={k} must be a positive integer")
    result = lanczos(loss_fn, params, data, key, num_iterations, log)
    m = len(result.tridiagonal)
    if k > m:
        raise ValueError(f"curvature.top_k={k} is more than the {m} Lanczos iterations run")
    ritz_values, ritz_coords = np.linalg.eigh(result.tridiagonal)
    top = np.argsort(ritz_values)[::-1][:k]
    residuals = result.last_beta * np.abs(ritz_coords[-1, top])
    vectors = None
    if return_vectors:
        flat = jnp.asarray(ritz_coords[:, top].T, result.basis.dtype) @ result.basis
        vectors = jax.vmap(result.unravel)(flat)
    return Eigenvalues(ritz_values[top], residuals, m, vectors)
