"""A plug-in normalization for `experiments/examples/scale_only_batchnorm.toml`: BatchNorm without its centering.

Each channel is divided by its batch root-mean-square, sqrt(mean(x^2) + eps) over (N, H, W), with no mean
subtracted, then the usual per-channel affine: y = gamma * x / s + beta. Which half of BatchNorm smooths the
loss landscape, the centering or the scaling? This layer keeps only the scaling.

Written as a user would, in plain NumPy against the public `Layer` protocol (smoothnorm.nn.layer), with the
R-pass for exact Hessian-vector products; `smoothnorm.testing.check_layer(ScaleOnlyBatchNorm(4), (4, 5, 5))`
checks it. Eval mode uses the running mean square (momentum as BatchNorm's).
"""

from __future__ import annotations

import numpy as np

from smoothnorm.nn.layer import Layer


def _ncs(a: np.ndarray) -> np.ndarray:
    """(N, C) or (N, C, H, W) -> an (N, C, S) view."""
    return a.reshape(a.shape[0], a.shape[1], -1)


def _channel(v: np.ndarray) -> np.ndarray:
    """A (C,) vector shaped to broadcast against (N, C, S)."""
    return np.asarray(v, dtype=np.float64).reshape(1, -1, 1)


class ScaleOnlyBatchNorm(Layer):
    """y = gamma * x / sqrt(mean(x^2) + eps) + beta per channel, the mean square over (N, H, W)."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1, affine: bool = True) -> None:
        super().__init__()
        if int(num_features) < 1:
            raise ValueError(f"num_features: expected a positive integer, got {num_features}")
        if not eps > 0:
            raise ValueError(f"eps: expected a positive number, got {eps}")
        self.num_features, self.eps, self.momentum, self.affine = int(num_features), float(eps), momentum, affine
        self.running_ms: np.ndarray | None = None
        self._cache = None

    def param_shapes(self):
        return {"weight": (self.num_features,), "bias": (self.num_features,)} if self.affine else {}

    def init_params(self, rng, init):
        if self.affine:
            self.params["weight"][...] = 1
            self.params["bias"][...] = 0

    def allocate(self, dtype):
        self.running_ms = np.ones(self.num_features, dtype=dtype)

    def buffers(self):
        return {"running_ms": self.running_ms}

    def _affine(self):
        if not self.affine:
            return 1.0, 0.0
        return _channel(self.params["weight"]), _channel(self.params["bias"])

    def forward(self, x, mode):
        x3 = _ncs(x).astype(np.float64)
        if mode == "eval":
            s = np.sqrt(_channel(self.running_ms) + self.eps)
        else:
            ms = np.mean(x3 * x3, axis=(0, 2), keepdims=True)
            if mode == "train":
                self.running_ms[...] = (1 - self.momentum) * self.running_ms + self.momentum * ms.ravel()
            s = np.sqrt(ms + self.eps)
        z = x3 / s
        self._cache = (mode, x.shape, x.dtype, z, s)
        gamma, beta = self._affine()
        return (gamma * z + beta).astype(x.dtype).reshape(x.shape)

    def backward(self, dy, need_dx=True):
        mode, shape, dtype, z, s = self._cache
        dy3 = _ncs(dy).astype(np.float64)
        if self.affine:
            self.grads["weight"][...] = np.sum(dy3 * z, axis=(0, 2))
            self.grads["bias"][...] = np.sum(dy3, axis=(0, 2))
        if not need_dx:
            return None
        gamma, _ = self._affine()
        dz = gamma * dy3
        if mode == "eval":  # constant statistics
            dx = dz / s
        else:  # z = x / s(x): dx = (dz - z mean(dz z)) / s
            dx = (dz - z * np.mean(dz * z, axis=(0, 2), keepdims=True)) / s
        return dx.astype(dtype).reshape(shape)

    # -- R-pass: directional derivatives for an input direction rx and parameter directions rparams ------------
    def forward_r(self, rx, rparams):
        mode, shape, dtype, z, s = self._cache
        r3 = np.zeros_like(z) if rx is None else _ncs(rx).astype(np.float64)
        rs = np.zeros_like(s) if mode == "eval" else np.mean(z * r3, axis=(0, 2), keepdims=True)  # = mean(x rx) / s
        rz = (r3 - z * rs) / s
        gamma, _ = self._affine()
        ry = gamma * rz
        if self.affine:
            ry = ry + _channel(rparams["weight"]) * z + _channel(rparams["bias"])
        self._r = (rz, rs, rparams)
        return ry.astype(dtype).reshape(shape)

    def backward_r(self, dy, rdy, rgrads, need_dx=True):
        mode, shape, dtype, z, s = self._cache
        rz, rs, rparams = self._r
        dy3, rdy3 = _ncs(dy).astype(np.float64), _ncs(rdy).astype(np.float64)
        if self.affine:
            rgrads["weight"][...] = np.sum(rdy3 * z + dy3 * rz, axis=(0, 2))
            rgrads["bias"][...] = np.sum(rdy3, axis=(0, 2))
        if not need_dx:
            return None, None
        gamma, _ = self._affine()
        dz = gamma * dy3
        rdz = gamma * rdy3 + (_channel(rparams["weight"]) * dy3 if self.affine else 0.0)
        if mode == "eval":
            dx, rdx = dz / s, rdz / s
        else:
            m = np.mean(dz * z, axis=(0, 2), keepdims=True)
            rm = np.mean(rdz * z + dz * rz, axis=(0, 2), keepdims=True)
            dx = (dz - z * m) / s
            rdx = (rdz - rz * m - z * rm) / s - dx * rs / s
        return dx.astype(dtype).reshape(shape), rdx.astype(dtype).reshape(shape)

    def extra_repr(self):
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}"
