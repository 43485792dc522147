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
# === end optim ===
