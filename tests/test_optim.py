"""Optimizers: trajectories against the NumPy references, peek, state_dict round trips, validation, torch parity."""

import functools
import json

import numpy as np
import pytest

from smoothnorm.kernels.optim import _BLOCK
from smoothnorm.optim import OPTIMIZERS, SGD, Adagrad, Adam, AdamW, Optimizer, RMSprop, make_optimizer
from tests.reference import (
    adagrad_step_reference,
    adam_step_reference,
    relative_error,
    rmsprop_step_reference,
    sgd_step_reference,
)

REFERENCES = {
    "sgd": sgd_step_reference,
    "adagrad": adagrad_step_reference,
    "rmsprop": rmsprop_step_reference,
    "adam": adam_step_reference,
    # AdamW is Adam with decoupled decay and torch's AdamW default weight_decay=1e-2.
    "adamw": functools.partial(adam_step_reference, decoupled=True, weight_decay=1e-2),
}

# Every option, alone and combined; learning rates keep the quadratic's iterates bounded over 20 steps.
CONFIGS = [
    ("sgd", {"lr": 0.1}),
    ("sgd", {"lr": 0.1, "momentum": 0.9}),
    ("sgd", {"lr": 0.1, "momentum": 0.9, "dampening": 0.3}),
    ("sgd", {"lr": 0.1, "momentum": 0.9, "nesterov": True}),
    ("sgd", {"lr": 0.1, "weight_decay": 0.05}),
    ("sgd", {"lr": 0.1, "momentum": 0.5, "dampening": 0.5, "weight_decay": 0.05}),
    ("sgd", {"lr": 0.1, "momentum": 0.8, "weight_decay": 0.05, "nesterov": True}),
    ("adagrad", {"lr": 0.1}),
    ("adagrad", {"lr": 0.1, "lr_decay": 0.05}),
    ("adagrad", {"lr": 0.1, "initial_accumulator_value": 0.3}),
    ("adagrad", {"lr": 0.1, "weight_decay": 0.05}),
    ("adagrad", {"lr": 0.1, "lr_decay": 0.05, "weight_decay": 0.05, "initial_accumulator_value": 0.3, "eps": 1e-3}),
    ("rmsprop", {"lr": 0.01}),
    ("rmsprop", {"lr": 0.01, "momentum": 0.9}),
    ("rmsprop", {"lr": 0.01, "centered": True}),
    ("rmsprop", {"lr": 0.01, "weight_decay": 0.05}),
    ("rmsprop", {"lr": 0.01, "alpha": 0.3, "momentum": 0.5, "centered": True, "weight_decay": 0.05, "eps": 1e-4}),
    ("adam", {"lr": 0.05}),
    ("adam", {"lr": 0.05, "amsgrad": True}),
    ("adam", {"lr": 0.05, "weight_decay": 0.05}),
    ("adam", {"lr": 0.05, "betas": (0.3, 0.5), "eps": 1e-4, "weight_decay": 0.05, "amsgrad": True}),
    ("adamw", {"lr": 0.05}),
    ("adamw", {"lr": 0.05, "weight_decay": 0.0}),
    ("adamw", {"lr": 0.05, "weight_decay": 0.1, "amsgrad": True}),
    ("adamw", {"lr": 0.05, "betas": (0.0, 0.9), "weight_decay": 0.1}),
]
CONFIG_IDS = [f"{name}-" + "-".join(f"{k}={v}" for k, v in kwargs.items()) for name, kwargs in CONFIGS]
# One configuration per optimizer with every option on, for the tests that are about mechanics, not the rule.
FULL_CONFIGS = {name: kwargs for name, kwargs in CONFIGS}  # the last listed per name has the most options on


def quadratic(rng, n):
    """A random f(w) = 0.5 w^T A w - b^T w with A SPD (eigenvalues in about [0.1, 4]), and a start w0."""
    m = rng.normal(size=(n, n))
    a = m @ m.T / n + 0.1 * np.eye(n)
    b = rng.normal(size=n)
    w0 = rng.normal(size=n)
    return a, b, w0


def run_trajectory(opt, w0, grad, steps, dtype):
    """`steps` optimizer steps from w0 (cast to dtype); gradients are computed in float64 then cast."""
    w = w0.astype(dtype)
    out = []
    for _ in range(steps):
        g = grad(w.astype(np.float64)).astype(dtype)
        opt.step(w, g)
        out.append(w.copy())
    return np.array(out)


