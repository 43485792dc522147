"""Elementwise activation kernels: ReLU, sigmoid, tanh and identity, forward, backward and their R-operators.

Derivatives are written in terms of the forward output y (what a layer keeps), so a layer caches one array:
  relu:     f' = [y > 0],     f'' = 0
  sigmoid:  f' = y (1 - y),   f'' = f' (1 - 2 y)
  tanh:     f' = 1 - y^2,     f'' = -2 y f'
  identity: f' = 1,           f'' = 0
The R-operator (Pearlmutter 1994) of an activation, for an input direction rx and upstream (dy, rdy):
  forward_r:  ry  = f'(x) rx
  backward_r: dx  = f'(x) dy,  rdx = f'(x) rdy + f''(x) rx dy
All kernels are memory-bound loops split into fixed-size blocks; NaN and Inf pass through as in torch.
Each block's loop indexes block-local views from 0 (as kernels/optim.py does): with `range(block * _BLOCK, ...)`
over the whole arrays Numba cannot prove the index non-negative, its wraparound checks keep the loop scalar, and
ReLU's forward ran 10x and its backward 4x slower at (128, 64, 32, 32) float32.
"""

import numpy as np
from numba import njit, prange

from smoothnorm.kernels._checks import _float_array, _output_array, _same_as

# Elements per parallel task. Fixed (not derived from the thread count or the shape) so every shape, including
# a batch smaller than the thread count, splits into balanced tasks; large enough that scheduling is negligible.
_BLOCK = 1 << 14

# Integer codes select the activation inside a kernel. A jitted function passed from Python as an argument would do
# too, but the kernel's signature then holds that function object, new in every process, so the on-disk cache never
# finds it (kernels/norm/skeleton.py binds its pieces inside jitted entry points instead, which cache).
ACTIVATIONS = ("relu", "sigmoid", "tanh", "identity")
_CODES = {name: code for code, name in enumerate(ACTIVATIONS)}


def _code(activation: str) -> int:
    if activation not in _CODES:
        raise ValueError(f"activation: expected one of {ACTIVATIONS}, got {activation!r}")
    return _CODES[activation]


