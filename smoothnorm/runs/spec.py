"""Experiment specs (TOML): loading, profiles, seeds and learning-rate sweeps, runs and their identity.

A spec (`experiments/<name>.toml`) has
- `title`, optional `description`;
- `[base]`: settings shared by its runs (keys and defaults in `BASE_KEYS`);
- `[[runs]]`: each a `label` plus any base key it overrides (a norm, a learning rate, ...);
- `[[probes]]`: measurements recorded during every run of the spec (`kind` in `PROBE_KEYS`, `every`, options);
- `[figure]` with `[[figure.panels]]`: the panels drawn from the runs (smoothnorm.plots);
- `[profile.<name>]`: base keys that a profile (`quick`, `paper`, `tiny`) overrides;
- `seeds = [0, 1, 2]` in [base] or a profile (or `--seeds N`: seeds base seed .. base seed + N - 1): every run
  once per seed, everything else equal (the seed is part of a run's identity, so seed 0's runs are the same runs);
- `lr = [1e-4, 3e-4, 1e-3]` (a list) in [base], a profile, a run or `--set lr=[...]`: a learning-rate sweep, every
  such run once per learning rate (and per seed), labelled "<label> @ lr=<lr:g>" (`sweep_label`); the run keeps its
  plain label as its sweep group (figure panels and sweep claims name the group); `[sweep]` records the criterion
  of "trains" for the largest-stable-learning-rate summary (smoothnorm.runs.sweeps);
- `[[claims]]`: the paper's findings as checks on the runs (vocabulary and evaluation: smoothnorm.claims).
A norm, model, probe kind, panel kind or claim quantity may name the user's own code (smoothnorm.runs.plugins): a
plug-in's file is found and hashed here, never imported; a norm's, model's or probe's reference and hash join its
runs' identity (`settings["plugins"]`), a panel's or quantity's only `Spec.plugins`.
Resolution order: base, then the profile, then `--set key=value` overrides, then each run's own keys (a run's
explicit setting wins: "lr = 0.5" stays 0.5 in every profile). Everything is validated before any work.

The schema (BASE_KEYS, PROBE_KEYS, SWEEP_KEYS) and the checks of values live in smoothnorm.runs.schema.

A run is identified by its training settings (not its label or probes), so a run needed by several specs runs once;
its probes are the union of what those specs ask for.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from smoothnorm.runs.plugins import PluginError, identity, is_plugin, is_reference, plugin_name, resolve
from smoothnorm.runs.schema import (
    _LATER_KEYS,
    _LATER_PROBE_KEYS,
    _NON_IDENTITY,
    _PROBE_COMMON,
    BASE_KEYS,
    NORM_OPTIONS,
    PANEL_KINDS,
    PLUGIN_KEYS,
    PROBE_KEYS,
    PROFILES,
    SWEEP_KEYS,
    TOP_KEYS,
    SpecError,
    _array_of_tables,
    _check_lrs,
    _check_options,
    _check_probe,
    _check_profile_probes,
    _check_settings,
    _check_surface,
    _check_table,
    _check_value,
    _parse_set,
    _pop_lrs,
    _pop_seeds,
    _validate_figure,
    resolve_probe_steps,
    sweep_label,
)


@dataclass
class ProbeSpec:
    kind: str
    every: int
    start: int
    options: dict
    # A plug-in probe (kind names the user's class): its resolved reference (smoothnorm.runs.plugins.resolve) and
    # where the spec names it; None for the built-in kinds.
    plugin: dict | None = None

    @property
    def name(self) -> str:
        """What the probe records under in probes.npz: its kind, or a plug-in's name after the colon."""
        return self.kind if self.plugin is None else plugin_name(self.kind)

    def identity(self) -> dict:
        later = _LATER_PROBE_KEYS.get(self.kind, ())
        options = {k: v for k, v in self.options.items()
                   if not (k in later and v == PROBE_KEYS[self.kind][k][1])}
        return {"kind": self.kind, "every": self.every, "start": self.start, **options}


