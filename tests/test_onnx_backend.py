"""ONNX backend on tiny real models exported in this run: onnxruntime sessions + the numpy loop
reproduce transformers `generate()` token for token; prefix cache, batching, seeds, int8/int4, errors."""
import json

import numpy as np
import pytest

from edgesight.runtime import TextModel, open_text_model
from edgesight.runtime import open_graph
from edgesight.bundle import Bundle, BundleWriter
from edgesight.errors import BackendError, BundleError, ExportError, InputError
from edgesight.generation import GenerationConfig
from kit import hf_generate, onnx_text_bundle

torch = pytest.importorskip("torch")

PROMPTS = ["Segment the cat and the dog, but not the person.", "Find every bottle in the picture.",
           "Keywords: chair, table", "A photo of a person next to a car"]
CHAT_PREFIX = "<|im_start|>system\nList the objects to segment.<|im_end|>\n<|im_start|>user\n"
CASES = [dict(num_beams=1), dict(num_beams=1, repetition_penalty=1.3, no_repeat_ngram_size=2),
         dict(num_beams=4, num_return_sequences=2), dict(num_beams=3, length_penalty=0.5, early_stopping=True),
         dict(num_beams=4, num_return_sequences=3, no_repeat_ngram_size=3, early_stopping="never")]


def frequent_token(onnx_model) -> int:
    """The token greedy decoding of PROMPTS emits most often (never stopping early)."""
    ids = onnx_model.generate_ids(PROMPTS, GenerationConfig(max_new_tokens=10, eos_token_ids=[-1]))
    return int(np.bincount([t for seqs in ids for t in seqs[0]]).argmax())


@pytest.fixture(scope="module")
def llama(tiny_llama_dir, tiny_llama_onnx):
    from transformers import AutoTokenizer, LlamaForCausalLM
    return (LlamaForCausalLM.from_pretrained(tiny_llama_dir).eval(), AutoTokenizer.from_pretrained(tiny_llama_dir),
            open_text_model(Bundle.load(tiny_llama_onnx), threads=1))


@pytest.fixture(scope="module")
def t5(tiny_t5_dir, tiny_t5_onnx):
    from transformers import AutoTokenizer, T5ForConditionalGeneration
    return (T5ForConditionalGeneration.from_pretrained(tiny_t5_dir).eval(), AutoTokenizer.from_pretrained(tiny_t5_dir),
            open_text_model(Bundle.load(tiny_t5_onnx), threads=1))


def test_bundles_load_as_text_models(llama, t5):
    for model, tok, onnx_model in (llama, t5):
        assert isinstance(onnx_model, TextModel) and onnx_model.backend == "onnx"
        assert onnx_model.count_tokens(PROMPTS[0]) == len(tok(PROMPTS[0]).input_ids)
    assert llama[2].context_length == 512
    assert list(llama[2].session.outputs.values())[0][1] == 1     # export keeps only the last position's logits


