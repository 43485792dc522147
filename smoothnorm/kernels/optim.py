"""Fused optimizer update kernels on flat parameter vectors (torch.optim's update rules, one pass each).

Every public function updates `params` in place by default, or writes the new parameters to `out` and, with
`update_state=False`, leaves every state array untouched: `step` and `peek` run the same compiled arithmetic,
so a peeked update equals the real one bit for bit. Scalars are cast to the arrays' dtype before the kernel runs,
so float32 vectors are updated in float32 arithmetic, as torch does. NaN and Inf propagate.
"""

import numpy as np
from numba import njit, prange

from smoothnorm.kernels._checks import _same_as

# Elements per parallel task. Fixed (not derived from the thread count) so results never depend on it; large
# enough that scheduling is negligible, small enough that a 2-core machine balances a ~1M-element vector.
_BLOCK = 1 << 14

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


@njit(cache=True, nogil=True, inline="always")
def _lerp(start, end, weight, one_minus_weight, from_start):
    # torch.lerp's two-sided formula: exact at weight 0 (from the start) and at weight 1 (from the end).
    if from_start:
        return start + weight * (end - start)
    return end - (end - start) * one_minus_weight


# Each rule is a serial loop over one block of views (`*_block`) driven by a prange over blocks. Indexing
# block-local views from 0 lets Numba prove indices non-negative and LLVM vectorize the loop; indexing the
# whole vectors with `range(block * _BLOCK, ...)` measured 2-4x slower (wraparound checks kept it scalar).
# An in-place update writes `params` itself (with `out` an empty placeholder) rather than an `out` that
# aliases it: LLVM's runtime overlap check would otherwise fail and fall back to the scalar loop (2x slower).


@njit(cache=True, nogil=True, error_model="numpy")
def _sgd_block(
    params, grads, buf, out, lr, momentum, one_minus_dampening, weight_decay, nesterov, use_momentum,
    init_buffer, update_state, in_place,
):
    for i in range(params.size):
        p = params[i]
        g = grads[i]
        # Branch rather than add 0 * p, which would turn an infinite parameter into NaN where torch does not.
        if weight_decay != 0:
            g = g + weight_decay * p
        if use_momentum:
            if init_buffer:
                b = g
            else:
                b = momentum * buf[i] + one_minus_dampening * g
            if update_state:
                buf[i] = b
            if nesterov:
                g = g + momentum * b
            else:
                g = b
        r = p - lr * g
        if in_place:
            params[i] = r
        else:
            out[i] = r


