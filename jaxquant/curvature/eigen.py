"""Top eigenvalues of the Hessian by the Lanczos method (``matfree`` tridiagonalisation).

Lanczos builds an orthonormal basis ``Q = [q_1..q_m]`` of the Krylov space
``span{v, Hv, ..., H^{m−1}v}`` and the tridiagonal ``T = Qᵀ H Q`` (``m`` HVPs). The
eigenvalues ``θ_j`` of ``T`` (Ritz values) approximate those of ``H``, the extreme ones
first; ``Q s_j`` are the Ritz vectors. Each pair's residual is
``‖H Q s_j − θ_j Q s_j‖ = β_m |s_j[m]|`` (``β_m`` the norm of the last Lanczos residual),
an a-posteriori check of convergence. Full reorthogonalisation keeps ``Q`` orthonormal in
floating point (at a memory cost of ``m·n`` numbers for ``n`` parameters).

This replaces PyHessian's power iteration with deflation: one Lanczos run gives all top-k
values at once, converges faster for the extremes, and reports how far each has converged.
"Top" means largest (algebraic) eigenvalues, the sharpest directions of a minimum.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import matfree.decomp
import numpy as np

from jaxquant.curvature.hutchinson import check_has_parameters, rademacher_like
from jaxquant.curvature.hvp import LossFn, hvp, tree_vdot


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def lanczos(loss_fn: LossFn, num_iterations: int, with_basis: bool, params, data, start):
    """``(T, β_m, Q)``: ``m`` Lanczos steps on ``H = ∇²L(params; data)`` from ``start``.

    ``T`` is ``m × m`` tridiagonal; ``Q`` is the basis as a pytree with a leading axis of
    ``m`` (``None`` unless ``with_basis``).
    """
    tridiagonalise = matfree.decomp.tridiag_sym(
        num_iterations, materialize=True, reortho="full", custom_vjp=False
    )
    matvec = lambda vector, p, d: hvp(loss_fn, p, d, vector)
    result = tridiagonalise(matvec, start, params, data)
    residual_norm = jnp.sqrt(tree_vdot(result.residual, result.residual))
    return result.J_small, residual_norm, result.Q_tall if with_basis else None


def lanczos_steps(params, num_iterations: int) -> int:
    """``num_iterations`` clipped to the number of parameters (a Krylov space is at most
    ``n``-dimensional); at least 1."""
    if num_iterations < 1:
        raise ValueError(f"curvature.lanczos_iterations={num_iterations} must be a positive integer")
    return min(num_iterations, check_has_parameters(params, "lanczos"))


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
) -> Eigenvalues:
    """The ``k`` largest eigenvalues of ``∇²L`` at ``params`` from one Lanczos run of
    ``num_iterations`` HVPs (Rademacher start vector from ``key``)."""
    steps = lanczos_steps(params, num_iterations)
    if not 1 <= k <= steps:
        raise ValueError(f"curvature.top_k={k} must lie in 1..{steps} (the Lanczos iterations)")
    start = rademacher_like(key, params)
    tridiagonal, residual_norm, basis = lanczos(loss_fn, steps, return_vectors, params, data, start)
    ritz_values, ritz_coords = np.linalg.eigh(np.asarray(tridiagonal, np.float64))
    top = np.argsort(ritz_values)[::-1][:k]
    residuals = float(residual_norm) * np.abs(ritz_coords[-1, top])
    vectors = None
    if return_vectors:
        coords = jnp.asarray(ritz_coords[:, top].T, jnp.float32)
        vectors = jax.tree.map(lambda q: jnp.tensordot(coords, q, axes=1), basis)
    return Eigenvalues(ritz_values[top], residuals, steps, vectors)
