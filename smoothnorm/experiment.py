"""Experiment specs (TOML), profiles, run planning, run directories and resume.

A spec (`experiments/<name>.toml`) has
- `title`, optional `description`;
- `[base]`: settings shared by its runs (keys and defaults in `BASE_KEYS`);
- `[[runs]]`: each a `label` plus any base key it overrides (a norm, a learning rate, ...);
- `[[probes]]`: measurements recorded during every run of the spec (`kind` in `PROBE_KEYS`, `every`, options);
- `[figure]` with `[[figure.panels]]`: the panels drawn from the runs (smoothnorm.plots);
- `[profile.<name>]`: base keys that a profile (`quick`, `paper`, `tiny`) overrides.
Resolution order: base, then the profile, then `--set key=value` overrides, then each run's own keys (a run's
explicit setting wins: "lr = 0.5" stays 0.5 in every profile). Everything is validated before any work.

A run is identified by its training settings (not its label or probes), so a run needed by several specs runs once;
its probes are the union of what those specs ask for.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import platform
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from smoothnorm import NORMS, __version__
from smoothnorm.results import (
    RunResult,
    jsonl_line,
    load_run,
    read_jsonl,
    read_npz,
    write_json,
    write_jsonl,
    write_npz,
)

# key -> (type, default, allowed values or None). `int` keys also accept TOML integers only; `float` accepts both.
BASE_KEYS: dict[str, tuple[type, Any, tuple | None]] = {
    "model": (str, "vgg", ("vgg", "dln", "mlp")),
    "arch": (str, "vgg16", ("vgg11", "vgg13", "vgg16", "vgg19")),
    "width": (float, 1.0, None),
    "depth": (int, 25, None),
    "hidden": (int, 10, None),
    "norm": (str, "none", ("none", *NORMS)),
    "norm_options": (dict, {}, None),
    "init": (str, "glorot", ("glorot", "pytorch")),
    "data": (str, "synthetic_images", ("cifar10", "synthetic_images", "gaussian_regression")),
    "data_root": (str, "", None),
    "n_train": (int, 5000, None),
    "n_test": (int, 1000, None),
    "dim": (int, 10, None),
    "data_seed": (int, 0, None),
    "augment": (bool, False, None),
    "dtype": (str, "float32", ("float32", "float64")),
    "optimizer": (str, "sgd", ("sgd", "adagrad", "rmsprop", "adam", "adamw")),
    "optimizer_options": (dict, {}, None),
    "lr": (float, 0.1, None),
    "batch_size": (int, 128, None),
    "steps": (int, 1000, None),
    "seed": (int, 0, None),
    "eval_every": (int, 100, None),
    "eval_samples": (int, 0, None),
    "probe_every": (int, 10, None),
    "checkpoint_every": (int, 100, None),
}
# Keys that do not change what a run computes (excluded from its identity).
_NON_IDENTITY = ("label", "checkpoint_every", "probe_every")

PROBE_KEYS: dict[str, dict[str, tuple[type, Any, tuple | None]]] = {
    "landscape": {
        "preset": (str, "vgg", ("vgg", "dln")),
        "spacing": (str, "inferred", ("inferred", "linear", "geometric")),
        "num": (int, 8, None),
        "multipliers": (list, [], None),
        "beta_normalization": (str, "distance", ("distance", "eta")),
        "direction": (str, "gradient", ("gradient", "random")),
    },
    "ics": {"layers": (list, [], None)},
    "distributions": {"layers": (list, [], None), "units": (int, 4, None), "bins": (int, 40, None)},
    "hessian": {"k": (int, 1, None)},
}
_PROBE_COMMON = {"kind": (str, None, tuple(PROBE_KEYS)), "every": (int, 0, None), "start": (int, 0, None)}

PROFILES = ("tiny", "quick", "paper")
TOP_KEYS = ("title", "description", "base", "runs", "probes", "figure", "profile")


class SpecError(ValueError):
    """A spec is invalid: the message names the file and the key."""


# ----------------------------------------------------------------------------------------------------------------
# Spec loading and validation
# ----------------------------------------------------------------------------------------------------------------
def _check_value(where: str, key: str, value, kind: type, _default, allowed) -> Any:
    if kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, kind)
    if not ok:
        raise SpecError(f"{where}: key {key!r} expects {kind.__name__}, got {type(value).__name__} {value!r}")
    if allowed is not None and value not in allowed:
        raise SpecError(f"{where}: key {key!r} expects one of {list(allowed)}, got {value!r}")
    return value


def _check_table(where: str, table: dict, schema: dict, required: tuple[str, ...] = ()) -> dict:
    if not isinstance(table, dict):
        raise SpecError(f"{where}: expected a table, got {type(table).__name__}")
    unknown = sorted(set(table) - set(schema))
    if unknown:
        raise SpecError(f"{where}: unknown key {unknown[0]!r}; expected keys: {', '.join(schema)}")
    for key in required:
        if key not in table:
            raise SpecError(f"{where}: missing key {key!r}")
    return {k: _check_value(where, k, v, *schema[k]) for k, v in table.items()}


def _parse_set(item: str) -> tuple[str, Any]:
    """Parse a `--set key=value` override; the value is read as TOML (numbers, booleans, strings)."""
    if "=" not in item:
        raise SpecError(f"--set {item!r}: expected key=value")
    key, raw = item.split("=", 1)
    key = key.strip()
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key, value


@dataclass
class ProbeSpec:
    kind: str
    every: int
    start: int
    options: dict

    def identity(self) -> dict:
        return {"kind": self.kind, "every": self.every, "start": self.start, **self.options}


@dataclass
class RunSpec:
    label: str
    settings: dict  # fully resolved base keys
    probes: list[ProbeSpec] = field(default_factory=list)

    @property
    def identity(self) -> dict:
        return {k: v for k, v in self.settings.items() if k not in _NON_IDENTITY}

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


def run_id_for(settings: dict) -> str:
    identity = {k: v for k, v in settings.items() if k not in _NON_IDENTITY}
    digest = hashlib.sha1(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:10]
    arch = settings["arch"] if settings["model"] == "vgg" else f"{settings['model']}{settings['depth']}"
    return f"{arch}-{settings['norm']}-lr{settings['lr']:g}-s{settings['seed']}-{digest}"


def _check_settings(where: str, s: dict) -> None:
    for key in ("width", "lr"):
        if not (math.isfinite(s[key]) and s[key] > 0):
            raise SpecError(f"{where}: key {key!r} expects a positive number, got {s[key]!r}")
    for key in ("steps", "depth", "hidden", "n_train", "n_test", "dim"):
        if s[key] < 1:
            raise SpecError(f"{where}: key {key!r} expects a positive integer, got {s[key]!r}")
    for key in ("batch_size", "eval_every", "eval_samples", "probe_every", "checkpoint_every", "seed", "data_seed"):
        if s[key] < 0:
            raise SpecError(f"{where}: key {key!r} expects a non-negative integer, got {s[key]!r}")
    if s["model"] == "dln" and s["data"] != "gaussian_regression":
        raise SpecError(f"{where}: model 'dln' needs data 'gaussian_regression', got {s['data']!r}")
    if s["model"] != "dln" and s["data"] == "gaussian_regression":
        raise SpecError(f"{where}: data 'gaussian_regression' needs model 'dln', got {s['model']!r}")
    if s["batch_size"] > s["n_train"] and s["data"] != "cifar10":
        raise SpecError(f"{where}: key 'batch_size' ({s['batch_size']}) exceeds n_train ({s['n_train']})")


def load_spec(path: str | os.PathLike, profile: str = "quick", overrides: list[str] | tuple = ()) -> Spec:
    """Read, resolve and validate a spec for a profile. Raises SpecError naming the file and the key."""
    path = Path(path)
    if not path.exists():
        raise SpecError(f"{path}: no such spec file")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise SpecError(f"{path}: invalid TOML: {err}") from err
    where = str(path)
    unknown = sorted(set(raw) - set(TOP_KEYS))
    if unknown:
        raise SpecError(f"{where}: unknown key {unknown[0]!r}; expected keys: {', '.join(TOP_KEYS)}")
    if profile not in PROFILES:
        raise SpecError(f"profile: expected one of {list(PROFILES)}, got {profile!r}")
    schema = {k: v for k, v in BASE_KEYS.items()}
    base = {k: copy.deepcopy(v[1]) for k, v in BASE_KEYS.items()}
    base.update(_check_table(f"{where} [base]", raw.get("base", {}), schema))
    profiles = raw.get("profile", {})
    if not isinstance(profiles, dict):
        raise SpecError(f"{where}: key 'profile' expects tables [profile.<name>]")
    for name in profiles:
        if name not in PROFILES:
            raise SpecError(f"{where}: unknown profile {name!r} in [profile.{name}]; expected one of {list(PROFILES)}")
        _check_table(f"{where} [profile.{name}]", profiles[name], schema)
    base.update(profiles.get(profile, {}))
    if overrides:
        for item in overrides:
            key, value = _parse_set(item)
            if key not in schema:
                raise SpecError(f"--set {item!r}: unknown key {key!r}; expected keys: {', '.join(schema)}")
            base[key] = _check_value(f"--set {item!r}", key, value, *schema[key])
    set_keys = {_parse_set(item)[0] for item in overrides}
    runs_raw = raw.get("runs") or [{"label": "run"}]
    if not isinstance(runs_raw, list):
        raise SpecError(f"{where}: key 'runs' expects an array of tables [[runs]]")
    run_schema = {"label": (str, None, None), **schema}
    probes = []
    for i, p in enumerate(raw.get("probes", [])):
        pw = f"{where} [[probes]] #{i + 1}"
        if not isinstance(p, dict) or "kind" not in p:
            raise SpecError(f"{pw}: missing key 'kind'")
        kind = _check_value(pw, "kind", p["kind"], *_PROBE_COMMON["kind"])
        table = _check_table(pw, p, {**_PROBE_COMMON, **PROBE_KEYS[kind]}, required=("kind",))
        options = {k: copy.deepcopy(v[1]) for k, v in PROBE_KEYS[kind].items()}
        options.update({k: v for k, v in table.items() if k in PROBE_KEYS[kind]})
        probes.append((pw, kind, table.get("every"), table.get("start", 0), options))
    kinds = [p[1] for p in probes]
    if len(set(kinds)) != len(kinds):
        raise SpecError(f"{where}: at most one [[probes]] table per kind, got {kinds}")
    runs: list[RunSpec] = []
    labels = set()
    for i, r in enumerate(runs_raw):
        rw = f"{where} [[runs]] #{i + 1}"
        table = _check_table(rw, r, run_schema, required=("label",))
        if table["label"] in labels:
            raise SpecError(f"{rw}: duplicate label {table['label']!r}")
        labels.add(table["label"])
        settings = dict(base)
        settings.update({k: v for k, v in table.items() if k != "label" and k not in set_keys})
        _check_settings(rw, settings)
        run = RunSpec(label=table["label"], settings=settings)
        for _pw, kind, every, start, options in probes:
            every = settings["probe_every"] if every is None else every
            run.probes.append(ProbeSpec(kind, every, start, options))
        runs.append(run)
    figure = raw.get("figure", {})
    if not isinstance(figure, dict):
        raise SpecError(f"{where}: key 'figure' expects a table [figure]")
    _validate_figure(where, figure, labels)
    return Spec(
        name=path.stem, path=path, title=raw.get("title", path.stem), description=raw.get("description", ""),
        profile=profile, runs=runs, figure=figure,
    )


def _validate_figure(where: str, figure: dict, labels: set[str]) -> None:
    from smoothnorm.plots import PANELS

    unknown = sorted(set(figure) - {"title", "columns", "panels"})
    if unknown:
        raise SpecError(f"{where} [figure]: unknown key {unknown[0]!r}; expected keys: title, columns, panels")
    for i, panel in enumerate(figure.get("panels", [])):
        pw = f"{where} [[figure.panels]] #{i + 1}"
        if not isinstance(panel, dict) or "kind" not in panel:
            raise SpecError(f"{pw}: missing key 'kind'")
        if panel["kind"] not in PANELS:
            raise SpecError(f"{pw}: key 'kind' expects one of {list(PANELS)}, got {panel['kind']!r}")
        for key in ("runs",):
            for label in panel.get(key, []):
                if label not in labels:
                    raise SpecError(f"{pw}: key 'runs' names unknown run {label!r}; runs: {sorted(labels)}")
        if "run" in panel and isinstance(panel["run"], str) and panel["run"] not in labels:
            raise SpecError(f"{pw}: key 'run' names unknown run {panel['run']!r}; runs: {sorted(labels)}")


def list_specs(folder: str | os.PathLike | None = None) -> list[Path]:
    folder = Path(folder) if folder else default_spec_folder()
    return sorted(folder.glob("*.toml"))


def default_spec_folder() -> Path:
    """`experiments/` in the current directory if present, else beside the installed package (source checkout)."""
    here = Path.cwd() / "experiments"
    if here.is_dir():
        return here
    return Path(__file__).resolve().parent.parent / "experiments"


# ----------------------------------------------------------------------------------------------------------------
# Building what a run needs
# ----------------------------------------------------------------------------------------------------------------
@lru_cache(maxsize=4)
def _dataset(kind: str, n_train: int, n_test: int, dim: int, data_seed: int, data_root: str):
    from smoothnorm import data

    if kind == "synthetic_images":
        (xtr, ytr), (xte, yte) = data.synthetic_images(n_train, n_test, seed=data_seed)
        return xtr, ytr, xte, yte
    if kind == "gaussian_regression":
        x, y = data.gaussian_regression(n=n_train, dim=dim, seed=data_seed)
        return x, y, None, None
    root = data_root or None
    if root is None:
        from smoothnorm.data._io import data_home

        root = str(data_home())
    xtr, ytr = data.load_cifar10(root, train=True)
    xte, yte = data.load_cifar10(root, train=False)
    return xtr, ytr, xte, yte


def build_network(s: dict):
    from smoothnorm import models

    norm = None if s["norm"] == "none" else s["norm"]
    dtype = np.dtype(s["dtype"])
    if s["model"] == "vgg":
        return models.vgg(s["arch"], norm=norm, width=s["width"], dtype=dtype, seed=s["seed"], init=s["init"],
                          norm_options=s["norm_options"] or None)
    if s["model"] == "dln":
        return models.dln(s["depth"], s["hidden"], in_dim=s["dim"], out_dim=s["dim"], norm=norm, dtype=dtype,
                          seed=s["seed"], init=s["init"], norm_options=s["norm_options"] or None)
    raise SpecError(f"model {s['model']!r} has no data set in the experiment runner yet")


def layer_reference(net, ref, purpose: str) -> str:
    """Resolve a layer reference from a spec: a layer name, or the paper's "Layer #k" (1-based).

    "Layer #k" is the k-th weight layer (Conv2d or Linear) in execution order. For `purpose="ics"` it names that
    weight layer; for "distributions" it names the output of its block before the non-linearity: the norm layer
    right after it if there is one, else the weight layer itself (docs/PROTOCOL.md).
    """
    from smoothnorm.nn import Conv2d, Linear

    if isinstance(ref, str):
        names = [layer.name for layer in net.layers]
        if ref not in names:
            raise SpecError(f"layer {ref!r}: unknown; layers: {names}")
        return ref
    weights = [i for i, layer in enumerate(net.layers) if isinstance(layer, (Conv2d, Linear))]
    if not isinstance(ref, int) or isinstance(ref, bool) or not 1 <= ref <= len(weights):
        raise SpecError(f"layer #{ref}: expected 1..{len(weights)} (the network's weight layers)")
    i = weights[ref - 1]
    if purpose == "distributions" and i + 1 < len(net.layers):
        nxt = net.layers[i + 1]
        if nxt.param_shapes() or hasattr(nxt, "running_mean") or type(nxt).__name__.endswith("Norm"):
            if not isinstance(nxt, (Conv2d, Linear)):
                return nxt.name
    return net.layers[i].name


def build_probes(net, run: RunSpec) -> list:
    from smoothnorm import train

    probes = []
    for p in run.probes:
        o = dict(p.options)
        if p.kind == "landscape":
            etas = [m * run.settings["lr"] for m in o.pop("multipliers")] or None
            probes.append(train.LandscapeProbe(name="landscape", every=p.every, start=p.start, etas=etas, **o))
        elif p.kind == "ics":
            layers = [layer_reference(net, ref, "ics") for ref in o["layers"]] or None
            probes.append(train.ICSProbe(name="ics", every=p.every, start=p.start, layers=layers))
        elif p.kind == "distributions":
            layers = [layer_reference(net, ref, "distributions") for ref in o["layers"]]
            if not layers:
                raise SpecError(f"run {run.label!r}: a distributions probe needs 'layers'")
            probes.append(train.DistributionProbe(name="distributions", every=p.every, start=p.start, layers=layers,
                                                  units=o["units"], bins=o["bins"], seed=run.settings["seed"]))
        elif p.kind == "hessian":
            probes.append(train.HessianProbe(name="hessian", every=p.every, start=p.start, k=o["k"]))
    return probes


def _batch_fn(s: dict, x: np.ndarray, y: np.ndarray) -> Callable[[int], tuple[np.ndarray, np.ndarray]]:
    """Batch of step t as a pure function of t (epoch t // batches_per_epoch), so a resumed run sees the same data."""
    from smoothnorm.data import BatchSampler, augment_batch

    n = x.shape[0]
    size = s["batch_size"] or n
    if size >= n:
        return lambda step: (x, y)
    sampler = BatchSampler(n, size, seed=s["seed"], shuffle=True, drop_last=True)
    per_epoch = len(sampler)
    seed, augment = s["seed"], s["augment"]

    def fn(step: int):
        idx = sampler.batch(step // per_epoch, step % per_epoch)
        xb, yb = x[idx], y[idx]
        if augment:
            xb = augment_batch(xb, np.random.default_rng([seed, 17, step]))
        return xb, yb

    return fn


def _eval_fn(s: dict, xte, yte):
    if xte is None:
        return None
    limit = s["eval_samples"] or xte.shape[0]
    xe, ye = xte[:limit], yte[:limit]

    def fn(net):
        accs, losses = [], []
        for start in range(0, xe.shape[0], 500):
            xb, yb = xe[start:start + 500], ye[start:start + 500]
            with np.errstate(all="ignore"):
                loss = net.loss(xb, yb, mode="eval")
            accs.append(np.mean(np.argmax(net.output, axis=1) == yb) * xb.shape[0])
            losses.append(loss * xb.shape[0])
        return {"test_acc": float(np.sum(accs) / xe.shape[0]), "test_loss": float(np.sum(losses) / xe.shape[0])}

    return fn


def environment() -> dict:
    """Package versions, threads, machine and git commit, recorded beside every result."""
    import numba
    import scipy

    env = {
        "smoothnorm": __version__, "python": platform.python_version(), "numpy": np.__version__,
        "scipy": scipy.__version__, "numba": numba.__version__, "numba_threads": numba.get_num_threads(),
        "machine": platform.machine(), "system": platform.system(), "cpu_count": os.cpu_count(),
    }
    try:
        root = Path(__file__).resolve().parent.parent
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10)
        env["git_commit"] = commit.stdout.strip() or None
        env["git_dirty"] = bool(dirty.stdout.strip()) if commit.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        env["git_commit"] = None
    return env


# ----------------------------------------------------------------------------------------------------------------
# Running
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
                merged[rid] = RunSpec(run.label, dict(run.settings), list(run.probes))
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


def _status(path: Path) -> dict:
    try:
        with open(path / "status.json") as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError):
        return {}


