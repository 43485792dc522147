"""BatchNorm forward + backward (train mode, affine, float32): smoothnorm kernels against PyTorch CPU.

Run as `python -m benchmarks.bench_batchnorm [--repeats R] [--threads T]`. Both sides allocate their outputs
(y, dx) on every call, as a layer does; torch runs F.batch_norm + autograd backward with running statistics.
Candidates are timed alternately in one process (see benchmarks/_timing.py); ratio = torch / ours (> 1: ours
faster). A third candidate passes `out=` buffers reused across calls, as a layer owning its outputs could.
GB/s counts the bytes ours must move at least: x read and y written (forward), dy and x read and dx written
(backward), i.e. 5 arrays of the input's size.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from benchmarks._timing import describe_machine, format_table, time_alternating, torch_available

SHAPES = [(128, 64, 32, 32), (128, 128, 16, 16), (128, 256, 8, 8), (128, 512, 4, 4)]


def _candidates(shape: tuple[int, ...], with_torch: bool) -> tuple[dict, int]:
    """Closures running one forward + backward for us (and torch); also the input's size in bytes."""
    from smoothnorm.kernels.norm.batch import batch_norm_train_backward, batch_norm_train_forward

    rng = np.random.default_rng(0)
    channels = shape[1]
    x = rng.standard_normal(shape, dtype=np.float32)
    dy = rng.standard_normal(shape, dtype=np.float32)
    gamma = (1.0 + 0.1 * rng.standard_normal(channels)).astype(np.float32)
    beta = (0.1 * rng.standard_normal(channels)).astype(np.float32)
    grads = np.empty(2 * channels, dtype=np.float32)  # a flat gradient vector, as in a network
    dgamma, dbeta = grads[:channels], grads[channels:]

    def ours():
        y, mean, invstd, var = batch_norm_train_forward(x, gamma, beta)
        return batch_norm_train_backward(dy, x, mean, invstd, gamma, dgamma, dbeta)

    y_buffer, dx_buffer = np.empty_like(x), np.empty_like(x)

    def ours_reusing_buffers():
        y, mean, invstd, var = batch_norm_train_forward(x, gamma, beta, out=y_buffer)
        return batch_norm_train_backward(dy, x, mean, invstd, gamma, dgamma, dbeta, out=dx_buffer)

    candidates = {"ours": ours, "ours out=": ours_reusing_buffers}
    if with_torch:
        import torch

        xt = torch.from_numpy(x.copy()).requires_grad_(True)
        dyt = torch.from_numpy(dy)
        gt = torch.from_numpy(gamma.copy()).requires_grad_(True)
        bt = torch.from_numpy(beta.copy()).requires_grad_(True)
        running_mean = torch.zeros(channels)
        running_var = torch.ones(channels)

        def theirs():
            xt.grad = gt.grad = bt.grad = None
            y = torch.nn.functional.batch_norm(
                xt, running_mean, running_var, gt, bt, training=True, momentum=0.1, eps=1e-5
            )
            y.backward(dyt)

        candidates["torch"] = theirs
    return candidates, x.nbytes


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)

    os.environ["THP_MEM_ALLOC_ENABLE"] = "1"  # before torch is imported: huge pages for its allocations
    import numba

    numba.set_num_threads(args.threads)
    have_torch = torch_available()
    if have_torch:
        import torch

        torch.set_num_threads(args.threads)
    print(describe_machine())
    print(
        f"BatchNorm train forward + backward, float32, affine, {args.threads} threads, "
        f"median of {args.repeats} alternating repeats\n"
    )
    rows = []
    for shape in SHAPES:
        candidates, nbytes = _candidates(shape, have_torch)
        samples = {name: [] for name in candidates}
        times = time_alternating(
            {name: _recorded(fn, samples[name]) for name, fn in candidates.items()}, repeats=args.repeats, warmup=3
        )
        best = {name: min(v[3:]) for name, v in samples.items()}  # the warmup calls are recorded too
        row = {
            "shape": "x".join(map(str, shape)),
            "ours ms": f"{times['ours'] * 1e3:.2f}",
            "ours GB/s": f"{5 * nbytes / times['ours'] / 1e9:.1f}",
            "ours min": f"{best['ours'] * 1e3:.2f}",
        }
        row["out= ms"] = f"{times['ours out='] * 1e3:.2f}"
        if have_torch:
            row["torch ms"] = f"{times['torch'] * 1e3:.2f}"
            row["torch/ours"] = f"{times['torch'] / times['ours']:.2f}"
            row["torch min"] = f"{best['torch'] * 1e3:.2f}"
            row["min ratio"] = f"{best['torch'] / best['ours']:.2f}"
            row["torch/out="] = f"{times['torch'] / times['ours out=']:.2f}"
        rows.append(row)
    columns = ["shape", "ours ms", "torch ms", "torch/ours", "ours GB/s", "ours min", "torch min", "min ratio"]
    print(format_table(rows, columns + ["out= ms", "torch/out="]))
    print(
        "\nms: medians; min: fastest of the same calls (less sensitive to a busy machine than the median);\n"
        "out=: ours writing y and dx into buffers reused across calls (no page faults of fresh memory)."
    )


def _recorded(fn, durations: list[float]):
    """fn, also appending each call's duration to `durations`."""

    def timed():
        t0 = time.perf_counter()
        out = fn()
        durations.append(time.perf_counter() - t0)
        return out

    return timed


if __name__ == "__main__":
    main()