@dataclass
class RunSpec:
    label: str
    settings: dict  # fully resolved base keys
    probes: list[ProbeSpec] = field(default_factory=list)
    sweep: str | None = None  # the plain label of its learning-rate sweep (None: not swept)

    @property
    def identity(self) -> dict:
        return _identity(self.settings)

    @property
    def run_id(self) -> str:
        return run_id_for(self.settings)


@dataclass
class Spec:
    name: str
    path: Path
    title: str
    description: str
    profile: str
    runs: list[RunSpec]
    figure: dict
    claims: list = field(default_factory=list)  # smoothnorm.claims.Claim
    seeds: list[int] = field(default_factory=list)  # the seeds runs were expanded over ([] when not expanded)
    sweeps: dict[str, list[str]] = field(default_factory=dict)  # sweep group -> its runs' labels, lr ascending
    sweep: dict = field(default_factory=lambda: {k: v[1] for k, v in SWEEP_KEYS.items()})  # the [sweep] criterion
    # Plug-in panel kinds and claim quantities, resolved (not imported): {"panel": {kind: plugin}, "quantity":
    # {quantity: plugin}}; `plot` and `claims` import them (smoothnorm.runs.plugins.load). Probe, norm and model
    # plug-ins are in the runs' settings and probes.
    plugins: dict[str, dict[str, dict]] = field(default_factory=dict)


def _identity(settings: dict) -> dict:
    return {k: v for k, v in settings.items()
            if k not in _NON_IDENTITY and not (k in _LATER_KEYS and v == BASE_KEYS[k][1])}


def run_id_for(settings: dict) -> str:
    digest = hashlib.sha1(json.dumps(_identity(settings), sort_keys=True).encode()).hexdigest()[:10]
    plugin_name = lambda value: value.rpartition(":")[2].lower() if is_reference(value) else value  # noqa: E731
    if "model" in settings.get("plugins", {}):
        arch = plugin_name(settings["model"])
    else:
        arch = settings["arch"] if settings["model"] == "vgg" else f"{settings['model']}{settings['depth']}"
    norm = plugin_name(settings["norm"]) if "norm" in settings.get("plugins", {}) else settings["norm"]
    return f"{arch}-{norm}-lr{settings['lr']:g}-s{settings['seed']}-{digest}"


def _resolve_plugins(where: str, settings: dict, spec_folder: Path) -> None:
    """Plug-ins' source files, found and hashed without importing them: their references and hashes join the
    run's identity ("plugins"), their files the settings the runner imports them from ("plugin_files")."""
    builtin = {"norm": ("none", *NORM_OPTIONS), "model": BASE_KEYS["model"][2]}
    for key in PLUGIN_KEYS:
        if settings[key] in builtin[key]:
            continue
        try:
            plugin = resolve(key, settings[key], spec_folder, f"{where}: key {key!r}")
        except PluginError as err:
            raise SpecError(str(err)) from None
        settings.setdefault("plugins", {})[key] = identity(plugin)
        settings.setdefault("plugin_files", {})[key] = {k: plugin[k] for k in ("ref", "file", "target", "name",
                                                                                 "sha256")}




# Keys of a plug-in probe's [[probes]] table that the spec loader reads; the others are the probe's own options.
_PLUGIN_PROBE_COMMON = {k: v for k, v in _PROBE_COMMON.items() if k != "kind"}


