import numpy as np
import pytest

from smoothnorm import models, optim


def stepped(net, x, y, lr=0.01, steps=1):
    """Take SGD training steps so running statistics, counters and grads are non-trivial."""
    opt = optim.SGD(lr=lr)
    for _ in range(steps):
        net.loss_and_grad(x, y, mode="train")
        opt.step(net.params, net.grads)
    net.loss_and_grad(x, y, mode="train")
    return net


@pytest.fixture
def tiny_vgg_batch(rng):
    """A width-1/16 VGG-11 with BatchNorm (float64) after one training step, and a batch of 6 images."""
    net = models.vgg("vgg11", norm="batch", width=1 / 16, dtype=np.float64, seed=3)
    x = rng.standard_normal((6, 3, 32, 32))
    y = rng.integers(0, 10, size=6)
    return stepped(net, x, y), x, y


def regression_batch(rng, n=20, in_dim=5, out_dim=3):
    x = rng.standard_normal((n, in_dim))
    t = rng.standard_normal((n, out_dim))
    return x, t


def linear_model(in_dim=5, out_dim=3, dtype=np.float64, seed=0):
    """A 1-layer DLN: y = W x, loss sum ||W x - t||^2, Hessian 2 I (kron) X^T X."""
    return models.dln(1, 4, in_dim=in_dim, out_dim=out_dim, dtype=dtype, seed=seed)
