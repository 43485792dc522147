"""Whole train steps against PyTorch CPU and against the machine's sgemm rate.

- quick: the quick profile's shapes, VGG-11/13/16 at width 1/8 and 1/4, batch 64, float32, with and without
  BatchNorm, at 1 and 2 threads (algorithm="auto");
- full: VGG-11-BN, VGG-16-BN and VGG-16 at full width, batch 128 (float32), each with im2col and with
  algorithm="auto" convolutions (Winograd where kernels/winograd.winograd_pays says);
- small: the fixed cost per step, VGG-16 at width 1/8 on batches of 1 and 8 (1 thread);
- dln: the 25-layer DLN on 1000 samples (float64, with and without BatchNorm);
- fresh: the first step of a fresh process (Numba cache warm);
- fusion: BatchNorm + ReLU fused (the default) against the layers one by one, VGG-BN quick and full width;
- norms: noisy BatchNorm's and the Lp norms' train steps against BatchNorm's (VGG-16 quick shape, DLN), 1 thread.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python -m benchmarks.bench_train [--repeats 7] [--batch 128]
        [--threads 2] [--sections quick,small,full,dln,fresh] [--skip-vgg16] [--skip-dln]

A train step is forward, loss, backward and an SGD update. Ours, PyTorch's and a 1024^3 float32 NumPy matrix product
on the same threads are timed alternately in one process (medians over repeats); "torch/ours" is torch time / our
time (> 1: we are faster); "sgemm frac" is our step's direct-convolution FLOP rate (2 N C_out C_in 9 H W per pass,
three passes per layer but the first's two, plus the classifier) over the measured sgemm rate: above 1 means fewer
multiplications than direct convolution (Winograd) or better use of the machine than its BLAS.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")  # PyTorch's allocator on huge pages, as NumPy's arrays already are

import numpy as np  # noqa: E402

from benchmarks._timing import (  # noqa: E402
    describe_machine,
    format_table,
    sgemm_candidate,
    time_alternating,
    torch_available,
)
from smoothnorm import optim
from smoothnorm.kernels._blas import openblas_report  # noqa: E402
from smoothnorm.nn import models


def our_step(net, opt, x, y):
    def fn():
        net.loss_and_grad(x, y, mode="train")
        opt.step(net.params, net.grads)

    return fn


def torch_vgg(name: str, width: float = 1.0, norm: bool = True):
    import torch

    cfg = models.VGG_CONFIGS[name]
    layers, c = [], 3
    for item in cfg:
        if item == "M":
            layers.append(torch.nn.MaxPool2d(2, 2))
        else:
            out = round(item * width)
            layers += [torch.nn.Conv2d(c, out, 3, padding=1)]
            layers += [torch.nn.BatchNorm2d(out)] if norm else []
            layers += [torch.nn.ReLU()]
            c = out
    return torch.nn.Sequential(*layers, torch.nn.Flatten(), torch.nn.Linear(round(512 * width), 10))


def torch_dln(norm: bool):
    import torch

    layers = []
    for i in range(25):
        layers.append(torch.nn.Linear(10, 10, bias=False))
        if norm and i < 24:
            layers.append(torch.nn.BatchNorm1d(10))
    return torch.nn.Sequential(*layers).double()


def direct_conv_flops(name: str, width: float, batch: int) -> float:
    """FLOPs of one train step of the CIFAR VGG `name` counted as direct convolution: 2 N C_out C_in 9 H W per pass,
    forward, input gradient and weight gradient (no input gradient for the first layer), plus the classifier."""
    total = 0.0
    for i, (c_in, c_out, size) in enumerate(models.conv_shapes(name, width)):
        total += (2 if i == 0 else 3) * 2.0 * batch * c_out * c_in * 9 * size * size
    return total + 3 * 2.0 * batch * round(512 * width) * 10


def quick_shapes(args, have_torch: bool) -> list[dict]:
    """The quick profile's networks at 1 and 2 threads: ours, PyTorch and sgemm alternately, per row."""
    cases = [(name, width, norm, 64) for width in (1 / 8, 1 / 4) for name in ("vgg11", "vgg13", "vgg16")
             for norm in ("batch", None)]
    return [row for threads in (1, 2) for row in _vgg_rows(args, have_torch, threads, cases)]


