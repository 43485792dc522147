"""Normalization layers (noisy BatchNorm, Lp BatchNorm, LayerNorm, InstanceNorm, GroupNorm) inside networks:
gradients against finite differences, modes, running statistics, noise distributions and bookkeeping, errors."""

import math

import numpy as np
import pytest
from scipy import stats

import smoothnorm
from smoothnorm import nn
from smoothnorm.nn import models
from smoothnorm.nn.norms import NORM_LAYERS, make_norm
from smoothnorm.nn.norms.batch import BatchNorm, NoisyBatchNorm
from smoothnorm.nn.norms.lp import LinfBatchNorm
from smoothnorm.nn.norms.sample import GroupNorm, InstanceNorm, LayerNorm
from tests.helpers import check_gradient, directional_fd
from tests.reference import (
    central_difference,
    group_norm_reference,
    lp_norm_reference,
    lp_norm_running_reference,
    lp_norm_train_reference,
    noisy_batch_norm_reference,
    relative_error,
)

NEW_NORMS = ["noisy_batch", "l1", "l2", "linf", "layer", "instance", "group"]
# Options that keep every group larger than one value on the small (N, 6) inputs below.
FLAT_OPTIONS = {"group": {"groups": 2}}


def single_norm_net(norm, input_shape, dtype=np.float64, seed=0, **options):
    """A network made of one normalization layer and a summed squared error (for gradients w.r.t. its input)."""
    layer = make_norm(norm, input_shape[0], **options)
    return nn.Network([("norm", layer)], input_shape=input_shape, loss=nn.SquaredError(), dtype=dtype, seed=seed)


def randomize_affine(net, rng):
    net.params[:] = rng.uniform(0.5, 1.5, net.num_params) * rng.choice([-1.0, 1.0], net.num_params)


def test_registry_order_and_public_names():
    assert smoothnorm.NORMS == ("batch", "noisy_batch", "l1", "l2", "linf", "layer", "instance", "group")
    assert tuple(NORM_LAYERS) == smoothnorm.NORMS


# ---------------------------------------------------------------------------------------------------------------
# Gradients: every norm, flat and image inputs, alone and inside vgg / dln


@pytest.mark.parametrize("norm", NEW_NORMS)
@pytest.mark.parametrize("input_shape", [(6,), (4, 3, 2)])
@pytest.mark.parametrize("mode", ["probe", "eval"])
def test_layer_gradients_match_finite_differences(rng, norm, input_shape, mode):
    if norm == "instance" and len(input_shape) == 1:
        pytest.skip("instance norm is undefined for flat features (tested below)")
    options = FLAT_OPTIONS.get(norm, {}) if len(input_shape) == 1 else {}
    net = single_norm_net(norm, input_shape, seed=int(rng.integers(1000)), **options)
    randomize_affine(net, rng)
    layer = net["norm"]
    if hasattr(layer, "running_mean"):  # eval mode then uses non-trivial running statistics
        layer.running_mean[:] = rng.standard_normal(input_shape[0])
        running = layer.running_norm if hasattr(layer, "running_norm") else layer.running_var
        running[:] = rng.uniform(0.5, 2.0, input_shape[0])
    x = 0.5 + rng.standard_normal((5, *input_shape))
    y = rng.standard_normal((5, *input_shape))
    out = net.forward(x, mode)
    net.loss_fn.forward(out, net.check_targets(y, 5))
    dx = net.backward(net.loss_fn.backward(), need_input_grad=True)
    g = net.grads.copy()
    assert relative_error(dx, central_difference(lambda xx: net.loss(xx, y, mode=mode), x)) < 1e-6
    numeric = np.array([directional_fd(net, x, y, np.eye(net.num_params)[i], mode=mode)
                        for i in range(net.num_params)])
    assert relative_error(g, numeric) < 1e-6


