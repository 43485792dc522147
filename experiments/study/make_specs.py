"""Write the optimization study's specs (experiments/study/*.toml): their run lists are grids (optimizer x norm x
learning rate, ...) that are clearer as loops than as hundreds of hand-written TOML lines.

Run `python experiments/study/make_specs.py` after editing; the .toml files are committed, and
tests/runs/test_study.py checks that they are what this script writes.
"""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent

# Shared by every study: the quick VGG-11 (width 1/16) and an MLP on the same synthetic images.
MLP = {"model": "mlp", "depth": 3, "hidden": 64}
VGG = {"model": "vgg", "arch": "vgg11", "width": 0.0625}
NORM_NAMES = {"none": "no norm", "batch": "BN", "layer": "LN"}


def _value(v) -> str:
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {_value(x)}" for k, x in v.items()) + " }"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, list):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    return str(v)


def _table(header: str, items: dict) -> str:
    return "\n".join([header, *(f"{k} = {_value(v)}" for k, v in items.items())]) + "\n"


def render(title: str, description: str, base: dict, runs: list[dict], probes: list[dict], figure: dict,
           profiles: dict[str, dict]) -> str:
    parts = [f"# Written by experiments/study/make_specs.py: edit that script, not this file.\n"
             f"title = {_value(title)}\ndescription = {_value(description)}\n",
             _table("[base]", base)]
    parts += [_table("[[runs]]", r) for r in runs]
    parts += [_table("[[probes]]", p) for p in probes]
    parts.append(_table("[figure]", {k: v for k, v in figure.items() if k != "panels"}))
    parts += [_table("[[figure.panels]]", p) for p in figure["panels"]]
    parts += [_table(f"[profile.{name}]", items) for name, items in profiles.items()]
    return "\n".join(parts)


TINY = {"n_train": 64, "n_test": 32, "batch_size": 8, "steps": 2, "eval_every": 2, "probe_every": 2,
        "checkpoint_every": 2}


# ----------------------------------------------------------------------------------------------------------------
# optimizers: GD, SGD, momentum, RMSprop, Adam x no norm, BN, LN, each at the best of a small learning-rate sweep
# ----------------------------------------------------------------------------------------------------------------
OPTIMIZERS = {  # label -> (optimizer, options, learning rates swept on the MLP, on the VGG)
    "GD": ("sgd", {}, [0.03, 0.1, 0.3, 1.0], []),
    "SGD": ("sgd", {}, [0.01, 0.03, 0.1, 0.3], [0.01, 0.03, 0.1]),
    "Momentum": ("sgd", {"momentum": 0.9}, [0.001, 0.003, 0.01, 0.03], [0.001, 0.003, 0.01]),
    "RMSprop": ("rmsprop", {}, [0.0001, 0.0003, 0.001, 0.003], [0.0003, 0.001, 0.003]),
    "Adam": ("adam", {}, [0.0001, 0.0003, 0.001, 0.003], [0.0003, 0.001, 0.003]),
}


