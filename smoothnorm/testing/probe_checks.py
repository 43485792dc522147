"""`check_probe`: a probe inside a short training leaves the training as it found it and records rows of fixed
shapes, each a named check in a ProbeReport.

The probe measures at every step of the short training (its own schedule is ignored, so every step is checked);
around each `measure` call the network's params, grads and buffers, the optimizer's state and the `grad` argument
are compared bit for bit, and the whole training is compared with the same training without the probe.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np

from smoothnorm.nn.models import mlp
from smoothnorm.optim import SGD
from smoothnorm.testing.report import Check, ProbeReport, identical, raised, relative_change

__all__ = ["check_probe", "PROBE_BATCH_SIZE"]

PROBE_BATCH_SIZE = 8
# What a probe must leave as it found it, in the order checked.
STATE_GROUPS = ("params", "grads", "buffers", "optimizer")


def check_probe(probe, *, net=None, steps: int = 2) -> ProbeReport:
    """Run `probe` at every step of a short training; raise AssertionError naming the first failed check.

    probe: a smoothnorm.train.probes.base.Probe (its setup and measure are called as the Trainer calls them).
    net: the network to train (a copy is used; the caller's is untouched), or None for a small MLP with BatchNorm
        (6 inputs, 5 hidden units, 3 classes, float32). Batches of PROBE_BATCH_SIZE random inputs with labels or
        regression targets, whichever the network's loss takes; SGD with momentum 0.9, so the optimizer has state.
    steps: training steps (at least 2, so rows are compared across steps).
    Returns the ProbeReport when every check passes.
    """
    from smoothnorm.train.loop import Trainer
    from smoothnorm.train.probes.base import Probe

    if not isinstance(probe, Probe):
        raise TypeError(f"probe: expected a smoothnorm.train.probes.base.Probe, got {type(probe).__name__}")
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 2:
        raise ValueError(f"steps: expected an integer >= 2 (rows are compared across steps), got {steps!r}")
    if net is None:
        net = mlp(6, [5], 3, norm="batch", dtype=np.float32, seed=0)
    missing = [a for a in ("params", "grads", "input_shape", "loss_and_grad", "state_dict") if not hasattr(net, a)]
    if missing:
        raise TypeError(f"net: expected a smoothnorm Network, got {type(net).__name__} without {missing}")
    batches = _batches(net)
    watched = _WatchedProbe(probe)
    subject = f"check_probe({type(probe).__name__} {probe.name!r}, {steps} steps of {type(net).__name__})"
    with_probe = None
    try:
        with_probe = Trainer(_copy(net), _optimizer(), batches, [watched], seed=0)  # calls the probe's setup
        with_probe.run(int(steps))
        runs = Check("runs", "passed", detail=f"measured at steps {watched.steps}")
    except Exception as exc:  # reported as the failed check, with where the probe raised
        where = "setup" if with_probe is None else f"step {with_probe.step}"
        runs = Check("runs", "failed", detail=f"at {where}: {raised(exc)}")
    checks = [runs, *(_state_check(group, watched) for group in STATE_GROUPS), _rows_check(watched)]
    if runs.passed:
        without = Trainer(_copy(net), _optimizer(), batches, [], seed=0)
        without.run(int(steps))
        checks.append(_same_training(without, with_probe))
    else:
        checks.append(Check("same_training", "skipped", detail="the training with the probe did not finish"))
    report = ProbeReport(subject, checks)
    report.raise_if_failed()
    return report


def _optimizer() -> SGD:
    """SGD with momentum: state that a probe could disturb from the second step on."""
    return SGD(lr=0.05, momentum=0.9)


def _copy(net):
    return net.copy() if hasattr(net, "copy") else copy.deepcopy(net)


def _batches(net):
    """batch_fn(step): random inputs and, per the network's loss, int64 labels or float targets."""
    out = tuple(net.output_shape)
    labels = np.zeros(PROBE_BATCH_SIZE, dtype=np.int64)
    try:
        net.check_targets(labels, PROBE_BATCH_SIZE)
        classes = out[0]
    except (ValueError, TypeError, IndexError):
        classes = 0

    def batch(step: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng([step, 17])
        x = rng.standard_normal((PROBE_BATCH_SIZE, *net.input_shape)).astype(net.dtype)
        if classes:
            return x, rng.integers(0, classes, size=PROBE_BATCH_SIZE)
        return x, rng.standard_normal((PROBE_BATCH_SIZE, *out)).astype(net.dtype)

    return batch


def _training_state(trainer, grad: np.ndarray) -> dict[str, dict[str, Any]]:
    """Copies of what a probe must leave unchanged, by group."""
    net = trainer.net
    param_keys = set(net.param_slices()) if hasattr(net, "param_slices") else set()
    return {
        "params": {"net.params": net.params.copy()},
        "grads": {"net.grads": net.grads.copy(), "the grad argument": grad.copy()},
        "buffers": {key: value for key, value in net.state_dict().items() if key not in param_keys},
        "optimizer": {key: np.array(value, copy=True) if isinstance(value, np.ndarray) else value
                      for key, value in trainer.optimizer.state_dict().items()},
    }


def _same(a, b) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return identical(a, b)
    return a == b


class _WatchedProbe:
    """Stands in for the probe in the Trainer: runs it at every step and records what each measure changed."""

    def __init__(self, probe) -> None:
        self.probe, self.name = probe, probe.name
        self.steps: list[int] = []
        self.changes: list[tuple[str, int, str, float]] = []  # (group, step, key, relative change)
        self.rows: list[tuple[int, dict, dict]] = []  # (step, row as returned, copies taken when returned)

    def due(self, step: int) -> bool:
        return True

    def setup(self, trainer) -> None:
        self.probe.setup(trainer)

    def measure(self, trainer, x, y, grad, loss):
        before = _training_state(trainer, grad)
        row = self.probe.measure(trainer, x, y, grad, loss)
        after = _training_state(trainer, grad)
        for group, values in before.items():
            for key, value in values.items():
                if not _same(after[group].get(key), value):
                    self.changes.append((group, trainer.step, key, relative_change(after[group].get(key), value)))
        if not isinstance(row, dict):
            raise TypeError(f"{self.name}: measure returned {type(row).__name__}, expected a dict of arrays")
        self.steps.append(trainer.step)
        self.rows.append((trainer.step, row, {key: np.array(value, copy=True) for key, value in row.items()}))
        return row

    def meta(self):
        return self.probe.meta()


def _state_check(group: str, watched: _WatchedProbe) -> Check:
    if not watched.steps and not watched.changes:
        return Check(group, "skipped", detail="measure never returned")
    changes = [c for c in watched.changes if c[0] == group]
    if not changes:
        return Check(group, "passed", 0.0)
    worst = max(change for _, _, _, change in changes)
    first = changes[0]
    keys = sorted({key for _, _, key, _ in changes})
    detail = (f"measure changed {', '.join(keys)} (first at step {first[1]}, by up to {worst:.1e} relative); a probe "
              "must leave the training bit for bit as it found it: save what it changes and restore it with [...] =")
    return Check(group, "failed", worst, None, detail)


def _rows_check(watched: _WatchedProbe) -> Check:
    if not watched.rows:
        return Check("rows", "skipped", detail="measure never returned")
    problems = []
    first_step, first_row, first_copies = watched.rows[0]
    if not first_row:
        problems.append("measure returned an empty dict (a row needs at least one array)")
    for step, row, copies in watched.rows:
        if set(row) != set(first_row):
            problems.append(f"keys at step {step} {sorted(row)} differ from step {first_step}'s {sorted(first_row)}")
            continue
        for key, value in row.items():
            array, reference = np.asarray(value), first_copies[key]
            if array.dtype.kind not in "biuf":
                problems.append(f"row[{key!r}] has dtype {array.dtype} (rows hold numbers)")
            elif (array.shape, array.dtype) != (reference.shape, reference.dtype) and step != first_step:
                problems.append(f"row[{key!r}] is {array.dtype} {array.shape} at step {step} but {reference.dtype} "
                                f"{reference.shape} at step {first_step} (rows must keep one shape)")
            if not identical(array, copies[key]):
                problems.append(f"row[{key!r}] of step {step} changed after measure returned (a view of memory the "
                                f"training reuses: return a copy)")
    problems = list(dict.fromkeys(problems))
    return Check("rows", "failed" if problems else "passed", detail="; ".join(problems[:4]))


def _same_training(without, with_probe) -> Check:
    """The training with the probe ends bit for bit where the training without it ends."""
    differ = []
    a, b = without.net.state_dict(), with_probe.net.state_dict()
    differ += [f"network {key}" for key in a if not identical(a[key], b.get(key))]
    a, b = without.optimizer.state_dict(), with_probe.optimizer.state_dict()
    differ += [f"optimizer {key}" for key in a if not _same(a[key], b.get(key))]
    losses = [np.array([row["loss"] for row in trainer.metrics]) for trainer in (without, with_probe)]
    if not identical(*losses):
        differ.append("training losses")
    if not differ:
        return Check("same_training", "passed", detail="final network, optimizer and losses as without the probe")
    return Check("same_training", "failed", detail=f"with the probe the training ends elsewhere: "
                                                   f"{', '.join(differ[:6])} differ from the same training without it")