@pytest.mark.parametrize("case", CASES, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
@pytest.mark.parametrize("which", ["llama", "t5"])
def test_reproduces_transformers_generate(which, case, request):
    model, tok, onnx_model = request.getfixturevalue(which)
    eos = onnx_model.eos + [frequent_token(onnx_model)]   # beams then finish at different lengths
    cfg = GenerationConfig(max_new_tokens=12, eos_token_ids=eos, **case)
    seq2seq = which == "t5"
    for prompt in PROMPTS:
        ours = onnx_model.generate_ids([prompt], cfg)[0]
        assert ours == hf_generate(model, tok, prompt, cfg, eos, onnx_model.pad, seq2seq=seq2seq), prompt
    texts = onnx_model.generate(PROMPTS[:1], cfg)[0]
    assert len(texts) == cfg.num_return_sequences and all(isinstance(t, str) for t in texts)


def test_decoded_text_equals_transformers_decode(llama, t5):
    for model, tok, onnx_model in (llama, t5):
        ids = onnx_model.generate_ids(PROMPTS, GenerationConfig(max_new_tokens=12))
        texts = onnx_model.generate(PROMPTS, GenerationConfig(max_new_tokens=12))
        assert [[tok.decode(s, skip_special_tokens=True) for s in seqs] for seqs in ids] == texts


def test_batch_equals_one_by_one(llama, t5):
    for _, _, onnx_model in (llama, t5):
        for cfg in (GenerationConfig(max_new_tokens=10, eos_token_ids=onnx_model.eos + [7, 11]),
                    GenerationConfig(max_new_tokens=10, num_beams=3, num_return_sequences=2),
                    GenerationConfig(max_new_tokens=10, do_sample=True, top_p=0.9, seed=4)):
            batch = onnx_model.generate_ids(PROMPTS, cfg)
            assert batch == [onnx_model.generate_ids([p], cfg)[0] for p in PROMPTS]


def test_prefix_cache_gives_identical_outputs_and_skips_the_prefix(tiny_llama_onnx):
    bundle = Bundle.load(tiny_llama_onnx)
    cached, plain = open_text_model(bundle, threads=1), open_text_model(bundle, threads=1, prefix_cache=False)
    prompts = [CHAT_PREFIX + p + "<|im_end|>\n<|im_start|>assistant\n" for p in PROMPTS]
    prefix_len = cached.count_tokens(CHAT_PREFIX)
    for cfg in (GenerationConfig(max_new_tokens=10), GenerationConfig(max_new_tokens=10, num_beams=3)):
        for p in prompts:                                       # one at a time: the task's usual pattern
            assert cached.generate_ids([p], cfg) == plain.generate_ids([p], cfg)
            assert plain.reused_tokens == 0
        assert cached.reused_tokens >= prefix_len - 1
        assert cached.generate_ids(prompts, cfg) == plain.generate_ids(prompts, cfg)   # batch after cache
        assert cached.reused_tokens >= prefix_len - 1
    assert cached.generate_ids([prompts[0][:-3]], cfg) == plain.generate_ids([prompts[0][:-3]], cfg)


def test_sampling_seeds(llama, t5):
    for _, _, onnx_model in (llama, t5):
        def run(seed):
            cfg = GenerationConfig(max_new_tokens=12, do_sample=True, temperature=1.3, top_k=40,
                                   num_return_sequences=2, seed=seed)
            return onnx_model.generate_ids(PROMPTS[:2], cfg)
        assert run(0) == run(0)
        assert run(0) != run(1)


def test_input_errors(llama):
    onnx_model = llama[2]
    with pytest.raises(InputError, match="no tokens"):
        onnx_model.generate([""], GenerationConfig())
    with pytest.raises(InputError, match="context"):
        onnx_model.generate(["cat " * 600], GenerationConfig())
    with pytest.raises(InputError, match="list of prompts"):
        onnx_model.generate("a cat", GenerationConfig())


def test_grammar_constrains_greedy_and_sampled_output(llama, t5):
    """GBNF through llguidance on the numpy loop (the gguf backend's test, on ONNX; decoder-only models): once the grammar is complete only
    eos is allowed, so every output is a whole sentence of the language; unconstrained, the tiny model writes none."""
    import re

    grammar = 'root ::= item (", " item)?\nitem ::= "cat" | "dog" | "bottle"'
    sentence = re.compile(r"(cat|dog|bottle)(, (cat|dog|bottle))?")
    for model in (llama[2],):
        free = model.generate(PROMPTS, GenerationConfig(max_new_tokens=12))
        assert not any(sentence.fullmatch(outs[0].strip()) for outs in free)
        for cfg in (dict(), dict(do_sample=True, temperature=1.5, top_p=0.9, seed=4, num_return_sequences=3)):
            for outs in model.generate(PROMPTS, GenerationConfig(max_new_tokens=24, grammar=grammar, **cfg)):
                for text in outs:
                    assert sentence.fullmatch(text.strip()), text
    with pytest.raises(InputError, match="beam search"):
        llama[2].generate(PROMPTS[:1], GenerationConfig(grammar=grammar, num_beams=2))
    with pytest.raises(InputError, match="grammar"):
        llama[2].generate(PROMPTS[:1], GenerationConfig(grammar="root ::= ( unbalanced"))
    assert not t5[2].supports_grammar
    with pytest.raises(BackendError, match="encoder-decoder"):
        t5[2].generate(PROMPTS[:1], GenerationConfig(grammar=grammar))


def test_session_errors_name_the_file(tmp_path, tiny_llama_onnx):
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"this is not a protobuf")
    with pytest.raises(BundleError, match="model.onnx"):
        open_graph(bad, threads=1)
    with pytest.raises(BundleError, match="not found"):
        open_graph(tmp_path / "missing.onnx", threads=1)
    session = open_graph(Bundle.load(tiny_llama_onnx).file("model"), threads=1, arena=False)
    opts = session.session.get_session_options()
    assert (opts.intra_op_num_threads, opts.inter_op_num_threads, opts.enable_cpu_mem_arena) == (1, 1, False)
    # a bundle whose .onnx is corrupt (hash matches, content is garbage) fails at load with the file name
    src = Bundle.load(tiny_llama_onnx)
    with BundleWriter(tmp_path / "corrupt", task="test", format="onnx", precision="fp32", kind="causal-lm",
                      tokens=src.get("tokens")) as w:
        w.add_file(bad, "model.onnx", role="model")
        w.add_file(src.file("tokenizer"), role="tokenizer")
    with pytest.raises(BundleError, match="model.onnx"):
        open_text_model(Bundle.load(tmp_path / "corrupt"))
    with BundleWriter(tmp_path / "notokens", task="test", format="onnx", precision="fp32", kind="causal-lm") as w:
        w.add_file(src.file("model"), role="model")
        w.add_file(src.file("tokenizer"), role="tokenizer")
    with pytest.raises(BundleError, match="tokens"):
        open_text_model(Bundle.load(tmp_path / "notokens"))
    with BundleWriter(tmp_path / "kind", task="test", format="onnx", precision="fp32", kind="image-encoder") as w:
        w.add_file(src.file("model"), role="model")
    with pytest.raises(BackendError, match="image-encoder"):
        open_text_model(Bundle.load(tmp_path / "kind"))


