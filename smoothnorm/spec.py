"""Experiment specs (TOML): schema, profiles, validation, runs and their identity.

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
  of "trains" for the largest-stable-learning-rate summary (smoothnorm.sweeps);
- `[[claims]]`: the paper's findings as checks on the runs (vocabulary and evaluation: smoothnorm.claims).
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
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from smoothnorm import NORMS

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
    "conv_algorithm": (str, "auto", ("auto", "im2col", "winograd")),  # VGG convolutions (docs/PROTOCOL.md)
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
    # The optimization study (experiments/study/): activations, where the norm sits, input scale and normalization.
    "activation": (str, "default", ("default", "relu", "sigmoid", "tanh", "identity")),  # default: relu, dln identity
    "norm_position": (str, "before_activation", ("before_activation", "after_activation")),
    "input_norm": (str, "none", ("none", "standardize", "per_channel")),  # statistics of the training split only
    "scale": (str, "normalized", ("normalized", "unit", "raw")),  # image pixels: standardized, /255 or 0..255
    "feature_scale_range": (float, 1.0, None),  # gaussian_regression: largest / smallest feature scale
    "class_colour": (float, 0.0, None),  # synthetic_images: RMS of a per-class tint (data.synthetic_images)
    "eval_batch_stats": (bool, False, None),  # also evaluate with batch statistics (BN in training mode)
    # The training loss: the model's own (softmax cross-entropy for vgg and mlp, squared error for dln), or for the
    # classifiers cross-entropy or Cohen et al.'s 0.5 ||out - onehot(y)||^2 averaged over the batch.
    "loss": (str, "default", ("default", "cross_entropy", "mse_onehot")),
    # Train on the first train_subset examples of the training split only (0: all of it); with batch_size = 0 that
    # is full-batch gradient descent on a fixed subset (Cohen et al.: the first 5,000 CIFAR-10 images).
    "train_subset": (int, 0, None),
    # False: delete the checkpoint once the run has finished (its results are metrics.jsonl and probes.npz); for
    # measurements at initialization of wide networks, whose checkpoints would be hundreds of MB each.
    "keep_checkpoint": (bool, True, None),
}
# Keys that do not change what a run computes (excluded from its identity).
_NON_IDENTITY = ("label", "checkpoint_every", "probe_every", "keep_checkpoint")
# Keys added after runs were first stored: they enter a run's identity only when set away from their default, so
# the identity (and the folder) of every earlier run stays the same.
_LATER_KEYS = ("activation", "norm_position", "input_norm", "scale", "feature_scale_range", "class_colour",
               "eval_batch_stats", "conv_algorithm", "loss", "train_subset")

PROBE_KEYS: dict[str, dict[str, tuple[type, Any, tuple | None]]] = {
    "landscape": {
        "preset": (str, "vgg", ("vgg", "dln")),
        "spacing": (str, "inferred", ("inferred", "linear", "geometric")),
        "num": (int, 8, None),
        "multipliers": (list, [], None),
        "beta_normalization": (str, "distance", ("distance", "eta")),
        "direction": (str, "gradient", ("gradient", "random", "update")),
    },
    "ics": {"layers": (list, [], None)},
    "distributions": {"layers": (list, [], None), "units": (int, 4, None), "bins": (int, 40, None)},
    "hessian": {"k": (int, 1, None), "mode": (str, "probe", ("probe", "eval")), "condition": (bool, False, None),
                "max_params": (int, 0, None), "tol": (float, 1e-6, None)},
    "saturation": {"threshold": (float, 4.0, None)},
    "grad_norms": {},
    "bn_gap": {},
    "spectrum": {
        "k": (int, 10, None),
        "num_probes": (int, 1, None),
        "lanczos_steps": (int, 90, None),
        "mode": (str, "probe", ("probe", "eval")),
        "tol": (float, 1e-6, None),
        "steps": (list, [], None),
    },
    # Bjorck et al. 2018 (experiments/beyond/bjorck_stable_lr.toml): gradients at initialization, one-step loss.
    "grad_distribution": {"bins": (int, 41, None), "limit": (float, 8.0, None), "steps": (list, [], None)},
    # lrs: the learning rates of the one-step probe; [] is measure.stability.DEFAULT_LRS (1e-4 .. 10).
    "one_step_loss": {"lrs": (list, [], None), "steps": (list, [], None)},
    # Yang et al. 2019: per-layer weight-gradient norms and the fitted per-layer growth rate (at initialization:
    # steps = [0]).
    "gradient_explosion": {
        "skip_first": (int, 1, None),
        "skip_last": (int, 1, None),
        "steps": (list, [], None),
    },
}
# Probe options added after runs were first stored: they enter a probe's recorded identity only when set away from
# their default, so runs stored before them neither retrain nor change.
_LATER_PROBE_KEYS: dict[str, tuple[str, ...]] = {"hessian": ("tol",)}
_PROBE_COMMON = {"kind": (str, None, tuple(PROBE_KEYS)), "every": (int, 0, None), "start": (int, 0, None)}

PROFILES = ("tiny", "quick", "paper")
TOP_KEYS = ("title", "description", "base", "runs", "probes", "figure", "profile", "claims", "sweep")
# [sweep]: what "trains" means in a learning-rate sweep (smoothnorm.sweeps.largest_stable_lr): the mean training
# accuracy over the last `window` fraction of steps must exceed `criterion`, and the run must not diverge.
SWEEP_KEYS: dict[str, tuple[type, Any, tuple | None]] = {
    "criterion": (float, 0.5, None),
    "window": (float, 0.2, None),
}
SWEEP_SEPARATOR = " @ lr="


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
        raise SpecError(f"{where}: key {key!r} expects {kind.__name__}, got {type(value).__name__} {value!r:.80}")
    if allowed is not None and value not in allowed:
        raise SpecError(f"{where}: key {key!r} expects one of {list(allowed)}, got {value!r}")
    if kind is float and not math.isfinite(value):
        raise SpecError(f"{where}: key {key!r} expects a finite number, got {value!r}")
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
        parsed = tomllib.loads(f"v = {raw}")
    except tomllib.TOMLDecodeError:
        parsed = None
    # A value that is not one TOML value (a bare word, or text with a newline that would smuggle in more keys)
    # is taken as the string it is.
    value = parsed["v"] if parsed is not None and list(parsed) == ["v"] else raw
    return key, value


@dataclass
class ProbeSpec:
    kind: str
    every: int
    start: int
    options: dict

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


def _identity(settings: dict) -> dict:
    return {k: v for k, v in settings.items()
            if k not in _NON_IDENTITY and not (k in _LATER_KEYS and v == BASE_KEYS[k][1])}


def run_id_for(settings: dict) -> str:
    digest = hashlib.sha1(json.dumps(_identity(settings), sort_keys=True).encode()).hexdigest()[:10]
    arch = settings["arch"] if settings["model"] == "vgg" else f"{settings['model']}{settings['depth']}"
    return f"{arch}-{settings['norm']}-lr{settings['lr']:g}-s{settings['seed']}-{digest}"


def _check_settings(where: str, s: dict) -> None:
    for key in ("width", "lr"):
        if not (math.isfinite(s[key]) and s[key] > 0):
            raise SpecError(f"{where}: key {key!r} expects a positive number, got {s[key]!r}")
    for key in ("steps", "depth", "hidden", "n_train", "n_test", "dim"):
        if s[key] < 1:
            raise SpecError(f"{where}: key {key!r} expects a positive integer, got {s[key]!r}")
    for key in ("batch_size", "eval_every", "eval_samples", "probe_every", "checkpoint_every", "seed", "data_seed",
                "train_subset"):
        if s[key] < 0:
            raise SpecError(f"{where}: key {key!r} expects a non-negative integer, got {s[key]!r}")
    if not (math.isfinite(s["feature_scale_range"]) and s["feature_scale_range"] >= 1):
        raise SpecError(f"{where}: key 'feature_scale_range' expects a number >= 1, got {s['feature_scale_range']!r}")
    if not (math.isfinite(s["class_colour"]) and s["class_colour"] >= 0):
        raise SpecError(f"{where}: key 'class_colour' expects a number >= 0, got {s['class_colour']!r}")
    if s["class_colour"] and s["data"] != "synthetic_images":
        raise SpecError(f"{where}: key 'class_colour' applies only to data 'synthetic_images', got {s['data']!r}")
    if s["model"] == "dln" and s["data"] != "gaussian_regression":
        raise SpecError(f"{where}: model 'dln' needs data 'gaussian_regression', got {s['data']!r}")
    if s["model"] != "dln" and s["data"] == "gaussian_regression":
        raise SpecError(f"{where}: data 'gaussian_regression' needs model 'dln', got {s['model']!r}")
    if s["model"] == "dln" and s["loss"] != "default":
        raise SpecError(f"{where}: key 'loss' expects 'default' for model 'dln' (regression targets: its summed "
                        f"squared error), got {s['loss']!r}")
    if s["batch_size"] > s["n_train"] and s["data"] != "cifar10":
        raise SpecError(f"{where}: key 'batch_size' ({s['batch_size']}) exceeds n_train ({s['n_train']})")
    if s["train_subset"] and s["data"] != "cifar10" and s["train_subset"] > s["n_train"]:
        raise SpecError(f"{where}: key 'train_subset' ({s['train_subset']}) exceeds n_train ({s['n_train']})")
    if s["train_subset"] and s["batch_size"] > s["train_subset"]:
        raise SpecError(f"{where}: key 'batch_size' ({s['batch_size']}) exceeds train_subset ({s['train_subset']})")


def _check_profile_probes(where: str, table) -> dict[str, dict]:
    """Validate a profile's probe-option overrides: {kind: {option: value}} with kinds and options of PROBE_KEYS."""
    if not isinstance(table, dict):
        raise SpecError(f"{where}: expected tables [profile.<name>.probes.<kind>]")
    out = {}
    for kind, options in table.items():
        _check_value(where, "kind", kind, *_PROBE_COMMON["kind"])
        out[kind] = _check_table(f"{where}.{kind}", options, PROBE_KEYS[kind])
        _check_probe(f"{where}.{kind}", out[kind])
    return out


