"""Optimizer kernels: float32 arithmetic stays float32, out/update_state semantics, argument checks."""

import numpy as np
import pytest

from smoothnorm.kernels.optim import adagrad_update, adam_update, rmsprop_update, sgd_update

f32 = np.float32


def float32_emulations():
    """Each rule in NumPy float32 with torch's operation order: a kernel that promoted to float64 would differ."""

    def sgd(p, g, state, lr=0.1, momentum=0.9, dampening=0.2, weight_decay=0.05):
        g = g + f32(weight_decay) * p
        b = f32(momentum) * state["buf"] + f32(1 - dampening) * g
        state["buf"] = b
        return p - f32(lr) * b

    def adagrad(p, g, state, lr=0.1, step=3, lr_decay=0.1, weight_decay=0.05, eps=1e-3):
        g = g + f32(weight_decay) * p
        s = state["sum"] + g * g
        state["sum"] = s
        return p - f32(lr / (1 + (step - 1) * lr_decay)) * g / (np.sqrt(s) + f32(eps))

    def rmsprop(p, g, state, lr=0.01, alpha=0.9, eps=1e-3, weight_decay=0.05, momentum=0.5):
        g = g + f32(weight_decay) * p
        w = f32(1 - alpha)
        v = f32(alpha) * state["square_avg"] + w * g * g
        m = state["grad_avg"] + w * (g - state["grad_avg"])
        state["square_avg"], state["grad_avg"] = v, m
        b = f32(momentum) * state["buf"] + g / (np.sqrt(v - m * m) + f32(eps))
        state["buf"] = b
        return p - f32(lr) * b

    def adamw(p, g, state, lr=0.01, step=3, beta1=0.9, beta2=0.99, eps=1e-3, weight_decay=0.1):
        p = p * f32(1 - lr * weight_decay)
        w = f32(1 - beta1)
        m = state["exp_avg"] + w * (g - state["exp_avg"])
        v = f32(beta2) * state["exp_avg_sq"] + f32(1 - beta2) * g * g
        v_max = np.maximum(state["max_exp_avg_sq"], v)
        state["exp_avg"], state["exp_avg_sq"], state["max_exp_avg_sq"] = m, v, v_max
        denom = np.sqrt(v_max) / f32((1 - beta2**step) ** 0.5) + f32(eps)
        return p - f32(lr / (1 - beta1**step)) * m / denom

    return sgd, adagrad, rmsprop, adamw


def test_float32_kernels_compute_in_float32(rng):
    n = 4099
    sgd, adagrad, rmsprop, adamw = float32_emulations()
    p = rng.normal(size=n).astype(f32)
    g = rng.normal(size=n).astype(f32)
    positive = lambda: rng.uniform(0.5, 2.0, size=n).astype(f32)

    cases = [
        (sgd, {"buf": rng.normal(size=n).astype(f32)},
         lambda q, s: sgd_update(q, g, s["buf"], lr=0.1, momentum=0.9, dampening=0.2, weight_decay=0.05)),
        (adagrad, {"sum": positive()},
         lambda q, s: adagrad_update(q, g, s["sum"], lr=0.1, step=3, lr_decay=0.1, weight_decay=0.05, eps=1e-3)),
        (rmsprop, {"square_avg": positive() + 1, "grad_avg": rng.normal(size=n).astype(f32) * f32(0.1),
                   "buf": rng.normal(size=n).astype(f32)},
         lambda q, s: rmsprop_update(q, g, s["square_avg"], s["grad_avg"], s["buf"], lr=0.01, alpha=0.9, eps=1e-3,
                                     weight_decay=0.05, momentum=0.5, centered=True)),
        (adamw, {"exp_avg": rng.normal(size=n).astype(f32), "exp_avg_sq": positive(),
                 "max_exp_avg_sq": positive()},
         lambda q, s: adam_update(q, g, s["exp_avg"], s["exp_avg_sq"], s["max_exp_avg_sq"], lr=0.01, step=3,
                                  beta1=0.9, beta2=0.99, eps=1e-3, weight_decay=0.1, amsgrad=True,
                                  decoupled_weight_decay=True)),
    ]
    for emulate, state, kernel in cases:
        expected_state = {k: v.copy() for k, v in state.items()}
        expected = emulate(p, g, expected_state)
        assert expected.dtype == f32
        q = p.copy()
        kernel(q, state)
        np.testing.assert_array_equal(q, expected, err_msg=emulate.__name__)
        for key in state:
            np.testing.assert_array_equal(state[key], expected_state[key], err_msg=f"{emulate.__name__} {key}")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_out_without_state_update_equals_in_place_update(rng, dtype):
    n = 37
    p = rng.normal(size=n).astype(dtype)
    g = rng.normal(size=n).astype(dtype)
    state = [rng.normal(size=n).astype(dtype), rng.uniform(0.1, 1, size=n).astype(dtype),
             rng.uniform(0.1, 1, size=n).astype(dtype)]
    kwargs = {"lr": 0.01, "step": 4, "weight_decay": 0.1, "amsgrad": True}
    before = [s.copy() for s in state]
    out = np.empty_like(p)
    returned = adam_update(p, g, *state, out=out, update_state=False, **kwargs)
    assert returned is out
    for s, b in zip(state, before):
        np.testing.assert_array_equal(s, b)
    q = p.copy()
    assert adam_update(q, g, *state, **kwargs) is q
    np.testing.assert_array_equal(q, out)
    assert not all(np.array_equal(s, b) for s, b in zip(state, before))


