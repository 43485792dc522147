"""Hessian outliers (Ghorbani, Krishnan, Xiao, ICML 2019): the loss Hessian's spectral density, its top-k
eigenvalues, how far the top one stands out, and how much of the gradient lies in the top-k eigenspace.

All on one batch, over exact Hessian-vector products in a float64 copy (smoothnorm.measure.hessian): the density
is stochastic Lanczos quadrature (`spectral_density`: Rademacher probes, `lanczos_steps` steps with full
reorthogonalization, float64), the top-k eigenpairs come from ARPACK's Lanczos (scipy's eigsh, the method of
`top_eigenvalues`, here with eigenvectors, which the gradient share needs). Ghorbani et al. take k = the number
of classes: without BatchNorm about that many eigenvalues separate from the bulk early in training and the
gradient concentrates in their span.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.sparse.linalg import eigsh

from smoothnorm.measure._common import one_blas_thread
from smoothnorm.measure.hessian import HessianOperator
from smoothnorm.measure.linalg import SpectralDensity, _check_k, _check_operator, _dense, _rng, spectral_density

__all__ = ["HessianSpectrum", "top_eigenpairs", "gradient_share", "hessian_spectrum"]


@dataclass(frozen=True)
class HessianSpectrum:
    """The spectrum probe's record on one batch.

    density: SLQ nodes and weights (SpectralDensity); top_eigenvalues: (k,) descending; outlier_ratio: lambda_1 /
    lambda_k; gradient_share: ||P_k g||^2 / ||g||^2 with P_k the projector on the top-k eigenvectors; grad_norm:
    ||g||; loss: the loss at the point.
    """

    density: SpectralDensity
    top_eigenvalues: np.ndarray
    outlier_ratio: float
    gradient_share: float
    grad_norm: float
    loss: float


@one_blas_thread
def top_eigenpairs(
    op, k: int, *, tol: float = 1e-6, maxiter: int | None = None, seed: int | np.random.Generator = 0
) -> tuple[np.ndarray, np.ndarray]:
    """The k algebraically largest eigenvalues of a symmetric operator, descending, and their orthonormal
    eigenvectors as columns (n, k). ARPACK's Lanczos (eigsh, which="LA"), dense for operators too small for it."""
    op = _check_operator(op)
    n = op.shape[0]
    k = _check_k(k, n)
    if k >= n - 1:
        values, vectors = np.linalg.eigh(_dense(op))
    else:
        values, vectors = eigsh(op, k=k, which="LA", tol=tol, maxiter=maxiter, v0=_rng(seed).standard_normal(n))
    order = np.argsort(values)[::-1][:k]
    return values[order].copy(), vectors[:, order].copy()


def gradient_share(vectors: np.ndarray, grad: np.ndarray) -> float:
    """||V^T g||^2 / ||g||^2 for orthonormal columns V (n, k): the share of the gradient's squared norm in their
    span (NaN for a zero gradient)."""
    vectors = np.asarray(vectors, dtype=np.float64)
    grad = np.asarray(grad, dtype=np.float64).reshape(-1)
    if vectors.ndim != 2 or vectors.shape[0] != grad.size:
        raise ValueError(f"vectors: expected shape ({grad.size}, k), got {vectors.shape}")
    total = float(grad @ grad)
    if total == 0.0:
        return float("nan")
    coefficients = vectors.T @ grad
    return float(coefficients @ coefficients) / total


def hessian_spectrum(
    net,
    x,
    y,
    k: int = 10,
    *,
    num_probes: int = 1,
    lanczos_steps: int = 90,
    params: Sequence[str] | None = None,
    mode: str = "probe",
    tol: float = 1e-6,
    seed: int | np.random.Generator = 0,
) -> HessianSpectrum:
    """Density, top-k eigenvalues, lambda_1 / lambda_k and the gradient's share in the top-k eigenspace of the loss
    Hessian on (x, y) (Ghorbani et al. 2019; k = number of classes there).

    num_probes, lanczos_steps: SLQ's Rademacher probes and Lanczos steps per probe (the paper: 80-90 steps);
    params: None (all) or layer / parameter names; mode: "probe" (batch statistics, or a population-statistics
    BatchNorm's constants) or "eval". Cost: num_probes * lanczos_steps + (ARPACK's count) exact products.
    """
    rng = _rng(seed)
    op = HessianOperator(net, x, y, params=params, scheme="exact", mode=mode)
    grad = op.gradient_at(np.zeros(0), 0.0)  # same point and mode: the layers' caches are rebuilt identically
    values, vectors = top_eigenpairs(op, k, tol=tol, seed=rng)
    density = spectral_density(op, num_probes=num_probes, lanczos_steps=lanczos_steps, seed=rng)
    ratio = float(values[0] / values[-1]) if values[-1] != 0 else float("nan")
    return HessianSpectrum(density, values, ratio, gradient_share(vectors, grad), float(np.linalg.norm(grad)),
                           float(op.loss))
