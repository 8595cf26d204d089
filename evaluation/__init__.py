"""Evaluation of task bundles: typed `run_eval(bundle, **options) -> dict` per task (the CLI's
`edgesight eval <task>` and the benchmarks call the same functions). May import the run time, the
export stage and the training data builders; nothing imports it but the CLI and the benchmarks.

Each module (named in the registry's `evaluate` column) has `run_eval(bundle=None, *, threads=None,
...) -> dict`, `add_eval_arguments(parser)`, `from_args(args) -> dict` (parsed CLI -> run_eval) and
`BENCH_OPTIONS` (the run_eval options the benchmark suite passes)."""


def add_runtime_arguments(p) -> None:
    """--backend/--device/--threads of an eval subcommand (its --model is the module's own: one or several)."""
    from edgesight.cli import threads_arg
    from edgesight.runtime import DEVICES, RUNTIMES

    p.add_argument("--backend", choices=list(RUNTIMES), default=None, help="default: the bundle's format")
    p.add_argument("--device", choices=list(DEVICES), default="cpu", help="cpu (default), cuda, or auto")
    p.add_argument("--threads", type=threads_arg, default=None, help="inference threads (default: usable cores)")