def _check_seeds(where: str, seeds) -> list[int]:
    if (not isinstance(seeds, list) or not seeds
            or not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in seeds)
            or len(set(seeds)) != len(seeds)):
        raise SpecError(f"{where}: key 'seeds' expects a non-empty list of distinct non-negative integers, "
                        f"got {seeds!r}")
    return list(seeds)


def sweep_label(label: str, lr: float) -> str:
    """The label of one run of a learning-rate sweep: "<label> @ lr=<lr:g>" (e.g. "MLP + BN @ lr=0.003")."""
    return f"{label}{SWEEP_SEPARATOR}{lr:g}"


def _check_lrs(where: str, lrs) -> list[float]:
    if not isinstance(lrs, list) or not lrs:
        raise SpecError(f"{where}: key 'lr' expects a positive number or a non-empty list of them (a sweep), "
                        f"got {lrs!r:.80}")
    for lr in lrs:
        if isinstance(lr, bool) or not isinstance(lr, (int, float)):
            raise SpecError(f"{where}: key 'lr' expects a list of numbers, got {type(lr).__name__} {lr!r:.80} "
                            f"in {lrs!r:.80}")
        if not (math.isfinite(lr) and lr > 0):
            raise SpecError(f"{where}: key 'lr' expects positive finite learning rates, got {lr!r} in {lrs!r:.80}")
    lrs = [float(lr) for lr in lrs]
    labels = [sweep_label("", lr) for lr in lrs]
    if len(set(labels)) != len(labels):
        raise SpecError(f"{where}: key 'lr' repeats a learning rate (as labelled, '%g'): {lrs!r:.80}")
    return sorted(lrs)


