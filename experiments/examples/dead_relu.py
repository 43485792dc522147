"""Plug-ins for `experiments/examples/dead_relu_batchnorm.toml`: how many ReLU units are dead, with and without
BatchNorm.

A unit (a channel of a convolution, a feature of a linear layer) is dead on a batch when its ReLU output is zero for
every sample (and every position): no gradient flows back through it, so the weights feeding it stop learning from
that batch. Written as a user would, in plain NumPy against the package's public protocols, and named from the spec
as "./dead_relu.py:Name":
- `DeadReLUProbe`, a probe (smoothnorm.train.probes.base.Probe): per ReLU layer, the fraction of dead units on the
  training batch; it records under its class name, "DeadReLUProbe/dead" in the run's probes.npz;
- `dead_fraction`, a claim quantity: quantity(run, layer) -> (steps, values);
- `draw_dead_units`, a figure panel: draw(ax, runs, *, colors, **options).
`smoothnorm.testing.check_probe(DeadReLUProbe(name="dead", every=1))` checks that the probe leaves training as it
found it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from smoothnorm.nn import ReLU
from smoothnorm.train.probes.base import Probe

# What the probe records under in probes.npz (a plug-in probe records under the name after the spec's colon).
RECORD = "DeadReLUProbe"


@dataclass
class DeadReLUProbe(Probe):
    """Per ReLU layer, the fraction of units whose output is at most `threshold` for every sample of the training
    batch, in probe mode (batch statistics, nothing updated)."""

    threshold: float = 0.0

    def setup(self, trainer):
        self._layers = [layer.name for layer in trainer.net.layers if isinstance(layer, ReLU)]
        if not self._layers:
            raise ValueError(f"{self.name}: the network has no ReLU layers to count dead units in")

    def measure(self, trainer, x, y, grad, loss):
        net = trainer.net
        with np.errstate(all="ignore"):
            net.forward(x, mode="probe", capture=self._layers)
        dead = []
        for name in self._layers:
            out = net.captured[name]  # (N, C) or (N, C, H, W)
            largest = np.moveaxis(out, 1, 0).reshape(out.shape[1], -1).max(axis=1)
            dead.append(np.mean(largest <= self.threshold))
        return {"dead": np.array(dead, dtype=np.float64)}

    def meta(self):
        return {"layers": self._layers, "threshold": self.threshold}


def dead_fraction(run, layer):
    """Claim quantity: the fraction of dead ReLU units at each probed step, averaged over the ReLU layers (layer
    None) or of one (layer: an index into the probe's layers, input side first)."""
    steps = run.probe(RECORD, "steps")
    dead = run.probe(RECORD, "dead").reshape(len(steps), -1)
    if layer is None:
        return steps, dead.mean(axis=1)
    if layer >= dead.shape[1]:
        raise KeyError(f"run {run.label!r} records {dead.shape[1]} ReLU layers, not layer {layer}")
    return steps, dead[:, layer]


def draw_dead_units(ax, runs, *, colors, layer=None):
    """Figure panel: the percentage of dead ReLU units over training, one line per run (all ReLU layers on
    average, or one: `layer`)."""
    for run in runs:
        steps, values = dead_fraction(run, layer)
        ax.plot(steps, 100 * values, color=colors.get(run.label), linewidth=1.2, label=run.label)
    ax.set_xlabel("training step")
    ax.set_ylabel("dead ReLU units (%)" if layer is None else f"dead units of ReLU layer #{layer + 1} (%)")
    ax.legend(fontsize="small")
