"""2-D convolution kernels (cross-correlation with zero padding, PyTorch's semantics and weight layout).

Method: im2col + GEMM, with the batch split between workers. Each worker owns a contiguous block of samples and
walks it in sub-chunks of `nb` samples: it unfolds the sub-chunk into cols (K, nb*P), K = C_in*kh*kw rows ordered
like weight.reshape(C_out, K), column b*P + p for output pixel p of sample b, then runs its own GEMMs:
    forward:  Y = W @ cols                                      (C_out, nb*P) -> NCHW, plus bias
    backward: dW_worker (+)= dY @ cols.T;  dcols = W.T @ dY;  dx = col2im(dcols)
With nb == 1 the (C_out, P) matrices are y[n] and dy[n] themselves, so large images need no layout copies.
dW partials are merged in worker order, and the workers are a fixed number of sample blocks (_im2col.WORK_BLOCKS,
not the thread count), so results are the same bits at any thread count. The work split, the workers, their
parallel drivers and the serial blocks they run (im2col, col2im, the bias gradient's row sums) live
in kernels/conv/_im2col.py; this module has the public functions, their checks and the choice of algorithm.

Why workers call a single-threaded BLAS instead of one multithreaded GEMM at Python level: on this 2-core target,
alternating Numba's thread pool (im2col) with the BLAS pool (GEMM) made each pool spin while the other needed the
cores; the OpenBLAS threaded GEMM also synchronises internally many times per call and collapses when the machine
is shared. One parallel region whose threads run independent im2col + sgemm work avoids both (2-4x faster than
that design on VGG's layers, measured on a shared 2-core machine). The GEMM (kernels/_blas.py) is SciPy's BLAS
(scipy.linalg.cython_blas, the library Numba's own np.dot uses), called with beta so bias and dW accumulate in
place; while our workers run it, every OpenBLAS loaded in the process is set to one thread and restored afterwards.
If no OpenBLAS can be found (MKL, Accelerate), one worker runs serially and the BLAS threads itself.

algorithm= on the public functions: "im2col" (this module, any geometry), "winograd" (kernels/conv/winograd.py: 3x3,
stride 1, padding 1 only) or "auto", which picks per layer shape and pass by winograd.winograd_pays, a fixed rule
written from a benchmark (never timed at run time, so the same settings always run the same arithmetic).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from numba import njit, prange

from smoothnorm.kernels._blas import _DGEMM, _SGEMM, _single_threaded_blas
from smoothnorm.kernels._checks import _check_out, _check_output, _float_array, _output_array
from smoothnorm.kernels.conv._im2col import (
    _backward_parallel,
    _backward_worker,
    _forward_parallel,
    _forward_worker,
    _plan,
    _row_sum,
    _sum_partials,
    workspace_slots,
)
from smoothnorm.kernels.conv._scratch import scratch
from smoothnorm.kernels.conv.winograd import (
    winograd_backward_input,
    winograd_backward_weight,
    winograd_forward,
    winograd_pays,
)

ALGORITHMS = ("auto", "im2col", "winograd")


# ----------------------------------------------------------------------------------------------------------------
# Argument checks (the ones linear.py shares are in _checks.py).


def _pair(name: str, value, minimum: int) -> tuple[int, int]:
    """An int or an (h, w) pair of ints, each >= minimum."""
    items = tuple(value) if isinstance(value, (tuple, list)) else (value, value)
    if len(items) != 2 or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in items):
        raise ValueError(f"{name}: expected an int or a pair of ints, got {value!r}")
    if min(items) < minimum:
        raise ValueError(f"{name}: expected >= {minimum}, got {value!r}")
    return int(items[0]), int(items[1])


def _geometry(x: np.ndarray, weight: np.ndarray, stride, padding) -> tuple[int, ...]:
    """Validate the conv geometry; return (kh, kw, sh, sw, ph, pw, h_out, w_out). Remembered per shapes, stride and
    padding: a network asks the same of every layer at every step."""
    try:
        return _shape_geometry(x.shape, weight.shape, stride, padding)
    except TypeError:  # a list stride or padding is not hashable
        return _shape_geometry.__wrapped__(x.shape, weight.shape, stride, padding)


@lru_cache(maxsize=1024)
def _shape_geometry(x_shape: tuple[int, ...], w_shape: tuple[int, ...], stride, padding) -> tuple[int, ...]:
    """_geometry on shapes (an error is raised again on every call: lru_cache keeps results only)."""
    if w_shape[1] != x_shape[1]:
        raise ValueError(
            f"weight: expected {x_shape[1]} input channels (x has shape {x_shape}), got weight of shape {w_shape}"
        )
    if min(w_shape) < 1:
        raise ValueError(f"weight: expected all dimensions >= 1, got shape {w_shape}")
    sh, sw = _pair("stride", stride, 1)
    ph, pw = _pair("padding", padding, 0)
    kh, kw = w_shape[2:]
    h_out = (x_shape[2] + 2 * ph - kh) // sh + 1
    w_out = (x_shape[3] + 2 * pw - kw) // sw + 1
    if h_out < 1 or w_out < 1:
        raise ValueError(
            f"x: expected spatial size of at least the kernel ({kh}, {kw}) after padding {(ph, pw)}, "
            f"got (H, W) = {x_shape[2:]} (output would be ({h_out}, {w_out}))"
        )
    return (kh, kw, sh, sw, ph, pw, h_out, w_out)



@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def _bias_gradient(dy3, db):
    """db[co] = float64 sum of dy3[:, co, :] (sample by sample, in order; channels in parallel, each channel's sums
    in the same order on any thread, so the bits do not depend on the thread count)."""
    for co in prange(dy3.shape[1]):
        acc = 0.0
        for n in range(dy3.shape[0]):
            acc += _row_sum(dy3, n, co)
        db[co] = acc


def _resolve_algorithm(algorithm: str, x_shape, weight_shape, stride, padding, pass_name: str) -> str:
    """"im2col" or "winograd" for one pass ("forward", "input", "weight"); raises for a bad or impossible choice."""
    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm: expected one of {ALGORITHMS}, got {algorithm!r}")
    if algorithm == "im2col":
        return algorithm
    eligible = _winograd_shape(tuple(weight_shape[2:]), stride, padding)
    if algorithm == "winograd":
        if not eligible:
            raise ValueError(
                f"algorithm: 'winograd' needs a 3x3 kernel, stride 1 and padding 1, got kernel {weight_shape[2:]}, "
                f"stride {stride!r}, padding {padding!r}"
            )
        return algorithm
    c_out, c_in = weight_shape[:2]
    if eligible and winograd_pays(pass_name, c_in, c_out, x_shape[2], x_shape[3], x_shape[0]):
        return "winograd"
    return "im2col"


def _winograd_shape(kernel: tuple[int, ...], stride, padding) -> bool:
    """A 3x3 kernel, stride 1 and padding 1 (remembered per arguments: every layer asks at every step)."""
    try:
        return _cached_winograd_shape(kernel, stride, padding)
    except TypeError:  # a list stride or padding is not hashable
        return _cached_winograd_shape.__wrapped__(kernel, stride, padding)


@lru_cache(maxsize=256)
def _cached_winograd_shape(kernel: tuple[int, ...], stride, padding) -> bool:
    return kernel == (3, 3) and _pair("stride", stride, 1) == (1, 1) and _pair("padding", padding, 0) == (1, 1)


# ----------------------------------------------------------------------------------------------------------------
# Public API.


def conv2d_forward(
    x: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray | None = None,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 1,
    algorithm: str = "im2col",
    *,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """2-D cross-correlation with zero padding (torch.nn.functional.conv2d).

    x: (N, C_in, H, W) float32 or float64; weight: (C_out, C_in, kh, kw) and bias: (C_out,) or None, in x's dtype.
    stride >= 1 and padding >= 0: an int or an (h, w) pair. algorithm: "im2col", "winograd" or "auto" (module doc).
    Returns y (N, C_out, H_out, W_out) with H_out = (H + 2*padding - kh) // stride + 1 (W_out likewise), in `out`
    if given (a C-contiguous array of that shape and x's dtype, apart from x, weight and bias).
    """
    x = _float_array("x", x, 4)
    weight = _float_array("weight", weight, 4, x.dtype)
    geom = _geometry(x, weight, stride, padding)
    if _resolve_algorithm(algorithm, x.shape, weight.shape, stride, padding, "forward") == "winograd":
        return winograd_forward(x, weight, bias, out=out)
    n = x.shape[0]
    c_out = weight.shape[0]
    if bias is None:
        bias = np.empty(0, dtype=x.dtype)
    else:
        bias = _float_array("bias", bias, 1, x.dtype)
        if bias.shape != (c_out,):
            raise ValueError(f"bias: expected shape ({c_out},), got {bias.shape}")
    h_out, w_out = geom[6], geom[7]
    y = _output_array("out", out, (n, c_out, h_out, w_out), x.dtype, x, weight, bias)
    if n == 0:
        return y
    pixels = h_out * w_out
    w2 = weight.reshape(c_out, -1)
    k = w2.shape[1]
    workers, nb, parallel = _plan(n, k, c_out, pixels, x.itemsize)
    slots = workspace_slots(workers, parallel)
    cols_ws = scratch("conv.cols", (slots, k * nb * pixels), x.dtype)
    mat_ws = scratch("conv.mat", (slots, c_out * nb * pixels if nb > 1 else 0), x.dtype)
    # BLAS on one thread in the serial path too: OpenBLAS threads GEMMs above 2^18 multiply-adds, and its
    # threaded GEMMs are not always the same bits as its serial ones.
    with _single_threaded_blas:
        if parallel:
            _forward_parallel(_SGEMM, _DGEMM, x, w2, bias, y, workers, nb, geom, cols_ws, mat_ws)
        else:
            _forward_worker(_SGEMM, _DGEMM, x, w2, bias, y, 0, n, nb, geom, cols_ws[0], mat_ws[0])
    return y


def conv2d_backward(
    dy: np.ndarray,
    x: np.ndarray,
    weight: np.ndarray,
    dweight: np.ndarray,
    dbias: np.ndarray | None = None,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 1,
    need_dx: bool = True,
    algorithm: str = "im2col",
    *,
    out: np.ndarray | None = None,
) -> np.ndarray | None:
    """Gradients of conv2d_forward; OVERWRITES dweight and dbias in place.

    dy: (N, C_out, H_out, W_out); x: (N, C_in, H, W) the forward input; weight: (C_out, C_in, kh, kw); one dtype
    (float32 or float64) for all. dweight: (C_out, C_in, kh, kw) and dbias: (C_out,) or None, written in place
    (views into a flat gradient vector). stride, padding and algorithm as in the forward ("auto" chooses for the
    input and weight gradients separately; im2col computes both from one unfolding, so an im2col input gradient
    brings an im2col weight gradient with it).
    Returns dx (N, C_in, H, W), or None when need_dx is False (the first layer does not need it); dx is written
    into `out` if given (a C-contiguous array of x's shape and dtype, apart from every other argument).
    """
    x = _float_array("x", x, 4)
    weight = _float_array("weight", weight, 4, x.dtype)
    geom = _geometry(x, weight, stride, padding)
    n = x.shape[0]
    c_out = weight.shape[0]
    h_out, w_out = geom[6], geom[7]
    dy = _float_array("dy", dy, 4, x.dtype)
    if dy.shape != (n, c_out, h_out, w_out):
        raise ValueError(f"dy: expected shape {(n, c_out, h_out, w_out)} (the forward output), got {dy.shape}")
    _check_output("dweight", dweight, weight.shape, x.dtype)
    if dbias is not None:
        _check_output("dbias", dbias, (c_out,), x.dtype)
    if out is not None and need_dx:
        _check_out("out", out, x.shape, x.dtype, dy, x, weight, dweight, *(() if dbias is None else (dbias,)))
    input_algorithm = _resolve_algorithm(algorithm, x.shape, weight.shape, stride, padding, "input")
    weight_algorithm = _resolve_algorithm(algorithm, x.shape, weight.shape, stride, padding, "weight")
    if need_dx and input_algorithm == "im2col":
        weight_algorithm = "im2col"
    if weight_algorithm == "winograd":
        winograd_backward_weight(dy, x, dweight)
        if dbias is not None:
            db = np.empty(c_out)
            _bias_gradient(dy.reshape(n, c_out, -1), db)
            dbias[...] = db
        return winograd_backward_input(dy, weight, out=out) if need_dx else None
    if need_dx and input_algorithm == "winograd":
        conv2d_backward(dy, x, weight, dweight, dbias, stride, padding, need_dx=False)
        return winograd_backward_input(dy, weight, out=out)
    pixels = h_out * w_out
    w2 = weight.reshape(c_out, -1)
    k = w2.shape[1]
    if not need_dx:
        dx = np.empty((0, 0, 0, 0), dtype=x.dtype)
    else:
        dx = np.empty_like(x) if out is None else out
    workers, nb, parallel = _plan(max(n, 1), k, c_out, pixels, x.itemsize)
    slots = workspace_slots(workers, parallel)
    cols_ws = scratch("conv.cols", (slots, k * nb * pixels), x.dtype)
    mat_ws = scratch("conv.mat", (slots, c_out * nb * pixels if nb > 1 else 0), x.dtype)
    dw_ws = scratch("conv.dw", (workers, c_out, k), x.dtype)
    db_ws = scratch("conv.db", (workers, c_out), np.float64)
    args = (dy, x, w2, dw_ws, db_ws, dx, bool(need_dx))
    with _single_threaded_blas:
        if parallel:
            _backward_parallel(_SGEMM, _DGEMM, *args, workers, nb, geom, cols_ws, mat_ws)
        else:
            _backward_worker(
                _SGEMM, _DGEMM, dy, x, w2, dw_ws[0], db_ws[0], dx, bool(need_dx), 0, n, nb, geom, cols_ws[0],
                mat_ws[0]
            )
    if workers == 1:
        dweight[...] = dw_ws[0].reshape(weight.shape)
    elif dweight.flags.c_contiguous:
        _sum_partials(dw_ws, dweight.reshape(c_out, k))
    else:
        merged = scratch("conv.merged", (c_out, k), x.dtype)
        _sum_partials(dw_ws, merged)
        dweight[...] = merged.reshape(weight.shape)
    if dbias is not None:
        dbias[...] = db_ws.sum(axis=0)
    return dx if need_dx else None


def conv2d_backward_input(
    dy: np.ndarray,
    x: np.ndarray,
    weight: np.ndarray,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 1,
    algorithm: str = "im2col",
) -> np.ndarray:
    """dx of conv2d_forward alone (for the R-pass of Hessian products, which needs input gradients without their
    weight gradient). Where `algorithm` takes Winograd for the input gradient it runs alone; im2col computes the
    weight gradient from the same unfolding anyway, so there it is computed into scratch and dropped.
    Arguments as conv2d_backward; x is the forward input (its shape and, for im2col, its values)."""
    x = _float_array("x", x, 4)
    weight = _float_array("weight", weight, 4, x.dtype)
    _geometry(x, weight, stride, padding)
    if _resolve_algorithm(algorithm, x.shape, weight.shape, stride, padding, "input") == "winograd":
        dy = _float_array("dy", dy, 4, x.dtype)
        if dy.shape != (x.shape[0], weight.shape[0], *x.shape[2:]):
            raise ValueError(f"dy: expected shape {(x.shape[0], weight.shape[0], *x.shape[2:])} (the forward output), "
                             f"got {dy.shape}")
        return winograd_backward_input(dy, weight)
    dropped = scratch("conv.dropped_dweight", weight.shape, x.dtype)
    return conv2d_backward(dy, x, weight, dropped, None, stride, padding, algorithm="im2col")
