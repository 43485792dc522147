"""Slow, obviously correct float64 references for the measurement tests (dense Hessians, brute-force ICS)."""

import numpy as np


def network_gradient(net, x, y, w):
    """Probe-mode gradient of `net` at flat params w (float64 copy returned); params restored."""
    w0 = net.params.copy()
    net.params[:] = w
    _, g = net.loss_and_grad(x, y, mode="probe")
    g = g.astype(np.float64)
    net.params[:] = w0
    return g


def dense_hessian_reference(net, x, y, eps=1e-5):
    """Dense Hessian by central differences of the full gradient, one coordinate at a time, symmetrized."""
    w0 = net.params.astype(np.float64)
    n = w0.size
    h = np.empty((n, n))
    for i in range(n):
        e = np.zeros(n)
        e[i] = eps
        h[:, i] = (network_gradient(net, x, y, w0 + e) - network_gradient(net, x, y, w0 - e)) / (2 * eps)
    return 0.5 * (h + h.T)


def linear_regression_hessian(x, out_dim):
    """Hessian of sum_i ||W x_i - t_i||^2 w.r.t. the row-major W (out_dim, d): 2 I_out (kron) X^T X."""
    x = np.asarray(x, dtype=np.float64)
    return 2.0 * np.kron(np.eye(out_dim), x.T @ x)


def ics_brute_force(net, x, y, layer, new_params):
    """G and G' for `layer` by hand: a copy of the network whose params before the layer's slice are replaced by
    new_params[...] (the hand-made t+1 values), then a fresh probe-mode gradient."""
    s = net.layer_slices()[layer]
    copy = net.copy()
    _, g = copy.loss_and_grad(x, y, mode="probe")
    g = g[s].astype(np.float64)
    w = copy.params.copy()
    w[: s.start] = new_params[: s.start]
    copy.params[:] = w
    _, g_prime = copy.loss_and_grad(x, y, mode="probe")
    g_prime = g_prime[s].astype(np.float64)
    l2 = float(np.linalg.norm(g - g_prime))
    cosine = float(g @ g_prime / (np.linalg.norm(g) * np.linalg.norm(g_prime)))
    return l2, cosine


def snapshot(net):
    """Copies of params, grads and every buffer, to compare bit for bit."""
    return {
        "params": net.params.copy(),
        "grads": net.grads.copy(),
        "buffers": [{k: np.array(v, copy=True) for k, v in la.buffers().items()} for la in net.layers],
    }


def assert_unchanged(net, snap):
    """Params, grads and buffers equal the snapshot bit for bit (NaN-safe, byte comparison)."""
    assert net.params.tobytes() == snap["params"].tobytes()
    assert net.grads.tobytes() == snap["grads"].tobytes()
    for la, saved in zip(net.layers, snap["buffers"]):
        current = la.buffers()
        assert set(current) == set(saved)
        for k, v in saved.items():
            assert np.asarray(current[k]).tobytes() == v.tobytes(), (la.name, k)
