import numpy as np
import pytest

from smoothnorm.kernels.activation import (
    activation_backward,
    activation_backward_r,
    activation_forward,
    activation_forward_r,
    relu_backward,
    relu_forward,
)
from tests.reference import activation_ref, central_difference, relative_error, relu_ref

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


# === sigmoid, tanh, identity (and relu through the generic entry points), with R-operators ===
SMOOTH = ["sigmoid", "tanh", "identity"]
ALL = ["relu", *SMOOTH]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("activation", ALL)
def test_activation_forward_matches_reference(rng, shape, dtype, activation):
    x = (4 * rng.standard_normal(shape)).astype(dtype)
    y = activation_forward(x, activation)
    assert y.shape == x.shape and y.dtype == dtype
    tol = 1e-15 if dtype == np.float64 else 1e-7
    np.testing.assert_allclose(y, activation_ref(x, activation), rtol=tol, atol=tol)


@pytest.mark.parametrize("activation", ALL)
def test_activation_backward_matches_finite_differences(rng, activation):
    x = _away_from_kink(rng, (3, 7))
    g = rng.standard_normal(x.shape)
    dx = activation_backward(g, activation_forward(x, activation), activation)
    numeric = central_difference(lambda v: np.sum(activation_ref(v, activation) * g), x)
    assert relative_error(dx, numeric) < 1e-7


@pytest.mark.parametrize("activation", ALL)
def test_forward_r_is_the_directional_derivative(rng, activation):
    x, rx = _away_from_kink(rng, (4, 5)), rng.standard_normal((4, 5))
    eps = 1e-6
    numeric = (activation_ref(x + eps * rx, activation) - activation_ref(x - eps * rx, activation)) / (2 * eps)
    ry = activation_forward_r(rx, activation_forward(x, activation), activation)
    assert relative_error(ry, numeric) < 1e-7


@pytest.mark.parametrize("activation", ALL)
@pytest.mark.parametrize("shape", [(4, 5), (3, 20001)])
def test_backward_r_is_the_directional_derivative_of_backward(rng, activation, shape):
    """rdx = d/dt backward(dy + t rdy, f(x + t rx)) at t = 0, by central differences in float64."""
    x = _away_from_kink(rng, shape)
    dy, rdy, rx = (rng.standard_normal(shape) for _ in range(3))
    eps = 1e-6

    def dx_at(t):
        return activation_backward(dy + t * rdy, activation_forward(x + t * rx, activation), activation)

    numeric = (dx_at(eps) - dx_at(-eps)) / (2 * eps)
    y = activation_forward(x, activation)
    dx, rdx = activation_backward_r(dy, rdy, rx, y, activation)
    np.testing.assert_array_equal(dx, activation_backward(dy, y, activation))
    assert relative_error(rdx, numeric) < 1e-6


