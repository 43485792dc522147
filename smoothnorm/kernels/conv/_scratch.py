"""Scratch memory the kernels keep between calls, so a call's temporaries do not touch fresh pages.

The convolutions' temporaries are tens of MB (VGG-11's 512 -> 512 Winograd weight gradient keeps one transformed
partial per worker: 2 x 36 x 512 x 512 float32, 72 MB). glibc serves allocations above its mmap threshold (32 MB at
most) from fresh mappings and returns them on free, and trims the heap above twice that, so every call page-faulted
its temporaries in again: 3,700 minor faults per VGG-11-BN forward+backward at batch 128, and in this 2-core VM a
fault costs 20-100 us (the layers that faulted ran 2-5x slower than the same layers without faults).

`scratch(name, shape, dtype)` returns an uninitialized array backed by this thread's buffer `name`, grown to the
largest request and then reused. Rules for callers:
- a scratch array is valid until the next `scratch(name)` on the same thread: use one name per temporary that is
  live at the same time as another, and never return a scratch array (outputs are fresh, or the caller's `out=`);
- buffers are per thread (threading.local), so threads never share one.
Memory held: the largest request per name and thread (126 MB measured for VGG-11-BN at batch 128 in float32), until
`release()`.
"""

from __future__ import annotations

import threading

import numpy as np

_ALIGN = 64  # bytes: a cache line, and AVX-512's vector width
_local = threading.local()


def scratch(name: str, shape: tuple[int, ...], dtype) -> np.ndarray:
    """An uninitialized C-contiguous array of `shape` and `dtype` in this thread's scratch buffer `name`."""
    views = _local.__dict__.setdefault("views", {})
    key = (name, tuple(shape), dtype)
    view = views.get(key)  # the same request as before: the same array (a small network asks ~200 times a step)
    if view is not None:
        return view
    dtype = np.dtype(dtype)
    shape = tuple(int(s) for s in shape)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    buffers = _local.__dict__.setdefault("buffers", {})
    raw = buffers.get(name)
    if raw is None or raw.size < nbytes + _ALIGN:
        raw = buffers[name] = np.empty(nbytes + _ALIGN, dtype=np.uint8)
        for old in [k for k in views if k[0] == name]:  # views of the buffer this one replaces
            del views[old]
    start = -raw.ctypes.data % _ALIGN
    view = views[key] = raw[start : start + nbytes].view(dtype).reshape(shape)
    return view


def held_bytes() -> int:
    """Bytes this thread's scratch buffers hold."""
    return sum(raw.size for raw in _local.__dict__.get("buffers", {}).values())


def release() -> None:
    """Free this thread's scratch buffers (the next call allocates afresh)."""
    _local.__dict__.pop("buffers", None)
    _local.__dict__.pop("views", None)
