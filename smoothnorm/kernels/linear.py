"""Fully connected layer kernels: y = x @ weight.T + bias (PyTorch's weight layout, (out, in)).

The matrix products go to BLAS. Large products (more than _SMALL_MACS multiply-adds) are NumPy calls that BLAS
threads itself. Small ones (a deep linear network's 1000 x 10 x 10) are the opposite case: OpenBLAS runs them on
one thread, so they run inside one Numba kernel, the batch rows split into _SMALL_PARTS parts, each part's BLAS
calls on one of Numba's threads. Forward and backward split the rows alike, so through a chain of layers each
thread keeps finding its rows in its own core's cache: the backward pass computes each part's rows of dx and its
share of dW and db, and adds the shares in a fixed order. (Giving dW to one thread and dx to the other was faster
on one layer but slower through a 25-layer chain: every product then read the other core's rows.) Measured on the
25-layer 10x10 deep linear network, 1000 samples, float64, 2 cores: forward pass 330 us against 410 us with NumPy
calls, backward pass 320 us against 410 us.

Larger products run their NumPy call with BLAS held at one thread, for two reasons. Results: a threaded OpenBLAS
GEMM is not always the same bits as its serial one (SciPy's OpenBLAS 0.3.30 dgemm at 3 threads differed from 1 on a
128 x 128 x 128 product), and results must not depend on the thread count. Speed: threaded, the BLAS leaves its
worker threads spinning after the call (OpenBLAS waits about 0.1 s before they sleep), and the next Numba parallel
region waits for a core: a 128 x 512 x 10 np.matmul (VGG's classifier) followed by any small Numba parallel kernel
took 8.0 ms on a 2-core machine, against 24 us with the BLAS on one thread. Products of more than about 2^28
multiply-adds (far beyond this toolkit's networks) would gain from a second core; they run on one.
"""

import numpy as np
from numba import njit, prange

from smoothnorm.kernels._blas import _single_threaded_blas
from smoothnorm.kernels._checks import _check_output, _float_array

# dbias is summed over tiles of _ROW_CHUNK rows x _COLUMN_BLOCK columns: column blocks give the threads work for
# wide layers, row chunks for tall batches. The tiling depends only on the shape, never on the thread count, so the
# sums repeat to the bit.
_ROW_CHUNK = 256
_COLUMN_BLOCK = 256
# At most this many multiply-adds (N * in * out): one BLAS call per Numba thread (see the module docstring). It is
# OpenBLAS's own limit below which a GEMM runs on one thread (65536 * GEMM_MULTITHREAD_THRESHOLD 4).
_SMALL_MACS = 1 << 18
# Row parts of a small product (a constant, so results do not depend on the thread count); below _SPLIT_MIN_MACS
# multiply-adds one part: waking a second thread (~2 us) would cost more than it saves.
_SMALL_PARTS = 2
_SPLIT_MIN_MACS = 1 << 15


def _check_shape(name: str, a: np.ndarray, shape: tuple) -> None:
    if a.shape != shape:
        raise ValueError(f"{name}: expected shape {shape}, got {a.shape}")


@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def _add_bias(y, bias):
    rows, cols = y.shape
    for r in prange(rows):
        for j in range(cols):
            y[r, j] += bias[j]


