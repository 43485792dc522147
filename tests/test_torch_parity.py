"""Optional: whole networks against the same computation built in PyTorch (skipped when torch is absent)."""

import numpy as np
import pytest

from smoothnorm import models

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
        np.testing.assert_allclose(net.state_dict()[key], value.numpy(), rtol=1e-12, err_msg=key)
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
