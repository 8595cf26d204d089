"""`edgesight export`: merge an adapter into its base, export the formats, validate, print the table.

    edgesight export --base SmolLM2.Q4_1.gguf --adapter runs/describe/adapter --task describe \
        --formats onnx,onnx-int8,gguf-f16,gguf-q8_0,gguf-q4_k_m,gguf-lora --out bundles/describe
    edgesight export --task keywords --adapter runs/kw/adapter --formats onnx-int8 --out bundles/kw
    edgesight export --task products --adapter runs/lora/adapter --formats onnx,onnx-int8 --out bundles/products

What a task's bundles carry besides the weights (prompt, vocabulary, generation, probes) comes from
the task's `export_spec` hook (see `edgesight export --help`, --task).
"""
from __future__ import annotations

import json
from pathlib import Path

from edgesight.errors import ExportError, InputError


def add_cli_arguments(p) -> None:
    from edgesight.cli import threads_arg
    from edgesight.registry import TASKS

    from . import DEFAULT_FORMATS, FORMATS, fetch

    p.add_argument("--base", default=None,
                   help="base model: an HF directory or a .gguf file; for image encoders efficientnet-lite0 or a "
                        "CLIP directory (default: the real weights of the adapter's kind: SmolLM2-135M-Instruct GGUF "
                        "for chat LMs, all-MiniLM-L6-v2 for token classifiers, efficientnet-lite0 for products)")
    p.add_argument("--adapter", default=None, help="LoRA adapter directory from `edgesight train TASK` (safetensors); "
                                                   "omit to export the base")
    p.add_argument("--task", required=True, choices=list(TASKS), metavar="TASK",
                   help=f"task the bundles are for ({', '.join(TASKS)}); its export spec adds to the weights: "
                        + "; ".join(f"{name}: {_spec_summary(spec)}" for name, spec in TASKS.items()))
    p.add_argument("--formats", default=None,
                   help=f"comma-separated, from: {', '.join(FORMATS)} (default: those of {','.join(DEFAULT_FORMATS)} "
                        "that serve the model's kind; token classifiers and image encoders: onnx, onnx-int8)")
    p.add_argument("--out", required=True, help="output directory: one bundle per format in OUT/<format>")
    p.add_argument("--probes", default=None, help="validation prompts: a .json list or a text file, one per line "
                                                 "(default: the task's probes)")
    p.add_argument("--max-new-tokens", type=int, default=None, help="greedy tokens compared per probe "
                                                                   "(default: the task's, else 16)")
    p.add_argument("--prompt", default=None,
                   help="the model's own prompt, stored in the manifests instead of the task's: a preset the task "
                        "ships (keywords: seed-000 = seed 000's Zephyr format, system text, decoding and parsing), "
                        "a .json prompt object ({\"template\": \"...{system}...{input}...\", \"system\", "
                        "\"generation\", \"parser\", \"input\", \"max_input_tokens\"}) or text; without it a "
                        "base directory's llm_config.json (seed 001) is read. See docs/seed-models.md")
    p.add_argument("--per-channel", action="store_true", help="per-channel int8 weights for onnx-int8")
    p.add_argument("--mmproj", choices=["f16", "q8_0"], default=None,
                   help="vision projector of GGUF vlm bundles: f16 (default) or q8_0 (a smaller bundle, not a faster one: docs/vlm.md)")
    p.add_argument("--threads", type=threads_arg, default=None, help="threads for torch, onnxruntime and llama.cpp")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--json", action="store_true", help="print the report as JSON instead of the table")
    fetch.add_offline_argument(p)


def _spec_summary(spec) -> str:
    hook = spec.hook("export_spec")
    doc = (hook.__doc__ or "").strip() if hook else ""
    return " ".join(doc.split()) if doc else "nothing (weights only)"


def _read_probes(path: str | None) -> list[str] | None:
    if path is None:
        return None
    p = Path(path)
    if not p.is_file():
        raise InputError(f"--probes {path}: no such file; pass a .json list of prompts or a text file")
    if p.suffix == ".json":
        probes = json.loads(p.read_text(encoding="utf-8"))
        if not isinstance(probes, list) or not all(isinstance(x, str) for x in probes):
            raise InputError(f"--probes {path}: expected a JSON list of strings")
    else:
        probes = [line for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not probes:
        raise InputError(f"--probes {path}: no prompts in the file")
    return probes


def _read_prompt(value: str | None):
    if value is None or not Path(value).is_file():
        return value
    text = Path(value).read_text(encoding="utf-8")
    return json.loads(text) if value.endswith(".json") else text


def main(args):
    from . import export, fetch

    fetch.apply_offline(args)
    try:
        report = export(args.base, args.adapter, task=args.task, out=args.out,
                        formats=None if args.formats is None else [f.strip() for f in args.formats.split(",") if f.strip()],
                        probes=_read_probes(args.probes), max_new_tokens=args.max_new_tokens,
                        prompt=_read_prompt(args.prompt), per_channel=args.per_channel, mmproj=args.mmproj, threads=args.threads,
                        progress=False if args.no_progress else None)
    except ExportError as exc:
        report = getattr(exc, "report", None)
        if report is not None and not args.json:
            print(report.table())
        raise
    if args.json:
        return report.to_dict()
    print(report.table())
    print(f"bundles in {args.out} (report: {Path(args.out) / 'export-report.json'})")
    return None