def reference_trajectory(name, kwargs, w0, grad, steps):
    w, state, out = w0.copy(), {}, []
    for _ in range(steps):
        w = REFERENCES[name](w, grad(w), state, **kwargs)
        out.append(w)
    return np.array(out)


def assert_same_state(a: dict, b: dict):
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], np.ndarray):
            assert a[key].dtype == b[key].dtype and a[key].tobytes() == b[key].tobytes(), key
        else:
            assert a[key] == b[key] and type(a[key]) is type(b[key]), key


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize(("name", "kwargs"), CONFIGS, ids=CONFIG_IDS)
def test_trajectory_matches_reference(rng, name, kwargs, dtype):
    a, b, w0 = quadratic(rng, 24)
    grad = lambda w: a @ w - b
    ours = run_trajectory(make_optimizer(name, **kwargs), w0, grad, 20, dtype)
    expected = reference_trajectory(name, kwargs, w0, grad, 20)
    assert ours.dtype == dtype
    # The iterates must actually move, or agreement would prove nothing.
    assert relative_error(expected[-1], w0) > 1e-2
    # float32: centered RMSprop subtracts nearly equal moments, so rounding grows to ~1e-5 over 20 steps.
    tolerance = 1e-12 if dtype == np.float64 else 1e-4
    for t in range(20):
        assert relative_error(ours[t], expected[t]) < tolerance, f"step {t + 1}"


@pytest.mark.parametrize("n", [0, 1, _BLOCK - 1, _BLOCK, 2 * _BLOCK + 3])
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_every_block_is_updated(rng, name, n):
    """Vectors spanning several parallel blocks (and empty ones) follow the reference, independent gradients."""
    kwargs = FULL_CONFIGS[name]
    opt = make_optimizer(name, **kwargs)
    w = rng.normal(size=n)
    expected, state = w.copy(), {}
    for _ in range(3):
        g = rng.normal(size=n)
        opt.step(w, g)
        expected = REFERENCES[name](expected, g, state, **kwargs)
    if n:
        assert relative_error(w, expected) < 1e-12


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize(("name", "kwargs"), CONFIGS, ids=CONFIG_IDS)
def test_peek_equals_step_and_changes_nothing(rng, name, kwargs, dtype):
    a, b, w0 = quadratic(rng, 16)
    opt = make_optimizer(name, **kwargs)
    w = w0.astype(dtype)
    for t in range(6):
        g = (a @ w.astype(np.float64) - b).astype(dtype)
        before_w = w.copy()
        before_state = opt.state_dict()
        peeked = opt.peek(w, g)
        assert peeked is not w and peeked.dtype == dtype
        assert w.tobytes() == before_w.tobytes(), f"peek changed params at step {t}"
        assert_same_state(opt.state_dict(), before_state)
        # Peeking twice gives the same answer (nothing advanced in between).
        assert opt.peek(w, g).tobytes() == peeked.tobytes()
        opt.step(w, g)
        assert w.tobytes() == peeked.tobytes(), f"peek differs from step {t + 1}"
        assert not np.array_equal(w, before_w)


@pytest.mark.parametrize(("name", "kwargs"), CONFIGS, ids=CONFIG_IDS)
def test_state_dict_round_trip_continues_identically(rng, name, kwargs):
    a, b, w0 = quadratic(rng, 16)
    grad = lambda w: a @ w - b
    opt = make_optimizer(name, **kwargs)
    w = w0.copy()
    for _ in range(7):
        opt.step(w, grad(w))
    saved, w_saved = opt.state_dict(), w.copy()
    uninterrupted = run_trajectory(opt, w, grad, 8, np.float64)

    # A fresh optimizer with other hyperparameters takes all of them from the dict.
    resumed = make_optimizer(name, lr=7.0)
    resumed.load_state_dict(saved)
    assert resumed.hyperparameters() == opt.hyperparameters()
    assert resumed.step_count == 7
    continued = run_trajectory(resumed, w_saved, grad, 8, np.float64)
    assert continued.tobytes() == uninterrupted.tobytes()


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_state_dict_survives_npz_and_json(rng, name, tmp_path):
    """Arrays through np.savez, scalars through json (the checkpoint path); also the whole dict in one npz."""
    a, b, w0 = quadratic(rng, 10)
    grad = lambda w: a @ w - b
    opt = make_optimizer(name, **FULL_CONFIGS[name])
    w = w0.copy()
    for _ in range(4):
        opt.step(w, grad(w))
    saved = opt.state_dict()
    for key, value in saved.items():
        assert isinstance(value, (np.ndarray, bool, int, float, str, tuple)), key
        if isinstance(value, tuple):
            assert all(type(v) is float for v in value), key

    arrays = {k: v for k, v in saved.items() if isinstance(v, np.ndarray)}
    scalars = {k: v for k, v in saved.items() if not isinstance(v, np.ndarray)}
    np.savez(tmp_path / "arrays.npz", **arrays)
    (tmp_path / "scalars.json").write_text(json.dumps(scalars))
    with np.load(tmp_path / "arrays.npz") as npz:
        split = {**json.loads((tmp_path / "scalars.json").read_text()), **dict(npz)}
    np.savez(tmp_path / "whole.npz", **saved)
    with np.load(tmp_path / "whole.npz") as npz:
        whole = dict(npz)

    expected = run_trajectory(opt, w, grad, 3, np.float64)
    for d in (split, whole):
        resumed = make_optimizer(name, lr=1.0)
        resumed.load_state_dict(d)
        assert_same_state(resumed.state_dict(), saved)
        assert run_trajectory(resumed, w, grad, 3, np.float64).tobytes() == expected.tobytes()


