"""`python -m benchmarks run|guard` and `edgesight bench run|guard`.

    python -m benchmarks run --quick --json out.json        # tiny models, ~2 min on 1 thread
    python -m benchmarks run --json full.json                # real-size models, every task
    python -m benchmarks guard --baseline benchmarks/baseline.json   # quick run, then ratio/quality checks
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .runner import REPO

RESULTS = REPO / "benchmarks" / "results"   # the committed full run (README)
SCRATCH = REPO / ".cache" / "bench"         # quick and guard runs: git-ignored


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    from edgesight.cli import threads_arg

    sub = parser.add_subparsers(dest="bench_command", metavar="{run,guard}", required=True)
    run = sub.add_parser("run", help="measure every case; write JSON, Markdown and a PNG plot")
    guard = sub.add_parser("guard", help="check ratios and quality against a baseline (runs --quick unless --results)")
    for p in (run, guard):
        p.add_argument("--task", action="append", default=None, help="only this task (repeatable); default all")
        p.add_argument("--threads", type=threads_arg, default=None, help="threads per case (default: EDGESIGHT_THREADS, "
                       "OMP_NUM_THREADS, else usable cores); recorded in the JSON")
        p.add_argument("--rounds", type=int, default=None, help="interleaved timed rounds (default 12 quick, 9 full)")
        p.add_argument("--warmup", type=int, default=2, help="untimed calls per case after the first call")
        p.add_argument("--batch-rounds", type=int, default=2, help="timed batches per case")
        p.add_argument("--work", type=Path, default=SCRATCH, help="where built artifacts are cached")
        p.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.add_argument("--quick", action="store_true", help="tiny models built on the fly (what CI runs)")
    run.add_argument("--bundles", type=Path, action="append", default=[],
                     help="also benchmark every bundle under this directory (repeatable; full runs)")
    run.add_argument("--json", dest="json_out", type=Path, default=None,
                     help="results JSON (default .cache/bench/quick.json or benchmarks/results/full.json); "
                          ".md and .png are written next to it")
    guard.add_argument("--baseline", type=Path, default=REPO / "benchmarks" / "baseline.json")
    guard.add_argument("--results", type=Path, default=None, help="check this results JSON instead of running --quick")
    guard.add_argument("--json", dest="json_out", type=Path, default=None, help="where the quick run's results go")


def run(args) -> dict:
    from edgesight.errors import InputError
    from edgesight.runtime import default_threads

    from . import report
    from .cases import task_groups
    from .runner import measure

    quick = getattr(args, "quick", False) or args.bench_command == "guard"
    threads = default_threads(args.threads)
    rounds = args.rounds or (12 if quick else 9)
    builders = task_groups(args.work, threads, quick, getattr(args, "bundles", []))
    chosen = args.task or list(builders)
    unknown = [t for t in chosen if t not in builders]
    if unknown:
        raise InputError(f"unknown task(s) {', '.join(unknown)} for a {'quick' if quick else 'full'} run; "
                         f"choose from: {', '.join(builders)}")
    settings = {"threads": threads, "rounds": rounds, "warmup": args.warmup, "batch_rounds": args.batch_rounds,
                "tasks": chosen, "bundles": [str(b) for b in getattr(args, "bundles", [])]}
    results = report.header("quick" if quick else "full", settings)
    results.update(cases=[], ratios=[], notes=[])
    for name in chosen:
        group = builders[name]()
        out = measure(group, threads=threads, rounds=rounds, warmup=args.warmup, batch_rounds=args.batch_rounds,
                      progress_bar=False if args.no_progress else None)
        results["cases"] += out["cases"]
        results["ratios"] += out["ratios"]
        if group.note:
            results["notes"].append(f"{name}: {group.note}")
    results["loadavg_end"] = list(os.getloadavg())
    path = args.json_out or (SCRATCH / "quick.json" if quick else RESULTS / "full.json")
    report.write_json(results, path)
    path.with_suffix(".md").write_text(report.markdown(results), encoding="utf-8")
    report.plot(results, path.with_suffix(".png"))
    print(f"wrote {path}, {path.with_suffix('.md')}, {path.with_suffix('.png')}", file=sys.stderr)
    return results


def main(args) -> int:
    if args.bench_command == "run":
        from . import report
        print(report.markdown(run(args)))
        return 0
    from . import guard
    results = args.results
    if results is None:
        args.json_out = args.json_out or SCRATCH / "guard.json"
        run(args)
        results = args.json_out
    outcome = guard.guard(results, args.baseline)
    print(outcome.report())
    return 0 if outcome.ok else 1


def main_argv(argv=None) -> int:
    from edgesight.errors import EdgesightError

    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    add_cli_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return main(args)
    except EdgesightError as exc:
        print(f"benchmarks {args.bench_command}: {exc}", file=sys.stderr)
        return 2
