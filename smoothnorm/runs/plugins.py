"""Plug-ins: a spec may name a normalization (`norm`) or a model (`model`) written in the user's own code instead of
one of smoothnorm.NORMS or the built-in models.

A reference is
- `"./file.py:Name"` (or `"../dir/file.py:Name"`): a file, resolved relative to the spec's folder;
- `"package.module:Name"`: an importable module;
- a plain name registered by an installed package under the entry-point group `smoothnorm.norms` or
  `smoothnorm.models` (in its pyproject.toml: `[project.entry-points."smoothnorm.norms"] scale_only =
  "mypkg.norms:ScaleOnly"`).
A model may also be a PyTorch module: `"torch:package.module:build"` or `"torch:./file.py:build"`, a callable
`build(settings, input_shape)` returning a `torch.nn.Module`, which the run wraps in smoothnorm.torch.TorchNetwork
(needs `pip install 'smoothnorm[torch]'`).
Loading and validating a spec never imports a plug-in (nor torch): it checks the reference's form, finds its source file
(without importing it) and hashes it. The hash and the reference enter the run's identity, so editing the
plug-in's file trains the runs again. `run` and `reproduce` import it (`load`) before any run trains, check it
against its protocol (a norm is a `smoothnorm.nn.layer.Layer` subclass taking `(num_features, **norm_options)`;
an R-pass, `forward_r` / `backward_r`, is optional: without it exact Hessian probes record NaN and say why; a model
is a callable `build(settings, input_shape)` returning a smoothnorm.nn.network.Network, given the run's settings
and one sample's shape) and say which file they loaded.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import re
import sys
from pathlib import Path

# A model reference starting so names a function building a torch.nn.Module (smoothnorm.torch wraps it).
TORCH_PREFIX = "torch:"
TORCH_EXTRA = "pip install 'smoothnorm[torch]'"
# Entry-point group per plug-in kind.
GROUPS = {"norm": "smoothnorm.norms", "model": "smoothnorm.models"}
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
    elif not callable(obj):
        returning = "a torch.nn.Module" if is_torch(plugin) else "a Network"
        raise PluginError(f"{where}: plug-in {plugin['ref']!r} is {obj!r}, not a callable build(settings, "
                          f"input_shape) returning {returning}")
    return obj


def _check_norm(obj, ref: str, where: str) -> None:
    from smoothnorm.nn.layer import Layer

    if not (isinstance(obj, type) and issubclass(obj, Layer)):
        raise PluginError(f"{where}: plug-in {ref!r} is {obj!r}, not a subclass of smoothnorm.nn.layer.Layer")
    missing = [m for m in ("forward", "backward") if getattr(obj, m) is getattr(Layer, m)]
    if missing:
        raise PluginError(f"{where}: plug-in {ref!r} does not define {' and '.join(missing)} (a norm layer needs "
                          "forward(x, mode) and backward(dy, need_dx))")


def identity(plugin: dict) -> dict:
    """What of a resolved plug-in enters a run's identity: the reference as written and the source's hash."""
    return {"ref": plugin["ref"], "sha256": plugin["sha256"]}
