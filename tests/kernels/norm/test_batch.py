import numba
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smoothnorm.kernels.norm import channel_blocks
from smoothnorm.kernels.norm.batch import (
    batch_norm_eval_backward,
    batch_norm_eval_forward,
    batch_norm_train_backward,
    batch_norm_train_forward,
    batch_norm_update_running,
)
from tests.reference import (
    batch_norm_reference,
    batch_norm_running_reference,
    batch_norm_stats_reference,
    batch_norm_train_reference,
    central_difference,
    relative_error,
)

# 2D and 4D; S = 1, tiny and larger maps; the last two split the batch into chunks (C too small to keep threads busy).
# Where C*S < channel_blocks._WIDE, short-run loops take groups of rows: (16, 7) and (50, 3) end with a partial group,
# (30, 2, 2, 2) too with S > 1, (1000, 10) is the deep linear network's layer.
SHAPES = [(5, 3), (16, 7), (50, 3), (1000, 10), (2, 3, 4, 5), (8, 4, 3, 3), (30, 2, 2, 2), (3, 6, 1, 1),
          (64, 1, 32, 32), (40000, 1)]
GROUPED = [(16, 7), (50, 3), (1000, 10), (30, 2, 2, 2)]
CHUNKED = [(64, 1, 32, 32), (40000, 1)]


def _affine(rng, channels, dtype):
    gamma = (1.0 + 0.5 * rng.standard_normal(channels)).astype(dtype)
    beta = rng.standard_normal(channels).astype(dtype)
    return gamma, beta


def _channels_last(a):
    """(N, C, ...) -> (C, N * S): one row per channel."""
    a = np.asarray(a, dtype=np.float64)
    return np.moveaxis(a.reshape(a.shape[0], a.shape[1], -1), 1, 0).reshape(a.shape[1], -1)


def test_grouped_shapes_take_row_groups_with_a_partial_last_group():
    for shape in GROUPED:
        n, c = shape[:2]
        s = int(np.prod(shape[2:], dtype=int))
        rows = channel_blocks._group_rows(c, s, 0, c)
        assert rows > 1 and (n % rows != 0 or shape == (1000, 10))


