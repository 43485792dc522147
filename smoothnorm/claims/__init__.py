"""Claims: the paper's findings stated as checks that the code evaluates on stored runs, over seeds.

`parse` holds the vocabulary (`QUANTITIES`, `STATS`, `RELATIONS`) and `parse_claims`, which the spec loader calls
to validate a spec's `[[claims]]` before any work; `evaluate` reads runs through smoothnorm.runs.store and
decides each claim per seed (`evaluate_spec`); `report` writes figures/CLAIMS.md and figures/claims.json
atomically and updates the README's table. The vocabulary itself is described in `parse`'s docstring and in
docs/PROTOCOL.md. Claims import from smoothnorm.runs.
"""