def _plugin_probe(where: str, table: dict, spec_folder: Path, overrides: dict) -> tuple:
    """A [[probes]] table whose kind names a plug-in probe, found and hashed without importing it:
    (where, kind, every, start, options, plugin). Its options are the table's other keys with the profile's
    `overrides` ([profile.<name>.probes."<kind>"]), given to the probe's class as keywords when the run is built
    (which checks them)."""
    kind = table["kind"]
    try:
        plugin = resolve("probe", kind, spec_folder, f"{where}: key 'kind'")
    except PluginError as err:
        raise SpecError(str(err)) from None
    common = _check_table(where, {k: v for k, v in table.items() if k in _PLUGIN_PROBE_COMMON},
                          _PLUGIN_PROBE_COMMON)
    _check_probe(where, common)
    options = {k: copy.deepcopy(v) for k, v in table.items() if k not in _PROBE_COMMON}
    options.update(copy.deepcopy(overrides))
    if "name" in options:
        raise SpecError(f"{where}: key 'name' is not a probe option: a plug-in probe records under the name after "
                        f"the colon of its kind ({plugin_name(kind)!r})")
    try:
        json.dumps(options)
    except (TypeError, ValueError) as err:
        raise SpecError(f"{where}: options of plug-in probe {kind!r} must be numbers, strings, booleans, arrays or "
                        f"tables (the run's config records them): {err}") from None
    plugin = dict(plugin, where=f"{where}: key 'kind' = {kind!r}")
    return where, kind, common.get("every"), common.get("start", 0), options, plugin


def _resolve_named(kind: str, where: str, value, spec_folder: Path, builtin) -> dict | None:
    """A panel kind or claim quantity that names a plug-in, found and hashed without importing it; None for a
    built-in name or anything else (which the checks of the figure and the claims then report)."""
    if not isinstance(value, str) or value in builtin or not is_plugin(kind, value):
        return None
    try:
        return dict(resolve(kind, value, spec_folder, where), where=f"{where} = {value!r}")
    except PluginError as err:
        raise SpecError(str(err)) from None


