"""Networks: flat parameter views, whole-network gradients against finite differences, modes, state_dict."""

import math

import numpy as np
import pytest

import smoothnorm
from smoothnorm import nn
from smoothnorm.nn import models
from tests.helpers import check_gradient, directional_fd
from tests.reference import relative_error


def tiny_vgg(norm=None, dtype=np.float64, seed=0, name="vgg11"):
    return models.vgg(name, norm=norm, width=1 / 16, dtype=dtype, seed=seed)






def test_params_are_views_in_execution_order():
    net = tiny_vgg(norm="batch")
    slices = net.layer_slices()
    assert list(slices) == [la.name for la in net.layers if la.param_shapes()]
    offset = 0
    for s in slices.values():
        assert s.start == offset
        offset = s.stop
    assert offset == net.num_params
    conv = net["features.0"]
    assert np.shares_memory(conv.params["weight"], net.params)
    assert np.shares_memory(conv.grads["weight"], net.grads)
    net.params[net.param_slices()["features.0.weight"]] = 7.0
    assert np.all(conv.params["weight"] == 7.0)
    assert net.params.flags.c_contiguous and net.params.ndim == 1


@pytest.mark.parametrize("norm", [None, "batch"])
def test_vgg_gradient_matches_finite_differences(norm, rng):
    net = tiny_vgg(norm=norm, seed=int(rng.integers(1000)))
    x = rng.standard_normal((3, 3, 32, 32))
    y = rng.integers(0, 10, size=3)
    assert check_gradient(net, x, y, rng) < 1e-6


@pytest.mark.parametrize("norm", [None, "batch"])
def test_dln_gradient_matches_finite_differences_all_coordinates(norm, rng):
    net = models.dln(5, 4, in_dim=3, out_dim=2, norm=norm, seed=int(rng.integers(1000)))
    x = rng.standard_normal((7, 3))
    y = rng.standard_normal((7, 2))
    _, g = net.loss_and_grad(x, y, mode="probe")
    g = g.copy()
    numeric = np.array([directional_fd(net, x, y, np.eye(net.num_params)[i]) for i in range(net.num_params)])
    assert relative_error(g, numeric) < 1e-6


def test_deep_dln_directional_derivative(rng):
    net = models.dln(25, 10, in_dim=10, out_dim=10, norm="batch", seed=3)
    x = rng.standard_normal((50, 10))
    y = rng.standard_normal((50, 10))
    assert check_gradient(net, x, y, rng, n_coords=10) < 1e-6


def test_mlp_gradient_matches_finite_differences(rng):
    net = models.mlp(6, [5, 4], 3, norm="batch", dtype=np.float64, seed=1)
    x = rng.standard_normal((8, 6))
    y = rng.integers(0, 3, size=8)
    assert check_gradient(net, x, y, rng, n_coords=30) < 1e-6


def test_train_and_probe_give_the_same_gradient_but_only_train_updates_statistics(rng):
    net = tiny_vgg(norm="batch")
    x = rng.standard_normal((4, 3, 32, 32))
    y = rng.integers(0, 10, size=4)
    before = net.state_dict()
    loss_p, g = net.loss_and_grad(x, y, mode="probe")
    g_probe = g.copy()
    after_probe = net.state_dict()
    for key in before:
        assert np.array_equal(before[key], after_probe[key]), key
    loss_t, g = net.loss_and_grad(x, y, mode="train")
    assert loss_t == loss_p
    assert np.array_equal(g, g_probe)
    after_train = net.state_dict()
    assert not np.array_equal(after_train["features.1.running_mean"], before["features.1.running_mean"])
    assert int(after_train["features.1.num_batches_tracked"]) == 1


def test_eval_mode_uses_running_statistics(rng):
    net = models.mlp(4, [3], 2, norm="batch", dtype=np.float64)
    bn = net["layers.1"]
    bn.running_mean[:] = rng.standard_normal(3)
    bn.running_var[:] = rng.uniform(0.5, 2.0, size=3)
    x = rng.standard_normal((5, 4))
    net.forward(x, mode="eval")
    h = x @ net["layers.0"].params["weight"].T + net["layers.0"].params["bias"]
    expected = (h - bn.running_mean) / np.sqrt(bn.running_var + 1e-5)
    expected = np.maximum(expected * bn.params["weight"] + bn.params["bias"], 0)
    out = expected @ net["layers.3"].params["weight"].T + net["layers.3"].params["bias"]
    np.testing.assert_allclose(net.output, out, rtol=1e-12, atol=1e-12)