def optimizers() -> str:
    runs = []
    groups: dict[tuple[str, str], list[str]] = {}
    for model_name, model in (("MLP", MLP), ("VGG", VGG)):
        for opt_label, (opt, options, mlp_lrs, vgg_lrs) in OPTIMIZERS.items():
            for norm in ("none", "batch", "layer"):
                for lr in mlp_lrs if model_name == "MLP" else vgg_lrs:
                    label = f"{model_name} {opt_label}, {NORM_NAMES[norm]} @ lr={lr:g}"
                    run = {"label": label, **model, "optimizer": opt, "norm": norm, "lr": lr}
                    if options:
                        run["optimizer_options"] = options
                    if opt_label == "GD":
                        run["batch_size"] = 0  # the whole training set every step
                    runs.append(run)
                    groups.setdefault((model_name, norm), []).append(label)
    panels = []
    for model_name in ("MLP", "VGG"):
        for norm in ("none", "batch", "layer"):
            panels.append({"kind": "sweep", "runs": groups[(model_name, norm)], "metric": "loss", "last": 20,
                           "title": f"{model_name}, {NORM_NAMES[norm]}: learning-rate sweep"})
    for model_name in ("MLP", "VGG"):
        for norm in ("none", "batch", "layer"):
            panels.append({"kind": "accuracy", "runs": groups[(model_name, norm)], "select": "best_lr",
                           "metric": "loss", "smooth": 10, "logy": True,
                           "title": f"{model_name}, {NORM_NAMES[norm]}: training loss at the best lr"})
    for model_name in ("MLP", "VGG"):
        for norm in ("none", "batch"):
            panels.append({"kind": "band", "runs": groups[(model_name, norm)], "select": "best_lr",
                           "quantity": "grad_distances", "center": "lr",
                           "title": f"{model_name}, {NORM_NAMES[norm]}: gradient change along the update"})
    for model_name in ("MLP", "VGG"):
        panels.append({"kind": "beta", "runs": groups[(model_name, "none")] + groups[(model_name, "batch")],
                       "select": "best_lr",
                       "title": f"{model_name}: effective beta along the update (no norm vs BN)"})
    return render(
        "Optimization study: GD, SGD, momentum, RMSprop and Adam, with and without BatchNorm / LayerNorm",
        "How each optimizer moves on the same loss surface. Every optimizer x norm runs at a small sweep of "
        "learning rates; curves show each group's best (lowest final training loss). The landscape probe follows "
        "each optimizer's own next update (direction = \"update\"): eta = lr lands where it actually steps. "
        "Run with `smoothnorm run optimizers`.",
        {"data": "synthetic_images", "dtype": "float32", "n_train": 512, "n_test": 500, "batch_size": 32,
         "steps": 200, "seed": 0, "eval_every": 50, "probe_every": 25, "checkpoint_every": 100},
        runs,
        [{"kind": "landscape", "preset": "vgg", "direction": "update"}],
        {"columns": 4, "panels": panels},
        {"quick": {}, "paper": {"n_train": 50000, "data": "cifar10", "steps": 5000, "n_test": 10000,
                                "eval_every": 500, "probe_every": 100, "checkpoint_every": 500},
         "tiny": {**TINY, "batch_size": 8}},
    )


# ----------------------------------------------------------------------------------------------------------------
# input_normalization: raw versus standardized inputs
# ----------------------------------------------------------------------------------------------------------------
REGRESSION = {"data": "gaussian_regression", "dim": 10, "n_train": 256, "feature_scale_range": 100.0,
              "batch_size": 0}


def input_normalization() -> str:
    runs, groups = [], {}
    inputs = {"raw": "none", "standardized": "standardize"}
    for name, input_norm in inputs.items():
        for lr in (1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2):
            label = f"linear, {name} @ lr={lr:g}"
            runs.append({"label": label, "model": "dln", "depth": 1, "hidden": 10, **REGRESSION,
                         "input_norm": input_norm, "lr": lr})
            groups.setdefault("linear", []).append(label)
    for name, input_norm in inputs.items():
        for norm in ("none", "batch"):
            for lr in (1e-5, 1e-4, 1e-3, 1e-2):
                label = f"MLP, {name}, {NORM_NAMES[norm]} @ lr={lr:g}"
                runs.append({"label": label, "model": "dln", "depth": 3, "hidden": 12, "activation": "tanh",
                             **REGRESSION, "input_norm": input_norm, "norm": norm, "lr": lr})
                groups.setdefault("mlp", []).append(label)
    for name, input_norm in {"raw 0-255": "none", "per-channel standardized": "per_channel"}.items():
        for norm in ("none", "batch"):
            for lr in (0.001, 0.01, 0.1):
                label = f"VGG, {name}, {NORM_NAMES[norm]} @ lr={lr:g}"
                runs.append({"label": label, **VGG, "dtype": "float32", "scale": "raw", "input_norm": input_norm,
                             "norm": norm, "lr": lr})
                groups.setdefault("vgg", []).append(label)
    panels = [
        {"kind": "sweep", "runs": groups["linear"], "title": "(a) linear model: final loss vs learning rate"},
        {"kind": "accuracy", "runs": groups["linear"], "select": "best_lr", "metric": "loss", "logy": True,
         "title": "(b) linear model: loss at the best lr"},
        {"kind": "series", "runs": groups["linear"], "select": "best_lr", "probe": "hessian",
         "key": "condition_number", "logy": True, "ylabel": "Hessian condition number",
         "title": "(c) linear model: Hessian condition number"},
        {"kind": "series", "runs": groups["linear"], "select": "best_lr", "probe": "hessian",
         "key": "top_eigenvalues", "logy": True, "ylabel": "top Hessian eigenvalue",
         "title": "(d) linear model: top Hessian eigenvalue"},
        {"kind": "sweep", "runs": groups["mlp"], "title": "(e) tanh MLP: final loss vs learning rate"},
        {"kind": "accuracy", "runs": groups["mlp"], "select": "best_lr", "metric": "loss", "logy": True,
         "title": "(f) tanh MLP: loss at the best lr"},
        {"kind": "series", "runs": groups["mlp"], "select": "best_lr", "probe": "hessian", "key": "top_eigenvalues",
         "logy": True, "ylabel": "top Hessian eigenvalue", "title": "(g) tanh MLP: top Hessian eigenvalue"},
        {"kind": "sweep", "runs": groups["vgg"], "title": "(h) VGG on images: final loss vs learning rate"},
    ]
    return render(
        "Optimization study: input normalization (raw versus standardized inputs)",
        "Badly scaled regression features (scales spread over two orders of magnitude) and raw 0-255 pixels, "
        "with and without standardizing the inputs (statistics of the training split only) and with and without "
        "BatchNorm: final loss against the learning rate (the largest one that still trains), loss curves at the "
        "best learning rate, and the Hessian's top eigenvalue and condition number. Run with "
        "`smoothnorm run input_normalization`.",
        {"data": "synthetic_images", "dtype": "float64", "n_train": 512, "n_test": 500, "batch_size": 32,
         "steps": 200, "seed": 0, "eval_every": 50, "probe_every": 50, "checkpoint_every": 100},
        runs,
        [{"kind": "hessian", "k": 1, "condition": True, "max_params": 500}],
        {"columns": 4, "panels": panels},
        {"quick": {}, "paper": {"steps": 2000, "n_train": 5000, "eval_every": 200, "probe_every": 200},
         "tiny": {**TINY, "n_train": 64}},
    )


