"""Spec schema: the keys a spec's tables take (types, defaults, allowed values) and the checks of their values.

BASE_KEYS (a run's settings), PROBE_KEYS (each probe kind's options), SWEEP_KEYS ([sweep]), PROFILES and TOP_KEYS
are the schema; the `_check_*` functions validate one table, value or setting each and raise SpecError naming the
file and the key. Loading a spec, expanding its runs over seeds and learning rates, and run identity live in
smoothnorm.runs.spec.
"""

from __future__ import annotations

import math
import tomllib
from typing import Any

from smoothnorm import NORMS
from smoothnorm.runs.plugins import entry_point_names, is_plugin, is_reference

# The figure panel kinds a spec may name: the keys of smoothnorm.plots.PANELS, as plain names so that loading a spec
# imports no matplotlib (a test holds the two equal).
PANEL_KINDS = (
    "accuracy", "band", "beta", "ics", "grad_vs_eta", "ridge", "moments", "hessian", "spectrum_density",
    "spectrum_series", "sharpness", "gradient_layers", "explosion_rate", "depth_training", "series", "profile",
    "sweep", "lr_sweep", "one_step_loss", "grad_histogram", "grad_layers", "surface_1d", "surface_2d", "surface_3d",
)

# The keywords each norm's layer takes in `norm_options` (besides num_features), as plain names so that loading a
# spec needs no Numba (a test holds them equal to the layers' signatures). BatchNorm's `population_samples` is read
# by the run setup, not the layer. Their values are checked when a run's network is built, before any training.
_RUNNING_NORM_OPTIONS = ("eps", "momentum", "affine")
NORM_OPTIONS: dict[str, tuple[str, ...]] = {
    "batch": (*_RUNNING_NORM_OPTIONS, "statistics", "population_samples"),
    "noisy_batch": (*_RUNNING_NORM_OPTIONS, "n_mu", "n_sigma", "r_mu", "r_sigma", "placement"),
    "l1": _RUNNING_NORM_OPTIONS,
    "l2": _RUNNING_NORM_OPTIONS,
    "linf": _RUNNING_NORM_OPTIONS,
    "layer": ("eps", "affine"),
    "instance": ("eps", "affine"),
    "group": ("groups", "eps", "affine"),
}

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
    "data_verify": (bool, True, None),  # check CIFAR-10's MD5s; false reads an unofficial copy, with a warning
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
# Keys of [base] and [[runs]] whose value may name a plug-in (smoothnorm.runs.plugins) instead of a built-in; a
# [[probes]] or [[figure.panels]] kind and a [[claims]] quantity may name one too (smoothnorm.runs.spec).
PLUGIN_KEYS = ("norm", "model")
# Keys that do not change what a run computes (excluded from its identity).
_NON_IDENTITY = ("label", "checkpoint_every", "probe_every", "keep_checkpoint", "plugin_files")
# Keys added after runs were first stored: they enter a run's identity only when set away from their default, so
# the identity (and the folder) of every earlier run stays the same.
_LATER_KEYS = ("activation", "norm_position", "input_norm", "scale", "feature_scale_range", "class_colour",
               "eval_batch_stats", "conv_algorithm", "loss", "train_subset", "data_verify")

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
    # Li et al. 2018's filter-normalized loss surfaces (experiments/examples/loss_surfaces.toml). steps: training
    # steps, negative ones counted from the end (-1: the last step); points: the 1-D curve's coordinates and grid:
    # the 2-D grid's per axis, over [-span, span] (0 or odd: the centre is the weights themselves, 0 leaves it out);
    # norm_params: what the directions do with 1-D parameters (measure.loss_surface.NORM_PARAM_POLICIES); seed: the
    # directions' generator.
    "surface": {
        "steps": (list, [0, -1], None),
        "span": (float, 1.0, None),
        "points": (int, 21, None),
        "grid": (int, 11, None),
        "norm_params": (str, "zero", ("zero", "parameter", "filter")),
        "seed": (int, 0, None),
    },
}
# Probe options added after runs were first stored: they enter a probe's recorded identity only when set away from
# their default, so runs stored before them neither retrain nor change.
_LATER_PROBE_KEYS: dict[str, tuple[str, ...]] = {"hessian": ("tol",)}
_PROBE_COMMON = {"kind": (str, None, tuple(PROBE_KEYS)), "every": (int, 0, None), "start": (int, 0, None)}