@pytest.mark.parametrize("norm", NEW_NORMS)
def test_vgg_gradient_matches_finite_differences(norm, rng):
    net = models.vgg("vgg11", norm=norm, width=1 / 16, dtype=np.float64, seed=int(rng.integers(1000)))
    x = rng.standard_normal((3, 3, 32, 32))
    y = rng.integers(0, 10, size=3)
    assert check_gradient(net, x, y, rng) < 1e-6


@pytest.mark.parametrize("norm", [n for n in NEW_NORMS if n != "instance"])
def test_dln_gradient_matches_finite_differences_all_coordinates(norm, rng):
    net = models.dln(5, 4, in_dim=3, out_dim=2, norm=norm, seed=int(rng.integers(1000)),
                     norm_options=FLAT_OPTIONS.get(norm))
    x = rng.standard_normal((7, 3))
    y = rng.standard_normal((7, 2))
    _, g = net.loss_and_grad(x, y, mode="probe")
    g = g.copy()
    numeric = np.array([directional_fd(net, x, y, np.eye(net.num_params)[i]) for i in range(net.num_params)])
    assert relative_error(g, numeric) < 1e-6


@pytest.mark.parametrize("norm", NEW_NORMS)
def test_float32_network_tracks_float64(norm, rng):
    x = rng.standard_normal((4, 3, 32, 32))
    y = rng.integers(0, 10, size=4)
    n64 = models.vgg("vgg11", norm=norm, width=1 / 16, dtype=np.float64)
    n32 = models.vgg("vgg11", norm=norm, width=1 / 16, dtype=np.float32)
    n32.load_state_dict(n64.state_dict())
    # Same seed: the noisy layers draw the same per-unit parameters; per-element noise differs in precision only.
    l64, g64 = n64.loss_and_grad(x, y, mode="probe")
    l32, g32 = n32.loss_and_grad(x, y, mode="probe")
    assert g32.dtype == np.float32
    assert abs(l32 - l64) < 1e-3 * max(1, abs(l64))
    assert relative_error(g32, g64) < 1e-2


# ---------------------------------------------------------------------------------------------------------------
# Noisy BatchNorm


def test_noise_parameters_follow_their_distributions():
    layer = NoisyBatchNorm(4000)
    layer.allocate(np.float64)
    layer.resample_noise(np.random.default_rng(123))
    assert stats.kstest(layer.noise_mu, stats.uniform(-0.5, 1.0).cdf).pvalue > 1e-3
    assert stats.kstest(layer.noise_sigma, stats.uniform(1.0, 0.25).cdf).pvalue > 1e-3
    # The test has power: the wrong ranges are rejected.
    assert stats.kstest(layer.noise_mu, stats.uniform(-0.4, 0.8).cdf).pvalue < 1e-6
    assert stats.kstest(layer.noise_sigma, stats.uniform(1.0, 0.3).cdf).pvalue < 1e-6


@pytest.mark.parametrize("shape", [(400, 3, 8, 8), (60000, 3)])
def test_per_element_noise_follows_its_distribution(shape):
    layer = NoisyBatchNorm(3, n_mu=0.5, n_sigma=1.25, r_mu=0.1, r_sigma=0.1)
    layer.allocate(np.float64)
    layer.resample_noise(np.random.default_rng(7))
    scale, shift = layer.noise(shape)
    assert scale.shape == shift.shape == shape and scale.dtype == np.float64
    for j in range(3):
        m = shift[:, j].ravel()
        s = scale[:, j].ravel()
        mu, sigma = layer.noise_mu[j], layer.noise_sigma[j]
        # m ~ U(mu_j - r_mu, mu_j + r_mu), s ~ N(sigma_j, r_sigma) with r_sigma the standard deviation.
        assert stats.kstest(m, stats.uniform(mu - 0.1, 0.2).cdf).pvalue > 1e-3
        assert stats.kstest(s, stats.norm(sigma, 0.1).cdf).pvalue > 1e-3
        assert stats.kstest(s, stats.norm(sigma, math.sqrt(0.1)).cdf).pvalue < 1e-6  # not the variance
        assert stats.kstest(m, stats.uniform(mu - 0.1, 0.19).cdf).pvalue < 1e-6
    # Elements are independent of each other: neighbouring draws are uncorrelated.
    flat = scale[:, 0].ravel()
    assert abs(np.corrcoef(flat[:-1], flat[1:])[0, 1]) < 0.02


