import numpy as np
import pytest

from smoothnorm.kernels.loss import (
    softmax_cross_entropy_backward,
    softmax_cross_entropy_forward,
    squared_error_backward,
    squared_error_forward,
)
from tests.helpers import assert_same_at_thread_counts
from tests.reference import central_difference, relative_error, softmax_cross_entropy_ref, squared_error_ref

CE_SHAPES = [(1, 1), (1, 3), (8, 10), (33, 7)]
SE_SHAPES = [(), (5,), (4, 3), (2, 3, 4)]


def _logits_labels(rng, n, c, scale=3.0):
    return rng.standard_normal((n, c)) * scale, rng.integers(0, c, size=n)


# --- softmax cross-entropy ---


@pytest.mark.parametrize("shape", CE_SHAPES)
def test_cross_entropy_forward_matches_reference(rng, shape):
    logits, labels = _logits_labels(rng, *shape)
    loss, probs = softmax_cross_entropy_forward(logits, labels)
    ref_loss, ref_probs = softmax_cross_entropy_ref(logits, labels)
    assert isinstance(loss, float) and probs.dtype == np.float64 and probs.shape == shape
    assert loss == pytest.approx(ref_loss, rel=1e-13, abs=1e-14)
    np.testing.assert_allclose(probs, ref_probs, rtol=1e-13, atol=1e-16)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-14)


@pytest.mark.parametrize("shape", CE_SHAPES)
def test_cross_entropy_backward_matches_finite_differences(rng, shape):
    logits, labels = _logits_labels(rng, *shape)
    _, probs = softmax_cross_entropy_forward(logits, labels)
    dlogits = softmax_cross_entropy_backward(probs, labels)
    numeric = central_difference(lambda v: softmax_cross_entropy_ref(v, labels)[0], logits)
    assert dlogits.shape == shape
    if shape[1] == 1:  # one class: the loss is identically 0
        assert np.all(dlogits == 0) and np.all(np.abs(numeric) < 1e-9)
    else:
        assert relative_error(dlogits, numeric) < 1e-6


def test_cross_entropy_gradient_rows_sum_to_zero(rng):
    logits, labels = _logits_labels(rng, 16, 10)
    _, probs = softmax_cross_entropy_forward(logits, labels)
    dlogits = softmax_cross_entropy_backward(probs, labels)
    np.testing.assert_allclose(dlogits.sum(axis=1), 0.0, atol=1e-16)
    np.testing.assert_allclose(dlogits[np.arange(16), labels], (probs[np.arange(16), labels] - 1) / 16)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cross_entropy_is_stable_for_huge_logits(rng, dtype):
    offsets, labels = _logits_labels(rng, 6, 5)
    # Shift invariance: adding 1e4 to every logit of a row leaves loss and probabilities unchanged.
    loss, probs = softmax_cross_entropy_forward((offsets + 1e4).astype(dtype), labels)
    ref_loss, ref_probs = softmax_cross_entropy_ref(offsets, labels)
    tol = 1e-2 if dtype == np.float32 else 1e-8  # float32 rounds 1e4 + offset to ~1e-3
    assert np.isfinite(loss) and loss == pytest.approx(ref_loss, rel=tol, abs=tol)
    np.testing.assert_allclose(probs, ref_probs, rtol=tol, atol=tol)
    # Spread of 2e4 between logits: the loss is the gap itself, and nothing overflows.
    logits = np.array([[1e4, 0.0, -1e4], [1e4, 0.0, -1e4]], dtype=dtype)
    loss, probs = softmax_cross_entropy_forward(logits, np.array([0, 2]))
    assert loss == pytest.approx(1e4, rel=1e-12)  # (0 + 2e4) / 2
    np.testing.assert_array_equal(probs, [[1, 0, 0], [1, 0, 0]])
    dlogits = softmax_cross_entropy_backward(probs, np.array([0, 2]))
    np.testing.assert_array_equal(dlogits, [[0, 0, 0], [0.5, 0, -0.5]])


def test_cross_entropy_float32_matches_float64(rng):
    logits, labels = _logits_labels(rng, 12, 10)
    loss64, probs64 = softmax_cross_entropy_forward(logits, labels)
    loss32, probs32 = softmax_cross_entropy_forward(logits.astype(np.float32), labels)
    assert probs32.dtype == np.float32 and isinstance(loss32, float)
    assert loss32 == pytest.approx(loss64, rel=1e-6)
    np.testing.assert_allclose(probs32, probs64, rtol=1e-5, atol=1e-7)
    d32 = softmax_cross_entropy_backward(probs32, labels)
    assert d32.dtype == np.float32
    np.testing.assert_allclose(d32, softmax_cross_entropy_backward(probs64, labels), rtol=1e-5, atol=1e-7)


