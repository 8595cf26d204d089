"""The `edgesight` command line. Task subcommands come from the task registry; each task module
adds its own arguments (`add_cli_arguments`) and turns a loaded task plus arguments into a
JSON-able result (`run_cli`). Bad input exits with status 2 and a one-line reason.

Only the module of the command that runs is imported (building the parser of `edgesight keywords`
imports no export, training or benchmark code), and nothing is ever imported from the current
directory."""
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
    "export": ("edgesight.export.cli", "merge an adapter and export ONNX / GGUF bundles for a task, validated"),
    "eval": ("edgesight.evaluation.cli", "evaluate a task's bundle on its evaluation set"),
    "bench": ("edgesight.bench", "run the benchmark suite of this edgesight checkout (same as python -m benchmarks)"),
    "serve": ("edgesight.serve", "serve all tasks over HTTP"),
    "build-defaults": ("edgesight.training.defaults", "build the embedded default bundles on this machine"),
    "demo": ("edgesight.demo", "run all four tasks on sample inputs with the default bundles"),
    "batch": ("edgesight.batch", "run a task over a folder / JSONL / CSV / Parquet of inputs, locally or on Ray Data"),
}


def threads_arg(value: str) -> int:
    """argparse type of every --threads: a whole number from 1 to 1024 (exit 2 with a reason otherwise)."""
    from .runtime import MAX_THREADS

    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--threads takes a whole number, got {value!r}") from None
    if not 1 <= n <= MAX_THREADS:
        raise argparse.ArgumentTypeError(f"--threads must be from 1 to {MAX_THREADS}, got {n}")
    return n


def add_runtime_arguments(p: argparse.ArgumentParser, *, backend: bool = True, device: str = "cpu",
                          threads: int | None = None) -> None:
    """--backend/--device/--threads of every command that loads tasks (the defaults: serve's come from its env)."""
    from .runtime import DEVICES, RUNTIMES

    if backend:
        p.add_argument("--backend", choices=list(RUNTIMES), default=None, help="default: the bundle's format")
    p.add_argument("--device", choices=list(DEVICES), default=device, help="cpu (default), cuda, or auto (cuda if usable)")
    p.add_argument("--threads", type=threads_arg, default=threads, help="inference threads (default: usable cores)")


def add_task_arguments(p: argparse.ArgumentParser) -> None:
    """`edgesight <task>`: --model plus the runtime arguments."""
    p.add_argument("--model", default=None, help="bundle directory (default: the embedded default bundle)")
    add_runtime_arguments(p)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; only `command`'s own arguments are added (its module imported)."""
    parser = argparse.ArgumentParser(prog="edgesight", description="Edge-optimized, quantized vision-language tasks.")
    parser.add_argument("--version", action="version", version=f"edgesight {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for spec in TASKS.values():
        p = sub.add_parser(spec.name, help=spec.summary, description=spec.summary)
        p.set_defaults(spec=spec)
        if command == spec.name:
            add_task_arguments(p)
            p.add_argument("--json", action="store_true", help="print the result as JSON")
            spec.load_module().add_cli_arguments(p)
    for name, (module, help_) in TOOLS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        p.set_defaults(tool=module)
        if command == name:
            importlib.import_module(module).add_cli_arguments(p)
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
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    try:
        parser = build_parser(command if command in TASKS or command in TOOLS else None)
    except ImportError as exc:  # the command's module needs an extra: say which
        print(f"edgesight {command}: {exc}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        if getattr(args, "spec", None) is not None:
            spec = args.spec
            task = spec.load_class().from_pretrained(args.model, backend=args.backend, threads=args.threads,
                                                     device=args.device)
            _print(spec.load_module().run_cli(task, args), args.json)
        else:
            result = importlib.import_module(args.tool).main(args)
            if result is not None:
                _print(result, getattr(args, "json", False))
        return 0
    except EdgesightError as exc:
        print(f"edgesight {args.command}: {exc}", file=sys.stderr)
        return 2
    except UnicodeDecodeError as exc:   # text read from stdin or a file that is not UTF-8
        print(f"edgesight {args.command}: input is not UTF-8 text (bad byte at position {exc.start}); "
              "save it as UTF-8", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
