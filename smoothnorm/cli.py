"""Command-line interface: `smoothnorm list | run | reproduce | plot | claims | info | data fetch`."""

from __future__ import annotations

import argparse
import re
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


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _specs(args, names: list[str] | None):
    from smoothnorm import spec as spec_module

    paths = spec_module.list_specs(args.specs)
    if not paths:
        raise spec_module.SpecError(f"no specs (*.toml) in {args.specs or spec_module.default_spec_folder()}")
    if names:
        by_name = {p.stem: p for p in paths}
        chosen = []
        for name in names:
            if name.endswith(".toml") or "/" in name:
                chosen.append(name)
                continue
            # "fig4" names fig4_vgg_landscape; "fig3" names both panels' specs fig3a_... and fig3b_...
            matches = [p for stem, p in by_name.items()
                       if stem == name or re.match(re.escape(name) + r"[a-z]?_", stem)]
            if not matches:
                raise spec_module.SpecError(f"--only/SPEC {name!r}: no such spec; specs: {sorted(by_name)}")
            chosen.extend(matches)
        paths = chosen
    seeds = getattr(args, "seeds", None)
    return [spec_module.load_spec(p, args.profile, args.set, seeds=seeds) for p in paths]


def _list(args) -> int:
    from smoothnorm import spec as spec_module

    for path in spec_module.list_specs(args.specs):
        spec = spec_module.load_spec(path, "quick")
        print(f"{path.stem:28s} {spec.title}")
    return 0


def _run(args) -> int:
    from smoothnorm import executors, experiment, plots

    specs = _specs(args, args.spec)
    root = experiment.results_root(args.runs, args.profile)
    executors.run_specs(specs, root, progress=_progress)
    if not args.no_plot:
        for spec in specs:
            for path in plots.draw_spec(spec, root, args.figures):
                print(path)
    _verdicts(specs, root, args)
    return 0


def _reproduce(args) -> int:
    from smoothnorm import executors, experiment, plots

    specs = _specs(args, args.only.split(",") if args.only else None)
    root = experiment.results_root(args.runs, args.profile)
    t0 = __import__("time").perf_counter()
    executors.run_specs(specs, root, progress=_progress)
    for spec in specs:
        for path in plots.draw_spec(spec, root, args.figures):
            print(path)
    _progress(f"reproduce: {len(specs)} figures in {__import__('time').perf_counter() - t0:.0f}s")
    _verdicts(specs, root, args)
    return 0


def _verdicts(specs, root, args) -> list:
    """Evaluate the specs' claims on the stored runs, print the verdicts, write CLAIMS.md and claims.json."""
    from smoothnorm import claims

    results = [r for spec in specs for r in claims.evaluate_spec(spec, root)]
    if not results:
        return results
    print(claims.verdict_table(results))
    for path in claims.write_claims(results, args.figures, profile=args.profile):
        print(path)
    return results


def _claims(args) -> int:
    from smoothnorm import claims, experiment

    if args.markdown or args.readme:
        source = args.markdown if isinstance(args.markdown, str) else f"{args.figures}/claims.json"
        table = claims.markdown_table(claims.read_claims(source), figures_link=args.link)
        if args.readme:
            print(claims.update_readme(args.readme, table))
        else:
            print(table, end="")
        return 0
    specs = _specs(args, args.only.split(",") if args.only else None)
    results = _verdicts(specs, experiment.results_root(args.runs, args.profile), args)
    if not results:
        print("no claims in the chosen specs", file=sys.stderr)
    return 0


def _plot(args) -> int:
    from smoothnorm import experiment, plots

    specs = _specs(args, args.only.split(",") if args.only else None)
    root = experiment.results_root(args.runs, args.profile)
    for spec in specs:
        for path in plots.draw_spec(spec, root, args.figures):
            print(path)
    return 0


def _data_fetch(args) -> int:
    from smoothnorm import data

    path = data.fetch_cifar10(args.root)
    print(path)
    return 0


def _add_common(p, *, spec_selection: bool = True) -> None:
    p.add_argument("--profile", default="quick", choices=("tiny", "quick", "paper"),
                   help="settings profile: tiny (tests), quick (synthetic data, minutes), paper (the paper's settings)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a [base] setting for every run, e.g. --set steps=200 (repeatable)")
    p.add_argument("--runs", default=None, help="folder for run directories (default: $SMOOTHNORM_RUNS or ./runs)")
    p.add_argument("--figures", default="figures", help="folder for figures (default: ./figures)")
    p.add_argument("--specs", default=None, help="folder of spec files (default: ./experiments)")
    p.add_argument("--seeds", type=int, default=None, metavar="N",
                   help="run every run for N seeds (base seed .. base seed + N - 1); overrides a spec's seeds")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="smoothnorm",
        description="Reproduce and extend Santurkar et al. 2018, 'How Does Batch Normalization Help Optimization?'",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("list", help="list the experiment specs (one per paper figure)")
    p.add_argument("--specs", default=None, help="folder of spec files (default: ./experiments)")
    p.set_defaults(func=_list)
    p = sub.add_parser("run", help="run one or more specs (resumes; skips finished runs) and draw their figures")
    p.add_argument("spec", nargs="+", help="spec names (fig4 or fig4_vgg_landscape) or paths to .toml files")
    p.add_argument("--no-plot", action="store_true", help="train and record only")
    _add_common(p)
    p.set_defaults(func=_run)
    p = sub.add_parser("reproduce", help="run every spec and draw every figure")
    p.add_argument("--only", default=None, help="comma-separated spec names, e.g. fig4,fig10")
    _add_common(p)
    p.set_defaults(func=_reproduce)
    p = sub.add_parser("plot", help="redraw figures from stored runs without training")
    p.add_argument("--only", default=None, help="comma-separated spec names")
    _add_common(p)
    p.set_defaults(func=_plot)
    p = sub.add_parser("claims", help="evaluate the specs' claims on stored runs (no training); write CLAIMS.md")
    p.add_argument("--only", default=None, help="comma-separated spec names")
    p.add_argument("--markdown", nargs="?", const=True, default=None, metavar="CLAIMS_JSON",
                   help="print the findings table from claims.json (default: <figures>/claims.json) and exit")
    p.add_argument("--readme", default=None, metavar="README_MD",
                   help="write that table into README_MD between its claims-table markers (atomically) and exit")
    p.add_argument("--link", default="figures/", help="prefix of figure links in --markdown (default: figures/)")
    _add_common(p)
    p.set_defaults(func=_claims)
    p = sub.add_parser("info", help="print versions, thread counts, Numba threading layer and BLAS")
    p.set_defaults(func=_info)
    p = sub.add_parser("data", help="data sets")
    dsub = p.add_subparsers(dest="data_command", required=True)
    f = dsub.add_parser("fetch", help="download a data set into the cache ($SMOOTHNORM_DATA or ~/.cache/smoothnorm)")
    f.add_argument("dataset", choices=("cifar10",))
    f.add_argument("--root", default=None, help="target folder (default: the cache)")
    f.set_defaults(func=_data_fetch)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("interrupted: completed steps are checkpointed; run the same command again to resume", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