def _pop_lrs(where: str, table) -> tuple[list[float] | None, Any]:
    """A learning-rate sweep (`lr` given as a list) out of a table: (sorted lrs or None, the table without it)."""
    if isinstance(table, dict) and isinstance(table.get("lr"), list):
        table = dict(table)
        return _check_lrs(where, table.pop("lr")), table
    return None, table


def _pop_seeds(where: str, table) -> tuple[list[int] | None, Any]:
    if isinstance(table, dict) and "seeds" in table:
        table = dict(table)
        return _check_seeds(where, table.pop("seeds")), table
    return None, table


def _check_probe(where: str, table: dict) -> None:
    """Counts and lists inside one [[probes]] table."""
    for key in ("every", "start"):
        if table.get(key, 0) < 0:
            raise SpecError(f"{where}: key {key!r} expects a non-negative integer, got {table[key]}")
    for key in ("skip_first", "skip_last"):
        if key in table and table[key] < 0:
            raise SpecError(f"{where}: key {key!r} expects a non-negative integer, got {table[key]}")
    for key in ("num", "units", "bins", "k"):
        if key in table and table[key] < 1:
            raise SpecError(f"{where}: key {key!r} expects a positive integer, got {table[key]}")
    if "limit" in table and not table["limit"] > 0:
        raise SpecError(f"{where}: key 'limit' expects a positive number of standard deviations, got {table['limit']}")
    for lr in table.get("lrs", []):
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not (math.isfinite(lr) and lr > 0):
            raise SpecError(f"{where}: key 'lrs' expects positive finite learning rates, got {lr!r:.80}")
    for t in table.get("steps", []):
        if isinstance(t, bool) or not isinstance(t, int) or t < 0:
            raise SpecError(f"{where}: key 'steps' expects non-negative integers (training steps), got {t!r:.80}")
    for m in table.get("multipliers", []):
        if isinstance(m, bool) or not isinstance(m, (int, float)) or not (math.isfinite(m) and m > 0):
            raise SpecError(f"{where}: key 'multipliers' expects positive finite numbers, got {m!r:.80}")
    for ref in table.get("layers", []):
        if isinstance(ref, bool) or not isinstance(ref, (str, int)):
            raise SpecError(f"{where}: key 'layers' expects layer names or numbers (the paper's Layer #k), "
                            f"got {ref!r:.80}")


