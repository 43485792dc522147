"""smoothnorm: a Numba CPU toolkit for studying why normalization helps optimization.

Reproduces and extends Santurkar et al., "How Does Batch Normalization Help Optimization?" (NeurIPS 2018).
Submodules are imported on demand so that `import smoothnorm` stays cheap.
"""

from importlib import import_module

__version__ = "0.1.0"

# Normalization names accepted by `norm=` in smoothnorm.nn.models: the keys of smoothnorm.nn.norms.NORM_LAYERS, as a
# plain tuple so that loading a spec needs no Numba (a test holds the two equal).
NORMS: tuple[str, ...] = ("batch", "noisy_batch", "l1", "l2", "linf", "layer", "instance", "group")

# Packages and modules loaded on first use, so that `import smoothnorm` stays cheap; `models` is smoothnorm.nn.models.
_SUBMODULES = {name: f"smoothnorm.{name}" for name in
               ("kernels", "nn", "optim", "data", "measure", "train", "runs", "claims", "plots", "cli")}
_SUBMODULES["models"] = "smoothnorm.nn.models"

# Stored runs as pandas tables (the optional extra `.[analysis]`), from smoothnorm.runs.frames.
_FUNCTIONS = {"runs_frame": "smoothnorm.runs.frames", "probes_frame": "smoothnorm.runs.frames"}


def __getattr__(name):
    if name in _SUBMODULES:
        return import_module(_SUBMODULES[name])
    if name in _FUNCTIONS:
        return getattr(import_module(_FUNCTIONS[name]), name)
    raise AttributeError(f"module 'smoothnorm' has no attribute {name!r}")
