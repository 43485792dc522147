"""What a run needs, built from its resolved settings: data, network (with its loss), optimizer-free training
pieces (the batch of each step, the evaluation on the test split) and the probes it records; `build_trainer` puts
them together.

smoothnorm.runs.runner executes a run from these (training, checkpoints, resuming).
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Callable
from functools import lru_cache

import numpy as np

from smoothnorm.runs.schema import SpecError, resolve_probe_steps
from smoothnorm.runs.spec import ProbeSpec, RunSpec


@lru_cache(maxsize=4)
def _raw_dataset(kind: str, n_train: int, n_test: int, dim: int, data_seed: int, data_root: str, scale: str,
                 feature_scale_range: float, class_colour: float = 0.0, verify: bool = True):
    from smoothnorm import data

    if kind == "synthetic_images":
        (xtr, ytr), (xte, yte) = data.synthetic_images(n_train, n_test, seed=data_seed, scale=scale,
                                                       class_colour=class_colour)
        return xtr, ytr, xte, yte
    if kind == "gaussian_regression":
        x, y = data.gaussian_regression(n=n_train, dim=dim, seed=data_seed, feature_scale_range=feature_scale_range)
        return x, y, None, None
    root = data_root or None
    if root is None:
        from smoothnorm.data._io import data_home

        root = str(data_home())
    if not verify:
        print(f"warning: data_verify = false: reading CIFAR-10 from {root} without checking its MD5s; results may "
              "not be comparable with runs on the official files", file=sys.stderr)
    xtr, ytr = data.load_cifar10(root, train=True, scale=scale, verify=verify)
    xte, yte = data.load_cifar10(root, train=False, scale=scale, verify=verify)
    return xtr, ytr, xte, yte


@lru_cache(maxsize=4)
def _dataset(kind: str, n_train: int, n_test: int, dim: int, data_seed: int, data_root: str, scale: str = "normalized",
             feature_scale_range: float = 1.0, input_norm: str = "none", class_colour: float = 0.0,
             verify: bool = True):
    """The run's data: (x_train, y_train, x_test, y_test), the input normalization fitted on x_train alone."""
    from smoothnorm.data import normalize_inputs

    xtr, ytr, xte, yte = _raw_dataset(kind, n_train, n_test, dim, data_seed, data_root, scale, feature_scale_range,
                                      class_colour, verify)
    if input_norm != "none":
        if xte is None:
            (xtr,) = normalize_inputs(input_norm, xtr)
        else:
            xtr, xte = normalize_inputs(input_norm, xtr, xte)
    return xtr, ytr, xte, yte


def _run_dataset(s: dict):
    """The run's data; with train_subset, only the first train_subset training examples (a fixed subset)."""
    xtr, ytr, xte, yte = _dataset(s["data"], s["n_train"], s["n_test"], s["dim"], s["data_seed"], s["data_root"],
                                  s["scale"], s["feature_scale_range"], s["input_norm"], s["class_colour"],
                                  s.get("data_verify", True))
    subset = s.get("train_subset", 0)
    if subset:
        if subset > xtr.shape[0]:
            raise SpecError(f"key 'train_subset' ({subset}) exceeds the training split's {xtr.shape[0]} examples")
        xtr, ytr = xtr[:subset], ytr[:subset]
    return xtr, ytr, xte, yte


# The spec's `loss` values -> smoothnorm.nn.LOSSES names ("default": the model's own loss).
SPEC_LOSSES = {"cross_entropy": "cross_entropy", "mse_onehot": "onehot_squared_error"}


def build_network(s: dict, input_shape: tuple[int, ...] | None = None):
    """The run's network with the run's training loss. input_shape: one sample's shape (an MLP flattens images, so
    it needs the data's)."""
    from smoothnorm.nn.losses import LOSSES

    net = _architecture(s, input_shape)
    loss = s.get("loss", "default")
    if loss != "default":
        if loss not in SPEC_LOSSES:
            raise SpecError(f"key 'loss' expects one of {['default', *SPEC_LOSSES]}, got {loss!r}")
        if s["model"] == "dln":
            raise SpecError(f"key 'loss' expects 'default' for model 'dln' (regression targets), got {loss!r}")
        net.loss_fn = LOSSES[SPEC_LOSSES[loss]]()
    return net


