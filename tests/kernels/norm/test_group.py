"""Group normalization kernels (layer norm = 1 group, instance norm = C groups): forward against a float64
reference, backward against central finite differences, determinism, NaN propagation, bad inputs, and optional
parity with torch.nn.functional."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smoothnorm.kernels.norm.group import group_norm_backward, group_norm_forward
from tests.helpers import assert_out_and_in_place, assert_same_at_thread_counts
from tests.reference import central_difference, group_norm_reference, relative_error

# (shape, groups): layer (1), group, instance (C) on 2D and 4D inputs; odd sizes exercise the 4-lane tails.
CASES = [
    ((5, 6), 1), ((5, 6), 3), ((5, 6), 6), ((2, 4, 3, 5), 1), ((2, 4, 3, 5), 2), ((2, 4, 3, 5), 4),
    ((3, 8, 1, 1), 2), ((20, 64, 4, 4), 32), ((1, 6, 7, 7), 3), ((40, 3, 2, 2), 3),
]
SMALL = [((4, 6), 1), ((4, 6), 2), ((2, 4, 2, 3), 1), ((2, 4, 2, 3), 2), ((2, 4, 2, 3), 4)]


def _affine(rng, channels, dtype=np.float64):
    return (1.0 + 0.5 * rng.standard_normal(channels)).astype(dtype), rng.standard_normal(channels).astype(dtype)


def _input(rng, shape, dtype=np.float64):
    return (2.0 + 1.5 * rng.standard_normal(shape)).astype(dtype)


@pytest.mark.parametrize("shape,groups", CASES)
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_forward_matches_reference(rng, shape, groups, affine, dtype):
    x = _input(rng, shape, dtype)
    gamma, beta = _affine(rng, shape[1], dtype) if affine else (None, None)
    y, mean, invstd = group_norm_forward(x, groups, gamma, beta)
    assert y.shape == x.shape and y.dtype == dtype
    assert mean.shape == invstd.shape == (shape[0], groups) and mean.dtype == invstd.dtype == dtype
    tol = 1e-12 if dtype == np.float64 else 3e-6
    np.testing.assert_allclose(y, group_norm_reference(x, groups, gamma, beta), rtol=tol, atol=tol * 10)
    xg = x.astype(np.float64).reshape(shape[0], groups, -1)
    np.testing.assert_allclose(mean, xg.mean(axis=2), rtol=tol, atol=tol)
    np.testing.assert_allclose(invstd, 1.0 / np.sqrt(xg.var(axis=2) + 1e-5), rtol=tol)


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 5),
    groups=st.integers(1, 4),
    per_group=st.integers(1, 3),
    hw=st.one_of(st.none(), st.tuples(st.integers(1, 5), st.integers(1, 5))),
    seed=st.integers(0, 2**32 - 1),
)
def test_forward_any_shape(n, groups, per_group, hw, seed):
    c = groups * per_group
    shape = (n, c) if hw is None else (n, c, *hw)
    rng = np.random.default_rng(seed)
    x = _input(rng, shape)
    gamma, beta = _affine(rng, c)
    y = group_norm_forward(x, groups, gamma, beta)[0]
    np.testing.assert_allclose(y, group_norm_reference(x, groups, gamma, beta), rtol=1e-12, atol=1e-12)


def test_large_mean_keeps_precision(rng):
    """Shifted sums: a mean 1e6 times the spread still gives the variance to near float64 precision."""
    x = 1e6 + rng.standard_normal((3, 4, 5, 5))
    y = group_norm_forward(x, 2)[0]
    np.testing.assert_allclose(y, group_norm_reference(x, 2), rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("shape,groups", SMALL)
def test_backward_matches_finite_differences(rng, shape, groups):
    x = _input(rng, shape)
    gamma, beta = _affine(rng, shape[1])
    dy = rng.standard_normal(shape)
    _, mean, invstd = group_norm_forward(x, groups, gamma, beta)
    dgamma = np.full(shape[1], np.nan)  # overwritten, not accumulated
    dbeta = np.full(shape[1], np.nan)
    dx = group_norm_backward(dy, x, groups, mean, invstd, gamma, dgamma, dbeta)

    def loss(xx, gg=gamma, bb=beta):
        return float(np.sum(group_norm_reference(xx, groups, gg, bb) * dy))

    assert relative_error(dx, central_difference(loss, x)) < 1e-6
    assert relative_error(dgamma, central_difference(lambda g: loss(x, g), gamma)) < 1e-6
    assert relative_error(dbeta, central_difference(lambda b: loss(x, gamma, b), beta)) < 1e-6


@pytest.mark.parametrize("shape,groups", [((40, 64, 4, 4), 32), ((40, 16, 3, 3), 1), ((40, 12, 3, 3), 12)])
def test_backward_directional_derivative_many_chunks(rng, shape, groups):
    x = _input(rng, shape)
    gamma, beta = _affine(rng, shape[1])
    dy = rng.standard_normal(shape)
    _, mean, invstd = group_norm_forward(x, groups, gamma, beta)
    dgamma = np.empty(shape[1])
    dx = group_norm_backward(dy, x, groups, mean, invstd, gamma, dgamma)
    direction = rng.standard_normal(shape)
    eps = 1e-6
    fp = np.sum(group_norm_reference(x + eps * direction, groups, gamma, beta) * dy)
    fm = np.sum(group_norm_reference(x - eps * direction, groups, gamma, beta) * dy)
    assert relative_error(np.sum(dx * direction), (fp - fm) / (2 * eps)) < 1e-6
    xhat = group_norm_reference(x, groups)
    np.testing.assert_allclose(dgamma, np.sum(dy * xhat, axis=(0, 2, 3)), rtol=1e-10)


@pytest.mark.parametrize("groups", [1, 4])
def test_float32_backward_close_to_float64(rng, groups):
    shape = (6, 8, 4, 4)
    x = _input(rng, shape)
    gamma, beta = _affine(rng, 8)
    dy = rng.standard_normal(shape)
    out = {}
    for dt in (np.float64, np.float32):
        _, mean, invstd = group_norm_forward(x.astype(dt), groups, gamma.astype(dt), beta.astype(dt))
        dgamma, dbeta = np.empty(8, dt), np.empty(8, dt)
        dx = group_norm_backward(dy.astype(dt), x.astype(dt), groups, mean, invstd, gamma.astype(dt), dgamma, dbeta)
        assert dx.dtype == dt
        out[dt] = (dx, dgamma, dbeta)
    for a, b in zip(out[np.float32], out[np.float64]):
        assert relative_error(a, b) < 1e-5


def test_constant_group_gives_beta_and_zero_gradient(rng):
    x = np.full((2, 4, 3, 3), 2.5)
    gamma, beta = _affine(rng, 4)
    y, mean, invstd = group_norm_forward(x, 2, gamma, beta)
    np.testing.assert_allclose(y, np.broadcast_to(beta[None, :, None, None], x.shape))
    dx = group_norm_backward(rng.standard_normal(x.shape), x, 2, mean, invstd, gamma)
    assert np.all(np.isfinite(dx))


@pytest.mark.parametrize("groups", [1, 2, 4])
def test_results_do_not_depend_on_thread_count(rng, groups):
    shape = (33, 4, 5, 5)
    x = _input(rng, shape)
    gamma, beta = _affine(rng, 4)
    dy = rng.standard_normal(shape)

    def forward_and_backward():
        y, mean, invstd = group_norm_forward(x, groups, gamma, beta)
        dgamma, dbeta = np.empty(4), np.empty(4)
        dx = group_norm_backward(dy, x, groups, mean, invstd, gamma, dgamma, dbeta)
        return y, mean, invstd, dx, dgamma, dbeta

    assert_same_at_thread_counts(forward_and_backward)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_and_inf_propagate_within_their_group(rng, bad):
    x = _input(rng, (3, 4, 2, 2))
    x[1, 2, 0, 1] = bad
    y, mean, invstd = group_norm_forward(x, 2)
    assert np.all(np.isnan(y[1, 2:]))
    assert np.all(np.isfinite(y[1, :2])) and np.all(np.isfinite(y[[0, 2]]))
    dx = group_norm_backward(rng.standard_normal(x.shape), x, 2, mean, invstd)
    assert np.all(np.isnan(dx[1, 2:]))
    assert np.all(np.isfinite(dx[[0, 2]]))


def test_bad_inputs_raise_clear_errors(rng):
    x = rng.standard_normal((4, 6, 2, 2))
    with pytest.raises(ValueError, match="groups: expected a divisor of the channel count 6, got 4"):
        group_norm_forward(x, 4)
    with pytest.raises(ValueError, match="groups: expected a positive integer"):
        group_norm_forward(x, 0)
    with pytest.raises(ValueError, match="x: expected a 2D or 4D array"):
        group_norm_forward(x[0], 1)
    with pytest.raises(ValueError, match="x: expected dtype float32 or float64"):
        group_norm_forward(x.astype(np.float16), 1)
    with pytest.raises(ValueError, match="beta: expected shape \\(6,\\)"):
        group_norm_forward(x, 2, None, np.zeros(5))
    with pytest.raises(ValueError, match="eps: expected a positive number"):
        group_norm_forward(x, 2, eps=-1.0)
    _, mean, invstd = group_norm_forward(x, 2)
    with pytest.raises(ValueError, match="mean: expected shape \\(4, 3\\)"):
        group_norm_backward(x, x, 3, mean, invstd)
    with pytest.raises(ValueError, match="dy: expected dtype float64"):
        group_norm_backward(x.astype(np.float32), x, 2, mean, invstd)
    with pytest.raises(ValueError, match="dgamma: expected shape \\(6,\\)"):
        group_norm_backward(x, x, 2, mean, invstd, None, np.zeros(3))


# -- optional: PyTorch parity -----------------------------------------------------------------------------------


def _torch_case(kind, shape, groups, rng):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    x = _input(rng, shape)
    gamma, beta = _affine(rng, shape[1])
    dy = rng.standard_normal(shape)
    xt = torch.tensor(x, requires_grad=True)
    gt = torch.tensor(gamma, requires_grad=True)
    bt = torch.tensor(beta, requires_grad=True)
    if kind == "layer" and len(shape) == 2:
        yt = F.layer_norm(xt, (shape[1],), gt, bt, 1e-5)
    elif kind == "instance":
        yt = F.instance_norm(xt, weight=gt, bias=bt, use_input_stats=True, eps=1e-5)
    else:
        yt = F.group_norm(xt, groups, gt, bt, 1e-5)
    yt.backward(torch.tensor(dy))
    _, mean, invstd = group_norm_forward(x, groups, gamma, beta)
    dgamma, dbeta = np.empty(shape[1]), np.empty(shape[1])
    y = group_norm_forward(x, groups, gamma, beta)[0]
    dx = group_norm_backward(dy, x, groups, mean, invstd, gamma, dgamma, dbeta)
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dgamma, gt.grad.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dbeta, bt.grad.numpy(), rtol=1e-10, atol=1e-12)


@pytest.mark.torch
@pytest.mark.parametrize(
    "kind,shape,groups",
    [("layer", (6, 10), 1), ("layer", (4, 6, 3, 3), 1), ("instance", (4, 6, 3, 3), 6), ("group", (4, 6, 3, 3), 3),
     ("group", (6, 8), 4), ("group", (8, 64, 4, 4), 32)],
)
def test_matches_torch(rng, kind, shape, groups):
    _torch_case(kind, shape, groups, rng)


@pytest.mark.parametrize("shape,groups", [((5, 6), 3), ((2, 4, 3, 5), 2), ((20, 64, 4, 4), 32)])
def test_out_buffers_and_in_place(rng, shape, groups):
    x, dy = _input(rng, shape), rng.standard_normal(shape)
    gamma, beta = _affine(rng, shape[1])
    _, mean, invstd = group_norm_forward(x, groups, gamma, beta)
    assert_out_and_in_place(group_norm_forward, {"x": x, "groups": groups, "gamma": gamma, "beta": beta}, ("x",))
    assert_out_and_in_place(group_norm_backward, {"dy": dy, "x": x, "groups": groups, "mean": mean,
                                                  "invstd": invstd, "gamma": gamma, "dgamma": np.empty_like(gamma)},
                            ("dy",))
