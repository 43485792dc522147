"""Command-line interface: `smoothnorm list | run | reproduce | plot | claims | info | data fetch`."""

from __future__ import annotations

import argparse
import os
import re
import signal
import sys
from pathlib import Path


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


def _execute(args, specs, root) -> None:
    """Train the runs the specs need on the executor the flags choose, with a progress display on stderr."""
    from smoothnorm.runs import executors
    from smoothnorm.runs.progress import ProgressDisplay
    from smoothnorm.runs.spec import merge_runs

    workers = args.workers if args.workers is not None or args.scheduler is not None else _default_workers()
    pending = executors.pending_runs(merge_runs(specs), root) if workers is None and args.scheduler is None else None
    with executors.make_executor(workers, args.scheduler, args.threads_per_run, pending,
                                 stale_after=args.lease_timeout) as executor:
        with ProgressDisplay() as display:
            executors.run_specs(specs, root, progress=display, executor=executor)


def _default_workers() -> int | None:
    """$SMOOTHNORM_WORKERS: the --workers to use when neither --workers nor --scheduler is given (None: unset)."""
    text = os.environ.get("SMOOTHNORM_WORKERS", "").strip()
    if not text:
        return None
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"$SMOOTHNORM_WORKERS: expected a positive integer (the default for --workers), got {text!r}")
    return int(text)


def _limit_threads_early(args) -> None:
    """--threads-per-run without Dask: set the thread variables before NumPy, BLAS and Numba load, so BLAS obeys
    too (later, only Numba's threads can be lowered)."""
    threads = getattr(args, "threads_per_run", None)
    if threads is None or args.workers not in (None, 1) or args.scheduler is not None:
        return
    if not any(name in sys.modules for name in ("numpy", "numba")):
        from smoothnorm.runs.executors import thread_environment

        os.environ.update(thread_environment(threads))


def _specs(args, names: list[str] | None):
    from smoothnorm.runs import schema
    from smoothnorm.runs import spec as spec_module

    if getattr(args, "all", False):
        groups = tuple(spec_module.SPEC_GROUPS)
    else:
        groups = ("paper", "study") if getattr(args, "study", False) else ("paper",)
    paths = spec_module.list_specs(args.specs, groups)
    if not paths:
        raise schema.SpecError(f"no specs (*.toml) in {args.specs or spec_module.default_spec_folder()}")
    if names:
        # A name may be any group's spec (study/optimizers, examples/...); the paper's win on a clash.
        by_name = {}
        for p in spec_module.list_specs(args.specs, tuple(spec_module.SPEC_GROUPS)):
            by_name.setdefault(p.stem, p)
        chosen = []
        for name in names:
            if name.endswith(".toml") or "/" in name:
                chosen.append(name)
                continue
            # "fig4" names fig4_vgg_landscape; "fig3" names both panels' specs fig3a_... and fig3b_...
            matches = [p for stem, p in by_name.items()
                       if stem == name or re.match(re.escape(name) + r"[a-z]?_", stem)]
            if not matches:
                raise schema.SpecError(f"--only/SPEC {name!r}: no such spec; specs: {sorted(by_name)}")
            chosen.extend(matches)
        paths = chosen
    seeds = getattr(args, "seeds", None)
    if seeds is None and getattr(args, "command", None) in ("claims", "plot"):
        from smoothnorm.runs.runner import results_root

        root = results_root(args.runs, args.profile)
        return [_spec_with_stored_seeds(p, args, root) for p in paths]
    return [spec_module.load_spec(p, args.profile, args.set, seeds=seeds) for p in paths]


def _spec_with_stored_seeds(path, args, root: Path):
    """For claims and plot without --seeds: the spec widened to seeds base .. base + N - 1 while the runs folder
    holds every run of the next seed (results of `--seeds N`); the spec's own seeds when it holds no more."""
    from smoothnorm.runs import spec as spec_module

    spec = spec_module.load_spec(path, args.profile, args.set)
    count = len({run.settings["seed"] for run in spec.runs})
    while True:
        wider = spec_module.load_spec(path, args.profile, args.set, seeds=count + 1)
        last = max((run.settings["seed"] for run in wider.runs), default=None)
        added = [run for run in wider.runs if run.settings["seed"] == last]
        if not added or not all((root / run.run_id / "config.json").exists() for run in added):
            return spec
        spec, count = wider, count + 1