def test_export_errors_leave_nothing_behind(tmp_path, tiny_llama_dir):
    from edgesight.export.onnx import export_onnx
    with pytest.raises(ExportError, match="not supported"):
        export_onnx(tiny_llama_dir, tmp_path / "out", "text-to-speech")
    with pytest.raises(ExportError, match="config.json"):
        export_onnx(tmp_path, tmp_path / "out", "feature-extraction")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 7}))
    with pytest.raises(ExportError, match="broken"):
        export_onnx(broken, tmp_path / "out", "text-generation-with-past")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken"]


def _agreement(a, b) -> float:
    return float(np.mean([x == y for x, y in zip(a, b)]))


@pytest.mark.parametrize("which", ["llama", "t5"])
def test_int8_and_int4_exports_run_and_agreement_is_recorded(which, request, tmp_path, record_property):
    """Quantized exports are judged by agreement with fp32 (recorded, not asserted equal)."""
    from edgesight.export.onnx import quantize_int4, quantize_int8
    fp32_dir = request.getfixturevalue(f"tiny_{which}_onnx")
    fp32 = open_text_model(Bundle.load(fp32_dir), threads=1)
    onnx_dir = fp32_dir.parent / "onnx"
    kind = "causal-lm" if which == "llama" else "seq2seq"
    files = ["model.onnx"] if which == "llama" else ["encoder_model.onnx", "decoder_model_merged.onnx"]
    cfg = GenerationConfig(max_new_tokens=12)
    reference = fp32.generate_ids(PROMPTS, cfg)
    for precision, quantize in (("int8", quantize_int8), ("int4", quantize_int4)):
        qdir = tmp_path / precision
        reports = {f: quantize(onnx_dir / f, qdir / f) for f in files}
        for f, rep in reports.items():
            op = "MatMulInteger" if precision == "int8" else "MatMulNBits"
            assert rep["quantized"].get(op, 0) > 0, (f, rep["quantized"])
            assert rep["bytes"] < (onnx_dir / f).stat().st_size
        if which == "t5" and precision == "int8":   # EnableSubgraph reached both If branches
            assert reports["decoder_model_merged.onnx"]["ops_after"]["MatMulInteger"] >= 2 * 12
        with BundleWriter(tmp_path / f"bundle-{precision}", task="test", format="onnx", precision=precision,
                          kind=kind, tokens=fp32.tokens, context_length=fp32.context_length) as w:
            for f in files:
                w.add_file(qdir / f, f, role="model" if kind == "causal-lm" else f.split("_model")[0])
            w.add_file(fp32.bundle.file("tokenizer"), role="tokenizer")
        out = open_text_model(Bundle.load(tmp_path / f"bundle-{precision}"), threads=1).generate_ids(PROMPTS, cfg)
        assert all(len(seqs) == 1 and len(seqs[0]) >= 1 for seqs in out)
        exact = _agreement([s[0] for s in out], [s[0] for s in reference])
        first = _agreement([s[0][:1] for s in out], [s[0][:1] for s in reference])
        record_property(f"{which}-{precision}", {"exact_sequences": exact, "first_token": first,
                                                 "ops": reports[files[-1]]["quantized"]})
        print(f"{which} {precision}: exact {exact:.2f}, first token {first:.2f}, ops {reports[files[-1]]['quantized']}")


