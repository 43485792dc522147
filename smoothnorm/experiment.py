"""One run: build its data, network, optimizer and probes from a resolved RunSpec; train it into its run directory,
resuming from the checkpoint there.

Specs (schema, validation, run identity) live in smoothnorm.spec; where runs execute (sequentially, on Dask) in
smoothnorm.executors. The names of smoothnorm.spec are re-exported here for existing scripts.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

import numpy as np

from smoothnorm import __version__
from smoothnorm.results import jsonl_line, read_jsonl, read_npz, write_json, write_jsonl, write_npz
from smoothnorm.spec import (  # noqa: F401 (re-exported)
    BASE_KEYS,
    PROBE_KEYS,
    PROFILES,
    TOP_KEYS,
    ProbeSpec,
    RunSpec,
    Spec,
    SpecError,
    _probe_from_identity,
    _probe_key,
    _union_probes,
    default_spec_folder,
    list_specs,
    load_spec,
    merge_runs,
    run_id_for,
)


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
            probes.append(train.HessianProbe(name="hessian", every=p.every, start=p.start, k=o["k"], mode=o["mode"]))
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


def results_root(root: str | os.PathLike | None, profile: str) -> Path:
    return Path(root or os.environ.get("SMOOTHNORM_RUNS", "runs")) / profile
