import threading

import numpy as np
import pytest

from smoothnorm.kernels.conv import _scratch
from smoothnorm.kernels.conv._scratch import scratch


@pytest.fixture(autouse=True)
def _fresh():
    _scratch.release()
    yield
    _scratch.release()


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int8])
def test_shape_dtype_and_alignment(dtype):
    a = scratch("t", (3, 5, 7), dtype)
    assert a.shape == (3, 5, 7) and a.dtype == dtype and a.flags.c_contiguous and a.flags.writeable
    assert a.ctypes.data % 64 == 0
    a[...] = 1  # every element addressable
    assert a.sum() == a.size


def test_same_name_reuses_memory_and_grows_only_when_needed():
    a = scratch("t", (1000,), np.float64)
    b = scratch("t", (10, 10), np.float32)  # smaller: the same memory
    assert np.shares_memory(a, b) and a.ctypes.data == b.ctypes.data
    held = _scratch.held_bytes()
    c = scratch("t", (5000,), np.float64)  # larger: a new buffer
    assert _scratch.held_bytes() > held and c.size == 5000
    d = scratch("u", (1000,), np.float64)  # another name: separate memory
    assert not np.shares_memory(c, d)


def test_a_repeated_request_after_the_buffer_grew_is_in_the_new_buffer():
    a = scratch("t", (10,), np.float64)
    assert scratch("t", (10,), np.float64) is a  # the same request: the same array
    c = scratch("t", (5000,), np.float64)  # grows: a new buffer
    a2 = scratch("t", (10,), np.float64)
    assert np.shares_memory(a2, c) and not np.shares_memory(a2, a)
    assert scratch("t", [10], np.float64) is a2  # a list shape asks for the same


def test_empty_and_zero_sized_shapes():
    assert scratch("t", (0, 4), np.float32).shape == (0, 4)
    assert scratch("t", (), np.float64).shape == ()


def test_threads_get_their_own_buffers():
    main = scratch("t", (1000,), np.float64)
    seen = {}

    def work():
        seen["other"] = scratch("t", (1000,), np.float64).ctypes.data
        seen["held"] = _scratch.held_bytes()

    t = threading.Thread(target=work)
    t.start()
    t.join()
    assert seen["other"] != main.ctypes.data
    assert seen["held"] == _scratch.held_bytes()  # same size of request, separate buffer


def test_release_frees():
    scratch("t", (1000,), np.float64)
    assert _scratch.held_bytes() >= 8000
    _scratch.release()
    assert _scratch.held_bytes() == 0
