"""Conditioning of the loss Hessian of small models: top and bottom eigenvalue and their ratio.

Input normalization's textbook effect is on conditioning: the Hessian of least squares on raw, badly scaled
features has eigenvalues spread over the square of the feature-scale range, so gradient descent needs a learning
rate below 2 / lambda_max and then crawls along the lambda_min directions. The products come from
smoothnorm.measure.hessian (this module only asks for extreme eigenvalues).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy.sparse.linalg import ArpackError, ArpackNoConvergence

from smoothnorm.measure._common import one_blas_thread
from smoothnorm.measure.hessian import dense_hessian, hessian_operator
from smoothnorm.measure.linalg import top_eigenvalues

__all__ = ["DENSE_MAX_PARAMS", "HessianConditioning", "hessian_condition_number"]

# Up to this many parameters the Hessian is built column by column (n products) and both ends are exact;
# above it, Lanczos finds each end (tens to hundreds of products, slower for the bottom of a wide spectrum).
DENSE_MAX_PARAMS = 400


@dataclass(frozen=True)
class HessianConditioning:
    """top, bottom: the algebraically largest and smallest Hessian eigenvalues; condition_number: top / bottom when
    bottom > 0 (the Hessian is positive definite), else inf (NaN if either is not finite); method: "dense" or
    "lanczos"; num_params: the operator's size."""

    top: float
    bottom: float
    condition_number: float
    method: str
    num_params: int

    def as_dict(self) -> dict:
        return asdict(self)


@one_blas_thread
def hessian_condition_number(
    net,
    x,
    y,
    *,
    params: Sequence[str] | None = None,
    max_params: int = 20_000,
    tol: float = 1e-8,
    seed: int | np.random.Generator = 0,
    mode: str = "probe",
) -> HessianConditioning:
    """Top and bottom eigenvalue of the loss Hessian on batch (x, y) (probe mode, float64 copy) and their ratio.

    params: None (all) or layer / parameter names, as in hessian_top_eigenvalues. max_params: refuse larger
    operators (the bottom of the spectrum needs many products; a ValueError says so). tol: Lanczos' relative
    accuracy. seed: Lanczos' starting vectors. mode: "probe" (batch statistics) or "eval" (running statistics).
    """
    op = hessian_operator(net, x, y, params=params, mode=mode)
    n = op.shape[0]
    if isinstance(max_params, bool) or not isinstance(max_params, (int, np.integer)) or max_params < 1:
        raise ValueError(f"max_params: expected a positive integer, got {max_params!r}")
    if n > max_params:
        raise ValueError(f"max_params: the Hessian has {n} parameters, more than max_params={max_params}; "
                         f"the condition number is for small models (or pass params= to pick a subset)")
    # A point where the loss overflows (a diverging run) has no finite Hessian: its eigenvalues are NaN.
    if n <= DENSE_MAX_PARAMS:
        method = "dense"
        with np.errstate(all="ignore"):
            hessian = dense_hessian(net, x, y, params=params, mode=mode)
        if not np.isfinite(hessian).all():
            return HessianConditioning(math.nan, math.nan, math.nan, method, n)
        values = np.linalg.eigvalsh(hessian)
        top, bottom = float(values[-1]), float(values[0])
    else:
        method = "lanczos"
        rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        try:
            with np.errstate(all="ignore"):
                top = float(top_eigenvalues(op, 1, tol=tol, seed=rng)[0])
                bottom = -float(top_eigenvalues(-op, 1, tol=tol, seed=rng)[0])
        except (ArpackNoConvergence, ArpackError, np.linalg.LinAlgError):
            return HessianConditioning(math.nan, math.nan, math.nan, method, n)
    if not (math.isfinite(top) and math.isfinite(bottom)):
        condition = math.nan
    else:
        condition = top / bottom if bottom > 0 else math.inf
    return HessianConditioning(top, bottom, condition, method, n)