def load_spec(path: str | os.PathLike, profile: str = "quick", overrides: list[str] | tuple = (),
              seeds: int | None = None) -> Spec:
    """Read, resolve and validate a spec for a profile. Raises SpecError naming the file and the key.

    seeds: `--seeds N`: run every run for seeds base seed .. base seed + N - 1 (overrides the spec's `seeds`).
    """
    path = Path(path)
    if not path.exists():
        raise SpecError(f"{path}: no such spec file")
    try:
        raw = tomllib.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as err:
        raise SpecError(f"{path}: not UTF-8 text ({err}); TOML files are UTF-8") from err
    except tomllib.TOMLDecodeError as err:
        raise SpecError(f"{path}: invalid TOML: {err}") from err
    except RecursionError as err:
        raise SpecError(f"{path}: invalid TOML: nested too deeply") from err
    where = str(path)
    unknown = sorted(set(raw) - set(TOP_KEYS))
    if unknown:
        raise SpecError(f"{where}: unknown key {unknown[0]!r}; expected keys: {', '.join(TOP_KEYS)}")
    if profile not in PROFILES:
        raise SpecError(f"profile: expected one of {list(PROFILES)}, got {profile!r}")
    for key in ("title", "description"):
        if key in raw and not isinstance(raw[key], str):
            raise SpecError(f"{where}: key {key!r} expects a string, got {type(raw[key]).__name__}")
    schema = {k: v for k, v in BASE_KEYS.items()}
    base = {k: copy.deepcopy(v[1]) for k, v in BASE_KEYS.items()}
    spec_seeds, base_raw = _pop_seeds(f"{where} [base]", raw.get("base", {}))
    # A learning-rate sweep: lr = [..] in [base], then a profile's lr (a list or a number) replaces it.
    spec_lrs, base_raw = _pop_lrs(f"{where} [base]", base_raw)
    base.update(_check_table(f"{where} [base]", base_raw, schema))
    profiles = raw.get("profile", {})
    if not isinstance(profiles, dict):
        raise SpecError(f"{where}: key 'profile' expects tables [profile.<name>]")
    profile_probes: dict[str, dict] = {}
    checked_profiles = {}
    for name in list(profiles):
        if name not in PROFILES:
            raise SpecError(f"{where}: unknown profile {name!r} in [profile.{name}]; expected one of {list(PROFILES)}")
        profile_seeds, table = _pop_seeds(f"{where} [profile.{name}]", profiles[name])
        profile_lrs, table = _pop_lrs(f"{where} [profile.{name}]", table)
        # [profile.<name>.probes.<kind>]: probe options a profile overrides (e.g. fewer Lanczos steps in tiny).
        table = dict(table) if isinstance(table, dict) else table
        overrides_of_probes = table.pop("probes", {}) if isinstance(table, dict) else {}
        checked_profiles[name] = _check_table(f"{where} [profile.{name}]", table, schema)
        if name == profile:
            profile_probes = _check_profile_probes(f"{where} [profile.{name}.probes]", overrides_of_probes)
            if profile_seeds is not None:
                spec_seeds = profile_seeds
            if profile_lrs is not None or "lr" in checked_profiles[name]:
                spec_lrs = profile_lrs
    base.update(checked_profiles.get(profile, {}))  # checked values: `lr = 1` becomes 1.0, as in [base]
    if overrides:
        for item in overrides:
            key, value = _parse_set(item)
            if key not in schema:
                raise SpecError(f"--set {item!r}: unknown key {key!r}; expected keys: {', '.join(schema)}")
            if key == "lr":
                spec_lrs = _check_lrs(f"--set {item!r}", value) if isinstance(value, list) else None
                if spec_lrs is not None:
                    continue
            base[key] = _check_value(f"--set {item!r}", key, value, *schema[key])
    set_keys = {_parse_set(item)[0] for item in overrides}
    runs_raw = _array_of_tables(where, raw, "runs", "runs") or [{"label": "run"}]
    run_schema = {"label": (str, None, None), **schema}
    if seeds is not None:
        if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
            raise SpecError(f"--seeds: expected a positive integer, got {seeds!r}")
        spec_seeds = [base["seed"] + i for i in range(seeds)]
    run_seeds = spec_seeds or []
    probes = []
    probes_raw = _array_of_tables(where, raw, "probes", "probes")
    for i, p in enumerate(probes_raw):
        pw = f"{where} [[probes]] #{i + 1}"
        if not isinstance(p, dict) or "kind" not in p:
            raise SpecError(f"{pw}: missing key 'kind'")
        if isinstance(p["kind"], str) and p["kind"] not in PROBE_KEYS:
            if not is_plugin("probe", p["kind"]):
                raise SpecError(f"{pw}: key 'kind' expects one of {list(PROBE_KEYS)} or a plug-in probe "
                                f"'package.module:Name' / './file.py:Name', got {p['kind']!r:.80}")
            probes.append(_plugin_probe(pw, p, path.parent, profile_probes.get(p["kind"], {})))
            continue
        kind = _check_value(pw, "kind", p["kind"], *_PROBE_COMMON["kind"])
        table = _check_table(pw, p, {**_PROBE_COMMON, **PROBE_KEYS[kind]}, required=("kind",))
        _check_probe(pw, table)
        options = {k: copy.deepcopy(v[1]) for k, v in PROBE_KEYS[kind].items()}
        options.update({k: v for k, v in table.items() if k in PROBE_KEYS[kind]})
        options.update(profile_probes.get(kind, {}))
        if kind == "surface":
            _check_surface(pw, options)
        probes.append((pw, kind, table.get("every"), table.get("start", 0), options, None))
    kinds = [p[1] for p in probes]
    if len(set(kinds)) != len(kinds):
        raise SpecError(f"{where}: at most one [[probes]] table per kind, got {kinds}")
    names = [plugin_name(kind) if plugin else kind for _, kind, _, _, _, plugin in probes]
    for (pw, kind, *_), name in zip(probes, names):
        if names.count(name) > 1:
            raise SpecError(f"{pw}: key 'kind' {kind!r} records under {name!r}, as another probe of the spec does; "
                            "probes record under their kind (a plug-in under the name after its colon): rename one")
    # Plug-in probes change what a run records: their references and source hashes join each run's identity.
    probe_plugins = {plugin_name(kind): identity(plugin) for _, kind, _, _, _, plugin in probes if plugin}
    probe_files = {plugin_name(kind): {k: plugin[k] for k in ("ref", "file", "sha256")}
                   for _, kind, _, _, _, plugin in probes if plugin}
    runs: list[RunSpec] = []
    labels = set()
    sweeps: dict[str, list[str]] = {}
    for i, r in enumerate(runs_raw):
        rw = f"{where} [[runs]] #{i + 1}"
        run_lrs, r = _pop_lrs(rw, r)
        table = _check_table(rw, r, run_schema, required=("label",))
        if "lr" in set_keys:
            run_lrs = spec_lrs  # --set wins over a run's own keys
        elif run_lrs is None and "lr" not in table:
            run_lrs = spec_lrs
        settings = dict(base)
        settings.update({k: v for k, v in table.items() if k != "label" and k not in set_keys})
        if run_lrs is not None:
            settings["lr"] = run_lrs[0]
        _check_settings(rw, settings)
        _check_options(rw, settings)
        _resolve_plugins(rw, settings, path.parent)
        if probe_plugins:  # the identity; and, as for a norm or model, the files the run's config records
            settings.setdefault("plugins", {})["probes"] = probe_plugins
            settings.setdefault("plugin_files", {})["probes"] = probe_files
        if run_seeds and "seed" in table:
            raise SpecError(f"{rw}: key 'seed' conflicts with the spec's seeds {run_seeds}; remove one")
        group = table["label"]
        names = [(group, settings["lr"])] if run_lrs is None else [(sweep_label(group, lr), lr) for lr in run_lrs]
        if run_lrs is not None:
            if group in labels or group in sweeps:
                raise SpecError(f"{rw}: duplicate label {group!r}")
            sweeps[group] = [name for name, _ in names]
        for name, lr in names:
            if name in labels or name in sweeps:
                raise SpecError(f"{rw}: duplicate label {name!r}")
            labels.add(name)
            for seed in run_seeds or [settings["seed"]]:
                run = RunSpec(label=name, settings=dict(settings, lr=lr, seed=seed),
                              sweep=None if run_lrs is None else group)
                for pw, kind, every, start, options, plugin in probes:
                    if kind == "surface":  # its steps may count from the end: they must fall inside the run
                        resolve_probe_steps(f"{pw} (run {name!r})", kind, options, settings["steps"])
                    every = settings["probe_every"] if every is None else every
                    run.probes.append(ProbeSpec(kind, every, start, options, plugin))
                runs.append(run)
    sweep = {k: v[1] for k, v in SWEEP_KEYS.items()}
    sweep.update(_check_table(f"{where} [sweep]", raw.get("sweep", {}), SWEEP_KEYS))
    if not 0.0 <= sweep["criterion"] < 1.0:
        raise SpecError(f"{where} [sweep]: key 'criterion' expects a training accuracy in [0, 1), "
                        f"got {sweep['criterion']!r}")
    if not 0.0 < sweep["window"] <= 1.0:
        raise SpecError(f"{where} [sweep]: key 'window' expects a fraction of the steps in (0, 1], "
                        f"got {sweep['window']!r}")
    figure = raw.get("figure", {})
    if not isinstance(figure, dict):
        raise SpecError(f"{where}: key 'figure' expects a table [figure]")
    plugins: dict[str, dict[str, dict]] = {"panel": {}, "quantity": {}}
    panels = figure.get("panels", [])
    for i, panel in enumerate(panels if isinstance(panels, list) else []):
        if isinstance(panel, dict) and "kind" in panel:
            found = _resolve_named("panel", f"{where} [[figure.panels]] #{i + 1}: key 'kind'", panel["kind"],
                                   path.parent, PANEL_KINDS)
            if found:  # errors name the first panel of that kind
                plugins["panel"].setdefault(panel["kind"], found)
    _validate_figure(where, figure, labels, set(sweeps), set(plugins["panel"]))
    from smoothnorm.claims.parse import QUANTITIES, SWEEP_QUANTITIES, ClaimError, parse_claims

    claims_raw = raw.get("claims")
    for i, table in enumerate(claims_raw if isinstance(claims_raw, list) else []):
        if isinstance(table, dict) and "quantity" in table:
            found = _resolve_named("quantity", f"{where} [[claims]] #{i + 1}: key 'quantity'", table["quantity"],
                                   path.parent, {**QUANTITIES, **SWEEP_QUANTITIES})
            if found:
                plugins["quantity"].setdefault(table["quantity"], found)
    try:
        claims = parse_claims(where, claims_raw, labels, {p[1] for p in probes}, sweeps=set(sweeps),
                              plugins=set(plugins["quantity"]))
    except ClaimError as err:
        raise SpecError(str(err)) from None
    return Spec(
        name=path.stem, path=path, title=raw.get("title", path.stem), description=raw.get("description", ""),
        profile=profile, runs=runs, figure=figure, claims=claims, seeds=list(run_seeds), sweeps=sweeps,
        sweep=sweep, plugins={k: v for k, v in plugins.items() if v},
    )



