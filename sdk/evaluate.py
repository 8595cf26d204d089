"""`edgesight eval <task>`: each task module that has an evaluation defines
`add_eval_arguments(parser)` and `run_eval(args) -> dict`; this only dispatches."""
from __future__ import annotations

import json

from .registry import TASKS

# Accept the registry name and the task module's name ("describe" and "descriptions").
_ALIASES = {**{s.name: s for s in TASKS.values()}, **{s.module: s for s in TASKS.values()}}


def add_cli_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="eval_task", metavar="TASK", required=True)
    for name, spec in _ALIASES.items():
        try:
            module = spec.load_module()
        except ImportError:
            continue
        if hasattr(module, "run_eval"):
            p = sub.add_parser(name, help=f"evaluate {spec.name}")
            p.add_argument("--json", dest="json_out", default=None, help="also write the report to this JSON file")
            module.add_eval_arguments(p)
            p.set_defaults(eval_spec=spec)


def main(args):
    report = args.eval_spec.load_module().run_eval(args)
    if args.json_out:
        from .bundle import atomic_write_bytes
        atomic_write_bytes(args.json_out, json.dumps(report, indent=2, ensure_ascii=False).encode())
    return report