def small_batches(args, have_torch: bool) -> list[dict]:
    """The fixed cost per step: VGG-16 at width 1/8 on batches of 1 and 8, with and without BatchNorm, 1 thread."""
    cases = [("vgg16", 1 / 8, norm, batch) for batch in (1, 8) for norm in (None, "batch")]
    return _vgg_rows(args, have_torch, 1, cases)


def fusion(args) -> list[dict]:
    """BatchNorm + ReLU in one kernel each way (the default) against the two layers one by one
    (net.fuse_norm_relu = False), alternately in one process: VGG-BN at the quick shapes (1 thread) and at full
    width (batch --batch, --threads)."""
    import numba

    rng = np.random.default_rng(0)
    cases = [(name, 1 / 8, 64, 1) for name in ("vgg11", "vgg16")] + [("vgg16", 1 / 4, 64, 1)]
    cases += [("vgg16", 1.0, args.batch, args.threads)]
    rows = []
    for name, width, batch, threads in cases:
        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
        x = rng.standard_normal((batch, 3, 32, 32)).astype(np.float32)
        y = rng.integers(0, 10, size=batch)
        fused = models.vgg(name, norm="batch", width=width)
        plain = models.vgg(name, norm="batch", width=width)
        plain.fuse_norm_relu = False
        cands = {"fused": our_step(fused, optim.SGD(lr=1e-3), x, y),
                 "layers": our_step(plain, optim.SGD(lr=1e-3), x, y)}
        t = time_alternating(cands, repeats=args.repeats * (3 if width < 1 else 1), warmup=2, pause=args.pause)
        rows.append({"work": f"{name}-bn w{'1' if width == 1 else f'1/{round(1 / width)}'} b{batch}, {threads} thr",
                     "fused (ms)": f"{t['fused'] * 1e3:.2f}", "layers (ms)": f"{t['layers'] * 1e3:.2f}",
                     "layers/fused": f"{t['layers'] / t['fused']:.3f}"})
    numba.set_num_threads(min(args.threads, numba.config.NUMBA_NUM_THREADS))
    return rows


def norm_steps(args) -> list[dict]:
    """A train step with each batch normalization of the paper against BatchNorm's, alternately in one process, as
    the quick profile runs them: VGG-16 w1/8 batch 64 float32 and the 25-layer DLN on 1000 samples float64, one
    thread. Every step draws fresh layer noise first (noisy BatchNorm's per-step draw, as the trainer does)."""
    import numba

    numba.set_num_threads(1)
    rng = np.random.default_rng(0)
    noise_rng = np.random.default_rng(1)
    rows = []
    x_img = rng.standard_normal((64, 3, 32, 32)).astype(np.float32)
    y_img = rng.integers(0, 10, size=64)
    x_dln = rng.standard_normal((1000, 10))
    y_dln = x_dln @ rng.standard_normal((10, 10)).T
    for model, norms in (("vgg16 w1/8 b64", ("batch", "noisy_batch", "l1", "l2", "linf")),
                         ("DLN 25x(10x10)", ("batch", "l1", "l2", "linf"))):
        cands = {}
        for norm in norms:
            if model.startswith("vgg"):
                net, x, y, lr = models.vgg("vgg16", norm=norm, width=1 / 8), x_img, y_img, 1e-3
            else:
                net, x, y, lr = models.dln(25, 10, in_dim=10, out_dim=10, norm=norm), x_dln, y_dln, 1e-6
            step = our_step(net, optim.SGD(lr=lr), x, y)

            def fn(net=net, step=step):
                net.resample_noise(noise_rng)
                step()

            cands[norm] = fn
        t = time_alternating(cands, repeats=args.repeats * 3, warmup=2, pause=args.pause)
        for norm in norms:
            rows.append({"work": f"{model}, {norm}, 1 thr", "ms": f"{t[norm] * 1e3:.2f}",
                         "/ batch": f"{t[norm] / t['batch']:.3f}"})
    numba.set_num_threads(min(args.threads, numba.config.NUMBA_NUM_THREADS))
    return rows