def _architecture(s: dict, input_shape: tuple[int, ...] | None):
    """The run's network with its model's default loss."""
    from smoothnorm.nn import models

    norm = None if s["norm"] == "none" else plugin_norm(s) or s["norm"]
    dtype = np.dtype(s["dtype"])
    common = {"norm": norm, "dtype": dtype, "seed": s["seed"], "init": s["init"],
              "norm_options": _layer_norm_options(s)}
    activation = s.get("activation", "default")
    position = s.get("norm_position", "before_activation")
    build = _plugin(s, "model")
    if build is not None:
        return _plugin_model(s, build, input_shape)
    if s["model"] == "vgg":
        return models.vgg(s["arch"], width=s["width"], activation="relu" if activation == "default" else activation,
                          norm_position=position, algorithm=s["conv_algorithm"], **common)
    if s["model"] == "dln":
        return models.dln(s["depth"], s["hidden"], in_dim=s["dim"], out_dim=s["dim"],
                          activation="identity" if activation == "default" else activation, **common)
    if s["model"] == "mlp":
        in_dim = int(np.prod(input_shape)) if input_shape is not None else 3 * 32 * 32
        return models.mlp(in_dim, [s["hidden"]] * (s["depth"] - 1), 10,
                          activation="relu" if activation == "default" else activation, norm_position=position,
                          **common)
    raise SpecError(f"model {s['model']!r} has no data set in the experiment runner yet")


# Default size of the fixed subset behind BatchNorm's population statistics (capped by n_train).
POPULATION_SAMPLES = 1000


def _layer_norm_options(s: dict) -> dict | None:
    """norm_options without the keys the runner reads itself (population_samples)."""
    options = {k: v for k, v in s["norm_options"].items() if k != "population_samples"}
    return options or None


def plugin_norm(s: dict):
    """The norm layer class of a run whose `norm` is a plug-in (imported and checked), else None."""
    return _plugin(s, "norm")


def _plugin(s: dict, key: str):
    """The object a run's plug-in `key` names (imported and checked), else None."""
    plugin = s.get("plugin_files", {}).get(key)
    if plugin is None:
        return None
    from smoothnorm.runs.plugins import PluginError, load

    try:
        return load(key, plugin, f"key {key!r} = {plugin['ref']!r}")
    except PluginError as err:
        raise SpecError(str(err)) from None


def _plugin_model(s: dict, build, input_shape):
    """A plug-in model's network: build(settings, input_shape), checked to be a Network; for a "torch:" model
    a torch.nn.Module (built with torch's generator seeded from the run's seed) wrapped in a TorchNetwork."""
    from smoothnorm.nn.network import Network
    from smoothnorm.runs.plugins import is_torch

    if is_torch(s["plugin_files"]["model"]):
        if s["norm_options"].get("statistics") == "population":
            raise SpecError(f"key 'model' = {s['model']!r}: norm_options statistics = \"population\" applies to the "
                            "package's BatchNorm, not to a PyTorch module's")
        from smoothnorm.torch import network_from_build

        try:
            return network_from_build(build, s, input_shape, f"key 'model' = {s['model']!r}")
        except ValueError as err:
            raise SpecError(str(err)) from None
    net = build(dict(s), input_shape)
    if not isinstance(net, Network):
        raise SpecError(f"key 'model' = {s['model']!r}: build(settings, input_shape) returned {type(net).__name__}, "
                        "not a smoothnorm.nn.network.Network")
    return net


