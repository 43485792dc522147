"""Winograd 3x3 convolution: every pass against a float64 direct convolution, on VGG's layer shapes and any shape."""

import numba
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smoothnorm import nn
from smoothnorm.kernels.conv import winograd
from smoothnorm.kernels.conv.winograd import (
    output_tile,
    winograd_backward_input,
    winograd_backward_weight,
    winograd_forward,
)
from smoothnorm.nn import models
from tests.helpers import check_gradient, vgg_conv_shapes
from tests.reference import conv2d_forward_ref

# (C_in, C_out, H=W) of every distinct conv in VGG-11..19 on CIFAR-10 (VGG-16 has them all), and the same layers at
# 1/8 width (the first layer keeps its 3 input channels), for the fast suite.
VGG_LAYERS = vgg_conv_shapes("vgg16")
NARROW_LAYERS = vgg_conv_shapes("vgg16", width=1 / 8)
TOLERANCE = {np.float32: 1e-5, np.float64: 1e-12}


def l2_error(a, b):
    """||a - b|| / ||b|| in float64 (the accuracy measure the Winograd kernels are held to)."""
    a = np.asarray(a, dtype=np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


# Float64 direct convolutions (3x3, stride 1, padding 1) by the nine taps: fast enough for VGG's shapes, and each a
# plain sum over its definition; direct_forward is checked against tests/reference.py's naive loops below.
def _padded(a):
    return np.pad(np.asarray(a, dtype=np.float64), ((0, 0), (0, 0), (1, 1), (1, 1)))


def direct_forward(x, weight, bias=None):
    """y[n, o, i, j] = sum_{c, ky, kx} x[n, c, i + ky - 1, j + kx - 1] w[o, c, ky, kx] (+ bias[o])."""
    h, w = x.shape[2:]
    xp = _padded(x)
    weight = np.asarray(weight, dtype=np.float64)
    y = np.zeros((x.shape[0], weight.shape[0], h, w))
    for ky in range(3):
        for kx in range(3):
            y += np.einsum("nchw,oc->nohw", xp[:, :, ky : ky + h, kx : kx + w], weight[:, :, ky, kx], optimize=True)
    return y if bias is None else y + np.asarray(bias, dtype=np.float64)[None, :, None, None]


def direct_input_gradient(dy, weight):
    """dx[n, c, i, j] = sum_{o, ky, kx} dy[n, o, i - ky + 1, j - kx + 1] w[o, c, ky, kx]."""
    h, w = dy.shape[2:]
    dyp = _padded(dy)
    weight = np.asarray(weight, dtype=np.float64)
    dx = np.zeros((dy.shape[0], weight.shape[1], h, w))
    for ky in range(3):
        for kx in range(3):
            window = dyp[:, :, 2 - ky : 2 - ky + h, 2 - kx : 2 - kx + w]
            dx += np.einsum("nohw,oc->nchw", window, weight[:, :, ky, kx], optimize=True)
    return dx


def direct_weight_gradient(dy, x):
    """dw[o, c, ky, kx] = sum_{n, i, j} dy[n, o, i, j] x[n, c, i + ky - 1, j + kx - 1]."""
    h, w = x.shape[2:]
    xp = _padded(x)
    dy = np.asarray(dy, dtype=np.float64)
    dw = np.empty((dy.shape[1], x.shape[1], 3, 3))
    for ky in range(3):
        for kx in range(3):
            dw[:, :, ky, kx] = np.einsum("nohw,nchw->oc", dy, xp[:, :, ky : ky + h, kx : kx + w], optimize=True)
    return dw


def glorot(rng, c_out, c_in):
    bound = np.sqrt(6.0 / (9 * (c_in + c_out)))
    return rng.uniform(-bound, bound, size=(c_out, c_in, 3, 3))


def layer_inputs(rng, n, c_in, c_out, size, kind):
    """x, weight, bias, dy in float64. kind "normal": N(0,1) x and dy; "relu": x is the ReLU output of a random
    Glorot conv layer applied to N(0,1) data (skewed, non-negative and spatially correlated, like a trained net's
    activations), dy the gradient a ReLU mask leaves (about half zeros)."""
    x = rng.standard_normal((n, c_in, size, size))
    dy = rng.standard_normal((n, c_out, size, size))
    if kind == "relu":
        x = np.maximum(direct_forward(x, glorot(rng, c_in, c_in), rng.uniform(0, 0.5, c_in)), 0.0)
        dy *= rng.random(dy.shape) < 0.5
    return x, glorot(rng, c_out, c_in), rng.standard_normal(c_out) * 0.1, dy


def check_all_passes(rng, n, c_in, c_out, size, kind, dtype, tile=None):
    return pass_errors(*layer_inputs(rng, n, c_in, c_out, size, kind), dtype, tile)


def pass_errors(x, weight, bias, dy, dtype, tile=None):
    """{pass: relative L2 error} of the three Winograd passes in `dtype` against float64 direct convolutions."""
    xd, wd, bd, dyd = (a.astype(dtype) for a in (x, weight, bias, dy))
    # The reference sees the same rounded inputs, so the error is the algorithm's alone.
    x, weight, bias, dy = (a.astype(np.float64) for a in (xd, wd, bd, dyd))
    y = winograd_forward(xd, wd, bd, tile=tile)
    dx = winograd_backward_input(dyd, wd, tile=tile)
    dw = np.full(weight.shape, np.nan, dtype=dtype)
    winograd_backward_weight(dyd, xd, dw, tile=tile)
    assert y.dtype == dx.dtype == dtype
    return {
        "forward": l2_error(y, direct_forward(x, weight, bias)),
        "input gradient": l2_error(dx, direct_input_gradient(dy, weight)),
        "weight gradient": l2_error(dw, direct_weight_gradient(dy, x)),
    }


def test_direct_references_match_the_naive_loops(rng):
    x = rng.standard_normal((2, 3, 5, 4))
    weight = rng.standard_normal((2, 3, 3, 3))
    dy = rng.standard_normal((2, 2, 5, 4))
    np.testing.assert_allclose(direct_forward(x, weight), conv2d_forward_ref(x, weight), rtol=1e-13, atol=1e-13)
    # The gradients by the adjoint identity <conv(x, W), dy> = <x, dx> = <W, dW>.
    f = float(np.sum(conv2d_forward_ref(x, weight) * dy))
    assert np.isclose(np.sum(direct_input_gradient(dy, weight) * x), f, rtol=1e-12)
    assert np.isclose(np.sum(direct_weight_gradient(dy, x) * weight), f, rtol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kind", ["normal", "relu"])
@pytest.mark.parametrize("layer", NARROW_LAYERS, ids=lambda s: f"{s[0]}-{s[1]}@{s[2]}")
def test_vgg_layer_shapes_within_tolerance(rng, layer, kind, dtype):
    errors = check_all_passes(rng, 2, *layer, kind, dtype)
    assert max(errors.values()) <= TOLERANCE[dtype], errors


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kind", ["normal", "relu"])
@pytest.mark.parametrize("layer", VGG_LAYERS, ids=lambda s: f"{s[0]}-{s[1]}@{s[2]}")
def test_full_width_vgg_layers_within_tolerance(rng, layer, kind, dtype):
    errors = check_all_passes(rng, 2, *layer, kind, dtype)
    assert max(errors.values()) <= TOLERANCE[dtype], errors


@pytest.fixture(scope="module")
def trained_vgg_layers():
    """(name, x, weight, bias, dy) in float64 for every conv of a VGG-11-BN at 1/8 width trained (im2col) for 160
    SGD steps (40 epochs of 128 synthetic images, about 3 s): x the layer's input and dy the loss gradient at its
    output, on a held-out batch.
    The error must hold on trained activations, beside N(0,1) data."""
    from smoothnorm import data, optim

    (x_train, y_train), (x_test, y_test) = data.synthetic_images(128, 32, seed=3, class_colour=0.15)
    net = models.vgg("vgg11", norm="batch", width=1 / 8, dtype=np.float64, seed=3, algorithm="im2col")
    opt = optim.SGD(lr=0.05, momentum=0.9)
    order = np.random.default_rng(3).permutation(128)
    losses = []
    for step in range(160):
        batch = order[(step % 4) * 32 : (step % 4 + 1) * 32]
        loss, _ = net.loss_and_grad(x_train[batch], y_train[batch])
        opt.step(net.params, net.grads)
        losses.append(loss)
    # It learned: the last 16 steps' mean loss is a fraction of the first 16 steps' (2.38 and 0.09 when written).
    assert np.mean(losses[-16:]) < 0.25 * np.mean(losses[:16]), (losses[:16], losses[-16:])
    inputs, out = [], x_test.astype(np.float64)
    for layer in net.layers:
        inputs.append(out.copy())
        out = layer.forward(out, "probe")
    net.loss_fn.forward(out, y_test)
    d = net.loss_fn.backward()
    found = []
    for i in range(len(net.layers) - 1, -1, -1):
        layer = net.layers[i]
        if isinstance(layer, nn.Conv2d):
            found.append((layer.name, inputs[i], layer.params["weight"].copy(), layer.params["bias"].copy(), d.copy()))
        d = layer.backward(d, need_dx=True)
    assert len(found) == 8
    return found[::-1]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_trained_network_activations_within_tolerance(trained_vgg_layers, dtype):
    for name, x, weight, bias, dy in trained_vgg_layers:
        errors = pass_errors(x, weight, bias, dy, dtype)
        assert max(errors.values()) <= TOLERANCE[dtype], (name, x.shape, weight.shape, errors)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_both_tile_sizes_on_one_map(rng, dtype):
    """F(2x2) on a map F(4x4) would take, and F(4x4) on maps smaller than its tile (mostly padding)."""
    for tile, size in [(2, 8), (4, 3), (4, 1)]:
        errors = check_all_passes(rng, 2, 5, 4, size, "normal", dtype, tile=tile)
        assert max(errors.values()) <= TOLERANCE[dtype], (tile, size, errors)


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(1, 3),
    c_in=st.integers(1, 4),
    c_out=st.integers(1, 4),
    h=st.integers(1, 11),
    w=st.integers(1, 11),
    tile=st.sampled_from([None, 2, 4]),
    seed=st.integers(0, 2**32 - 1),
)
def test_any_shape_matches_direct_convolution(n, c_in, c_out, h, w, tile, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c_in, h, w))
    weight = rng.standard_normal((c_out, c_in, 3, 3))
    bias = rng.standard_normal(c_out)
    dy = rng.standard_normal((n, c_out, h, w))
    assert l2_error(winograd_forward(x, weight, bias, tile=tile), direct_forward(x, weight, bias)) <= 1e-13
    assert l2_error(winograd_backward_input(dy, weight, tile=tile), direct_input_gradient(dy, weight)) <= 1e-13
    dw = np.empty_like(weight)
    winograd_backward_weight(dy, x, dw, tile=tile)
    assert l2_error(dw, direct_weight_gradient(dy, x)) <= 1e-13