# ----------------------------------------------------------------------------------------------------------------
# activations: sigmoid, tanh, ReLU x no norm, BN before the activation (z), BN after it (a)
# ----------------------------------------------------------------------------------------------------------------
def activations() -> str:
    runs, groups = [], {}
    positions = {"no norm": ("none", "before_activation"), "BN on z": ("batch", "before_activation"),
                 "BN on a": ("batch", "after_activation")}
    for model_name, model, lr in (("MLP", MLP, 0.1), ("VGG", VGG, 0.05)):
        for activation in ("sigmoid", "tanh", "relu"):
            for pos_name, (norm, position) in positions.items():
                label = f"{model_name} {activation}, {pos_name}"
                runs.append({"label": label, **model, "activation": activation, "norm": norm,
                             "norm_position": position, "lr": lr})
                groups.setdefault(model_name, []).append(label)
                groups.setdefault((model_name, activation), []).append(label)
    panels = []
    for model_name in ("MLP", "VGG"):
        for activation in ("sigmoid", "tanh", "relu"):
            panels.append({"kind": "accuracy", "runs": groups[(model_name, activation)], "metric": "loss",
                           "smooth": 10, "title": f"{model_name}, {activation}: training loss"})
        panels.append({"kind": "series", "runs": groups[(model_name, "sigmoid")] + groups[(model_name, "tanh")],
                       "probe": "saturation", "key": "mean", "ylabel": "fraction of units with |z| > 4",
                       "title": f"{model_name}: saturated units (sigmoid, tanh)"})
    for model_name in ("MLP", "VGG"):
        panels.append({"kind": "profile", "runs": groups[model_name], "probe": "grad_norms", "key": "norms",
                       "ylabel": "gradient norm at initialization",
                       "title": f"{model_name}: gradient norm per layer at step 0"})
    return render(
        "Optimization study: activations (sigmoid, tanh, ReLU) and where the norm sits",
        "Sigmoid, tanh and ReLU networks without a norm, with BatchNorm on the pre-activations z (before the "
        "activation, the paper's placement) and with BatchNorm on the activations a (after it): training loss, the "
        "fraction of saturated units (|z| > 4, the input of each activation) and the gradient norm of every weight "
        "layer at initialization. One learning rate per model (SGD, not tuned). "
        "Run with `smoothnorm run activations`.",
        {"data": "synthetic_images", "dtype": "float32", "n_train": 1024, "n_test": 500, "batch_size": 32,
         "steps": 300, "seed": 0, "eval_every": 50, "probe_every": 20, "checkpoint_every": 100},
        runs,
        [{"kind": "saturation", "threshold": 4.0}, {"kind": "grad_norms", "every": 1000000}],
        {"columns": 4, "panels": panels},
        {"quick": {}, "paper": {"data": "cifar10", "steps": 5000, "n_test": 10000, "eval_every": 500,
                                "probe_every": 100, "checkpoint_every": 500},
         "tiny": TINY},
    )


