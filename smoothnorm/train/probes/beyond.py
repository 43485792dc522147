"""Probes of the follow-up papers (experiments/beyond/): Hessian outliers (Ghorbani et al. 2019),
gradient explosion at initialization (Yang et al. 2019), and the gradient's distribution and the one-step relative
loss behind the largest stable learning rate (Bjorck et al. 2018). Each may run at listed steps (`StepListProbe`);
registered in smoothnorm.train.probes.PROBES."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from smoothnorm.measure.gradient_explosion import fit_log_growth, weight_gradient_norms
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
