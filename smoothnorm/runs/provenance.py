"""Provenance of stored runs: which code, threads and machine produced them, read back from their run folders.

A run folder records the environment of the process that created it (config.json's `environment`) and of every
process that trained it since (one line per attempt in attempts.jsonl, from a resume or a takeover). Reports built
from runs (claims.json, CLAIMS.md, figures) carry this provenance and warn when the runs they summarize come from
different commits or from a modified tree. A run's identity stays a function of its settings: the code version is
recorded, never hashed into the run id.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

from smoothnorm.runs.store import RunFileError, read_config, read_jsonl

# Instruction-set extensions named in a machine's description (the ones our kernels and BLAS care about).
_ISA_FLAGS = ("avx512f", "avx512_bf16", "avx2", "fma", "sse4_2", "asimd", "sve")


def machine() -> dict:
    """{"cpu": model name, "isa": the extensions of _ISA_FLAGS this CPU has, space-separated}."""
    cpu, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key in ("model name", "Model", "Hardware") and value.strip():
                    cpu = value.strip()
                elif key in ("flags", "Features"):
                    flags = set(value.split())
                if cpu and flags and key == "":
                    break
    except OSError:
        pass
    return {"cpu": cpu, "isa": " ".join(f for f in _ISA_FLAGS if f in flags)}


def _short(commit: str | None) -> str:
    return commit[:10] if commit else "unknown"


def run_provenance(path: str | os.PathLike) -> dict:
    """One run's provenance: {"run", "smoothnorm", "commits" (every commit that trained it, in order), "dirty" (True
    if any of them ran on a modified tree, None if unknown), "threads", "cpu", "isa"}."""
    path = Path(path)
    config = read_config(path / "config.json")
    envs = [config.get("environment") or {}]
    if (path / "attempts.jsonl").exists():
        try:
            envs += [a["environment"] for a in read_jsonl(path / "attempts.jsonl")
                     if isinstance(a.get("environment"), dict)]
        except (RunFileError, KeyError, TypeError):
            pass
    commits = list(dict.fromkeys(e.get("git_commit") for e in envs if "git_commit" in e))
    dirty_flags = [e.get("git_dirty") for e in envs if "git_commit" in e]
    return {
        "run": config.get("run_id", path.name),
        "smoothnorm": envs[0].get("smoothnorm"),
        "commits": commits or [None],
        "dirty": True if any(d is True for d in dirty_flags) else (None if None in dirty_flags or not dirty_flags
                                                                  else False),
        "threads": sorted({e["numba_threads"] for e in envs if isinstance(e.get("numba_threads"), int)}),
        "cpu": envs[0].get("cpu"),
        "isa": envs[0].get("isa"),
    }


def summary_lines(provenances: list[dict]) -> list[str]:
    """One line per distinct (version, commit, tree, threads, machine), with how many runs share it."""
    groups: dict[tuple, int] = {}
    for p in provenances:
        key = (p["smoothnorm"], ", ".join(_short(c) for c in p["commits"]),
               {True: "modified tree", False: "clean tree", None: "tree unknown"}[p["dirty"]],
               "/".join(str(t) for t in p["threads"]) or "?", p["cpu"] or "CPU unknown", p["isa"] or "")
        groups[key] = groups.get(key, 0) + 1
    return [f"{n} run{'s' if n != 1 else ''}: smoothnorm {v}, commit {c}, {tree}, {t} thread(s), {cpu}"
            + (f" ({isa})" if isa else "") for (v, c, tree, t, cpu, isa), n in groups.items()]


def mixed_note(provenances: list[dict]) -> str | None:
    """A warning naming the runs when they come from different commits, a modified tree or an unknown commit;
    None when every run comes from one known commit on a clean tree."""
    provenances = list({p["run"]: p for p in provenances}.values())
    by_commit: dict[str, list[str]] = {}
    for p in provenances:
        for commit in p["commits"]:
            by_commit.setdefault(_short(commit), []).append(p["run"])
    dirty = [p["run"] for p in provenances if p["dirty"] is not False]
    parts = []
    if len(by_commit) > 1 or "unknown" in by_commit:
        parts.append(f"runs from {len(by_commit)} commits: "
                     + "; ".join(f"{c} ({', '.join(sorted(set(runs)))})" for c, runs in by_commit.items()))
    if dirty:
        parts.append(f"runs from a modified or unknown tree: {', '.join(sorted(dirty))}")
    return ("Mixed provenance: " + ". ".join(parts)) if parts else None
