"""The paper's probes: loss landscape, internal covariate shift, activation distributions, Hessian, saturation,
gradient norms and BatchNorm's batch-versus-running statistics gap.

Each turns (trainer, x, y) at one step into a dict of fixed-shape arrays (one row of its record); the trainer
decides when they run; the measurements are smoothnorm.measure's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from smoothnorm.measure.conditioning import hessian_condition_number
from smoothnorm.measure.distributions import ActivationSampler
from smoothnorm.measure.hessian import hessian_top_eigenvalues
from smoothnorm.measure.ics import internal_covariate_shift
from smoothnorm.measure.landscape import (
    probe_direction,
    probe_gradient_direction,
    probe_update_direction,
    random_direction,
    step_grid,
)
from smoothnorm.train.probes.base import Probe, layers_without_r_pass, warn_no_r_pass


# ----------------------------------------------------------------------------------------------------------------
# Probes: each turns (trainer, x, y) at one step into a dict of fixed-shape arrays (one row of its record).
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class LandscapeProbe(Probe):
    """Loss and gradient change along the descent direction -g (Figs 4, 10, 11): `probe_gradient_direction`.

    etas: explicit step sizes, or None for `step_grid(lr, preset, spacing, num)`.
    direction: "gradient" (the paper), "random" (a Gaussian direction scaled to ||g||, drawn fresh each step) or
    "update" (the optimizer's own next step, `probe_update_direction`: eta = lr is where it goes).
    """

    preset: str = "vgg"
    spacing: str = "inferred"
    num: int = 8
    etas: Sequence[float] | None = None
    beta_normalization: str = "distance"
    direction: str = "gradient"
    _etas: np.ndarray = field(default=None, init=False, repr=False)

    def setup(self, trainer):
        lr = trainer.optimizer.lr
        if self.etas is not None:
            self._etas = np.asarray(self.etas, dtype=np.float64)
        else:
            self._etas = step_grid(lr, self.preset, self.spacing, self.num)

    def measure(self, trainer, x, y, grad, loss):
        net = trainer.net
        if self.direction == "gradient":
            r = probe_gradient_direction(net, x, y, self._etas, beta_normalization=self.beta_normalization,
                                         grad=grad, loss=loss)
        elif self.direction == "update":
            r = probe_update_direction(net, x, y, self._etas, trainer.optimizer,
                                       beta_normalization=self.beta_normalization, grad=grad, loss=loss)
        else:
            d = random_direction(net, trainer.probe_rng, norm=float(np.linalg.norm(grad.astype(np.float64))))
            r = probe_direction(net, x, y, self._etas, d, beta_normalization=self.beta_normalization,
                                grad=grad, loss=loss)
        return {
            "losses": r.losses,
            "grad_distances": r.grad_distances,
            "betas": r.betas,
            "effective_beta": np.float64(r.effective_beta),
            "base_loss": np.float64(r.base_loss),
            "grad_norm": np.float64(r.grad_norm),
            "num_diverged": np.int64(r.num_diverged),
        }

    def meta(self):
        return {"etas": [float(e) for e in self._etas], "beta_normalization": self.beta_normalization,
                "direction": self.direction}


@dataclass
class ICSProbe(Probe):
    """Internal covariate shift of Definition 2.1 for chosen layers (Fig 3): `internal_covariate_shift`."""

    layers: Sequence[str] | None = None

    def setup(self, trainer):
        from smoothnorm.measure.ics import weight_layer_names

        self._layers = list(self.layers) if self.layers else weight_layer_names(trainer.net)

    def measure(self, trainer, x, y, grad, loss):
        result = internal_covariate_shift(trainer.net, x, y, trainer.optimizer, self._layers, grad=grad)
        return {
            "l2": np.array([result[n][0] for n in self._layers]),
            "cosine": np.array([result[n][1] for n in self._layers]),
        }

    def meta(self):
        return {"layers": self._layers}


@dataclass
class DistributionProbe(Probe):
    """Distributions of a fixed random sample of units in chosen layers (Figs 1c, 2, 6, 8, 9)."""

    layers: Sequence[str] = ()
    units: int = 4
    bins: int = 40
    seed: int = 0

    def setup(self, trainer):
        self._sampler = ActivationSampler(
            trainer.net, list(self.layers), self.units, np.random.default_rng([self.seed, 7]), bins=self.bins
        )

    def measure(self, trainer, x, y, grad, loss):
        record = self._sampler.record(x)
        row = {}
        for layer, arrays in record.items():
            for key, value in arrays.items():
                row[f"{layer}/{key}"] = np.asarray(value)
        return row

    def meta(self):
        return {"layers": list(self.layers), "units": {k: v.tolist() for k, v in self._sampler.units.items()},
                "quantile_levels": self._sampler.quantile_levels.tolist()}


@dataclass
class HessianProbe(Probe):
    """Top-k Hessian eigenvalues on the training batch (Lanczos over exact Hessian-vector products).

    mode: "probe" (batch statistics, as every other probe) or "eval" (running statistics, PyHessian's convention).
    condition: also the bottom eigenvalue and the condition number top / bottom (`hessian_condition_number`: small
    models only). max_params: record NaN instead of measuring networks with more parameters (0: no limit), so one
    spec can mix small and large models. tol: relative accuracy of the top eigenvalues (ARPACK's tol; 1e-3 needs
    about 40% fewer products than 1e-6, enough to compare a sharpness with 2 / lr).

    On the full training set as the batch (batch_size = 0, full-batch gradient descent) the top eigenvalue is the
    sharpness of Cohen et al. (2021), with BatchNorm's batch statistics as in training (mode "probe").
    """

    k: int = 1
    mode: str = "probe"
    condition: bool = False
    max_params: int = 0
    tol: float = 1e-6

    def measure(self, trainer, x, y, grad, loss):
        missing = layers_without_r_pass(trainer.net)
        if missing:
            warn_no_r_pass(self, missing)
        if missing or (self.max_params and trainer.net.num_params > self.max_params):
            row = {"top_eigenvalues": np.full(self.k, np.nan)}
            if self.condition:
                row.update(bottom_eigenvalue=np.float64(np.nan), condition_number=np.float64(np.nan))
            return row
        if not self.condition:
            return {"top_eigenvalues": np.asarray(hessian_top_eigenvalues(trainer.net, x, y, k=self.k,
                                                                          mode=self.mode, tol=self.tol))}
        c = hessian_condition_number(trainer.net, x, y, mode=self.mode)
        top = [c.top] if self.k == 1 else hessian_top_eigenvalues(trainer.net, x, y, k=self.k, mode=self.mode,
                                                                  tol=self.tol)
        return {"top_eigenvalues": np.asarray(top, dtype=np.float64), "bottom_eigenvalue": np.float64(c.bottom),
                "condition_number": np.float64(c.condition_number)}

    def setup(self, trainer):
        self._no_r_pass = layers_without_r_pass(trainer.net)

    def meta(self):
        meta = {"k": self.k, "mode": self.mode}
        if getattr(self, "_no_r_pass", None):
            meta["no_r_pass"] = self._no_r_pass  # why the record is NaN
        if self.condition or self.max_params:
            meta.update(condition=self.condition, max_params=self.max_params)
        if self.tol != 1e-6:
            meta["tol"] = self.tol
        return meta


def _activation_inputs(net) -> list[tuple[str, str]]:
    """(activation layer name, name of the layer whose output it takes) for every activation layer."""
    from smoothnorm.nn.activations import Identity, Sigmoid, Tanh
    from smoothnorm.nn.layers import ReLU

    pairs = []
    for i, layer in enumerate(net.layers):
        if isinstance(layer, (ReLU, Sigmoid, Tanh)) and not isinstance(layer, Identity) and i > 0:
            pairs.append((layer.name, net.layers[i - 1].name))
    return pairs


@dataclass
class SaturationProbe(Probe):
    """Fraction of each activation layer's inputs z with |z| > threshold (a sigmoid's flat tails: sigmoid'(4) is
    0.018, 7% of its slope at 0), on the training batch in probe mode; `fractions` per layer, `mean` over all units."""

    threshold: float = 4.0

    def setup(self, trainer):
        self._pairs = _activation_inputs(trainer.net)

    def measure(self, trainer, x, y, grad, loss):
        net = trainer.net
        net.forward(x, "probe", capture=[source for _, source in self._pairs])
        counts = [(float(np.count_nonzero(np.abs(net.captured[src]) > self.threshold)), net.captured[src].size)
                  for _, src in self._pairs]
        fractions = np.array([c / n for c, n in counts], dtype=np.float64)
        total = sum(n for _, n in counts)
        return {"fractions": fractions, "mean": np.float64(sum(c for c, _ in counts) / total if total else np.nan)}

    def meta(self):
        return {"layers": [name for name, _ in self._pairs], "threshold": self.threshold}


@dataclass
class GradNormProbe(Probe):
    """Euclidean norm of the training gradient of each weight layer (Conv2d, Linear; weight and bias together)."""

    def setup(self, trainer):
        from smoothnorm.measure.ics import weight_layer_names

        self._layers = weight_layer_names(trainer.net)
        self._slices = [trainer.net.layer_slices()[name] for name in self._layers]

    def measure(self, trainer, x, y, grad, loss):
        g = grad.astype(np.float64)
        return {"norms": np.array([np.linalg.norm(g[s]) for s in self._slices])}

    def meta(self):
        return {"layers": self._layers}


@dataclass
class BatchStatsGapProbe(Probe):
    """How far each BatchNorm layer's batch statistics are from its running statistics on the training batch:
    `mean_gap` = mean over channels of |mu_B - running_mean| / sqrt(running_var + eps) and `var_gap` = mean over
    channels of |log(var_B / running_var)| (var_B biased, as used to normalize). The running statistics are those
    after this step's own training-mode update (probes run after the step's forward pass). Zero would mean eval
    mode normalizes this batch exactly as training mode does."""

    def setup(self, trainer):
        net = trainer.net
        self._pairs = [(layer.name, net.layers[i - 1].name, layer) for i, layer in enumerate(net.layers)
                       if i > 0 and "running_mean" in layer.buffers() and "running_var" in layer.buffers()]

    def measure(self, trainer, x, y, grad, loss):
        net = trainer.net
        net.forward(x, "probe", capture=[source for _, source, _ in self._pairs])
        mean_gaps, var_gaps = [], []
        for _, source, layer in self._pairs:
            z = net.captured[source].astype(np.float64)
            axes = (0, *range(2, z.ndim))
            mu, var = z.mean(axis=axes), z.var(axis=axes)
            buffers = layer.buffers()
            run_mean = np.asarray(buffers["running_mean"], dtype=np.float64)
            run_var = np.asarray(buffers["running_var"], dtype=np.float64)
            eps = float(getattr(layer, "eps", 1e-5))
            mean_gaps.append(float(np.mean(np.abs(mu - run_mean) / np.sqrt(run_var + eps))))
            with np.errstate(all="ignore"):
                var_gaps.append(float(np.mean(np.abs(np.log((var + eps) / (run_var + eps))))))
        return {"mean_gap": np.array(mean_gaps), "var_gap": np.array(var_gaps)}

    def meta(self):
        return {"layers": [name for name, _, _ in self._pairs]}

