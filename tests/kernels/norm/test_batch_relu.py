"""BatchNorm then ReLU in one kernel (kernels/norm/batch_relu.py): the same bits as the two kernels composed, on
every path of the skeleton (short runs, grouped rows, long runs, batch chunks), with zeros, ties and NaN."""

import numba
import numpy as np
import pytest

from smoothnorm.kernels.activation import relu_backward, relu_forward
from smoothnorm.kernels.norm.batch import batch_norm_train_backward, batch_norm_train_forward
from smoothnorm.kernels.norm.batch_relu import (
    batch_norm_relu_train_backward,
    batch_norm_relu_train_forward,
    noisy_batch_norm_relu_backward,
    noisy_batch_norm_relu_forward,
)
from smoothnorm.kernels.norm.noisy import noisy_batch_norm_backward, noisy_batch_norm_forward
from tests.kernels.norm.test_batch import CHUNKED, GROUPED, SHAPES, _affine

VGG = [(64, 8, 32, 32), (128, 64, 2, 2)]


def _same(a, b):
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def _composed(x, dy, gamma, beta):
    y_bn, mean, invstd, var = batch_norm_train_forward(x, gamma, beta)
    y = relu_forward(y_bn)
    dgamma, dbeta = np.empty_like(mean), np.empty_like(mean)
    dx = batch_norm_train_backward(relu_backward(dy, y), x, mean, invstd, gamma, dgamma, dbeta)
    return y, (mean, invstd, var), dx, dgamma, dbeta


def _fused(x, dy, gamma, beta):
    y, mean, invstd, var = batch_norm_relu_train_forward(x, gamma, beta)
    dgamma, dbeta = np.empty_like(mean), np.empty_like(mean)
    dx = batch_norm_relu_train_backward(dy, y, x, mean, invstd, gamma, dgamma, dbeta)
    return y, (mean, invstd, var), dx, dgamma, dbeta


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES + VGG)
def test_fused_equals_batch_norm_then_relu_bit_for_bit(rng, shape, dtype):
    assert set(GROUPED + CHUNKED) <= set(SHAPES)
    x = (3.0 * rng.standard_normal(shape) + 0.5).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    gamma, beta = _affine(rng, shape[1], dtype)
    gamma[0] = np.abs(gamma[0]) + dtype(0.25)  # channel 0 has outputs on both sides of the ReLU
    beta[0] = dtype(0.1)
    want, got = _composed(x, dy, gamma, beta), _fused(x, dy, gamma, beta)
    assert _same(want[0], got[0])
    assert all(_same(a, b) for a, b in zip(want[1], got[1]))
    for a, b in zip(want[2:], got[2:]):
        assert _same(a, b)
    assert (got[0] == 0).any() and (got[0] > 0).any()  # both sides of the mask were taken


def test_exact_zeros_negative_zero_and_nan_follow_relu(rng):
    """Outputs exactly 0 (beta 0 on a constant channel) mask their gradient as ReLU's (y <= 0); a -0.0 BatchNorm
    output stays -0.0 and a NaN channel passes NaN and its gradient, as torch.relu and threshold_backward."""
    x = rng.standard_normal((6, 4, 3, 3))
    x[:, 1] = 2.5  # constant channel: BatchNorm output (x - mean) * ... + 0 = 0 exactly
    x[0, 2, 0, 0] = np.nan
    gamma, beta = np.array([1.0, 1.0, 1.0, -1.0]), np.zeros(4)
    dy = rng.standard_normal(x.shape)
    want, got = _composed(x, dy, gamma, beta), _fused(x, dy, gamma, beta)
    assert (got[0][:, 1] == 0).all() and np.isnan(got[0][:, 2]).all()
    assert np.signbit(want[0]).tolist() == np.signbit(got[0]).tolist()
    for a, b in zip(want[2:], got[2:]):
        assert _same(a, b)


@pytest.mark.parametrize("threads", [1, 2])
def test_bits_do_not_depend_on_the_thread_count(rng, threads):
    x = rng.standard_normal((64, 1, 32, 32)).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    gamma, beta = _affine(rng, 1, np.float32)
    previous = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = _fused(x, dy, gamma, beta)
        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
        many = _fused(x, dy, gamma, beta)
    finally:
        numba.set_num_threads(previous)
    assert _same(one[0], many[0]) and _same(one[2], many[2])


def test_out_buffers_and_bad_arguments(rng):
    x = rng.standard_normal((5, 3, 2, 2))
    dy = rng.standard_normal(x.shape)
    y, mean, invstd, _ = batch_norm_relu_train_forward(x, out=x.copy())
    dx = batch_norm_relu_train_backward(dy.copy(), y, x, mean, invstd)
    in_place = dy.copy()
    assert _same(batch_norm_relu_train_backward(in_place, y, x, mean, invstd, out=in_place), dx)
    with pytest.raises(ValueError, match="out: expected an array that does not overlap y"):
        batch_norm_relu_train_backward(dy, y, x, mean, invstd, out=y)
    with pytest.raises(ValueError, match="y: expected shape"):
        batch_norm_relu_train_backward(dy, y[:2], x, mean, invstd)
    with pytest.raises(ValueError, match="x: batch statistics need more than 1 value"):
        batch_norm_relu_train_forward(x[:1, :, :1, :1])


# Noisy BatchNorm then ReLU.


@pytest.mark.parametrize("before", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(5, 3), (16, 7), (1000, 10), (8, 4, 3, 3), (30, 2, 2, 2), (64, 1, 32, 32),
                                   (64, 8, 32, 32)])
def test_noisy_fused_equals_noisy_batch_norm_then_relu_bit_for_bit(rng, shape, dtype, before):
    x = (3.0 * rng.standard_normal(shape) + 0.5).astype(dtype)
    s = rng.normal(1.1, 0.3, shape).astype(dtype)  # some scales negative: -0.0 products in the masked gradient
    m = rng.uniform(-0.6, 0.6, shape).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    gamma, beta = _affine(rng, shape[1], dtype)
    y_bn, mean, invstd, var = noisy_batch_norm_forward(x, s, m, gamma, beta, before_affine=before)
    y = relu_forward(y_bn)
    dg, db = np.empty_like(mean), np.empty_like(mean)
    dx = noisy_batch_norm_backward(relu_backward(dy, y), x, s, m, mean, invstd, gamma, dg, db, before_affine=before)
    y2, mean2, invstd2, var2 = noisy_batch_norm_relu_forward(x, s, m, gamma, beta, before_affine=before)
    dg2, db2 = np.empty_like(mean), np.empty_like(mean)
    dx2 = noisy_batch_norm_relu_backward(dy, y2, x, s, m, mean2, invstd2, gamma, dg2, db2, before_affine=before)
    for a, b in ((y, y2), (mean, mean2), (invstd, invstd2), (var, var2), (dx, dx2), (dg, dg2), (db, db2)):
        assert _same(a, b)
    assert (y2 == 0).any() and (y2 > 0).any()
