import numba
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smoothnorm.kernels.conv import _im2col, conv2d
from smoothnorm.kernels.conv.conv2d import conv2d_backward, conv2d_forward
from tests.reference import central_difference, conv2d_forward_ref, relative_error

# (n, c_in, c_out, h, w, kh, kw, stride, padding, bias)
FORWARD_CASES = [
    (1, 3, 4, 6, 6, 3, 3, 1, 1, True),
    (3, 2, 5, 7, 5, 3, 3, 1, 1, False),
    (3, 4, 3, 5, 6, 1, 1, 1, 0, True),
    (2, 3, 2, 9, 8, 5, 5, 1, 2, True),
    (2, 2, 3, 9, 7, 3, 3, 2, 1, True),
    (1, 3, 2, 8, 9, 5, 5, 2, 0, False),
    (3, 2, 2, 6, 7, 1, 1, 2, 2, True),
    (2, 3, 4, 7, 7, 3, 3, 2, 0, True),
    (1, 2, 3, 5, 5, 5, 5, 1, 2, False),
    (2, 2, 3, 6, 9, 3, 5, 1, 1, True),  # non-square kernel
    (1, 1, 1, 1, 1, 3, 3, 1, 1, True),  # one pixel: everything but the centre tap is padding
    (2, 3, 2, 4, 4, 3, 3, 3, 2, True),  # stride larger than the kernel's reach
]


def _case_arrays(rng, case, dtype=np.float64):
    n, c_in, c_out, h, w, kh, kw, stride, padding, has_bias = case
    x = rng.standard_normal((n, c_in, h, w)).astype(dtype)
    weight = rng.standard_normal((c_out, c_in, kh, kw)).astype(dtype)
    bias = rng.standard_normal(c_out).astype(dtype) if has_bias else None
    return x, weight, bias, stride, padding


def _backward(dy, x, weight, stride, padding, with_bias=True, need_dx=True):
    dweight = np.full(weight.shape, np.nan, dtype=weight.dtype)
    dbias = np.full(weight.shape[0], np.nan, dtype=weight.dtype) if with_bias else None
    dx = conv2d_backward(dy, x, weight, dweight, dbias, stride, padding, need_dx=need_dx)
    return dx, dweight, dbias


@pytest.mark.parametrize("case", FORWARD_CASES)
def test_forward_matches_reference(rng, case):
    x, weight, bias, stride, padding = _case_arrays(rng, case)
    y = conv2d_forward(x, weight, bias, stride, padding)
    expected = conv2d_forward_ref(x, weight, bias, stride, padding)
    assert y.shape == expected.shape and y.dtype == np.float64
    np.testing.assert_allclose(y, expected, rtol=1e-12, atol=1e-12)


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 3),
    c_in=st.integers(1, 3),
    c_out=st.integers(1, 3),
    h=st.integers(1, 8),
    w=st.integers(1, 8),
    kh=st.integers(1, 4),
    kw=st.integers(1, 4),
    stride=st.integers(1, 3),
    padding=st.integers(0, 2),
    seed=st.integers(0, 2**32 - 1),
)
def test_any_geometry_matches_reference_and_adjoint(n, c_in, c_out, h, w, kh, kw, stride, padding, seed):
    if h + 2 * padding < kh or w + 2 * padding < kw:
        with pytest.raises(ValueError, match="^x:"):
            conv2d_forward(np.zeros((n, c_in, h, w)), np.zeros((c_out, c_in, kh, kw)), None, stride, padding)
        return
    rng = np.random.default_rng(seed)
    x, weight, bias, _, _ = _case_arrays(rng, (n, c_in, c_out, h, w, kh, kw, stride, padding, True))
    y = conv2d_forward(x, weight, bias, stride, padding)
    np.testing.assert_allclose(y, conv2d_forward_ref(x, weight, bias, stride, padding), rtol=1e-12, atol=1e-12)
    # The bias-free conv is bilinear, so with f = <conv(x, W), dy>: <dx, x> = <dW, W> = f and sum(db) = sum(dy).
    # This checks the backward on every geometry, including input pixels no window reaches (their dx must be 0).
    dy = rng.standard_normal(y.shape)
    dx, dweight, dbias = _backward(dy, x, weight, stride, padding)
    f = float(np.sum(conv2d_forward(x, weight, None, stride, padding) * dy))
    scale = float(np.sum(conv2d_forward(np.abs(x), np.abs(weight), None, stride, padding) * np.abs(dy)))
    assert abs(float(np.sum(dx * x)) - f) <= 1e-12 * scale
    assert abs(float(np.sum(dweight * weight)) - f) <= 1e-12 * scale
    np.testing.assert_allclose(dbias, dy.sum(axis=(0, 2, 3)), rtol=1e-12, atol=1e-12)