def check_norm_options(run: RunSpec) -> None:
    """The run's norm_options build its norm layer (the values; the schema checked the names without Numba):
    a SpecError naming the run otherwise. Called for every run before any run trains."""
    from smoothnorm.nn.norms import make_norm

    s = run.settings
    _plugin(s, "model")  # plug-ins are imported and checked here, before any run trains
    norm = plugin_norm(s) or s["norm"]
    options = _layer_norm_options(s)
    if s["norm"] == "none" or not options:
        return
    try:
        make_norm(norm, 2, **options)
    except TypeError as exc:  # a value of the wrong type
        raise SpecError(f"run {run.label!r}: key 'norm_options' {s['norm_options']!r:.80} does not fit norm "
                        f"{s['norm']!r}: {exc}") from exc
    except ValueError as exc:
        # GroupNorm's groups (and a plug-in's options, for all we know) may depend on each layer's width: those
        # are checked when the layer is built.
        if s["norm"] != "group" and "norm" not in s.get("plugins", {}):
            raise SpecError(f"run {run.label!r}: key 'norm_options' {s['norm_options']!r:.80} does not fit norm "
                            f"{s['norm']!r}: {exc}") from exc


def _population_subset(s: dict, x: np.ndarray) -> np.ndarray | None:
    """The fixed training subset behind BatchNorm's population statistics (Ghorbani et al. 2019; norm_options
    statistics = "population"): `population_samples` images drawn once from data_seed; None for other runs."""
    options = s["norm_options"]
    if options.get("statistics") != "population":
        if "population_samples" in options:
            raise SpecError("norm_options: 'population_samples' needs statistics = \"population\"")
        return None
    size = options.get("population_samples", min(POPULATION_SAMPLES, x.shape[0]))
    if isinstance(size, bool) or not isinstance(size, int) or not 2 <= size <= x.shape[0]:
        raise SpecError(f"norm_options: 'population_samples' expects an integer in [2, {x.shape[0]}] (n_train), "
                        f"got {size!r}")
    chosen = np.random.default_rng([s["data_seed"], 17]).choice(x.shape[0], size, replace=False)
    return np.ascontiguousarray(x[np.sort(chosen)])


def _with_population_statistics(net, batch_fn: Callable, subset: np.ndarray | None) -> Callable:
    """Before each step's batch is handed out, a forward pass over the population subset at the current weights
    sets every population-statistics BatchNorm's statistics (docs/PROTOCOL.md); batch_fn itself without a subset."""
    from smoothnorm.nn.norms.batch import refresh_population_statistics

    if subset is None:
        return batch_fn

    def batch_with_statistics(step: int):
        refresh_population_statistics(net, subset)
        return batch_fn(step)

    return batch_with_statistics


def layer_reference(net, ref, purpose: str) -> str:
    """Resolve a layer reference from a spec: a layer name, or the paper's "Layer #k" (1-based).

    "Layer #k" is the k-th weight layer (Conv2d or Linear) in execution order. For `purpose="ics"` it names that
    weight layer; for "distributions" it names the output of its block before the non-linearity: the norm layer
    right after it if there is one, else the weight layer itself (docs/PROTOCOL.md).
    """
    if isinstance(ref, str):
        names = [layer.name for layer in net.layers]
        if ref not in names:
            raise SpecError(f"layer {ref!r}: unknown; layers: {names}")
        return ref
    index = {layer.name: i for i, layer in enumerate(net.layers)}
    weights = [index[name] for name in net.weight_layer_names()]
    if not isinstance(ref, int) or isinstance(ref, bool) or not 1 <= ref <= len(weights):
        raise SpecError(f"layer #{ref}: expected 1..{len(weights)} (the network's weight layers)")
    i = weights[ref - 1]
    if purpose == "distributions" and i + 1 < len(net.layers):
        nxt = net.layers[i + 1]
        if nxt.param_shapes() or hasattr(nxt, "running_mean") or type(nxt).__name__.endswith("Norm"):
            if nxt.name not in net.weight_layer_names():
                return nxt.name
    return net.layers[i].name


