"""Plug-ins: a spec may name a normalization (`norm`), a model (`model`), a probe kind (`[[probes]] kind`), a figure
panel kind (`[[figure.panels]] kind`) or a claim quantity (`[[claims]] quantity`) written in the user's own code
instead of one of the built-ins.

A reference is
- `"./file.py:Name"` (or `"../dir/file.py:Name"`): a file, resolved relative to the spec's folder;
- `"package.module:Name"`: an importable module;
- a plain name registered by an installed package under the entry-point group of its kind (`GROUPS`:
  `smoothnorm.norms`, `smoothnorm.models`, `smoothnorm.probes`, `smoothnorm.panels`, `smoothnorm.quantities`; in its
  pyproject.toml: `[project.entry-points."smoothnorm.norms"] scale_only = "mypkg.norms:ScaleOnly"`).
A model may also be a PyTorch module: `"torch:package.module:build"` or `"torch:./file.py:build"`, a callable
`build(settings, input_shape)` returning a `torch.nn.Module`, which the run wraps in smoothnorm.torch.TorchNetwork
(needs `pip install 'smoothnorm[torch]'`).
Loading and validating a spec never imports a plug-in (nor torch): it checks the reference's form, finds its source file
(without importing it) and hashes it. The hash and the reference of a norm, model or probe enter the run's identity,
so editing the plug-in's file trains the runs again; panels and quantities only read stored runs and enter no run's
identity. `run` and `reproduce` import a plug-in (`load`) before it is used (norms, models and probes before any
run trains; panels when figures are drawn, quantities when claims are evaluated), check it against its kind's
protocol and say which file they loaded:
- a norm is a `smoothnorm.nn.layer.Layer` subclass taking `(num_features, **norm_options)` and defining `forward`
  and `backward`; an R-pass, `forward_r` / `backward_r`, is optional: without it exact Hessian probes record NaN and
  say why;
- a model is a callable `build(settings, input_shape)` returning a smoothnorm.nn.network.Network, given the run's
  settings and one sample's shape;
- a probe is a `smoothnorm.train.probes.base.Probe` subclass defining `measure`, built as
  `Probe(name=..., every=..., start=..., **options)` with the options of its `[[probes]]` table; it records under
  `probe_name` (the name after the colon, or the entry point's name);
- a panel is a callable `draw(ax, runs, *, colors, **options)` like the built-in panels (smoothnorm.plots.panels);
- a quantity is a callable `quantity(run, layer)` returning `(steps, values)` of one stored run
  (smoothnorm.runs.store.RunResult; `layer` is the claim's `layer`, or None), like the built-in quantities
  (smoothnorm.claims.evaluate.quantity_series); a KeyError means the run does not record it.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import inspect
import re
import sys
from pathlib import Path

# A model reference starting so names a function building a torch.nn.Module (smoothnorm.torch wraps it).
TORCH_PREFIX = "torch:"
TORCH_EXTRA = "pip install 'smoothnorm[torch]'"
# Entry-point group per plug-in kind.
GROUPS = {"norm": "smoothnorm.norms", "model": "smoothnorm.models", "probe": "smoothnorm.probes",
          "panel": "smoothnorm.panels", "quantity": "smoothnorm.quantities"}
_MODULE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class PluginError(ValueError):
    """A plug-in reference that cannot be found, imported or used; the message names the spec key and the cause."""


def is_reference(value: str) -> bool:
    """True for "module:Name" and "./file.py:Name" forms (the built-in names contain no colon)."""
    return isinstance(value, str) and ":" in value


def is_torch(plugin: dict) -> bool:
    """True for a resolved model plug-in named "torch:...": a function building a torch.nn.Module."""
    return plugin["ref"].startswith(TORCH_PREFIX)


def _split(value: str, where: str) -> tuple[str, str]:
    if value.startswith(TORCH_PREFIX):
        value = value[len(TORCH_PREFIX):]
    target, _, name = value.rpartition(":")
    if not _NAME.match(name):
        raise PluginError(f"{where}: plug-in {value!r}: expected 'package.module:Name' or './file.py:Name', "
                          f"got {name!r} after the colon")
    if target.endswith(".py"):
        return target, name
    if not _MODULE.match(target):
        raise PluginError(f"{where}: plug-in {value!r}: {target!r} is neither a file ending in .py nor a module "
                          "path like package.module")
    return target, name


def _module_file(module: str) -> Path | None:
    """The source file of `module`, found without importing it (nor its parent packages)."""
    top, *rest = module.split(".")
    spec = importlib.util.find_spec(top)
    if spec is None:
        return None
    if not rest:
        return Path(spec.origin) if spec.origin and spec.origin.endswith(".py") else None
    for location in spec.submodule_search_locations or ():
        base = Path(location, *rest[:-1])
        for candidate in (base / f"{rest[-1]}.py", base / rest[-1] / "__init__.py"):
            if candidate.is_file():
                return candidate
    return None


def _entry_point(kind: str, name: str):
    for point in importlib.metadata.entry_points(group=GROUPS[kind]):
        if point.name == name:
            return point
    return None


def is_plugin(kind: str, value) -> bool:
    """True when `value` may name a plug-in of `kind`: a reference, or a name an installed package registers."""
    return isinstance(value, str) and (is_reference(value) or value in entry_point_names(kind))


def plugin_name(value: str) -> str:
    """The short name of a plug-in as written in a spec: the name after the last colon (an entry point's own name
    has none), e.g. "./dead_relu.py:DeadReLUProbe" -> "DeadReLUProbe". Probe plug-ins record under it."""
    return value.rpartition(":")[2]


def loaded_message(kind: str, plugin: dict) -> str:
    """What `run`, `reproduce`, `plot` and `claims` print for a plug-in they import."""
    return f"plug-in {kind} {plugin['ref']!r}: loaded from {plugin['file']}"


def entry_point_names(kind: str) -> list[str]:
    """The names installed packages register for `kind` (read from package metadata; nothing is imported)."""
    return sorted(point.name for point in importlib.metadata.entry_points(group=GROUPS[kind]))


def resolve(kind: str, value: str, spec_folder: Path, where: str) -> dict:
    """{"ref": value, "file": its source file (absolute), "sha256": the file's hash} for a plug-in reference or an
    entry-point name; PluginError naming `where` (the spec and key) when the file or module cannot be found."""
    if not is_reference(value):
        point = _entry_point(kind, value)
        if point is None:
            return {}
        target, name = _split(point.value, f"{where} (entry point {GROUPS[kind]}:{value})")
    else:
        if value.startswith(TORCH_PREFIX) and kind != "model":
            raise PluginError(f"{where}: plug-in {value!r}: 'torch:' names a model (a function building a "
                              f"torch.nn.Module), not a {kind}")
        target, name = _split(value, where)
    if target.endswith(".py"):
        path = (spec_folder / target).resolve()
        if not path.is_file():
            raise PluginError(f"{where}: plug-in {value!r}: no file {path} (paths are relative to the spec's "
                              "folder)")
    else:
        found = _module_file(target)
        if found is None:
            raise PluginError(f"{where}: plug-in {value!r}: no module {target!r} on the Python path")
        path = found.resolve()
    return {"ref": value, "file": str(path), "target": target, "name": name,
            "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


def load(kind: str, plugin: dict, where: str):
    """Import a resolved plug-in and check it against its kind's protocol; returns the object."""
    target, name, path = plugin["target"], plugin["name"], Path(plugin["file"])
    if kind == "model" and is_torch(plugin) and importlib.util.find_spec("torch") is None:
        raise PluginError(f"{where}: plug-in {plugin['ref']!r} builds a PyTorch module, and PyTorch is not "
                          f"installed: {TORCH_EXTRA}")
    try:
        if target.endswith(".py"):
            module_name = f"smoothnorm_plugin_{plugin['sha256'][:12]}_{path.stem}"
            module = sys.modules.get(module_name)
            if module is None:
                spec = importlib.util.spec_from_file_location(module_name, path)
                module = importlib.util.module_from_spec(spec)
                sys.modules[module_name] = module
                try:
                    spec.loader.exec_module(module)
                except BaseException:
                    del sys.modules[module_name]
                    raise
        else:
            module = importlib.import_module(target)
    except Exception as err:
        raise PluginError(f"{where}: plug-in {plugin['ref']!r}: importing {path} failed: "
                          f"{type(err).__name__}: {err}") from err
    if not hasattr(module, name):
        raise PluginError(f"{where}: plug-in {plugin['ref']!r}: {path} has no attribute {name!r}")
    obj = getattr(module, name)
    if kind == "norm":
        _check_norm(obj, plugin["ref"], where)
    elif kind == "probe":
        _check_probe(obj, plugin["ref"], where)
    elif kind in ("panel", "quantity"):
        _check_callable(kind, obj, plugin["ref"], where)
    elif not callable(obj):
        returning = "a torch.nn.Module" if is_torch(plugin) else "a Network"
        raise PluginError(f"{where}: plug-in {plugin['ref']!r} is {obj!r}, not a callable build(settings, "
                          f"input_shape) returning {returning}")
    return obj


def load_all(kind: str, plugins: dict[str, dict]) -> dict:
    """Import and check a spec's resolved plug-ins of one kind ({the name the spec gives: resolved}), saying each
    file on stderr; {the name: the object}. `plot` and `claims` load panels and quantities so."""
    loaded = {}
    for name, plugin in plugins.items():
        loaded[name] = load(kind, plugin, plugin.get("where", f"plug-in {kind} {name!r}"))
        print(loaded_message(kind, plugin), file=sys.stderr)
    return loaded


def _check_norm(obj, ref: str, where: str) -> None:
    from smoothnorm.nn.layer import Layer

    if not (isinstance(obj, type) and issubclass(obj, Layer)):
        raise PluginError(f"{where}: plug-in {ref!r} is {obj!r}, not a subclass of smoothnorm.nn.layer.Layer")
    missing = [m for m in ("forward", "backward") if getattr(obj, m) is getattr(Layer, m)]
    if missing:
        raise PluginError(f"{where}: plug-in {ref!r} does not define {' and '.join(missing)} (a norm layer needs "
                          "forward(x, mode) and backward(dy, need_dx))")


def _check_probe(obj, ref: str, where: str) -> None:
    from smoothnorm.train.probes.base import Probe

    if not (isinstance(obj, type) and issubclass(obj, Probe)):
        raise PluginError(f"{where}: plug-in {ref!r} is {obj!r}, not a subclass of "
                          "smoothnorm.train.probes.base.Probe")
    if obj.measure is Probe.measure:
        raise PluginError(f"{where}: plug-in {ref!r} does not define measure (a probe needs "
                          "measure(trainer, x, y, grad, loss) returning a dict of arrays)")


# What a panel or quantity plug-in is called with (as the built-ins are), and how to say so in an error.
_CALLS = {
    "panel": ((None, None), {"colors": None}, "draw(ax, runs, *, colors, **options) like the built-in panels"),
    "quantity": ((None, None), {}, "quantity(run, layer) returning (steps, values) like the built-in quantities"),
}


def _check_callable(kind: str, obj, ref: str, where: str) -> None:
    args, kwargs, expected = _CALLS[kind]
    if not callable(obj):
        raise PluginError(f"{where}: plug-in {ref!r} is {obj!r}, not a callable {expected}")
    try:
        inspect.signature(obj).bind(*args, **kwargs)
    except TypeError as err:
        raise PluginError(f"{where}: plug-in {ref!r} cannot be called as {expected}: {err}") from None
    except ValueError:  # no signature to read (a builtin): it is called as it is
        pass


def identity(plugin: dict) -> dict:
    """What of a resolved plug-in enters a run's identity: the reference as written and the source's hash."""
    return {"ref": plugin["ref"], "sha256": plugin["sha256"]}