BACKWARD_CASES = [
    (2, 2, 3, 5, 4, 3, 3, 1, 1, True),
    (1, 3, 2, 6, 5, 3, 3, 2, 1, True),
    (2, 2, 2, 5, 5, 1, 1, 2, 0, True),
    (1, 2, 2, 6, 6, 5, 5, 1, 2, False),
    (2, 1, 2, 7, 6, 3, 2, 2, 0, True),
    (1, 2, 2, 6, 6, 3, 3, 2, 0, True),  # the last input row and column are in no window
]


@pytest.mark.parametrize("case", BACKWARD_CASES)
def test_backward_matches_finite_differences(rng, case):
    x, weight, bias, stride, padding = _case_arrays(rng, case)
    if bias is None:
        bias = np.zeros(weight.shape[0])
    y = conv2d_forward(x, weight, bias, stride, padding)
    probe = rng.standard_normal(y.shape)  # loss = sum(y * probe), so dy = probe

    def loss(x_, w_, b_):
        return float(np.sum(conv2d_forward(x_, w_, b_, stride, padding) * probe))

    dx, dweight, dbias = _backward(probe, x, weight, stride, padding)
    assert relative_error(dx, central_difference(lambda v: loss(v, weight, bias), x)) < 1e-6
    assert relative_error(dweight, central_difference(lambda v: loss(x, v, bias), weight)) < 1e-6
    assert relative_error(dbias, central_difference(lambda v: loss(x, weight, v), bias)) < 1e-6


@pytest.mark.parametrize("case", [FORWARD_CASES[0], FORWARD_CASES[4], FORWARD_CASES[3]])
def test_float32_agrees_with_float64(rng, case):
    x, weight, bias, stride, padding = _case_arrays(rng, case)
    y64 = conv2d_forward(x, weight, bias, stride, padding)
    dy = rng.standard_normal(y64.shape)
    dx64, dw64, db64 = _backward(dy, x, weight, stride, padding)
    f32 = [a.astype(np.float32) for a in (x, weight, bias, dy)]
    y32 = conv2d_forward(f32[0], f32[1], f32[2], stride, padding)
    dx32, dw32, db32 = _backward(f32[3], f32[0], f32[1], stride, padding)
    for a32, a64 in [(y32, y64), (dx32, dx64), (dw32, dw64), (db32, db64)]:
        assert a32.dtype == np.float32
        assert relative_error(a32, a64) < 1e-5


def test_need_dx_false_returns_none_and_writes_dweight(rng):
    x, weight, bias, stride, padding = _case_arrays(rng, FORWARD_CASES[0])
    dy = rng.standard_normal(conv2d_forward(x, weight, bias, stride, padding).shape)
    dx, dweight, dbias = _backward(dy, x, weight, stride, padding)
    none, dweight_only, dbias_only = _backward(dy, x, weight, stride, padding, need_dx=False)
    assert dx is not None and none is None
    np.testing.assert_array_equal(dweight_only, dweight)
    np.testing.assert_array_equal(dbias_only, dbias)


