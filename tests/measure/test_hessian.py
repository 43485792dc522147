"""Hessian-vector products, eigenvalues, trace and spectral density against dense Hessians."""

import numpy as np
import pytest
from scipy.sparse.linalg import LinearOperator

from smoothnorm import measure
from smoothnorm.nn import models
from tests.helpers import linear_model, regression_batch
from tests.reference import (
    assert_unchanged,
    dense_hessian_reference,
    linear_regression_hessian,
    relative_error,
    snapshot,
)


def tiny_networks(rng):
    """Small nonlinear networks: an MLP with BatchNorm and ReLU (classification) and a BN deep linear network."""
    mlp = models.mlp(4, [5], 3, norm="batch", dtype=np.float64, seed=int(rng.integers(1000)))
    x = rng.standard_normal((16, 4))
    labels = rng.integers(0, 3, size=16)
    dln = models.dln(3, 4, in_dim=3, out_dim=2, norm="batch", seed=int(rng.integers(1000)))
    xd, td = regression_batch(rng, n=12, in_dim=3, out_dim=2)
    return [(mlp, x, labels), (dln, xd, td)]


def test_top_eigenvalues_match_dense_hessian(rng):
    for net, x, y in tiny_networks(rng):
        dense = dense_hessian_reference(net, x, y)
        expected = np.sort(np.linalg.eigvalsh(dense))[::-1][:3]
        snap = snapshot(net)
        lanczos = measure.hessian_top_eigenvalues(net, x, y, k=3, tol=1e-10)
        power = measure.hessian_top_eigenvalues(net, x, y, k=3, method="power", tol=1e-7, maxiter=3000)
        assert_unchanged(net, snap)
        assert relative_error(lanczos, expected) < 1e-5
        assert relative_error(power, expected) < 1e-5
        assert np.all(np.diff(lanczos) <= 0)
        assert measure.hessian_min_eigenvalue(net, x, y, tol=1e-10) == pytest.approx(
            np.linalg.eigvalsh(dense)[0], rel=1e-5, abs=1e-5 * np.abs(expected[0]))
        assert relative_error(measure.dense_hessian(net, x, y), dense) < 1e-6


def test_linear_regression_closed_form(rng):
    net = linear_model(5, 3)
    x, t = regression_batch(rng, n=30, in_dim=5, out_dim=3)
    exact = linear_regression_hessian(x, 3)
    assert relative_error(measure.dense_hessian(net, x, t), exact) < 1e-8
    v = rng.standard_normal(15)
    assert relative_error(measure.hessian_vector_product(net, x, t, v), exact @ v) < 1e-8
    top = measure.hessian_top_eigenvalues(net, x, t, k=2)
    np.testing.assert_allclose(top, np.sort(np.linalg.eigvalsh(exact))[::-1][:2], rtol=1e-6)


def test_hutchinson_trace_within_five_percent(rng):
    net = linear_model(5, 3)
    x, t = regression_batch(rng, n=200, in_dim=5, out_dim=3)
    exact = np.trace(linear_regression_hessian(x, 3))
    estimate = measure.hessian_trace(net, x, t, num_probes=200, seed=0)
    assert estimate.trace == pytest.approx(exact, rel=0.05)
    assert estimate.samples.shape == (200,) and estimate.stderr > 0


def test_parameter_subset_is_a_block_of_the_full_hessian(rng):
    net, x, y = tiny_networks(rng)[1]
    full = measure.dense_hessian(net, x, y)
    slices = net.param_slices()
    s1, s2 = net.layer_slices()["layers.0"], slices["norms.1.weight"]
    idx = np.r_[s1, s2]
    block = measure.dense_hessian(net, x, y, params=["norms.1.weight", "layers.0"])
    assert relative_error(block, full[np.ix_(idx, idx)]) < 1e-6
    with pytest.raises(ValueError, match="unknown names"):
        measure.hessian_operator(net, x, y, params=["features.0"])
    with pytest.raises(ValueError, match="non-overlapping"):
        measure.hessian_operator(net, x, y, params=["layers.0", "layers.0.weight"])


def test_float32_network_is_measured_in_a_float64_copy(rng):
    net64 = models.dln(3, 4, in_dim=3, out_dim=2, norm="batch", seed=5)
    net32 = models.dln(3, 4, in_dim=3, out_dim=2, norm="batch", seed=5, dtype=np.float32)
    net64.params[:] = net32.params  # the same (float32-representable) point
    x, t = regression_batch(rng, n=12, in_dim=3, out_dim=2)
    op = measure.hessian_operator(net32, x, t)
    assert op.net.dtype == np.float64 and op.net.params.dtype == np.float64
    assert op.net["layers.1"].params["weight"].base is not None  # views rebound into the float64 vector
    assert np.shares_memory(op.net["layers.1"].params["weight"], op.net.params)
    assert op.net["norms.0"].running_mean.dtype == np.float64
    snap = snapshot(net32)
    top32 = measure.hessian_top_eigenvalues(net32, x, t, k=2)
    assert_unchanged(net32, snap)
    np.testing.assert_allclose(top32, measure.hessian_top_eigenvalues(net64, x, t, k=2), rtol=1e-6)


