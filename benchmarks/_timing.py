"""Shared timing helpers for benchmarks: alternating repeats, medians, machine description.

The machine is shared and noisy, so candidates are timed alternately (A, B, A, B, ...) in one process and
compared by the ratio of medians; absolute times are printed for context only.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable


def time_alternating(candidates: dict[str, Callable[[], object]], repeats: int = 15, warmup: int = 2,
                     pause: float = 0.0):
    """Run each candidate `warmup` times, then `repeats` rounds alternating between them.

    The order rotates from round to round, so each candidate follows each other one equally often: whichever runs
    right after PyTorch (or after our OpenMP team) may share the cores with threads still spinning from it. Even
    so, timing one function against itself this way differs by 2-3% on this machine: smaller ratios are noise.
    `pause` seconds of sleep before each timed call let the previous candidate's idle OpenMP threads stop spinning
    (PyTorch's and Numba's OpenMP runtimes each spin a while after a parallel region, taking cores from the other).
    Returns {name: median seconds}.
    """
    for fn in candidates.values():
        for _ in range(warmup):
            fn()
    names = list(candidates)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            if pause:
                time.sleep(pause)
            t0 = time.perf_counter()
            candidates[name]()
            samples[name].append(time.perf_counter() - t0)
    return {name: sorted(v)[len(v) // 2] for name, v in samples.items()}


def describe_machine() -> str:
    """One paragraph: CPU model, cores, threads, library versions, BLAS."""
    import numba
    import numpy as np

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    parts = [
        f"CPU: {cpu}, {os.cpu_count()} logical cores",
        f"numba {numba.__version__} ({numba.get_num_threads()} threads)",
        f"numpy {np.__version__}",
    ]
    try:
        from threadpoolctl import threadpool_info

        for pool in threadpool_info():
            parts.append(f"{pool.get('internal_api')} {pool.get('version')} ({pool.get('num_threads')} threads)")
    except ImportError:
        pass
    try:
        import torch

        parts.append(f"torch {torch.__version__} ({torch.get_num_threads()} threads)")
    except ImportError:
        parts.append("torch not installed")
    return "; ".join(parts)


def sgemm_candidate(threads: int, n: int = 1024) -> tuple[Callable[[], object], float]:
    """(fn, flops): one float32 n x n x n matrix product with NumPy's BLAS on `threads` threads, to time beside the
    work so that its rate is measured under the same conditions (threadpoolctl limits the BLAS threads)."""
    import numpy as np
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n)).astype(np.float32)
    b = rng.standard_normal((n, n)).astype(np.float32)
    out = np.empty((n, n), np.float32)

    def fn():
        with threadpool_limits(threads, user_api="blas"):
            np.matmul(a, b, out=out)

    return fn, 2.0 * n**3


def torch_available() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def format_table(rows: list[dict], columns: list[str]) -> str:
    """Plain-text table of dict rows (missing cells shown as '-')."""
    cells = [[str(r.get(c, "-")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) if cells else len(c) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)