def test_state_dict_holds_copies(rng):
    opt = Adam(lr=0.1)
    w = rng.normal(size=5)
    opt.step(w, rng.normal(size=5))
    d = opt.state_dict()
    d["exp_avg"][:] = 123.0
    assert not np.any(opt.state_dict()["exp_avg"] == 123.0)
    opt.load_state_dict(d)
    d["exp_avg"][:] = 7.0
    assert np.all(opt.state_dict()["exp_avg"] == 123.0)


def test_state_is_lazy_and_sgd_buffer_starts_as_gradient(rng):
    opt = SGD(lr=0.1, momentum=0.9, weight_decay=0.5)
    assert opt.state_dict() == {
        "name": "sgd", "step": 0, "lr": 0.1, "momentum": 0.9, "dampening": 0.0, "weight_decay": 0.5,
        "nesterov": False,
    }
    w, g = rng.normal(size=6), rng.normal(size=6)
    w0 = w.copy()
    opt.step(w, g)
    np.testing.assert_array_equal(opt.state_dict()["momentum_buffer"], g + 0.5 * w0)
    assert "momentum_buffer" not in SGD(lr=0.1).state_dict()
    adagrad = Adagrad(initial_accumulator_value=0.25)
    adagrad.step(w, g)
    np.testing.assert_allclose(adagrad.state_dict()["sum"], 0.25 + g * g, rtol=1e-15)


@pytest.mark.parametrize(
    ("name", "d_update", "message"),
    [
        ("adam", {"lr": None}, "missing"),
        ("adam", {"bogus": 1}, "unexpected"),
        ("adam", {"momentum_buffer": np.zeros(4)}, "unexpected"),
        ("adam", {"name": "adamw"}, "name"),
        ("adam", {"step": -1}, "step"),
        ("adam", {"step": 2.5}, "step"),
        ("adam", {"exp_avg": np.zeros(5)}, "exp_avg"),
        ("adam", {"exp_avg": np.zeros(4, np.float32)}, "exp_avg"),
        ("adam", {"exp_avg_sq": np.zeros((2, 2))}, "exp_avg_sq"),
        ("adam", {"exp_avg_sq": np.zeros(4, np.int64)}, "exp_avg_sq"),
        ("adam", {"exp_avg": None}, "missing"),
        ("adam", {"lr": -1.0}, "lr"),
        ("adam", {"betas": (0.9, 1.0)}, "betas"),
        ("sgd", {"nesterov": True, "dampening": 0.5}, "nesterov"),
        ("rmsprop", {"centered": "yes"}, "centered"),
    ],
)
def test_load_state_dict_rejects_bad_dicts_and_changes_nothing(rng, name, d_update, message):
    kwargs = {"sgd": {"lr": 0.1, "momentum": 0.9}}.get(name, {})
    opt = make_optimizer(name, **kwargs)
    w = rng.normal(size=4)
    opt.step(w, rng.normal(size=4))
    d = opt.state_dict()
    for key, value in d_update.items():
        if value is None:
            del d[key]
        else:
            d[key] = value
    before = opt.state_dict()
    with pytest.raises(ValueError, match=message):
        opt.load_state_dict(d)
    assert_same_state(opt.state_dict(), before)