def symmetric(rng, n, negative=False):
    q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    values = rng.uniform(0.5, 10, size=n)
    if negative:
        values[: n // 2] *= -1.5
    return (q * values) @ q.T, np.sort(values)[::-1]


def test_generic_routines_on_dense_matrices(rng):
    a, values = symmetric(rng, 30, negative=True)
    np.testing.assert_allclose(measure.top_eigenvalues(a, 3), values[:3], rtol=1e-8)
    np.testing.assert_allclose(measure.top_eigenvalues(a, 3, method="power", tol=1e-10, maxiter=5000),
                               values[:3], rtol=1e-8)
    by_magnitude = values[np.argsort(-np.abs(values))][:2]
    np.testing.assert_allclose(measure.power_iteration(a, 2, tol=1e-10, maxiter=5000), by_magnitude, rtol=1e-8)
    np.testing.assert_allclose(measure.top_eigenvalues(a[:2, :2], 2), np.sort(np.linalg.eigvalsh(a[:2, :2]))[::-1])
    op = LinearOperator(a.shape, matvec=lambda v: a @ v, dtype=np.float64)
    alpha, beta = measure.lanczos_tridiagonal(op, rng.standard_normal(30), 30)
    t = np.diag(alpha) + np.diag(beta, 1) + np.diag(beta, -1)
    np.testing.assert_allclose(np.sort(np.linalg.eigvalsh(t))[::-1], values, rtol=1e-8, atol=1e-8)
    with pytest.raises(ValueError, match="k"):
        measure.top_eigenvalues(a, 31)


def test_spectral_density_quadrature_is_exact_for_low_moments(rng):
    a, values = symmetric(rng, 40, negative=True)
    density = measure.spectral_density(a, num_probes=4, lanczos_steps=8, seed=3)
    assert density.nodes.shape == (4, 8)
    np.testing.assert_allclose(density.weights.sum(axis=1), 1.0, rtol=1e-12)
    # Gauss quadrature with m nodes is exact for polynomials of degree < 2m: v^T A^k v / v^T v for a
    # Rademacher v (v^T v = n).
    probes = np.random.default_rng(3)
    for p in range(4):
        v = probes.choice(np.array([-1.0, 1.0]), size=40)
        for k in (1, 2, 5):
            exact = v @ np.linalg.matrix_power(a, k) @ v / 40
            assert (density.weights[p] * density.nodes[p] ** k).sum() == pytest.approx(exact, rel=1e-8)
    grid = np.linspace(values.min() - 5, values.max() + 5, 2001)
    mass = np.trapezoid(density.density(grid, sigma=0.3), grid)
    assert mass == pytest.approx(1.0, rel=1e-3)


def test_hessian_spectral_density_on_a_network(rng):
    net = linear_model(4, 2)
    x, t = regression_batch(rng, n=20, in_dim=4, out_dim=2)
    exact = linear_regression_hessian(x, 2)
    density = measure.hessian_spectral_density(net, x, t, num_probes=2, lanczos_steps=8)
    # The Hessian 2 I (kron) X^T X has each eigenvalue twice; with exact products Lanczos finds the invariant
    # subspace after one step per distinct eigenvalue, so the nodes are the distinct eigenvalues (NaN-padded).
    distinct = np.linalg.eigvalsh(exact)[::2]
    np.testing.assert_allclose(np.linalg.eigvalsh(exact)[1::2], distinct, rtol=1e-10)
    for nodes in density.nodes:
        np.testing.assert_allclose(np.sort(nodes[np.isfinite(nodes)]), distinct, rtol=1e-8)


def test_forward_scheme_is_close_to_central(rng):
    net, x, y = tiny_networks(rng)[1]
    central = measure.hessian_operator(net, x, y)
    forward = measure.hessian_operator(net, x, y, scheme="forward")
    v = rng.standard_normal(net.num_params)
    assert relative_error(forward.matvec(v), central.matvec(v)) < 1e-6
    assert forward.matvec_count == central.matvec_count == 1
    with pytest.raises(ValueError, match="scheme"):
        measure.hessian_operator(net, x, y, scheme="backward")