_GROUP_TITLES = {
    "paper": "Paper figures (smoothnorm reproduce)",
    "study": "Optimization study (experiments/study; smoothnorm reproduce --study, or run NAME)",
    "examples": "Examples beyond the paper (experiments/examples; smoothnorm run NAME)",
    "beyond": "Follow-up papers (experiments/beyond; smoothnorm run NAME)",
}


def _list(args) -> int:
    from smoothnorm.runs import spec as spec_module

    for group in spec_module.SPEC_GROUPS:
        paths = spec_module.list_specs(args.specs, (group,))
        if not paths:
            continue
        print(_GROUP_TITLES[group])
        for path in paths:
            spec = spec_module.load_spec(path, "quick")
            print(f"  {path.stem:30s} {spec.title}")
    return 0


def _variant(args, specs) -> str:
    """'' when this command's results may take the published names in the figures folder (an explicit --figures
    always may), else a name saying what differs from the published entries (claims.report.variant_name)."""
    if getattr(args, "figures_explicit", True):
        return ""
    from smoothnorm.claims.report import variant_name

    seeds = {spec.name: {int(run.settings["seed"]) for run in spec.runs} for spec in specs}
    return variant_name(args.figures, args.profile, args.set, _runs_root_setting(args), seeds)


def _runs_root_setting(args) -> str | None:
    """--runs when it names another folder than the profile's default ($SMOOTHNORM_RUNS or ./runs), else None."""
    from smoothnorm.runs.runner import runs_folder

    default = runs_folder()
    if args.runs and Path(args.runs).resolve() != default.resolve():
        # As a path from the current folder when inside it, so ./results, results and its absolute path are one.
        path = Path(args.runs).resolve()
        here = Path.cwd().resolve()
        return path.relative_to(here).as_posix() if path.is_relative_to(here) else str(args.runs)
    return None


def _draw(specs, root, args, variant: str) -> None:
    from smoothnorm import plots

    for spec in specs:
        for path in plots.draw_spec(spec, root, args.figures, variant):
            print(path)


def _say_variant(args, variant: str) -> None:
    if variant:
        _progress(f"these results differ from the published ones in {args.figures}/ ({variant}): figures and claims "
                  f"are written under names with .{variant}; pass --figures DIR to write them elsewhere")


def _estimate(args, specs) -> int:
    """--estimate: time each kind of run briefly on this machine and print what the specs' runs would cost."""
    from smoothnorm.runs import estimate, executors

    result = estimate.estimate(specs, progress=_progress)
    workers = sorted({1, executors.cores(), *([args.workers] if args.workers else [])})
    print(f"Estimate for {args.profile} profile ({len(specs)} spec{'s' if len(specs) != 1 else ''}); nothing was "
          "trained.\n")
    print(estimate.report(specs, result, workers))
    return 0


def _run(args) -> int:
    from smoothnorm.runs import runner

    specs = _specs(args, args.spec)
    if args.estimate:
        return _estimate(args, specs)
    root = runner.results_root(args.runs, args.profile)
    variant = _variant(args, specs)
    _execute(args, specs, root)
    if not args.no_plot:
        _draw(specs, root, args, variant)
    _stable_rates(specs, root)
    _verdicts(specs, root, args, variant)
    _say_variant(args, variant)
    return 0


def _reproduce(args) -> int:
    from smoothnorm.runs import runner

    specs = _specs(args, args.only.split(",") if args.only else None)
    if args.estimate:
        return _estimate(args, specs)
    root = runner.results_root(args.runs, args.profile)
    variant = _variant(args, specs)
    t0 = __import__("time").perf_counter()
    _execute(args, specs, root)
    _draw(specs, root, args, variant)
    _progress(f"reproduce: {len(specs)} figures in {__import__('time').perf_counter() - t0:.0f}s")
    _stable_rates(specs, root)
    _verdicts(specs, root, args, variant)
    _say_variant(args, variant)
    return 0


