"""The spectrum probe's computations (Ghorbani et al. 2019) against dense Hessians: top-k eigenvalues, lambda_1 /
lambda_k, the gradient's share in the top-k eigenspace, and the SLQ density's nodes and weights."""

import numpy as np
import pytest

from smoothnorm import measure
from smoothnorm.measure.spectrum import gradient_share, hessian_spectrum, top_eigenpairs
from smoothnorm.nn import models
from smoothnorm.nn.norms.batch import refresh_population_statistics


def _mlp_case(norm, rng):
    options = {"statistics": "population"} if norm == "population" else None
    net = models.mlp(4, [6], 3, norm=None if norm == "none" else "batch", norm_options=options,
                     dtype=np.float64, seed=int(rng.integers(1000)))
    net.params[:] += 0.2 * rng.standard_normal(net.num_params)
    x, y = rng.standard_normal((10, 4)), rng.integers(0, 3, 10)
    if norm == "population":
        refresh_population_statistics(net, rng.standard_normal((32, 4)))
    return net, x, y


def test_top_eigenpairs_match_a_dense_eigendecomposition(rng):
    a = rng.standard_normal((40, 40))
    a = a + a.T
    values, vectors = np.linalg.eigh(a)
    got_values, got_vectors = top_eigenpairs(a, 5, seed=1)
    np.testing.assert_allclose(got_values, values[::-1][:5], rtol=1e-8)
    overlap = np.abs(got_vectors.T @ vectors[:, ::-1][:, :5])
    np.testing.assert_allclose(overlap, np.eye(5), atol=1e-6)
    small_values, small_vectors = top_eigenpairs(a[:3, :3], 2)  # dense path
    np.testing.assert_allclose(small_values, np.linalg.eigvalsh(a[:3, :3])[::-1][:2], rtol=1e-12)
    assert small_vectors.shape == (3, 2)
    with pytest.raises(ValueError, match="k: expected"):
        top_eigenpairs(a, 41)


def test_gradient_share_is_the_squared_projection_over_the_squared_norm():
    vectors = np.eye(3)[:, :1]
    assert gradient_share(vectors, np.array([3.0, 4.0, 0.0])) == pytest.approx(9 / 25)
    assert gradient_share(np.eye(3), np.array([1.0, -2.0, 5.0])) == pytest.approx(1.0)
    assert np.isnan(gradient_share(vectors, np.zeros(3)))
    with pytest.raises(ValueError, match="vectors: expected shape"):
        gradient_share(vectors, np.ones(4))


@pytest.mark.parametrize("norm", ["none", "batch", "population"])
def test_spectrum_matches_the_dense_hessian(rng, norm):
    net, x, y = _mlp_case(norm, rng)
    before = net.params.copy()
    k = 3
    result = hessian_spectrum(net, x, y, k, num_probes=2, lanczos_steps=30, seed=5)
    np.testing.assert_array_equal(net.params, before)
    h = measure.dense_hessian(net, x, y)
    values, vectors = np.linalg.eigh(h)
    values, vectors = values[::-1], vectors[:, ::-1]
    np.testing.assert_allclose(result.top_eigenvalues, values[:k], rtol=1e-6, atol=1e-10)
    assert result.outlier_ratio == pytest.approx(values[0] / values[k - 1], rel=1e-6)
    loss, g = net.loss_and_grad(x, y, mode="probe")
    g = g.astype(np.float64)
    assert result.grad_norm == pytest.approx(np.linalg.norm(g), rel=1e-10)
    assert result.loss == pytest.approx(loss, rel=1e-10)
    share = np.sum((vectors[:, :k].T @ g) ** 2) / (g @ g)
    assert result.gradient_share == pytest.approx(share, rel=1e-5, abs=1e-9)
    assert 0.0 <= result.gradient_share <= 1.0 + 1e-12
    # SLQ: per probe, weights sum to one, nodes lie in the spectrum, the largest Ritz value is lambda_1.
    nodes, weights = result.density.nodes, result.density.weights
    assert nodes.shape == weights.shape == (2, 30)
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, rtol=1e-10)
    finite = nodes[np.isfinite(nodes)]
    assert finite.min() >= values[-1] - 1e-8 * abs(values[0]) and finite.max() <= values[0] * (1 + 1e-8)
    np.testing.assert_allclose(np.nanmax(nodes, axis=1), values[0], rtol=1e-6)


def test_population_and_batch_statistics_give_different_spectra(rng):
    """The same weights and batch: held statistics remove the Hessian terms through the batch statistics."""
    net, x, y = _mlp_case("population", rng)
    refresh_population_statistics(net, x)  # the batch's own statistics: same point, same loss
    batch_net = models.mlp(4, [6], 3, norm="batch", dtype=np.float64)
    batch_net.params[:] = net.params
    pop = hessian_spectrum(net, x, y, 3, lanczos_steps=10)
    bat = hessian_spectrum(batch_net, x, y, 3, lanczos_steps=10)
    assert pop.loss == pytest.approx(bat.loss, rel=1e-10)
    assert pop.grad_norm != pytest.approx(bat.grad_norm, rel=1e-3)
    assert not np.allclose(pop.top_eigenvalues, bat.top_eigenvalues, rtol=1e-3)
