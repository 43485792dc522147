"""Both sides of the paper's §4 results, as numbers to plot: Theorem 4.1 (gradient magnitude), Theorem 4.2 (the
quadratic form along the gradient) and Lemma 4.5 (distance to the closest optimum).

Setting (§4.1, Fig 7): a BatchNorm block y -> y_hat = (y - mu) / sigma -> z = gamma y_hat + beta -> L_hat, per
feature j over a batch of m values (for a conv layer, m = N * H * W per channel). By the paper's convention the
gradient of the network without BN w.r.t. its y_j equals g_hat_j = dL_hat/dz_j. sigma is the batch standard
deviation; BatchNorm's sigma = sqrt(var + eps) is used where a real layer (with its eps) is measured.

Finding (tests/measure/test_theory.py): in Theorem 4.1 the printed coefficient 1/sqrt(m) on <grad, y_hat>^2 is
wrong; the derived 1/m makes the bound hold, with equality when eps = 0 (the gradient is the projection of g_hat
off span{1, y_hat}). With 1/sqrt(m) the right side is smaller than the left whenever <g_hat, y_hat> != 0 and m > 1.
Theorem 4.2's first bound also holds with equality at eps = 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from smoothnorm.kernels.norm.batch import batch_norm_train_backward, batch_norm_train_forward
from smoothnorm.measure._common import _check_batch, _preserved
from smoothnorm.nn.norms.batch import BatchNorm

__all__ = [
    "Theorem41",
    "theorem_4_1",
    "theorem_4_1_network",
    "Theorem42",
    "theorem_4_2",
    "theorem_4_2_toy",
    "lemma_4_5_toy",
]


def _per_channel(a: np.ndarray) -> np.ndarray:
    """(N, C) or (N, C, H, W) -> (C, m) float64 with m = N * H * W."""
    a = np.asarray(a, dtype=np.float64)
    return np.moveaxis(a, 1, 0).reshape(a.shape[1], -1)


def _holds(lhs, rhs, scale, rtol) -> np.ndarray:
    return lhs <= rhs + rtol * np.maximum(np.abs(scale), 1e-300)


# ----------------------------------------------------------------------------------------------------------------
# Theorem 4.1
# ----------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Theorem41:
    """Theorem 4.1 per feature j (arrays of shape (C,)).

    lhs: ||grad_{y_j} L_hat||^2 (the BN layer's real input gradient); rhs_printed / rhs_derived:
    (gamma^2 / sigma_j^2) (||g_hat_j||^2 - (1/m) <1, g_hat_j>^2 - c <g_hat_j, y_hat_j>^2) with c = 1/sqrt(m) (as
    printed in v3) and c = 1/m (as derived in the proof); holds_printed / holds_derived: lhs <= rhs (relative
    tolerance rtol of (gamma^2 / sigma^2) ||g_hat||^2). The terms: grad_norm_sq ||g_hat_j||^2, mean_term
    (1/m) <1, g_hat_j>^2, alignment_sq <g_hat_j, y_hat_j>^2; sigma (with eps), gamma; m the batch size per feature.
    """

    lhs: np.ndarray
    rhs_printed: np.ndarray
    rhs_derived: np.ndarray
    holds_printed: np.ndarray
    holds_derived: np.ndarray
    grad_norm_sq: np.ndarray
    mean_term: np.ndarray
    alignment_sq: np.ndarray
    sigma: np.ndarray
    gamma: np.ndarray
    m: int


def theorem_4_1(y, upstream_grad, gamma=None, *, eps: float = 1e-5, rtol: float = 1e-10) -> Theorem41:
    """Both sides of Theorem 4.1 for a BatchNorm layer with inputs y and gradient dL_hat/dz = upstream_grad.

    y, upstream_grad: (N, C) or (N, C, H, W); gamma: (C,) or None (ones). Computed in float64; the left side
    uses the library's BatchNorm backward kernel (batch statistics, the given eps).
    """
    y = np.ascontiguousarray(y, dtype=np.float64)
    upstream_grad = np.ascontiguousarray(upstream_grad, dtype=np.float64)
    if y.ndim not in (2, 4) or upstream_grad.shape != y.shape:
        raise ValueError(
            f"y, upstream_grad: expected two (N, C) or (N, C, H, W) arrays of one shape, got {y.shape} and "
            f"{upstream_grad.shape}"
        )
    channels = y.shape[1]
    gamma = np.ones(channels) if gamma is None else np.ascontiguousarray(gamma, dtype=np.float64)
    if gamma.shape != (channels,):
        raise ValueError(f"gamma: expected shape ({channels},), got {gamma.shape}")
    _, mean, invstd, _ = batch_norm_train_forward(y, gamma, None, eps)
    dy = batch_norm_train_backward(upstream_grad, y, mean, invstd, gamma)
    lhs = np.einsum("cm,cm->c", _per_channel(dy), _per_channel(dy))
    g = _per_channel(upstream_grad)
    y_hat = (_per_channel(y) - mean[:, None]) * invstd[:, None]
    m = g.shape[1]
    grad_norm_sq = np.einsum("cm,cm->c", g, g)
    mean_term = g.sum(axis=1) ** 2 / m
    alignment_sq = np.einsum("cm,cm->c", g, y_hat) ** 2
    factor = gamma**2 * invstd**2
    rhs_printed = factor * (grad_norm_sq - mean_term - alignment_sq / math.sqrt(m))
    rhs_derived = factor * (grad_norm_sq - mean_term - alignment_sq / m)
    scale = factor * grad_norm_sq
    return Theorem41(
        lhs=lhs,
        rhs_printed=rhs_printed,
        rhs_derived=rhs_derived,
        holds_printed=_holds(lhs, rhs_printed, scale, rtol),
        holds_derived=_holds(lhs, rhs_derived, scale, rtol),
        grad_norm_sq=grad_norm_sq,
        mean_term=mean_term,
        alignment_sq=alignment_sq,
        sigma=1.0 / invstd,
        gamma=gamma,
        m=m,
    )


def theorem_4_1_network(net, x, y, layer: str, *, rtol: float = 1e-10) -> Theorem41:
    """Theorem 4.1 at a BatchNorm layer of a network on batch (x, y), probe mode; the network is unchanged.

    The layer's inputs and the loss gradient w.r.t. its outputs come from a forward and a backward that stops just
    above the layer.
    """
    names = [la.name for la in net.layers]
    if layer not in names:
        raise ValueError(f"layer: unknown layer name {layer!r}; expected one of {names}")
    index = names.index(layer)
    bn = net.layers[index]
    if not isinstance(bn, BatchNorm):
        batch_norms = [la.name for la in net.layers if isinstance(la, BatchNorm)]
        raise ValueError(f"layer: expected a BatchNorm layer, got {type(bn).__name__} {layer!r}; BatchNorm layers: "
                         f"{batch_norms}")
    x, y = _check_batch(net, x, y)
    with _preserved(net):
        capture = [names[index - 1]] if index > 0 else []
        out = net.forward(x, mode="probe", capture=capture)
        inputs = net.captured[names[index - 1]].copy() if index > 0 else x.copy()
        net.loss_fn.forward(out, y)
        d = net.loss_fn.backward()
        for i in range(len(net.layers) - 1, index, -1):
            d = net.layers[i].backward(d, need_dx=True)
        gamma = bn.params.get("weight")
        return theorem_4_1(inputs, d, None if gamma is None else gamma.copy(), eps=bn.eps, rtol=rtol)


# ----------------------------------------------------------------------------------------------------------------
# Theorem 4.2
# ----------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Theorem42:
    """Theorem 4.2 for one feature (scalars), with u = grad_{y_j} L_hat:

    lhs: u^T (d^2 L_hat / dy_j^2) u (exact, BN's own curvature included); rhs_first:
    (gamma^2/sigma^2) u^T H u - (gamma / (m sigma^2)) <g_hat, y_hat> ||u||^2; rhs_second:
    (gamma^2/sigma^2) (g_hat^T H g_hat - (1 / (m gamma)) <g_hat, y_hat> ||u||^2) (the form that assumes H preserves
    relative norms); alignment <g_hat, y_hat>; quadratic_no_bn g_hat^T H g_hat; holds_first / holds_second.
    """

    lhs: float
    rhs_first: float
    rhs_second: float
    alignment: float
    quadratic_no_bn: float
    grad_norm_sq: float
    sigma: float
    holds_first: bool
    holds_second: bool


def theorem_4_2(y, gamma: float, beta: float, grad_z, hessian_z, *, eps: float = 0.0, rtol: float = 1e-10) -> Theorem42:
    """Both sides of Theorem 4.2 for one feature: y (m,) the BN inputs; grad_z(z) -> (m,) and hessian_z(z) -> (m, m)
    the loss's gradient and Hessian w.r.t. the BN outputs z = gamma y_hat + beta. eps: BN's (0: the paper's sigma).

    The left side is exact: along y(t) = y + t u, d^2/dt^2 L_hat = z'^T H z' + g_hat^T z'' with z', z'' the first two
    derivatives of the normalization along u.
    """
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    m = y.size
    if m < 2:
        raise ValueError(f"y: expected at least 2 values (a batch), got {m}")
    c = y - y.mean()
    sigma = math.sqrt(c @ c / m + eps)
    y_hat = c / sigma
    z = gamma * y_hat + beta
    g = np.asarray(grad_z(z), dtype=np.float64)
    h = np.asarray(hessian_z(z), dtype=np.float64)
    # u = J^T g with J = dz/dy = (gamma / sigma) (I - 11^T/m - y_hat y_hat^T / m) (Fact C.2; symmetric).
    u = (gamma / sigma) * (g - g.mean() - y_hat * (g @ y_hat) / m)
    uc = u - u.mean()
    sigma_dot = (c @ uc) / (m * sigma)
    sigma_ddot = (uc @ uc / m - sigma_dot**2) / sigma
    z_dot = gamma * (uc / sigma - c * sigma_dot / sigma**2)
    z_ddot = gamma * (-2 * uc * sigma_dot / sigma**2 - c * sigma_ddot / sigma**2 + 2 * c * sigma_dot**2 / sigma**3)
    lhs = float(z_dot @ h @ z_dot + g @ z_ddot)
    alignment = float(g @ y_hat)
    u_sq = float(u @ u)
    rhs_first = float((gamma / sigma) ** 2 * (u @ h @ u) - gamma / (m * sigma**2) * alignment * u_sq)
    quadratic = float(g @ h @ g)
    rhs_second = float((gamma / sigma) ** 2 * (quadratic - alignment * u_sq / (m * gamma)))
    scale = max(abs(lhs), (gamma / sigma) ** 2 * abs(float(u @ h @ u)), abs(rhs_second), 1e-300)
    return Theorem42(
        lhs=lhs,
        rhs_first=rhs_first,
        rhs_second=rhs_second,
        alignment=alignment,
        quadratic_no_bn=quadratic,
        grad_norm_sq=float(g @ g),
        sigma=sigma,
        holds_first=bool(lhs <= rhs_first + rtol * scale),
        holds_second=bool(lhs <= rhs_second + rtol * scale),
    )


def theorem_4_2_toy(
    rng: np.random.Generator,
    *,
    m: int = 32,
    num_draws: int = 200,
    gamma: float = 1.0,
    hessian: str = "psd",
    eps: float = 0.0,
) -> dict[str, np.ndarray]:
    """Theorem 4.2 on random quadratic losses L(z) = 1/2 (z - t)^T A (z - t) after one BN feature.

    Each draw: y ~ N(mu, s^2) (random mu, s), t ~ N(0, I), and A a random PSD matrix ("psd") or the identity
    ("identity", a Hessian that preserves norms). Returns {field of Theorem42: (num_draws,) array}.
    """
    if hessian not in ("psd", "identity"):
        raise ValueError(f"hessian: expected 'psd' or 'identity', got {hessian!r}")
    rows = []
    for _ in range(int(num_draws)):
        y = rng.normal(rng.normal(0, 3), math.exp(rng.normal(0, 1)), size=m)
        target = rng.standard_normal(m)
        if hessian == "psd":
            b = rng.standard_normal((m, m)) / math.sqrt(m)
            a = b @ b.T
        else:
            a = np.eye(m)
        rows.append(theorem_4_2(y, gamma, 0.0, lambda z, a=a, t=target: a @ (z - t), lambda z, a=a: a, eps=eps))
    return {key: np.array([getattr(r, key) for r in rows]) for key in Theorem42.__dataclass_fields__}


# ----------------------------------------------------------------------------------------------------------------
# Lemma 4.5
# ----------------------------------------------------------------------------------------------------------------
def lemma_4_5_toy(
    rng: np.random.Generator, *, dim: int = 10, samples: int = 256, num_draws: int = 200, eps: float = 1e-5
) -> dict[str, np.ndarray]:
    """Lemma 4.5 on linear regression with one output, t = X w*, and its BN counterpart z = gamma BN(X w) + beta.

    The BN loss is invariant to w -> k w (k > 0), so every point k w* is a BN optimum; the closest to an
    initialization w0 is k* w* with k* = <w*, w0> / ||w*||^2 (when positive). Per draw (w* ~ N(0, I), w0 Glorot-like
    uniform, X ~ N(0, I)) returns (num_draws,) arrays:
    distance_standard ||w0 - w*||^2; distance_bn ||w0 - k* w*||^2 (k* clipped at 0); bound, the right side
    ||w0 - w*||^2 - (||w*||^2 - <w*, w0>)^2 / ||w*||^2; applies <w0, w*> > 0 (the lemma's condition);
    bn_loss_standard_optimum and bn_loss_closest_optimum, the BN network's mean squared error at w* and k* w* with
    its optimal gamma = std(t), beta = mean(t) (both ~0: they are optima); scale_k k*.
    """
    fields = ("distance_standard", "distance_bn", "bound", "applies", "bn_loss_standard_optimum",
              "bn_loss_closest_optimum", "scale_k")
    out = {key: np.empty(int(num_draws)) for key in fields}
    bound_scale = math.sqrt(6.0 / (dim + 1))
    for i in range(int(num_draws)):
        w_star = rng.standard_normal(dim)
        w0 = rng.uniform(-bound_scale, bound_scale, size=dim)
        x = rng.standard_normal((samples, dim))
        t = x @ w_star
        inner, norm_sq = float(w_star @ w0), float(w_star @ w_star)
        k = max(inner / norm_sq, 0.0)
        out["distance_standard"][i] = float(np.sum((w0 - w_star) ** 2))
        out["distance_bn"][i] = float(np.sum((w0 - k * w_star) ** 2))
        out["bound"][i] = out["distance_standard"][i] - (norm_sq - inner) ** 2 / norm_sq
        out["applies"][i] = inner > 0
        gamma, beta = np.array([t.std()]), np.array([t.mean()])
        for key, w in (("bn_loss_standard_optimum", w_star), ("bn_loss_closest_optimum", k * w_star)):
            if not np.any(w):
                out[key][i] = math.nan
                continue
            z, _, _, _ = batch_norm_train_forward((x @ w)[:, None], gamma, beta, eps)
            out[key][i] = float(np.mean((z[:, 0] - t) ** 2))
        out["scale_k"][i] = k
    out["applies"] = out["applies"].astype(bool)
    return out
