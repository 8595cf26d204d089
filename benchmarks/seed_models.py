"""The seeds' own models in edgesight, measured (issue 19).

prefix-state  the first call after loading a keywords GGUF bundle in seed 000's format (its ~500-token
              system instruction), with and without the llama.cpp state saved in the bundle. The model
              is the real SmolLM2-135M-Instruct (Q8_0), exported with `--prompt seed-000`; no Zephyr
              weights exist offline. Also the decode bandwidth (weight bytes per token / s per token),
              from which Zephyr-7B's tokens/s per format are estimated.
t5            seed 001's decoding (4 beams, no_repeat_ngram_size 2, max_length 128, input truncated at
              256) on a flan-t5-small-shaped T5 (d_model 512, 8+8 layers, 6 heads, d_ff 1024,
              gated-gelu, vocab 32128, random weights: speed does not depend on the values):
              transformers' generate() as the seed calls it vs edgesight ONNX int8, same run, interleaved.

    python -m benchmarks.seed_models prefix-state --threads 2 --repeats 5 --out prefix_state.json
    python -m benchmarks.seed_models t5 --threads 2 --repeats 3 --out t5.json
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.report import header, write_json

KEYWORD_PROMPTS = ["Segment cats, dogs, and birds but ignore cars and chairs.",
                   "Segment all animals visible in the image like horses and elephants but ignore the background"]
CV_OUTPUTS = [
    {"detections": [{"label": "plastic", "confidence": 0.92}, {"label": "plastic", "confidence": 0.88},
                    {"label": "metal", "confidence": 0.75}], "scene": {"class": "grass", "confidence": 0.95}},
    {"detections": [{"label": "glass", "confidence": 0.81}], "scene": {"class": "sandy", "confidence": 0.91}},
]
# Zephyr-7B (Mistral-7B shape): 32 layers, hidden 4096, 32/8 heads, MLP 14336, vocab 32000.
ZEPHYR = dict(layers=32, hidden=4096, kv=1024, mlp=14336, vocab=32000, heads=32, kv_heads=8)


def zephyr_sizes() -> dict:
    """Bytes per bundle format at Zephyr-7B size (parameter counts x bytes per weight of each format)."""
    z = ZEPHYR
    per_layer = 2 * z["hidden"] * z["hidden"] + 2 * z["hidden"] * z["kv"] + 3 * z["hidden"] * z["mlp"]
    linear = z["layers"] * per_layer + z["vocab"] * z["hidden"]        # + lm_head
    embed = z["vocab"] * z["hidden"]
    lora_r16 = z["layers"] * 16 * (2 * (z["hidden"] + z["hidden"]) + 2 * (z["hidden"] + z["kv"]))  # q,k,v,o at r=16
    return {"params": linear + embed,
            "gguf-f16": 2 * (linear + embed),
            "gguf-q8_0": (linear + embed) * 34 / 32,                   # 32 int8 + one f16 scale per block
            "gguf-q4_k_m": round((linear + embed) * 4.85 / 8),         # llama.cpp's Q4_K_M averages ~4.85 bits
            "gguf-lora": 2 * (linear + embed) + 4 * lora_r16,          # f16 base + f32 adapter (r=16, attention)
            "onnx": 4 * (linear + embed),
            "onnx-int4": round(linear * 4.5 / 8) + 4 * embed}         # MatMulNBits (block 32) + fp32 Gather


def _median(xs):
    return round(statistics.median(xs), 4)


def prefix_state(args) -> dict:
    from edgesight.bundle import Bundle
    from edgesight.export import export
    from edgesight.generation import GenerationConfig
    from edgesight.runtime import open_text_model

    if args.bundle is None:
        work = Path(tempfile.mkdtemp(prefix="seed-bench-"))
        export(None, None, task="keywords", out=work, formats=["gguf-q8_0"], prompt="seed-000", threads=args.threads,
               progress=False)
        args.bundle = work / "gguf-q8_0"
    bundle = Bundle.load(args.bundle)
    prompt = bundle.get("prompt")
    config = GenerationConfig.from_dict(bundle.get("generation"))
    state_tokens = len(bundle.get("prefix_state")["tokens"])
    rows = {"with_state": {"load_s": [], "first_call_s": [], "second_call_s": []},
            "without_state": {"load_s": [], "first_call_s": [], "second_call_s": []}}
    for rep in range(args.repeats):
        for name in (rows if rep % 2 == 0 else list(rows)[::-1]):   # interleaved, order alternating
            t0 = time.perf_counter()
            model = open_text_model(bundle, threads=args.threads, prefix_state=name == "with_state")
            t1 = time.perf_counter()
            model.generate([prompt["prefix"] + KEYWORD_PROMPTS[0] + prompt["suffix"]], config)
            t2 = time.perf_counter()
            model.generate([prompt["prefix"] + KEYWORD_PROMPTS[1] + prompt["suffix"]], config)
            t3 = time.perf_counter()
            for key, value in zip(("load_s", "first_call_s", "second_call_s"), (t1 - t0, t2 - t1, t3 - t2)):
                rows[name][key].append(value)
            del model
    # decode bandwidth: weight bytes read per generated token
    model = open_text_model(bundle, threads=args.threads)
    ids = model.encode(prompt["prefix"] + KEYWORD_PROMPTS[0] + prompt["suffix"])
    model.llm.reset()
    model.llm.eval(ids)
    n = 64
    t0 = time.perf_counter()
    for i in range(n):
        model.llm.eval([ids[-1]])
    per_token = (time.perf_counter() - t0) / n
    weights = bundle.file("model").stat().st_size
    bandwidth = weights / per_token
    sizes = zephyr_sizes()
    return {"model": str(args.bundle),
            "prefix_tokens_saved": state_tokens, "prompt_tokens": len(ids),
            "state_bytes": bundle.get("prefix_state")["bytes"],
            "median": {k: {m: _median(v) for m, v in r.items()} for k, r in rows.items()}, "runs": rows,
            "decode_ms_per_token": round(per_token * 1e3, 2), "weight_bytes": weights,
            "bandwidth_GB_s": round(bandwidth / 1e9, 2),
            "zephyr_7b": {fmt: {"GB": round(b / 1e9, 2),
                                **({"tokens_per_s": round(bandwidth / b, 2)} if fmt.startswith("gguf") else {})}
                          for fmt, b in sizes.items() if fmt != "params"},
            "zephyr_7b_params": sizes["params"]}


def build_flan_t5_small(out_dir: Path, seed: int = 0) -> Path:
    """flan-t5-small's shape with random weights and a 32128-piece unigram tokenizer (JSON-friendly
    pieces + fillers), plus seed 001's llm_config.json."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import GenerationConfig, T5Config, T5ForConditionalGeneration, T5TokenizerFast

    out_dir.mkdir(parents=True, exist_ok=True)
    words = ["Describe", "the", "garbage", "detected", "based", "on", "this", "CV", "output", "Description",
             "detections", "label", "confidence", "scene", "class", "plastic", "metal", "glass", "paper", "organic",
             "grass", "sandy", "rocky", "marshy", "There", "is", "are", "bottle", "can", "and"]
    chars = [chr(c) for c in range(33, 127)]
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [(f"\u2581{w}", -5.0) for w in words]
    pieces += [(f'"{w}"', -5.0) for w in words] + [(p, -6.0) for p in ('{"', '[{"', '":', '},', '}]', '}}', "0.", '"')]
    pieces += [(c, -8.0) for c in chars] + [(f"\u2581{c}", -8.5) for c in chars] + [("\u2581", -9.0)]
    pieces += [(f"\u2581filler{i}", -20.0) for i in range(32128 - len(pieces))]
    tok = Tokenizer(models.Unigram(pieces, unk_id=2, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                       special_tokens=[("</s>", 1)])
    fast = T5TokenizerFast(tokenizer_object=tok, eos_token="</s>", pad_token="<pad>", unk_token="<unk>", extra_ids=0)
    config = T5Config(vocab_size=32128, d_model=512, d_kv=64, d_ff=1024, num_layers=8, num_decoder_layers=8,
                      num_heads=6, feed_forward_proj="gated-gelu", tie_word_embeddings=False,
                      decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    torch.manual_seed(seed)
    model = T5ForConditionalGeneration(config).eval()
    model.generation_config = GenerationConfig(decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    model.save_pretrained(out_dir, safe_serialization=True)
    fast.save_pretrained(out_dir)
    template = "Describe the garbage detected based on this CV output:\n{input}\nDescription:"
    (out_dir / "llm_config.json").write_text(json.dumps(
        {"model_type": "t5", "prompt_template": template, "max_input_length": 256, "max_output_length": 128,
         "num_beams": 4}, indent=2), encoding="utf-8")
    return out_dir


def t5(args) -> dict:
    import torch
    from transformers import AutoTokenizer, T5ForConditionalGeneration

    from edgesight import Describer
    from edgesight.export import export

    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="seed-t5-"))
    base = build_flan_t5_small(work / "description_llm")
    export(base, None, task="describe", out=work / "bundles", formats=["onnx-int8"], threads=args.threads,
           progress=False)
    model, tokenizer = T5ForConditionalGeneration.from_pretrained(base).eval(), AutoTokenizer.from_pretrained(base)
    template = json.loads((base / "llm_config.json").read_text())["prompt_template"]
    ds = Describer.from_pretrained(work / "bundles" / "onnx-int8", threads=args.threads, guard=False)

    def seed_call(cv):   # generate_description_llm, as seed 001 wrote it
        inputs = tokenizer(template.format(input=json.dumps(cv)), return_tensors="pt", max_length=256, truncation=True)
        with torch.no_grad():
            out = model.generate(**inputs, max_length=128, num_beams=4, early_stopping=True, no_repeat_ngram_size=2)
        return out.shape[1] - 1, inputs["input_ids"].shape[1]

    def ours(cv):
        prompt = template.replace("{input}", json.dumps(cv))
        return len(ds.model.generate_ids([prompt], ds.generation)[0][0]), ds.model.count_tokens(prompt)

    times = {"transformers_fp32": [], "onnx_int8": []}
    tokens = {}
    for rep in range(args.repeats):
        for cv in CV_OUTPUTS:
            for name, fn in ((("transformers_fp32", seed_call), ("onnx_int8", ours)) if rep % 2 == 0
                             else (("onnx_int8", ours), ("transformers_fp32", seed_call))):
                t0 = time.perf_counter()
                tokens[name] = fn(cv)
                times[name].append(time.perf_counter() - t0)
    med = {k: _median(v) for k, v in times.items()}
    return {"model": "flan-t5-small shape (random weights), seed 001 settings", "median_s": med,
            "speedup": round(med["transformers_fp32"] / med["onnx_int8"], 2), "runs": times,
            "new_tokens_and_input_tokens_last_call": tokens,
            "onnx_int8_MB": round(sum(p.stat().st_size for p in (work / "bundles" / "onnx-int8").iterdir()) / 1e6, 1)}


def write_mistral_7b_q4_0(path: Path, seed: int = 0, z: dict = ZEPHYR) -> Path:
    """A Mistral-7B-shaped GGUF (32 layers, 4096 hidden, 32/8 heads, MLP 14336, vocab 32000) in Q4_0 with
    random blocks, written tensor by tensor with gguf-py: no fp32 (or f16) weights are ever materialised
    (the largest buffer is one 33 MB tensor). Tokenizer: a sentencepiece BPE trained on seed 000's system
    instruction, padded to 32000 pieces, so the prompt has a realistic token count."""
    import io

    import numpy as np
    import sentencepiece as spm
    from gguf import GGMLQuantizationType, GGUFWriter, LlamaFileType, TokenType

    from edgesight.export.prompts import preset_path

    preset = json.loads(preset_path("keywords", "seed-000").read_text(encoding="utf-8"))
    text = preset["template"].replace("{system}", preset["system"]).splitlines() + KEYWORD_PROMPTS
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter([ln for ln in text if ln.strip()] * 20), model_writer=buf,
                                   model_type="bpe", vocab_size=600, hard_vocab_limit=False, byte_fallback=True,
                                   character_coverage=1.0, unk_id=0, bos_id=1, eos_id=2, pad_id=-1, num_threads=1,
                                   minloglevel=2)
    sp = spm.SentencePieceProcessor(model_proto=buf.getvalue())
    tokens, scores, types = [], [], []
    for i in range(sp.get_piece_size()):
        tokens.append(sp.id_to_piece(i).encode())
        scores.append(sp.get_score(i))
        types.append(TokenType.UNKNOWN if sp.is_unknown(i) else TokenType.CONTROL if sp.is_control(i)
                     else TokenType.BYTE if sp.is_byte(i) else TokenType.NORMAL)
    for i in range(z["vocab"] - len(tokens)):
        tokens.append(f"\u2581zzfill{i}".encode())
        scores.append(-1e9)
        types.append(TokenType.UNUSED)
    w = GGUFWriter(str(path), "llama")
    w.add_context_length(32768)
    w.add_embedding_length(z["hidden"])
    w.add_block_count(z["layers"])
    w.add_feed_forward_length(z["mlp"])
    w.add_rope_dimension_count(z["hidden"] // z["heads"])
    w.add_head_count(z["heads"])
    w.add_head_count_kv(z["kv_heads"])
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_file_type(LlamaFileType.MOSTLY_Q4_0)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(True)
    shapes = [("token_embd.weight", (z["vocab"], z["hidden"]))]
    for i in range(z["layers"]):
        shapes += [(f"blk.{i}.attn_norm.weight", (z["hidden"],)), (f"blk.{i}.ffn_norm.weight", (z["hidden"],)),
                   (f"blk.{i}.attn_q.weight", (z["hidden"], z["hidden"])), (f"blk.{i}.attn_k.weight", (z["kv"], z["hidden"])),
                   (f"blk.{i}.attn_v.weight", (z["kv"], z["hidden"])), (f"blk.{i}.attn_output.weight", (z["hidden"], z["hidden"])),
                   (f"blk.{i}.ffn_gate.weight", (z["mlp"], z["hidden"])), (f"blk.{i}.ffn_up.weight", (z["mlp"], z["hidden"])),
                   (f"blk.{i}.ffn_down.weight", (z["hidden"], z["mlp"]))]
    shapes += [("output_norm.weight", (z["hidden"],)), ("output.weight", (z["vocab"], z["hidden"]))]

    def byte_shape(shape):   # Q4_0: blocks of 32 weights = f16 scale + 16 bytes of nibbles
        return (shape[0], shape[1] // 32 * 18)

    for name, shape in shapes:
        if len(shape) == 1:
            w.add_tensor_info(name, shape, np.dtype(np.float32), 4 * shape[0])
        else:
            bs = byte_shape(shape)
            w.add_tensor_info(name, bs, np.dtype(np.uint8), bs[0] * bs[1], raw_dtype=GGMLQuantizationType.Q4_0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    rng = np.random.default_rng(seed)
    scale = np.frombuffer(np.float16(0.01).tobytes(), dtype=np.uint8)
    for name, shape in shapes:
        if len(shape) == 1:
            w.write_tensor_data(np.ones(shape, dtype=np.float32))
            continue
        blocks = rng.integers(0, 256, size=(shape[0] * shape[1] // 32, 18), dtype=np.uint8)
        blocks[:, :2] = scale
        w.write_tensor_data(blocks.reshape(byte_shape(shape)))
    w.close()
    return path


def mistral_7b(args) -> dict:
    """Seed 000's first call on a Mistral-7B-shaped Q4_0 GGUF: without a saved state (the instruction is
    evaluated) vs with the state restored, each in a freshly loaded model; 8 new tokens per call."""
    from edgesight.export.prompts import preset_path
    from edgesight.generation import GenerationConfig
    from edgesight.runtime.llamacpp import GGUFTextModel

    path = Path(args.gguf) if args.gguf else Path(tempfile.mkdtemp(prefix="mistral7b-")) / "mistral-7b.q4_0.gguf"
    t0 = time.perf_counter()
    if not path.is_file():
        write_mistral_7b_q4_0(path)
    written = time.perf_counter() - t0
    preset = json.loads(preset_path("keywords", "seed-000").read_text(encoding="utf-8"))
    prefix, suffix = preset["template"].replace("{system}", preset["system"]).split("{input}")
    config = GenerationConfig(max_new_tokens=8)
    open_model = lambda: GGUFTextModel(path, threads=args.threads, n_ctx=1024)
    model = open_model()
    prefix_ids = model.encode(prefix)[:-1]
    prompt_ids = model.encode(prefix + KEYWORD_PROMPTS[0] + suffix)
    blob, meta = model.save_prefix_state(prefix_ids)
    del model
    rows = {"with_state": {"load_s": [], "first_call_s": []}, "without_state": {"load_s": [], "first_call_s": []}}
    for rep in range(args.repeats):
        for name in (rows if rep % 2 == 0 else list(rows)[::-1]):
            t0 = time.perf_counter()
            model = open_model()
            if name == "with_state":
                note = model.load_prefix_state(blob, meta)
                assert note.startswith("restored"), note
            t1 = time.perf_counter()
            model.generate([prefix + KEYWORD_PROMPTS[0] + suffix], config)
            rows[name]["load_s"].append(t1 - t0)
            rows[name]["first_call_s"].append(time.perf_counter() - t1)
            del model
    return {"model": "Mistral-7B shape, Q4_0, random blocks", "gguf_GB": round(path.stat().st_size / 1e9, 2),
            "written_s": round(written, 1), "prefix_tokens": len(prefix_ids), "prompt_tokens": len(prompt_ids),
            "state_MB": round(len(blob) / 1e6, 1), "new_tokens": config.max_new_tokens,
            "median": {k: {m: _median(v) for m, v in r.items()} for k, r in rows.items()}, "runs": rows}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.seed_models", description=__doc__.split("\n")[0])
    p.add_argument("what", choices=["prefix-state", "t5", "mistral-7b"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default=None)
    p.add_argument("--bundle", default=None, help="prefix-state: a GGUF keywords bundle (default: export SmolLM2 "
                                                  "with --prompt seed-000)")
    p.add_argument("--gguf", default=None, help="mistral-7b: reuse this GGUF (default: write one to a temp dir)")
    args = p.parse_args(argv)
    result = {"header": header(args.what, {"threads": args.threads, "repeats": args.repeats}),
              **{"prefix-state": prefix_state, "t5": t5, "mistral-7b": mistral_7b}[args.what](args)}
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=2))
    if args.out:
        write_json(result, Path(args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