PROFILES = ("tiny", "quick", "paper")
TOP_KEYS = ("title", "description", "base", "runs", "probes", "figure", "profile", "claims", "sweep")
# [sweep]: what "trains" means in a learning-rate sweep (smoothnorm.runs.sweeps.largest_stable_lr): the mean training
# accuracy over the last `window` fraction of steps must exceed `criterion`, and the run must not diverge.
SWEEP_KEYS: dict[str, tuple[type, Any, tuple | None]] = {
    "criterion": (float, 0.5, None),
    "window": (float, 0.2, None),
}
SWEEP_SEPARATOR = " @ lr="


class SpecError(ValueError):
    """A spec is invalid: the message names the file and the key."""


# ----------------------------------------------------------------------------------------------------------------
# Checks of values, tables, settings, probes, figures
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
        if key in PLUGIN_KEYS and (is_reference(value) or value in entry_point_names(key)):
            return value  # a plug-in: resolved (file found, hashed) by the spec loader, imported only by `run`
        more = (" or a plug-in 'package.module:Name' / './file.py:Name'" if key in PLUGIN_KEYS else "")
        if key == "model":
            more += " (or 'torch:package.module:build' for a PyTorch module)"
        raise SpecError(f"{where}: key {key!r} expects one of {list(allowed)}{more}, got {value!r}")
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
    if s["model"] in ("vgg", "mlp") and s["data"] == "gaussian_regression":
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
    """Validate a profile's probe-option overrides: {kind: {option: value}} with kinds and options of PROBE_KEYS,
    or a plug-in probe's kind as its [[probes]] table names it, with options its class checks when it is built."""
    if not isinstance(table, dict):
        raise SpecError(f"{where}: expected tables [profile.<name>.probes.<kind>]")
    out = {}
    for kind, options in table.items():
        if kind not in PROBE_KEYS and is_plugin("probe", kind):
            if not isinstance(options, dict):
                raise SpecError(f"{where}.{kind!r}: expected a table of the plug-in probe's options")
            reserved = sorted(set(options) & {*_PROBE_COMMON, "name"})
            if reserved:
                raise SpecError(f"{where}.{kind!r}: key {reserved[0]!r} is not an option a profile may override; "
                                "a profile overrides the probe's own options")
            out[kind] = dict(options)
            continue
        _check_value(where, "kind", kind, *_PROBE_COMMON["kind"])
        out[kind] = _check_table(f"{where}.{kind}", options, PROBE_KEYS[kind])
        _check_probe(f"{where}.{kind}", out[kind], kind)
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


def _check_probe(where: str, table: dict, kind: str | None = None) -> None:
    """Counts and lists inside one [[probes]] table (or a profile's overrides of probe `kind`)."""
    kind = table.get("kind", kind)
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
        if kind == "surface":
            if isinstance(t, bool) or not isinstance(t, int):
                raise SpecError(f"{where}: key 'steps' expects integers (training steps; negative ones count from "
                                f"the end, -1 the last step), got {t!r:.80}")
        elif isinstance(t, bool) or not isinstance(t, int) or t < 0:
            raise SpecError(f"{where}: key 'steps' expects non-negative integers (training steps), got {t!r:.80}")
    for key in ("points", "grid"):
        if key in table and (table[key] < 0 or table[key] in (1, 2) or (table[key] and table[key] % 2 == 0)):
            raise SpecError(f"{where}: key {key!r} expects 0 (none) or an odd integer >= 3 (so that the centre is "
                            f"the weights themselves), got {table[key]}")
    if "span" in table and not table["span"] > 0:
        raise SpecError(f"{where}: key 'span' expects a positive number (the grid covers [-span, span] in units of "
                        f"the filter-normalized directions), got {table['span']}")
    if "seed" in table and table["seed"] < 0:
        raise SpecError(f"{where}: key 'seed' expects a non-negative integer, got {table['seed']}")
    for m in table.get("multipliers", []):
        if isinstance(m, bool) or not isinstance(m, (int, float)) or not (math.isfinite(m) and m > 0):
            raise SpecError(f"{where}: key 'multipliers' expects positive finite numbers, got {m!r:.80}")
    for ref in table.get("layers", []):
        if isinstance(ref, bool) or not isinstance(ref, (str, int)):
            raise SpecError(f"{where}: key 'layers' expects layer names or numbers (the paper's Layer #k), "
                            f"got {ref!r:.80}")


