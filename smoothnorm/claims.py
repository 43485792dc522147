"""Claims: the paper's findings stated as checks that the code evaluates on stored runs, over seeds.

A spec's `[[claims]]` table holds
- `id` (unique in the spec) and `text`: the paper's statement in its own words, with the section or figure;
- `quantity` (`QUANTITIES`), and for probe quantities of one layer `layer` (an index into the probe's layers,
  0-based, as in the figure panels);
- `stat` (`STATS`) of that quantity over `window = [a, b]`: the steps from fraction a to fraction b of training
  (default [0, 1]); `level` for the "fraction_above" / "fraction_below" statistics;
- the check: `run` (a run label) compared with `than` (another label; `relation` "greater" or "less" against
  factor * value(than) + margin, `factor` default 1, `margin` default 0, or "within": |value(run) - factor *
  value(than)| <= margin, "train alike"), or with `level` alone (`relation` against the number `level`, "fails to
  train": final training accuracy less than 0.2);
- sweep quantities (`SWEEP_QUANTITIES`, e.g. "largest_stable_lr") name learning-rate sweep groups (the plain label
  of a swept run) in `run` and `than`; they have one value per seed (stat "final", no window), from
  smoothnorm.sweeps with the spec's [sweep] criterion; a grid where no rate trains counts as 0;
- `if_diverged`: "null" (default: a diverged run makes the check null, never holding) or "holds" (for "fails to
  train" checks, where diverging is failing to train);
- `notes`: optional {profile: text}, the measured reason a check cannot hold at that profile's scale, shown beside
  the verdict in CLAIMS.md for that profile only.
A check is null for a seed (and says why) when a run it reads is missing, unfinished, diverged, or lacks the
quantity; it holds or fails otherwise. The vocabulary lives here; smoothnorm.spec calls `parse_claims` to validate
claims with the spec, before any work. `evaluate_spec` reads runs through smoothnorm.results; `write_claims`
writes figures/CLAIMS.md and figures/claims.json atomically.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from smoothnorm.data._io import atomic_open
from smoothnorm.results import RunResult, load_run, write_json

# quantity -> (probe kind or None for a metric, needs a layer, what it is)
QUANTITIES: dict[str, tuple[str | None, bool, str]] = {
    "train_acc": (None, False, "training accuracy on each step's batch (fraction)"),
    "test_acc": (None, False, "test accuracy at evaluation steps (fraction)"),
    "loss": (None, False, "training loss on each step's batch"),
    "test_loss": (None, False, "test loss at evaluation steps"),
    "loss_band": ("landscape", False, "max - min of L(w - eta g) over the probed step sizes (Figs 4a, 10a)"),
    "grad_change": ("landscape", False, "max over step sizes of ||grad L(w - eta g) - g|| (Figs 4b, 10b)"),
    "effective_beta": ("landscape", False, "effective beta-smoothness (Figs 4c, 10c)"),
    "ics_l2": ("ics", True, "||G - G'|| of one layer (Definition 2.1, Fig 3)"),
    "ics_cosine": ("ics", True, "cos(G, G') of one layer (Fig 3)"),
    "mean_change": ("distributions", True, "|mu_{t+1} - mu_t| of sampled units, averaged over units (Fig 8a)"),
    "var_change": ("distributions", True, "|var_{t+1} - var_t| of sampled units, averaged over units (Fig 8a)"),
    # Edge of stability (Cohen et al. 2021), with full-batch gradient descent (batch_size = 0).
    "sharpness": ("hessian", False, "top Hessian eigenvalue of the training loss on the probed batch"),
    "sharpness_ratio": ("hessian", False, "sharpness x lr / 2: 1 at gradient descent's stability threshold 2 / lr"),
    "loss_ratio": (None, False, "training loss over its value at the first step"),
    "loss_rise": (None, False, "1 at a step whose training loss exceeds the step before's, else 0 (mean: the "
                               "fraction of rising steps)"),
    "explosion_rate": ("gradient_explosion", False, "growth of ||dL/dW_l||^2 per layer toward the input, "
                       "exp(-slope) of the log-linear fit (Yang et al. 2019)"),
}
# quantity -> what it is: one value per sweep group and seed (smoothnorm.sweeps)
SWEEP_QUANTITIES: dict[str, str] = {
    "largest_stable_lr": "the largest swept learning rate that trains (not diverged, final training accuracy above "
                         "the spec's [sweep] criterion; 0 when none does)",
}
STATS = ("final", "mean", "median", "max", "min", "fraction_above", "fraction_below")
RELATIONS = ("greater", "less", "within")
_CLAIM_KEYS = ("id", "text", "quantity", "layer", "stat", "window", "run", "than", "relation", "factor", "margin",
               "level", "if_diverged", "notes")
_NOTE_PROFILES = ("tiny", "quick", "paper")


class ClaimError(ValueError):
    """A claim is invalid: the message names the file and the key."""


@dataclass(frozen=True)
class Claim:
    """One validated `[[claims]]` table."""

    id: str
    text: str
    quantity: str
    stat: str
    run: str
    relation: str
    than: str | None = None
    layer: int | None = None
    window: tuple[float, float] = (0.0, 1.0)
    factor: float = 1.0
    margin: float = 0.0
    level: float | None = None
    if_diverged: str = "null"
    notes: tuple[tuple[str, str], ...] = ()

    def note(self, profile: str) -> str:
        """The spec's note for this claim at a profile ("" when none)."""
        return dict(self.notes).get(profile, "")

    def describe(self) -> str:
        """The check in words, e.g. "mean train_acc over steps [0.5, 1] of A greater than 1 x B + 0"."""
        what = self.quantity + (f"[layer {self.layer}]" if self.layer is not None else "")
        stat = self.stat + (f"({self.level:g})" if self.stat.startswith("fraction") else "")
        window = "" if self.window == (0.0, 1.0) else f" over steps {self.window[0]:g}-{self.window[1]:g}"
        if self.than is None:
            return f"{stat} {what}{window} of '{self.run}' {self.relation} than {self.level:g}"
        scale = "" if self.factor == 1.0 else f"{self.factor:g} x "
        if self.relation == "within":
            return f"{stat} {what}{window} of '{self.run}' within {self.margin:g} of {scale}'{self.than}'"
        shift = "" if self.margin == 0.0 else f" {'+' if self.margin > 0 else '-'} {abs(self.margin):g}"
        return f"{stat} {what}{window} of '{self.run}' {self.relation} than {scale}'{self.than}'{shift}"


