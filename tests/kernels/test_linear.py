import numpy as np
import pytest

from smoothnorm.kernels import linear
from smoothnorm.kernels.linear import linear_backward, linear_forward
from tests.helpers import assert_same_at_thread_counts
from tests.reference import central_difference, linear_ref, relative_error

SHAPES = [(1, 1, 1), (5, 7, 3), (16, 33, 10), (3, 4, 300)]  # (N, in, out); out=300 spans two column blocks


def _params(rng, n, n_in, n_out, dtype=np.float64):
    x = rng.standard_normal((n, n_in)).astype(dtype)
    weight = rng.standard_normal((n_out, n_in)).astype(dtype)
    bias = rng.standard_normal(n_out).astype(dtype)
    return x, weight, bias


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("with_bias", [True, False])
def test_forward_matches_reference(rng, shape, with_bias):
    x, weight, bias = _params(rng, *shape)
    bias = bias if with_bias else None
    y = linear_forward(x, weight, bias)
    assert y.shape == (shape[0], shape[2]) and y.dtype == np.float64
    np.testing.assert_allclose(y, linear_ref(x, weight, bias), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape", SHAPES[:3])
def test_backward_matches_finite_differences(rng, shape):
    x, weight, bias = _params(rng, *shape)
    g = rng.standard_normal((shape[0], shape[2]))  # loss = sum(y * g), so dy = g
    dweight = np.empty_like(weight)
    dbias = np.empty_like(bias)
    dx = linear_backward(g, x, weight, dweight, dbias)
    num_dx = central_difference(lambda v: np.sum(linear_ref(v, weight, bias) * g), x)
    num_dw = central_difference(lambda v: np.sum(linear_ref(x, v, bias) * g), weight)
    num_db = central_difference(lambda v: np.sum(linear_ref(x, weight, v) * g), bias)
    assert relative_error(dx, num_dx) < 1e-6
    assert relative_error(dweight, num_dw) < 1e-6
    assert relative_error(dbias, num_db) < 1e-6


@pytest.mark.parametrize("shape", [(5, 7, 3), (600, 9, 300)])  # the second spans 3 row chunks x 2 column blocks
def test_bias_gradient_is_column_sum(rng, shape):
    x, weight, _ = _params(rng, *shape)
    dy = rng.standard_normal((shape[0], shape[2]))
    dweight = np.empty_like(weight)
    dbias = np.empty(shape[2])
    linear_backward(dy, x, weight, dweight, dbias, need_dx=False)
    np.testing.assert_allclose(dbias, np.array([sum(dy[:, o]) for o in range(shape[2])]), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dweight, dy.T @ x, rtol=1e-12, atol=1e-12)


def test_float32_matches_float64(rng):
    x, weight, bias = _params(rng, 12, 20, 6)
    dy = rng.standard_normal((12, 6))
    y64 = linear_forward(x, weight, bias)
    y32 = linear_forward(x.astype(np.float32), weight.astype(np.float32), bias.astype(np.float32))
    assert y32.dtype == np.float32
    np.testing.assert_allclose(y32, y64, rtol=1e-4, atol=1e-5)
    dw64, db64 = np.empty_like(weight), np.empty_like(bias)
    dx64 = linear_backward(dy, x, weight, dw64, db64)
    dw32, db32 = np.empty_like(weight, np.float32), np.empty_like(bias, np.float32)
    dx32 = linear_backward(dy.astype(np.float32), x.astype(np.float32), weight.astype(np.float32), dw32, db32)
    assert dx32.dtype == np.float32
    for a32, a64 in [(dx32, dx64), (dw32, dw64), (db32, db64)]:
        np.testing.assert_allclose(a32, a64, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gradients_overwrite_views_into_flat_vector(rng, dtype):
    n, n_in, n_out = 6, 5, 4
    x, weight, bias = _params(rng, n, n_in, n_out, dtype)
    dy = rng.standard_normal((n, n_out)).astype(dtype)
    # Garbage (NaN) in the flat gradient: accumulating instead of overwriting would leave NaN behind.
    flat = np.full(n_out * n_in + n_out, np.nan, dtype=dtype)
    dweight = flat[: n_out * n_in].reshape(n_out, n_in)
    dbias = flat[n_out * n_in :]
    for _ in range(2):  # twice: a second call must not add to the first
        linear_backward(dy, x, weight, dweight, dbias)
        tol = 1e-5 if dtype == np.float32 else 1e-12
        np.testing.assert_allclose(flat[: n_out * n_in].reshape(n_out, n_in), dy.T @ x, rtol=tol, atol=tol)
        np.testing.assert_allclose(flat[n_out * n_in :], dy.sum(axis=0), rtol=tol, atol=tol)


def test_need_dx_false_returns_none(rng):
    x, weight, bias = _params(rng, 4, 3, 2)
    dweight, dbias = np.empty_like(weight), np.empty_like(bias)
    assert linear_backward(np.ones((4, 2)), x, weight, dweight, dbias, need_dx=False) is None
    np.testing.assert_allclose(dbias, [4.0, 4.0])


def test_no_bias(rng):
    x, weight, _ = _params(rng, 4, 3, 2)
    dweight = np.full_like(weight, np.nan)
    dx = linear_backward(np.ones((4, 2)), x, weight, dweight)
    np.testing.assert_allclose(dx, np.ones((4, 2)) @ weight)
    assert np.all(np.isfinite(dweight))


def test_non_contiguous_inputs_are_accepted(rng):
    x, weight, bias = _params(rng, 7, 5, 3)
    x_f, weight_t = np.asfortranarray(x), np.ascontiguousarray(weight.T).T
    bias_strided = np.repeat(bias, 2)[::2]
    assert not x_f.flags.c_contiguous and not weight_t.flags.c_contiguous and not bias_strided.flags.c_contiguous
    np.testing.assert_allclose(linear_forward(x_f, weight_t, bias_strided), linear_ref(x, weight, bias), rtol=1e-12)
    dy = np.asfortranarray(rng.standard_normal((7, 3)))
    dweight, dbias = np.empty_like(weight), np.empty_like(bias)
    dx = linear_backward(dy, x_f, weight_t, dweight, dbias)
    np.testing.assert_allclose(dx, dy @ weight, rtol=1e-12)
    np.testing.assert_allclose(dweight, dy.T @ x, rtol=1e-12)


def test_nan_propagates(rng):
    x, weight, bias = _params(rng, 3, 4, 2)
    x[1, 2] = np.nan
    y = linear_forward(x, weight, bias)
    assert np.all(np.isnan(y[1])) and np.all(np.isfinite(y[[0, 2]]))


def test_bias_gradient_is_independent_of_thread_count(rng):
    x, weight, _ = _params(rng, 700, 3, 520)
    dy = rng.standard_normal((700, 520)).astype(np.float32) * 1e3
    x, weight = x.astype(np.float32), weight.astype(np.float32)

    def bias_gradient():
        dbias = np.empty(520, dtype=np.float32)
        linear_backward(dy, x, weight, np.empty_like(weight), dbias, need_dx=False)
        return dbias

    assert_same_at_thread_counts(bias_gradient)


def test_forward_bad_inputs_raise(rng):
    x, weight, bias = _params(rng, 4, 3, 2)
    with pytest.raises(ValueError, match=r"x: expected ndim 2"):
        linear_forward(x[0], weight, bias)
    with pytest.raises(ValueError, match=r"x: expected dtype float32 or float64, got int64"):
        linear_forward(x.astype(np.int64), weight, bias)
    with pytest.raises(ValueError, match=r"weight: expected shape \(out, 3\)"):
        linear_forward(x, weight[:, :2], bias)
    with pytest.raises(ValueError, match=r"weight: expected dtype float64.*got float32"):
        linear_forward(x, weight.astype(np.float32), bias)
    with pytest.raises(ValueError, match=r"bias: expected shape \(2,\), got \(3,\)"):
        linear_forward(x, weight, np.zeros(3))
    with pytest.raises(ValueError, match=r"bias: expected dtype float64.*got float32"):
        linear_forward(x, weight, bias.astype(np.float32))


def test_backward_bad_inputs_raise(rng):
    x, weight, bias = _params(rng, 4, 3, 2)
    dy = np.ones((4, 2))
    dweight, dbias = np.empty_like(weight), np.empty_like(bias)
    with pytest.raises(ValueError, match=r"dy: expected shape \(4, 2\), got \(4, 3\)"):
        linear_backward(np.ones((4, 3)), x, weight, dweight, dbias)
    with pytest.raises(ValueError, match=r"dy: expected dtype float64.*got float32"):
        linear_backward(dy.astype(np.float32), x, weight, dweight, dbias)
    with pytest.raises(ValueError, match=r"weight: expected shape \(2, 4\), got \(2, 3\)"):
        linear_backward(dy, np.ones((4, 4)), weight, dweight, dbias)
    with pytest.raises(ValueError, match=r"dweight: expected shape \(2, 3\), got \(3, 2\)"):
        linear_backward(dy, x, weight, dweight.T.copy(), dbias)
    with pytest.raises(ValueError, match=r"dweight: expected dtype float64.*got float32"):
        linear_backward(dy, x, weight, dweight.astype(np.float32), dbias)
    readonly = dweight.copy()
    readonly.flags.writeable = False
    with pytest.raises(ValueError, match=r"dweight: expected a writeable array"):
        linear_backward(dy, x, weight, readonly, dbias)
    with pytest.raises(ValueError, match=r"dweight: expected a writeable numpy array"):
        linear_backward(dy, x, weight, dweight.tolist(), dbias)
    with pytest.raises(ValueError, match=r"dbias: expected shape \(2,\), got \(1,\)"):
        linear_backward(dy, x, weight, dweight, np.empty(1))


@pytest.mark.torch
def test_matches_torch(rng):
    torch = pytest.importorskip("torch")
    x, weight, bias = _params(rng, 8, 6, 4)
    dy = rng.standard_normal((8, 4))
    tx, tw, tb = (torch.tensor(a, requires_grad=True) for a in (x, weight, bias))
    ty = torch.nn.functional.linear(tx, tw, tb)
    ty.backward(torch.tensor(dy))
    dweight, dbias = np.empty_like(weight), np.empty_like(bias)
    dx = linear_backward(dy, x, weight, dweight, dbias)
    np.testing.assert_allclose(linear_forward(x, weight, bias), ty.detach().numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dweight, tw.grad.numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dbias, tb.grad.numpy(), rtol=1e-12, atol=1e-12)


# Each product takes one of three routes by its multiply-adds (N * in * out): one BLAS call, rows split in
# linear._SMALL_PARTS parts on Numba's threads, or NumPy with BLAS's own threads. Shapes on each side of the limits:
ROUTE_SHAPES = {
    "one call": (40, 9, 10),  # 3600 < _SPLIT_MIN_MACS
    "split rows": (501, 10, 10),  # odd N: parts of unequal size
    "split, N < parts": (1, 200, 200),
    "numpy": (300, 30, 30),  # 270000 > _SMALL_MACS
}


def test_route_shapes_cover_every_route():
    macs = {k: n * i * o for k, (n, i, o) in ROUTE_SHAPES.items()}
    assert macs["one call"] < linear._SPLIT_MIN_MACS <= macs["split rows"] <= linear._SMALL_MACS < macs["numpy"]
    assert linear._SPLIT_MIN_MACS <= macs["split, N < parts"] <= linear._SMALL_MACS


@pytest.mark.parametrize("route", ROUTE_SHAPES)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("with_bias", [True, False])
def test_every_route_matches_reference(rng, route, dtype, with_bias):
    n, n_in, n_out = ROUTE_SHAPES[route]
    x, weight, bias = _params(rng, n, n_in, n_out)
    dy = rng.standard_normal((n, n_out))
    tol = 1e-12 if dtype == np.float64 else 2e-5
    c = (lambda a: a.astype(dtype)) if dtype == np.float32 else (lambda a: a)
    y = linear_forward(c(x), c(weight), c(bias) if with_bias else None)
    assert y.dtype == dtype
    ref = linear_ref(x, weight, bias if with_bias else None)
    np.testing.assert_allclose(y, ref, rtol=tol, atol=tol * np.abs(ref).max())
    dweight = np.full((n_out, n_in), np.nan, dtype=dtype)
    dbias = np.full(n_out, np.nan, dtype=dtype) if with_bias else None
    dx = linear_backward(c(dy), c(x), c(weight), dweight, dbias)
    for got, want in [(dx, dy @ weight), (dweight, dy.T @ x)] + ([(dbias, dy.sum(axis=0))] if with_bias else []):
        assert got.dtype == dtype
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol * np.abs(want).max())
    assert linear_backward(c(dy), c(x), c(weight), dweight, dbias, need_dx=False) is None
    np.testing.assert_allclose(dweight, dy.T @ x, rtol=tol, atol=tol * np.abs(dy.T @ x).max())


@pytest.mark.parametrize("route", ["split rows", "numpy"])
def test_strided_weight_gradient_is_written(rng, route):
    n, n_in, n_out = ROUTE_SHAPES[route]
    x, weight, _ = _params(rng, n, n_in, n_out)
    dy = rng.standard_normal((n, n_out))
    dweight_t = np.zeros((n_in, n_out)).T  # a transposed view: not C-contiguous
    linear_backward(dy, x, weight, dweight_t, need_dx=False)
    np.testing.assert_allclose(dweight_t, dy.T @ x, rtol=1e-12, atol=1e-12)


def test_split_rows_route_is_independent_of_thread_count(rng):
    n, n_in, n_out = ROUTE_SHAPES["split rows"]
    x, weight, bias = _params(rng, n, n_in, n_out)
    dy = rng.standard_normal((n, n_out)) * 1e3

    def forward_and_backward():
        dweight, dbias = np.empty_like(weight), np.empty_like(bias)
        dx = linear_backward(dy, x, weight, dweight, dbias)
        return linear_forward(x, weight, bias), dx, dweight, dbias

    assert_same_at_thread_counts(forward_and_backward)


def test_nan_propagates_through_split_rows(rng):
    n, n_in, n_out = ROUTE_SHAPES["split rows"]
    x, weight, bias = _params(rng, n, n_in, n_out)
    x[n - 1, 0] = np.nan  # a row of the second part
    y = linear_forward(x, weight, bias)
    assert np.all(np.isnan(y[n - 1])) and np.all(np.isfinite(y[: n - 1]))
    dweight, dbias = np.empty_like(weight), np.empty_like(bias)
    dx = linear_backward(np.ones((n, n_out)), x, weight, dweight, dbias)
    assert np.all(np.isnan(dweight[:, 0])) and np.all(np.isfinite(dweight[:, 1:])) and np.all(np.isfinite(dx))


def test_chain_kernels_match_layer_by_layer_and_check_their_arguments(rng):
    dims = np.array([4, 6, 3])
    params = rng.standard_normal(6 * 4 + 6 + 3 * 6)  # fc0 weight, fc0 bias, fc1 weight (no bias)
    w_off, b_off = np.array([0, 30]), np.array([24, -1])
    x = rng.standard_normal((700, 4))
    parts = linear.linear_chain_plan(700, dims)
    assert parts == 1  # 700 x 4 x 6 multiply-adds: below the split threshold
    outs = linear.linear_chain_forward(x, params, w_off, b_off, dims, parts)
    w0, b0, w1 = params[:24].reshape(6, 4), params[24:30], params[30:].reshape(3, 6)
    np.testing.assert_array_equal(outs[0], linear_forward(x, w0, b0))
    np.testing.assert_array_equal(outs[1], linear_forward(outs[0], w1))
    dy = rng.standard_normal((700, 3))
    grads = np.full_like(params, np.nan)
    dx = linear.linear_chain_backward(dy, x, outs, params, grads, w_off, b_off, dims, parts)
    dw1, dw0, db0 = np.empty_like(w1), np.empty_like(w0), np.empty_like(b0)
    d1 = linear_backward(dy, outs[0], w1, dw1)
    np.testing.assert_array_equal(dx, linear_backward(d1, x, w0, dw0, db0))
    np.testing.assert_array_equal(grads, np.concatenate([dw0.ravel(), db0, dw1.ravel()]))
    assert linear.linear_chain_plan(10**6, dims) == 0  # beyond the small route: run layer by layer
    with pytest.raises(ValueError, match=r"x: expected 4 features \(dims\[0\]\), got 5"):
        linear.linear_chain_forward(rng.standard_normal((7, 5)), params, w_off, b_off, dims, 1)
    with pytest.raises(ValueError, match="layout: weight or bias offsets run past params"):
        linear.linear_chain_forward(x, params, np.array([0, 40]), b_off, dims, 1)
    with pytest.raises(ValueError, match=r"dy: expected shape \(700, 3\)"):
        linear.linear_chain_backward(dy[:, :2], x, outs, params, grads, w_off, b_off, dims, 1)
    with pytest.raises(ValueError, match="outputs: expected the list linear_chain_forward returned"):
        linear.linear_chain_backward(dy, x, [o.copy() for o in outs], params, grads, w_off, b_off, dims, 1)


@pytest.mark.parametrize("shape", [(128, 512, 10), (1024, 512, 600)], ids=["mid-sized", "large"])
def test_products_hold_blas_at_one_thread_and_restore_it(monkeypatch, shape):
    """The NumPy products of linear_forward/backward run with every OpenBLAS at one thread, whatever their size (a
    threaded BLAS stalls the next Numba region, and its bits may change with the thread count), and the thread
    counts come back after."""
    from smoothnorm.kernels import _blas, linear

    controls = _blas._SingleThreadedBlas()._find()
    if not controls:
        pytest.skip("no OpenBLAS with thread controls in this process")
    # A fresh context manager that has never been asked `available()`: entering must still find the libraries.
    fresh = _blas._SingleThreadedBlas()
    monkeypatch.setattr(linear, "_single_threaded_blas", fresh)
    seen = []
    real_matmul = np.matmul

    def spy(*args, **kwargs):
        seen.append([getter() for getter, _ in controls])
        return real_matmul(*args, **kwargs)

    monkeypatch.setattr(linear.np, "matmul", spy)
    before = [getter() for getter, _ in controls]
    rng = np.random.default_rng(0)
    n, n_in, n_out = shape  # both above _SMALL_MACS; the second above 2^28 multiply-adds
    x, w = rng.standard_normal((n, n_in)), rng.standard_normal((n_out, n_in))
    linear.linear_forward(x, w)
    linear.linear_backward(rng.standard_normal((n, n_out)), x, w, np.empty((n_out, n_in)))
    assert len(seen) == 3 and all(all(n == 1 for n in counts) for counts in seen), seen
    assert [getter() for getter, _ in controls] == before
