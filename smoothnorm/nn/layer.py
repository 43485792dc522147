"""The Layer base class shared by smoothnorm.nn and smoothnorm.nn.norms.batch."""

from __future__ import annotations

import numpy as np


class Layer:
    """Base layer: a name, parameter shapes, buffers, forward/backward. Parameter views are bound by Network."""

    def __init__(self) -> None:
        self.name = ""
        self.params: dict[str, np.ndarray] = {}
        self.grads: dict[str, np.ndarray] = {}

    def _reused(self, key: str, like: np.ndarray) -> np.ndarray:
        """A buffer shaped like `like`, kept between calls: fresh output memory (page faults) cost about a third
        of BatchNorm's time at (128, 64, 32, 32), and more than ReLU's whole kernel. A layer that uses it returns
        outputs valid until its next call (Network.forward's contract)."""
        return self._buffer(key, like.shape, like.dtype)

    def _buffer(self, key: str, shape: tuple[int, ...], dtype) -> np.ndarray:
        """The layer's kept buffer `key` (C-contiguous), reallocated only when its shape or dtype changes."""
        buffers = self.__dict__.setdefault("_buffers", {})
        buf = buffers.get(key)
        if buf is None or buf.shape != tuple(shape) or buf.dtype != dtype:
            buf = buffers[key] = np.empty(shape, dtype=dtype)
        return buf

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """Parameter name -> shape, in flat-vector order."""
        return {}

    def buffers(self) -> dict[str, np.ndarray]:
        """Non-trainable state saved in state_dict (e.g. running statistics)."""
        return {}

    def allocate(self, dtype: np.dtype) -> None:
        """Allocate buffers in the network's dtype."""

    def init_params(self, rng: np.random.Generator, init: str) -> None:
        """Fill self.params (views) for the given init scheme."""

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        """Per-sample output shape for a per-sample input shape (raises ValueError when incompatible)."""
        return input_shape

    def forward(self, x: np.ndarray, mode: str) -> np.ndarray:
        raise NotImplementedError

    def backward(self, dy: np.ndarray, need_dx: bool = True) -> np.ndarray | None:
        raise NotImplementedError

    def forward_r(self, rx: np.ndarray | None, rparams: dict[str, np.ndarray]) -> np.ndarray | None:
        """R-pass (Pearlmutter's R-operator, for exact Hessian-vector products): after forward(x, mode), the
        output's directional derivative for input direction rx (None: zero) and parameter directions rparams."""
        raise NotImplementedError(f"{type(self).__name__} has no R-pass (exact Hessian-vector products)")

    def backward_r(self, dy: np.ndarray, rdy: np.ndarray, rgrads: dict[str, np.ndarray], need_dx: bool = True):
        """R-pass backward: (dx, rdx) for dy and its directional derivative rdy; writes the directional
        derivatives of the parameter gradients into rgrads."""
        raise NotImplementedError(f"{type(self).__name__} has no R-pass (exact Hessian-vector products)")

    def extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.extra_repr()})"
