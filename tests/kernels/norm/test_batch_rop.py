"""Argument checks of BatchNorm's fused R-pass kernels (their values are tested against the general path in
tests/nn/test_norms.py)."""

import numpy as np
import pytest

from smoothnorm.kernels.norm.batch_rop import batch_norm_r_backward, batch_norm_r_forward


def _forward(rng, shape=(4, 3, 5)):
    x, rx = rng.standard_normal(shape), rng.standard_normal(shape)
    c = np.ones(shape[1])
    ry, rx_mean, rs = batch_norm_r_forward(x, c, c, c, c, c, rx)
    return x, rx, c, ry, rx_mean, rs


@pytest.mark.parametrize("kernel", ["forward", "backward"])
def test_x_of_the_wrong_ndim_raises_a_value_error_naming_x(rng, kernel):
    x, rx, c, ry, rx_mean, rs = _forward(rng)
    flat, rflat = x.reshape(4, 15), rx.reshape(4, 15)
    with pytest.raises(ValueError, match=r"^x: expected ndim 3"):
        if kernel == "forward":
            batch_norm_r_forward(flat, c, c, c, c, c, rflat)
        else:
            batch_norm_r_backward(flat, c, c, c, c, rflat, rx_mean, rs, rflat, rflat, np.empty(3), np.empty(3))


def test_arrays_unlike_x_raise_a_value_error_naming_them(rng):
    x, rx, c, ry, rx_mean, rs = _forward(rng)
    with pytest.raises(ValueError, match=r"^rx: expected shape \(4, 3, 5\)"):
        batch_norm_r_forward(x, c, c, c, c, c, rx[:2])
    with pytest.raises(ValueError, match=r"^rbeta: expected shape \(3,\)"):
        batch_norm_r_forward(x, c, c, c, c, np.ones(4), rx)
    with pytest.raises(ValueError, match=r"^rdy: expected shape \(4, 3, 5\)"):
        batch_norm_r_backward(x, c, c, c, c, rx, rx_mean, rs, ry, ry[:, :2], np.empty(3), np.empty(3))
