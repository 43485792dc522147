"""Noisy batch normalization kernels (batch norm fused with fixed per-element noise, after or before the affine):
forward against a float64 reference, backward against central finite differences, statistics equal to batch
norm's, determinism, NaN propagation and bad inputs."""

import numpy as np
import pytest

from smoothnorm.kernels.norm.batch import batch_norm_train_forward
from smoothnorm.kernels.norm.noisy import noisy_batch_norm_backward, noisy_batch_norm_forward
from tests.helpers import assert_out_and_in_place, assert_same_at_thread_counts
from tests.reference import central_difference, noisy_batch_norm_reference, relative_error

SHAPES = [(5, 3), (16, 7), (2, 3, 4, 5), (3, 6, 1, 1), (64, 1, 32, 32), (40000, 1)]
SMALL = [(5, 3), (2, 3, 2, 3), (4, 2, 1, 1)]


def _case(rng, shape, dtype=np.float64):
    x = (1.0 + 2.0 * rng.standard_normal(shape)).astype(dtype)
    scale = (1.1 + 0.1 * rng.standard_normal(shape)).astype(dtype)
    shift = rng.uniform(-0.6, 0.6, shape).astype(dtype)
    gamma = (1.0 + 0.5 * rng.standard_normal(shape[1])).astype(dtype)
    beta = rng.standard_normal(shape[1]).astype(dtype)
    return x, scale, shift, gamma, beta


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("before", [False, True])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_forward_matches_reference_and_batch_norm_statistics(rng, shape, before, dtype):
    x, scale, shift, gamma, beta = _case(rng, shape, dtype)
    y, mean, invstd, var = noisy_batch_norm_forward(x, scale, shift, gamma, beta, before_affine=before)
    assert y.shape == x.shape and y.dtype == dtype
    tol = 1e-12 if dtype == np.float64 else 3e-6
    ref = noisy_batch_norm_reference(x, scale, shift, gamma, beta, before_affine=before)
    np.testing.assert_allclose(y, ref, rtol=tol, atol=tol * 10)
    _, bn_mean, bn_invstd, bn_var = batch_norm_train_forward(x, gamma, beta)
    np.testing.assert_allclose(mean, bn_mean, rtol=tol, atol=tol)
    np.testing.assert_allclose(var, bn_var, rtol=tol, atol=tol)
    np.testing.assert_allclose(invstd, bn_invstd, rtol=tol)