def test_external_data_is_written_and_loads(tmp_path, tiny_llama_onnx, monkeypatch):
    """Models over the protobuf limit keep weights in <name>.onnx.data (forced here with a 0-byte limit)."""
    import edgesight.export.onnx as exp
    monkeypatch.setattr(exp, "EXTERNAL_DATA_BYTES", 0)
    src = tiny_llama_onnx.parent / "onnx" / "model.onnx"
    report = exp.quantize_int4(src, tmp_path / "q" / "model.onnx")
    assert (tmp_path / "q" / "model.onnx.data").stat().st_size > 0.5 * report["bytes"]
    assert sorted(p.name for p in (tmp_path / "q").iterdir()) == ["model.onnx", "model.onnx.data"]
    session = open_graph(tmp_path / "q" / "model.onnx", threads=1)
    assert list(session.outputs)[0] == "logits"


def test_onnx_text_bundle_roundtrip_reexport(tiny_t5_dir, tmp_path):
    """Re-exporting onto an existing directory replaces it whole (no stale files)."""
    from edgesight.export.onnx import export_onnx
    out = tmp_path / "onnx"
    out.mkdir()
    (out / "stale.onnx").write_bytes(b"old")
    report = export_onnx(tiny_t5_dir, out, "text2text-generation-with-past")
    assert "stale.onnx" not in report["files"] and not (out / "stale.onnx").exists()
    assert {"encoder_model.onnx", "decoder_model_merged.onnx", "tokenizer.json"} <= set(report["files"])
    assert report["sizes"]["encoder_model.onnx"] > 100_000


def test_seq2seq_split_decoders_equal_merged(t5, tiny_t5_onnx, tmp_path):
    """A bundle with decoder + decoder_with_past (no If node) decodes like the merged decoder."""
    merged = t5[2]
    onnx_dir = tiny_t5_onnx.parent / "onnx"
    with BundleWriter(tmp_path / "split", task="test", format="onnx", precision="fp32", kind="seq2seq",
                      tokens=merged.tokens) as w:
        w.add_file(onnx_dir / "encoder_model.onnx", role="encoder")
        w.add_file(onnx_dir / "decoder_model.onnx", role="decoder")
        w.add_file(onnx_dir / "decoder_with_past_model.onnx", role="decoder_with_past")
        w.add_file(onnx_dir / "tokenizer.json", role="tokenizer")
    split = open_text_model(Bundle.load(tmp_path / "split"), threads=1)
    assert not split.merged and merged.merged
    for cfg in (GenerationConfig(max_new_tokens=10), GenerationConfig(max_new_tokens=10, num_beams=3)):
        assert split.generate_ids(PROMPTS, cfg) == merged.generate_ids(PROMPTS, cfg)


