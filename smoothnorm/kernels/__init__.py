"""Numba kernels: pure forward/backward functions on C-contiguous float32/float64 arrays.

Each module exposes validating public functions; the `@njit(cache=True)` kernels behind them are private.
Kernels import nothing else from smoothnorm.
"""