def resolve_probe_steps(where: str, kind: str, options: dict, run_steps: int) -> list[int]:
    """A probe's listed steps as training steps 0 .. run_steps - 1: negative ones count from the end (surface
    probes: -1 is the last step); SpecError naming the key when one falls outside the run or two coincide."""
    steps = options.get("steps", [])
    resolved = [t + run_steps if t < 0 else t for t in steps]
    for t, r in zip(steps, resolved):
        if not 0 <= r < run_steps:
            raise SpecError(f"{where}: key 'steps' expects training steps in 0..{run_steps - 1} or -{run_steps}..-1 "
                            f"(counted from the end) for a run of {run_steps} steps, got {t}")
    if len(set(resolved)) != len(resolved):
        raise SpecError(f"{where}: key 'steps' names one training step twice ({steps} in a run of {run_steps} "
                        f"steps)")
    return resolved


def _check_surface(where: str, options: dict) -> None:
    """A surface probe's merged options (table and profile) draw at least a 1-D curve or a 2-D surface."""
    if not (options["points"] or options["grid"]):
        raise SpecError(f"{where}: keys 'points' and 'grid' are both 0; expected at least one odd integer >= 3 "
                        f"(a 1-D curve or a 2-D surface)")


def _check_options(where: str, s: dict) -> None:
    """optimizer_options fit the optimizer (names and values; smoothnorm.optim checks them without Numba) and
    norm_options name keywords that the norm layer takes (NORM_OPTIONS; values are checked with the network)."""
    from smoothnorm import optim

    try:
        optim.make_optimizer(s["optimizer"], lr=s["lr"], **s["optimizer_options"])
    except (TypeError, ValueError) as exc:
        raise SpecError(f"{where}: key 'optimizer_options' {s['optimizer_options']!r:.80} does not fit "
                        f"optimizer {s['optimizer']!r}: {exc}") from exc
    if s["norm"] in NORM_OPTIONS:  # a plug-in's options are checked when it is loaded
        allowed = NORM_OPTIONS[s["norm"]]
        unknown = sorted(set(s["norm_options"]) - set(allowed))
        if unknown:
            raise SpecError(f"{where}: key 'norm_options' has unknown option {unknown[0]!r} for norm {s['norm']!r}; "
                            f"expected options: {', '.join(allowed)}")


def _array_of_tables(where: str, table: dict, key: str, header: str) -> list:
    """table[key] (default []), which must be a TOML array of tables [[header]]."""
    value = table.get(key, [])
    if not isinstance(value, list):
        raise SpecError(f"{where}: key {key!r} expects an array of tables [[{header}]], got {type(value).__name__}")
    return value


def _validate_figure(where: str, figure: dict, labels: set[str], groups: set[str] = frozenset(),
                     plugins: set[str] = frozenset()) -> None:
    """Panels, their kinds and the runs they name: `runs` takes run labels and sweep groups, `run` one label.
    plugins: panel kinds that name plug-ins (the spec loader found their files)."""
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
        if not isinstance(panel["kind"], str) or panel["kind"] not in (*PANEL_KINDS, *plugins):
            raise SpecError(f"{pw}: key 'kind' expects one of {list(PANEL_KINDS)} or a plug-in panel "
                            f"'package.module:Name' / './file.py:Name', got {panel['kind']!r:.80}")
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