@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def _sgd_kernel(
    params, grads, buf, out, lr, momentum, one_minus_dampening, weight_decay, nesterov, use_momentum,
    init_buffer, update_state, in_place,
):
    n = params.size
    for block in prange((n + _BLOCK - 1) // _BLOCK):
        lo = block * _BLOCK
        hi = min(n, lo + _BLOCK)
        _sgd_block(
            params[lo:hi], grads[lo:hi], buf[lo:hi], out[lo:hi], lr, momentum, one_minus_dampening,
            weight_decay, nesterov, use_momentum, init_buffer, update_state, in_place,
        )


@njit(cache=True, nogil=True, error_model="numpy")
def _adagrad_block(params, grads, state_sum, out, clr, weight_decay, eps, update_state, in_place):
    for i in range(params.size):
        p = params[i]
        g = grads[i]
        if weight_decay != 0:
            g = g + weight_decay * p
        s = state_sum[i] + g * g
        if update_state:
            state_sum[i] = s
        r = p - clr * g / (np.sqrt(s) + eps)
        if in_place:
            params[i] = r
        else:
            out[i] = r


@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def _adagrad_kernel(params, grads, state_sum, out, clr, weight_decay, eps, update_state, in_place):
    n = params.size
    for block in prange((n + _BLOCK - 1) // _BLOCK):
        lo = block * _BLOCK
        hi = min(n, lo + _BLOCK)
        _adagrad_block(
            params[lo:hi], grads[lo:hi], state_sum[lo:hi], out[lo:hi], clr, weight_decay, eps, update_state,
            in_place,
        )


@njit(cache=True, nogil=True, error_model="numpy")
def _rmsprop_block(
    params, grads, square_avg, grad_avg, buf, out, lr, alpha, one_minus_alpha, lerp_complement, lerp_from_start,
    eps, weight_decay, momentum, centered, use_momentum, update_state, in_place,
):
    for i in range(params.size):
        p = params[i]
        g = grads[i]
        if weight_decay != 0:
            g = g + weight_decay * p
        v = alpha * square_avg[i] + one_minus_alpha * g * g
        if update_state:
            square_avg[i] = v
        if centered:
            m = _lerp(grad_avg[i], g, one_minus_alpha, lerp_complement, lerp_from_start)
            if update_state:
                grad_avg[i] = m
            v = v - m * m
        denom = np.sqrt(v) + eps
        if use_momentum:
            b = momentum * buf[i] + g / denom
            if update_state:
                buf[i] = b
            r = p - lr * b
        else:
            r = p - lr * g / denom
        if in_place:
            params[i] = r
        else:
            out[i] = r


@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def _rmsprop_kernel(
    params, grads, square_avg, grad_avg, buf, out, lr, alpha, one_minus_alpha, lerp_complement, lerp_from_start,
    eps, weight_decay, momentum, centered, use_momentum, update_state, in_place,
):
    n = params.size
    for block in prange((n + _BLOCK - 1) // _BLOCK):
        lo = block * _BLOCK
        hi = min(n, lo + _BLOCK)
        _rmsprop_block(
            params[lo:hi], grads[lo:hi], square_avg[lo:hi], grad_avg[lo:hi], buf[lo:hi], out[lo:hi], lr, alpha,
            one_minus_alpha, lerp_complement, lerp_from_start, eps, weight_decay, momentum, centered,
            use_momentum, update_state, in_place,
        )


@njit(cache=True, nogil=True, error_model="numpy")
def _adam_block(
    params, grads, exp_avg, exp_avg_sq, max_exp_avg_sq, out, weight_decay, decoupled, decay_factor,
    one_minus_beta1, lerp_complement, lerp_from_start, beta2, one_minus_beta2, bias_correction2_sqrt, eps, step_size,
    amsgrad, update_state, in_place,
):
    for i in range(params.size):
        p = params[i]
        g = grads[i]
        if weight_decay != 0:
            if decoupled:
                p = p * decay_factor
            else:
                g = g + weight_decay * p
        m = _lerp(exp_avg[i], g, one_minus_beta1, lerp_complement, lerp_from_start)
        v = beta2 * exp_avg_sq[i] + one_minus_beta2 * g * g
        if update_state:
            exp_avg[i] = m
            exp_avg_sq[i] = v
        if amsgrad:
            v_max = max_exp_avg_sq[i]
            # torch.maximum propagates NaN from either side; a bare `>` would drop a NaN in v.
            if v > v_max or v != v:
                v_max = v
            if update_state:
                max_exp_avg_sq[i] = v_max
            v = v_max
        r = p - step_size * m / (np.sqrt(v) / bias_correction2_sqrt + eps)
        if in_place:
            params[i] = r
        else:
            out[i] = r


@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def _adam_kernel(
    params, grads, exp_avg, exp_avg_sq, max_exp_avg_sq, out, weight_decay, decoupled, decay_factor,
    one_minus_beta1, lerp_complement, lerp_from_start, beta2, one_minus_beta2, bias_correction2_sqrt, eps, step_size,
    amsgrad, update_state, in_place,
):
    n = params.size
    for block in prange((n + _BLOCK - 1) // _BLOCK):
        lo = block * _BLOCK
        hi = min(n, lo + _BLOCK)
        _adam_block(
            params[lo:hi], grads[lo:hi], exp_avg[lo:hi], exp_avg_sq[lo:hi], max_exp_avg_sq[lo:hi], out[lo:hi],
            weight_decay, decoupled, decay_factor, one_minus_beta1, lerp_complement, lerp_from_start, beta2,
            one_minus_beta2, bias_correction2_sqrt, eps, step_size, amsgrad, update_state, in_place,
        )


def _check_params(params) -> np.ndarray:
    if not isinstance(params, np.ndarray):
        raise ValueError(f"params: expected a numpy.ndarray, got {type(params).__name__}")
    if params.ndim != 1:
        raise ValueError(f"params: expected ndim 1, got ndim {params.ndim} (shape {params.shape})")
    if params.dtype not in _FLOATS:
        raise ValueError(f"params: expected dtype float32 or float64, got {params.dtype}")
    if not params.flags.c_contiguous:
        raise ValueError("params: expected a C-contiguous array (it is updated in place), got a strided view")
    return params


def _check_like(name: str, a, params: np.ndarray, *, in_place: bool) -> np.ndarray:
    """Check that `a` matches params' shape and dtype; arrays written in place must already be contiguous."""
    if not in_place:
        return _same_as(name, a, params, "params")
    if not isinstance(a, np.ndarray):
        raise ValueError(f"{name}: expected a numpy.ndarray, got {type(a).__name__}")
    _same_as(name, a, params, "params")
    if not a.flags.c_contiguous:
        raise ValueError(f"{name}: expected a C-contiguous array (it is written in place), got a strided view")
    if not a.flags.writeable:
        raise ValueError(f"{name}: expected a writeable array, got a read-only one")
    return a


def _prepare(params, grads, out):
    """Checked params and grads, the array to return, the array the kernel writes to and the in-place flag."""
    params = _check_params(params)
    grads = _check_like("grads", grads, params, in_place=False)
    # Numba compiles a separate specialization for read-only arrays; a copy is cheaper than that compile.
    if not grads.flags.writeable:
        grads = grads.copy()
    if out is None or out is params:
        if not params.flags.writeable:
            raise ValueError("params: expected a writeable array (it is updated in place), got a read-only one")
        return params, grads, params, np.empty(0, dtype=params.dtype), True
    out = _check_like("out", out, params, in_place=True)
    if np.may_share_memory(out, params):
        raise ValueError("out: expected params itself or memory disjoint from params, got an overlapping view")
    # The kernels have a (here untaken) branch writing params, which Numba refuses to type for a read-only array.
    if not params.flags.writeable:
        params = params.copy()
    return params, grads, out, out, False


def _state(name: str, a, params: np.ndarray, needed: bool, update_state: bool) -> np.ndarray:
    """A state array the kernel reads or writes, or a never-touched empty placeholder when not needed."""
    if not needed:
        return np.empty(0, dtype=params.dtype)
    if a is None:
        raise ValueError(f"{name}: required by these options, got None")
    a = _check_like(name, a, params, in_place=update_state)
    # One kernel signature for state: Numba types a read-only array differently and would refuse the
    # (never taken) write branch, so a read-only state array that is only read is copied.
    return a if a.flags.writeable else a.copy()


def sgd_update(
    params: np.ndarray,
    grads: np.ndarray,
    momentum_buffer: np.ndarray | None,
    *,
    lr: float,
    momentum: float = 0.0,
    dampening: float = 0.0,
    weight_decay: float = 0.0,
    nesterov: bool = False,
    first_step: bool = False,
    out: np.ndarray | None = None,
    update_state: bool = True,
) -> np.ndarray:
    """One torch.optim.SGD step: weight decay, momentum (buffer initialised with the gradient), Nesterov.

    params, grads, momentum_buffer, out: (n,), one float dtype. momentum_buffer is read unless `first_step`
    (it is then initialised with the gradient) and written when `update_state`; it may be None when
    momentum == 0, or when `first_step` and not `update_state`. out defaults to params (in place).
    Returns out.
    """
    params, grads, out, target, in_place = _prepare(params, grads, out)
    t = params.dtype.type
    use_momentum = momentum != 0
    buf = _state(
        "momentum_buffer", momentum_buffer, params,
        use_momentum and (update_state or not first_step), update_state,
    )
    # One block needs no parallel region: waking the thread pool costs more than the update.
    (_sgd_block if params.size <= _BLOCK else _sgd_kernel)(
        params, grads, buf, target, t(lr), t(momentum), t(1 - dampening), t(weight_decay), bool(nesterov),
        use_momentum, bool(first_step), bool(update_state), in_place,
    )
    return out


def adagrad_update(
    params: np.ndarray,
    grads: np.ndarray,
    state_sum: np.ndarray,
    *,
    lr: float,
    step: int,
    lr_decay: float = 0.0,
    weight_decay: float = 0.0,
    eps: float = 1e-10,
    out: np.ndarray | None = None,
    update_state: bool = True,
) -> np.ndarray:
    """One torch.optim.Adagrad step; `step` is the 1-based number of the step being taken (for lr_decay).

    params, grads, state_sum, out: (n,), one float dtype; out defaults to params (in place). Returns out.
    """
    params, grads, out, target, in_place = _prepare(params, grads, out)
    t = params.dtype.type
    state_sum = _state("state_sum", state_sum, params, True, update_state)
    clr = lr / (1 + (step - 1) * lr_decay)
    # One block needs no parallel region: waking the thread pool costs more than the update.
    (_adagrad_block if params.size <= _BLOCK else _adagrad_kernel)(
        params, grads, state_sum, target, t(clr), t(weight_decay), t(eps), bool(update_state), in_place
    )
    return out


def rmsprop_update(
    params: np.ndarray,
    grads: np.ndarray,
    square_avg: np.ndarray,
    grad_avg: np.ndarray | None = None,
    momentum_buffer: np.ndarray | None = None,
    *,
    lr: float,
    alpha: float = 0.99,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    momentum: float = 0.0,
    centered: bool = False,
    out: np.ndarray | None = None,
    update_state: bool = True,
) -> np.ndarray:
    """One torch.optim.RMSprop step (optionally centered, with momentum).

    params, grads, square_avg, out: (n,), one float dtype; grad_avg is needed when centered, momentum_buffer
    when momentum > 0 (both zero-initialised by the caller). out defaults to params (in place). Returns out.
    """
    params, grads, out, target, in_place = _prepare(params, grads, out)
    t = params.dtype.type
    use_momentum = momentum > 0
    square_avg = _state("square_avg", square_avg, params, True, update_state)
    grad_avg = _state("grad_avg", grad_avg, params, bool(centered), update_state)
    buf = _state("momentum_buffer", momentum_buffer, params, use_momentum, update_state)
    weight = t(1 - alpha)
    # One block needs no parallel region: waking the thread pool costs more than the update.
    (_rmsprop_block if params.size <= _BLOCK else _rmsprop_kernel)(
        params, grads, square_avg, grad_avg, buf, target, t(lr), t(alpha), weight, t(1) - weight,
        bool(abs(weight) < 0.5), t(eps), t(weight_decay), t(momentum), bool(centered), use_momentum,
        bool(update_state), in_place,
    )
    return out


def adam_update(
    params: np.ndarray,
    grads: np.ndarray,
    exp_avg: np.ndarray,
    exp_avg_sq: np.ndarray,
    max_exp_avg_sq: np.ndarray | None = None,
    *,
    lr: float,
    step: int,
    beta1: float = 0.9,
    beta2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    amsgrad: bool = False,
    decoupled_weight_decay: bool = False,
    out: np.ndarray | None = None,
    update_state: bool = True,
) -> np.ndarray:
    """One torch.optim.Adam step, or AdamW's with `decoupled_weight_decay`; `step` is 1-based (bias correction).

    params, grads, exp_avg, exp_avg_sq, out: (n,), one float dtype; max_exp_avg_sq is needed with amsgrad.
    out defaults to params (in place). Returns out.
    """
    params, grads, out, target, in_place = _prepare(params, grads, out)
    t = params.dtype.type
    exp_avg = _state("exp_avg", exp_avg, params, True, update_state)
    exp_avg_sq = _state("exp_avg_sq", exp_avg_sq, params, True, update_state)
    max_exp_avg_sq = _state("max_exp_avg_sq", max_exp_avg_sq, params, bool(amsgrad), update_state)
    # Scalars in Python double precision first, then cast, exactly as torch's single-tensor Adam does.
    bias_correction1 = 1 - beta1**step
    bias_correction2 = 1 - beta2**step
    weight = t(1 - beta1)
    # One block needs no parallel region: waking the thread pool costs more than the update.
    (_adam_block if params.size <= _BLOCK else _adam_kernel)(
        params, grads, exp_avg, exp_avg_sq, max_exp_avg_sq, target, t(weight_decay),
        bool(decoupled_weight_decay), t(1 - lr * weight_decay), weight, t(1) - weight, bool(abs(weight) < 0.5),
        t(beta2), t(1 - beta2), t(bias_correction2**0.5), t(eps), t(lr / bias_correction1), bool(amsgrad),
        bool(update_state), in_place,
    )
    return out