def test_chunked_shapes_take_the_batch_split_path():
    for shape in CHUNKED:
        n, c = shape[:2]
        s = int(np.prod(shape[2:], dtype=int))
        assert channel_blocks._plan(n, c, s, 8, 1)[1] > 1
        assert channel_blocks._plan(n, c, s, 8, 2)[1] > 1


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_train_forward_matches_reference(rng, shape, affine, dtype):
    x = (3.0 + 2.0 * rng.standard_normal(shape)).astype(dtype)
    gamma, beta = _affine(rng, shape[1], dtype) if affine else (None, None)
    y, mean, invstd, var = batch_norm_train_forward(x, gamma, beta)
    ref_mean, ref_var = batch_norm_stats_reference(x)
    ref_y = batch_norm_train_reference(x, gamma, beta)
    assert y.shape == x.shape and y.dtype == dtype
    assert mean.shape == invstd.shape == var.shape == (shape[1],)
    assert mean.dtype == invstd.dtype == var.dtype == dtype
    tol = 1e-12 if dtype == np.float64 else 2e-6
    np.testing.assert_allclose(mean, ref_mean, rtol=tol, atol=tol)
    np.testing.assert_allclose(var, ref_var, rtol=tol, atol=tol)
    np.testing.assert_allclose(invstd, 1.0 / np.sqrt(ref_var + 1e-5), rtol=tol)
    np.testing.assert_allclose(y, ref_y, rtol=tol, atol=tol * 10)


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 9),
    c=st.integers(1, 6),
    hw=st.one_of(st.none(), st.tuples(st.integers(1, 5), st.integers(1, 5))),
    seed=st.integers(0, 2**32 - 1),
)
def test_train_forward_any_shape(n, c, hw, seed):
    shape = (n, c) if hw is None else (n, c, *hw)
    if n * int(np.prod(shape[2:], dtype=int)) < 2:
        return
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape)
    gamma, beta = _affine(rng, c, np.float64)
    y = batch_norm_train_forward(x, gamma, beta)[0]
    np.testing.assert_allclose(y, batch_norm_train_reference(x, gamma, beta), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape", [(16, 5), (1000, 10), (6, 4, 3, 3), (30, 2, 2, 2), (64, 1, 32, 32)])
def test_train_output_is_standardized_per_channel(rng, shape):
    x = 5.0 + 3.0 * rng.standard_normal(shape)
    y = batch_norm_train_forward(x, eps=0.0)[0]
    rows = _channels_last(y)
    np.testing.assert_allclose(rows.mean(axis=1), 0.0, atol=1e-12)
    np.testing.assert_allclose(rows.var(axis=1), 1.0, rtol=1e-12)  # biased variance


@pytest.mark.parametrize("shape", [(16, 5), (1000, 10), (6, 4, 3, 3), (30, 2, 2, 2), (64, 1, 32, 32)])
def test_train_input_gradient_is_orthogonal_to_shift_and_scale(rng, shape):
    x = rng.standard_normal(shape)
    dy = rng.standard_normal(shape)
    gamma, beta = _affine(rng, shape[1], np.float64)
    # eps = 0: only then is the output exactly invariant to scaling a channel of x.
    _, mean, invstd, _ = batch_norm_train_forward(x, gamma, beta, eps=0.0)
    dx = batch_norm_train_backward(dy, x, mean, invstd, gamma)
    ref_mean, ref_var = batch_norm_stats_reference(x)
    xhat = (_channels_last(x) - ref_mean[:, None]) / np.sqrt(ref_var[:, None])
    rows = _channels_last(dx)
    scale = np.abs(rows).sum(axis=1)
    # The output is invariant to adding a constant to, or scaling, a channel of x: dx is orthogonal to both.
    np.testing.assert_array_less(np.abs(rows.sum(axis=1)), 1e-13 * scale + 1e-300)
    np.testing.assert_array_less(np.abs((rows * xhat).sum(axis=1)), 1e-12 * scale + 1e-300)


@pytest.mark.parametrize("shape", [(5, 3), (50, 3), (3, 2, 2, 3), (4, 3, 1, 1), (2, 2, 4, 4), (11, 2, 2, 2)])
@pytest.mark.parametrize("affine", [True, False])
def test_train_backward_matches_finite_differences(rng, shape, affine):
    x = 1.0 + rng.standard_normal(shape)
    dy = rng.standard_normal(shape)  # loss = sum(y * dy)
    gamma, beta = _affine(rng, shape[1], np.float64) if affine else (None, None)
    dgamma = np.full(shape[1], np.nan)
    dbeta = np.full(shape[1], np.nan)
    _, mean, invstd, _ = batch_norm_train_forward(x, gamma, beta)
    dx = batch_norm_train_backward(dy, x, mean, invstd, gamma, dgamma, dbeta)

    def loss(x_, gamma_=gamma, beta_=beta):
        return float(np.sum(batch_norm_train_reference(x_, gamma_, beta_) * dy))

    assert relative_error(dx, central_difference(loss, x)) < 1e-6
    g = np.ones(shape[1]) if gamma is None else gamma
    b = np.zeros(shape[1]) if beta is None else beta
    assert relative_error(dgamma, central_difference(lambda v: loss(x, v, b), g)) < 1e-6
    assert relative_error(dbeta, central_difference(lambda v: loss(x, g, v), b)) < 1e-6


@pytest.mark.parametrize("shape", [(5, 3), (3, 2, 2, 3)])
@pytest.mark.parametrize("affine", [True, False])
def test_eval_forward_matches_reference(rng, shape, affine):
    for dtype, tol in ((np.float64, 1e-13), (np.float32, 2e-6)):
        x = rng.standard_normal(shape).astype(dtype)
        rm = rng.standard_normal(shape[1]).astype(dtype)
        rv = rng.uniform(0.5, 2.0, shape[1]).astype(dtype)
        gamma, beta = _affine(rng, shape[1], dtype) if affine else (None, None)
        y = batch_norm_eval_forward(x, rm, rv, gamma, beta)
        assert y.shape == x.shape and y.dtype == dtype
        np.testing.assert_allclose(y, batch_norm_reference(x, rm, rv, gamma, beta), rtol=tol, atol=tol)


def test_eval_accepts_a_single_sample(rng):
    x = rng.standard_normal((1, 3, 1, 1))
    rm, rv = rng.standard_normal(3), rng.uniform(0.5, 2.0, 3)
    np.testing.assert_allclose(batch_norm_eval_forward(x, rm, rv), batch_norm_reference(x, rm, rv), rtol=1e-14)
    dx = batch_norm_eval_backward(np.ones_like(x), x, rm, rv)
    np.testing.assert_allclose(dx[0, :, 0, 0], 1.0 / np.sqrt(rv + 1e-5), rtol=1e-14)


@pytest.mark.parametrize("shape", [(5, 3), (3, 2, 2, 3), (2, 2, 4, 4), (64, 1, 32, 32)])
def test_eval_backward_matches_finite_differences(rng, shape):
    small = int(np.prod(shape)) <= 100
    x = rng.standard_normal(shape)
    dy = rng.standard_normal(shape)
    rm = rng.standard_normal(shape[1])
    rv = rng.uniform(0.5, 2.0, shape[1])
    gamma, beta = _affine(rng, shape[1], np.float64)
    dgamma = np.full(shape[1], 7.0)
    dbeta = np.full(shape[1], 7.0)
    dx = batch_norm_eval_backward(dy, x, rm, rv, gamma, dgamma, dbeta)

    def loss(x_, gamma_=gamma, beta_=beta):
        return float(np.sum(batch_norm_reference(x_, rm, rv, gamma_, beta_) * dy))

    if small:
        assert relative_error(dx, central_difference(loss, x)) < 1e-6
    else:  # the forward is affine in x: its gradient is exact, no need for 65k finite differences
        expected = dy * (gamma / np.sqrt(rv + 1e-5)).reshape(1, -1, 1, 1)
        assert relative_error(dx, expected) < 1e-14
    assert relative_error(dgamma, central_difference(lambda v: loss(x, v, beta), gamma)) < 1e-6
    assert relative_error(dbeta, central_difference(lambda v: loss(x, gamma, v), beta)) < 1e-6
    # Without parameter gradients requested, dx is the same.
    np.testing.assert_array_equal(batch_norm_eval_backward(dy, x, rm, rv, gamma), dx)


def test_running_statistics_after_k_steps_match_closed_form(rng):
    channels, steps, momentum = 4, 5, 0.1
    batches = [rng.normal(loc=2.0, scale=1.0 + k, size=(6, channels, 3, 2)) for k in range(steps)]
    rm = np.zeros(channels)
    rv = np.ones(channels)
    for x in batches:
        _, mean, _, var = batch_norm_train_forward(x)
        batch_norm_update_running(rm, rv, mean, var, count=6 * 3 * 2, momentum=momentum)
    # Closed form: rm_k = (1-m)^k rm_0 + sum_i m (1-m)^(k-1-i) mean_i, and likewise with the unbiased variances.
    n = 6 * 3 * 2
    stats = [batch_norm_stats_reference(x) for x in batches]
    weights = [momentum * (1 - momentum) ** (steps - 1 - i) for i in range(steps)]
    closed_mean = sum(w * m for w, (m, _) in zip(weights, stats))
    closed_var = (1 - momentum) ** steps + sum(w * v * n / (n - 1) for w, (_, v) in zip(weights, stats))
    np.testing.assert_allclose(rm, closed_mean, rtol=1e-13)
    np.testing.assert_allclose(rv, closed_var, rtol=1e-13)
    ref_mean, ref_var = batch_norm_running_reference(np.zeros(channels), np.ones(channels), batches, momentum)
    np.testing.assert_allclose(rm, ref_mean, rtol=1e-13)
    np.testing.assert_allclose(rv, ref_var, rtol=1e-13)


def test_running_update_float32_in_place(rng):
    rm = np.zeros(3, np.float32)
    rv = np.ones(3, np.float32)
    flat = np.zeros(8, np.float32)  # views into a flat buffer, as a layer's state
    flat[:3], flat[3:6] = rm, rv
    x = rng.standard_normal((10, 3)).astype(np.float32)
    _, mean, _, var = batch_norm_train_forward(x)
    batch_norm_update_running(flat[:3], flat[3:6], mean, var, 10)
    ref_mean, ref_var = batch_norm_running_reference(rm, rv, [x])
    np.testing.assert_allclose(flat[:3], ref_mean, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(flat[3:6], ref_var, rtol=1e-6)
    assert flat[6] == flat[7] == 0


@pytest.mark.parametrize("loc,scale", [(0.0, 1.0), (1e3, 1.0), (1e3, 1e-2), (-3e4, 10.0)])
def test_float32_agrees_with_float64(rng, loc, scale):
    shape = (16, 3, 5, 5)
    x32 = (loc + scale * rng.standard_normal(shape)).astype(np.float32)
    x64 = x32.astype(np.float64)  # the same numbers: differences come from the float32 computation only
    dy64 = rng.standard_normal(shape)
    dy32 = dy64.astype(np.float32)
    gamma, beta = _affine(rng, 3, np.float64)
    y32, m32, inv32, v32 = batch_norm_train_forward(x32, gamma.astype(np.float32), beta.astype(np.float32))
    y64, m64, inv64, v64 = batch_norm_train_forward(x64, gamma, beta)
    np.testing.assert_allclose(y32, y64, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(v32, v64, rtol=1e-6)
    np.testing.assert_allclose(m32, m64, rtol=1e-7)
    dx32 = batch_norm_train_backward(dy32, x32, m32, inv32, gamma.astype(np.float32))
    dx64 = batch_norm_train_backward(dy32.astype(np.float64), x64, m64, inv64, gamma)
    # Backward recomputes xhat from the float32 mean: its rounding, |mean| * 2^-24, relative to the std.
    tol = 1e-5 + abs(loc) * 2.0**-24 / scale
    assert relative_error(dx32, dx64) < tol


def test_large_mean_float64_keeps_the_variance(rng):
    # mean / std = 1e8: a plain sum / sum-of-squares formula would lose every digit of the variance.
    x = 1e8 + rng.standard_normal((32, 2, 4, 4))
    _, mean, _, var = batch_norm_train_forward(x)
    ref_mean, ref_var = batch_norm_stats_reference(x)
    np.testing.assert_allclose(var, ref_var, rtol=1e-6)
    np.testing.assert_allclose(mean, ref_mean, rtol=1e-15)


def test_constant_channel_gives_zero_output_not_nan():
    x = np.full((4, 2, 3, 3), 2.5)
    y, mean, invstd, var = batch_norm_train_forward(x, beta=np.array([1.0, -1.0]))
    np.testing.assert_array_equal(var, 0.0)
    np.testing.assert_array_equal(y[:, 0], 1.0)
    np.testing.assert_array_equal(y[:, 1], -1.0)


@pytest.mark.parametrize("shape", [(5, 3), (3, 3, 2, 2), (64, 3, 32, 32)])
def test_parameter_gradients_are_overwritten_not_accumulated(rng, shape):
    x = rng.standard_normal(shape).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    gamma, beta = _affine(rng, 3, np.float32)
    _, mean, invstd, _ = batch_norm_train_forward(x, gamma, beta)
    grads = np.full(7, 1e30, dtype=np.float32)  # a flat gradient vector holding stale values
    first = batch_norm_train_backward(dy, x, mean, invstd, gamma, grads[:3], grads[3:6])
    once = grads.copy()
    second = batch_norm_train_backward(dy, x, mean, invstd, gamma, grads[:3], grads[3:6])
    np.testing.assert_array_equal(grads, once)
    np.testing.assert_array_equal(first, second)
    assert grads[6] == np.float32(1e30)
    np.testing.assert_allclose(grads[3:6], _channels_last(dy).sum(axis=1), rtol=1e-5)
    xhat = _channels_last(x) - mean.astype(np.float64)[:, None]
    np.testing.assert_allclose(grads[:3], (xhat * _channels_last(dy)).sum(axis=1) * invstd, rtol=1e-4)
    # Eval backward likewise.
    batch_norm_eval_backward(dy, x, mean, 1.0 / invstd**2, gamma, grads[:3], grads[3:6])
    eval_once = grads.copy()
    batch_norm_eval_backward(dy, x, mean, 1.0 / invstd**2, gamma, grads[:3], grads[3:6])
    np.testing.assert_array_equal(grads, eval_once)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("shape", [(6, 4), (3, 4, 2, 3), (64, 1, 32, 32)])
def test_nan_and_inf_in_x_give_nan_in_that_channel(rng, shape, bad):
    x = rng.standard_normal(shape)
    channel = shape[1] - 1
    index = (shape[0] - 1, channel) + tuple(d - 1 for d in shape[2:])
    x[index] = bad
    y, mean, invstd, var = batch_norm_train_forward(x, *_affine(rng, shape[1], np.float64))
    assert np.isnan(y[:, channel]).all()
    assert not np.isfinite(mean[channel])
    assert np.isnan(var[channel]) and np.isnan(invstd[channel])
    others = [c for c in range(shape[1]) if c != channel]
    assert np.isfinite(y[:, others]).all()
    # The first element (the shift of the one-pass sums) being non-finite too.
    x2 = rng.standard_normal(shape)
    x2[(0, channel) + (0,) * (len(shape) - 2)] = bad
    assert np.isnan(batch_norm_train_forward(x2)[0][:, channel]).all()
    # Backward: a non-finite upstream gradient poisons its channel's dx and parameter gradients (Inf - Inf gives
    # NaN in some places and +-Inf in others, as in any framework).
    x = rng.standard_normal(shape)
    dy = rng.standard_normal(shape)
    dy[index] = bad
    _, mean, invstd, _ = batch_norm_train_forward(x)
    dgamma, dbeta = np.zeros(shape[1]), np.zeros(shape[1])
    dx = batch_norm_train_backward(dy, x, mean, invstd, None, dgamma, dbeta)
    assert not np.isfinite(dx[:, channel]).any() and not np.isfinite(dgamma[channel])
    assert np.isfinite(dx[:, others]).all() and np.isfinite(dgamma[others]).all()
    # Eval is elementwise in x: only that element.
    x[index] = bad
    y = batch_norm_eval_forward(x, np.zeros(shape[1]), np.ones(shape[1]))
    assert np.isnan(y[index]) or np.isinf(y[index])
    assert np.isfinite(y).sum() == y.size - 1


def test_results_do_not_depend_on_thread_count(rng):
    threads = numba.get_num_threads()
    shapes = [(32, 16, 8, 8), *CHUNKED]
    try:
        results = []
        for count in sorted({1, threads}):
            numba.set_num_threads(count)
            out = []
            for shape in shapes:
                x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
                dy = np.random.default_rng(2).standard_normal(shape).astype(np.float32)
                y, mean, invstd, var = batch_norm_train_forward(x)
                dg, db = np.empty(shape[1], np.float32), np.empty(shape[1], np.float32)
                out += [y, mean, var, batch_norm_train_backward(dy, x, mean, invstd, None, dg, db), dg, db]
            results.append(out)
    finally:
        numba.set_num_threads(threads)
    for a, b in zip(results[0], results[-1]):
        np.testing.assert_array_equal(a, b)


def test_2d_and_4d_with_unit_maps_agree(rng):
    x = rng.standard_normal((7, 5))
    dy = rng.standard_normal((7, 5))
    y2, m2, i2, v2 = batch_norm_train_forward(x)
    y4, m4, i4, v4 = batch_norm_train_forward(x[:, :, None, None])
    np.testing.assert_array_equal(y2, y4[:, :, 0, 0])
    np.testing.assert_array_equal(m2, m4)
    dx2 = batch_norm_train_backward(dy, x, m2, i2)
    dx4 = batch_norm_train_backward(dy[:, :, None, None], x[:, :, None, None], m4, i4)
    np.testing.assert_array_equal(dx2, dx4[:, :, 0, 0])


def test_non_contiguous_inputs_are_accepted(rng):
    base = rng.standard_normal((3, 4, 5, 6))
    x = base.transpose(1, 0, 2, 3)  # (4, 3, 5, 6), not C-contiguous
    assert not x.flags.c_contiguous
    y = batch_norm_train_forward(x)[0]
    np.testing.assert_allclose(y, batch_norm_train_reference(x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape", [(6, 5), (4, 3, 5, 5), (64, 1, 32, 32)])
def test_out_buffers_and_in_place(rng, shape):
    x = rng.standard_normal(shape).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    gamma, beta = _affine(rng, shape[1], np.float32)
    rm, rv = np.zeros(shape[1], np.float32), np.ones(shape[1], np.float32)
    y, mean, invstd, _ = batch_norm_train_forward(x, gamma, beta)
    dx = batch_norm_train_backward(dy, x, mean, invstd, gamma)
    ye = batch_norm_eval_forward(x, rm, rv, gamma, beta)
    dxe = batch_norm_eval_backward(dy, x, rm, rv, gamma, np.empty_like(gamma))
    buffer = np.full_like(x, np.nan)
    assert batch_norm_train_forward(x, gamma, beta, out=buffer)[0] is buffer
    np.testing.assert_array_equal(buffer, y)
    assert batch_norm_train_backward(dy, x, mean, invstd, gamma, out=buffer) is buffer
    np.testing.assert_array_equal(buffer, dx)
    assert batch_norm_eval_forward(x, rm, rv, gamma, beta, out=buffer) is buffer
    np.testing.assert_array_equal(buffer, ye)
    assert batch_norm_eval_backward(dy, x, rm, rv, gamma, np.empty_like(gamma), out=buffer) is buffer
    np.testing.assert_array_equal(buffer, dxe)
    # In place: dx over dy, y over x.
    dgamma = np.empty_like(gamma)
    inplace = dy.copy()
    batch_norm_train_backward(inplace, x, mean, invstd, gamma, dgamma, out=inplace)
    np.testing.assert_array_equal(inplace, dx)
    inplace = dy.copy()
    batch_norm_eval_backward(inplace, x, rm, rv, gamma, dgamma, out=inplace)
    np.testing.assert_array_equal(inplace, dxe)
    inplace = x.copy()
    batch_norm_train_forward(inplace, gamma, beta, out=inplace)
    np.testing.assert_array_equal(inplace, y)


def _bad_input_cases():
    x = np.zeros((4, 3, 2, 2), np.float32)
    x32 = np.ones(3, np.float32)
    xbig = np.zeros((5, 3, 2, 2), np.float32)
    return [
        (lambda: batch_norm_train_forward(np.zeros((4, 3, 2))), "x", "ndim 3"),
        (lambda: batch_norm_train_forward(np.zeros((4, 3, 2, 2, 2))), "x", "ndim 5"),
        (lambda: batch_norm_train_forward(np.zeros((4, 3), np.int64)), "x", "int64"),
        (lambda: batch_norm_train_forward(np.zeros((1, 3))), "x", "more than 1 value"),
        (lambda: batch_norm_train_forward(np.zeros((1, 3, 1, 1))), "x", "more than 1 value"),
        (lambda: batch_norm_train_forward(x, np.ones(4, np.float32)), "gamma", "(4,)"),
        (lambda: batch_norm_train_forward(x, np.ones(3)), "gamma", "float64"),
        (lambda: batch_norm_train_forward(x, x32, np.ones((3, 1), np.float32)), "beta", "(3, 1)"),
        (lambda: batch_norm_train_forward(x, eps=-1.0), "eps", "-1.0"),
        (lambda: batch_norm_train_backward(np.zeros((4, 3, 2, 1), np.float32), x, x32, x32), "dy", "(4, 3, 2, 1)"),
        (lambda: batch_norm_train_backward(np.zeros_like(x, np.float64), x, x32, x32), "dy", "float64"),
        (lambda: batch_norm_train_backward(x, x, np.ones(2, np.float32), x32), "mean", "(2,)"),
        (lambda: batch_norm_train_backward(x, x, x32, np.ones(3)), "invstd", "float64"),
        (lambda: batch_norm_train_backward(x, x, x32, x32, None, np.zeros(4, np.float32)), "dgamma", "(4,)"),
        (lambda: batch_norm_train_backward(x, x, x32, x32, None, None, np.zeros(3)), "dbeta", "float64"),
        (lambda: batch_norm_eval_forward(x, np.zeros(2, np.float32), x32), "running_mean", "(2,)"),
        (lambda: batch_norm_eval_forward(x, x32, np.ones(3)), "running_var", "float64"),
        (lambda: batch_norm_eval_backward(x, x, x32, x32, np.ones(5, np.float32)), "gamma", "(5,)"),
        (lambda: batch_norm_update_running(np.zeros(3), np.ones(3), np.zeros(3), np.ones(3), 1), "count", "1"),
        (lambda: batch_norm_update_running(np.zeros(3), np.ones(2), np.zeros(3), np.ones(3), 5), "running_var", "(2,)"),
        (
            lambda: batch_norm_update_running(np.zeros(3), np.ones(3), np.zeros(3, np.float32), np.ones(3), 5),
            "mean",
            "float32",
        ),
        (lambda: batch_norm_train_forward(x, out=np.empty((4, 3, 2, 1), np.float32)), "out", "(4, 3, 2, 1)"),
        (lambda: batch_norm_train_forward(x, out=np.empty(x.shape)), "out", "float64"),
        (
            lambda: batch_norm_eval_forward(x, x32, x32, out=np.empty((4, 3, 2, 2), np.float32, order="F")),
            "out",
            "C-contig",
        ),
        (lambda: batch_norm_train_backward(x, x, x32, x32, out=[0.0]), "out", "list"),
        (lambda: batch_norm_train_backward(x, xbig[1:], x32, x32, out=xbig[:-1]), "out", "partially"),
    ]


@pytest.mark.parametrize("case", range(len(_bad_input_cases())))
def test_bad_inputs_raise_value_error_naming_the_argument(case):
    call, name, detail = _bad_input_cases()[case]
    with pytest.raises(ValueError) as info:
        call()
    message = str(info.value)
    assert message.startswith(f"{name}:"), message
    assert detail in message, message


@pytest.mark.torch
@pytest.mark.parametrize("shape", [(6, 3), (4, 5, 3, 3)])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_matches_torch(rng, shape, dtype):
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F

    tol = 1e-12 if dtype == np.float64 else 2e-5
    channels = shape[1]
    x = (1.0 + 2.0 * rng.standard_normal(shape)).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    gamma, beta = _affine(rng, channels, dtype)
    rm = rng.standard_normal(channels).astype(dtype)
    rv = rng.uniform(0.5, 2.0, channels).astype(dtype)

    xt = torch.tensor(x, requires_grad=True)
    gt = torch.tensor(gamma, requires_grad=True)
    bt = torch.tensor(beta, requires_grad=True)
    rmt, rvt = torch.tensor(rm), torch.tensor(rv)
    yt = F.batch_norm(xt, rmt, rvt, gt, bt, training=True, momentum=0.1, eps=1e-5)
    yt.backward(torch.tensor(dy))

    y, mean, invstd, var = batch_norm_train_forward(x, gamma, beta)
    dgamma, dbeta = np.empty_like(gamma), np.empty_like(beta)
    dx = batch_norm_train_backward(dy, x, mean, invstd, gamma, dgamma, dbeta)
    n = x.size // channels
    batch_norm_update_running(rm, rv, mean, var, n)
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=tol, atol=tol)
    assert relative_error(dx, xt.grad.numpy()) < tol * 10
    assert relative_error(dgamma, gt.grad.numpy()) < tol * 10
    assert relative_error(dbeta, bt.grad.numpy()) < tol * 10
    np.testing.assert_allclose(rm, rmt.numpy(), rtol=tol, atol=tol)
    np.testing.assert_allclose(rv, rvt.numpy(), rtol=tol, atol=tol)

    # Eval mode with the updated running statistics.
    xe = torch.tensor(x, requires_grad=True)
    ge = torch.tensor(gamma, requires_grad=True)
    be = torch.tensor(beta, requires_grad=True)
    ye = F.batch_norm(xe, rmt, rvt, ge, be, training=False, eps=1e-5)
    ye.backward(torch.tensor(dy))
    np.testing.assert_allclose(batch_norm_eval_forward(x, rm, rv, gamma, beta), ye.detach().numpy(), rtol=tol, atol=tol)
    dx_eval = batch_norm_eval_backward(dy, x, rm, rv, gamma, dgamma, dbeta)
    assert relative_error(dx_eval, xe.grad.numpy()) < tol * 10
    assert relative_error(dgamma, ge.grad.numpy()) < tol * 10
    assert relative_error(dbeta, be.grad.numpy()) < tol * 10


def test_running_update_names_a_running_mean_of_the_wrong_length():
    with pytest.raises(ValueError, match=r"^running_mean: expected shape \(3,\)"):
        batch_norm_update_running(np.zeros(2), np.ones(3), np.zeros(3), np.ones(3), 5)
    with pytest.raises(ValueError, match=r"^running_mean: expected shape \(3,\)"):
        batch_norm_update_running(np.zeros(2), np.ones(2), np.zeros(3), np.ones(3), 5)


@pytest.mark.parametrize("missing", ["mean", "invstd"])
def test_a_missing_required_vector_raises_a_value_error_naming_it(rng, missing):
    x = rng.standard_normal((4, 3))
    _, mean, invstd, var = batch_norm_train_forward(x)
    args = {"mean": mean, "invstd": invstd, missing: None}
    with pytest.raises(ValueError, match=rf"^{missing}: expected an array of shape \(3,\), got None"):
        batch_norm_train_backward(x, x, args["mean"], args["invstd"])
    with pytest.raises(ValueError, match=r"^running_var: expected an array of shape \(3,\), got None"):
        batch_norm_eval_forward(x, mean, None)
