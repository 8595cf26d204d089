"""`edgesight eval <task>`: one subcommand per registry task with an evaluation module (its
`evaluate` column), under the registry name and the task module's name ("describe", "descriptions").
Each takes the module's own options (`add_eval_arguments`) plus `--json PATH`; `from_args` runs it."""
from __future__ import annotations

import json

from edgesight.registry import TASKS, load_hook


def add_cli_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="eval_task", metavar="TASK", required=True)
    for spec in TASKS.values():
        if not spec.evaluate:
            continue
        aliases = [spec.module] if spec.module != spec.name else []
        p = sub.add_parser(spec.name, aliases=aliases, help=f"evaluate {spec.name}: {spec.summary}")
        p.add_argument("--json", dest="json_out", default=None, help="also write the report to this JSON file")
        load_hook(spec.evaluate).add_eval_arguments(p)
        p.set_defaults(eval_module=spec.evaluate)


def main(args) -> dict:
    report = load_hook(args.eval_module).from_args(args)
    if args.json_out:
        from edgesight.bundle import atomic_write_bytes
        atomic_write_bytes(args.json_out, json.dumps(report, indent=2, ensure_ascii=False).encode())
    return report
