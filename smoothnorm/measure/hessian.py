"""Curvature of the loss: Hessian-vector products, extreme eigenvalues, trace and spectral density.

Hessian-vector products are exact by default: Pearlmutter's R-operator (forward-over-reverse differentiation, each
layer's `forward_r` / `backward_r`, the normalization math in smoothnorm.nn.norms.rop, driven by
`Network.hessian_product`; a TorchNetwork differentiates its module twice instead) in a float64 copy of the
network, on one batch in probe mode (batch statistics) or eval mode (running statistics). They equal what
reverse-over-reverse automatic differentiation gives (PyTorch's double backward, PyHessian): the Hessian at the base
point's activation pattern, with ReLU masks, max-pool winners and the Lp norms' signs and arg-max held fixed.
Finite differences of the gradient (scheme="central" / "forward", step h = step * (1 + ||w||) / ||v||, step =
cbrt(eps) ~ 6e-6) remain as an option; on networks with kinks they are wrong by orders of magnitude in the
directions Lanczos and power iteration reach (a difference step crosses ReLU kinks: on a VGG-11 a top eigenvalue
of 104 against the exact 2.9), so use them only to cross-check smooth networks.
The network passed in is never modified (the copy is).

The generic routines (`top_eigenvalues`, `power_iteration`, `lanczos_tridiagonal`, `hutchinson_trace`,
`spectral_density`) live in smoothnorm.measure.linalg and act on any symmetric `scipy.sparse.linalg.LinearOperator`.
The `hessian_*` functions wrap them for a network and batch, for all parameters or a
subset named by `layer_slices()` / `param_slices()` keys.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy.sparse.linalg import LinearOperator, eigsh

from smoothnorm._validate import choice
from smoothnorm.measure._common import _check_batch, one_blas_thread
from smoothnorm.measure.linalg import (
    SpectralDensity,
    TraceEstimate,
    _dense,
    _rng,
    hutchinson_trace,
    spectral_density,
    top_eigenvalues,
)

__all__ = [
    "DEFAULT_RELATIVE_STEP",
    "HESSIAN_SCHEMES",
    "HESSIAN_MODES",
    "float64_copy",
    "HessianOperator",
    "hessian_operator",
    "hessian_vector_product",
    "dense_hessian",
    "hessian_top_eigenvalues",
    "hessian_min_eigenvalue",
    "hessian_trace",
    "hessian_spectral_density",
]

DEFAULT_RELATIVE_STEP = float(np.finfo(np.float64).eps ** (1 / 3))


def float64_copy(net):
    """An independent float64 copy of `net` (Network.astype(np.float64)): Hessian-vector products by finite
    differences need float64."""
    return net.astype(np.float64)


# ----------------------------------------------------------------------------------------------------------------
# The operator
# ----------------------------------------------------------------------------------------------------------------
HESSIAN_SCHEMES = ("exact", "central", "forward")
HESSIAN_MODES = ("probe", "eval")


class HessianOperator(LinearOperator):
    """The Hessian of the loss on (x, y) w.r.t. all parameters or a subset, as a LinearOperator.

    Holds a float64 copy of the network (the original is never touched). `params`: None (all) or names of layers
    (`layer_slices()` keys) or parameters (`param_slices()` keys); the operator's coordinates are those slices
    concatenated in flat-vector order. `mode`: "probe" (batch statistics, the default and what every other
    measurement uses) or "eval" (running statistics, PyHessian's convention).

    scheme "exact" (default): Pearlmutter's R-operator (forward-over-reverse), the product that reverse-over-reverse
    automatic differentiation gives, exact up to rounding: the Hessian of the loss at the base point's activation
    pattern (ReLU masks, max-pool winners, the Lp norms' signs and arg-max held fixed, as PyTorch, JAX and
    PyHessian do). The base forward pass runs once; each product costs one R-forward and one R-backward pass
    (about 1.5 gradients). "central" and "forward" are finite differences of the gradient (error O(h^2) and O(h),
    2 and 1 gradients per product): exact only on smooth networks, wrong by orders of magnitude where a difference
    step crosses a kink (ReLU, max-pool, L1/Linf norms), which Lanczos and power iteration seek out; kept as an
    independent check on smooth networks. `matvec_count` counts products.
    """

    def __init__(
        self,
        net,
        x,
        y,
        *,
        params: Sequence[str] | None = None,
        step: float | None = None,
        scheme: str = "exact",
        mode: str = "probe",
    ) -> None:
        self.scheme = choice("scheme", scheme, HESSIAN_SCHEMES)
        self.mode = choice("mode", mode, HESSIAN_MODES)
        x, y = _check_batch(net, x, y)
        self.net = float64_copy(net)
        self.x, self.y = self.net.check_input(x), self.net.check_targets(y, x.shape[0])
        self.slices = _subset_slices(net, params)
        self.w0 = self.net.params.copy()
        self.step = DEFAULT_RELATIVE_STEP if step is None else float(step)
        if not (math.isfinite(self.step) and self.step > 0):
            raise ValueError(f"step: expected a positive finite relative step, got {step!r}")
        self.scale = 1.0 + float(np.linalg.norm(self._gather(self.w0)))
        self.matvec_count = 0
        self._base = self.gradient_at(np.zeros(0), 0.0) if scheme == "forward" else None
        if scheme == "exact":
            self._prepare_exact()
        n = sum(s.stop - s.start for s in self.slices)
        super().__init__(dtype=np.dtype(np.float64), shape=(n, n))

    def _gather(self, full: np.ndarray) -> np.ndarray:
        return np.concatenate([full[s] for s in self.slices]) if len(self.slices) > 1 else full[self.slices[0]]

    def _scatter(self, v: np.ndarray) -> np.ndarray:
        full = np.zeros(self.net.num_params)
        offset = 0
        for s in self.slices:
            size = s.stop - s.start
            full[s] = v[offset : offset + size]
            offset += size
        return full

    def gradient_at(self, v: np.ndarray, h: float) -> np.ndarray:
        """The subset's gradient at w + h v (v in operator coordinates), params restored afterwards."""
        params = self.net.params
        offset = 0
        for s in self.slices if h != 0.0 else ():
            size = s.stop - s.start
            params[s] += h * v[offset : offset + size]
            offset += size
        try:
            _, g = self.net.loss_and_grad(self.x, self.y, mode=self.mode)
            return self._gather(g).copy()
        finally:
            params[...] = self.w0

    # -- the exact product ------------------------------------------------------------------------------------
    def _prepare_exact(self) -> None:
        """One base forward pass (the copy is private, nothing else runs on it); the network's `hessian_product`
        keeps what its products need (a Network: every layer's cache for the R-pass)."""
        self.loss, self._product = self.net.hessian_product(self.x, self.y, self.mode)

    def exact_product(self, direction: np.ndarray) -> np.ndarray:
        """H d for a full-length parameter direction d (a Network: one R-forward and one R-backward pass)."""
        return self._product(direction)

    def _matvec(self, v):
        v = np.asarray(v, dtype=np.float64).reshape(-1)
        self.matvec_count += 1
        norm = float(np.linalg.norm(v))
        if norm == 0.0:
            return np.zeros_like(v)
        if self.scheme == "exact":
            return self._gather(self.exact_product(self._scatter(v)))
        if self.scheme == "forward":
            # One gradient per product; truncation error O(h), so the step is sqrt(eps) rather than cbrt(eps).
            h = math.sqrt(self.step**3) * self.scale / norm
            return (self.gradient_at(v, h) - self._base) / h
        h = self.step * self.scale / norm
        return (self.gradient_at(v, h) - self.gradient_at(v, -h)) / (2.0 * h)

    def _rmatvec(self, v):
        return self._matvec(v)

    def _adjoint(self):
        return self


def _subset_slices(net, params: Sequence[str] | None) -> list[slice]:
    if params is None:
        return [slice(0, net.num_params)]
    if isinstance(params, str):
        params = [params]
    known = {**net.layer_slices(), **net.param_slices()}
    unknown = [name for name in params if name not in known]
    if unknown:
        raise ValueError(
            f"params: unknown names {unknown}; expected layer names {list(net.layer_slices())} or parameter names "
            f"{list(net.param_slices())}"
        )
    chosen = sorted((known[name].start, known[name].stop) for name in params)
    for (_, stop), (start, _) in zip(chosen, chosen[1:]):
        if start < stop:
            raise ValueError(
                f"params: expected non-overlapping names (a layer and one of its parameters?), got {params}"
            )
    return [slice(a, b) for a, b in chosen]


def hessian_operator(
    net, x, y, *, params: Sequence[str] | None = None, step: float | None = None, scheme: str = "exact",
    mode: str = "probe",
) -> HessianOperator:
    """The loss Hessian on batch (x, y) as a symmetric LinearOperator (finite differences in a float64 copy)."""
    return HessianOperator(net, x, y, params=params, step=step, scheme=scheme, mode=mode)


def hessian_vector_product(
    net, x, y, v, *, params: Sequence[str] | None = None, step: float | None = None, scheme: str = "exact",
    mode: str = "probe",
):
    """H v for one vector v (in the subset's coordinates; (n,) for all parameters), float64."""
    op = HessianOperator(net, x, y, params=params, step=step, scheme=scheme, mode=mode)
    v = np.asarray(v, dtype=np.float64)
    if v.shape != (op.shape[0],):
        raise ValueError(f"v: expected shape ({op.shape[0]},), got {v.shape}")
    return op.matvec(v)



def dense_hessian(
    net, x, y, *, params: Sequence[str] | None = None, step: float | None = None, scheme: str = "exact",
    mode: str = "probe",
) -> np.ndarray:
    """The full (n, n) Hessian, column by column (n Hessian-vector products), symmetrized. For small n only."""
    return _dense(HessianOperator(net, x, y, params=params, step=step, scheme=scheme, mode=mode))


# ----------------------------------------------------------------------------------------------------------------
# Network wrappers
# ----------------------------------------------------------------------------------------------------------------
def hessian_top_eigenvalues(
    net,
    x,
    y,
    k: int = 1,
    *,
    params: Sequence[str] | None = None,
    method: str = "lanczos",
    tol: float = 1e-6,
    maxiter: int | None = None,
    seed: int | np.random.Generator = 0,
    step: float | None = None,
    scheme: str = "exact",
    mode: str = "probe",
) -> np.ndarray:
    """The k largest eigenvalues of the loss Hessian on batch (x, y), descending (float64 copy, probe mode).

    params: None (all) or layer / parameter names. method: "lanczos" or "power" (see `top_eigenvalues`).
    tol: relative accuracy of the eigenvalues. seed: the starting vector's. Cost: 2 forward+backward per
    Hessian-vector product; Lanczos typically needs tens of products for k = 1.
    """
    op = HessianOperator(net, x, y, params=params, step=step, scheme=scheme, mode=mode)
    return top_eigenvalues(op, k, method=method, tol=tol, maxiter=maxiter, seed=seed)


@one_blas_thread
def hessian_min_eigenvalue(
    net,
    x,
    y,
    *,
    params: Sequence[str] | None = None,
    tol: float = 1e-6,
    maxiter: int | None = None,
    seed: int | np.random.Generator = 0,
    step: float | None = None,
    scheme: str = "exact",
    mode: str = "probe",
) -> float:
    """The most negative (algebraically smallest) eigenvalue of the loss Hessian on (x, y), by Lanczos."""
    op = HessianOperator(net, x, y, params=params, step=step, scheme=scheme, mode=mode)
    n = op.shape[0]
    if n <= 2:
        return float(np.linalg.eigvalsh(_dense(op))[0])
    value = eigsh(op, k=1, which="SA", tol=tol, maxiter=maxiter, v0=_rng(seed).standard_normal(n),
                  return_eigenvectors=False)
    return float(value[0])


def hessian_trace(
    net,
    x,
    y,
    num_probes: int = 100,
    *,
    params: Sequence[str] | None = None,
    seed: int | np.random.Generator = 0,
    step: float | None = None,
    scheme: str = "exact",
    mode: str = "probe",
) -> TraceEstimate:
    """Hutchinson's estimate of the loss Hessian's trace on (x, y) (see `hutchinson_trace`)."""
    op = HessianOperator(net, x, y, params=params, step=step, scheme=scheme, mode=mode)
    return hutchinson_trace(op, num_probes, seed=seed)


def hessian_spectral_density(
    net,
    x,
    y,
    *,
    num_probes: int = 10,
    lanczos_steps: int = 50,
    params: Sequence[str] | None = None,
    seed: int | np.random.Generator = 0,
    step: float | None = None,
    scheme: str = "exact",
    mode: str = "probe",
) -> SpectralDensity:
    """The loss Hessian's spectral density on (x, y) by stochastic Lanczos quadrature (see `spectral_density`).

    Cost: num_probes * lanczos_steps Hessian-vector products; memory: lanczos_steps float64 parameter vectors.
    """
    op = HessianOperator(net, x, y, params=params, step=step, scheme=scheme, mode=mode)
    return spectral_density(op, num_probes=num_probes, lanczos_steps=lanczos_steps, seed=seed)
