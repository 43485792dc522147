"""Generic routines on a symmetric operator (a scipy LinearOperator or a square matrix): extreme eigenvalues
(Lanczos, subspace iteration), Lanczos tridiagonalization, Hutchinson's trace, stochastic Lanczos quadrature.

smoothnorm.measure.hessian wraps them for a network's loss Hessian on a batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.linalg import eigh_tridiagonal
from scipy.sparse.linalg import LinearOperator, eigsh

from smoothnorm._validate import choice
from smoothnorm.measure._common import one_blas_thread

__all__ = [
    "top_eigenvalues",
    "power_iteration",
    "lanczos_tridiagonal",
    "hutchinson_trace",
    "spectral_density",
    "TraceEstimate",
    "SpectralDensity",
]


def _rng(seed) -> np.random.Generator:
    if isinstance(seed, np.random.Generator):
        return seed
    return np.random.default_rng(seed)


def _dense(op: LinearOperator) -> np.ndarray:
    n = op.shape[0]
    cols = np.empty((n, n))
    e = np.zeros(n)
    for i in range(n):
        e[i] = 1.0
        cols[:, i] = op.matvec(e)
        e[i] = 0.0
    return 0.5 * (cols + cols.T)


def _check_operator(op) -> LinearOperator:
    if isinstance(op, np.ndarray):
        op = np.asarray(op, dtype=np.float64)
        if op.ndim != 2 or op.shape[0] != op.shape[1]:
            raise ValueError(f"op: expected a square matrix, got shape {op.shape}")
        matrix = op
        return LinearOperator(op.shape, matvec=lambda v: matrix @ v, matmat=lambda m: matrix @ m, dtype=np.float64)
    if not isinstance(op, LinearOperator) or op.shape[0] != op.shape[1]:
        raise ValueError(f"op: expected a square LinearOperator or matrix, got {type(op).__name__}")
    return op


def _check_k(k, n: int) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= n:
        raise ValueError(f"k: expected an integer in [1, {n}] (the operator's size), got {k!r}")
    return int(k)


@one_blas_thread
def power_iteration(
    op,
    k: int = 1,
    *,
    maxiter: int = 1000,
    tol: float = 1e-6,
    oversample: int | None = None,
    seed: int | np.random.Generator = 0,
) -> np.ndarray:
    """The k eigenvalues of largest magnitude of a symmetric operator by subspace (block power) iteration with a
    Rayleigh-Ritz step, sorted by magnitude, descending.

    The block carries `oversample` extra vectors (default max(2, k), capped by the size) so the k wanted values
    converge at rate |lambda_{k+p+1} / lambda_k| rather than |lambda_{k+1} / lambda_k|. Stops when the k wanted
    Ritz pairs have residual ||A y - theta y|| < tol * |theta| (the eigenvalue error is then about residual^2 /
    gap, far below tol), or after maxiter iterations of k + oversample products each.
    """
    op = _check_operator(op)
    n = op.shape[0]
    k = _check_k(k, n)
    extra = max(2, k) if oversample is None else int(oversample)
    block = min(n, k + max(extra, 0))
    q, _ = np.linalg.qr(_rng(seed).standard_normal((n, block)))
    theta = np.full(block, np.nan)
    for _ in range(int(maxiter)):
        z = np.column_stack([op.matvec(q[:, j]) for j in range(block)])
        t = q.T @ z
        theta, s = np.linalg.eigh(0.5 * (t + t.T))
        order = np.argsort(-np.abs(theta))
        theta, s = theta[order], s[:, order]
        ritz_images = z @ s
        residuals = np.linalg.norm(ritz_images[:, :k] - (q @ s[:, :k]) * theta[:k], axis=0)
        if np.all(residuals <= tol * np.maximum(np.abs(theta[:k]), 1e-300)):
            break
        q, _ = np.linalg.qr(ritz_images)
    return theta[:k].copy()


@one_blas_thread
def top_eigenvalues(
    op,
    k: int = 1,
    *,
    method: str = "lanczos",
    tol: float = 1e-6,
    maxiter: int | None = None,
    seed: int | np.random.Generator = 0,
) -> np.ndarray:
    """The k algebraically largest eigenvalues of a symmetric operator, descending.

    method: "lanczos" (ARPACK's implicitly restarted Lanczos via scipy's eigsh, which="LA") or "power" (subspace
    iteration; it finds the largest magnitudes, so if any of those is negative it reruns on op + |lambda| I).
    Operators too small for ARPACK (k >= n - 1) are densified.
    """
    choice("method", method, ("lanczos", "power"))
    op = _check_operator(op)
    n = op.shape[0]
    k = _check_k(k, n)
    rng = _rng(seed)
    if k >= n - 1:
        return np.sort(np.linalg.eigvalsh(_dense(op)))[::-1][:k].copy()
    if method == "lanczos":
        values = eigsh(op, k=k, which="LA", tol=tol, maxiter=maxiter, v0=rng.standard_normal(n),
                       return_eigenvectors=False)
        return np.sort(values)[::-1]
    iters = 1000 if maxiter is None else maxiter
    values = power_iteration(op, k, maxiter=iters, tol=tol, seed=rng)
    if values.min() < 0:
        shift = float(np.abs(values).max())
        shifted = LinearOperator(op.shape, matvec=lambda v: op.matvec(v) + shift * v, dtype=np.float64)
        values = power_iteration(shifted, k, maxiter=iters, tol=tol, seed=rng) - shift
    return np.sort(values)[::-1]


@one_blas_thread
def lanczos_tridiagonal(op, v0: np.ndarray, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """`steps` Lanczos iterations from v0 with full reorthogonalization: the tridiagonal (alpha, beta).

    alpha: (m,) diagonal, beta: (m - 1,) off-diagonal, m <= steps (fewer if an invariant subspace is found).
    Memory: m vectors of the operator's size.
    """
    op = _check_operator(op)
    n = op.shape[0]
    m = min(int(steps), n)
    if m < 1:
        raise ValueError(f"steps: expected a positive integer, got {steps!r}")
    v = np.asarray(v0, dtype=np.float64).reshape(-1)
    if v.shape != (n,):
        raise ValueError(f"v0: expected shape ({n},), got {v.shape}")
    basis = np.empty((m, n))
    alpha, beta = np.empty(m), np.empty(max(m - 1, 0))
    v = v / np.linalg.norm(v)
    for j in range(m):
        basis[j] = v
        w = op.matvec(v)
        alpha[j] = w @ v
        # Full reorthogonalization, twice ("twice is enough"): keeps the Ritz values free of ghost copies.
        for _ in range(2):
            w -= basis[: j + 1].T @ (basis[: j + 1] @ w)
        if j == m - 1:
            break
        b = float(np.linalg.norm(w))
        if b <= 1e-12 * max(abs(alpha[j]), 1.0):
            return alpha[: j + 1].copy(), beta[:j].copy()
        beta[j] = b
        v = w / b
    return alpha, beta


@dataclass(frozen=True)
class TraceEstimate:
    """Hutchinson's trace estimate: mean of v^T H v over `samples`, with its standard error."""

    trace: float
    stderr: float
    samples: np.ndarray