def test_sgd_first_step_initialises_buffer_with_gradient(rng):
    p = rng.normal(size=9)
    g = rng.normal(size=9)
    # A peek at the first step needs no buffer at all.
    peeked = sgd_update(p, g, None, lr=0.5, momentum=0.9, first_step=True, out=np.empty(9), update_state=False)
    buf = np.full(9, np.nan)
    sgd_update(p, g, buf, lr=0.5, momentum=0.9, first_step=True)
    np.testing.assert_array_equal(buf, g)
    np.testing.assert_array_equal(p, peeked)


def test_kernel_argument_checks(rng):
    p = rng.normal(size=5)
    g = rng.normal(size=5)
    z = np.zeros(5)
    with pytest.raises(ValueError, match="momentum_buffer.*None"):
        sgd_update(p, g, None, lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match="exp_avg_sq.*dtype float64"):
        adam_update(p, g, z.copy(), z.astype(np.float32), lr=0.1, step=1)
    with pytest.raises(ValueError, match="max_exp_avg_sq.*None"):
        adam_update(p, g, z.copy(), z.copy(), None, lr=0.1, step=1, amsgrad=True)
    with pytest.raises(ValueError, match="grad_avg.*shape"):
        rmsprop_update(p, g, z.copy(), np.zeros(4), lr=0.1, centered=True)
    wide = np.zeros(6)
    with pytest.raises(ValueError, match="out.*overlapping"):
        sgd_update(wide[:5], g, None, lr=0.1, out=wide[1:])
    with pytest.raises(ValueError, match="out.*shape"):
        adagrad_update(p, g, z.copy(), lr=0.1, step=1, out=np.zeros(6))
    with pytest.raises(ValueError, match="state_sum.*contiguous"):
        adagrad_update(p, g, np.zeros(10)[::2], lr=0.1, step=1)
    read_only = z.copy()
    read_only.flags.writeable = False
    with pytest.raises(ValueError, match="state_sum.*writeable"):
        adagrad_update(p, g, read_only, lr=0.1, step=1)
    # Read-only state is fine when it is only read.
    adagrad_update(p, g, read_only, lr=0.1, step=1, out=np.empty(5), update_state=False)
    with pytest.raises(ValueError, match="params.*float32 or float64"):
        sgd_update(p.astype(np.float16), g.astype(np.float16), None, lr=0.1)
    with pytest.raises(ValueError, match="grads.*dtype float64"):
        sgd_update(p, g.astype(np.float32), None, lr=0.1)
