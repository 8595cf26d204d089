"""`edgesight demo`: run every registered task on its sample inputs with the default bundles."""
from __future__ import annotations

import json
import sys
import time

from .errors import EdgesightError
from .registry import TASKS


def add_cli_arguments(parser) -> None:
    from .cli import add_runtime_arguments

    add_runtime_arguments(parser, backend=False)
    parser.add_argument("--task", choices=list(TASKS), action="append", help="only these tasks (repeatable)")


def main(args) -> None:
    failed = []
    for spec in TASKS.values():
        if args.task and spec.name not in args.task:
            continue
        print(f"== {spec.name}: {spec.summary}")
        try:
            module = spec.load_module()
            t0 = time.perf_counter()
            task = spec.load_class().from_pretrained(None, threads=args.threads, device=args.device)
            print(f"   loaded {task.bundle.path} ({task.backend}, {task.device}) in {time.perf_counter() - t0:.2f} s")
            for sample in module.SAMPLE_INPUTS:
                t0 = time.perf_counter()
                result = task(sample)
                ms = (time.perf_counter() - t0) * 1000
                shown = sample if isinstance(sample, (str, dict)) else str(sample)
                out = result.to_dict() if hasattr(result, "to_dict") else result
                print(f"   {json.dumps(shown, ensure_ascii=False)[:120]}\n     -> {json.dumps(out, ensure_ascii=False)[:300]}  [{ms:.0f} ms]")
        except (EdgesightError, ImportError) as exc:
            print(f"   FAILED: {exc}")
            failed.append(spec.name)
    if failed:
        print(f"demo: {len(failed)} task(s) failed: {', '.join(failed)}", file=sys.stderr)
        raise SystemExit(1)
