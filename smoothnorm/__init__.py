"""smoothnorm: a Numba CPU toolkit for studying why normalization helps optimization.

Reproduces and extends Santurkar et al., "How Does Batch Normalization Help Optimization?" (NeurIPS 2018).
Submodules are imported on demand so that `import smoothnorm` stays cheap.
"""

from importlib import import_module

__version__ = "0.1.0"

# Normalization names accepted by `norm=` in smoothnorm.models (see smoothnorm.nn.NORM_LAYERS).
NORMS: tuple[str, ...] = ("batch", "noisy_batch", "l1", "l2", "linf", "layer", "instance", "group")

_SUBMODULES = ("kernels", "nn", "models", "optim", "data", "measure", "train", "experiment", "plots", "cli")


def __getattr__(name):
    if name in _SUBMODULES:
        return import_module(f"smoothnorm.{name}")
    raise AttributeError(f"module 'smoothnorm' has no attribute {name!r}")
