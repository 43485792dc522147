import numpy as np
import pytest

from smoothnorm.kernels.pool import maxpool2d_backward, maxpool2d_forward
from tests.reference import central_difference, maxpool2d_ref, relative_error

SHAPES = [(1, 1, 2, 2), (2, 3, 4, 4), (1, 2, 5, 7), (3, 1, 2, 3), (2, 2, 9, 6)]


def _distinct(rng, shape):
    """Values at least 0.1 apart, so no window has a tie and a finite-difference step cannot change a winner."""
    size = int(np.prod(shape))
    return (rng.permutation(size).astype(np.float64) * 0.1 - 0.05 * size).reshape(shape)


def _values_at_argmax(x, argmax):
    """x at each window's argmax (0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right)."""
    out = np.empty(argmax.shape, dtype=x.dtype)
    for idx in np.ndindex(*argmax.shape):
        n, c, i, j = idx
        k = int(argmax[idx])
        out[idx] = x[n, c, 2 * i + k // 2, 2 * j + k % 2]
    return out


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_forward_matches_reference(rng, shape, dtype):
    x = rng.standard_normal(shape).astype(dtype)
    y, argmax = maxpool2d_forward(x)
    assert y.shape == (shape[0], shape[1], shape[2] // 2, shape[3] // 2) and y.dtype == dtype
    assert argmax.shape == y.shape and argmax.dtype == np.int8
    assert argmax.min() >= 0 and argmax.max() <= 3
    np.testing.assert_array_equal(y, maxpool2d_ref(x))  # max is exact, in either dtype
    np.testing.assert_array_equal(_values_at_argmax(x, argmax), y)


@pytest.mark.parametrize("shape", SHAPES)
def test_backward_matches_finite_differences(rng, shape):
    x = _distinct(rng, shape)
    y, argmax = maxpool2d_forward(x)
    g = rng.standard_normal(y.shape)  # loss = sum(y * g), so dy = g
    dx = maxpool2d_backward(g, argmax, x.shape)
    assert dx.shape == x.shape and dx.dtype == np.float64
    numeric = central_difference(lambda v: np.sum(maxpool2d_ref(v) * g), x)
    assert relative_error(dx, numeric) < 1e-6
    # Rows/columns dropped by the floor get exactly zero, and each window has exactly one nonzero.
    assert np.all(dx[:, :, 2 * y.shape[2] :, :] == 0) and np.all(dx[:, :, :, 2 * y.shape[3] :] == 0)
    assert np.count_nonzero(dx) == y.size


def test_backward_writes_every_element(rng):
    # dx is allocated uninitialized and every element written by the kernel: repeated calls stay exact.
    x = _distinct(rng, (2, 3, 7, 5))
    _, argmax = maxpool2d_forward(x)
    dy = np.ones(argmax.shape)
    for _ in range(3):
        dx = maxpool2d_backward(dy, argmax, x.shape)
        assert dx.sum() == argmax.size and set(np.unique(dx)) == {0.0, 1.0}


def test_ties_take_the_first_position():
    x = np.array([[[[1.0, 3.0, 2.0, 2.0], [3.0, 0.0, 2.0, 2.0]]]])
    y, argmax = maxpool2d_forward(x)
    np.testing.assert_array_equal(y, [[[[3.0, 2.0]]]])
    np.testing.assert_array_equal(argmax, [[[[1, 0]]]])


def test_float32_matches_float64(rng):
    x = _distinct(rng, (2, 3, 7, 6))
    y64, a64 = maxpool2d_forward(x)
    y32, a32 = maxpool2d_forward(x.astype(np.float32))
    np.testing.assert_array_equal(y32, y64.astype(np.float32))
    np.testing.assert_array_equal(a32, a64)
    dy = rng.standard_normal(y64.shape)
    dx64 = maxpool2d_backward(dy, a64, x.shape)
    dx32 = maxpool2d_backward(dy.astype(np.float32), a32, x.shape)
    assert dx32.dtype == np.float32
    np.testing.assert_array_equal(dx32, dx64.astype(np.float32))


def test_nan_and_inf_propagate():
    x = np.zeros((1, 1, 4, 4))
    x[0, 0, 0, 0] = 5.0
    x[0, 0, 1, 1] = np.nan  # NaN beats a larger value in the same window
    x[0, 0, 0, 2:] = -np.inf
    x[0, 0, 1, 2:] = -np.inf  # an all -inf window gives -inf
    x[0, 0, 3, 0] = np.inf
    y, argmax = maxpool2d_forward(x)
    assert np.isnan(y[0, 0, 0, 0]) and argmax[0, 0, 0, 0] == 3
    assert y[0, 0, 0, 1] == -np.inf
    assert y[0, 0, 1, 0] == np.inf and y[0, 0, 1, 1] == 0.0
    np.testing.assert_array_equal(np.isnan(y), np.isnan(maxpool2d_ref(x)))


def test_non_contiguous_input_is_accepted(rng):
    x = rng.standard_normal((3, 2, 6, 5)).transpose(1, 0, 2, 3)
    assert not x.flags.c_contiguous
    y, argmax = maxpool2d_forward(x)
    np.testing.assert_array_equal(y, maxpool2d_ref(x))
    dy = np.asfortranarray(rng.standard_normal(y.shape))
    _, argmax_c = maxpool2d_forward(np.ascontiguousarray(x))
    np.testing.assert_array_equal(argmax, argmax_c)
    dx = maxpool2d_backward(dy, argmax, x.shape)
    np.testing.assert_array_equal(dx, maxpool2d_backward(np.ascontiguousarray(dy), argmax_c, x.shape))
    np.testing.assert_array_equal(_values_at_argmax(dx, argmax), dy)


def test_forward_bad_inputs_raise(rng):
    with pytest.raises(ValueError, match=r"x: expected ndim 4"):
        maxpool2d_forward(np.zeros((2, 4, 4)))
    with pytest.raises(ValueError, match=r"x: expected dtype float32 or float64, got int32"):
        maxpool2d_forward(np.zeros((1, 1, 4, 4), dtype=np.int32))
    with pytest.raises(ValueError, match=r"x: expected H >= 2 and W >= 2"):
        maxpool2d_forward(np.zeros((1, 1, 1, 4)))


def test_backward_bad_inputs_raise(rng):
    _, argmax = maxpool2d_forward(rng.standard_normal((2, 3, 4, 6)))
    dy = np.ones(argmax.shape)
    with pytest.raises(ValueError, match=r"dy: expected ndim 4"):
        maxpool2d_backward(dy[0], argmax, (2, 3, 4, 6))
    with pytest.raises(ValueError, match=r"dy: expected dtype float32 or float64, got int64"):
        maxpool2d_backward(dy.astype(np.int64), argmax, (2, 3, 4, 6))
    with pytest.raises(ValueError, match=r"dy: expected shape \(2, 3, 3, 3\).*got \(2, 3, 2, 3\)"):
        maxpool2d_backward(dy, argmax, (2, 3, 6, 6))
    with pytest.raises(ValueError, match=r"argmax: expected dtype int8.*got int64"):
        maxpool2d_backward(dy, argmax.astype(np.int64), (2, 3, 4, 6))
    with pytest.raises(ValueError, match=r"argmax: expected shape \(2, 3, 2, 3\).*got \(2, 3, 2, 2\)"):
        maxpool2d_backward(dy, argmax[..., :2], (2, 3, 4, 6))
    with pytest.raises(ValueError, match=r"input_shape: expected 4 entries"):
        maxpool2d_backward(dy, argmax, (2, 3, 4))
    with pytest.raises(ValueError, match=r"input_shape: expected a tuple"):
        maxpool2d_backward(dy, argmax, 4)


@pytest.mark.torch
def test_matches_torch(rng):
    torch = pytest.importorskip("torch")
    x = rng.standard_normal((2, 3, 7, 6))
    x[0, 0, 0, 1] = x[0, 0, 1, 0] = 9.0  # a tie
    x[1, 2, 4, 4] = np.nan
    x[1, 1, 2:4, 2:4] = -np.inf
    tx = torch.tensor(x, requires_grad=True)
    ty, tidx = torch.nn.functional.max_pool2d(tx, 2, 2, return_indices=True)
    dy = rng.standard_normal(ty.shape)
    ty.backward(torch.tensor(dy))
    y, argmax = maxpool2d_forward(x)
    np.testing.assert_array_equal(y, ty.detach().numpy())
    # torch's indices are flat positions in the H x W plane.
    rows = 2 * np.arange(y.shape[2])[:, None] + argmax // 2
    cols = 2 * np.arange(y.shape[3])[None, :] + argmax % 2
    np.testing.assert_array_equal(rows * x.shape[3] + cols, tidx.numpy())
    np.testing.assert_array_equal(maxpool2d_backward(dy, argmax, x.shape), tx.grad.numpy())


def test_out_buffers_give_the_same_result_and_are_checked(rng):
    x = rng.standard_normal((2, 3, 6, 5)).astype(np.float32)
    y_new, arg_new = maxpool2d_forward(x)
    y_out, arg_out = np.full((2, 3, 3, 2), np.nan, np.float32), np.full((2, 3, 3, 2), 9, np.int8)
    y, arg = maxpool2d_forward(x, out=(y_out, arg_out))
    assert y is y_out and arg is arg_out
    np.testing.assert_array_equal(y, y_new)
    np.testing.assert_array_equal(arg, arg_new)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx_out = np.full(x.shape, np.nan, np.float32)  # every element is written, zeros included
    assert maxpool2d_backward(dy, arg, x.shape, out=dx_out) is dx_out
    np.testing.assert_array_equal(dx_out, maxpool2d_backward(dy, arg, x.shape))
    with pytest.raises(ValueError, match=r"out\[0\] \(y\): expected shape"):
        maxpool2d_forward(x, out=(np.empty((2, 3, 3, 3), np.float32), arg_out))
    with pytest.raises(ValueError, match=r"out\[1\] \(argmax\): expected shape .* dtype int8"):
        maxpool2d_forward(x, out=(y_out, np.empty((2, 3, 3, 2), np.int64)))
    buf = np.zeros(x.size + 4, np.float32)
    overlapping_dy = buf[x.size + 4 - dy.size :].reshape(dy.shape)
    with pytest.raises(ValueError, match="out: shares memory with an input"):
        maxpool2d_backward(overlapping_dy, arg, x.shape, out=buf[: x.size].reshape(x.shape))
    with pytest.raises(ValueError, match="out: expected a writeable C-contiguous"):
        maxpool2d_backward(dy, arg, x.shape, out=np.empty((2, 3, 5, 6), np.float32).transpose(0, 1, 3, 2))


@pytest.mark.parametrize("shape", [(2, 3, 6, 8), (1, 2, 5, 7)])  # odd sizes: the trailing row/column is dropped
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gather_reads_x_at_the_arg_max(rng, shape, dtype):
    from smoothnorm.kernels.pool import maxpool2d_gather
    from tests.reference import maxpool_gather_ref

    x = rng.standard_normal(shape).astype(dtype)
    y, arg = maxpool2d_forward(x)
    np.testing.assert_array_equal(maxpool2d_gather(x, arg), y)  # gathering x itself is the forward
    rx = rng.standard_normal(shape).astype(dtype)
    out = np.full(y.shape, np.nan, dtype)
    assert maxpool2d_gather(rx, arg, out=out) is out
    np.testing.assert_array_equal(out, maxpool_gather_ref(rx, arg))
    with pytest.raises(ValueError, match="argmax: expected int8"):
        maxpool2d_gather(rx, arg.astype(np.int64))
    with pytest.raises(ValueError, match="out: shares memory with an input"):
        maxpool2d_gather(rx, arg, out=rx.reshape(-1)[: y.size].reshape(y.shape))
