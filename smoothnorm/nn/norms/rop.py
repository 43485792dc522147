"""Pearlmutter's R-operator for the normalization family: directional derivatives of the forward and backward
passes, the pieces of an exact Hessian-vector product (smoothnorm.measure.hessian).

Every normalization here is `out = gamma * (s_n * z + m_b) + s_a * beta + m_a` applied per channel to a
standardized input z. Standardization with batch statistics: z = (x - mean(x)) / s(x) over each normalization
group (a channel over (N, H, W) for the batch norms, a sample's group of channels and pixels for group/layer/
instance norm), with the scale statistic s one of

    "var"   sqrt(mean((x - mean x)^2) + eps)    BatchNorm, GroupNorm (and so LayerNorm, InstanceNorm)
    "l1"    mean(|x|) + eps                      L1 batch norm (the un-centred x)
    "l2"    sqrt(mean(x^2)) + eps                L2 batch norm
    "linf"  max(|x|) + eps                       Linf batch norm (the kernel's first arg-max)

or, in eval mode, z = (x - center) * inv with constant running statistics. s_n, m_b, s_a, m_a are the noisy
BatchNorm's fixed noise (ones and zeros without noise); see `ElementwiseAffine`.

Kinks are taken at the base point, as automatic differentiation does: sign(x) for "l1" (sign(0) = 0), the arg-max
element for "linf", and the derivative of the "l2" norm is 0 where the norm is 0, as in the kernels. With
g = grad s (dense, per element) and a direction rx:

    rs = sum_group(g * rx),   rz = (rc - z * rs) / s,   rc = rx - mean(rx)
    dx = (dz - mean dz) / s - k g,            k = sum_group(dz * c) / s^2
    rdx = (rdz - mean rdz) / s - (dz - mean dz) rs / s^2 - rk g - k rg
    rk = sum_group(rdz * c + dz * rc) / s^2 - 2 k rs / s

with rg the directional derivative of g ("var": rc / (M s) - c rs / (M s^2); "l2": rx / (M n) - x rn / (M n^2) with
n = sqrt(mean x^2); "l1", "linf": 0). NumPy in float64 (Hessian products run on float64 copies), favouring
plainness over speed; BatchNorm with batch statistics in float64, the common case, runs the same mathematics fused
in smoothnorm.kernels.norm.batch_rop (tested against this module).
"""

from __future__ import annotations

import numpy as np

STATISTICS = ("var", "l1", "l2", "linf")


def as_ncs(a: np.ndarray) -> np.ndarray:
    """(N, C) or (N, C, H, W) -> an (N, C, S) view."""
    return a.reshape(a.shape[0], a.shape[1], -1)


