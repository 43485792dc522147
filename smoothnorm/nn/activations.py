"""Smooth activation layers beside nn.ReLU: Sigmoid, Tanh and Identity, with Pearlmutter R-operators.

Each keeps its forward output y (the derivatives are functions of y) and, after `forward_r`, the input direction
rx that `backward_r` needs for the curvature term f''(x) rx dy.
"""

from __future__ import annotations

import numpy as np

from smoothnorm.kernels.activation import (
    activation_backward,
    activation_backward_r,
    activation_forward,
    activation_forward_r,
)
from smoothnorm.nn.layer import Layer

__all__ = ["Sigmoid", "Tanh", "Identity"]


class _Elementwise(Layer):
    """An activation computed by the elementwise kernels, selected by its name in kernels.activation."""

    activation = ""

    def __init__(self) -> None:
        super().__init__()
        self._y: np.ndarray | None = None
        self._rx: np.ndarray | None = None
        self._r_ready = False

    def forward(self, x, mode):
        self._y = activation_forward(x, self.activation)
        self._rx, self._r_ready = None, False
        return self._y

    def backward(self, dy, need_dx=True):
        return activation_backward(dy, self._y, self.activation) if need_dx else None

    def forward_r(self, rx: np.ndarray | None, rparams: dict | None = None) -> np.ndarray | None:
        """Directional derivative of the last forward's output along the input direction rx: f'(x) rx (None when
        rx is None, a zero direction). No parameters, so rparams is unused."""
        if self._y is None:
            raise RuntimeError(f"{self.name or type(self).__name__}: forward_r called before forward")
        self._rx, self._r_ready = rx, True
        return None if rx is None else activation_forward_r(rx, self._y, self.activation)

    def backward_r(self, dy: np.ndarray, rdy: np.ndarray, rgrads: dict | None = None, need_dx: bool = True):
        """(dx, rdx): the input gradient for dy and its directional derivative f'(x) rdy + f''(x) rx dy (the
        curvature term vanishes when forward_r had no direction). No parameter R-gradients to write."""
        if not self._r_ready:
            raise RuntimeError(f"{self.name or type(self).__name__}: backward_r called before forward_r")
        if not need_dx:
            return None, None
        rx = np.zeros_like(dy) if self._rx is None else self._rx
        return activation_backward_r(dy, rdy, rx, self._y, self.activation)


class Sigmoid(_Elementwise):
    """Logistic sigmoid 1 / (1 + exp(-x)), computed without overflow for inputs of any size."""

    activation = "sigmoid"


class Tanh(_Elementwise):
    """Hyperbolic tangent."""

    activation = "tanh"


class Identity(Layer):
    """f(x) = x: the activation of a linear network. Passes arrays through without copying."""

    def forward(self, x, mode):
        return x

    def backward(self, dy, need_dx=True):
        return dy if need_dx else None

    def forward_r(self, rx: np.ndarray | None, rparams: dict | None = None) -> np.ndarray | None:
        """The directional derivative of the identity along rx is rx."""
        return rx

    def backward_r(self, dy: np.ndarray, rdy: np.ndarray, rgrads: dict | None = None, need_dx: bool = True):
        """(dy, rdy): the identity has no curvature."""
        return (dy, rdy) if need_dx else (None, None)
