"""`edgesight train <task> ...`: one subcommand per task that has a training module.

A task's training module is `edgesight.training.<module>` (module as in the task registry, e.g.
keywords, descriptions, captioning) exposing `add_train_arguments(p)` and `train_main(args)`.
A module adds the shared LoRA options (`--out`, `--steps`, `--lr`, `--rank`, ...) with
`add_config_arguments(p, steps=..., lr=...)` (its own defaults) and turns them into a TrainConfig
with `config_from_args(args, labels=..., system=...)`, so all tasks train with the same knobs.
Under `accelerate launch --multi_gpu --num_processes N -m edgesight.cli train <task> ...` the same code
runs on N processes (GPUs with NCCL, or CPU processes with gloo); see docs/scale.md.
"""
from __future__ import annotations

import importlib

from ..registry import TASKS
from .trainer import TrainConfig

_DEFAULTS = TrainConfig()


def add_config_arguments(p, **defaults) -> None:
    """The TrainConfig options; a task passes its own defaults (e.g. steps=300, lr=1e-3)."""
    from ..cli import threads_arg

    d = {**_DEFAULTS.to_dict(), **defaults}
    p.add_argument("--out", required=True, help="output directory (adapter/, checkpoint/, report.json); "
                   "an existing checkpoint there is resumed")
    p.add_argument("--steps", type=int, default=d["steps"])
    p.add_argument("--batch-size", type=int, default=d["batch_size"])
    p.add_argument("--grad-accum", type=int, default=d["grad_accum"])
    p.add_argument("--lr", type=float, default=d["lr"])
    p.add_argument("--rank", type=int, default=d["rank"])
    p.add_argument("--alpha", type=int, default=d["alpha"])
    p.add_argument("--dropout", type=float, default=d["dropout"])
    p.add_argument("--target-modules", nargs="+", default=d["target_modules"],
                   help="default: every linear layer except the output head")
    p.add_argument("--seed", type=int, default=d["seed"])
    p.add_argument("--max-length", type=int, default=d["max_length"])
    p.add_argument("--eval-every", type=int, default=d["eval_every"])
    p.add_argument("--save-every", type=int, default=d["save_every"])
    p.add_argument("--stop-after", type=int, default=None, metavar="STEP",
                   help="checkpoint at STEP and exit (e.g. a time-limited cluster slot); the same command resumes")
    p.add_argument("--val-limit", type=int, default=d["val_limit"])
    p.add_argument("--threads", type=threads_arg, default=d["threads"], help="torch threads (default: torch's choice)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def config_from_args(args, **fixed) -> TrainConfig:
    """TrainConfig from the parsed options, plus task-fixed fields (labels, system, data_version)."""
    fields = {name: getattr(args, name) for name in TrainConfig.__dataclass_fields__ if hasattr(args, name)}
    return TrainConfig.from_dict({**fields, **fixed})


def _training_modules():
    for spec in TASKS.values():
        try:
            module = importlib.import_module(f"{__package__}.{spec.module}")
        except ImportError:
            continue
        if hasattr(module, "add_train_arguments") and hasattr(module, "train_main"):
            yield spec.name, module


def add_cli_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="train_task", metavar="TASK")
    for name, module in _training_modules():
        p = sub.add_parser(name, help=(module.__doc__ or "").strip().splitlines()[0] if module.__doc__ else None)
        module.add_train_arguments(p)
        p.set_defaults(train_module=module)


def main(args):
    module = getattr(args, "train_module", None)
    if module is None:
        from ..errors import TrainingError
        names = ", ".join(n for n, _ in _training_modules()) or "(none installed)"
        raise TrainingError(f"name the task to train: edgesight train TASK ... (tasks: {names})")
    return module.train_main(args)