def _number(where: str, key: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ClaimError(f"{where}: key {key!r} expects a finite number, got {value!r}")
    return float(value)


def _string(where: str, key: str, value, allowed: tuple | list | set | None = None) -> str:
    if not isinstance(value, str) or not value:
        raise ClaimError(f"{where}: key {key!r} expects a non-empty string, got {value!r}")
    if allowed is not None and value not in allowed:
        raise ClaimError(f"{where}: key {key!r} expects one of {sorted(allowed)}, got {value!r}")
    return value


def parse_claims(where: str, raw: Any, labels: set[str], probe_kinds: set[str],
                 sweeps: set[str] = frozenset()) -> list[Claim]:
    """Validate a spec's `[[claims]]` array against its run labels, probe kinds and learning-rate sweep groups
    (`sweeps`: the plain labels of swept runs); errors name file and key."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise ClaimError(f"{where}: key 'claims' expects an array of tables [[claims]]")
    claims: list[Claim] = []
    for i, table in enumerate(raw):
        cw = f"{where} [[claims]] #{i + 1}"
        if not isinstance(table, dict):
            raise ClaimError(f"{cw}: expected a table")
        unknown = sorted(set(table) - set(_CLAIM_KEYS))
        if unknown:
            raise ClaimError(f"{cw}: unknown key {unknown[0]!r}; expected keys: {', '.join(_CLAIM_KEYS)}")
        swept = isinstance(table.get("quantity"), str) and table["quantity"] in SWEEP_QUANTITIES
        for key in ("id", "text", "quantity", "stat", "run", "relation"):
            if key not in table and not (swept and key == "stat"):
                raise ClaimError(f"{cw}: missing key {key!r}")
        cid = _string(cw, "id", table["id"])
        cw = f"{where} [[claims]] {cid!r}"
        if cid in {c.id for c in claims}:
            raise ClaimError(f"{cw}: key 'id' repeats {cid!r}; ids are unique in a spec")
        quantity = _string(cw, "quantity", table["quantity"], {**QUANTITIES, **SWEEP_QUANTITIES})
        if swept:
            if table.get("stat", "final") != "final" or "window" in table or "layer" in table:
                raise ClaimError(f"{cw}: quantity {quantity!r} has one value per seed: stat 'final' only, no "
                                 f"'window' or 'layer'")
            if not sweeps:
                raise ClaimError(f"{cw}: quantity {quantity!r} needs a learning-rate sweep (lr = [..]); the spec "
                                 f"sweeps none")
            table = dict(table, stat="final")
        kind, needs_layer, _ = QUANTITIES.get(quantity, (None, False, ""))
        if kind is not None and kind not in probe_kinds:
            raise ClaimError(f"{cw}: key 'quantity' {quantity!r} needs a [[probes]] table of kind {kind!r}; "
                             f"the spec records: {sorted(probe_kinds) or 'no probes'}")
        layer = table.get("layer")
        if needs_layer:
            if isinstance(layer, bool) or not isinstance(layer, int) or layer < 0:
                raise ClaimError(f"{cw}: key 'layer' expects a non-negative index into the {kind} probe's layers "
                                 f"(quantity {quantity!r}), got {layer!r}")
        elif layer is not None:
            layered = [q for q, v in QUANTITIES.items() if v[1]]
            raise ClaimError(f"{cw}: key 'layer' applies only to quantities {layered}, not {quantity!r}")
        stat = _string(cw, "stat", table["stat"], STATS)
        names = sweeps if swept else labels
        if swept and isinstance(table["run"], str) and table["run"] in labels:
            raise ClaimError(f"{cw}: key 'run' names one run {table['run']!r}; quantity {quantity!r} takes a "
                             f"learning-rate sweep: one of {sorted(sweeps)}")
        if not swept and isinstance(table["run"], str) and table["run"] in sweeps:
            raise ClaimError(f"{cw}: key 'run' names the learning-rate sweep {table['run']!r}; quantity "
                             f"{quantity!r} takes one of its runs, e.g. '{table['run']} @ lr=...'")
        run = _string(cw, "run", table["run"], names)
        relation = _string(cw, "relation", table["relation"], RELATIONS)
        than = table.get("than")
        if than is not None:
            than = _string(cw, "than", than, names)
            if than == run:
                raise ClaimError(f"{cw}: key 'than' names the same run as 'run' ({run!r})")
        level = table.get("level")
        level = None if level is None else _number(cw, "level", level)
        if than is None and level is None:
            raise ClaimError(f"{cw}: missing key 'than' (a run to compare with) or 'level' (a threshold)")
        if than is not None and level is not None and not stat.startswith("fraction"):
            raise ClaimError(f"{cw}: give either 'than' or 'level', not both (level only sets the fraction_* cut)")
        if stat.startswith("fraction") and level is None:
            raise ClaimError(f"{cw}: key 'level' is needed by stat {stat!r}")
        if stat.startswith("fraction") and than is None:
            raise ClaimError(f"{cw}: stat {stat!r} compares runs; give 'than' (a threshold check uses 'level')")
        window = table.get("window", [0.0, 1.0])
        if (not isinstance(window, list) or len(window) != 2
                or not all(isinstance(w, (int, float)) and not isinstance(w, bool) for w in window)
                or not 0.0 <= window[0] < window[1] <= 1.0):
            raise ClaimError(f"{cw}: key 'window' expects [a, b] with 0 <= a < b <= 1 (fractions of training), "
                             f"got {window!r}")
        factor = _number(cw, "factor", table.get("factor", 1.0))
        margin = _number(cw, "margin", table.get("margin", 0.0))
        if than is None and ("factor" in table or "margin" in table):
            raise ClaimError(f"{cw}: keys 'factor' and 'margin' apply only to a comparison with 'than'")
        if relation == "within" and (than is None or not margin > 0):
            raise ClaimError(f"{cw}: relation 'within' compares with 'than' up to a positive 'margin' "
                             f"(|run - factor x than| <= margin), got than={than!r}, margin={margin!r}")
        if_diverged = _string(cw, "if_diverged", table.get("if_diverged", "null"), ("null", "holds"))
        text = _string(cw, "text", table["text"])
        notes = table.get("notes", {})
        if not isinstance(notes, dict) or not all(k in _NOTE_PROFILES and isinstance(v, str) and v
                                                  for k, v in notes.items()):
            raise ClaimError(f"{cw}: key 'notes' expects a table {{profile = \"text\"}} with profiles in "
                             f"{list(_NOTE_PROFILES)}, got {notes!r}")
        claims.append(Claim(notes=tuple(sorted(notes.items())),
                            id=cid, text=text, quantity=quantity, stat=stat, run=run, relation=relation, than=than,
                            layer=layer, window=(float(window[0]), float(window[1])), factor=factor,
                            margin=margin, level=level, if_diverged=if_diverged))
    return claims


# ----------------------------------------------------------------------------------------------------------------
# Evaluation on stored runs
# ----------------------------------------------------------------------------------------------------------------
class Unavailable(Exception):
    """A run cannot answer a check (missing, unfinished, diverged, or without the quantity): the check is null."""


def _layer_name(run: RunResult, probe: str, layer: int) -> str:
    names = run.probe_meta.get(probe, {}).get("layers")
    if not names:
        raise Unavailable(f"run {run.label!r} records no layer names for probe {probe!r}")
    if not 0 <= layer < len(names):
        raise Unavailable(f"run {run.label!r}: layer index {layer} out of range; {probe} layers: {names}")
    return names[layer]


def quantity_series(run: RunResult, quantity: str, layer: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of a claim quantity in one run, finite values only; Unavailable when it is not recorded."""
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
            elif quantity == "explosion_rate":
                values = run.probe(kind, "rate").astype(np.float64).reshape(-1)
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


def statistic(run: RunResult, claim: Claim) -> float:
    """The claim's statistic of its quantity over its window, in one run."""
    steps, values = quantity_series(run, claim.quantity, claim.layer)
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
        }


