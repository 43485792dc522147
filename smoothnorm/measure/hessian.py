"""Curvature of the loss: Hessian-vector products, extreme eigenvalues, trace and spectral density.

Hessian-vector products are exact by default: Pearlmutter's R-operator (forward-over-reverse differentiation, each
layer's `forward_r` / `backward_r`, the normalization math in smoothnorm._rop) in a float64 copy of the network, on
one batch in probe mode (batch statistics) or eval mode (running statistics). They equal what reverse-over-reverse
automatic differentiation gives (PyTorch's double backward, PyHessian): the Hessian at the base point's activation
pattern, with ReLU masks, max-pool winners and the Lp norms' signs and arg-max held fixed. Finite differences of the
gradient (scheme="central" / "forward", step h = step * (1 + ||w||) / ||v||, step = cbrt(eps) ~ 6e-6) remain as an
option; on networks with kinks they are wrong by orders of magnitude in the directions Lanczos and power iteration
reach (a difference step crosses ReLU kinks; issue 10 measured 104 against 2.9 on a VGG-11), so use them only to
cross-check smooth networks. The network passed in is never modified (the copy is).

Generic routines (`top_eigenvalues`, `power_iteration`, `lanczos_tridiagonal`, `hutchinson_trace`,
`spectral_density`) act on any symmetric `scipy.sparse.linalg.LinearOperator`; the `hessian_*` functions wrap them
for a network and batch, for all parameters or a subset named by `layer_slices()` / `param_slices()` keys.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.linalg import eigh_tridiagonal
from scipy.sparse.linalg import LinearOperator, eigsh

from smoothnorm._validate import choice
from smoothnorm.measure._common import _check_batch

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
    "top_eigenvalues",
    "power_iteration",
    "lanczos_tridiagonal",
    "hutchinson_trace",
    "spectral_density",
    "TraceEstimate",
    "SpectralDensity",
]

DEFAULT_RELATIVE_STEP = float(np.finfo(np.float64).eps ** (1 / 3))


def float64_copy(net):
    """An independent float64 copy of `net` (Network.astype(np.float64)): Hessian-vector products by finite
    differences need float64."""
    return net.astype(np.float64)


def _rng(seed) -> np.random.Generator:
    if isinstance(seed, np.random.Generator):
        return seed
    return np.random.default_rng(seed)


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
        """One base forward pass; every layer keeps its cache (the copy is private, nothing else runs on it)."""
        net = self.net
        out = net.forward(self.x, self.mode)
        self.loss = net.loss_fn.forward(out, self.y)
        self._dout = net.loss_fn.backward()
        shapes = {}
        for layer in net.layers:
            for pname, pshape in layer.param_shapes().items():
                shapes[(layer.name, pname)] = (net.param_slices()[f"{layer.name}.{pname}"], pshape)
        self._param_views = shapes

    def _views(self, layer, flat: np.ndarray) -> dict[str, np.ndarray]:
        return {pname: flat[sl].reshape(shape) for (name, pname), (sl, shape) in self._param_views.items()
                if name == layer.name}

    def exact_product(self, direction: np.ndarray) -> np.ndarray:
        """H d for a full-length parameter direction d, by one R-forward and one R-backward pass."""
        net = self.net
        rx = None
        with np.errstate(all="ignore"):
            for layer in net.layers:
                rx = layer.forward_r(rx, self._views(layer, direction))
            r_out = np.zeros_like(self._dout) if rx is None else rx
            rd = net.loss_fn.backward_r(r_out)
            d = self._dout
            hv = np.zeros(net.num_params)
            for i in range(len(net.layers) - 1, -1, -1):
                layer = net.layers[i]
                d, rd = layer.backward_r(d, rd, self._views(layer, hv), need_dx=i > 0)
        return hv

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


def _dense(op: LinearOperator) -> np.ndarray:
    n = op.shape[0]
    cols = np.empty((n, n))
    e = np.zeros(n)
    for i in range(n):
        e[i] = 1.0
        cols[:, i] = op.matvec(e)
        e[i] = 0.0
    return 0.5 * (cols + cols.T)


def dense_hessian(
    net, x, y, *, params: Sequence[str] | None = None, step: float | None = None, scheme: str = "exact",
    mode: str = "probe",
) -> np.ndarray:
    """The full (n, n) Hessian, column by column (n Hessian-vector products), symmetrized. For small n only."""
    return _dense(HessianOperator(net, x, y, params=params, step=step, scheme=scheme, mode=mode))


# ----------------------------------------------------------------------------------------------------------------
# Generic symmetric-operator routines
# ----------------------------------------------------------------------------------------------------------------
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