BAD_HYPERPARAMETERS = [
    (SGD, {"lr": -0.1}, "lr", "-0.1"),
    (SGD, {"lr": float("nan")}, "lr", "nan"),
    (SGD, {"lr": 0.1, "momentum": -0.5}, "momentum", "-0.5"),
    (SGD, {"lr": 0.1, "weight_decay": -1e-4}, "weight_decay", "-0.0001"),
    (SGD, {"lr": 0.1, "nesterov": True}, "nesterov", "momentum=0.0"),
    (SGD, {"lr": 0.1, "momentum": 0.9, "dampening": 0.1, "nesterov": True}, "nesterov", "dampening=0.1"),
    (SGD, {"lr": "fast"}, "lr", "fast"),
    (SGD, {"lr": 0.1, "nesterov": 1}, "nesterov", "1"),
    (Adagrad, {"lr": -1}, "lr", "-1"),
    (Adagrad, {"lr_decay": -0.1}, "lr_decay", "-0.1"),
    (Adagrad, {"weight_decay": -0.1}, "weight_decay", "-0.1"),
    (Adagrad, {"initial_accumulator_value": -0.1}, "initial_accumulator_value", "-0.1"),
    (Adagrad, {"eps": -1e-10}, "eps", "-1e-10"),
    (RMSprop, {"lr": -1e-2}, "lr", "-0.01"),
    (RMSprop, {"alpha": -0.5}, "alpha", "-0.5"),
    (RMSprop, {"eps": -1e-8}, "eps", "-1e-08"),
    (RMSprop, {"weight_decay": -1.0}, "weight_decay", "-1.0"),
    (RMSprop, {"momentum": -0.9}, "momentum", "-0.9"),
    (Adam, {"lr": -1e-3}, "lr", "-0.001"),
    (Adam, {"eps": -1e-8}, "eps", "-1e-08"),
    (Adam, {"betas": (1.0, 0.999)}, "betas", "1.0"),
    (Adam, {"betas": (0.9, -0.1)}, "betas", "-0.1"),
    (Adam, {"betas": (0.9,)}, "betas", "0.9"),
    (Adam, {"weight_decay": -0.1}, "weight_decay", "-0.1"),
    (Adam, {"amsgrad": "no"}, "amsgrad", "no"),
    (AdamW, {"weight_decay": -0.01}, "weight_decay", "-0.01"),
    (AdamW, {"betas": (0.9, 1.5)}, "betas", "1.5"),
]


@pytest.mark.parametrize(("cls", "kwargs", "keyword", "value"), BAD_HYPERPARAMETERS)
def test_bad_hyperparameters_raise(cls, kwargs, keyword, value):
    with pytest.raises(ValueError) as info:
        cls(**kwargs)
    assert keyword in str(info.value) and value in str(info.value)


def test_hyperparameters_are_writable_and_checked(rng):
    """A learning-rate schedule: lr changed between steps is used by the next step; bad values raise at once."""
    a, b, w0 = quadratic(rng, 8)
    opt = SGD(lr=0.1, momentum=0.9)
    w, expected, state = w0.copy(), w0.copy(), {}
    for lr in (0.1, 0.05, 0.2, 0.0):
        opt.lr = lr
        assert opt.lr == lr
        g = a @ w - b
        opt.step(w, g)
        expected = sgd_step_reference(expected, g, state, lr=lr, momentum=0.9)
    assert relative_error(w, expected) < 1e-14
    with pytest.raises(ValueError, match="lr"):
        opt.lr = -1.0
    assert opt.lr == 0.0
    with pytest.raises(ValueError, match="betas"):
        Adam().betas = (0.5, 1.0)
    # A combination that becomes invalid only jointly is caught at the next step.
    opt.nesterov = True
    opt.dampening = 0.5
    with pytest.raises(ValueError, match="nesterov"):
        opt.step(w, a @ w - b)