def _stable_rates(specs, root) -> None:
    """Print each learning-rate sweep's largest stable learning rate per seed (smoothnorm.runs.sweeps)."""
    from smoothnorm.runs import sweeps

    for spec in specs:
        if spec.sweeps:
            print(f"{spec.name}: " + sweeps.format_stable_rates(sweeps.stable_rates(spec, root),
                                                                 spec.sweep["criterion"], spec.sweep["window"]))


def _verdicts(specs, root, args, variant: str) -> list:
    """Evaluate the specs' claims on the stored runs, print the verdicts, write CLAIMS.md and claims.json (under
    the variant's names when it is not ''), and warn when the runs come from different commits or a modified tree."""
    from smoothnorm.claims import evaluate as claims_eval
    from smoothnorm.claims import report as claims_report
    from smoothnorm.runs.provenance import mixed_note

    results = [r for spec in specs for r in claims_eval.evaluate_spec(spec, root)]
    if not results:
        return results
    print(claims_report.verdict_table(results))
    settings = {k: v for k, v in (("overrides", list(args.set)), ("runs_root", _runs_root_setting(args))) if v}
    for path in claims_report.write_claims(results, args.figures, profile=args.profile, variant=variant,
                                           settings=settings):
        print(path)
    note = mixed_note([p for r in results for p in r.provenance.values()])
    if note:
        print(f"warning: {note}", file=sys.stderr)
    return results


def _claims(args) -> int:
    from smoothnorm.claims import report as claims_report
    from smoothnorm.runs import runner

    if args.markdown or args.readme:
        source = args.markdown if isinstance(args.markdown, str) else f"{args.figures}/claims.json"
        table = claims_report.markdown_table(claims_report.read_claims(source), figures_link=args.link)
        if args.readme:
            print(claims_report.update_readme(args.readme, table))
        else:
            print(table, end="")
        return 0
    specs = _specs(args, args.only.split(",") if args.only else None)
    variant = _variant(args, specs)
    results = _verdicts(specs, runner.results_root(args.runs, args.profile), args, variant)
    _say_variant(args, variant)
    if not results:
        print("no claims in the chosen specs", file=sys.stderr)
    return 0


def _plot(args) -> int:
    from smoothnorm.runs import runner

    specs = _specs(args, args.only.split(",") if args.only else None)
    variant = _variant(args, specs)
    _draw(specs, runner.results_root(args.runs, args.profile), args, variant)
    _say_variant(args, variant)
    return 0


def _export(args) -> int:
    from smoothnorm.runs.frames import export
    from smoothnorm.runs.runner import runs_folder

    root = runs_folder(args.runs)
    for path in export(args.out, root, args.spec, args.profile, args.format, specs_folder=args.specs):
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
    p.add_argument("--figures", default=None,
                   help="folder for figures and claims (default: ./figures, where results of --set overrides, "
                        "another --runs folder or fewer seeds than the published entries get their own names)")
    p.add_argument("--specs", default=None, help="folder of spec files (default: ./experiments)")
    p.add_argument("--seeds", type=int, default=None, metavar="N",
                   help="run every run for N seeds (base seed .. base seed + N - 1); overrides a spec's seeds "
                        "(claims and plot without it: every seed the runs folder holds from the base seed on)")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return value