def plugin_probe(p: ProbeSpec):
    """The probe a plug-in probe spec names: its class imported, checked against the Probe protocol and built as
    cls(name=..., every=..., start=..., **options); SpecError naming the spec, the key and the cause otherwise."""
    from smoothnorm.runs.plugins import PluginError, load

    where = p.plugin["where"]
    try:
        cls = load("probe", p.plugin, where)
    except PluginError as err:
        raise SpecError(str(err)) from None
    try:
        return cls(name=p.name, every=p.every, start=p.start, **copy.deepcopy(p.options))
    except (TypeError, ValueError) as err:
        options = ", ".join(f"{k} = {v!r}" for k, v in p.options.items()) or "none"
        raise SpecError(f"{where}: {cls.__name__}(name, every, start, **options) does not take the table's options "
                        f"({options}): {type(err).__name__}: {err}") from None


def check_plugin_probes(run: RunSpec) -> None:
    """Import, check and build the run's plug-in probes once: a bad one stops the command before any run trains."""
    for p in run.probes:
        if p.plugin is not None:
            plugin_probe(p)


def build_probes(net, run: RunSpec) -> list:
    from smoothnorm.train.probes import beyond as beyond_probes
    from smoothnorm.train.probes import paper as paper_probes

    probes = []
    for p in run.probes:
        o = dict(p.options)
        if p.plugin is not None:
            probes.append(plugin_probe(p))
        elif p.kind == "landscape":
            etas = [m * run.settings["lr"] for m in o.pop("multipliers")] or None
            probes.append(paper_probes.LandscapeProbe(name="landscape", every=p.every, start=p.start, etas=etas, **o))
        elif p.kind == "ics":
            layers = [layer_reference(net, ref, "ics") for ref in o["layers"]] or None
            probes.append(paper_probes.ICSProbe(name="ics", every=p.every, start=p.start, layers=layers))
        elif p.kind == "distributions":
            layers = [layer_reference(net, ref, "distributions") for ref in o["layers"]]
            if not layers:
                raise SpecError(f"run {run.label!r}: a distributions probe needs 'layers'")
            probes.append(paper_probes.DistributionProbe(name="distributions", every=p.every, start=p.start,
                                                        layers=layers, units=o["units"], bins=o["bins"],
                                                        seed=run.settings["seed"]))
        elif p.kind == "hessian":
            probes.append(paper_probes.HessianProbe(name="hessian", every=p.every, start=p.start, k=o["k"],
                                             mode=o["mode"], condition=o["condition"], max_params=o["max_params"],
                                             tol=o["tol"]))
        elif p.kind == "saturation":
            probes.append(paper_probes.SaturationProbe(name="saturation", every=p.every, start=p.start,
                                                threshold=o["threshold"]))
        elif p.kind == "grad_norms":
            probes.append(paper_probes.GradNormProbe(name="grad_norms", every=p.every, start=p.start))
        elif p.kind == "bn_gap":
            probes.append(paper_probes.BatchStatsGapProbe(name="bn_gap", every=p.every, start=p.start))
        elif p.kind in ("spectrum", "gradient_explosion"):
            steps = o.pop("steps")
            if not all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in steps):
                raise SpecError(f"run {run.label!r}: {p.kind} probe key 'steps' expects non-negative integers, "
                                f"got {steps!r}")
            cls = beyond_probes.SpectrumProbe if p.kind == "spectrum" else beyond_probes.GradientExplosionProbe
            probes.append(cls(name=p.kind, every=p.every, start=p.start, steps=steps, **o))
        elif p.kind == "grad_distribution":
            probes.append(beyond_probes.GradDistributionProbe(name="grad_distribution", every=p.every, start=p.start,
                                                      bins=o["bins"], limit=o["limit"], steps=o["steps"]))
        elif p.kind == "one_step_loss":
            from smoothnorm.measure.stability import DEFAULT_LRS

            probes.append(beyond_probes.OneStepLossProbe(name="one_step_loss", every=p.every, start=p.start,
                                                 lrs=[float(lr) for lr in o["lrs"]] or DEFAULT_LRS, steps=o["steps"]))
        elif p.kind == "surface":
            o["steps"] = resolve_probe_steps(f"run {run.label!r}: surface probe", p.kind, o, run.settings["steps"])
            probes.append(beyond_probes.SurfaceProbe(name="surface", every=p.every, start=p.start, **o))
        else:
            raise SpecError(f"run {run.label!r}: probe kind {p.kind!r} is neither built in nor a plug-in the spec "
                            "names")
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


