"""The cost of splitting convolutions into fixed blocks of samples (same bits at any thread count) against one
block per thread (the bits then change with the thread count): whole VGG train steps, alternating in one process.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python -m benchmarks.bench_split [--repeats 9] [--threads 2]

Rows: VGG-11-BN and VGG-16-BN at full width, batch 128, and VGG-16 (plain and BN) at the quick profile's width 1/8,
batch 64; float32, SGD. The ratio is per-thread time / fixed-blocks time (below 1: the fixed split costs).
"""

from __future__ import annotations

import argparse

import numba
import numpy as np

from benchmarks._timing import describe_machine, format_table, time_alternating
from smoothnorm import optim
from smoothnorm.kernels._blas import openblas_report
from smoothnorm.kernels.conv import _im2col, winograd
from smoothnorm.nn import models

FIXED = _im2col.work_blocks


def per_thread(n: int, parallel: bool, partial_bytes: int = 0) -> int:
    """The split before: one block of samples per Numba thread."""
    return max(1, min(n, numba.get_num_threads())) if parallel else 1


def step_with(split, net, opt, x, y):
    def fn():
        _im2col.work_blocks = winograd.work_blocks = split
        try:
            net.loss_and_grad(x, y, mode="train")
            opt.step(net.params, net.grads)
        finally:
            _im2col.work_blocks = winograd.work_blocks = FIXED

    return fn


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--threads", type=int, default=numba.config.NUMBA_NUM_THREADS)
    args = parser.parse_args(argv)
    numba.set_num_threads(args.threads)
    print(describe_machine())
    print("OpenBLAS: " + "; ".join(openblas_report()))
    print(f"train step, float32, {args.threads} threads, median of {args.repeats} alternating rounds (ms); "
          f"fixed blocks: {_im2col.WORK_BLOCKS}, 2 where a partial weight gradient passes "
          f"{_im2col.LARGE_PARTIAL_BYTES >> 20} MiB\n")
    rng = np.random.default_rng(0)
    rows = []
    for name, norm, width, batch in (("vgg11", "batch", 1.0, 128), ("vgg16", "batch", 1.0, 128),
                                     ("vgg16", None, 0.125, 64), ("vgg16", "batch", 0.125, 64)):
        net = models.vgg(name, norm=norm, width=width, dtype=np.float32, seed=0)
        opt = optim.SGD(lr=1e-3)
        x = rng.standard_normal((batch, 3, 32, 32)).astype(np.float32)
        y = rng.integers(0, 10, size=batch)
        t = time_alternating({"fixed": step_with(FIXED, net, opt, x, y),
                              "per_thread": step_with(per_thread, net, opt, x, y)}, repeats=args.repeats)
        rows.append({"model": f"{name}{'-bn' if norm else ''} w{width:g} b{batch}",
                     "fixed blocks": f"{t['fixed'] * 1e3:.1f}", "per thread": f"{t['per_thread'] * 1e3:.1f}",
                     "per thread / fixed": f"{t['per_thread'] / t['fixed']:.3f}"})
        print(rows[-1], flush=True)
    print()
    print(format_table(rows, ["model", "fixed blocks", "per thread", "per thread / fixed"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
