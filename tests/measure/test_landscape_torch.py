"""The gradient-direction probe against PyTorch autograd on the same VGG (ReLU, max-pool, BatchNorm), float64, at
the points the probe visits: loss and gradient distance at w - eta g for every eta of the VGG grid."""

import numpy as np
import pytest

from smoothnorm import measure
from smoothnorm.nn import models

torch = pytest.importorskip("torch")
from tests.torch_twin import loaded_twin, run_torch, set_mode  # noqa: E402

pytestmark = pytest.mark.torch


def _torch_loss_and_grad(net, params, x, y):
    """Cross-entropy and its gradient (our flat order) of the float64 twin of `net` at `params`, batch statistics."""
    at = net.copy()
    at.params[...] = params
    root, order = loaded_twin(at)
    set_mode(root, order, "probe")
    loss = torch.nn.functional.cross_entropy(run_torch(order, torch.from_numpy(x)), torch.from_numpy(y))
    named = dict(root.named_parameters())
    grads = torch.autograd.grad(loss, [named[k] for k in net.param_slices()])
    return float(loss.detach()), np.concatenate([g.numpy().reshape(-1) for g in grads])


def test_gradient_direction_probe_matches_pytorch_at_every_visited_point(rng):
    net = models.vgg("vgg11", norm="batch", width=1 / 8, dtype=np.float64, seed=0)
    x = rng.standard_normal((16, 3, 32, 32))
    y = rng.integers(0, 10, 16)
    _, g0 = net.loss_and_grad(x, y, mode="probe")
    net.params -= 0.05 * g0  # off the initialization, so the ReLU and max-pool patterns are generic
    etas = measure.step_grid(0.1, "vgg")
    ours = measure.probe_gradient_direction(net, x, y, etas)
    w = net.params.copy()
    base, g = _torch_loss_and_grad(net, w, x, y)
    assert ours.base_loss == pytest.approx(base, rel=1e-10)
    assert ours.grad_norm == pytest.approx(np.linalg.norm(g), rel=1e-10)
    for i, eta in enumerate(etas):
        loss, g_eta = _torch_loss_and_grad(net, w - eta * g, x, y)
        assert ours.losses[i] == pytest.approx(loss, rel=1e-10), eta
        assert ours.grad_distances[i] == pytest.approx(np.linalg.norm(g_eta - g), rel=1e-10), eta
    np.testing.assert_array_equal(net.params, w)  # the probe leaves the network as it found it
