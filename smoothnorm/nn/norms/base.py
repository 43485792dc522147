"""The bases shared by every normalization layer: per-channel affine parameters with the R-pass, running buffers.

Concrete layers: smoothnorm.nn.norms.batch (BatchNorm, noisy BatchNorm), lp_norm_layers (Lp batch norms) and
sample_norm_layers (GroupNorm, LayerNorm, InstanceNorm).
"""

from __future__ import annotations

import numpy as np

from smoothnorm.nn.layer import Layer
from smoothnorm.nn.norms.rop import ElementwiseAffine, as_ncs


class _PerChannelAffine(Layer):
    """Shared by every normalization here: per-channel affine `weight` (ones) and `bias` (zeros) when `affine`,
    inputs (N, C) or (N, C, H, W) with C = num_features. Subclasses set num_features and affine."""

    num_features: int
    affine: bool

    def param_shapes(self):
        return {"weight": (self.num_features,), "bias": (self.num_features,)} if self.affine else {}

    def init_params(self, rng, init):
        if self.affine:
            self.params["weight"][...] = 1
            self.params["bias"][...] = 0

    def output_shape(self, input_shape):
        if len(input_shape) not in (1, 3) or input_shape[0] != self.num_features:
            raise ValueError(
                f"{self.name}: expected input ({self.num_features},) or ({self.num_features}, H, W), "
                f"got {input_shape}"
            )
        return input_shape

    # -- R-pass (exact Hessian-vector products, smoothnorm.measure.hessian; smoothnorm.nn.norms.rop has the math) --
    def _standardization(self):
        """The standardization of the last forward pass (a smoothnorm.nn.norms.rop Standardization or
        FixedStandardization)."""
        raise NotImplementedError

    def _elementwise(self) -> ElementwiseAffine:
        """The per-channel map from the standardized input to the output (affine, and noise where there is)."""
        return ElementwiseAffine(self.params.get("weight"), self.params.get("bias"))

    def forward_r(self, rx, rparams):
        """R-pass: the output's directional derivative for input direction rx (None: zero) and parameter
        directions rparams, at the last forward pass's point and mode (noise held fixed)."""
        std, affine = self._standardization_of_last_forward(), self._elementwise()
        rz = std.forward_r(np.zeros(std.shape) if rx is None else as_ncs(rx))
        ry = affine.forward_r(std.z_ncs(), rz, rparams.get("weight"), rparams.get("bias"))
        self._r_state = (std, affine, rparams)
        shape = (ry.shape[0], self.num_features, *self._r_spatial)
        return ry.reshape(shape)

    def backward_r(self, dy, rdy, rgrads, need_dx=True):
        """R-pass backward: (dx, rdx); writes the directional derivatives of d gamma and d beta into rgrads."""
        std, affine, rparams = self._r_state
        dz, rdz = affine.backward_r(as_ncs(dy), as_ncs(rdy), rparams.get("weight"), rgrads.get("weight"),
                                    rgrads.get("bias"))
        if not need_dx:
            return None, None
        dx, rdx = std.backward_r(dz, rdz)
        return dx.reshape(dy.shape), rdx.reshape(dy.shape)

    def _standardization_of_last_forward(self):
        """`_standardization()`, built once per forward pass: a Hessian operator runs many R-passes at one base point,
        and rebuilding it (mean, scale, z and grad s over the whole input, in float64) each time made an exact
        Hessian-vector product on VGG-11-BN 1.34x slower. Every forward stores a new `_cache` tuple, which
        invalidates it."""
        cache = getattr(self, "_cache", None)
        memo = getattr(self, "_standardization_memo", None)
        if cache is None or memo is None or memo[0] is not cache:
            memo = self._standardization_memo = (cache, self._standardization())
        return memo[1]

    def _remember_input_shape(self, x) -> None:
        self._r_spatial = tuple(np.shape(x)[2:])


class _RunningStatsNorm(_PerChannelAffine):
    """Shared parts of normalizations over (N, H, W) per channel: affine parameters and running buffers
    (`running_mean` from zeros, the spread statistic named by `_running_spread` from ones, `num_batches_tracked`)."""

    # The running statistic beside the mean: the variance (BatchNorm), or the p-norm average (Lp norms).
    _running_spread = "running_var"

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1, affine: bool = True) -> None:
        super().__init__()
        if num_features < 1:
            raise ValueError(f"num_features: expected a positive integer, got {num_features}")
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum: expected a value in [0, 1], got {momentum}")
        if not eps > 0:
            raise ValueError(f"eps: expected a positive value, got {eps}")
        self.num_features, self.eps, self.momentum, self.affine = int(num_features), float(eps), momentum, affine
        self.running_mean: np.ndarray | None = None
        setattr(self, self._running_spread, None)  # allocated with the network's dtype
        self.num_batches_tracked = np.zeros((), dtype=np.int64)
        self._cache: tuple | None = None

    def allocate(self, dtype):
        self.running_mean = np.zeros(self.num_features, dtype=dtype)
        setattr(self, self._running_spread, np.ones(self.num_features, dtype=dtype))

    def buffers(self):
        return {
            "running_mean": self.running_mean,
            self._running_spread: getattr(self, self._running_spread),
            "num_batches_tracked": self.num_batches_tracked,
        }

    def extra_repr(self):
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}"