def _vgg_rows(args, have_torch: bool, threads: int, cases) -> list[dict]:
    """One row per (arch, width, norm, batch) case at `threads`: ours, PyTorch and sgemm timed alternately."""
    import numba

    rng = np.random.default_rng(0)
    rows = []
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    if have_torch:
        import torch

        torch.set_num_threads(threads)
    sgemm, sgemm_flops = sgemm_candidate(threads)
    for name, width, norm, batch in cases:
        x = rng.standard_normal((batch, 3, 32, 32)).astype(np.float32)
        y = rng.integers(0, 10, size=batch)
        cands = {"ours": our_step(models.vgg(name, norm=norm, width=width), optim.SGD(lr=1e-3), x, y),
                 "sgemm": sgemm}
        if have_torch:
            cands["torch"] = torch_step(torch_vgg(name, width, norm is not None), x, y, "ce")
        t = time_alternating(cands, repeats=args.repeats * 3, warmup=3, pause=args.pause)
        rate = direct_conv_flops(name, width, batch) / t["ours"]
        row = _row(f"{name}{'-bn' if norm else ''} w1/{round(1 / width)} b{batch}, {threads} thr", t, imgs=batch)
        row["sgemm frac"] = f"{rate / (sgemm_flops / t['sgemm']):.2f}"
        row["sgemm GF/s"] = f"{sgemm_flops / t['sgemm'] / 1e9:.0f}"
        rows.append(row)
    numba.set_num_threads(min(args.threads, numba.config.NUMBA_NUM_THREADS))
    if have_torch:
        torch.set_num_threads(args.threads)
    return rows


def torch_step(model, x, y, loss_kind: str):
    import torch

    opt = torch.optim.SGD(model.parameters(), lr=1e-6)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)

    def fn():
        opt.zero_grad(set_to_none=True)
        out = model(xt)
        loss = torch.nn.functional.cross_entropy(out, yt) if loss_kind == "ce" else ((out - yt) ** 2).sum()
        loss.backward()
        opt.step()

    return fn