def _load(root: Path, run_spec, cache: dict) -> RunResult:
    path = Path(root) / run_spec.run_id
    if path not in cache:
        if not (path / "config.json").exists():
            raise Unavailable(f"run {run_spec.label!r} (seed {run_spec.settings['seed']}) has no results at {path}")
        cache[path] = load_run(path, label=run_spec.label)
    return cache[path]


def _evaluate_seed(claim: Claim, runs: dict[str, Any], root: Path, cache: dict, seed: int) -> SeedOutcome:
    labels = [claim.run] + ([claim.than] if claim.than else [])
    values: dict[str, float | None] = {label: None for label in labels}
    try:
        loaded = {}
        for label in labels:
            if label not in runs:
                raise Unavailable(f"no run {label!r} with seed {seed}")
            result = _load(root, runs[label], cache)
            loaded[label] = result
            if result.status == "diverged":
                if claim.if_diverged == "holds" and claim.than is None and label == claim.run:
                    return SeedOutcome(seed, True, values, f"{label!r} diverged (counts as failing to train)")
                raise Unavailable(f"{label!r} diverged")
            if result.status != "finished":
                raise Unavailable(f"{label!r} is {result.status}, not finished")
        for label in labels:
            values[label] = statistic(loaded[label], claim)
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
    """Every claim of a spec (smoothnorm.spec.Spec) on its stored runs under `root`, per seed."""
    by_seed: dict[int, dict[str, Any]] = {}
    for run in spec.runs:
        by_seed.setdefault(int(run.settings["seed"]), {})[run.label] = run
    rates: dict[int, dict[str, Any]] = {}
    if any(c.quantity in SWEEP_QUANTITIES for c in spec.claims):
        from smoothnorm.sweeps import stable_rates

        for rate in stable_rates(spec, root):
            rates.setdefault(rate.seed, {})[rate.group] = rate
    cache: dict = {}
    results = []
    for claim in spec.claims:
        result = ClaimResult(spec.name, claim)
        for seed in sorted(by_seed):
            if claim.quantity in SWEEP_QUANTITIES:
                result.outcomes.append(_evaluate_sweep_seed(claim, rates.get(seed, {}), seed))
            else:
                result.outcomes.append(_evaluate_seed(claim, by_seed[seed], Path(root), cache, seed))
        results.append(result)
    return results


