"""The training loop, with probes scheduled by step.

`Trainer` owns a network, an optimizer, a batch function and a list of probes. Every step t it:
1. takes the batch (x_t, y_t) = batch_fn(t) (a pure function of t, so a resumed run sees the same batches);
2. draws fresh layer noise (noisy BatchNorm) from its own generator;
3. computes the training loss and gradient at w_t in train mode;
4. runs every probe due at t on (x_t, y_t) at w_t, in probe mode (reusing that gradient), then takes the step;
5. every `eval_every` steps, evaluates test accuracy in eval mode.
Its whole state (network, optimizer, noise generator, step, metrics, probe records) is a `state_dict()`, so the
experiment runner can checkpoint and resume bit for bit. The trainer knows no files.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from smoothnorm.measure import (
    ActivationSampler,
    hessian_top_eigenvalues,
    internal_covariate_shift,
    probe_gradient_direction,
    step_grid,
)
from smoothnorm.measure.landscape import probe_direction, random_direction

BatchFn = Callable[[int], tuple[np.ndarray, np.ndarray]]


# ----------------------------------------------------------------------------------------------------------------
# Probes: each turns (trainer, x, y) at one step into a dict of fixed-shape arrays (one row of its record).
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class Probe:
    """A measurement run every `every` steps (from `start`) on the current training batch."""

    name: str
    every: int
    start: int = 0

    def due(self, step: int) -> bool:
        return self.every > 0 and step >= self.start and (step - self.start) % self.every == 0

    def setup(self, trainer: Trainer) -> None:
        """Called once when the trainer is built (before any step)."""

    def measure(self, trainer: Trainer, x: np.ndarray, y: np.ndarray, grad: np.ndarray,
                loss: float) -> dict[str, np.ndarray]:
        """One row of measurements at the current weights; `grad`, `loss`: the step's gradient and loss there."""
        raise NotImplementedError

    def meta(self) -> dict[str, Any]:
        """JSON-able description stored beside the record (e.g. layer names, step sizes)."""
        return {}


@dataclass
class LandscapeProbe(Probe):
    """Loss and gradient change along the descent direction -g (Figs 4, 10, 11): `probe_gradient_direction`.

    etas: explicit step sizes, or None for `step_grid(lr, preset, spacing, num)`.
    direction: "gradient" (the paper) or "random" (a Gaussian direction scaled to ||g||, drawn fresh each step).
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
    """

    k: int = 1
    mode: str = "probe"

    def measure(self, trainer, x, y, grad, loss):
        return {"top_eigenvalues": np.asarray(hessian_top_eigenvalues(trainer.net, x, y, k=self.k, mode=self.mode))}

    def meta(self):
        return {"k": self.k, "mode": self.mode}


PROBES: dict[str, type[Probe]] = {
    "landscape": LandscapeProbe,
    "ics": ICSProbe,
    "distributions": DistributionProbe,
    "hessian": HessianProbe,
}


class ProbeRecord:
    """Rows of one probe over training: steps and, per key, a list of equally shaped arrays."""

    def __init__(self) -> None:
        self.steps: list[int] = []
        self.rows: dict[str, list[np.ndarray]] = {}

    def append(self, step: int, row: dict[str, np.ndarray]) -> None:
        self.steps.append(step)
        for key, value in row.items():
            self.rows.setdefault(key, []).append(np.asarray(value))

    def arrays(self, prefix: str) -> dict[str, np.ndarray]:
        out = {f"{prefix}/steps": np.asarray(self.steps, dtype=np.int64)}
        for key, values in self.rows.items():
            out[f"{prefix}/{key}"] = np.stack(values) if values else np.zeros(0)
        return out

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], prefix: str) -> ProbeRecord:
        rec = cls()
        steps = arrays.get(f"{prefix}/steps")
        if steps is None:
            return rec
        rec.steps = [int(s) for s in steps]
        for key, value in arrays.items():
            if key.startswith(prefix + "/") and key != f"{prefix}/steps":
                rec.rows[key[len(prefix) + 1:]] = list(value)
        return rec