@pytest.mark.parametrize("activation", SMOOTH)
def test_float32_close_to_float64(rng, activation):
    x, dy, rdy, rx = (rng.standard_normal((6, 11)) for _ in range(4))
    y32 = activation_forward(x.astype(np.float32), activation)
    y64 = activation_forward(x, activation)
    np.testing.assert_allclose(y32, y64, rtol=2e-7, atol=1e-7)
    f32 = [a.astype(np.float32) for a in (dy, rdy, rx)]
    for a32, a64 in zip(activation_backward_r(*f32, y32, activation), activation_backward_r(dy, rdy, rx, y64,
                                                                                               activation)):
        assert a32.dtype == np.float32
        np.testing.assert_allclose(a32, a64, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sigmoid_and_tanh_are_stable_and_pass_nan(dtype):
    x = np.array([np.nan, np.inf, -np.inf, -1e4, 1e4, -100.0, 100.0, 0.0], dtype=dtype)
    with np.errstate(all="raise"):  # the kernels never divide 0/0 or overflow, for any finite or infinite input
        ys = activation_forward(x, "sigmoid")
        yt = activation_forward(x, "tanh")
    np.testing.assert_array_equal(ys, np.array([np.nan, 1, 0, 0, 1, np.exp(-100.0) / (1 + np.exp(-100.0)), 1, 0.5],
                                               dtype=dtype))
    np.testing.assert_array_equal(yt, np.array([np.nan, 1, -1, -1, 1, -1, 1, 0], dtype=dtype))
    # Saturated units have zero slope; a NaN input gives NaN gradient.
    for activation, y in (("sigmoid", ys), ("tanh", yt)):
        dx = activation_backward(np.ones_like(x), y, activation)
        assert np.isnan(dx[0]) and np.all(dx[1:5] == 0)
    yi = activation_forward(x, "identity")
    np.testing.assert_array_equal(yi, x)


def test_generic_entry_points_reject_bad_arguments():
    with pytest.raises(ValueError, match=r"activation: expected one of \('relu', 'sigmoid', 'tanh', 'identity'\), "
                                         r"got 'softplus'"):
        activation_forward(np.ones(3), "softplus")
    with pytest.raises(ValueError, match=r"x: expected dtype float32 or float64, got int64"):
        activation_forward(np.arange(3), "tanh")
    with pytest.raises(ValueError, match=r"y: expected shape \(3,\) \(the shape of dy\), got \(4,\)"):
        activation_backward(np.ones(3), np.ones(4), "sigmoid")
    with pytest.raises(ValueError, match=r"y: expected dtype float64 \(the dtype of rx\), got float32"):
        activation_forward_r(np.ones(3), np.ones(3, dtype=np.float32), "tanh")
    with pytest.raises(ValueError, match=r"rx: expected shape \(3,\) \(the shape of dy\), got \(2,\)"):
        activation_backward_r(np.ones(3), np.ones(3), np.ones(2), np.ones(3), "tanh")


@pytest.mark.torch
@pytest.mark.parametrize("activation", ["sigmoid", "tanh"])
def test_smooth_activations_match_torch(rng, activation):
    torch = pytest.importorskip("torch")
    x = 3 * rng.standard_normal((4, 7))
    x[0, :4] = [np.nan, -0.0, np.inf, -np.inf]
    dy = rng.standard_normal(x.shape)
    tx = torch.tensor(x, requires_grad=True)
    ty = getattr(torch, activation)(tx)
    ty.backward(torch.tensor(dy))
    y = activation_forward(x, activation)
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-15, atol=1e-16)
    np.testing.assert_allclose(activation_backward(dy, y, activation), tx.grad.numpy(), rtol=1e-14, atol=1e-16)


def test_relu_out_buffers_give_the_same_bits_in_place_or_not(rng):
    x = rng.standard_normal((3, 20001)).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    y_new = relu_forward(x)
    out = np.full_like(x, np.nan)
    assert relu_forward(x, out=out) is out
    np.testing.assert_array_equal(out, y_new)
    dx_new = relu_backward(dy, y_new)
    dx_out = np.full_like(dy, np.nan)
    assert relu_backward(dy, y_new, out=dx_out) is dx_out
    np.testing.assert_array_equal(dx_out, dx_new)
    in_place = x.copy()
    relu_forward(in_place, out=in_place)
    np.testing.assert_array_equal(in_place, y_new)
    dy_in_place = dy.copy()
    relu_backward(dy_in_place, y_new, out=dy_in_place)
    np.testing.assert_array_equal(dy_in_place, dx_new)


def test_relu_rejects_bad_out_buffers(rng):
    x = rng.standard_normal((4, 6))
    with pytest.raises(ValueError, match="out: expected shape"):
        relu_forward(x, out=np.empty((4, 5)))
    with pytest.raises(ValueError, match="out: expected shape .* and dtype float64, got .* float32"):
        relu_forward(x, out=np.empty((4, 6), dtype=np.float32))
    with pytest.raises(ValueError, match="C-contiguous"):
        relu_forward(x, out=np.empty((6, 4)).T)
    with pytest.raises(ValueError, match="overlaps an input partially"):
        big = np.zeros(30)
        relu_forward(big[:24].reshape(4, 6), out=big[6:].reshape(4, 6))