def test_state_dict_uses_pytorch_names_and_round_trips(rng):
    net = tiny_vgg(norm="batch", seed=0)
    x = rng.standard_normal((4, 3, 32, 32))
    net.forward(x, mode="train")  # move running statistics away from their defaults
    state = net.state_dict()
    assert state["features.0.weight"].shape == (4, 3, 3, 3)
    assert state["features.0.bias"].shape == (4,)
    assert state["features.1.weight"].shape == (4,)
    assert state["features.1.running_var"].shape == (4,)
    assert state["features.1.num_batches_tracked"].dtype == np.int64
    assert state["classifier.weight"].shape == (10, 32)
    other = tiny_vgg(norm="batch", seed=1)
    assert not np.array_equal(other.params, net.params)
    other.load_state_dict(state)
    assert np.array_equal(other.params, net.params)
    for mode in ("eval", "probe"):
        assert np.array_equal(other.forward(x, mode), net.forward(x, mode))
    state["features.0.weight"][...] = 0  # the state_dict holds copies
    assert np.any(net["features.0"].params["weight"] != 0)


def test_load_state_dict_rejects_bad_keys_and_shapes():
    net = tiny_vgg()
    state = net.state_dict()
    bad = dict(state)
    bad.pop("classifier.bias")
    with pytest.raises(ValueError, match="classifier.bias"):
        net.load_state_dict(bad)
    bad = dict(state)
    bad["classifier.weight"] = np.zeros((3, 3))
    with pytest.raises(ValueError, match=r"classifier.weight.*shape"):
        net.load_state_dict(bad)


def test_copy_is_independent(rng):
    net = tiny_vgg(norm="batch")
    twin = net.copy()
    assert np.array_equal(twin.params, net.params)
    twin.params[:] = 0
    assert np.any(net.params != 0)
    assert np.all(twin["features.0"].params["weight"] == 0)
    assert np.shares_memory(twin["features.0"].params["weight"], twin.params)


@pytest.mark.parametrize("norm", ["batch", "noisy_batch"])
def test_astype_converts_a_float32_network_to_an_independent_float64_one(rng, norm):
    net = tiny_vgg(norm=norm, dtype=np.float32)
    x = rng.standard_normal((4, 3, 32, 32)).astype(np.float32)
    y = rng.integers(0, 10, size=4)
    net.loss_and_grad(x, y, mode="train")  # running statistics move away from their defaults
    wide = net.astype(np.float64)
    assert wide.dtype == np.float64 and wide.params.dtype == wide.grads.dtype == np.float64
    for layer in wide.layers:
        for name, view in layer.params.items():
            assert view.dtype == np.float64 and np.shares_memory(view, wide.params), (layer.name, name)
        for name, buf in layer.buffers().items():
            assert buf.dtype == (np.int64 if name == "num_batches_tracked" else np.float64), (layer.name, name)
    np.testing.assert_allclose(wide.params, net.params.astype(np.float64), rtol=0, atol=0)
    out32 = net.forward(x, "probe").copy()
    out64 = wide.forward(x, "probe")  # x (float32) is coerced to the network's dtype
    assert out64.dtype == np.float64
    np.testing.assert_allclose(out64, out32, rtol=1e-4, atol=1e-4)
    wide.params[:] = 0
    assert np.any(net.params != 0) and net.dtype == np.float32
    back = net.astype("float64").astype(np.float32)
    assert back.dtype == np.float32 and back.params.dtype == np.float32
    np.testing.assert_array_equal(back.params, net.params)
    with pytest.raises(ValueError, match="dtype: expected float32 or float64"):
        net.astype(np.int32)


def test_seed_determines_initialization():
    a, b, c = tiny_vgg(seed=5), tiny_vgg(seed=5), tiny_vgg(seed=6)
    assert np.array_equal(a.params, b.params)
    assert not np.array_equal(a.params, c.params)


def test_glorot_and_pytorch_init_bounds():
    net = models.vgg("vgg11", width=0.25, init="glorot")
    w = net["features.0"].params["weight"]
    bound = math.sqrt(6.0 / (3 * 9 + 16 * 9))
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.9 * bound
    assert np.all(net["features.0"].params["bias"] == 0)
    net = models.vgg("vgg11", width=0.25, init="pytorch")
    w, b = net["features.0"].params["weight"], net["features.0"].params["bias"]
    assert np.abs(w).max() <= 1 / math.sqrt(27) and np.abs(b).max() <= 1 / math.sqrt(27)
    assert np.any(b != 0)


