"""Winograd 3x3 convolution (stride 1, padding 1): F(4x4,3x3) and F(2x2,3x3) for forward, input and weight gradient.

Method (Lavin & Gray 2016). An output tile of m x m pixels is computed from an (m+2) x (m+2) input patch d as
    Y = A^T [ (G g G^T) (.) (B^T d B) ] A,        (.) elementwise, summed over input channels,
so the sum over input channels becomes one GEMM per transform point xi (alpha^2 of them, alpha = m + 2):
    M[xi] (C_out, T) = U[xi] (C_out, C_in) @ V[xi] (C_in, T)        U = G g G^T, V = B^T d B for T tiles.
m = 4 (alpha = 6, points 0, 1, -1, 2, -2, infinity) where the map is at least 4x4, m = 2 (points 0, 1, -1, infinity)
below. F(4x4) does 36 multiplies per 16 outputs and channel pair where im2col does 144 (4x fewer); F(2x2) 16 per 4.
- input gradient: the same forward on dy, with the kernel rotated 180 degrees and its channels swapped;
- weight gradient: the adjoint of the forward, dW = G^T [ sum over tiles (A dy A^T) (.) (B^T d B) ] G: per point,
  dW^[xi] (C_out, C_in) += dY^[xi] (C_out, T) @ V[xi]^T, then the inverse transform (in float64, after the workers'
  partials are summed in worker order; the workers are a fixed number of image blocks, _im2col.WORK_BLOCKS, not
  the thread count, so results are the same bits at any thread count).
Weights are transformed once per call, in float64, then rounded to the working dtype.

Work is split like conv.py's im2col: each worker owns a contiguous block of samples and walks it in tile groups
(whole images, or tile rows of one image when an image has more tiles than a group holds), sized so the transformed
group stays in cache, with its own single-threaded GEMMs inside one parallel region. The transforms
(kernels/conv/_winograd_transforms.py) run over contiguous runs of a group's tiles, image fastest; the input is split
into column phases instead of gathering (m+2)^2 patches, so only one move per pixel in and out is scalar.

Accuracy (relative L2 error against a float64 direct convolution, measured on every VGG layer shape,
tests/kernels/conv/test_winograd.py): see docs/PROTOCOL.md, "Convolution algorithms".
"""

from __future__ import annotations

import numpy as np
from numba import get_thread_id, njit, prange

from smoothnorm.kernels._blas import _DGEMM, _SGEMM, _gemm, _single_threaded_blas
from smoothnorm.kernels._checks import _check_output, _float_array, _output_array
from smoothnorm.kernels.conv._im2col import work_blocks, workspace_slots
from smoothnorm.kernels.conv._scratch import scratch
from smoothnorm.kernels.conv._winograd_transforms import (
    _gradient_transform,
    _input_transform,
    _inverse_weight_transform,
    _output_transform,
    _transform_weights,
)

# Bytes of transformed data per tile group and worker (V and M in the forward; X^ and dY^ in the weight gradient),
# and the tile count per group between which it is kept. On VGG's layers (batch 64, float32, 2 workers) 8 MB groups
# ran 1.2-1.6x faster than 1-2 MB ones (GEMMs of 32-64 columns are inefficient); 32 MB groups (over 1000 tiles at
# 64 channels) ran 1.6x slower on the 32x32 layers: the group must stay within L2 plus a share of L3.
_GROUP_BYTES = 8 << 20
_MIN_GROUP_TILES = 32
_MAX_GROUP_TILES = 256
# As in _im2col.py (the im2col convolution): calls this small run as one serial worker.
_PARALLEL_MIN_MACS = 1 << 20


def output_tile(h: int, w: int) -> int:
    """Output tile size m of F(m x m, 3x3) for an h x w map: 4 when both sides are at least 4, else 2."""
    return 4 if min(h, w) >= 4 else 2