def test_cross_entropy_nan_and_inf_propagate():
    logits = np.array([[1.0, np.nan, 0.0], [np.nan, 1.0, 2.0], [1.0, 2.0, 3.0]])
    loss, probs = softmax_cross_entropy_forward(logits, np.array([0, 1, 2]))
    assert np.isnan(loss)
    assert np.all(np.isnan(probs[:2])) and np.all(np.isfinite(probs[2]))
    loss, _ = softmax_cross_entropy_forward(np.array([[np.inf, 0.0], [0.0, 1.0]]), np.array([0, 0]))
    assert np.isnan(loss)  # inf - inf, as torch
    loss, probs = softmax_cross_entropy_forward(np.array([[-np.inf, 0.0], [0.0, 1.0]]), np.array([0, 0]))
    assert loss == np.inf and np.all(np.isfinite(probs))
    loss, probs = softmax_cross_entropy_forward(np.array([[-np.inf, 0.0]]), np.array([1]))
    assert loss == 0.0 and np.array_equal(probs, [[0.0, 1.0]])


def test_cross_entropy_accepts_any_integer_labels_and_non_contiguous_logits(rng):
    logits, labels = _logits_labels(rng, 6, 4)
    ref = softmax_cross_entropy_ref(logits, labels)[0]
    for dtype in (np.int8, np.uint8, np.int32, np.uint64):
        assert softmax_cross_entropy_forward(logits, labels.astype(dtype))[0] == pytest.approx(ref, rel=1e-13)
    f_logits = np.asfortranarray(logits)
    assert softmax_cross_entropy_forward(f_logits, labels[::-1].copy()[::-1])[0] == pytest.approx(ref, rel=1e-13)


def test_cross_entropy_bad_inputs_raise(rng):
    logits, labels = _logits_labels(rng, 4, 3)
    with pytest.raises(ValueError, match=r"logits: expected ndim 2"):
        softmax_cross_entropy_forward(logits[0], labels)
    with pytest.raises(ValueError, match=r"logits: expected N >= 1 rows"):
        softmax_cross_entropy_forward(logits[:0], labels[:0])
    with pytest.raises(ValueError, match=r"logits: expected dtype float32 or float64, got int64"):
        softmax_cross_entropy_forward(logits.astype(np.int64), labels)
    with pytest.raises(ValueError, match=r"labels: expected an integer dtype, got float64"):
        softmax_cross_entropy_forward(logits, labels.astype(np.float64))
    with pytest.raises(ValueError, match=r"labels: expected an integer dtype, got bool"):
        softmax_cross_entropy_forward(logits, labels > 0)
    with pytest.raises(ValueError, match=r"labels: expected shape \(4,\).*got \(3,\)"):
        softmax_cross_entropy_forward(logits, labels[:3])
    with pytest.raises(ValueError, match=r"labels: expected values in \[0, 3\), got values in \[0, 3\]"):
        softmax_cross_entropy_forward(logits, np.array([0, 1, 2, 3]))
    with pytest.raises(ValueError, match=r"labels: expected values in \[0, 3\), got values in \[-1, 2\]"):
        softmax_cross_entropy_forward(logits, np.array([0, -1, 2, 2]))
    _, probs = softmax_cross_entropy_forward(logits, labels)
    with pytest.raises(ValueError, match=r"probs: expected ndim 2"):
        softmax_cross_entropy_backward(probs[0], labels)
    with pytest.raises(ValueError, match=r"labels: expected values in \[0, 3\)"):
        softmax_cross_entropy_backward(probs, np.array([0, 1, 2, 5]))


# --- squared error ---


@pytest.mark.parametrize("shape", SE_SHAPES + [(7, 9001)])  # the last spans several parallel blocks
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_squared_error_forward_matches_reference(rng, shape, reduction):
    pred, target = rng.standard_normal(shape), rng.standard_normal(shape)
    loss, diff = squared_error_forward(pred, target, reduction)
    assert isinstance(loss, float) and diff.shape == np.shape(pred) and diff.dtype == np.float64
    assert loss == pytest.approx(squared_error_ref(pred, target, reduction), rel=1e-12)
    np.testing.assert_array_equal(diff, pred - target)