@pytest.mark.parametrize("max_tiles", [3, 20, 64])
@pytest.mark.parametrize("tile", [2, 4])
@pytest.mark.parametrize("size", [(8, 12), (9, 10)], ids=["whole tiles", "partial tiles"])
def test_every_tile_grouping_matches_direct_convolution(monkeypatch, rng, max_tiles, tile, size):
    """Groups of tile rows of one image (an image has more tiles than a group), of several images with a shorter
    last group, and of whole images, on maps that are and are not multiples of the tile."""
    monkeypatch.setattr(winograd, "_MIN_GROUP_TILES", 1)
    monkeypatch.setattr(winograd, "_MAX_GROUP_TILES", max_tiles)
    x = rng.standard_normal((5, 3, *size))
    weight = rng.standard_normal((4, 3, 3, 3))
    bias = rng.standard_normal(4)
    dy = rng.standard_normal((5, 4, *size))
    assert l2_error(winograd_forward(x, weight, bias, tile=tile), direct_forward(x, weight, bias)) <= 1e-13
    assert l2_error(winograd_backward_input(dy, weight, tile=tile), direct_input_gradient(dy, weight)) <= 1e-13
    dw = np.empty_like(weight)
    winograd_backward_weight(dy, x, dw, tile=tile)
    assert l2_error(dw, direct_weight_gradient(dy, x)) <= 1e-13


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_repeats_bit_for_bit_for_a_thread_count(rng, dtype):
    # Big enough for two parallel workers (and several tile groups each).
    x, weight, bias, dy = (a.astype(dtype) for a in layer_inputs(rng, 6, 32, 32, 16, "normal"))
    threads = numba.get_num_threads()
    try:
        numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
        results = []
        for _ in range(2):
            dw = np.empty_like(weight)
            winograd_backward_weight(dy, x, dw)
            results.append((winograd_forward(x, weight, bias), winograd_backward_input(dy, weight), dw))
    finally:
        numba.set_num_threads(threads)
    for first, second in zip(*results):
        assert first.tobytes() == second.tobytes()


