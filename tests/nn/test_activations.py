"""Sigmoid, Tanh and Identity layers (R-operators included) and the activation= / norm_position= model options."""

import numpy as np
import pytest

from smoothnorm import nn
from smoothnorm.nn import models
from tests.helpers import check_gradient
from tests.reference import activation_ref, relative_error

LAYERS = {"sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "identity": nn.Identity}


@pytest.mark.parametrize("activation", list(LAYERS))
def test_layer_r_operators_match_finite_differences(rng, activation):
    """forward_r and backward_r of a layer against central differences of forward and backward."""
    layer = LAYERS[activation]()
    x, rx, dy, rdy = (rng.standard_normal((3, 2, 4, 4)) for _ in range(4))
    eps = 1e-6

    def forward_backward(t):
        y = layer.forward(x + t * rx, "train").copy()
        return y, layer.backward(dy + t * rdy).copy()

    (yp, dxp), (ym, dxm) = forward_backward(eps), forward_backward(-eps)
    y = layer.forward(x, "train")
    np.testing.assert_allclose(y, activation_ref(x, activation), rtol=1e-15, atol=1e-16)
    ry = layer.forward_r(rx, {})
    dx, rdx = layer.backward_r(dy, rdy, {})
    assert relative_error(ry, (yp - ym) / (2 * eps)) < 1e-7
    assert relative_error(rdx, (dxp - dxm) / (2 * eps)) < 1e-6
    np.testing.assert_array_equal(dx, layer.backward(dy))
    assert layer.backward_r(dy, rdy, {}, need_dx=False) == (None, None)
    assert layer.forward_r(None, {}) is None  # a zero input direction: no curvature term
    np.testing.assert_allclose(layer.backward_r(dy, rdy, {})[1], layer.backward(rdy), rtol=1e-14, atol=1e-300)


def test_r_operators_need_their_forward_first():
    layer = nn.Tanh()
    layer.name = "layers.1"
    with pytest.raises(RuntimeError, match="layers.1: forward_r called before forward"):
        layer.forward_r(np.ones(3), {})
    layer.forward(np.ones(3), "train")
    with pytest.raises(RuntimeError, match="layers.1: backward_r called before forward_r"):
        layer.backward_r(np.ones(3), np.ones(3), {})


@pytest.mark.parametrize("activation", ["sigmoid", "tanh", "identity"])
@pytest.mark.parametrize("norm_position", ["before_activation", "after_activation"])
def test_mlp_gradient_matches_finite_differences(rng, activation, norm_position):
    net = models.mlp(6, [5, 4], 3, norm="batch", activation=activation, norm_position=norm_position,
                     dtype=np.float64, seed=int(rng.integers(1000)))
    x = rng.standard_normal((8, 6))
    y = rng.integers(0, 3, size=8)
    assert check_gradient(net, x, y, rng, n_coords=20) < 1e-6


@pytest.mark.parametrize("activation", ["sigmoid", "tanh"])
def test_vgg_gradient_matches_finite_differences(rng, activation):
    net = models.vgg("vgg11", norm="batch", width=1 / 16, activation=activation, norm_position="after_activation",
                     dtype=np.float64, seed=int(rng.integers(1000)))
    x = rng.standard_normal((3, 3, 32, 32))
    y = rng.integers(0, 10, size=3)
    assert check_gradient(net, x, y, rng, n_coords=12) < 1e-6


def test_norm_position_orders_the_layers_and_state_dict():
    before = models.mlp(4, [3, 3], 2, norm="batch", activation="sigmoid")
    after = models.mlp(4, [3, 3], 2, norm="batch", activation="sigmoid", norm_position="after_activation")
    kinds = [type(la).__name__ for la in before.layers]
    assert kinds == ["Linear", "BatchNorm", "Sigmoid", "Linear", "BatchNorm", "Sigmoid", "Linear"]
    assert [type(la).__name__ for la in after.layers] == [
        "Linear", "Sigmoid", "BatchNorm", "Linear", "Sigmoid", "BatchNorm", "Linear"]
    assert [la.name for la in after.layers] == [f"layers.{i}" for i in range(7)]
    assert list(after.state_dict())[:4] == ["layers.0.weight", "layers.0.bias", "layers.2.weight", "layers.2.bias"]
    net = models.vgg("vgg11", norm="layer", width=1 / 16, activation="tanh", norm_position="after_activation")
    assert [type(la).__name__ for la in net.layers[:4]] == ["Conv2d", "Tanh", "LayerNorm", "MaxPool2d"]
    # Without a norm the position changes nothing.
    plain = models.vgg("vgg11", width=1 / 16, norm_position="after_activation")
    assert [type(la).__name__ for la in plain.layers[:3]] == ["Conv2d", "ReLU", "MaxPool2d"]


def test_dln_activation(rng):
    linear = models.dln(3, 4, in_dim=3, out_dim=2, norm="batch")
    assert not any(isinstance(la, nn.Identity) for la in linear.layers)  # the paper's DLN: no activation layers
    net = models.dln(3, 4, in_dim=3, out_dim=2, norm="batch", activation="tanh")
    assert [la.name for la in net.layers] == [
        "layers.0", "norms.0", "activations.0", "layers.1", "norms.1", "activations.1", "layers.2"]
    np.testing.assert_array_equal(net.params, linear.params)  # the same weights: activations have none
    x, y = rng.standard_normal((6, 3)), rng.standard_normal((6, 2))
    assert check_gradient(net, x, y, rng) < 1e-6


def test_bad_options_name_the_argument():
    with pytest.raises(ValueError, match=r"activation: expected one of .*'sigmoid'.*got 'gelu'"):
        models.mlp(4, [3], 2, activation="gelu")
    with pytest.raises(ValueError, match=r"norm_position: expected one of .*'after_activation'.*got 'after'"):
        models.vgg("vgg11", width=1 / 16, norm_position="after")
    with pytest.raises(ValueError, match=r"activation: expected one of .*got 'softmax'"):
        models.dln(2, 3, in_dim=2, out_dim=2, activation="softmax")


@pytest.mark.parametrize("activation", ["sigmoid", "tanh"])
def test_exact_hessian_vector_products_through_smooth_activations(rng, activation):
    """The network's exact (R-operator) Hessian-vector product against central differences of the gradient."""
    from smoothnorm.measure import hessian

    net = models.mlp(5, [4, 4], 3, norm="batch", activation=activation, dtype=np.float64,
                     seed=int(rng.integers(1000)))
    x, y = rng.standard_normal((8, 5)), rng.integers(0, 3, 8)
    v = rng.standard_normal(net.num_params)
    exact = hessian.hessian_vector_product(net, x, y, v)
    eps = 1e-5
    w0 = net.params.copy()
    grads = []
    for sign in (1, -1):
        net.params[:] = w0 + sign * eps * v
        grads.append(net.loss_and_grad(x, y, mode="probe")[1].copy())
    net.params[:] = w0
    assert relative_error(exact, (grads[0] - grads[1]) / (2 * eps)) < 1e-6


def test_relu_layer_reuses_its_buffers_and_follows_shape_changes(rng):
    from smoothnorm.nn.layers import ReLU

    layer = ReLU()
    x1, x2 = rng.standard_normal((2, 3, 4, 4)), rng.standard_normal((2, 3, 4, 4))
    y1 = layer.forward(x1, "train")
    np.testing.assert_array_equal(y1, np.maximum(x1, 0))
    y2 = layer.forward(x2, "train")
    assert y2 is y1  # the same buffer: outputs are valid until the layer's next call
    np.testing.assert_array_equal(y2, np.maximum(x2, 0))
    dy = rng.standard_normal(x2.shape)
    np.testing.assert_array_equal(layer.backward(dy), np.where(x2 > 0, dy, 0.0))
    x3 = rng.standard_normal((5, 3, 4, 4)).astype(np.float32)  # another batch size and dtype: new buffers
    y3 = layer.forward(x3, "train")
    assert y3.dtype == np.float32 and y3.shape == x3.shape
    np.testing.assert_array_equal(y3, np.maximum(x3, 0))
