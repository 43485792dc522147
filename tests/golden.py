"""The golden set: fingerprints of a few tiny-profile runs, committed in tests/golden.json, that CI recomputes at
1 and 2 threads (tests/test_golden.py). Any change to a kernel's arithmetic or summation order changes them.

Regenerate on purpose, after a change that alters bits, and say why in the commit:

    python -m tests.golden

It trains the golden runs at 1 and 2 threads, checks that both give the same bits, and rewrites tests/golden.json
with their fingerprints and the machine they were made on. The check runs only on a machine with the same CPU,
BLAS kernels and NumPy, SciPy and Numba versions (another machine may round differently: docs/PROTOCOL.md).
"""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
from pathlib import Path

import numba
import numpy as np

from smoothnorm import __version__
from smoothnorm.kernels._blas import openblas_report
from smoothnorm.runs import runner
from smoothnorm.runs import spec as spec_module
from smoothnorm.runs.provenance import machine
from smoothnorm.runs.store import CHECKPOINT, load_run, read_npz

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).resolve().parent / "golden.json"
# (spec, --set overrides) at the tiny profile: two deep linear network specs (float64, with and without norms;
# landscape and ICS probes) and one VGG spec (float32 VGG-16 at width 1/16, im2col and Winograd, BatchNorm).
SPECS = [("fig10_dln_landscape", []), ("fig3b_dln_ics", []), ("fig4_vgg_landscape", [])]


def machine_key() -> dict:
    """What the bits depend on besides our code: the instruction set, the BLAS kernels OpenBLAS picked for this CPU,
    and the numerical libraries' versions. (Not the CPU's model name: machines of one kind may come with different
    models of the same instruction set, and the check should run on all of them.)"""
    import scipy
    import scipy.linalg  # noqa: F401 (maps SciPy's OpenBLAS into the process, so openblas_report sees it)

    cores = sorted({part for line in openblas_report() for part in line.split() if part.startswith("corename=")})
    return {"isa": machine()["isa"], "numpy": np.__version__, "scipy": scipy.__version__, "numba": numba.__version__,
            "openblas": cores}


def _digest(a: np.ndarray) -> str:
    a = np.ascontiguousarray(a)
    return hashlib.sha256(f"{a.dtype.str}{a.shape}".encode() + a.tobytes()).hexdigest()[:16]


def fingerprint(root: Path) -> dict:
    """Per run id: digests of every metric column (but wall time), probe array and checkpointed array of the
    network, optimizer and probes, and the last training loss written exactly (float.hex) for reading."""
    out = {}
    for path in sorted(p for p in root.iterdir() if p.is_dir()):
        run = load_run(path)
        checkpoint = read_npz(path / CHECKPOINT)
        out[path.name] = {
            "loss": float(run.metrics["loss"][-1]).hex(),
            "metrics": {k: _digest(v) for k, v in sorted(run.metrics.items()) if k != "time"},
            "probes": {k: _digest(v) for k, v in sorted(run.probes.items())},
            "checkpoint": {k: _digest(v) for k, v in sorted(checkpoint.items())
                           if k.startswith(("net/", "optim/", "probe/"))},
        }
    return out


def train(root: Path, threads: int) -> Path:
    """Train the golden runs into root with `threads` Numba threads (BLAS calls run on one thread anyway)."""
    before = numba.get_num_threads()
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    try:
        for name, overrides in SPECS:
            for run in spec_module.load_spec(ROOT / "experiments" / f"{name}.toml", "tiny", overrides).runs:
                runner.execute_run(run, root)
    finally:
        numba.set_num_threads(before)
    return root


def differences(expected: dict, got: dict) -> list[str]:
    """What differs between two fingerprints, one line per run and array."""
    lines = []
    for run in sorted(set(expected) | set(got)):
        if run not in got or run not in expected:
            lines.append(f"{run}: {'missing' if run not in got else 'not in the golden file'}")
            continue
        for part in ("metrics", "probes", "checkpoint"):
            for key in sorted(set(expected[run][part]) | set(got[run][part])):
                if expected[run][part].get(key) != got[run][part].get(key):
                    lines.append(f"{run}: {part} {key}")
    return lines


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        one = fingerprint(train(Path(tmp) / "one", 1))
        two = fingerprint(train(Path(tmp) / "two", 2))
    diff = differences(one, two)
    if diff:
        print("1 and 2 threads differ; not writing the golden file:\n  " + "\n  ".join(diff), file=sys.stderr)
        return 1
    GOLDEN.write_text(json.dumps({"smoothnorm": __version__, "machine": machine_key(), "runs": one}, indent=1)
                      + "\n")
    print(f"wrote {GOLDEN} ({len(one)} runs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