def _eval_fn(s: dict, xte, yte, population_subset: np.ndarray | None = None):
    """Test metrics every eval_every steps: test_acc / test_loss in eval mode (running statistics); with
    eval_batch_stats also with batch statistics of test batches of the training size; for population-statistics
    BatchNorm also test_acc_population / test_loss_population, with the population statistics of the current
    weights (refreshed on the fixed subset, as the next step would: training is unchanged)."""
    from smoothnorm.nn.norms.batch import refresh_population_statistics

    if xte is None:
        return None
    limit = s["eval_samples"] or xte.shape[0]
    xe, ye = xte[:limit], yte[:limit]

    def evaluate(net, mode: str, size: int, full_batches: bool = False) -> tuple[float, float]:
        correct = total_loss = 0.0
        count = 0
        for start in range(0, xe.shape[0], size):
            xb, yb = xe[start:start + size], ye[start:start + size]
            if full_batches and xb.shape[0] < size and count:
                break  # batch statistics need full batches, as in training (drop_last)
            with np.errstate(all="ignore"):
                loss = net.loss(xb, yb, mode=mode)
            correct += float(np.sum(np.argmax(net.output, axis=1) == yb))
            total_loss += loss * xb.shape[0]
            count += xb.shape[0]
        return correct / count, total_loss / count

    def fn(net):
        acc, loss = evaluate(net, "eval", 500)
        row = {"test_acc": acc, "test_loss": loss}
        if s.get("eval_batch_stats"):
            # BatchNorm in training mode on the test split: batch statistics of test batches of the training size.
            size = min(s["batch_size"] or xe.shape[0], xe.shape[0])
            row["test_acc_batch_stats"], row["test_loss_batch_stats"] = evaluate(net, "probe", size, True)
        if population_subset is not None:
            # Probe mode: population layers normalize with their (constant) statistics, sample by sample. The
            # running averages eval mode uses trail them when the statistics drift (docs/PROTOCOL.md).
            refresh_population_statistics(net, population_subset)
            row["test_acc_population"], row["test_loss_population"] = evaluate(net, "probe", 500)
        return row

    return fn


def build_trainer(run: RunSpec, dataset: tuple | None = None):
    """The run's Trainer at step 0: data, network, optimizer, batches, evaluation and probes from its settings.
    dataset: (x_train, y_train, x_test, y_test) to use instead of the run's own (smoothnorm.runs.estimate times
    runs on stand-in data of the same shapes)."""
    from smoothnorm import optim
    from smoothnorm.train.loop import Trainer

    s = run.settings
    xtr, ytr, xte, yte = dataset if dataset is not None else _run_dataset(s)
    net = build_network(s, xtr.shape[1:])
    if s["model"] == "mlp":
        xtr, xte = xtr.reshape(len(xtr), -1), None if xte is None else xte.reshape(len(xte), -1)
    optimizer = optim.make_optimizer(s["optimizer"], lr=s["lr"], **s["optimizer_options"])
    subset = _population_subset(s, xtr)
    batch_fn = _with_population_statistics(net, _batch_fn(s, xtr, ytr), subset)
    return Trainer(net, optimizer, batch_fn, build_probes(net, run),
                   eval_fn=_eval_fn(s, xte, yte, subset), eval_every=s["eval_every"], seed=s["seed"])