@pytest.mark.parametrize("name,n_conv", [("vgg11", 8), ("vgg13", 10), ("vgg16", 13), ("vgg19", 16)])
def test_vgg_variants_have_the_right_layers(name, n_conv):
    net = models.vgg(name, norm="batch", width=1 / 16)
    convs = [la for la in net.layers if isinstance(la, nn.Conv2d)]
    norms = [la for la in net.layers if isinstance(la, nn.BatchNorm)]
    pools = [la for la in net.layers if isinstance(la, nn.MaxPool2d)]
    assert len(convs) == n_conv and len(norms) == n_conv and len(pools) == 5
    assert [la.out_channels for la in convs][-1] == 32
    assert net.output_shape == (10,)


def test_float32_network_tracks_float64(rng):
    x = rng.standard_normal((4, 3, 32, 32))
    y = rng.integers(0, 10, size=4)
    n64 = tiny_vgg(norm="batch", dtype=np.float64)
    n32 = tiny_vgg(norm="batch", dtype=np.float32)
    n32.load_state_dict(n64.state_dict())
    l64, g64 = n64.loss_and_grad(x, y)
    l32, g32 = n32.loss_and_grad(x, y)
    assert n32.params.dtype == np.float32 and g32.dtype == np.float32
    assert abs(l32 - l64) < 1e-4 * max(1, abs(l64))
    assert relative_error(g32, g64) < 1e-3


def test_non_contiguous_input_is_copied(rng):
    net = tiny_vgg()
    x = rng.standard_normal((3, 32, 32, 2)).transpose(3, 0, 1, 2)  # (2, 3, 32, 32), not C-contiguous
    assert not x.flags.c_contiguous
    np.testing.assert_array_equal(net.forward(x, "eval"), net.forward(np.ascontiguousarray(x), "eval"))


def test_bad_inputs_name_the_argument(rng):
    net = tiny_vgg()
    good = rng.standard_normal((2, 3, 32, 32))
    with pytest.raises(ValueError, match=r"x: expected shape \(\*, 3, 32, 32\), got \(2, 3, 16, 16\)"):
        net.forward(rng.standard_normal((2, 3, 16, 16)))
    with pytest.raises(ValueError, match="x: expected shape"):
        net.forward(good[0])
    bad = good.copy()
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="x: expected finite values, got 1 NaN/Inf"):
        net.forward(bad)
    with pytest.raises(ValueError, match="x: expected a real numeric array"):
        net.forward(good.astype(complex))
    with pytest.raises(ValueError, match="mode"):
        net.forward(good, mode="training")
    with pytest.raises(ValueError, match=r"y: expected labels in \[0, 10\)"):
        net.loss_and_grad(good, np.array([0, 10]))
    with pytest.raises(ValueError, match="y: expected integer class labels"):
        net.loss_and_grad(good, np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"y: expected shape \(2,\)"):
        net.loss_and_grad(good, np.array([0, 1, 2]))
    with pytest.raises(ValueError, match="name: expected one of"):
        models.vgg("vgg12")
    with pytest.raises(ValueError, match="norm: expected one of"):
        models.vgg("vgg11", norm="batchnorm")
    with pytest.raises(ValueError, match="dtype: expected float32 or float64"):
        models.vgg("vgg11", dtype=np.float16)
    with pytest.raises(ValueError, match="width"):
        models.vgg("vgg11", width=0.001)
    with pytest.raises(ValueError, match="depth"):
        models.dln(0, 10, in_dim=10, out_dim=10)
    dnet = models.dln(3, 4, in_dim=3, out_dim=2)
    with pytest.raises(ValueError, match=r"y: expected shape \(5, 2\)"):
        dnet.loss_and_grad(np.zeros((5, 3)), np.zeros((5, 3)))


def test_norm_registry_matches_public_names():
    assert tuple(nn.NORM_LAYERS) == smoothnorm.NORMS


def test_dln_layout_and_summed_loss(rng):
    net = models.dln(4, 10, in_dim=10, out_dim=10, norm="batch")
    assert [la.name for la in net.layers] == [
        "layers.0", "norms.0", "layers.1", "norms.1", "layers.2", "norms.2", "layers.3"
    ]
    assert all(la.params.get("bias") is None for la in net.layers if isinstance(la, nn.Linear))
    plain = models.dln(3, 10, in_dim=10, out_dim=10)
    x = rng.standard_normal((6, 10))
    y = rng.standard_normal((6, 10))
    w = [plain[f"layers.{i}"].params["weight"] for i in range(3)]
    expected = np.sum((x @ w[0].T @ w[1].T @ w[2].T - y) ** 2)
    assert plain.loss(x, y) == pytest.approx(expected, rel=1e-12)