def test_noise_options_are_used():
    layer = NoisyBatchNorm(500, n_mu=2.0, n_sigma=3.0, r_mu=0.5, r_sigma=0.25)
    layer.allocate(np.float64)
    layer.resample_noise(np.random.default_rng(0))
    assert layer.noise_mu.min() < -1.5 and layer.noise_mu.max() > 1.5 and np.abs(layer.noise_mu).max() <= 2.0
    assert layer.noise_sigma.max() > 2.5 and layer.noise_sigma.min() >= 1.0
    scale, shift = layer.noise((200, 500))
    assert np.all(np.abs(shift - layer.noise_mu) <= 0.5)
    assert np.std(scale - layer.noise_sigma) == pytest.approx(0.25, rel=0.02)


def _noisy_net(rng, placement="after_affine", dtype=np.float64):
    net = models.mlp(5, [4], 3, norm="noisy_batch", dtype=dtype, seed=int(rng.integers(1000)),
                     norm_options={"placement": placement})
    randomize_affine(net, rng)
    return net


@pytest.mark.parametrize("placement", ["after_affine", "before_affine"])
def test_noisy_output_formula_in_train_and_probe(rng, placement):
    net = _noisy_net(rng, placement)
    layer = net["layers.1"]
    x = rng.standard_normal((6, 5))
    for mode in ("probe", "train"):
        net.forward(x, mode, capture=["layers.0", "layers.1"])
        h = net.captured["layers.0"]
        scale, shift = layer.noise(h.shape)
        expected = noisy_batch_norm_reference(h, scale, shift, layer.params["weight"], layer.params["bias"],
                                              before_affine=placement == "before_affine")
        np.testing.assert_allclose(net.captured["layers.1"], expected, rtol=1e-12, atol=1e-12)


def test_eval_output_carries_no_noise(rng):
    net = _noisy_net(rng)
    plain = models.mlp(5, [4], 3, norm="batch", dtype=np.float64)
    x = rng.standard_normal((6, 5))
    for _ in range(3):
        net.forward(rng.standard_normal((6, 5)), "train")
    plain.load_state_dict(net.state_dict())
    np.testing.assert_array_equal(net.forward(x, "eval"), plain.forward(x, "eval"))
    net.resample_noise(rng)
    np.testing.assert_array_equal(net.forward(x, "eval"), plain.forward(x, "eval"))
    # ... and its gradient is BatchNorm's eval gradient.
    y = rng.integers(0, 3, size=6)
    assert np.array_equal(net.loss_and_grad(x, y, mode="eval")[1], plain.loss_and_grad(x, y, mode="eval")[1])


def test_probes_at_one_step_see_identical_noise_and_a_resample_changes_it(rng):
    net = models.vgg("vgg11", norm="noisy_batch", width=1 / 16, dtype=np.float64, seed=3)
    x = rng.standard_normal((3, 3, 32, 32))
    y = rng.integers(0, 10, size=3)
    first = net.forward(x, "probe").copy()
    loss_a, g = net.loss_and_grad(x, y, mode="probe")
    g_a = g.copy()
    assert np.array_equal(net.forward(x, "probe"), first)
    loss_b, g = net.loss_and_grad(x, y, mode="probe")
    assert loss_a == loss_b and np.array_equal(g, g_a)
    # Noise depends on the input shape only, so a different batch of the same shape sees the same noise.
    layer = net["features.1"]
    noise_before = [a.copy() for a in layer.noise((3, 4, 32, 32))]
    net.forward(rng.standard_normal((3, 3, 32, 32)), "probe")
    assert all(np.array_equal(a, b) for a, b in zip(noise_before, layer.noise((3, 4, 32, 32))))
    net.resample_noise(np.random.default_rng(1))
    assert not np.array_equal(net.forward(x, "probe"), first)
    assert not np.array_equal(layer.noise((3, 4, 32, 32))[0], noise_before[0])


