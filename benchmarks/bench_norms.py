"""Normalization layers forward + backward (train mode) beside our BatchNorm and, if installed, PyTorch CPU.

Run: python -m benchmarks.bench_norms [--repeats 15] [--shapes 128x64x32x32,128x512x4x4] [--threads 1]
Each row times one forward and one backward producing dx, dgamma and dbeta, float32 (repeated within a sample so
that each timed sample lasts ~30 ms; times are per call). For each norm, our BatchNorm,
the norm and its PyTorch equivalent alternate in one process (A, B, C, A, B, C, ...), and "/ batch" is the ratio of
medians against our BatchNorm from the same rounds (target: <= 1.5). PyTorch equivalents: F.batch_norm (+ the same
fixed noise as two elementwise ops for noisy_batch), the Lp formulas written with torch ops (autograd backward),
F.group_norm (groups 1 for "layer", 32 for "group") and F.instance_norm; torch on 2 threads unless
--threads says otherwise.
"""

from __future__ import annotations

import argparse
import math
import os
import time

import numpy as np

from benchmarks._timing import describe_machine, format_table, time_alternating, torch_available
from smoothnorm.kernels.norm.batch import batch_norm_train_backward, batch_norm_train_forward
from smoothnorm.kernels.norm.group import group_norm_backward, group_norm_forward
from smoothnorm.kernels.norm.lp import lp_norm_train_backward, lp_norm_train_forward
from smoothnorm.kernels.norm.noisy import noisy_batch_norm_backward, noisy_batch_norm_forward

NORMS = ("noisy_batch", "l1", "l2", "linf", "layer", "instance", "group")
P = {"l1": 1, "l2": 2, "linf": math.inf}


def _ours(norm: str, x, dy, gamma, beta, noise):
    dgamma, dbeta = np.empty_like(gamma), np.empty_like(beta)
    channels = x.shape[1]
    if norm == "batch":
        def run():
            _, mean, invstd, _ = batch_norm_train_forward(x, gamma, beta)
            batch_norm_train_backward(dy, x, mean, invstd, gamma, dgamma, dbeta)
    elif norm == "noisy_batch":
        scale, shift = noise

        def run():
            _, mean, invstd, _ = noisy_batch_norm_forward(x, scale, shift, gamma, beta)
            noisy_batch_norm_backward(dy, x, scale, shift, mean, invstd, gamma, dgamma, dbeta)
    elif norm in P:
        p = P[norm]

        def run():
            _, mean, nrm, argmax = lp_norm_train_forward(x, p, gamma, beta)
            lp_norm_train_backward(dy, x, p, mean, nrm, argmax, gamma, dgamma, dbeta)
    else:
        groups = {"layer": 1, "instance": channels, "group": min(32, channels)}[norm]

        def run():
            _, mean, invstd = group_norm_forward(x, groups, gamma, beta)
            group_norm_backward(dy, x, groups, mean, invstd, gamma, dgamma, dbeta)
    return run


def _torch(torch, norm: str, x, dy, gamma, beta, noise):
    F = torch.nn.functional
    tx = torch.from_numpy(x).requires_grad_()
    tg = torch.from_numpy(gamma).requires_grad_()
    tb = torch.from_numpy(beta).requires_grad_()
    tdy = torch.from_numpy(dy)
    channels = x.shape[1]
    shape = (1, channels, 1, 1)
    ts, tm = (torch.from_numpy(a) for a in noise)

    def forward():
        if norm in ("batch", "noisy_batch"):
            y = F.batch_norm(tx, None, None, tg, tb, training=True, eps=1e-5)
            return y * ts + tm if norm == "noisy_batch" else y
        if norm in P:
            mean = tx.mean(dim=(0, 2, 3), keepdim=True)
            if norm == "l1":
                nrm = tx.abs().mean(dim=(0, 2, 3), keepdim=True)
            elif norm == "l2":
                nrm = tx.square().mean(dim=(0, 2, 3), keepdim=True).sqrt()
            else:
                nrm = tx.abs().amax(dim=(0, 2, 3), keepdim=True)
            return (tx - mean) / (nrm + 1e-5) * tg.view(shape) + tb.view(shape)
        if norm == "instance":
            return F.instance_norm(tx, weight=tg, bias=tb, use_input_stats=True, eps=1e-5)
        groups = 1 if norm == "layer" else min(32, channels)
        return F.group_norm(tx, groups, tg, tb, 1e-5)

    def run():
        torch.autograd.grad(forward(), (tx, tg, tb), tdy)

    return run


