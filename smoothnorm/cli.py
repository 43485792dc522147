"""Command-line interface: `smoothnorm info` (more subcommands arrive with the experiment runner)."""

from __future__ import annotations

import argparse
import sys


def _info(args) -> int:
    import platform

    import numba
    import numpy as np
    import scipy

    import smoothnorm

    print(f"smoothnorm {smoothnorm.__version__}")
    print(f"python     {platform.python_version()} ({platform.machine()}, {platform.system()})")
    print(f"numpy      {np.__version__}")
    print(f"scipy      {scipy.__version__}")
    print(f"numba      {numba.__version__}")
    print(f"threads    numba={numba.get_num_threads()} (NUMBA_NUM_THREADS)")
    try:
        layer = numba.threading_layer()
    except ValueError:
        layer = "not yet initialised (no parallel kernel has run)"
    print(f"threading  {layer}")
    try:
        from threadpoolctl import threadpool_info

        for pool in threadpool_info():
            print(f"blas       {pool.get('internal_api')} {pool.get('version')} threads={pool.get('num_threads')}")
    except ImportError:
        print("blas       (install threadpoolctl to list BLAS libraries and threads)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="smoothnorm", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("info", help="print versions, thread counts, Numba threading layer and BLAS")
    p.set_defaults(func=_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
