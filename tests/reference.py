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
def linear_ref(x, weight, bias=None):
    """y[n, o] = sum_i x[n, i] * weight[o, i] + bias[o], in float64."""
    x = np.asarray(x, dtype=np.float64)
    weight = np.asarray(weight, dtype=np.float64)
    y = np.zeros((x.shape[0], weight.shape[0]))
    for o in range(weight.shape[0]):
        y[:, o] = x @ weight[o]
        if bias is not None:
            y[:, o] += float(bias[o])
    return y


def maxpool2d_ref(x):
    """2x2, stride-2 max-pool with floor for odd H/W; np.max propagates NaN as torch does."""
    x = np.asarray(x, dtype=np.float64)
    n, c, h, w = x.shape
    y = np.empty((n, c, h // 2, w // 2))
    for i in range(h // 2):
        for j in range(w // 2):
            y[:, :, i, j] = np.max(x[:, :, 2 * i : 2 * i + 2, 2 * j : 2 * j + 2], axis=(2, 3))
    return y


def relu_ref(x):
    """max(x, 0); np.maximum propagates NaN."""
    return np.maximum(np.asarray(x, dtype=np.float64), 0.0)


def sigmoid_ref(x):
    """1 / (1 + exp(-x)) in float64, written literally (exp overflow to Inf gives the right limit 0)."""
    x = np.asarray(x, dtype=np.float64)
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-x))


def activation_ref(x, activation):
    """f(x) for "relu", "sigmoid", "tanh", "identity", in float64."""
    x = np.asarray(x, dtype=np.float64)
    return {"relu": relu_ref, "sigmoid": sigmoid_ref, "tanh": np.tanh, "identity": np.array}[activation](x)


def softmax_cross_entropy_ref(logits, labels):
    """Mean over rows of logsumexp(row) - row[label], and the softmax probabilities, in float64."""
    logits = np.asarray(logits, dtype=np.float64)
    n = logits.shape[0]
    losses = np.empty(n)
    probs = np.empty_like(logits)
    for r in range(n):
        row = logits[r]
        m = np.max(row)
        e = np.exp(row - m)
        losses[r] = m + np.log(np.sum(e)) - row[labels[r]]
        probs[r] = e / np.sum(e)
    return float(np.mean(losses)), probs


def onehot_squared_error_ref(out, labels):
    """sum_n ||out_n - e_{y_n}||^2 / (2 N), float64, by a loop over samples."""
    out = np.asarray(out, dtype=np.float64)
    total = 0.0
    for n in range(out.shape[0]):
        target = np.zeros(out.shape[1])
        target[int(labels[n])] = 1.0
        total += float(np.sum((out[n] - target) ** 2))
    return total / (2 * out.shape[0])


def squared_error_ref(pred, target, reduction="sum"):
    """Sum (or mean) over all elements of (pred - target)^2, in float64."""
    d = np.asarray(pred, dtype=np.float64) - np.asarray(target, dtype=np.float64)
    total = float(np.sum(d * d))
    return total if reduction == "sum" else total / d.size


# === end layers ===

# === section: conv ===
def conv2d_forward_ref(x, weight, bias=None, stride=1, padding=1):
    """Naive float64 2-D cross-correlation with zero padding (torch.nn.functional.conv2d); int stride/padding."""
    x = np.asarray(x, dtype=np.float64)
    weight = np.asarray(weight, dtype=np.float64)
    n, c_in, h, w = x.shape
    c_out, _, kh, kw = weight.shape
    h_out = (h + 2 * padding - kh) // stride + 1
    w_out = (w + 2 * padding - kw) // stride + 1
    y = np.zeros((n, c_out, h_out, w_out))
    for b in range(n):
        for co in range(c_out):
            for oh in range(h_out):
                for ow in range(w_out):
                    total = 0.0 if bias is None else float(bias[co])
                    for ci in range(c_in):
                        for ky in range(kh):
                            for kx in range(kw):
                                ih = oh * stride - padding + ky
                                iw = ow * stride - padding + kx
                                if 0 <= ih < h and 0 <= iw < w:
                                    total += x[b, ci, ih, iw] * weight[co, ci, ky, kx]
                    y[b, co, oh, ow] = total
    return y
# === end conv ===

# === section: norms ===
def _bn_ncs(x):
    """Float64 (N, C, S) copy of an (N, C) or (N, C, H, W) array."""
    x = np.asarray(x, dtype=np.float64)
    return x.reshape(x.shape[0], x.shape[1], -1)


def batch_norm_stats_reference(x):
    """Per-channel batch mean and biased variance over (N, H, W), two-pass in float64. Returns (mean, var)."""
    x3 = _bn_ncs(x)
    mean = x3.mean(axis=(0, 2))
    var = ((x3 - mean[None, :, None]) ** 2).mean(axis=(0, 2))
    return mean, var


def batch_norm_reference(x, mean, var, gamma=None, beta=None, eps=1e-5):
    """y = (x - mean) / sqrt(var + eps) * gamma + beta per channel (float64); pass batch or running statistics."""
    x3 = _bn_ncs(x)
    channels = x3.shape[1]
    gamma = np.ones(channels) if gamma is None else np.asarray(gamma, dtype=np.float64)
    beta = np.zeros(channels) if beta is None else np.asarray(beta, dtype=np.float64)
    mean = np.asarray(mean, dtype=np.float64)
    var = np.asarray(var, dtype=np.float64)
    xhat = (x3 - mean[None, :, None]) / np.sqrt(var[None, :, None] + eps)
    return (xhat * gamma[None, :, None] + beta[None, :, None]).reshape(np.shape(x))


def batch_norm_train_reference(x, gamma=None, beta=None, eps=1e-5):
    """Batch norm with batch statistics (train / probe modes), float64. Returns y."""
    mean, var = batch_norm_stats_reference(x)
    return batch_norm_reference(x, mean, var, gamma, beta, eps)


def batch_norm_running_reference(running_mean, running_var, batches, momentum=0.1):
    """Running statistics after one update per batch in `batches`, literally as torch defines them (float64)."""
    rm = np.array(running_mean, dtype=np.float64)
    rv = np.array(running_var, dtype=np.float64)
    for x in batches:
        x3 = _bn_ncs(x)
        n = x3.shape[0] * x3.shape[2]
        mean, var = batch_norm_stats_reference(x)
        rm = (1 - momentum) * rm + momentum * mean
        rv = (1 - momentum) * rv + momentum * var * n / (n - 1)
    return rm, rv


# === end norms ===

# === section: norms2 ===
# Noisy batch norm, Lp batch norm and group norm (layer = 1 group, instance = C groups), float64, literal.


def _ncs64(x):
    x = np.asarray(x, dtype=np.float64)
    return x.reshape(x.shape[0], x.shape[1], -1)


def _affine_params(channels, gamma, beta):
    gamma = np.ones(channels) if gamma is None else np.asarray(gamma, dtype=np.float64)
    beta = np.zeros(channels) if beta is None else np.asarray(beta, dtype=np.float64)
    return gamma, beta


def lp_norm_stats_reference(x, p):
    """Per-channel batch mean and p-norm average of the UN-centered values: mean|x|, sqrt(mean x^2), max|x|."""
    x3 = _ncs64(x)
    mean = x3.mean(axis=(0, 2))
    if p == 1:
        norm = np.abs(x3).mean(axis=(0, 2))
    elif p == 2:
        norm = np.sqrt((x3**2).mean(axis=(0, 2)))
    else:
        norm = np.abs(x3).max(axis=(0, 2))
    return mean, norm


def lp_norm_reference(x, mean, norm, gamma=None, beta=None, eps=1e-5):
    """gamma (x - mean) / (norm + eps) + beta per channel; pass batch or running statistics."""
    x3 = _ncs64(x)
    gamma, beta = _affine_params(x3.shape[1], gamma, beta)
    mean = np.asarray(mean, dtype=np.float64)[None, :, None]
    norm = np.asarray(norm, dtype=np.float64)[None, :, None]
    y = (x3 - mean) / (norm + eps) * gamma[None, :, None] + beta[None, :, None]
    return y.reshape(np.shape(x))


def lp_norm_train_reference(x, p, gamma=None, beta=None, eps=1e-5):
    """Lp batch norm with batch statistics (train / probe modes). Returns y."""
    mean, norm = lp_norm_stats_reference(x, p)
    return lp_norm_reference(x, mean, norm, gamma, beta, eps)


def lp_norm_running_reference(running_mean, running_norm, batches, p, momentum=0.1):
    """Running mean and norm after one momentum update per batch in `batches` (no bias correction)."""
    rm = np.array(running_mean, dtype=np.float64)
    rn = np.array(running_norm, dtype=np.float64)
    for x in batches:
        mean, norm = lp_norm_stats_reference(x, p)
        rm = (1 - momentum) * rm + momentum * mean
        rn = (1 - momentum) * rn + momentum * norm
    return rm, rn


def group_norm_reference(x, groups, gamma=None, beta=None, eps=1e-5):
    """torch's group_norm: per sample and group of C / groups channels, (x - mean) / sqrt(var + eps) (biased var),
    then the per-channel affine. Loops over samples and groups."""
    x3 = _ncs64(x)
    n, c, _ = x3.shape
    gamma, beta = _affine_params(c, gamma, beta)
    per = c // groups
    y = np.empty_like(x3)
    for i in range(n):
        for g in range(groups):
            block = x3[i, g * per:(g + 1) * per]
            mean = block.mean()
            var = ((block - mean) ** 2).mean()
            y[i, g * per:(g + 1) * per] = (block - mean) / np.sqrt(var + eps)
    y = y * gamma[None, :, None] + beta[None, :, None]
    return y.reshape(np.shape(x))


def noisy_batch_norm_reference(x, scale_noise, shift_noise, gamma=None, beta=None, eps=1e-5, before_affine=False):
    """Batch norm (batch statistics, biased variance) with fixed noise: s (gamma xhat + beta) + m after the affine,
    gamma (s xhat + m) + beta before it."""
    x3 = _ncs64(x)
    gamma, beta = _affine_params(x3.shape[1], gamma, beta)
    s = _ncs64(scale_noise)
    m = _ncs64(shift_noise)
    mean = x3.mean(axis=(0, 2))[None, :, None]
    var = ((x3 - mean) ** 2).mean(axis=(0, 2))[None, :, None]
    xhat = (x3 - mean) / np.sqrt(var + eps)
    g, b = gamma[None, :, None], beta[None, :, None]
    y = g * (s * xhat + m) + b if before_affine else s * (g * xhat + b) + m
    return y.reshape(np.shape(x))

# === end norms2 ===

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


# === section: measurements (whole networks: brute-force ICS, dense Hessians, snapshots) ===
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
# === end measurements ===


# === section: gradient explosion (a NumPy MLP with BatchNorm, backpropagated by hand) ===
_ACTIVATION_GRAD_REF = {
    "relu": lambda z: (z > 0).astype(np.float64),
    "tanh": lambda z: 1.0 - np.tanh(z) ** 2,
    "sigmoid": lambda z: sigmoid_ref(z) * (1.0 - sigmoid_ref(z)),
    "identity": np.ones_like,
}


def mlp_loss_ref(layers, x, labels, activation, eps=1e-5):
    """Mean softmax cross-entropy of an MLP given as a list of ("linear", W, b) and ("batch", gamma, beta) entries
    (an activation after every BatchNorm, or after every hidden Linear when there is no BatchNorm), float64."""
    return _mlp_forward_ref(layers, x, activation, eps)[0](labels)


def _mlp_forward_ref(layers, x, activation, eps):
    h = np.asarray(x, dtype=np.float64)
    caches = []
    hidden_linear = [i for i, la in enumerate(layers) if la[0] == "linear"][:-1]
    for i, layer in enumerate(layers):
        if layer[0] == "linear":
            _, w, b = layer
            caches.append(("linear", h, np.asarray(w, dtype=np.float64)))
            h = h @ np.asarray(w, dtype=np.float64).T + np.asarray(b, dtype=np.float64)
        else:
            _, gamma, _beta = layer
            mean, var = batch_norm_stats_reference(h)
            xhat = (h - mean) / np.sqrt(var + eps)
            caches.append(("batch", xhat, np.sqrt(var + eps), np.asarray(gamma, dtype=np.float64)))
            h = batch_norm_train_reference(h, gamma, _beta, eps)
        followed_by_norm = i + 1 < len(layers) and layers[i + 1][0] == "batch"
        if layer[0] == "batch" or (i in hidden_linear and not followed_by_norm):
            caches.append(("activation", h))
            h = activation_ref(h, activation)
    return (lambda labels: softmax_cross_entropy_ref(h, labels)[0]), caches, h


def mlp_weight_gradients_ref(layers, x, labels, activation, eps=1e-5):
    """dL/dW of every Linear layer of `mlp_loss_ref`'s MLP, by backpropagation written out layer by layer."""
    _, caches, logits = _mlp_forward_ref(layers, x, activation, eps)
    n = logits.shape[0]
    _, probs = softmax_cross_entropy_ref(logits, labels)
    d = probs.copy()
    d[np.arange(n), labels] -= 1.0
    d /= n
    grads = []
    for cache in reversed(caches):
        if cache[0] == "linear":
            _, inp, w = cache
            grads.append(d.T @ inp)
            d = d @ w
        elif cache[0] == "activation":
            d = d * _ACTIVATION_GRAD_REF[activation](cache[1])
        else:
            _, xhat, std, gamma = cache
            dxhat = d * gamma
            # Batch statistics depend on the input: d/dx of (x - mean) / std over the batch.
            d = (dxhat - dxhat.mean(axis=0) - xhat * (dxhat * xhat).mean(axis=0)) / std
    return grads[::-1]
# === end gradient explosion ===


def maxpool_gather_ref(rx: np.ndarray, argmax: np.ndarray) -> np.ndarray:
    """rx at each 2x2 window's arg-max (int8 0..3, row-major), by NumPy indexing."""
    n, c, ho, wo = argmax.shape
    windows = rx[:, :, : 2 * ho, : 2 * wo].reshape(n, c, ho, 2, wo, 2).transpose(0, 1, 2, 4, 3, 5)
    windows = windows.reshape(n, c, ho, wo, 4)
    return np.take_along_axis(windows, argmax.astype(np.int64)[..., None], axis=-1)[..., 0]