def test_non_contiguous_dweight_is_written(rng):
    x, weight, _, dy = layer_inputs(rng, 2, 3, 4, 6, "normal")
    out = np.full((3, 4, 3, 3), np.nan).transpose(1, 0, 2, 3)
    winograd_backward_weight(dy, x, out)
    assert l2_error(out, direct_weight_gradient(dy, x)) <= 1e-13


def test_output_tile_rule():
    assert output_tile(32, 32) == 4 and output_tile(4, 4) == 4 and output_tile(4, 3) == 2 and output_tile(2, 2) == 2


def test_bad_inputs_name_the_argument():
    x = np.zeros((1, 2, 4, 4))
    with pytest.raises(ValueError, match="^weight:.*3, 3"):
        winograd_forward(x, np.zeros((3, 2, 5, 5)))
    with pytest.raises(ValueError, match="^weight:.*input channels"):
        winograd_forward(x, np.zeros((3, 4, 3, 3)))
    with pytest.raises(ValueError, match="^tile:"):
        winograd_forward(x, np.zeros((3, 2, 3, 3)), tile=3)
    with pytest.raises(ValueError, match="^bias:"):
        winograd_forward(x, np.zeros((3, 2, 3, 3)), np.zeros(2))
    with pytest.raises(ValueError, match="^weight:.*dtype"):
        winograd_forward(x, np.zeros((3, 2, 3, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="^weight:.*output channels"):
        winograd_backward_input(np.zeros((1, 3, 4, 4)), np.zeros((2, 2, 3, 3)))
    with pytest.raises(ValueError, match="^dy:"):
        winograd_backward_weight(np.zeros((1, 3, 5, 4)), x, np.zeros((3, 2, 3, 3)))
    with pytest.raises(ValueError, match="^dweight:"):
        winograd_backward_weight(np.zeros((1, 3, 4, 4)), x, np.zeros((3, 2, 3, 1)))


# Whole networks: gradients of a small VGG with every conv in Winograd against central differences.


@pytest.mark.parametrize("norm", [None, "batch"])
def test_vgg_with_winograd_gradient_matches_finite_differences(norm):
    # A fixed draw: central differences across a ReLU or max-pool kink fail for either algorithm on some draws (the
    # draw this test's name would seed gives 0.019 for im2col and Winograd alike), so the draw is one without.
    rng = np.random.default_rng(5)
    net = models.vgg("vgg11", norm=norm, width=1 / 16, dtype=np.float64, seed=3, algorithm="winograd")
    assert all(layer.algorithm == "winograd" for layer in net.layers if isinstance(layer, nn.Conv2d))
    x = rng.standard_normal((3, 3, 32, 32))
    y = rng.integers(0, 10, size=3)
    assert check_gradient(net, x, y, rng) < 1e-6
    # And the same loss and gradient as im2col, to float64 rounding.
    twin = models.vgg("vgg11", norm=norm, width=1 / 16, dtype=np.float64, seed=3, algorithm="im2col")
    twin.params[:] = net.params
    loss, grad = net.loss_and_grad(x, y, mode="probe")
    grad = grad.copy()
    loss_twin, grad_twin = twin.loss_and_grad(x, y, mode="probe")
    assert abs(loss - loss_twin) <= 1e-12 * abs(loss_twin)
    assert l2_error(grad, grad_twin) <= 1e-11


def test_conv2d_and_vgg_reject_bad_algorithms():
    with pytest.raises(ValueError, match="^algorithm:"):
        nn.Conv2d(3, 4, algorithm="fft")
    with pytest.raises(ValueError, match="^algorithm:.*winograd"):
        nn.Conv2d(3, 4, kernel_size=3, stride=2, algorithm="winograd")
    with pytest.raises(ValueError, match="^algorithm:"):
        models.vgg("vgg11", width=1 / 16, algorithm="Winograd")


# The weight transforms against float64 NumPy twins written with plain divisions: the same expressions in the same
# order, so the kernels' division-free quotients (kernels/_division) must give exactly their bits.


def _g6_twin(g0, g1, g2):
    s02 = g0 + g2
    p = g0 / 24.0 + g2 / 6.0
    q = g1 / 12.0
    return [g0 / 4.0, -(s02 + g1) / 6.0, -(s02 - g1) / 6.0, p + q, p - q, g2]


def _gt6_twin(a0, a1, a2, a3, a4, a5):
    s12, s34 = a1 + a2, a3 + a4
    return [a0 / 4.0 - s12 / 6.0 + s34 / 24.0, (a2 - a1) / 6.0 + (a3 - a4) / 12.0, (s34 - s12) / 6.0 + a5]


def _awkward_weights(rng, shape, dtype):
    """Normal weights at several scales, with exact zeros of both signs, infinities, NaN and extremes mixed in."""
    w = rng.standard_normal(shape) * 10.0 ** rng.integers(-6, 6, shape)
    specials = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 3.0e38, -1.4e-45, 1e-300])
    pick = rng.random(shape) < 0.05
    w[pick] = rng.choice(specials, int(pick.sum()))
    with np.errstate(over="ignore"):
        return w.astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("flip", [False, True])
