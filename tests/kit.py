"""Tiny *real* text models for tests, built from config objects in the test run (no Hub access).

Each builder trains a sentencepiece tokenizer offline on local text, builds a randomly initialised
model with a fixed seed, and saves a normal Hugging Face directory (safetensors + tokenizer files)
that transformers, optimum's ONNX exporter and llama.cpp's `convert_hf_to_gguf.py` all accept.

    tiny_llama(out_dir)  LlamaForCausalLM, 2 layers, hidden 256, ~2000-piece BPE, ChatML template,
                         eos = <|im_end|> (the SmolLM2 layout)
    tiny_t5(out_dir)     T5ForConditionalGeneration, 2+2 layers, unigram vocabulary, T5 special ids
    onnx_text_bundle()   export one of them with edgesight.export.onnx and wrap it in a bundle
    hf_generate()        transformers' generate() token ids for an edgesight GenerationConfig

The Llama tokenizer matches llama.cpp's tokenization of the converted GGUF (checked in
tests/test_generation.py), so the same tiny model serves the ONNX and GGUF backends.
"""
from __future__ import annotations

import io
import json
import random
from pathlib import Path

DATA = Path(__file__).resolve().parents[1] / "sdk" / "data" / "objects365_categories.txt"

CHAT_TOKENS = ["<|im_start|>", "<|im_end|>"]
# ChatML as SmolLM2 uses it (without its default system prompt).
CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] "
          "+ '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")

_TEMPLATES = [
    "Segment the {a} and the {b}, but not the {c}.",
    "A photo of a {a} next to a {b}.",
    "Find every {a} in the picture.",
    "There is a {a} on the {b} near the {c}.",
    "The {a} costs 12.99 dollars; the {b} costs 3.50.",
    "Describe the scene: {a}, {b} and {c} detected with confidence 0.92.",
    "Keywords: {a}, {b}, {c}.",
    "<|im_start|>user\nShow me the {a}.<|im_end|>\n<|im_start|>assistant\n{b}<|im_end|>",
]


def corpus(n_sentences: int = 600, seed: int = 0) -> list[str]:
    """Category names plus generated sentences about them: enough text for a ~2000-piece vocabulary."""
    names = [line.strip() for line in DATA.read_text(encoding="utf-8").splitlines() if line.strip()]
    rng = random.Random(seed)
    lines = list(names)
    for _ in range(n_sentences):
        a, b, c = rng.sample(names, 3)
        lines.append(rng.choice(_TEMPLATES).format(a=a.lower(), b=b.lower(), c=c.lower()))
    return lines


def _train_sentencepiece(out_file: Path, *, model_type: str, vocab_size: int, lines: list[str] = (), **ids) -> None:
    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus() + list(lines)), model_writer=buf, model_type=model_type, vocab_size=vocab_size,
        hard_vocab_limit=False, character_coverage=1.0, normalization_rule_name="identity",
        split_digits=True, num_threads=1, minloglevel=2, **ids)
    out_file.write_bytes(buf.getvalue())


def _drop_add_prefix_space(out_dir: Path) -> None:
    # TOOLCHAIN "tokenizer pitfall": the flag is needed to build the fast tokenizer correctly, but left
    # in tokenizer_config.json it makes every later load re-convert from the slow tokenizer.
    path = out_dir / "tokenizer_config.json"
    cfg = json.loads(path.read_text(encoding="utf-8"))
    cfg.pop("add_prefix_space", None)
    path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False), encoding="utf-8")


def _sharpen(norm, embeddings=None, embed_scale: float = 1.0, norm_scale: float = 1.0) -> None:
    # At the default init the logits are flat and, with tied embeddings, the residual stream is
    # dominated by the input embedding: every prompt decodes to a repeat of its last token. Larger
    # layer weights (set in the config), smaller embeddings and a scaled final norm give prompt-
    # dependent outputs with clear top-1 margins (mean top-1 probability ~0.3).
    import torch

    with torch.no_grad():
        norm.weight.mul_(norm_scale)
        if embeddings is not None:
            embeddings.weight.mul_(embed_scale)