def test_tied_lm_head_is_folded_so_quantizers_reach_it(tiny_llama_onnx, tmp_path):
    """Tied embeddings export as Transpose(embed) -> lm_head MatMul; folding makes it a constant
    weight (same logits), so int4/int8 quantize the largest matmul too."""
    import onnx
    from edgesight.export.onnx import fold_transposed_weights, op_counts, quantize_int4
    src = tiny_llama_onnx.parent / "onnx" / "model.onnx"
    folded = fold_transposed_weights(src)
    onnx.save(folded, str(tmp_path / "folded.onnx"))
    assert op_counts(tmp_path / "folded.onnx").get("Transpose", 0) == op_counts(src)["Transpose"] - 1
    ids = np.array([[5, 17, 300, 42]], dtype=np.int64)   # logits of the last position only (export default)
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "position_ids": np.arange(4)[None],
             **{f"past_key_values.{i}.{kv}": np.zeros((1, 2, 0, 64), np.float32) for i in range(2) for kv in ("key", "value")}}
    before = open_graph(src, threads=1).run(feeds, ["logits"])[0]
    after = open_graph(tmp_path / "folded.onnx", threads=1).run(feeds, ["logits"])[0]
    np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-5)
    report = quantize_int4(src, tmp_path / "q" / "model.onnx")
    assert report["quantized"]["MatMulNBits"] == 2 * 7 + 1          # 7 projections per layer + lm_head


def test_runtime_imports_no_torch():
    import subprocess
    import sys
    code = ("import sys, edgesight.runtime.onnxruntime, edgesight.runtime.onnx_lm, edgesight.generation; "
            "bad = [m for m in ('torch', 'transformers', 'optimum') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_last_logits_only_export_matches_full_logits(tiny_llama_dir, tiny_llama_onnx, tmp_path):
    from edgesight.export.onnx import export_onnx
    full = export_onnx(tiny_llama_dir, tmp_path / "full", "text-generation-with-past", last_logits_only=False)
    ids = np.array([[5, 17, 300, 42, 9]], dtype=np.int64)
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "position_ids": np.arange(5)[None],
             **{f"past_key_values.{i}.{kv}": np.zeros((1, 2, 0, 64), np.float32) for i in range(2) for kv in ("key", "value")}}
    all_positions = open_graph(tmp_path / "full" / "model.onnx", threads=1).run(feeds, ["logits"])[0]
    last = open_graph(tiny_llama_onnx.parent / "onnx" / "model.onnx", threads=1).run(feeds, ["logits"])[0]
    assert all_positions.shape[1] == 5 and last.shape[1] == 1 and "model.onnx" in full["files"]
    np.testing.assert_allclose(last[:, 0], all_positions[:, -1], rtol=1e-5, atol=1e-5)


def test_generation_from_an_external_encoder_output(t5):
    """from_encoder_output: the decoder runs from an encoder output computed by the caller (the
    captioning path feeds image features this way); same tokens as the text path."""
    from edgesight.generation import generate_ids
    lm = t5[2]
    start = int(lm.tokens["decoder_start"])
    for cfg in (GenerationConfig(max_new_tokens=10), GenerationConfig(max_new_tokens=10, num_beams=3, num_return_sequences=2)):
        for prompt in PROMPTS[:2]:
            ids = np.array([lm.encode(prompt)], dtype=np.int64)
            mask = np.ones_like(ids)
            hidden = lm.sessions["encoder"].run({"input_ids": ids, "attention_mask": mask})[0]
            ours = generate_ids(lm.from_encoder_output(hidden, mask), [[start]], cfg, eos_token_ids=lm.eos,
                                decoder_start_token_id=start)
            assert ours == lm.generate_ids([prompt], cfg)