@pytest.mark.parametrize("shape", SE_SHAPES)
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_squared_error_backward_matches_finite_differences(rng, shape, reduction):
    pred, target = rng.standard_normal(shape), rng.standard_normal(shape)
    _, diff = squared_error_forward(pred, target, reduction)
    dpred = squared_error_backward(diff, reduction)
    numeric = central_difference(lambda v: squared_error_ref(v, target, reduction), pred)
    assert dpred.shape == np.shape(pred)
    assert relative_error(dpred, numeric) < 1e-6


def test_squared_error_default_is_sum(rng):
    pred, target = rng.standard_normal((3, 4)), rng.standard_normal((3, 4))
    assert squared_error_forward(pred, target)[0] == pytest.approx(np.sum((pred - target) ** 2), rel=1e-13)
    np.testing.assert_array_equal(squared_error_backward(pred - target), 2 * (pred - target))


def test_squared_error_float32_matches_float64(rng):
    pred, target = rng.standard_normal((20, 30)), rng.standard_normal((20, 30))
    for reduction in ("sum", "mean"):
        loss64, diff64 = squared_error_forward(pred, target, reduction)
        loss32, diff32 = squared_error_forward(pred.astype(np.float32), target.astype(np.float32), reduction)
        assert diff32.dtype == np.float32 and loss32 == pytest.approx(loss64, rel=1e-6)
        d32 = squared_error_backward(diff32, reduction)
        assert d32.dtype == np.float32
        # pred - target cancels in float32: the error scales with |pred|, |target| ~ 1, not with diff.
        np.testing.assert_allclose(d32, squared_error_backward(diff64, reduction), rtol=1e-6, atol=1e-6)


def test_squared_error_is_independent_of_thread_count(rng):
    pred = rng.standard_normal(50001).astype(np.float32)
    target = rng.standard_normal(50001).astype(np.float32)
    assert_same_at_thread_counts(lambda: squared_error_forward(pred, target)[0])


def test_squared_error_nan_and_inf_propagate():
    loss, diff = squared_error_forward(np.array([1.0, np.nan, 2.0]), np.zeros(3))
    assert np.isnan(loss) and np.isnan(diff[1])
    loss, _ = squared_error_forward(np.array([1.0, np.inf]), np.zeros(2), "mean")
    assert loss == np.inf
    assert np.isnan(squared_error_backward(np.array([np.nan, 1.0]), "mean")[0])


def test_squared_error_bad_inputs_raise():
    with pytest.raises(ValueError, match=r"reduction: expected one of \('sum', 'mean'\), got 'none'"):
        squared_error_forward(np.ones(3), np.ones(3), "none")
    with pytest.raises(ValueError, match=r"reduction: expected one of"):
        squared_error_backward(np.ones(3), "avg")
    with pytest.raises(ValueError, match=r"target: expected shape \(3,\).*got \(3, 1\)"):
        squared_error_forward(np.ones(3), np.ones((3, 1)))
    with pytest.raises(ValueError, match=r"target: expected dtype float64.*got float32"):
        squared_error_forward(np.ones(3), np.ones(3, dtype=np.float32))
    with pytest.raises(ValueError, match=r"pred: expected dtype float32 or float64, got int64"):
        squared_error_forward(np.arange(3), np.ones(3))
    with pytest.raises(ValueError, match=r"diff: expected dtype float32 or float64, got int64"):
        squared_error_backward(np.arange(3))


@pytest.mark.torch
def test_matches_torch(rng):
    torch = pytest.importorskip("torch")
    functional = torch.nn.functional
    logits, labels = _logits_labels(rng, 9, 5)
    tl = torch.tensor(logits, requires_grad=True)
    tloss = functional.cross_entropy(tl, torch.tensor(labels))
    tloss.backward()
    loss, probs = softmax_cross_entropy_forward(logits, labels)
    assert loss == pytest.approx(tloss.item(), rel=1e-13)
    np.testing.assert_allclose(softmax_cross_entropy_backward(probs, labels), tl.grad.numpy(), rtol=1e-12, atol=1e-15)

    pred, target = rng.standard_normal((6, 4)), rng.standard_normal((6, 4))
    for reduction in ("sum", "mean"):
        tp = torch.tensor(pred, requires_grad=True)
        tloss = functional.mse_loss(tp, torch.tensor(target), reduction=reduction)
        tloss.backward()
        loss, diff = squared_error_forward(pred, target, reduction)
        assert loss == pytest.approx(tloss.item(), rel=1e-13)
        np.testing.assert_allclose(squared_error_backward(diff, reduction), tp.grad.numpy(), rtol=1e-13)