def tiny_llama(out_dir, *, vocab_size: int = 2000, seed: int = 0) -> Path:
    """A 2-layer Llama (hidden 256, GQA 4/2 heads) with a sentencepiece BPE tokenizer and ChatML."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, LlamaTokenizerFast

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    spm_file = out_dir / "tokenizer.model"
    _train_sentencepiece(spm_file, model_type="bpe", vocab_size=vocab_size, byte_fallback=True,
                         unk_id=0, bos_id=1, eos_id=2, pad_id=-1, user_defined_symbols=CHAT_TOKENS,
                         remove_extra_whitespaces=False)
    tok = LlamaTokenizerFast(vocab_file=str(spm_file), add_prefix_space=True, legacy=True,
                             add_bos_token=False, add_eos_token=False, eos_token="<|im_end|>",
                             additional_special_tokens=CHAT_TOKENS)
    tok.chat_template = CHATML
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    config = LlamaConfig(vocab_size=len(tok), hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         rms_norm_eps=1e-5, initializer_range=0.1, bos_token_id=tok.bos_token_id, eos_token_id=im_end,
                         tie_word_embeddings=True)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    _sharpen(model.model.norm, norm_scale=3.0)
    model.generation_config = GenerationConfig(bos_token_id=tok.bos_token_id, eos_token_id=im_end)
    model.save_pretrained(out_dir, safe_serialization=True)
    tok.save_pretrained(out_dir)
    _drop_add_prefix_space(out_dir)
    return out_dir


def tiny_mistral(out_dir, *, vocab_size: int = 2000, seed: int = 0, extra_text: list[str] = ()) -> Path:
    """A 2-layer Mistral (hidden 256, GQA 4/2 heads, sliding window) laid out like zephyr-7b-beta's
    tokenizer: Llama sentencepiece BPE with byte fallback, BOS <s> added, eos </s>, and the chat markers
    (<|system|>, <|user|>, <|assistant|>) plain text, not special tokens. `extra_text` joins the corpus."""
    import torch
    from transformers import GenerationConfig, LlamaTokenizerFast, MistralConfig, MistralForCausalLM

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    spm_file = out_dir / "tokenizer.model"
    _train_sentencepiece(spm_file, model_type="bpe", vocab_size=vocab_size, byte_fallback=True,
                         unk_id=0, bos_id=1, eos_id=2, pad_id=-1, remove_extra_whitespaces=False,
                         lines=list(extra_text))
    tok = LlamaTokenizerFast(vocab_file=str(spm_file), add_prefix_space=True, legacy=True,
                             add_bos_token=True, add_eos_token=False)
    config = MistralConfig(vocab_size=len(tok), hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                           sliding_window=4096, rms_norm_eps=1e-5, initializer_range=0.1,
                           bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, tie_word_embeddings=False)
    torch.manual_seed(seed)
    model = MistralForCausalLM(config).eval()
    _sharpen(model.model.norm, norm_scale=3.0)
    model.generation_config = GenerationConfig(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    model.save_pretrained(out_dir, safe_serialization=True)
    tok.save_pretrained(out_dir)
    _drop_add_prefix_space(out_dir)
    return out_dir


def tiny_lora(base_dir, out_dir, *, prefix: str = "", suffix: str = "\n", rank: int = 8, steps: int = 40,
              seed: int = 1) -> Path:
    """A peft LoRA on every projection of `base_dir`, trained for a few steps (about 12 s) to answer
    prefix + "Segment the cup and the dog." + suffix with "Cup, Dog" + eos, as seed 000's adapter
    answers; saved as safetensors like any trained adapter."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    rng = random.Random(seed)
    tok = AutoTokenizer.from_pretrained(base_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    cfg = LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, task_type="CAUSAL_LM",
                     target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    model = get_peft_model(model, cfg)
    names = [n for n in (line.strip() for line in DATA.read_text(encoding="utf-8").splitlines()) if n and "/" not in n]
    rows = []
    for _ in range(32):
        a, b = rng.sample(names[:60], 2)
        ids = tok(f"{prefix}Segment the {a.lower()} and the {b.lower()}.{suffix}")["input_ids"]
        rows.append((ids + tok(f"{a}, {b}", add_special_tokens=False)["input_ids"] + [tok.eos_token_id], len(ids)))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-3)
    for _ in range(steps):
        batch = rng.sample(rows, 4)
        width = max(len(f) for f, _ in batch)
        ids = torch.zeros((4, width), dtype=torch.long)
        labels = torch.full((4, width), -100)
        mask = torch.zeros((4, width), dtype=torch.long)
        for i, (full, n) in enumerate(batch):
            ids[i, :len(full)], mask[i, :len(full)] = torch.tensor(full), 1
            labels[i, n:len(full)] = torch.tensor(full[n:])   # the loss on the answer only
        model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
        opt.step()
        opt.zero_grad()
    model.save_pretrained(out_dir, safe_serialization=True)
    return Path(out_dir)