class Standardization:
    """z = (x - mean x) / s(x) over normalization groups, with the base quantities an R-pass needs.

    x3: (N, C, S); groups: None for per-channel groups over (N, S) (the batch norms), else the number of channel
    groups per sample (group norm). stat: one of STATISTICS. argmax: (C,) flat (n * S + s) positions of the
    maximum |x| per channel, from the forward kernel (stat "linf" only).
    """

    def __init__(self, x3: np.ndarray, groups: int | None, stat: str, eps: float, argmax=None) -> None:
        self.shape = x3.shape
        n, c, s_len = x3.shape
        if groups is None:
            self.view_shape, self.axes = (n, c, s_len), (0, 2)
        else:
            self.view_shape, self.axes = (n, groups, c // groups * s_len), (2,)
        x = np.asarray(x3, dtype=np.float64).reshape(self.view_shape)
        self.x = x
        self.count = int(np.prod([self.view_shape[a] for a in self.axes]))
        self.c = x - self.mean(x)
        self.stat = stat
        if stat == "var":
            self.s = np.sqrt(self.mean(self.c * self.c) + eps)
            self.grad_s = self.c / (self.count * self.s)
        elif stat == "l1":
            self.s = self.mean(np.abs(x)) + eps
            self.grad_s = np.sign(x) / self.count
        elif stat == "l2":
            self.norm = np.sqrt(self.mean(x * x))
            self.s = self.norm + eps
            safe = np.where(self.norm > 0, self.norm, 1.0)
            self.grad_s = np.where(self.norm > 0, x / (self.count * safe), 0.0)
        elif stat == "linf":
            if groups is not None:
                raise ValueError("stat 'linf': per-channel groups only")
            self.s = np.max(np.abs(x), axis=(0, 2), keepdims=True) + eps
            self.grad_s = np.zeros_like(x)
            pos = np.asarray(argmax, dtype=np.int64)
            ch = np.arange(c)
            self.grad_s[pos // s_len, ch, pos % s_len] = np.sign(x[pos // s_len, ch, pos % s_len])
        else:
            raise ValueError(f"stat: expected one of {list(STATISTICS)}, got {stat!r}")
        self.z = self.c / self.s
        self.rx = self.rc = self.rs = None

    def mean(self, a: np.ndarray) -> np.ndarray:
        return a.mean(axis=self.axes, keepdims=True)

    def total(self, a: np.ndarray) -> np.ndarray:
        return a.sum(axis=self.axes, keepdims=True)

    def to_ncs(self, a: np.ndarray) -> np.ndarray:
        return a.reshape(self.shape)

    def z_ncs(self) -> np.ndarray:
        return self.to_ncs(self.z)

    def forward_r(self, rx3: np.ndarray) -> np.ndarray:
        """rz for the input direction rx3 (N, C, S); keeps what backward_r needs."""
        rx = np.asarray(rx3, dtype=np.float64).reshape(self.view_shape)
        self.rx, self.rc = rx, rx - self.mean(rx)
        self.rs = self.total(self.grad_s * rx)
        return self.to_ncs((self.rc - self.z * self.rs) / self.s)

    def _grad_s_r(self) -> np.ndarray | float:
        if self.stat == "var":
            return self.rc / (self.count * self.s) - self.c * self.rs / (self.count * self.s * self.s)
        if self.stat == "l2":
            safe = np.where(self.norm > 0, self.norm, 1.0)
            r_norm = self.rs  # d norm = grad_s . rx
            return np.where(self.norm > 0, self.rx / (self.count * safe) - self.x * r_norm / (self.count * safe**2),
                            0.0)
        return 0.0

    def backward_r(self, dz3: np.ndarray, rdz3: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(dx, rdx) for the output gradient dz3 and its directional derivative rdz3, both (N, C, S)."""
        dz, rdz = dz3.reshape(self.view_shape), rdz3.reshape(self.view_shape)
        s, rs = self.s, self.rs
        centred_dz = dz - self.mean(dz)
        k = self.total(dz * self.c) / (s * s)
        dx = centred_dz / s - k * self.grad_s
        rk = self.total(rdz * self.c + dz * self.rc) / (s * s) - 2.0 * k * rs / s
        rdx = ((rdz - self.mean(rdz)) / s - centred_dz * rs / (s * s) - rk * self.grad_s
               - k * self._grad_s_r())
        return self.to_ncs(dx), self.to_ncs(rdx)


class FixedStandardization:
    """z = (x - center) * inv with constant per-channel center and inv (eval mode: running statistics)."""

    def __init__(self, x3: np.ndarray, center: np.ndarray, inv: np.ndarray) -> None:
        self.center = np.asarray(center, dtype=np.float64).reshape(1, -1, 1)
        self.inv = np.asarray(inv, dtype=np.float64).reshape(1, -1, 1)
        self.x = np.asarray(x3, dtype=np.float64)
        self.shape = self.x.shape

    def z_ncs(self) -> np.ndarray:
        return (self.x - self.center) * self.inv

    def forward_r(self, rx3: np.ndarray) -> np.ndarray:
        return np.asarray(rx3, dtype=np.float64) * self.inv

    def backward_r(self, dz3: np.ndarray, rdz3: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return dz3 * self.inv, rdz3 * self.inv


class ElementwiseAffine:
    """out = gamma * (s_n * z + m_b) + s_a * beta + m_a per channel, with fixed noise arrays (or scalars).

    Plain affine: s_n = s_a = 1, m_b = m_a = 0. Noisy BatchNorm, noise after the affine: out = s (gamma z + beta) + m,
    so s_n = s_a = s, m_a = m. Noise before the affine: out = gamma (s z + m) + beta, so s_n = s, m_b = m.
    gamma, beta: (C,) or None (no affine: gamma 1, beta 0, and no parameter gradients).
    """

    def __init__(self, gamma, beta, s_n=1.0, m_b=0.0, s_a=1.0, m_a=0.0) -> None:
        self.gamma = 1.0 if gamma is None else np.asarray(gamma, dtype=np.float64).reshape(1, -1, 1)
        self.affine = gamma is not None
        self.s_n, self.m_b, self.s_a = (np.asarray(a, dtype=np.float64) if np.ndim(a) else a for a in (s_n, m_b, s_a))
        del m_a  # a constant shift: no derivative

    def forward_r(self, z: np.ndarray, rz: np.ndarray, rgamma, rbeta) -> np.ndarray:
        """The output's directional derivative, all (N, C, S); rgamma, rbeta (C,) or None."""
        self._z, self._rz = z, rz
        out = self.gamma * (self.s_n * rz)
        if self.affine:
            u = self.s_n * z + self.m_b
            out = out + np.asarray(rgamma).reshape(1, -1, 1) * u + self.s_a * np.asarray(rbeta).reshape(1, -1, 1)
        return out

    def backward_r(self, dy: np.ndarray, rdy: np.ndarray, rgamma, r_dgamma, r_dbeta) -> tuple[np.ndarray, np.ndarray]:
        """(dz, rdz) for dy and rdy (N, C, S); writes the directional derivatives of d gamma and d beta."""
        dz = self.s_n * (self.gamma * dy)
        rdu = self.gamma * rdy
        if self.affine:
            rdu = rdu + np.asarray(rgamma).reshape(1, -1, 1) * dy
            u = self.s_n * self._z + self.m_b
            if r_dgamma is not None:
                r_dgamma[...] = (rdy * u + dy * (self.s_n * self._rz)).sum(axis=(0, 2))
            if r_dbeta is not None:
                r_dbeta[...] = (rdy * self.s_a).sum(axis=(0, 2)) if np.ndim(self.s_a) else rdy.sum(axis=(0, 2))
        return dz, self.s_n * rdu
