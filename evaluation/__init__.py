"""Evaluation of task bundles: typed `run_eval(bundle, **options) -> dict` per task (the CLI's
`edgesight eval <task>` and the benchmarks call the same functions). May import the run time, the
export stage and the training data builders; nothing imports it but the CLI and the benchmarks."""
