"""Evaluation of task bundles: typed `run_eval(bundle, **options) -> dict` per task (the CLI's
`edgesight eval <task>` and the benchmarks call the same functions). May import the run time, the
export stage and the training data builders; nothing imports it but the CLI and the benchmarks.

Each module (named in the registry's `evaluate` column) has `run_eval(bundle=None, *, threads=None,
...) -> dict`, `add_eval_arguments(parser)`, `from_args(args) -> dict` (parsed CLI -> run_eval) and
`BENCH_OPTIONS` (the run_eval options the benchmark suite passes). Their --backend/--device/--threads
come from edgesight.cli.add_runtime_arguments; --model is each module's own (one bundle or several)."""