def winograd_pays(pass_name: str, c_in: int, c_out: int, h: int, w: int, n: int) -> bool:
    """The fixed rule behind algorithm="auto": True where Winograd measured faster than im2col for this pass.

    pass_name: "forward", "input" (gradient) or "weight" (gradient); the layer is (C_in -> C_out) on an h x w map of
    a batch of n images. Written from benchmarks/bench_conv.py (float32, AMD EPYC with AVX-512; tables in
    benchmarks/README.md). The rule depends on shapes alone, never on the thread count, so a run's bits do not either.
    - At batch 128 Winograd F(4x4) won every pass of every VGG layer on maps of at least 4x4 by 1.15-2.4x, and F(2x2)
      won on VGG's 2x2 maps (512 -> 512) by 1.09-1.21x.
    - Layers with fewer than 16 input or output channels (VGG's first layer, 3 -> 64): per-point GEMMs with 3 rows
      cost more than the transforms save (im2col 1.5-2.1x faster in every pass).
    - Maps smaller than 2x2 (1 pixel: F(2x2) would compute four outputs for one; not measured).
    - Few tiles: every call transforms the weights (C_out x C_in x alpha^2 values) whatever the batch, and runs
      GEMMs only as wide as the tile count, so on small batches and maps im2col wins (at batch 1, 4-10x on 2x2-8x8
      maps). Measured at 1 thread on VGG's layer shapes from 16 to 512 channels, batch 1-64: Winograd starts to win
      at about 32 output tiles with 32 or more channels (1.0-1.3x at 32 tiles of 2x2 and 4x4 maps, 0.8-0.95x on
      512 channels) and at about 64 with 16-31 channels (0.8-1.2x there), so those are the thresholds.
    """
    if pass_name not in ("forward", "input", "weight"):
        raise ValueError(f"pass_name: expected 'forward', 'input' or 'weight', got {pass_name!r}")
    channels = min(c_in, c_out)
    if channels < 16 or min(h, w) < 2:
        return False
    m = output_tile(h, w)
    tiles = n * (-(-h // m)) * (-(-w // m))
    return tiles >= (32 if channels >= 32 else 64)


# ----------------------------------------------------------------------------------------------------------------
# Workers and parallel drivers.


@njit(cache=True, nogil=True, error_model="numpy")
def _forward_worker(sgemm, dgemm, x, u, bias, y, m, n_start, n_stop, nb, trows, v_buf, m_buf, planes, cols, scratch):
    """y for images n_start .. n_stop-1, in tile groups of nb images times trows tile rows."""
    a2 = (m + 2) * (m + 2)
    c_in = x.shape[1]
    c_out = u.shape[1]
    tiles_h = -(-y.shape[2] // m)
    tiles_w = -(-y.shape[3] // m)
    for n0 in range(n_start, n_stop, nb):
        images = min(nb, n_stop - n0)
        for tr0 in range(0, tiles_h, trows):
            rows = min(trows, tiles_h - tr0)
            count = images * rows * tiles_w
            v = v_buf[: a2 * c_in * count].reshape(a2 * c_in, count)
            _input_transform(x, m, n0, images, tr0, rows, v, planes, cols)
            mat = m_buf[: a2 * c_out * count].reshape(a2 * c_out, count)
            v3 = v.reshape(a2, c_in, count)
            m3 = mat.reshape(a2, c_out, count)
            for xi in range(a2):
                _gemm(sgemm, dgemm, u[xi], False, v3[xi], False, m3[xi], 0.0)
            _output_transform(mat, y, bias, m, n0, images, tr0, rows, scratch)


@njit(cache=True, nogil=True, error_model="numpy")
def _weight_worker(sgemm, dgemm, dy, x, dw_hat, m, n_start, n_stop, nb, trows, v_buf, e_buf, planes, cols, scratch):
    """dw_hat[xi] = sum over the tiles of images n_start .. n_stop-1 of (A dy A^T)[xi] (B^T d B)[xi]^T."""
    a2 = (m + 2) * (m + 2)
    c_in = x.shape[1]
    c_out = dy.shape[1]
    tiles_h = -(-dy.shape[2] // m)
    tiles_w = -(-dy.shape[3] // m)
    if n_stop <= n_start:
        dw_hat[:] = 0
    first = True
    for n0 in range(n_start, n_stop, nb):
        images = min(nb, n_stop - n0)
        for tr0 in range(0, tiles_h, trows):
            rows = min(trows, tiles_h - tr0)
            count = images * rows * tiles_w
            v = v_buf[: a2 * c_in * count].reshape(a2 * c_in, count)
            _input_transform(x, m, n0, images, tr0, rows, v, planes, cols)
            e = e_buf[: a2 * c_out * count].reshape(a2 * c_out, count)
            _gradient_transform(dy, m, n0, images, tr0, rows, e, scratch)
            v3 = v.reshape(a2, c_in, count)
            e3 = e.reshape(a2, c_out, count)
            for xi in range(a2):
                _gemm(sgemm, dgemm, e3[xi], False, v3[xi], True, dw_hat[xi], 0.0 if first else 1.0)
            first = False


@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def _forward_parallel(sgemm, dgemm, x, u, bias, y, m, workers, nb, trows, v_ws, m_ws, planes_ws, cols_ws, scratch_ws):
    n = x.shape[0]
    for t in prange(workers):
        s = get_thread_id()
        _forward_worker(
            sgemm, dgemm, x, u, bias, y, m, n * t // workers, n * (t + 1) // workers, nb, trows,
            v_ws[s], m_ws[s], planes_ws[s], cols_ws[s], scratch_ws[s],
        )  # fmt: skip


@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def _weight_parallel(sgemm, dgemm, dy, x, dw_ws, m, workers, nb, trows, v_ws, e_ws, planes_ws, cols_ws, scratch_ws):
    n = x.shape[0]
    for t in prange(workers):
        s = get_thread_id()
        _weight_worker(
            sgemm, dgemm, dy, x, dw_ws[t], m, n * t // workers, n * (t + 1) // workers, nb, trows,
            v_ws[s], e_ws[s], planes_ws[s], cols_ws[s], scratch_ws[s],
        )  # fmt: skip


# ----------------------------------------------------------------------------------------------------------------
# Planning and public functions.


def _plan(n: int, h: int, w: int, c_a: int, c_b: int, m: int, itemsize: int) -> tuple[int, int, int, bool]:
    """(blocks of images, images per group, tile rows per group, parallel) from the shape only (never the thread
    count, never timing): see _im2col.WORK_BLOCKS.

    A group holds whole images when one image has at most the target count of tiles, else one image's tile rows.
    """
    a2 = (m + 2) ** 2
    tiles_h, tiles_w = -(-h // m), -(-w // m)
    per_image = tiles_h * tiles_w
    parallel = n * per_image * a2 * c_a * c_b >= _PARALLEL_MIN_MACS and _single_threaded_blas.available()
    workers = work_blocks(n, parallel, a2 * c_a * c_b * itemsize)
    images = -(-n // workers)
    # Every group streams the transformed weights (forward) or updates the transformed weight gradient: a group at
    # least that large keeps their traffic no bigger than the group's own.
    # (512 -> 512 on 4x4 maps: 1.5x faster forward and input gradient, 1.1x weight gradient, than 8 MB groups.)
    group_bytes = max(_GROUP_BYTES, a2 * c_a * c_b * itemsize)
    target = max(_MIN_GROUP_TILES, group_bytes // (a2 * (c_a + c_b) * itemsize))
    target = min(target, _MAX_GROUP_TILES)
    # Even groups: the last one is not a sliver.
    if per_image <= target:
        nb = min(images, target // per_image)
        return workers, -(-images // -(-images // nb)), tiles_h, parallel
    trows = max(1, target // tiles_w)
    return workers, 1, -(-tiles_h // -(-tiles_h // trows)), parallel


def _workspaces(slots: int, nb: int, trows: int, m: int, w: int, c_a: int, c_b: int, dtype) -> tuple:
    """Per-thread buffers (_im2col.workspace_slots): V (c_a), M or dY^ (c_b), the input phases, their column
    transform, scratch."""
    alpha = m + 2
    tiles_w = -(-w // m)
    count = nb * trows * tiles_w
    return (
        scratch("winograd.v", (slots, alpha * alpha * c_a * count), dtype),
        scratch("winograd.m", (slots, alpha * alpha * c_b * count), dtype),
        scratch("winograd.planes", (slots, m * (m * trows + 2) * (tiles_w + 1) * nb), dtype),
        scratch("winograd.cols", (slots, alpha * m * (tiles_w + 1) * nb), dtype),
        scratch("winograd.scratch", (slots, (alpha * m + m * m) * count), dtype),
    )


def _check_3x3(weight: np.ndarray) -> None:
    if weight.shape[2:] != (3, 3) or min(weight.shape[:2]) < 1:
        raise ValueError(f"weight: Winograd convolution needs shape (C_out, C_in, 3, 3), got {weight.shape}")


def _check_tile(tile: int | None, h: int, w: int) -> int:
    if tile is None:
        return output_tile(h, w)
    if tile not in (2, 4):
        raise ValueError(f"tile: expected None, 2 or 4 (the output tile of F(m x m, 3x3)), got {tile!r}")
    return int(tile)


def _run_forward(x: np.ndarray, u: np.ndarray, bias: np.ndarray, y: np.ndarray, m: int) -> None:
    n, c_in, h, w = x.shape
    c_out = u.shape[1]
    workers, nb, trows, parallel = _plan(n, h, w, c_in, c_out, m, x.itemsize)
    ws = _workspaces(workspace_slots(workers, parallel), nb, trows, m, w, c_in, c_out, x.dtype)
    with _single_threaded_blas:  # in the serial path too: threaded GEMMs are not always the serial ones' bits
        if parallel:
            _forward_parallel(_SGEMM, _DGEMM, x, u, bias, y, m, workers, nb, trows, *ws)
        else:
            _forward_worker(_SGEMM, _DGEMM, x, u, bias, y, m, 0, n, nb, trows, *(a[0] for a in ws))


def winograd_forward(
    x: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray | None = None,
    tile: int | None = None,
    *,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """3x3 cross-correlation, stride 1, padding 1, by Winograd F(m x m, 3x3); same result as conv2d_forward.

    x: (N, C_in, H, W) float32 or float64; weight: (C_out, C_in, 3, 3); bias: (C_out,) or None; x's dtype for all.
    tile: output tile m (2 or 4), None for output_tile(H, W). Returns y (N, C_out, H, W), in `out` if given (a
    C-contiguous array of that shape and x's dtype, apart from x, weight and bias).
    """
    x = _float_array("x", x, 4)
    weight = _float_array("weight", weight, 4, x.dtype)
    _check_3x3(weight)
    n, c_in, h, w = x.shape
    c_out = weight.shape[0]
    if weight.shape[1] != c_in:
        raise ValueError(f"weight: expected {c_in} input channels (x has shape {x.shape}), got shape {weight.shape}")
    if min(h, w) < 1:
        raise ValueError(f"x: expected H, W >= 1, got shape {x.shape}")
    if bias is None:
        bias = np.empty(0, dtype=x.dtype)
    else:
        bias = _float_array("bias", bias, 1, x.dtype)
        if bias.shape != (c_out,):
            raise ValueError(f"bias: expected shape ({c_out},), got {bias.shape}")
    m = _check_tile(tile, h, w)
    y = _output_array("out", out, (n, c_out, h, w), x.dtype, x, weight, bias)
    if n == 0:
        return y
    u = scratch("winograd.u", ((m + 2) ** 2, c_out, c_in), x.dtype)
    _transform_weights(weight, m, False, u)
    _run_forward(x, u, bias, y, m)
    return y


def winograd_backward_input(
    dy: np.ndarray, weight: np.ndarray, tile: int | None = None, *, out: np.ndarray | None = None
) -> np.ndarray:
    """dx of winograd_forward: dy correlated with the kernel rotated 180 degrees, channels swapped.

    dy: (N, C_out, H, W); weight: (C_out, C_in, 3, 3) in dy's dtype. Returns dx (N, C_in, H, W), in `out` if given
    (a C-contiguous array of that shape and dy's dtype, apart from dy and weight).
    """
    dy = _float_array("dy", dy, 4)
    weight = _float_array("weight", weight, 4, dy.dtype, like="dy")
    _check_3x3(weight)
    n, c_out, h, w = dy.shape
    c_in = weight.shape[1]
    if weight.shape[0] != c_out:
        raise ValueError(f"weight: expected {c_out} output channels (dy has shape {dy.shape}), got {weight.shape}")
    if min(h, w) < 1:
        raise ValueError(f"dy: expected H, W >= 1, got shape {dy.shape}")
    m = _check_tile(tile, h, w)
    dx = _output_array("out", out, (n, c_in, h, w), dy.dtype, dy, weight)
    if n == 0:
        return dx
    u = scratch("winograd.u", ((m + 2) ** 2, c_in, c_out), dy.dtype)
    _transform_weights(weight, m, True, u)
    _run_forward(dy, u, np.empty(0, dtype=dy.dtype), dx, m)
    return dx


def winograd_backward_weight(dy: np.ndarray, x: np.ndarray, dweight: np.ndarray, tile: int | None = None) -> None:
    """dweight (overwritten in place) of winograd_forward: the adjoint Winograd transform, summed over the batch.

    dy: (N, C_out, H, W); x: (N, C_in, H, W) the forward input; dweight: (C_out, C_in, 3, 3), x's dtype for all.
    """
    x = _float_array("x", x, 4)
    dy = _float_array("dy", dy, 4, x.dtype)
    n, c_in, h, w = x.shape
    c_out = dy.shape[1]
    if dy.shape[0] != n or dy.shape[2:] != (h, w):
        raise ValueError(f"dy: expected shape ({n}, C_out, {h}, {w}) (the forward output), got {dy.shape}")
    _check_output("dweight", dweight, (c_out, c_in, 3, 3), x.dtype)
    if min(h, w) < 1 or c_in < 1 or c_out < 1:
        raise ValueError(f"x: expected C_in, H, W >= 1 and dy C_out >= 1, got {x.shape} and {dy.shape}")
    m = _check_tile(tile, h, w)
    a2 = (m + 2) ** 2
    workers, nb, trows, parallel = _plan(max(n, 1), h, w, c_in, c_out, m, x.itemsize)
    ws = _workspaces(workspace_slots(workers, parallel), nb, trows, m, w, c_in, c_out, x.dtype)
    dw_ws = scratch("winograd.dw", (workers, a2, c_out, c_in), x.dtype)
    with _single_threaded_blas:
        if parallel:
            _weight_parallel(_SGEMM, _DGEMM, dy, x, dw_ws, m, workers, nb, trows, *ws)
        else:
            _weight_worker(_SGEMM, _DGEMM, dy, x, dw_ws[0], m, 0, n, nb, trows, *(a[0] for a in ws))
    if dweight.flags.c_contiguous:
        _inverse_weight_transform(dw_ws, m, dweight)
    else:
        out = scratch("winograd.dw_merged", (c_out, c_in, 3, 3), x.dtype)
        _inverse_weight_transform(dw_ws, m, out)
        dweight[...] = out