# ----------------------------------------------------------------------------------------------------------------
# batchnorm_train_vs_test: batch statistics in training, running statistics in testing
# ----------------------------------------------------------------------------------------------------------------
def batchnorm_train_vs_test() -> str:
    runs, groups = [], {}
    for model_name, model, sizes in (("MLP", MLP, (8, 32, 128, 512)), ("VGG", VGG, (8, 32, 128))):
        for momentum in (0.1, 0.01):
            if model_name == "VGG" and momentum != 0.1:
                continue
            for size in sizes:
                label = f"{model_name}, BN momentum {momentum:g} @ batch {size}"
                run = {"label": label, **model, "norm": "batch", "batch_size": size}
                if momentum != 0.1:
                    run["norm_options"] = {"momentum": momentum}
                runs.append(run)
                groups.setdefault(model_name, []).append(label)
                groups.setdefault((model_name, momentum), []).append(label)
    small = [r["label"] for r in runs if r["label"].endswith("@ batch 8") and "0.01" not in r["label"]]
    momenta = [r["label"] for r in runs if r["label"].startswith("MLP") and r["label"].endswith(("@ batch 8",
                                                                                              "@ batch 128"))]
    panels = [
        {"kind": "sweep", "runs": groups["MLP"] + groups["VGG"], "x": "batch_size",
         "metric": ["test_acc", "test_acc_batch_stats"], "last": 1, "logy": False, "percent": True,
         "require_progress": False,
         "ylabel": "final test accuracy (%)",
         "title": "(a) test accuracy: running statistics (solid) vs batch statistics (dashed)"},
        {"kind": "series", "runs": groups[("MLP", 0.1)], "probe": "bn_gap", "key": "mean_gap", "logy": True,
         "ylabel": "|batch mean - running mean| / running std", "title": "(b) MLP: mean gap, by batch size"},
        {"kind": "series", "runs": groups[("MLP", 0.1)], "probe": "bn_gap", "key": "var_gap", "logy": True,
         "ylabel": "|log(batch var / running var)|", "title": "(c) MLP: variance gap, by batch size"},
        {"kind": "series", "runs": momenta, "probe": "bn_gap",
         "key": "mean_gap", "logy": True, "ylabel": "|batch mean - running mean| / running std",
         "title": "(d) MLP: BN momentum 0.1 vs 0.01"},
        {"kind": "series", "runs": groups[("VGG", 0.1)], "probe": "bn_gap", "key": "mean_gap", "logy": True,
         "ylabel": "|batch mean - running mean| / running std", "title": "(e) VGG: mean gap, by batch size"},
        {"kind": "series", "runs": small, "probe": "metrics", "key": "test_acc",
         "ylabel": "test accuracy, running statistics", "title": "(f) batch 8: test accuracy in eval mode"},
        {"kind": "series", "runs": small, "probe": "metrics", "key": "test_acc_batch_stats",
         "ylabel": "test accuracy, batch statistics", "title": "(g) batch 8: test accuracy in training mode"},
    ]
    return render(
        "Optimization study: BatchNorm in training (batch statistics) versus testing (running statistics)",
        "BatchNorm networks trained at batch sizes 8 to 512: test accuracy with running statistics (eval mode) "
        "and with the statistics of test batches of the training batch size (training mode), the gap between "
        "each BN layer's batch statistics and its running statistics over training, and BN's momentum. SGD with "
        "momentum 0.9 at lr 0.01 for every batch size (not tuned). "
        "Run with `smoothnorm run batchnorm_train_vs_test`.",
        {"data": "synthetic_images", "dtype": "float32", "n_train": 2048, "n_test": 512, "steps": 600, "seed": 0,
         "optimizer": "sgd", "optimizer_options": {"momentum": 0.9}, "lr": 0.01, "eval_every": 100,
         "probe_every": 30, "checkpoint_every": 200, "eval_batch_stats": True},
        runs,
        [{"kind": "bn_gap"}],
        {"columns": 4, "panels": panels},
        {"quick": {}, "paper": {"data": "cifar10", "n_train": 50000, "n_test": 10000, "steps": 5000,
                                "eval_every": 500, "probe_every": 100, "checkpoint_every": 500},
         "tiny": {**TINY, "n_train": 1024}},
    )


SPECS = {"optimizers": optimizers, "input_normalization": input_normalization, "activations": activations,
         "batchnorm_train_vs_test": batchnorm_train_vs_test}


def main() -> None:
    for name, make in SPECS.items():
        (HERE / f"{name}.toml").write_text(make())


if __name__ == "__main__":
    main()
