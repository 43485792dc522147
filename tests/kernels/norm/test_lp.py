"""Lp batch normalization kernels (l1, l2, linf): forward against float64 references, backward against central
finite differences, invariances, running statistics, ties, NaN propagation, determinism and bad inputs."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smoothnorm.kernels.norm import lp as lp_kernels
from smoothnorm.kernels.norm.lp import lp_norm_train_backward, lp_norm_train_forward
from smoothnorm.kernels.norm.lp_eval import lp_norm_eval_backward, lp_norm_eval_forward, lp_norm_update_running
from tests.helpers import assert_out_and_in_place, assert_same_at_thread_counts
from tests.reference import (
    central_difference,
    lp_norm_reference,
    lp_norm_running_reference,
    lp_norm_stats_reference,
    lp_norm_train_reference,
    relative_error,
)

PS = [1, 2, math.inf]
# 2D and 4D; S = 1, tiny and larger maps; the last two split the batch into chunks (C too small for the threads).
# (50, 3), (1000, 10) and (11, 2, 2, 2) take row groups with a partial last group (channel_blocks._group_rows).
SHAPES = [(5, 3), (16, 7), (50, 3), (1000, 10), (2, 3, 4, 5), (8, 4, 3, 3), (11, 2, 2, 2), (3, 6, 1, 1),
          (64, 1, 32, 32), (40000, 1)]
CHUNKED = [(64, 1, 32, 32), (40000, 1)]
SMALL = [(5, 3), (25, 3), (2, 3, 2, 3), (11, 2, 2, 2), (4, 2, 1, 1)]  # (25, 3), (11, 2, 2, 2): row groups


def _affine(rng, channels, dtype=np.float64):
    gamma = (1.0 + 0.5 * rng.standard_normal(channels)).astype(dtype)
    beta = rng.standard_normal(channels).astype(dtype)
    return gamma, beta


def _input(rng, shape, dtype=np.float64):
    # An offset so the mean and the un-centered norm differ clearly from the centered quantities.
    return (0.7 + 1.5 * rng.standard_normal(shape)).astype(dtype)


def test_chunked_shapes_take_the_batch_split_path():
    for shape in CHUNKED:
        n, c = shape[:2]
        s = int(np.prod(shape[2:], dtype=int))
        assert lp_kernels._plan(n, c, s, 8, 1)[1] > 1
        assert lp_kernels._plan(n, c, s, 8, 2)[1] > 1


@pytest.mark.parametrize("p", PS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_train_forward_matches_reference(rng, p, shape, affine, dtype):
    x = _input(rng, shape, dtype)
    gamma, beta = _affine(rng, shape[1], dtype) if affine else (None, None)
    y, mean, norm, argmax = lp_norm_train_forward(x, p, gamma, beta)
    ref_mean, ref_norm = lp_norm_stats_reference(x, p)
    assert y.shape == x.shape and y.dtype == dtype
    assert mean.dtype == norm.dtype == dtype and mean.shape == norm.shape == (shape[1],)
    assert argmax.dtype == np.int64 and argmax.shape == (shape[1],)
    tol = 1e-12 if dtype == np.float64 else 3e-6
    np.testing.assert_allclose(mean, ref_mean, rtol=tol, atol=tol)
    np.testing.assert_allclose(norm, ref_norm, rtol=tol, atol=tol)
    np.testing.assert_allclose(y, lp_norm_train_reference(x, p, gamma, beta), rtol=tol, atol=tol * 10)
    if p == math.inf:
        x3 = np.abs(x.reshape(shape[0], shape[1], -1)).transpose(1, 0, 2).reshape(shape[1], -1)
        np.testing.assert_array_equal(argmax, np.argmax(x3, axis=1))


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 9),
    c=st.integers(1, 6),
    hw=st.one_of(st.none(), st.tuples(st.integers(1, 5), st.integers(1, 5))),
    p=st.sampled_from(PS),
    seed=st.integers(0, 2**32 - 1),
)
def test_train_forward_any_shape(n, c, hw, p, seed):
    shape = (n, c) if hw is None else (n, c, *hw)
    if n * int(np.prod(shape[2:], dtype=int)) < 2:
        return
    rng = np.random.default_rng(seed)
    x = _input(rng, shape)
    gamma, beta = _affine(rng, c)
    y = lp_norm_train_forward(x, p, gamma, beta)[0]
    np.testing.assert_allclose(y, lp_norm_train_reference(x, p, gamma, beta), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("p", PS)
@pytest.mark.parametrize("shape", SMALL)
def test_train_backward_matches_finite_differences(rng, p, shape):
    x = _input(rng, shape)
    gamma, beta = _affine(rng, shape[1])
    dy = rng.standard_normal(shape)
    y, mean, norm, argmax = lp_norm_train_forward(x, p, gamma, beta)
    dgamma = np.full(shape[1], np.nan)  # overwritten, not accumulated
    dbeta = np.full(shape[1], np.nan)
    dx = lp_norm_train_backward(dy, x, p, mean, norm, argmax, gamma, dgamma, dbeta)

    def loss(xx, gg=gamma, bb=beta):
        return float(np.sum(lp_norm_train_reference(xx, p, gg, bb) * dy))

    assert relative_error(dx, central_difference(loss, x)) < 1e-6
    assert relative_error(dgamma, central_difference(lambda g: loss(x, g, beta), gamma)) < 1e-6
    assert relative_error(dbeta, central_difference(lambda b: loss(x, gamma, b), beta)) < 1e-6


@pytest.mark.parametrize("p", PS)
@pytest.mark.parametrize("shape", CHUNKED + [(16, 70, 3, 3)])
def test_train_backward_directional_derivative_large(rng, p, shape):
    """Shapes taking the chunked and the multi-block paths: dx . d against a central difference along d."""
    x = _input(rng, shape)
    gamma, beta = _affine(rng, shape[1])
    dy = rng.standard_normal(shape)
    y, mean, norm, argmax = lp_norm_train_forward(x, p, gamma, beta)
    dx = lp_norm_train_backward(dy, x, p, mean, norm, argmax, gamma)
    direction = rng.standard_normal(shape)
    eps = 1e-6
    fp = np.sum(lp_norm_train_reference(x + eps * direction, p, gamma, beta) * dy)
    fm = np.sum(lp_norm_train_reference(x - eps * direction, p, gamma, beta) * dy)
    assert relative_error(np.sum(dx * direction), (fp - fm) / (2 * eps)) < 1e-6


@pytest.mark.parametrize("p", PS)
def test_float32_backward_close_to_float64(rng, p):
    shape = (6, 5, 4, 4)
    x = _input(rng, shape)
    gamma, beta = _affine(rng, shape[1])
    dy = rng.standard_normal(shape)
    grads = {}
    for dt in (np.float64, np.float32):
        y, mean, norm, argmax = lp_norm_train_forward(x.astype(dt), p, gamma.astype(dt), beta.astype(dt))
        dgamma, dbeta = np.empty(shape[1], dt), np.empty(shape[1], dt)
        dx = lp_norm_train_backward(dy.astype(dt), x.astype(dt), p, mean, norm, argmax, gamma.astype(dt), dgamma,
                                    dbeta)
        assert dx.dtype == dt
        grads[dt] = (dx, dgamma, dbeta)
    for a, b in zip(grads[np.float32], grads[np.float64]):
        assert relative_error(a, b) < 1e-5


@pytest.mark.parametrize("p", PS)
@pytest.mark.parametrize("scale", [1e-3, 0.5, 7.0, 1e4])
def test_output_is_invariant_to_positive_input_scale(rng, p, scale):
    x = _input(rng, (6, 4, 3, 3))
    gamma, beta = _affine(rng, 4)
    eps = 1e-14  # so that eps / norm is negligible at every scale tried
    y = lp_norm_train_forward(x, p, gamma, beta, eps)[0]
    y_scaled = lp_norm_train_forward(scale * x, p, gamma, beta, eps)[0]
    np.testing.assert_allclose(y_scaled, y, rtol=1e-9, atol=1e-9)
    # A negative scale flips the sign of the normalized part: the norm is of |x|, the mean follows x.
    y_neg = lp_norm_train_forward(-scale * x, p, gamma, beta, eps)[0]
    np.testing.assert_allclose(y_neg - beta[None, :, None, None], -(y - beta[None, :, None, None]), rtol=1e-9,
                               atol=1e-9)


@pytest.mark.parametrize("p", PS)
def test_output_has_zero_batch_mean(rng, p):
    x = 5.0 + _input(rng, (7, 3, 4, 2))
    y = lp_norm_train_forward(x, p)[0]
    np.testing.assert_allclose(y.mean(axis=(0, 2, 3)), 0.0, atol=1e-14)
    assert np.all(np.abs(y).max(axis=(0, 2, 3)) > 0.01)  # not trivially zero


def test_norms_use_uncentered_values(rng):
    """The divisor is the norm of x itself, not of x - mean (paper: 'before shifting the mean')."""
    x = np.array([[1.0], [2.0], [3.0], [6.0]])
    y1 = lp_norm_train_forward(x, 1, eps=1e-14)[0]
    y2 = lp_norm_train_forward(x, 2, eps=1e-14)[0]
    yi = lp_norm_train_forward(x, math.inf, eps=1e-14)[0]
    np.testing.assert_allclose(y1[:, 0], (x[:, 0] - 3.0) / 3.0, rtol=1e-12)
    np.testing.assert_allclose(y2[:, 0], (x[:, 0] - 3.0) / math.sqrt(50.0 / 4.0), rtol=1e-12)
    np.testing.assert_allclose(yi[:, 0], (x[:, 0] - 3.0) / 6.0, rtol=1e-12)


@pytest.mark.parametrize("shape,first,second", [((6, 2, 2, 2), 3, 17), ((40000, 1), 5, 39000)])
def test_linf_ties_put_the_subgradient_on_the_first_arg_max(rng, shape, first, second):
    x = rng.uniform(-1.0, 1.0, shape)
    x3 = x.reshape(shape[0], shape[1], -1)
    s = x3.shape[2]
    # Channel 0 gets |x| = 3 at two positions (n * S + s order), with opposite signs.
    x3[first // s, 0, first % s] = -3.0
    x3[second // s, 0, second % s] = 3.0
    gamma, beta = _affine(rng, shape[1])
    dy = rng.standard_normal(shape)
    y, mean, norm, argmax = lp_norm_train_forward(x, math.inf, gamma, beta)
    assert argmax[0] == first and norm[0] == 3.0
    dx = lp_norm_train_backward(dy, x, math.inf, mean, norm, argmax, gamma)
    # The one-sided derivative that moves only the first tied element: d norm / d x_first = sign(x_first).
    m = x3.shape[0] * s
    u = x3[:, 0] - mean[0]
    d = norm[0] + 1e-5
    big_k = gamma[0] * np.sum(dy.reshape(x3.shape)[:, 0] * u) / d**2
    expected = gamma[0] / d * (dy.reshape(x3.shape)[:, 0] - dy.reshape(x3.shape)[:, 0].sum() / m)
    expected[first // s, first % s] -= big_k * np.sign(x3[first // s, 0, first % s])
    np.testing.assert_allclose(dx.reshape(x3.shape)[:, 0], expected, rtol=1e-10, atol=1e-12)
    # Repeated calls, and a different thread count, give identical bits.
    again = lp_norm_train_backward(dy, x, math.inf, mean, norm, argmax, gamma)
    assert np.array_equal(dx, again)


@pytest.mark.parametrize("p", PS)
@pytest.mark.parametrize("shape", [(16, 70, 3, 3), (64, 1, 32, 32)])
def test_results_do_not_depend_on_thread_count(rng, p, shape):
    x = _input(rng, shape)
    gamma, beta = _affine(rng, shape[1])
    dy = rng.standard_normal(shape)

    def forward_and_backward():
        y, mean, norm, argmax = lp_norm_train_forward(x, p, gamma, beta)
        dg = np.empty(shape[1])
        dx = lp_norm_train_backward(dy, x, p, mean, norm, argmax, gamma, dg)
        return y, mean, norm, argmax, dx, dg

    assert_same_at_thread_counts(forward_and_backward)


def test_l2_zero_channel_has_finite_gradient(rng):
    x = rng.standard_normal((5, 2))
    x[:, 1] = 0.0
    gamma, beta = _affine(rng, 2)
    dy = rng.standard_normal((5, 2))
    for p in PS:
        y, mean, norm, argmax = lp_norm_train_forward(x, p, gamma, beta)
        assert norm[1] == 0.0
        np.testing.assert_array_equal(y[:, 1], beta[1])
        dx = lp_norm_train_backward(dy, x, p, mean, norm, argmax, gamma)
        # Every term through the norm carries u = x - mean = 0: only the centering derivative remains.
        np.testing.assert_allclose(dx[:, 1], gamma[1] * (dy[:, 1] - dy[:, 1].mean()) / 1e-5, rtol=1e-12)


@pytest.mark.parametrize("p", PS)
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_and_inf_propagate(rng, p, bad):
    x = _input(rng, (4, 3, 2, 2))
    x[2, 1, 1, 0] = bad
    y, mean, norm, argmax = lp_norm_train_forward(x, p)
    assert np.all(np.isnan(y[:, 1]))  # the channel's mean carries the NaN / Inf to every element
    assert np.all(np.isfinite(y[:, [0, 2]]))
    if math.isnan(bad):
        assert np.isnan(mean[1]) and np.isnan(norm[1])
    dx = lp_norm_train_backward(rng.standard_normal(x.shape), x, p, mean, norm, argmax)
    assert not np.all(np.isfinite(dx[:, 1]))
    assert np.all(np.isfinite(dx[:, [0, 2]]))


@pytest.mark.parametrize("shape", [(5, 3), (4, 3, 2, 5), (64, 1, 32, 32)])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_eval_forward_and_backward(rng, shape, dtype):
    c = shape[1]
    x = _input(rng, shape, dtype)
    rm = rng.standard_normal(c).astype(dtype)
    rn = rng.uniform(0.5, 2.0, c).astype(dtype)
    gamma, beta = _affine(rng, c, dtype)
    y = lp_norm_eval_forward(x, rm, rn, gamma, beta)
    tol = 1e-12 if dtype == np.float64 else 2e-6
    np.testing.assert_allclose(y, lp_norm_reference(x, rm, rn, gamma, beta), rtol=tol, atol=tol)
    dy = rng.standard_normal(shape).astype(dtype)
    dgamma, dbeta = np.full(c, np.nan, dtype), np.full(c, np.nan, dtype)
    dx = lp_norm_eval_backward(dy, x, rm, rn, gamma, dgamma, dbeta)
    g64 = gamma.astype(np.float64)
    scale = (g64 / (rn.astype(np.float64) + 1e-5)).reshape((1, c) + (1,) * (len(shape) - 2))
    np.testing.assert_allclose(dx, dy * scale, rtol=tol, atol=tol)
    xhat = lp_norm_reference(x, rm, rn)
    axes = (0,) + tuple(range(2, len(shape)))
    np.testing.assert_allclose(dgamma, np.sum(dy.astype(np.float64) * xhat, axis=axes), rtol=tol * 10, atol=tol * 10)
    np.testing.assert_allclose(dbeta, np.sum(dy.astype(np.float64), axis=axes), rtol=tol * 10, atol=tol * 10)


def test_eval_backward_matches_finite_differences(rng):
    shape = (3, 2, 2, 2)
    x = _input(rng, shape)
    rm, rn = rng.standard_normal(2), rng.uniform(0.5, 2.0, 2)
    gamma, beta = _affine(rng, 2)
    dy = rng.standard_normal(shape)
    dgamma, dbeta = np.empty(2), np.empty(2)
    dx = lp_norm_eval_backward(dy, x, rm, rn, gamma, dgamma, dbeta)

    def loss(xx, gg=gamma, bb=beta):
        return float(np.sum(lp_norm_reference(xx, rm, rn, gg, bb) * dy))

    assert relative_error(dx, central_difference(loss, x)) < 1e-6
    assert relative_error(dgamma, central_difference(lambda g: loss(x, g), gamma)) < 1e-6
    assert relative_error(dbeta, central_difference(lambda b: loss(x, gamma, b), beta)) < 1e-6


@pytest.mark.parametrize("p", PS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_running_statistics_closed_form_after_k_steps(rng, p, dtype):
    c, k, momentum = 3, 5, 0.1
    rm = np.zeros(c, dtype)
    rn = np.ones(c, dtype)
    batches = [_input(rng, (4, c, 2, 3)).astype(dtype) for _ in range(k)]
    for x in batches:
        _, mean, norm, _ = lp_norm_train_forward(x, p)
        lp_norm_update_running(rm, rn, mean, norm, momentum)
    # Closed form: r_k = (1 - m)^k r_0 + sum_j m (1 - m)^(k - 1 - j) stat_j.
    stats = [lp_norm_stats_reference(x, p) for x in batches]
    expected_mean = sum(momentum * (1 - momentum) ** (k - 1 - j) * stats[j][0] for j in range(k))
    expected_norm = (1 - momentum) ** k + sum(momentum * (1 - momentum) ** (k - 1 - j) * stats[j][1] for j in range(k))
    tol = 1e-12 if dtype == np.float64 else 2e-6
    np.testing.assert_allclose(rm, expected_mean, rtol=tol, atol=tol)
    np.testing.assert_allclose(rn, expected_norm, rtol=tol, atol=tol)
    ref_m, ref_n = lp_norm_running_reference(np.zeros(c), np.ones(c), batches, p, momentum)
    np.testing.assert_allclose(rm, ref_m, rtol=tol, atol=tol)
    np.testing.assert_allclose(rn, ref_n, rtol=tol, atol=tol)


def test_backward_overwrites_parameter_gradients_in_flat_views(rng):
    x = _input(rng, (5, 3))
    flat = np.full(6, 123.0)
    dgamma, dbeta = flat[:3], flat[3:]
    _, mean, norm, argmax = lp_norm_train_forward(x, 2)
    dy = rng.standard_normal((5, 3))
    lp_norm_train_backward(dy, x, 2, mean, norm, argmax, None, dgamma, dbeta)
    np.testing.assert_allclose(dbeta, dy.sum(axis=0), rtol=1e-12)
    np.testing.assert_allclose(dgamma, np.sum(dy * lp_norm_train_reference(x, 2), axis=0), rtol=1e-12)


def test_bad_inputs_raise_clear_errors(rng):
    x = rng.standard_normal((4, 3))
    with pytest.raises(ValueError, match="p: expected 1, 2 or math.inf"):
        lp_norm_train_forward(x, 3)
    with pytest.raises(ValueError, match="p: expected"):
        lp_norm_train_forward(x, "l2")
    with pytest.raises(ValueError, match="x: expected a 2D or 4D array"):
        lp_norm_train_forward(rng.standard_normal((4, 3, 2)), 2)
    with pytest.raises(ValueError, match="x: expected dtype float32 or float64"):
        lp_norm_train_forward(x.astype(np.int64), 2)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        lp_norm_train_forward(x[:1], 1)
    with pytest.raises(ValueError, match="gamma: expected shape \\(3,\\)"):
        lp_norm_train_forward(x, 2, np.ones(4))
    with pytest.raises(ValueError, match="gamma: expected dtype float64"):
        lp_norm_train_forward(x, 2, np.ones(3, np.float32))
    with pytest.raises(ValueError, match="eps: expected a positive number"):
        lp_norm_train_forward(x, 2, eps=0.0)
    _, mean, norm, argmax = lp_norm_train_forward(x, math.inf)
    with pytest.raises(ValueError, match="argmax: expected the"):
        lp_norm_train_backward(x, x, math.inf, mean, norm, None)
    with pytest.raises(ValueError, match="argmax: expected positions"):
        lp_norm_train_backward(x, x, math.inf, mean, norm, argmax + 100)
    with pytest.raises(ValueError, match="dy: expected dtype float64"):
        lp_norm_train_backward(x.astype(np.float32), x, 2, mean, norm)
    with pytest.raises(ValueError, match="dy: expected shape"):
        lp_norm_train_backward(x[:2], x, 2, mean, norm)
    with pytest.raises(ValueError, match="dgamma: expected a writeable"):
        ro = np.zeros(3)
        ro.flags.writeable = False
        lp_norm_train_backward(x, x, 2, mean, norm, None, None, ro)
    with pytest.raises(ValueError, match="running_norm: expected shape"):
        lp_norm_eval_forward(x, np.zeros(3), np.ones(2))
    with pytest.raises(ValueError, match="momentum: expected a number in"):
        lp_norm_update_running(np.zeros(3), np.ones(3), mean, norm, 1.5)


def test_running_update_names_a_running_mean_of_the_wrong_length(rng):
    _, mean, norm, _ = lp_norm_train_forward(rng.standard_normal((4, 3)), 2)
    with pytest.raises(ValueError, match=r"^running_mean: expected shape \(3,\)"):
        lp_norm_update_running(np.zeros(2), np.ones(3), mean, norm)
    with pytest.raises(ValueError, match=r"^running_mean: expected shape \(3,\)"):
        lp_norm_update_running(np.zeros(2), np.ones(2), mean, norm)
    with pytest.raises(ValueError, match=r"^mean: expected an array of shape \(3,\), got None"):
        lp_norm_train_backward(rng.standard_normal((4, 3)), rng.standard_normal((4, 3)), 2, None, norm)


@pytest.mark.parametrize("p", PS)
@pytest.mark.parametrize("shape", [(6, 5), (50, 3), (4, 3, 5, 5), (64, 1, 32, 32)])
def test_out_buffers_and_in_place(rng, p, shape):
    x, dy = _input(rng, shape), rng.standard_normal(shape)
    gamma, beta = _affine(rng, shape[1])
    _, mean, norm, argmax = lp_norm_train_forward(x, p, gamma, beta)
    assert_out_and_in_place(lp_norm_train_forward, {"x": x, "p": p, "gamma": gamma, "beta": beta}, ("x",))
    # For p = inf dx over dy must still read dy at the arg-max, whose dx gets the max's extra term last.
    assert_out_and_in_place(lp_norm_train_backward, {"dy": dy, "x": x, "p": p, "mean": mean, "norm": norm,
                                                     "argmax": argmax, "gamma": gamma}, ("dy",))
    rm, rn = rng.standard_normal(shape[1]), rng.uniform(0.5, 2.0, shape[1])
    assert_out_and_in_place(lp_norm_eval_forward, {"x": x, "running_mean": rm, "running_norm": rn, "gamma": gamma,
                                                   "beta": beta}, ("x",))
    assert_out_and_in_place(lp_norm_eval_backward, {"dy": dy, "x": x, "running_mean": rm, "running_norm": rn,
                                                    "gamma": gamma, "dgamma": np.empty_like(gamma)}, ("dy",))