# Spec groups: the paper's figures (the folder itself), the optimization study and examples (subfolders).
# `reproduce` runs the paper's figures, plus the study with --study; `run NAME` finds a spec in any group.
SPEC_GROUPS = {"paper": ".", "study": "study", "examples": "examples", "beyond": "beyond"}


def list_specs(folder: str | os.PathLike | None = None, groups: tuple[str, ...] = ("paper",)) -> list[Path]:
    """Spec files of the given groups (see SPEC_GROUPS), each group sorted by name, in the order of `groups`."""
    folder = Path(folder) if folder else default_spec_folder()
    paths: list[Path] = []
    for group in groups:
        if group not in SPEC_GROUPS:
            raise SpecError(f"groups: expected names from {list(SPEC_GROUPS)}, got {group!r}")
        paths.extend(sorted((folder / SPEC_GROUPS[group]).glob("*.toml"), key=lambda p: spec_order(p.stem)))
    return paths


def spec_order(name: str) -> tuple:
    """Sort key of spec names: the paper's figures first, in figure order (fig2 before fig10, fig3a before fig3b),
    then the other specs by name, with numbers in a name compared as numbers."""
    parts = tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name))
    return (not name.startswith("fig"), parts)


def default_spec_folder() -> Path:
    """`experiments/` in the current directory if present, else beside the installed package (source checkout)."""
    here = Path.cwd() / "experiments"
    if here.is_dir():
        return here
    return Path(__file__).resolve().parents[2] / "experiments"


