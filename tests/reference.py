"""Float64 NumPy references: slow, obviously correct. Every kernel is checked against these.

Each section belongs to one area; keep helpers small and literal (loops where they make the math obvious).
"""

import numpy as np


def central_difference(f, x, eps=1e-6):
    """Central finite-difference gradient of scalar f at float64 array x (all coordinates)."""
    x = np.array(x, dtype=np.float64)
    grad = np.zeros_like(x)
    flat = x.reshape(-1)
    gflat = grad.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + eps
        fp = f(x)
        flat[i] = old - eps
        fm = f(x)
        flat[i] = old
        gflat[i] = (fp - fm) / (2 * eps)
    return grad


def relative_error(a, b):
    """max |a - b| / max(max |b|, tiny): a scale-aware error for comparing gradients."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), 1e-300))


# === section: layers (linear, pool, activation, loss) ===
# === end layers ===

# === section: conv ===
# === end conv ===

# === section: norms ===
# === end norms ===

# === section: optim ===
# One step of each torch.optim update rule, transcribed from the pseudocode in torch's documentation, in float64.
# `state` is a dict the function fills and updates (step count, buffers); each returns the new parameters.


def sgd_step_reference(w, g, state, *, lr, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False):
    """torch.optim.SGD: L2 decay, momentum buffer (first step: b = g), dampening, Nesterov, then w - lr * g."""
    w = np.asarray(w, dtype=np.float64)
    g = np.asarray(g, dtype=np.float64)
    if weight_decay != 0:
        g = g + weight_decay * w
    if momentum != 0:
        if "momentum_buffer" in state:
            b = momentum * state["momentum_buffer"] + (1 - dampening) * g
        else:
            b = g.copy()
        state["momentum_buffer"] = b
        g = g + momentum * b if nesterov else b
    return w - lr * g


def adagrad_step_reference(
    w, g, state, *, lr=1e-2, lr_decay=0.0, weight_decay=0.0, initial_accumulator_value=0.0, eps=1e-10
):
    """torch.optim.Adagrad: decayed lr, L2 decay, accumulated squares, w - lr_t * g / (sqrt(sum) + eps)."""
    w = np.asarray(w, dtype=np.float64)
    g = np.asarray(g, dtype=np.float64)
    t = state["step"] = state.get("step", 0) + 1
    state_sum = state.get("sum", np.full(w.shape, float(initial_accumulator_value)))
    lr_t = lr / (1 + (t - 1) * lr_decay)
    if weight_decay != 0:
        g = g + weight_decay * w
    state_sum = state_sum + g * g
    state["sum"] = state_sum
    return w - lr_t * g / (np.sqrt(state_sum) + eps)


def rmsprop_step_reference(
    w, g, state, *, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0, centered=False
):
    """torch.optim.RMSprop: L2 decay, v = alpha v + (1-alpha) g^2, optional centering and momentum buffer."""
    w = np.asarray(w, dtype=np.float64)
    g = np.asarray(g, dtype=np.float64)
    zeros = np.zeros(w.shape)
    if weight_decay != 0:
        g = g + weight_decay * w
    v = alpha * state.get("square_avg", zeros) + (1 - alpha) * g * g
    state["square_avg"] = v
    v_tilde = v
    if centered:
        g_ave = state.get("grad_avg", zeros) * alpha + (1 - alpha) * g
        state["grad_avg"] = g_ave
        v_tilde = v_tilde - g_ave * g_ave
    if momentum > 0:
        b = momentum * state.get("momentum_buffer", zeros) + g / (np.sqrt(v_tilde) + eps)
        state["momentum_buffer"] = b
        return w - lr * b
    return w - lr * g / (np.sqrt(v_tilde) + eps)


def adam_step_reference(
    w, g, state, *, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False, decoupled=False
):
    """torch.optim.Adam (decoupled=False, L2 decay in g) or AdamW (decoupled=True, w *= 1 - lr * decay first)."""
    w = np.asarray(w, dtype=np.float64)
    g = np.asarray(g, dtype=np.float64)
    beta1, beta2 = betas
    zeros = np.zeros(w.shape)
    t = state["step"] = state.get("step", 0) + 1
    if weight_decay != 0:
        if decoupled:
            w = w - lr * weight_decay * w
        else:
            g = g + weight_decay * w
    m = beta1 * state.get("exp_avg", zeros) + (1 - beta1) * g
    v = beta2 * state.get("exp_avg_sq", zeros) + (1 - beta2) * g * g
    state["exp_avg"] = m
    state["exp_avg_sq"] = v
    m_hat = m / (1 - beta1**t)
    if amsgrad:
        v_max = np.maximum(state.get("max_exp_avg_sq", zeros), v)
        state["max_exp_avg_sq"] = v_max
        v_hat = v_max / (1 - beta2**t)
    else:
        v_hat = v / (1 - beta2**t)
    return w - lr * m_hat / (np.sqrt(v_hat) + eps)

# === end optim ===
