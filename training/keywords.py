"""Keyword extraction training (`edgesight train keywords`) and the default bundle's recipe.

Two families through the shared LoRA trainer: extractive (token classifier on all-MiniLM-L6-v2, the
default) and generative (chat LoRA on SmolLM2). Data: edgesight.training.data.keywords.
"""
from __future__ import annotations

from ..defaults import ADAPTERS_DIR
from .data.keywords import DATA_VERSION, LABELS, SYSTEM, build, format_extractive, format_generative

DEFAULT_ADAPTER = ADAPTERS_DIR / "keywords-minilm"


# ----------------------------------------------------------------------------- training

def add_train_arguments(p) -> None:
    """train a keyword extractor (extractive token classifier or generative LoRA chat LM)"""
    from .cli import add_config_arguments
    p.add_argument("--family", choices=["extractive", "generative"], default="extractive")
    p.add_argument("--base", default=None, help="HF directory or .gguf (default: the real MiniLM / SmolLM2 weights)")
    p.add_argument("--train-examples", type=int, default=4000)
    p.add_argument("--val-examples", type=int, default=300)
    p.add_argument("--data-seed", type=int, default=0)
    p.add_argument("--full", action="store_true",
                   help="extractive: fine-tune every transformer layer (saved whole) instead of LoRA; the word "
                        "embeddings still take a LoRA")
    add_config_arguments(p, steps=400, lr=5e-4, batch_size=16, max_length=96, save_every=100)


def train_main(args):
    from ..export.weights import minilm_dir, smollm2_gguf
    from .cli import config_from_args
    from .trainer import train_lora
    data = build(args.train_examples, args.val_examples, seed=args.data_seed)
    generative = args.family == "generative"
    base = args.base or (smollm2_gguf() if generative else minilm_dir())
    config = config_from_args(args, data_version=f"{DATA_VERSION}/seed{args.data_seed}/n{args.train_examples}",
                              labels=None if generative else LABELS, system=SYSTEM if generative else None)
    if args.full and not generative:
        config.target_modules, config.modules_to_save = ["word_embeddings"], ["encoder"]
    report = train_lora(base, data["train"], kind="causal" if generative else "token-classification",
                        out_dir=args.out, config=config, val_examples=data["val"],
                        format_example=format_generative if generative else format_extractive,
                        evaluate=evaluate_generative if generative else evaluate_extractive,
                        progress=False if args.no_progress else None)
    return {"adapter": report.adapter_dir, "final": report.final_metrics, "timings": report.timings}


def evaluate_extractive(model, tok, examples) -> dict:
    """F1 / exact-set of the torch token classifier on `examples` (used during training)."""
    import torch
    from ..tasks.keywords import score, spans_to_names
    preds = []
    for ex in examples:
        enc = tok(ex["input"], return_offsets_mapping=True, return_tensors="pt", truncation=True, max_length=256)
        offsets = enc.pop("offset_mapping")[0].tolist()
        with torch.no_grad():
            tags = model(**enc).logits[0].argmax(-1).tolist()
        spans = []
        for (s, e), t in zip(offsets, tags):
            if s == e or t == 0:
                continue
            if spans and (t == 2 or s == spans[-1][1]) and s - spans[-1][1] <= 1:
                spans[-1][1] = e
            else:
                spans.append([s, e])
        preds.append(spans_to_names(ex["input"], spans))
    return {k: v for k, v in score(preds, [ex["output"] for ex in examples]).to_dict().items() if k != "n"}


def evaluate_generative(model, tok, examples, limit: int = 60) -> dict:
    import torch
    from ..tasks.keywords import parse_generated, score
    from .trainer import chat_parts
    preds = []
    for ex in examples[:limit]:
        prompt, _ = chat_parts(tok, ex["input"], "", SYSTEM)
        ids = tok(prompt, add_special_tokens=False, return_tensors="pt")
        with torch.no_grad():
            out = model.generate(**ids, max_new_tokens=24, do_sample=False, pad_token_id=tok.pad_token_id)
        preds.append(parse_generated(tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)))
    return {k: v for k, v in score(preds, [ex["output"] for ex in examples[:limit]]).to_dict().items() if k != "n"}


# ----------------------------------------------------------------------------- the default bundle

def build_default(out_dir, *, threads: int = 1, progress: bool | None = None):
    """The default keywords bundle: the shipped MiniLM token-classifier adapter + the real
    all-MiniLM-L6-v2 weights, through the same path as `edgesight export --task keywords --formats onnx-int8`."""
    from ..errors import ExportError
    from ..export import export_into
    from ..export.weights import minilm_dir

    if not (DEFAULT_ADAPTER / "adapter_model.safetensors").is_file():
        raise ExportError(f"{DEFAULT_ADAPTER}: the shipped keywords adapter is missing; reinstall edgesight")
    return export_into(out_dir, minilm_dir(), DEFAULT_ADAPTER, task="keywords", format="onnx-int8", threads=threads,
                       progress=progress)
