"""The probe base classes: `Probe` (a measurement the training loop runs on the current training batch, every
`every` steps from `start`), `StepListProbe` (one that may instead run at listed steps) and `ProbeRecord` (the rows a
probe recorded). The probes themselves: smoothnorm.train.probes.paper (the paper's) and
smoothnorm.train.probes.beyond (the follow-ups).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from smoothnorm.train.loop import Trainer


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


def layers_without_r_pass(net) -> list[str]:
    """Names of the network's layers that have no R-pass (`forward_r` / `backward_r`, exact Hessian-vector
    products), such as a plug-in norm written without one."""
    from smoothnorm.nn.layer import Layer

    return [layer.name for layer in net.layers
            if type(layer).forward_r is Layer.forward_r or type(layer).backward_r is Layer.backward_r]


def warn_no_r_pass(probe: Probe, layers: list[str]) -> None:
    """Say once per probe, by name, that it records NaN because these layers have no R-pass."""
    if not getattr(probe, "_warned_no_r_pass", False):
        print(f"warning: probe {probe.name!r} records NaN: exact Hessian-vector products need an R-pass "
              f"(forward_r / backward_r), which layers {layers} do not have", file=sys.stderr)
        probe._warned_no_r_pass = True


@dataclass
class StepListProbe(Probe):
    """A probe run at the listed `steps` (e.g. [0]: at initialization; then `every` and `start` are ignored), or by
    the every/start rule when `steps` is empty."""

    steps: Sequence[int] = ()

    def due(self, step: int) -> bool:
        return step in self.steps if self.steps else super().due(step)


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