def execute_run(run: RunSpec, root: Path, *, progress: Callable[[str], None] | None = None) -> Path:
    """Train one run into `root/<run_id>`, resuming from its checkpoint; returns the run directory."""
    from smoothnorm import optim
    from smoothnorm.train import Trainer

    s = run.settings
    path = root / run.run_id
    wanted = _probe_key(run.probes)
    status = _status(path)
    config_path = path / "config.json"
    old = json.loads(config_path.read_text()) if config_path.exists() else None
    same = old is not None and old.get("identity") == run.identity
    have = old.get("probes", []) if same else []
    if same and status.get("status") in ("finished", "diverged") and all(p in have for p in wanted):
        if progress:
            progress(f"{run.run_id}: already {status['status']}, skipped")
        return path
    if same and have != wanted:
        # Other probes than recorded: retrain from scratch with the union (deterministic, so metrics are the same).
        wanted = _probe_key(_union_probes(have, run.probes))
        run = RunSpec(run.label, s, [ProbeSpec(**_probe_from_identity(p)) for p in wanted])
        same = False
    xtr, ytr, xte, yte = _dataset(s["data"], s["n_train"], s["n_test"], s["dim"], s["data_seed"], s["data_root"])
    net = build_network(s)
    optimizer = optim.make_optimizer(s["optimizer"], lr=s["lr"], **s["optimizer_options"])
    trainer = Trainer(net, optimizer, _batch_fn(s, xtr, ytr), build_probes(net, run),
                      eval_fn=_eval_fn(s, xte, yte), eval_every=s["eval_every"], seed=s["seed"])
    path.mkdir(parents=True, exist_ok=True)
    resumed = False
    if same and (path / "checkpoint.npz").exists():
        state = read_npz(path / "checkpoint.npz")
        meta = json.loads(str(state.pop("meta_json")))
        state["meta"] = meta
        trainer.load_state_dict(state)
        rows = [r for r in read_jsonl(path / "metrics.jsonl") if r.get("step", -1) < trainer.step]
        write_jsonl(path / "metrics.jsonl", rows)
        trainer.metrics = rows
        resumed = True
    else:
        for name in ("checkpoint.npz", "probes.npz", "metrics.jsonl", "status.json"):
            if (path / name).exists():
                (path / name).unlink()
        write_json(config_path, {
            "run_id": run.run_id, "run": {"label": run.label, **s}, "identity": run.identity, "probes": wanted,
            "environment": environment(), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "command": sys.argv,
        })
    probe_meta = {p.name: {"kind": type(p).__name__, **p.meta()} for p in trainer.probes}
    steps = s["steps"]
    every = s["checkpoint_every"] or steps
    metrics_file = open(path / "metrics.jsonl", "a")  # noqa: SIM115 (closed in finally)
    last_report = [time.perf_counter()]

    def save(status_name: str) -> None:
        metrics_file.flush()
        os.fsync(metrics_file.fileno())
        state = trainer.state_dict()
        meta = state.pop("meta")
        state["meta_json"] = np.array(json.dumps(meta))
        write_npz(path / "checkpoint.npz", state)
        write_npz(path / "probes.npz", trainer.probe_arrays())
        write_json(path / "status.json", {"status": status_name, "step": trainer.step, "steps": steps,
                                          "probe_meta": probe_meta, "elapsed": trainer.elapsed})

    def callback(tr: Trainer, row: dict) -> None:
        metrics_file.write(jsonl_line(row))
        if tr.step % every == 0 and tr.step < steps:
            save("running")
        now = time.perf_counter()
        if progress and (now - last_report[0] > 5 or tr.step == steps):
            last_report[0] = now
            rate = tr.step / max(tr.elapsed, 1e-9)
            eta = (steps - tr.step) / max(rate, 1e-9)
            progress(f"{run.run_id}: step {tr.step}/{steps} loss {row['loss']:.4g} "
                     f"({rate:.1f} steps/s, ETA {eta:.0f}s)")

    try:
        if progress:
            progress(f"{run.run_id}: {'resuming at step ' + str(trainer.step) if resumed else 'starting'}")
        trainer.run(steps, callback)
        save("diverged" if trainer.diverged else "finished")
    finally:
        metrics_file.close()
    if progress:
        progress(f"{run.run_id}: {'diverged' if trainer.diverged else 'finished'} in {trainer.elapsed:.1f}s")
    return path