def test_weight_transform_matches_its_twin_bit_for_bit(rng, dtype, flip):
    from smoothnorm.kernels.conv._winograd_transforms import _transform_weights

    w = _awkward_weights(rng, (24, 40, 3, 3), dtype)
    g = (np.flip(w, (2, 3)).transpose(1, 0, 2, 3) if flip else w).astype(np.float64)
    rows, cols = g.shape[:2]
    expected = np.empty((36, rows, cols), dtype=dtype)
    with np.errstate(all="ignore"):
        half = [_g6_twin(g[:, :, 0, col], g[:, :, 1, col], g[:, :, 2, col]) for col in range(3)]  # [col][a]
        for a in range(6):
            for b, value in enumerate(_g6_twin(half[0][a], half[1][a], half[2][a])):
                expected[a * 6 + b] = value
        u = np.empty((36, rows, cols), dtype=dtype)
        _transform_weights(w, 4, flip, u)
    assert u.tobytes() == expected.tobytes()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_inverse_weight_transform_matches_its_twin_bit_for_bit(rng, dtype):
    from smoothnorm.kernels.conv._winograd_transforms import _inverse_weight_transform

    parts = np.stack([_awkward_weights(rng, (36, 24, 40), dtype) for _ in range(3)])
    merged = parts[0].astype(np.float64)
    with np.errstate(all="ignore"):
        for t in range(1, parts.shape[0]):
            merged = merged + parts[t]
        half = [_gt6_twin(*(merged[b + j * 6] for j in range(6))) for b in range(6)]  # [b][k]
        expected = np.empty((24, 40, 3, 3), dtype=dtype)
        for k in range(3):
            for l_, value in enumerate(_gt6_twin(*(half[b][k] for b in range(6)))):
                expected[:, :, k, l_] = value
        dweight = np.empty((24, 40, 3, 3), dtype=dtype)
        _inverse_weight_transform(parts, 4, dweight)
    assert dweight.tobytes() == expected.tobytes()