def test_backward_overwrites_gradient_views_in_place(rng):
    # As in a network: dweight and dbias are views into one flat gradient vector, prefilled with garbage.
    x, weight, bias, stride, padding = _case_arrays(rng, FORWARD_CASES[4])
    dy = rng.standard_normal(conv2d_forward(x, weight, bias, stride, padding).shape)
    _, dweight_ref, dbias_ref = _backward(dy, x, weight, stride, padding)
    flat = np.full(weight.size + bias.size + 3, 7.0)
    dweight = flat[1 : 1 + weight.size].reshape(weight.shape)
    dbias = flat[1 + weight.size : 1 + weight.size + bias.size]
    for _ in range(2):  # a second call must not accumulate
        conv2d_backward(dy, x, weight, dweight, dbias, stride, padding)
        np.testing.assert_array_equal(dweight, dweight_ref)
        np.testing.assert_array_equal(dbias, dbias_ref)
    assert flat[0] == 7.0 and np.all(flat[-2:] == 7.0)


@pytest.mark.parametrize("parallel", [False, True])
def test_backward_writes_non_contiguous_dweight(rng, monkeypatch, parallel):
    x, weight, bias, stride, padding = _case_arrays(rng, FORWARD_CASES[0])
    dy = rng.standard_normal(conv2d_forward(x, weight, bias, stride, padding).shape)
    _, dweight_ref, _ = _backward(dy, x, weight, stride, padding)
    if parallel:  # two workers' partials are merged into a temporary, then copied
        monkeypatch.setattr(_im2col, "_PARALLEL_MIN_MACS", 0)
    holder = np.full((weight.shape[0], 2) + weight.shape[1:], np.nan)
    dweight = holder[:, 0]
    conv2d_backward(dy, x, weight, dweight, None, stride, padding)
    assert relative_error(dweight, dweight_ref) < 1e-12
    assert np.isnan(holder[:, 1]).all()


def _force_plan(monkeypatch, plan):
    """Steer conv's work split (tiny shapes otherwise run as one serial worker with one sub-chunk)."""
    if plan == "serial":
        monkeypatch.setattr(conv2d._single_threaded_blas, "available", lambda: False)
        return
    monkeypatch.setattr(_im2col, "_PARALLEL_MIN_MACS", 0)
    if plan == "per_sample":
        monkeypatch.setattr(_im2col, "_DIRECT_PIXELS", 1)
    elif plan == "two_per_chunk":
        monkeypatch.setattr(_im2col, "_DIRECT_PIXELS", 10**9)
        monkeypatch.setattr(_im2col, "_TARGET_COLUMNS", 2 * 30)


