"""Cost of the measurements relative to a training step (forward + backward + SGD update).

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python -m benchmarks.bench_measure [--repeats 5] [--batch 128]
        [--width 1.0] [--skip-vgg] [--skip-hessian] [--skip-dln] [--skip-blas]

- Gradient-direction probe with 4 step sizes on VGG-11-BN (float32): targets <= 4.4 train steps and
  <= 4 forward+backward passes + 10% when the training step's gradient and loss are passed in (`grad=`, `loss=`);
  also timed without them (+1 pass).
- ICS over the weight layers (the default) and over every parameterized layer of VGG-11-BN.
- Lanczos top Hessian eigenvalue of the paper's DLN (25 layers of 10x10, 1000 samples, float64), with and without BN.
- Top-2 Hessian eigenvalues of a BatchNorm MLP with the BLAS held at one thread (as the measurements run them)
  against the threaded BLAS: the stall a threaded BLAS call causes in the next Numba region.
- One Hessian-vector product on VGG-11-BN (its float64 copy) in float64 gradient evaluations, and the Lanczos top
  eigenvalue in float32 train steps: exact products (R-operator, the default) against central differences.

Candidates are timed alternately in one process (benchmarks/_timing.py) and reported as ratios of medians.
"""

from __future__ import annotations

import argparse

import numpy as np

from benchmarks._timing import describe_machine, format_table, time_alternating
from smoothnorm import measure, optim
from smoothnorm.kernels._blas import openblas_report
from smoothnorm.nn import models


def _vgg_rows(repeats: int, batch: int, width: float) -> list[dict]:
    rng = np.random.default_rng(0)
    net = models.vgg("vgg11", norm="batch", width=width, dtype=np.float32, seed=0)
    x = rng.standard_normal((batch, 3, 32, 32)).astype(np.float32)
    y = rng.integers(0, 10, size=batch)
    lr = 0.1
    opt = optim.SGD(lr=lr)
    etas = measure.step_grid(lr, "vgg")
    w0 = net.params.copy()

    def train_step():
        net.loss_and_grad(x, y, mode="train")
        opt.step(net.params, net.grads)
        net.params[...] = w0  # stay at one point so every candidate sees the same network

    def four_passes():
        for _ in range(4):
            net.loss_and_grad(x, y, mode="probe")

    loss, g = net.loss_and_grad(x, y, mode="probe")
    g = g.copy()
    candidates = {
        "train step": train_step,
        "4 x forward+backward": four_passes,
        "probe, 4 etas (grad given)": lambda: measure.probe_gradient_direction(net, x, y, etas, grad=g, loss=loss),
        "probe, 4 etas": lambda: measure.probe_gradient_direction(net, x, y, etas),
        "ICS, weight layers": lambda: measure.internal_covariate_shift(net, x, y, opt, grad=g),
        "ICS, all param layers": lambda: measure.internal_covariate_shift(
            net, x, y, opt, layers=list(net.layer_slices()), grad=g
        ),
    }
    times = time_alternating(candidates, repeats=repeats, warmup=1)
    base = times["train step"]
    passes = times["4 x forward+backward"]
    rows = []
    for name, t in times.items():
        rows.append({
            "what": f"VGG-11-BN w={width} b={batch}: {name}",
            "median s": f"{t:.3f}",
            "x train step": f"{t / base:.2f}",
            "x (4 f+b)": f"{t / passes:.3f}",
        })
    return rows