def _union_probes(have: list[dict], probes: list[ProbeSpec]) -> list[ProbeSpec]:
    out = {d["kind"]: ProbeSpec(**_probe_from_identity(d)) for d in have}
    for p in probes:
        out[p.kind] = p
    return list(out.values())


def _probe_from_identity(d: dict) -> dict:
    d = dict(d)
    return {"kind": d.pop("kind"), "every": d.pop("every"), "start": d.pop("start"), "options": d}


def results_root(root: str | os.PathLike | None, profile: str) -> Path:
    return Path(root or os.environ.get("SMOOTHNORM_RUNS", "runs")) / profile


def run_specs(specs: list[Spec], root: Path, progress: Callable[[str], None] | None = None) -> dict[str, Path]:
    """Execute every run the specs need (each once); returns {run_id: path}."""
    paths = {}
    for run in merge_runs(specs):
        paths[run.run_id] = execute_run(run, root, progress=progress)
    return paths


def draw_spec(spec: Spec, root: Path, out_dir: str | os.PathLike) -> list[Path]:
    """Draw the spec's figure from stored runs into out_dir/<spec name>.png and .pdf."""
    from smoothnorm import plots

    runs: list[RunResult] = []
    for run in spec.runs:
        path = root / run.run_id
        if not (path / "config.json").exists():
            raise FileNotFoundError(f"{spec.name}: run {run.label!r} has no results at {path}; run the spec first")
        runs.append(load_run(path, label=run.label))
    figure = dict(spec.figure)
    figure.setdefault("title", spec.title)
    return plots.draw_figure(figure, runs, Path(out_dir) / spec.name)