@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def _column_sums(dy, out):
    # Each task owns one tile and its own row of float64 partials (race-free, and float64 because batches can be
    # long); the partials are then merged per column in chunk order.
    rows, cols = dy.shape
    n_chunks = max(1, (rows + _ROW_CHUNK - 1) // _ROW_CHUNK)
    n_blocks = (cols + _COLUMN_BLOCK - 1) // _COLUMN_BLOCK
    partials = np.empty((n_chunks, cols), dtype=np.float64)
    for task in prange(n_chunks * n_blocks):
        chunk = task // n_blocks
        start = (task % n_blocks) * _COLUMN_BLOCK
        stop = min(cols, start + _COLUMN_BLOCK)
        acc = partials[chunk, start:stop]
        acc[:] = 0.0
        for r in range(chunk * _ROW_CHUNK, min(rows, (chunk + 1) * _ROW_CHUNK)):
            row = dy[r, start:stop]
            for j in range(stop - start):
                acc[j] += row[j]
    for block in prange(n_blocks):
        for j in range(block * _COLUMN_BLOCK, min(cols, (block + 1) * _COLUMN_BLOCK)):
            total = 0.0
            for chunk in range(n_chunks):
                total += partials[chunk, j]
            out[j] = total



@njit(cache=True, nogil=True, error_model="numpy")
def _add_bias_rows(y, bias, r0, r1):
    """y[r] += bias for rows [r0, r1) (one part's rows, serial)."""
    for r in range(r0, r1):
        for j in range(y.shape[1]):
            y[r, j] += bias[j]


@njit(cache=True, nogil=True, error_model="numpy")
def _row_sums(d, out):
    """out[j] = sum of d[:, j], accumulated row by row in out's dtype (float64 shares of a bias gradient)."""
    for j in range(d.shape[1]):
        out[j] = 0.0
    for r in range(d.shape[0]):
        for j in range(d.shape[1]):
            out[j] += d[r, j]


@njit(cache=True, nogil=True, error_model="numpy")
def _add_shares(shares, start, size, out):
    """out[i] = shares[0, start + i] + shares[1, start + i] + ..., in part order (a fixed order, so results do not
    depend on the thread count). Serial: in a parallel kernel, array expressions would each start a thread team."""
    for i in range(size):
        t = shares[0, start + i]
        for p in range(1, shares.shape[0]):
            t += shares[p, start + i]
        out[i] = t


@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def _small_forward(x, weight_t, bias, has_bias, parts, y):
    """y = x @ weight_t (+ bias): part p of the batch rows is one BLAS call on one of Numba's threads."""
    n = x.shape[0]
    for p in prange(parts):
        r0 = (p * n) // parts
        r1 = ((p + 1) * n) // parts
        np.dot(x[r0:r1], weight_t, y[r0:r1])
        if has_bias:
            _add_bias_rows(y, bias, r0, r1)


@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def _small_backward(dy, x, weight, has_bias, need_dx, parts, dweight, dbias, dx):
    """The backward pass on the forward pass's row parts: part p computes its rows of dx and its share of dweight
    and dbias (summed in float64); the shares are then added in part order. dweight is C-contiguous."""
    n, n_out = dy.shape
    n_in = x.shape[1]
    dw_parts = np.empty((parts, n_out * n_in), dtype=dweight.dtype)
    db_parts = np.empty((parts, n_out))
    for p in prange(parts):
        r0 = (p * n) // parts
        r1 = ((p + 1) * n) // parts
        np.dot(dy[r0:r1].T, x[r0:r1], dw_parts[p].reshape((n_out, n_in)))
        if has_bias:
            _row_sums(dy[r0:r1], db_parts[p])
        if need_dx:
            np.dot(dy[r0:r1], weight, dx[r0:r1])
    _add_shares(dw_parts, 0, n_out * n_in, dweight.reshape(n_out * n_in))
    if has_bias:
        _add_shares(db_parts, 0, n_out, dbias)


def _parts(n: int, macs: int) -> int:
    """Row parts of a small product: _SMALL_PARTS, or one when that would cost more than it saves. Depends on the
    shape only, and forward and backward split alike (each thread then finds its rows in its own cache)."""
    return min(n, _SMALL_PARTS) if macs >= _SPLIT_MIN_MACS else 1


def linear_forward(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None = None) -> np.ndarray:
    """Affine map y = x @ weight.T + bias.

    x: (N, in) float32 or float64; weight: (out, in) and bias: (out,) or None, in x's dtype.
    Returns y (N, out) in x's dtype.
    """
    x = _float_array("x", x, 2)
    weight = _float_array("weight", weight, 2, x.dtype)
    if weight.shape[1] != x.shape[1]:
        raise ValueError(f"weight: expected shape (out, {x.shape[1]}) to match x {x.shape}, got {weight.shape}")
    if bias is not None:
        bias = _float_array("bias", bias, 1, x.dtype)
        _check_shape("bias", bias, (weight.shape[0],))
    n, n_in = x.shape
    n_out = weight.shape[0]
    macs = n * n_in * n_out
    if 0 < macs <= _SMALL_MACS:
        y = np.empty((n, n_out), dtype=x.dtype)
        has_bias = bias is not None
        # BLAS is slower on a transposed operand at these sizes; the copy of W.T costs under a microsecond.
        _small_forward(x, np.ascontiguousarray(weight.T), bias if has_bias else y[0], has_bias, _parts(n, macs), y)
        return y
    with _single_threaded_blas:
        y = np.matmul(x, weight.T)
    if bias is not None:
        _add_bias(y, bias)
    return y


def linear_backward(
    dy: np.ndarray,
    x: np.ndarray,
    weight: np.ndarray,
    dweight: np.ndarray,
    dbias: np.ndarray | None = None,
    need_dx: bool = True,
) -> np.ndarray | None:
    """Gradients of y = x @ weight.T + bias; OVERWRITES dweight and dbias in place.

    dy: (N, out); x: (N, in) the forward input; weight: (out, in); all one dtype (float32 or float64).
    dweight: (out, in) and dbias: (out,) or None, written in place (views into a flat gradient vector).
    Returns dx (N, in), or None when need_dx is False (the first layer does not need it).
    """
    x = _float_array("x", x, 2)
    weight = _float_array("weight", weight, 2, x.dtype)
    dy = _float_array("dy", dy, 2, x.dtype)
    n, n_in = x.shape
    n_out = weight.shape[0]
    _check_shape("weight", weight, (n_out, n_in))
    _check_shape("dy", dy, (n, n_out))
    _check_output("dweight", dweight, (n_out, n_in), x.dtype)
    if dbias is not None:
        _check_output("dbias", dbias, (n_out,), x.dtype)
    macs = n * n_in * n_out
    if 0 < macs <= _SMALL_MACS:
        dx = np.empty((n, n_in), dtype=x.dtype) if need_dx else x
        has_bias = dbias is not None
        # BLAS writes only C-contiguous outputs; a strided dweight gets the result through a copy.
        dw = dweight if dweight.flags.c_contiguous else np.empty((n_out, n_in), dtype=x.dtype)
        _small_backward(dy, x, weight, has_bias, bool(need_dx), _parts(n, macs), dw, dbias if has_bias else dy[0], dx)
        if dw is not dweight:
            dweight[...] = dw
        return dx if need_dx else None
    # dy.T is a transposed view: BLAS reads it with a transpose flag, no copy.
    with _single_threaded_blas:
        np.matmul(dy.T, x, out=dweight)
        dx = np.matmul(dy, weight) if need_dx else None
    if dbias is not None:
        _column_sums(dy, dbias)
    return dx


# ----------------------------------------------------------------------------------------------------------------
# Chains of small Linear layers (a deep linear network): one parallel region for the whole chain.
#
# Layer k of a chain maps dims[k] to dims[k + 1] features with the weight params[w_off[k]:...] (out, in) and the
# bias params[b_off[k]:...] (b_off[k] < 0: none); its output is acts[a_off[k]:...] viewed as (N, dims[k + 1]).
# Each part of the batch rows runs through every layer on one thread, with the same row split and the same BLAS
# calls as the per-layer small route, so results are bit-identical to running the layers one by one, minus a
# thread-team start and the Python around each layer.


@njit(cache=True, nogil=True, error_model="numpy")
def _chain_transposed(params, w_off, dims, t_off, dtype_source):
    """Every layer's W.T, C-contiguous, packed at t_off."""
    wt = np.empty(t_off[-1], dtype=dtype_source.dtype)
    for k in range(w_off.shape[0]):
        din, dout = dims[k], dims[k + 1]
        w = params[w_off[k]:w_off[k] + dout * din].reshape((dout, din))
        t = wt[t_off[k]:t_off[k + 1]].reshape((din, dout))
        for i in range(din):
            for j in range(dout):
                t[i, j] = w[j, i]
    return wt


@njit(cache=True, nogil=True, error_model="numpy")
def _chain_forward_rows(x, params, wt, w_off, b_off, dims, t_off, a_off, acts, r0, r1):
    """Rows [r0, r1) through every layer (serial, so that Numba's array analysis, which assumes a variable keeps its
    shape inside a parallel loop, never sees `inp` change width from layer to layer)."""
    n = x.shape[0]
    inp = x
    for k in range(w_off.shape[0]):
        din, dout = dims[k], dims[k + 1]
        out = acts[a_off[k]:a_off[k] + n * dout].reshape((n, dout))
        np.dot(inp[r0:r1], wt[t_off[k]:t_off[k + 1]].reshape((din, dout)), out[r0:r1])
        if b_off[k] >= 0:
            _add_bias_rows(out, params[b_off[k]:b_off[k] + dout], r0, r1)
        inp = out


@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def _chain_forward(x, params, w_off, b_off, dims, t_off, a_off, parts, acts):
    n = x.shape[0]
    wt = _chain_transposed(params, w_off, dims, t_off, x)
    for p in prange(parts):
        _chain_forward_rows(x, params, wt, w_off, b_off, dims, t_off, a_off, acts, (p * n) // parts,
                            ((p + 1) * n) // parts)


@njit(cache=True, nogil=True, error_model="numpy")
def _chain_backward_rows(x, dy, params, w_off, b_off, dims, t_off, a_off, acts, need_dx, dx, dw_part, db_part,
                         r0, r1):
    """Rows [r0, r1) back through every layer: their share of each dW (and db, in float64) and their rows of dx."""
    n = x.shape[0]
    layers = w_off.shape[0]
    rows = r1 - r0
    width = 0
    for k in range(layers + 1):
        width = max(width, dims[k])
    buf_a = np.empty(rows * width, dtype=x.dtype)
    buf_b = np.empty(rows * width, dtype=x.dtype)
    d = dy[r0:r1]
    for k in range(layers - 1, -1, -1):
        din, dout = dims[k], dims[k + 1]
        inp = x if k == 0 else acts[a_off[k - 1]:a_off[k - 1] + n * din].reshape((n, din))
        np.dot(d.T, inp[r0:r1], dw_part[t_off[k]:t_off[k + 1]].reshape((dout, din)))
        if b_off[k] >= 0:
            col = a_off[k] // n
            _row_sums(d, db_part[col:col + dout])
        w = params[w_off[k]:w_off[k] + dout * din].reshape((dout, din))
        if k > 0:
            nxt = (buf_a if k % 2 == 0 else buf_b)[:rows * din].reshape((rows, din))
            np.dot(d, w, nxt)
            d = nxt
        elif need_dx:
            np.dot(d, w, dx[r0:r1])


@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def _chain_backward(x, dy, params, grads, w_off, b_off, dims, t_off, a_off, parts, acts, need_dx, dx):
    n = x.shape[0]
    layers = w_off.shape[0]
    dw_parts = np.empty((parts, t_off[-1]), dtype=x.dtype)
    db_parts = np.empty((parts, max(1, a_off[-1] // n)))
    for p in prange(parts):
        _chain_backward_rows(x, dy, params, w_off, b_off, dims, t_off, a_off, acts, need_dx, dx, dw_parts[p],
                             db_parts[p], (p * n) // parts, ((p + 1) * n) // parts)
    # Shares added in part order, as the per-layer route does: bit-identical results.
    for k in range(layers):
        size = dims[k] * dims[k + 1]
        _add_shares(dw_parts, t_off[k], size, grads[w_off[k]:w_off[k] + size])
        if b_off[k] >= 0:
            _add_shares(db_parts, a_off[k] // n, dims[k + 1], grads[b_off[k]:b_off[k] + dims[k + 1]])


def linear_chain_plan(n: int, dims: np.ndarray) -> int:
    """Row parts for running a chain of layers (dims[k] -> dims[k + 1]) on N rows in one kernel, or 0 when some
    layer is not a small product or the layers would split rows differently (then run them one by one)."""
    parts = -1
    for k in range(len(dims) - 1):
        macs = n * int(dims[k]) * int(dims[k + 1])
        if not 0 < macs <= _SMALL_MACS:
            return 0
        p = _parts(n, macs)
        if parts not in (-1, p):
            return 0
        parts = p
    return max(parts, 0)


def linear_chain_forward(x: np.ndarray, params: np.ndarray, w_off, b_off, dims, parts: int) -> list[np.ndarray]:
    """Forward pass of a chain of Linear layers, layer k mapping dims[k] -> dims[k + 1] features with weight
    params[w_off[k]:] (out, in) and bias params[b_off[k]:] (b_off[k] < 0: none), in one parallel kernel.

    x: (N, dims[0]); params: 1-D, x's dtype; parts from linear_chain_plan (> 0). Returns every layer's output,
    (N, dims[k + 1]) views into one buffer; results equal linear_forward layer by layer, bit for bit.
    """
    x = _float_array("x", x, 2)
    params = _float_array("params", params, 1, x.dtype)
    w_off, b_off, dims, t_off, a_off = _chain_layout(x.shape[0], w_off, b_off, dims, x.shape[1], params.size)
    acts = np.empty(a_off[-1], dtype=x.dtype)
    _chain_forward(x, params, w_off, b_off, dims, t_off, a_off, int(parts), acts)
    n = x.shape[0]
    return [acts[a_off[k]:a_off[k + 1]].reshape(n, int(dims[k + 1])) for k in range(len(w_off))]


def linear_chain_backward(
    dy: np.ndarray, x: np.ndarray, outputs: list[np.ndarray], params: np.ndarray, grads: np.ndarray, w_off, b_off,
    dims, parts: int, need_dx: bool = True,
) -> np.ndarray | None:
    """Gradients of linear_chain_forward: OVERWRITES grads at every layer's weight and bias offsets.

    dy: (N, dims[-1]); x and outputs: the forward pass's input and its returned outputs (in one buffer); grads: 1-D
    like params. Returns dx (N, dims[0]), or None when need_dx is False. Equal to linear_backward layer by layer.
    """
    x = _float_array("x", x, 2)
    dy = _float_array("dy", dy, 2, x.dtype)
    params = _float_array("params", params, 1, x.dtype)
    _check_output("grads", grads, params.shape, x.dtype)
    if not grads.flags.c_contiguous:
        raise ValueError("grads: expected a C-contiguous array (it is written in place)")
    n = x.shape[0]
    w_off, b_off, dims, t_off, a_off = _chain_layout(n, w_off, b_off, dims, x.shape[1], params.size)
    if dy.shape != (n, int(dims[-1])):
        raise ValueError(f"dy: expected shape {(n, int(dims[-1]))}, got {dy.shape}")
    acts = outputs[0].base if outputs and outputs[0].base is not None else None
    if acts is None or acts.ndim != 1 or acts.size != a_off[-1] or acts.dtype != x.dtype:
        raise ValueError("outputs: expected the list linear_chain_forward returned for this x")
    dx = np.empty((n, int(dims[0])), dtype=x.dtype) if need_dx else x
    _chain_backward(x, dy, params, grads, w_off, b_off, dims, t_off, a_off, int(parts), acts, bool(need_dx), dx)
    return dx if need_dx else None


def _chain_layout(n: int, w_off, b_off, dims, in_features: int, size: int):
    """Checked int64 layout arrays, plus the packed W.T offsets t_off and the output offsets a_off."""
    w_off = np.ascontiguousarray(w_off, dtype=np.int64)
    b_off = np.ascontiguousarray(b_off, dtype=np.int64)
    dims = np.ascontiguousarray(dims, dtype=np.int64)
    layers = w_off.shape[0]
    if layers < 1 or b_off.shape != (layers,) or dims.shape != (layers + 1,) or dims.min() < 1:
        raise ValueError(f"layout: expected w_off, b_off of one length L >= 1 and L + 1 positive dims, got "
                         f"{w_off.shape}, {b_off.shape}, {dims.shape}")
    if dims[0] != in_features:
        raise ValueError(f"x: expected {int(dims[0])} features (dims[0]), got {in_features}")
    sizes = dims[:-1] * dims[1:]
    if w_off.min() < 0 or (w_off + sizes).max() > size or (b_off >= 0).any() and (b_off + dims[1:]).max() > size:
        raise ValueError(f"layout: weight or bias offsets run past params (size {size})")
    t_off = np.concatenate(([0], np.cumsum(sizes))).astype(np.int64)
    a_off = np.concatenate(([0], np.cumsum(n * dims[1:]))).astype(np.int64)
    return w_off, b_off, dims, t_off, a_off