# ----------------------------------------------------------------------------------------------------------------
# Reports
# ----------------------------------------------------------------------------------------------------------------
def _fmt(value: float | None) -> str:
    if value is None:
        return "n/a"
    if not math.isfinite(value):
        return "inf" if value > 0 else ("-inf" if value < 0 else "nan")
    return f"{value:.3g}"


def _seed_text(seed: int, holds: bool | None, values: dict, note: str) -> str:
    shown = " vs ".join(_fmt(v) for v in values.values())
    mark = {True: "yes", False: "no", None: "null"}[holds]
    return f"s{seed}: {shown} {mark}" + (f" ({note})" if note else "")


def verdict_table(results: list[ClaimResult]) -> str:
    """Plain-text verdicts, one block per claim: the paper's words, the check, values per seed, the verdict."""
    lines = []
    for r in results:
        lines.append(f"[{r.spec}:{r.claim.id}] {r.verdict()}")
        lines.append(f"    paper: {r.claim.text}")
        lines.append(f"    check: {r.claim.describe()}")
        for o in r.outcomes:
            lines.append("    " + _seed_text(o.seed, o.holds, o.values, o.note))
    return "\n".join(lines)


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_table(records: list[dict], *, figures_link: str = "") -> str:
    """A Markdown table of verdicts from claims.json records: figure (linked), claim, check, values, verdict.

    Its first line says which profile and seeds the records come from.
    """
    profiles = sorted({str(r.get("profile", "?")) for r in records})
    by_seeds: dict[tuple, int] = {}
    for r in records:
        by_seeds[tuple(r["seeds"])] = by_seeds.get(tuple(r["seeds"]), 0) + 1
    held = sum(1 for r in records if _majority(r["holds"]))
    counts = "; ".join(f"{len(k)} seed{'s' if len(k) != 1 else ''} {list(k)} for {n} claim{'s' if n != 1 else ''}"
                       for k, n in sorted(by_seeds.items(), key=lambda kv: (-len(kv[0]), kv[0])))
    rows = [
        f"Profile `{', '.join(profiles)}`: {counts}. {held} of {len(records)} claims hold in a majority of their "
        "seeds. Generated from `claims.json` by `smoothnorm claims --markdown`; values per seed: the claim's run, "
        "then the run it is compared with (n/a: not measured, see the note).",
        "",
        "| Figure | Paper's claim | Check | Values per seed | Verdict |",
        "|---|---|---|---|---|",
    ]
    for r in records:
        fig = f"[{r['spec']}]({figures_link}{r['spec']}.png)"
        notes = r.get("notes") or [""] * len(r["seeds"])
        values = "<br>".join(_seed_text(s, h, v, n) for s, h, v, n in zip(r["seeds"], r["holds"], r["values"], notes))
        verdict = f"**{r['verdict']}**" + (f"<br>Why, measured: {r['note']}" if r.get("note") else "")
        rows.append(f"| {fig} | {_md_cell(r['text'])} | {_md_cell(r['check'])} | {_md_cell(values)} | "
                    f"{_md_cell(verdict)} |")
    return "\n".join(rows) + "\n"