def test_noise_comes_from_the_network_seed_and_the_resample_generator(rng):
    a = models.dln(3, 4, in_dim=3, out_dim=2, norm="noisy_batch", seed=5)
    b = models.dln(3, 4, in_dim=3, out_dim=2, norm="noisy_batch", seed=5)
    c = models.dln(3, 4, in_dim=3, out_dim=2, norm="noisy_batch", seed=6)
    x = rng.standard_normal((8, 3))
    assert np.array_equal(a.forward(x, "probe"), b.forward(x, "probe"))
    assert not np.array_equal(a["norms.0"].noise_mu, c["norms.0"].noise_mu)
    # Layers draw different noise from one generator.
    assert not np.array_equal(a["norms.0"].noise_mu, a["norms.1"].noise_mu)
    a.resample_noise(np.random.default_rng(9))
    b.resample_noise(np.random.default_rng(9))
    assert np.array_equal(a.forward(x, "probe"), b.forward(x, "probe"))
    twin = a.copy()
    assert np.array_equal(twin.forward(x, "probe"), a.forward(x, "probe"))


def test_noisy_running_statistics_are_batch_norms_and_probe_leaves_them(rng):
    net = _noisy_net(rng)
    plain = models.mlp(5, [4], 3, norm="batch", dtype=np.float64)
    plain.load_state_dict(net.state_dict())
    before = net.state_dict()
    x = rng.standard_normal((6, 5))
    net.forward(x, "probe")
    after = net.state_dict()
    assert all(np.array_equal(before[k], after[k]) for k in before)
    for _ in range(3):
        xb = rng.standard_normal((6, 5))
        net.forward(xb, "train")
        plain.forward(xb, "train")
    s_noisy, s_plain = net.state_dict(), plain.state_dict()
    assert set(s_noisy) == set(s_plain)
    assert int(s_noisy["layers.1.num_batches_tracked"]) == 3
    for key in ("layers.1.running_mean", "layers.1.running_var"):
        np.testing.assert_allclose(s_noisy[key], s_plain[key], rtol=1e-13, atol=1e-15)


def test_noisy_layer_needs_a_draw_and_validates_options():
    layer = NoisyBatchNorm(3)
    layer.allocate(np.float64)
    with pytest.raises(RuntimeError, match="resample_noise"):
        layer.noise((4, 3))
    with pytest.raises(ValueError, match="n_sigma: expected a finite number >= 1.0"):
        NoisyBatchNorm(3, n_sigma=0.5)
    with pytest.raises(ValueError, match="r_sigma"):
        NoisyBatchNorm(3, r_sigma=-0.1)
    with pytest.raises(ValueError, match="placement: expected one of"):
        NoisyBatchNorm(3, placement="middle")
    layer.resample_noise(np.random.default_rng(0))
    with pytest.raises(ValueError, match="shape: expected"):
        layer.noise((4, 5))


def test_float32_network_draws_float32_noise(rng):
    net = models.vgg("vgg11", norm="noisy_batch", width=1 / 16, dtype=np.float32)
    net.forward(rng.standard_normal((2, 3, 32, 32)), "probe")
    scale, shift = net["features.1"].noise((2, 4, 32, 32))
    assert scale.dtype == shift.dtype == np.float32


# ---------------------------------------------------------------------------------------------------------------
# Lp BatchNorm


