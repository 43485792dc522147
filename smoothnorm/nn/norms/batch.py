"""Normalization layers: BatchNorm and its family here, the registry behind `norm=` in smoothnorm.nn.models.

BatchNorm (with batch or population statistics) and the paper's noisy BatchNorm live here; the Lp batch norms in
smoothnorm.nn.norms.lp, the per-sample norms (group, layer, instance) in smoothnorm.nn.norms.sample, the
shared bases in smoothnorm.nn.norms.base. Every layer is importable from this module.
"""

from __future__ import annotations

import math

import numpy as np

from smoothnorm._validate import choice
from smoothnorm.kernels.norm.batch import (
    batch_norm_eval_backward,
    batch_norm_eval_forward,
    batch_norm_train_backward,
    batch_norm_train_forward,
    batch_norm_update_running,
)
from smoothnorm.kernels.norm.batch_relu import (
    batch_norm_relu_train_backward,
    batch_norm_relu_train_forward,
    noisy_batch_norm_relu_backward,
    noisy_batch_norm_relu_forward,
)
from smoothnorm.kernels.norm.batch_rop import batch_norm_r_backward, batch_norm_r_forward
from smoothnorm.kernels.norm.noise import draw_noise
from smoothnorm.kernels.norm.noisy import noisy_batch_norm_backward, noisy_batch_norm_forward
from smoothnorm.nn.norms.base import _RunningStatsNorm
from smoothnorm.nn.norms.rop import ElementwiseAffine, FixedStandardization, Standardization, as_ncs

__all__ = [
    "BN_STATISTICS",
    "NOISE_PLACEMENTS",
    "BatchNorm",
    "refresh_population_statistics",
    "NoisyBatchNorm",
]


BN_STATISTICS = ("batch", "population")


