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
quantity; it holds or fails otherwise. The vocabulary is described here and lives in smoothnorm.claims_parse, whose
`parse_claims` smoothnorm.spec calls to validate claims with the spec, before any work; `evaluate_spec`
(smoothnorm.claims_eval) reads runs through smoothnorm.results; `write_claims` (smoothnorm.claims_report) writes
figures/CLAIMS.md and figures/claims.json atomically. This module re-exports the names of all three.
"""

from __future__ import annotations

from smoothnorm.claims_eval import (  # noqa: F401 (re-exported)
    ClaimResult,
    SeedOutcome,
    Unavailable,
    _compare,
    _evaluate_seed,
    _evaluate_sweep_seed,
    _layer_name,
    _load,
    _loss_derived,
    _outcome,
    evaluate_spec,
    quantity_series,
    statistic,
)
from smoothnorm.claims_parse import (  # noqa: F401 (re-exported)
    _CLAIM_KEYS,
    _NOTE_PROFILES,
    QUANTITIES,
    RELATIONS,
    STATS,
    SWEEP_QUANTITIES,
    Claim,
    ClaimError,
    _number,
    _string,
    parse_claims,
)
from smoothnorm.claims_report import (  # noqa: F401 (re-exported)
    README_BEGIN,
    README_END,
    _fmt,
    _majority,
    _md_cell,
    _seed_text,
    _spec_order,
    markdown_table,
    read_claims,
    update_readme,
    verdict_table,
    write_claims,
)