def test_placements_differ_by_the_formula(rng):
    """after: s (gamma xhat + beta) + m; before: gamma (s xhat + m) + beta; equal when gamma = 1, beta = 0."""
    x, scale, shift, gamma, beta = _case(rng, (6, 3, 2, 2))
    after = noisy_batch_norm_forward(x, scale, shift, gamma, beta)[0]
    before = noisy_batch_norm_forward(x, scale, shift, gamma, beta, before_affine=True)[0]
    xhat = batch_norm_train_forward(x)[0]
    g, b = gamma[None, :, None, None], beta[None, :, None, None]
    np.testing.assert_allclose(after, scale * (g * xhat + b) + shift, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(before, g * (scale * xhat + shift) + b, rtol=1e-12, atol=1e-12)
    assert not np.allclose(after, before)
    ones, zeros = np.ones(3), np.zeros(3)
    np.testing.assert_allclose(noisy_batch_norm_forward(x, scale, shift, ones, zeros)[0],
                               noisy_batch_norm_forward(x, scale, shift, ones, zeros, before_affine=True)[0],
                               rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("shape", SMALL)
@pytest.mark.parametrize("before", [False, True])
def test_backward_matches_finite_differences(rng, shape, before):
    x, scale, shift, gamma, beta = _case(rng, shape)
    dy = rng.standard_normal(shape)
    _, mean, invstd, _ = noisy_batch_norm_forward(x, scale, shift, gamma, beta, before_affine=before)
    dgamma = np.full(shape[1], np.nan)  # overwritten, not accumulated
    dbeta = np.full(shape[1], np.nan)
    dx = noisy_batch_norm_backward(dy, x, scale, shift, mean, invstd, gamma, dgamma, dbeta, before_affine=before)

    def loss(xx, gg=gamma, bb=beta):
        return float(np.sum(noisy_batch_norm_reference(xx, scale, shift, gg, bb, before_affine=before) * dy))

    assert relative_error(dx, central_difference(loss, x)) < 1e-6
    assert relative_error(dgamma, central_difference(lambda g: loss(x, g), gamma)) < 1e-6
    assert relative_error(dbeta, central_difference(lambda b: loss(x, gamma, b), beta)) < 1e-6


@pytest.mark.parametrize("shape", [(64, 1, 32, 32), (40000, 1), (16, 70, 3, 3)])
@pytest.mark.parametrize("before", [False, True])
def test_backward_directional_derivative_large(rng, shape, before):
    x, scale, shift, gamma, beta = _case(rng, shape)
    dy = rng.standard_normal(shape)
    _, mean, invstd, _ = noisy_batch_norm_forward(x, scale, shift, gamma, beta, before_affine=before)
    dgamma = np.empty(shape[1])
    dx = noisy_batch_norm_backward(dy, x, scale, shift, mean, invstd, gamma, dgamma, before_affine=before)
    d = rng.standard_normal(shape)
    eps = 1e-6

    def loss(xx, gg=gamma):
        return np.sum(noisy_batch_norm_reference(xx, scale, shift, gg, beta, before_affine=before) * dy)

    assert relative_error(np.sum(dx * d), (loss(x + eps * d) - loss(x - eps * d)) / (2 * eps)) < 1e-6
    dg = rng.standard_normal(shape[1])
    assert relative_error(dgamma @ dg, (loss(x, gamma + eps * dg) - loss(x, gamma - eps * dg)) / (2 * eps)) < 1e-6


def test_after_affine_backward_does_not_need_the_shift(rng):
    x, scale, shift, gamma, beta = _case(rng, (5, 3))
    dy = rng.standard_normal(x.shape)
    _, mean, invstd, _ = noisy_batch_norm_forward(x, scale, shift, gamma, beta)
    a = noisy_batch_norm_backward(dy, x, scale, shift, mean, invstd, gamma)
    b = noisy_batch_norm_backward(dy, x, scale, None, mean, invstd, gamma)
    assert np.array_equal(a, b)
    with pytest.raises(ValueError, match="shift_noise"):
        noisy_batch_norm_backward(dy, x, scale, None, mean, invstd, gamma, before_affine=True)


def test_float32_close_to_float64(rng):
    x, scale, shift, gamma, beta = _case(rng, (6, 4, 3, 3))
    dy = rng.standard_normal(x.shape)
    out = {}
    for dt in (np.float64, np.float32):
        args = [a.astype(dt) for a in (x, scale, shift, gamma, beta)]
        y, mean, invstd, _ = noisy_batch_norm_forward(*args)
        dgamma, dbeta = np.empty(4, dt), np.empty(4, dt)
        dx = noisy_batch_norm_backward(dy.astype(dt), args[0], args[1], args[2], mean, invstd, args[3], dgamma,
                                       dbeta)
        out[dt] = (y, dx, dgamma, dbeta)
    for a, b in zip(out[np.float32], out[np.float64]):
        assert a.dtype == np.float32
        assert relative_error(a, b) < 1e-5


@pytest.mark.parametrize("shape", [(16, 70, 3, 3), (64, 1, 32, 32)])
def test_results_do_not_depend_on_thread_count(rng, shape):
    x, scale, shift, gamma, beta = _case(rng, shape)
    dy = rng.standard_normal(shape)

    def forward_and_backward():
        y, mean, invstd, var = noisy_batch_norm_forward(x, scale, shift, gamma, beta)
        dgamma = np.empty(shape[1])
        dx = noisy_batch_norm_backward(dy, x, scale, shift, mean, invstd, gamma, dgamma)
        return y, mean, invstd, var, dx, dgamma

    assert_same_at_thread_counts(forward_and_backward)


def test_nan_propagates(rng):
    x, scale, shift, gamma, beta = _case(rng, (4, 3, 2, 2))
    x[1, 2, 0, 0] = np.nan
    scale[0, 0, 1, 1] = np.nan  # NaN noise reaches its own element only
    y, mean, invstd, _ = noisy_batch_norm_forward(x, scale, shift, gamma, beta)
    assert np.all(np.isnan(y[:, 2]))
    assert np.isnan(y[0, 0, 1, 1]) and np.sum(np.isnan(y[:, 0])) == 1
    assert np.all(np.isfinite(y[:, 1]))
    dx = noisy_batch_norm_backward(rng.standard_normal(x.shape), x, scale, shift, mean, invstd, gamma)
    assert np.all(np.isnan(dx[:, 2]))
    assert np.all(np.isfinite(dx[:, 1]))


def test_bad_inputs_raise_clear_errors(rng):
    x, scale, shift, gamma, beta = _case(rng, (4, 3))
    with pytest.raises(ValueError, match="scale_noise: expected shape \\(4, 3\\)"):
        noisy_batch_norm_forward(x, scale[:2], shift)
    with pytest.raises(ValueError, match="shift_noise: expected dtype float64"):
        noisy_batch_norm_forward(x, scale, shift.astype(np.float32))
    with pytest.raises(ValueError, match="x: expected a 2D or 4D array"):
        noisy_batch_norm_forward(x[0], scale[0], shift[0])
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        noisy_batch_norm_forward(x[:1], scale[:1], shift[:1])
    with pytest.raises(ValueError, match="gamma: expected shape \\(3,\\)"):
        noisy_batch_norm_forward(x, scale, shift, np.ones(2))
    _, mean, invstd, _ = noisy_batch_norm_forward(x, scale, shift)
    with pytest.raises(ValueError, match="invstd: expected dtype float64"):
        noisy_batch_norm_backward(x, x, scale, shift, mean, invstd.astype(np.float32))
    with pytest.raises(ValueError, match="dbeta: expected shape \\(3,\\)"):
        noisy_batch_norm_backward(x, x, scale, shift, mean, invstd, None, None, np.zeros(4))


@pytest.mark.parametrize("shape", [(5, 3), (16, 7), (2, 3, 4, 5), (64, 1, 32, 32)])
@pytest.mark.parametrize("before", [False, True])
def test_out_buffers_and_in_place(rng, shape, before):
    x, scale, shift, gamma, beta = _case(rng, shape)
    dy = rng.standard_normal(shape)
    _, mean, invstd, _ = noisy_batch_norm_forward(x, scale, shift, gamma, beta, before_affine=before)
    forward = {"x": x, "scale_noise": scale, "shift_noise": shift, "gamma": gamma, "beta": beta,
               "before_affine": before}
    assert_out_and_in_place(noisy_batch_norm_forward, forward, ("x", "scale_noise", "shift_noise"))
    backward = {"dy": dy, "x": x, "scale_noise": scale, "shift_noise": shift, "mean": mean, "invstd": invstd,
                "gamma": gamma, "dgamma": np.empty_like(gamma), "before_affine": before}
    assert_out_and_in_place(noisy_batch_norm_backward, backward, ("dy",))