@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def _relu_forward(x, y):
    n = x.size
    zero = x.dtype.type(0)
    for block in prange((n + _BLOCK - 1) // _BLOCK):
        lo = block * _BLOCK
        x_b, y_b = x[lo : lo + _BLOCK], y[lo : lo + _BLOCK]
        for i in range(x_b.size):
            v = x_b[i]
            # `v < 0` is False for NaN, so NaN passes through; -0.0 stays -0.0. Both as torch.relu.
            y_b[i] = zero if v < zero else v


@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def _relu_backward(dy, y, dx):
    n = dy.size
    zero = dy.dtype.type(0)
    for block in prange((n + _BLOCK - 1) // _BLOCK):
        lo = block * _BLOCK
        dy_b, y_b, dx_b = dy[lo : lo + _BLOCK], y[lo : lo + _BLOCK], dx[lo : lo + _BLOCK]
        for i in range(dy_b.size):
            # torch's threshold_backward: zero where y <= 0; a NaN output passes its gradient through.
            dx_b[i] = zero if y_b[i] <= zero else dy_b[i]


@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def _forward(x, y, code):
    n = x.size
    one = x.dtype.type(1)
    for block in prange((n + _BLOCK - 1) // _BLOCK):
        lo = block * _BLOCK
        x_b, y_b = x[lo : lo + _BLOCK], y[lo : lo + _BLOCK]
        for i in range(x_b.size):
            v = x_b[i]
            if code == 1:
                # exp of a non-positive number only: no overflow for any input; NaN takes the second branch.
                if v >= 0:
                    y_b[i] = one / (one + np.exp(-v))
                else:
                    e = np.exp(v)
                    y_b[i] = e / (one + e)
            elif code == 2:
                y_b[i] = np.tanh(v)
            else:
                y_b[i] = v


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _slopes(yv, code, zero, one, two):
    """(f', f'') at an output value yv."""
    if code == 0:
        # torch's threshold_backward: zero where y <= 0; a NaN output passes its gradient through.
        return (zero, zero) if yv <= zero else (one, zero)
    if code == 1:
        d1 = (one - yv) * yv  # torch's sigmoid_backward order: dy * (1 - y) * y
        return d1, d1 * (one - two * yv)
    if code == 2:
        d1 = one - yv * yv
        return d1, -two * yv * d1
    return one, zero


@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def _scale_by_slope(v, y, out, code):
    """out = f'(x) * v, with f' from the output y: backward (v = dy) and forward_r (v = rx)."""
    n = v.size
    zero, one, two = v.dtype.type(0), v.dtype.type(1), v.dtype.type(2)
    for block in prange((n + _BLOCK - 1) // _BLOCK):
        lo = block * _BLOCK
        v_b, y_b, out_b = v[lo : lo + _BLOCK], y[lo : lo + _BLOCK], out[lo : lo + _BLOCK]
        for i in range(v_b.size):
            d1, _ = _slopes(y_b[i], code, zero, one, two)
            if code == 0:
                out_b[i] = zero if d1 == zero else v_b[i]  # a mask, not a product: 0 * Inf upstream stays 0
            elif code == 1:
                out_b[i] = v_b[i] * (one - y_b[i]) * y_b[i]
            else:
                out_b[i] = v_b[i] * d1


@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def _backward_r(dy, rdy, rx, y, dx, rdx, code):
    n = dy.size
    zero, one, two = dy.dtype.type(0), dy.dtype.type(1), dy.dtype.type(2)
    for block in prange((n + _BLOCK - 1) // _BLOCK):
        lo = block * _BLOCK
        hi = lo + _BLOCK
        dy_b, rdy_b, rx_b, y_b = dy[lo:hi], rdy[lo:hi], rx[lo:hi], y[lo:hi]
        dx_b, rdx_b = dx[lo:hi], rdx[lo:hi]
        for i in range(dy_b.size):
            d1, d2 = _slopes(y_b[i], code, zero, one, two)
            if code == 0:
                dx_b[i] = zero if d1 == zero else dy_b[i]
                rdx_b[i] = zero if d1 == zero else rdy_b[i]
            elif code == 3:
                dx_b[i] = dy_b[i]
                rdx_b[i] = rdy_b[i]
            else:
                # dx exactly as _scale_by_slope computes it, so backward_r's dx equals backward's bit for bit.
                dx_b[i] = dy_b[i] * (one - y_b[i]) * y_b[i] if code == 1 else dy_b[i] * d1
                rdx_b[i] = d1 * rdy_b[i] + d2 * rx_b[i] * dy_b[i]


def relu_forward(x: np.ndarray, *, out: np.ndarray | None = None) -> np.ndarray:
    """Rectified linear unit, max(x, 0), propagating NaN.

    x: any shape, float32 or float64. Returns a new array of the same shape and dtype, or `out` (a C-contiguous
    array like x, possibly x itself) filled with the result: a layer that keeps its buffers saves fresh memory's
    page faults, which cost more than this kernel at VGG's shapes.
    """
    x = _float_array("x", x)
    y = _output_array("out", out, x.shape, x.dtype, x, may_alias=True)
    _relu_forward(x.reshape(-1), y.reshape(-1))
    return y


def relu_backward(dy: np.ndarray, y: np.ndarray, *, out: np.ndarray | None = None) -> np.ndarray:
    """Gradient of ReLU: dy where the forward output y > 0, else 0.

    dy, y: same shape and dtype (y is relu_forward's output). Returns dx, same shape and dtype (in `out` if given,
    as relu_forward; it may be dy itself, not y).
    """
    dy = _float_array("dy", dy)
    y = _same_as("y", y, dy, "dy")
    dx = _output_array("out", out, dy.shape, dy.dtype, dy, y, may_alias=True)
    _relu_backward(dy.reshape(-1), y.reshape(-1), dx.reshape(-1))
    return dx


def activation_forward(x: np.ndarray, activation: str) -> np.ndarray:
    """y = f(x) for f in ACTIVATIONS; sigmoid never overflows, NaN and Inf pass through as in torch.

    x: any shape, float32 or float64. activation: "relu", "sigmoid", "tanh" or "identity".
    Returns a new array of the same shape and dtype.
    """
    code = _code(activation)
    x = _float_array("x", x)
    if code == 0:
        return relu_forward(x)
    y = np.empty_like(x)
    _forward(x.reshape(-1), y.reshape(-1), code)
    return y


def activation_backward(dy: np.ndarray, y: np.ndarray, activation: str) -> np.ndarray:
    """dx = f'(x) * dy, with f' computed from the forward output y.

    dy, y: same shape and dtype (y is activation_forward's output). Returns dx, same shape and dtype.
    """
    return _slope_times("dy", dy, y, activation)


def activation_forward_r(rx: np.ndarray, y: np.ndarray, activation: str) -> np.ndarray:
    """R-operator of the forward pass: ry = f'(x) * rx, the directional derivative of y along rx.

    rx: input direction; y: activation_forward's output, same shape and dtype. Returns ry.
    """
    return _slope_times("rx", rx, y, activation)


def _slope_times(name: str, v, y, activation: str) -> np.ndarray:
    code = _code(activation)
    v = _float_array(name, v)
    y = _same_as("y", y, v, name)
    out = np.empty_like(v)
    _scale_by_slope(v.reshape(-1), y.reshape(-1), out.reshape(-1), code)
    return out


def activation_backward_r(
    dy: np.ndarray, rdy: np.ndarray, rx: np.ndarray, y: np.ndarray, activation: str
) -> tuple[np.ndarray, np.ndarray]:
    """R-operator of the backward pass: (dx, rdx) with dx = f'(x) dy and rdx = f'(x) rdy + f''(x) rx dy.

    dy: upstream gradient; rdy: its directional derivative; rx: the input direction given to forward_r;
    y: activation_forward's output. All the same shape and dtype.
    """
    code = _code(activation)
    dy = _float_array("dy", dy)
    rdy = _same_as("rdy", rdy, dy, "dy")
    rx = _same_as("rx", rx, dy, "dy")
    y = _same_as("y", y, dy, "dy")
    dx, rdx = np.empty_like(dy), np.empty_like(dy)
    _backward_r(dy.reshape(-1), rdy.reshape(-1), rx.reshape(-1), y.reshape(-1), dx.reshape(-1), rdx.reshape(-1),
                code)
    return dx, rdx
