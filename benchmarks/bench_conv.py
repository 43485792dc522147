"""Conv2d forward + backward on VGG's CIFAR layer shapes (3x3, stride 1, padding 1), against PyTorch CPU if installed.

Run: python -m benchmarks.bench_conv [--repeats 15] [--batch 128]
Each row times one forward and one backward producing dx, dweight and dbias; torch does the same work (conv2d,
then autograd.grad for input, weight and bias) on 2 threads. Candidates alternate in one process; the ratio
torch/ours > 1 means we are faster.
"""

from __future__ import annotations

import argparse
import os

import numpy as np

from benchmarks._timing import describe_machine, format_table, time_alternating, torch_available
from smoothnorm.kernels.conv import conv2d_backward, conv2d_forward

# (C_in, C_out, H=W) of every conv in VGG-11..19 on CIFAR-10.
VGG_LAYERS = [
    (3, 64, 32),
    (64, 64, 32),
    (64, 128, 16),
    (128, 128, 16),
    (128, 256, 8),
    (256, 256, 8),
    (256, 512, 4),
    (512, 512, 4),
    (512, 512, 2),
]


def _ours(x, weight, bias, dy, dweight, dbias):
    def run():
        conv2d_forward(x, weight, bias, 1, 1)
        conv2d_backward(dy, x, weight, dweight, dbias, 1, 1)

    return run


def _torch(torch, x, weight, bias, dy):
    tx = torch.from_numpy(x).requires_grad_()
    tw = torch.from_numpy(weight).requires_grad_()
    tb = torch.from_numpy(bias).requires_grad_()
    tdy = torch.from_numpy(dy)

    def run():
        y = torch.nn.functional.conv2d(tx, tw, tb, stride=1, padding=1)
        torch.autograd.grad(y, (tx, tw, tb), tdy)

    return run


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15, help="alternating rounds per layer (median reported)")
    parser.add_argument("--batch", type=int, default=128)
    args = parser.parse_args(argv)

    torch = None
    if torch_available():
        os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")  # must precede the import
        import torch

        torch.set_num_threads(2)
    print(describe_machine())
    print(
        f"conv2d 3x3/s1/p1 forward + backward (dx, dW, db), float32, batch {args.batch}, "
        f"median of {args.repeats} alternating rounds\n"
    )

    rng = np.random.default_rng(0)
    rows = []
    totals = {"ours": 0.0, "torch": 0.0}
    for c_in, c_out, size in VGG_LAYERS:
        x = rng.standard_normal((args.batch, c_in, size, size), dtype=np.float32)
        weight = rng.standard_normal((c_out, c_in, 3, 3), dtype=np.float32) * np.float32((c_in * 9) ** -0.5)
        bias = rng.standard_normal(c_out, dtype=np.float32)
        dy = rng.standard_normal((args.batch, c_out, size, size), dtype=np.float32)
        candidates = {"ours": _ours(x, weight, bias, dy, np.empty_like(weight), np.empty_like(bias))}
        if torch is not None:
            candidates["torch"] = _torch(torch, x, weight, bias, dy)
        times = time_alternating(candidates, repeats=args.repeats)
        flops = 3 * 2 * args.batch * c_out * c_in * 9 * size * size  # forward, dW and dx GEMMs
        row = {
            "layer": f"{c_in}->{c_out} @{size}x{size}",
            "ours ms": f"{times['ours'] * 1e3:.1f}",
            "ours GFLOP/s": f"{flops / times['ours'] / 1e9:.0f}",
        }
        totals["ours"] += times["ours"]
        if "torch" in times:
            totals["torch"] += times["torch"]
            row["torch ms"] = f"{times['torch'] * 1e3:.1f}"
            row["torch/ours"] = f"{times['torch'] / times['ours']:.2f}"
        rows.append(row)
    total = {"layer": "total", "ours ms": f"{totals['ours'] * 1e3:.1f}"}
    if torch is not None:
        total["torch ms"] = f"{totals['torch'] * 1e3:.1f}"
        total["torch/ours"] = f"{totals['torch'] / totals['ours']:.2f}"
    rows.append(total)
    print(format_table(rows, ["layer", "ours ms", "ours GFLOP/s", "torch ms", "torch/ours"]))


if __name__ == "__main__":
    main()
