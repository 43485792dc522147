"""Claims evaluated on stored runs, per seed: a claim's quantity and statistic in one run, its outcome over
seeds (`evaluate_spec`); runs are read through smoothnorm.runs.store.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from smoothnorm.claims.parse import QUANTITIES, SWEEP_QUANTITIES, Claim
from smoothnorm.runs.plugins import load_all
from smoothnorm.runs.provenance import run_provenance
from smoothnorm.runs.schema import SWEEP_SEPARATOR
from smoothnorm.runs.store import RunResult, load_run


class Unavailable(Exception):
    """A run cannot answer a check (missing, unfinished, diverged, or without the quantity): the check is null."""


def _layer_name(run: RunResult, probe: str, layer: int) -> str:
    names = run.probe_meta.get(probe, {}).get("layers")
    if not names:
        raise Unavailable(f"run {run.label!r} records no layer names for probe {probe!r}")
    if not 0 <= layer < len(names):
        raise Unavailable(f"run {run.label!r}: layer index {layer} out of range; {probe} layers: {names}")
    return names[layer]


def quantity_series(run: RunResult, quantity: str, layer: int | None = None,
                    plugins: dict[str, Callable] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of a claim quantity in one run, NaN values left out; Unavailable when it is not recorded.

    plugins: plug-in quantities, {the name a claim gives: quantity(run, layer) -> (steps, values)} (a spec's,
    imported by evaluate_spec).
    """
    if plugins and quantity in plugins:
        return _plugin_series(run, quantity, plugins[quantity], layer)
    kind, _, _ = QUANTITIES[quantity]
    try:
        if kind is None:
            metric = "loss" if quantity in ("loss_ratio", "loss_rise") else quantity
            steps = run.metrics.get("step")
            values = run.metrics.get(metric)
            if steps is None or values is None:
                raise Unavailable(f"run {run.label!r} records no metric {metric!r}")
            if quantity != metric:
                steps, values = _loss_derived(run, quantity, np.asarray(steps), np.asarray(values, dtype=np.float64))
        elif quantity in ("sharpness", "sharpness_ratio"):
            steps = run.probe(kind, "steps")
            values = run.probe(kind, "top_eigenvalues").astype(np.float64).reshape(len(steps), -1)[:, 0]
            if quantity == "sharpness_ratio":
                values = values * float(run.config.get("run", {}).get("lr", np.nan)) / 2.0
        else:
            steps = run.probe(kind, "steps")
            n = len(steps)
            if quantity in ("loss_band", "grad_change"):
                key = "losses" if quantity == "loss_band" else "grad_distances"
                table = run.probe(kind, key).astype(np.float64).reshape(n, -1)
                # A non-finite value at some step size is a blow-up: the band is unbounded there.
                table = np.where(np.isfinite(table), table, np.inf)
                with np.errstate(invalid="ignore"):
                    values = table.max(axis=1) - (table.min(axis=1) if quantity == "loss_band" else 0.0)
                values = np.where(np.isnan(values), np.inf, values)
            elif quantity == "effective_beta":
                values = run.probe(kind, "effective_beta").astype(np.float64).reshape(-1)
            elif quantity in ("outlier_ratio", "gradient_share"):
                values = run.probe(kind, quantity).astype(np.float64).reshape(-1)
            elif quantity == "explosion_rate":
                values = run.probe(kind, "rate").astype(np.float64).reshape(-1)
            elif quantity == "surface_range":
                table = run.probe(kind, "losses_2d").astype(np.float64).reshape(n, -1)
                table = np.where(np.isfinite(table), table, np.inf)  # a diverged grid point: unbounded range
                with np.errstate(invalid="ignore"):
                    values = table.max(axis=1) - table.min(axis=1)
                values = np.where(np.isnan(values), np.inf, values)
            elif quantity == "surface_curvature":
                values = run.probe(kind, "curvature").astype(np.float64).reshape(n, -1)[:, -1]
            elif quantity in ("ics_l2", "ics_cosine"):
                table = run.probe(kind, quantity[4:]).astype(np.float64).reshape(n, -1)
                if layer >= table.shape[1]:
                    raise Unavailable(f"run {run.label!r}: ICS layer index {layer} out of range ({table.shape[1]})")
                values = table[:, layer]
            else:
                from smoothnorm.measure.distributions import moment_series

                name = _layer_name(run, kind, layer)
                series = moment_series(run.probe(kind, f"{name}/mean"), run.probe(kind, f"{name}/var"))
                values = series["abs_mean_change" if quantity == "mean_change" else "abs_var_change"].mean(axis=1)
                steps = steps[1:]
    except KeyError as err:
        raise Unavailable(str(err).strip('"')) from None
    steps = np.asarray(steps, dtype=np.int64)
    values = np.asarray(values, dtype=np.float64)
    keep = ~np.isnan(values)
    return steps[keep], values[keep]


