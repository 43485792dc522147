"""Theorem 4.1, Theorem 4.2 and Lemma 4.5, evaluated on random BatchNorm layers and toy problems in float64."""

import math

import numpy as np
import pytest

from smoothnorm import measure


@pytest.mark.parametrize("shape", [(16, 5), (4, 3, 3, 2), (2, 6)])
def test_theorem_4_1_derived_bound_holds_printed_one_fails(rng, shape):
    for _ in range(5):
        y = rng.normal(rng.normal(0, 2), math.exp(rng.normal()), size=shape)
        upstream = rng.standard_normal(shape)
        gamma = rng.uniform(0.2, 3.0, size=shape[1])
        result = measure.theorem_4_1(y, upstream, gamma)
        assert result.m == y.size // shape[1]
        assert result.holds_derived.all()
        np.testing.assert_array_less(result.lhs, result.rhs_derived * (1 + 1e-10))
        # The printed 1/sqrt(m) subtracts more than the truth whenever <g, y_hat> != 0: the bound fails.
        aligned = result.alignment_sq > 1e-6 * result.grad_norm_sq
        assert aligned.any()
        assert not result.holds_printed[aligned].any()
        # With (almost) no eps the derived bound is an equality: the gradient is a projection of g_hat.
        tight = measure.theorem_4_1(y, upstream, gamma, eps=1e-300)
        scale = (tight.gamma / tight.sigma) ** 2 * tight.grad_norm_sq  # cancellation happens at this scale
        np.testing.assert_allclose(tight.lhs, tight.rhs_derived, rtol=1e-9, atol=1e-12 * scale.max())


def test_theorem_4_1_at_a_network_layer(tiny_vgg_batch):
    net, x, y = tiny_vgg_batch
    for layer in ("features.1", "features.16"):
        result = measure.theorem_4_1_network(net, x, y, layer)
        assert result.holds_derived.all()
        assert result.lhs.shape == (net[layer].num_features,)
        np.testing.assert_allclose(result.gamma, net[layer].params["weight"])
    with pytest.raises(ValueError, match="BatchNorm"):
        measure.theorem_4_1_network(net, x, y, "features.0")
    with pytest.raises(ValueError, match="unknown layer"):
        measure.theorem_4_1_network(net, x, y, "features.99")


def bn_loss_gradient(y, gamma, beta, a, t):
    """grad_y of 1/2 (z - t)^T A (z - t) with z = gamma (y - mean) / std + beta, by the chain rule in full."""
    m = y.size
    c = y - y.mean()
    sigma = math.sqrt(c @ c / m)
    y_hat = c / sigma
    g = a @ (gamma * y_hat + beta - t)
    jacobian = (gamma / sigma) * (np.eye(m) - 1.0 / m - np.outer(y_hat, y_hat) / m)
    return jacobian.T @ g


def test_theorem_4_2_exact_curvature_and_first_bound(rng):
    m = 12
    for _ in range(5):
        y = rng.normal(1.0, 2.0, size=m)
        b = rng.standard_normal((m, m))
        a, t = b @ b.T / m, rng.standard_normal(m)
        gamma, beta = rng.uniform(0.5, 2), rng.normal()
        result = measure.theorem_4_2(y, gamma, beta, lambda z, a=a, t=t: a @ (z - t), lambda z, a=a: a)
        u = bn_loss_gradient(y, gamma, beta, a, t)
        h = 1e-5
        numeric = u @ (bn_loss_gradient(y + h * u, gamma, beta, a, t) - bn_loss_gradient(y - h * u, gamma, beta, a, t))
        numeric /= 2 * h
        assert result.lhs == pytest.approx(numeric, rel=1e-6)
        # At eps = 0 the first bound is an equality.
        assert result.lhs == pytest.approx(result.rhs_first, rel=1e-9)
        assert result.holds_first


def test_theorem_4_2_toy_arrays(rng):
    draws = measure.theorem_4_2_toy(rng, m=16, num_draws=20)
    assert set(draws) >= {"lhs", "rhs_first", "rhs_second", "alignment", "holds_first"}
    assert draws["lhs"].shape == (20,)
    np.testing.assert_allclose(draws["lhs"], draws["rhs_first"], rtol=1e-8)
    identity = measure.theorem_4_2_toy(rng, m=16, num_draws=5, hessian="identity", eps=1e-5)
    assert identity["lhs"].shape == (5,)
    with pytest.raises(ValueError, match="hessian"):
        measure.theorem_4_2_toy(rng, hessian="random")


def test_lemma_4_5_toy(rng):
    out = measure.lemma_4_5_toy(rng, dim=6, samples=64, num_draws=50)
    applies = out["applies"]
    assert applies.any() and (~applies).any()
    np.testing.assert_allclose(out["distance_bn"][applies], out["bound"][applies], rtol=1e-10)
    assert np.all(out["distance_bn"] <= out["distance_standard"] + 1e-12)
    # Both w* and k* w* are optima of the BN network (up to BatchNorm's eps).
    assert np.nanmax(out["bn_loss_standard_optimum"]) < 1e-4
    assert np.nanmax(out["bn_loss_closest_optimum"][applies]) < 1e-4
