import numpy as np
import pytest

from smoothnorm.nn import models
from tests.helpers import stepped


@pytest.fixture
def tiny_vgg_batch(rng):
    """A width-1/16 VGG-11 with BatchNorm (float64) after one training step, and a batch of 6 images."""
    net = models.vgg("vgg11", norm="batch", width=1 / 16, dtype=np.float64, seed=3)
    x = rng.standard_normal((6, 3, 32, 32))
    y = rng.integers(0, 10, size=6)
    return stepped(net, x, y), x, y




