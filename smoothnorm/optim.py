"""Optimizers on flat parameter vectors with torch.optim's names, defaults and update rules.

Each `step(params, grads)` is one fused Numba pass (smoothnorm.kernels.optim) that updates `params` in place;
`peek(params, grads)` returns what that step would produce without touching `params` or the optimizer's state
(the internal-covariate-shift measurement needs the real update without advancing the optimizer).
State arrays are allocated on the first step with params' size and dtype, and zero-initialised where torch
zero-initialises them (SGD's momentum buffer starts as the first gradient, Adagrad's sum as
`initial_accumulator_value`).
"""

from __future__ import annotations

from typing import Any

import numpy as np


def _kernels():
    """smoothnorm.kernels.optim, imported on the first step: building and checking an optimizer (as loading a spec
    does) needs no Numba."""
    from smoothnorm.kernels import optim

    return optim

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def _nonnegative(name: str, value: Any) -> float:
    value = _real(name, value)
    if not 0.0 <= value:
        raise ValueError(f"Invalid {name}: expected {name} >= 0, got {name}={value!r}")
    return value


def _real(name: str, value: Any) -> float:
    if isinstance(value, (bool, np.bool_)):
        raise ValueError(f"Invalid {name}: expected a real number, got {name}={value!r}")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"Invalid {name}: expected a real number, got {name}={value!r}") from None


def _flag(name: str, value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"Invalid {name}: expected True or False, got {name}={value!r}")
    return bool(value)


def _betas(name: str, value: Any) -> tuple[float, float]:
    try:
        beta1, beta2 = (_real(name, b) for b in value)
    except (TypeError, ValueError):
        raise ValueError(f"Invalid {name}: expected a pair of reals, got {name}={value!r}") from None
    for index, beta in enumerate((beta1, beta2)):
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"Invalid {name}: expected 0 <= {name}[{index}] < 1, got {name}={value!r}")
    return (beta1, beta2)


class _Hyperparameter:
    """A validated, writable hyperparameter attribute (schedules change lr between steps)."""

    def __init__(self, check):
        self.check = check

    def __set_name__(self, owner, name):
        self.name = name
        self.slot = "_hyper_" + name

    def __get__(self, obj, objtype=None):
        if obj is None:
            return self
        return getattr(obj, self.slot)

    def __set__(self, obj, value):
        setattr(obj, self.slot, self.check(self.name, value))


