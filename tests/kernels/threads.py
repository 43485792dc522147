"""Running a kernel at several Numba thread counts, for the tests that results do not depend on the count."""

import numba
import numpy as np


def at_thread_counts(compute):
    """compute() with 1 Numba thread and with NUMBA_NUM_THREADS (one run if they are equal), the thread count
    restored afterwards: the list of its results."""
    before = numba.get_num_threads()
    results = []
    try:
        for threads in sorted({1, numba.config.NUMBA_NUM_THREADS}):
            numba.set_num_threads(threads)
            results.append(compute())
    finally:
        numba.set_num_threads(before)
    return results


def assert_same_at_thread_counts(compute):
    """compute() returns an array, a scalar or a tuple of them: each must be bit-identical at every thread count."""
    results = [r if isinstance(r, tuple) else (r,) for r in at_thread_counts(compute)]
    for result in results[1:]:
        assert len(result) == len(results[0])
        for a, b in zip(result, results[0]):
            np.testing.assert_array_equal(a, b)