@pytest.mark.parametrize("norm,p", [("l1", 1), ("l2", 2), ("linf", math.inf)])
def test_lp_train_output_running_statistics_and_eval(rng, norm, p):
    net = single_norm_net(norm, (3, 2, 2))
    randomize_affine(net, rng)
    layer = net["norm"]
    gamma, beta = layer.params["weight"], layer.params["bias"]
    assert layer.p == p
    before = net.state_dict()
    x = rng.standard_normal((4, 3, 2, 2))
    np.testing.assert_allclose(net.forward(x, "probe"), lp_norm_train_reference(x, p, gamma, beta), rtol=1e-12,
                               atol=1e-12)
    after = net.state_dict()
    assert all(np.array_equal(before[k], after[k]) for k in before)  # probe: bit-identical buffers
    batches = [1.0 + rng.standard_normal((4, 3, 2, 2)) for _ in range(4)]
    for xb in batches:
        np.testing.assert_allclose(net.forward(xb, "train"), lp_norm_train_reference(xb, p, gamma, beta),
                                   rtol=1e-12, atol=1e-12)
    rm, rn = lp_norm_running_reference(np.zeros(3), np.ones(3), batches, p, momentum=0.1)
    np.testing.assert_allclose(layer.running_mean, rm, rtol=1e-12)
    np.testing.assert_allclose(layer.running_norm, rn, rtol=1e-12)
    assert int(layer.num_batches_tracked) == 4
    np.testing.assert_allclose(net.forward(x, "eval"), lp_norm_reference(x, rm, rn, gamma, beta), rtol=1e-12,
                               atol=1e-12)


def test_lp_state_dict_names_and_round_trip(rng):
    net = models.vgg("vgg11", norm="l2", width=1 / 16, dtype=np.float64)
    net.forward(rng.standard_normal((2, 3, 32, 32)), "train")
    state = net.state_dict()
    assert {k for k in state if k.startswith("features.1.")} == {
        "features.1.weight", "features.1.bias", "features.1.running_mean", "features.1.running_norm",
        "features.1.num_batches_tracked",
    }
    assert not hasattr(net["features.1"], "running_var")
    other = models.vgg("vgg11", norm="l2", width=1 / 16, dtype=np.float64, seed=1)
    other.load_state_dict(state)
    x = rng.standard_normal((2, 3, 32, 32))
    assert np.array_equal(other.forward(x, "eval"), net.forward(x, "eval"))


def test_linf_layer_class():
    assert make_norm("linf", 3).p == math.inf and isinstance(make_norm("linf", 3), LinfBatchNorm)


# ---------------------------------------------------------------------------------------------------------------
# Layer, instance and group normalization


@pytest.mark.parametrize("norm,groups", [("layer", 1), ("instance", 4), ("group", 2)])
def test_group_family_uses_sample_statistics_in_every_mode(rng, norm, groups):
    options = {"groups": 2} if norm == "group" else {}
    net = single_norm_net(norm, (4, 3, 3), **options)
    randomize_affine(net, rng)
    layer = net["norm"]
    assert layer.groups == groups
    x = rng.standard_normal((5, 4, 3, 3))
    expected = group_norm_reference(x, groups, layer.params["weight"], layer.params["bias"])
    for mode in ("train", "probe", "eval"):
        np.testing.assert_allclose(net.forward(x, mode), expected, rtol=1e-12, atol=1e-12)
    # Each sample is normalized on its own: changing one sample leaves the others' outputs unchanged.
    x2 = x.copy()
    x2[0] *= 3.0
    np.testing.assert_array_equal(net.forward(x2, "train")[1:], net.forward(x, "train")[1:])
    assert set(net.state_dict()) == {"norm.weight", "norm.bias"}


def test_layer_norm_on_flat_features_is_layernorm(rng):
    net = single_norm_net("layer", (6,))
    randomize_affine(net, rng)
    layer = net["norm"]
    x = rng.standard_normal((4, 6))
    mean = x.mean(axis=1, keepdims=True)
    var = x.var(axis=1, keepdims=True)
    expected = (x - mean) / np.sqrt(var + 1e-5) * layer.params["weight"] + layer.params["bias"]
    np.testing.assert_allclose(net.forward(x, "eval"), expected, rtol=1e-12, atol=1e-12)
    assert isinstance(layer, LayerNorm)


