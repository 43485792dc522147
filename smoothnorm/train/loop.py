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
from typing import Any

import numpy as np

from smoothnorm.train.probes.base import Probe, ProbeRecord

BatchFn = Callable[[int], tuple[np.ndarray, np.ndarray]]


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
