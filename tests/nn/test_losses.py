"""Mean squared error against one-hot targets (issue 15 item 4's loss): value against a reference, gradient and
its R-operator against central finite differences, exact Hessian products in a network against finite differences."""

import numpy as np
import pytest

from smoothnorm import measure, nn
from tests.reference import central_difference, onehot_squared_error_ref, relative_error


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_value_and_gradient_match_reference_and_finite_differences(rng, dtype):
    out = rng.standard_normal((7, 4)).astype(dtype)
    y = rng.integers(0, 4, 7)
    loss_fn = nn.OneHotSquaredError()
    loss = loss_fn.forward(out, y)
    assert loss == pytest.approx(onehot_squared_error_ref(out, y), rel=1e-6 if dtype == np.float32 else 1e-12)
    grad = loss_fn.backward()
    assert grad.dtype == dtype and grad.shape == out.shape
    numeric = central_difference(lambda o: onehot_squared_error_ref(o, y), out.astype(np.float64))
    assert relative_error(grad, numeric) < (1e-5 if dtype == np.float32 else 1e-8)


def test_backward_r_is_the_directional_derivative_of_the_gradient(rng):
    out, y, r = rng.standard_normal((5, 3)), rng.integers(0, 3, 5), rng.standard_normal((5, 3))
    loss_fn = nn.OneHotSquaredError()

    def grad_at(t):
        loss_fn.forward(out + t * r, y)
        return loss_fn.backward()

    numeric = (grad_at(1e-5) - grad_at(-1e-5)) / 2e-5
    loss_fn.forward(out, y)
    assert relative_error(loss_fn.backward_r(r), numeric) < 1e-8


def test_bad_labels_are_named():
    net = nn.Network([("fc", nn.Linear(3, 2))], input_shape=(3,), loss=nn.OneHotSquaredError(), dtype=np.float64)
    with pytest.raises(ValueError, match="y"):
        net.loss(np.zeros((2, 3)), np.array([0, 2]))


def test_exact_hessian_products_in_a_network_match_central_differences(rng):
    net = nn.Network([("fc1", nn.Linear(3, 5)), ("act", nn.ReLU()), ("fc2", nn.Linear(5, 4))], input_shape=(3,),
                     loss=nn.OneHotSquaredError(), dtype=np.float64, seed=4)
    x, y = rng.standard_normal((9, 3)), rng.integers(0, 4, 9)
    # Only the last layer's weights: the loss is quadratic in them, so differences are exact up to rounding
    # and no ReLU kink is crossed.
    exact = measure.hessian_operator(net, x, y, params=["fc2"], scheme="exact")
    central = measure.hessian_operator(net, x, y, params=["fc2"], scheme="central")
    for _ in range(3):
        v = rng.standard_normal(exact.shape[0])
        assert relative_error(exact.matvec(v), central.matvec(v)) < 1e-6
    # And in closed form: for fc2.weight (C, H) the Hessian is kron(I_C, h^T h / N) with h the hidden activations.
    net.forward(x, "probe", capture=["act"])
    h = net.captured["act"].copy()
    dense = measure.dense_hessian(net, x, y, params=["fc2.weight"])
    np.testing.assert_allclose(dense, np.kron(np.eye(4), h.T @ h / 9), rtol=1e-10, atol=1e-12)
