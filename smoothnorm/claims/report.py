"""Claim verdicts as reports: a plain-text table, the Markdown table, figures/CLAIMS.md and
figures/claims.json (`write_claims`, atomically), and the README's claims table.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from smoothnorm.claims.evaluate import ClaimResult
from smoothnorm.data._io import atomic_open
from smoothnorm.runs.spec import spec_order
from smoothnorm.runs.store import write_json


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
    order = {spec: i for i, spec in enumerate(sorted({r["spec"] for r in records}, key=spec_order))}
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


def read_claims(path: str | os.PathLike) -> list[dict]:
    """claims.json as written by `write_claims`."""
    with open(path) as f:
        data = json.load(f)
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of claims, got {type(data).__name__}")
    return data