def _vgg_hessian_rows(repeats: int, batch: int, width: float) -> list[dict]:
    rng = np.random.default_rng(2)
    net = models.vgg("vgg11", norm="batch", width=width, dtype=np.float32, seed=0)
    x = rng.standard_normal((batch, 3, 32, 32)).astype(np.float32)
    y = rng.integers(0, 10, size=batch)
    opt = optim.SGD(lr=0.1)
    w0 = net.params.copy()
    net64 = net.astype(np.float64)
    exact = measure.hessian_operator(net, x, y)
    central = measure.hessian_operator(net, x, y, scheme="central")
    v = rng.standard_normal(net.num_params)
    products = {}

    def train_step():
        net.loss_and_grad(x, y, mode="train")
        opt.step(net.params, net.grads)
        net.params[...] = w0

    def top_eigenvalue(scheme):
        op = measure.hessian_operator(net, x, y, scheme=scheme)
        products[scheme] = (measure.top_eigenvalues(op, 1)[0], op.matvec_count)

    candidates = {
        "train step (float32)": train_step,
        "gradient (float64 copy)": lambda: net64.loss_and_grad(x, y, mode="probe"),
        "H v, exact": lambda: exact.matvec(v),
        "H v, central": lambda: central.matvec(v),
    }
    times = time_alternating(candidates, repeats=repeats, warmup=1)
    slow = time_alternating({"Lanczos top eigenvalue, exact": lambda: top_eigenvalue("exact"),
                             "Lanczos top eigenvalue, central": lambda: top_eigenvalue("central")},
                            repeats=max(1, repeats // 3), warmup=0)
    base, grad = times["train step (float32)"], times["gradient (float64 copy)"]
    rows = []
    for name, t in {**times, **slow}.items():
        scheme = name.rsplit(" ", 1)[-1]
        extra = ""
        if name.startswith("Lanczos"):
            value, count = products[scheme]
            extra = f" ({count} products, lambda_max {value:.6g})"
        rows.append({
            "what": f"VGG-11-BN w={width} b={batch}: {name}{extra}",
            "median s": f"{t:.3f}",
            "x train step": f"{t / base:.2f}",
            "x (4 f+b)": f"{t / grad:.2f} grads",
        })
    return rows


def _blas_rows(repeats: int) -> list[dict]:
    """Top-2 Hessian eigenvalues (Lanczos) of a 784-512-512-10 BatchNorm MLP, batch 512, float32: with every OpenBLAS
    held at one thread (what the measurement functions do, measure._common.one_blas_thread) against the threaded
    BLAS (the undecorated function), alternating."""
    from smoothnorm.measure import linalg

    rng = np.random.default_rng(0)
    net = models.mlp(784, [512, 512], 10, norm="batch", seed=0)
    x = rng.standard_normal((512, 784)).astype(np.float32)
    y = rng.integers(0, 10, size=512)
    op = measure.hessian_operator(net, x, y)
    values = {}

    def run(fn, key):
        def call():
            values[key] = fn(op, 2)
        return call

    times = time_alternating({"one BLAS thread": run(linalg.top_eigenvalues, "one"),
                              "threaded BLAS": run(linalg.top_eigenvalues.__wrapped__, "threaded")},
                             repeats=repeats, warmup=1)
    # The thread count changes BLAS's summation order inside ARPACK, so the values agree to rounding, not bits.
    diff = float(np.max(np.abs(values["one"] - values["threaded"]) / np.abs(values["threaded"])))
    base = times["threaded BLAS"]
    return [{"what": f"MLP-BN Hessian top-2 (Lanczos), {name} (values agree to {diff:.0e})",
             "median s": f"{t:.3f}", "x train step": f"{t / base:.2f} x threaded"} for name, t in times.items()]


def _dln_rows(repeats: int) -> list[dict]:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1000, 10))
    a = rng.standard_normal((10, 10))
    t = x @ a.T
    rows = []
    for norm in (None, "batch"):
        net = models.dln(25, 10, in_dim=10, out_dim=10, norm=norm, seed=0)
        opt = optim.SGD(lr=1e-6)
        w0 = net.params.copy()

        def train_step(net=net, opt=opt, w0=w0):
            net.loss_and_grad(x, t, mode="train")
            opt.step(net.params, net.grads)
            net.params[...] = w0

        products = {}

        def top_eigenvalue(scheme, net=net, products=products):
            op = measure.hessian_operator(net, x, t, scheme=scheme)
            measure.top_eigenvalues(op, 1)
            products[scheme] = op.matvec_count

        candidates = {
            "train step": train_step,
            "Lanczos top eigenvalue, exact": lambda: top_eigenvalue("exact"),
            "Lanczos top eigenvalue, central": lambda: top_eigenvalue("central"),
            "Lanczos top eigenvalue, forward": lambda: top_eigenvalue("forward"),
        }
        times = time_alternating(candidates, repeats=repeats, warmup=1)
        base = times["train step"]
        for name, value in times.items():
            scheme = name.rsplit(" ", 1)[-1]
            extra = f" ({products[scheme]} H-vector products)" if scheme in products else ""
            rows.append({
                "what": f"DLN 25x10 n=1000 norm={norm}: {name}{extra}",
                "median s": f"{value:.4f}",
                "x train step": f"{value / base:.1f}",
                "x (4 f+b)": "-",
            })
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--hessian-batch", type=int, default=32, help="batch of the VGG Hessian rows")
    parser.add_argument("--skip-vgg", action="store_true")
    parser.add_argument("--skip-hessian", action="store_true", help="leave out the VGG Hessian rows")
    parser.add_argument("--skip-dln", action="store_true", help="leave out the DLN rows")
    parser.add_argument("--skip-blas", action="store_true", help="leave out the BLAS-threads rows")
    args = parser.parse_args(argv)
    print(describe_machine())
    print("OpenBLAS: " + "; ".join(openblas_report()))
    rows = [] if args.skip_vgg else _vgg_rows(args.repeats, args.batch, args.width)
    if not (args.skip_vgg or args.skip_hessian):
        rows += _vgg_hessian_rows(args.repeats, args.hessian_batch, args.width)
    rows += [] if args.skip_dln else _dln_rows(args.repeats)
    rows += [] if args.skip_blas else _blas_rows(args.repeats)
    print(format_table(rows, ["what", "median s", "x train step", "x (4 f+b)"]))


if __name__ == "__main__":
    main()
