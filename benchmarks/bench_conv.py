"""Conv2d per pass on VGG's CIFAR layer shapes (3x3, stride 1, padding 1): im2col, Winograd and PyTorch CPU.

Run: env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python -m benchmarks.bench_conv [--repeats 7] [--batch 128]
Per layer, two passes:
- forward: y = conv(x, W) + b;
- backward: dx, dW and db from dy. Ours in three variants: im2col for both gradients (one unfolding serves both),
  "mixed" (im2col dW and db, Winograd dx) and Winograd for both; PyTorch's convolution_backward with all three.
Candidates alternate in one process (medians); torch runs on as many threads as ours. The columns "auto" say what
algorithm="auto" runs (kernels/winograd.winograd_pays, written from this table), "best/auto" how much slower than
the fastest of ours it is (1.00: it picked the fastest), "torch/auto" > 1 means auto beats PyTorch.
"""

from __future__ import annotations

import argparse
import os

import numba
import numpy as np

from benchmarks._timing import describe_machine, format_table, time_alternating, torch_available
from smoothnorm.kernels._blas import openblas_report
from smoothnorm.kernels.conv.conv2d import conv2d_backward, conv2d_forward
from smoothnorm.kernels.conv.winograd import winograd_backward_input, winograd_pays
from smoothnorm.nn import models

# Every distinct 3x3 conv of VGG-11..19 on CIFAR-10 (VGG-16 has them all): (C_in, C_out, H=W).
VGG_LAYERS = list(dict.fromkeys(models.conv_shapes("vgg16")))


def _backward(dy, x, weight, dweight, dbias, algorithm):
    if algorithm == "mixed":
        # What conv2d_backward runs when auto picks im2col for dW and Winograd for dx.
        def run():
            conv2d_backward(dy, x, weight, dweight, dbias, 1, 1, need_dx=False, algorithm="im2col")
            winograd_backward_input(dy, weight)

        return run
    return lambda: conv2d_backward(dy, x, weight, dweight, dbias, 1, 1, algorithm=algorithm)


def _forward(x, weight, bias, algorithm):
    return lambda: conv2d_forward(x, weight, bias, 1, 1, algorithm=algorithm)


def _torch(torch, x, weight, bias, dy):
    tx, tw, tb, tdy = (torch.from_numpy(a) for a in (x, weight, bias, dy))

    def forward():
        torch.nn.functional.conv2d(tx, tw, tb, stride=1, padding=1)

    def backward():
        torch.ops.aten.convolution_backward(
            tdy, tx, tw, [tb.shape[0]], [1, 1], [1, 1], [1, 1], False, [0, 0], 1, [True, True, True]
        )

    return forward, backward


def _auto(c_in, c_out, size, batch) -> tuple[str, str]:
    forward = "winograd" if winograd_pays("forward", c_in, c_out, size, size, batch) else "im2col"
    dx = winograd_pays("input", c_in, c_out, size, size, batch)
    dw = winograd_pays("weight", c_in, c_out, size, size, batch)
    return forward, ("winograd" if dx and dw else "mixed" if dx else "im2col")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7, help="alternating rounds per row (median reported)")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--layers", type=str, default="", help="comma-separated indices into VGG_LAYERS (default all)")
    args = parser.parse_args(argv)

    torch = None
    if torch_available():
        os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")  # must precede the import
        import torch

        torch.set_num_threads(numba.get_num_threads())
    print(describe_machine())
    print("OpenBLAS: " + "; ".join(openblas_report()))
    print(f"conv2d 3x3/s1/p1 per pass, float32, batch {args.batch}, median of {args.repeats} alternating rounds (ms)\n")

    layers = [VGG_LAYERS[int(i)] for i in args.layers.split(",")] if args.layers else VGG_LAYERS
    rng = np.random.default_rng(0)
    rows = []
    totals: dict[str, float] = {}
    for c_in, c_out, size in layers:
        x = rng.standard_normal((args.batch, c_in, size, size), dtype=np.float32)
        weight = rng.standard_normal((c_out, c_in, 3, 3), dtype=np.float32) * np.float32((c_in * 9) ** -0.5)
        bias = rng.standard_normal(c_out, dtype=np.float32)
        dy = rng.standard_normal((args.batch, c_out, size, size), dtype=np.float32)
        dweight, dbias = np.empty_like(weight), np.empty_like(bias)
        t_fwd, t_bwd = (_torch(torch, x, weight, bias, dy) if torch is not None else (None, None))
        passes = {
            "forward": {
                "im2col": _forward(x, weight, bias, "im2col"),
                "winograd": _forward(x, weight, bias, "winograd"),
                "torch": t_fwd,
            },
            "backward": {
                name: _backward(dy, x, weight, dweight, dbias, name) for name in ("im2col", "mixed", "winograd")
            }
            | {"torch": t_bwd},
        }
        for (pass_name, candidates), auto in zip(passes.items(), _auto(c_in, c_out, size, args.batch)):
            times = time_alternating({k: v for k, v in candidates.items() if v is not None}, repeats=args.repeats)
            ours = {k: v for k, v in times.items() if k != "torch"}
            row = {"layer": f"{c_in}->{c_out} @{size}x{size}", "pass": pass_name, "auto": auto}
            row |= {k: f"{v * 1e3:.1f}" for k, v in times.items()}
            row["im2col/winograd"] = f"{times['im2col'] / times['winograd']:.2f}"
            row["best/auto"] = f"{min(ours.values()) / times[auto]:.2f}"
            for k, v in times.items():
                totals[f"{pass_name} {k}"] = totals.get(f"{pass_name} {k}", 0.0) + v
            totals[f"{pass_name} auto"] = totals.get(f"{pass_name} auto", 0.0) + times[auto]
            if "torch" in times:
                row["torch/auto"] = f"{times['torch'] / times[auto]:.2f}"
            rows.append(row)
            print(format_table([row], list(row)).splitlines()[-1], flush=True)
    for pass_name in passes:
        row = {"layer": "total", "pass": pass_name}
        row |= {k.split()[1]: f"{v * 1e3:.1f}" for k, v in totals.items() if k.startswith(pass_name)}
        if f"{pass_name} torch" in totals:
            row["torch/auto"] = f"{totals[pass_name + ' torch'] / totals[pass_name + ' auto']:.2f}"
        rows.append(row)
    print()
    columns = ["layer", "pass", "im2col", "mixed", "winograd", "torch", "im2col/winograd", "auto", "best/auto"]
    print(format_table(rows, columns + ["torch/auto"]))


if __name__ == "__main__":
    main()