# ----------------------------------------------------------------------------------------------------------------
# Runs of Linear layers (deep linear networks) go through one kernel: results must equal the layer-by-layer path.
def _chain_net(bias: bool, dtype, widths=(6, 9, 5, 7)):
    layers = [(f"fc{i}", nn.Linear(a, b, bias=bias)) for i, (a, b) in enumerate(zip(widths[:-1], widths[1:]))]
    layers += [("relu", nn.ReLU()), ("head", nn.Linear(widths[-1], 3)), ("tail", nn.Linear(3, 2))]
    return nn.Network(layers, input_shape=(widths[0],), loss=nn.SquaredError(), dtype=dtype, seed=3)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("n", [3, 1500])  # one row part / two (see kernels.linear_chain_plan)
def test_linear_chains_equal_the_layer_by_layer_path_bit_for_bit(rng, dtype, bias, n):
    net = _chain_net(bias, dtype)
    assert [(c[0], c[1]) for c in net._chains] == [(0, 3), (4, 6)]
    x = rng.standard_normal((n, 6)).astype(dtype)
    y = rng.standard_normal((n, 2)).astype(dtype)
    plain = net.copy()
    plain._chains = []
    out = net.forward(x, capture=["fc1"]).copy()
    assert set(net._fused) == {2, 5}  # both runs took the fused kernel
    assert np.array_equal(out, plain.forward(x, capture=["fc1"]))
    assert np.array_equal(net.captured["fc1"], plain.captured["fc1"])
    d = rng.standard_normal((n, 2)).astype(dtype)
    dx = net.backward(d, need_input_grad=True)
    dx_plain = plain.backward(d, need_input_grad=True)
    assert np.array_equal(dx, dx_plain) and np.array_equal(net.grads, plain.grads)
    loss, grads = net.loss_and_grad(x, y)
    loss_plain, grads_plain = plain.loss_and_grad(x, y)
    assert loss == loss_plain and np.array_equal(grads, grads_plain)


def test_layers_of_a_fused_chain_still_backpropagate_one_by_one(rng):
    """ICS and the theory checks call layer.backward after net.forward: the fused forward leaves each Linear its
    input, so that path gives the same gradients."""
    net = models.dln(6, 4, in_dim=3, out_dim=2)
    x, y = rng.standard_normal((50, 3)), rng.standard_normal((50, 2))
    net.loss_and_grad(x, y)
    fused = net.grads.copy()
    net.grads[:] = np.nan
    net.loss_fn.forward(net.forward(x), y)
    d = net.loss_fn.backward()
    for i in range(len(net.layers) - 1, -1, -1):
        d = net.layers[i].backward(d, need_dx=i > 0)
    assert np.array_equal(net.grads, fused)


def test_large_products_run_layer_by_layer(rng):
    net = models.dln(3, 300, in_dim=300, out_dim=300)  # 2000 x 300 x 300 multiply-adds: beyond the small route
    net.forward(rng.standard_normal((2000, 300)))
    assert net._chains and not net._fused


@pytest.mark.parametrize("algorithm", ["im2col", "winograd"])
def test_conv_layer_reuses_its_output_buffers_and_follows_shape_changes(rng, algorithm):
    """Conv2d writes y and dx into buffers kept between calls (no fresh pages per step), with the kernels' bits."""
    from smoothnorm.kernels.conv.conv2d import conv2d_backward, conv2d_forward
    from smoothnorm.nn.layers import Conv2d

    layer = Conv2d(3, 4, algorithm=algorithm)
    layer.name = "conv"
    w, b = rng.standard_normal((4, 3, 3, 3)), rng.standard_normal(4)
    layer.params = {"weight": w, "bias": b}
    layer.grads = {"weight": np.empty_like(w), "bias": np.empty_like(b)}
    x1, x2 = rng.standard_normal((2, 3, 5, 5)), rng.standard_normal((2, 3, 5, 5))
    y1 = layer.forward(x1, "train")
    y2 = layer.forward(x2, "train")
    assert y2 is y1  # outputs are valid until the layer's next call
    np.testing.assert_array_equal(y2, conv2d_forward(x2, w, b, algorithm=algorithm))
    dy = rng.standard_normal(y2.shape)
    dx1 = layer.backward(dy)
    assert layer.backward(dy) is dx1
    dw = np.empty_like(w)
    np.testing.assert_array_equal(dx1, conv2d_backward(dy, x2, w, dw, None, algorithm=algorithm))
    np.testing.assert_array_equal(layer.grads["weight"], dw)
    assert layer.backward(dy, need_dx=False) is None
    x3 = rng.standard_normal((3, 3, 6, 6))  # another batch and map size: new buffers
    y3 = layer.forward(x3, "train")
    assert y3.shape == (3, 4, 6, 6)
    np.testing.assert_array_equal(y3, conv2d_forward(x3, w, b, algorithm=algorithm))


