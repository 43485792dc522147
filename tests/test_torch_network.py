"""smoothnorm.torch.TorchNetwork: a PyTorch module wrapped as a network gives what the native network gives.

The package's VGG-11 with BatchNorm (width 1/16, float64) is exported to PyTorch with the state-dict interchange
(tests/torch_twin.py) and wrapped; training with the package's SGD, the landscape probe, ICS (Definition 2.1) and
exact Hessian-vector products then agree with the native network's to 1e-8 relative. Probe mode leaves the module's
running statistics and parameters bit for bit; bad arguments are named.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from smoothnorm import data, measure, optim  # noqa: E402
from smoothnorm.nn import models  # noqa: E402
from smoothnorm.torch import TorchNetwork  # noqa: E402
from tests.torch_twin import loaded_twin, run_torch  # noqa: E402

pytestmark = pytest.mark.torch

RTOL = 1e-8


class Twin(torch.nn.Module):
    """The torch twin of a native network as one module (its children under the native state_dict names)."""

    def __init__(self, root, order):
        super().__init__()
        for name, child in root.named_children():
            self.add_module(name, child)
        self.order = order  # a plain list: the modules are registered once, as children above

    def forward(self, x):
        return run_torch(self.order, x)


def _pair(seed=0):
    native = models.vgg("vgg11", norm="batch", width=1 / 16, dtype=np.float64, seed=seed)
    root, order = loaded_twin(native)
    wrapped = TorchNetwork(Twin(root, order), dtype=np.float64, input_shape=(3, 32, 32))
    return native, wrapped


@pytest.fixture(scope="module")
def batches():
    (x, y), _ = data.synthetic_images(64, 0, size=32, seed=3)
    return [(x[i:i + 16], y[i:i + 16]) for i in range(0, 64, 16)]


def _close(a, b, rtol=RTOL):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    scale = max(np.max(np.abs(a)), np.max(np.abs(b)), 1e-300)
    return float(np.max(np.abs(a - b)) / scale) <= rtol


def test_layout_follows_the_native_network():
    native, wrapped = _pair()
    assert wrapped.param_slices() == native.param_slices()
    assert wrapped.layer_slices() == native.layer_slices()
    assert wrapped.weight_layer_names() == measure.weight_layer_names(native)
    assert np.array_equal(wrapped.params, native.params)
    state = native.state_dict()
    assert sorted(wrapped.state_dict()) == sorted(state)


def test_params_are_views_that_step_the_module(batches):
    _, wrapped = _pair()
    x, _ = batches[0]
    before = wrapped.forward(x, "eval").copy()
    weight = dict(wrapped.module.named_parameters())["features.0.weight"]
    assert np.shares_memory(weight.detach().numpy(), wrapped.params)
    wrapped.params[wrapped.param_slices()["features.0.weight"]] += 0.1
    assert weight.detach().numpy()[0, 0, 0, 0] == wrapped.params[0]
    assert not np.allclose(wrapped.forward(x, "eval"), before)


def test_twenty_sgd_steps_follow_the_native_trajectory(batches):
    native, wrapped = _pair()
    start = native.params.copy()
    runs = []
    for net in (native, wrapped):
        opt = optim.SGD(lr=0.05, momentum=0.9)
        losses = []
        for step in range(20):
            x, y = batches[step % len(batches)]
            loss, grads = net.loss_and_grad(x, y, mode="train")
            losses.append(loss)
            opt.step(net.params, grads)
        runs.append((np.array(losses), net.params.copy(), net.state_dict()))
    (l0, w0, s0), (l1, w1, s1) = runs
    assert _close(l0, l1) and _close(w0, w1)
    assert np.linalg.norm(w1 - start) > 0.1 * np.linalg.norm(start) and l0[-1] < l0[0]  # it trained
    for key in s0:
        if key.endswith("running_mean") or key.endswith("running_var"):
            assert _close(s0[key], s1[key]), key
        elif key.endswith("num_batches_tracked"):
            assert int(s0[key]) == int(s1[key]) == 20


def _trained_pair(batches, steps=3):
    native, wrapped = _pair()
    opts = []
    for net in (native, wrapped):
        opt = optim.SGD(lr=0.05, momentum=0.9)
        for step in range(steps):
            net.loss_and_grad(*batches[step % len(batches)], mode="train")
            opt.step(net.params, net.grads)
        opts.append(opt)
    return native, wrapped, opts


def test_landscape_probe_equals_the_native_one(batches):
    native, wrapped, _ = _trained_pair(batches)
    x, y = batches[1]
    etas = measure.step_grid(0.05, "vgg")
    a = measure.probe_gradient_direction(native, x, y, etas)
    b = measure.probe_gradient_direction(wrapped, x, y, etas)
    assert _close(a.losses, b.losses) and _close(a.grad_distances, b.grad_distances)
    assert _close(a.effective_beta, b.effective_beta) and _close(a.base_loss, b.base_loss)
    assert _close(a.grad_norm, b.grad_norm)


def test_ics_equals_the_native_one(batches):
    native, wrapped, (opt_native, opt_wrapped) = _trained_pair(batches)
    x, y = batches[2]
    a = measure.internal_covariate_shift(native, x, y, opt_native)
    b = measure.internal_covariate_shift(wrapped, x, y, opt_wrapped)
    assert list(a) == list(b) == wrapped.weight_layer_names()
    for name in a:
        assert _close(a[name][0], b[name][0]), name
        assert abs(a[name][1] - b[name][1]) <= RTOL, name
    assert a[list(a)[-1]][0] > 0  # the later layers' gradients change


def test_exact_hessian_products_and_top_eigenvalue_equal_the_native_ones(batches, rng):
    native, wrapped, _ = _trained_pair(batches)
    x, y = batches[3]
    v = rng.standard_normal(native.num_params)
    for mode in ("probe", "eval"):
        a = measure.hessian_vector_product(native, x, y, v, mode=mode)
        b = measure.hessian_vector_product(wrapped, x, y, v, mode=mode)
        assert _close(a, b), mode
    top_native = measure.hessian_top_eigenvalues(native, x, y, k=1)
    top_wrapped = measure.hessian_top_eigenvalues(wrapped, x, y, k=1)
    assert _close(top_native, top_wrapped) and top_native[0] > 0


def test_probe_mode_leaves_running_statistics_and_parameters_bit_for_bit(batches):
    _, wrapped, _ = _trained_pair(batches)
    x, y = batches[0]
    before = wrapped.state_dict()
    params = wrapped.params.copy()
    wrapped.loss(x, y, mode="probe")
    wrapped.loss_and_grad(x, y, mode="probe")
    probe_out = wrapped.forward(x, "probe").copy()
    measure.probe_gradient_direction(wrapped, x, y, [0.01, 0.1])
    measure.hessian_vector_product(wrapped, x, y, np.ones(wrapped.num_params))
    after = wrapped.state_dict()
    for key in before:
        assert np.array_equal(before[key], after[key]), key
    assert np.array_equal(params, wrapped.params)
    # Probe mode normalizes with batch statistics as training does; eval mode uses the running ones.
    train_out = wrapped.forward(x, "train").copy()
    assert np.array_equal(probe_out, train_out)
    assert not np.array_equal(wrapped.state_dict()["features.1.running_mean"], before["features.1.running_mean"])
    assert not np.allclose(wrapped.forward(x, "eval"), probe_out)


def test_layout_follows_the_forward_order_not_registration(rng):
    class Backwards(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.head = torch.nn.Linear(6, 3)  # registered first, called last
            self.body = torch.nn.Linear(4, 6)

        def forward(self, x):
            return self.head(torch.relu(self.body(x)))

    net = TorchNetwork(Backwards(), dtype=np.float64, input_shape=(4,))
    assert list(net.layer_slices()) == ["body", "head"] and net.weight_layer_names() == ["body", "head"]
    assert net.layer_slices()["body"] == slice(0, 30)
    unordered = TorchNetwork(Backwards(), dtype=np.float64)  # no input_shape: registration order
    assert list(unordered.layer_slices()) == ["head", "body"]
    x, y = rng.standard_normal((5, 4)), rng.integers(0, 3, 5)
    assert unordered.loss_and_grad(x, y)[1].shape == (51,)


def test_gradients_match_central_differences(rng):
    """A module the package does not ship (a residual block with BatchNorm), float64."""

    class Residual(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(2, 2, 3, padding=1)
            self.bn = torch.nn.BatchNorm2d(2)
            self.fc = torch.nn.Linear(2 * 4 * 4, 3)

        def forward(self, x):
            return self.fc(torch.tanh(x + self.bn(self.conv(x))).flatten(1))

    torch.manual_seed(0)
    net = TorchNetwork(Residual(), dtype=np.float64, input_shape=(2, 4, 4))
    x, y = rng.standard_normal((6, 2, 4, 4)), rng.integers(0, 3, 6)
    _, g = net.loss_and_grad(x, y, mode="probe")
    g = g.copy()
    d = rng.standard_normal(net.num_params)
    w0, h = net.params.copy(), 1e-6
    net.params[...] = w0 + h * d
    up = net.loss(x, y)
    net.params[...] = w0 - h * d
    down = net.loss(x, y)
    net.params[...] = w0
    assert abs((up - down) / (2 * h) - g @ d) <= 1e-7 * abs(g @ d)
    # The exact Hessian-vector product against central differences of the gradient (tanh: smooth).
    exact = measure.hessian_vector_product(net, x, y, d)
    central = measure.hessian_vector_product(net, x, y, d, scheme="central")
    assert np.linalg.norm(exact - central) <= 1e-6 * np.linalg.norm(exact)


def test_copies_are_independent_and_astype_converts():
    _, wrapped = _pair()
    twin = wrapped.copy()
    twin.params += 1.0
    assert not np.allclose(twin.params, wrapped.params)
    assert np.array_equal(dict(wrapped.module.named_parameters())["classifier.bias"].detach().numpy(),
                          wrapped.params[wrapped.param_slices()["classifier.bias"]])
    single = wrapped.astype(np.float32)
    assert single.params.dtype == np.float32 and next(single.module.parameters()).dtype == torch.float32
    assert np.shares_memory(next(single.module.parameters()).detach().numpy(), single.params)
    assert wrapped.params.dtype == np.float64


def test_state_dict_round_trip_and_refusal():
    _, wrapped = _pair()
    state = wrapped.state_dict()
    other = _pair(seed=1)[1]
    other.load_state_dict(state)
    assert np.array_equal(other.params, wrapped.params)
    bad = dict(state, **{"classifier.weight": np.zeros((2, 2))})
    with pytest.raises(ValueError, match=r"state\['classifier.weight'\]: expected shape \(10, 32\)"):
        other.load_state_dict(bad)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match=r"module: expected a torch.nn.Module with parameters, got ReLU"):
        TorchNetwork(torch.nn.ReLU())
    with pytest.raises(ValueError, match=r"module: expected a torch.nn.Module, got str"):
        TorchNetwork("vgg11")
    with pytest.raises(ValueError, match=r"loss: expected one of \['cross_entropy', 'onehot_squared_error', "
                                         r"'squared_error'\].*got 'hinge'"):
        TorchNetwork(torch.nn.Linear(3, 2), loss="hinge")
    with pytest.raises(ValueError, match=r"dtype: expected float32 or float64, got int32"):
        TorchNetwork(torch.nn.Linear(3, 2), dtype=np.int32)
    net = TorchNetwork(torch.nn.Linear(3, 2), input_shape=(3,))
    with pytest.raises(ValueError, match=r"x: expected shape \(\*, 3\), got \(4, 5\)"):
        net.loss_and_grad(np.zeros((4, 5)), np.zeros(4, dtype=np.int64))
    with pytest.raises(ValueError, match=r"mode"):
        net.forward(np.zeros((4, 3)), mode="training")
    with pytest.raises(ValueError, match=r"input_shape: the module's forward pass failed on a batch of shape "
                                         r"\(2, 5\)"):
        TorchNetwork(torch.nn.Linear(3, 2), input_shape=(5,))