def _batched(fn, seconds: float = 0.03):
    """fn repeated enough times per call that one timed sample lasts about `seconds` (small shapes run in ~1 ms,
    where a single call's time is mostly scheduler noise on a shared machine)."""
    fn()
    t0 = time.perf_counter()
    fn()
    reps = max(1, int(seconds / max(time.perf_counter() - t0, 1e-6)))

    def run():
        for _ in range(reps):
            fn()

    return run, reps


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15, help="alternating rounds per norm (median reported)")
    parser.add_argument("--shapes", default="128x64x32x32,128x512x4x4", help="comma-separated NxCxHxW")
    parser.add_argument("--norms", default=",".join(NORMS), help="comma-separated subset of " + ",".join(NORMS))
    parser.add_argument("--threads", type=int, default=0, help="Numba and torch threads (0: Numba's default)")
    args = parser.parse_args(argv)
    if args.threads > 0:
        import numba

        numba.set_num_threads(args.threads)
    threads = args.threads if args.threads > 0 else None

    torch = None
    if torch_available():
        os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")  # must precede the import
        import torch

        torch.set_num_threads(threads or 2)
    print(describe_machine())
    print(f"normalization forward + backward (dx, dgamma, dbeta), float32, median of {args.repeats} alternating "
          f"rounds\n")

    rng = np.random.default_rng(0)
    rows = []
    for spec in args.shapes.split(","):
        shape = tuple(int(v) for v in spec.lower().split("x"))
        c = shape[1]
        x = rng.standard_normal(shape, dtype=np.float32)
        dy = rng.standard_normal(shape, dtype=np.float32)
        gamma = (1.0 + 0.1 * rng.standard_normal(c)).astype(np.float32)
        beta = (0.1 * rng.standard_normal(c)).astype(np.float32)
        noise = ((1.1 + 0.1 * rng.standard_normal(shape)).astype(np.float32),
                 rng.uniform(-0.6, 0.6, shape).astype(np.float32))
        batch = _ours("batch", x, dy, gamma, beta, noise)
        torch_batch = _torch(torch, "batch", x, dy, gamma, beta, noise) if torch is not None else None
        for norm in args.norms.split(","):
            candidates = {"batch": batch, norm: _ours(norm, x, dy, gamma, beta, noise)}
            if torch is not None:
                candidates["torch"] = _torch(torch, norm, x, dy, gamma, beta, noise)
                candidates["torch batch"] = torch_batch
            batched = {name: _batched(fn) for name, fn in candidates.items()}
            times = time_alternating({name: run for name, (run, _) in batched.items()}, repeats=args.repeats)
            times = {name: t / batched[name][1] for name, t in times.items()}
            row = {
                "shape": "x".join(map(str, shape)),
                "norm": norm,
                "ours ms": f"{times[norm] * 1e3:.1f}",
                "batch ms": f"{times['batch'] * 1e3:.1f}",
                "/ batch": f"{times[norm] / times['batch']:.2f}",
            }
            if torch is not None:
                row["torch ms"] = f"{times['torch'] * 1e3:.1f}"
                row["torch/ours"] = f"{times['torch'] / times[norm]:.2f}"
                row["torch batch ms"] = f"{times['torch batch'] * 1e3:.1f}"
            rows.append(row)
    print(format_table(rows, ["shape", "norm", "ours ms", "batch ms", "/ batch", "torch ms", "torch/ours",
                              "torch batch ms"]))


if __name__ == "__main__":
    main()
