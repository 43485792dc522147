"""Claim verdicts as reports: a plain-text table, the Markdown table, figures/CLAIMS.md and
figures/claims.json (`write_claims`, atomically), and the README's claims table.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

from smoothnorm.claims.evaluate import ClaimResult
from smoothnorm.data._io import atomic_open
from smoothnorm.runs.provenance import mixed_note, summary_lines
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
    settings = sorted({_settings_text(r.get("settings")) for r in records} - {""})
    rows = [
        f"Profile `{', '.join(profiles)}`"
        + (f" with {'; '.join(settings)}" if settings else "")
        + f": {counts}. {held} of {len(records)} claims hold in a majority of their "
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


def _settings_text(settings: dict | None) -> str:
    """What a record's results reflect beyond the profile: --set overrides and another runs folder."""
    if not settings:
        return ""
    parts = [f"`--set {item}`" for item in settings.get("overrides", [])]
    if settings.get("runs_root"):
        parts.append(f"runs from `{settings['runs_root']}`")
    return ", ".join(parts)


def provenance_section(records: list[dict]) -> list[str]:
    """CLAIMS.md's closing section: where the runs behind the records come from, and a warning when mixed."""
    runs = {p["run"]: p for r in records for p in r.get("provenance", [])}
    if not runs:
        return []
    lines = ["## Provenance", "", f"The {len(runs)} runs these claims read:", ""]
    lines += [f"- {line}" for line in summary_lines(list(runs.values()))]
    note = mixed_note(list(runs.values()))
    if note:
        lines += ["", f"**{note}.**"]
    return lines + [""]


def _majority(holds: list) -> bool:
    """True when the check holds in more than half of the seeds (nulls count against it)."""
    return bool(holds) and 2 * sum(h is True for h in holds) > len(holds)


def claims_paths(out_dir: str | os.PathLike, variant: str = "") -> tuple[Path, Path]:
    """(CLAIMS.md, claims.json) in out_dir, or CLAIMS.<variant>.md and claims.<variant>.json for a variant."""
    out, dot = Path(out_dir), f".{variant}" if variant else ""
    return out / f"CLAIMS{dot}.md", out / f"claims{dot}.json"


def variant_name(out_dir: str | os.PathLike, profile: str, overrides: list[str], runs_root: str | None,
                 seeds: dict[str, set[int]]) -> str:
    """'' when results may replace the published entries in out_dir, else a name recording what differs from
    them: --set overrides ("set-steps-8000"), another runs folder ("runs-scratch"), or fewer seeds for a spec than
    its published claims ("seeds-0"), joined by "+". seeds: {spec name: the seeds of its runs}."""
    clean = lambda text: re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")
    parts = [f"set-{clean(item)}" for item in overrides]
    if runs_root:
        parts.append(f"runs-{clean(Path(runs_root).name)}")
    published: dict[str, set] = {}
    json_path = claims_paths(out_dir)[1]
    if json_path.exists():
        try:
            for record in read_claims(json_path):
                if record.get("profile") == profile:
                    published.setdefault(record["spec"], set()).update(record.get("seeds", []))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            published = {}
    for name, have in seeds.items():
        if name in published and not have >= published[name]:
            parts.append("seeds-" + "-".join(str(seed) for seed in sorted(have)))
            break
    return "+".join(parts)


def write_claims(results: list[ClaimResult], out_dir: str | os.PathLike, *, profile: str,
                 keep_others: bool = True, variant: str = "", settings: dict | None = None) -> tuple[Path, Path]:
    """Write out_dir/CLAIMS.md and out_dir/claims.json atomically; the same runs give the same bytes.

    keep_others: keep the records of other specs already in claims.json for the same profile (so `run fig1`
    updates fig1's rows and leaves the rest of a `reproduce`); records are ordered by spec name.
    variant: write CLAIMS.<variant>.md and claims.<variant>.json instead (results that must not replace the
    published ones); settings: what the results reflect beyond the profile ({"overrides": [...], "runs_root":
    ...}), recorded in every record and said in the table.
    """
    records = [dict(r.as_json(), profile=profile, **({"note": r.claim.note(profile)} if r.claim.note(profile)
                                                       else {}), **({"settings": settings} if settings else {}))
               for r in results]
    new_specs = {r["spec"] for r in records}
    md_path, json_path = claims_paths(out_dir, variant)
    old_path = json_path
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
          "code evaluates on the stored runs (vocabulary: smoothnorm/claims/parse.py); a seed is null when a run "
          "it reads diverged, is missing or lacks the quantity.", "", markdown_table(records),
          *provenance_section(records)]
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