class Optimizer:
    """Base class: lazy state, input checks, step/peek, state_dict round trips.

    Subclasses declare `name`, `hyperparameter_names` (constructor keywords, in order), `state_names` (torch's
    state keys), `required_state` (arrays every step after the first must have) and implement `_update`.
    """

    name: str = ""
    hyperparameter_names: tuple[str, ...] = ()
    state_names: tuple[str, ...] = ()
    required_state: tuple[str, ...] = ()

    def __init__(self, **hyperparameters: Any) -> None:
        for key, value in hyperparameters.items():
            setattr(self, key, value)
        self._check_hyperparameters()
        self.step_count = 0
        self._state: dict[str, np.ndarray] = {}
        self._size: int | None = None
        self._dtype: np.dtype | None = None

    # --- public API -------------------------------------------------------------------------------------------

    def step(self, params: np.ndarray, grads: np.ndarray) -> None:
        """Update the flat `params` (n,) in place from `grads` (n,), same float dtype, and advance the state."""
        params, grads = self._check_inputs(params, grads)
        if not params.flags.writeable:
            raise ValueError("params: expected a writeable array (it is updated in place), got a read-only one")
        self._size, self._dtype = params.size, params.dtype
        self._update(params, grads, params, self.step_count + 1, commit=True)
        self.step_count += 1

    def peek(self, params: np.ndarray, grads: np.ndarray) -> np.ndarray:
        """The parameters the next `step(params, grads)` would produce, as a new (n,) array; changes nothing."""
        params, grads = self._check_inputs(params, grads)
        out = np.empty_like(params)
        self._update(params, grads, out, self.step_count + 1, commit=False)
        return out

    def hyperparameters(self) -> dict[str, Any]:
        """The constructor keywords and their current values."""
        return {key: getattr(self, key) for key in self.hyperparameter_names}

    def state_dict(self) -> dict[str, Any]:
        """Name, hyperparameters, step count and copies of the state arrays (Python scalars and numpy arrays)."""
        d: dict[str, Any] = {"name": self.name, "step": self.step_count}
        d.update(self.hyperparameters())
        for key, array in self._state.items():
            d[key] = array.copy()
        return d

    def load_state_dict(self, d: dict[str, Any]) -> None:
        """Restore hyperparameters, step count and state from `state_dict()` output (also after np.savez/json).

        Raises ValueError on a missing or unknown key, another optimizer's name, or inconsistent arrays; the
        optimizer is unchanged when it raises.
        """
        d = {key: _unwrap(value) for key, value in d.items()}
        expected = {"name", "step", *self.hyperparameter_names}
        missing = sorted(expected - d.keys())
        if missing:
            raise ValueError(f"state_dict: missing keys {missing}")
        unknown = sorted(d.keys() - expected - set(self.state_names))
        if unknown:
            raise ValueError(f"state_dict: unexpected keys {unknown} for {type(self).__name__}")
        if d["name"] != self.name:
            raise ValueError(f"state_dict: expected name {self.name!r}, got {d['name']!r}")
        step = d["step"]
        if isinstance(step, (bool, np.bool_)) or not isinstance(step, (int, np.integer)) or step < 0:
            raise ValueError(f"state_dict: expected step a non-negative integer, got step={step!r}")
        state = {}
        for key in self.state_names:
            if key not in d:
                continue
            array = np.asarray(d[key])
            if array.ndim != 1 or array.dtype not in _FLOATS:
                raise ValueError(
                    f"state_dict: expected {key} a 1-D float32 or float64 array, got "
                    f"shape {array.shape} dtype {array.dtype}"
                )
            state[key] = np.array(array, order="C", copy=True)
        if state:
            first_key, first = next(iter(state.items()))
            for key, array in state.items():
                if array.shape != first.shape or array.dtype != first.dtype:
                    raise ValueError(
                        f"state_dict: expected {key} of shape {first.shape} dtype {first.dtype} (as {first_key}), "
                        f"got shape {array.shape} dtype {array.dtype}"
                    )
        if step > 0:
            absent = [key for key in self.required_state if key not in state]
            if absent:
                raise ValueError(f"state_dict: step={step} but state arrays {absent} are missing")
        # Validate every hyperparameter on a scratch instance first, so a bad dict leaves self unchanged.
        scratch = object.__new__(type(self))
        hyperparameters = {key: d[key] for key in self.hyperparameter_names}
        for key, value in hyperparameters.items():
            setattr(scratch, key, value)
        scratch._check_hyperparameters()
        for key in self.hyperparameter_names:
            setattr(self, key, getattr(scratch, key))
        self.step_count = int(step)
        self._state = state
        if state:
            self._size, self._dtype = first.size, first.dtype
        else:
            self._size, self._dtype = None, None

    def __repr__(self) -> str:
        args = ", ".join(f"{key}={value!r}" for key, value in self.hyperparameters().items())
        return f"{type(self).__name__}({args})"

    # --- for subclasses ---------------------------------------------------------------------------------------

    def _check_hyperparameters(self) -> None:
        """Checks that involve more than one hyperparameter (single values are checked on assignment)."""

    def _update(self, params: np.ndarray, grads: np.ndarray, out: np.ndarray, step: int, commit: bool) -> None:
        raise NotImplementedError

    def _buffer(self, key: str, params: np.ndarray, fill: float, commit: bool) -> np.ndarray:
        """State array `key`, created filled with `fill` if absent; kept only when `commit` (a peek keeps none)."""
        array = self._state.get(key)
        if array is None:
            array = np.full(params.size, fill, dtype=params.dtype)
            if commit:
                self._state[key] = array
        return array

    def _check_inputs(self, params: Any, grads: Any) -> tuple[np.ndarray, np.ndarray]:
        self._check_hyperparameters()
        if not isinstance(params, np.ndarray):
            raise ValueError(f"params: expected a numpy.ndarray, got {type(params).__name__}")
        if params.ndim != 1:
            raise ValueError(f"params: expected ndim 1, got ndim {params.ndim} (shape {params.shape})")
        if params.dtype not in _FLOATS:
            raise ValueError(f"params: expected dtype float32 or float64, got {params.dtype}")
        if not params.flags.c_contiguous:
            raise ValueError("params: expected a C-contiguous array (it is updated in place), got a strided view")
        grads = np.asarray(grads)
        if grads.shape != params.shape:
            raise ValueError(f"grads: expected shape {params.shape} (the shape of params), got {grads.shape}")
        if grads.dtype != params.dtype:
            raise ValueError(f"grads: expected dtype {params.dtype} (the dtype of params), got {grads.dtype}")
        if self._size is not None and params.size != self._size:
            raise ValueError(
                f"params: expected size {self._size} (the size this optimizer's state was built for), "
                f"got {params.size}"
            )
        if self._dtype is not None and params.dtype != self._dtype:
            raise ValueError(
                f"params: expected dtype {self._dtype} (the dtype this optimizer's state was built for), "
                f"got {params.dtype}"
            )
        return params, np.ascontiguousarray(grads)


