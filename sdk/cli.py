"""The `edgesight` command line. Task subcommands come from the task registry; each task module
adds its own arguments (`add_cli_arguments`) and turns a loaded task plus arguments into a
JSON-able result (`run_cli`). Bad input exits with status 2 and a one-line reason."""
from __future__ import annotations

import argparse
import importlib
import json
import sys

from . import __version__
from .errors import EdgesightError
from .registry import TASKS

# Non-task subcommands: name -> (module, help). Each module has add_cli_arguments(p) and main(args).
TOOLS = {
    "train": ("edgesight.training.cli", "train a LoRA adapter for a task"),
    "export": ("edgesight.export.cli", "merge an adapter and export ONNX / GGUF bundles, validated"),
    "eval": ("edgesight.evaluate", "evaluate a task's bundle on its evaluation set"),
    "bench": ("edgesight.bench", "run the benchmark suite (same as python -m benchmarks)"),
    "serve": ("edgesight.serve", "serve all tasks over HTTP"),
    "build-defaults": ("edgesight.export.defaults", "build the embedded default bundles on this machine"),
    "demo": ("edgesight.demo", "run all four tasks on sample inputs with the default bundles"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgesight", description="Edge-optimized, quantized vision-language tasks.")
    parser.add_argument("--version", action="version", version=f"edgesight {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for spec in TASKS.values():
        p = sub.add_parser(spec.name, help=spec.summary, description=spec.summary)
        p.add_argument("--model", default=None, help="bundle directory (default: the embedded default bundle)")
        p.add_argument("--backend", choices=["onnx", "gguf", "torch"], default=None, help="default: the bundle's format")
        p.add_argument("--threads", type=int, default=None, help="inference threads (default: usable cores)")
        p.add_argument("--json", action="store_true", help="print the result as JSON")
        p.set_defaults(spec=spec)
        try:
            spec.load_module().add_cli_arguments(p)
        except ImportError:
            pass  # the task's own module failed to import: report it when the command runs
    for name, (module, help_) in TOOLS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        p.set_defaults(tool=module)
        try:
            importlib.import_module(module).add_cli_arguments(p)
        except ImportError:
            p.set_defaults(tool_missing=True)
    return parser


def _print(result, as_json: bool) -> None:
    if as_json or not isinstance(result, str):
        print(json.dumps(result, indent=None if as_json else 2, ensure_ascii=False, default=_jsonable))
    else:
        print(result)


def _jsonable(obj):
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        if getattr(args, "spec", None) is not None:
            spec = args.spec
            module = spec.load_module()
            task = spec.load_class().from_pretrained(args.model, backend=args.backend, threads=args.threads)
            _print(module.run_cli(task, args), args.json)
        else:
            result = importlib.import_module(args.tool).main(args)
            if result is not None:
                _print(result, getattr(args, "json", False))
        return 0
    except EdgesightError as exc:
        print(f"edgesight {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