@one_blas_thread
def hutchinson_trace(op, num_probes: int = 100, *, seed: int | np.random.Generator = 0) -> TraceEstimate:
    """Hutchinson's estimator tr(H) ~ mean of v^T H v over Rademacher vectors v (variance 2 sum_{i != j} H_ij^2)."""
    op = _check_operator(op)
    if isinstance(num_probes, bool) or not isinstance(num_probes, (int, np.integer)) or num_probes < 1:
        raise ValueError(f"num_probes: expected a positive integer, got {num_probes!r}")
    rng = _rng(seed)
    n = op.shape[0]
    samples = np.empty(int(num_probes))
    for i in range(samples.size):
        v = rng.choice(np.array([-1.0, 1.0]), size=n)
        samples[i] = v @ op.matvec(v)
    stderr = float(samples.std(ddof=1) / math.sqrt(samples.size)) if samples.size > 1 else math.nan
    return TraceEstimate(float(samples.mean()), stderr, samples)


@dataclass(frozen=True)
class SpectralDensity:
    """Stochastic Lanczos quadrature: per probe, Ritz values (nodes) and quadrature weights (summing to 1).

    nodes, weights: (probes, m) (NaN-padded where a probe's Lanczos stopped early).
    `density(grid, sigma)` gives the Gaussian-smoothed spectral density (integrates to ~1) on a grid.
    """

    nodes: np.ndarray
    weights: np.ndarray

    def density(self, grid, sigma: float | None = None) -> np.ndarray:
        """Gaussian-smoothed density on `grid`; sigma defaults to 1% of the nodes' range (at least 1e-12)."""
        grid = np.asarray(grid, dtype=np.float64)
        ok = np.isfinite(self.nodes)
        nodes, weights = self.nodes[ok], self.weights[ok]
        if sigma is None:
            sigma = max(0.01 * float(nodes.max() - nodes.min()), 1e-12)
        z = (grid[..., None] - nodes) / sigma
        kernel = np.exp(-0.5 * z * z) / (sigma * math.sqrt(2 * math.pi))
        return kernel @ weights / self.nodes.shape[0]


@one_blas_thread
def spectral_density(
    op, *, num_probes: int = 10, lanczos_steps: int = 50, seed: int | np.random.Generator = 0
) -> SpectralDensity:
    """Spectral density of a symmetric operator by stochastic Lanczos quadrature (Ghorbani et al. 2019): for each
    Rademacher probe, `lanczos_steps` Lanczos steps; the tridiagonal's eigenvalues are the nodes and the squared
    first components of its eigenvectors the weights."""
    op = _check_operator(op)
    if isinstance(num_probes, bool) or not isinstance(num_probes, (int, np.integer)) or num_probes < 1:
        raise ValueError(f"num_probes: expected a positive integer, got {num_probes!r}")
    rng = _rng(seed)
    n = op.shape[0]
    m = min(int(lanczos_steps), n)
    nodes = np.full((int(num_probes), m), np.nan)
    weights = np.zeros((int(num_probes), m))
    for p in range(int(num_probes)):
        alpha, beta = lanczos_tridiagonal(op, rng.choice(np.array([-1.0, 1.0]), size=n), m)
        theta, vectors = eigh_tridiagonal(alpha, beta) if alpha.size > 1 else (alpha.copy(), np.ones((1, 1)))
        nodes[p, : theta.size] = theta
        weights[p, : theta.size] = vectors[0] ** 2
    return SpectralDensity(nodes, weights)