def _unwrap(value: Any) -> Any:
    """Python scalars back from numpy scalars and 0-d arrays (np.load returns those for saved scalars)."""
    if isinstance(value, np.generic) or (isinstance(value, np.ndarray) and value.ndim == 0):
        return value.item()
    return value


class SGD(Optimizer):
    """Stochastic gradient descent with optional momentum, dampening, Nesterov momentum and L2 weight decay."""

    name = "sgd"
    hyperparameter_names = ("lr", "momentum", "dampening", "weight_decay", "nesterov")
    state_names = ("momentum_buffer",)

    lr = _Hyperparameter(_nonnegative)
    momentum = _Hyperparameter(_nonnegative)
    dampening = _Hyperparameter(_real)
    weight_decay = _Hyperparameter(_nonnegative)
    nesterov = _Hyperparameter(_flag)

    def __init__(
        self, lr: float, momentum: float = 0, dampening: float = 0, weight_decay: float = 0, nesterov: bool = False
    ) -> None:
        super().__init__(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay, nesterov=nesterov)

    def _check_hyperparameters(self) -> None:
        if self.nesterov and (self.momentum <= 0 or self.dampening != 0):
            raise ValueError(
                "Invalid nesterov: Nesterov momentum requires momentum > 0 and dampening == 0, got "
                f"nesterov=True, momentum={self.momentum!r}, dampening={self.dampening!r}"
            )

    def _update(self, params, grads, out, step, commit):
        # As torch: the buffer starts as the first gradient seen with momentum on, not as zeros.
        buffer = self._state.get("momentum_buffer")
        first = buffer is None
        if first and commit and self.momentum != 0:
            buffer = self._state["momentum_buffer"] = np.empty_like(params)
        _kernels().sgd_update(
            params, grads, buffer, lr=self.lr, momentum=self.momentum, dampening=self.dampening,
            weight_decay=self.weight_decay, nesterov=self.nesterov, first_step=first, out=out, update_state=commit,
        )


class Adagrad(Optimizer):
    """Adagrad with torch's learning-rate decay lr / (1 + (t - 1) * lr_decay) and L2 weight decay."""

    name = "adagrad"
    hyperparameter_names = ("lr", "lr_decay", "weight_decay", "initial_accumulator_value", "eps")
    state_names = ("sum",)
    required_state = ("sum",)

    lr = _Hyperparameter(_nonnegative)
    lr_decay = _Hyperparameter(_nonnegative)
    weight_decay = _Hyperparameter(_nonnegative)
    initial_accumulator_value = _Hyperparameter(_nonnegative)
    eps = _Hyperparameter(_nonnegative)

    def __init__(
        self,
        lr: float = 1e-2,
        lr_decay: float = 0,
        weight_decay: float = 0,
        initial_accumulator_value: float = 0,
        eps: float = 1e-10,
    ) -> None:
        super().__init__(
            lr=lr, lr_decay=lr_decay, weight_decay=weight_decay,
            initial_accumulator_value=initial_accumulator_value, eps=eps,
        )

    def _update(self, params, grads, out, step, commit):
        state_sum = self._buffer("sum", params, self.initial_accumulator_value, commit)
        _kernels().adagrad_update(
            params, grads, state_sum, lr=self.lr, step=step, lr_decay=self.lr_decay,
            weight_decay=self.weight_decay, eps=self.eps, out=out, update_state=commit,
        )