def test_defaults_are_torchs():
    assert SGD(lr=0.1).hyperparameters() == {
        "lr": 0.1, "momentum": 0.0, "dampening": 0.0, "weight_decay": 0.0, "nesterov": False,
    }
    assert Adagrad().hyperparameters() == {
        "lr": 1e-2, "lr_decay": 0.0, "weight_decay": 0.0, "initial_accumulator_value": 0.0, "eps": 1e-10,
    }
    assert RMSprop().hyperparameters() == {
        "lr": 1e-2, "alpha": 0.99, "eps": 1e-8, "weight_decay": 0.0, "momentum": 0.0, "centered": False,
    }
    assert Adam().hyperparameters() == {
        "lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0, "amsgrad": False,
    }
    assert AdamW().hyperparameters() == {
        "lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 1e-2, "amsgrad": False,
    }
    with pytest.raises(TypeError):
        SGD()  # lr is required


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_bad_inputs_raise(rng, name):
    opt = make_optimizer(name, lr=0.1)
    w = rng.normal(size=6)
    g = rng.normal(size=6)
    for method in (opt.step, opt.peek):
        with pytest.raises(ValueError, match="grads.*shape"):
            method(w, g[:5])
        with pytest.raises(ValueError, match="grads.*dtype"):
            method(w, g.astype(np.float32))
        with pytest.raises(ValueError, match="params.*ndim"):
            method(w.reshape(2, 3), g.reshape(2, 3))
        with pytest.raises(ValueError, match="params.*dtype"):
            method(np.arange(6), g)
        with pytest.raises(ValueError, match="params.*contiguous"):
            method(np.repeat(w, 2)[::2], g)
        with pytest.raises(ValueError, match="params.*ndarray"):
            method(list(w), g)
    read_only = w.copy()
    read_only.flags.writeable = False
    with pytest.raises(ValueError, match="params.*writeable"):
        opt.step(read_only, g)
    # Peeking only reads params, so read-only params (and grads) are fine there.
    read_only_g = g.copy()
    read_only_g.flags.writeable = False
    assert opt.peek(read_only, read_only_g).tobytes() == opt.peek(w, g).tobytes()
    assert opt.step_count == 0
    opt.step(w, g)
    for method in (opt.step, opt.peek):
        with pytest.raises(ValueError, match="params.*size 6"):
            method(rng.normal(size=7), rng.normal(size=7))
        with pytest.raises(ValueError, match="params.*float64"):
            method(w.astype(np.float32), g.astype(np.float32))
    assert opt.step_count == 1
    # Non-contiguous grads are fine (copied); the update is the same as with contiguous ones.
    expected = opt.peek(w, g)
    np.testing.assert_array_equal(opt.peek(w, np.repeat(g, 2)[::2]), expected)


@pytest.mark.parametrize(("name", "kwargs"), [(n, FULL_CONFIGS[n]) for n in sorted(OPTIMIZERS)])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_non_finite_gradients_propagate(rng, name, kwargs, dtype):
    """NaN/Inf gradients are not errors: they reach the parameters they touch and no others."""
    opt = make_optimizer(name, **kwargs)
    w = rng.normal(size=8).astype(dtype)
    g = rng.normal(size=8).astype(dtype)
    opt.step(w, g)
    g[2] = np.nan
    g[5] = np.inf
    opt.step(w, g)
    assert np.isnan(w[2]) and not np.isfinite(w[5])
    assert np.all(np.isfinite(np.delete(w, [2, 5])))


def test_make_optimizer():
    opt = make_optimizer("adamw", lr=0.5, amsgrad=True)
    assert type(opt) is AdamW and opt.lr == 0.5 and opt.amsgrad and opt.weight_decay == 1e-2
    assert isinstance(opt, Optimizer)
    assert set(OPTIMIZERS) == {"sgd", "adagrad", "rmsprop", "adam", "adamw"}
    with pytest.raises(ValueError, match="'lion'.*adam"):
        make_optimizer("lion", lr=0.1)
    with pytest.raises(TypeError):
        make_optimizer("adam", momentum=0.9)
    assert "lr=0.5" in repr(opt) and repr(opt).startswith("AdamW(")


TORCH_CLASSES = {"sgd": "SGD", "adagrad": "Adagrad", "rmsprop": "RMSprop", "adam": "Adam", "adamw": "AdamW"}


@pytest.mark.torch
@pytest.mark.parametrize(("name", "kwargs"), CONFIGS, ids=CONFIG_IDS)
def test_matches_torch(rng, name, kwargs):
    torch = pytest.importorskip("torch")
    a, b, w0 = quadratic(rng, 24)
    grad = lambda w: a @ w - b
    ours = run_trajectory(make_optimizer(name, **kwargs), w0, grad, 20, np.float64)

    param = torch.tensor(w0, dtype=torch.float64, requires_grad=True)
    opt = getattr(torch.optim, TORCH_CLASSES[name])([param], foreach=False, **kwargs)
    theirs = []
    for _ in range(20):
        param.grad = torch.from_numpy(grad(param.detach().numpy().copy()))
        opt.step()
        theirs.append(param.detach().numpy().copy())
    for t in range(20):
        assert relative_error(ours[t], theirs[t]) < 1e-12, f"step {t + 1}"