def _check_options(where: str, s: dict) -> None:
    """optimizer_options and norm_options name keywords that the optimizer and norm layer take."""
    from smoothnorm import optim
    from smoothnorm.norm_layers import make_norm

    try:
        optim.make_optimizer(s["optimizer"], lr=s["lr"], **s["optimizer_options"])
    except (TypeError, ValueError) as exc:
        raise SpecError(f"{where}: key 'optimizer_options' {s['optimizer_options']!r:.80} does not fit "
                        f"optimizer {s['optimizer']!r}: {exc}") from exc
    # population_samples is read by the runner (population-statistics BatchNorm), not by the layer.
    layer_options = {k: v for k, v in s["norm_options"].items() if k != "population_samples"}
    if s["norm"] != "none" and layer_options:
        try:
            make_norm(s["norm"], 2, **layer_options)
        except TypeError as exc:  # an unknown keyword or a value of the wrong type
            raise SpecError(f"{where}: key 'norm_options' {s['norm_options']!r:.80} does not fit norm "
                            f"{s['norm']!r}: {exc}") from exc
        except ValueError:
            pass  # may depend on the layer's width (GroupNorm's groups): checked when the network is built


def _array_of_tables(where: str, table: dict, key: str, header: str) -> list:
    """table[key] (default []), which must be a TOML array of tables [[header]]."""
    value = table.get(key, [])
    if not isinstance(value, list):
        raise SpecError(f"{where}: key {key!r} expects an array of tables [[{header}]], got {type(value).__name__}")
    return value


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
        kind = _check_value(pw, "kind", p["kind"], *_PROBE_COMMON["kind"])
        table = _check_table(pw, p, {**_PROBE_COMMON, **PROBE_KEYS[kind]}, required=("kind",))
        _check_probe(pw, table)
        options = {k: copy.deepcopy(v[1]) for k, v in PROBE_KEYS[kind].items()}
        options.update({k: v for k, v in table.items() if k in PROBE_KEYS[kind]})
        options.update(profile_probes.get(kind, {}))
        probes.append((pw, kind, table.get("every"), table.get("start", 0), options))
    kinds = [p[1] for p in probes]
    if len(set(kinds)) != len(kinds):
        raise SpecError(f"{where}: at most one [[probes]] table per kind, got {kinds}")
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
                for _pw, kind, every, start, options in probes:
                    every = settings["probe_every"] if every is None else every
                    run.probes.append(ProbeSpec(kind, every, start, options))
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
    _validate_figure(where, figure, labels, set(sweeps))
    from smoothnorm.claims import ClaimError, parse_claims

    try:
        claims = parse_claims(where, raw.get("claims"), labels, {p[1] for p in probes}, sweeps=set(sweeps))
    except ClaimError as err:
        raise SpecError(str(err)) from None
    return Spec(
        name=path.stem, path=path, title=raw.get("title", path.stem), description=raw.get("description", ""),
        profile=profile, runs=runs, figure=figure, claims=claims, seeds=list(run_seeds), sweeps=sweeps,
        sweep=sweep,
    )