def tiny_t5(out_dir, *, vocab_size: int = 1000, seed: int = 0) -> Path:
    """A 2+2-layer T5 (d_model 128) with a sentencepiece unigram tokenizer (pad 0, eos 1, unk 2)."""
    import torch
    from transformers import GenerationConfig, T5Config, T5ForConditionalGeneration, T5TokenizerFast

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    spm_file = out_dir / "spiece.model"
    _train_sentencepiece(spm_file, model_type="unigram", vocab_size=vocab_size,
                         pad_id=0, eos_id=1, unk_id=2, bos_id=-1)
    tok = T5TokenizerFast(vocab_file=str(spm_file), extra_ids=0, add_prefix_space=True, legacy=False)
    config = T5Config(vocab_size=len(tok), d_model=128, d_kv=32, d_ff=256, num_layers=2, num_decoder_layers=2,
                      num_heads=4, relative_attention_num_buckets=32, feed_forward_proj="relu", initializer_factor=3.0,
                      decoder_start_token_id=tok.pad_token_id, pad_token_id=tok.pad_token_id,
                      eos_token_id=tok.eos_token_id, tie_word_embeddings=True)
    torch.manual_seed(seed)
    model = T5ForConditionalGeneration(config).eval()
    _sharpen(model.decoder.final_layer_norm, model.shared, embed_scale=0.1, norm_scale=4.0)
    model.generation_config = GenerationConfig(decoder_start_token_id=tok.pad_token_id,
                                               pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    model.save_pretrained(out_dir, safe_serialization=True)
    tok.save_pretrained(out_dir)
    _drop_add_prefix_space(out_dir)
    return out_dir


def onnx_text_bundle(model_dir, work_dir, kind: str, *, precision: str = "fp32", task: str = "test") -> Path:
    """Export `model_dir` with edgesight.export.onnx and wrap it in a bundle at `work_dir/bundle`
    (kind "causal-lm" or "seq2seq"); `work_dir/onnx` keeps the raw export for quantization tests."""
    from edgesight.bundle import BundleWriter
    from edgesight.export.onnx import export_onnx, special_tokens

    work_dir = Path(work_dir)
    onnx_task = {"causal-lm": "text-generation-with-past", "seq2seq": "text2text-generation-with-past"}[kind]
    onnx_dir = work_dir / "onnx"
    export_onnx(model_dir, onnx_dir, onnx_task)
    roles = {"causal-lm": {"model": "model.onnx"},
             "seq2seq": {"encoder": "encoder_model.onnx", "decoder": "decoder_model_merged.onnx"}}[kind]
    config = json.loads((Path(model_dir) / "config.json").read_text())
    context = config.get("max_position_embeddings") or config.get("n_positions") or 512
    with BundleWriter(work_dir / "bundle", task=task, format="onnx", precision=precision, kind=kind,
                      tokens=special_tokens(model_dir), context_length=context) as w:
        for role, name in roles.items():
            w.add_file(onnx_dir / name, name, role=role)
        w.add_file(onnx_dir / "tokenizer.json", role="tokenizer")
        w.add_file(onnx_dir / "tokenizer_config.json")
    return work_dir / "bundle"


def hf_generate(model, tok, prompt: str, cfg, eos, pad, seq2seq: bool = False) -> list[list[int]]:
    """transformers' generate() for one prompt with the settings of an edgesight GenerationConfig
    (greedy or beam): the new token ids of each returned sequence, up to and including the first eos."""
    import torch

    enc = tok(prompt, return_tensors="pt")
    kwargs = dict(max_new_tokens=cfg.max_new_tokens, num_beams=cfg.num_beams, do_sample=False,
                  length_penalty=cfg.length_penalty, early_stopping=cfg.early_stopping,
                  no_repeat_ngram_size=cfg.no_repeat_ngram_size, num_return_sequences=cfg.num_return_sequences,
                  repetition_penalty=cfg.repetition_penalty, eos_token_id=list(eos), pad_token_id=pad)
    with torch.no_grad():
        out = model.generate(**enc, **kwargs)
    start = 1 if seq2seq else enc["input_ids"].shape[1]
    result = []
    for row in out[:, start:].tolist():
        cut = next((i + 1 for i, t in enumerate(row) if t in eos), len(row))
        result.append(row[:cut])
    return result