class RMSprop(Optimizer):
    """RMSprop with optional momentum, centering (Graves 2013) and L2 weight decay."""

    name = "rmsprop"
    hyperparameter_names = ("lr", "alpha", "eps", "weight_decay", "momentum", "centered")
    state_names = ("square_avg", "grad_avg", "momentum_buffer")
    required_state = ("square_avg",)

    lr = _Hyperparameter(_nonnegative)
    alpha = _Hyperparameter(_nonnegative)
    eps = _Hyperparameter(_nonnegative)
    weight_decay = _Hyperparameter(_nonnegative)
    momentum = _Hyperparameter(_nonnegative)
    centered = _Hyperparameter(_flag)

    def __init__(
        self,
        lr: float = 1e-2,
        alpha: float = 0.99,
        eps: float = 1e-8,
        weight_decay: float = 0,
        momentum: float = 0,
        centered: bool = False,
    ) -> None:
        super().__init__(
            lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay, momentum=momentum, centered=centered
        )

    def _update(self, params, grads, out, step, commit):
        square_avg = self._buffer("square_avg", params, 0.0, commit)
        grad_avg = self._buffer("grad_avg", params, 0.0, commit) if self.centered else None
        buffer = self._buffer("momentum_buffer", params, 0.0, commit) if self.momentum > 0 else None
        _kernels().rmsprop_update(
            params, grads, square_avg, grad_avg, buffer, lr=self.lr, alpha=self.alpha, eps=self.eps,
            weight_decay=self.weight_decay, momentum=self.momentum, centered=self.centered, out=out,
            update_state=commit,
        )


class Adam(Optimizer):
    """Adam (Kingma & Ba 2015) with bias correction, optional AMSGrad and L2 weight decay added to the gradient."""

    name = "adam"
    hyperparameter_names = ("lr", "betas", "eps", "weight_decay", "amsgrad")
    state_names = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")
    required_state = ("exp_avg", "exp_avg_sq")
    _decoupled_weight_decay = False

    lr = _Hyperparameter(_nonnegative)
    betas = _Hyperparameter(_betas)
    eps = _Hyperparameter(_nonnegative)
    weight_decay = _Hyperparameter(_nonnegative)
    amsgrad = _Hyperparameter(_flag)

    def __init__(
        self,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        amsgrad: bool = False,
    ) -> None:
        super().__init__(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad)

    def _update(self, params, grads, out, step, commit):
        exp_avg = self._buffer("exp_avg", params, 0.0, commit)
        exp_avg_sq = self._buffer("exp_avg_sq", params, 0.0, commit)
        max_exp_avg_sq = self._buffer("max_exp_avg_sq", params, 0.0, commit) if self.amsgrad else None
        _kernels().adam_update(
            params, grads, exp_avg, exp_avg_sq, max_exp_avg_sq, lr=self.lr, step=step, beta1=self.betas[0],
            beta2=self.betas[1], eps=self.eps, weight_decay=self.weight_decay, amsgrad=self.amsgrad,
            decoupled_weight_decay=self._decoupled_weight_decay, out=out, update_state=commit,
        )


class AdamW(Adam):
    """AdamW (Loshchilov & Hutter 2019): Adam with decoupled weight decay, params *= 1 - lr * weight_decay first."""

    name = "adamw"
    _decoupled_weight_decay = True

    def __init__(
        self,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
    ) -> None:
        super().__init__(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad)


OPTIMIZERS: dict[str, type[Optimizer]] = {
    "sgd": SGD,
    "adagrad": Adagrad,
    "rmsprop": RMSprop,
    "adam": Adam,
    "adamw": AdamW,
}


def make_optimizer(name: str, **kwargs: Any) -> Optimizer:
    """The optimizer registered as `name` (see OPTIMIZERS), built with torch.optim's keywords."""
    try:
        cls = OPTIMIZERS[name]
    except (KeyError, TypeError):
        raise ValueError(f"Unknown optimizer {name!r}; expected one of {sorted(OPTIMIZERS)}") from None
    return cls(**kwargs)