@pytest.mark.parametrize("plan", ["parallel", "per_sample", "two_per_chunk", "serial"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_every_work_split_gives_the_same_result(rng, monkeypatch, plan, dtype):
    # Workers get 2 and 3 of the 5 samples, so two per chunk leaves a partial last chunk. BLAS may block a GEMM
    # differently for a different column count, so equal up to rounding, not to the bit.
    x, weight, bias, stride, padding = _case_arrays(rng, (5, 3, 4, 6, 5, 3, 3, 1, 1, True), dtype)
    y = conv2d_forward(x, weight, bias, stride, padding)
    dy = rng.standard_normal(y.shape).astype(dtype)
    expected = _backward(dy, x, weight, stride, padding)
    _force_plan(monkeypatch, plan)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    got_y = conv2d_forward(x, weight, bias, stride, padding)
    assert relative_error(got_y, conv2d_forward_ref(x, weight, bias, stride, padding)) < tol
    for got, want in zip(_backward(dy, x, weight, stride, padding), expected):
        assert relative_error(got, want) < tol
    none, dweight, _ = _backward(dy, x, weight, stride, padding, need_dx=False)
    assert none is None and relative_error(dweight, expected[1]) < tol


def test_large_images_match_reference_and_finite_differences(rng, monkeypatch):
    # 16x16 outputs take the one-sample-per-GEMM path (y[n] and dy[n] are the GEMM matrices, bias enters as C).
    monkeypatch.setattr(_im2col, "_PARALLEL_MIN_MACS", 0)
    x, weight, bias, stride, padding = _case_arrays(rng, (3, 2, 3, 16, 16, 3, 3, 1, 1, True))
    assert 16 * 16 >= _im2col._DIRECT_PIXELS
    y = conv2d_forward(x, weight, bias, stride, padding)
    np.testing.assert_allclose(y, conv2d_forward_ref(x, weight, bias, stride, padding), rtol=1e-12, atol=1e-12)
    probe = rng.standard_normal(y.shape)

    def loss(x_, w_, b_):
        return float(np.sum(conv2d_forward(x_, w_, b_, stride, padding) * probe))

    dx, dweight, dbias = _backward(probe, x, weight, stride, padding)
    assert relative_error(dweight, central_difference(lambda v: loss(x, v, bias), weight)) < 1e-6
    assert relative_error(dbias, central_difference(lambda v: loss(x, weight, v), bias)) < 1e-6
    # dx is linear in dy: check it through random directions instead of 1536 coordinates.
    for _ in range(3):
        direction = rng.standard_normal(x.shape)
        eps = 1e-6
        numeric = (loss(x + eps * direction, weight, bias) - loss(x - eps * direction, weight, bias)) / (2 * eps)
        assert abs(np.sum(dx * direction) - numeric) < 1e-6 * max(1.0, abs(numeric))


def test_one_thread_matches_two(rng, monkeypatch):
    monkeypatch.setattr(_im2col, "_PARALLEL_MIN_MACS", 0)
    x, weight, bias, stride, padding = _case_arrays(rng, (4, 3, 5, 9, 9, 3, 3, 1, 1, True))
    y = conv2d_forward(x, weight, bias, stride, padding)
    dy = rng.standard_normal(y.shape)
    expected = _backward(dy, x, weight, stride, padding)
    previous = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        y1 = conv2d_forward(x, weight, bias, stride, padding)
        got = _backward(dy, x, weight, stride, padding)
    finally:
        numba.set_num_threads(previous)
    assert relative_error(y1, y) < 1e-12
    for a, b in zip(got, expected):
        assert relative_error(a, b) < 1e-12


def test_blas_thread_counts_are_restored(rng, monkeypatch):
    monkeypatch.setattr(_im2col, "_PARALLEL_MIN_MACS", 0)
    threadpoolctl = pytest.importorskip("threadpoolctl")
    before = [(info["filepath"], info["num_threads"]) for info in threadpoolctl.threadpool_info()]
    x, weight, bias, stride, padding = _case_arrays(rng, FORWARD_CASES[0], np.float32)
    y = conv2d_forward(x, weight, bias, stride, padding)
    _backward(y, x, weight, stride, padding)
    after = [(info["filepath"], info["num_threads"]) for info in threadpoolctl.threadpool_info()]
    assert [a for a in after if a[0] in dict(before)] == before


def test_repeated_calls_are_bit_identical(rng):
    x, weight, bias, stride, padding = _case_arrays(rng, (4, 8, 16, 12, 12, 3, 3, 1, 1, True), np.float32)
    y = conv2d_forward(x, weight, bias, stride, padding)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    first = _backward(dy, x, weight, stride, padding)
    np.testing.assert_array_equal(conv2d_forward(x, weight, bias, stride, padding), y)
    for a, b in zip(_backward(dy, x, weight, stride, padding), first):
        np.testing.assert_array_equal(a, b)


def test_non_contiguous_inputs_are_copied(rng):
    x, weight, bias, stride, padding = _case_arrays(rng, FORWARD_CASES[1])
    x_view = np.swapaxes(np.swapaxes(x, 2, 3).copy(), 2, 3)  # same values, transposed strides
    weight_view = np.asfortranarray(weight)
    assert not x_view.flags.c_contiguous and not weight_view.flags.c_contiguous
    y = conv2d_forward(x, weight, bias, stride, padding)
    np.testing.assert_array_equal(conv2d_forward(x_view, weight_view, bias, stride, padding), y)
    dy = rng.standard_normal(y.shape)
    expected = _backward(dy, x, weight, stride, padding, with_bias=False)
    got = _backward(np.asfortranarray(dy), x_view, weight_view, stride, padding, with_bias=False)
    np.testing.assert_array_equal(got[0], expected[0])
    np.testing.assert_array_equal(got[1], expected[1])


def test_pair_stride_and_padding_match_int(rng):
    x, weight, bias, _, _ = _case_arrays(rng, FORWARD_CASES[4])
    np.testing.assert_array_equal(
        conv2d_forward(x, weight, bias, (2, 2), (1, 1)), conv2d_forward(x, weight, bias, 2, 1)
    )
    # Different strides per axis: rows of the (2, 1) result are the even rows of the stride-1 result.
    np.testing.assert_allclose(
        conv2d_forward(x, weight, bias, (2, 1), 1), conv2d_forward(x, weight, bias, 1, 1)[:, :, ::2], rtol=1e-12
    )


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # inf * 0 in the GEMMs
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_and_inf_propagate(rng, bad):
    x, weight, bias, stride, padding = _case_arrays(rng, (2, 2, 3, 7, 7, 3, 3, 1, 1, True))
    x[1, 0, 3, 4] = bad
    y = conv2d_forward(x, weight, bias, stride, padding)
    touched = np.zeros(y.shape, dtype=bool)
    touched[1, :, 2:5, 3:6] = True  # outputs whose 3x3 window covers (3, 4)
    assert not np.isfinite(y[touched]).any()
    assert np.isfinite(y[~touched]).all()
    dy = rng.standard_normal(y.shape)
    dy[0, 1, 0, 0] = bad
    dx, dweight, dbias = _backward(dy, x, weight, stride, padding)
    assert not np.isfinite(dx[0, :, :2, :2]).any()
    assert not np.isfinite(dweight[1]).any() and not np.isfinite(dbias[1])


def test_empty_batch(rng):
    weight = rng.standard_normal((4, 3, 3, 3))
    x = np.zeros((0, 3, 5, 5))
    y = conv2d_forward(x, weight, np.zeros(4))
    assert y.shape == (0, 4, 5, 5)
    dx, dweight, dbias = _backward(y, x, weight, 1, 1)
    assert dx.shape == x.shape
    assert np.all(dweight == 0) and np.all(dbias == 0)


def _good():
    x = np.zeros((2, 3, 6, 6), dtype=np.float32)
    weight = np.zeros((4, 3, 3, 3), dtype=np.float32)
    return dict(
        x=x,
        weight=weight,
        bias=np.zeros(4, np.float32),
        dy=np.zeros((2, 4, 6, 6), np.float32),
        dweight=np.zeros_like(weight),
        dbias=np.zeros(4, np.float32),
        stride=1,
        padding=1,
    )


BAD_FORWARD = [
    ("x", dict(x=np.zeros((3, 6, 6), np.float32))),
    ("x", dict(x=np.zeros((2, 3, 6, 6), np.int64))),
    ("x", dict(x=np.zeros((2, 3, 1, 6), np.float32), padding=0)),
    ("weight", dict(weight=np.zeros((4, 2, 3, 3), np.float32))),
    ("weight", dict(weight=np.zeros((4, 3, 3, 3), np.float64))),
    ("weight", dict(weight=np.zeros((4, 3, 3), np.float32))),
    ("bias", dict(bias=np.zeros(5, np.float32))),
    ("bias", dict(bias=np.zeros(4, np.float64))),
    ("stride", dict(stride=0)),
    ("stride", dict(stride=1.5)),
    ("padding", dict(padding=-1)),
    ("padding", dict(padding=(1, 1, 1))),
]


@pytest.mark.parametrize(("name", "change"), BAD_FORWARD)
def test_forward_rejects_bad_input(name, change):
    a = {**_good(), **change}
    with pytest.raises(ValueError, match=f"^{name}:"):
        conv2d_forward(a["x"], a["weight"], a["bias"], a["stride"], a["padding"])


BAD_BACKWARD = (
    BAD_FORWARD[:6]
    + BAD_FORWARD[8:]
    + [
        ("dy", dict(dy=np.zeros((2, 4, 5, 6), np.float32))),
        ("dy", dict(dy=np.zeros((2, 4, 6, 6), np.float64))),
        ("dweight", dict(dweight=np.zeros((4, 3, 3, 2), np.float32))),
        ("dweight", dict(dweight=np.zeros((4, 3, 3, 3), np.float64))),
        ("dweight", dict(dweight=[[0.0]])),
        ("dbias", dict(dbias=np.zeros(3, np.float32))),
    ]
)


@pytest.mark.parametrize(("name", "change"), BAD_BACKWARD)
def test_backward_rejects_bad_input(name, change):
    a = {**_good(), **change}
    with pytest.raises(ValueError, match=f"^{name}:"):
        conv2d_backward(a["dy"], a["x"], a["weight"], a["dweight"], a["dbias"], a["stride"], a["padding"])


def test_backward_rejects_read_only_dweight():
    a = _good()
    a["dweight"].flags.writeable = False
    with pytest.raises(ValueError, match="^dweight:.*read-only"):
        conv2d_backward(a["dy"], a["x"], a["weight"], a["dweight"], a["dbias"], 1, 1)


@pytest.mark.torch
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    "case", [FORWARD_CASES[0], FORWARD_CASES[4], FORWARD_CASES[5], (4, 16, 8, 10, 10, 3, 3, 1, 1, True)]
)
def test_matches_torch(rng, dtype, case):
    torch = pytest.importorskip("torch")
    x, weight, bias, stride, padding = _case_arrays(rng, case, dtype)
    y = conv2d_forward(x, weight, bias, stride, padding)
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx, dweight, dbias = _backward(dy, x, weight, stride, padding, with_bias=bias is not None)
    tx = torch.from_numpy(x).requires_grad_()
    tw = torch.from_numpy(weight).requires_grad_()
    tb = torch.from_numpy(bias).requires_grad_() if bias is not None else None
    ty = torch.nn.functional.conv2d(tx, tw, tb, stride=stride, padding=padding)
    ty.backward(torch.from_numpy(dy))
    tol = 1e-5 if dtype == np.float32 else 1e-12
    assert relative_error(y, ty.detach().numpy()) < tol
    assert relative_error(dx, tx.grad.numpy()) < tol
    assert relative_error(dweight, tw.grad.numpy()) < tol
    if bias is not None:
        assert relative_error(dbias, tb.grad.numpy()) < tol


# algorithm=: the Winograd kernels behind the public functions (their accuracy is tested in test_winograd.py).


@pytest.mark.parametrize("algorithm", ["winograd", "auto"])
@pytest.mark.parametrize("need_dx", [True, False])
def test_algorithms_agree_with_im2col(rng, algorithm, need_dx, monkeypatch):
    x, weight, bias, _, _ = _case_arrays(rng, (2, 3, 4, 7, 6, 3, 3, 1, 1, True))
    dy = rng.standard_normal((2, 4, 7, 6))
    calls = []
    monkeypatch.setattr(conv2d, "winograd_pays", lambda *args: calls.append(args) or True)
    y = conv2d_forward(x, weight, bias, 1, 1, algorithm=algorithm)
    dweight = np.full(weight.shape, np.nan)
    dbias = np.full(4, np.nan)
    dx = conv2d_backward(dy, x, weight, dweight, dbias, 1, 1, need_dx=need_dx, algorithm=algorithm)
    expected = _backward(dy, x, weight, 1, 1, need_dx=need_dx)
    np.testing.assert_allclose(y, conv2d_forward(x, weight, bias, 1, 1), rtol=1e-12, atol=1e-12)
    for got, want in zip((dx, dweight, dbias), expected):
        if want is None:
            assert got is None
        else:
            np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    # auto asks the rule once per pass, with (pass, C_in, C_out, H, W, N).
    assert calls == ([] if algorithm == "winograd" else [("forward", 3, 4, 7, 6, 2), ("input", 3, 4, 7, 6, 2),
                                                         ("weight", 3, 4, 7, 6, 2)])  # fmt: skip


def test_auto_uses_im2col_where_winograd_cannot_run(rng, monkeypatch):
    monkeypatch.setattr(conv2d, "winograd_forward", None)  # would raise TypeError if called
    x, weight, bias, stride, padding = _case_arrays(rng, (2, 3, 2, 9, 7, 3, 3, 2, 1, True))
    y = conv2d_forward(x, weight, bias, stride, padding, algorithm="auto")
    np.testing.assert_allclose(y, conv2d_forward_ref(x, weight, bias, stride, padding), rtol=1e-12, atol=1e-12)


def test_auto_rule_keeps_im2col_for_few_input_channels():
    assert not conv2d.winograd_pays("forward", 3, 64, 32, 32, 128)
    assert conv2d.winograd_pays("forward", 256, 256, 8, 8, 128)
    assert conv2d.winograd_pays("weight", 512, 512, 4, 4, 128)
    # F(2x2) on 2x2 maps: faster than im2col in every pass at batch 128 once nothing page-faults.
    assert all(conv2d.winograd_pays(p, 512, 512, 2, 2, 128) for p in ("forward", "input", "weight"))
    assert not any(conv2d.winograd_pays(p, 512, 512, 1, 1, 128) for p in ("forward", "input", "weight"))
    assert not conv2d.winograd_pays("input", 512, 8, 8, 8, 128)
    with pytest.raises(ValueError, match="^pass_name:"):
        conv2d.winograd_pays("backward", 256, 256, 8, 8, 128)


@pytest.mark.parametrize("pass_name", ["forward", "input", "weight"])
def test_auto_rule_counts_output_tiles(pass_name):
    """Few output tiles (small batches and maps) keep im2col: 32 tiles are enough from 32 channels, 64 below."""
    pays = conv2d.winograd_pays
    # 2x2 maps: one F(2x2) tile per image; 4x4 maps: one F(4x4) tile; 8x8: four.
    assert [pays(pass_name, 64, 64, 2, 2, n) for n in (1, 16, 31, 32, 64)] == [False, False, False, True, True]
    assert [pays(pass_name, 128, 64, 4, 4, n) for n in (1, 31, 32)] == [False, False, True]
    assert [pays(pass_name, 64, 64, 8, 8, n) for n in (1, 7, 8)] == [False, False, True]
    # 16-31 channels need 64 tiles: 16x16 maps have 16 per image, a 32x32 map 64.
    assert [pays(pass_name, 16, 32, 16, 16, n) for n in (1, 3, 4)] == [False, False, True]
    assert pays(pass_name, 16, 16, 32, 32, 1)
    # Odd sizes round the tiles up: a 6x5 map has 2 x 2 F(4x4) tiles.
    assert [pays(pass_name, 32, 32, 6, 5, n) for n in (7, 8)] == [False, True]


@pytest.mark.parametrize("geometry", [(3, 3, 2, 1), (5, 5, 1, 2), (3, 3, 1, 0)])
def test_bad_algorithm_raises_naming_it(geometry):
    kh, kw, stride, padding = geometry
    x = np.zeros((1, 2, 6, 6))
    weight = np.zeros((2, 2, kh, kw))
    with pytest.raises(ValueError, match="^algorithm:.*winograd"):
        conv2d_forward(x, weight, None, stride, padding, algorithm="winograd")
    with pytest.raises(ValueError, match="^algorithm:.*winograd"):
        conv2d_backward(np.zeros((1, 2, 6, 6)), np.zeros((1, 2, 6, 6)), np.zeros((2, 2, 3, 3)),
                        np.zeros((2, 2, 3, 3)), algorithm="fft")  # fmt: skip


@pytest.mark.parametrize("algorithm", ["im2col", "winograd"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_out_buffers_give_the_same_bits_and_are_checked(rng, algorithm, dtype):
    x, weight, bias, stride, padding = _case_arrays(rng, (3, 8, 16, 8, 8, 3, 3, 1, 1, True), dtype)
    y_ref = conv2d_forward(x, weight, bias, stride, padding, algorithm=algorithm)
    y_out = np.full_like(y_ref, np.nan)
    assert conv2d_forward(x, weight, bias, stride, padding, algorithm=algorithm, out=y_out) is y_out
    np.testing.assert_array_equal(y_out, y_ref)
    dy = rng.standard_normal(y_ref.shape).astype(dtype)
    dw_ref, dw = np.empty_like(weight), np.empty_like(weight)
    dx_ref = conv2d_backward(dy, x, weight, dw_ref, None, stride, padding, algorithm=algorithm)
    dx_out = np.full_like(x, np.nan)
    assert conv2d_backward(dy, x, weight, dw, None, stride, padding, algorithm=algorithm, out=dx_out) is dx_out
    np.testing.assert_array_equal(dx_out, dx_ref)
    np.testing.assert_array_equal(dw, dw_ref)
    with pytest.raises(ValueError, match=r"out: expected shape \(3, 16, 8, 8\) and dtype"):
        conv2d_forward(x, weight, bias, algorithm=algorithm, out=np.empty((3, 16, 8, 7), dtype))
    with pytest.raises(ValueError, match=r"out: expected shape .* and dtype float(32|64), got .* float16"):
        conv2d_forward(x, weight, bias, algorithm=algorithm, out=y_out.astype(np.float16))
    with pytest.raises(ValueError, match="out: shares memory with an input"):
        conv2d_backward(dy, x, weight, dw, None, algorithm=algorithm, out=x)
    with pytest.raises(ValueError, match="out: expected a writeable C-contiguous"):
        conv2d_backward(dy, x, weight, dw, None, algorithm=algorithm,
                        out=np.empty((3, 8, 8, 8), dtype).transpose(0, 1, 3, 2))


@pytest.mark.parametrize("algorithm", ["im2col", "winograd", "auto"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_backward_input_alone_gives_conv2d_backwards_dx_bits(rng, algorithm, dtype):
    x, weight, _, stride, padding = _case_arrays(rng, (3, 16, 24, 8, 8, 3, 3, 1, 1, False), dtype)
    dy = rng.standard_normal((3, 24, 8, 8)).astype(dtype)
    dx = conv2d_backward(dy, x, weight, np.empty_like(weight), None, stride, padding, algorithm=algorithm)
    np.testing.assert_array_equal(conv2d.conv2d_backward_input(dy, x, weight, stride, padding, algorithm), dx)
    with pytest.raises(ValueError, match=r"dy: expected shape \(3, 24, 8, 8\)"):
        conv2d.conv2d_backward_input(dy[:, :, :7], x, weight, stride, padding, algorithm)


def test_backward_input_alone_skips_the_winograd_weight_gradient(rng, monkeypatch):
    x, weight, _, stride, padding = _case_arrays(rng, (2, 16, 16, 4, 4, 3, 3, 1, 1, False))
    monkeypatch.setattr(conv2d, "winograd_backward_weight", None)  # would raise TypeError if called
    dx = conv2d.conv2d_backward_input(rng.standard_normal((2, 16, 4, 4)), x, weight, 1, 1, "winograd")
    assert dx.shape == x.shape
