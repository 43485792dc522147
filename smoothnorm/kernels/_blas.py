"""BLAS from inside Numba kernels: SciPy's sgemm/dgemm (scipy.linalg.cython_blas, the library Numba's own np.dot
uses) as ctypes function pointers, `_gemm` (C-contiguous operands, optional transposes, accumulate with beta), and
`_single_threaded_blas`, which holds every OpenBLAS in the process at one thread while Numba's workers call it.
Used by conv.py, whose workers each run their own GEMMs inside one parallel region."""

from __future__ import annotations

import ctypes
import os
import threading

import numpy as np
from numba import njit
from numba.extending import get_cython_function_address

_GEMM_TYPE = ctypes.CFUNCTYPE(None, *([ctypes.c_void_p] * 13))
_SGEMM = _GEMM_TYPE(get_cython_function_address("scipy.linalg.cython_blas", "sgemm"))
_DGEMM = _GEMM_TYPE(get_cython_function_address("scipy.linalg.cython_blas", "dgemm"))


# ----------------------------------------------------------------------------------------------------------------
# BLAS threads.


def _loaded_openblas() -> dict[str, ctypes.CDLL]:
    """{path: library} of every OpenBLAS mapped into this process (Linux; empty elsewhere)."""
    try:
        with open("/proc/self/maps") as maps:
            # address perms offset dev inode path: the path may contain spaces, so split at most 5 times.
            fields = (line.split(None, 5) for line in maps)
            paths = {f[5].strip() for f in fields if len(f) == 6 and "openblas" in f[5].rsplit("/", 1)[-1].lower()}
    except OSError:
        return {}
    libs = {}
    for path in sorted(paths):
        try:
            libs[path] = ctypes.CDLL(path, mode=getattr(os, "RTLD_NOLOAD", 0))
        except OSError:
            continue
    return libs


def openblas_report() -> list[str]:
    """One line per OpenBLAS in the process: file, the kernel family it runs (its own corename) and its config."""
    lines = []
    for path, lib in _loaded_openblas().items():
        parts = [path.rsplit("/", 1)[-1]]
        for prefix in ("openblas", "scipy_openblas"):
            for suffix in ("", "64_"):
                for what in ("get_corename", "get_config"):
                    fn = getattr(lib, f"{prefix}_{what}{suffix}", None)
                    if fn is not None:
                        fn.restype = ctypes.c_char_p
                        parts.append(f"{what[4:]}={fn().decode(errors='replace').strip()}")
        lines.append(" ".join(parts))
    return lines


class _SingleThreadedBlas:
    """Context manager: every OpenBLAS in the process runs on one thread inside, and as before outside.

    Re-entrant and shared between Python threads (a depth count under a lock), so concurrent calls cannot leave
    the BLAS at one thread.
    """

    _NAMES = ("openblas", "scipy_openblas")
    _SUFFIXES = ("", "64_")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._depth = 0
        self._saved: list[tuple[object, int]] = []
        self._controls: list[tuple[object, object]] | None = None

    def _find(self) -> list[tuple[object, object]]:
        """(get, set) thread-count functions of each OpenBLAS mapped into this process (Linux)."""
        controls = []
        for lib in _loaded_openblas().values():
            for name in self._NAMES:
                for suffix in self._SUFFIXES:
                    getter = getattr(lib, f"{name}_get_num_threads{suffix}", None)
                    setter = getattr(lib, f"{name}_set_num_threads{suffix}", None)
                    if getter is not None and setter is not None:
                        getter.restype = ctypes.c_int
                        setter.argtypes = [ctypes.c_int]
                        controls.append((getter, setter))
        return controls

    def available(self) -> bool:
        with self._lock:
            if self._controls is None:
                self._controls = self._find()
            return bool(self._controls)

    def __enter__(self):
        with self._lock:
            if self._controls is None:
                self._controls = self._find()
            if self._depth == 0:
                self._saved = [(setter, getter()) for getter, setter in self._controls or ()]
                for setter, _ in self._saved:
                    setter(1)
            self._depth += 1
        return self

    def __exit__(self, *exc) -> None:
        with self._lock:
            self._depth -= 1
            if self._depth == 0:
                for setter, threads in self._saved:
                    setter(threads)
                self._saved = []


_single_threaded_blas = _SingleThreadedBlas()


@njit(cache=True, nogil=True, error_model="numpy")
def _gemm(sgemm, dgemm, a, trans_a, b, trans_b, c, beta):
    """c = op(a) @ op(b) + beta * c for C-contiguous 2-D arrays, through Fortran BLAS on the transposed problem."""
    ints = np.empty(6, dtype=np.int32)
    ints[0] = c.shape[1]
    ints[1] = c.shape[0]
    ints[2] = a.shape[0] if trans_a else a.shape[1]
    ints[3] = b.shape[1]
    ints[4] = a.shape[1]
    ints[5] = c.shape[1]
    flags = np.empty(2, dtype=np.uint8)
    flags[0] = 84 if trans_b else 78  # 'T' or 'N'
    flags[1] = 84 if trans_a else 78
    scalars = np.empty(2, dtype=c.dtype)
    scalars[0] = 1
    scalars[1] = beta
    gemm = sgemm if c.itemsize == 4 else dgemm
    gemm(
        flags[0:].ctypes.data,
        flags[1:].ctypes.data,
        ints[0:].ctypes.data,
        ints[1:].ctypes.data,
        ints[2:].ctypes.data,
        scalars[0:].ctypes.data,
        b.ctypes.data,
        ints[3:].ctypes.data,
        a.ctypes.data,
        ints[4:].ctypes.data,
        scalars[1:].ctypes.data,
        c.ctypes.data,
        ints[5:].ctypes.data,
    )
