"""Losses on a network's output: softmax cross-entropy, squared error, one-hot squared error, and the registry.

A loss object keeps what its backward needs from the last forward; `backward_r` is the directional derivative of
the output gradient (Pearlmutter's R-operator, for exact Hessian-vector products in smoothnorm.measure.hessian).
"""

from __future__ import annotations

import numpy as np

from smoothnorm._validate import choice, float_array, label_array
from smoothnorm.kernels.loss import (
    softmax_cross_entropy_backward,
    softmax_cross_entropy_forward,
    squared_error_backward,
    squared_error_forward,
)

__all__ = ["SoftmaxCrossEntropy", "SquaredError", "OneHotSquaredError", "LOSSES"]


class SoftmaxCrossEntropy:
    """Softmax cross-entropy on logits (N, C) with int64 labels, mean over the batch."""

    name = "cross_entropy"

    def __init__(self) -> None:
        self._cache: tuple | None = None

    def check_targets(self, y, output_shape: tuple[int, ...], n: int, dtype) -> np.ndarray:
        return label_array("y", y, num_classes=output_shape[0], n=n)

    def forward(self, out: np.ndarray, y: np.ndarray) -> float:
        loss, probs = softmax_cross_entropy_forward(out, y)
        self._cache = (probs, y)
        return loss

    def backward(self) -> np.ndarray:
        return softmax_cross_entropy_backward(*self._cache)

    def backward_r(self, r_out: np.ndarray) -> np.ndarray:
        """Directional derivative of the logits' gradient (p - onehot) / N for a logit direction r_out:
        (p * (r_out - sum_k p_k r_out_k)) / N."""
        probs = self._cache[0].astype(np.float64)
        r = np.asarray(r_out, dtype=np.float64)
        return probs * (r - np.sum(probs * r, axis=1, keepdims=True)) / probs.shape[0]


class SquaredError:
    """Squared error, summed (the paper's DLN objective ||W x - A x||^2) or averaged over all elements."""

    name = "squared_error"

    def __init__(self, reduction: str = "sum") -> None:
        self.reduction = choice("reduction", reduction, ("sum", "mean"))
        self._diff: np.ndarray | None = None

    def check_targets(self, y, output_shape: tuple[int, ...], n: int, dtype) -> np.ndarray:
        return float_array("y", y, dtype, shape=(n, *output_shape))

    def forward(self, out, y):
        loss, self._diff = squared_error_forward(out, y, self.reduction)
        return loss

    def backward(self):
        return squared_error_backward(self._diff, self.reduction)

    def backward_r(self, r_out: np.ndarray) -> np.ndarray:
        """Directional derivative of the prediction's gradient: 2 r_out (divided by the size for "mean")."""
        return squared_error_backward(np.asarray(r_out, dtype=self._diff.dtype), self.reduction)


class OneHotSquaredError:
    """Mean squared error against one-hot targets as a classification loss (Cohen et al. 2021, edge of stability):
    loss = sum_n ||out_n - onehot(y_n)||^2 / (2 N) on outputs (N, C) with int64 labels."""

    name = "onehot_squared_error"

    def __init__(self) -> None:
        self._diff: np.ndarray | None = None

    def check_targets(self, y, output_shape: tuple[int, ...], n: int, dtype) -> np.ndarray:
        return label_array("y", y, num_classes=output_shape[0], n=n)

    def forward(self, out: np.ndarray, y: np.ndarray) -> float:
        out = np.asarray(out)
        target = np.zeros_like(out)
        target[np.arange(out.shape[0]), y] = 1
        loss, self._diff = squared_error_forward(out, target, "sum")
        return loss / (2 * out.shape[0])

    def backward(self) -> np.ndarray:
        """(out - onehot) / N."""
        return squared_error_backward(self._diff, "sum") * self._diff.dtype.type(0.5 / self._diff.shape[0])

    def backward_r(self, r_out: np.ndarray) -> np.ndarray:
        """Directional derivative of the output's gradient for an output direction r_out: r_out / N."""
        return np.asarray(r_out, dtype=np.float64) / self._diff.shape[0]


LOSSES = {"cross_entropy": SoftmaxCrossEntropy, "squared_error": SquaredError,
          "onehot_squared_error": OneHotSquaredError}
