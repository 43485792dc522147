"""The claim vocabulary (QUANTITIES, SWEEP_QUANTITIES, STATS, RELATIONS) and the validation of a spec's
`[[claims]]` tables into Claim objects (`parse_claims`, called by smoothnorm.runs.spec). The keys are described in
docs/PROTOCOL.md ("Claims") and below.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

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
    # Hessian outliers (Ghorbani et al. 2019), from the spectrum probe at its listed steps.
    "outlier_ratio": ("spectrum", False, "lambda_1 / lambda_k of the training-batch Hessian (k: the probe's k)"),
    "gradient_share": ("spectrum", False, "share of the gradient's squared norm in the top-k Hessian eigenspace"),
    "explosion_rate": ("gradient_explosion", False, "growth of ||dL/dW_l||^2 per layer toward the input, "
                       "exp(-slope) of the log-linear fit (Yang et al. 2019)"),
    # Li et al. 2018's filter-normalized loss surfaces, from the surface probe's 2-D grid at its listed steps.
    "surface_range": ("surface", False, "max - min of the loss over the 2-D filter-normalized grid around w (inf "
                      "when a grid point diverged)"),
    "surface_curvature": ("surface", False, "largest eigenvalue of the 2x2 Hessian of the 2-D surface at w, from "
                          "central second differences on the grid"),
}
# quantity -> what it is: one value per sweep group and seed (smoothnorm.runs.sweeps)
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
                 sweeps: set[str] = frozenset(), plugins: set[str] = frozenset()) -> list[Claim]:
    """Validate a spec's `[[claims]]` array against its run labels, probe kinds and learning-rate sweep groups
    (`sweeps`: the plain labels of swept runs); errors name file and key.

    plugins: quantities that name plug-ins ("./file.py:name", "package.module:name" or an entry point's name in
    `smoothnorm.quantities`), whose files the spec loader found: one value per step of one run, like a metric; their
    `layer` is optional and handed to the plug-in as it is."""
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
        quantity, known = table["quantity"], {**QUANTITIES, **SWEEP_QUANTITIES}
        plugin = isinstance(quantity, str) and quantity in plugins
        if not (plugin or isinstance(quantity, str) and quantity in known):
            raise ClaimError(f"{cw}: key 'quantity' expects one of {sorted(known)} or a plug-in quantity "
                             f"'package.module:name' / './file.py:name', got {quantity!r:.80}")
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
        if plugin:
            if layer is not None and (isinstance(layer, bool) or not isinstance(layer, int) or layer < 0):
                raise ClaimError(f"{cw}: key 'layer' expects a non-negative integer (handed to plug-in quantity "
                                 f"{quantity!r}), got {layer!r}")
        elif needs_layer:
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