# ----------------------------------------------------------------------------------------------------------------
# Runs shared between specs
# ----------------------------------------------------------------------------------------------------------------
def _probe_key(probes: list[ProbeSpec]) -> list[dict]:
    return sorted((p.identity() for p in probes), key=lambda d: d["kind"])


def merge_runs(specs: list[Spec]) -> list[RunSpec]:
    """Runs of several specs, each training configuration once, with the union of their probes."""
    merged: dict[str, RunSpec] = {}
    for spec in specs:
        for run in spec.runs:
            rid = run.run_id
            if rid not in merged:
                merged[rid] = RunSpec(run.label, dict(run.settings), list(run.probes), run.sweep)
                continue
            have = {p.kind: p for p in merged[rid].probes}
            for p in run.probes:
                if p.kind not in have:
                    merged[rid].probes.append(p)
                elif have[p.kind].identity() != p.identity():
                    raise SpecError(
                        f"{spec.path}: run {run.label!r} asks for a {p.kind!r} probe {p.identity()} but another "
                        f"spec asks for {have[p.kind].identity()} on the same run; make them equal"
                    )
    return list(merged.values())


def _union_probes(have: list[dict], probes: list[ProbeSpec]) -> list[ProbeSpec]:
    out = {d["kind"]: ProbeSpec(**_probe_from_identity(d)) for d in have}
    for p in probes:
        out[p.kind] = p
    return list(out.values())


def _probe_from_identity(d: dict) -> dict:
    d = dict(d)
    kind = d.pop("kind")
    # Options an identity leaves out (a later option at its default) come back as their defaults.
    options = {k: copy.deepcopy(v[1]) for k, v in PROBE_KEYS.get(kind, {}).items()}
    options.update(d)
    return {"kind": kind, "every": options.pop("every"), "start": options.pop("start"), "options": options}