def _plugin_series(run: RunResult, quantity: str, fn: Callable, layer: int | None) -> tuple[np.ndarray, np.ndarray]:
    """A plug-in quantity's (steps, values) in one run, checked; its KeyError (not recorded) makes it Unavailable."""
    try:
        out = fn(run, layer)
    except KeyError as err:
        raise Unavailable(str(err).strip('"')) from None
    try:
        steps, values = out
        steps, values = np.asarray(steps), np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        steps = values = None
    if steps is None or steps.ndim != 1 or values.shape != steps.shape or steps.dtype.kind not in "iu":
        raise ValueError(f"plug-in quantity {quantity!r} returned {out!r:.120} for run {run.label!r}; expected "
                         "(steps, values): integer training steps and one number per step (two 1-D arrays of equal "
                         "length)")
    keep = ~np.isnan(values)
    return steps.astype(np.int64)[keep], values[keep]


def _loss_derived(run: RunResult, quantity: str, steps: np.ndarray,
                  loss: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """loss_ratio (loss / loss at the first step) or loss_rise (1 where the loss rose from the step before)."""
    if loss.size == 0:
        raise Unavailable(f"run {run.label!r} records no training loss")
    if quantity == "loss_ratio":
        if not (np.isfinite(loss[0]) and loss[0] > 0):
            raise Unavailable(f"run {run.label!r}: first training loss {loss[0]!r} is not a positive number")
        return steps, loss / loss[0]
    with np.errstate(invalid="ignore"):
        rise = np.where(np.isfinite(loss[1:]) & np.isfinite(loss[:-1]), (loss[1:] > loss[:-1]).astype(np.float64),
                        np.nan)
    return steps[1:], rise


def statistic(run: RunResult, claim: Claim, plugins: dict[str, Callable] | None = None) -> float:
    """The claim's statistic of its quantity over its window, in one run (plugins: as quantity_series)."""
    steps, values = quantity_series(run, claim.quantity, claim.layer, plugins)
    total = int(run.config.get("run", {}).get("steps", 0)) or (int(steps.max()) + 1 if steps.size else 0)
    lo, hi = claim.window[0] * total, claim.window[1] * total
    inside = (steps >= lo) & (steps <= hi)
    values = values[inside]
    if values.size == 0:
        raise Unavailable(f"run {run.label!r} has no finite {claim.quantity!r} in steps {lo:g}..{hi:g}")
    with np.errstate(all="ignore"):
        if claim.stat == "final":
            return float(values[-1])
        if claim.stat == "fraction_above":
            return float(np.mean(values > claim.level))
        if claim.stat == "fraction_below":
            return float(np.mean(values < claim.level))
        return float({"mean": np.mean, "median": np.median, "max": np.max, "min": np.min}[claim.stat](values))


def _compare(relation: str, a: float, b: float, margin: float = 0.0) -> bool:
    if relation == "within":
        return bool(abs(a - b) <= margin)
    return bool(a > b) if relation == "greater" else bool(a < b)


@dataclass
class SeedOutcome:
    seed: int
    holds: bool | None
    values: dict[str, float | None]
    note: str = ""


@dataclass
class ClaimResult:
    """A claim's outcome over seeds: `holds` and `values` per seed, and why a seed is null."""

    spec: str
    claim: Claim
    outcomes: list[SeedOutcome] = field(default_factory=list)
    # The provenance of every stored run the claim read (smoothnorm.runs.provenance.run_provenance), by run id.
    provenance: dict[str, dict] = field(default_factory=dict)

    @property
    def seeds(self) -> list[int]:
        return [o.seed for o in self.outcomes]

    @property
    def held(self) -> int:
        return sum(o.holds is True for o in self.outcomes)

    def verdict(self) -> str:
        n = len(self.outcomes)
        nulls = sum(o.holds is None for o in self.outcomes)
        text = f"holds in {self.held} of {n} seeds"
        return text + (f" ({nulls} null)" if nulls else "")

    def as_json(self) -> dict:
        c = self.claim
        return {
            "spec": self.spec, "id": c.id, "text": c.text, "check": c.describe(),
            "seeds": self.seeds,
            "holds": [o.holds for o in self.outcomes],
            "values": [o.values for o in self.outcomes],
            "notes": [o.note for o in self.outcomes],
            "verdict": self.verdict(),
            "provenance": [self.provenance[k] for k in sorted(self.provenance)],
        }


def _load(root: Path, run_spec, cache: dict, used: dict | None = None) -> RunResult:
    path = Path(root) / run_spec.run_id
    if path not in cache:
        if not (path / "config.json").exists():
            raise Unavailable(f"run {run_spec.label!r} (seed {run_spec.settings['seed']}) has no results at {path}")
        cache[path] = load_run(path, label=run_spec.label)
    if used is not None and path not in used:
        used[path] = _provenance(path, cache)
    return cache[path]


def _provenance(path: Path, cache: dict) -> dict:
    """A run's provenance, read once per evaluation (claims share their runs)."""
    key = ("provenance", path)
    if key not in cache:
        cache[key] = run_provenance(path)
    return cache[key]


def _evaluate_seed(claim: Claim, runs: dict[str, Any], root: Path, cache: dict, seed: int,
                   used: dict | None = None, plugins: dict[str, Callable] | None = None) -> SeedOutcome:
    labels = [claim.run] + ([claim.than] if claim.than else [])
    values: dict[str, float | None] = {label: None for label in labels}
    try:
        loaded = {}
        for label in labels:
            if label not in runs:
                raise Unavailable(f"no run {label!r} with seed {seed}")
            result = _load(root, runs[label], cache, used)
            loaded[label] = result
            if result.status == "diverged":
                if claim.if_diverged == "holds" and claim.than is None and label == claim.run:
                    return SeedOutcome(seed, True, values, f"{label!r} diverged (counts as failing to train)")
                raise Unavailable(f"{label!r} diverged")
            if result.status != "finished":
                raise Unavailable(f"{label!r} is {result.status}, not finished")
        for label in labels:
            values[label] = statistic(loaded[label], claim, plugins)
    except Unavailable as why:
        return SeedOutcome(seed, None, values, str(why))
    return _outcome(claim, seed, values)


def _outcome(claim: Claim, seed: int, values: dict, note: str = "") -> SeedOutcome:
    a = values[claim.run]
    if claim.relation == "within":
        return SeedOutcome(seed, _compare("within", a, claim.factor * values[claim.than], claim.margin), values, note)
    b = claim.level if claim.than is None else claim.factor * values[claim.than] + claim.margin
    return SeedOutcome(seed, _compare(claim.relation, a, b), values, note)


def _evaluate_sweep_seed(claim: Claim, rates: dict[str, Any], seed: int) -> SeedOutcome:
    """A sweep claim at one seed: each named group's largest stable learning rate (0 when none of the grid trains;
    null when missing or unfinished runs could change it)."""
    labels = [claim.run] + ([claim.than] if claim.than else [])
    values: dict[str, float | None] = {label: None for label in labels}
    notes = []
    for label in labels:
        rate = rates.get(label)
        if rate is None:
            return SeedOutcome(seed, None, values, f"no sweep {label!r} with seed {seed}")
        if not rate.known:
            lrs = ", ".join(f"{lr:g}" for lr in rate.unknown_lrs)
            return SeedOutcome(seed, None, values, f"{label!r}: runs at lr {lrs} missing or unfinished")
        if rate.largest is None:
            notes.append(f"no learning rate of {label!r} trains")
        values[label] = 0.0 if rate.largest is None else rate.largest
    return _outcome(claim, seed, values, "; ".join(notes))


def evaluate_spec(spec, root: str | os.PathLike) -> list[ClaimResult]:
    """Every claim of a spec (smoothnorm.runs.spec.Spec) on its stored runs under `root`, per seed. The spec's
    plug-in quantities are imported first (each file said on stderr)."""
    plugins = load_all("quantity", spec.plugins.get("quantity", {})) if spec.claims else {}
    by_seed: dict[int, dict[str, Any]] = {}
    for run in spec.runs:
        by_seed.setdefault(int(run.settings["seed"]), {})[run.label] = run
    rates: dict[int, dict[str, Any]] = {}
    if any(c.quantity in SWEEP_QUANTITIES for c in spec.claims):
        from smoothnorm.runs.sweeps import stable_rates

        for rate in stable_rates(spec, root):
            rates.setdefault(rate.seed, {})[rate.group] = rate
    cache: dict = {}
    results = []
    for claim in spec.claims:
        result = ClaimResult(spec.name, claim)
        used: dict = {}
        for seed in sorted(by_seed):
            if claim.quantity in SWEEP_QUANTITIES:
                result.outcomes.append(_evaluate_sweep_seed(claim, rates.get(seed, {}), seed))
                _sweep_provenance(claim, spec, seed, Path(root), used, cache)
            else:
                result.outcomes.append(_evaluate_seed(claim, by_seed[seed], Path(root), cache, seed, used, plugins))
        result.provenance = {p["run"]: p for p in used.values()}
        results.append(result)
    return results


def _sweep_provenance(claim: Claim, spec, seed: int, root: Path, used: dict, cache: dict) -> None:
    """The stored runs of the sweep groups a sweep claim reads, at one seed, into `used`."""
    groups = [claim.run] + ([claim.than] if claim.than else [])
    for run in spec.runs:
        path = root / run.run_id
        if (int(run.settings["seed"]) == seed and any(run.label.startswith(g + SWEEP_SEPARATOR) for g in groups)
                and (path / "config.json").exists() and path not in used):
            used[path] = _provenance(path, cache)
