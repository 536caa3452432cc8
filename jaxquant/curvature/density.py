"""Spectral density of the Hessian by stochastic Lanczos quadrature (SLQ).

The empirical spectral density ``φ(t) = (1/n) Σ_i δ(t − λ_i)`` is approximated by

``φ_σ(t) = (1/R) Σ_r Σ_j w_rj · N(t; θ_rj, σ²)``

where, for each of ``R`` random unit start vectors ``v_r``, ``m`` Lanczos steps give
``T_r = S_r diag(θ_r) S_rᵀ``: the nodes ``θ_rj`` are the Ritz values and the weights
``w_rj = S_r[0, j]²`` the squared first components (Gauss quadrature of the measure
``Σ_i (q_iᵀ v_r)² δ(t − λ_i)``, whose expectation over ``v_r`` is ``φ``). The weights of each
run sum to 1, so ``∫ φ_σ = 1``; and ``Σ_j w_rj θ_rj = v_rᵀ H v_r`` (``= (T_r)_11``), so the
mean of ``φ_σ`` is a Hutchinson estimate of ``Tr(H)/n``.

Lanczos is :func:`jaxquant.curvature.eigen.lanczos` (full reorthogonalisation; the module
docstring there says why it is not ``matfree``'s).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import jax
import numpy as np

from jaxquant.curvature.eigen import lanczos
from jaxquant.curvature.hvp import LossFn


def gauss_quadrature(tridiagonal: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nodes ``θ_j`` (eigenvalues of ``T``) and weights ``S[0, j]²`` (they sum to 1)."""
    nodes, vectors = np.linalg.eigh(np.asarray(tridiagonal, np.float64))
    return nodes, vectors[0] ** 2


def gaussian_density(nodes: np.ndarray, weights: np.ndarray, grid: np.ndarray, sigma: float) -> np.ndarray:
    """``φ_σ(t) = (1/R) Σ_r Σ_j w_rj N(t; θ_rj, σ²)`` on ``grid`` for ``[R, m]`` nodes/weights."""
    nodes, weights = np.atleast_2d(nodes), np.atleast_2d(weights)
    z = (np.asarray(grid)[:, None] - nodes.reshape(-1)[None, :]) / sigma
    kernels = np.exp(-0.5 * z**2) / (sigma * np.sqrt(2 * np.pi))
    return kernels @ weights.reshape(-1) / len(nodes)


@dataclasses.dataclass
class SpectralDensity:
    """A broadened SLQ density on ``grid``, with the quadrature it came from."""

    grid: np.ndarray
    density: np.ndarray
    nodes: np.ndarray
    weights: np.ndarray
    sigma: float

    @property
    def mean(self) -> float:
        """``Σ_rj w_rj θ_rj / R``: the quadrature's estimate of ``Tr(H)/n``."""
        return float(np.sum(self.weights * self.nodes) / len(self.nodes))

    def integral(self) -> float:
        """``∫ φ_σ`` over the grid (trapezoid rule); 1 up to grid and tail error."""
        return float(np.trapezoid(self.density, self.grid))

    def to_dict(self) -> dict:
        return {
            "grid": self.grid.tolist(),
            "density": self.density.tolist(),
            "nodes": self.nodes.tolist(),
            "weights": self.weights.tolist(),
            "sigma": self.sigma,
            "mean": self.mean,
        }


def slq_quadrature(
    loss_fn: LossFn,
    params,
    data,
    key: jax.Array,
    *,
    num_runs: int = 4,
    num_iterations: int = 64,
    log: Callable[[str], None] | None = print,
) -> tuple[np.ndarray, np.ndarray]:
    """``[R, m]`` nodes and weights from ``R`` Lanczos runs with Rademacher start vectors
    (a run that stops early on an invariant subspace is padded with zero weights)."""
    if num_runs < 1:
        raise ValueError(f"curvature.density_runs={num_runs} must be a positive integer")
    runs = []
    for run, run_key in enumerate(jax.random.split(key, num_runs)):
        start_time = time.time()
        tridiagonal = lanczos(loss_fn, params, data, run_key, num_iterations).tridiagonal
        runs.append(gauss_quadrature(tridiagonal))
        if log is not None:
            mean = np.mean([np.sum(w * t) for t, w in runs])
            log(
                f"slq: lanczos run {run + 1}/{num_runs} ({len(tridiagonal)} HVPs, "
                f"{time.time() - start_time:.1f} s), running mean eigenvalue {mean:.6g}"
            )
    width = max(len(t) for t, _ in runs)
    nodes = np.stack([np.pad(t, (0, width - len(t)), mode="edge") for t, _ in runs])
    weights = np.stack([np.pad(w, (0, width - len(w))) for _, w in runs])
    return nodes, weights


def spectral_density(
    loss_fn: LossFn,
    params,
    data,
    key: jax.Array,
    *,
    num_runs: int = 4,
    num_iterations: int = 64,
    grid_points: int = 512,
    sigma_fraction: float = 0.01,
    log: Callable[[str], None] | None = print,
) -> SpectralDensity:
    """SLQ density of ``∇²L`` at ``params``, broadened by ``σ = sigma_fraction·(θ_max − θ_min)``
    on a grid that extends ``6σ`` beyond the extreme nodes (so the tails integrate)."""
    if sigma_fraction <= 0 or grid_points < 2:
        raise ValueError(
            f"curvature.density_sigma_fraction={sigma_fraction} must be > 0 and "
            f"curvature.density_grid_points={grid_points} ≥ 2"
        )
    nodes, weights = slq_quadrature(
        loss_fn, params, data, key, num_runs=num_runs, num_iterations=num_iterations, log=log
    )
    spread = float(nodes.max() - nodes.min())
    sigma = sigma_fraction * (spread if spread > 0 else max(abs(float(nodes.max())), 1.0))
    grid = np.linspace(nodes.min() - 6 * sigma, nodes.max() + 6 * sigma, grid_points)
    return SpectralDensity(grid, gaussian_density(nodes, weights, grid, sigma), nodes, weights, sigma)