def _majority(holds: list) -> bool:
    """True when the check holds in more than half of the seeds (nulls count against it)."""
    return bool(holds) and 2 * sum(h is True for h in holds) > len(holds)


def write_claims(results: list[ClaimResult], out_dir: str | os.PathLike, *, profile: str,
                 keep_others: bool = True) -> tuple[Path, Path]:
    """Write out_dir/CLAIMS.md and out_dir/claims.json atomically; the same runs give the same bytes.

    keep_others: keep the records of other specs already in claims.json for the same profile (so `run fig1`
    updates fig1's rows and leaves the rest of a `reproduce`); records are ordered by spec name.
    """
    out = Path(out_dir)
    records = [dict(r.as_json(), profile=profile, **({"note": r.claim.note(profile)} if r.claim.note(profile)
                                                       else {})) for r in results]
    new_specs = {r["spec"] for r in records}
    old_path = out / "claims.json"
    if keep_others and old_path.exists():
        try:
            old = read_claims(old_path)
        except (OSError, ValueError):
            old = []
        records += [r for r in old if isinstance(r, dict) and r.get("profile") == profile
                    and r.get("spec") not in new_specs]
    order = {spec: i for i, spec in enumerate(sorted({r["spec"] for r in records}, key=_spec_order))}
    records.sort(key=lambda r: order[r["spec"]])  # stable: a spec's claims keep their order
    md = ["# Claims of the paper checked on the runs", "",
          "Written by `smoothnorm reproduce`, `run` and `claims`; do not edit by hand. Each claim is a check the "
          "code evaluates on the stored runs (vocabulary: smoothnorm/claims.py); a seed is null when a run it "
          "reads diverged, is missing or lacks the quantity.", "", markdown_table(records)]
    md_path, json_path = out / "CLAIMS.md", out / "claims.json"
    write_json(json_path, records)
    with atomic_open(md_path, "w") as f:
        f.write("\n".join(md))
    return md_path, json_path


README_BEGIN = "<!-- claims table: generated by `smoothnorm claims --readme README.md`; do not edit -->"
README_END = "<!-- end claims table -->"


def update_readme(path: str | os.PathLike, table: str) -> Path:
    """Replace the text between README_BEGIN and README_END in a Markdown file with `table`, atomically."""
    path = Path(path)
    text = path.read_text()
    if README_BEGIN not in text or README_END not in text:
        raise ValueError(f"{path}: expected the markers {README_BEGIN!r} and {README_END!r} around the claims table")
    head, rest = text.split(README_BEGIN, 1)
    _, tail = rest.split(README_END, 1)
    with atomic_open(path, "w") as f:
        f.write(f"{head}{README_BEGIN}\n{table.rstrip()}\n{README_END}{tail}")
    return path


def _spec_order(name: str) -> tuple:
    """fig2 before fig10: figure number, then the rest of the name."""
    digits = "".join(ch for ch in name[3:6] if ch.isdigit()) if name.startswith("fig") else ""
    return (int(digits) if digits else 10**6, name)


def read_claims(path: str | os.PathLike) -> list[dict]:
    """claims.json as written by `write_claims`."""
    with open(path) as f:
        data = json.load(f)
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of claims, got {type(data).__name__}")
    return data
