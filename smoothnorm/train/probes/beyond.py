"""Probes of the follow-up papers (experiments/beyond/): Hessian outliers (Ghorbani et al. 2019),
gradient explosion at initialization (Yang et al. 2019), the gradient's distribution and the one-step relative
loss behind the largest stable learning rate (Bjorck et al. 2018), and Li et al.'s (2018) filter-normalized loss
surfaces. Each may run at listed steps (`StepListProbe`); registered in smoothnorm.train.probes.PROBES."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from smoothnorm.measure.gradient_explosion import fit_log_growth, weight_gradient_norms
from smoothnorm.measure.loss_surface import grid_curvature, loss_surface_1d, loss_surface_2d, surface_directions
from smoothnorm.measure.spectrum import hessian_spectrum
from smoothnorm.measure.stability import DEFAULT_LRS, gradient_statistics, one_step_relative_loss
from smoothnorm.train.probes.base import StepListProbe


@dataclass
class SpectrumProbe(StepListProbe):
    """Hessian outliers (Ghorbani et al. 2019) on the training batch: SLQ density, top-k eigenvalues, lambda_1 /
    lambda_k and the gradient's share in the top-k eigenspace (smoothnorm.measure.spectrum.hessian_spectrum).

    tol: relative accuracy of the top-k eigenpairs (ARPACK's tol).
    """

    k: int = 10
    num_probes: int = 1
    lanczos_steps: int = 90
    mode: str = "probe"
    tol: float = 1e-6

    def measure(self, trainer, x, y, grad, loss):
        r = hessian_spectrum(trainer.net, x, y, self.k, num_probes=self.num_probes,
                             lanczos_steps=self.lanczos_steps, mode=self.mode, tol=self.tol,
                             seed=trainer.probe_rng)
        return {
            "nodes": r.density.nodes,
            "weights": r.density.weights,
            "top_eigenvalues": r.top_eigenvalues,
            "outlier_ratio": np.float64(r.outlier_ratio),
            "gradient_share": np.float64(r.gradient_share),
            "grad_norm": np.float64(r.grad_norm),
        }

    def meta(self):
        return {"k": self.k, "num_probes": self.num_probes, "lanczos_steps": self.lanczos_steps, "mode": self.mode,
                "tol": self.tol, "steps": [int(s) for s in self.steps]}


@dataclass
class GradientExplosionProbe(StepListProbe):
    """Gradient explosion (Yang et al. 2019) on the training batch: ||dL/dW_l||^2 of every weight layer (weights
    only, float64, input layer first) and the fit of its logarithm against the layer index
    (smoothnorm.measure.gradient_explosion): `rate` = exp(-slope), the growth per layer toward the input.

    skip_first, skip_last: layers left out of the fit at the input and output ends.
    """

    skip_first: int = 1
    skip_last: int = 1

    def setup(self, trainer):
        from smoothnorm.measure.ics import weight_layer_names

        self._layers = weight_layer_names(trainer.net)
        # Fail before training when the skips leave fewer than two layers to fit.
        fit_log_growth(np.ones(len(self._layers)), skip_first=self.skip_first, skip_last=self.skip_last)

    def measure(self, trainer, x, y, grad, loss):
        _, sq_norms = weight_gradient_norms(trainer.net, x, y, grad=grad)
        fit = fit_log_growth(sq_norms, skip_first=self.skip_first, skip_last=self.skip_last)
        return {"sq_norms": sq_norms, "slope": np.float64(fit.slope), "slope_se": np.float64(fit.slope_se),
                "intercept": np.float64(fit.intercept), "rate": np.float64(fit.rate),
                "rate_se": np.float64(fit.rate_se)}

    def meta(self):
        return {"layers": self._layers, "skip_first": self.skip_first, "skip_last": self.skip_last,
                "steps": [int(s) for s in self.steps]}


@dataclass
class GradDistributionProbe(StepListProbe):
    """The training gradient's distribution per weight layer (Bjorck et al. 2018: large and heavy-tailed at
    initialization without BatchNorm): norm and excess kurtosis of each weight's gradient entries, and their
    histogram in standard deviations (smoothnorm.measure.stability.gradient_statistics).

    bins, limit: the histogram's bins over [-limit, limit] standard deviations.
    """

    bins: int = 41
    limit: float = 8.0

    def setup(self, trainer):
        from smoothnorm.measure.ics import weight_layer_names

        self._layers = weight_layer_names(trainer.net)

    def measure(self, trainer, x, y, grad, loss):
        r = gradient_statistics(trainer.net, grad, self._layers, bins=self.bins, limit=self.limit)
        return {"norms": r.norms, "kurtosis": r.kurtosis, "histograms": r.histograms}

    def meta(self):
        from smoothnorm.measure.stability import standardized_edges

        return {"layers": self._layers, "bins": self.bins, "limit": self.limit,
                "edges": standardized_edges(self.bins, self.limit).tolist(), "steps": [int(s) for s in self.steps]}


@dataclass
class OneStepLossProbe(StepListProbe):
    """One-step relative loss L(w - lr g) / L(w) on the training batch for each lr of a grid (Bjorck et al. 2018),
    probe mode (smoothnorm.measure.stability.one_step_relative_loss)."""

    lrs: Sequence[float] = DEFAULT_LRS

    def measure(self, trainer, x, y, grad, loss):
        r = one_step_relative_loss(trainer.net, x, y, self.lrs, grad=grad, loss=loss)
        return {"losses": r.losses, "ratios": r.ratios, "base_loss": np.float64(r.base_loss),
                "grad_norm": np.float64(r.grad_norm)}

    def meta(self):
        return {"lrs": [float(lr) for lr in self.lrs], "steps": [int(s) for s in self.steps]}


@dataclass
class SurfaceProbe(StepListProbe):
    """Li et al.'s (2018) filter-normalized loss surfaces around the current weights w, on the training batch in probe
    mode (smoothnorm.measure.loss_surface): the 1-D curve L(w + a d1) at `points` coordinates a and the 2-D surface
    L(w + a d1 + b d2) on a `grid` x `grid` grid, both over [-span, span]; 0 leaves one out.

    The directions come from `surface_directions(net, seed, norm_params)`, so the recorded seed reproduces them at
    the recorded weights. Rows: losses_1d, accuracies_1d (points,), losses_2d, accuracies_2d (grid, grid) (accuracies
    NaN for non-classifiers), base_loss (the loss at w), curvature (the 2x2 Hessian's eigenvalues at the grid's
    centre, from its own points: `grid_curvature`), num_diverged, direction_norms (||d1||, ||d2||) and
    direction_cosine.
    """

    span: float = 1.0
    points: int = 21
    grid: int = 11
    norm_params: str = "zero"
    seed: int = 0

    def setup(self, trainer):
        for key in ("points", "grid"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or (value != 0 and (value < 3 or value % 2 == 0)):
                raise ValueError(f"{key}: expected 0 or an odd integer >= 3 (the centre is w itself), got {value!r}")
        if not (self.points or self.grid):
            raise ValueError("points, grid: expected at least one of them above 0 (a 1-D curve or a 2-D surface)")
        if not (isinstance(self.span, (int, float)) and np.isfinite(self.span) and self.span > 0):
            raise ValueError(f"span: expected a positive finite number, got {self.span!r}")
        self._alphas = np.linspace(-self.span, self.span, self.points) if self.points else np.zeros(0)
        self._coords = np.linspace(-self.span, self.span, self.grid) if self.grid else np.zeros(0)
        # Exact zeros in the middle: the centre point is w itself, bit for bit.
        for c in (self._alphas, self._coords):
            if c.size:
                c[c.size // 2] = 0.0

    def measure(self, trainer, x, y, grad, loss):
        net = trainer.net
        d1, d2 = surface_directions(net, self.seed, norm_params=self.norm_params)
        row = {}
        base = np.nan
        diverged = 0
        if self.points:
            c = loss_surface_1d(net, x, y, d1, self._alphas)
            row["losses_1d"] = c.losses
            row["accuracies_1d"] = c.accuracies if c.accuracies is not None else np.full(c.losses.shape, np.nan)
            base, diverged = c.losses[c.losses.size // 2], diverged + c.num_diverged
        if self.grid:
            s = loss_surface_2d(net, x, y, d1, d2, self._coords, self._coords)
            row["losses_2d"] = s.losses
            row["accuracies_2d"] = s.accuracies if s.accuracies is not None else np.full(s.losses.shape, np.nan)
            row["curvature"] = grid_curvature(s.losses, self._coords, self._coords)
            base, diverged = s.losses[self.grid // 2, self.grid // 2], diverged + s.num_diverged
        a, b = d1.astype(np.float64), d2.astype(np.float64)
        na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
        row.update(base_loss=np.float64(base), num_diverged=np.int64(diverged),
                   direction_norms=np.array([na, nb]),
                   direction_cosine=np.float64(a @ b / (na * nb) if na and nb else np.nan))
        return row

    def meta(self):
        return {"alphas": self._alphas.tolist(), "coords": self._coords.tolist(), "span": float(self.span),
                "points": self.points, "grid": self.grid, "norm_params": self.norm_params, "seed": self.seed,
                "mode": "probe", "steps": [int(s) for s in self.steps]}