def test_group_count_defaults_to_32_capped_and_must_divide():
    assert GroupNorm(64).groups == 32
    assert GroupNorm(8).groups == 8
    assert GroupNorm(12, groups=4).groups == 4
    with pytest.raises(ValueError, match="groups: expected a divisor of num_features 48, got 32"):
        GroupNorm(48)
    with pytest.raises(ValueError, match="groups: expected a positive integer"):
        GroupNorm(8, groups=0)
    with pytest.raises(ValueError, match="groups"):
        models.vgg("vgg11", norm="group", width=0.75)
    net = models.vgg("vgg11", norm="group", width=0.75, norm_options={"groups": 16})
    assert net["features.1"].groups == 16
    assert [la.groups for la in net.layers if isinstance(la, GroupNorm)][0] == 16


def test_instance_norm_needs_feature_maps():
    with pytest.raises(ValueError, match="instance norm needs feature maps"):
        models.dln(3, 4, in_dim=3, out_dim=2, norm="instance")
    with pytest.raises(ValueError, match="instance norm needs feature maps"):
        models.mlp(4, [5], 3, norm="instance")
    layer = InstanceNorm(3)
    with pytest.raises(ValueError, match="x: instance norm expected a 4D array"):
        layer.forward(np.zeros((4, 3)), "train")


def test_groups_of_one_value_are_rejected():
    with pytest.raises(ValueError, match="groups of 1 value"):
        models.dln(3, 4, in_dim=3, out_dim=2, norm="group")  # 4 groups of 4 flat features
    with pytest.raises(ValueError, match="groups of 1 value"):
        single_norm_net("instance", (3, 1, 1))
    models.dln(3, 4, in_dim=3, out_dim=2, norm="group", norm_options={"groups": 2})


@pytest.mark.parametrize("norm", NEW_NORMS)
def test_every_norm_builds_in_every_model(norm):
    net = models.vgg("vgg11", norm=norm, width=1 / 16)
    assert sum(isinstance(la, NORM_LAYERS[norm]) for la in net.layers) == 8
    if norm != "instance":
        options = FLAT_OPTIONS.get(norm)
        models.dln(3, 4, in_dim=3, out_dim=2, norm=norm, norm_options=options)
        models.mlp(4, [6], 3, norm=norm, norm_options=options)
    assert repr(net)


def test_r_pass_standardization_is_built_once_per_forward(rng):
    """A Hessian operator runs many R-passes at one base point: the layer reuses its standardization between them,
    and a new forward pass (another point) must replace it."""
    net = models.mlp(4, [5], 3, norm="layer", dtype=np.float64, seed=2)  # BatchNorm in float64 runs fused
    bn = net.layers[1]
    h1, h2, rx = (rng.standard_normal((6, 5)) for _ in range(3))
    rparams = {"weight": rng.standard_normal(5), "bias": rng.standard_normal(5)}
    bn.forward(h1, "probe")
    r1 = bn.forward_r(rx, rparams).copy()
    std = bn._standardization_memo[1]
    np.testing.assert_array_equal(bn.forward_r(rx, rparams), r1)
    assert bn._standardization_memo[1] is std
    bn.forward(h2, "probe")
    r2 = bn.forward_r(rx, rparams).copy()
    twin = models.mlp(4, [5], 3, norm="layer", dtype=np.float64, seed=2).layers[1]
    twin.forward(h2, "probe")
    np.testing.assert_array_equal(r2, twin.forward_r(rx, rparams))
    assert not np.allclose(r1, r2)


