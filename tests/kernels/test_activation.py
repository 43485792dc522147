import numpy as np
import pytest

from smoothnorm.kernels.activation import relu_backward, relu_forward
from tests.reference import central_difference, relative_error, relu_ref

SHAPES = [(), (7,), (3, 4), (2, 3, 5, 5), (3, 20001)]  # the last spans several parallel blocks


def _away_from_kink(rng, shape):
    """Normal values pushed at least 0.01 away from 0, so a finite-difference step never crosses the kink."""
    x = rng.standard_normal(shape)
    return x + np.where(x >= 0, 0.01, -0.01)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_forward_matches_reference(rng, shape, dtype):
    x = rng.standard_normal(shape).astype(dtype)
    y = relu_forward(x)
    assert y.shape == x.shape and y.dtype == dtype
    np.testing.assert_array_equal(y, relu_ref(x))


@pytest.mark.parametrize("shape", SHAPES[:4])
def test_backward_matches_finite_differences(rng, shape):
    x = _away_from_kink(rng, shape)
    g = rng.standard_normal(shape)  # loss = sum(relu(x) * g), so dy = g
    dx = relu_backward(g, relu_forward(x))
    numeric = central_difference(lambda v: np.sum(relu_ref(v) * g), x)
    assert dx.shape == x.shape
    assert relative_error(dx, numeric) < 1e-6


def test_backward_large(rng):
    x = _away_from_kink(rng, (3, 20001))
    dy = rng.standard_normal(x.shape)
    np.testing.assert_array_equal(relu_backward(dy, relu_forward(x)), np.where(x > 0, dy, 0.0))


def test_float32_matches_float64(rng):
    x = rng.standard_normal((4, 9))
    dy = rng.standard_normal((4, 9))
    y32 = relu_forward(x.astype(np.float32))
    np.testing.assert_array_equal(y32, relu_forward(x).astype(np.float32))
    dx32 = relu_backward(dy.astype(np.float32), y32)
    assert dx32.dtype == np.float32
    np.testing.assert_array_equal(dx32, relu_backward(dy, relu_forward(x)).astype(np.float32))


def test_nan_and_inf_propagate():
    x = np.array([np.nan, np.inf, -np.inf, -1.0, 0.0, 2.0])
    y = relu_forward(x)
    np.testing.assert_array_equal(y, [np.nan, np.inf, 0.0, 0.0, 0.0, 2.0])
    # A NaN upstream gradient passes where the unit is active; a NaN output passes its gradient (as torch).
    dx = relu_backward(np.array([1.0, 1.0, 1.0, 1.0, 1.0, np.nan]), y)
    np.testing.assert_array_equal(dx, [1.0, 1.0, 0.0, 0.0, 0.0, np.nan])


def test_non_contiguous_inputs_are_accepted(rng):
    x = rng.standard_normal((5, 6)).T
    dy = rng.standard_normal((12, 5))[::2]
    assert not x.flags.c_contiguous and not dy.flags.c_contiguous
    y = relu_forward(x)
    np.testing.assert_array_equal(y, relu_ref(x))
    np.testing.assert_array_equal(relu_backward(dy, y), np.where(x > 0, dy, 0.0))


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match=r"x: expected dtype float32 or float64, got int64"):
        relu_forward(np.arange(3))
    with pytest.raises(ValueError, match=r"dy: expected dtype float32 or float64, got float16"):
        relu_backward(np.ones(3, dtype=np.float16), np.ones(3))
    with pytest.raises(ValueError, match=r"y: expected shape \(3,\).*got \(4,\)"):
        relu_backward(np.ones(3), np.ones(4))
    with pytest.raises(ValueError, match=r"y: expected dtype float64.*got float32"):
        relu_backward(np.ones(3), np.ones(3, dtype=np.float32))


@pytest.mark.torch
def test_matches_torch(rng):
    torch = pytest.importorskip("torch")
    x = rng.standard_normal((4, 7))
    x[0, :4] = [np.nan, -0.0, np.inf, -np.inf]
    dy = rng.standard_normal(x.shape)
    tx = torch.tensor(x, requires_grad=True)
    ty = torch.relu(tx)
    ty.backward(torch.tensor(dy))
    y = relu_forward(x)
    np.testing.assert_array_equal(y, ty.detach().numpy())
    np.testing.assert_array_equal(np.signbit(y), np.signbit(ty.detach().numpy()))
    np.testing.assert_array_equal(relu_backward(dy, y), tx.grad.numpy())
