"""The float64 sums and the in-place moves every probe is built on (measure/_common.py)."""

import math

import numpy as np
import pytest

from smoothnorm.measure._common import _SUM_BLOCK, _distance64, _move_to, _norm64, _pair_sums
from smoothnorm.nn import models
from tests.helpers import assert_same_at_thread_counts

SIZES = [0, 1, 2, 3, 7, _SUM_BLOCK - 1, _SUM_BLOCK, 3 * _SUM_BLOCK + 5]


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_pair_sums_match_float64_numpy(rng, n, dtype):
    a = (rng.standard_normal(n) * 3).astype(dtype)
    b = (rng.standard_normal(n) + 1).astype(dtype)
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    expected = [np.sum(a64 * a64), np.sum(b64 * b64), np.sum(a64 * b64), np.sum((a64 - b64) ** 2)]
    # Two summation orders of n float64 terms: they agree to a few ulps times log n, far below float32's 6e-8.
    np.testing.assert_allclose(_pair_sums(a, b), expected, rtol=1e-13, atol=1e-300)
    assert math.isclose(_norm64(a), math.sqrt(expected[0]), rel_tol=1e-13, abs_tol=1e-300)
    assert math.isclose(_distance64(a, b), math.sqrt(expected[3]), rel_tol=1e-13, abs_tol=1e-300)


def test_pair_sums_repeat_to_the_bit_at_any_thread_count(rng):
    a = rng.standard_normal(5 * _SUM_BLOCK + 11).astype(np.float32)
    b = rng.standard_normal(a.size).astype(np.float32)
    assert_same_at_thread_counts(lambda: np.array(_pair_sums(a, b)))


def test_pair_sums_propagate_nan_and_inf():
    a = np.ones(2 * _SUM_BLOCK)
    b = np.zeros(2 * _SUM_BLOCK)
    a[_SUM_BLOCK + 3] = np.inf
    sums = _pair_sums(a, b)
    assert math.isinf(sums[0]) and sums[1] == 0 and math.isinf(sums[3])
    b[7] = np.nan
    assert all(math.isnan(v) for v in _pair_sums(a, b)[1:])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_move_to_rounds_as_numpy_multiply_then_subtract(rng, dtype):
    net = models.mlp(20, [30], 5, dtype=dtype, seed=0)
    w0 = net.params.copy()
    d = rng.standard_normal(w0.size).astype(dtype)
    for eta in (0.1, -3.7, 1e-30, 1e30):
        _move_to(net, w0, eta, d)
        with np.errstate(all="ignore"):
            expected = w0 - d * net.dtype.type(eta)
        np.testing.assert_array_equal(net.params, expected)
    # A direction that is not C-contiguous takes NumPy's path, with the same result.
    wide = np.repeat(d, 2)[::2]
    _move_to(net, w0, 0.25, wide)
    np.testing.assert_array_equal(net.params, w0 - d * net.dtype.type(0.25))


def test_iterative_measurements_hold_blas_at_one_thread_and_restore_it():
    """Lanczos, power iteration and Hutchinson run their linear algebra with every OpenBLAS at one thread (a threaded
    BLAS stalls the next Numba region of the operator's products) and give the thread counts back after."""
    from scipy.sparse.linalg import LinearOperator

    from smoothnorm.kernels import _blas
    from smoothnorm.measure import linalg

    controls = _blas._SingleThreadedBlas()._find()
    if not controls:
        pytest.skip("no OpenBLAS with thread controls in this process")
    before = [getter() for getter, _ in controls]
    seen = []
    matrix = np.diag(np.arange(1.0, 41.0))

    def matvec(v):
        seen.append(tuple(getter() for getter, _ in controls))
        return matrix @ v

    op = LinearOperator((40, 40), matvec=matvec, dtype=np.float64)
    assert np.allclose(linalg.top_eigenvalues(op, 2), [40.0, 39.0])
    assert np.allclose(linalg.top_eigenvalues(op, 1, method="power", tol=1e-10), [40.0])
    linalg.hutchinson_trace(op, num_probes=3)
    linalg.spectral_density(op, num_probes=1, lanczos_steps=10)
    assert seen and all(all(n == 1 for n in counts) for counts in seen)
    assert [getter() for getter, _ in controls] == before