class BatchNorm(_RunningStatsNorm):
    """BatchNorm1d/2d with PyTorch's conventions (eps 1e-5, momentum 0.1, unbiased running variance).

    statistics: "batch" (the usual BatchNorm) or "population" (Ghorbani et al. 2019): in train and probe modes the
    layer normalizes with per-channel statistics set from outside by `set_population_statistics` (or
    `refresh_population_statistics(net, x_subset)`), held constant: no gradient flows through them, so it behaves
    like eval-mode BatchNorm with those statistics. Train mode updates the running statistics from them; eval mode
    uses the running statistics, as always.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1, affine: bool = True,
                 statistics: str = "batch") -> None:
        super().__init__(num_features, eps, momentum, affine)
        self.statistics = choice("statistics", statistics, BN_STATISTICS)
        self.population_mean: np.ndarray | None = None
        self.population_var: np.ndarray | None = None
        self.population_count = 0
        self._collecting = False

    def set_population_statistics(self, mean, var, count: int = 0) -> None:
        """Set the constant statistics used in train and probe modes (statistics="population").

        mean, var: (C,) per-channel mean and biased variance (var >= 0, finite); count: values per channel they were
        computed from (N * H * W; used for the unbiased running-variance update, 0 if unknown: then biased).
        """
        if self.statistics != "population":
            raise ValueError(f"{self.name}: set_population_statistics needs statistics='population', "
                             f"got {self.statistics!r}")
        mean = np.array(mean, dtype=np.float64).reshape(-1)
        var = np.array(var, dtype=np.float64).reshape(-1)
        for key, a in (("mean", mean), ("var", var)):
            if a.shape != (self.num_features,) or not np.isfinite(a).all():
                raise ValueError(f"{key}: expected {self.num_features} finite values, got shape {a.shape}")
        if (var < 0).any():
            raise ValueError("var: expected non-negative variances")
        self.population_mean, self.population_var, self.population_count = mean, var, int(count)

    def _population(self, dtype) -> tuple[np.ndarray, np.ndarray]:
        if self.population_mean is None:
            raise ValueError(
                f"{self.name}: statistics='population' but no population statistics are set; call "
                "set_population_statistics(mean, var) or refresh_population_statistics(net, x) first"
            )
        return self.population_mean.astype(dtype), self.population_var.astype(dtype)

    def forward(self, x, mode):
        gamma, beta = self.params.get("weight"), self.params.get("bias")
        if mode == "eval":
            self._cache = ("eval", x)
            return batch_norm_eval_forward(x, self.running_mean, self.running_var, gamma, beta, self.eps,
                                           out=self._reused("y", x))
        if self.statistics == "population":
            return self._population_forward(x, mode, gamma, beta)
        y, mean, invstd, var = batch_norm_train_forward(x, gamma, beta, self.eps, out=self._reused("y", x))
        self._batch_statistics_seen(x, mode, mean, invstd, var)
        return y

    def _batch_statistics_seen(self, x, mode, mean, invstd, var) -> None:
        """After a forward with batch statistics: the running update (train mode) and what backward needs."""
        if mode == "train":
            count = x.size // x.shape[1]
            batch_norm_update_running(self.running_mean, self.running_var, mean, var, count, self.momentum)
            self.num_batches_tracked += 1
        self._cache = ("batch", x, mean, invstd)

    def fuses_relu(self, mode: str) -> bool:
        """Whether forward_relu serves this mode: train and probe modes with batch statistics."""
        return mode != "eval" and self.statistics == "batch"

    def forward_relu(self, x, mode, relu):
        """This layer (train or probe mode, batch statistics) then `relu`, the ReLU layer after it, in one kernel:
        the same output, statistics, running-statistics update and caches as forward() then relu.forward(), whose
        output buffer it writes (this layer's own output is never formed). Network.forward calls it."""
        gamma, beta = self.params.get("weight"), self.params.get("bias")
        y, mean, invstd, var = batch_norm_relu_train_forward(x, gamma, beta, self.eps, out=relu._reused("y", x))
        self._batch_statistics_seen(x, mode, mean, invstd, var)
        relu._y = y
        return y

    def backward_relu(self, dy, relu):
        """backward of forward_relu: relu.backward then this layer's backward in one kernel (the same dx and
        parameter gradients). dy: the gradient of the ReLU's output."""
        gamma = self.params.get("weight")
        dgamma, dbeta = self.grads.get("weight"), self.grads.get("bias")
        _, x, mean, invstd = self._cache
        return batch_norm_relu_train_backward(dy, relu._y, x, mean, invstd, gamma, dgamma, dbeta,
                                              out=self._reused("dx", x))

    def _population_forward(self, x, mode, gamma, beta):
        if self._collecting:
            x64 = as_ncs(np.asarray(x, dtype=np.float64))
            self.set_population_statistics(x64.mean(axis=(0, 2)), x64.var(axis=(0, 2)), x.size // x.shape[1])
        mean, var = self._population(x.dtype)
        if mode == "train":
            count = self.population_count if self.population_count > 1 else 0
            if count:
                batch_norm_update_running(self.running_mean, self.running_var, mean, var, count, self.momentum)
            else:  # unknown subset size: biased variance into the running average
                m = self.momentum
                self.running_mean[...] = (1 - m) * self.running_mean + m * mean
                self.running_var[...] = (1 - m) * self.running_var + m * var
            self.num_batches_tracked += 1
        self._cache = ("population", x)
        return batch_norm_eval_forward(x, mean, var, gamma, beta, self.eps, out=self._reused("y", x))

    def backward(self, dy, need_dx=True):
        gamma = self.params.get("weight")
        dgamma, dbeta = self.grads.get("weight"), self.grads.get("bias")
        if self._cache[0] in ("eval", "population"):
            x = self._cache[1]
            mean, var = ((self.running_mean, self.running_var) if self._cache[0] == "eval"
                         else self._population(x.dtype))
            return batch_norm_eval_backward(dy, x, mean, var, gamma, dgamma, dbeta, self.eps,
                                            out=self._reused("dx", x))
        _, x, mean, invstd = self._cache
        return batch_norm_train_backward(dy, x, mean, invstd, gamma, dgamma, dbeta, out=self._reused("dx", x))

    # -- R-pass: batch statistics in float64 (Hessian products) take the fused kernels of kernels/norm/batch_rop.py;
    # population and eval modes, float32 and affine=False the general path of smoothnorm.nn.norms.rop.
    def _fused_r(self, rparams) -> bool:
        return (self._cache is not None and self._cache[0] == "batch" and self.affine
                and self._cache[1].dtype == np.float64 and rparams.get("weight") is not None)

    def forward_r(self, rx, rparams):
        if not self._fused_r(rparams):
            self._r_fused = None
            return super().forward_r(rx, rparams)
        _, x, mean, invstd = self._cache
        x3 = as_ncs(x)
        rx3 = np.zeros(x3.shape) if rx is None else as_ncs(rx)
        ry, rx_mean, rs = batch_norm_r_forward(x3, mean, invstd, self.params["weight"], rparams["weight"],
                                               rparams["bias"], rx3, out=self._buffer("ry", x3.shape, np.float64))
        self._r_fused = (x3, mean, invstd, rparams["weight"], rx3, rx_mean, rs)
        return ry.reshape(x.shape)

    def backward_r(self, dy, rdy, rgrads, need_dx=True):
        if getattr(self, "_r_fused", None) is None:
            return super().backward_r(dy, rdy, rgrads, need_dx)
        x3, mean, invstd, rgamma, rx3, rx_mean, rs = self._r_fused
        out = (self._buffer("dx_r", x3.shape, np.float64), self._buffer("rdx_r", x3.shape, np.float64))
        dx, rdx = batch_norm_r_backward(x3, mean, invstd, self.params["weight"], rgamma, rx3, rx_mean, rs,
                                        as_ncs(dy), as_ncs(rdy), rgrads["weight"], rgrads["bias"], need_dx, out=out)
        return (None, None) if dx is None else (dx.reshape(dy.shape), rdx.reshape(dy.shape))

    def _standardization(self):
        if self._cache[0] == "population":
            x = self._cache[1]
            self._remember_input_shape(x)
            return FixedStandardization(as_ncs(x), self.population_mean, 1.0 / np.sqrt(self.population_var + self.eps))
        return _variance_standardization(self)

    def extra_repr(self):
        extra = ", statistics='population'" if self.statistics == "population" else ""
        return super().extra_repr() + extra


def refresh_population_statistics(net, x) -> int:
    """Set every population-statistics BatchNorm of `net` to the statistics of its input on the subset `x`.

    One probe-mode forward pass over the whole subset, layer after layer: each such layer's statistics are those
    of its input when the layers before it already normalize with their new population statistics (so the pass
    computes exactly what batch statistics would on `x`). Returns the number of layers set (0: nothing to do).
    """
    layers = [layer for layer in net.layers if isinstance(layer, BatchNorm) and layer.statistics == "population"]
    if not layers:
        return 0
    for layer in layers:
        layer._collecting = True
    try:
        net.forward(x, "probe")
    finally:
        for layer in layers:
            layer._collecting = False
    return len(layers)


NOISE_PLACEMENTS = ("after_affine", "before_affine")


class NoisyBatchNorm(_RunningStatsNorm):
    """BatchNorm with the paper's per-step noise (Algorithm 1, App. A.2.1) in train and probe modes.

    Per unit j (a channel), `resample_noise(rng)` draws mu_j ~ U(-n_mu, n_mu), sigma_j ~ U(1, n_sigma) and a seed;
    the per-element noise m ~ U(mu_j - r_mu, mu_j + r_mu), s ~ N(sigma_j, r_sigma) (r_sigma a standard deviation)
    for an input shape is generated from that seed on the first forward that sees the shape and cached until the
    next resample, so every probe at one step sees one fixed function. Output s * (gamma xhat + beta) + m
    (placement "after_affine") or gamma * (s xhat + m) + beta ("before_affine"); `eval` mode is plain BatchNorm.
    Running statistics and buffers are BatchNorm's (the noise does not enter them).
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float = 0.1,
        affine: bool = True,
        *,
        n_mu: float = 0.5,
        n_sigma: float = 1.25,
        r_mu: float = 0.1,
        r_sigma: float = 0.1,
        placement: str = "after_affine",
    ) -> None:
        super().__init__(num_features, eps, momentum, affine)
        for name, value, low in (("n_mu", n_mu, 0.0), ("n_sigma", n_sigma, 1.0), ("r_mu", r_mu, 0.0),
                                 ("r_sigma", r_sigma, 0.0)):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= low):
                raise ValueError(f"{name}: expected a finite number >= {low}, got {value!r}")
        self.n_mu, self.n_sigma, self.r_mu, self.r_sigma = float(n_mu), float(n_sigma), float(r_mu), float(r_sigma)
        self.placement = choice("placement", placement, NOISE_PLACEMENTS)
        self.dtype = np.dtype(np.float64)
        self.noise_mu: np.ndarray | None = None
        self.noise_sigma: np.ndarray | None = None
        self.noise_seed: int | None = None
        self._noise: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}
        self._drawn: set[tuple] = set()  # keys of _noise drawn for the current seed

    def allocate(self, dtype):
        super().allocate(dtype)
        self.dtype = np.dtype(dtype)
        self._noise, self._drawn = {}, set()

    def resample_noise(self, rng: np.random.Generator) -> None:
        """Draw this step's per-unit noise parameters (mu_j, sigma_j) and the seed of the per-element noise."""
        c = self.num_features
        self.noise_mu = rng.uniform(-self.n_mu, self.n_mu, size=c)
        self.noise_sigma = rng.uniform(1.0, self.n_sigma, size=c)
        self.noise_seed = int(rng.integers(0, 2**63 - 1))
        self._drawn = set()

    def noise(self, shape: tuple[int, ...], dtype=None) -> tuple[np.ndarray, np.ndarray]:
        """The current per-element noise (scale s, shift m) for an input of `shape`, (N, C) or (N, C, H, W).

        Generated from (seed, shape) on first use and cached until the next resample_noise; treat as read-only.
        dtype: float32 or float64, default the network's.
        """
        if self.noise_seed is None:
            raise RuntimeError(f"{self.name or 'NoisyBatchNorm'}: no noise drawn yet; call resample_noise(rng)")
        shape = tuple(int(v) for v in shape)
        dt = self.dtype if dtype is None else np.dtype(dtype)
        key = (shape, dt)
        arrays = self._noise.get(key)
        if arrays is None or key not in self._drawn:
            if len(shape) not in (2, 4) or shape[1] != self.num_features:
                raise ValueError(f"shape: expected (N, {self.num_features}) or (N, {self.num_features}, H, W), "
                                 f"got {shape}")
            if arrays is None:  # kept between steps: fresh memory for every step's noise costs page faults
                arrays = self._noise[key] = (np.empty(shape, dt), np.empty(shape, dt))
            draw_noise(self.noise_seed, self.noise_mu, self.noise_sigma, self.r_mu, self.r_sigma, *arrays)
            self._drawn.add(key)
        return arrays

    def forward(self, x, mode):
        gamma, beta = self.params.get("weight"), self.params.get("bias")
        if mode == "eval":
            self._cache = ("eval", x)
            return batch_norm_eval_forward(x, self.running_mean, self.running_var, gamma, beta, self.eps)
        scale, shift = self.noise(x.shape, x.dtype)
        before = self.placement == "before_affine"
        y, mean, invstd, var = noisy_batch_norm_forward(x, scale, shift, gamma, beta, self.eps, before,
                                                        out=self._reused("y", x))
        self._noisy_statistics_seen(x, mode, mean, invstd, var, scale, shift)
        return y

    def _noisy_statistics_seen(self, x, mode, mean, invstd, var, scale, shift) -> None:
        """After a noisy forward: the running update (train mode; BatchNorm's, noise-free) and what backward needs."""
        if mode == "train":
            count = x.size // x.shape[1]
            batch_norm_update_running(self.running_mean, self.running_var, mean, var, count, self.momentum)
            self.num_batches_tracked += 1
        self._cache = ("noisy", x, mean, invstd, scale, shift)

    def fuses_relu(self, mode: str) -> bool:
        """Whether forward_relu serves this mode: train and probe modes (the noisy ones)."""
        return mode != "eval"

    def forward_relu(self, x, mode, relu):
        """This layer (train or probe mode) then `relu`, the ReLU layer after it, in one kernel: the same output,
        statistics, running update and caches as forward() then relu.forward() (BatchNorm.forward_relu's contract)."""
        gamma, beta = self.params.get("weight"), self.params.get("bias")
        scale, shift = self.noise(x.shape, x.dtype)
        y, mean, invstd, var = noisy_batch_norm_relu_forward(x, scale, shift, gamma, beta, self.eps,
                                                             self.placement == "before_affine",
                                                             out=relu._reused("y", x))
        self._noisy_statistics_seen(x, mode, mean, invstd, var, scale, shift)
        relu._y = y
        return y

    def backward_relu(self, dy, relu):
        """backward of forward_relu: relu.backward then this layer's backward in one kernel."""
        gamma = self.params.get("weight")
        dgamma, dbeta = self.grads.get("weight"), self.grads.get("bias")
        _, x, mean, invstd, scale, shift = self._cache
        return noisy_batch_norm_relu_backward(dy, relu._y, x, scale, shift, mean, invstd, gamma, dgamma, dbeta,
                                              self.placement == "before_affine", out=self._reused("dx", x))

    def backward(self, dy, need_dx=True):
        gamma = self.params.get("weight")
        dgamma, dbeta = self.grads.get("weight"), self.grads.get("bias")
        if self._cache[0] == "eval":
            x = self._cache[1]
            return batch_norm_eval_backward(
                dy, x, self.running_mean, self.running_var, gamma, dgamma, dbeta, self.eps, out=self._reused("dx", x)
            )
        _, x, mean, invstd, scale, shift = self._cache
        return noisy_batch_norm_backward(
            dy, x, scale, shift, mean, invstd, gamma, dgamma, dbeta, self.placement == "before_affine",
            out=self._reused("dx", x)
        )

    def _standardization(self):
        return _variance_standardization(self)

    def _elementwise(self):
        gamma, beta = self.params.get("weight"), self.params.get("bias")
        if self._cache[0] == "eval":
            return ElementwiseAffine(gamma, beta)
        scale, shift = (as_ncs(a) for a in self._cache[4:6])
        if self.placement == "before_affine":
            return ElementwiseAffine(gamma, beta, s_n=scale, m_b=shift)
        return ElementwiseAffine(gamma, beta, s_n=scale, s_a=scale, m_a=shift)

    def extra_repr(self):
        return (
            f"{super().extra_repr()}, n_mu={self.n_mu}, n_sigma={self.n_sigma}, r_mu={self.r_mu}, "
            f"r_sigma={self.r_sigma}, placement={self.placement!r}"
        )

def _variance_standardization(layer):
    """BatchNorm's (and noisy BatchNorm's) standardization: batch statistics, or running ones in eval mode."""
    x = layer._cache[1]
    layer._remember_input_shape(x)
    if layer._cache[0] == "eval":
        inv = 1.0 / np.sqrt(layer.running_var.astype(np.float64) + layer.eps)
        return FixedStandardization(as_ncs(x), layer.running_mean, inv)
    return Standardization(as_ncs(x), None, "var", layer.eps)
