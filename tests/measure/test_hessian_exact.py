"""Exact Hessian-vector products (the R-operator) against PyTorch's double backprop, on networks with kinks.

Directions: random ones, and the ones ten steps of power iteration reach (where finite differences across ReLU and
max-pool kinks went wrong by orders of magnitude, issue 10). Eigenvalues and traces against SciPy's eigsh and
Hutchinson's estimator over the PyTorch operator with the same probes.
"""

import numpy as np
import pytest
from scipy.sparse.linalg import LinearOperator, eigsh

from smoothnorm import measure
from smoothnorm.nn import models

torch = pytest.importorskip("torch")
from tests.torch_twin import TorchHessian  # noqa: E402

pytestmark = pytest.mark.torch


def _rel(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _vgg_case(norm, rng, mode="probe"):
    net = models.vgg("vgg11", norm=norm, width=1 / 16, dtype=np.float64, seed=int(rng.integers(1000)))
    x = rng.standard_normal((6, 3, 32, 32))
    y = rng.integers(0, 10, size=6)
    if mode == "eval":  # non-trivial running statistics
        for _ in range(3):
            net.loss_and_grad(rng.standard_normal((6, 3, 32, 32)), y, mode="train")
    return net, x, y


def _mlp_case(norm, rng, mode="probe"):
    options = {"groups": 2} if norm == "group" else None
    net = models.mlp(12, [10, 8], 4, norm=norm, dtype=np.float64, seed=int(rng.integers(1000)), norm_options=options)
    x = rng.standard_normal((16, 12))
    y = rng.integers(0, 4, size=16)
    if mode == "eval":
        for _ in range(3):
            net.loss_and_grad(rng.standard_normal((16, 12)), y, mode="train")
    return net, x, y


VGG_CASES = [(None, "probe"), ("batch", "probe"), ("batch", "eval"), ("l1", "probe"), ("linf", "probe")]
MLP_CASES = [(None, "probe"), ("batch", "probe"), ("batch", "eval"), ("noisy_batch", "probe"), ("l1", "probe"),
             ("l2", "probe"), ("l2", "eval"), ("linf", "probe"), ("layer", "probe"), ("group", "probe")]


def _power_directions(apply, n, rng, steps=10):
    """The directions that `steps` normalized power-iteration steps on `apply` visit (the last one included)."""
    v = rng.standard_normal(n)
    visited = []
    for _ in range(steps):
        v = apply(v)
        v /= np.linalg.norm(v)
        visited.append(v.copy())
    return visited


def _check_products(net, x, y, mode, rng):
    ours = measure.hessian_operator(net, x, y, mode=mode)
    theirs = TorchHessian(net, x, y, mode=mode)
    assert ours.loss == pytest.approx(theirs.loss.item(), rel=1e-12)
    directions = [rng.standard_normal(net.num_params) for _ in range(2)]
    directions += _power_directions(theirs, net.num_params, rng)[-3:]
    for v in directions:
        assert _rel(ours.matvec(v), theirs(v)) < 1e-8


@pytest.mark.parametrize("norm,mode", VGG_CASES)
def test_vgg_products_match_double_backprop(norm, mode, rng):
    _check_products(*_vgg_case(norm, rng, mode), mode, rng)


@pytest.mark.parametrize("norm,mode", MLP_CASES)
def test_mlp_products_match_double_backprop(norm, mode, rng):
    _check_products(*_mlp_case(norm, rng, mode), mode, rng)


@pytest.mark.parametrize("activation", ["sigmoid", "tanh", "identity"])
@pytest.mark.parametrize("norm,position", [(None, "before_activation"), ("batch", "before_activation"),
                                           ("batch", "after_activation")])
def test_mlp_activations_products_match_double_backprop(activation, norm, position, rng):
    net = models.mlp(12, [10, 8], 4, norm=norm, activation=activation, norm_position=position, dtype=np.float64,
                     seed=int(rng.integers(1000)))
    x, y = rng.standard_normal((16, 12)), rng.integers(0, 4, size=16)
    _check_products(net, x, y, "probe", rng)


def test_regression_dln_products_match_double_backprop(rng):
    net = models.dln(5, 6, in_dim=4, out_dim=3, norm="batch", seed=2)
    x, t = rng.standard_normal((20, 4)), rng.standard_normal((20, 3))
    _check_products(net, x, t, "probe", rng)


def test_central_differences_fail_where_exact_products_do_not(rng):
    """The bug of issue 10, kept as a test: along power-iteration directions of a ReLU/max-pool VGG, central
    differences of the gradient are far from double backprop while the R-operator is not."""
    net, x, y = _vgg_case(None, rng)
    theirs = TorchHessian(net, x, y)
    exact = measure.hessian_operator(net, x, y)
    central = measure.hessian_operator(net, x, y, scheme="central")
    v = _power_directions(theirs, net.num_params, rng)[-1]
    assert _rel(exact.matvec(v), theirs(v)) < 1e-8
    assert _rel(central.matvec(v), theirs(v)) > 1e-3


@pytest.mark.parametrize("norm,mode", [(None, "probe"), ("batch", "probe"), ("batch", "eval")])
def test_top_eigenvalue_and_trace_match_pytorch_operator(norm, mode, rng):
    net, x, y = _vgg_case(norm, rng, mode)
    theirs = TorchHessian(net, x, y, mode=mode)
    n = net.num_params
    torch_op = LinearOperator((n, n), matvec=theirs, dtype=np.float64)
    v0 = np.random.default_rng(5).standard_normal(n)
    expected = eigsh(torch_op, k=1, which="LA", tol=1e-12, v0=v0, return_eigenvectors=False)[0]
    top = measure.hessian_top_eigenvalues(net, x, y, k=1, tol=1e-12, seed=np.random.default_rng(5), mode=mode)
    assert top[0] == pytest.approx(expected, rel=1e-6)
    trace = measure.hessian_trace(net, x, y, num_probes=8, seed=3, mode=mode)
    expected_trace = measure.hutchinson_trace(torch_op, 8, seed=3)
    assert trace.trace == pytest.approx(expected_trace.trace, rel=1e-6)


def test_exact_products_leave_the_network_unchanged_and_repeat(rng):
    net, x, y = _vgg_case("batch", rng)
    before = {k: v.copy() for k, v in net.state_dict().items()}
    grads = net.grads.copy()
    op = measure.hessian_operator(net, x, y)
    v = rng.standard_normal(net.num_params)
    first = op.matvec(v)
    op.matvec(rng.standard_normal(net.num_params))
    np.testing.assert_array_equal(op.matvec(v), first)
    for key, value in net.state_dict().items():
        np.testing.assert_array_equal(value, before[key])
    np.testing.assert_array_equal(net.grads, grads)


def test_subset_products_are_the_full_product_restricted(rng):
    net, x, y = _mlp_case("batch", rng)
    names = ["layers.0.weight", "layers.1"]
    sub = measure.hessian_operator(net, x, y, params=names)
    full = measure.hessian_operator(net, x, y)
    slices = [net.param_slices()["layers.0.weight"], net.layer_slices()["layers.1"]]
    v = rng.standard_normal(sub.shape[0])
    embedded = np.zeros(net.num_params)
    embedded[slices[0]] = v[: slices[0].stop - slices[0].start]
    embedded[slices[1]] = v[slices[0].stop - slices[0].start:]
    hv = full.matvec(embedded)
    np.testing.assert_allclose(sub.matvec(v), np.concatenate([hv[s] for s in slices]), rtol=1e-12, atol=1e-14)