def first_step_of_fresh_process() -> float:
    """Seconds for import + build + first VGG-11-BN train step in a new interpreter (Numba's cache already warm)."""
    code = (
        "import time; t=time.perf_counter(); import numpy as np; from smoothnorm import models, optim;"
        "net=models.vgg('vgg11', norm='batch'); opt=optim.SGD(lr=0.1);"
        "x=np.zeros((128,3,32,32),np.float32); y=np.zeros(128,np.int64);"
        "net.loss_and_grad(x,y); opt.step(net.params, net.grads); print(time.perf_counter()-t)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)  # make sure the cache is warm
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return float(out.stdout.strip())


def peak_memory_of_step(batch: int) -> float:
    """MiB: the peak resident memory of a fresh process that builds VGG-16-BN and takes three train steps at
    `batch` (float32), against the same process after building the network and its data (the step's own share)."""
    code = (
        "import resource, numpy as np; from smoothnorm import models, optim;"
        f"net=models.vgg('vgg16', norm='batch'); opt=optim.SGD(lr=0.1); n={batch};"
        "x=np.ones((n,3,32,32),np.float32); y=np.zeros(n,np.int64);"
        "before=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss;"
        "[(net.loss_and_grad(x,y), opt.step(net.params, net.grads)) for _ in range(3)];"
        "print(before, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    before, after = (int(v) / 1024 for v in out.stdout.split())
    return after, after - before


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-vgg16", action="store_true")
    parser.add_argument("--skip-dln", action="store_true")
    parser.add_argument("--pause", type=float, default=0.2,
                        help="seconds between timed calls in the quick section, so idle OpenMP threads stop spinning")
    parser.add_argument("--sections", default="quick,small,full,dln,fresh",
                        help="comma-separated: quick (the quick profile's shapes at 1 and 2 threads), small (batches "
                             "of 1 and 8), full, dln, fresh, fusion (BatchNorm + ReLU fused against layer by layer), "
                             "norms (each batch norm's train step against BatchNorm's)")
    args = parser.parse_args(argv)
    import numba

    numba.set_num_threads(args.threads)
    have_torch = torch_available()
    if have_torch:
        import torch

        torch.set_num_threads(args.threads)
    print(describe_machine())
    print("OpenBLAS: " + "; ".join(openblas_report()))
    sections = set(args.sections.split(","))
    known = ("quick", "small", "full", "dln", "fresh", "fusion", "norms")
    unknown = sections - set(known)
    if unknown:
        parser.error(f"--sections: unknown {sorted(unknown)}; expected some of {', '.join(known)}")
    columns = ["work", "ours (ms)", "torch (ms)", "torch/ours", "ours img/s", "sgemm frac", "sgemm GF/s"]
    if "quick" in sections:
        print(format_table(quick_shapes(args, have_torch), columns))
    if "small" in sections:
        print(format_table(small_batches(args, have_torch), columns))
    if "fusion" in sections:
        print(format_table(fusion(args), ["work", "fused (ms)", "layers (ms)", "layers/fused"]))
    if "norms" in sections:
        print(format_table(norm_steps(args), ["work", "ms", "/ batch"]))
    rng = np.random.default_rng(0)
    rows = []
    vggs = [("vgg11", "batch")] + ([] if args.skip_vgg16 else [("vgg16", "batch"), ("vgg16", None)])
    sgemm, sgemm_flops = sgemm_candidate(args.threads)
    for name, norm in vggs if "full" in sections else ():
        x = rng.standard_normal((args.batch, 3, 32, 32)).astype(np.float32)
        y = rng.integers(0, 10, size=args.batch)
        cands = {"sgemm": sgemm}
        for algorithm in ("im2col", "auto"):
            net = models.vgg(name, norm=norm, algorithm=algorithm)
            cands[algorithm] = our_step(net, optim.SGD(lr=1e-3), x, y)
        if have_torch:
            cands["torch"] = torch_step(torch_vgg(name, norm=norm is not None), x, y, "ce")
        t = time_alternating(cands, repeats=args.repeats, warmup=1)
        label = f"{name}{'-bn' if norm else ''} train step, batch {args.batch}, float32"
        for algorithm in ("im2col", "auto"):
            row = _row(f"{label}, {algorithm}", {"ours": t[algorithm]} | {k: t[k] for k in t if k == "torch"},
                       imgs=args.batch)
            rate = direct_conv_flops(name, 1.0, args.batch) / t[algorithm]
            row["sgemm frac"] = f"{rate / (sgemm_flops / t['sgemm']):.2f}"
            row["sgemm GF/s"] = f"{sgemm_flops / t['sgemm'] / 1e9:.0f}"
            rows.append(row)
    for norm in (False, True) if not args.skip_dln and "dln" in sections else ():
        x = rng.standard_normal((1000, 10))
        y = x @ rng.standard_normal((10, 10)).T
        net = models.dln(25, 10, in_dim=10, out_dim=10, norm="batch" if norm else None)
        cands = {"ours": our_step(net, optim.SGD(lr=1e-6), x, y)}
        if have_torch:
            cands["torch"] = torch_step(torch_dln(norm), x, y, "mse")
        t = time_alternating(cands, repeats=args.repeats * 10, warmup=3)
        rows.append(_row(f"DLN 25x(10x10){' + BN' if norm else ''}, 1000 samples, float64", t))
    if rows:
        print(format_table(rows, columns))
    if args.skip_dln or "fresh" not in sections:
        return
    t0 = time.perf_counter()
    first = first_step_of_fresh_process()
    print(f"\nfresh process, import + build VGG-11-BN + first train step (cache warm): {first:.2f} s "
          f"(measured in {time.perf_counter() - t0:.1f} s)")
    peak, step = peak_memory_of_step(args.batch)
    print(f"peak memory of a fresh process taking VGG-16-BN train steps at batch {args.batch}: {peak:.0f} MiB "
          f"({step:.0f} MiB above the built network and its batch)")


def _row(work: str, t: dict, imgs: int | None = None) -> dict:
    row = {"work": work, "ours (ms)": f"{t['ours'] * 1e3:.2f}"}
    if "torch" in t:
        row["torch (ms)"] = f"{t['torch'] * 1e3:.2f}"
        row["torch/ours"] = f"{t['torch'] / t['ours']:.2f}"
    if imgs:
        row["ours img/s"] = f"{imgs / t['ours']:.0f}"
    return row


if __name__ == "__main__":
    main()