def _validate_figure(where: str, figure: dict, labels: set[str], groups: set[str] = frozenset()) -> None:
    """Panels, their kinds and the runs they name: `runs` takes run labels and sweep groups, `run` one label."""
    from smoothnorm.plots import PANELS

    unknown = sorted(set(figure) - {"title", "columns", "panels"})
    if unknown:
        raise SpecError(f"{where} [figure]: unknown key {unknown[0]!r}; expected keys: title, columns, panels")
    if "title" in figure:
        _check_value(f"{where} [figure]", "title", figure["title"], str, None, None)
    if "columns" in figure:
        columns = _check_value(f"{where} [figure]", "columns", figure["columns"], int, None, None)
        if not 1 <= columns <= 100:
            raise SpecError(f"{where} [figure]: key 'columns' expects an integer in 1..100, got {columns}")
    panels = _array_of_tables(f"{where} [figure]", figure, "panels", "figure.panels")
    for i, panel in enumerate(panels):
        pw = f"{where} [[figure.panels]] #{i + 1}"
        if not isinstance(panel, dict) or "kind" not in panel:
            raise SpecError(f"{pw}: missing key 'kind'")
        if not isinstance(panel["kind"], str) or panel["kind"] not in PANELS:
            raise SpecError(f"{pw}: key 'kind' expects one of {list(PANELS)}, got {panel['kind']!r:.80}")
        for key in ("runs",):
            named = panel.get(key, [])
            if not isinstance(named, list) or not all(isinstance(label, str) for label in named):
                raise SpecError(f"{pw}: key 'runs' expects an array of run labels (strings), got {named!r:.80}")
            for label in named:
                if label not in labels and label not in groups:
                    raise SpecError(f"{pw}: key 'runs' names unknown run {label!r}; runs: {sorted(labels | groups)}")
        if "run" in panel and not isinstance(panel["run"], str):
            raise SpecError(f"{pw}: key 'run' expects a run label (string), got {panel['run']!r:.80}")
        if "run" in panel and panel["run"] not in labels:
            raise SpecError(f"{pw}: key 'run' names unknown run {panel['run']!r}; runs: {sorted(labels)}")


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
        paths.extend(sorted((folder / SPEC_GROUPS[group]).glob("*.toml")))
    return paths


def default_spec_folder() -> Path:
    """`experiments/` in the current directory if present, else beside the installed package (source checkout)."""
    here = Path.cwd() / "experiments"
    if here.is_dir():
        return here
    return Path(__file__).resolve().parent.parent / "experiments"


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
