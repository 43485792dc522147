"""Optional: whole networks against the same computation built in PyTorch (skipped when torch is absent)."""

import numpy as np
import pytest

from smoothnorm.nn import models

torch = pytest.importorskip("torch")
from tests.torch_twin import run_torch, torch_twin  # noqa: E402

pytestmark = pytest.mark.torch


@pytest.mark.parametrize("norm", [None, "batch"])
def test_vgg_matches_torch(norm, rng):
    net = models.vgg("vgg11", norm=norm, width=1 / 8, dtype=np.float64, seed=2)
    root, order = torch_twin(net)
    root.double()
    root.load_state_dict({k: torch.from_numpy(v) for k, v in net.state_dict().items()})
    x = rng.standard_normal((4, 3, 32, 32))
    y = rng.integers(0, 10, size=4)
    loss, g = net.loss_and_grad(x, y, mode="train")
    root.train()
    out = run_torch(order, torch.from_numpy(x))
    tloss = torch.nn.functional.cross_entropy(out, torch.from_numpy(y))
    tloss.backward()
    assert loss == pytest.approx(tloss.item(), rel=1e-12)
    tgrad = {name: p.grad.numpy() for name, p in root.named_parameters()}
    for name, s in net.param_slices().items():
        np.testing.assert_allclose(g[s], tgrad[name].ravel(), rtol=1e-9, atol=1e-12, err_msg=name)
    for key, value in root.state_dict().items():
        # atol: a running mean near zero (a channel whose batch mean cancels) differs at 1e-11 relative.
        np.testing.assert_allclose(net.state_dict()[key], value.numpy(), rtol=1e-12, atol=1e-15, err_msg=key)
    root.eval()
    with torch.no_grad():
        np.testing.assert_allclose(net.forward(x, "eval"), run_torch(order, torch.from_numpy(x)).numpy(),
                                   rtol=1e-10, atol=1e-12)


def test_dln_matches_torch(rng):
    net = models.dln(6, 10, in_dim=10, out_dim=10, norm="batch", seed=1)
    root, order = torch_twin(net)
    root.double()
    root.load_state_dict({k: torch.from_numpy(v) for k, v in net.state_dict().items()})
    x = rng.standard_normal((20, 10))
    y = rng.standard_normal((20, 10))
    loss, g = net.loss_and_grad(x, y)
    out = run_torch(order, torch.from_numpy(x))
    tloss = ((out - torch.from_numpy(y)) ** 2).sum()
    tloss.backward()
    assert loss == pytest.approx(tloss.item(), rel=1e-12)
    for name, p in root.named_parameters():
        np.testing.assert_allclose(g[net.param_slices()[name]], p.grad.numpy().ravel(), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("activation", ["sigmoid", "tanh"])
@pytest.mark.parametrize("norm_position", ["before_activation", "after_activation"])
def test_vgg_activations_and_norm_positions_match_torch(activation, norm_position, rng):
    """A torch Sequential in the same module order loads our state_dict and computes the same loss and gradient."""
    net = models.vgg("vgg11", norm="batch", width=1 / 8, activation=activation, norm_position=norm_position,
                     dtype=np.float64, seed=3)
    root, order = torch_twin(net)
    root.double()
    root.load_state_dict({k: torch.from_numpy(v) for k, v in net.state_dict().items()})
    x = rng.standard_normal((4, 3, 32, 32))
    y = rng.integers(0, 10, size=4)
    loss, g = net.loss_and_grad(x, y, mode="train")
    root.train()
    tloss = torch.nn.functional.cross_entropy(run_torch(order, torch.from_numpy(x)), torch.from_numpy(y))
    tloss.backward()
    assert loss == pytest.approx(tloss.item(), rel=1e-12)
    tgrad = {name: p.grad.numpy() for name, p in root.named_parameters()}
    for name, s in net.param_slices().items():
        np.testing.assert_allclose(g[s], tgrad[name].ravel(), rtol=1e-9, atol=1e-12, err_msg=name)
    for key, value in root.state_dict().items():  # running statistics after one training step
        np.testing.assert_allclose(net.state_dict()[key], value.numpy(), rtol=1e-12, atol=1e-14, err_msg=key)


@pytest.mark.parametrize("activation", ["sigmoid", "tanh", "identity"])
@pytest.mark.parametrize("norm_position", ["before_activation", "after_activation"])
def test_mlp_activations_and_norm_positions_match_torch(activation, norm_position, rng):
    net = models.mlp(7, [6, 5], 3, norm="batch", activation=activation, norm_position=norm_position,
                     dtype=np.float64, seed=5)
    seq = torch.nn.Sequential(*(run for run in torch_twin(net)[1])).double()
    seq.load_state_dict({k.partition(".")[2]: torch.from_numpy(v) for k, v in net.state_dict().items()})
    x = rng.standard_normal((9, 7))
    y = rng.integers(0, 3, size=9)
    loss, g = net.loss_and_grad(x, y, mode="train")
    tloss = torch.nn.functional.cross_entropy(seq(torch.from_numpy(x)), torch.from_numpy(y))
    tloss.backward()
    assert loss == pytest.approx(tloss.item(), rel=1e-12)
    for name, p in seq.named_parameters():
        np.testing.assert_allclose(g[net.param_slices()[f"layers.{name}"]], p.grad.numpy().ravel(), rtol=1e-9,
                                   atol=1e-12, err_msg=name)
    seq.eval()
    with torch.no_grad():
        np.testing.assert_allclose(net.forward(x, "eval"), seq(torch.from_numpy(x)).numpy(), rtol=1e-10, atol=1e-12)