# ----------------------------------------------------------------------------------------------------------------
# Trainer
# ----------------------------------------------------------------------------------------------------------------
class Trainer:
    """Train `net` with `optimizer` on batches `batch_fn(step)`, running `probes` when due.

    eval_fn: optional callable(net) -> dict of evaluation metrics (e.g. test accuracy), run every `eval_every`
        steps and after the last step.
    seed: seeds the layer-noise and probe generators (independent of the network's init seed).
    """

    def __init__(
        self,
        net,
        optimizer,
        batch_fn: BatchFn,
        probes: Sequence[Probe] = (),
        *,
        eval_fn: Callable | None = None,
        eval_every: int = 0,
        seed: int = 0,
    ) -> None:
        self.net, self.optimizer, self.batch_fn = net, optimizer, batch_fn
        self.probes = list(probes)
        names = [p.name for p in self.probes]
        if len(set(names)) != len(names):
            raise ValueError(f"probes: duplicate probe names {names}")
        self.eval_fn, self.eval_every = eval_fn, int(eval_every)
        self.step = 0
        self.noise_rng = np.random.default_rng([seed, 11])
        self.probe_rng = np.random.default_rng([seed, 13])
        self.metrics: list[dict[str, Any]] = []
        self.records = {p.name: ProbeRecord() for p in self.probes}
        self.diverged = False
        self.elapsed = 0.0
        for probe in self.probes:
            probe.setup(self)

    def train_step(self) -> dict[str, Any]:
        """One step: probes due now, then the training update. Returns the metrics row."""
        t0 = time.perf_counter()
        step = self.step
        x, y = self.batch_fn(step)
        self.net.resample_noise(self.noise_rng)
        # The train-mode gradient at w_t is the probe-mode one (both use batch statistics; only the running
        # statistics differ, and probes never read them), so probes reuse it instead of recomputing it.
        with np.errstate(all="ignore"):
            loss, grads = self.net.loss_and_grad(x, y, mode="train")
        row: dict[str, Any] = {"step": step, "loss": float(loss), "lr": float(self.optimizer.lr)}
        out = self.net.output
        if out.ndim == 2 and np.asarray(y).ndim == 1:
            row["train_acc"] = float(np.mean(np.argmax(out, axis=1) == y))
        due = [probe for probe in self.probes if probe.due(step)]
        if due:
            grad = grads.copy()
            for probe in due:
                # Measurements restore params, grads and buffers bit for bit, so the update below is unchanged.
                self.records[probe.name].append(step, probe.measure(self, x, y, grad, float(loss)))
        if not (math.isfinite(loss) and np.isfinite(grads).all()):
            self.diverged = True
            row["diverged"] = True
        else:
            with np.errstate(all="ignore"):
                self.optimizer.step(self.net.params, self.net.grads)
        self.step += 1
        if self.eval_fn is not None and self.eval_every > 0 and self.step % self.eval_every == 0:
            row.update(self.eval_fn(self.net))
        self.elapsed += time.perf_counter() - t0
        row["time"] = round(self.elapsed, 4)
        self.metrics.append(row)
        return row

    def run(self, steps: int, callback: Callable[[Trainer, dict], None] | None = None) -> None:
        """Train until `steps` total steps (or divergence), calling `callback(trainer, row)` after each step."""
        while self.step < steps and not self.diverged:
            row = self.train_step()
            if callback is not None:
                callback(self, row)

    # -- state -----------------------------------------------------------------------------------------------
    def probe_arrays(self) -> dict[str, np.ndarray]:
        arrays: dict[str, np.ndarray] = {}
        for name, rec in self.records.items():
            arrays.update(rec.arrays(name))
        return arrays

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue bit for bit: arrays under 'net/', 'optim/', 'probe/'; scalars in 'meta'."""
        state: dict[str, Any] = {}
        for k, v in self.net.state_dict().items():
            state[f"net/{k}"] = v
        meta = {"step": self.step, "diverged": self.diverged, "elapsed": self.elapsed,
                "noise_rng": self.noise_rng.bit_generator.state, "probe_rng": self.probe_rng.bit_generator.state}
        optim_state = self.optimizer.state_dict()
        optim_scalars = {}
        for k, v in optim_state.items():
            if isinstance(v, np.ndarray):
                state[f"optim/{k}"] = v
            else:
                optim_scalars[k] = v
        meta["optimizer"] = optim_scalars
        meta["metrics_len"] = len(self.metrics)
        for k, v in self.probe_arrays().items():
            state[f"probe/{k}"] = v
        state["meta"] = meta
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        meta = state["meta"]
        self.net.load_state_dict({k[4:]: v for k, v in state.items() if k.startswith("net/")})
        optim_state = dict(meta["optimizer"])
        optim_state.update({k[6:]: v for k, v in state.items() if k.startswith("optim/")})
        self.optimizer.load_state_dict(optim_state)
        self.step, self.diverged, self.elapsed = int(meta["step"]), bool(meta["diverged"]), float(meta["elapsed"])
        self.noise_rng.bit_generator.state = meta["noise_rng"]
        self.probe_rng.bit_generator.state = meta["probe_rng"]
        arrays = {k[6:]: v for k, v in state.items() if k.startswith("probe/")}
        self.records = {p.name: ProbeRecord.from_arrays(arrays, p.name) for p in self.probes}