@pytest.mark.parametrize("name", ["vgg11", "vgg16"])
@pytest.mark.parametrize("width", [1 / 8, 0.5])
def test_conv_shapes_are_the_shapes_vgg_builds(name, width):
    """models.conv_shapes against the convolutions a built VGG holds and the maps they see in a forward pass."""
    net = models.vgg(name, width=width, dtype=np.float64)
    seen = []
    x = np.zeros((1, 3, 32, 32))
    for layer in net.layers:
        if isinstance(layer, nn.Conv2d):
            seen.append((layer.params["weight"].shape[1], layer.params["weight"].shape[0], x.shape[2]))
        x = layer.forward(x, "probe")
    assert models.conv_shapes(name, width) == seen


# BatchNorm then ReLU run as one kernel in train and probe modes: results must equal the layer-by-layer path.
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_batch_norm_relu_pairs_equal_the_layer_by_layer_path_bit_for_bit(rng, dtype):
    net = models.vgg("vgg11", width=0.125, norm="batch", dtype=dtype, seed=4)
    assert len(net._norm_relu) == 8
    plain = net.copy()
    plain.fuse_norm_relu = False
    x = rng.standard_normal((6, 3, 32, 32)).astype(dtype)
    y = rng.integers(0, 10, 6)
    for mode in ("train", "probe", "train"):
        loss, grads = net.loss_and_grad(x, y, mode=mode)
        assert net._paired == {i + 1 for i in net._norm_relu}  # every pair took the fused kernels
        loss_plain, grads_plain = plain.loss_and_grad(x, y, mode=mode)
        assert not plain._paired
        assert loss == loss_plain and np.array_equal(grads, grads_plain)
    for key, value in plain.state_dict().items():  # running statistics, batches tracked
        assert np.array_equal(net.state_dict()[key], value), key
    assert net.forward(x, "eval").tobytes() == plain.forward(x, "eval").tobytes() and not net._paired


def test_captured_batch_norm_output_runs_its_pair_layer_by_layer(rng):
    net = models.vgg("vgg11", width=0.125, norm="batch", seed=4)
    bn = next(i for i in net._norm_relu)
    x = rng.standard_normal((4, 3, 32, 32))
    names = [net.layers[bn].name, net.layers[bn + 2].name]
    net.forward(x, capture=names)
    assert bn + 1 not in net._paired and len(net._paired) == len(net._norm_relu) - 1
    plain = net.copy()
    plain.fuse_norm_relu = False
    plain.forward(x, capture=names)
    for name in names:
        assert np.array_equal(net.captured[name], plain.captured[name])


def test_layers_of_a_fused_pair_still_backpropagate_one_by_one(rng):
    """ICS probes call layer.backward after net.forward: the fused forward leaves BatchNorm its cache and ReLU its
    output, so the layer-by-layer backward gives the same gradients."""
    net = models.vgg("vgg11", width=0.125, norm="batch", seed=4)
    x, y = rng.standard_normal((4, 3, 32, 32)), rng.integers(0, 10, 4)
    net.loss_and_grad(x, y, mode="probe")
    fused = net.grads.copy()
    net.grads[:] = np.nan
    net.loss_fn.forward(net.forward(x, "probe"), y)
    d = net.loss_fn.backward()
    for i in range(len(net.layers) - 1, -1, -1):
        d = net.layers[i].backward(d, need_dx=i > 0)
    assert np.array_equal(net.grads, fused)


@pytest.mark.parametrize("placement", ["after_affine", "before_affine"])
def test_noisy_batch_norm_relu_pairs_equal_the_layer_by_layer_path_bit_for_bit(rng, placement):
    net = models.vgg("vgg11", width=0.125, norm="noisy_batch", norm_options={"placement": placement}, seed=4)
    assert len(net._norm_relu) == 8
    plain = net.copy()
    plain.fuse_norm_relu = False
    x = rng.standard_normal((6, 3, 32, 32)).astype(np.float32)
    y = rng.integers(0, 10, 6)
    for step, mode in enumerate(("train", "probe", "train")):
        for n in (net, plain):
            n.resample_noise(np.random.default_rng(step))
        loss, grads = net.loss_and_grad(x, y, mode=mode)
        assert net._paired == {i + 1 for i in net._norm_relu}
        loss_plain, grads_plain = plain.loss_and_grad(x, y, mode=mode)
        assert loss == loss_plain and np.array_equal(grads, grads_plain)
    for key, value in plain.state_dict().items():
        assert np.array_equal(net.state_dict()[key], value), key
