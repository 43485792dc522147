"""Loss kernels: softmax cross-entropy (mean over the batch) and squared error (sum or mean)."""

import numpy as np
from numba import njit, prange

from smoothnorm.kernels._checks import _float_array, _same_as

# Elements per parallel task of the squared-error sum. Fixed, so the partial sums (and the loss, to the bit)
# do not depend on the thread count.
_BLOCK = 1 << 14

_REDUCTIONS = ("sum", "mean")


def _rows_of_classes(name: str, a) -> np.ndarray:
    """An (N, C) float array with N, C >= 1 (logits or probabilities)."""
    a = _float_array(name, a, 2)
    if a.shape[0] < 1 or a.shape[1] < 1:
        raise ValueError(f"{name}: expected N >= 1 rows and C >= 1 classes, got shape {a.shape}")
    return a


def _check_reduction(reduction) -> None:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction: expected one of {_REDUCTIONS}, got {reduction!r}")


def _labels_array(labels, n: int, n_classes: int) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.dtype.kind not in "iu":
        raise ValueError(f"labels: expected an integer dtype, got {labels.dtype}")
    if labels.shape != (n,):
        raise ValueError(f"labels: expected shape ({n},) (one label per row of logits), got {labels.shape}")
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= n_classes:
        raise ValueError(f"labels: expected values in [0, {n_classes}), got values in [{low}, {high}]")
    return np.ascontiguousarray(labels, dtype=np.int64)


@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def _softmax_cross_entropy(logits, labels, probs, losses):
    # Per row: m = max, s = sum exp(x - m) (all in float64), loss = log(s) - (x[label] - m), p = exp(x - m) / s.
    # Subtracting the max keeps exp <= 1 for any logit size. A NaN anywhere in a row makes s NaN (whether or not
    # it became m); a +inf logit gives inf - inf = NaN; a -inf label logit gives an infinite loss. Nothing is masked.
    n, n_classes = logits.shape
    for r in prange(n):
        m = np.float64(logits[r, 0])
        for j in range(1, n_classes):
            v = np.float64(logits[r, j])
            if v > m:
                m = v
        s = 0.0
        for j in range(n_classes):
            s += np.exp(np.float64(logits[r, j]) - m)
        for j in range(n_classes):
            probs[r, j] = np.exp(np.float64(logits[r, j]) - m) / s
        losses[r] = np.log(s) - (np.float64(logits[r, labels[r]]) - m)


@njit(cache=True, nogil=True, error_model="numpy")
def _squared_error_block(pred, target, diff, partials, block):
    acc = 0.0
    for i in range(block * _BLOCK, min(pred.size, (block + 1) * _BLOCK)):
        d = pred[i] - target[i]
        diff[i] = d
        acc += np.float64(d) * np.float64(d)
    partials[block] = acc


@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def _squared_error(pred, target, diff, partials):
    for block in prange(partials.size):
        _squared_error_block(pred, target, diff, partials, block)


def softmax_cross_entropy_forward(logits: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray]:
    """Softmax cross-entropy, mean over the batch (torch.nn.functional.cross_entropy).

    logits: (N, C) float32 or float64, N, C >= 1; labels: (N,) integers in [0, C).
    Returns (loss as a Python float, accumulated in float64; probs (N, C) softmax in logits' dtype).
    """
    logits = _rows_of_classes("logits", logits)
    n, n_classes = logits.shape
    labels = _labels_array(labels, n, n_classes)
    probs = np.empty_like(logits)
    losses = np.empty(n, dtype=np.float64)
    _softmax_cross_entropy(logits, labels, probs, losses)
    # np.sum is pairwise and runs outside prange: a fixed order, so the loss repeats exactly.
    return float(np.sum(losses) / n), probs


def softmax_cross_entropy_backward(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Gradient of the mean softmax cross-entropy with respect to the logits: (probs - onehot(labels)) / N.

    probs: (N, C) from softmax_cross_entropy_forward; labels: (N,) integers in [0, C).
    Returns dlogits (N, C) in probs' dtype.
    """
    probs = _rows_of_classes("probs", probs)
    n, n_classes = probs.shape
    labels = _labels_array(labels, n, n_classes)
    dlogits = probs.copy()
    dlogits[np.arange(n), labels] -= 1
    # Division by the integer n keeps float32 in float32 and matches torch's (probs - onehot) / N.
    dlogits /= n
    return dlogits


def squared_error_forward(pred: np.ndarray, target: np.ndarray, reduction: str = "sum") -> tuple[float, np.ndarray]:
    """Squared error: sum of (pred - target)^2, or its mean over all elements (torch.nn.MSELoss).

    pred, target: same shape (any) and dtype (float32 or float64); reduction: "sum" or "mean".
    Returns (loss as a Python float, accumulated in float64; diff = pred - target in pred's dtype).
    """
    _check_reduction(reduction)
    pred = _float_array("pred", pred)
    target = _same_as("target", target, pred, "pred")
    diff = np.empty_like(pred)
    partials = np.empty((pred.size + _BLOCK - 1) // _BLOCK, dtype=np.float64)
    if partials.size == 1:  # one block: waking the thread pool would cost more than the work
        _squared_error_block(pred.reshape(-1), target.reshape(-1), diff.reshape(-1), partials, 0)
    else:
        _squared_error(pred.reshape(-1), target.reshape(-1), diff.reshape(-1), partials)
    loss = float(np.sum(partials))
    if reduction == "mean":
        loss /= pred.size if pred.size else np.nan
    return loss, diff


def squared_error_backward(diff: np.ndarray, reduction: str = "sum") -> np.ndarray:
    """Gradient of the squared error with respect to pred: 2 * diff, divided by diff.size for "mean".

    diff: pred - target from squared_error_forward; reduction: as given to the forward.
    Returns dpred, same shape and dtype as diff.
    """
    _check_reduction(reduction)
    diff = _float_array("diff", diff)
    scale = 2.0 if reduction == "sum" else 2.0 / max(diff.size, 1)
    return diff * diff.dtype.type(scale)