def _add_execution(p) -> None:
    where = p.add_mutually_exclusive_group()
    where.add_argument("--workers", type=_positive_int, default=None, metavar="N",
                       help="1: train the runs one after another in this process; N > 1: on a local Dask cluster "
                            "of N worker processes (needs the 'dask' extra). Default ($SMOOTHNORM_WORKERS if set): "
                            "runs side by side, one per core at one thread each, when at least as many runs are "
                            "pending as there are cores")
    where.add_argument("--scheduler", default=None, metavar="ADDRESS",
                       help="train on an existing Dask cluster, e.g. tcp://host:8786 (needs the 'dask' extra)")
    p.add_argument("--threads-per-run", type=_positive_int, default=None, metavar="T",
                   help="Numba/OpenMP/BLAS threads inside each run (default: 1 when runs go side by side, cores / N "
                        "with --workers N, else all cores)")
    p.add_argument("--estimate", action="store_true",
                   help="train nothing: time each kind of run briefly here and print what the runs would cost "
                        "(per spec and in total, sequentially and on --workers N / this machine's cores)")
    p.add_argument("--lease-timeout", type=_positive_float, default=120.0, metavar="SECONDS",
                   help="a run whose lease has had no heartbeat for this long is taken over (default 120)")


_ALL_HELP = ("every spec: the paper's figures, the optimization study, the examples and the follow-up papers "
             "(experiments/study, examples, beyond); default: the paper's figures")


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
    _add_execution(p)
    p.set_defaults(func=_run)
    p = sub.add_parser("reproduce", help="run every spec and draw every figure")
    p.add_argument("--only", default=None, help="comma-separated spec names, e.g. fig4,fig10")
    p.add_argument("--study", action="store_true", help="also run the optimization study (experiments/study)")
    _add_common(p)
    _add_execution(p)
    p.set_defaults(func=_reproduce)
    p = sub.add_parser("plot", help="redraw figures from stored runs without training")
    p.add_argument("--only", default=None, help="comma-separated spec names")
    p.add_argument("--all", action="store_true", help=_ALL_HELP)
    _add_common(p)
    p.set_defaults(func=_plot)
    p = sub.add_parser("claims", help="evaluate the specs' claims on stored runs (no training); write CLAIMS.md")
    p.add_argument("--only", default=None, help="comma-separated spec names")
    p.add_argument("--all", action="store_true", help=_ALL_HELP)
    p.add_argument("--markdown", nargs="?", const=True, default=None, metavar="CLAIMS_JSON",
                   help="print the findings table from claims.json (default: <figures>/claims.json) and exit")
    p.add_argument("--readme", default=None, metavar="README_MD",
                   help="write that table into README_MD between its claims-table markers (atomically) and exit")
    p.add_argument("--link", default="figures/", help="prefix of figure links in --markdown (default: figures/)")
    _add_common(p)
    p.set_defaults(func=_claims)
    p = sub.add_parser("export", help="write stored runs as tables (runs and probes; CSV or Parquet; needs pandas)")
    p.add_argument("--profile", default="quick", choices=("tiny", "quick", "paper"),
                   help="the profile whose runs to export (its folder under --runs)")
    p.add_argument("--runs", default=None, help="folder of run directories (default: $SMOOTHNORM_RUNS or ./runs)")
    p.add_argument("--spec", default=None, help="only this spec's runs, with a spec column (default: every run)")
    p.add_argument("--specs", default=None, help="folder of spec files (default: ./experiments)")
    p.add_argument("--format", default="csv", choices=("csv", "parquet"), help="file format (default: csv)")
    p.add_argument("--out", required=True, help="folder for runs.<format> and probes.<format>")
    p.set_defaults(func=_export)
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
    if hasattr(args, "figures"):
        args.figures_explicit = args.figures is not None
        args.figures = args.figures or "figures"
    _limit_threads_early(args)
    from smoothnorm.runs.leases import terminate_as_exit

    previous = terminate_as_exit()
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("interrupted: completed steps are checkpointed; run the same command again to resume", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`smoothnorm list | head`): stop quietly, as command-line tools do.
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (Python flushes stdout at exit; the pipe is gone)
        return 141
    except (ValueError, FileNotFoundError, ImportError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except RuntimeError as err:
        from smoothnorm.runs.executors import MissingExtraError, RunsFailed
        from smoothnorm.runs.leases import LeaseError

        if isinstance(err, MissingExtraError):
            print(f"error: {err}", file=sys.stderr)
            return 2
        if isinstance(err, (RunsFailed, LeaseError)):
            print(f"error: {err}", file=sys.stderr)
            return 1
        raise
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


if __name__ == "__main__":
    sys.exit(main())