@pytest.mark.parametrize("shape", [(7, 3), (4, 3, 5, 6), (2, 4, 1, 1)])
@pytest.mark.parametrize("need_dx", [True, False])
def test_fused_batch_norm_r_pass_matches_the_general_path(rng, shape, need_dx):
    """BatchNorm's fused R-pass (kernels/norm/batch_rop.py: batch statistics, float64) against
    smoothnorm.nn.norms.rop's general Standardization + ElementwiseAffine, which the finite-difference and PyTorch
    tests check."""
    from smoothnorm.nn.norms.base import _PerChannelAffine

    c = shape[1]
    layer = BatchNorm(c)
    layer.name = "bn"
    layer.allocate(np.float64)
    layer.params = {"weight": 1 + rng.standard_normal(c), "bias": rng.standard_normal(c)}
    layer.grads = {k: np.empty(c) for k in layer.params}
    x, rx, dy, rdy = (3 + 2 * rng.standard_normal(shape) for _ in range(4))
    rparams = {"weight": rng.standard_normal(c), "bias": rng.standard_normal(c)}
    layer.forward(x, "probe")
    results = []
    for forward_r, backward_r in ((layer.forward_r, layer.backward_r),
                                  (lambda *a: _PerChannelAffine.forward_r(layer, *a),
                                   lambda *a: _PerChannelAffine.backward_r(layer, *a))):
        rgrads = {k: np.full(c, np.nan) for k in rparams}
        ry = forward_r(rx, rparams).copy()
        if not results:
            assert layer._r_fused is not None  # the layer's own R-pass took the fused kernels
        dx, rdx = backward_r(dy, rdy, rgrads, need_dx)
        results.append((ry, None if dx is None else dx.copy(), None if rdx is None else rdx.copy(), rgrads))
    (ry, dx, rdx, rg), (ry_ref, dx_ref, rdx_ref, rg_ref) = results
    np.testing.assert_allclose(ry, ry_ref, rtol=1e-11, atol=1e-12)
    for key in rparams:
        np.testing.assert_allclose(rg[key], rg_ref[key], rtol=1e-11, atol=1e-12)
    if need_dx:
        np.testing.assert_allclose(dx, dx_ref, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(rdx, rdx_ref, rtol=1e-10, atol=1e-12)
    else:
        assert dx is None and dx_ref is None


def test_fused_batch_norm_r_pass_checks_its_buffers(rng):
    from smoothnorm.kernels.norm.batch_rop import batch_norm_r_backward, batch_norm_r_forward

    x, rx = rng.standard_normal((4, 3, 5)), rng.standard_normal((4, 3, 5))
    c = np.ones(3)
    with pytest.raises(ValueError, match="out: shares memory with an input"):
        batch_norm_r_forward(x, c, c, c, c, c, rx, out=rx)
    ry, rx_mean, rs = batch_norm_r_forward(x, c, c, c, c, c, rx)
    with pytest.raises(ValueError, match=r"r_dbeta: expected shape \(3,\) and dtype float64"):
        batch_norm_r_backward(x, c, c, c, c, rx, rx_mean, rs, ry, ry, np.empty(3), np.empty(3, np.float32))
    with pytest.raises(ValueError, match=r"out\[1\] \(rdx\): shares memory with an input"):
        batch_norm_r_backward(x, c, c, c, c, rx, rx_mean, rs, ry, rx, np.empty(3), np.empty(3),
                              out=(np.empty_like(x), rx))


@pytest.mark.parametrize("norm", ["batch", *NEW_NORMS])
def test_norm_layers_write_into_kept_buffers_with_fresh_results(rng, norm):
    """Every norm layer writes y and dx into buffers kept between calls (fresh pages for arrays of tens of MB cost
    as much as the kernel): the second call returns the same arrays, holding that call's results, equal to a fresh
    layer's."""
    shape = (6, 4, 5, 5)
    net = single_norm_net(norm, shape[1:], seed=2)
    twin = single_norm_net(norm, shape[1:], seed=2)
    layer, other = net.layers[0], twin.layers[0]
    for probe in (layer, other):
        if hasattr(probe, "resample_noise"):
            probe.resample_noise(np.random.default_rng(5))
    first = [rng.standard_normal(shape) for _ in range(2)]
    y1 = layer.forward(first[0], "train")
    dx1 = layer.backward(first[1])
    second = [rng.standard_normal(shape) for _ in range(2)]
    y2 = layer.forward(second[0], "train")
    dx2 = layer.backward(second[1])
    assert y2 is y1 and dx2 is dx1
    other.forward(first[0], "train")
    other.backward(first[1])
    assert np.array_equal(y2, other.forward(second[0], "train"))
    assert np.array_equal(dx2, other.backward(second[1]))
